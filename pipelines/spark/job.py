"""The I2E build on Spark, a thin adapter over the engine core; also the spark-submit entry point.

    spark-submit [spark options] pipelines/spark/job.py <the arguments of `i2e build`>

- *Annotate*: one Spark task per shard still to do; the task annotates and commits it with
  :func:`i2e_engine.shard.annotate_shard`. Models are loaded once per executor Python
  process (Spark reuses its Python workers between tasks) and kept in ``_ANNOTATORS``.
- *Finalize* (``i2e_engine.finalize``): the narrow rows of every committed shard become a
  DataFrame; dedup survivors are a window over sha256 ordered by ``SURVIVOR_ORDER``; the
  exact quantile's two passes and the per-entity counts are DataFrame group-bys; each shard
  is then written by one task, joined with its duplicate decisions. Only narrow rows, keys
  and counts are shuffled; image bytes are read once and written once by the shard writer.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Sequence

from i2e_engine import finalize
from i2e_engine.build import RunPlan
from i2e_engine.config import BuildConfig
from i2e_engine.finalize import Decisions, Target
from i2e_engine.readers import ShardRef
from i2e_engine.shard import annotate_shard
from i2e_engine.stages import Annotator
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


def _annotate_task(shard: ShardRef, config: BuildConfig, kb_path: str, work: WorkDir, fingerprint: str,
                   run_id: str) -> tuple[str, str]:
    annotator = _ANNOTATORS.get(fingerprint)
    if annotator is None:
        _ANNOTATORS.clear()   # a reused worker of an earlier run frees that run's models first
        annotator = _ANNOTATORS[fingerprint] = Annotator(config, kb_path).setup()
    marker = annotate_shard(shard, annotator, work, fingerprint, run_id, config.batch_rows)
    return marker.shard_id, marker.stem


def _narrow_schema():
    from pyspark.sql import types as T

    link = T.StructType([T.StructField("entity_id", T.StringType(), False),
                         T.StructField("image_entity_score", T.DoubleType(), False)])
    return T.StructType([
        T.StructField("source_shard", T.StringType(), False),
        T.StructField("row_in_shard", T.LongType(), False),
        T.StructField("sample_id", T.StringType(), False),
        T.StructField("sha256", T.StringType(), False),
        T.StructField("n_links", T.LongType(), False),
        T.StructField("links", T.ArrayType(link, False), False),
        T.StructField("score_keys", T.ArrayType(T.LongType(), False), False),
    ])


def _write_task(row, work: WorkDir, target: Target, decisions: Decisions, counts_broadcast) -> str:
    duplicates = {d["row_in_shard"]: d["survivor_sample_id"] for d in (row["duplicates"] or [])}
    decisions = dataclasses.replace(decisions, entity_counts=counts_broadcast.value)
    finalize.write_shard_tables(work, row["stem"], target, duplicates, decisions)
    return row["stem"]


def execute(plan: RunPlan, spark) -> str:
    """Annotate ``plan.todo`` and write the tables into ``plan.target``; returns the runner's name."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    sc = spark.sparkContext
    config, work, target, cfg = plan.config, plan.work, plan.target, plan.config.filter
    if plan.todo:
        sc.setJobDescription(f"i2e annotate {len(plan.todo)} shards")
        (sc.parallelize(plan.todo, len(plan.todo))
         .map(lambda shard: _annotate_task(shard, config, plan.kb_path, work, plan.fingerprint, plan.run_id))
         .collect())
    committed = plan.committed()
    sc.setJobDescription("i2e finalize")
    slices = max(1, len(committed))
    narrow = spark.createDataFrame(
        sc.parallelize([stem for _, stem in committed], slices)
        .flatMap(lambda stem: finalize.project_shard(work, stem)), _narrow_schema())
    order = [F.col(name).asc() if ascending else F.col(name).desc() for name, ascending in finalize.SURVIVOR_ORDER]
    by_copy = Window.partitionBy("sha256").orderBy(*order)
    ranked = (narrow.withColumn("copy_rank", F.row_number().over(by_copy))
              .withColumn("survivor_sample_id", F.first("sample_id").over(by_copy))
              .cache())
    survivors = ranked.filter(F.col("copy_rank") == 1)
    keys = survivors.select(F.explode("score_keys").alias("key"))

    def bin_counts(frame, expression) -> dict[int, int]:
        return {r["bin"]: r["count"] for r in frame.groupBy(expression.alias("bin")).count().collect()}

    cutoff = finalize.quantile_cutoff(
        cfg.keep_top_fraction,
        lambda: bin_counts(keys, F.shiftright("key", finalize.ExactQuantile.BITS)),
        lambda high: bin_counts(keys.filter(F.shiftright("key", finalize.ExactQuantile.BITS) == high),
                                F.col("key").bitwiseAND((1 << finalize.ExactQuantile.BITS) - 1)))
    kept_ids = (survivors.rdd.flatMap(lambda r: [(e,) for e in finalize.kept_entity_ids(r.asDict(True), cfg, cutoff)])
                .toDF("entity_id string"))
    counts_frame = kept_ids.groupBy("entity_id").count()
    # Global, O(entities) not O(rows): one count per entity, broadcast to the shard writers.
    counts = {r["entity_id"]: r["count"] for r in counts_frame.collect()}
    counts_broadcast = sc.broadcast(counts)

    duplicates = (ranked.filter(F.col("copy_rank") > 1)
                  .groupBy("source_shard")
                  .agg(F.collect_list(F.struct("row_in_shard", "survivor_sample_id")).alias("duplicates")))
    shards = spark.createDataFrame(committed, "shard_id string, stem string")
    jobs = shards.join(duplicates, shards.shard_id == duplicates.source_shard, "left").select("stem", "duplicates")
    decisions = plan.decisions(cutoff, {})
    jobs.repartition(slices, "stem").rdd.map(
        lambda row: _write_task(row, work, target, decisions, counts_broadcast)).collect()

    parts = plan.entity_parts()
    kept_entities = [(finalize.entity_part(e, parts), (e, c)) for e, c in counts.items() if finalize.keeps_entity(c, cfg)]
    if kept_entities:
        (sc.parallelize(kept_entities, min(parts, len(kept_entities))).groupByKey()
         .map(lambda part: finalize.write_entity_part(part[0], parts, part[1], plan.kb_path, plan.kb_version, target))
         .collect())
    ranked.unpersist()
    counts_broadcast.destroy()
    return f"spark:{sc.master}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """spark-submit entry point: the arguments of `i2e build`, run on the submitting session."""
    from pipelines.cli import main as cli_main

    return cli_main(["build", "--runner", "spark", "--spark-master", "", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
