"""Encoder specs: exported encoders go through trainer.export.load_encoder, with a cache
identity tied to the exported files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import trainer.export
from trainer.eval.encoders import ImageEncoder, load_encoder


class FakeExported:
    has_text_tower = False

    def __init__(self, path: Path, device) -> None:
        self.name = f"fake-export:{Path(path).name}"

    def encode_images(self, images):  # pragma: no cover - only loading is tested here
        raise NotImplementedError

    def encode_texts(self, texts):  # pragma: no cover
        raise NotImplementedError


def test_exported_directory_and_prefix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(trainer.export, "load_encoder", lambda path, device: FakeExported(path, device))
    (tmp_path / "weights.pt").write_bytes(b"v1")
    by_dir = load_encoder(str(tmp_path))
    by_prefix = load_encoder(f"exported:{tmp_path}")
    assert isinstance(by_dir, ImageEncoder)
    assert by_dir.name == by_prefix.name == f"fake-export:{tmp_path.name}"
    assert by_dir.cache_key == by_prefix.cache_key
    (tmp_path / "weights.pt").write_bytes(b"v2 longer")
    os.utime(tmp_path / "weights.pt", ns=(1, 1))
    assert load_encoder(str(tmp_path)).cache_key != by_dir.cache_key


def test_unknown_spec() -> None:
    with pytest.raises(ValueError, match="unknown encoder spec"):
        load_encoder("clip-please")
