"""image.freeze_trunk, image.proj_hidden and image.feature_cache (frozen-trunk training) — no Ray."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.configs import ImageTowerConfig, apply_overrides, get_config
from trainer.export import export_encoder, load_encoder
from trainer.towers import DualEncoder, ImageTower

# A tiny timm trunk with BatchNorm, so frozen running statistics are observable.
_TINY_RESNET = ImageTowerConfig(kind="timm", arch="resnet18", kwargs=dict(layers=[1, 1, 1, 1], channels=[8, 8, 16, 16]))


def _tower(embed_dim: int = 8, **kw) -> ImageTower:
    torch.manual_seed(0)
    cfg = ImageTowerConfig(**{**_TINY_RESNET.__dict__, "kwargs": dict(_TINY_RESNET.kwargs), **kw})
    return ImageTower(cfg, embed_dim, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))


def _timm_kwargs_ok():
    try:
        _tower()
    except TypeError:
        pytest.skip("this timm's resnet does not take layers/channels kwargs")


def test_freeze_trunk_trains_only_the_projection():
    _timm_kwargs_ok()
    tower = _tower(freeze_trunk=True, proj_hidden=16).train()
    assert not tower.trunk.training and tower.training
    assert all(not p.requires_grad for p in tower.trunk.parameters())
    trunk_before = {k: v.clone() for k, v in tower.trunk.state_dict().items()}
    proj_before = {k: v.clone() for k, v in tower.proj.state_dict().items()}
    opt = torch.optim.SGD([p for p in tower.parameters() if p.requires_grad], lr=0.1)
    tower(_pixels(6)).pow(2).sum().backward()
    opt.step()
    for k, v in tower.trunk.state_dict().items():  # weights and BatchNorm running stats untouched
        assert torch.equal(v, trunk_before[k]), k
    assert any(not torch.equal(v, proj_before[k]) for k, v in tower.proj.state_dict().items())
    # an unfrozen trunk does update its BatchNorm statistics in train mode (the contrast)
    free = _tower().train()
    before = {k: v.clone() for k, v in free.trunk.state_dict().items()}
    free(_pixels(6))
    assert any(not torch.equal(v, before[k]) for k, v in free.trunk.state_dict().items())


def test_feature_cache_matches_recompute_and_skips_the_trunk():
    _timm_kwargs_ok()
    cached = _tower(freeze_trunk=True, feature_cache=5).train()
    plain = _tower(freeze_trunk=True).train()
    plain.load_state_dict(cached.state_dict())
    calls = []
    cached.trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = _pixels(4)
    a = cached(x)
    assert calls == [4] and cached.cache_misses == 4 and len(cached._cache) == 4
    b = cached(torch.cat([x[[2, 0]], _pixels(3, seed=1)]))  # 2 hits + 3 new (only 1 fits the cache)
    assert calls == [4, 3] and cached.cache_hits == 2 and len(cached._cache) == 5
    assert torch.allclose(a, plain(x), atol=1e-5)
    assert torch.allclose(b[:2], a[[2, 0]], atol=1e-5)
    assert torch.allclose(b, plain(torch.cat([x[[2, 0]], _pixels(3, seed=1)])), atol=1e-5)
    # gradients still reach the projection through cached features
    cached.zero_grad()
    cached(x).sum().backward()
    assert calls == [4, 3] and cached.proj.weight.grad is not None
    # eval mode never uses (or fills) the cache
    cached.eval()
    cached(_pixels(2, seed=2))
    assert calls[-1] == 2 and len(cached._cache) == 5


def test_feature_cache_needs_frozen_trunk():
    _timm_kwargs_ok()
    with pytest.raises(ValueError, match="freeze_trunk"):
        _tower(feature_cache=10)


def test_frozen_mlp_export_roundtrip(tmp_path):
    cfg = apply_overrides(get_config("smoke_supervised"), [
        "image.freeze_trunk=true", "image.proj_hidden=24", "image.feature_cache=100"])
    model = DualEncoder(cfg.image, cfg.text, cfg.embed_dim, cfg.data.mean, cfg.data.std).train()
    model.image(_pixels(3))  # fills the cache; it must not leak into the export
    path = export_encoder(tmp_path / "enc", model.eval(), cfg)
    enc = load_encoder(path)
    assert enc.image_tower.freeze_trunk and enc.image_tower.cache_size == 0
    images = [Image.new("RGB", (40 + i, 50), (i * 40, 100, 200)) for i in range(3)]
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.image(torch.from_numpy(np.stack(
            [enc.preprocess(im) for im in images]))), dim=1).numpy()
    assert np.allclose(enc.encode_images(images), direct, atol=1e-5)


def test_identity_projection_starts_at_the_trunk_features():
    _timm_kwargs_ok()
    tower = _tower(16, proj_init="identity").eval()   # the tiny resnet has 16 features
    with torch.no_grad():
        x = _pixels(3)
        assert torch.equal(tower(x), tower.trunk_features(x))
    with pytest.raises(ValueError, match="embed_dim = the trunk's width"):
        _tower(8, proj_init="identity")
    with pytest.raises(ValueError, match="proj_hidden=16"):
        _tower(16, proj_init="identity", proj_hidden=16)


def test_trunk_lr_scale_moves_the_trunk_that_much_slower():
    from trainer.configs import fingerprint, from_dict, to_dict
    from trainer.dist import Comm
    from trainer.state import build_state, train_step
    batch = {"pixels": _pixels(4), "labels": torch.tensor([[0, -1], [1, -1], [2, -1], [0, -1]]),
             "valid": torch.ones(4, dtype=torch.int64), "text_class": torch.tensor([0, 1, 2, 0]), "texts": ["a"] * 4}
    moved = {}
    for scale in (1.0, 0.0):
        cfg = apply_overrides(get_config("smoke_supervised"), [f"optim.trunk_lr_scale={scale}",
                                                               "optim.warmup_steps=0", "optim.clip_grad_norm=0"])
        state = build_state(cfg, 3, Comm())
        before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
        train_step(state, batch, Comm())
        moved[scale] = {n: not torch.equal(p, before[n]) for n, p in state.model.named_parameters()}
    trunk = [n for n in moved[1.0] if n.startswith("image.trunk.")]
    assert trunk and all(moved[1.0][n] for n in trunk) and not any(moved[0.0][n] for n in trunk)
    assert all(moved[0.0][n] for n in moved[0.0] if n not in trunk)   # the projection still trains
    # at its default the option leaves the fingerprint of checkpoints written before it
    cfg = get_config("smoke_supervised")
    old = to_dict(cfg)
    del old["optim"]["trunk_lr_scale"], old["image"]["proj_init"]
    assert fingerprint(cfg) == fingerprint(from_dict({**old}))  # from_dict fills the defaults back in
    assert fingerprint(apply_overrides(get_config("smoke_supervised"), ["optim.trunk_lr_scale=0.1"])) != fingerprint(cfg)
