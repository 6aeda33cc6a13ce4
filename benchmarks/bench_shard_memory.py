"""Peak memory of annotating one shard does not grow with the shard's size.

For each of ``--rows`` (default 500 and 5,000) one img2dataset-style parquet file of that
many rows is made from the coco-mini photos and captions, every replica distinct (" (copy
N)" after the caption, a JPEG comment naming the copy so the sha256 differs), in row groups
of 256 rows. Each file is then annotated in a FRESH Python process (so peaks do not mix) by
the shipped code: ``plan_run``, ``Annotator.setup()`` (real spaCy, KB alias matcher and
offline scorer), then one ``i2e_engine.shard.annotate_shard`` call (batches of
``BuildConfig.batch_rows``; ``--scorer-batch`` sets the scorer's batch, default as shipped).

Reported per shard size, from the child process: RSS right after ``Annotator.setup()``
(the model baseline, ``VmRSS``), the process peak at that moment and at the end
(``getrusage(RUSAGE_SELF).ru_maxrss``), and the peak of the annotation alone (``VmHWM``
after resetting it at the end of setup through ``/proc/self/clear_refs``, where the kernel
allows it). ratio = end peak of the largest shard / of the smallest (target <= 1.3);
increment = end peak - RSS after setup.

Full-size run (about 5-6 minutes on an idle 2-core machine, most of it the 5,000-row shard)::

    .venv/bin/python benchmarks/bench_shard_memory.py --rows 500,5000 --out benchmarks/out/bench_shard_memory.json

Smoke run: ``--rows 30,60``.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (DEFAULT_DATA, coco_pairs, facts_lines, loadavg, proc_status_kib, reset_peak,  # noqa: E402
                     run_facts, write_replica_parquet)

MIB = 1024 * 1024


def child(parquet: str, output: str, scorer_batch: Optional[int]) -> dict:
    """Annotate the one shard of ``parquet`` with the shipped code; memory and counts."""
    from i2e_engine.build import plan_run
    from i2e_engine.config import BuildConfig
    from i2e_engine.shard import annotate_shard

    config = BuildConfig(inputs=[parquet], output=output)
    if scorer_batch:
        config.scorer.batch_size = scorer_batch
    plan = plan_run(config, progress=lambda _: None)
    (shard,) = plan.todo
    started = time.perf_counter()
    annotator = plan.annotator().setup()
    setup_s = time.perf_counter() - started
    after_setup = {"rss_after_setup_kib": proc_status_kib("VmRSS"),
                   "peak_after_setup_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    reset = reset_peak()
    started = time.perf_counter()
    marker = annotate_shard(shard, annotator, plan.work, plan.fingerprint, plan.run_id, batch_rows=config.batch_rows)
    return {**after_setup, "setup_s": setup_s, "annotate_s": time.perf_counter() - started,
            "peak_end_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "peak_annotate_only_kib": proc_status_kib("VmHWM") if reset else None,
            "rss_end_kib": proc_status_kib("VmRSS"), "pairs_read": marker.pairs_read,
            "annotations": marker.annotations, "rejects": marker.rejects,
            "batch_rows": config.batch_rows, "scorer_batch": config.scorer.batch_size}


def measure(rows: int, parquet: Path, output: Path, scorer_batch: Optional[int]) -> dict:
    """Run :func:`child` in a fresh interpreter; its JSON result plus the wall time."""
    command = [sys.executable, __file__, "--child", str(parquet), "--child-output", str(output)]
    if scorer_batch:
        command += ["--scorer-batch", str(scorer_batch)]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"rows": rows, "wall_s": time.perf_counter() - started, **result}


def mib(kib: Optional[int]) -> str:
    return "n/a" if kib is None else f"{kib / 1024:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="500,5000", help="comma-separated shard sizes, one fresh process each")
    parser.add_argument("--scorer-batch", type=int, help="scorer batch size (default: as shipped)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="coco-mini root (annotations/ + photos)")
    parser.add_argument("--workdir", help="where inputs and outputs go (default: a new temp folder, removed)")
    parser.add_argument("--out", help="also write the raw numbers as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.child_output, args.scorer_batch)))
        return

    sizes = sorted(int(n) for n in args.rows.split(","))
    facts = run_facts()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="i2e_bench_memory_"))
    pairs = coco_pairs(args.data)
    results = []
    try:
        for rows in sizes:
            folder = root / f"rows{rows}"
            shutil.rmtree(folder, ignore_errors=True)
            (parquet,) = write_replica_parquet(pairs, folder / "input", rows, rows)
            results.append(measure(rows, parquet, folder / "out", args.scorer_batch))
            shutil.rmtree(folder)
            print(f"{rows} rows: peak {mib(results[-1]['peak_end_kib'])} MiB in {results[-1]['wall_s']:.0f} s "
                  f"(load average {loadavg()})", file=sys.stderr, flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)

    small, large = results[0], results[-1]
    ratio = large["peak_end_kib"] / small["peak_end_kib"]
    lines = [*facts_lines(facts),
             f"One shard per fresh process; batch_rows {small['batch_rows']}, scorer batch {small['scorer_batch']}; "
             f"load average at end {loadavg()}.", "",
             "| shard rows | annotated | RSS after setup MiB | peak after setup MiB | peak at end MiB (ru_maxrss) "
             "| increment over RSS after setup MiB | peak of annotate_shard alone MiB (VmHWM) | annotate s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['annotations']:,} | {mib(r['rss_after_setup_kib'])} | "
                     f"{mib(r['peak_after_setup_kib'])} | {mib(r['peak_end_kib'])} | "
                     f"{mib(r['peak_end_kib'] - r['rss_after_setup_kib'])} | {mib(r['peak_annotate_only_kib'])} | "
                     f"{r['annotate_s']:.1f} |")
    lines += ["", f"Peak ratio {large['rows']:,} / {small['rows']:,} rows: **{ratio:.3f}** (target <= 1.3)."]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**facts, "args": vars(args), "results": results,
                                              "peak_ratio": ratio, "markdown": report}, indent=2))


if __name__ == "__main__":
    main()
