"""A run report's numbers, gathered from the manifest and the tables in bounded memory.

Sized for 10^9 rows: every table is read file by file and batch by batch, only the narrow
columns a number needs (scores, entity ids, reasons, row keys), into bounded structures:
fixed-bin histograms, one count per distinct ``image_count`` value, a top-k heap, and
bottom-k samples by a hash of the row key (``source_shard``, ``row_in_shard``), so the same
tables always give the same samples. Image bytes are read only for the sampled rows, and
only from the row groups that hold them.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from i2e_engine import storage
from i2e_engine.publish import read_manifest, table_uri
from i2e_engine.readers import ShardRef, detect_format, read_shard
from i2e_engine.workdir import WORK_DIR, shard_file_stem

BATCH_ROWS = 65_536
# The order in which a sample meets the stages that can drop it (``rejects.stage``).
FUNNEL_STAGES = ("read", "image", "text", "check", "dedup", "ner", "link", "score", "filter")


# ----------------------------------------------------------------------------- bounded structures

@dataclass
class Histogram:
    """Counts in ``bins`` equal bins over [lo, hi]; values outside land in the end bins."""
    lo: float
    hi: float
    bins: int
    counts: np.ndarray = None

    def __post_init__(self):
        if self.counts is None:
            self.counts = np.zeros(self.bins, dtype=np.int64)

    def add(self, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            index = np.floor((values - self.lo) / (self.hi - self.lo) * self.bins).astype(np.int64)
            self.counts += np.bincount(np.clip(index, 0, self.bins - 1), minlength=self.bins)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)


def row_hashes(shards: pa.Array, rows: pa.Array) -> np.ndarray:
    """A 64-bit hash of each row key (source_shard, row_in_shard), vectorized: crc32 of each
    distinct shard id, mixed with the row index by splitmix64. Stable across runs and runners."""
    encoded = pc.dictionary_encode(shards).combine_chunks() if isinstance(shards, pa.ChunkedArray) \
        else pc.dictionary_encode(shards)
    crcs = np.array([zlib.crc32(s.encode()) for s in encoded.dictionary.to_pylist()] or [0], dtype=np.uint64)
    key = (crcs[encoded.indices.to_numpy(zero_copy_only=False)] << np.uint64(32)) ^ \
        np.asarray(rows, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = (key + np.uint64(0x9E3779B97F4A7C15))
        key = (key ^ (key >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        key = (key ^ (key >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return key ^ (key >> np.uint64(31))


class BottomK:
    """The ``k`` items with the smallest hashes seen so far (a deterministic sample)."""

    def __init__(self, k: int):
        self.k = k
        self._heap: list[tuple[int, tuple]] = []   # (-hash, item): the largest kept hash on top

    def offer(self, hashes: np.ndarray, item: Callable[[int], tuple]) -> None:
        """Offer a batch: ``item(i)`` is the item of ``hashes[i]`` (made only for the batch's
        k smallest, so a batch costs no Python work per row)."""
        if not self.k or not len(hashes):
            return
        best = np.argpartition(hashes, self.k - 1)[: self.k] if len(hashes) > self.k else range(len(hashes))
        for i in best:
            entry = (-int(hashes[i]), item(int(i)))
            if len(self._heap) < self.k:
                heapq.heappush(self._heap, entry)
            elif entry[0] > self._heap[0][0]:
                heapq.heapreplace(self._heap, entry)

    def items(self) -> list[tuple]:
        """The sample, smallest hash first."""
        return [item for _, item in sorted(self._heap, key=lambda entry: -entry[0])]


def top_entities(batches: Iterable[pa.RecordBatch], k: int) -> list[tuple[str, str, int]]:
    """(entity_id, name, image_count) of the ``k`` entities with the most images (ties by name)."""
    order = [("image_count", "descending"), ("name", "ascending"), ("entity_id", "ascending")]
    best: list[tuple[int, str, str]] = []   # at most k after each batch
    for batch in batches:
        table = pa.Table.from_batches([batch]).select(schemas.projection("report_top_entities"))
        picked = table.take(pc.select_k_unstable(table, k, sort_keys=order)) if k else table.slice(0, 0)
        best = heapq.nsmallest(k, [*best, *((-c, n, e) for e, n, c in zip(*(picked.column(i).to_pylist()
                                                                                 for i in range(3))))])
    return [(entity_id, name, -count) for count, name, entity_id in best]


# ----------------------------------------------------------------------------- reading parts

def table_parts(out: str, table: str) -> list[str]:
    folder = table_uri(out, table)
    return storage.find(folder, (".parquet",)) if storage.isdir(folder) else []


def iter_batches(uri: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    parquet = storage.parquet_file(uri)
    yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def read_positions(uri: str, positions: Iterable[int], columns: list[str]) -> dict[int, dict]:
    """Rows of one parquet file at these positions, reading only the row groups that hold them."""
    wanted = sorted(set(positions))
    parquet = storage.parquet_file(uri)
    found, start = {}, 0
    for group in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        inside = [p for p in wanted if start <= p < start + size]
        if inside:
            rows = parquet.read_row_group(group, columns=columns)
            for p in inside:
                found[p] = rows.slice(p - start, 1).to_pylist()[0]
        start += size
    return found


def _group(keys: Iterable[tuple[str, int]]) -> dict[str, set[int]]:
    """(file or shard, position or row) pairs grouped by their first part."""
    grouped: dict[str, set[int]] = collections.defaultdict(set)
    for name, index in keys:
        grouped[name].add(index)
    return grouped


def read_picked(picked: Iterable[tuple[str, int]], columns: list[str]) -> dict[tuple[str, int], dict]:
    """Rows at (file, position) pairs, each file opened once."""
    return {(uri, position): row for uri, positions in _group(picked).items()
            for position, row in read_positions(uri, positions, columns).items()}


def read_rows_by_key(uri: str, rows_in_shard: Iterable[int], columns: list[str]) -> dict[int, list[dict]]:
    """Rows of one per-shard file whose ``row_in_shard`` is one of ``rows_in_shard`` (several
    may share one: the pairs of an image), found by a pass over that narrow column."""
    wanted = pa.array(sorted(set(rows_in_shard)), pa.int64())
    positions: list[int] = []
    offset = 0
    for batch in iter_batches(uri, ["row_in_shard"]):
        mask = pc.is_in(batch.column("row_in_shard"), value_set=wanted)
        positions += (np.flatnonzero(mask.to_numpy(zero_copy_only=False)) + offset).tolist()
        offset += batch.num_rows
    found: dict[int, list[dict]] = collections.defaultdict(list)
    for _, row in sorted(read_positions(uri, positions, ["row_in_shard", *columns]).items()):
        found[row["row_in_shard"]].append(row)
    return found


# ----------------------------------------------------------------------------- the report's data

@dataclass
class Sample:
    """One sampled row for the thumbnail grid."""
    source_shard: str
    row_in_shard: int
    reason: str = ""            # "stage/kind/reason" for a dropped row, "" for a kept one
    alt_text: str = ""
    detail: str = ""
    image: Optional[bytes] = None
    image_note: str = ""        # where the thumbnail comes from when it is not the row's own image
    entities: list[dict] = field(default_factory=list)   # name, entity_id, image_entity_score, link_score


@dataclass
class ReportData:
    out: str
    manifest: dict
    link_scores: Histogram
    image_entity_scores: Histogram
    scored_link_scores: Histogram          # every scored link before the filters (from _work)
    scored_image_entity_scores: Histogram
    entities: int
    top_entities: list[tuple[str, str, int]]
    entity_frequency: dict[int, int]       # image_count -> entities with that many images
    kept_samples: list[Sample]
    reject_samples: dict[str, list[Sample]]
    table_sample_drops: dict[str, int]     # "stage/kind/reason" -> sample rows, counted in the rejects table
    table_annotation_drops: dict[str, int]
    duplicates: dict                       # counts by method and role, distance histograms, samples


def _reason_keys(batch: pa.RecordBatch) -> pa.Array:
    return pc.binary_join_element_wise(batch.column("stage"), batch.column("kind"), batch.column("reason"), "/")


def _part_name(uri: str, run_id: str) -> Optional[str]:
    """The stem of a per-shard part of this run (``part-<stem>-<run_id>.parquet``)."""
    name = storage.name(uri)
    suffix = f"-{run_id}.parquet"
    return name[len("part-"):-len(suffix)] if name.startswith("part-") and name.endswith(suffix) else None


class _Lookup:
    """Finds a row's image and alt-text by its key: in the images table (kept rows) or in the
    committed annotations under ``_work`` (rows the finalize filters dropped)."""

    def __init__(self, out: str, run_id: str):
        self.out, self.run_id = out, run_id
        self.columns = schemas.projection("report_image_lookup")

    def files(self, shard: str) -> list[str]:
        stem = shard_file_stem(shard)
        return [storage.join(self.out, "images", f"part-{stem}-{self.run_id}.parquet"),
                storage.join(self.out, WORK_DIR, "annotations", f"{stem}.parquet")]

    def find(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], dict]:
        found = {}
        for shard, rows in _group(keys).items():
            for uri in self.files(shard):
                missing = {r for r in rows if (shard, r) not in found}
                if missing and storage.exists(uri):
                    found.update(((shard, row), matches[0])
                                 for row, matches in read_rows_by_key(uri, missing, self.columns).items())
        return found


def input_rows(keys: Iterable[tuple[str, int]], sample_ids: set[str]) -> dict[tuple[str, int], dict]:
    """Image and alt-text of rows the tables hold no bytes of (rejected before annotation),
    read again from their input shard when it is a parquet or tar file that still holds the
    same row (its sample id, a hash of the image and text, must match). Each shard is read
    once, up to the last wanted row; other inputs (folders, COCO) are not read again."""
    found = {}
    for shard, rows in sorted(_group(keys).items()):
        try:
            kind = detect_format(shard)
        except ValueError:   # the input is gone, or is not one file
            continue
        if kind not in ("parquet", "webdataset"):
            continue
        for pair in itertools.islice(read_shard(ShardRef(kind, shard, 0, None, shard)), max(rows) + 1):
            if pair["row_in_shard"] in rows and pair["sample_id"] in sample_ids:
                text = pair["text"]
                found[(shard, pair["row_in_shard"])] = {
                    "image": pair["image"],
                    "alt_text": text.decode("utf-8", "replace") if isinstance(text, bytes) else text or ""}
    return found


def _kept_samples(out: str, k: int) -> list[Sample]:
    sample = BottomK(k)
    for uri in table_parts(out, "images"):
        offset = 0
        for batch in iter_batches(uri, schemas.projection("report_row_keys")):
            hashes = row_hashes(batch.column("source_shard"), batch.column("row_in_shard"))
            sample.offer(hashes, lambda i, uri=uri, offset=offset: (uri, offset + i))
            offset += batch.num_rows
    rows = read_picked(sample.items(), schemas.projection("report_kept_samples"))
    samples = []
    pairs_folder = table_uri(out, "image_entities")
    for uri, position in sample.items():
        row = rows[(uri, position)]
        pairs = storage.join(pairs_folder, storage.name(uri))
        entities = (read_rows_by_key(pairs, [row["row_in_shard"]], schemas.projection("report_sample_entities"))
                    if storage.exists(pairs) else {})
        samples.append(Sample(row["source_shard"], row["row_in_shard"], alt_text=row["alt_text"], image=row["image"],
                              entities=sorted((e for e in entities.get(row["row_in_shard"], [])
                                               if e["source_shard"] == row["source_shard"]),
                                              key=lambda e: e["rank"])))
    return samples


def _rejects(out: str, run_id: str, per_reason: int) -> tuple[dict[str, list[Sample]], dict[str, int], dict[str, int]]:
    """Samples of each reason, and counts of sample and annotation drops by reason."""
    samples: dict[str, BottomK] = collections.defaultdict(lambda: BottomK(per_reason))
    sample_drops: collections.Counter[str] = collections.Counter()
    annotation_drops: collections.Counter[str] = collections.Counter()
    for uri in table_parts(out, "rejects"):
        offset = 0
        for batch in iter_batches(uri, schemas.projection("report_reject_counts")):
            keys = _reason_keys(batch)
            whole = batch.column("entity_id").is_null()
            for counter, mask in ((sample_drops, whole), (annotation_drops, pc.invert(whole))):
                counts = pc.value_counts(keys.filter(mask))
                counter.update({c["values"]: c["counts"] for c in counts.to_pylist()})
            hashes = row_hashes(batch.column("source_shard"), batch.column("row_in_shard").fill_null(-1))
            encoded = pc.dictionary_encode(keys)
            codes = encoded.indices.to_numpy(zero_copy_only=False)
            for code, reason in enumerate(encoded.dictionary.to_pylist()):
                index = np.flatnonzero(codes == code)
                samples[reason].offer(hashes[index], lambda i, uri=uri, offset=offset, index=index:
                                      (uri, offset + int(index[i])))
            offset += batch.num_rows
    rows = read_picked((item for picked in samples.values() for item in picked.items()),
                       schemas.projection("report_reject_samples"))
    lookup = _Lookup(out, run_id)
    picked_rows = [(reason, rows[(uri, position)]) for reason, picked in samples.items()
                   for uri, position in picked.items()]
    own = {(row["source_shard"], row["row_in_shard"]) for _, row in picked_rows if row["row_in_shard"] is not None}
    images = lookup.find(own)
    images.update(input_rows(own - set(images), {row["sample_id"] for _, row in picked_rows}))
    survivors = lookup.find((row["survivor_shard"], row["survivor_row"]) for _, row in picked_rows
                            if row["survivor_shard"] is not None
                            and (row["source_shard"], row["row_in_shard"]) not in images)
    result: dict[str, list[Sample]] = collections.defaultdict(list)
    for reason, row in picked_rows:
        found, note = images.get((row["source_shard"], row["row_in_shard"])), ""
        if found is None and row["survivor_shard"] is not None:
            found = survivors.get((row["survivor_shard"], row["survivor_row"]))
            note = "the survivor's image (this copy's input is gone)" if found else ""
        result[reason].append(Sample(
            row["source_shard"], row["row_in_shard"] if row["row_in_shard"] is not None else -1, reason=reason,
            alt_text=found["alt_text"] if found and not note else "", detail=row["detail"] or "",
            image=found["image"] if found else None, image_note=note,
            entities=[{"entity_id": row["entity_id"]}] if row["entity_id"] else []))
    return dict(result), dict(sample_drops), dict(annotation_drops)


def _score_histograms(out: str, run_id: str) -> tuple[Histogram, Histogram, Histogram, Histogram]:
    kept_link, kept_image = Histogram(0.0, 1.0, 50), Histogram(-1.0, 1.0, 200)
    all_link, all_image = Histogram(0.0, 1.0, 50), Histogram(-1.0, 1.0, 200)
    for uri in table_parts(out, "image_entities"):
        for batch in iter_batches(uri, schemas.projection("report_scores")):
            kept_link.add(batch.column("link_score").to_numpy(zero_copy_only=False))
            kept_image.add(batch.column("image_entity_score").to_numpy(zero_copy_only=False))
    # every link scored in this run's shards, before the filters: the committed annotations
    stems = {_part_name(uri, run_id) for uri in table_parts(out, "rejects")} - {None}
    for stem in sorted(stems):
        uri = storage.join(out, WORK_DIR, "annotations", f"{stem}.parquet")
        if not storage.exists(uri):
            continue
        for batch in iter_batches(uri, ["links"]):
            links = pc.list_flatten(batch.column("links"))
            all_link.add(pc.struct_field(links, "link_score").to_numpy(zero_copy_only=False))
            all_image.add(pc.struct_field(links, "image_entity_score").to_numpy(zero_copy_only=False))
    return kept_link, kept_image, all_link, all_image


def _entities(out: str, k: int) -> tuple[int, list[tuple[str, str, int]], dict[int, int]]:
    frequency: collections.Counter[int] = collections.Counter()
    total = 0

    def batches():
        nonlocal total
        for uri in table_parts(out, "entities"):
            for batch in iter_batches(uri, schemas.projection("report_top_entities")):
                total += batch.num_rows
                values, counts = np.unique(batch.column("image_count").to_numpy(), return_counts=True)
                frequency.update(dict(zip(values.tolist(), counts.tolist())))
                yield batch

    top = top_entities(batches(), k)
    return total, top, dict(sorted(frequency.items()))


def _entity_names(out: str, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    wanted, names = pa.array(sorted(ids)), {}
    for uri in table_parts(out, "entities"):
        for batch in iter_batches(uri, schemas.projection("report_entity_names")):
            found = pa.Table.from_batches([batch]).filter(pc.is_in(batch.column("entity_id"), value_set=wanted))
            names.update(zip(found.column("entity_id").to_pylist(), found.column("name").to_pylist()))
    return names


def _duplicates(out: str, run_id: str, k: int) -> dict:
    roles: collections.Counter[str] = collections.Counter()
    distances = {"phash": Histogram(0, 64, 64), "semantic": Histogram(0.0, 1.0, 50)}
    sample = BottomK(k)
    for uri in table_parts(out, "duplicates"):
        offset = 0
        for batch in iter_batches(uri, schemas.projection("report_duplicate_counts")):
            keys = pc.binary_join_element_wise(batch.column("method"), batch.column("role"), "/")
            roles.update({c["values"]: c["counts"] for c in pc.value_counts(keys).to_pylist()})
            for method, histogram in distances.items():
                mask = pc.and_(pc.equal(batch.column("method"), method), pc.equal(batch.column("role"), "duplicate"))
                histogram.add(batch.column("distance").filter(mask).to_numpy(zero_copy_only=False))
            duplicate = pc.equal(batch.column("role"), "duplicate").to_numpy(zero_copy_only=False)
            index = np.flatnonzero(duplicate)
            hashes = row_hashes(batch.column("source_shard"), batch.column("row_in_shard"))[index]
            sample.offer(hashes, lambda i, uri=uri, offset=offset, index=index: (uri, offset + int(index[i])))
            offset += batch.num_rows
    rows = list(read_picked(sample.items(), schemas.projection("report_duplicate_samples")).values())
    images = _Lookup(out, run_id).find((r["survivor_shard"], r["survivor_row"]) for r in rows if r["survivor_shard"])
    samples = []
    for row in sorted(rows, key=lambda r: (r["cluster_id"], r["source_shard"], r["row_in_shard"])):
        found = images.get((row["survivor_shard"], row["survivor_row"]))
        samples.append({**row, "image": found["image"] if found else None,
                        "alt_text": found["alt_text"] if found else ""})
    return {"roles": dict(sorted(roles.items())), "distances": distances, "samples": samples}


def gather(out: str, kept_samples: int = 48, per_reason: int = 4, top_k: int = 25,
           duplicate_samples: int = 8) -> ReportData:
    """Everything the report shows, from the output folder ``out`` (any URI)."""
    out = storage.normalize(out)
    manifest = read_manifest(out)
    run_id = manifest["run_id"]
    kept_link, kept_image, all_link, all_image = _score_histograms(out, run_id)
    total, top, frequency = _entities(out, top_k)
    kept = _kept_samples(out, kept_samples)
    rejects, sample_drops, annotation_drops = _rejects(out, run_id, per_reason)
    ids = {e["entity_id"] for s in kept for e in s.entities} | \
        {e["entity_id"] for samples in rejects.values() for s in samples for e in s.entities}
    names = _entity_names(out, ids)
    for s in [*kept, *(s for samples in rejects.values() for s in samples)]:
        for e in s.entities:
            e["name"] = names.get(e["entity_id"], e["entity_id"])
    return ReportData(out=out, manifest=manifest, link_scores=kept_link, image_entity_scores=kept_image,
                      scored_link_scores=all_link, scored_image_entity_scores=all_image, entities=total,
                      top_entities=top, entity_frequency=frequency, kept_samples=kept, reject_samples=rejects,
                      table_sample_drops=sample_drops, table_annotation_drops=annotation_drops,
                      duplicates=_duplicates(out, run_id, duplicate_samples))


def funnel(input_samples: int, drops: list[dict]) -> list[dict]:
    """The sample funnel: per stage the rows in, the rows it filtered and rejected by reason,
    and the rows out; ``drops`` are the manifest's ``sample_drops_by_reason`` rows (stage,
    kind, reason, rows). The last stage's rows out are the kept images."""
    stages = [*FUNNEL_STAGES, *sorted({d["stage"] for d in drops} - set(FUNNEL_STAGES))]
    rows_in, result = input_samples, []
    for stage in stages:
        here = [d for d in drops if d["stage"] == stage]
        if not here:
            continue
        dropped = sum(d["rows"] for d in here)
        result.append({"stage": stage, "rows_in": rows_in, "rows_out": rows_in - dropped,
                       "filtered": {d["reason"]: d["rows"] for d in here if d["kind"] == "filtered"},
                       "rejected": {d["reason"]: d["rows"] for d in here if d["kind"] == "rejected"}})
        rows_in -= dropped
    return result
