"""The I2E build on Spark, a thin adapter over the engine core; also the spark-submit entry point.

    spark-submit [spark options] pipelines/spark/job.py <the arguments of `i2e build`>

- *Hash*: one task per shard (:func:`i2e_engine.shard.hash_shard`, no model); then the
  dedup plan (``i2e_engine.dedup.plan``) on the narrow hash rows as RDD steps: distinct
  vertices -> ``groupByKey`` by bucket key -> verified near pairs -> connected components on
  the driver (the one global step, over edges only) -> ``groupByKey`` by cluster.
- *Annotate*: one task per executor core, each taking a share of the shards with their
  decisions (``_per_shard``); each shard is annotated and committed by
  :func:`i2e_engine.shard.annotate_shard` (skipped when committed under the same
  decisions). Models are loaded once per task at most, and kept per executor Python process
  in ``_ANNOTATORS`` (Spark reuses its Python workers between tasks).
- *Finalize* (``i2e_engine.finalize``): the narrow rows of every committed shard, an RDD
  cached in the executors; optional SemDeDup groups them by k-means cluster; the exact
  quantile's two passes are counts per bin and the per-entity counts a ``reduceByKey``;
  each shard is then written with its semantic decisions (``_per_shard`` again). Only
  narrow rows, keys and counts are shuffled; image bytes are read once per pass and
  written once by the shard writer.
"""
from __future__ import annotations

import dataclasses
import itertools
import operator
import os
import sys
from typing import Iterable, Optional, Sequence

from i2e_engine import finalize
from i2e_engine.build import RunPlan
from i2e_engine.config import BuildConfig
from i2e_engine.finalize import Decisions, ExactQuantile, Target
from i2e_engine.readers import ShardRef
from i2e_engine.dedup import plan as dedup_plan
from i2e_engine.dedup.hashes import to_signed
from i2e_engine.dedup.plan import RowDedup, ShardDedup
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


def _dedup_decisions(spark, plan: RunPlan, metrics: SparkStageMetrics):
    """The hash pass and the dedup plan: an RDD of (shard_id, RowDedup)."""
    sc = spark.sparkContext
    work, index, eval_index = plan.work, plan.hash_index, plan.eval_index
    config, fingerprint, run_id = plan.config, plan.fingerprint, plan.run_id
    max_texts = config.dedup.merge_alt_texts
    sc.setJobDescription(f"i2e hash {len(plan.shards)} shards")
    stems = (sc.parallelize(plan.shards, max(1, len(plan.shards)))
             .map(lambda shard: hash_shard(shard, CheckStage(config), work, fingerprint, run_id,
                                           config.batch_rows, metrics=metrics).stem)
             .collect())
    sc.setJobDescription("i2e dedup plan")
    checked = (sc.parallelize(stems, max(1, len(stems))).flatMap(work.hash_rows)
               .map(lambda row: (row, dedup_plan.contamination(row, eval_index))).cache())
    tainted = checked.filter(lambda item: item[1] is not None).map(lambda item: (item[0]["source_shard"], item[1]))
    clean = checked.filter(lambda item: item[1] is None).map(lambda item: (dedup_plan.vertex_of(item[0]), item[0]))
    edges = _near_edges(spark, clean.keys().distinct(), index)
    # Global, over edges only (two vertex ids per near pair): components on the driver.
    labels = dedup_plan.connected_components(edges.collect())
    labels_broadcast = sc.broadcast(labels)
    decisions = (clean.map(lambda item: (labels_broadcast.value.get(item[0], item[0]), item[1]))
                 .groupByKey()
                 .flatMap(lambda cluster: dedup_plan.cluster_decisions(cluster[0], cluster[1], max_texts)))
    return tainted.union(decisions), checked, labels_broadcast


def _write_task(stem: str, semantic: Iterable, work: WorkDir, target: Target, decisions: Decisions,
                counts_broadcast, metrics: SparkStageMetrics) -> str:
    decisions = dataclasses.replace(decisions, entity_counts=counts_broadcast.value)
    finalize.write_shard_tables(work, stem, target, {d.row_in_shard: d for d in semantic}, decisions, metrics)
    return stem


