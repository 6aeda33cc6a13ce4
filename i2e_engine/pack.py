"""`i2e pack`: I2E tables -> globally shuffled, resized training shards with integer class ids.

The format is ``schemas/`` tables ``packed`` and ``vocab`` (schema v5) plus ``index.json``;
the trainer's loader reads nothing else. A pack at ``P`` (any URI) holds ``P/index.json``
(written last: its presence means the pack is complete), ``P/vocab.parquet`` and
``P/shards/NNNNN.tar`` (webdataset) or ``.parquet``.

The unit of work is a *table part*: the ``images`` and ``image_entities`` files the engine
wrote for one input shard (same file name in both folders, so all pairs of an image are in
the part that holds its bytes). Runners only place the steps below; every decision is here.

1. **Decide, on narrow data** (per part, then summed; only keys, counts and score bins
   move): the exact score quantile of ``keep_top_fraction`` (``finalize.ExactQuantile``'s
   two passes of bin counts, so every runner finds the same cutoff), the distinct images
   of each entity after the score filter (a group-by, O(entities)), and the kept images
   after every pair filter, which fixes ``num_shards = ceil(kept / shard_rows)``.
2. **Stage** (pass 1, one task per part): the part's image rows are read in batches of
   READ_BATCH_ROWS, images with a surviving entity are decoded with the engine's safe
   decoder (JPEGs at a reduced DCT scale), resized once so the shorter side is
   ``image_size`` (never upscaled) and re-encoded; each gets ``order_key`` = a hash of
   (seed, image_id) and destination shard ``order_key % num_shards``. Rows go to
   ``P/_work/staging/<part>.parquet`` in sorted runs of at most STAGING_RUN_ROWS rows
   (sorted by destination, then order key) cut into row groups of STAGING_ROW_GROUP rows,
   so memory holds one run and a reader of one destination skips the other row groups by
   their statistics.
3. **Vocab** (global, one process, O(entities)): the entities actually staged, counted from
   the staging files' narrow ``entity_ids`` column, sorted -> class ids; names and
   descriptions from the tables' ``entities``. Counting after decoding makes ``image_count``
   exact even when an image fails to decode.
4. **Write shards** (pass 2, one task per destination shard): the shard's rows are read
   from every staging file (row groups whose ``dest`` statistics exclude it are skipped),
   sorted by order key, mapped to class ids and written; memory holds one shard.
5. **Finish**: check the accounting (kept + dropped = input, for pairs and images, and the
   inputs equal the tables' manifest), write ``index.json`` atomically, delete ``_work``.

Resume. Each part of pass 1 and each shard of pass 2 ends with a completion marker
(``_work/staged/<part>.json``, ``_work/written/<shard>.json``: the task's result with its
counts, written after its files). A killed pack rerun with the same config over the same
tables, by the same pack code (``_work/fingerprint.json``), keeps those tasks and does the
rest; any other rerun starts over. The narrow decisions are recomputed (they are cheap and
deterministic), so the resumed pack is byte for byte the pack an unbroken run writes.

Costs at scale. Image bytes never cross a runner shuffle: they are read once from the
tables, written twice (staging, final shard) and read once more from staging. Pass 2 opens
every staging file's footer once per shard: M parts x R shards footer reads (at 10^9 rows,
10^5 parts and R = 10^6 shards of 1,000 rows that is 10^11 small reads; use larger
``shard_rows`` there, which divides R), plus only the row groups that hold the shard.
The shuffle order is a function of (seed, image_id) alone: a seeded random permutation,
the same on every runner and for any processing order.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import math
import tarfile
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Optional, Protocol, Sequence, TypeVar

import pyarrow as pa
from PIL import Image

import schemas
from i2e_engine import __version__, finalize, images, storage, tables
from i2e_engine.finalize import ExactQuantile
from i2e_engine.workdir import code_digest, package_versions

FORMAT, FORMAT_VERSION = schemas.PACKED_FORMAT, schemas.PACKED_FORMAT_VERSION
SHARD_FORMATS = ("webdataset", "parquet")
WORK_DIR = "_work"
READ_BATCH_ROWS = 64        # image rows (original bytes) a pass-1 task holds at once
STAGING_RUN_ROWS = 1024     # resized images a pass-1 task holds before writing a sorted run
STAGING_ROW_GROUP = 64      # small row groups: a shard's reader skips the others by statistics
PACKED_ROW_GROUP = 256      # the contract: parquet shards have row groups of at most 256 rows
PAIR_COLUMNS = ["image_id", "entity_id", "image_entity_score", "rank", "source_shard", "row_in_shard"]
IMAGE_COLUMNS = ["image_id", "source_shard", "row_in_shard", "alt_text", "image"]

# The engine code and packages that decide a staged image or a written shard: part of the
# fingerprint under which a killed pack's committed tasks may be reused.
PACK_CODE = ("pack.py", "images.py", "finalize.py")
PACK_PACKAGES = ("pillow", "pyarrow")

T = TypeVar("T")
RowKey = tuple[str, int]     # (source_shard, row_in_shard): the engine's key of an input row
Label = tuple[str, float]    # (entity_id, image_entity_score)


class PackError(RuntimeError):
    """A pack cannot be made as asked (refused, or its counts do not add up)."""


class PackExistsError(PackError):
    """The output holds a complete pack made with another config or other tables."""


@dataclass
class PackConfig:
    """What `i2e pack` makes. Every field is in ``index.json``; a rerun with the same config
    over the same tables is a no-op, another one refuses unless told to overwrite."""
    tables: str                                     # the I2E tables (an `i2e build` output), any URI
    output: str                                     # the pack folder P, any URI
    min_image_entity_score: Optional[float] = None  # drop pairs scoring below this
    keep_top_fraction: Optional[float] = None       # or keep the top fraction of all pair scores (exact quantile)
    min_images_per_entity: int = 1                  # drop entities with fewer images after the score filter
    image_size: int = 256                           # shorter side of every packed image (never upscaled)
    jpeg_quality: int = 90
    shard_rows: int = 1000                          # target samples a shard (they vary a little: hash buckets)
    shard_format: str = "webdataset"                # "webdataset" (tar) or "parquet"
    seed: int = 0                                   # the shuffle's seed
    max_labels: int = 8                             # most classes an image keeps (best rank first)

    def __post_init__(self) -> None:
        if self.min_image_entity_score is not None and self.keep_top_fraction is not None:
            raise ValueError("give a score threshold or a top fraction, not both")
        if self.keep_top_fraction is not None and not 0.0 < self.keep_top_fraction <= 1.0:
            raise ValueError(f"keep_top_fraction must be in (0, 1], got {self.keep_top_fraction}")
        if self.shard_format not in SHARD_FORMATS:
            raise ValueError(f"shard_format must be one of {SHARD_FORMATS}, got {self.shard_format!r}")
        for name in ("min_images_per_entity", "image_size", "shard_rows", "max_labels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def normalized(self) -> "PackConfig":
        """The same config with absolute paths (what workers elsewhere and the index need)."""
        return dataclasses.replace(self, tables=storage.normalize(self.tables), output=storage.normalize(self.output))


@dataclass(frozen=True)
class Part:
    """One table part: the ``images`` and ``image_entities`` files of one input shard (either
    may be missing: a table with no rows has only an empty part)."""
    name: str
    images: Optional[str]
    pairs: Optional[str]


@dataclass
class PackPlan:
    """A pack about to run (or, when ``existing`` is set, one already complete)."""
    config: PackConfig
    parts: list[Part]
    manifest: dict                  # the tables' manifest.json
    manifest_sha256: str
    existing: Optional[dict] = None  # the index of a complete, identical pack: nothing to do
    resumed: dict[str, int] = field(default_factory=dict)   # step -> tasks a killed run committed

    @property
    def out(self) -> str:
        return self.config.output

    @property
    def fingerprint(self) -> str:
        """What this pack's tasks depend on: config, tables (their manifest's bytes), the pack
        code and the image packages. A killed run's work is reused only under the same one."""
        relevant = {"config": self.config.to_dict(), "tables_manifest_sha256": self.manifest_sha256,
                    "format_version": FORMAT_VERSION, "code": code_digest(PACK_CODE),
                    "packages": package_versions(PACK_PACKAGES)}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    def work_path(self, *parts: str) -> str:
        return storage.join(self.out, WORK_DIR, *parts)

    def staging_path(self, part: Part) -> str:
        return self.work_path("staging", f"{part.name}.parquet")

    def shard_path(self, shard_id: int) -> str:
        return storage.join(self.out, shard_relative_path(shard_id, self.config.shard_format))


