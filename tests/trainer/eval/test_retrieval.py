"""GPR1200-protocol retrieval metrics against a literal brute force and hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.eval.retrieval import chance_map, l2_normalize, relevant_ranks, retrieval_metrics


def brute_force(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The protocol read literally: full n x n matrix, stable argsort of -sim, walk the list.

    Returns per-query AP with self-match, AP leave-one-out and hit@1 leave-one-out (NaN for
    queries without another relevant image).
    """
    x = l2_normalize(embeddings)
    sims = x @ x.T
    n = len(labels)
    ap, ap_loo, hit = np.empty(n), np.full(n, np.nan), np.full(n, np.nan)
    for q in range(n):
        order = np.argsort(-sims[q], kind="stable")
        relevant = labels[order] == labels[q]
        ap[q] = _ap_of_list(relevant)
        keep = order != q
        if relevant[keep].any():
            ap_loo[q] = _ap_of_list(relevant[keep])
            hit[q] = float(relevant[keep][0])
    return ap, ap_loo, hit


def _ap_of_list(relevant: np.ndarray) -> float:
    total, found = 0.0, 0
    for i, is_relevant in enumerate(relevant, start=1):
        if is_relevant:
            found += 1
            total += found / i
    return total / found


def _pct(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return round(float(values.mean()) * 100, 2)


def _check_against_brute_force(x: np.ndarray, labels: np.ndarray, chunk_bytes: int) -> None:
    result = retrieval_metrics(x, labels, chunk_bytes=chunk_bytes)
    ap, ap_loo, hit = brute_force(x, labels)
    np.testing.assert_allclose(result.ap, ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.ap_leave_one_out, ap_loo, rtol=0, atol=1e-12)
    assert result.map_gpr1200 == _pct(ap)
    assert result.map_leave_one_out == _pct(ap_loo)
    assert result.recall_at_1_leave_one_out == _pct(hit)


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 150
    labels = rng.integers(0, 12, n)
    centers = rng.standard_normal((12, 8))
    x = centers[labels] * 0.7 + rng.standard_normal((n, 8))
    _check_against_brute_force(x, labels, chunk_bytes=4 * n * 7)


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_with_heavy_ties(seed: int) -> None:
    # Quantized embeddings on a tiny lattice: most similarities are exactly tied, and
    # duplicate vectors tie with the self-match itself, so only the index rule decides.
    rng = np.random.default_rng(100 + seed)
    n = 120
    labels = rng.integers(0, 6, n)
    x = rng.integers(-1, 2, (n, 3)).astype(np.float32)
    x[(x == 0).all(axis=1)] = [1, 0, 0]
    sims = l2_normalize(x) @ l2_normalize(x).T
    assert len(np.unique(np.round(sims, 6))) < 20  # the case really is tie-heavy
    _check_against_brute_force(x, labels, chunk_bytes=4 * n * 5)


def test_chunked_equals_unchunked() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, 16))
    labels = rng.integers(0, 20, 300)
    one_row = retrieval_metrics(x, labels, chunk_bytes=1)
    whole = retrieval_metrics(x, labels, chunk_bytes=1 << 30)
    assert np.array_equal(one_row.ap, whole.ap)
    assert np.array_equal(one_row.ap_leave_one_out, whole.ap_leave_one_out, equal_nan=True)
    assert one_row.as_dict() == whole.as_dict()


def test_hand_made_ranking_with_tie_broken_by_index() -> None:
    # Query 0 (class a) sees: itself (1.0), item 1 (b) and item 2 (a) tied at 0.6, item 3 (a) at 0.
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [0.0, 1.0]])
    labels = np.array(["a", "b", "a", "a"])
    result = retrieval_metrics(x, labels)
    # ranking for q0: 0 (hit), 1 (miss, lower index wins the tie), 2 (hit), 3 (hit)
    assert result.ap[0] == pytest.approx((1 / 1 + 2 / 3 + 3 / 4) / 3)
    # leave-one-out for q0: 1 (miss), 2 (hit), 3 (hit)
    assert result.ap_leave_one_out[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # swapping the tied items' indices turns the tie in the relevant item's favour
    swapped = retrieval_metrics(x[[0, 2, 1, 3]], labels[[0, 2, 1, 3]])
    assert swapped.ap[0] == pytest.approx((1 / 1 + 2 / 2 + 3 / 4) / 3)


def test_self_match_counts_and_singleton_class() -> None:
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array(["a", "a", "solo"])
    result = retrieval_metrics(x, labels)
    assert result.ap[2] == 1.0  # only relevant item is itself, ranked first
    assert np.isnan(result.ap_leave_one_out[2])  # nothing else to retrieve: excluded
    assert result.n_loo_queries == 2
    assert result.map_gpr1200 == 100.0
    assert result.map_leave_one_out == 100.0


def test_exact_duplicate_ranked_before_self_by_index() -> None:
    # Items 0 and 1 are identical; for query 1 the tie with its own self-match goes to index 0.
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = np.array([0, 1, 1, 0])
    result = retrieval_metrics(x, labels)
    # q1 ranking: 0 (miss), 1 (self, hit), then 2 and 3 tied at 0 -> 2 (hit), 3 (miss)
    assert result.ap[1] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # leave-one-out for q1: 0 (miss), 2 (hit) -> R@1 miss
    assert result.ap_leave_one_out[1] == pytest.approx(1 / 2)
    ranks = relevant_ranks(np.array([1.0, 1.0, 0.0, 0.0], dtype=np.float32), np.array([1, 2]))
    assert ranks.tolist() == [2, 3]


def test_per_domain_is_mean_over_domain_queries() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 8))
    labels = np.repeat(np.arange(12), 5)
    domains = np.where(labels < 6, "landmarks", "sketches")
    result = retrieval_metrics(x, labels, domains=domains)
    assert set(result.per_domain_map) == {"landmarks", "sketches"}
    assert result.per_domain_map["landmarks"] == round(result.ap[:30].mean() * 100, 2)
    assert result.per_domain_map["sketches"] == round(result.ap[30:].mean() * 100, 2)
    assert result.per_domain_map["landmarks"] != result.per_domain_map["sketches"]


def test_perfect_and_chance_separation() -> None:
    labels = np.repeat(np.arange(10), 4)
    perfect = np.eye(10)[labels] + 0.01 * np.random.default_rng(0).standard_normal((40, 10))
    assert retrieval_metrics(perfect, labels).map_gpr1200 == 100.0
    chance = chance_map(labels)
    # self-match lifts chance far above 1/10: (1 + ~3 * small) / 4
    assert 25.0 < chance < 50.0
    random = retrieval_metrics(np.random.default_rng(1).standard_normal((40, 64)), labels)
    assert abs(random.map_gpr1200 - chance) < 10.0


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="zeros"):
        retrieval_metrics(np.zeros((3, 4)), [0, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 1.0], [1.0, 0.0]]), [0, 1])
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(np.eye(3), [0, 1])
