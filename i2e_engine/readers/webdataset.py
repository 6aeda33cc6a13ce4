"""WebDataset tar shards: consecutive members sharing a key form one sample.

``key.jpg`` (or .jpeg/.png/.webp) holds the image, ``key.txt`` the alt-text (kept as bytes,
so the text stage can reject invalid UTF-8), ``key.json`` optional metadata with ``url``
and a fallback ``caption``. As in the webdataset library, the key is the member path up
to the first "." of its base name, and samples are read in one streaming pass: a key that
comes back after another key is a new sample. A truncated or corrupt tar delivers every
sample completed before the damage, then one ``unreadable_shard`` Pair. Members are read
only for the parts above; one over the image byte limit (told by its tar header) is skipped
unread and its sample becomes an ``image_too_many_bytes`` row (``member_too_many_bytes``
for a text or metadata member that large).
"""
from __future__ import annotations

import json
import posixpath
import tarfile
from typing import Iterator, Optional

from i2e_engine import storage
from i2e_engine.readers.base import ReaderOptions, ShardRef, failure_pairs, make_pair, too_many_bytes
from i2e_engine.records import Pair

SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
PART_EXTENSIONS = (*IMAGE_EXTENSIONS, "txt", "json")   # members of other kinds are never read


def find_tar_files(folder: str) -> list[str]:
    """Tar shards under ``folder`` (any URI), sorted; hidden and "_"-prefixed names are skipped."""
    return storage.find(folder, SUFFIXES, skip_prefixes=(".", "_"))


def _split_member_name(name: str) -> tuple[str, str]:
    directory, base = posixpath.split(name)
    dot = base.find(".")
    if dot < 0:
        return name, ""
    return posixpath.join(directory, base[:dot]), base[dot + 1:].lower()


def _sample_pair(shard: ShardRef, row: int, parts: dict[str, bytes], oversized: Optional[str]) -> Pair:
    if oversized:
        return make_pair(shard, row, None, None, None, oversized)
    image = next((parts[ext] for ext in IMAGE_EXTENSIONS if ext in parts), None)
    text: Optional[str | bytes] = parts.get("txt")
    url = None
    json_error = None
    if "json" in parts:
        try:
            meta = json.loads(parts["json"])
        except ValueError as error:  # also UnicodeDecodeError
            meta, json_error = None, f"bad_json: {error}"
        if isinstance(meta, dict):
            url = meta.get("url") if isinstance(meta.get("url"), str) else None
            if text is None and isinstance(meta.get("caption"), str):
                text = meta["caption"]
    errors = [message for message, failed in (("missing_image", image is None),
                                              ("missing_text", text is None),
                                              (json_error, json_error is not None)) if failed]
    return make_pair(shard, row, image, text, url, "; ".join(errors) or None)


def read_webdataset_shard(shard: ShardRef, options: ReaderOptions = ReaderOptions()) -> Iterator[Pair]:
    """Pairs of one tar, one per sample key, in archive order."""
    row = 0
    key: Optional[str] = None
    parts: dict[str, bytes] = {}
    oversized: Optional[str] = None   # the first member of the sample over the byte limit
    try:
        with storage.open_file(shard.path) as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                member_key, extension = _split_member_name(member.name)
                if member_key != key:
                    if key is not None:
                        yield _sample_pair(shard, row, parts, oversized)
                        row += 1
                    key, parts, oversized = member_key, {}, None
                if extension not in PART_EXTENSIONS:
                    continue
                too_big = too_many_bytes(member.name, member.size, options.max_image_bytes,
                                         "image_too_many_bytes" if extension in IMAGE_EXTENSIONS
                                         else "member_too_many_bytes")
                if too_big:
                    oversized = oversized or too_big
                else:
                    parts[extension] = archive.extractfile(member).read()
        if key is not None:
            yield _sample_pair(shard, row, parts, oversized)
    except Exception as error:  # tarfile, gzip and zlib raise several types on damaged streams
        # a tar says how many samples it holds only by being read to its end
        yield from failure_pairs(shard, row, None, error, f"sample {key!r} incomplete" if key else "")
