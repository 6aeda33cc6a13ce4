"""Train a MOFI image encoder on the I2E tables with Ray Train.

Local CPU smoke run (starts a local Ray):
    python -m trainer.smoke_data --out /tmp/i2e_smoke
    python trainer/train.py --config smoke_mofi --tables /tmp/i2e_smoke --export-dir /tmp/mofi_smoke_encoder

On a cluster (tables and storage on shared storage: S3/GCS/NFS):
    ray job submit --working-dir . -- python trainer/train.py --config mofi_vit_b16 \\
        --tables /mnt/i2e/out --storage-path s3://bucket/mofi --run-name mofi-b16 --num-workers 64 --use-gpu

Resume: run the same command with the same --run-name and --storage-path; the job
continues from the latest step checkpoint (a killed worker is restarted automatically up to
--max-failures times). Configs: see --list-configs; override any field with --set a.b=value.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trainer.configs import CONFIGS, TrainConfig, apply_overrides, format_config, get_config, to_dict  # noqa: E402


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    cfg = get_config(args.config)
    apply_overrides(cfg, args.set or [])
    for attr, target in (("tables", "data.tables"), ("storage_path", "storage_path"), ("run_name", "run_name"),
                         ("num_workers", "num_workers"), ("steps", "total_steps"),
                         ("cpus_per_worker", "cpus_per_worker"), ("max_failures", "max_failures")):
        value = getattr(args, attr, None)
        if value is not None:
            section, _, name = target.rpartition(".")
            setattr(getattr(cfg, section) if section else cfg, name, value)
    if args.use_gpu:
        cfg.use_gpu = True
    if not cfg.use_gpu and cfg.precision == "bf16":
        cfg.precision = "fp32"  # bf16 autocast is a GPU path; CPU runs in fp32
    cfg.run_name = cfg.run_name or cfg.name
    if cfg.storage_path and "://" not in cfg.storage_path:
        cfg.storage_path = os.path.abspath(os.path.expanduser(cfg.storage_path))
    if cfg.data.tables and "://" not in cfg.data.tables:
        cfg.data.tables = os.path.abspath(os.path.expanduser(cfg.data.tables))
    return cfg


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)  # inside `ray job submit` the working dir is already on every worker's path
    else:
        existing = os.environ.get("PYTHONPATH", "")
        ray.init(num_cpus=num_cpus, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), existing) if p)}})


def make_trainer(cfg: TrainConfig):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainer.loop import train_loop_per_worker
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(cfg)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=cfg.run_name, storage_path=cfg.storage_path,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
    )


def run(cfg: TrainConfig, export_dir: str | None = None):
    """Fit and (optionally) copy the exported encoder of the final checkpoint to ``export_dir``."""
    if not cfg.data.tables:
        raise SystemExit("no tables: pass --tables <folder with images/ entities/ image_entities/>")
    result = make_trainer(cfg).fit()
    if export_dir and result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            if not (Path(d) / "export").is_dir():
                raise RuntimeError(f"final checkpoint {d} has no export/ (run did not reach total_steps?)")
            if Path(export_dir).exists():
                shutil.rmtree(export_dir)
            shutil.copytree(Path(d) / "export", export_dir)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainer/train.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="smoke_mofi", help=f"config name, one of: {', '.join(sorted(CONFIGS))}")
    p.add_argument("--set", action="append", metavar="A.B=VALUE",
                   help="override a config field (JSON value), e.g. --set task.margin=0.3 (repeatable)")
    p.add_argument("--tables", help="I2E output folder (images/, entities/, image_entities/ parquet)")
    p.add_argument("--storage-path", help="where checkpoints go (local dir, or s3://, gs://, NFS on a cluster)")
    p.add_argument("--run-name", help="run name; the same name + storage path resumes")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (one per GPU)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs per train worker (fractional is fine)")
    p.add_argument("--steps", type=int, help="total training steps")
    p.add_argument("--max-failures", type=int, help="worker-group restarts from the last checkpoint")
    p.add_argument("--export-dir", help="copy the exported encoder of the final checkpoint here")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-configs", action="store_true", help="list config names and exit")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_configs:
        print("\n".join(sorted(CONFIGS)))
        return 0
    cfg = resolve_config(args)
    if args.print_config:
        print(format_config(cfg))
        return 0
    print(format_config(cfg), flush=True)
    init_ray(args.address)
    result = run(cfg, args.export_dir)
    if result.error:
        print(f"training failed: {result.error}", file=sys.stderr)
        return 1
    print(f"done: {result.metrics}\ncheckpoint: {result.checkpoint}"
          + (f"\nexported encoder: {args.export_dir}" if args.export_dir else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
