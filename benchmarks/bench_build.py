"""Whole-build pairs/s on Beam (FnApiRunner) and Spark (``local[2]``) against the bare loop
(``pipelines.local``) over the same shards, in the same run, with the real models.

Input: an img2dataset-style parquet folder made in a temporary folder from the coco-mini
photos and captions (``jpg``, ``caption``, ``url``), replicated to ``--pairs`` rows, every
replica distinct (" (copy N)" after the caption, and a JPEG comment naming the copy so the
image's sha256 differs), ``--shard-rows`` rows a file (each file is one shard).

Each measured build has a fresh output folder and runs what ``pipelines.run.run_build``
runs, with the runner's own execute function called directly: ``plan_run``, then
``local.hash_and_dedup`` + ``local.annotate`` + ``local.finalize_tables`` / ``pipelines.beam.pipeline.execute(plan, [])``
/ ``pipelines.spark.job.execute(plan, spark)``, then ``publish``. Wall = all three.
``--repeats`` rounds of one build per runner, the runner order rotating each round;
medians. ratio = bare wall / runner wall (target >= 0.9).

Model loads: every build loads the models once per worker process, inside its wall time.
The bare loop and Beam (FnApiRunner: in this process, one worker thread) build a fresh
``Annotator`` per build; Spark ``local[2]`` runs two Python workers, each loading its own
``Annotator`` (two loads in parallel, two sets of torch threads on the same cores). Spark
workers keep their Annotator per annotation fingerprint across jobs, so each build gets its
own fingerprint (``image.max_bytes`` lowered by the build number, which changes no row
here): no runner reuses models of an earlier build. The alias index is cached per process
(``shared_alias_index``), so after the first build the bare loop and Beam load faster than
a fresh process; ``Annotator.setup()`` is timed here both cold and again, to show that.
Apart, not in any build: Spark's session (JVM) start-up and a first 2-task job (Python
workers start), Beam's first tiny pipeline.

Phases: for the bare loop, ``local.hash_and_dedup`` + ``local.annotate`` ("annotate": the
hash pass, the dedup plan and the annotate pass) and ``local.finalize_tables`` are timed as
calls. Beam and Spark do both in one execute call, so there annotate = start of execute
(the hash pass included) to the last shard marker's commit time, finalize = the rest of execute (on Beam, projecting a
shard's narrow rows is fused with annotating it, so it falls mostly in "annotate").
Finalize bytes: image bytes in ``_work/annotations`` (read once, by the shard writers) vs
the narrow rows the global steps group and count (``finalize.project_shard``; arrow and
pickle sizes).

Full-size run (9 builds of 2,000 pairs: about 20 minutes on an idle 2-core machine, far
longer when other work shares the cores)::

    .venv/bin/python benchmarks/bench_build.py --pairs 2000 --shard-rows 250 --repeats 3 --out benchmarks/out/bench_build.json

Smoke run: ``--pairs 60 --shard-rows 20 --repeats 1``.
"""
from __future__ import annotations

import argparse
import json
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (DEFAULT_DATA, coco_pairs, facts_lines, loadavg, median, run_facts, timed,  # noqa: E402
                     write_replica_parquet)

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from i2e_engine import finalize  # noqa: E402
from i2e_engine.publish import table_uri  # noqa: E402
from i2e_engine.build import RunPlan, plan_run, publish  # noqa: E402
from i2e_engine.config import BuildConfig  # noqa: E402
from i2e_engine.images import ImageLimits  # noqa: E402
from i2e_engine.kb.build import ensure_default_kb  # noqa: E402
from i2e_engine.stages import Annotator  # noqa: E402
from pipelines import local  # noqa: E402

RUNNERS = ("local", "beam", "spark")
SPARK_MASTER = "local[2]"


def build_config(inputs: Path, out: Path, number: int) -> BuildConfig:
    """The shipped defaults, with a fingerprint of this build's own (see the docstring)."""
    return BuildConfig(inputs=[str(inputs)], output=str(out),
                       image=ImageLimits(max_bytes=ImageLimits().max_bytes - number))


def last_commit(plan: RunPlan) -> float:
    """When the last shard marker was written (epoch seconds)."""
    return max(Path(plan.work.marker_path(m.stem)).stat().st_mtime for m in plan.work.markers().values())


