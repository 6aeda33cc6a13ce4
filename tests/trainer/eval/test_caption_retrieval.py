"""Caption retrieval recall against a brute force that sorts every row."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.eval.caption_retrieval import caption_retrieval_metrics
from trainer.eval.retrieval import l2_normalize


def brute_force(images: np.ndarray, texts: np.ndarray, owner: np.ndarray, k: int) -> tuple[float, float]:
    images, texts = l2_normalize(images), l2_normalize(texts)
    t2i = [owner[c] in np.argsort(-(texts[c] @ images.T), kind="stable")[:k] for c in range(len(texts))]
    i2t = [np.isin(np.argsort(-(images[i] @ texts.T), kind="stable")[:k], np.flatnonzero(owner == i)).any()
           for i in np.unique(owner)]
    return round(float(np.mean(t2i)) * 100, 2), round(float(np.mean(i2t)) * 100, 2)


@pytest.mark.parametrize("quantized", [False, True])
def test_matches_brute_force(quantized: bool) -> None:
    rng = np.random.default_rng(int(quantized))
    images = rng.standard_normal((30, 6))
    owner = np.repeat(np.arange(25), 3)  # images 25..29 have no caption: distractors only
    texts = images[owner] + rng.standard_normal((75, 6)) * 1.5
    if quantized:
        images, texts = np.sign(images) + 0.01, np.sign(texts) + 0.01
    metrics = caption_retrieval_metrics(images, texts, owner, chunk_bytes=64)
    for k in (1, 5, 10):
        assert (metrics[f"t2i_r{k}"], metrics[f"i2t_r{k}"]) == brute_force(images, texts, owner, k)
    assert metrics["n_image_queries"] == 25 and metrics["n_images"] == 30
    assert 0 < metrics["t2i_r1"] < metrics["t2i_r10"] <= 100


def test_perfect_and_wrong_pairings() -> None:
    images = np.eye(4)
    texts = np.repeat(np.eye(4), 2, axis=0)
    owner = np.repeat(np.arange(4), 2)
    assert caption_retrieval_metrics(images, texts, owner, ks=(1,))["t2i_r1"] == 100.0
    wrong = caption_retrieval_metrics(images, texts, (owner + 1) % 4, ks=(1, 5))
    assert wrong["t2i_r1"] == 0.0 and wrong["i2t_r1"] == 0.0 and wrong["t2i_r5"] == 100.0


def test_rejects_dangling_caption() -> None:
    with pytest.raises(ValueError, match="not in image_embeddings"):
        caption_retrieval_metrics(np.eye(2), np.eye(2), [0, 2])
