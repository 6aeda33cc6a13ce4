"""The step checkpoint's own format: its version and how its files are read safely.

A leaf that the training loop (``trainer.loop``, which writes checkpoints) and the export
(``trainer.export``, which turns one into an exported encoder) both import, so neither
imports the other's module for it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

CKPT_FORMAT, CKPT_VERSION = "mofi-train-checkpoint", 2


class CheckpointError(RuntimeError):
    """A checkpoint that is corrupted or does not match this run."""


def safe_load(path: Path, map_location: str | torch.device = "cpu"):
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing (corrupted or partial checkpoint)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"checkpoint file {path} is corrupted or not a weights-only state dict: "
                              f"{type(error).__name__}: {error}") from error


def read_meta(ckpt: Path) -> dict:
    path = Path(ckpt) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise CheckpointError(f"{ckpt} has no meta.json: not a trainer checkpoint, or corrupted") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is corrupted: {error}") from error
    if meta.get("format") != CKPT_FORMAT or meta.get("format_version") != CKPT_VERSION:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} v{meta.get('format_version')}, "
                              f"expected {CKPT_FORMAT!r} v{CKPT_VERSION}")
    return meta
