"""`i2e pack` on Spark: the core's steps (``i2e_engine.pack.execute``) with one task per table
part or per destination shard; the narrow sums are ``reduceByKey`` (only keys and counts are
shuffled, never image bytes), the per-entity counts and the class ids are broadcast."""
from __future__ import annotations

import operator
from typing import Any, Callable, Sequence


class SparkExecutor:
    """:class:`i2e_engine.pack.Executor` on a Spark session."""

    def __init__(self, spark):
        self.sc = spark.sparkContext

    def map(self, fn: Callable, items: Sequence, desc: str) -> list:
        if not items:
            return []
        self.sc.setJobDescription(f"i2e pack: {desc}")
        return self.sc.parallelize(list(items), len(items)).map(fn).collect()

    def sum_by_key(self, fn: Callable, items: Sequence, desc: str) -> dict:
        if not items:
            return {}
        self.sc.setJobDescription(f"i2e pack: {desc}")
        return self.sc.parallelize(list(items), len(items)).flatMap(fn).reduceByKey(operator.add).collectAsMap()

    def share(self, value: Any):
        return self.sc.broadcast(value)
