"""Classification head for millions of entities: class rows sharded across ranks.

Rank r of W holds rows ``shard_range(C, r, W)`` of the (C, D) cosine classifier. The head
is a plain module that the job keeps *out of DDP* (its gradient is already exact, see
``trainer.losses``) and checkpoints per rank. Memory per rank: (C / W) x D x 4 bytes for
the weights, x3 with AdamW's two moments, plus one grad buffer (only the sampled rows' with
class sampling, which :class:`RowAdamW` then updates alone).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.dist import Comm
from trainer.losses import multilabel_targets, sharded_cosine_softmax_loss


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous, balanced [start, end) of the class rows rank ``rank`` holds."""
    base, extra = divmod(num_classes, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedCosineHead(nn.Module):
    def __init__(self, num_classes: int, dim: int, rank: int = 0, world: int = 1, seed: int = 0):
        super().__init__()
        if num_classes < world:
            raise ValueError(f"{num_classes} classes cannot be sharded over {world} ranks")
        self.num_classes, self.dim, self.rank, self.world = num_classes, dim, rank, world
        self.start, self.end = shard_range(num_classes, rank, world)
        # Rows are initialised from a generator seeded by the class index block, so the full
        # matrix does not depend on how it is sharded.
        weight = torch.empty(self.end - self.start, dim)
        for block in range(self.start // 4096, math.ceil(self.end / 4096)):
            lo, hi = max(block * 4096, self.start), min((block + 1) * 4096, self.end)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + block)
            rows = torch.randn(4096, dim, generator=gen) * 0.02
            weight[lo - self.start:hi - self.start] = rows[lo - block * 4096:hi - block * 4096]
        self.weight = nn.Parameter(weight)
        self.sampled = None

    def local_columns(self, labels: torch.Tensor) -> torch.Tensor:
        """Global class ids (N, K; -1 pads) -> columns of this shard (-1 elsewhere)."""
        inside = (labels >= self.start) & (labels < self.end)
        return torch.where(inside, labels - self.start, torch.full_like(labels, -1))

    def sample(self, cols: torch.Tensor, rate: float, generator: torch.Generator | None):
        """PartialFC-style class sampling on this shard: keep every positive column present in
        the (gathered) batch, fill up to ceil(rate * C_r) with random negatives.
        Returns (row indices into the shard, remapped cols)."""
        num_local = self.end - self.start
        positives = torch.unique(cols[cols >= 0])
        keep = max(int(math.ceil(rate * num_local)), positives.numel())
        is_pos = torch.zeros(num_local, dtype=torch.bool, device=cols.device)
        is_pos[positives] = True
        negatives = (~is_pos).nonzero(as_tuple=True)[0]
        order = torch.randperm(negatives.numel(), generator=generator, device="cpu").to(cols.device)
        chosen = torch.cat([positives, negatives[order[:keep - positives.numel()]]]).sort().values
        lookup = torch.full((num_local,), -1, dtype=torch.long, device=cols.device)
        lookup[chosen] = torch.arange(chosen.numel(), device=cols.device)
        remapped = torch.where(cols >= 0, lookup[cols.clamp(min=0)], cols)
        return chosen, remapped

    def forward(self, feats_all: torch.Tensor, labels_all: torch.Tensor, valid_all: torch.Tensor, *,
                scale: float, margin: float, chunk: int = 65536, sample_rate: float = 1.0,
                comm: Comm | None = None, generator: torch.Generator | None = None,
                lowp: bool = False) -> torch.Tensor:
        """Loss of the gathered batch: feats_all (N, D) L2-normalized, labels_all (N, K).

        With ``sample_rate < 1`` (PartialFC) the sampled rows are copied into a fresh leaf
        tensor and ``self.sampled = (rows, leaf)``: the gradient lands in ``leaf.grad`` (rows x D,
        not a dense C_r x D buffer) and :class:`RowAdamW` updates only those rows. Otherwise
        ``self.sampled`` is None and the gradient is ``self.weight.grad``."""
        comm = comm or Comm()
        cols = self.local_columns(labels_all)
        weight = self.weight
        self.sampled = None
        if sample_rate < 1.0:
            rows, cols = self.sample(cols, sample_rate, generator)
            weight = self.weight.detach()[rows].requires_grad_()
            self.sampled = (rows, weight)
        with torch.autocast(device_type=feats_all.device.type, enabled=False):
            weights = F.normalize(weight.float(), dim=1)
            return sharded_cosine_softmax_loss(
                feats_all.float(), weights, cols, multilabel_targets(labels_all), valid_all,
                scale=scale, margin=margin, chunk=chunk, comm=comm, lowp=lowp)

    def gradient(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(rows or None for all rows, their gradient) after a backward."""
        if self.sampled is not None:
            rows, leaf = self.sampled
            return rows, leaf.grad
        return None, self.weight.grad


class RowAdamW:
    """AdamW on the rows of one (C, D) parameter where a step touches only the given rows
    (PartialFC class sampling): the other rows' weights, moments and step counts stay
    bit-identical (no decay, no momentum drift). Each row keeps its own step count for the
    bias correction, so a row updated every step follows torch.optim.AdamW's formula.
    ``param_groups[0]["lr"]`` is the learning rate, as for a torch optimizer."""

    def __init__(self, param: torch.Tensor, *, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0,
                 eps: float = 1e-8):
        self.param = param
        self.param_groups = [{"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay, "eps": eps}]
        self.exp_avg = torch.zeros_like(param, memory_format=torch.contiguous_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.contiguous_format)
        self.steps = torch.zeros(param.shape[0], dtype=torch.float32, device=param.device)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """Update ``param[rows]`` (unique row indices) with ``grad`` (len(rows), D)."""
        group = self.param_groups[0]
        lr, (beta1, beta2), wd, eps = group["lr"], group["betas"], group["weight_decay"], group["eps"]
        grad = grad.to(self.param.dtype)
        p, m, v = self.param[rows], self.exp_avg[rows], self.exp_avg_sq[rows]
        t = self.steps[rows] + 1
        p.mul_(1 - lr * wd)
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = (lr / (1 - beta1 ** t))[:, None]
        denom = (v.sqrt() / (1 - beta2 ** t).sqrt()[:, None]).add_(eps)
        p.sub_(step_size * m / denom)
        self.param[rows], self.exp_avg[rows], self.exp_avg_sq[rows], self.steps[rows] = p, m, v, t

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps,
                "param_groups": [dict(self.param_groups[0], betas=list(self.param_groups[0]["betas"]))]}

    def load_state_dict(self, state: dict) -> None:
        """Its own :meth:`state_dict`, or a torch.optim.AdamW one over the same single parameter
        (head shards of checkpoints written before sampled runs used RowAdamW)."""
        if "state" in state:
            adam = state["state"].get(0, {})
            step = float(adam["step"]) if "step" in adam else 0.0
            zeros = torch.zeros_like(self.exp_avg)
            state = {"exp_avg": adam.get("exp_avg", zeros), "exp_avg_sq": adam.get("exp_avg_sq", zeros),
                     "steps": torch.full_like(self.steps, step),
                     "param_groups": [{k: state["param_groups"][0][k] for k in ("lr", "betas", "weight_decay", "eps")}]}
        for name in ("exp_avg", "exp_avg_sq", "steps"):
            mine = getattr(self, name)
            if tuple(state[name].shape) != tuple(mine.shape):
                raise ValueError(f"RowAdamW state {name} has shape {tuple(state[name].shape)}, "
                                 f"expected {tuple(mine.shape)}")
            mine.copy_(state[name])
        group = dict(state["param_groups"][0])
        group["betas"] = tuple(group["betas"])
        self.param_groups = [group]


def head_memory_bytes(num_classes: int, dim: int, world: int, *, optimizer_states: int = 2,
                      grad: bool = True, batch_rows: int = 0, chunk: int = 65536) -> dict:
    """Derived per-rank memory of the head in bytes (fp32): weights, grad, AdamW moments,
    the normalized copy made each step, and one fp32 logits chunk of ``batch_rows`` rows."""
    rows = math.ceil(num_classes / world)
    weights = rows * dim * 4
    parts = {"weights": weights, "grad": weights if grad else 0,
             "optimizer": weights * optimizer_states, "normalized_copy": weights,
             "logits_chunk": batch_rows * min(chunk, rows) * 4 * 2}
    parts["total"] = sum(parts.values())
    return parts
