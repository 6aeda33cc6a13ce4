"""``DualEncoder``: the image tower, the optional text tower and the logit scale that train.

The towers themselves (timm, EfficientNet-Lite0 and open_clip image towers; bytes, MiniLM
and open_clip text towers; their projections) are the engine's
(:mod:`i2e_engine.encoder.towers`), so that an exported encoder is rebuilt by the engine
without the trainer. When the image and text towers name the same open_clip model, one model
instance provides both.
"""
from __future__ import annotations

import json
import math

import torch
import torch.nn as nn

from i2e_engine.encoder.towers import ImageTower, TextTower, build_open_clip
from trainer.configs import ImageTowerConfig, TextTowerConfig


def open_clip_key(cfg: ImageTowerConfig | TextTowerConfig) -> tuple | None:
    """What identifies the open_clip model a tower is cut from (None: not an open_clip tower)."""
    if cfg.kind != "open_clip":
        return None
    return cfg.arch, cfg.pretrained_file, json.dumps(cfg.kwargs, sort_keys=True)


class DualEncoder(nn.Module):
    """The replicated (DDP) part of the model: image tower, optional text tower, logit scale."""

    def __init__(self, image_cfg: ImageTowerConfig, text_cfg: TextTowerConfig, embed_dim: int,
                 mean, std, init_logit_scale: float = math.log(1 / 0.07), load_weights: bool = True):
        super().__init__()
        clip = None  # one open_clip model for both towers when they name the same one
        if open_clip_key(image_cfg) is not None and open_clip_key(image_cfg) == open_clip_key(text_cfg):
            clip = build_open_clip(image_cfg, load_weights)
        self.image = ImageTower(image_cfg, embed_dim, mean, std, load_weights, clip)
        self.text = TextTower(text_cfg, embed_dim, load_weights, clip) if text_cfg.kind != "none" else None
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale))) if self.text is not None else None

    def forward(self, pixels: torch.Tensor, tokens: dict | None = None):
        image = self.image(pixels)
        text = self.text(tokens) if (self.text is not None and tokens is not None) else None
        return image, text, self.logit_scale
