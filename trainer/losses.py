"""Loss math as plain torch functions (no Ray): the exact distributed cosine-softmax over
class-sharded weights, and the duplicate-aware CLIP loss.

Gradient convention (both losses): every rank returns the same global value for the
sharded softmax (mean over the valid rows of the gathered batch) and its local rows'
mean for the contrastive loss; feature gradients are scaled so that DDP's *average* of
the replicated towers' gradients equals the gradient of the global mean loss, while the
class-weight shard (kept out of DDP) gets the exact gradient of the global mean loss.
"""
from __future__ import annotations

import torch

from trainer.dist import Comm


def _mm(a: torch.Tensor, b: torch.Tensor, lowp: bool) -> torch.Tensor:
    """fp32 ``a @ b``; with ``lowp`` the operands go to bf16 and the product accumulates in fp32
    (CUDA's ``mm(..., out_dtype=float32)``; where that overload is missing, the bf16 product
    is upcast, which rounds the output once to bf16)."""
    if not lowp:
        return a @ b
    a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    try:
        return torch.mm(a, b, out_dtype=torch.float32)
    except (RuntimeError, TypeError, NotImplementedError):
        return (a @ b).float()


def _chunk_logits(feats, weights, start, end, scale, margin, cols, lowp):
    """fp32 logits for classes [start, end) of this shard, margin on positive columns."""
    z = _mm(feats, weights[start:end].t(), lowp) * scale
    if margin:
        # Every (row, label) pair adds -s*m at its column, or 0 at column 0 when the label is not
        # in this chunk or repeats an earlier label of its row: fixed shapes, so the host never
        # waits for the device here.
        k = cols.shape[1]
        earlier = torch.ones(k, k, dtype=torch.bool, device=cols.device).triu(1)     # [j, k]: j < k
        repeated = ((cols[:, :, None] == cols[:, None, :]) & earlier).any(dim=1)
        inside = (cols >= start) & (cols < end) & ~repeated
        rows = torch.arange(cols.shape[0], device=cols.device)[:, None].expand_as(cols)
        z.index_put_((rows, torch.where(inside, cols - start, 0)), inside.to(z.dtype) * (-scale * margin),
                     accumulate=True)
    return z


class _ShardedCosineCE(torch.autograd.Function):
    """Forward: one logits matmul per class chunk with an online (running max, rescaled sum)
    logsumexp, then one all-reduce of the max and one of the rescaled sums. Saves only the
    per-row global logsumexp; backward recomputes each chunk's logits once (one matmul) and
    forms both gradients from it (two matmuls)."""

    @staticmethod
    def forward(ctx, feats, weights, cols, tweights, valid, scale, margin, chunk, comm, feat_grad_scale, lowp):
        n = feats.shape[0]
        num_local = weights.shape[0]
        run_max = torch.full((n,), float("-inf"), dtype=torch.float32, device=feats.device)
        run_sum = torch.zeros(n, dtype=torch.float32, device=feats.device)
        for start in range(0, num_local, chunk):
            z = _chunk_logits(feats, weights, start, min(start + chunk, num_local), scale, margin, cols, lowp)
            new_max = torch.maximum(run_max, z.max(dim=1).values)
            run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(z - new_max[:, None]).sum(dim=1)
            run_max = new_max
        gmax = comm.all_reduce(run_max, "max")
        gsum = comm.all_reduce(run_sum * torch.exp(run_max - gmax), "sum")
        lse = gmax + torch.log(gsum)
        has = cols >= 0
        pos_w = weights[cols.clamp(min=0)]                        # (n, k, d)
        pos_z = scale * ((feats[:, None, :] * pos_w).sum(-1) - margin)
        local_pos = (pos_z * tweights * has).sum(dim=1)
        gpos = comm.all_reduce(local_pos, "sum")
        per_row = lse - gpos
        n_valid = valid.sum().clamp(min=1.0)
        loss = (per_row * valid).sum() / n_valid
        ctx.save_for_backward(feats, weights, cols, tweights, valid, lse)
        ctx.scale, ctx.margin, ctx.chunk, ctx.n_valid, ctx.lowp = scale, margin, chunk, n_valid, lowp
        ctx.feat_grad_scale = feat_grad_scale
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        feats, weights, cols, tweights, valid, lse = ctx.saved_tensors
        scale, margin, chunk, lowp = ctx.scale, ctx.margin, ctx.chunk, ctx.lowp
        coef = grad_out * valid / ctx.n_valid                    # (n,)
        grad_feats = torch.zeros_like(feats)
        grad_weights = torch.zeros_like(weights)
        num_local = weights.shape[0]
        for start in range(0, num_local, chunk):
            end = min(start + chunk, num_local)
            z = _chunk_logits(feats, weights, start, end, scale, margin, cols, lowp)
            g = torch.exp(z - lse[:, None]) * (coef * scale)[:, None]
            grad_feats += _mm(g, weights[start:end], lowp)
            grad_weights[start:end] = _mm(g.t(), feats, lowp)
        has = cols >= 0
        tw = tweights * has * coef[:, None]                      # (n, k)
        safe = cols.clamp(min=0)
        grad_feats -= scale * (tw[:, :, None] * weights[safe]).sum(1)
        grad_weights.index_add_(0, safe.reshape(-1),
                                (-scale * tw.reshape(-1, 1)) * feats.repeat_interleave(cols.shape[1], 0))
        return (grad_feats * ctx.feat_grad_scale, grad_weights, None, None, None, None, None, None, None, None,
                None)


