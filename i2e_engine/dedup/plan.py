"""The dedup plan: which rows are copies of which, decided on hashes before any model runs.

Runners place these functions; the decisions are the same on every runner:

1. every checked row of every shard has a :data:`HashRow` (row key, sha256, the two
   perceptual hashes, pixels, normalized alt-text), from the hash pass;
2. rows that match an evaluation image (``--decontaminate``) are dropped first
   (:meth:`i2e_engine.dedup.decontaminate.EvalIndex.match`);
3. *vertices* are distinct (phash, phash_center) pairs, so exact copies (same bytes, same
   hashes) collapse before the search and a placeholder seen 10^6 times is one vertex;
4. near pairs of vertices: each vertex's hashes go into the buckets of
   :meth:`HashIndex.bucket_keys`; :func:`bucket_edges` verifies one bucket (runner group-by);
5. clusters are the connected components of those edges (:func:`connected_components`: the
   one global step, on one worker, over edges only: two short strings per near pair);
6. in each cluster the survivor is the first row by :data:`SURVIVOR_RULE` (largest
   resolution, then row key); every other row is a duplicate of it
   (``duplicate_sha256`` when its bytes are the survivor's, else ``near_duplicate``), and
   the survivor collects the distinct alt-texts of its copies (up to ``max_texts``), which
   NER reads with its own, as MOFI's I2E does;
7. the decisions are grouped by shard (:class:`ShardDedup`) and handed to the annotate pass.

The rows of one vertex (exact copies) and of one cluster meet on one worker: Beam iterates
a large group lazily and :func:`cluster_decisions` holds none of its rows; Spark's
``groupByKey`` holds a group as one list (about 300 MB for a placeholder seen 10^6 times).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from i2e_engine.dedup.hashes import PerceptualHashes, near_distance
from i2e_engine.dedup.index import HashIndex, near_pairs, pairs_in_table

HashRow = dict
"""A row of the ``hashes`` work table (schemas/: row key, sha256, phash, phash_center,
pixels, alt_text), as a dict so that Beam coders and Spark rows carry it as is."""

SURVIVOR_RULE = "largest width x height, then the smallest row key (source_shard, row_in_shard)"


def survivor_key(row: HashRow) -> tuple:
    return (-row["pixels"], row["source_shard"], row["row_in_shard"])


def hashes_of(row: HashRow) -> PerceptualHashes:
    return PerceptualHashes(row["phash"], row["phash_center"])


def vertex_of(row: HashRow) -> str:
    return f"{row['phash']}:{row['phash_center']}"


def vertex_hashes(vertex: str) -> PerceptualHashes:
    whole, middle = vertex.split(":")
    return PerceptualHashes(int(whole), int(middle))


def vertex_entries(index: HashIndex, vertex: str) -> list[tuple[tuple[int, int], tuple[str, int, bool]]]:
    """((table, key), (vertex, hash, is_center)) for both hashes of a vertex."""
    hashes = vertex_hashes(vertex)
    return [(bucket, (vertex, value, is_center))
            for value, is_center in ((hashes.phash, False), (hashes.phash_center, True))
            for bucket in index.bucket_keys(value)]


def bucket_edges(index: HashIndex, table: int, entries: Iterable[tuple[str, int, bool]]) -> list[tuple[str, str]]:
    """Near pairs of distinct vertices among the entries of one bucket of ``table``."""
    entries = list(entries)
    if len(entries) < 2:
        return []
    vertices = sorted({vertex for vertex, _, _ in entries})
    position = {vertex: i for i, vertex in enumerate(vertices)}
    owners = np.array([position[vertex] for vertex, _, _ in entries])
    pairs = pairs_in_table(index, table, np.array([value for _, value, _ in entries], dtype=np.int64),
                           owners, np.array([center for _, _, center in entries]))
    return sorted({tuple(sorted((entries[a][0], entries[b][0]))) for a, b in zip(pairs.first, pairs.second)})


def connected_components(edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Vertex -> its component's label (the smallest vertex in it), for vertices on an edge.

    GLOBAL: runs in one process over every near-pair edge (about 50 bytes each; 10^7
    edges, a crawl of 10^9 images with 1% near copies, is about 0.5 GB). Vertices without
    an edge are their own cluster and never come here."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as components

    edges = list(edges)
    if not edges:
        return {}
    vertices = np.unique(np.array([v for edge in edges for v in edge], dtype=object).astype(str))
    index = {v: i for i, v in enumerate(vertices)}
    rows = np.array([index[a] for a, _ in edges])
    cols = np.array([index[b] for _, b in edges])
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(vertices), len(vertices)))
    _, labels = components(graph, directed=False)
    first = np.full(labels.max() + 1, len(vertices))
    np.minimum.at(first, labels, np.arange(len(vertices)))   # vertices are sorted: smallest = first
    return {str(v): str(vertices[first[label]]) for v, label in zip(vertices, labels)}


def cluster_id(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RowDedup:
    """What dedup decided for one row. ``role``: ``survivor`` (of a cluster with copies),
    ``duplicate`` or ``contaminated`` (matches an evaluation image)."""
    row_in_shard: int
    role: str
    cluster_id: Optional[str] = None
    reason: Optional[str] = None            # duplicate_sha256 | near_duplicate | benchmark_contamination
    survivor_shard: Optional[str] = None
    survivor_row: Optional[int] = None
    distance: Optional[int] = None          # bits to the survivor (or to the evaluation image)
    detail: str = ""
    copy_texts: tuple[str, ...] = ()        # a survivor's copies' alt-texts, read by NER with its own

    @property
    def dropped(self) -> bool:
        return self.role != "survivor"


class _FirstTexts:
    """The ``limit`` distinct alt-texts of the first rows by survivor order, in bounded memory."""

    def __init__(self, limit: int, exclude: str):
        self.limit, self.exclude = limit, exclude
        self.best: dict[str, tuple] = {}

    def add(self, text: str, key: tuple) -> None:
        if self.limit <= 0 or text == self.exclude:
            return
        if text in self.best or len(self.best) < self.limit:
            self.best[text] = min(key, self.best.get(text, key))
            return
        worst = max(self.best, key=self.best.__getitem__)
        if key < self.best[worst]:
            del self.best[worst]
            self.best[text] = key

    def texts(self) -> tuple[str, ...]:
        return tuple(sorted(self.best, key=self.best.__getitem__))


def cluster_decisions(label: str, rows: Iterable[HashRow], max_texts: int) -> Iterator[tuple[str, RowDedup]]:
    """(shard, decision) for every row of one cluster (nothing for a lone row). ``rows`` is
    iterated twice and never held (a runner's grouped values need not fit in memory)."""
    survivor = min(rows, key=survivor_key)
    best = survivor_key(survivor)
    cid = cluster_id(label)
    survivor_hashes = hashes_of(survivor)
    texts = _FirstTexts(max_texts, survivor["alt_text"])
    copies = 0
    for row in rows:
        key = survivor_key(row)
        if key == best:
            continue
        copies += 1
        exact = row["sha256"] == survivor["sha256"]
        distance = near_distance(hashes_of(row), survivor_hashes)
        texts.add(row["alt_text"], key)
        yield row["source_shard"], RowDedup(
            row["row_in_shard"], "duplicate", cid, "duplicate_sha256" if exact else "near_duplicate",
            survivor["source_shard"], survivor["row_in_shard"], distance,
            f"{'same bytes as' if exact else f'{distance} bits from'} row {survivor['row_in_shard']} "
            f"of {survivor['source_shard']}")
    if copies:
        yield survivor["source_shard"], RowDedup(survivor["row_in_shard"], "survivor", cid,
                                                 copy_texts=texts.texts())


@dataclass
class ShardDedup:
    """The dedup decisions of one shard's rows (rows without one are kept as they are)."""
    rows: dict[int, RowDedup] = field(default_factory=dict)

    @classmethod
    def of(cls, decisions: Iterable[RowDedup]) -> "ShardDedup":
        return cls({d.row_in_shard: d for d in decisions})

    def get(self, row_in_shard: int) -> Optional[RowDedup]:
        return self.rows.get(row_in_shard)

    def to_json(self) -> str:
        return json.dumps([asdict(self.rows[r]) for r in sorted(self.rows)], sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ShardDedup":
        return cls.of(RowDedup(**{**d, "copy_texts": tuple(d["copy_texts"])}) for d in json.loads(text))

    def digest(self) -> str:
        """Part of a shard's annotation identity: its rows change when these decisions do."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def contamination(row: HashRow, eval_index) -> Optional[RowDedup]:
    """The decision for a row that copies an evaluation image (an
    :class:`~i2e_engine.dedup.decontaminate.EvalIndex`), or None."""
    if eval_index is None:
        return None
    found = eval_index.match(row["sha256"], hashes_of(row))
    if found is None:
        return None
    return RowDedup(row["row_in_shard"], "contaminated", reason="benchmark_contamination", distance=found.distance,
                    detail=f"copies evaluation image {found.uri} ({found.distance} bits)")


def near_edges(index: HashIndex, vertices: Sequence[str]) -> list[tuple[str, str]]:
    """Every near pair of ``vertices`` in one process (numpy; the bare runner): the same
    pairs a runner gets from :func:`vertex_entries` and :func:`bucket_edges`."""
    hashes = [vertex_hashes(v) for v in vertices]
    values = np.array([h.phash for h in hashes] + [h.phash_center for h in hashes], dtype=np.int64)
    owners = np.tile(np.arange(len(vertices)), 2)
    is_center = np.repeat([False, True], len(vertices))
    pairs = near_pairs(index, values, owners, is_center)
    return sorted({tuple(sorted((vertices[owners[a]], vertices[owners[b]])))
                   for a, b in zip(pairs.first, pairs.second)})


def decide_in_process(rows: Iterable[HashRow], index: HashIndex, eval_index, max_texts: int
                      ) -> dict[str, ShardDedup]:
    """The whole plan in one process (the bare runner; every row's narrow hash row is held
    in memory, about 200 bytes each): decontamination, clusters, survivors, grouped by shard."""
    by_shard: dict[str, list[RowDedup]] = {}
    clusters: dict[str, list[HashRow]] = {}
    for row in rows:
        tainted = contamination(row, eval_index)
        if tainted is not None:
            by_shard.setdefault(row["source_shard"], []).append(tainted)
        else:
            clusters.setdefault(vertex_of(row), []).append(row)
    labels = connected_components(near_edges(index, sorted(clusters)))
    merged: dict[str, list[HashRow]] = {}
    for vertex, members in clusters.items():
        merged.setdefault(labels.get(vertex, vertex), []).extend(members)
    for label, members in merged.items():
        for shard, decision in cluster_decisions(label, members, max_texts):
            by_shard.setdefault(shard, []).append(decision)
    return {shard: ShardDedup.of(decisions) for shard, decisions in by_shard.items()}
