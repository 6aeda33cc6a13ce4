"""The finalize plan: global decisions on a narrow projection, then per-shard table writing.

Image bytes are the weight of a web table (about 50 KB a row: 50 TB at 10^9 rows), so they
never move between workers. Finalize runs in three steps, written once in :func:`finalize`
on a runner's :class:`~i2e_engine.flow.Flow` (Beam, Spark and the bare loop each lend one):

Exact and near copies were dropped before the models (``i2e_engine.dedup.plan``); the
decisions each shard ran under are in its work folder and become the ``duplicates`` table.

1. **Project** (per committed shard, parallel): :func:`project_shard` reads an annotations
   file without its ``image`` column (the ``narrow`` projection of ``schemas/``) and yields
   :data:`NarrowRow` dicts (row key, entity ids, image-entity scores, and the image
   embedding as float32 bytes when semantic dedup is on): about 360 bytes a row without the
   embedding (BENCHMARKS.md), 4 bytes a dimension more with it.
2. **Decide** (global; the only steps that move data between workers, and only narrow rows,
   keys and counts, through the runner's group-bys, joins and combines):
   - *semantic dedup* (optional, ``i2e_engine.dedup.semantic``): k-means on a bounded sample
     of the embeddings (the one thing collected: at most MAX_KMEANS_SAMPLE rows as one
     float32 matrix), then one group per k-means cluster;
   - *the quantile cutoff* of ``keep_top_fraction``: exact, from two passes of counts per
     score bin (:class:`ExactQuantile`, at most 65,536 counts each), so every runner finds
     the same value;
   - *per-entity image counts* over the rows kept after the per-image filters
     (:func:`kept_entity_ids`), for ``min_images_per_entity`` and the entities table: a
     count per entity, joined to the shards whose rows mention it (never broadcast).
3. **Write** (per committed shard, parallel): :func:`write_shard_tables` streams the
   shard's annotations (bytes included) once, joins the decisions back and writes its part
   of ``images``, ``image_entities``, ``rejects`` and ``duplicates``, plus a stats file.
   :func:`write_entity_part` writes the entities table from the counts.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import struct
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from i2e_engine import filters, storage, tables
from i2e_engine.config import DedupConfig, FilterConfig
from i2e_engine.dedup import semantic
from i2e_engine.dedup.plan import ShardDedup
from i2e_engine.dedup.semantic import RowKey, SemanticDecision
from i2e_engine.flow import Combiner, CountBins, CountItems, Flow, first
from i2e_engine.metrics import StageClock, StageMetrics
from i2e_engine.records import make_reject
from i2e_engine.shard import reason_key
from i2e_engine.workdir import WorkDir

if TYPE_CHECKING:
    from i2e_engine.build import RunPlan

READ_BATCH_ROWS = 256

# ----------------------------------------------------------------------------- 1. project

NarrowRow = dict
"""Keys: source_shard, row_in_shard, sample_id, pixels, links (a list of {entity_id,
image_entity_score}), score_keys (each score's :meth:`ExactQuantile.key`) and
image_embedding (the embedding as float32 bytes, 4 a dimension; empty unless asked for). A
dict of plain values so that Beam coders and Spark pickling carry it as is and compactly."""


def project_shard(work: WorkDir, stem: str, with_embeddings: bool = False) -> Iterator[NarrowRow]:
    """The narrow rows of one committed shard, streamed (no image bytes are read)."""
    parquet = work.annotations_file(stem)
    columns = schemas.projection("narrow_semantic" if with_embeddings else "narrow")
    for batch in parquet.iter_batches(batch_size=4096, columns=columns):
        embeddings = _embedding_bytes(batch.column("image_embedding")) if with_embeddings else None
        rows = batch.select([c for c in columns if c != "image_embedding"]).to_pylist()
        for i, row in enumerate(rows):
            links = [{"entity_id": link["entity_id"], "image_entity_score": link["image_entity_score"]}
                     for link in row["links"]]
            yield {"source_shard": row["source_shard"], "row_in_shard": row["row_in_shard"],
                   "sample_id": row["sample_id"], "pixels": row["width"] * row["height"], "links": links,
                   "score_keys": [ExactQuantile.key(link["image_entity_score"]) for link in links],
                   "image_embedding": embeddings[i] if embeddings is not None else b""}


def _embedding_bytes(column: pa.ListArray) -> list[bytes]:
    """Each row's float32 list as bytes, without making Python floats (null: empty)."""
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    ends = np.cumsum(lengths)
    return [values[end - length:end].tobytes() for end, length in zip(ends.tolist(), lengths.tolist())]


def embedding_of(row: NarrowRow) -> np.ndarray:
    return np.frombuffer(row["image_embedding"], dtype=np.float32)


# ----------------------------------------------------------------------------- 2. decide: semantic dedup

MAX_KMEANS_SAMPLE = 1_000_000   # rows k-means trains on, whatever the input's size (2 GB at 512 dims)
KMEANS_ROWS_PER_CLUSTER = 64     # faiss warns under 39 a centroid and subsamples over 256


def semantic_clusters(config: DedupConfig, n_rows: int) -> int:
    return config.semantic_clusters or semantic.default_clusters(n_rows)


def semantic_sample_fraction(config: DedupConfig, n_rows: int) -> float:
    """The fraction of rows k-means trains on: KMEANS_ROWS_PER_CLUSTER a cluster, at most
    MAX_KMEANS_SAMPLE rows (at 10^9 images and sqrt(N) clusters that is 32 a cluster)."""
    wanted = min(KMEANS_ROWS_PER_CLUSTER * semantic_clusters(config, n_rows), MAX_KMEANS_SAMPLE)
    return 1.0 if n_rows <= wanted else wanted / n_rows


def in_kmeans_sample(row: NarrowRow, fraction: float) -> bool:
    return semantic.sample_for_kmeans(f"{row['source_shard']}:{row['row_in_shard']}", fraction)


@dataclass
class _SampleParts:
    keys: list[RowKey] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)   # the rows' float32 embeddings, end to end


