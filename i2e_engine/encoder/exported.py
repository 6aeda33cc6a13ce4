"""An exported encoder loaded for inference: what the ``mofi`` scorer and the evaluation embed
images and texts with. The format is :mod:`i2e_engine.encoder.export_format`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from i2e_engine.encoder import export_format
from i2e_engine.encoder.config import ImageTowerConfig, TextTowerConfig
from i2e_engine.encoder.towers import ImageTower, TextTower

# Tower config fields that only shape training (memory, speed), never the weights or an embedding.
_TRAINING_ONLY = ("grad_checkpointing", "feature_cache")


class ExportedEncoder:
    """An exported encoder loaded for inference (eval mode, no grad)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64):
        self.path = Path(path)
        self.card = export_format.read_card(self.path)
        self.name: str = self.card["name"]
        self.embed_dim: int = self.card["embed_dim"]
        self.device = torch.device(device)
        self.batch_size = batch_size
        files, img = self.card["files"], self.card["image"]
        self.image_size = int(img["image_size"])
        tower_cfg = ImageTowerConfig(**{k: v for k, v in img["tower"].items() if k not in _TRAINING_ONLY})
        self.image_tower = ImageTower(tower_cfg, self.embed_dim, img["mean"], img["std"], load_weights=False)
        self.image_tower.load_state_dict(export_format.load_weights(self.path, files["image"]))
        self.image_tower.to(self.device).eval()
        self.text_tower = None
        if self.card.get("text"):
            text_cfg = TextTowerConfig(**{k: v for k, v in self.card["text"].items() if k not in _TRAINING_ONLY})
            self.text_tower = TextTower(text_cfg, self.embed_dim, load_weights=False)
            self.text_tower.load_state_dict(export_format.load_weights(self.path, files["text"]))
            self.text_tower.to(self.device).eval()

    @property
    def has_text_tower(self) -> bool:
        return self.text_tower is not None

    def preprocess(self, image) -> np.ndarray:
        return export_format.center_crop(image.convert("RGB"), self.image_size)

    @torch.no_grad()
    def encode_images(self, images: list) -> np.ndarray:
        """PIL images -> (n, embed_dim) float32, L2-normalized rows (shorter side resize + center crop)."""
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for i in range(0, len(images), self.batch_size):
            pixels = torch.from_numpy(np.stack([self.preprocess(im) for im in images[i:i + self.batch_size]]))
            emb = self.image_tower(pixels.to(self.device))
            out.append(F.normalize(emb.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, embed_dim) float32, L2-normalized. Raises when there is no text tower."""
        if self.text_tower is None:
            raise RuntimeError(f"encoder {self.name!r} at {self.path} has no text tower")
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for i in range(0, len(texts), self.batch_size):
            tokens = self.text_tower.tokenize(list(texts[i:i + self.batch_size]))
            emb = self.text_tower({k: v.to(self.device) for k, v in tokens.items()})
            out.append(F.normalize(emb.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def load_encoder(path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64) -> ExportedEncoder:
    return ExportedEncoder(path, device=device, batch_size=batch_size)
