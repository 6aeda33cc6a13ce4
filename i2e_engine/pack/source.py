"""The build's tables as the pack reads them: the table parts, the tables' manifest and the
entities. Every read that locates a table is one small function here, so a change of how
output tables are laid out is made in one place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pyarrow as pa

import schemas
from i2e_engine import storage, tables
from i2e_engine.publish import table_uri


@dataclass(frozen=True)
class Part:
    """One table part: the ``images`` and ``image_entities`` files of one input shard (either
    may be missing: a table with no rows has only an empty part)."""
    name: str
    images: Optional[str]
    pairs: Optional[str]


def _table_parts(tables_uri: str, table: str) -> dict[str, str]:
    folder = table_uri(tables_uri, table)
    found = storage.find(folder, (".parquet",)) if storage.isdir(folder) else []
    return {storage.name(uri)[:-len(".parquet")]: uri for uri in found}


def list_parts(tables_uri: str) -> list[Part]:
    """The table parts, matched by file name (the engine names both files of a shard alike)."""
    image_parts, pair_parts = _table_parts(tables_uri, "images"), _table_parts(tables_uri, "image_entities")
    return [Part(name, image_parts.get(name), pair_parts.get(name)) for name in sorted({*image_parts, *pair_parts})]


def read_tables_manifest(tables_uri: str) -> bytes:
    """The bytes of the tables' ``manifest.json`` (their hash keys the pack); FileNotFoundError
    when ``tables_uri`` is not a finished build."""
    manifest_uri = storage.join(tables_uri, "manifest.json")
    if not storage.exists(manifest_uri):
        raise FileNotFoundError(f"{manifest_uri} not found; is {tables_uri} the output of a finished `i2e build`?")
    return storage.read_bytes(manifest_uri)


def read_entities(tables_uri: str) -> pa.Table:
    """The tables' ``entities``, the columns the vocab takes (ids, names, descriptions)."""
    return tables.read_output(tables_uri, "entities", schemas.projection("pack_vocab"))


def read_pairs(part: Part) -> list[dict]:
    """The narrow columns of a part's ``image_entities`` (no image bytes; about 150 bytes a pair)."""
    if part.pairs is None:
        return []
    return tables.read_file(part.pairs, "image_entities", columns=schemas.projection("pack_pairs")).to_pylist()