def shard_relative_path(shard_id: int, shard_format: str) -> str:
    return f"shards/{shard_id:05d}." + ("tar" if shard_format == "webdataset" else "parquet")


def _table_parts(tables_uri: str, table: str) -> dict[str, str]:
    folder = storage.join(tables_uri, table)
    found = storage.find(folder, (".parquet",)) if storage.isdir(folder) else []
    return {storage.name(uri)[:-len(".parquet")]: uri for uri in found}


def list_parts(tables_uri: str) -> list[Part]:
    """The table parts, matched by file name (the engine names both files of a shard alike)."""
    image_parts, pair_parts = _table_parts(tables_uri, "images"), _table_parts(tables_uri, "image_entities")
    return [Part(name, image_parts.get(name), pair_parts.get(name)) for name in sorted({*image_parts, *pair_parts})]


def _remove_pack(out: str) -> None:
    """Delete what a pack writes under ``out`` (the index first, so no reader sees a half pack)."""
    for name in ("index.json", "vocab.parquet", "shards", WORK_DIR):
        storage.remove(storage.join(out, name))


# A task's marker holds its result; one folder per step.
STEPS = {"staged": "table parts staged", "written": "shards written"}


def _resume_or_start(plan: PackPlan) -> None:
    """Keep a killed run's committed tasks when its work has this plan's fingerprint; else
    clear the output and start the work under this plan's fingerprint."""
    fingerprint, fingerprint_uri = plan.fingerprint, plan.work_path("fingerprint.json")
    if storage.exists(fingerprint_uri) and json.loads(storage.read_text(fingerprint_uri)) == fingerprint:
        plan.resumed = {step: len(storage.find(plan.work_path(step), (".json",)))
                        for step in STEPS if storage.isdir(plan.work_path(step))}
        for leftover in storage.listdir(storage.join(plan.out, "shards"), prefix="."):
            storage.remove(leftover)   # a killed local write's hidden temp file
        return
    _remove_pack(plan.out)
    storage.write_text(fingerprint_uri, json.dumps(fingerprint))


