"""Train a MOFI image encoder on packed I2E shards with Ray Train.

Local CPU smoke run (starts a local Ray; --tables packs the tables into the local cache first):
    python -m trainer.smoke_data --out /tmp/i2e_smoke
    python trainer/train.py --config smoke_mofi --tables /tmp/i2e_smoke --export-dir /tmp/mofi_smoke_encoder

On a cluster: pack once to shared storage (`i2e pack`, on Spark/Dataflow for big tables),
then train from the packed shards (checkpoints on shared storage too):
    ray job submit --working-dir . -- python trainer/train.py --config mofi_vit_b16 \\
        --packed s3://bucket/i2e/packed --storage-path s3://bucket/mofi --run-name mofi-b16 \\
        --num-workers 64 --use-gpu

Before training, the requested layout (workers x CPUs/GPUs) is checked against the Ray
cluster's nodes; one that cannot be placed stops with a message saying what to change.

Resume: run the same command with the same --run-name and --storage-path; the job
continues from the latest step checkpoint (a killed worker is restarted automatically up to
--max-failures times). Configs: see --list-configs; override any field with --set a.b=value.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trainer.configs import (CONFIGS, TrainConfig, apply_overrides, check_config, format_config,  # noqa: E402
                             get_config, to_dict)


class LayoutError(RuntimeError):
    """A worker layout the Ray cluster cannot place (it would wait forever)."""


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    cfg = get_config(args.config)
    apply_overrides(cfg, args.set or [])
    for attr, target in (("tables", "data.tables"), ("packed", "data.packed"), ("storage_path", "storage_path"),
                         ("run_name", "run_name"),
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
    for key in ("tables", "packed"):
        value = getattr(cfg.data, key)
        if value and "://" not in value:
            setattr(cfg.data, key, os.path.abspath(os.path.expanduser(value)))
    return check_config(cfg)


def check_layout(cfg: TrainConfig, nodes: list[dict]) -> None:
    """Raise LayoutError when ``num_workers`` bundles of ``cpus_per_worker`` CPUs (+1 GPU with
    --use-gpu) do not fit on the cluster's alive nodes (``ray.nodes()``), each bundle on one
    node. Decoding runs in threads inside each worker on its own CPUs, so a worker needs
    cpus_per_worker > 0 and nothing else is requested from Ray."""
    c, n = cfg.cpus_per_worker, cfg.num_workers
    if c <= 0:
        raise LayoutError(f"cpus_per_worker={c}: each worker decodes its images on its own CPUs, so it needs "
                          f"more than 0 (pass --cpus-per-worker 1 or more)")
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    fits = [int(r.get("CPU", 0) // c + 1e-9) if not cfg.use_gpu else
            min(int(r.get("CPU", 0) // c + 1e-9), int(r.get("GPU", 0))) for r in alive]
    if sum(fits) >= n:
        return
    cpus = [r.get("CPU", 0) for r in alive]
    per_node = -(-n // max(len(alive), 1))  # workers per node if spread evenly
    largest = min(cpus, default=0) // per_node
    hint = f"--num-workers {sum(fits)} or fewer" if sum(fits) else "a larger cluster"
    if largest >= 1:
        hint += f", or --cpus-per-worker {largest:g} or less"
    need = f"{n} worker(s) x {c:g} CPU" + (" + 1 GPU" if cfg.use_gpu else "")
    raise LayoutError(f"cannot place {need} on this Ray cluster (node CPUs {cpus}"
                      + (f", GPUs {[r.get('GPU', 0) for r in alive]}" if cfg.use_gpu else "")
                      + f"): only {sum(fits)} such worker(s) fit, so the job would wait forever. Use {hint} "
                      f"(each worker decodes images in data.decode_threads threads on its own CPUs).")


def pack_tables(tables: str, num_workers: int) -> str:
    """Pack ``tables`` with `i2e pack` (local runner) into
    ``local_cache()/packed/<hash of the tables' manifest + pack config>``, once (reused while
    both are unchanged), and return that folder. Shards of at most 1000 rows, fewer for small
    tables so that every worker gets about 4 shards."""
    import hashlib
    import json

    from i2e_engine import storage
    from i2e_engine.pack import PackConfig
    from pipelines.pack import run_pack
    manifest = storage.join(tables, "manifest.json")
    if not storage.isfile(manifest):
        raise SystemExit(f"--tables {tables}: no manifest.json (not the output of a finished `i2e build`)")
    manifest_bytes = storage.read_bytes(manifest)
    images = int(json.loads(manifest_bytes).get("rows", {}).get("images") or 0)
    config = PackConfig(tables=tables, output="", shard_rows=max(1, min(1000, images // (4 * num_workers))))
    settings = {k: v for k, v in config.to_dict().items() if k not in ("tables", "output")}
    key = hashlib.sha256(manifest_bytes + json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    out = str(storage.local_cache() / "packed" / key)
    print(json.dumps({"event": "pack", "tables": tables, "packed": out}), flush=True)
    run_pack(dataclasses.replace(config, output=out))  # a finished pack of the same config is reused as is
    return out


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)  # inside `ray job submit` the working dir is already on every worker's path
    else:
        existing = os.environ.get("PYTHONPATH", "")
        # The dashboard stays on: Ray Train's placement-group cleaner asks the state API (served by
        # the dashboard) whether the run's controller is alive. Without a dashboard of its own it
        # logs a warning every few seconds, and when another local Ray instance on this host has
        # one (the default port), it asks that instance, finds no such controller, and removes
        # this run's placement group, killing the workers (seen with Ray 2.60).
        ray.init(num_cpus=num_cpus, include_dashboard=True,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), existing) if p)}})


def make_trainer(cfg: TrainConfig, step_hook=None):
    """``step_hook``: optional picklable ``hook(step, rank, world)`` each worker calls before every
    step (a test seam, e.g. to kill a worker; None in production)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainer.loop import train_loop_per_worker
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(cfg), "step_hook": step_hook},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=cfg.run_name, storage_path=cfg.storage_path,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
    )