def run_one(runner: str, inputs: Path, out: Path, number: int, spark: Any) -> tuple[dict, RunPlan]:
    """One whole build; its timings and table row counts."""
    started = time.perf_counter()
    load_before = loadavg()
    plan_s, plan = timed(lambda: plan_run(build_config(inputs, out, number), progress=lambda _: None))
    if runner == "local":
        annotate_s, _ = timed(lambda: local.annotate(plan, local.hash_and_dedup(plan)))
        finalize_s, _ = timed(lambda: local.finalize_tables(plan))
        name = local.RUNNER
    else:   # one execute call: split it at the last shard commit
        if runner == "beam":
            from pipelines.beam.pipeline import execute
        else:
            from pipelines.spark.job import execute
        execute_start = time.time()
        name, _ = execute(plan, [] if runner == "beam" else spark)
        execute_end, committed = time.time(), last_commit(plan)
        annotate_s, finalize_s = committed - execute_start, execute_end - committed
    publish_s, manifest = timed(lambda: publish(plan, name))
    plan.lease.release()
    return {"runner": runner, "name": name, "wall_s": time.perf_counter() - started, "plan_s": plan_s,
            "annotate_s": annotate_s, "finalize_s": finalize_s, "publish_s": publish_s,
            "shard_seconds_sum": sum(m.seconds for m in plan.work.markers().values()),
            "pairs": manifest["input_samples"], "rows": manifest["rows"], "loadavg_before": load_before}, plan


def image_bytes(path: Path) -> int:
    """Sum of the lengths of the ``image`` values of one parquet file."""
    return pc.sum(pc.binary_length(pq.read_table(path, columns=["image"]).column("image"))).as_py() or 0


def finalize_bytes(plan: RunPlan) -> dict:
    """Image bytes the shard writers read vs the narrow rows the global steps move."""
    stems = [stem for _, stem in plan.committed()]
    project_s, narrow = timed(lambda: [row for s in stems for row in finalize.project_shard(plan.work, s)])
    return {"annotation_rows": len(narrow),
            "image_bytes_in_annotations": sum(image_bytes(plan.work.path("annotations", s)) for s in stems),
            "annotations_files_on_disk_bytes": sum(Path(plan.work.path("annotations", s)).stat().st_size for s in stems),
            "narrow_rows_arrow_bytes": pa.Table.from_pylist(narrow).nbytes if narrow else 0,
            "narrow_rows_pickle_bytes": len(pickle.dumps(narrow)),
            "project_shard_all_s": project_s,
            "image_bytes_in_images_table": sum(image_bytes(p) for p in Path(table_uri(plan.out, "images")).glob("*.parquet"))}


def spark_start() -> tuple[Any, dict[str, float]]:
    from pipelines.spark.job import spark_session

    session_s, spark = timed(lambda: spark_session(SPARK_MASTER))
    spark.sparkContext.setLogLevel("WARN")
    job_s, _ = timed(lambda: spark.sparkContext.parallelize(range(2), 2).map(lambda x: x).collect())
    return spark, {f"Spark: spark_session({SPARK_MASTER!r}) (JVM start-up)": session_s,
                   "Spark: first job, 2 trivial tasks (Python workers start)": job_s}


def beam_warmup() -> float:
    import apache_beam as beam
    from pipelines.beam.pipeline import pipeline_options

    def run() -> None:
        with beam.Pipeline(options=pipeline_options([])) as pipeline:
            _ = pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda x: x)
    return timed(run)[0]


