"""The training state of one rank and one pure training step (no Ray).

``build_state(cfg, num_classes, comm, device)`` makes the towers, the task (with this rank's
head shard), the optimizers and the EMA, every tensor on ``device``; ``train_step(state,
batch, comm)`` runs one optimizer step on a loader batch and returns a :class:`StepResult`
whose logged values are already reduced over ranks. ``TrainState.state_dict()`` /
``load_state_dict()`` give and take this rank's part of a checkpoint (``trainer.loop`` writes
it to files); the same code runs on a CPU, on one GPU and under Ray Train with DDP + NCCL.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from trainer.configs import TrainConfig
from trainer.dist import Comm
from trainer.heads import RowAdamW
from trainer.perf import count_flops
from trainer.task import Task
from trainer.towers import DualEncoder


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float, trunk_lr_scale: float = 1.0):
    """AdamW groups: weight decay on matrices only; when ``trunk_lr_scale`` != 1 the image
    trunk's parameters apart with that ``lr_scale`` (``train_step`` sets each group's lr to lr x
    factor x lr_scale). At 1 the groups are the two of checkpoints written before the option."""
    groups: dict[tuple[bool, bool], list] = {(False, True): [], (False, False): []}  # (trunk, decays)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = not (p.ndim <= 1 or name.endswith(".bias") or "logit_scale" in name or ".pos" in name)
        trunk = trunk_lr_scale != 1.0 and name.startswith("image.trunk.")
        groups.setdefault((trunk, decays), []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0,
             "lr_scale": trunk_lr_scale if trunk else 1.0}
            for (trunk, decays), params in sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1]))]


def adamw(params, impl: str = "auto", **kwargs) -> torch.optim.AdamW:
    """AdamW as ``impl`` says: "fused" (one kernel per step, on CUDA and on CPUs), "foreach"
    (multi-tensor), "for_loop", or "auto" = "fused". On the 2-core CPU of BENCHMARKS.md the
    fused step of a ViT-B/32 CLIP (151M parameters) takes 0.10 s against the for-loop's 0.40 s
    (torch's default on a CPU), the same numerics up to rounding."""
    flags = {"auto": {"fused": True}, "fused": {"fused": True}, "foreach": {"foreach": True},
             "for_loop": {"foreach": False}}[impl]
    return torch.optim.AdamW(params, **flags, **kwargs)


class EMA:
    """Exponential moving average of a module's state, kept on the module's device (make it
    after the module has moved there)."""

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

    def load_state_dict(self, shadow: dict) -> None:
        """Copy a saved shadow (any device) into this one's tensors, which keep their device."""
        missing = set(self.shadow) ^ set(shadow)
        if missing:
            raise ValueError(f"EMA state keys differ: {sorted(missing)[:5]}")
        for k, v in shadow.items():
            self.shadow[k].copy_(v)


@dataclass
class StepResult:
    """One step's logged values, reduced over ranks, as 0-d tensors on the training device
    (reading one waits for the step, so the loop reads them on logging steps only, with
    :meth:`floats`). Losses are means over ranks (the sharded softmax is already global);
    ``bad_images`` is this step's count over all ranks."""
    step: int
    lr: float
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    bad_images: torch.Tensor
    grad_norm: torch.Tensor | None = None

    def floats(self) -> dict:
        """The values as Python numbers, in one device-to-host copy."""
        names = list(self.losses)
        parts = [self.loss, *self.losses.values(), self.bad_images] + ([self.grad_norm] if self.grad_norm is not None
                                                                       else [])
        values = torch.stack([v.detach().float().reshape(()) for v in parts]).tolist()
        out = {"loss": values[0], **{f"loss_{n}": v for n, v in zip(names, values[1:])},
               "bad_images_step": int(values[len(names) + 1])}
        if self.grad_norm is not None:
            out["grad_norm"] = values[-1]
        return out


@dataclass
class TrainState:
    cfg: TrainConfig
    device: torch.device
    model: torch.nn.Module                 # the replicated towers (unwrapped)
    task: Task                             # holds this rank's head shard (task.head) or None
    opt: torch.optim.Optimizer
    head_opt: torch.optim.Optimizer | RowAdamW | None
    ema: EMA | None
    step: int = 0
    position: dict | None = None           # loader position after the last step (trainer.packed.Position)
    flops_per_step: float | None = None    # this rank's forward+backward FLOPs, counted on one step
    recompute_flops_per_step: float = 0.0  # the forward FLOPs gradient checkpointing runs again
    wrapped: torch.nn.Module | None = None  # the model as the step calls it (DDP under Ray), default: model
    _history: list = field(default_factory=list)     # mean loss per step, read back from the device
    _bad_images: int = 0
    _unread: list = field(default_factory=list)      # (loss, bad images) device tensors of steps not read yet

    def record(self, loss: torch.Tensor, bad_images: torch.Tensor) -> None:
        """Keep a step's loss and bad-image count on the device until someone reads them (at the
        latest every 1024 steps, so what waits stays small)."""
        self._unread.append(torch.stack([loss.detach().float().reshape(()), bad_images.float().reshape(())]))
        if len(self._unread) >= 1024:
            self._read()

    def _read(self) -> None:
        if self._unread:
            for loss, bad in torch.stack(self._unread).tolist():   # one device-to-host copy
                self._history.append(round(loss, 6))
                self._bad_images += int(bad)
            self._unread.clear()

    @property
    def history(self) -> list[float]:
        """The mean loss of every step so far (reading it waits for the steps in flight)."""
        self._read()
        return self._history

    @property
    def bad_images(self) -> int:
        """Bad images met so far over all ranks (reading it waits for the steps in flight)."""
        self._read()
        return self._bad_images

    @property
    def head(self):
        return self.task.head

    def wrap(self, fn: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Run the forward through ``fn(model)`` (e.g. Ray's prepare_model, which adds DDP)."""
        self.wrapped = fn(self.model)

    def state_dict(self) -> dict:
        """This rank's state: replicated parts (identical on every rank; rank 0 saves them) and
        its own head shard and loader position. Tensors are the live ones, not copies."""
        out = {"step": self.step, "history": list(self.history), "bad_images": self.bad_images,
               "position": self.position, "model": self.model.state_dict(), "optim": self.opt.state_dict(),
               "ema": self.ema.shadow if self.ema is not None else None, "head": None}
        if self.head is not None:
            out["head"] = {"weight": self.head.weight.detach(), "optim": self.head_opt.state_dict(),
                           "start": self.head.start, "end": self.head.end}
        return out

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`; tensors may come from any device (they are copied onto
        this state's device). Raises ValueError on shapes that do not fit."""
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise ValueError(f"model weights do not fit: {error}") from error
        self.opt.load_state_dict(state["optim"])  # torch moves the moments onto the params' device
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("the checkpoint has no EMA weights but optim.ema_decay > 0")
            self.ema.load_state_dict(state["ema"])
        if self.head is not None:
            shard = state["head"]
            if tuple(shard["weight"].shape) != tuple(self.head.weight.shape):
                raise ValueError(f"head shard {self.task.comm.rank} has shape {tuple(shard['weight'].shape)}, "
                                 f"expected {tuple(self.head.weight.shape)}")
            with torch.no_grad():
                self.head.weight.copy_(shard["weight"])
            self.head_opt.load_state_dict(shard["optim"])
        self._unread.clear()
        self.step, self._history = int(state["step"]), list(state.get("history", []))
        self._bad_images, self.position = int(state.get("bad_images", 0)), state.get("position")


def build_state(cfg: TrainConfig, num_classes: int, comm: Comm, device: str | torch.device = "cpu") -> TrainState:
    """Fresh state for rank ``comm.rank``: towers seeded by ``cfg.seed`` (the same on every rank),
    moved to ``device`` before the optimizers and the EMA are made."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matmuls that remain
    torch.manual_seed(cfg.seed)
    model = DualEncoder(cfg.image, cfg.text, cfg.embed_dim, cfg.data.mean, cfg.data.std,
                        cfg.task.init_logit_scale).to(device).train()  # frozen trunks keep eval themselves
    if cfg.channels_last:
        model.image.to(memory_format=torch.channels_last)
        model.image.channels_last = True
    if cfg.compile:  # in place: the state-dict keys stay those of the plain modules
        model.image.trunk.compile()
        if model.text is not None:
            model.text.trunk.compile()
    task = Task(cfg, num_classes, comm, device)
    o = cfg.optim
    opt = adamw(param_groups(model, o.weight_decay, o.trunk_lr_scale), o.adamw_impl, lr=o.lr, betas=tuple(o.betas))
    head_opt = None
    if task.head is not None:
        head_lr = o.head_lr or o.lr
        if cfg.task.sample_rate < 1.0:  # PartialFC: only the sampled rows move
            head_opt = RowAdamW(task.head.weight, lr=head_lr, betas=o.betas, weight_decay=o.weight_decay)
        else:
            head_opt = adamw([task.head.weight], o.adamw_impl, lr=head_lr, betas=tuple(o.betas),
                             weight_decay=o.weight_decay)
    ema = EMA(model, o.ema_decay) if o.ema_decay > 0 else None
    return TrainState(cfg=cfg, device=device, model=model, task=task, opt=opt, head_opt=head_opt, ema=ema)


def step_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


def reduce_for_logging(values: list[torch.Tensor], comm: Comm) -> torch.Tensor:
    """Sum scalar tensors over ranks in one collective, on ``comm.device`` (NCCL reduces CUDA
    tensors only; gloo CPU ones). The result stays there: nothing waits for it."""
    logged = torch.stack([v.detach().float().reshape(()).to(comm.device) for v in values])
    return comm.all_reduce(logged)


def clip_gradients(grads: list[torch.Tensor], head_grad: torch.Tensor | None, max_norm: float, comm: Comm,
                   device: torch.device) -> torch.Tensor:
    """Clip the towers' and the (sharded) head's gradients by their global norm; return it as
    a 0-d tensor on ``device``. The towers' gradients are the same on every rank (DDP has
    averaged them); the head's squared norm is summed over its shards. The scale factor stays
    on the device (``min(1, max_norm / norm)`` multiplies every gradient, as torch's own
    ``clip_grads_with_norm_`` does), so clipping never waits for the device.
    ``clip_grads_with_norm_`` itself is not used because it takes parameters, and the head's
    gradient rows are no ``.grad``."""
    sq = torch.nn.utils.get_total_norm(grads).to(device).pow(2)   # 0 for no tensors
    if head_grad is not None:
        sq = sq + comm.all_reduce(head_grad.float().pow(2).sum())
    norm = sq.sqrt()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    everything = grads + ([head_grad] if head_grad is not None else [])
    if everything:
        torch._foreach_mul_(everything, coef)
    return norm


def train_step(state: TrainState, batch: dict, comm: Comm, *, measure_flops: bool = False) -> StepResult:
    """One optimizer step on ``batch`` (a loader batch: ``pixels``, ``labels``, ``valid``,
    ``text_class`` tensors on any device, ``texts``, optional ``position``). Randomness is
    seeded by (seed, step, rank), so a restored state repeats the same step exactly.
    ``measure_flops``: count this step's forward+backward FLOPs into ``state.flops_per_step``
    when not yet known."""
    cfg, o, device, task = state.cfg, state.cfg.optim, state.device, state.task
    model, head = state.wrapped or state.model, state.head
    torch.manual_seed(step_seed(cfg.seed, state.step, comm.rank))
    generator = torch.Generator().manual_seed(step_seed(cfg.seed, state.step, comm.rank, 1))
    factor = lr_factor(state.step, o.warmup_steps, cfg.total_steps, o.min_lr_ratio)
    for group in state.opt.param_groups:
        group["lr"] = o.lr * factor * group.get("lr_scale", 1.0)
    if state.head_opt is not None:
        state.head_opt.param_groups[0]["lr"] = (o.head_lr or o.lr) * factor
    tokens = None
    if task.uses_text:
        tokens = {k: v.to(device) for k, v in state.model.text.tokenize(batch["texts"]).items()}
    tensors = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    state.opt.zero_grad(set_to_none=True)
    if head is not None:
        head.weight.grad = None
    flops: dict = {}
    counting = measure_flops and state.flops_per_step is None
    with count_flops(flops) if counting else contextlib.nullcontext():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                            enabled=cfg.precision == "bf16" and device.type == "cuda"):
            total, named = task.losses(model, tensors, tokens, generator)
        total.backward()
    if counting:
        state.flops_per_step, state.recompute_flops_per_step = flops["flops"], flops["recompute_flops"]
    rows, head_grad = head.gradient() if head is not None else (None, None)
    norm = None
    if o.clip_grad_norm > 0:
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        norm = clip_gradients(grads, head_grad, o.clip_grad_norm, comm, device)
    state.opt.step()
    if isinstance(state.head_opt, RowAdamW):
        state.head_opt.step(rows, head_grad)
    elif state.head_opt is not None:
        state.head_opt.step()
    if state.ema is not None:
        state.ema.update(state.model)
    state.step += 1
    if "position" in batch:
        state.position = batch["position"]
    values = reduce_for_logging([total] + list(named.values()) + [(1 - tensors["valid"].float()).sum()], comm)
    losses = values[:-1] / comm.world
    state.record(losses[0], values[-1])
    return StepResult(step=state.step, lr=o.lr * factor, loss=losses[0], losses=dict(zip(named, losses[1:])),
                      bad_images=values[-1], grad_norm=norm)
