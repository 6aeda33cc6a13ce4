"""This trainer against open_clip's own trainer, side by side in one run, on this CPU.

Both train open_clip's ViT-B-32 (random init, image + text towers, 77-token text), CLIP loss,
batch 32, fp32, on the same (photo, caption) pairs, in alternating rounds:

- The pairs: every coco-mini photo with its first caption (a folder of photo symlinks with
  ``.txt`` sidecars in ``--workdir``), built with ``i2e build`` and packed with ``i2e pack``
  once. open_clip's CSV lists the photos the pack kept, with the pack's caption for each, so
  both trainers see the same images and the same texts.
- (a) ``python -m open_clip_train.main`` (the open_clip_torch wheel) on that CSV (the pairs
  repeated to fill ``--steps`` batches of one epoch), one dataloader worker process, torch's
  default threads.
- (b) ``trainer/train.py --config contrastive_openclip_vit_b32`` (one Ray Train worker with
  the 2 CPUs, its decode threads on them) on the pack, with ``data.text_template={alt_text}``
  (the caption alone, as open_clip's text).

Both tokenize to 77 tokens. open_clip's text tower always runs over all 77; ours cuts each
batch after its longest caption (``text.trim_padding``, exact: see i2e_engine/encoder/towers.py), which
the ``full77`` variant (``text.trim_padding=false``) turns off to show the same-compute ratio.

Steady state: the first ``--skip`` steps of every run are left out (start-up, allocator warm-up,
our FLOP-counting step). open_clip: its per-step log lines (``--log-every-n-steps 1``: "Data (t)"
and "Batch (t)" are that step's); ours: ``samples_per_s_steady`` and ``data_wait_frac_steady``
of the last step log. Reported: the median over rounds of each, and their ratio (ours / open_clip);
for ours also the achieved GFLOP/s (the first step's FLOPs, ``torch.utils.flop_counter``, times
steady steps/s: there is no CPU peak to take an MFU against, compare the rate of a lone matmul).
``--variant NAME=OVERRIDES`` adds runs of ours with config overrides (``;``-separated), in the
same alternation (e.g. ``full77=text.trim_padding=false``, ``for_loop=optim.adamw_impl=for_loop``).

    .venv/bin/python benchmarks/bench_train_vs_openclip.py --rounds 3 --steps 10 \\
        --variant full77=text.trim_padding=false
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATA, REPO, facts_lines, loadavg, median, run_facts  # noqa: E402

BATCH = 32
OPEN_CLIP_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+.*?Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+),")


def caption_folder(data: Path, folder: Path) -> int:
    """Every coco-mini photo on disk (a symlink) with its first caption as a ``.txt`` sidecar,
    the input of i2e's folder reader; returns the number of photos."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = 0
    for split in ("val", "train"):
        ann = json.loads((data / "annotations" / f"captions_{split}2017.json").read_text())
        first = {}
        for a in ann["annotations"]:
            first.setdefault(a["image_id"], a["caption"].strip())
        for image in ann["images"]:
            path = data / f"{split}2017" / image["file_name"]
            if path.is_file() and image["id"] in first:
                link = folder / f"{split}_{image['file_name']}"
                if not link.exists():
                    link.symlink_to(path)
                link.with_suffix(".txt").write_text(first[image["id"]])
                photos += 1
    return photos


def packed_csv(tables: Path, packed: Path, out: Path, rows: int) -> int:
    """A tab-separated CSV (filepath, title) of the photos the pack kept, each with the pack's
    caption, cycled to ``rows`` rows; returns the number of distinct pairs."""
    import csv
    import pandas as pd
    from i2e_engine import table_uri
    from trainer.packed import iter_shard, open_packed
    images = pd.read_parquet(table_uri(str(tables), "images"), columns=["image_id", "url"])
    paths = {i: url.removeprefix("file://") for i, url in zip(images["image_id"], images["url"])}
    ds = open_packed(str(packed))
    pairs = [(paths[s["key"]], s["alt_text"]) for uri in ds.shard_uris for s in iter_shard(uri, ds.shard_format)]
    with out.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")  # open_clip's --csv-separator default
        writer.writerow(["filepath", "title"])
        for i in range(rows):
            writer.writerow(pairs[i % len(pairs)])
    return len(pairs)


