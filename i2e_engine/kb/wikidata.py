"""Wikidata JSON dump -> ``kb`` rows, streamed.

The dump (``latest-all.json.gz``/``.bz2``) is one JSON array with one entity per line:
``[`` on the first line, then ``{...},`` lines, the last entity without a comma, then
``]``. It is over 100 GB uncompressed, so it is read line by line and never whole.

Row rule: items only (``Q`` ids; properties and lexemes are skipped) that have a label in
the requested language, falling back to the ``mul`` (multiple languages) label Wikidata
introduced in 2024 for names that are the same in every language; name = that label,
description = the description in the same fallback order (or ""), aliases = the aliases
of both, popularity = number of sitelinks + 1 (how many wikis have a page on the entity,
+1 so an item with none still weighs something), qid = the id, wiki_title = the English
Wikipedia sitelink (so the item merges with the same article from other sources).
"""
from __future__ import annotations

import bz2
import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Optional

import pyarrow as pa

import schemas

log = logging.getLogger(__name__)

SOURCE = "wikidata"
_CHUNK_ROWS = 50_000


@dataclass
class WikidataStats:
    """Counts of one pass over a dump; ``bad_lines`` are lines that are not valid entity JSON."""
    lines: int = 0
    kept: int = 0
    not_item: int = 0
    no_label: int = 0
    bad_lines: int = 0


def _open_bytes(path: Path) -> IO[bytes]:
    """Open plain, gzip or bzip2 data, recognized by magic bytes rather than by file name.

    Lines stay bytes so that invalid UTF-8 fails one line's JSON decoding, not the pass.
    """
    with open(path, "rb") as raw:
        magic = raw.read(3)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic == b"BZh":
        return bz2.open(path, "rb")
    return open(path, "rb")


def _in_language(field: dict, language: str) -> Optional[dict]:
    return field.get(language) or field.get("mul")


def entity_row(entity: dict, language: str = "en") -> Optional[dict]:
    """The ``kb`` row of one decoded dump entity, or None when it is not a labelled item.

    Raises KeyError/TypeError/AttributeError on an entity that is not shaped like Wikidata's.
    """
    if entity.get("type") != "item" or not str(entity.get("id", "")).startswith("Q"):
        return None
    label = _in_language(entity.get("labels") or {}, language)
    if not label or not label["value"].strip():
        return None
    name = label["value"]
    description = _in_language(entity.get("descriptions") or {}, language)
    all_aliases = entity.get("aliases") or {}
    aliases: list[str] = []
    for lang in (language, "mul"):
        for alias in all_aliases.get(lang, ()):
            if alias["value"] != name and alias["value"] not in aliases:
                aliases.append(alias["value"])
    enwiki = (entity.get("sitelinks") or {}).get("enwiki")
    return {
        "entity_id": entity["id"],
        "name": name,
        "description": description["value"] if description else "",
        "aliases": aliases,
        "source": SOURCE,
        "popularity": float(len(entity.get("sitelinks") or {}) + 1),
        "qid": entity["id"],
        "wiki_title": enwiki["title"].replace(" ", "_") if enwiki and enwiki.get("title") else None,
        "kind": "thing",
    }


def iter_wikidata(path: str | Path, *, language: str = "en", limit: Optional[int] = None,
                  stats: Optional[WikidataStats] = None) -> Iterator[dict]:
    """Yield ``kb`` rows from a dump (plain, .gz or .bz2), at most ``limit`` of them.

    A line that is not an entity object is counted in ``stats.bad_lines`` and skipped:
    one corrupt line must not cost a multi-hour pass.
    """
    stats = stats if stats is not None else WikidataStats()
    with _open_bytes(Path(path)) as lines:
        for line in lines:
            line = line.strip().rstrip(b",")
            if line in (b"", b"[", b"]"):
                continue
            stats.lines += 1
            try:
                entity = json.loads(line)
                if not isinstance(entity, dict):
                    raise TypeError("not a JSON object")
                row = entity_row(entity, language)
            except (ValueError, KeyError, TypeError, AttributeError):
                stats.bad_lines += 1
                continue
            if row is None:
                if entity.get("type") == "item":
                    stats.no_label += 1
                else:
                    stats.not_item += 1
                continue
            stats.kept += 1
            yield row
            if limit is not None and stats.kept >= limit:
                return


def wikidata_table(path: str | Path, *, language: str = "en", limit: Optional[int] = None) -> pa.Table:
    """All rows of a dump as a ``kb`` table; logs the pass's counts (bad lines included).

    Rows become Arrow in chunks so the Python objects held at once stay bounded.
    """
    stats = WikidataStats()
    chunks: list[pa.Table] = []
    chunk: list[dict] = []
    for row in iter_wikidata(path, language=language, limit=limit, stats=stats):
        chunk.append(row)
        if len(chunk) >= _CHUNK_ROWS:
            chunks.append(schemas.from_records(chunk, "kb"))
            chunk = []
    chunks.append(schemas.from_records(chunk, "kb"))
    log_level = logging.WARNING if stats.bad_lines else logging.INFO
    log.log(log_level, "wikidata dump %s: %d entity lines, %d kept, %d not items, %d without a %r label, "
            "%d bad lines skipped", path, stats.lines, stats.kept, stats.not_item, stats.no_label,
            language, stats.bad_lines)
    return pa.concat_tables(chunks)
