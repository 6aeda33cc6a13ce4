"""Semantic deduplication on image embeddings (SemDeDup, Abbas et al. 2023).

Plain functions over numpy arrays, with no runner imports, so that Beam, Spark, Ray or a
plain loop can place the steps:

1. ``sample_for_kmeans``: per row, whether it goes into the k-means sample. A hash of the
   row key, so every runner (and every rerun) picks the same rows.
2. ``train_centroids``: spherical k-means (faiss) on the sample. This is the one GLOBAL
   step: it runs in one process on a bounded sample; everything else is per row or per
   cluster.
3. ``assign_clusters``: per row (or per batch of rows), the nearest centroid by cosine.
4. ``dedup_cluster``: per cluster, SemDeDup's rule. Rows are ranked by a caller-given order
   (smaller = preferred survivor); a row is a duplicate when its cosine similarity to ANY
   higher-ranked row, whatever that row's own fate, is at least the threshold. The top-ranked
   row of a cluster is always a survivor.

Cosine similarities are computed on L2-normalized float32 rows. A zero row stays zero
(similarity 0 to everything) rather than becoming NaN.

Sizes. With ``k = default_clusters(N) = round(sqrt(N))`` a cluster holds about
``N / k = sqrt(N)`` rows on average (k-means clusters are uneven; the largest can be several
times the mean). ``dedup_cluster`` holds the cluster's embeddings (cluster x d float32) plus a
block of similarities (``block_rows`` x cluster float32, and a masked copy of it), so its
memory is bounded by the block size times the cluster size, never cluster x cluster.
faiss wants at least ~39 training points per centroid (it warns below that) and subsamples
above 256 per centroid, so a useful sample fraction is about ``39 * k / N`` to ``256 * k / N``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.95
"""Cosine similarity at or above which a lower-ranked row is a duplicate of a higher-ranked one."""

DEFAULT_ITERATIONS = 20
DEFAULT_BLOCK_ROWS = 512

SURVIVOR = "survivor"
DUPLICATE = "duplicate"

RowKey = tuple[str, int]


def default_clusters(n_rows: int) -> int:
    """Number of k-means clusters for ``n_rows`` rows: ``max(1, round(sqrt(n_rows)))``.

    This balances the two costs: k centroids to compare every row against, and clusters of
    about ``n_rows / k = sqrt(n_rows)`` rows each for the per-cluster pairwise step.
    """
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    return max(1, round(math.sqrt(n_rows)))


def sample_for_kmeans(key: str, fraction: float) -> bool:
    """Whether the row with this key is in the k-means training sample.

    Deterministic: the first 8 bytes of SHA-256 of the key, read as a fraction of 2**64,
    compared with ``fraction``. Every runner and every rerun picks the same rows (Python's
    ``hash`` is salted per process, so it is not used). ``fraction`` <= 0 picks nothing,
    >= 1 picks everything. Runners must format the key the same way (e.g. ``f"{shard}:{row}"``).
    """
    if math.isnan(fraction):
        raise ValueError("fraction is NaN")
    if fraction <= 0:
        return False
    if fraction >= 1:
        return True
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction


def normalized(embeddings: np.ndarray) -> np.ndarray:
    """L2-normalized float32 rows (a zero row stays zero)."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, d), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def train_centroids(embeddings: np.ndarray, clusters: int, seed: int,
                    iterations: int = DEFAULT_ITERATIONS, *, keys: Sequence[Hashable]) -> np.ndarray:
    """Spherical k-means centroids, shape ``(k, d)`` float32 with unit rows.

    THE GLOBAL STEP: it runs in one process on a bounded sample (see ``sample_for_kmeans``);
    its output (k x d floats) is then broadcast to the per-row and per-cluster steps.

    ``keys`` holds one sortable, unique key per row (e.g. ``(source_shard, row_in_shard)``);
    rows are sorted by it before training, so for a given seed the result does not depend on
    the order in which a runner collected the sample. ``k = min(clusters, n)``. faiss runs
    single-threaded here (the OpenMP thread count is restored afterwards) so that its
    reductions are reproducible; results are bit-identical for the same faiss build and CPU,
    not necessarily across machines.
    """
    import faiss

    x = normalized(embeddings)
    n, d = x.shape
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} embeddings")
    if n == 0:
        raise ValueError("cannot train centroids on an empty sample")
    if clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    permutation = sorted(range(n), key=lambda i: keys[i])
    for a, b in zip(permutation, permutation[1:]):
        if keys[a] == keys[b]:
            raise ValueError(f"duplicate key {keys[a]!r}")
    x = np.ascontiguousarray(x[permutation])
    k = min(int(clusters), n)

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        kmeans = faiss.Kmeans(d, k, niter=int(iterations), seed=int(seed), spherical=True, verbose=False)
        kmeans.train(x)
        centroids = np.array(kmeans.centroids, dtype=np.float32, copy=True).reshape(k, d)
    finally:
        faiss.omp_set_num_threads(threads)
    return normalized(centroids)


def assign_clusters(embeddings: np.ndarray, centroids: np.ndarray,
                    block_rows: int = 8192) -> np.ndarray:
    """Index of the nearest centroid (by cosine) for each row, int64 of shape ``(n,)``.

    Rows and centroids are L2-normalized first. Exact ties go to the lower centroid index.
    Memory is bounded by ``block_rows`` x k similarities.
    """
    return assign_normalized(normalized(embeddings), normalized(centroids), block_rows)