def prepare(data: Path, work: Path, steps: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    photos = caption_folder(data, work / "photos")
    tables, packed = work / "tables", work / "packed"
    i2e = str(Path(sys.executable).with_name("i2e"))
    if not (tables / "manifest.json").is_file():
        subprocess.run([i2e, "build", str(work / "photos"), "--runner", "local", "--output", str(tables)], check=True)
    if not (packed / "index.json").is_file():
        subprocess.run([i2e, "pack", str(tables), "--output", str(packed), "--runner", "local",
                        "--shard-rows", "40"], check=True)
    csv_path = work / "pairs.csv"
    pairs = packed_csv(tables, packed, csv_path, steps * BATCH)
    return {"csv": csv_path, "photos": photos, "pairs": pairs, "packed": packed,
            "packed_rows": json.loads((packed / "index.json").read_text())["rows"]}


def run_logged(cmd: list[str], log: Path, timeout: float) -> str:
    """Run ``cmd`` in its own process group (killed whole on timeout), output into ``log``."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise RuntimeError(f"{cmd[:4]} timed out after {timeout} s; log {log}")
    text = log.read_text()
    if rc != 0:
        raise RuntimeError(f"{cmd[:4]} exited {rc}; log {log}:\n{text[-3000:]}")
    return text


def run_open_clip(prep: dict, work: Path, name: str, steps: int, skip: int, timeout: float) -> dict:
    logs = work / "open_clip_logs"
    shutil.rmtree(logs / name, ignore_errors=True)
    cmd = [sys.executable, "-m", "open_clip_train.main", "--train-data", str(prep["csv"]), "--dataset-type", "csv",
           "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", "ViT-B-32",
           "--batch-size", str(BATCH), "--precision", "fp32", "--device", "cpu", "--workers", "1", "--epochs", "1",
           "--train-num-samples", str(steps * BATCH), "--log-every-n-steps", "1", "--save-frequency", "0",
           "--report-to", "", "--logs", str(logs), "--name", name, "--seed", "0",
           "--lr", "5e-4", "--wd", "0.2", "--warmup", "2000"]
    t0 = time.perf_counter()
    text = run_logged(cmd, work / f"{name}.log", timeout)
    wall = time.perf_counter() - t0
    shutil.rmtree(logs / name, ignore_errors=True)
    steps_seen = [(float(d), float(b)) for _, d, b in OPEN_CLIP_LINE.findall(text)]
    steady = steps_seen[skip:]
    if not steady:
        raise RuntimeError(f"no open_clip step lines after {skip} warm-up steps in {work / f'{name}.log'}")
    batch_t = sum(b for _, b in steady)
    return {"samples_per_s": BATCH * len(steady) / batch_t, "data_wait_frac": sum(d for d, _ in steady) / batch_t,
            "steps": len(steps_seen), "steady_steps": len(steady), "wall_s": wall}


def run_ours(prep: dict, work: Path, name: str, steps: int, overrides: list[str], timeout: float) -> dict:
    storage = work / "runs"
    cmd = [sys.executable, "trainer/train.py", "--config", "contrastive_openclip_vit_b32",
           "--packed", str(prep["packed"]), "--num-workers", "1", "--cpus-per-worker", "2", "--steps", str(steps),
           "--storage-path", str(storage), "--run-name", name, "--set", f"data.batch_size={BATCH}",
           "--set", "use_gpu=false", "--set", "precision=fp32", "--set", "log_every=1", "--set", "checkpoint_every=0",
           "--set", "data.shuffle_buffer=256", "--set", "data.text_template={alt_text}"]
    for item in overrides:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    try:
        text = run_logged(cmd, work / f"{name}.log", timeout)
    finally:
        shutil.rmtree(storage / name, ignore_errors=True)  # the final checkpoint: ~1.8 GB, not needed
    wall = time.perf_counter() - t0
    logs = [json.loads(line[line.index("{"):]) for line in text.splitlines() if '"event": "step"' in line]
    last = logs[-1] if logs else {}
    if "samples_per_s_steady" not in last:
        raise RuntimeError(f"no steady-state step log in {work / f'{name}.log'}")
    return {"samples_per_s": last["samples_per_s_steady"], "data_wait_frac": last["data_wait_frac_steady"],
            "gflops_per_step": last.get("gflops_per_step"), "tflops_per_s": last.get("tflops_per_s"),
            "steps": last["step"], "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="coco-mini root")
    p.add_argument("--workdir", default="/tmp/bench_train_vs_openclip", help="tables, pack, CSV, logs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="steps per run (batch 32)")
    p.add_argument("--skip", type=int, default=2, help="warm-up steps left out (ours: trainer.perf.Throughput's)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=A.B=V;C=W",
                   help="also run ours with these --set overrides (repeatable)")
    p.add_argument("--no-baseline", action="store_true", help="skip ours with the config's defaults")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(args.workdir)
    facts = run_facts()
    prep = prepare(Path(args.data), work, args.steps)
    ours = {} if args.no_baseline else {"ours": []}
    for spec in args.variant:
        name, _, sets = spec.partition("=")
        ours[name] = [s for s in sets.split(";") if s]
    results: dict[str, list] = {"open_clip": [], **{name: [] for name in ours}}
    for r in range(args.rounds):
        load = loadavg()
        results["open_clip"].append({**run_open_clip(prep, work, f"oc_round{r}", args.steps, args.skip,
                                                     args.timeout), "loadavg_before": load})
        print(json.dumps({"round": r, "open_clip": results["open_clip"][-1]}), flush=True)
        for name, overrides in ours.items():
            load = loadavg()
            results[name].append({**run_ours(prep, work, f"{name}_round{r}", args.steps, overrides, args.timeout),
                                  "loadavg_before": load})
            print(json.dumps({"round": r, name: results[name][-1]}), flush=True)
    summary = {name: {"samples_per_s_median": round(median([x["samples_per_s"] for x in runs]), 3),
                      "data_wait_frac_median": round(median([x["data_wait_frac"] for x in runs]), 4),
                      "samples_per_s_runs": [round(x["samples_per_s"], 3) for x in runs],
                      **({"gflop_per_s_median": round(1000 * median([x["tflops_per_s"] for x in runs]), 1)}
                         if all(x.get("tflops_per_s") for x in runs) else {})}
               for name, runs in results.items()}
    oc = summary["open_clip"]["samples_per_s_median"]
    for name in ours:
        summary[name]["ratio_vs_open_clip"] = round(summary[name]["samples_per_s_median"] / oc, 3)
        summary[name]["overrides"] = ours[name]
    out = {"facts": facts, "facts_text": facts_lines(facts), "loadavg_end": loadavg(),
           "photos": prep["photos"], "pairs": prep["pairs"], "packed_rows": prep["packed_rows"], "steps": args.steps, "skip": args.skip,
           "rounds": args.rounds, "summary": summary, "runs": results}
    (work / "result.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
