"""Versioned Arrow schemas of every table the project writes, kept as data.

Each table's columns live in ``schemas/v<N>/<table>.json`` and nowhere else: readers,
writers and the trainer get them from here. A written parquet file carries its table
name and schema version in its metadata, and :func:`read_table` refuses a file whose
columns or types do not match what that version says.

This package imports nothing of the project's own.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_DIR = Path(__file__).parent
CURRENT_VERSION = 5
# The packed training-shard format (`i2e pack` writes it, the trainer reads it): the
# ``format`` and ``format_version`` of its index.json; its tables are ``packed`` and ``vocab``.
PACKED_FORMAT, PACKED_FORMAT_VERSION = "i2e-packed", 1
TABLES = ("kb", "hashes", "annotations", "images", "entities", "image_entities", "rejects", "duplicates",
          "vocab", "packed", "pack_staging")

_PRIMITIVES = {
    "string": pa.string(),
    "binary": pa.binary(),
    "bool": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
}


class SchemaError(ValueError):
    """A table does not match its declared schema."""


def _arrow_type(spec: Any) -> pa.DataType:
    if isinstance(spec, str):
        if spec not in _PRIMITIVES:
            raise SchemaError(f"unknown type {spec!r}; known: {sorted(_PRIMITIVES)}")
        return _PRIMITIVES[spec]
    if "list" in spec:
        return pa.list_(_arrow_type(spec["list"]))
    if "struct" in spec:
        return pa.struct([_arrow_field(f) for f in spec["struct"]])
    raise SchemaError(f"cannot read type spec {spec!r}")


def _arrow_field(field: dict) -> pa.Field:
    return pa.field(field["name"], _arrow_type(field["type"]), nullable=field.get("nullable", False),
                    metadata={"doc": field.get("doc", "")})


@lru_cache(maxsize=None)
def _definition(table: str, version: int) -> dict:
    path = SCHEMA_DIR / f"v{version}" / f"{table}.json"
    if not path.exists():
        raise SchemaError(f"no schema for table {table!r} version {version} (looked for {path})")
    return json.loads(path.read_text())


def get_schema(table: str, version: int = CURRENT_VERSION) -> pa.Schema:
    """The Arrow schema of ``table`` at ``version``, with table/version in its metadata."""
    definition = _definition(table, version)
    return pa.schema([_arrow_field(f) for f in definition["fields"]],
                     metadata={"i2e.table": table, "i2e.schema_version": str(version)})


def column_names(table: str, version: int = CURRENT_VERSION) -> list[str]:
    return [f["name"] for f in _definition(table, version)["fields"]]


def projection(name: str, version: int = CURRENT_VERSION) -> list[str]:
    """The columns of a named projection (``v<N>/projections.json``: a column subset of one
    table, such as the finalize plan's narrow rows), checked against that table's schema."""
    spec = json.loads((SCHEMA_DIR / f"v{version}" / "projections.json").read_text())["projections"][name]
    missing = set(spec["columns"]) - set(column_names(spec["table"], version))
    if missing:
        raise SchemaError(f"projection {name!r} names columns {sorted(missing)} that {spec['table']} "
                          f"v{version} does not have")
    return list(spec["columns"])


def describe(table: str, version: int = CURRENT_VERSION) -> str:
    """A human-readable listing of a table's columns, types and meanings."""
    definition = _definition(table, version)
    schema = get_schema(table, version)
    lines = [f"{table} (schema v{version}): {definition['doc']}"]
    for field, spec in zip(schema, definition["fields"]):
        null = " (nullable)" if spec.get("nullable") else ""
        lines.append(f"  {field.name:<20} {str(field.type):<40} {spec.get('doc', '')}{null}")
    return "\n".join(lines)


def _check_nulls(array: pa.Array, field: pa.Field, where: str) -> None:
    """Null checks of one column, down through lists and structs: a non-nullable field
    nested in a struct ("links.entity_id") is checked like a top-level column."""
    if not field.nullable and array.null_count:
        raise SchemaError(f"{where}: {field.name!r} is not nullable but has {array.null_count} nulls")
    if pa.types.is_list(field.type):
        _check_nulls(array.flatten(), field.type.value_field, f"{where}.{field.name}[]")
    elif pa.types.is_struct(field.type):
        valid = array.filter(array.is_valid()) if array.null_count else array
        for child in field.type:
            _check_nulls(valid.field(child.name), child, f"{where}.{field.name}")


def validate(table: pa.Table, name: str, version: int = CURRENT_VERSION) -> pa.Table:
    """Return ``table`` in the exact column order/types of the schema, or raise SchemaError.

    Extra or missing columns and type mismatches are errors; nothing is cast silently
    except that the schema's field metadata is attached.
    """
    schema = get_schema(name, version)
    got, want = set(table.column_names), set(schema.names)
    if got != want:
        raise SchemaError(f"{name} v{version}: missing columns {sorted(want - got)}, "
                          f"unexpected columns {sorted(got - want)}")
    table = table.select(schema.names)
    for field in schema:
        actual = table.schema.field(field.name).type
        if actual != field.type:
            raise SchemaError(f"{name} v{version}: column {field.name!r} has type {actual}, "
                              f"schema says {field.type}")
        for chunk in table.column(field.name).chunks:
            _check_nulls(chunk, field, f"{name} v{version}")
    return pa.Table.from_arrays(table.columns, schema=schema)


def from_records(records: Iterable[dict], name: str, version: int = CURRENT_VERSION) -> pa.Table:
    """Build a validated table from dicts (keys must be exactly the schema's columns)."""
    records = list(records)
    schema = get_schema(name, version)
    want = set(schema.names)
    for index, record in enumerate(records):
        if record.keys() != want:
            raise SchemaError(f"{name} v{version}: record {index} has unexpected keys "
                              f"{sorted(record.keys() - want)} and lacks {sorted(want - record.keys())}")
    try:
        table = pa.Table.from_pylist(records, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as error:
        raise SchemaError(f"{name} v{version}: {error}") from error
    return validate(table, name, version)


def write_table(table: pa.Table, path: str | Path, name: str, version: int = CURRENT_VERSION,
                row_group_size: int = 1024, filesystem: pafs.FileSystem | None = None) -> None:
    """Validate and write ``table`` atomically: a local file under a temporary name, then
    renamed; on another ``filesystem`` (object storage: one PUT) at its name."""
    table = validate(table, name, version)
    if filesystem is not None:
        pq.write_table(table, str(path), row_group_size=row_group_size, filesystem=filesystem)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=row_group_size)
    tmp.replace(path)


def read_table(path: str | Path, name: str, columns: list[str] | None = None,
               require_metadata: bool = True, filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """Read a parquet file of ``name`` (local, or a path on ``filesystem``) and validate it
    against its schema.

    The schema version is taken from the file's metadata, so old files are read with
    the schema they were written with. A file without this project's table metadata is
    refused unless ``require_metadata`` is False (for user-made inputs such as a KB, which
    are then validated against the current version).
    """
    parquet = pq.ParquetFile(str(path), filesystem=filesystem) if filesystem is not None else pq.ParquetFile(path)
    table = parquet.read(columns=columns)
    dataset_schema = parquet.schema_arrow
    metadata = (dataset_schema or table.schema).metadata or {}
    found = metadata.get(b"i2e.table", b"").decode()
    if not found and require_metadata:
        raise SchemaError(f"{path} is not a {name!r} table written by this project (no i2e.table "
                          "metadata); write it with schemas.write_table")
    if found and found != name:
        raise SchemaError(f"{path} holds table {found!r}, not {name!r}")
    version = int(metadata.get(b"i2e.schema_version", str(CURRENT_VERSION).encode()).decode())
    if columns is None:
        return validate(table, name, version)
    schema = get_schema(name, version)
    for column in columns:
        if column not in schema.names:
            raise SchemaError(f"{name} v{version} has no column {column!r}")
        if table.schema.field(column).type != schema.field(column).type:
            raise SchemaError(f"{name} v{version}: column {column!r} has type "
                              f"{table.schema.field(column).type}, schema says {schema.field(column).type}")
    return table
