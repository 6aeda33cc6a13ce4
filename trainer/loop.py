"""The per-worker training loop (Ray Train) and the step checkpoint format.

Checkpoint directory (one per reported step, ``step_XXXXXXXX``; every rank reports, Ray
merges their files)::

    meta.json                    format, step, world_size, config + fingerprints, data manifest,
                                 metrics, loss history            (rank 0)
    loader_rank<r>_of_<W>.json   rank r's data loader position after this step (trainer.packed.Position:
                                 epoch, batches yielded, next shard/offset, shuffle RNG + buffer refs)
    model.pt / optim.pt          replicated towers + their AdamW state   (rank 0)
    ema.pt                       EMA weights when optim.ema_decay > 0    (rank 0)
    head_rank<r>_of_<W>.pt       class-row shard r of the head + its AdamW state (rank r)
    export/                      the exported encoder, at the final step (rank 0)

All ``.pt`` files are state dicts loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from trainer.configs import TrainConfig, fingerprint, from_dict, to_dict

CKPT_FORMAT, CKPT_VERSION = "mofi-train-checkpoint", 2


class CheckpointError(RuntimeError):
    """A checkpoint that is corrupted or does not match this run."""


def safe_load(path: Path):
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing (corrupted or partial checkpoint)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"checkpoint file {path} is corrupted or not a weights-only state dict: "
                              f"{type(error).__name__}: {error}") from error


def read_meta(ckpt: Path) -> dict:
    path = Path(ckpt) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise CheckpointError(f"{ckpt} has no meta.json: not a trainer checkpoint, or corrupted") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is corrupted: {error}") from error
    if meta.get("format") != CKPT_FORMAT or meta.get("format_version") != CKPT_VERSION:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} v{meta.get('format_version')}, "
                              f"expected {CKPT_FORMAT!r} v{CKPT_VERSION}")
    return meta


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


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(module: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or "logit_scale" in name or ".pos" in name
         else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


def _fault_marker(cfg: TrainConfig) -> Path:
    key = hashlib.sha256(f"{cfg.storage_path}|{cfg.run_name}|{cfg.fail_at_step}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mofi_fault_injected_{key}"


def train_loop_per_worker(loop_config: dict) -> dict:
    """Ray Train entry: ``loop_config = {"config": to_dict(TrainConfig)}``."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from trainer.data import Loader
    from trainer.packed import open_packed
    from trainer.dist import Comm
    from trainer.export import export_encoder
    from trainer.task import Task
    from trainer.towers import DualEncoder

    cfg = from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    comm = Comm.from_torch()
    if comm.world != world:
        comm = Comm(rank, world)
    torch.manual_seed(cfg.seed)
    ds = open_packed(cfg.data.packed)
    manifest = ds.manifest()
    model = DualEncoder(cfg.image, cfg.text, cfg.embed_dim, cfg.data.mean, cfg.data.std, cfg.task.init_logit_scale)
    task = Task(cfg, ds.num_classes, comm, device)
    head = task.head

    start_step, history, bad_total, ema_state = 0, [], 0, None
    opt_state = head_state = position = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            d = Path(d)
            meta = read_meta(d)
            check_meta(meta, cfg, ds.classes_fingerprint(), world, d.name, manifest)
            try:
                model.load_state_dict(safe_load(d / "model.pt"))
            except RuntimeError as error:
                raise CheckpointError(f"{d}: model weights do not fit: {error}") from error
            opt_state = safe_load(d / "optim.pt")
            if cfg.optim.ema_decay > 0:
                ema_state = safe_load(d / "ema.pt")
            if head is not None:
                shard = safe_load(d / f"head_rank{rank:05d}_of_{world:05d}.pt")
                if tuple(shard["weight"].shape) != tuple(head.weight.shape):
                    raise CheckpointError(f"{d}: head shard {rank} has shape {tuple(shard['weight'].shape)}, "
                                          f"expected {tuple(head.weight.shape)}")
                head.weight.data.copy_(shard["weight"])
                head_state = shard["optim"]
            position = _read_position(d / _position_file(rank, world))
            start_step, history, bad_total = meta["step"], meta.get("history", []), meta.get("bad_images", 0)
        if rank == 0:
            print(json.dumps({"event": "resumed", "step": start_step}), flush=True)

    ema = EMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    if ema is not None and ema_state is not None:
        ema.shadow = ema_state
    raw_model = model
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False})
    o = cfg.optim
    opt = torch.optim.AdamW(param_groups(raw_model, o.weight_decay), lr=o.lr, betas=tuple(o.betas))
    head_opt = (torch.optim.AdamW([head.weight], lr=o.head_lr or o.lr, betas=tuple(o.betas),
                                  weight_decay=o.weight_decay) if head is not None else None)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    if head_state is not None:
        head_opt.load_state_dict(head_state)
    use_bf16 = cfg.precision == "bf16" and device.type == "cuda"

    def save(step: int, metrics: dict, final: bool, position: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            if rank == 0:
                torch.save(raw_model.state_dict(), d / "model.pt")
                torch.save(opt.state_dict(), d / "optim.pt")
                if ema is not None:
                    torch.save(ema.shadow, d / "ema.pt")
                meta = {"format": CKPT_FORMAT, "format_version": CKPT_VERSION, "step": step, "world_size": world,
                        "config": to_dict(cfg), "config_fingerprint": fingerprint(cfg),
                        "num_classes": ds.num_classes, "classes_fingerprint": ds.classes_fingerprint(),
                        "data_manifest": manifest, "metrics": metrics, "history": history,
                        "bad_images": bad_total}
                (d / "meta.json").write_text(json.dumps(meta, default=str))
                if final:
                    export_model = raw_model
                    if ema is not None:
                        export_model = copy.deepcopy(raw_model)
                        export_model.load_state_dict(ema.shadow)
                    export_encoder(d / "export", export_model, cfg, data_manifest=manifest, steps=step,
                                   metrics=metrics, ema=ema is not None)
            if head is not None:
                torch.save({"weight": head.weight.detach().cpu(), "optim": head_opt.state_dict(),
                            "start": head.start, "end": head.end},
                           d / f"head_rank{rank:05d}_of_{world:05d}.pt")
            (d / _position_file(rank, world)).write_text(json.dumps(position))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"step_{step:08d}")

    step = start_step
    metrics: dict = {}
    samples_seen, t_start, wait_total = 0, time.perf_counter(), 0.0
    t_prev = time.perf_counter()
    threads = cfg.data.decode_threads or max(1, int(cfg.cpus_per_worker))
    loader = Loader(ds, cfg.data, seed=cfg.seed, rank=rank, world=world, position=position, threads=threads)
    for batch in loader:
        if step == cfg.fail_at_step and rank == (1 if world > 1 else 0) and not _fault_marker(cfg).exists():
            _fault_marker(cfg).touch()
            print(json.dumps({"event": "fault_injected", "step": step, "rank": rank}), flush=True)
            os._exit(1)
        position = batch["position"]
        t_batch = time.perf_counter()
        wait = t_batch - t_prev
        wait_total += wait
        torch.manual_seed(_seed(cfg.seed, step, rank))
        generator = torch.Generator().manual_seed(_seed(cfg.seed, step, rank, 1))
        factor = lr_factor(step, o.warmup_steps, cfg.total_steps, o.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = o.lr * factor
        if head_opt is not None:
            head_opt.param_groups[0]["lr"] = (o.head_lr or o.lr) * factor
        tokens = None
        if task.uses_text:
            tokens = {k: v.to(device) for k, v in raw_model.text.tokenize(batch["texts"]).items()}
        batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            total, named = task.losses(model, batch, tokens, generator)
        opt.zero_grad(set_to_none=True)
        if head_opt is not None:
            head_opt.zero_grad(set_to_none=True)
        total.backward()
        if o.clip_grad_norm > 0:
            grads = [p.grad for p in raw_model.parameters() if p.grad is not None]
            sq = sum((g.float().pow(2).sum() for g in grads), torch.zeros((), device=device))
            if head is not None and head.weight.grad is not None:
                sq = sq + comm.all_reduce(head.weight.grad.float().pow(2).sum())
            norm = float(sq.sqrt())
            coef = o.clip_grad_norm / (norm + 1e-6)
            if coef < 1:
                for g in grads:
                    g.mul_(coef)
                if head is not None and head.weight.grad is not None:
                    head.weight.grad.mul_(coef)
        opt.step()
        if head_opt is not None:
            head_opt.step()
        if ema is not None:
            ema.update(raw_model)
        step += 1
        logged = torch.stack([total.detach().float()] + [v.detach().float() for v in named.values()]
                             + [(1 - batch["valid"].float()).sum()]).cpu()
        logged = comm.all_reduce(logged)
        bad_total += int(logged[-1])
        losses = (logged[:-1] / world).tolist()
        history.append(round(losses[0], 6))
        now = time.perf_counter()
        samples_seen += cfg.data.batch_size * world
        metrics = {"step": step, "loss": losses[0], **{f"loss_{n}": v for n, v in zip(named, losses[1:])},
                   "lr": o.lr * factor, "samples_per_s": cfg.data.batch_size * world / max(now - t_prev, 1e-9),
                   "samples_per_s_avg": samples_seen / max(now - t_start, 1e-9),
                   "data_wait_frac": wait / max(now - t_prev, 1e-9),
                   "data_wait_frac_avg": wait_total / max(now - t_start, 1e-9), "bad_images_step": int(logged[-1]),
                   "bad_images": bad_total, "epoch": position["epoch"],
                   "step_in_epoch": position["step"]}
        if raw_model.logit_scale is not None:
            metrics["logit_scale"] = float(raw_model.logit_scale.detach().exp())
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.total_steps):
            print(json.dumps({"event": "step", **{k: (round(v, 5) if isinstance(v, float) else v)
                                                  for k, v in metrics.items()}}), flush=True)
        final = step >= cfg.total_steps
        if final or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            save(step, metrics, final, position)
        t_prev = time.perf_counter()
        if final:
            break
    return {"step": step, "history": history, "bad_images": bad_total, "metrics": metrics,
            "num_samples": ds.rows, "num_classes": ds.num_classes}
