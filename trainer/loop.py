"""The per-worker training loop (Ray Train) and the step checkpoint format.

Checkpoint directory (one per reported step, ``step_XXXXXXXX``; every rank reports, Ray
merges their files)::

    meta.json                    format, step, world_size, config + fingerprints, data manifest,
                                 metrics, loss history            (rank 0)
    loader_rank<r>_of_<W>.json   rank r's data loader position after this step (trainer.packed.Position:
                                 epoch, batches yielded, next shard/offset, shuffle RNG + buffer refs)
    model.pt / optim.pt          replicated towers + their AdamW state   (rank 0)
    ema.pt                       EMA weights when optim.ema_decay > 0    (rank 0)
    head_rank<r>_of_<W>.pt       class-row shard r of the head + its optimizer state (rank r): AdamW's,
                                 or RowAdamW's per-row moments and step counts when task.sample_rate < 1
    export/                      the exported encoder, at the final step (rank 0)

All ``.pt`` files are state dicts loaded with ``torch.load(weights_only=True)``, straight onto the
training device. The files are ``TrainState.state_dict()`` of each rank (``trainer.state``), which
holds the training step itself; this module only moves that state to and from files and Ray.

CPU layout: torch's intra-op pool gets every CPU Ray gives the worker (``cpus_per_worker``, at
least 1); the loader's decode threads (``data.decode_threads``, default the same count) run on the
same CPUs and overlap with the step (PIL decodes without holding the GIL, and with a GPU torch's
CPU threads are mostly idle, so splitting the CPUs between the two would leave cores unused).
"""
from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from trainer.checkpoint import CKPT_FORMAT, CKPT_VERSION, CheckpointError, read_meta, safe_load
from trainer.configs import TrainConfig, fingerprint, from_dict, to_dict
from trainer.perf import Throughput, peak_flops
from trainer.state import StepResult, TrainState, build_state, train_step

DATA_IDENTITY = ("num_samples", "shards", "shard_format", "seed")  # a loader position is only valid for these


def check_meta(meta: dict, cfg: TrainConfig, classes_fp: str, world: int, where, data: dict | None = None) -> None:
    problems = []
    if meta["config_fingerprint"] != fingerprint(cfg):
        old, new = meta["config"], to_dict(cfg)
        diff = sorted(f"{s}.{k}" if isinstance(old.get(s), dict) else s
                      for s in set(old) | set(new)
                      for k in (set(old.get(s, {})) | set(new.get(s, {})) if isinstance(old.get(s), dict) else [None])
                      if (old.get(s, {}).get(k) if k else old.get(s)) != (new.get(s, {}).get(k) if k else new.get(s)))
        problems.append(f"config differs in {diff}")
    if meta["classes_fingerprint"] != classes_fp:
        problems.append(f"entity classes differ (checkpoint {meta['num_classes']} classes, fingerprint "
                        f"{meta['classes_fingerprint']}; the packed vocab gives {classes_fp})")
    old_data = meta.get("data_manifest") or {}
    if data is not None and any(old_data.get(k) != data.get(k) for k in DATA_IDENTITY):
        problems.append(f"packed data differs (checkpoint {[old_data.get(k) for k in DATA_IDENTITY]}, this run "
                        f"{[data.get(k) for k in DATA_IDENTITY]} as {list(DATA_IDENTITY)}): the loader position "
                        f"would not mean the same samples")
    if meta["world_size"] != world:
        problems.append(f"the checkpoint's loader positions (and head shards) are per rank of {meta['world_size']} "
                        f"ranks, this run has {world} (resharding is not implemented: resume with "
                        f"num_workers={meta['world_size']})")
    if problems:
        raise CheckpointError(f"checkpoint {where} does not match this run: " + "; ".join(problems))


def _position_file(rank: int, world: int) -> str:
    return f"loader_rank{rank:05d}_of_{world:05d}.json"


def _read_position(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing (corrupted or partial checkpoint)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is corrupted: {error}") from error


def _head_file(rank: int, world: int) -> str:
    return f"head_rank{rank:05d}_of_{world:05d}.pt"


def restore_checkpoint(state: TrainState, d: Path, ds, rank: int, world: int) -> None:
    """Load step checkpoint ``d`` (this rank's part) into ``state``, tensors onto its device."""
    meta = read_meta(d)
    check_meta(meta, state.cfg, ds.classes_fingerprint(), world, d.name, ds.manifest())
    device = state.device
    sd = {"model": safe_load(d / "model.pt", device), "optim": safe_load(d / "optim.pt", device),
          "ema": safe_load(d / "ema.pt", device) if state.ema is not None else None,
          "head": safe_load(d / _head_file(rank, world), device) if state.head is not None else None,
          "position": _read_position(d / _position_file(rank, world)),
          "step": meta["step"], "history": meta.get("history", []), "bad_images": meta.get("bad_images", 0)}
    try:
        state.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"{d}: checkpoint does not fit this run: {type(error).__name__}: {error}") from error


