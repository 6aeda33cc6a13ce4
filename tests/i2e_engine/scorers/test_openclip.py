"""open_clip scorer mechanics with a tiny random-initialized architecture (no CLIP weights here)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import skimage.data
import torch
from PIL import Image

from i2e_engine.config import ScorerConfig
from i2e_engine.scorers import ScorerWeightsMissing, create_scorer
from i2e_engine.scorers.openclip import OpenClipScorer, resolve_openclip_weights

TINY = "i2e-test-tiny-vit"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TEXTS = ["Cat, small domesticated carnivorous mammal", "Coffee, brewed beverage", "Rocket"]


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory) -> str:
    config_file = tmp_path_factory.mktemp("open_clip_configs") / f"{TINY}.json"
    config_file.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(config_file)
    return TINY


@pytest.fixture(scope="module")
def random_scorer(tiny_arch) -> OpenClipScorer:
    return OpenClipScorer(tiny_arch, pretrained=None, allow_random_init=True, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skimage.data, n)()).convert("RGB")
            for n in ("chelsea", "coffee", "rocket")]


@pytest.fixture(scope="module")
def checkpoint(random_scorer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(random_scorer.model.state_dict(), path)
    return path


def test_random_init_needs_the_flag(tiny_arch):
    with pytest.raises(ScorerWeightsMissing, match="allow_random_init"):
        OpenClipScorer(tiny_arch, pretrained=None, device="cpu")


def test_random_init_is_seeded_and_named(random_scorer, tiny_arch, photos):
    again = create_scorer(ScorerConfig(name="open_clip", arch=tiny_arch, pretrained=None,
                                       device="cpu", batch_size=2), allow_random_init=True)
    assert "random-init" in random_scorer.name and random_scorer.dim == 32
    np.testing.assert_array_equal(random_scorer.embed_images(photos), again.embed_images(photos))


def test_checkpoint_file_round_trip(random_scorer, tiny_arch, checkpoint, photos):
    loaded = OpenClipScorer(tiny_arch, pretrained=str(checkpoint), device="cpu", batch_size=2)
    assert loaded.name.startswith(f"open_clip:{tiny_arch}:file:tiny.pt:sha256-")
    np.testing.assert_allclose(loaded.embed_images(photos), random_scorer.embed_images(photos), atol=1e-6)
    np.testing.assert_allclose(loaded.embed_texts(TEXTS), random_scorer.embed_texts(TEXTS), atol=1e-6)


def test_local_dir_model(tiny_arch, checkpoint, random_scorer, photos, tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    shutil.copy(checkpoint, tmp_path / "open_clip_pytorch_model.bin")
    loaded = OpenClipScorer(f"local-dir:{tmp_path}", device="cpu")
    assert "open_clip_pytorch_model.bin:" in loaded.name
    np.testing.assert_allclose(loaded.embed_images(photos), random_scorer.embed_images(photos), atol=1e-6)


def test_embeddings_batched_normalized_and_scored(random_scorer, photos):
    batched = random_scorer.embed_images(photos)              # 3 images at batch_size 2
    single = np.concatenate([random_scorer.embed_images([p]) for p in photos])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    texts = random_scorer.embed_texts(TEXTS)
    for emb in (batched, texts):
        assert emb.dtype == np.float32 and emb.shape == (3, 32)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(random_scorer.score_pairs(batched, texts),
                               np.sum(batched * texts, axis=1), rtol=1e-5)


def test_missing_tag_fails_fast_offline(tmp_path):
    start = time.monotonic()
    with pytest.raises(ScorerWeightsMissing) as raised:
        OpenClipScorer("ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu",
                       cache_dir=str(tmp_path / "empty-cache"))
    assert time.monotonic() - start < 30      # a hang guard, not a performance test
    message = str(raised.value)
    assert "ViT-B-32" in message and "laion2b_s34b_b79k" in message and "checkpoint file" in message


def test_missing_file_and_unknown_tag(tiny_arch, tmp_path):
    with pytest.raises(ScorerWeightsMissing, match="does not exist"):
        OpenClipScorer(tiny_arch, pretrained=str(tmp_path / "nope.pt"), device="cpu")
    with pytest.raises(ScorerWeightsMissing, match="known tag"):
        OpenClipScorer("ViT-B-32", pretrained="no-such-tag", device="cpu")
    with pytest.raises(ValueError, match="unknown open_clip arch"):
        OpenClipScorer("No-Such-Arch", pretrained="x", device="cpu")
    with pytest.raises(ScorerWeightsMissing, match="hf-hub:laion/not-cached"):
        OpenClipScorer("hf-hub:laion/not-cached", device="cpu", cache_dir=str(tmp_path))


def test_cached_tags_resolve_to_local_files_with_the_tag_settings(tmp_path):
    """A tag found in the Hugging Face cache layout or open_clip's URL cache is used offline."""
    snapshot = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    hub = resolve_openclip_weights("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert hub.checkpoint == str(snapshot / "open_clip_model.safetensors")
    assert hub.identity == "open_clip:ViT-B-32:laion2b_s34b_b79k"

    (tmp_path / "ViT-B-32.pt").write_bytes(b"")       # where open_clip caches the OpenAI URL
    openai = resolve_openclip_weights("ViT-B-32", "openai", cache_dir=str(tmp_path))
    assert openai.checkpoint == str(tmp_path / "ViT-B-32.pt")
    assert openai.tag_cfg["quick_gelu"] is True and openai.tag_cfg["resize_mode"] == "shortest"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_autocast_matches_cpu(tiny_arch, checkpoint, random_scorer, photos):
    on_gpu = OpenClipScorer(tiny_arch, pretrained=str(checkpoint), device="cuda")
    np.testing.assert_allclose(on_gpu.embed_images(photos), random_scorer.embed_images(photos), atol=2e-2)
    np.testing.assert_allclose(on_gpu.embed_texts(TEXTS), random_scorer.embed_texts(TEXTS), atol=2e-2)
