"""Input readers: deterministic shards of the inputs, and Pairs read from one shard.

Resume and "retry the failed rows" both need the same inputs to list the same shards with
the same ids every time, and a bad row must become a Pair with ``read_error`` rather than
an exception that kills a shard. So :func:`list_shards` is a pure function of the inputs
(sorted, de-duplicated) and :func:`read_shard` never raises on bad data.

Auto-detection of an input path:

- a ``.parquet`` file -> parquet; a ``.tar``/``.tar.gz``/``.tgz`` file -> webdataset;
  a ``.json`` file -> COCO captions;
- a folder holding tar files (at any depth) -> webdataset. img2dataset writes a metadata
  parquet (no image bytes) beside each tar, so tars win over parquet files;
- else a folder holding parquet files -> parquet;
- else a folder with ``annotations/captions_*.json`` (a COCO root) -> coco;
- else a folder holding image files -> folder (images with ``.txt`` sidecars).

Names starting with "." (and, for parquet and tar, "_") are ignored. Parquet and tar shards
are whole files, named by their absolute path; folder and COCO inputs are cut into
``rows_per_shard`` slices named ``"folder:<folder>[start:stop]"`` and
``"coco:<captions file>[start:stop]"``, so two inputs never share a shard id.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

from i2e_engine.readers import coco, folder, parquet, webdataset
from i2e_engine.readers.base import KINDS, ReaderOptions, ShardRef, file_identity
from i2e_engine.records import Pair

__all__ = ["KINDS", "ReaderOptions", "ShardRef", "declared_rows", "detect_format", "list_shards", "read_shard"]


def detect_format(path: Path) -> str:
    """The reader kind for one input path; ValueError if it is absent or unrecognised."""
    if not path.exists():
        raise ValueError(f"input does not exist: {path}")
    if path.is_file():
        name = path.name.lower()
        if name.endswith(parquet.SUFFIXES):
            return "parquet"
        if name.endswith(webdataset.SUFFIXES):
            return "webdataset"
        if name.endswith(".json"):
            return "coco"
        raise ValueError(f"cannot read {path}: expected .parquet, .tar, a COCO captions .json "
                         "or a folder of those or of images")
    if webdataset.find_tar_files(path):
        return "webdataset"
    if parquet.find_parquet_files(path):
        return "parquet"
    if coco.find_captions_files(path):
        return "coco"
    if folder.list_images(path):
        return "folder"
    raise ValueError(f"cannot read {path}: no tar, parquet, annotations/captions_*.json or image files in it")


def _units(path: Path, kind: str) -> list[Path]:
    """The files (or, for a folder input, the folder) that one input contributes."""
    if kind == "folder":
        if not path.is_dir():
            raise ValueError(f"input_format 'folder' needs a folder, got {path}")
        return [path]
    if path.is_file():
        return [path]
    found = {"parquet": parquet.find_parquet_files, "webdataset": webdataset.find_tar_files,
             "coco": coco.find_captions_files}[kind](path)
    if not found:
        raise ValueError(f"no {kind} input found under {path}")
    return found


def list_shards(inputs: list[str], input_format: str = "auto", rows_per_shard: int = 1000,
                options: ReaderOptions = ReaderOptions()) -> list[ShardRef]:
    """Every shard of ``inputs``, sorted by (kind, path, start); the same inputs always give
    the same list. ValueError for an input that does not exist or cannot be read."""
    if input_format != "auto" and input_format not in KINDS:
        raise ValueError(f"input_format must be 'auto' or one of {KINDS}, got {input_format!r}")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if not inputs:
        raise ValueError("no inputs given")
    units: dict[Path, str] = {}
    for raw in inputs:
        path = Path(os.path.abspath(raw))
        if not path.exists():
            raise ValueError(f"input does not exist: {raw}")
        kind = detect_format(path) if input_format == "auto" else input_format
        for unit in _units(path, kind):
            units.setdefault(unit, kind)
    shards: list[ShardRef] = []
    for unit, kind in units.items():
        if kind in ("parquet", "webdataset"):
            shards.append(ShardRef(kind, str(unit), 0, None, str(unit), identity=file_identity(unit)))
        elif kind == "folder":
            shards.extend(folder.folder_shards(unit, rows_per_shard))
        else:
            images_dir = Path(os.path.abspath(options.coco_images_dir)) if options.coco_images_dir else None
            shards.extend(coco.coco_shards(unit, rows_per_shard, images_dir))
    return sorted(shards, key=lambda s: (s.kind, s.path, s.start))


def declared_rows(shard: ShardRef) -> Optional[int]:
    """The rows the source says this shard holds, before reading it: a slice's length, a
    parquet footer's row count; None for a tar, which tells only by being read to its end
    (and for a parquet file whose footer is unreadable)."""
    if shard.stop is not None:
        return shard.stop - shard.start
    if shard.kind == "parquet":
        return parquet.declared_rows(shard.path)
    return None


def read_shard(shard: ShardRef, options: ReaderOptions = ReaderOptions()) -> Iterator[Pair]:
    """The Pairs of one shard, in a stable order. Bad rows and unreadable shards come out as
    Pairs with ``read_error`` set; only an unknown ``shard.kind`` raises."""
    if shard.kind == "parquet":
        return parquet.read_parquet_shard(shard, options)
    if shard.kind == "webdataset":
        return webdataset.read_webdataset_shard(shard)
    if shard.kind == "folder":
        return folder.read_folder_shard(shard)
    if shard.kind == "coco":
        return coco.read_coco_shard(shard, options.coco_captions)
    raise ValueError(f"unknown shard kind {shard.kind!r}; known: {KINDS}")