def assign_normalized(x: np.ndarray, c: np.ndarray, block_rows: int = 8192) -> np.ndarray:
    """:func:`assign_clusters` of rows and centroids already :func:`normalized` (a runner
    assigning row by row normalizes the centroids once, not once a row)."""
    if c.shape[0] == 0:
        raise ValueError("no centroids")
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"embedding dim {x.shape[1]} != centroid dim {c.shape[1]}")
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], block_rows):
        sims = x[start:start + block_rows] @ c.T
        out[start:start + block_rows] = np.argmax(sims, axis=1)  # first maximum: lower index
    return out


@dataclass(frozen=True)
class SemanticDecision:
    """The semantic-dedup fate of one row.

    ``role`` is ``"duplicate"`` (drop it) or ``"survivor"``. For a duplicate,
    ``nearest_survivor`` is the key of the most similar higher-ranked row that is itself a
    survivor, and ``similarity`` the cosine to it. Under SemDeDup's rule that similarity can
    be below the threshold (a chain a~b~c where b is dropped: c is dropped for b, and its
    nearest survivor is a). For a survivor both are None.
    """
    source_shard: str
    row_in_shard: int
    role: str
    cluster: int
    nearest_survivor: Optional[RowKey] = None
    similarity: Optional[float] = None

    @property
    def key(self) -> RowKey:
        return (self.source_shard, self.row_in_shard)

    @property
    def dropped(self) -> bool:
        return self.role == DUPLICATE


def dedup_cluster(cluster: int, keys: Sequence[RowKey], order: Sequence[tuple], embeddings: np.ndarray,
                  threshold: float = DEFAULT_THRESHOLD, block_rows: int = DEFAULT_BLOCK_ROWS
                  ) -> list[SemanticDecision]:
    """SemDeDup within one cluster.

    ``keys[i]`` is row i's ``(source_shard, row_in_shard)``; ``order[i]`` its rank key
    (smaller = preferred survivor, e.g. ``(-pixels, shard, row)``; ties are broken by the row
    key, so the result does not depend on input order); ``embeddings[i]`` its embedding.

    A row is a duplicate when its cosine similarity to any higher-ranked row is
    ``>= threshold``, whatever that row's own fate (SemDeDup's rule; it does not chain
    survivors, so a row can be dropped for a row that is itself dropped). The top-ranked row
    is always a survivor, so every duplicate has a nearest survivor: the most similar
    higher-ranked survivor (exact ties to the higher-ranked one).

    Returns a decision for every duplicate and for every survivor that is the nearest survivor
    of at least one duplicate; nothing for the other rows (they survive). Sorted by row key.
    A cluster where nothing is dropped returns ``[]``.

    Memory: the cluster's normalized embeddings plus ``block_rows`` x cluster-size similarities
    (twice), never cluster x cluster.
    """
    n = len(keys)
    if len(order) != n:
        raise ValueError(f"{len(order)} order keys for {n} row keys")
    if n == 0:
        return []
    x = normalized(embeddings)
    if x.shape[0] != n:
        raise ValueError(f"{x.shape[0]} embeddings for {n} row keys")
    row_keys = [(str(k[0]), int(k[1])) for k in keys]
    if len(set(row_keys)) != n:
        raise ValueError("duplicate row keys in cluster")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")

    ranked = sorted(range(n), key=lambda i: (tuple(order[i]), row_keys[i]))
    x = np.ascontiguousarray(x[ranked])
    duplicate = np.zeros(n, dtype=bool)
    nearest = np.full(n, -1, dtype=np.int64)      # ranked position of the nearest survivor
    similarity = np.zeros(n, dtype=np.float64)

    for start in range(1, n, block_rows):
        stop = min(start + block_rows, n)
        # sims[j - start, i] = cos(row j, row i) for ranked positions i < stop
        sims = x[start:stop] @ x[:stop].T
        rows = np.arange(start, stop)[:, None]
        cols = np.arange(stop)[None, :]
        higher = cols < rows
        masked = np.where(higher, sims, -np.inf)
        duplicate[start:stop] = masked.max(axis=1) >= threshold
        # fates of all positions < stop are now known; position 0 is a survivor
        survivor_cols = ~duplicate[:stop]
        masked = np.where(higher & survivor_cols[None, :], sims, -np.inf)
        best = np.argmax(masked, axis=1)          # first maximum: the higher-ranked survivor
        block_dup = duplicate[start:stop]
        nearest[start:stop][block_dup] = best[block_dup]
        similarity[start:stop][block_dup] = masked[np.arange(stop - start), best][block_dup]

    decisions = []
    referenced = set(int(p) for p in nearest[duplicate])
    for position in range(n):
        key = row_keys[ranked[position]]
        if duplicate[position]:
            decisions.append(SemanticDecision(
                key[0], key[1], DUPLICATE, int(cluster),
                row_keys[ranked[int(nearest[position])]], float(similarity[position])))
        elif position in referenced:
            decisions.append(SemanticDecision(key[0], key[1], SURVIVOR, int(cluster)))
    decisions.sort(key=lambda decision: decision.key)
    return decisions