class KMeansCentroids(Combiner[_SampleParts, NarrowRow]):
    """K-means centroids of the sampled rows. The accumulator is the sample itself as row
    keys and float32 bytes (never Python floats: 10^6 rows x 384 dimensions are 1.5 GB so,
    over 10 GB as lists of floats), bounded by MAX_KMEANS_SAMPLE rows through
    :func:`semantic_sample_fraction`; :meth:`extract` trains k-means on it, in one worker."""

    def __init__(self, config: DedupConfig):
        self.config = config

    def create(self) -> _SampleParts:
        return _SampleParts()

    def add(self, accumulator: _SampleParts, row: NarrowRow) -> _SampleParts:
        accumulator.keys.append((row["source_shard"], row["row_in_shard"]))
        accumulator.data += row["image_embedding"]
        return accumulator

    def merge(self, accumulators: Iterable[_SampleParts]) -> _SampleParts:
        merged, *others = accumulators
        for accumulator in others:   # into the first, as Beam allows: one copy of the sample
            merged.keys += accumulator.keys
            merged.data += accumulator.data
        return merged

    def extract(self, accumulator: _SampleParts, n_rows: int) -> Optional[np.ndarray]:
        embeddings = np.frombuffer(accumulator.data, dtype=np.float32).reshape(len(accumulator.keys), -1) \
            if accumulator.keys else np.zeros((0, 0), np.float32)
        return semantic_centroids(accumulator.keys, embeddings, self.config, n_rows)


def semantic_centroids(keys: list[RowKey], embeddings: np.ndarray, config: DedupConfig, n_rows: int
                       ) -> Optional[np.ndarray]:
    """GLOBAL, one process: k-means over the sample (at most MAX_KMEANS_SAMPLE rows); the
    centroids (k x d float32, k about sqrt(rows)) come back L2-normalized, as
    :func:`semantic_cluster_of` compares with them. None for an empty sample (no rows)."""
    if not keys:
        return None
    centroids = semantic.train_centroids(embeddings, semantic_clusters(config, n_rows), config.seed, keys=keys)
    return semantic.normalized(centroids)


def semantic_cluster_of(row: NarrowRow, centroids: np.ndarray) -> int:
    return int(semantic.assign_normalized(semantic.normalized(embedding_of(row)[None, :]), centroids)[0])