def _once(plan: PackPlan, step: str, name: str, result_type: type[T], make: Callable[[], T]) -> T:
    """``make()`` for one task, done once per pack: its result is saved as the task's marker
    after its files are written (so a marker means whole files), and a resumed run returns
    the saved result instead of doing the task again. A retried task redoes it the same way."""
    marker = plan.work_path(step, f"{name}.json")
    if storage.exists(marker):
        return result_type(**json.loads(storage.read_text(marker)))
    result = make()
    storage.write_text(marker, json.dumps(dataclasses.asdict(result), sort_keys=True))
    return result


def plan_pack(config: PackConfig, overwrite: bool = False) -> PackPlan:
    """Check the config against the tables and the output folder; resume a killed run of the
    same pack, or clear what another one left.

    A complete pack made with the same config from the same tables (same manifest bytes)
    comes back as ``existing``; a complete pack made otherwise is refused unless
    ``overwrite``. A killed run of this same pack is resumed (``resumed`` counts what it
    committed); anything else in the output's pack files is cleared.
    """
    config = config.normalized()
    manifest_uri = storage.join(config.tables, "manifest.json")
    if not storage.exists(manifest_uri):
        raise FileNotFoundError(f"{manifest_uri} not found; is {config.tables} the output of a finished `i2e build`?")
    manifest_bytes = storage.read_bytes(manifest_uri)
    plan = PackPlan(config=config, parts=[], manifest=json.loads(manifest_bytes),
                    manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest())
    index_uri = storage.join(config.output, "index.json")
    if storage.exists(index_uri):
        if not overwrite:
            index = json.loads(storage.read_text(index_uri))
            if index.get("config") == config.to_dict() and index.get("tables_manifest_sha256") == plan.manifest_sha256:
                plan.existing = index
                return plan
            raise PackExistsError(f"{config.output} holds a pack made with another config or other tables; "
                                  "use another --output, or --overwrite to replace it")
        _remove_pack(config.output)   # overwrite a complete pack: start over
    _resume_or_start(plan)
    plan.parts = list_parts(config.tables)
    return plan


