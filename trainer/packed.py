"""Packed training shards (the contract `i2e pack` writes): reading, and each rank's seeded,
exactly resumable sample order.

A packed dataset at URI ``P`` (local path, s3://, gs:// ... through ``i2e_engine.storage``)
holds ``index.json`` (the shard list with exact row counts), ``vocab.parquet`` (one row per
class) and ``shards/NNNNN.tar`` (webdataset) or ``shards/NNNNN.parquet``. Opening it reads
only the index and the vocab: O(shards + classes) memory, never O(rows).

Sample order (:class:`RankStream`) is a pure function of (seed, epoch, rank, world, buffer
size, batch size, the data):

1. epoch ``e`` permutes the shards with an RNG seeded by (seed, e); rank ``r`` of ``W`` takes
   the shards at positions r, r+W, r+2W ... of that permutation (disjoint across ranks,
   together every shard). Fewer shards than ranks is an error.
2. the rank streams its shards in that order, whole, through a shuffle buffer of
   ``buffer_size`` samples: before each draw the buffer is topped up from the stream, a
   uniformly drawn element (RNG seeded by (seed, e, r)) leaves it, the last element fills its
   slot.
3. every rank yields the same number of fixed-size batches in epoch ``e``:
   ``epoch_steps = min over ranks of (rows of the rank's shards) // batch``; what is left on
   a rank after that (at most its surplus rows + the buffer) is dropped for this epoch, and
   epoch e+1 starts with an empty buffer and a new permutation.

Exact resume: after every batch the stream reports a :class:`Position`: epoch, batches
yielded in the epoch, the next (shard, offset) to read, the buffer RNG's state and the
buffer's contents as (shard, offset) references. Restoring re-reads only those referenced
samples (at most ``buffer_size``, from the few shards the buffer spans) and skips to
(shard, offset) in the current shard (reading, not decoding, at most one shard), so a
resumed stream continues with exactly the samples an unbroken one would yield. The position
is O(buffer_size) small integers.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np

import schemas
from i2e_engine import storage

FORMAT, FORMAT_VERSION = schemas.PACKED_FORMAT, schemas.PACKED_FORMAT_VERSION
SHARD_FORMATS = ("webdataset", "parquet")


class PackedError(ValueError):
    """A packed dataset that is missing, incomplete or not what the contract says."""


@dataclass
class PackedDataset:
    uri: str
    index: dict
    shard_uris: list[str]
    shard_rows: np.ndarray            # (S,) int64
    entity_ids: list[str]             # (C,) in class_id order
    names: list[str]
    descriptions: list[str]
    image_count: np.ndarray           # (C,) int64

    @property
    def shard_format(self) -> str:
        return self.index["shard_format"]

    @property
    def num_classes(self) -> int:
        return len(self.entity_ids)

    @property
    def rows(self) -> int:
        return int(self.shard_rows.sum())

    def classes_fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.entity_ids).encode()).hexdigest()[:16]

    def manifest(self) -> dict:
        """What a checkpoint records about its data (no per-shard list: O(1))."""
        keys = ("format_version", "shard_format", "rows", "seed", "image_size", "num_classes",
                "classes_fingerprint", "tables", "tables_manifest_sha256", "created_by", "runner")
        return {"packed": self.uri, "num_samples": self.rows, "shards": len(self.shard_uris),
                **{k: self.index.get(k) for k in keys}}


def open_packed(uri: str) -> PackedDataset:
    """Read ``index.json`` and ``vocab.parquet`` of the packed dataset at ``uri``."""
    root = storage.normalize(uri)
    index_uri = storage.join(root, "index.json")
    if not storage.isfile(index_uri):
        raise PackedError(f"{root}: no index.json (not a packed dataset, or `i2e pack` has not finished)")
    try:
        index = json.loads(storage.read_text(index_uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PackedError(f"{index_uri} is corrupted: {error}") from error
    if index.get("format") != FORMAT or index.get("format_version") != FORMAT_VERSION:
        raise PackedError(f"{index_uri}: format {index.get('format')!r} v{index.get('format_version')}, "
                          f"expected {FORMAT!r} v{FORMAT_VERSION}")
    if index.get("shard_format") not in SHARD_FORMATS:
        raise PackedError(f"{index_uri}: shard_format {index.get('shard_format')!r} not in {SHARD_FORMATS}")
    shards = index.get("shards") or []
    if not shards:
        raise PackedError(f"{index_uri}: no shards")
    filesystem, vocab_path = storage.arrow_filesystem(storage.join(root, index.get("vocab", "vocab.parquet")))
    try:
        vocab = schemas.read_table(vocab_path, "vocab", filesystem=filesystem)
    except (schemas.SchemaError, OSError) as error:
        raise PackedError(f"{root}: vocab: {error}") from error
    class_id = vocab.column("class_id").to_numpy()
    if not np.array_equal(class_id, np.arange(len(class_id))):
        raise PackedError(f"{root}/vocab.parquet: class_id is not 0..C-1 in order")
    ds = PackedDataset(root, index, [storage.join(root, s["path"]) for s in shards],
                       np.asarray([int(s["rows"]) for s in shards], dtype=np.int64),
                       vocab.column("entity_id").to_pylist(),
                       [v or "" for v in vocab.column("name").to_pylist()],
                       [v or "" for v in vocab.column("description").to_pylist()],
                       vocab.column("image_count").to_numpy().astype(np.int64))
    if index.get("classes_fingerprint") not in (None, ds.classes_fingerprint()):
        raise PackedError(f"{root}: vocab.parquet does not match index.json's classes_fingerprint")
    return ds

# ------------------------------------------------------------------------------ shard reading


def _tar_samples(uri: str, start: int) -> Iterator[dict]:
    with storage.open_file(uri) as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
        current, sample = None, {}
        for member in tar:
            if not member.isfile():
                continue
            stem, _, ext = member.name.rpartition("/")[2].partition(".")
            position = int(stem)
            if position != current:
                if current is not None and current >= start:
                    yield sample
                current, sample = position, {}
            if position < start:
                continue  # skipped: stream past its bytes without keeping them
            data = tar.extractfile(member).read()
            if ext == "jpg":
                sample["jpg"] = data
            elif ext == "json":
                sample.update(json.loads(data))
        if current is not None and current >= start:
            yield sample


def _parquet_samples(uri: str, start: int) -> Iterator[dict]:
    pf = storage.parquet_file(uri)
    first_row = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if first_row + n > start:
            try:
                group = schemas.validate(pf.read_row_group(g), "packed")
            except schemas.SchemaError as error:
                raise PackedError(f"{uri}: {error}") from error
            yield from group.slice(max(0, start - first_row)).to_pylist()
        first_row += n


def iter_shard(uri: str, shard_format: str, start: int = 0) -> Iterator[dict]:
    """The samples of one shard from position ``start`` on, streamed (one tar member or one
    parquet row group in memory); each a dict of the packed fields."""
    reader = _tar_samples if shard_format == "webdataset" else _parquet_samples
    return reader(uri, start)


def read_samples(uri: str, shard_format: str, offsets) -> dict[int, dict]:
    """The samples at the given positions of one shard (reading up to the largest)."""
    wanted, out = set(int(o) for o in offsets), {}
    if not wanted:
        return out
    first = min(wanted)  # parquet row groups before it are never read; tar members are skipped unkept
    for position, sample in enumerate(iter_shard(uri, shard_format, first), start=first):
        if position in wanted:
            out[position] = sample
        if len(out) == len(wanted):
            break
    return out

# ------------------------------------------------------------------------------ sample order


def rank_shards(num_shards: int, world: int, rank: int, seed: int, epoch: int) -> np.ndarray:
    if num_shards < world:
        raise PackedError(f"{num_shards} shards cannot be split over {world} ranks: pack with smaller "
                          f"shards (more shards than ranks) or train with at most {num_shards} workers")
    return np.random.default_rng([seed, epoch]).permutation(num_shards)[rank::world]


def epoch_steps(shard_rows: np.ndarray, world: int, batch: int, seed: int, epoch: int) -> int:
    """Batches every rank yields in ``epoch``: the smallest rank's rows // batch."""
    rows = min(int(shard_rows[rank_shards(len(shard_rows), world, r, seed, epoch)].sum()) for r in range(world))
    if rows < batch:
        raise PackedError(f"a rank gets {rows} rows in epoch {epoch}, less than one batch of {batch}")
    return rows // batch


