"""Image retrieval mAP under the exact GPR1200 protocol, plus leave-one-out variants.

The protocol (brief section 2) fixes every convention that moves the number: each image
queries the whole set *including itself* (the self-match is a relevant hit), the ranking
is never truncated, similarity is the raw float32 dot product of L2-normalized embeddings,
and ties are broken by ``(-similarity, index)`` so a result is bit-reproducible. The same
embeddings can score 0.54 under self-match, 0.46 leave-one-out and 0.76 with a k=20 cut,
so the leave-one-out numbers are reported under their own names, never as "mAP".

How it is computed, and why it is exact: AP only needs the rank of each relevant item, not
the whole permutation. Under the total order ``(-sim, index)`` the rank of item ``j`` for a
query is ``1 + #{sim > s_j} + #{sim == s_j and index < j}``. The first count comes from one
ascending sort of the query's similarity row and a binary search; the second is only
evaluated for the rare relevant items that share their similarity with another item. This
gives exactly the ranks that a stable argsort on ``-sim`` gives (the tests check it against
such a brute force), at the cost of an unstable SIMD sort of the values only, several times
cheaper than a stable argsort. Queries are processed in chunks so memory stays at one
``chunk x n`` float32 block.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from trainer.eval.results import MetricResult

DEFAULT_CHUNK_BYTES = 128 * 1024 * 1024


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Return float32 row-normalized embeddings; reject rows that cannot be normalized.

    A zero or non-finite row would silently rank arbitrarily, so it is an error here.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty 2-D embedding matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinity")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{int((norms == 0).sum())} embedding rows are all zeros")
    return x / norms


@dataclass(frozen=True)
class RetrievalResult(MetricResult):
    """Retrieval metrics; the ``*_percent`` values are x100 and rounded to 2 decimals.

    ``map_gpr1200`` is the protocol's mAP (self-match included). ``map_leave_one_out`` and
    ``recall_at_1_leave_one_out`` drop the query from its own ranking and are averaged only
    over queries that have at least one *other* relevant image (``n_loo_queries``): a
    singleton class has nothing to retrieve, so it is excluded rather than scored 0 or 1.
    ``ap`` holds the unrounded per-query APs (self-match) in [0, 1].
    """

    map_gpr1200: float
    map_leave_one_out: float
    recall_at_1_leave_one_out: float
    per_domain_map: dict[str, float]
    n_queries: int
    n_loo_queries: int
    n_classes: int
    ap: np.ndarray = field(repr=False)
    ap_leave_one_out: np.ndarray = field(repr=False)



def _percent(values: np.ndarray) -> float:
    return round(float(np.mean(values, dtype=np.float64)) * 100.0, 2) if len(values) else float("nan")


def _rows_per_chunk(n: int, chunk_bytes: int) -> int:
    # one float32 similarity block plus one sorted copy of a single row at a time
    return max(1, chunk_bytes // max(1, 4 * n))


def relevant_ranks(row: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """1-based ranks of ``positives`` in ``row`` ordered by ``(-sim, index)``.

    ``positives`` must be sorted ascending. Exact for ties: an item tied with others is
    preceded by the tied items of lower index, as in a stable sort of ``-row``.
    """
    ordered = np.sort(row)
    values = row[positives]
    above = np.searchsorted(ordered, values, side="right")
    tied = above - np.searchsorted(ordered, values, side="left")
    ranks = (row.shape[0] - above) + 1
    for k in np.flatnonzero(tied > 1):
        j = positives[k]
        ranks[k] += np.count_nonzero(row[:j] == values[k])
    return ranks


def _average_precision(sorted_ranks: np.ndarray) -> float:
    hits = np.arange(1, sorted_ranks.shape[0] + 1, dtype=np.float64)
    return float(np.mean(hits / sorted_ranks))


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: Sequence[object] | np.ndarray,
    domains: Sequence[object] | np.ndarray | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> RetrievalResult:
    """GPR1200-protocol mAP (and leave-one-out mAP / R@1) of ``embeddings`` under ``labels``.

    ``domains`` (one per image, optional) gives per-domain mAP: the mean self-match AP over
    that domain's queries. ``chunk_bytes`` bounds the similarity block held at once.
    """
    x = l2_normalize(embeddings)
    n = x.shape[0]
    label_array = np.asarray(labels)
    if label_array.shape != (n,):
        raise ValueError(f"{label_array.shape[0] if label_array.ndim else 0} labels for {n} embeddings")
    classes, codes = np.unique(label_array, return_inverse=True)
    by_class = np.argsort(codes, kind="stable")
    members = np.split(by_class, np.cumsum(np.bincount(codes, minlength=len(classes)))[:-1])

    ap = np.empty(n, dtype=np.float64)
    ap_loo = np.full(n, np.nan, dtype=np.float64)
    hit_at_1 = np.full(n, np.nan, dtype=np.float64)
    step = _rows_per_chunk(n, chunk_bytes)
    for start in range(0, n, step):
        sims = x[start:start + step] @ x.T
        for offset, row in enumerate(sims):
            q = start + offset
            positives = members[codes[q]]
            ranks = relevant_ranks(row, positives)
            ap[q] = _average_precision(np.sort(ranks))
            if positives.shape[0] > 1:
                self_rank = ranks[np.searchsorted(positives, q)]
                others = ranks[positives != q]
                others = others - (others > self_rank)
                ap_loo[q] = _average_precision(np.sort(others))
                hit_at_1[q] = float(others.min() == 1)

    per_domain: dict[str, float] = {}
    if domains is not None:
        domain_array = np.asarray(domains)
        if domain_array.shape != (n,):
            raise ValueError(f"domains must have one entry per embedding ({n})")
        for domain in np.unique(domain_array):
            per_domain[str(domain)] = _percent(ap[domain_array == domain])

    has_loo = ~np.isnan(ap_loo)
    return RetrievalResult(
        map_gpr1200=_percent(ap),
        map_leave_one_out=_percent(ap_loo[has_loo]),
        recall_at_1_leave_one_out=_percent(hit_at_1[has_loo]),
        per_domain_map=per_domain,
        n_queries=n,
        n_loo_queries=int(has_loo.sum()),
        n_classes=len(classes),
        ap=ap,
        ap_leave_one_out=ap_loo,
    )


def chance_map(labels: Sequence[object] | np.ndarray, trials: int = 20, seed: int = 0) -> float:
    """Expected GPR1200 mAP (x100) of random embeddings for this label set.

    The self-match lifts chance well above ``1/n_classes`` on small sets, so a "clearly
    above chance" claim must compare against this, not against the class count.
    """
    label_array = np.asarray(labels)
    rng = np.random.default_rng(seed)
    scores = [
        retrieval_metrics(rng.standard_normal((label_array.shape[0], 16)), label_array).ap.mean()
        for _ in range(trials)
    ]
    return round(float(np.mean(scores)) * 100.0, 2)
