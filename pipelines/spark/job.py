"""The I2E build on Spark, a thin adapter over the engine core. The spark-submit entry point
is ``pipelines/spark/submit.py``.

- *Hash*: one task per shard (:func:`i2e_engine.shard.hash_shard`, no model); then the
  dedup plan (:func:`i2e_engine.dedup.plan.decide`) on the narrow hash rows, placed by
  :class:`SparkFlow` as RDD steps: distinct vertices -> buckets grouped in the JVM
  (``_near_edges``) -> verified near pairs -> connected components in rounds of
  ``groupByKey`` until a round changes nothing (the driver sees only whether one did) ->
  labels joined to the rows -> ``groupByKey`` by cluster.
- *Annotate*: one task per executor core, each taking a share of the shards with their
  decisions (``_per_shard``); each shard is annotated and committed by
  :func:`i2e_engine.shard.annotate_shard` (skipped when committed under the same
  decisions). Models are loaded once per task at most, and kept per executor Python process
  in ``_ANNOTATORS`` (Spark reuses its Python workers between tasks).
- *Finalize* (:func:`i2e_engine.finalize.finalize_tables`, placed by :class:`SparkFlow`):
  the narrow rows of every committed shard, an RDD cached in the executors; optional
  SemDeDup groups them by k-means cluster (the driver gets the row count, the bounded
  k-means sample as one float32 matrix, and computes the centroids); the exact quantile's
  two passes are aggregates of counts per bin and the per-entity counts a ``reduceByKey``,
  joined to the shards that mention each entity; each shard is then written with its
  semantic decisions and entity counts (``_per_shard`` again). Only narrow rows, keys and
  counts are shuffled; image bytes are read once per pass and written once by the writer.
"""
from __future__ import annotations

import dataclasses
import itertools
import operator
import os
import sys
from typing import Callable, Iterable, Optional, Sequence

from i2e_engine import finalize
from i2e_engine.build import RunPlan
from i2e_engine.config import BuildConfig
from i2e_engine.readers import ShardRef
from i2e_engine.dedup import plan as dedup_plan
from i2e_engine.dedup.hashes import to_signed
from i2e_engine.dedup.plan import RowDedup, ShardDedup
from i2e_engine.flow import Combiner
from i2e_engine.metrics import STAGES, metric_name
from i2e_engine.shard import annotate_shard, hash_shard
from i2e_engine.stages import Annotator, CheckStage
from i2e_engine.workdir import WorkDir

_ANNOTATORS: dict[str, Annotator] = {}   # per executor Python process: the current run's, by fingerprint


