"""TrainState + train_step without Ray, on every device this machine has (CUDA when present):
the step runs, the EMA lives with the params, logged values are reduced on the comm's device
(NCCL takes CUDA tensors only), and a checkpoint round trip repeats the next step exactly."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from trainer.configs import apply_overrides, get_config
from trainer.dist import Comm
from trainer.heads import RowAdamW
from trainer.loop import CheckpointError, restore_checkpoint, write_checkpoint
from trainer.perf import PEAK_TFLOPS, Throughput, count_flops, peak_flops
from trainer.state import build_state, clip_gradients, reduce_for_logging, train_step

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NUM_CLASSES = 11


def _cfg(*overrides, device="cpu"):
    cfg = get_config("smoke_mofi")  # tiny ViT + bytes text tower, EMA on
    precision = "bf16" if device == "cuda" else "fp32"  # the GPU path: autocast + bf16 head matmuls
    return apply_overrides(cfg, ["data.batch_size=4", "task.sample_rate=0.5", "total_steps=10",
                                 f"precision={precision}", *overrides])


def _batch(step: int, n: int = 4):
    g = torch.Generator().manual_seed(step)
    labels = torch.randint(0, NUM_CLASSES, (n, 4), generator=g)
    labels[:, 2:] = -1
    valid = torch.ones(n, dtype=torch.int64)
    valid[-1] = 0  # one bad image per batch
    return {"pixels": torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8),
            "labels": labels, "valid": valid, "text_class": labels[:, 0],
            "texts": [f"entity {int(c)}, a thing" for c in labels[:, 0]],
            "position": {"epoch": 0, "step": step + 1}}


class DeviceCheckingComm(Comm):
    """world=1 collectives (identity) that fail when handed a tensor off the comm's device,
    as NCCL does for CPU tensors."""

    def all_reduce(self, tensor, op="sum"):
        assert tensor.device.type == self.device.type, f"all_reduce got a {tensor.device} tensor, comm is {self.device}"
        return super().all_reduce(tensor, op)


class FakeData:
    num_classes = NUM_CLASSES

    def classes_fingerprint(self):
        return "fp"

    def manifest(self):
        return {"num_samples": 40, "shards": 4, "shard_format": "webdataset", "seed": 0}


@pytest.mark.parametrize("device", DEVICES)
def test_step_runs_with_state_on_device(device):
    comm = DeviceCheckingComm(device=device)
    state = build_state(_cfg(device=device), NUM_CLASSES, comm, device)
    assert state.task.lowp == (device == "cuda")
    results = [train_step(state, _batch(i), comm, measure_flops=True) for i in range(2)]
    assert all(math.isfinite(r.loss) and math.isfinite(r.grad_norm) for r in results)
    assert set(results[0].losses) == {"supervised", "contrastive"}
    assert [int(r.bad_images) for r in results] == [1, 1] and state.bad_images == 2 and state.step == 2
    assert state.position == {"epoch": 0, "step": 2} and len(state.history) == 2
    assert state.flops_per_step and state.flops_per_step > 0
    params = {p.device.type for p in state.model.parameters()}
    assert params == {torch.device(device).type}
    assert {v.device.type for v in state.ema.shadow.values()} == params
    assert state.head.weight.device.type == torch.device(device).type
    assert isinstance(state.head_opt, RowAdamW) and state.head_opt.exp_avg.device == state.head.weight.device
    for per_param in state.opt.state.values():
        assert all(v.device.type in (torch.device(device).type, "cpu") for v in per_param.values())


@pytest.mark.parametrize("text_kind", ["bytes", "minilm"])
def test_every_trainable_parameter_gets_a_gradient_and_the_towers_train(text_kind):
    # DistributedDataParallel (find_unused_parameters off, as the loop runs it) fails at the
    # second step when a module the loss never reads is built, as MiniLM's pooler was; and a
    # tower left in eval mode trains without its dropout.
    overrides = [f'text.kind="{text_kind}"'] + (["text.context_length=16"] if text_kind == "minilm" else [])
    comm = Comm(0, 1, torch.device("cpu"))
    state = build_state(_cfg(*overrides), NUM_CLASSES, comm, "cpu")
    assert state.model.training and all(m.training for m in state.model.text.modules())
    reached: set[str] = set()
    for name, p in state.model.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p, name=name: reached.add(name))
    train_step(state, _batch(0), comm)
    trainable = {name for name, p in state.model.named_parameters() if p.requires_grad}
    assert trainable and trainable - reached == set()


def test_minilm_weights_saved_with_a_pooler_still_load():
    from transformers import AutoConfig, AutoModel

    from i2e_engine.encoder.towers import MiniLMTextTower, minilm_folder

    cfg = _cfg('text.kind="minilm"', "text.context_length=16").text
    tower = MiniLMTextTower(cfg, load_weights=False)
    assert not any(".pooler." in name for name, _ in tower.named_parameters())
    with_pooler = AutoModel.from_config(AutoConfig.from_pretrained(str(minilm_folder())))   # as saved before
    old = {f"model.{k}": v for k, v in with_pooler.state_dict().items()}
    assert any(".pooler." in k for k in old)
    tower.load_state_dict(old)                        # strict: no unexpected key left
    assert torch.equal(tower.model.embeddings.word_embeddings.weight, with_pooler.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("device", DEVICES)
def test_logging_reduction_on_comm_device(device):
    comm = DeviceCheckingComm(device=device)
    host = [torch.tensor(1.5), torch.tensor(2.0, device=device), torch.tensor([3.0])]
    reduced = reduce_for_logging(host, comm)
    assert reduced.device.type == torch.device(device).type and reduced.tolist() == [1.5, 2.0, 3.0]


@pytest.mark.parametrize("device", DEVICES)
def test_clipping_scales_towers_and_head_by_their_joint_norm(device):
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 3, generator=g).to(device), torch.randn(7, generator=g).to(device)]
    head = torch.randn(4, 6, generator=g).to(device)
    joint = math.sqrt(sum(float((t.double() ** 2).sum()) for t in [*grads, head]))
    before = [t.clone() for t in [*grads, head]]
    comm = DeviceCheckingComm(device=device)
    norm = clip_gradients(grads, head, joint / 4, comm, torch.device(device))
    assert norm.device.type == torch.device(device).type and float(norm) == pytest.approx(joint, rel=1e-6)
    for clipped, original in zip([*grads, head], before):
        torch.testing.assert_close(clipped, original / 4, rtol=1e-5, atol=1e-6)
    # under the limit nothing changes; without a head only the towers count
    assert float(clip_gradients(grads, head, joint, comm, torch.device(device))) == pytest.approx(joint / 4, rel=1e-5)
    torch.testing.assert_close(head, before[-1] / 4, rtol=1e-5, atol=1e-6)
    towers = math.sqrt(sum(float((t.double() ** 2).sum()) for t in before[:-1])) / 4
    assert float(clip_gradients(grads, None, 1e9, comm, torch.device(device))) == pytest.approx(towers, rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoint_roundtrip_repeats_next_step(device, tmp_path):
    comm = Comm(device=device)
    cfg = _cfg(device=device)
    a = build_state(cfg, NUM_CLASSES, comm, device)
    for i in range(2):
        train_step(a, _batch(i), comm)
    write_checkpoint(tmp_path, a, FakeData(), rank=0, world=1, metrics={"loss": 1.0}, final=False)
    assert json.loads((tmp_path / "meta.json").read_text())["step"] == 2
    b = build_state(cfg, NUM_CLASSES, comm, device)
    restore_checkpoint(b, tmp_path, FakeData(), 0, 1)
    assert (b.step, b.history, b.bad_images, b.position) == (a.step, a.history, a.bad_images, a.position)
    ra, rb = train_step(a, _batch(2), comm), train_step(b, _batch(2), comm)
    exact = device == "cpu"  # CUDA's atomics may reorder sums
    assert (ra.loss == rb.loss) if exact else ra.loss == pytest.approx(rb.loss, rel=1e-5)
    sa, sb = a.state_dict(), b.state_dict()
    for part in ("model", "ema"):
        for k in sa[part]:
            torch.testing.assert_close(sa[part][k], sb[part][k], rtol=0 if exact else 1e-4, atol=0 if exact else 1e-4)
    torch.testing.assert_close(sa["head"]["weight"], sb["head"]["weight"], rtol=0 if exact else 1e-4,
                               atol=0 if exact else 1e-4)
    # a checkpoint of another head size does not fit, and says so
    other = build_state(cfg, NUM_CLASSES + 3, comm, device)
    with pytest.raises(CheckpointError, match="head shard 0 has shape"):
        restore_checkpoint(other, tmp_path, type("D", (FakeData,), {"num_classes": NUM_CLASSES + 3})(), 0, 1)


def test_full_softmax_head_uses_torch_adamw():
    state = build_state(_cfg("task.sample_rate=1.0", "optim.ema_decay=0.0"), NUM_CLASSES, Comm(), "cpu")
    assert isinstance(state.head_opt, torch.optim.AdamW) and state.ema is None
    before = state.head.weight.detach().clone()
    train_step(state, _batch(0), Comm())
    assert (state.head.weight != before).all(dim=1).all()  # every row moves (decay + full softmax)


def test_throughput_and_peaks():
    assert peak_flops("cpu", "bf16") is None
    assert PEAK_TFLOPS["H100"][0] == 989.0


@pytest.mark.parametrize("name, bf16, fp32", [
    ("NVIDIA H100 80GB HBM3", 989e12, 494e12), ("NVIDIA H100 NVL", 835e12, 418e12), ("NVIDIA H100 PCIe", 756e12, 378e12),
    ("Tesla V100-SXM2-16GB", None, 15.7e12), ("Tesla T4", None, 8.1e12), ("Some Future GPU", None, None)])
def test_peaks_by_device_name(monkeypatch, name, bf16, fp32):
    # the H100 variants differ; V100 and T4 have no bf16 tensor cores, so no bf16 MFU there
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda", 0), "bf16") == bf16
    assert peak_flops(torch.device("cuda", 0), "fp32") == fp32

def test_throughput_reports_intervals_and_the_steady_state():
    meter = Throughput(global_batch=8, peak=1e12, skip=2)
    meter.step(wait=0.5, total=1.0)
    first = meter.report(1e11)
    assert first["samples_per_s"] == 8.0 and first["data_wait_frac"] == 0.5 and "mfu" not in first
    meter.step(0.0, 1.0)
    for _ in range(2):   # two steady steps read back together, as between two logging steps
        meter.step(0.1, 0.5)
    steady = meter.report(1e11, recompute_flops=5e10)
    assert steady["samples_per_s"] == pytest.approx(24 / 2.0)     # 3 steps in 2 s since the last report
    assert steady["samples_per_s_steady"] == pytest.approx(16.0)
    assert steady["data_wait_frac_steady"] == pytest.approx(0.2)
    assert steady["mfu"] == pytest.approx(0.2) and steady["tflops_per_s"] == pytest.approx(0.2)
    assert steady["hfu"] == pytest.approx(0.3)
    sink = {}
    with count_flops(sink):
        torch.randn(3, 5) @ torch.randn(5, 7)
    assert sink["flops"] == 2 * 3 * 5 * 7 and sink["recompute_flops"] == 0


def test_model_flops_leave_out_the_checkpointed_recompute():
    from trainer.configs import ImageTowerConfig
    from i2e_engine.encoder.towers import build_image_trunk
    tiny = ImageTowerConfig(kind="timm", arch="vit_tiny_patch16_224",
                            kwargs=dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2))
    counts, trunks = {}, {}
    for checkpointed in (False, True):
        torch.manual_seed(0)
        trunk, _ = build_image_trunk(dataclasses.replace(tiny, grad_checkpointing=checkpointed))
        trunk.train()
        sink = {}
        with count_flops(sink):
            trunk(torch.randn(4, 3, 32, 32)).pow(2).sum().backward()
        counts[checkpointed], trunks[checkpointed] = sink, trunk
    # the same model FLOPs either way; checkpointing runs its blocks' forward a second time
    assert counts[True]["flops"] == counts[False]["flops"] > 0
    assert counts[False]["recompute_flops"] == 0
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        trunks[False](torch.randn(4, 3, 32, 32))
    blocks = sum(forward.get_flop_counts()["VisionTransformer.blocks"].values())   # what timm checkpoints
    assert counts[True]["recompute_flops"] == blocks > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a host sync can only be seen with a CUDA device")
def test_a_step_never_waits_for_the_device():
    # torch raises on every call that makes the host wait for the GPU (.item(), nonzero, ...)
    comm = Comm(device="cuda")
    state = build_state(_cfg("task.sample_rate=1.0", device="cuda"), NUM_CLASSES, comm, "cuda")
    train_step(state, _batch(0), comm, measure_flops=True)   # the first step counts FLOPs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = train_step(state, _batch(1), comm)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.floats()["bad_images_step"] == 1 and len(state.history) == 2