def run(cfg: TrainConfig, export_dir: str | None = None, step_hook=None):
    """Check the layout, pack --tables when no --packed is given, fit, and (optionally) copy the exported
    encoder of the final checkpoint to ``export_dir``. ``step_hook``: see ``make_trainer``."""
    import ray
    if not cfg.data.packed and not cfg.data.tables:
        raise SystemExit("no data: pass --packed <packed dataset URI> or --tables <i2e build output>")
    check_layout(cfg, ray.nodes())   # before packing, which can take a while
    if not cfg.data.packed:
        cfg.data.packed = pack_tables(cfg.data.tables, cfg.num_workers)
    result = make_trainer(cfg, step_hook).fit()
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
    p.add_argument("--packed", help="packed dataset URI (`i2e pack` output: index.json, vocab.parquet, shards/); "
                   "local path, s3://, gs://")
    p.add_argument("--tables", help="I2E tables (`i2e build` output); packed into the local cache first "
                   "(single machine; on a cluster pack to shared storage and pass --packed)")
    p.add_argument("--storage-path", help="where checkpoints go (local dir, or s3://, gs://, NFS on a cluster)")
    p.add_argument("--run-name", help="run name; the same name + storage path resumes")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (one per GPU)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs per train worker; its decode threads run on them")
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
    # torch before Ray's threads start: a job driver that connected to a cluster and then imported
    # ray.train before torch died in oneMKL's loader ("Cannot load libtorch_cpu.so", then a
    # segfault; Ray 2.60, torch 2.14 CPU, seen under `ray job submit` with --packed)
    importlib.import_module("torch")
    init_ray(args.address)
    try:
        result = run(cfg, args.export_dir)
    except LayoutError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    if result.error:
        print(f"training failed: {result.error}", file=sys.stderr)
        return 1
    print(f"done: {result.metrics}\ncheckpoint: {result.checkpoint}"
          + (f"\nexported encoder: {args.export_dir}" if args.export_dir else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