def semantic_group(cluster: int, rows: Iterable[NarrowRow], config: DedupConfig) -> list[SemanticDecision]:
    """SemDeDup inside one k-means cluster (its rows are held: about N/k of them)."""
    rows = list(rows)
    embeddings = np.frombuffer(b"".join(r["image_embedding"] for r in rows), dtype=np.float32)
    return semantic.dedup_cluster(
        cluster, [(r["source_shard"], r["row_in_shard"]) for r in rows],
        [(-r["pixels"], r["source_shard"], r["row_in_shard"]) for r in rows],
        embeddings.reshape(len(rows), -1), config.semantic_threshold)


def semantic_decisions(flow: Flow, narrow, config: DedupConfig):
    """SemDeDup over the runner's narrow rows: (shard id, SemanticDecision).

    GLOBAL, bounded: the row count, and the k-means sample (at most MAX_KMEANS_SAMPLE rows,
    one float32 matrix) combined into one worker that trains k-means; the centroids (k x d)
    reach the assigning steps. The rows themselves move only through the group-by of their
    k-means cluster."""
    count = flow.combine("Count narrow rows", narrow, CountItems())
    fraction = flow.derive("K-means sample fraction", lambda n: semantic_sample_fraction(config, n), count)
    centroids = flow.combine("K-means on a sample (global, bounded)",
                             flow.filter("In k-means sample", narrow, in_kmeans_sample, fraction),
                             KMeansCentroids(config), count)
    clusters = flow.group_by_key("Group semantic clusters", flow.map(
        "Assign clusters", narrow, lambda row, c: (semantic_cluster_of(row, c), row), centroids))
    return flow.flat_map("SemDeDup", clusters, lambda cluster: [
        (d.source_shard, d) for d in semantic_group(cluster[0], cluster[1], config)])


def _semantic_survivors(flow: Flow, narrow, semantic):
    """The narrow rows that semantic dedup keeps: a join by row key with its drops."""
    drops = flow.flat_map("Semantic drops", semantic,
                          lambda item: [(item[1].key, True)] if item[1].dropped else [])
    keyed = flow.map("Key rows", narrow, lambda row: ((row["source_shard"], row["row_in_shard"]), row))
    return flow.flat_map("Survivors", flow.cogroup("Join semantic drops", row=keyed, dropped=drops),
                         lambda item: [] if first(item[1]["dropped"], False) else item[1]["row"])


# ----------------------------------------------------------------------------- 2. decide: quantile

class ExactQuantile:
    """The exact cutoff of ``keep_top_fraction`` over float32 scores, from counts per bin.

    A float32 maps to an order-preserving 32-bit key (:meth:`key`). Pass 1 counts keys per
    high 16 bits; :meth:`locate` finds the bin holding the wanted rank; pass 2 counts the
    keys of that bin per low 16 bits, which pins the value exactly. Counts add up in any
    order, so every runner (Beam combine, Spark group-by, a loop) gets the same cutoff, equal
    to :func:`filters.cutoff_for_top_fraction` over all scores, in memory bounded by 65,536
    counts instead of the 10^9 scores.
    """

    BITS = 16

    @staticmethod
    def key(score: float) -> int:
        (bits,) = struct.unpack("<I", struct.pack("<f", score))
        return bits ^ 0xFFFFFFFF if bits & 0x80000000 else bits | 0x80000000

    @staticmethod
    def value(key: int) -> float:
        bits = key & 0x7FFFFFFF if key & 0x80000000 else key ^ 0xFFFFFFFF
        return struct.unpack("<f", struct.pack("<I", bits))[0]

    @classmethod
    def high(cls, key: int) -> int:
        return key >> cls.BITS

    @classmethod
    def low(cls, key: int) -> int:
        return key & ((1 << cls.BITS) - 1)

    @staticmethod
    def locate(counts: Mapping[int, int], index: int) -> tuple[int, int]:
        """(bin, index inside the bin) of the ``index``-th smallest key, from counts per bin."""
        seen = 0
        for bin_ in sorted(counts):
            if index < seen + counts[bin_]:
                return bin_, index - seen
            seen += counts[bin_]
        raise ValueError(f"index {index} is beyond the {seen} counted values")




