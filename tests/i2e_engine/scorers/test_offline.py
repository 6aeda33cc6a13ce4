"""The offline bridge scorer on real photos with its real pretrained weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from i2e_engine.config import ScorerConfig
from i2e_engine.scorers import create_scorer, entity_text
from i2e_engine.scorers.offline import (OfflineBridgeScorer, efficientnet_lite0_preprocess,
                                        load_efficientnet_lite0, minilm_folder)

CAT = entity_text("Cat", "Small domesticated carnivorous mammal")
COFFEE = entity_text("Coffee", "Brewed beverage")
ROCKET = entity_text("Rocket", "Vehicle propelled by a rocket engine")


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def scorer() -> OfflineBridgeScorer:
    built = create_scorer(ScorerConfig(name="offline", device="cpu", batch_size=2))
    assert isinstance(built, OfflineBridgeScorer)
    return built


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: _photo(name) for name in ("chelsea", "coffee", "rocket")}


def test_pretrained_classifier_sees_the_photos(photos):
    """Guards the preprocessing: wrong normalization or size shows up as wrong classes."""
    model = load_efficientnet_lite0("cpu")
    preprocess = efficientnet_lite0_preprocess()
    with torch.inference_mode():
        top = model(torch.stack([preprocess(photos[n]) for n in ("chelsea", "coffee")])).argmax(-1)
    assert top[0].item() in range(281, 286)   # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top[1].item() in (967, 968)        # espresso, cup


def test_photos_prefer_their_own_entity(scorer, photos):
    images = scorer.embed_images([photos["chelsea"], photos["coffee"], photos["rocket"]])
    texts = scorer.embed_texts([CAT, COFFEE, ROCKET])
    similarity = images @ texts.T
    assert similarity.argmax(axis=1).tolist() == [0, 1, 2]
    assert similarity[0, 0] > similarity[0, 1] + 0.1     # cat photo: cat >> coffee
    assert similarity[1, 1] > similarity[1, 0] + 0.1     # coffee photo: coffee >> cat
    np.testing.assert_allclose(scorer.score_pairs(images, texts), np.diag(similarity), rtol=1e-5)


def test_embeddings_are_normalized_float32(scorer, photos):
    images = scorer.embed_images(list(photos.values()))
    texts = scorer.embed_texts([CAT, COFFEE])
    for emb, rows in ((images, 3), (texts, 2)):
        assert emb.dtype == np.float32 and emb.shape == (rows, scorer.dim)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert scorer.embed_images([]).shape == (0, scorer.dim)
    assert scorer.embed_texts([]).shape == (0, scorer.dim)


def test_batch_equals_one_by_one(scorer, photos):
    order = [photos["rocket"], photos["chelsea"], photos["coffee"]]   # 3 images, batch_size 2
    batched = scorer.embed_images(order)
    single = np.concatenate([scorer.embed_images([image]) for image in order])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_text_cache_hits_and_matches_fresh_encoding(scorer):
    texts = ["Tower Bridge, bridge in London", "Honey bee, insect", "Tower Bridge, bridge in London"]
    hits_before = scorer.text_cache.hits
    first = scorer.embed_texts(texts)
    np.testing.assert_array_equal(first[0], first[2])
    second = scorer.embed_texts(texts)
    assert scorer.text_cache.hits - hits_before == 3
    np.testing.assert_array_equal(first, second)
    fresh = scorer.text_model.encode(texts[:2], normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(first[:2], fresh, atol=1e-5)


def test_name_carries_weights_identity(scorer):
    assert "efficientnet-lite0-57934424" in scorer.name and "MiniLM" in scorer.name
    assert minilm_folder().joinpath("modules.json").is_file()


def test_text_to_image_recall_on_coco_mini(scorer, coco_mini: Path):
    """R@1 of captions -> 20 captioned COCO photos, far above chance (0.05)."""
    captions = json.loads((coco_mini / "annotations" / "captions_val2017.json").read_text())
    by_image: dict[int, list[str]] = {}
    for row in captions["annotations"]:
        by_image.setdefault(row["image_id"], []).append(row["caption"])
    images = sorted((im for im in captions["images"] if im["id"] in by_image),
                    key=lambda im: im["file_name"])[:20]
    image_emb = scorer.embed_images(
        [Image.open(coco_mini / "val2017" / im["file_name"]).convert("RGB") for im in images])
    texts, truth = [], []
    for index, im in enumerate(images):
        texts += by_image[im["id"]]
        truth += [index] * len(by_image[im["id"]])
    ranking = scorer.embed_texts(texts) @ image_emb.T
    recall_at_1 = float(np.mean(ranking.argmax(axis=1) == np.array(truth)))
    assert recall_at_1 >= 0.40, recall_at_1   # measured 0.62


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(scorer, photos):
    on_gpu = OfflineBridgeScorer(device="cuda")
    images = list(photos.values())
    np.testing.assert_allclose(on_gpu.embed_images(images), scorer.embed_images(images), atol=2e-2)
    np.testing.assert_allclose(on_gpu.embed_texts([CAT, COFFEE]), scorer.embed_texts([CAT, COFFEE]),
                               atol=1e-3)
