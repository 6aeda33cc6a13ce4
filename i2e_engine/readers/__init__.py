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
from i2e_engine import storage
from i2e_engine.readers.base import KINDS, ReaderOptions, ShardRef
from i2e_engine.records import Pair

__all__ = ["KINDS", "ReaderOptions", "ShardRef", "declared_rows", "detect_format", "list_shards", "read_shard"]


def detect_format(uri: str) -> str:
    """The reader kind for one input (a local path or a URI); ValueError if it is absent or
    unrecognised. Folder and COCO inputs are read from local paths only."""
    if not storage.exists(uri):
        raise ValueError(f"input does not exist: {uri}")
    if storage.isfile(uri):
        name = storage.name(uri).lower()
        if name.endswith(parquet.SUFFIXES):
            return "parquet"
        if name.endswith(webdataset.SUFFIXES):
            return "webdataset"
        if name.endswith(".json"):
            return "coco"
        raise ValueError(f"cannot read {uri}: expected .parquet, .tar, a COCO captions .json "
                         "or a folder of those or of images")
    if webdataset.find_tar_files(uri):
        return "webdataset"
    if parquet.find_parquet_files(uri):
        return "parquet"
    if storage.is_local(uri) and coco.find_captions_files(Path(uri)):
        return "coco"
    if storage.is_local(uri) and folder.list_images(Path(uri)):
        return "folder"
    raise ValueError(f"cannot read {uri}: no tar, parquet, annotations/captions_*.json or image files in it"
                     + ("" if storage.is_local(uri) else " (folder and COCO inputs must be local paths)"))


def _units(uri: str, kind: str) -> list[str]:
    """The files (or, for a folder input, the folder) that one input contributes."""
    if kind in ("folder", "coco") and not storage.is_local(uri):
        raise ValueError(f"{kind} inputs are read from local paths; got {uri} (on object storage, "
                         "use img2dataset parquet or webdataset shards)")
    if kind == "folder":
        if not storage.isdir(uri):
            raise ValueError(f"input_format 'folder' needs a folder, got {uri}")
        return [uri]
    if storage.isfile(uri):
        return [uri]
    if kind == "coco":
        found = [str(p) for p in coco.find_captions_files(Path(uri))]
    else:
        found = {"parquet": parquet.find_parquet_files, "webdataset": webdataset.find_tar_files}[kind](uri)
    if not found:
        raise ValueError(f"no {kind} input found under {uri}")
    return found


def _expand(raw: str) -> list[str]:
    """An input as URIs: a glob ("s3://bucket/crawl/*.parquet") is expanded on its store."""
    if any(c in raw for c in "*?["):
        found = storage.glob(raw)
        if not found:
            raise ValueError(f"input does not exist: no file matches {raw}")
        return found
    uri = storage.normalize(raw)
    if not storage.exists(uri):
        raise ValueError(f"input does not exist: {raw}")
    return [uri]


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
    units: dict[str, str] = {}
    for raw in inputs:
        for uri in _expand(str(raw)):
            kind = detect_format(uri) if input_format == "auto" else input_format
            for unit in _units(uri, kind):
                units.setdefault(unit, kind)
    shards: list[ShardRef] = []
    for unit, kind in units.items():
        if kind in ("parquet", "webdataset"):
            shards.append(ShardRef(kind, unit, 0, None, unit, identity=storage.identity(unit)))
        elif kind == "folder":
            shards.extend(folder.folder_shards(Path(unit), rows_per_shard))
        else:
            images_dir = Path(os.path.abspath(options.coco_images_dir)) if options.coco_images_dir else None
            shards.extend(coco.coco_shards(Path(unit), rows_per_shard, images_dir))
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
        return webdataset.read_webdataset_shard(shard, options)
    if shard.kind == "folder":
        return folder.read_folder_shard(shard, options)
    if shard.kind == "coco":
        return coco.read_coco_shard(shard, options)
    raise ValueError(f"unknown shard kind {shard.kind!r}; known: {KINDS}")