def cutoff_bin(keep_fraction: float, high_counts: Mapping[int, int]) -> Optional[tuple[int, int]]:
    """Pass 1's result: (high bin, index inside it) of the cutoff, None when nothing was scored."""
    index = filters.cutoff_index(sum(high_counts.values()), keep_fraction)
    return None if index is None else ExactQuantile.locate(high_counts, index)


def cutoff_value(target: Optional[tuple[int, int]], low_counts: Mapping[int, int]) -> Optional[float]:
    """Pass 2's result: the cutoff score itself."""
    if target is None:
        return None
    high_bin, rest = target
    low_bin, _ = ExactQuantile.locate(low_counts, rest)
    return ExactQuantile.value((high_bin << ExactQuantile.BITS) | low_bin)


def quantile_cutoff(keep_fraction: Optional[float], high_counts: Callable[[], Mapping[int, int]],
                    low_counts: Callable[[int], Mapping[int, int]]) -> Optional[float]:
    """The score cutoff of ``keep_fraction`` (None when not set or nothing was scored), for
    runners that aggregate from a driver: ``high_counts()`` runs pass 1 (the survivors'
    ``score_keys`` counted per ``ExactQuantile.high``), ``low_counts(high_bin)`` pass 2 (keys
    with that high part counted per ``ExactQuantile.low``), each over narrow data."""
    if keep_fraction is None:
        return None
    target = cutoff_bin(keep_fraction, high_counts())
    return cutoff_value(target, low_counts(target[0]) if target else {})


def cutoff_side(flow: Flow, survivors, keep_fraction: Optional[float]):
    """The score cutoff of ``keep_fraction`` as the flow's side value (None when not set or
    nothing was scored). GLOBAL, bounded: two combines of counts per bin (at most 65,536
    each) of the survivors' ``score_keys``."""
    if keep_fraction is None:
        return flow.constant("No cutoff", None)
    keys = flow.flat_map("Score keys", survivors, lambda row: row["score_keys"])
    high = flow.combine("Count high bins", keys, CountBins(ExactQuantile.high))
    target = flow.derive("Locate cutoff bin", lambda counts: cutoff_bin(keep_fraction, counts), high)
    in_bin = flow.filter("Keys in cutoff bin", keys,
                         lambda key, t: t is not None and ExactQuantile.high(key) == t[0], target)
    low = flow.combine("Count low bins", in_bin, CountBins(ExactQuantile.low))
    return flow.derive("Cutoff value", cutoff_value, target, low)


# ----------------------------------------------------------------------------- 2. decide: counts

def kept_entity_ids(row: NarrowRow, config: FilterConfig, cutoff: Optional[float]) -> list[str]:
    """Entities of a row (not dropped by semantic dedup) that pass the per-image filters (before the per-entity one)."""
    kept, _ = filters.filter_links(row, config, cutoff)
    return [link["entity_id"] for link in kept]


def keeps_entity(image_count: int, config: FilterConfig) -> bool:
    """Whether an entity with this many kept images is in the tables."""
    return image_count >= config.min_images_per_entity


@dataclass(frozen=True)
class EntityCount:
    """One entity's kept images, sent to a shard writer whose rows link to it."""
    entity_id: str
    images: int


def entity_counts_by_shard(flow: Flow, narrow, counts):
    """(shard id, EntityCount) for every entity a shard's rows link to that has a count.

    GLOBAL, through the runner: the distinct (entity, shard) mentions joined with the counts
    by entity, so each shard writer gets the counts of its own entities (at most its links),
    never every entity's count."""
    mentions = flow.distinct("Entities per shard", flow.flat_map(
        "Entity mentions", narrow, lambda row: [(link["entity_id"], row["source_shard"]) for link in row["links"]]))
    return flow.flat_map("Counts per shard", flow.cogroup("Join counts to shards", shard=mentions, images=counts),
                         _counts_for_shards)


def _counts_for_shards(item: tuple[str, dict]) -> list[tuple[str, EntityCount]]:
    entity_id, joined = item
    images = first(joined["images"])
    if images is None:
        return []
    count = EntityCount(entity_id, images)
    return [(shard_id, count) for shard_id in joined["shard"]]


# ----------------------------------------------------------------------------- 3. write

