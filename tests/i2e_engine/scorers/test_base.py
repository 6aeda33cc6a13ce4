"""The shared scorer machinery that needs no model: entity texts, cosine, cache, registry."""
from __future__ import annotations

import os

import numpy as np
import pytest

from i2e_engine.config import ScorerConfig
from i2e_engine.scorers import (TextEmbeddingCache, create_scorer, entity_text, list_scorers,
                                resolve_device, score_pairs)
from i2e_engine.scorers.base import hub_offline, l2_normalize


def test_entity_text_modes():
    assert entity_text("Eiffel Tower", "Tower in Paris, France", "name_description") == \
        "Eiffel Tower, tower in Paris, France"
    assert entity_text("Eiffel Tower", "Tower in Paris, France", "name") == "Eiffel Tower"
    assert entity_text(" Cat ", None) == "Cat"
    assert entity_text("Apollo 11", "NASA mission", "name_description") == "Apollo 11, NASA mission"
    with pytest.raises(ValueError, match="mode"):
        entity_text("Cat", "mammal", "description")


def test_score_pairs_is_rowwise_cosine():
    rng = np.random.default_rng(0)
    a, b = l2_normalize(rng.normal(size=(5, 8))), l2_normalize(rng.normal(size=(5, 8)))
    scores = score_pairs(a, b)
    assert scores.dtype == np.float32 and scores.shape == (5,)
    np.testing.assert_allclose(scores, [a[i] @ b[i] for i in range(5)], rtol=1e-6)
    np.testing.assert_allclose(score_pairs(a[:1], b), b @ a[0], rtol=1e-6)  # broadcast
    np.testing.assert_allclose(score_pairs(a, a), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="widths"):
        score_pairs(a, b[:, :4])


def test_text_cache_is_a_bounded_lru():
    cache = TextEmbeddingCache(max_entries=2)
    cache.store(["a", "b"], np.eye(2, dtype=np.float32))
    assert set(cache.lookup(["a"])) == {"a"}          # "a" is now most recent
    cache.store(["c"], np.ones((1, 2), dtype=np.float32))
    assert set(cache.lookup(["a", "b", "c"])) == {"a", "c"}  # "b" was evicted
    assert len(cache) == 2 and cache.hits == 3 and cache.misses == 1
    row = cache.lookup(["a"])["a"]
    with pytest.raises(ValueError):
        row[0] = 5.0                                   # cached rows are read-only


def test_resolve_device():
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_registry_names_and_unknown_scorer():
    assert {"offline", "open_clip"} <= set(list_scorers())
    with pytest.raises(ValueError, match="unknown scorer 'nope'"):
        create_scorer(ScorerConfig(name="nope"))


def test_hub_offline_is_scoped(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = hub_constants.HF_HUB_OFFLINE
    with hub_offline():
        assert hub_constants.HF_HUB_OFFLINE is True
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert hub_constants.HF_HUB_OFFLINE == before
    assert "HF_HUB_OFFLINE" not in os.environ
