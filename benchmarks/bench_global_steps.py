"""The two global steps of a build at scale (issue 22): does the driver stay flat?

For each runner of ``--runners`` (``spark``: local[2]; ``beam``: FnApiRunner) and each N of
``--sizes`` (default 10^5 and 10^6), a FRESH Python process builds synthetic narrow data in
the runner's workers (nothing is made on the driver) and pushes it through the shipped code:

1. *components*: N hash vertices (16 hex digits each), 20% of them in near-copy chains of
   10 (one chain edge per neighbour pair) and one chain of 1,000, through
   ``i2e_engine.dedup.components.label_components(flow, edges, DedupConfig().component_rounds)``;
2. *semantic dedup*: N narrow rows with 384-d float32 embeddings (one row in 10 a near
   copy, cosine about 0.9999, of the row before it), through
   ``i2e_engine.finalize.semantic_decisions(flow, rows, DedupConfig(semantic=True))``
   (k-means on the bounded sample, about sqrt(N) clusters, SemDeDup per cluster);

on the runner's flow (``pipelines.spark.job.SparkFlow`` / ``pipelines.beam.pipeline.BeamFlow``),
then counts the labels and decisions. It reports the wall time of each step and the
driver's peak RSS (``ru_maxrss`` of the child process: the Python driver, not Spark's JVM
or its Python workers), which should stay within 1.3x from the smallest N to the largest.

Full run (2 cores, nice)::

    nice -n 10 .venv/bin/python benchmarks/bench_global_steps.py --out benchmarks/out/bench_global_steps.json

Smoke run (what tests/pipelines/test_bench_global_steps.py runs): ``--smoke``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name, loadavg  # noqa: E402

PARTITIONS = 8
CHAIN, CHAINED_EVERY = 10, 50      # a chain of 10 vertices at the start of every 50
LONG_CHAIN = 1000                  # and one chain of 1,000 at the start of the first partition
COPY_EVERY = 10                    # row i is a near copy of row i - 1 when i % 10 == 1
SMOKE_SIZES, SMOKE_DIMS = (800, 1600), 16


def vertex(i: int) -> str:
    return hashlib.blake2b(str(i).encode(), digest_size=8).hexdigest()


def chain_edges(part: int, rows: int) -> list[tuple[str, str]]:
    """The near-copy edges among the vertices of one partition."""
    start, stop = part * rows // PARTITIONS, (part + 1) * rows // PARTITIONS
    edges = [(vertex(i), vertex(i + 1)) for i in range(start, stop - 1)
             if (i - start) % CHAINED_EVERY < CHAIN - 1]
    if part == 0:
        edges += [(vertex(i), vertex(i + 1)) for i in range(start, min(stop, start + LONG_CHAIN) - 1)]
    return edges


def narrow_rows(part: int, rows: int, dims: int):
    """Narrow rows (``i2e_engine.finalize.NarrowRow``) of one partition, embeddings as float32 bytes."""
    import numpy as np

    for i in range(part * rows // PARTITIONS, (part + 1) * rows // PARTITIONS):
        copy = i % COPY_EVERY == 1
        embedding = np.random.default_rng(i - 1 if copy else i).standard_normal(dims, dtype=np.float32)
        if copy:
            embedding += 0.01 * np.random.default_rng(10**9 + i).standard_normal(dims, dtype=np.float32)
        yield {"source_shard": f"shard-{i // 10_000:05d}", "row_in_shard": i % 10_000, "sample_id": str(i),
               "pixels": 100, "links": [], "score_keys": [], "image_embedding": embedding.tobytes()}


# ----------------------------------------------------------------------------- one size, in a fresh process

def _spark_steps(rows: int, dims: int) -> dict:
    from i2e_engine import finalize
    from i2e_engine.config import DedupConfig
    from i2e_engine.dedup import components
    from pipelines.spark.job import SparkFlow, spark_session

    spark = spark_session("local[2]")
    sc, flow = spark.sparkContext, SparkFlow(spark)
    parts = sc.parallelize(range(PARTITIONS), PARTITIONS)
    started = time.perf_counter()
    labels = components.label_components(flow, parts.flatMap(lambda p: chain_edges(p, rows)),
                                         DedupConfig().component_rounds).count()
    components_s = time.perf_counter() - started
    flow.release()
    started = time.perf_counter()
    decisions = finalize.semantic_decisions(flow, parts.flatMap(lambda p: narrow_rows(p, rows, dims)),
                                            DedupConfig(semantic=True))
    dropped = decisions.filter(lambda item: item[1].dropped).count()
    semantic_s = time.perf_counter() - started
    spark.stop()
    return {"labels": labels, "semantic_dropped": dropped, "components_s": components_s, "semantic_s": semantic_s}


def _beam_steps(rows: int, dims: int) -> dict:
    import apache_beam as beam
    from apache_beam.metrics.metric import Metrics, MetricsFilter

    from i2e_engine import finalize
    from i2e_engine.config import DedupConfig
    from i2e_engine.dedup import components
    from pipelines.beam.pipeline import BeamFlow, pipeline_options

    def counted(name: str):
        return lambda _: Metrics.counter("bench", name).inc()

    timings = {}
    for step in ("components", "semantic"):   # one pipeline a step, to time each
        pipeline = beam.Pipeline(options=pipeline_options(["--direct_num_workers=2"]))
        flow = BeamFlow(pipeline)
        parts = pipeline | "Partitions" >> beam.Create(list(range(PARTITIONS))) | beam.Reshuffle()
        if step == "components":
            labels = components.label_components(
                flow, parts | beam.FlatMap(lambda p: chain_edges(p, rows)), DedupConfig().component_rounds)
            _ = labels | beam.Map(counted("labels"))
        else:
            decisions = finalize.semantic_decisions(flow, parts | beam.FlatMap(lambda p: narrow_rows(p, rows, dims)),
                                                    DedupConfig(semantic=True))
            _ = decisions | beam.Filter(lambda item: item[1].dropped) | beam.Map(counted("semantic_dropped"))
        started = time.perf_counter()
        result = pipeline.run()
        result.wait_until_finish()
        timings[f"{step}_s"] = time.perf_counter() - started
        for counter in result.metrics().query(MetricsFilter().with_namespace("bench"))["counters"]:
            timings[counter.key.metric.name] = counter.committed
    return timings


def child(runner: str, rows: int, dims: int) -> dict:
    steps = _spark_steps if runner == "spark" else _beam_steps
    out = {"runner": runner, "rows": rows, "dims": dims, **steps(rows, dims)}
    out["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# ----------------------------------------------------------------------------- driver

def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts")
    parser.add_argument("--runners", default="spark", help="comma-separated: spark, beam")
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes {SMOKE_SIZES}, {SMOKE_DIMS} dimensions")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--child", nargs=3, metavar=("RUNNER", "ROWS", "DIMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), int(args.child[2]))))
        return {}
    sizes = list(SMOKE_SIZES) if args.smoke else [int(n) for n in args.sizes.split(",")]
    dims = SMOKE_DIMS if args.smoke else args.dims
    runs = []
    for runner in args.runners.split(","):
        for rows in sizes:
            for _ in range(args.repeats):
                done = subprocess.run([sys.executable, __file__, "--child", runner, str(rows), str(dims)],
                                      check=True, capture_output=True, text=True)
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), flush=True)
    report = {"command": " ".join(sys.argv), "cpu": cpu_name(), "loadavg_after": loadavg(), "runs": runs,
              "driver_rss_ratio": _ratios(runs)}
    print(json.dumps(report["driver_rss_ratio"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


def _ratios(runs: list[dict]) -> dict[str, float]:
    """Per runner: median driver peak RSS at the largest size over that at the smallest."""
    import statistics

    ratios = {}
    for runner in sorted({r["runner"] for r in runs}):
        by_size: dict[int, list[float]] = {}
        for run in runs:
            if run["runner"] == runner:
                by_size.setdefault(run["rows"], []).append(run["driver_peak_rss_mb"])
        ratios[runner] = statistics.median(by_size[max(by_size)]) / statistics.median(by_size[min(by_size)])
    return ratios


if __name__ == "__main__":
    main()
