"""Every shipped config family trains on several workers, and two Ray Train workers (DDP, gloo)
compute the gradients one worker computes on their two batches together.

The families are those the shipped configs use, shrunk to CPU size with the same module types:
EfficientNet-Lite0 + MiniLM (``mofi_efficientnet_lite0``), open_clip's towers
(``contrastive_openclip_vit_b32``) and a timm ViT + the byte text tower (``mofi_vit_b16``). For
two steps, each worker gets its half of a batch and the one-worker reference the whole batch;
the replicated towers' gradients (averaged by DDP) and the sharded head's gradient rows must
match. So must every randomness: dropout is set to 0 (its masks depend on the rank's seed) and
BatchNorm uses its running statistics, because per-worker batch statistics are the one
designed difference between the two (local BatchNorm, as torchvision's and timm's DDP training
without SyncBatchNorm)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.configs import apply_overrides, from_dict, get_config, to_dict
from trainer.dist import Comm
from trainer.state import build_state, train_step

pytestmark = pytest.mark.e2e

NUM_CLASSES, PER_WORKER, WORKERS, STEPS = 10, 4, 2, 2
FAMILIES = {
    "lite0_minilm": ("smoke_efficientnet_lite0", ['text.kind="minilm"', "text.context_length=32"]),
    "open_clip": ("smoke_contrastive_openclip", []),
    "vit_bytes": ("smoke_mofi", []),
}


def family_config(name: str):
    config, overrides = FAMILIES[name]
    return apply_overrides(get_config(config), [*overrides, f"data.batch_size={PER_WORKER}", "task.sample_rate=1.0",
                                                "optim.warmup_steps=0"])


def batch(step: int, size: int, image_size: int) -> dict:
    """A batch of distinct images, each with 1-2 distinct entities of NUM_CLASSES."""
    g = torch.Generator().manual_seed(step)
    labels = torch.stack([torch.randperm(NUM_CLASSES, generator=g)[:4] for _ in range(size)])
    labels[torch.arange(size) % 2 == 0, 1:] = -1
    labels[:, 2:] = -1
    return {"pixels": torch.randint(0, 256, (size, image_size, image_size, 3), generator=g, dtype=torch.uint8),
            "labels": labels, "valid": torch.ones(size, dtype=torch.int64), "text_class": labels[:, 0],
            "texts": [f"entity number {int(c)}, a thing seen in photo {i}" for i, c in enumerate(labels[:, 0])]}


def rows(full: dict, rank: int, world: int) -> dict:
    n = len(full["texts"]) // world
    return {k: v[rank * n:(rank + 1) * n] for k, v in full.items()}


def without_randomness(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    trunk = getattr(model.image.trunk, "net", None)
    if trunk is not None and hasattr(trunk, "_global_params"):  # EfficientNet-Lite0's drop-connect
        trunk._global_params = trunk._global_params._replace(drop_connect_rate=0.0)


def gradients(state) -> dict[str, torch.Tensor]:
    out = {name: p.grad.detach().cpu().clone() for name, p in state.model.named_parameters() if p.grad is not None}
    if state.head is not None:
        out["head"] = state.head.weight.grad.detach().cpu().clone()
    return out


def two_steps(config: dict) -> None:
    """Ray Train worker: each family for STEPS steps on this rank's rows, DDP as the trainer's
    loop wraps it; every step's gradients saved to ``<out>/<family>_rank<r>.pt``."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(1)
    for name, cfg_dict in config["families"].items():
        cfg = from_dict(cfg_dict)
        comm = Comm.from_torch(device)
        state = build_state(cfg, NUM_CLASSES, comm, device)
        without_randomness(state.model)
        state.wrap(lambda m: ray.train.torch.prepare_model(
            m, parallel_strategy_kwargs={"find_unused_parameters": False}))
        steps = []
        for step in range(STEPS):
            train_step(state, rows(batch(step, PER_WORKER * world, cfg.data.image_size), rank, world), comm)
            steps.append(gradients(state))
        torch.save(steps, Path(config["out"]) / f"{name}_rank{rank}.pt")


def close(got: torch.Tensor, want: torch.Tensor, largest: float, what: str) -> None:
    """Equal up to float32 reordering: relative to the tensor's largest entry, or to the
    step's largest gradient for tensors whose gradient is 0 in exact arithmetic (attention's
    key bias)."""
    scale = float(want.abs().max()) + 1e-4 * largest
    assert float((got - want).abs().max()) <= 1e-4 * scale, \
        f"{what}: max diff {float((got - want).abs().max()):.3g} at scale {scale:.3g}"


@pytest.mark.timeout(600)
def test_two_workers_compute_the_gradients_of_one_worker_with_the_double_batch(local_ray, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    configs = {name: to_dict(family_config(name)) for name in FAMILIES}
    trainer = TorchTrainer(two_steps, train_loop_config={"families": configs, "out": str(tmp_path)},
                           scaling_config=ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 0.5}),
                           run_config=RunConfig(name="grads", storage_path=str(tmp_path / "runs")))
    assert trainer.fit().error is None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as each worker: another thread count sums in another order (1e-3 in Lite0)
    try:
        for name in FAMILIES:
            compare(name, tmp_path)
    finally:
        torch.set_num_threads(threads)


def compare(name: str, out: Path) -> None:
    """The one-worker reference on the whole batches against both ranks' saved gradients."""
    cfg = family_config(name)
    state = build_state(cfg, NUM_CLASSES, Comm(), "cpu")
    without_randomness(state.model)
    reference = []
    for step in range(STEPS):
        train_step(state, batch(step, PER_WORKER * WORKERS, cfg.data.image_size), Comm())
        reference.append(gradients(state))
    ranks = [torch.load(out / f"{name}_rank{r}.pt", weights_only=True) for r in range(WORKERS)]
    for step, want in enumerate(reference):
        largest = max(float(v.abs().max()) for v in want.values())
        got = {k: v for k, v in ranks[0][step].items() if k != "head"}
        assert set(got) == set(want) - {"head"} and len(got) > 10, name
        for key, value in got.items():
            close(value, want[key], largest, f"{name} step {step} {key}")
            assert torch.equal(value, ranks[1][step][key])   # DDP left every rank the same
        if "head" in want:   # the head's rows are sharded: rank r holds its block of classes
            close(torch.cat([r[step]["head"] for r in ranks]), want["head"], largest, f"{name} step {step} head")
