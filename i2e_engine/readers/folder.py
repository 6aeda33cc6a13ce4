"""A folder of images with sidecar alt-texts: ``photo.jpg`` + ``photo.txt``.

Images are found recursively and sorted by their path relative to the folder, and shards
are slices of that sorted list, so a listing and a later read agree as long as the folder
does not change during a run. Sidecars are read as bytes (the text stage decodes them
strictly); a missing sidecar gives ``missing_text``; an image file over the byte limit is
not read (``image_too_many_bytes``). ``url`` is the image's file:// URI, which is what
traces a row back to its file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from i2e_engine.readers.base import (ReaderOptions, ShardRef, failure_pairs, files_identity, make_pair, row_slices,
                                     too_many_bytes)
from i2e_engine.records import Pair

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
SIDECAR_SUFFIX = ".txt"


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted by relative path; hidden files are skipped."""
    found = [p for p in folder.rglob("*")
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _slice_identity(folder: Path, images: list[Path]) -> str:
    """The version of a slice: names and contents of its images and sidecars."""
    return files_identity((file.relative_to(folder).as_posix(), file)
                          for path in images for file in (path, path.with_suffix(SIDECAR_SUFFIX)))


def folder_shards(folder: Path, rows_per_shard: int) -> list[ShardRef]:
    """Shards of ``folder``: its sorted images cut into ``rows_per_shard`` slices."""
    images = list_images(folder)
    if not images:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return [ShardRef("folder", str(folder), start, stop, f"folder:{folder}[{start}:{stop}]",
                     identity=_slice_identity(folder, images[start:stop]))
            for start, stop in row_slices(len(images), rows_per_shard)]


def read_folder_shard(shard: ShardRef, options: ReaderOptions = ReaderOptions()) -> Iterator[Pair]:
    """Pairs of one slice of the folder; ``row_in_shard`` counts from the slice's start."""
    folder = Path(shard.path)
    try:
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder at {folder}")
        images = list_images(folder)[shard.start:shard.stop]
    except OSError as error:
        yield from failure_pairs(shard, 0, _slice_rows(shard), error)
        return
    for row, path in enumerate(images):
        url = path.absolute().as_uri()
        try:
            oversized = too_many_bytes(path.name, path.stat().st_size, options.max_image_bytes)
            image = None if oversized else path.read_bytes()
        except OSError as error:
            yield make_pair(shard, row, None, None, url, f"unreadable_file: {type(error).__name__}: {error}")
            continue
        if oversized:
            yield make_pair(shard, row, None, None, url, oversized)
            continue
        sidecar = path.with_suffix(SIDECAR_SUFFIX)
        try:
            text = sidecar.read_bytes()
        except FileNotFoundError:
            yield make_pair(shard, row, image, None, url, "missing_text")
            continue
        except OSError as error:
            yield make_pair(shard, row, image, None, url, f"unreadable_text: {type(error).__name__}: {error}")
            continue
        yield make_pair(shard, row, image, text, url)
    if len(images) < _slice_rows(shard):
        # the folder lost files since listing: the rows read may have shifted, so say so
        yield from failure_pairs(shard, len(images), _slice_rows(shard), FileNotFoundError(
            f"{_slice_rows(shard) - len(images)} image(s) of this slice are gone since listing"))


def _slice_rows(shard: ShardRef) -> int:
    return shard.stop - shard.start
