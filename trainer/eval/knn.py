"""k-nearest-neighbour classification accuracy on frozen embeddings (cosine similarity).

Neighbours are the exact top-k under the retrieval tie rule ``(-similarity, index)``, so a
result does not depend on how a partial sort happens to break ties. Votes are either plain
counts (``uniform``) or ``exp(sim / temperature)`` (``similarity``; temperature 0.07, the
weighting DINO's kNN evaluation uses, which lets a few very close neighbours outvote many
distant ones). Tie rule for the vote: among classes with the highest total vote, the class
of the best-ranked neighbour wins.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from trainer.eval.results import MetricResult
from trainer.eval.retrieval import DEFAULT_CHUNK_BYTES, l2_normalize

Weighting = Literal["uniform", "similarity"]


@dataclass(frozen=True)
class KnnResult(MetricResult):
    """``top1`` is accuracy x100 to 2 decimals; ``predictions`` are labels, one per test row."""

    top1: float
    k: int
    weighting: str
    n_train: int
    n_test: int
    predictions: np.ndarray = field(repr=False)



def top_k_neighbours(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and similarities of each query's ``k`` best database rows, best first.

    Exact under ``(-sim, index)``: everything above the k-th largest value is in, and the
    k-th value's ties are filled by lowest index. Inputs must already be normalized.
    """
    sims = queries @ database.T
    n = database.shape[0]
    k = min(k, n)
    kth = np.partition(sims, n - k, axis=1)[:, n - k][:, None]
    above = sims > kth
    tied = sims == kth
    need = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= need))
    index = np.nonzero(chosen)[1].reshape(-1, k)  # ascending index within each row
    values = np.take_along_axis(sims, index, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(index, order, axis=1), np.take_along_axis(values, order, axis=1)


def knn_classify(train: np.ndarray, train_labels: Sequence[object] | np.ndarray,
                 test: np.ndarray, test_labels: Sequence[object] | np.ndarray,
                 k: int = 20, weighting: Weighting = "similarity", temperature: float = 0.07,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> KnnResult:
    """Classify each test embedding by its ``k`` nearest train embeddings; report top-1."""
    if weighting not in ("uniform", "similarity"):
        raise ValueError(f"weighting must be 'uniform' or 'similarity', not {weighting!r}")
    if k < 1:
        raise ValueError("k must be >= 1")
    x_train, x_test = l2_normalize(train), l2_normalize(test)
    y_test = np.asarray(test_labels)
    classes, y_train = np.unique(np.asarray(train_labels), return_inverse=True)
    if y_train.shape[0] != x_train.shape[0] or y_test.shape[0] != x_test.shape[0]:
        raise ValueError("one label per embedding is required")
    n_classes = len(classes)
    k_eff = min(k, x_train.shape[0])
    step = max(1, chunk_bytes // (4 * x_train.shape[0]))
    predicted = np.empty(x_test.shape[0], dtype=np.int64)
    for start in range(0, x_test.shape[0], step):
        index, sims = top_k_neighbours(x_test[start:start + step], x_train, k_eff)
        rows = np.arange(index.shape[0])[:, None]
        neighbour_class = y_train[index]
        # exp((s - 1) / T) is exp(s / T) up to a constant factor, without overflow at small T
        weights = np.ones_like(sims) if weighting == "uniform" else np.exp((sims - 1.0) / temperature)
        votes = np.zeros((index.shape[0], n_classes))
        np.add.at(votes, (rows, neighbour_class), weights)
        first_rank = np.full((index.shape[0], n_classes), k_eff)
        np.minimum.at(first_rank, (rows, neighbour_class), np.arange(k_eff)[None, :])
        is_best = votes == votes.max(axis=1, keepdims=True)
        predicted[start:start + step] = np.argmin(np.where(is_best, first_rank, k_eff + 1), axis=1)
    predictions = classes[predicted]
    return KnnResult(top1=round(float(np.mean(predictions == y_test)) * 100.0, 2), k=k_eff,
                     weighting=weighting, n_train=x_train.shape[0], n_test=x_test.shape[0],
                     predictions=predictions)