# ----------------------------------------------------------------------------- 1. decide (narrow)

def read_pairs(part: Part) -> list[dict]:
    """The narrow columns of a part's ``image_entities`` (no image bytes; about 150 bytes a pair)."""
    if part.pairs is None:
        return []
    return tables.read_file(part.pairs, "image_entities", columns=PAIR_COLUMNS).to_pylist()


def score_bins(part: Part, high_bin: Optional[int] = None) -> Iterator[tuple[int, int]]:
    """(bin, count) of the part's pair scores for :class:`finalize.ExactQuantile`: per high
    bin (pass 1), or, given ``high_bin``, per low bin of the scores inside it (pass 2)."""
    keys = (ExactQuantile.key(pair["image_entity_score"]) for pair in read_pairs(part))
    if high_bin is None:
        counts = collections.Counter(ExactQuantile.high(key) for key in keys)
    else:
        counts = collections.Counter(ExactQuantile.low(key) for key in keys if ExactQuantile.high(key) == high_bin)
    return iter(counts.items())


@dataclass(frozen=True)
class Decisions:
    """The global decisions every part needs: small, except the per-entity counts
    (O(entities), broadcast to the tasks)."""
    threshold: Optional[float]             # pairs scoring below it are dropped
    threshold_reason: str                  # score_below_threshold or score_below_quantile
    entity_counts: Optional[Mapping[str, int]] = None  # images per entity after the score filter
    num_shards: int = 0


def score_decision(config: PackConfig, cutoff: Optional[float]) -> Decisions:
    """The score filter: the fixed threshold, or the quantile's ``cutoff`` (None when not asked)."""
    if config.keep_top_fraction is not None:
        return Decisions(cutoff, "score_below_quantile")
    return Decisions(config.min_image_entity_score, "score_below_threshold")


def label_images(pairs: Iterable[dict], config: PackConfig, decisions: Decisions
                 ) -> tuple[dict[RowKey, list[Label]], collections.Counter]:
    """Each image's kept labels (best rank first) and the dropped pairs by reason. Every pair
    gets one fate, in this order: a repeat of an entity already on the image
    (``duplicate_entity``), the score filter, then, once the per-entity counts are known,
    ``entity_below_min_images`` and ``beyond_max_labels``."""
    by_image: dict[RowKey, list[dict]] = collections.defaultdict(list)
    for pair in pairs:
        by_image[(pair["source_shard"], pair["row_in_shard"])].append(pair)
    labels: dict[RowKey, list[Label]] = {}
    dropped: collections.Counter = collections.Counter()
    counts = decisions.entity_counts
    for key, image_pairs in by_image.items():
        kept: list[Label] = []
        seen: set[str] = set()
        for pair in sorted(image_pairs, key=lambda p: (p["rank"], p["entity_id"])):
            entity, score = pair["entity_id"], pair["image_entity_score"]
            if entity in seen:
                dropped["duplicate_entity"] += 1
            elif decisions.threshold is not None and score < decisions.threshold:
                dropped[decisions.threshold_reason] += 1
            elif counts is not None and counts.get(entity, 0) < config.min_images_per_entity:
                dropped["entity_below_min_images"] += 1
            elif counts is not None and len(kept) >= config.max_labels:
                dropped["beyond_max_labels"] += 1
            else:
                kept.append((entity, score))
            seen.add(entity)
        if kept:
            labels[key] = kept
    return labels, dropped


def entity_image_counts(part: Part, config: PackConfig, decisions: Decisions) -> Iterator[tuple[str, int]]:
    """(entity_id, images of this part carrying it after the score filter); summed over parts
    (an image's pairs are all in its part) this is the count ``min_images_per_entity`` reads."""
    labels, _ = label_images(read_pairs(part), config, decisions)
    return iter(collections.Counter(entity for kept in labels.values() for entity, _ in kept).items())


