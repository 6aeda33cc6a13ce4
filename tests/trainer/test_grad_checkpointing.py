"""Gradient checkpointing trades compute for memory and must not change the math."""
import dataclasses

import pytest
import torch

from i2e_engine.encoder.towers import build_image_trunk
from trainer.configs import ImageTowerConfig

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


def _grads(trunk, pixels):
    trunk.train()
    trunk.zero_grad()
    trunk(pixels).pow(2).sum().backward()
    return {name: p.grad.clone() for name, p in trunk.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("config", [
    ImageTowerConfig(kind="timm", arch="vit_tiny_patch16_224", kwargs=TINY_VIT),
    ImageTowerConfig(kind="efficientnet_lite0", pretrained=False),
])
def test_checkpointed_trunk_gives_the_same_gradients(config):
    torch.manual_seed(0)
    plain, _ = build_image_trunk(config)
    checkpointed, _ = build_image_trunk(dataclasses.replace(config, grad_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.grad_checkpointing and not plain.grad_checkpointing
    size = 32 if config.kind == "timm" else 224
    pixels = torch.randn(2, 3, size, size)
    if config.kind == "efficientnet_lite0":  # dropout/drop-connect off so both passes see the same noise
        plain.net._global_params = plain.net._global_params._replace(drop_connect_rate=0.0)
        checkpointed.net._global_params = checkpointed.net._global_params._replace(drop_connect_rate=0.0)
    expected, got = _grads(plain, pixels), _grads(checkpointed, pixels)
    assert expected.keys() == got.keys() and len(got) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
