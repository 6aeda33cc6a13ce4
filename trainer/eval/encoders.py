"""Image encoders under evaluation: one protocol, three sources.

Specs accepted by :func:`load_encoder`:

- ``offline``: the pretrained ImageNet EfficientNet-Lite0 tower (the only real pretrained
  image weights installable here); the embedding is its 1280-d globally average-pooled
  pre-classifier feature, the standard "penultimate layer" representation.
- ``open_clip:<arch>:<checkpoint file>``: an open_clip model from a local checkpoint
  (no hub is reachable, so nothing is downloaded); has a text tower.
- ``exported:<path>`` or a plain directory: the trainer's exported encoder, loaded by
  ``trainer.export.load_encoder`` (imported lazily so evaluation works without it).

Every encoder returns float32, L2-normalized rows, and carries a ``cache_key`` that changes
when its weights change, so cached embeddings are never reused for different weights.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image


@runtime_checkable
class ImageEncoder(Protocol):
    """What the evaluation needs from an encoder.

    ``encode_images`` and ``encode_texts`` return float32 arrays with L2-normalized rows.
    ``encode_texts`` is only called when ``has_text_tower`` is true. An optional
    ``cache_key`` attribute identifies the weights for the embedding cache (``name`` is
    used when it is absent).
    """

    name: str
    has_text_tower: bool

    def encode_images(self, images: list[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


def files_fingerprint(paths: Sequence[Path]) -> str:
    """Short sha256 over each file's resolved path, size and mtime (weights identity)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p).resolve() for p in paths):
        stat = path.stat()
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _normalized(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return torch.nn.functional.normalize(features, dim=-1).cpu().numpy().astype(np.float32, copy=False)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class OfflineEncoder:
    """EfficientNet-Lite0 (ImageNet-1k) pooled 1280-d features.

    Weights and preprocessing come from the engine's offline scorer, so the evaluation sees
    exactly the tower the engine and the trainer start from.
    """

    name = "offline:efficientnet-lite0"
    has_text_tower = False

    def __init__(self, device: torch.device | None = None):
        from i2e_engine.scorers.offline import (efficientnet_lite0_file, efficientnet_lite0_preprocess,
                                                load_efficientnet_lite0)

        self.device = device or default_device()
        self.model = load_efficientnet_lite0(str(self.device)).eval()
        self.preprocess = efficientnet_lite0_preprocess()
        self.cache_key = f"{self.name}:{files_fingerprint([efficientnet_lite0_file()])}:pooled-v1"

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        batch = torch.stack([self.preprocess(img) for img in images]).to(self.device)
        return _normalized(self.model.extract_features(batch).mean(dim=(2, 3)))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no text tower")


class OpenClipEncoder:
    """An open_clip model loaded from a local checkpoint file."""

    has_text_tower = True

    def __init__(self, arch: str, checkpoint: str | Path, device: torch.device | None = None):
        import open_clip

        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"open_clip checkpoint not found: {checkpoint} (no download is attempted)")
        self.device = device or default_device()
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=str(checkpoint), device=self.device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.name = f"open_clip:{arch}:{checkpoint.name}"
        self.cache_key = f"open_clip:{arch}:{files_fingerprint([checkpoint])}"

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        batch = torch.stack([self.preprocess(img) for img in images]).to(self.device)
        return _normalized(self.model.encode_image(batch))

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return _normalized(self.model.encode_text(self.tokenizer(texts).to(self.device)))


def load_encoder(spec: str, device: torch.device | str | None = None) -> ImageEncoder:
    """Build the encoder named by ``spec`` (see the module docstring for the forms)."""
    device = torch.device(device) if device is not None else None
    if spec == "offline":
        return OfflineEncoder(device)
    if spec.startswith("open_clip:"):
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"expected open_clip:<arch>:<checkpoint file>, got {spec!r}")
        return OpenClipEncoder(parts[1], parts[2], device)
    path = Path(spec.removeprefix("exported:"))
    if spec.startswith("exported:") or path.is_dir():
        from trainer.export import load_encoder as load_exported

        encoder = load_exported(path, device=device or default_device())
        if not getattr(encoder, "cache_key", None):
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            encoder.cache_key = f"exported:{encoder.name}:{files_fingerprint(files)}"
        return encoder
    raise ValueError(f"unknown encoder spec {spec!r}: use offline, open_clip:<arch>:<file>, "
                     "exported:<path> or an exported encoder directory")