def _semantic(narrow_rdd, plan: RunPlan):
    """SemDeDup's decisions as an RDD of (shard_id, SemanticDecision); None when it is off."""
    config = plan.config.dedup
    if not config.semantic:
        return None
    n_rows = narrow_rdd.count()
    fraction = finalize.semantic_sample_fraction(config, n_rows)
    # Global, bounded (MAX_KMEANS_SAMPLE rows): k-means on the driver.
    centroids = finalize.semantic_centroids(
        narrow_rdd.filter(lambda row: finalize.in_kmeans_sample(row, fraction)).collect(), config, n_rows)
    return (narrow_rdd.map(lambda row: (finalize.semantic_cluster_of(row, centroids), row))
            .groupByKey()
            .flatMap(lambda cluster: finalize.semantic_group(cluster[0], cluster[1], config))
            .map(lambda d: (d.source_shard, d)))


def execute(plan: RunPlan, spark) -> tuple[str, dict[str, int]]:
    """Hash, dedup, annotate and write the tables into ``plan.target``; returns the runner's
    name and its per-stage row counts (accumulators)."""
    sc = spark.sparkContext
    config, work, target, cfg = plan.config, plan.work, plan.target, plan.config.filter
    metrics = SparkStageMetrics(sc)
    decisions, checked, labels_broadcast = _dedup_decisions(spark, plan, metrics)
    sc.setJobDescription(f"i2e annotate {len(plan.shards)} shards")
    position = sc.broadcast({s.shard_id: i for i, s in enumerate(plan.shards)})
    committed = _per_shard(sc, plan.shards, decisions.map(lambda item: (position.value[item[0]], item[1])),
                           lambda shard, rows: _annotate_task(shard, rows, config, plan.kb_path, work,
                                                              plan.fingerprint, plan.run_id, metrics))
    checked.unpersist()
    labels_broadcast.destroy()
    sc.setJobDescription("i2e finalize")
    slices = max(1, len(committed))
    narrow_rdd = (sc.parallelize([stem for _, stem in committed], slices)
                  .flatMap(lambda stem: finalize.project_shard(work, stem, config.dedup.semantic)).cache())
    semantic = _semantic(narrow_rdd, plan)
    survivors = narrow_rdd
    if semantic is not None:
        semantic = semantic.cache()
        drops = semantic.filter(lambda item: item[1].dropped).map(lambda item: ((item[0], item[1].row_in_shard), None))
        survivors = (narrow_rdd.keyBy(lambda row: (row["source_shard"], row["row_in_shard"]))
                     .subtractByKey(drops).values().cache())
    keys = survivors.flatMap(lambda row: row["score_keys"])
    # Global, bounded: counts per bin of the exact quantile's two passes (at most 65,536 each).
    cutoff = finalize.quantile_cutoff(
        cfg.keep_top_fraction,
        lambda: dict(keys.map(ExactQuantile.high).countByValue()),
        lambda high: dict(keys.filter(lambda key: ExactQuantile.high(key) == high).map(ExactQuantile.low)
                          .countByValue()))
    # Global, O(entities) not O(rows): one count per entity, broadcast to the shard writers.
    counts = dict(survivors.flatMap(lambda row: [(e, 1) for e in finalize.kept_entity_ids(row, cfg, cutoff)])
                  .reduceByKey(operator.add).collect())
    counts_broadcast = sc.broadcast(counts)

    decisions = plan.decisions(cutoff, {})
    stem_of = dict(committed)
    semantic_by_position = (semantic.map(lambda item: (position.value[item[0]], item[1])) if semantic is not None
                            else sc.parallelize([], 1))
    _per_shard(sc, [stem_of[shard.shard_id] for shard in plan.shards], semantic_by_position,
               lambda stem, rows: _write_task(stem, rows, work, target, decisions, counts_broadcast,
                                              metrics))
    parts = plan.entity_parts()
    kept_entities = [(finalize.entity_part(e, parts), (e, c)) for e, c in counts.items() if finalize.keeps_entity(c, cfg)]
    if kept_entities:
        (sc.parallelize(kept_entities, min(parts, len(kept_entities))).groupByKey()
         .map(lambda part: finalize.write_entity_part(part[0], parts, part[1], plan.kb_path, plan.kb_version, target))
         .collect())
    survivors.unpersist()
    narrow_rdd.unpersist()
    counts_broadcast.destroy()
    position.destroy()
    return f"spark:{sc.master}", metrics.values()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """spark-submit entry point: the arguments of `i2e build`, run on the submitting session."""
    from pipelines.cli import main as cli_main

    return cli_main(["build", "--runner", "spark", "--spark-master", "", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