@dataclass
class Decisions:
    """The global decisions every shard writer needs (small: scalars and one count per entity)."""
    filter: FilterConfig
    cutoff: Optional[float]
    entity_counts: Mapping[str, int]   # per entity: kept images after the per-image filters
    scorer: str
    kb_version: str
    run_id: str


@dataclass
class ShardOutputStats:
    """What one shard contributed to the tables; the manifest sums these."""
    stem: str
    rows: dict[str, int] = field(default_factory=lambda: {t: 0 for t in ("images", "image_entities", "rejects",
                                                                         "duplicates")})
    samples: dict[str, int] = field(default_factory=lambda: {"kept": 0, "filtered": 0, "rejected": 0})
    dropped_annotations: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    sample_reasons: dict[str, int] = field(default_factory=dict)   # reasons of whole samples dropped
    stages: dict[str, dict] = field(default_factory=dict)           # {"finalize": {rows, seconds}}
    cutoff: Optional[float] = None                                  # the quantile cutoff it wrote under


@dataclass(frozen=True)
class Target:
    """Where a run's finalize writes. Table parts go under ``tables`` with the run id in
    their names: a staging folder swapped in at publish on a local disk, the output itself
    on object storage (where the older parts are deleted at publish). Writer stats go under
    ``stats``."""
    tables: str
    stats: str
    run_id: str

    def part(self, table: str, name: str) -> str:
        return storage.join(self.tables, table, f"{name}-{self.run_id}.parquet")


class _PartWriter:
    """Appends validated rows of one table to a parquet part, batch by batch."""

    def __init__(self, target: Target, table: str, name: str):
        self.table = table
        self._sink = storage.ParquetSink(target.part(table, name), schemas.get_schema(table))
        self.rows = 0

    def write(self, rows: list[dict]) -> None:
        if rows:
            self._sink.write(schemas.from_records(rows, self.table))
            self.rows += len(rows)

    def close(self) -> None:
        self._sink.close()


def _semantic_reject(record: dict, drop: SemanticDecision) -> dict:
    shard, row = drop.nearest_survivor
    return make_reject(record, "dedup", "semantic_duplicate",
                       f"cosine {drop.similarity:.4f} to row {row} of {shard} in k-means cluster {drop.cluster}",
                       kind="filtered", cluster_id=semantic_cluster_id(drop.cluster), survivor=(shard, row))


def semantic_cluster_id(cluster: int) -> str:
    return f"semantic:{cluster}"


def _finish_record(record: dict, semantic_drop: Optional[SemanticDecision], decisions: Decisions
                   ) -> tuple[list[dict], list[dict]]:
    """(kept links best-first, reject rows) of one annotation under the decisions."""
    if semantic_drop is not None:
        return [], [_semantic_reject(record, semantic_drop)]
    links, rejects = filters.filter_links(record, decisions.filter, decisions.cutoff)
    kept, rare = filters.drop_rare_entities(record, links, decisions.entity_counts,
                                            decisions.filter.min_images_per_entity)
    rejects += rare
    if not kept:
        rejects.append(make_reject(record, "filter", "no_entities_left",
                                   "every entity of the image was filtered out", kind="filtered"))
    return kept, rejects


def duplicate_rows(shard_id: str, dedup: ShardDedup, semantic: Iterable[SemanticDecision], run_id: str
                   ) -> list[dict]:
    """The ``duplicates`` rows of one shard: its rows in clusters of copies (survivors too)."""
    rows = [{"cluster_id": d.cluster_id, "method": "phash", "source_shard": shard_id, "row_in_shard": d.row_in_shard,
             "role": d.role, "survivor_shard": d.survivor_shard, "survivor_row": d.survivor_row,
             "distance": None if d.distance is None else float(d.distance), "run_id": run_id}
            for d in dedup.rows.values() if d.role in ("survivor", "duplicate")]
    for d in semantic:
        survivor = d.nearest_survivor or (None, None)
        rows.append({"cluster_id": semantic_cluster_id(d.cluster), "method": "semantic", "source_shard": shard_id,
                     "row_in_shard": d.row_in_shard, "role": d.role, "survivor_shard": survivor[0],
                     "survivor_row": survivor[1],
                     "distance": None if d.similarity is None else 1.0 - d.similarity, "run_id": run_id})
    return sorted(rows, key=lambda r: (r["method"], r["row_in_shard"]))


