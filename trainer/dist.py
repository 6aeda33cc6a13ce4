"""The few collectives the losses need, behind one small object.

``Comm(world=1)`` (the default when torch.distributed is not initialized) makes every
collective the identity, so the loss math runs and is tested without any process group.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0; backward sums the gradient over ranks and returns this rank's slice
    (an all-reduce, so it works on every backend including gloo)."""

    @staticmethod
    def forward(ctx, tensor):
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


class Comm:
    """``device``: where tensors handed to a collective must live (CUDA under NCCL, the CPU under
    gloo); callers that reduce host-side values (logging) move them there first."""

    def __init__(self, rank: int = 0, world: int = 1, device: str | torch.device = "cpu"):
        self.rank, self.world, self.device = rank, world, torch.device(device)

    @classmethod
    def from_torch(cls, device: str | torch.device = "cpu") -> "Comm":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device)
        return cls(device=device)

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """No-grad all-reduce (returns a new tensor)."""
        if self.world == 1:
            return tensor.clone()
        out = tensor.detach().contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return out

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """No-grad all-gather along dim 0 (equal shapes on every rank)."""
        if self.world == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.detach().contiguous())
        return torch.cat(parts, dim=0)

    def all_gather_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return tensor
        return _GatherWithGrad.apply(tensor)