def spark_session(master: Optional[str] = None, conf: Sequence[str] = ()):
    """The active session (spark-submit's), or a new one for ``master`` with ``KEY=VALUE`` conf.

    A local master runs the executors' Python with this interpreter, so they see the same
    packages as the driver.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("i2e-build")
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        # Spark's 200 shuffle partitions suit a cluster, not one machine's few cores.
        builder = builder.config("spark.sql.shuffle.partitions", str(2 * (os.cpu_count() or 1)))
    builder = builder.config("spark.ui.showConsoleProgress", str(sys.stderr.isatty()).lower())
    for item in conf:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--spark-conf takes KEY=VALUE, got {item!r}")
        builder = builder.config(key, value)
    return builder.getOrCreate()


class SparkStageMetrics:
    """The core's per-stage row counts as Spark accumulators: made on the driver, added to by
    the tasks that carry this object, read on the driver (``values()``) after the jobs."""

    def __init__(self, sc):
        self._accumulators = {stage: sc.accumulator(0) for stage in STAGES}

    def inc(self, stage: str, name: str, n: int) -> None:
        self._accumulators[stage].add(n)

    def values(self) -> dict[str, int]:
        return {metric_name(stage, "rows"): acc.value for stage, acc in self._accumulators.items() if acc.value}


def _annotate_task(shard: ShardRef, decisions: Iterable[RowDedup], config: BuildConfig, kb_path: str,
                   work: WorkDir, fingerprint: str, run_id: str, metrics: SparkStageMetrics) -> tuple[str, str]:
    annotator = _ANNOTATORS.get(fingerprint)
    if annotator is None:
        _ANNOTATORS.clear()   # a reused worker of an earlier run frees that run's models first
        annotator = _ANNOTATORS[fingerprint] = Annotator(config, kb_path)   # set up on first real work
    marker = annotate_shard(shard, annotator, work, fingerprint, run_id, ShardDedup.of(decisions or ()),
                            config.batch_rows, metrics=metrics)
    return marker.shard_id, marker.stem


def _per_shard(sc, items: list, values_by_position, work_fn):
    """``work_fn(items[p], values of position p)`` for every position p of ``items`` (shards or
    their stems), run now; returns the results (one small value per item, collected).

    ``values_by_position`` is an RDD of (p, value) (a shard's dedup or semantic decisions,
    sparse and narrow). It reaches the work through one shuffle into ``min(len(items),
    defaultParallelism)`` tasks, each task taking positions i, i + tasks, ... in order with
    its values sorted by position, so no task holds more than one shard's values. Never a
    cogroup or union of Python RDDs: Spark runs those with a second Python worker per task,
    its pool of Python workers grows, and later tasks land on workers that have to load the
    models again (measured: four model loads for two task slots, each shard 3.5x slower).
    """
    tasks = max(1, min(len(items), sc.defaultParallelism))
    items_broadcast = sc.broadcast(items)

    def run(index: int, pairs):
        groups = itertools.groupby(pairs, key=operator.itemgetter(0))
        pending = next(groups, None)
        for position in range(index, len(items_broadcast.value), tasks):
            values = []
            if pending is not None and pending[0] == position:
                values = [value for _, value in pending[1]]
                pending = next(groups, None)
            yield work_fn(items_broadcast.value[position], values)

    results = (values_by_position.repartitionAndSortWithinPartitions(tasks, partitionFunc=lambda p: p % tasks)
               .mapPartitionsWithIndex(run).collect())
    items_broadcast.destroy()
    return results


def _near_edges(spark, vertices, index):
    """Near pairs of vertices: each vertex's two hashes keyed into every table's bucket and
    grouped in the JVM (about 140 narrow rows a vertex, never through Python); only buckets
    holding two or more entries reach :func:`i2e_engine.dedup.plan.bucket_edges`."""
    from pyspark.sql import functions as F

    frame = spark.createDataFrame(vertices.map(lambda v: (v, *dataclasses.astuple(dedup_plan.vertex_hashes(v)))),
                                  "vertex string, phash long, phash_center long")
    tables = spark.createDataFrame([(t, to_signed(int(index.mask(t)))) for t in range(len(index.tables))],
                                   "table int, mask long")
    entries = frame.select("vertex", F.explode(F.array(
        F.struct(F.col("phash").alias("value"), F.lit(False).alias("is_center")),
        F.struct(F.col("phash_center").alias("value"), F.lit(True).alias("is_center")))).alias("entry"))
    buckets = (entries.crossJoin(F.broadcast(tables))
               .groupBy("table", F.col("entry.value").bitwiseAND(F.col("mask")).alias("key"))
               .agg(F.collect_list(F.struct("vertex", "entry.value", "entry.is_center")).alias("entries"))
               .filter(F.size("entries") > 1))
    return (buckets.rdd
            .flatMap(lambda bucket: dedup_plan.bucket_edges(index, bucket["table"], [tuple(e) for e in bucket["entries"]]))
            .distinct())


class SparkFlow:
    """The :class:`~i2e_engine.flow.Flow` of a Spark session: collections are RDDs; a side
    value is computed on the driver, from a bounded aggregate only (counts, bins, the k-means
    sample), and reaches the tasks that read it in their closures. :meth:`known_empty` runs
    a job, so loops stop at the first round that changes nothing."""

    def __init__(self, spark):
        self.spark, self.sc = spark, spark.sparkContext
        self._cached: list = []

    def map(self, name: str, items, fn: Callable, *sides):
        return items.map(lambda item: fn(item, *sides))

    def flat_map(self, name: str, items, fn: Callable, *sides):
        return items.flatMap(lambda item: fn(item, *sides))

    def filter(self, name: str, items, fn: Callable, *sides):
        return items.filter(lambda item: fn(item, *sides))

    def flatten(self, name: str, *collections):
        return self.sc.union(list(collections))

    def distinct(self, name: str, items):
        return items.distinct()

    def group_by_key(self, name: str, pairs):
        return pairs.groupByKey()

    def cogroup(self, name: str, **keyed):
        """A union of the tagged pairs grouped by key, into as many partitions as the widest
        input (a union's count is the sum: rounds of joins would double it every round)."""
        tags = list(keyed)
        tagged = self.sc.union([rdd.map(lambda pair, tag=tag: (pair[0], (tag, pair[1]))) for tag, rdd in keyed.items()])
        partitions = max(rdd.getNumPartitions() for rdd in keyed.values())
        return tagged.groupByKey(partitions).mapValues(lambda values: _by_tag(values, tags))

    def count_per_element(self, name: str, items):
        return items.map(lambda item: (item, 1)).reduceByKey(operator.add)

    def combine(self, name: str, items, combiner: Combiner, *sides):
        """One accumulator a partition, shuffled into one task that merges and extracts: the
        driver receives the extracted value only (counts, bins, k-means centroids), never a
        sample or partial accumulators."""
        def accumulate(part):
            accumulator = combiner.create()
            for item in part:
                accumulator = combiner.add(accumulator, item)
            yield accumulator

        def extract(accumulators):
            accumulators = list(accumulators)
            yield combiner.extract(combiner.merge(accumulators) if accumulators else combiner.create(), *sides)

        self.sc.setJobDescription(f"i2e {name}")
        (value,) = items.mapPartitions(accumulate).repartition(1).mapPartitions(extract).collect()
        return value

    def constant(self, name: str, value):
        return value

    def derive(self, name: str, fn: Callable, *sides):
        return fn(*sides)

    def cache(self, items):
        from pyspark import StorageLevel

        self._cached.append(items.persist(StorageLevel.MEMORY_AND_DISK))
        return items

    def known_empty(self, items) -> bool:
        return items.count() == 0   # one job; isEmpty's take(1) runs several on an empty RDD

    def fail_if_any(self, name: str, items, error: Exception) -> None:
        if not items.isEmpty():
            raise error

    def near_edges(self, vertices, index):
        return _near_edges(self.spark, vertices, index)

    def per_shard(self, name: str, shards, values, fn: Callable, *sides) -> None:
        """Through :func:`_per_shard`; the (shard id, stem) pairs are collected (one small
        pair per committed shard) to number the shards."""
        self.sc.setJobDescription(f"i2e {name}")
        items = shards.collect()
        position = {shard_id: i for i, (shard_id, _) in enumerate(items)}
        _per_shard(self.sc, items, values.map(lambda pair: (position[pair[0]], pair[1])),
                   lambda shard, shard_values: fn(shard, shard_values, *sides))

    def run(self, name: str, items) -> None:
        self.sc.setJobDescription(f"i2e {name}")
        items.count()

    def release(self) -> None:
        """Unpersist what the sequences cached."""
        for rdd in self._cached:
            rdd.unpersist()
        self._cached.clear()


def _by_tag(values, tags: list[str]) -> dict[str, list]:
    grouped: dict[str, list] = {tag: [] for tag in tags}
    for tag, value in values:
        grouped[tag].append(value)
    return grouped


def execute(plan: RunPlan, spark) -> tuple[str, dict[str, int]]:
    """Hash, dedup, annotate and write the tables into ``plan.target``; returns the runner's
    name and its per-stage row counts (accumulators)."""
    sc = spark.sparkContext
    config, work, fingerprint, run_id = plan.config, plan.work, plan.fingerprint, plan.run_id
    kb_path = plan.kb_path   # never capture plan in a task: it holds the lease (a thread lock)
    metrics = SparkStageMetrics(sc)
    flow = SparkFlow(spark)
    sc.setJobDescription(f"i2e hash {len(plan.shards)} shards")
    stems = (sc.parallelize(plan.shards, max(1, len(plan.shards)))
             .map(lambda shard: hash_shard(shard, CheckStage(config), work, fingerprint, run_id,
                                           config.batch_rows, metrics=metrics).stem)
             .collect())
    sc.setJobDescription("i2e dedup plan")
    rows = sc.parallelize(stems, max(1, len(stems))).flatMap(work.hash_rows)
    decisions = dedup_plan.decide(flow, rows, plan.hash_index, plan.eval_index, config.dedup)
    sc.setJobDescription(f"i2e annotate {len(plan.shards)} shards")
    position = sc.broadcast({s.shard_id: i for i, s in enumerate(plan.shards)})   # one int a shard
    committed = _per_shard(sc, plan.shards, decisions.map(lambda item: (position.value[item[0]], item[1])),
                           lambda shard, rows: _annotate_task(shard, rows, config, kb_path, work,
                                                              fingerprint, run_id, metrics))
    flow.release()
    position.destroy()
    sc.setJobDescription("i2e finalize")
    finalize.finalize_tables(flow, plan, sc.parallelize(committed, max(1, len(committed))), metrics)
    flow.release()
    return f"spark:{sc.master}", metrics.values()
