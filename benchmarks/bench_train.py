"""Trainer benchmarks: (1) samples/s and data-wait fraction of the smoke config on this
machine (real local Ray, 2 workers x 0.5 CPU, Caltech-101 tables); (2) per-worker memory of
the 2M-class x 768 cosine head for N workers: measured (allocated tensors of one shard +
AdamW state after a real step, at a reduced class count scaled up linearly, and at the full
2M/N where it fits) and derived (formula). Prints JSON; results go in BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_train.py [--caltech ../shared/data/caltech101] [--steps 40]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainer.heads import ShardedCosineHead, head_memory_bytes  # noqa: E402


def bench_training(caltech: str, steps: int, config: str) -> dict:
    from trainer.configs import apply_overrides, get_config
    from trainer.smoke_data import build_caltech_tables
    from trainer.train import init_ray, run
    tmp = Path(tempfile.mkdtemp(prefix="bench_train"))
    tables = build_caltech_tables(caltech, tmp / "tables", per_category=16, corrupt=1)
    init_ray(num_cpus=2)
    cfg = get_config(config)
    cfg.data.tables, cfg.storage_path, cfg.run_name = str(tables), str(tmp / "runs"), "bench"
    apply_overrides(cfg, [f"total_steps={steps}", f"checkpoint_every={steps}", "log_every=1000"])
    t0 = time.perf_counter()
    result = run(cfg)
    wall = time.perf_counter() - t0
    m = result.metrics
    return {"config": config, "steps": steps, "global_batch": cfg.data.batch_size * cfg.num_workers,
            "image_size": cfg.data.image_size, "workers": cfg.num_workers, "cpus_per_worker": cfg.cpus_per_worker,
            "samples_per_s_steady": round(m["samples_per_s_steady"], 1),
            "samples_per_s_last_interval": round(m["samples_per_s"], 1),
            "data_wait_frac_last_interval": round(m["data_wait_frac"], 3),
            "data_wait_frac_steady": round(m["data_wait_frac_steady"], 3),
            "fit_wall_s_incl_startup": round(wall, 1)}


def measure_head(num_classes: int, dim: int, world: int, batch_rows: int) -> dict:
    """Allocate rank 0's shard, run one real step (gathered batch, exact loss, AdamW) and
    count the bytes of every tensor that stays alive plus the peak RSS growth."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    head = ShardedCosineHead.__new__(ShardedCosineHead)
    torch.nn.Module.__init__(head)
    from trainer.heads import shard_range
    head.num_classes, head.dim, head.rank, head.world = num_classes, dim, 0, world
    head.start, head.end = shard_range(num_classes, 0, world)
    head.weight = torch.nn.Parameter(torch.randn(head.end - head.start, dim) * 0.02)  # fast init for the bench
    opt = torch.optim.AdamW([head.weight], lr=1e-3)
    feats = F.normalize(torch.randn(batch_rows, dim), dim=1)
    labels = torch.randint(0, head.end - head.start, (batch_rows, 1))
    loss = head(feats, labels, torch.ones(batch_rows), scale=32.0, margin=0.2, chunk=65536)
    loss.backward()
    opt.step()
    state = opt.state[head.weight]
    kept = head.weight.numel() * 4 + head.weight.grad.numel() * 4 + sum(
        v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rows": head.end - head.start, "persistent_bytes": kept, "rss_peak_growth_bytes": rss_peak - rss0}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--caltech", default=str(Path(__file__).resolve().parents[2] / "shared/data/caltech101"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--config", default="smoke_mofi")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--measure-full-world", type=int, default=64,
                   help="also measure the real 2M/N shard for this N (needs ~4 GB RAM at N=64)")
    args = p.parse_args()
    out: dict = {}
    classes, dim, batch = 2_000_000, 768, 256 * 8
    derived = {n: {k: round(v / 2**30, 3) for k, v in head_memory_bytes(classes, dim, n, batch_rows=batch).items()}
               for n in (1, 8, 16, 32, 64, 128)}
    out["head_2M_x768_derived_GiB_per_worker"] = derived
    small = measure_head(200_000, dim, 1, batch)  # measured at 200k rows, scaled by rows
    per_row = small["persistent_bytes"] / small["rows"]
    out["head_measured_200k_rows"] = {**small, "persistent_bytes_per_row": per_row}
    out["head_2M_x768_from_measured_per_row_GiB"] = {
        n: round(per_row * -(-classes // n) / 2**30, 3) for n in (1, 8, 16, 32, 64, 128)}
    if args.measure_full_world:
        full = measure_head(classes, dim, args.measure_full_world, batch)
        out[f"head_2M_x768_measured_N{args.measure_full_world}"] = {
            **full, "persistent_GiB": round(full["persistent_bytes"] / 2**30, 3),
            "rss_peak_growth_GiB": round(full["rss_peak_growth_bytes"] / 2**30, 3)}
    if not args.skip_training:
        out["training"] = bench_training(args.caltech, args.steps, args.config)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
