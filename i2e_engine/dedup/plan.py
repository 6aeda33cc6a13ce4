"""The dedup plan: which rows are copies of which, decided on hashes before any model runs.

The sequence is written once, :func:`decide`, on a runner's :class:`~i2e_engine.flow.Flow`;
the decisions are the same on every runner:

1. every checked row of every shard has a :data:`HashRow` (row key, sha256, the two
   perceptual hashes, pixels, normalized alt-text), from the hash pass;
2. rows that match an evaluation image (``--decontaminate``) are dropped first
   (:meth:`i2e_engine.dedup.decontaminate.EvalIndex.match`);
3. *vertices* are distinct (phash, phash_center) pairs, so exact copies (same bytes, same
   hashes) collapse before the search and a placeholder seen 10^6 times is one vertex;
4. near pairs of vertices: each vertex's hashes go into the buckets of
   :meth:`HashIndex.bucket_keys`; :func:`bucket_edges` verifies one bucket (runner group-by);
5. clusters are the connected components of those edges, labelled by their smallest vertex
   (``i2e_engine.dedup.components``: rounds over the edges through the runner, never
   collected into one process);
6. in each cluster the survivor is the first row by :data:`SURVIVOR_RULE` (largest
   resolution, then row key); every other row is a duplicate of it
   (``duplicate_sha256`` when its bytes are the survivor's, else ``near_duplicate``), and
   the survivor collects the distinct alt-texts of its copies (up to ``max_texts``), which
   NER reads with its own, as MOFI's I2E does;
7. the decisions, keyed by shard, are handed to the annotate pass (:class:`ShardDedup` per shard).

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

from i2e_engine.config import DedupConfig
from i2e_engine.dedup import components
from i2e_engine.dedup.hashes import PerceptualHashes, near_distance
from i2e_engine.dedup.index import HashIndex, near_pairs, pairs_in_table
from i2e_engine.flow import Flow, first

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


def bucket_near_edges(flow: Flow, vertices, index: HashIndex):
    """Near pairs of ``vertices`` with the flow's own group-by: each vertex's two hashes in
    every table's bucket (:meth:`HashIndex.bucket_keys`, a narrow shuffle of about 140 rows a
    vertex), each bucket verified by :func:`bucket_edges`, the pairs made distinct."""
    entries = flow.flat_map("Bucket keys", vertices, lambda vertex: vertex_entries(index, vertex))
    buckets = flow.group_by_key("Group buckets", entries)
    return flow.distinct("Distinct edges", flow.flat_map(
        "Near pairs", buckets, lambda bucket: bucket_edges(index, bucket[0][0], bucket[1])))


def decide(flow: Flow, rows, index: HashIndex, eval_index, config: DedupConfig):
    """The dedup plan on the runner's collection of :data:`HashRow`: (shard id, RowDedup)
    for every row that is contaminated, a duplicate or a survivor of copies.

    Every step moves narrow rows through the runner: the rows are keyed by vertex, the
    vertices' near pairs found by the runner (:meth:`Flow.near_edges`), the components
    labelled in rounds (:func:`i2e_engine.dedup.components.label_components`), the labels
    joined back to the rows by vertex, and the rows grouped by cluster."""
    checked = flow.cache(flow.map("Decontaminate", rows, lambda row: (row, contamination(row, eval_index))))
    tainted = flow.flat_map("Contaminated", checked,
                            lambda item: [] if item[1] is None else [(item[0]["source_shard"], item[1])])
    clean = flow.flat_map("Key clean rows by vertex", checked,
                          lambda item: [(vertex_of(item[0]), item[0])] if item[1] is None else [])
    # GLOBAL, vertices: one per distinct (phash, phash_center), through the runner's shuffle
    vertices = flow.distinct("Distinct vertices", flow.map("Vertices", clean, lambda item: item[0]))
    # GLOBAL, edges and components: about 140 bucket entries a vertex, then rounds over the
    # edges (two vertex ids a near pair); one process sees a count of changes a round at most
    labels = components.label_components(flow, flow.near_edges(vertices, index), config.component_rounds)
    # GLOBAL, clusters: labels joined to the rows by vertex, rows grouped by label (a group
    # holds one cluster's rows: iterated, never held by cluster_decisions)
    clusters = flow.group_by_key("Group clusters", flow.flat_map(
        "Key rows by cluster", flow.cogroup("Join labels", rows=clean, label=labels), _by_cluster))
    decisions = flow.flat_map("Choose survivors", clusters,
                              lambda cluster: cluster_decisions(cluster[0], cluster[1], config.merge_alt_texts))
    return flow.flatten("All decisions", tainted, decisions)


def _by_cluster(item: tuple[str, dict]) -> Iterator[tuple[str, HashRow]]:
    """(cluster label, row) for the rows of one vertex: its component's label, or the vertex
    itself when it is a label or on no edge."""
    vertex, joined = item
    label = first(joined["label"], vertex)
    return ((label, row) for row in joined["rows"])