def write_checkpoint(d: Path, state: TrainState, ds, *, rank: int, world: int, metrics: dict, final: bool) -> None:
    """Write this rank's files of the step checkpoint into directory ``d`` (rank 0 also the
    replicated towers, optimizer, EMA, meta.json and, at the final step, the export)."""
    from trainer.export import export_encoder
    cfg, sd = state.cfg, state.state_dict()
    if rank == 0:
        torch.save(sd["model"], d / "model.pt")
        torch.save(sd["optim"], d / "optim.pt")
        if sd["ema"] is not None:
            torch.save(sd["ema"], d / "ema.pt")
        meta = {"format": CKPT_FORMAT, "format_version": CKPT_VERSION, "step": sd["step"], "world_size": world,
                "config": to_dict(cfg), "config_fingerprint": fingerprint(cfg),
                "num_classes": ds.num_classes, "classes_fingerprint": ds.classes_fingerprint(),
                "data_manifest": ds.manifest(), "metrics": metrics, "history": sd["history"],
                "bad_images": sd["bad_images"]}
        (d / "meta.json").write_text(json.dumps(meta, default=str))
        if final:
            export_model = state.model
            if state.ema is not None:
                export_model = copy.deepcopy(state.model)
                export_model.load_state_dict(state.ema.shadow)
            export_encoder(d / "export", export_model, cfg, data_manifest=ds.manifest(), steps=sd["step"],
                           metrics=metrics, ema=state.ema is not None)
    if sd["head"] is not None:
        torch.save({**sd["head"], "weight": sd["head"]["weight"].cpu()}, d / _head_file(rank, world))
    (d / _position_file(rank, world)).write_text(json.dumps(sd["position"]))


def worker_threads(cfg: TrainConfig) -> int:
    """torch's intra-op threads in a worker: every CPU the worker was given, at least one."""
    return max(1, int(cfg.cpus_per_worker))


def step_metrics(result: StepResult, state: TrainState) -> dict:
    """The logged values of a step: reading them waits for the device, so the loop calls this
    on logging and checkpoint steps only."""
    metrics = {"step": result.step, **result.floats(), "lr": result.lr, "bad_images": state.bad_images,
               "epoch": state.position["epoch"], "step_in_epoch": state.position["step"]}
    if state.flops_per_step:
        metrics["gflops_per_step"] = state.flops_per_step / 1e9
    if state.model.logit_scale is not None:
        metrics["logit_scale"] = float(state.model.logit_scale.detach().exp())
    return metrics


def train_loop_per_worker(loop_config: dict) -> dict:
    """Ray Train entry: ``loop_config = {"config": to_dict(TrainConfig)}``, plus optionally
    ``"step_hook"``: a picklable ``hook(step, rank, world)`` called before each step (tests
    inject faults with it)."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from trainer.data import Loader
    from trainer.dist import Comm
    from trainer.packed import open_packed

    cfg = from_dict(loop_config["config"])
    step_hook = loop_config.get("step_hook")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(worker_threads(cfg))
    comm = Comm.from_torch(device)
    if comm.world != world:
        comm = Comm(rank, world, device)
    ds = open_packed(cfg.data.packed)
    state = build_state(cfg, ds.num_classes, comm, device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            restore_checkpoint(state, Path(d), ds, rank, world)
        if rank == 0:
            print(json.dumps({"event": "resumed", "step": state.step}), flush=True)
    state.wrap(lambda m: ray.train.torch.prepare_model(m, parallel_strategy_kwargs={"find_unused_parameters": False}))

    def save(metrics: dict, final: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(Path(tmp), state, ds, rank=rank, world=world, metrics=metrics, final=final)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"step_{state.step:08d}")

    meter = Throughput(cfg.data.batch_size * world, peak_flops(device, cfg.precision))
    loader = Loader(ds, cfg.data, seed=cfg.seed, rank=rank, world=world, position=state.position,
                    threads=cfg.data.decode_threads or worker_threads(cfg))
    metrics: dict = {}
    t_prev = time.perf_counter()
    for batch in loader:
        if step_hook is not None:
            step_hook(state.step, rank, world)
        wait = time.perf_counter() - t_prev
        result = train_step(state, batch, comm, measure_flops=True)
        final = state.step >= cfg.total_steps
        checkpoint_now = final or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0)
        # values are read back from the device (a host sync) on these steps only; the first
        # steps too, so that the steady-state timing starts from a finished step
        read_now = checkpoint_now or state.step % cfg.log_every == 0 or state.step <= meter.skip
        if read_now:
            metrics = step_metrics(result, state)
        meter.step(wait, time.perf_counter() - t_prev)
        if read_now:
            metrics.update(meter.report(state.flops_per_step, state.recompute_flops_per_step))
            if rank == 0 and (state.step % cfg.log_every == 0 or final):
                print(json.dumps({"event": "step", **{k: (round(v, 5) if isinstance(v, float) else v)
                                                      for k, v in metrics.items()}}), flush=True)
        if checkpoint_now:
            save(metrics, final)
        t_prev = time.perf_counter()
        if final:
            break
    return {"step": state.step, "history": state.history, "bad_images": state.bad_images, "metrics": metrics,
            "num_samples": ds.rows, "num_classes": ds.num_classes}
