"""Merging sources into a versioned KB file, and the cached offline default KB."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

import schemas
from i2e_engine.kb.build import build_kb, default_kb_path, ensure_default_kb, kb_version, read_kb


def _wikidata_dump(path) -> None:
    entities = [
        {"type": "item", "id": "Q90", "labels": {"en": {"language": "en", "value": "Paris"}},
         "descriptions": {"en": {"language": "en", "value": "capital and largest city of France"}},
         "aliases": {}, "claims": {}, "sitelinks": {"enwiki": {"site": "enwiki", "title": "Paris", "badges": []}}},
        {"type": "item", "id": "Q146", "labels": {"en": {"language": "en", "value": "house cat"}},
         "descriptions": {"en": {"language": "en", "value": "domesticated feline"}},
         "aliases": {"en": [{"language": "en", "value": "cat"}]}, "claims": {}, "sitelinks": {}},
    ]
    path.write_text("[\n" + ",\n".join(json.dumps(e) for e in entities) + "\n]\n", encoding="utf-8")


def test_merge_sources_and_read_back(tmp_path):
    dump = tmp_path / "dump.json"
    _wikidata_dump(dump)
    out = tmp_path / "kb.parquet"
    table = build_kb(["vital", "geonames", "wikidata"], out, wikidata_dump=dump, limit=10)
    assert table.num_rows == 22
    assert table.column("source").to_pylist() == ["vital_articles"] * 10 + ["geonames"] * 10 + ["wikidata"] * 2
    read, version = read_kb(out)
    assert read.equals(table)
    assert version == kb_version(table)
    assert version.startswith("geonames+vital_articles+wikidata-") and len(version.split("-")[-1]) == 16
    # the file is still an ordinary kb table for schemas.read_table
    assert schemas.read_table(out, "kb").num_rows == 22
    assert pq.read_schema(out).metadata[b"i2e.kb_version"].decode() == version


def test_exact_duplicate_ids_are_dropped_first_one_kept(tmp_path):
    table = build_kb(["vital", "vital"], tmp_path / "kb.parquet", limit=7)
    ids = table.column("entity_id").to_pylist()
    assert len(ids) == 7 and len(set(ids)) == 7


def test_version_is_a_function_of_the_content(tmp_path):
    first = build_kb(["vital"], tmp_path / "a.parquet", limit=30)
    again = build_kb(["vital"], tmp_path / "b.parquet", limit=30)
    assert read_kb(tmp_path / "a.parquet")[1] == read_kb(tmp_path / "b.parquet")[1]
    # row order does not matter, content does
    assert kb_version(first.take(list(reversed(range(first.num_rows))))) == kb_version(again)
    rows = first.to_pylist()
    rows[3]["description"] = rows[3]["description"] + " (edited)"
    assert kb_version(schemas.from_records(rows, "kb")) != kb_version(first)
    rows = first.to_pylist()
    rows[0]["aliases"] = rows[0]["aliases"] + ["another name"]
    assert kb_version(schemas.from_records(rows, "kb")) != kb_version(first)
    assert kb_version(first.slice(0, 29)) != kb_version(first)


def test_a_custom_kb_without_version_metadata_gets_one_computed(tmp_path):
    custom = schemas.from_records([{"entity_id": "custom:1", "name": "Widget", "description": "a thing",
                                    "aliases": ["gadget"], "source": "custom", "popularity": 2.0}], "kb")
    path = tmp_path / "custom.parquet"
    schemas.write_table(custom, path, "kb")
    table, version = read_kb(path)
    assert table.num_rows == 1 and version == kb_version(custom) and version.startswith("custom-")


def test_bad_source_lists_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        build_kb(["vital", "dbpedia"], tmp_path / "kb.parquet")
    with pytest.raises(ValueError, match="unknown"):
        build_kb([], tmp_path / "kb.parquet")
    with pytest.raises(ValueError, match="wikidata_dump"):
        build_kb(["wikidata"], tmp_path / "kb.parquet")
    assert not (tmp_path / "kb.parquet").exists()


def test_default_kb_is_built_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("I2E_CACHE", str(tmp_path / "cache"))
    path = ensure_default_kb()
    assert path == default_kb_path() and path.is_relative_to(tmp_path / "cache")
    stamp = path.stat().st_mtime_ns
    assert ensure_default_kb() == path and path.stat().st_mtime_ns == stamp   # reused, not rebuilt
    table, version = read_kb(path)
    assert version.startswith("geonames+vital_articles-")
    ids = set(table.column("entity_id").to_pylist())
    assert {"enwiki:Eiffel_Tower", "enwiki:Cat", "geonames:2988507", "geonames:3017382"} <= ids
    assert not list(path.parent.glob("*.tmp"))
    assert default_kb_path(min_population=50_000) != path
