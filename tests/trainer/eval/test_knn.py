"""kNN accuracy: exact top-k under the tie rule, vote rules, and accuracy that can fail."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.eval.knn import knn_classify, top_k_neighbours
from trainer.eval.retrieval import l2_normalize


def _clusters(seed: int, n_classes: int, per_class: int, dim: int, spread: float):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    return centers[labels] + spread * rng.standard_normal((len(labels), dim)), labels


def test_separable_features_classify_well() -> None:
    x_train, y_train = _clusters(0, 6, 40, 32, spread=0.3)
    x_test, y_test = _clusters(0, 6, 40, 32, spread=0.3)  # same centers (same seed), new noise below
    x_test = x_test + 0.3 * np.random.default_rng(9).standard_normal(x_test.shape)
    for weighting in ("uniform", "similarity"):
        assert knn_classify(x_train, y_train, x_test, y_test, k=10, weighting=weighting).top1 > 95.0


def test_random_features_are_near_chance() -> None:
    rng = np.random.default_rng(1)
    x_train, x_test = rng.standard_normal((400, 32)), rng.standard_normal((400, 32))
    y_train, y_test = rng.integers(0, 5, 400), rng.integers(0, 5, 400)
    result = knn_classify(x_train, y_train, x_test, y_test, k=10)
    assert 10.0 < result.top1 < 32.0  # chance is 20%


@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_top_k_matches_stable_sort_with_ties(k: int) -> None:
    rng = np.random.default_rng(k)
    database = l2_normalize(rng.integers(-1, 2, (40, 3)).astype(np.float32) + np.array([0, 0, 0.001]))
    queries = l2_normalize(rng.integers(-1, 2, (15, 3)).astype(np.float32) + np.array([0, 0, 0.001]))
    index, values = top_k_neighbours(queries, database, k)
    sims = queries @ database.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    assert np.array_equal(index, expected)
    assert np.array_equal(values, np.take_along_axis(sims, expected, axis=1))


def test_vote_tie_goes_to_nearest_neighbour_class() -> None:
    train = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = np.array(["far", "near", "other"])
    query = np.array([[0.85, 0.5]])  # closer to "near" (index 1) than to "far" (index 0)
    result = knn_classify(train, labels, query, ["near"], k=2, weighting="uniform")
    assert result.predictions.tolist() == ["near"]
    # mirrored so the nearest neighbour now has the higher index and the other class the lower
    result = knn_classify(train[[1, 0, 2]], labels[[1, 0, 2]], np.array([[0.95, 0.05]]), ["far"],
                          k=2, weighting="uniform")
    assert result.predictions.tolist() == ["far"]


def test_similarity_weighting_lets_a_close_neighbour_outvote_far_ones() -> None:
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = np.array(["a", "b", "b"])
    query = np.array([[1.0, 0.05]])
    assert knn_classify(train, labels, query, ["a"], k=3, weighting="uniform").predictions[0] == "b"
    assert knn_classify(train, labels, query, ["a"], k=3, weighting="similarity").predictions[0] == "a"


def test_chunking_does_not_change_predictions() -> None:
    x_train, y_train = _clusters(2, 4, 30, 8, spread=1.0)
    x_test, y_test = _clusters(3, 4, 30, 8, spread=1.0)
    small = knn_classify(x_train, y_train, x_test, y_test, k=5, chunk_bytes=1)
    big = knn_classify(x_train, y_train, x_test, y_test, k=5)
    assert np.array_equal(small.predictions, big.predictions)


def test_rejects_bad_arguments() -> None:
    x = np.eye(3)
    with pytest.raises(ValueError, match="weighting"):
        knn_classify(x, [0, 1, 2], x, [0, 1, 2], weighting="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must"):
        knn_classify(x, [0, 1, 2], x, [0, 1, 2], k=0)
