"""COCO captions: ``annotations/captions_<split>.json`` plus its image folder.

Rows are the images that have at least one caption, sorted by ``file_name`` (then id), so
shards are stable slices. An image listed without any caption is not a pair: it is
skipped and counted (:func:`summarize_coco`); image files in the folder that the JSON does
not list are never read. The text of a row is its captions in annotation-id order, each
stripped and joined with one space ("join"), or only the first ("first"). The image folder
defaults to ``<split>`` beside ``annotations/`` (``coco/val2017`` for
``coco/annotations/captions_val2017.json``); ``url`` is ``coco_url``, else ``flickr_url``.
A shard's identity covers the captions file and the photos of its slice, so replacing one
photo redoes only its slice; a photo over the byte limit is not read (``image_too_many_bytes``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional

from i2e_engine import storage
from i2e_engine.readers.base import (ReaderOptions, ShardRef, failure_pairs, files_identity, make_pair, row_slices,
                                     too_many_bytes)
from i2e_engine.records import Pair

CAPTIONS_GLOB = "captions_*.json"


@dataclass(frozen=True)
class CocoImage:
    file_name: str
    url: Optional[str]
    captions: tuple[str, ...]


@dataclass(frozen=True)
class CocoSummary:
    """Counts of one captions file; ``images_with_captions`` is the number of pairs."""
    images: int
    images_with_captions: int
    images_without_captions: int
    captions: int
    captions_without_image: int


@dataclass(frozen=True)
class _CocoIndex:
    rows: tuple[CocoImage, ...]
    summary: CocoSummary


def find_captions_files(folder: Path) -> list[Path]:
    """Captions files of a COCO root (``annotations/captions_*.json``) or of its
    ``annotations`` folder, sorted."""
    return sorted({*folder.glob(f"annotations/{CAPTIONS_GLOB}"), *folder.glob(CAPTIONS_GLOB)})


def default_images_dir(captions_file: Path) -> Path:
    """``<root>/<split>`` for ``<root>/annotations/captions_<split>.json``; a file outside
    an ``annotations`` folder looks beside itself."""
    split = captions_file.stem.removeprefix("captions_")
    base = captions_file.parent.parent if captions_file.parent.name == "annotations" else captions_file.parent
    return base / split


def _annotation_order(entry: tuple[object, str]) -> tuple:
    """Integer annotation ids in numeric order; any other id after them, as text."""
    annotation_id = entry[0]
    return (0, annotation_id, "") if isinstance(annotation_id, int) else (1, 0, str(annotation_id))


def _build_index(data: object, path: str) -> _CocoIndex:
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise ValueError(f"{path} is not a COCO file (needs 'images' and 'annotations' lists)")
    annotations = data["annotations"]
    if annotations and not all(isinstance(a, dict) and "caption" in a for a in annotations):
        raise ValueError(f"{path} is not a COCO captions file (annotations without 'caption'; "
                         "instances_*.json holds boxes, captions_*.json the captions)")
    image_ids = {image["id"] for image in data["images"]}
    by_image: dict[object, list[tuple[object, str]]] = {}
    for annotation in annotations:
        by_image.setdefault(annotation["image_id"], []).append((annotation.get("id", 0), str(annotation["caption"])))
    rows = []
    for image in sorted(data["images"], key=lambda i: (str(i["file_name"]), str(i["id"]))):
        captions = by_image.get(image["id"])
        if captions:
            url = image.get("coco_url") or image.get("flickr_url")
            rows.append(CocoImage(str(image["file_name"]), url if isinstance(url, str) else None,
                                  tuple(caption for _, caption in sorted(captions, key=_annotation_order))))
    summary = CocoSummary(
        images=len(data["images"]), images_with_captions=len(rows),
        images_without_captions=len(data["images"]) - len(rows), captions=len(annotations),
        captions_without_image=sum(len(c) for i, c in by_image.items() if i not in image_ids))
    return _CocoIndex(tuple(rows), summary)


@lru_cache(maxsize=4)
def _cached_index(path: str, identity: str) -> _CocoIndex:
    """Parse once per process and file content: every shard of a file needs the same index."""
    with open(path, "rb") as handle:
        data = json.load(handle)
    try:
        return _build_index(data, path)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: malformed COCO entry ({type(error).__name__}: {error})") from error


def _load_index(path: str) -> _CocoIndex:
    return _cached_index(path, storage.identity(path))


def summarize_coco(captions_file: str | Path) -> CocoSummary:
    """How many images of a captions file become pairs, and how many are skipped."""
    return _load_index(str(captions_file)).summary


def coco_shards(captions_file: Path, rows_per_shard: int, images_dir: Optional[Path] = None) -> list[ShardRef]:
    """Shards of one captions file; raises ValueError if it is not one or has no image folder."""
    try:
        index = _load_index(str(captions_file))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read COCO captions file {captions_file}: {error}") from error
    folder = images_dir if images_dir is not None else default_images_dir(captions_file)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} of {captions_file} not found; "
                         "pass ReaderOptions(coco_images_dir=...)")
    return [ShardRef("coco", str(captions_file), start, stop, f"coco:{captions_file}[{start}:{stop}]",
                     images_dir=str(folder.absolute()), identity=files_identity(
                         [(captions_file.name, captions_file)]
                         + [(item.file_name, folder / item.file_name) for item in index.rows[start:stop]]))
            for start, stop in row_slices(len(index.rows), rows_per_shard)]


def read_coco_shard(shard: ShardRef, options: ReaderOptions = ReaderOptions()) -> Iterator[Pair]:
    """Pairs of one slice of a captions file, its captions joined or the first
    (``options.coco_captions``). A listed image whose file is absent yields its text with
    ``missing_image:<file_name>``."""
    try:
        rows = _load_index(shard.path).rows[shard.start:shard.stop]
    except Exception as error:  # the file vanished, changed into garbage, or lost its structure
        yield from failure_pairs(shard, 0, shard.stop - shard.start, error)
        return
    folder = Path(shard.images_dir) if shard.images_dir else default_images_dir(Path(shard.path))
    for row, item in enumerate(rows):
        stripped = [caption.strip() for caption in item.captions]
        text = " ".join(stripped) if options.coco_captions == "join" else stripped[0]
        path = folder / item.file_name
        try:
            error = too_many_bytes(item.file_name, path.stat().st_size, options.max_image_bytes)
            image = None if error else path.read_bytes()
        except FileNotFoundError:
            image, error = None, f"missing_image:{item.file_name}"
        except OSError as failure:
            image, error = None, f"unreadable_file: {type(failure).__name__}: {failure}"
        yield make_pair(shard, row, image, text, item.url, error)
