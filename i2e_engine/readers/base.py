"""What every reader shares: the shard reference, the reader options, and how a Pair is made.

A shard is the unit of resume: it must name the same rows on every listing of unchanged
inputs, so it is a small frozen value (kind, path, row range) that any worker can read.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

from i2e_engine import storage
from i2e_engine.images import ImageLimits
from i2e_engine.records import Pair, make_sample_id

KINDS = ("parquet", "webdataset", "folder", "coco")
COCO_CAPTION_MODES = ("join", "first")


@dataclass(frozen=True)
class ShardRef:
    """One deterministic unit of input work.

    ``start``/``stop`` slice the rows of folder and COCO inputs; file-based shards (parquet,
    webdataset) are whole files, with ``start=0, stop=None``. ``shard_id`` names the input
    by its full path, so two inputs never share one ("/data/a/00000.parquet",
    "coco:/data/captions_val2017.json[0:1000]"); with the row index it is the key of every
    row in every table. ``identity`` is the content's version at listing (a content hash or
    ETag of the file, or one over the slice's files: :func:`files_identity`): committed
    work is reused only for the same identity. ``images_dir`` is the image folder of a COCO
    shard, resolved at listing so that a shard read on another worker needs nothing else.
    """
    kind: str
    path: str
    start: int
    stop: Optional[int]
    shard_id: str
    images_dir: Optional[str] = None
    identity: str = ""


@dataclass(frozen=True)
class ReaderOptions:
    """Choices about how inputs are read; the defaults read img2dataset and HF-style files.

    Column names are for parquet: ``None`` takes the first present of the usual names.
    ``coco_captions``: "join" (all captions of an image, joined with one space) or "first".
    ``coco_images_dir`` replaces the default ``<root>/<split>`` image folder of COCO inputs.
    ``max_image_bytes``: an image file or tar member larger than this is not read but
    becomes a row with ``image_too_many_bytes`` (a build sets the image check's limit).
    """
    image_column: Optional[str] = None
    text_column: Optional[str] = None
    url_column: str = "url"
    coco_captions: str = "join"
    coco_images_dir: Optional[str] = None
    max_image_bytes: int = ImageLimits().max_bytes

    def __post_init__(self) -> None:
        if self.coco_captions not in COCO_CAPTION_MODES:
            raise ValueError(f"coco_captions must be one of {COCO_CAPTION_MODES}, got {self.coco_captions!r}")


def make_pair(shard: ShardRef, row: int, image: Optional[bytes], text: Optional[str | bytes],
              url: Optional[str] = None, read_error: Optional[str] = None) -> Pair:
    """A Pair of ``shard``. When nothing at all could be read, the id falls back to the row's
    position, so that failed rows of one shard do not all share one sample id."""
    if image is None and text is None:
        sample_id = make_sample_id(None, f"{shard.shard_id}#{row}")
    else:
        sample_id = make_sample_id(image, text)
    return Pair(sample_id=sample_id, source=shard.kind, source_shard=shard.shard_id,
                row_in_shard=row, url=url, image=image, text=text, read_error=read_error)


def failure_pairs(shard: ShardRef, first_row: int, total: Optional[int], error: BaseException,
                  detail: str = "") -> Iterator[Pair]:
    """Pairs that report a shard which could not be read (further): one per unread row when
    the source said how many rows it holds (``total``), else one for the rest of the shard."""
    message = f"unreadable_shard: {type(error).__name__}: {error}"
    if detail:
        message += f" ({detail})"
    for row in range(first_row, max(first_row + 1, total or 0)):
        yield Pair(sample_id=make_sample_id(None, f"{shard.shard_id}#{row}"), source=shard.kind,
                   source_shard=shard.shard_id, row_in_shard=row, url=None, image=None, text=None,
                   read_error=message)


def too_many_bytes(what: str, size: int, limit: int, reason: str = "image_too_many_bytes") -> Optional[str]:
    """The read error of a payload over the byte limit, told by its size before it is read
    (a tar header, a file's status), so that an oversized one is never read whole. An image
    is rejected with the reason the image check gives an oversized image in a row."""
    if size <= limit:
        return None
    return f"{reason}: {what} is {size} bytes > limit {limit} (not read)"


def files_identity(files: Iterable[tuple[str, Path]]) -> str:
    """One identity for a set of local files: sha256 over each one's name and content
    identity, streamed, so that memory holds one file's entry whatever the count. A change
    of any file's bytes, or of which files there are, changes it. A file that is absent or
    unreadable counts by its error's name: listing goes on, and the reader rejects its row."""
    digest = hashlib.sha256()
    for name, path in files:
        try:
            version = storage.identity(str(path))
        except OSError as error:
            version = type(error).__name__
        digest.update(f"{name}\0{version}\n".encode())
    return digest.hexdigest()


def row_slices(count: int, rows_per_shard: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges that cover ``range(count)`` exactly once, in order."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    return [(start, min(start + rows_per_shard, count)) for start in range(0, count, rows_per_shard)]