def write_shard_tables(work: WorkDir, stem: str, target: Target, semantic: Mapping[int, SemanticDecision],
                       decisions: Decisions, metrics: Optional[StageMetrics] = None) -> ShardOutputStats:
    """Write one committed shard's part of images / image_entities / rejects / duplicates
    to ``target``; ``semantic`` maps its row_in_shard to semantic dedup's decision.
    ``metrics`` (a runner's counters) receives the annotation rows read (stage ``finalize``).

    Streams the annotations a batch at a time, so memory holds one batch of image bytes.
    """
    started = time.perf_counter()
    images, pairs, rejects, duplicates = (_PartWriter(target, t, f"part-{stem}")
                                          for t in ("images", "image_entities", "rejects", "duplicates"))
    stats = ShardOutputStats(stem, cutoff=decisions.cutoff)
    reasons: collections.Counter[str] = collections.Counter()
    sample_reasons: collections.Counter[str] = collections.Counter()
    shard_rejects = work.read_rejects(stem).to_pylist()   # one shard's dead letter, already stamped
    rejects.write(shard_rejects)
    for reject in shard_rejects:
        reasons[reason_key(reject)] += 1
        if reject["entity_id"] is None:
            stats.samples[reject["kind"]] += 1
            sample_reasons[reason_key(reject)] += 1
        else:
            stats.dropped_annotations += 1
    parquet = work.annotations_file(stem)
    shard_id = None
    for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS):
        image_rows, pair_rows, reject_rows = [], [], []
        for record in batch.to_pylist():
            shard_id = record["source_shard"]
            drop = semantic.get(record["row_in_shard"])
            kept, dropped = _finish_record(record, drop if drop is not None and drop.role == "duplicate" else None,
                                           decisions)
            reject_rows += [{**r, "run_id": decisions.run_id} for r in dropped]
            if kept:
                image_rows.append(tables.image_row(record, decisions.run_id))
                pair_rows += tables.image_entity_rows(record, kept, decisions.scorer, decisions.kb_version,
                                                      decisions.run_id)
                stats.samples["kept"] += 1
            else:
                stats.samples["filtered"] += 1   # semantic duplicates and rows left without entities
            stats.dropped_annotations += sum(r["entity_id"] is not None for r in dropped)
        reasons.update(reason_key(r) for r in reject_rows)
        sample_reasons.update(reason_key(r) for r in reject_rows if r["entity_id"] is None)
        images.write(image_rows)
        pairs.write(pair_rows)
        rejects.write(reject_rows)
    shard_id = shard_id or (shard_rejects[0]["source_shard"] if shard_rejects else "")
    duplicates.write(duplicate_rows(shard_id, work.read_dedup(stem), semantic.values(), decisions.run_id))
    for writer in (images, pairs, rejects, duplicates):
        writer.close()
        stats.rows[writer.table] = writer.rows
    stats.reasons = dict(sorted(reasons.items()))
    stats.sample_reasons = dict(sorted(sample_reasons.items()))
    clock = StageClock(metrics)
    clock.add("finalize", parquet.metadata.num_rows, time.perf_counter() - started)
    stats.stages = clock.to_dict()
    _write_stats(target, "shards", stem, asdict(stats))
    return stats


def _write_stats(target: Target, kind: str, name: str, stats: dict) -> None:
    storage.write_text(storage.join(target.stats, kind, f"{name}.json"), json.dumps(stats, sort_keys=True))


def entity_part_count(num_shards: int) -> int:
    """Parts of the entities table: grows like the square root of the input, so a part
    stays between a few thousand and a few hundred thousand rows at any scale."""
    return max(1, math.ceil(math.sqrt(num_shards)))


def entity_part(entity_id: str, num_parts: int) -> int:
    return zlib.crc32(entity_id.encode()) % num_parts


def write_entity_part(part: int, num_parts: int, counts: Iterable[tuple[str, int]], kb_path: str,
                      kb_version: str, target: Target) -> int:
    """Write the entities of one part (entity id, kept images), described from the KB."""
    from i2e_engine.kb.build import shared_alias_index

    index = shared_alias_index(kb_path)
    rows = [tables.entity_row({"entity_id": entity_id, **index.entity(entity_id)}, count, kb_version)
            for entity_id, count in sorted(counts)]
    tables.write_rows(rows, "entities", target.part("entities", f"part-{part:05d}-of-{num_parts:05d}"))
    _write_stats(target, "entities", f"{part:05d}", {"entities": len(rows)})
    return len(rows)


