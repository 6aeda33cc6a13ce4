import numpy as np
import pytest

from i2e_engine.config import FilterConfig
from i2e_engine.filters import cutoff_for_top_fraction, drop_rare_entities, filter_links


def _record(scores):
    links = [{"entity_id": f"e{i}", "image_entity_score": s} for i, s in enumerate(scores)]
    return {"sample_id": "s1", "source_shard": "shard", "row_in_shard": 0, "links": links}


def test_threshold_drops_low_scores_with_reason():
    kept, rejects = filter_links(_record([0.4, 0.1, 0.3]), FilterConfig(min_score=0.25))
    assert [l["entity_id"] for l in kept] == ["e0", "e2"]
    assert [(r["entity_id"], r["reason"], r["kind"]) for r in rejects] == [("e1", "below_threshold", "filtered")]


def test_top_k_keeps_the_best():
    kept, rejects = filter_links(_record([0.1, 0.5, 0.3, 0.2]), FilterConfig(top_k_per_image=2))
    assert [l["entity_id"] for l in kept] == ["e1", "e2"]
    assert sorted(r["entity_id"] for r in rejects) == ["e0", "e3"]
    assert {r["reason"] for r in rejects} == {"beyond_top_k"}


def test_quantile_cutoff_keeps_the_top_fraction():
    scores = np.arange(100) / 100
    cutoff = cutoff_for_top_fraction(scores, 0.3)
    assert (scores >= cutoff).sum() == 30
    assert cutoff_for_top_fraction(scores, 1.0) == 0.0
    with pytest.raises(ValueError):
        cutoff_for_top_fraction(scores, 0.0)


def test_quantile_cutoff_from_a_quantile_summary_matches_exact():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.3, 0.05, 20_000)
    summary = np.quantile(scores, np.linspace(0, 1, 1001))
    assert abs(cutoff_for_top_fraction(summary, 0.3) - cutoff_for_top_fraction(scores, 0.3)) < 2e-3


def test_filters_combine_in_order():
    config = FilterConfig(min_score=0.15, top_k_per_image=1)
    kept, rejects = filter_links(_record([0.1, 0.5, 0.3]), config, score_cutoff=0.2)
    assert [l["entity_id"] for l in kept] == ["e1"]
    assert {(r["entity_id"], r["reason"]) for r in rejects} == {
        ("e0", "below_threshold"), ("e2", "beyond_top_k")}


def test_rare_entities_are_dropped():
    record = _record([0.5, 0.4])
    kept, rejects = drop_rare_entities(record, record["links"], {"e0": 3, "e1": 1}, min_images=2)
    assert [l["entity_id"] for l in kept] == ["e0"]
    assert rejects[0]["entity_id"] == "e1" and rejects[0]["reason"] == "entity_too_rare"
