"""What a pack is (:class:`PackConfig`), where its work lives (:class:`PackPlan`), and how a
killed pack resumes: the fingerprint of its work and the per-task completion markers."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

import schemas
from i2e_engine import storage
from i2e_engine.pack.source import Part, list_parts, read_tables_manifest
from i2e_engine.workdir import code_digest, package_versions

FORMAT, FORMAT_VERSION = schemas.PACKED_FORMAT, schemas.PACKED_FORMAT_VERSION
SHARD_FORMATS = ("webdataset", "parquet")
WORK_DIR = "_work"

# The engine code and packages that decide a staged image or a written shard: part of the
# fingerprint under which a killed pack's committed tasks may be reused.
PACK_CODE = ("pack/*.py", "images.py", "finalize.py")
PACK_PACKAGES = ("pillow", "pyarrow")

# A task's marker holds its result; one folder per step.
STEPS = {"staged": "table parts staged", "written": "shards written"}

T = TypeVar("T")


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


def _remove_pack(out: str) -> None:
    """Delete what a pack writes under ``out`` (the index first, so no reader sees a half pack)."""
    for name in ("index.json", "vocab.parquet", "shards", WORK_DIR):
        storage.remove(storage.join(out, name))


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


def run_once(plan: PackPlan, step: str, name: str, result_type: type[T], make: Callable[[], T]) -> T:
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
    manifest_bytes = read_tables_manifest(config.tables)
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