def read_stats(target: Target) -> tuple[list[dict], int]:
    """(per-shard stats, entity rows) written by the shard and entity writers."""
    def read(kind: str) -> list[dict]:
        folder = storage.join(target.stats, kind)
        found = storage.find(folder, (".json",)) if storage.isdir(folder) else []
        return [json.loads(data) for _, data in sorted(storage.read_many(found).items())]

    return read("shards"), sum(stats["entities"] for stats in read("entities"))


# ----------------------------------------------------------------------------- the sequence, once

def finalize_tables(flow: Flow, plan: "RunPlan", shards, metrics: Optional[StageMetrics] = None) -> None:
    """The finalize plan on a runner's flow: project, decide, write into ``plan.target``.
    ``shards``: the flow's collection of (shard id, stem), one per committed shard;
    ``metrics``: the runner's counters (picklable: they travel to the writers).

    Only what the steps name is captured by them (never ``plan``, which holds the lease)."""
    work, target, filter_config, dedup = plan.work, plan.target, plan.config.filter, plan.config.dedup
    kb_path, kb_version, parts = plan.kb_path, plan.kb_version, plan.entity_parts()
    template = plan.decisions(None, {})
    # 1. project, per shard: narrow rows, never image bytes
    narrow = flow.cache(flow.flat_map("Project narrow rows", shards,
                                      lambda shard: project_shard(work, shard[1], dedup.semantic)))
    # 2. GLOBAL, semantic dedup: rows grouped by k-means cluster (N/k each); one process
    # sees the row count and the bounded sample (MAX_KMEANS_SAMPLE rows); joined back by row key
    semantic = semantic_decisions(flow, narrow, dedup) if dedup.semantic else None
    survivors = narrow if semantic is None else flow.cache(_semantic_survivors(flow, narrow, semantic))
    # GLOBAL, the cutoff: two combines of at most 65,536 bin counts
    cutoff = cutoff_side(flow, survivors, filter_config.keep_top_fraction)
    # GLOBAL, per-entity counts: one (entity, count) per entity, through the runner's shuffle
    counts = flow.cache(flow.count_per_element("Images per entity", flow.flat_map(
        "Kept entity ids", survivors, lambda row, cutoff: kept_entity_ids(row, filter_config, cutoff), cutoff)))
    # GLOBAL, to the writers: each shard's semantic decisions and its entities' counts, by shard
    per_shard = entity_counts_by_shard(flow, narrow, counts)
    if semantic is not None:
        per_shard = flow.flatten("Decisions per shard", semantic, per_shard)
    # 3. write, per shard: one writer a committed shard, with its values and the cutoff
    flow.per_shard("Write shard tables", shards, per_shard,
                   lambda shard, values, cutoff: _write_shard(work, shard[1], target, template, values, cutoff,
                                                              metrics), cutoff)
    # the entities table: kept entities grouped into about sqrt(shards) parts
    kept = flow.filter("Entities kept", counts, lambda item: keeps_entity(item[1], filter_config))
    by_part = flow.group_by_key("Group entity parts", flow.map(
        "Entity part", kept, lambda item: (entity_part(item[0], parts), item)))
    flow.run("Write entities", flow.map("Write entity part", by_part, lambda part: write_entity_part(
        part[0], parts, part[1], kb_path, kb_version, target)))


def _write_shard(work: WorkDir, stem: str, target: Target, template: Decisions, values: Iterable,
                 cutoff: Optional[float], metrics: Optional[StageMetrics]) -> ShardOutputStats:
    """One shard's writer under its values: its rows' SemanticDecisions and its entities' EntityCounts."""
    values = list(values)
    semantic = {v.row_in_shard: v for v in values if isinstance(v, SemanticDecision)}
    counts = {v.entity_id: v.images for v in values if isinstance(v, EntityCount)}
    return write_shard_tables(work, stem, target, semantic, dataclasses.replace(template, cutoff=cutoff,
                                                                                entity_counts=counts), metrics)