def kept_image_count(part: Part, config: PackConfig, decisions: Decisions) -> int:
    """Images of this part with a label left after every pair filter (before decoding)."""
    return len(label_images(read_pairs(part), config, decisions)[0])


def with_counts(decisions: Decisions, entity_counts: Mapping[str, int]) -> Decisions:
    return dataclasses.replace(decisions, entity_counts=dict(entity_counts))


def with_shards(decisions: Decisions, kept_images: int, config: PackConfig) -> Decisions:
    """num_shards = ceil(kept images / shard_rows): shards of about shard_rows samples."""
    return dataclasses.replace(decisions, num_shards=math.ceil(kept_images / config.shard_rows))


def order_key(seed: int, image_id: str) -> int:
    """A sample's place in the shuffle: 63 bits of blake2b(seed, image_id) (fits a signed int64)."""
    digest = hashlib.blake2b(f"{seed}\0{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


# ----------------------------------------------------------------------------- 2. stage (pass 1)

def resize_image(data: bytes, image_size: int, quality: int,
                 limits: images.ImageLimits = images.ImageLimits()) -> tuple[bytes, int, int]:
    """(JPEG bytes, width, height): ``data`` decoded under the engine's limits (a JPEG at a
    reduced DCT scale, see ``images.decode_rgb``), resized so its shorter side is
    ``image_size`` (never upscaled), RGB, re-encoded; raises ImageRejected."""
    image = images.decode_rgb(data, limits, min_side=image_size)
    width, height = image.size
    target = (width, height) if min(width, height) <= image_size else (
        (image_size, max(1, round(height * image_size / width))) if width <= height
        else (max(1, round(width * image_size / height)), image_size))
    if image.size != target:
        image = image.resize(target, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue(), target[0], target[1]


@dataclass
class PartResult:
    """What one part contributed; the index sums these."""
    name: str
    staging: Optional[str]
    input_images: int = 0
    input_pairs: int = 0
    kept_images: int = 0
    kept_pairs: int = 0
    dropped_images: dict[str, int] = field(default_factory=dict)
    dropped_pairs: dict[str, int] = field(default_factory=dict)


def _staging_order(row: dict) -> tuple:
    return row["dest"], row["order_key"], row["key"], row["source_shard"], row["row_in_shard"]


class _StagingWriter:
    """A part's staging file, written in sorted runs of at most STAGING_RUN_ROWS rows."""

    def __init__(self, uri: str):
        self._sink = storage.ParquetSink(uri, schemas.get_schema("pack_staging"))
        self._run: list[dict] = []

    def add(self, row: dict) -> None:
        self._run.append(row)
        if len(self._run) >= STAGING_RUN_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._run:
            table = schemas.from_records(sorted(self._run, key=_staging_order), "pack_staging")
            for start in range(0, table.num_rows, STAGING_ROW_GROUP):   # one row group a write
                self._sink.write(table.slice(start, STAGING_ROW_GROUP))
            self._run = []

    def close(self) -> None:
        self.flush()
        self._sink.close()

    def abort(self) -> None:
        self._sink.abort()


def stage_part(plan: PackPlan, part: Part, decisions: Decisions) -> PartResult:
    """Pass 1 for one part: label its images, resize the kept ones and write them to its
    staging file, sorted by (destination shard, order key). Counts every input image and
    pair once: kept, or dropped with a reason. Done once per pack (a killed run's staged
    part is kept)."""
    return _once(plan, "staged", part.name, PartResult, lambda: _stage_part(plan, part, decisions))


def _stage_part(plan: PackPlan, part: Part, decisions: Decisions) -> PartResult:
    config = plan.config
    pairs = read_pairs(part)
    labels, dropped_pairs = label_images(pairs, config, decisions)
    result = PartResult(part.name, plan.staging_path(part), input_pairs=len(pairs))
    dropped_images: collections.Counter = collections.Counter()
    writer = _StagingWriter(result.staging)
    try:
        if part.images is not None:
            parquet = storage.parquet_file(part.images)
            for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=IMAGE_COLUMNS):
                for row in batch.to_pylist():
                    result.input_images += 1
                    kept = labels.pop((row["source_shard"], row["row_in_shard"]), None)
                    if kept is None:
                        dropped_images["no_entity_left"] += 1
                        continue
                    try:
                        jpg, width, height = resize_image(row["image"], config.image_size, config.jpeg_quality)
                    except images.ImageRejected:
                        dropped_images["undecodable_image"] += 1
                        dropped_pairs["undecodable_image"] += len(kept)
                        continue
                    key = order_key(config.seed, row["image_id"])
                    writer.add({"dest": key % decisions.num_shards, "order_key": key, "key": row["image_id"],
                                "jpg": jpg, "width": width, "height": height,
                                "entity_ids": [entity for entity, _ in kept], "scores": [s for _, s in kept],
                                "alt_text": row["alt_text"], "source_shard": row["source_shard"],
                                "row_in_shard": row["row_in_shard"]})
                    result.kept_images += 1
                    result.kept_pairs += len(kept)
            if result.input_images != parquet.metadata.num_rows:
                raise PackError(f"{part.images}: its footer says {parquet.metadata.num_rows} rows, "
                                f"{result.input_images} were read")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    # Pairs whose image row is not in the part's images file (none in the engine's tables).
    dropped_pairs["image_not_in_tables"] += sum(len(kept) for kept in labels.values())
    result.dropped_pairs = {k: v for k, v in sorted(dropped_pairs.items()) if v}
    result.dropped_images = dict(sorted(dropped_images.items()))
    return result


# ----------------------------------------------------------------------------- 3. vocab (global)

def staged_entity_counts(staging_uri: str) -> Iterator[tuple[str, int]]:
    """(entity_id, staged images carrying it) of one staging file (its narrow column only)."""
    counts: collections.Counter = collections.Counter()
    for batch in storage.parquet_file(staging_uri).iter_batches(batch_size=4096, columns=["entity_ids"]):
        for entity_ids in batch.column("entity_ids").to_pylist():
            counts.update(entity_ids)
    return iter(counts.items())


def write_vocab(plan: PackPlan, image_counts: Mapping[str, int]) -> dict[str, int]:
    """GLOBAL, one process, O(entities): class ids = the staged entity ids sorted; writes
    ``P/vocab.parquet`` (schema ``vocab``) and returns entity_id -> class_id."""
    kept = sorted(entity for entity, count in image_counts.items() if count > 0)
    wanted = set(kept)
    entities = tables.read_output(plan.config.tables, "entities", ["entity_id", "name", "description"])
    known = {row["entity_id"]: row for row in entities.to_pylist() if row["entity_id"] in wanted}
    missing = wanted - known.keys()
    if missing:
        raise PackError(f"{len(missing)} packed entities are not in {plan.config.tables}/entities "
                        f"(e.g. {sorted(missing)[0]!r}); the tables are inconsistent")
    rows = [{"class_id": class_id, "entity_id": entity, "name": known[entity]["name"],
             "description": known[entity]["description"], "image_count": int(image_counts[entity])}
            for class_id, entity in enumerate(kept)]
    tables.write_rows(rows, "vocab", storage.join(plan.out, "vocab.parquet"))
    return {entity: class_id for class_id, entity in enumerate(kept)}


def classes_fingerprint(entity_ids_in_class_order: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(entity_ids_in_class_order).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- 4. write shards (pass 2)

def _shard_rows(staging_uris: Sequence[str], shard_id: int) -> list[dict]:
    """The staged rows bound for ``shard_id``; row groups whose statistics exclude it are not read."""
    rows = []
    for uri in staging_uris:
        parquet = storage.parquet_file(uri)
        dest_column = parquet.schema_arrow.get_field_index("dest")
        for group in range(parquet.num_row_groups):
            stats = parquet.metadata.row_group(group).column(dest_column).statistics
            if stats is not None and stats.has_min_max and not stats.min <= shard_id <= stats.max:
                continue
            rows += [row for row in parquet.read_row_group(group).to_pylist() if row["dest"] == shard_id]
    return rows


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)     # fixed metadata: the same samples give the same bytes
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    tar.addfile(info, io.BytesIO(data))


def webdataset_bytes(samples: Sequence[dict]) -> bytes:
    """A webdataset tar: ``{i:09d}.jpg`` and ``{i:09d}.json`` (every other field) per sample, in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for position, sample in enumerate(samples):
            meta = {name: value for name, value in sample.items() if name != "jpg"}
            _tar_member(tar, f"{position:09d}.jpg", sample["jpg"])
            _tar_member(tar, f"{position:09d}.json",
                        json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return buffer.getvalue()


@dataclass
class ShardResult:
    shard_id: int
    path: str      # relative to the pack
    rows: int


def write_shard(plan: PackPlan, shard_id: int, staging_uris: Sequence[str], class_ids: Mapping[str, int]
                ) -> ShardResult:
    """Pass 2 for one destination shard: its rows from every staging file, in order-key
    order, with class ids, written as one tar or parquet file (memory: one shard). Done once
    per pack: a killed run's written shard is kept (the class ids are a function of the
    staged parts, which are the same under the same fingerprint)."""
    return _once(plan, "written", f"{shard_id:05d}", ShardResult,
                 lambda: _write_shard(plan, shard_id, staging_uris, class_ids))


def _write_shard(plan: PackPlan, shard_id: int, staging_uris: Sequence[str], class_ids: Mapping[str, int]
                 ) -> ShardResult:
    staged = sorted(_shard_rows(staging_uris, shard_id),
                    key=lambda r: (r["order_key"], r["key"], r["source_shard"], r["row_in_shard"]))
    samples = [{"key": r["key"], "jpg": r["jpg"], "width": r["width"], "height": r["height"],
                "class_ids": [class_ids[e] for e in r["entity_ids"]], "scores": r["scores"],
                "alt_text": r["alt_text"], "source_shard": r["source_shard"], "row_in_shard": r["row_in_shard"]}
               for r in staged]
    relative = shard_relative_path(shard_id, plan.config.shard_format)
    if plan.config.shard_format == "webdataset":
        storage.write_bytes(plan.shard_path(shard_id), webdataset_bytes(samples))
    else:
        tables.write_rows(samples, "packed", plan.shard_path(shard_id), row_group_size=PACKED_ROW_GROUP)
    return ShardResult(shard_id, relative, len(samples))


def read_parquet_shard(uri: str) -> pa.Table:
    """A parquet shard, validated against ``packed``."""
    return tables.read_file(uri, "packed")


def read_webdataset_shard(uri: str) -> list[dict]:
    """A tar shard's samples in order (``jpg`` bytes plus the JSON fields)."""
    samples: dict[str, dict] = {}
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uri)), mode="r") as tar:
        for member in tar:
            stem, _, ext = member.name.partition(".")
            data = tar.extractfile(member).read()
            sample = samples.setdefault(stem, {})
            if ext == "jpg":
                sample["jpg"] = data
            else:
                sample.update(json.loads(data))
    return [samples[stem] for stem in sorted(samples)]


