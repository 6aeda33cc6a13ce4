"""The `mofi` scorer: an encoder exported by trainer/ scores image-entity pairs.

The encoders are the trainer's tiny smoke configs, randomly initialized and exported with
trainer.export (tests/tiny_mofi.py); the images are real photos shipped with scikit-image.
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import skimage.data
from PIL import Image

from i2e_engine.build import scorer_name
from i2e_engine.config import BuildConfig, ScorerConfig
from i2e_engine.encoder.exported import load_encoder
from i2e_engine.scorers import ScorerWeightsMissing, create_scorer, list_scorers
from i2e_engine.scorers.mofi import NoTextTower, entity_fields_of_template, resolve_mofi_export
from tests.tiny_mofi import DEVICES, export_tiny_mofi

TEXTS = ["Cat, small domesticated carnivorous mammal", "Coffee, brewed beverage", "Rocket", "Astronaut", "Cat"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_tiny_mofi(tmp_path_factory.mktemp("mofi") / "encoder", seed=0)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skimage.data, n)()).convert("RGB")
            for n in ("chelsea", "coffee", "rocket", "astronaut", "camera")]


def _config(path, device: str = "cpu", **kwargs) -> ScorerConfig:
    return ScorerConfig(name="mofi", pretrained=str(path), device=device, **kwargs)


def test_mofi_is_a_builtin_scorer():
    assert "mofi" in list_scorers()


@pytest.mark.parametrize("device", DEVICES)
def test_embeddings_are_the_exported_encoders(export, photos, device):
    scorer = create_scorer(_config(export, device, batch_size=2))   # 5 photos in chunks of 2
    reference = load_encoder(export, device=device)
    assert scorer.device == device and scorer.dim == reference.embed_dim == 32
    images = scorer.embed_images(photos)
    texts = scorer.embed_texts(TEXTS)
    for got, expected in ((images, reference.encode_images(photos)), (texts, reference.encode_texts(TEXTS))):
        assert got.dtype == np.float32 and got.shape == (5, 32)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len({row.tobytes() for row in images}) == 5      # the photos are told apart
    np.testing.assert_allclose(scorer.score_pairs(images, texts), np.sum(images * texts, axis=1), rtol=1e-5)


def test_name_is_the_exports_content_identity(export, tmp_path):
    scorer = create_scorer(_config(export))
    assert scorer.name.startswith("mofi:smoke_mofi@step0:image_tower.pt:sha256-")
    assert "+text_tower.pt:sha256-" in scorer.name and "+model_card.json:sha256-" in scorer.name
    # the build's provenance and fingerprint use the same string, decided without loading the model
    assert scorer_name(BuildConfig(scorer=_config(export))) == scorer.name == resolve_mofi_export(str(export)).identity

    copy = shutil.copytree(export, tmp_path / "copy")          # same content elsewhere: same weights
    card = json.loads((copy / "model_card.json").read_text())
    card.update(created="2000-01-01T00:00:00+00:00", metrics={"loss": 0.5})   # bookkeeping only
    (copy / "model_card.json").write_text(json.dumps(card))
    assert resolve_mofi_export(str(copy)).identity == scorer.name

    card["image"]["mean"] = [0.0, 0.0, 0.0]                     # same weights, other preprocessing
    (copy / "model_card.json").write_text(json.dumps(card))
    assert resolve_mofi_export(str(copy)).identity != scorer.name

    other = export_tiny_mofi(tmp_path / "other", seed=1)        # same name and step, other weights
    other_name = resolve_mofi_export(str(other)).identity
    assert other_name.startswith("mofi:smoke_mofi@step0:") and other_name != scorer.name


def test_an_export_without_text_tower_is_refused(tmp_path):
    supervised = export_tiny_mofi(tmp_path / "supervised", config="smoke_supervised")
    assert not load_encoder(supervised).has_text_tower
    message = r"has no text tower.*image-entity scoring needs the text tower"
    with pytest.raises(NoTextTower, match=message):
        create_scorer(_config(supervised))
    with pytest.raises(ValueError, match=message):             # the build's check, before any work
        scorer_name(BuildConfig(scorer=_config(supervised)))


def test_missing_or_foreign_exports_are_clear_errors(export, tmp_path):
    with pytest.raises(ScorerWeightsMissing, match="does not exist"):
        create_scorer(_config(tmp_path / "nowhere"))
    with pytest.raises(ScorerWeightsMissing, match="needs an exported encoder directory"):
        create_scorer(ScorerConfig(name="mofi", device="cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScorerWeightsMissing, match="not an exported MOFI encoder"):
        create_scorer(_config(tmp_path / "empty"))
    broken = shutil.copytree(export, tmp_path / "broken")
    (broken / "text_tower.pt").unlink()
    with pytest.raises(ScorerWeightsMissing, match=r"weight files \['text_tower.pt'\] are missing"):
        create_scorer(_config(broken))
    foreign = shutil.copytree(export, tmp_path / "foreign")
    (foreign / "model_card.json").write_text(json.dumps({"format": "something-else", "format_version": 7}))
    with pytest.raises(ValueError, match="expected 'mofi-encoder' v1"):
        create_scorer(_config(foreign))


def test_entity_texts_unlike_the_training_texts_warn(export, caplog):
    """smoke_mofi trained on "{name}, {description}. {alt_text}": the build's "name_description"
    entity texts match its entity fields (the alt-text is the image's, not the entity's);
    scoring names alone works but is flagged."""
    with caplog.at_level(logging.WARNING, logger="i2e_engine.scorers.mofi"):
        create_scorer(_config(export, entity_text="name_description"))
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="i2e_engine.scorers.mofi"):
        create_scorer(_config(export, entity_text="name"))
    assert "trained on entity texts '{name}, {description}. {alt_text}'" in caplog.text


@pytest.mark.parametrize("template, fields", [("{name}", {"name"}), ("{name}, {description}", {"name", "description"}),
                                              ("a photo of {name}. {alt_text}", {"name"}), ("{alt_text}", set())])
def test_entity_fields_of_a_training_template(template, fields):
    assert entity_fields_of_template(template) == fields


def test_an_export_on_object_storage_is_fetched_into_the_cache(s3, export, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("I2E_CACHE", str(tmp_path / "cache"))
    for path in export.iterdir():
        s3.put(str(path), f"inputs/encoder/{path.name}")
    local = resolve_mofi_export(str(export))
    remote = resolve_mofi_export("s3://inputs/encoder")
    assert remote.identity == local.identity
    assert remote.local_dir.parent == tmp_path / "cache" / "mofi"
    stamp = (remote.local_dir / "image_tower.pt").stat().st_mtime_ns
    assert resolve_mofi_export("s3://inputs/encoder").local_dir == remote.local_dir     # fetched once
    assert (remote.local_dir / "image_tower.pt").stat().st_mtime_ns == stamp
    scorer = create_scorer(_config("s3://inputs/encoder"))
    np.testing.assert_allclose(scorer.embed_images(photos), load_encoder(export).encode_images(photos), atol=1e-6)

    s3.put(str(export_tiny_mofi(tmp_path / "new", seed=2) / "image_tower.pt"), "inputs/encoder/image_tower.pt")
    replaced = resolve_mofi_export("s3://inputs/encoder")                             # new weights: new copy
    assert replaced.local_dir != remote.local_dir and replaced.identity != remote.identity
    with pytest.raises(ScorerWeightsMissing, match="does not exist"):
        resolve_mofi_export("s3://inputs/no-encoder")


def test_a_remote_card_cannot_name_files_outside_the_export(s3, export, tmp_path, monkeypatch):
    """A card on object storage names the files the cache fetches: a path outside the export
    (here, beside the cache) is refused before anything is fetched or written."""
    monkeypatch.setenv("I2E_CACHE", str(tmp_path / "cache"))
    for path in export.iterdir():
        s3.put(str(path), f"inputs/evil/{path.name}")
    s3.put(str(export / "image_tower.pt"), "inputs/image_tower.pt")   # what "../image_tower.pt" would reach
    card = json.loads((export / "model_card.json").read_text())
    card["files"]["image"] = "../image_tower.pt"
    s3.pipe("inputs/evil/model_card.json", json.dumps(card).encode())
    with pytest.raises(ValueError, match="plain names inside the export's folder"):
        resolve_mofi_export("s3://inputs/evil")
    assert not (tmp_path / "cache").exists()