@dataclass
class Position:
    """Where a rank's stream stands after a batch; JSON-able (``asdict``)."""
    epoch: int = 0
    step: int = 0                      # batches yielded in this epoch
    shard: int = 0                     # index into this epoch's rank shard list: the next to read ...
    offset: int = 0                    # ... and the next sample in it
    rng: dict | None = None            # the shuffle buffer RNG's bit_generator.state (None: fresh)
    buffer: list = field(default_factory=list)   # [[shard, offset], ...] in buffer order

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Position":
        return cls(**data)


class RankStream:
    """One rank's batches of raw samples (dicts with ``jpg`` bytes), epoch after epoch,
    each with the :class:`Position` after it."""

    def __init__(self, ds: PackedDataset, *, seed: int, rank: int, world: int, batch_size: int,
                 buffer_size: int, position: Position | None = None):
        if buffer_size < 1:
            raise ValueError("shuffle buffer_size must be >= 1")
        self.ds, self.seed, self.rank, self.world = ds, seed, rank, world
        self.batch_size, self.buffer_size = batch_size, buffer_size
        self.start = position or Position()
        rank_shards(len(ds.shard_rows), world, rank, seed, 0)  # fail early on too few shards

    def _reader(self, shards: np.ndarray, k: int, offset: int) -> Iterator[tuple[int, int, dict]]:
        for i in range(k, len(shards)):
            uri, rows = self.ds.shard_uris[shards[i]], int(self.ds.shard_rows[shards[i]])
            n = offset
            for sample in iter_shard(uri, self.ds.shard_format, offset):
                if n >= rows:
                    raise PackedError(f"{uri} holds more than the {rows} rows index.json says")
                yield i, n, sample
                n += 1
            if n != rows:
                raise PackedError(f"{uri} holds {n} rows, index.json says {rows}")
            offset = 0

    def _restore(self, shards: np.ndarray, refs: list) -> list[dict]:
        by_shard: dict[int, list[int]] = {}
        for k, off in refs:
            by_shard.setdefault(int(k), []).append(int(off))
        found = {}
        for k, offsets in by_shard.items():
            for off, sample in read_samples(self.ds.shard_uris[shards[k]], self.ds.shard_format, offsets).items():
                sample["_ref"] = (k, off)
                found[(k, off)] = sample
        return [found[(int(k), int(off))] for k, off in refs]

    def __iter__(self) -> Iterator[tuple[list[dict], Position]]:
        pos = self.start
        while True:
            e = pos.epoch
            steps = epoch_steps(self.ds.shard_rows, self.world, self.batch_size, self.seed, e)
            shards = rank_shards(len(self.ds.shard_rows), self.world, self.rank, self.seed, e)
            if pos.step >= steps:  # resumed at the end of an epoch: the next one starts afresh
                pos = Position(epoch=e + 1)
                continue
            rng = np.random.default_rng([self.seed, e, self.rank])
            if pos.rng is not None:
                rng.bit_generator.state = pos.rng
            buffer = self._restore(shards, pos.buffer)
            step, k, off = pos.step, pos.shard, pos.offset
            reader = self._reader(shards, k, off)
            while step < steps:
                batch = []
                while len(batch) < self.batch_size:
                    while len(buffer) < self.buffer_size:
                        item = next(reader, None)
                        if item is None:
                            break
                        i, n, sample = item
                        sample["_ref"] = (i, n)
                        buffer.append(sample)
                        k, off = (i, n + 1) if n + 1 < self.ds.shard_rows[shards[i]] else (i + 1, 0)
                    j = int(rng.integers(len(buffer)))
                    batch.append(buffer[j])
                    buffer[j] = buffer[-1]
                    buffer.pop()
                step += 1
                yield batch, Position(e, step, k, off, rng.bit_generator.state,
                                      [list(s["_ref"]) for s in buffer])
            reader.close()
            pos = Position(epoch=e + 1)