def sharded_cosine_softmax_loss(feats: torch.Tensor, weights: torch.Tensor, cols: torch.Tensor,
                                tweights: torch.Tensor, valid: torch.Tensor, *, scale: float,
                                margin: float, chunk: int = 65536, comm: Comm | None = None,
                                feat_grad_scale: float | None = None, lowp: bool = False) -> torch.Tensor:
    """Exact softmax cross-entropy over classes sharded across ranks (CosFace logits).

    feats: (N, D) L2-normalized features of the *gathered* global batch (same on every rank).
    weights: (C_r, D) L2-normalized class rows this rank holds (or its sampled subset).
    cols: (N, K) long, column in ``weights`` of each positive class, -1 where the positive
        is not on this rank (or is padding). tweights: (N, K) target mass of each positive
        (sums to 1 over a row's positives across all ranks). valid: (N,) 1.0/0.0 row mask.
    logit = scale * (cos - margin * [positive]); loss = mean over valid rows of
    logsumexp over all classes of all ranks - sum_k t_k * logit_k. Max and sum are
    all-reduced, so the value is the unsharded value. Logits are fp32, ``chunk`` classes at a
    time, one matmul per chunk forward (online logsumexp) and one recompute per chunk backward.
    ``lowp``: the logits and gradient matmuls take bf16 operands with fp32 accumulation (the
    CUDA path under bf16 precision); the softmax arithmetic stays fp32.
    ``feat_grad_scale`` (default: world size) multiplies the feature gradient; see module doc.
    """
    comm = comm or Comm()
    scale_g = float(comm.world if feat_grad_scale is None else feat_grad_scale)
    return _ShardedCosineCE.apply(feats.float(), weights.float(), cols.long(), tweights.float(),
                                  valid.float(), float(scale), float(margin), int(max(1, chunk)),
                                  comm, scale_g, bool(lowp))


def multilabel_targets(labels: torch.Tensor) -> torch.Tensor:
    """Target mass for padded label rows (N, K; -1 pads): 1/k on each of the k labels.

    The stated multi-label rule of the supervised recipe: an image annotated with k
    entities spreads its target uniformly over them (soft-target softmax), and every one of
    them gets the margin."""
    has = (labels >= 0).float()
    return has / has.sum(1, keepdim=True).clamp(min=1.0)


def reference_cosine_softmax_loss(feats, weights, labels, valid, *, scale, margin):
    """Unsharded, unchunked reference (plain autograd) for tests."""
    logits = scale * (feats @ weights.t())
    t = multilabel_targets(labels)
    onehot = torch.zeros_like(logits)
    safe = labels.clamp(min=0)
    onehot.scatter_add_(1, safe, t)
    logits = logits - scale * margin * (onehot > 0).float()
    per_row = -(onehot * torch.log_softmax(logits, dim=1)).sum(1)
    return (per_row * valid).sum() / valid.sum().clamp(min=1.0)


def contrastive_targets(image_labels: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
    """Positive mask (B_img, B_txt): text j is a positive of image i when text j's entity is
    one of image i's entities. Images sharing an entity are therefore positives for each
    other's texts, not negatives (plain CLIP would use the identity)."""
    return ((image_labels[:, :, None] == text_ids[None, None, :]) & (image_labels[:, :, None] >= 0)).any(1)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, text_ids: torch.Tensor,
                     valid: torch.Tensor, logit_scale: torch.Tensor, comm: Comm | None = None) -> torch.Tensor:
    """Duplicate-aware CLIP loss, open_clip's local-loss + gather-with-grad semantics.

    image, text: (B, D) L2-normalized local features; labels: (B, K) entity ids of each
    image (-1 pads); text_ids: (B,) entity id each text row was made from; valid: (B,).
    Each local image is scored against every gathered text and vice versa; the target is
    uniform over all positives (``contrastive_targets``); invalid rows are neither queries
    nor candidates. Returns the mean over valid local rows of (i2t + t2i) / 2.
    """
    comm = comm or Comm()
    valid = valid.float()
    image_all, text_all = comm.all_gather_grad(image), comm.all_gather_grad(text)
    labels_all, text_ids_all = comm.all_gather(labels), comm.all_gather(text_ids)
    valid_all = comm.all_gather(valid) > 0
    scale = logit_scale.float()
    neg = torch.finfo(torch.float32).min / 4

    def side(query, keys, positives):
        logits = scale * (query.float() @ keys.float().t())
        logits = logits.masked_fill(~valid_all[None, :], neg)
        positives = positives & valid_all[None, :]
        target = positives.float() / positives.float().sum(1, keepdim=True).clamp(min=1.0)
        return -(target * torch.log_softmax(logits, dim=1)).sum(1)

    i2t = side(image, text_all, contrastive_targets(labels, text_ids_all))
    t2i = side(text, image_all, contrastive_targets(labels_all, text_ids).t())
    per_row = 0.5 * (i2t + t2i)
    return (per_row * valid).sum() / valid.sum().clamp(min=1.0)
