"""Loss/head math without Ray: sharded exact softmax vs unsharded reference (2-process gloo),
a hand-computed multi-label case, the head's matmul count, duplicate-aware contrastive
targets, class sampling and its row-wise AdamW (PartialFC)."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from trainer.dist import Comm
from trainer.heads import RowAdamW, ShardedCosineHead, shard_range
from trainer.losses import (contrastive_loss, contrastive_targets, multilabel_targets,
                            reference_cosine_softmax_loss, sharded_cosine_softmax_loss)

N_PER_RANK, D_IN, D, C, SCALE, MARGIN = 4, 6, 5, 13, 8.0, 0.25


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * N_PER_RANK, D_IN, generator=g)
    labels = torch.tensor([[0, -1], [3, 12], [12, -1], [7, -1], [5, 6], [0, 9], [11, -1], [3, -1]])
    valid = torch.tensor([1, 1, 1, 0, 1, 1, 1, 1.0])
    tower = torch.randn(D, D_IN, generator=g)
    return x, labels, valid, tower


def _reference():
    x, labels, valid, tower_w = _batch()
    tower = tower_w.clone().requires_grad_()
    head = ShardedCosineHead(C, D, 0, 1, seed=3)
    feats = F.normalize(x @ tower.t(), dim=1)
    loss = reference_cosine_softmax_loss(feats, F.normalize(head.weight, dim=1), labels, valid,
                                         scale=SCALE, margin=MARGIN)
    loss.backward()
    return loss.detach(), tower.grad.clone(), head.weight.grad.clone()


def _contrastive_reference():
    x, labels, valid, tower_w = _batch()
    tower = tower_w.clone().requires_grad_()
    emb = F.normalize(x @ tower.t(), dim=1)
    txt = F.normalize(emb.detach().flip(1) + 0.3, dim=1)
    loss = contrastive_loss(emb, txt, labels, labels[:, 0], torch.ones_like(valid), torch.tensor(10.0))
    loss.backward()
    return loss.detach(), tower.grad.clone()


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    comm = Comm.from_torch()
    x, labels, valid, tower_w = _batch()
    sl = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    # supervised: sharded head, features gathered with grad
    tower = tower_w.clone().requires_grad_()
    head = ShardedCosineHead(C, D, rank, world, seed=3)
    feats = F.normalize(x[sl] @ tower.t(), dim=1)
    loss = head(comm.all_gather_grad(feats), comm.all_gather(labels[sl]), comm.all_gather(valid[sl]),
                scale=SCALE, margin=MARGIN, chunk=2, comm=comm)
    loss.backward()
    tower_grad = tower.grad.clone()
    dist.all_reduce(tower_grad)
    tower_grad /= world  # what DDP does to the replicated tower
    # contrastive: local loss + gather with grad
    tower2 = tower_w.clone().requires_grad_()
    emb_all = F.normalize(x @ tower2.t(), dim=1)
    emb = emb_all[sl]
    txt = F.normalize(emb.detach().flip(1) + 0.3, dim=1)
    # all rows valid here: with masked rows DDP averages per-rank means (open_clip semantics)
    valid = torch.ones_like(valid)
    closs = contrastive_loss(emb, txt, labels[sl], labels[sl, 0], valid[sl], torch.tensor(10.0), comm)
    closs.backward()
    cgrad = tower2.grad.clone()
    dist.all_reduce(cgrad)
    cgrad /= world
    closs_mean = closs.detach().clone() * valid[sl].sum()
    dist.all_reduce(closs_mean)
    torch.save({"loss": loss.detach(), "tower_grad": tower_grad, "head_grad": head.weight.grad.clone(),
                "start": head.start, "end": head.end, "closs": closs_mean / valid.sum(), "cgrad": cgrad},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chunked_sharded_loss_equals_reference_single_process():
    torch.manual_seed(0)
    f = F.normalize(torch.randn(6, D), dim=1).requires_grad_()
    w = F.normalize(torch.randn(C, D), dim=1).requires_grad_()
    labels = torch.tensor([[0, -1], [3, 4], [12, -1], [2, -1], [5, 6], [7, -1]])
    valid = torch.tensor([1, 1, 1, 0, 1, 1.0])
    ref = reference_cosine_softmax_loss(f, w, labels, valid, scale=SCALE, margin=MARGIN)
    ref_grads = torch.autograd.grad(ref, [f, w])
    for chunk in (1, 4, 1000):
        out = sharded_cosine_softmax_loss(f, w, labels, multilabel_targets(labels), valid, scale=SCALE,
                                          margin=MARGIN, chunk=chunk)
        grads = torch.autograd.grad(out, [f, w])
        assert torch.allclose(out, ref, atol=1e-5)
        for a, b in zip(grads, ref_grads):
            assert torch.allclose(a, b, atol=1e-5)


def test_sharded_head_two_ranks_matches_unsharded(tmp_path):
    """2-process gloo: same loss, head-shard gradients = rows of the unsharded gradient, and
    DDP-averaged tower gradient = unsharded tower gradient. Same for the contrastive loss."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ref_loss, ref_tower, ref_head = _reference()
    c_loss, c_grad = _contrastive_reference()
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(r["loss"], ref_loss, atol=1e-5)
        assert torch.allclose(r["head_grad"], ref_head[r["start"]:r["end"]], atol=1e-5)
        assert torch.allclose(r["tower_grad"], ref_tower, atol=1e-5)
        assert torch.allclose(r["closs"], c_loss, atol=1e-5)
        assert torch.allclose(r["cgrad"], c_grad, atol=1e-5)


