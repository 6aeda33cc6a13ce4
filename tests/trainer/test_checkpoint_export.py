"""Export format round trip, config overrides, and clear errors for bad checkpoints — no Ray."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.configs import apply_overrides, fingerprint, format_config, get_config, to_dict
from trainer.export import export_encoder, export_from_checkpoint, load_encoder
from trainer.checkpoint import CKPT_FORMAT, CKPT_VERSION, CheckpointError, read_meta, safe_load
from trainer.loop import check_meta
from trainer.towers import DualEncoder


def _model(cfg):
    return DualEncoder(cfg.image, cfg.text, cfg.embed_dim, cfg.data.mean, cfg.data.std)


def test_export_roundtrip(tmp_path):
    cfg = get_config("smoke_mofi")
    model = _model(cfg).eval()
    path = export_encoder(tmp_path / "enc", model, cfg, data_manifest={"tables": "x"}, steps=3, metrics={"loss": 1.0})
    card = json.loads((path / "model_card.json").read_text())
    assert card["steps"] == 3 and card["config"]["name"] == "smoke_mofi" and card["data_manifest"]["tables"] == "x"
    enc = load_encoder(path)
    images = [Image.new("RGB", (40 + i, 50), (i * 40, 100, 200)) for i in range(5)]
    emb = enc.encode_images(images)
    assert emb.dtype == np.float32 and emb.shape == (5, cfg.embed_dim)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.image(torch.from_numpy(np.stack(
            [enc.preprocess(im) for im in images]))), dim=1).numpy()
    assert np.allclose(emb, direct, atol=1e-5)
    assert enc.has_text_tower and enc.encode_texts(["Leopard", "Watch"]).shape == (2, cfg.embed_dim)


def test_export_without_text_tower_raises(tmp_path):
    cfg = get_config("smoke_supervised")
    enc = load_encoder(export_encoder(tmp_path / "enc", _model(cfg), cfg))
    assert not enc.has_text_tower
    with pytest.raises(RuntimeError, match="no text tower"):
        enc.encode_texts(["x"])


def test_config_overrides_and_fingerprint():
    cfg = apply_overrides(get_config("smoke_mofi"), ["task.margin=0.3", "data.text_template={name}, {description}",
                                                     "total_steps=99"])
    assert cfg.task.margin == 0.3 and cfg.data.text_template == "{name}, {description}"
    assert fingerprint(cfg) != fingerprint(get_config("smoke_mofi"))
    assert fingerprint(apply_overrides(get_config("smoke_mofi"), ["total_steps=99"])) == \
        fingerprint(get_config("smoke_mofi"))
    assert '"recipe": "mofi"' in format_config(cfg)
    with pytest.raises(ValueError, match="unknown config field"):
        apply_overrides(cfg, ["task.nope=1"])


def _write_ckpt(d, cfg):
    d.mkdir()
    torch.save(_model(cfg).state_dict(), d / "model.pt")
    meta = {"format": CKPT_FORMAT, "format_version": CKPT_VERSION, "step": 4, "world_size": 2,
            "config": to_dict(cfg), "config_fingerprint": fingerprint(cfg), "num_classes": 6,
            "classes_fingerprint": "abc", "history": []}
    (d / "meta.json").write_text(json.dumps(meta))
    return meta


def test_corrupted_and_mismatched_checkpoint_errors(tmp_path):
    cfg = get_config("smoke_mofi")
    meta = _write_ckpt(tmp_path / "ckpt", cfg)
    check_meta(meta, cfg, "abc", 2, "ok")  # matches
    with pytest.raises(CheckpointError, match="per rank of 2 ranks, this run has 4"):
        check_meta(meta, cfg, "abc", 4, "ckpt")
    data = {"num_samples": 41, "shards": 4, "shard_format": "webdataset", "seed": 0}
    meta["data_manifest"] = data
    check_meta(meta, cfg, "abc", 2, "ok", data)
    with pytest.raises(CheckpointError, match="packed data differs"):
        check_meta(meta, cfg, "abc", 2, "ckpt", {**data, "num_samples": 40})
    with pytest.raises(CheckpointError, match="entity classes differ"):
        check_meta(meta, cfg, "zzz", 2, "ckpt")
    with pytest.raises(CheckpointError, match=r"config differs in \['task.margin'\]"):
        check_meta(meta, apply_overrides(get_config("smoke_mofi"), ["task.margin=0.5"]), "abc", 2, "ckpt")
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupted"):
        safe_load(tmp_path / "ckpt" / "model.pt")
    with pytest.raises(CheckpointError, match="missing"):
        safe_load(tmp_path / "ckpt" / "optim.pt")
    (tmp_path / "ckpt" / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        read_meta(tmp_path / "ckpt")


def test_export_from_checkpoint(tmp_path):
    cfg = get_config("smoke_supervised")
    _write_ckpt(tmp_path / "ckpt", cfg)
    enc = load_encoder(export_from_checkpoint(tmp_path / "ckpt", tmp_path / "enc"))
    assert enc.encode_images([Image.new("RGB", (64, 64))]).shape == (1, cfg.embed_dim)
