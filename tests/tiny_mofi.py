"""Tiny MOFI encoders exported with the trainer's own code, for the `mofi` scorer tests.

The smoke configs' towers (a 2-layer ViT at 32 px, a 1-layer byte-level text tower) are
randomly initialized from a seed, so two seeds give two different exports; nothing is
downloaded. This tests the plumbing (export -> scorer -> build), not quality.
"""
from __future__ import annotations

from pathlib import Path

import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def export_tiny_mofi(out: Path, seed: int = 0, config: str = "smoke_mofi", steps: int = 0) -> Path:
    """Export a randomly initialized DualEncoder of trainer config ``config`` to ``out``."""
    from trainer.configs import get_config
    from trainer.export import export_encoder
    from trainer.towers import DualEncoder

    cfg = get_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DualEncoder(cfg.image, cfg.text, cfg.embed_dim, cfg.data.mean, cfg.data.std).eval()
    return export_encoder(out, model, cfg, steps=steps)