def report(args: argparse.Namespace, shards: int, facts: dict, loads: dict[str, float], builds: list[dict],
           moved: Optional[dict], runners: list[str]) -> tuple[str, dict]:
    by_runner = {r: [b for b in builds if b["runner"] == r] for r in runners}
    bare = {b["repeat"]: b["wall_s"] for b in by_runner["local"]}
    pairs = builds[0]["pairs"]
    summary = {}
    lines = [*facts_lines(facts),
             f"{pairs} pairs ({args.pairs} asked) in {shards} parquet shards of "
             f"{args.shard_rows} rows; {args.repeats} rounds, runner order rotating; medians; load average at end "
             f"{loadavg()}.", "",
             "| runner | wall s, median (per round) | pairs/s | ratio bare / runner (per round) | annotate s | "
             "finalize s | plan + publish s | sum of annotate_shard s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for runner, runs in by_runner.items():
        wall = median([b["wall_s"] for b in runs])
        ratios = [bare[b["repeat"]] / b["wall_s"] for b in runs if b["repeat"] in bare]
        row = {key: median([b[key] for b in runs]) for key in
               ("wall_s", "annotate_s", "finalize_s", "plan_s", "publish_s", "shard_seconds_sum")}
        row.update(pairs_per_s=pairs / wall, ratio=median(ratios), ratios=ratios,
                   ratio_of_medians=median(list(bare.values())) / wall)
        summary[runner] = row
        name = {"local": "bare loop (pipelines.local)", "beam": "Beam FnApiRunner",
                "spark": f"Spark {SPARK_MASTER}"}[runner]
        walls = ", ".join(f"{b['wall_s']:.1f}" for b in runs)
        lines.append(f"| {name} | {wall:.1f} ({walls}) | "
                     f"{pairs / wall:.1f} | **{row['ratio']:.3f}** ({', '.join(f'{r:.3f}' for r in ratios)}) | "
                     f"{row['annotate_s']:.1f} | {row['finalize_s']:.1f} | {row['plan_s'] + row['publish_s']:.1f} | "
                     f"{row['shard_seconds_sum']:.1f} |")
    same = len({json.dumps(b["rows"], sort_keys=True) for b in builds}) == 1
    lines += ["", f"Table row counts identical across all builds: {'yes' if same else 'NO'} "
              f"({builds[0]['rows']}).",
              "annotate / finalize: bare loop = the `local.hash_and_dedup` + `local.annotate` / "
              "`local.finalize_tables` calls (annotate includes the hash pass and its `Annotator.setup()`); Beam and Spark = start of execute to the last shard commit / "
              "the rest of execute. Sum of annotate_shard s = the shard markers' `seconds` (no model load; on "
              "Spark two shards run at once).",
              "Model loads are inside every build's wall: the bare loop and Beam (in this process) load one "
              "Annotator per build, Spark one per Python worker (2, in parallel); every build has its own "
              "annotation fingerprint, so no runner reuses models of an earlier build.", "",
              "Start-up and loads, not in any build's wall:", "", "| what | s |", "|---|---:|"]
    lines += [f"| {name} | {s:.2f} |" for name, s in loads.items()]
    if moved:
        per_row = lambda key: moved[key] / max(1, moved["annotation_rows"])  # noqa: E731
        lines += ["", f"Finalize, bytes moved (first bare build, {moved['annotation_rows']} annotation rows):", "",
                  "| what | bytes | bytes/row |", "|---|---:|---:|"]
        lines += [f"| {label} | {moved[key]:,} | {per_row(key):,.0f} |" for key, label in (
            ("image_bytes_in_annotations", "image bytes in _work/annotations (read once by write_shard_tables)"),
            ("annotations_files_on_disk_bytes", "_work/annotations files on disk"),
            ("narrow_rows_arrow_bytes", "narrow rows (project_shard) as arrow: what dedup / quantile / counts move"),
            ("narrow_rows_pickle_bytes", "narrow rows (project_shard) pickled"),
            ("image_bytes_in_images_table", "image bytes written to the images table (once)"))]
        lines.append(f"\nproject_shard over all shards: {moved['project_shard_all_s']:.2f} s; bare "
                     f"`local.finalize_tables`: {summary['local']['finalize_s']:.2f} s (median).")
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000, help="input rows (distinct replicas of coco-mini)")
    parser.add_argument("--shard-rows", type=int, default=250, help="rows per parquet file (= per shard)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of one build per runner; medians")
    parser.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated subset; 'local' is required")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="coco-mini root (annotations/ + photos)")
    parser.add_argument("--workdir", help="where inputs and outputs go (default: a new temp folder, removed)")
    parser.add_argument("--out", help="also write the raw numbers as JSON here")
    args = parser.parse_args()
    runners = [r for r in RUNNERS if r in args.runners.split(",")]
    if "local" not in runners:
        parser.error("--runners must include local (the baseline)")

    facts = run_facts()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="i2e_bench_build_"))
    inputs = root / "input"
    shutil.rmtree(inputs, ignore_errors=True)
    shards = len(write_replica_parquet(coco_pairs(args.data), inputs, args.pairs, args.shard_rows))

    config = build_config(inputs, root / "unused", 0)
    kb_path = str(ensure_default_kb())
    loads = {"Annotator.setup() in this process, cold (first: imports, alias index, models)":
                 timed(Annotator(config, kb_path).setup)[0],
             "Annotator.setup() in this process, again (alias index cached)":
                 timed(Annotator(config, kb_path).setup)[0]}
    spark = None
    if "spark" in runners:
        spark, spark_loads = spark_start()
        loads.update(spark_loads)
    if "beam" in runners:
        loads["Beam: first FnApiRunner pipeline, 3 elements (warm-up)"] = beam_warmup()

    builds: list[dict] = []
    moved = None
    started = time.perf_counter()
    try:
        for repeat in range(args.repeats):
            for runner in runners[repeat % len(runners):] + runners[:repeat % len(runners)]:
                out = root / f"out-{repeat}-{runner}"
                build, plan = run_one(runner, inputs, out, len(builds) + 1, spark)
                builds.append({**build, "repeat": repeat})
                if runner == "local" and moved is None:
                    moved = finalize_bytes(plan)
                shutil.rmtree(out)
                print(f"round {repeat + 1}/{args.repeats} {runner}: {build['wall_s']:.1f} s "
                      f"(at {time.perf_counter() - started:.0f} s, load average {loadavg()})",
                      file=sys.stderr, flush=True)
    finally:
        if spark is not None:
            spark.stop()
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)

    markdown, summary = report(args, shards, facts, loads, builds, moved, runners)
    print(markdown)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            **facts, "args": vars(args), "loadavg_end": loadavg(), "loads_s": loads, "builds": builds,
            "summary": summary, "finalize_bytes": moved, "markdown": markdown}, indent=2, default=str))


if __name__ == "__main__":
    main()
