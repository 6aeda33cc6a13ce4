"""Assembling rows of the output tables and reading them back. Column names come from
``schemas/``; this module only fills them."""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

import pyarrow as pa

import schemas
from i2e_engine import storage
from i2e_engine.publish import table_uri

OUTPUT_TABLES = ("images", "entities", "image_entities", "rejects", "duplicates")


def image_row(annotation: Mapping, run_id: str) -> dict:
    row = {name: annotation[name] for name in schemas.column_names("images")
           if name not in ("image_id", "run_id")}
    return {**row, "image_id": annotation["sha256"], "run_id": run_id}


def image_entity_rows(annotation: Mapping, links: Iterable[Mapping], scorer: str, kb_version: str,
                      run_id: str) -> list[dict]:
    """One row per kept link, ranked by image-entity score (1 = best)."""
    ordered = sorted(links, key=lambda l: (-l["image_entity_score"], l["entity_id"]))
    return [{**link, "image_id": annotation["sha256"], "sample_id": annotation["sample_id"],
             "source_shard": annotation["source_shard"], "row_in_shard": annotation["row_in_shard"], "rank": rank, "scorer": scorer, "kb_version": kb_version, "run_id": run_id}
            for rank, link in enumerate(ordered, start=1)]


def entity_row(entity: Mapping, image_count: int, kb_version: str) -> dict:
    return {"entity_id": entity["entity_id"], "name": entity["name"],
            "description": entity["description"], "aliases": list(entity["aliases"]),
            "source": entity["source"], "qid": entity.get("qid"), "wiki_title": entity.get("wiki_title"),
            "image_count": int(image_count), "kb_version": kb_version}


def _filesystem(uri: str):
    """(path, pyarrow filesystem or None for a local path) as ``schemas`` takes them."""
    if storage.is_local(uri):
        return storage.normalize(uri), None
    filesystem, path = storage.arrow_filesystem(uri)
    return path, filesystem


def write_rows(rows: list[dict], table: str, uri: str, row_group_size: int = 1024) -> str:
    """Validate ``rows`` against ``table``'s schema and write them atomically to ``uri``."""
    path, filesystem = _filesystem(str(uri))
    schemas.write_table(schemas.from_records(rows, table), path, table, row_group_size=row_group_size,
                        filesystem=filesystem)
    return str(uri)


def read_file(uri: str, table: str, columns: Optional[list[str]] = None, require_metadata: bool = True) -> pa.Table:
    """One parquet file of ``table`` from any URI, validated."""
    path, filesystem = _filesystem(str(uri))
    return schemas.read_table(path, table, columns=columns, require_metadata=require_metadata,
                              filesystem=filesystem)


def read_output(out: str, table: str, columns: Optional[list[str]] = None) -> pa.Table:
    """Read one table of the build's current version (all its parts, from any URI) with schema
    validation."""
    directory = table_uri(out, table)
    parts = storage.find(directory, (".parquet",)) if storage.isdir(directory) else []
    if not parts:
        empty = schemas.get_schema(table).empty_table()
        return empty if columns is None else empty.select(columns)
    return pa.concat_tables([read_file(p, table, columns=columns) for p in parts])
