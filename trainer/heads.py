"""Classification head for millions of entities: class rows sharded across ranks.

Rank r of W holds rows ``shard_range(C, r, W)`` of the (C, D) cosine classifier. The head
is a plain module that the job keeps *out of DDP* (its gradient is already exact, see
``trainer.losses``) and checkpoints per rank. Memory per rank: (C / W) x D x 4 bytes for
the weights, x3 with AdamW's two moments, plus one grad buffer.
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
                comm: Comm | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Loss of the gathered batch: feats_all (N, D) L2-normalized, labels_all (N, K)."""
        comm = comm or Comm()
        cols = self.local_columns(labels_all)
        weight = self.weight
        if sample_rate < 1.0:
            rows, cols = self.sample(cols, sample_rate, generator)
            weight = weight[rows]
        with torch.autocast(device_type=feats_all.device.type, enabled=False):
            weights = F.normalize(weight.float(), dim=1)
            return sharded_cosine_softmax_loss(
                feats_all.float(), weights, cols, multilabel_targets(labels_all), valid_all,
                scale=scale, margin=margin, chunk=chunk, comm=comm)


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