def test_head_init_independent_of_sharding():
    full = ShardedCosineHead(C, D, 0, 1, seed=1).weight
    parts = torch.cat([ShardedCosineHead(C, D, r, 3, seed=1).weight for r in range(3)])
    assert torch.equal(full, parts)
    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_class_sampling_keeps_positives():
    head = ShardedCosineHead(100, D, 0, 1)
    labels = torch.tensor([[3, 50], [97, -1], [3, -1]])
    rows, cols = head.sample(head.local_columns(labels), 0.1, torch.Generator().manual_seed(0))
    assert rows.numel() == 10
    for i, j in ((0, 0), (0, 1), (1, 0), (2, 0)):
        assert rows[cols[i, j]] == labels[i, j]
    assert cols[1, 1] == -1
    feats = F.normalize(torch.randn(3, D), dim=1)
    loss = head(feats, labels, torch.ones(3), scale=SCALE, margin=MARGIN, sample_rate=0.1,
                generator=torch.Generator().manual_seed(0))
    loss.backward()
    grad_rows, grad = head.gradient()  # the gradient covers the sampled rows only
    assert torch.equal(grad_rows, rows) and (grad[torch.isin(rows, torch.tensor([3, 50, 97]))].abs().sum(1) > 0).all()


def test_contrastive_targets_are_duplicate_aware():
    # images 0, 1, 3 share entity 7; image 2 has entities 4 and 7 (multi-label); image 4 is alone
    labels = torch.tensor([[7, -1], [7, -1], [4, 7], [7, -1], [9, -1]])
    text_ids = labels[:, 0]
    pos = contrastive_targets(labels, text_ids)
    expected = torch.tensor([[1, 1, 0, 1, 0],
                             [1, 1, 0, 1, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 0, 1, 0],
                             [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(pos, expected)
    # identical embeddings for the duplicates: the loss is only minimal when they are not negatives
    img = F.normalize(torch.tensor([[1.0, 0, 0], [1, 0, 0], [0.9, 0.1, 0], [1, 0, 0], [0, 0, 1]]), dim=1)
    valid = torch.ones(5)
    loss = contrastive_loss(img, img, labels, text_ids, valid, torch.tensor(10.0))
    logits = 10.0 * img @ img.t()
    t = expected.float() / expected.float().sum(1, keepdim=True)
    i2t = -(t * logits.log_softmax(1)).sum(1)
    t2i_t = expected.t().float() / expected.t().float().sum(1, keepdim=True)
    t2i = -(t2i_t * logits.log_softmax(1)).sum(1)
    assert torch.allclose(loss, (0.5 * (i2t + t2i)).mean(), atol=1e-5)
    assert not torch.equal(pos, torch.eye(5, dtype=torch.bool))  # plain CLIP's arange targets differ


def test_contrastive_invalid_rows_are_ignored():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 3), dim=1), F.normalize(torch.randn(4, 3), dim=1)
    labels = torch.tensor([[0, -1], [1, -1], [2, -1], [3, -1]])
    valid = torch.tensor([1, 1, 0, 1.0])
    full = contrastive_loss(img, txt, labels, labels[:, 0], valid, torch.tensor(5.0))
    keep = torch.tensor([0, 1, 3])
    sub = contrastive_loss(img[keep], txt[keep], labels[keep], labels[keep, 0], torch.ones(3), torch.tensor(5.0))
    assert torch.allclose(full, sub, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine: bf16 path not exercised")
def test_head_bf16_autocast_on_gpu():
    head = ShardedCosineHead(C, D).cuda()
    feats = F.normalize(torch.randn(4, D, device="cuda"), dim=1)
    labels = torch.tensor([[0, -1], [1, -1], [2, -1], [3, -1]], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = head(feats, labels, torch.ones(4, device="cuda"), scale=SCALE, margin=MARGIN)
        lowp = head(feats, labels, torch.ones(4, device="cuda"), scale=SCALE, margin=MARGIN, lowp=True, chunk=4)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert lowp.dtype == torch.float32 and torch.allclose(lowp, loss, rtol=2e-2)  # bf16 operands, fp32 sums

def test_multilabel_target_hand_computed():
    """One image with entities {0, 2} of 3 classes, W = I, f = e0, s = 2, m = 0.5: logits
    z = s * cos - s * m on both positives = [1, 0, -1]; target 1/2 on each positive, so
    loss = log(e + 1 + 1/e) - (1 + -1) / 2 and d loss / d f = s * (softmax(z) - t) (W = I)."""
    f = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    w = torch.eye(3, requires_grad=True)
    labels = torch.tensor([[0, 2]])
    assert torch.equal(multilabel_targets(labels), torch.tensor([[0.5, 0.5]]))
    loss = sharded_cosine_softmax_loss(f, w, labels, multilabel_targets(labels), torch.ones(1), scale=2.0,
                                       margin=0.5, chunk=2)
    e = math.e
    assert loss.item() == pytest.approx(math.log(e + 1 + 1 / e), abs=1e-6)
    loss.backward()
    p = torch.tensor([e, 1.0, 1 / e]) / (e + 1 + 1 / e)
    assert torch.allclose(f.grad[0], 2.0 * (p - torch.tensor([0.5, 0.0, 0.5])), atol=1e-6)
    # padding (-1) carries no target mass: [[0, -1]] is the single-label case
    assert torch.equal(multilabel_targets(torch.tensor([[0, -1]])), torch.tensor([[1.0, 0.0]]))


def test_head_one_matmul_per_chunk_and_stable_at_large_scale():
    """Forward is one logits matmul per chunk (online logsumexp), backward one recompute plus
    the two gradient matmuls: 8 N C D FLOPs in all. Logits of scale 1000 do not overflow."""
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    n, c, d = 6, 13, 5
    f = F.normalize(torch.randn(n, d), dim=1).requires_grad_()
    w = F.normalize(torch.randn(c, d), dim=1).requires_grad_()
    labels = torch.tensor([[0, -1], [3, 4], [12, -1], [2, -1], [5, 6], [7, -1]])
    counter = FlopCounterMode(display=False)
    with counter:
        out = sharded_cosine_softmax_loss(f, w, labels, multilabel_targets(labels), torch.ones(n), scale=1000.0,
                                          margin=MARGIN, chunk=4)
        out.backward()
    assert counter.get_total_flops() == 8 * n * c * d
    ref = reference_cosine_softmax_loss(f, w, labels, torch.ones(n), scale=1000.0, margin=MARGIN)
    assert torch.isfinite(out) and torch.allclose(out, ref, rtol=1e-5)


def test_row_adamw_matches_adamw_when_every_row_is_updated():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(7, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ref = torch.optim.AdamW([a], lr=0.01, betas=(0.9, 0.98), weight_decay=0.05)
    mine = RowAdamW(b, lr=0.01, betas=(0.9, 0.98), weight_decay=0.05)
    for _ in range(4):
        grad = torch.randn(7, 3)
        a.grad = grad.clone()
        ref.step()
        mine.step(torch.arange(7), grad)
    assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)
    assert torch.allclose(ref.state[a]["exp_avg_sq"], mine.exp_avg_sq, atol=1e-8)
    # the head-shard optimizer state of older checkpoints (torch AdamW) loads into RowAdamW
    old = RowAdamW(torch.nn.Parameter(a.detach().clone()), lr=1.0)
    old.load_state_dict(ref.state_dict())
    assert torch.equal(old.exp_avg, ref.state[a]["exp_avg"]) and torch.equal(old.steps, torch.full((7,), 4.0))
    assert old.param_groups[0]["lr"] == 0.01 and old.param_groups[0]["betas"] == (0.9, 0.98)


def test_partialfc_leaves_unsampled_rows_and_moments_bit_identical():
    head = ShardedCosineHead(100, D, 0, 1, seed=2)
    opt = RowAdamW(head.weight, lr=0.1, betas=(0.9, 0.98), weight_decay=0.1)
    labels = torch.tensor([[3, 50], [97, -1], [3, -1]])
    touched = set()
    for step in range(2):
        before = {"w": head.weight.detach().clone(), "m": opt.exp_avg.clone(), "v": opt.exp_avg_sq.clone(),
                  "t": opt.steps.clone()}
        loss = head(F.normalize(torch.randn(3, D), dim=1), labels, torch.ones(3), scale=SCALE, margin=MARGIN,
                    sample_rate=0.1, generator=torch.Generator().manual_seed(step))
        loss.backward()
        rows, grad = head.gradient()
        assert head.weight.grad is None and grad.shape == (rows.numel(), D)  # no dense C x D gradient
        opt.step(rows, grad)
        out = torch.ones(100, dtype=torch.bool)
        out[rows] = False
        assert torch.equal(head.weight.detach()[out], before["w"][out])
        assert torch.equal(opt.exp_avg[out], before["m"][out]) and torch.equal(opt.exp_avg_sq[out], before["v"][out])
        assert torch.equal(opt.steps[out], before["t"][out])
        assert (head.weight.detach()[rows] != before["w"][rows]).any(dim=1).all()
        touched |= set(rows.tolist())
    assert opt.steps[3] == 2 and opt.steps.sum() == sum(1 for _ in range(2) for _ in range(10))
    state = opt.state_dict()
    again = RowAdamW(torch.nn.Parameter(head.weight.detach().clone()), lr=1.0)
    again.load_state_dict(state)
    assert torch.equal(again.exp_avg, opt.exp_avg) and again.param_groups[0]["lr"] == 0.1


def test_margin_lands_once_on_each_positive_column_of_a_chunk():
    # written without index lists (no host sync): a label outside the chunk, a repeated label
    # and -1 pads must leave the logits alone
    from trainer.losses import _chunk_logits
    g = torch.Generator().manual_seed(0)
    feats, weights = torch.randn(5, 8, generator=g), torch.randn(20, 8, generator=g)
    cols = torch.tensor([[3, 3, -1], [0, 19, 7], [25, -1, -1], [4, 5, 4], [-1, -1, -1]])
    for start, end in [(0, 20), (0, 10), (10, 20)]:
        expected = (feats @ weights[start:end].t()) * 2.0
        for row, labels in enumerate(cols.tolist()):
            for c in set(labels):
                if start <= c < end:
                    expected[row, c - start] -= 2.0 * 0.5
        assert torch.equal(_chunk_logits(feats, weights, start, end, 2.0, 0.5, cols, False), expected)
