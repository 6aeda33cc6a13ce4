"""Rows and wall time per stage: recorded in every shard's completion marker (summed into the
manifest's ``stages``) and reported, as they happen, to a runner's metrics.

The core never imports a runner. A runner that wants live counts passes an object with
``inc(stage, name, n)`` (:class:`StageMetrics`): Beam backs it with
``apache_beam.metrics.Metrics.counter``, Spark with accumulators made on the driver, the bare
loop with :class:`CountingMetrics`. The only name counted is ``"rows"`` (rows into a stage).
"""
from __future__ import annotations

import collections
import time
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional, Protocol

# Every stage a shard's rows pass through, in order: the hash pass (read, checks and perceptual
# hashes, no model), the annotate pass (its reader, the four model stages, the parquet writer)
# and the finalize writer (joining the global decisions back to the shard).
STAGES = ("hash", "read", "check", "ner", "link", "score", "write", "finalize")


class StageMetrics(Protocol):
    def inc(self, stage: str, name: str, n: int) -> None: ...


class CountingMetrics:
    """In-process counters (the bare runner's metrics)."""

    def __init__(self):
        self.counts: collections.Counter[str] = collections.Counter()

    def inc(self, stage: str, name: str, n: int) -> None:
        self.counts[metric_name(stage, name)] += n

    def values(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def metric_name(stage: str, name: str) -> str:
    return f"{stage}.{name}"


class StageClock:
    """Rows and wall seconds per stage of one pass over one shard; row counts also go to
    ``metrics`` as they are made."""

    def __init__(self, metrics: Optional[StageMetrics] = None):
        self.metrics = metrics
        self.rows: collections.Counter[str] = collections.Counter()
        self.seconds: collections.Counter[str] = collections.Counter()

    def add(self, stage: str, rows: int, seconds: float) -> None:
        self.rows[stage] += rows
        self.seconds[stage] += seconds
        if self.metrics is not None and rows:
            self.metrics.inc(stage, "rows", rows)

    @contextmanager
    def time(self, stage: str, rows: int) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, rows, time.perf_counter() - started)

    def timed(self, stage: str, items: Iterator) -> Iterator:
        """``items`` (batches), with the time spent waiting for each counted to ``stage`` and
        its length to the stage's rows."""
        while True:
            started = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            self.add(stage, len(item), time.perf_counter() - started)
            yield item

    def to_dict(self) -> dict[str, dict]:
        return {stage: {"rows": self.rows[stage], "seconds": round(self.seconds[stage], 3)}
                for stage in STAGES if stage in self.rows or stage in self.seconds}


def sum_stages(parts: Iterator[Mapping[str, Mapping]]) -> dict[str, dict]:
    """Per-stage totals of many shards' ``StageClock.to_dict()``, with rows per second."""
    rows: collections.Counter[str] = collections.Counter()
    seconds: collections.Counter[str] = collections.Counter()
    for part in parts:
        for stage, entry in part.items():
            rows[stage] += entry["rows"]
            seconds[stage] += entry["seconds"]
    ordered = [s for s in STAGES if s in rows] + sorted(set(rows) - set(STAGES))
    return {stage: {"rows": rows[stage], "seconds": round(seconds[stage], 3),
                    "rows_per_s": round(rows[stage] / seconds[stage], 1) if seconds[stage] > 0 else None}
            for stage in ordered}
