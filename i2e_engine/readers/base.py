"""What every reader shares: the shard reference, the reader options, and how a Pair is made.

A shard is the unit of resume: it must name the same rows on every listing of unchanged
inputs, so it is a small frozen value (kind, path, row range) that any worker can read.
"""
from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, TypeVar

from i2e_engine.records import Pair, make_sample_id

log = logging.getLogger(__name__)
T = TypeVar("T")

KINDS = ("parquet", "webdataset", "folder", "coco")
COCO_CAPTION_MODES = ("join", "first")


@dataclass(frozen=True)
class ShardRef:
    """One deterministic unit of input work.

    ``start``/``stop`` slice the rows of folder and COCO inputs; file-based shards (parquet,
    webdataset) are whole files, with ``start=0, stop=None``. ``shard_id`` names the input
    by its full path, so two inputs never share one ("/data/a/00000.parquet",
    "coco:/data/captions_val2017.json[0:1000]"); with the row index it is the key of every
    row in every table. ``identity`` is the content's version at listing (size and
    modification time of the file, or of the slice's files): committed work is reused only
    for the same identity. ``images_dir`` is the image folder of a COCO shard, resolved at
    listing so that a shard read on another worker needs nothing else.
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
    """
    image_column: Optional[str] = None
    text_column: Optional[str] = None
    url_column: str = "url"
    coco_captions: str = "join"
    coco_images_dir: Optional[str] = None

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


# Errors that say the storage hiccuped, not that the data is bad: worth another try.
TRANSIENT_ERRNOS = (errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED)
RETRY_ATTEMPTS = 4
RETRY_BASE_SECONDS = 0.5


def is_transient(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS


def back_off(error: BaseException, attempt: int, what: str) -> None:
    """Re-raise ``error`` unless it is transient and attempts remain; else wait 0.5, 1, 2 s."""
    if not is_transient(error) or attempt >= RETRY_ATTEMPTS - 1:
        raise error
    delay = RETRY_BASE_SECONDS * 2 ** attempt
    log.warning("reading %s failed (%s: %s); retrying in %.1f s", what, type(error).__name__, error, delay)
    time.sleep(delay)


def with_retries(read: Callable[[], T], what: str) -> T:
    """``read()``, tried again with exponential backoff while it fails with a transient error."""
    for attempt in range(RETRY_ATTEMPTS):
        try:
            return read()
        except Exception as error:  # noqa: BLE001 - sorted by back_off
            back_off(error, attempt, what)
    raise AssertionError("unreachable")


def row_slices(count: int, rows_per_shard: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges that cover ``range(count)`` exactly once, in order."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    return [(start, min(start + rows_per_shard, count)) for start in range(0, count, rows_per_shard)]