# ----------------------------------------------------------------------------- 5. finish

def _sum(counters: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: collections.Counter = collections.Counter()
    for counter in counters:
        total.update(counter)
    return dict(sorted(total.items()))


def finish_pack(plan: PackPlan, parts: Sequence[PartResult], shards: Sequence[ShardResult],
                class_ids: Mapping[str, int], runner: str) -> dict:
    """Check that every input image and pair is kept or dropped with a reason (and that the
    inputs are the tables' own counts), write ``index.json`` last, delete ``_work``."""
    config = plan.config
    counts = {"input_images": sum(p.input_images for p in parts), "input_pairs": sum(p.input_pairs for p in parts),
              "kept_images": sum(p.kept_images for p in parts), "kept_pairs": sum(p.kept_pairs for p in parts),
              "dropped_pairs": _sum(p.dropped_pairs for p in parts),
              "dropped_images": _sum(p.dropped_images for p in parts)}
    shards = sorted(shards, key=lambda s: s.shard_id)
    table_rows = plan.manifest.get("rows", {})
    problems = []
    if counts["kept_images"] + sum(counts["dropped_images"].values()) != counts["input_images"]:
        problems.append("kept + dropped images != input images")
    if counts["kept_pairs"] + sum(counts["dropped_pairs"].values()) != counts["input_pairs"]:
        problems.append("kept + dropped pairs != input pairs")
    if (table_rows.get("images"), table_rows.get("image_entities")) != (counts["input_images"], counts["input_pairs"]):
        problems.append(f"the tables' manifest says {table_rows.get('images')} images and "
                        f"{table_rows.get('image_entities')} pairs")
    if sum(s.rows for s in shards) != counts["kept_images"] or [s.shard_id for s in shards] != list(range(len(shards))):
        problems.append(f"shards hold {sum(s.rows for s in shards)} rows in {len(shards)} shards")
    if problems:
        raise PackError(f"pack of {config.tables} does not add up ({'; '.join(problems)}): {counts}; "
                        "index.json not written")
    classes = sorted(class_ids, key=class_ids.__getitem__)
    index = {"format": FORMAT, "format_version": FORMAT_VERSION, "shard_format": config.shard_format,
             "shards": [{"path": s.path, "rows": s.rows} for s in shards],
             "rows": sum(s.rows for s in shards), "seed": config.seed, "image_size": config.image_size,
             "vocab": "vocab.parquet", "num_classes": len(classes), "classes_fingerprint": classes_fingerprint(classes),
             "tables": config.tables, "tables_manifest_sha256": plan.manifest_sha256,
             "config": config.to_dict(), "counts": counts, "created_by": f"i2e {__version__}", "runner": runner}
    storage.write_text(storage.join(plan.out, "index.json"), json.dumps(index, indent=2) + "\n")
    storage.remove(storage.join(plan.out, WORK_DIR))
    return index


def format_summary(index: dict, out: str) -> str:
    """A short human summary: kept, dropped by reason, shards, where."""
    c = index["counts"]
    lines = [f"packed {c['kept_images']} of {c['input_images']} images and {c['kept_pairs']} of "
             f"{c['input_pairs']} pairs into {len(index['shards'])} {index['shard_format']} shards "
             f"({index['num_classes']} classes, images {index['image_size']} px) on {index['runner']}"]
    for kind in ("pairs", "images"):
        dropped = c[f"dropped_{kind}"]
        if dropped:
            lines.append(f"  dropped {kind}: " + ", ".join(f"{reason} {n}" for reason, n in dropped.items()))
    lines.append(f"  index: {storage.join(out, 'index.json')}; vocab: {storage.join(out, index['vocab'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driving (local, Spark)


class Executor(Protocol):
    """What a driver-style runner lends :func:`execute`: parallel map, sum by key, broadcast."""

    def map(self, fn: Callable[[T], object], items: Sequence[T], desc: str) -> list: ...

    def sum_by_key(self, fn: Callable[[T], Iterable[tuple]], items: Sequence[T], desc: str) -> dict: ...

    def share(self, value: object): ...   # an object with ``.value``, readable in tasks


def execute(plan: PackPlan, executor: Executor, runner: str) -> dict:
    """The whole pack on a runner that drives steps from one process (the local loop, Spark)."""
    config, parts = plan.config, plan.parts
    cutoff = finalize.quantile_cutoff(
        config.keep_top_fraction,
        lambda: executor.sum_by_key(score_bins, parts, "score bins"),
        lambda high: executor.sum_by_key(lambda part: score_bins(part, high), parts, "score bins in the cutoff bin"))
    scored = score_decision(config, cutoff)
    counts = executor.sum_by_key(lambda part: entity_image_counts(part, config, scored), parts, "images per entity")
    counted = executor.share(with_counts(scored, counts))   # O(entities): broadcast, not shipped per task
    kept = sum(executor.map(lambda part: kept_image_count(part, config, counted.value), parts, "kept images"))
    decisions = executor.share(with_shards(counted.value, kept, config))
    results = executor.map(lambda part: stage_part(plan, part, decisions.value), parts, "resize and stage")
    staging = [r.staging for r in results]
    class_ids = executor.share(write_vocab(plan, executor.sum_by_key(staged_entity_counts, staging, "vocab")))
    shards = executor.map(lambda shard_id: write_shard(plan, shard_id, staging, class_ids.value),
                          list(range(decisions.value.num_shards)), "write shards")
    return finish_pack(plan, results, shards, class_ids.value, runner)


def read_index(out: str) -> dict:
    """A complete pack's index (raises FileNotFoundError when the pack is not complete)."""
    return json.loads(storage.read_text(storage.join(storage.normalize(out), "index.json")))
