"""Merging sources into a versioned KB file, and the cached offline default KB."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

import schemas
from i2e_engine import storage
from i2e_engine.kb.alias_index import AliasIndex
from i2e_engine.kb.build import (DEMO_SOURCES, build_kb, default_kb_path, ensure_alias_index, ensure_kb,
                                 kb_version, merge_sources, published_index_uri, read_kb)


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
    # 10 vital + 10 geonames (countries, none titled among the first 10 vital articles) + 2 wikidata
    assert table.num_rows == 22
    assert sorted(set(table.column("source").to_pylist())) == ["geonames", "vital_articles", "wikidata"]
    paris = next(row for row in table.to_pylist() if row["qid"] == "Q90")
    assert paris["entity_id"] == "enwiki:Paris" and paris["wiki_title"] == "Paris"
    read, version = read_kb(out)
    assert read.equals(table)
    assert version == kb_version(table)
    assert version.startswith("geonames+vital_articles+wikidata-") and len(version.split("-")[-1]) == 16
    # the file is still an ordinary kb table for schemas.read_table
    assert schemas.read_table(out, "kb").num_rows == 22
    assert pq.read_schema(out).metadata[b"i2e.kb_version"].decode() == version


def _row(entity_id, name, source, popularity, *, aliases=(), description="", qid=None, title=None, kind="thing"):
    return {"entity_id": entity_id, "name": name, "description": description, "aliases": list(aliases),
            "source": source, "popularity": float(popularity), "qid": qid, "wiki_title": title, "kind": kind}


def test_one_entity_per_title_or_qid_with_scaled_priors_summed():
    vital = schemas.from_records([_row("enwiki:Paris", "Paris", "vital_articles", 1, description="Capital of France",
                                       title="Paris"),
                                  _row("enwiki:Lyon", "Lyon", "vital_articles", 1, title="Lyon")], "kb")
    dbpedia = schemas.from_records([_row("enwiki:Paris", "Paris", "dbpedia", 41, aliases=["City of Light"],
                                         title="paris"),           # lower case: the same title
                                    _row("enwiki:Jaguar", "Jaguar", "dbpedia", 3, title="Jaguar"),
                                    _row("enwiki:Hg", "Hg", "dbpedia", 1, title="Hg")], "kb")
    places = schemas.from_records([_row("geonames:1", "Paris", "geonames", 2_000_000, aliases=["Lutetia"],
                                        description="City in France", title="Paris", kind="place"),
                                   _row("geonames:2", "Lyon", "geonames", 500_000, title="Lyon", kind="place"),
                                   _row("geonames:3", "Nowhere", "geonames", 1_000_000, kind="place")], "kb")
    wikidata = schemas.from_records([_row("Q35694", "jaguar", "wikidata", 30, qid="Q35694", title="Jaguar",
                                          description="species of mammal"),
                                     _row("Q7", "Seven", "wikidata", 20, qid="Q7")], "kb")
    merged = {row["entity_id"]: row for row in merge_sources([vital, dbpedia, places, wikidata]).to_pylist()}
    assert sorted(merged) == ["Q7", "enwiki:Hg", "enwiki:Jaguar", "enwiki:Lyon", "enwiki:Paris", "geonames:3"]
    paris = merged["enwiki:Paris"]
    assert paris["name"] == "Paris" and paris["description"] == "Capital of France" and paris["kind"] == "place"
    assert paris["source"] == "dbpedia+geonames+vital_articles" and set(paris["aliases"]) == {"City of Light", "Lutetia"}
    # medians: vital 1, dbpedia 3, geonames 1,000,000, wikidata 25 -> Paris weighs 1 + 41/3 + 2
    assert paris["popularity"] == pytest.approx(1 + 41 / 3 + 2)
    jaguar = merged["enwiki:Jaguar"]
    assert jaguar["qid"] == "Q35694" and jaguar["description"] == "species of mammal"
    assert jaguar["name"] == "jaguar" and jaguar["popularity"] == pytest.approx(1 + 30 / 25)   # wikidata before dbpedia
    assert merged["Q7"]["popularity"] == pytest.approx(20 / 25) and merged["geonames:3"]["popularity"] == 1.0


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
    custom = schemas.from_records([_row("custom:1", "Widget", "custom", 2.0, aliases=["gadget"])], "kb")
    path = tmp_path / "custom.parquet"
    schemas.write_table(custom, path, "kb")
    table, version = read_kb(path)
    assert table.num_rows == 1 and version == kb_version(custom) and version.startswith("custom-")


def test_a_kb_written_before_schema_v4_is_read_with_empty_new_columns(tmp_path):
    old = schemas.from_records([{"entity_id": "custom:1", "name": "Widget", "description": "a thing",
                                 "aliases": ["gadget"], "source": "custom", "popularity": 2.0}], "kb", version=3)
    path = tmp_path / "old.parquet"
    schemas.write_table(old, path, "kb", version=3)
    table, _ = read_kb(path)
    assert table.to_pylist() == [_row("custom:1", "Widget", "custom", 2.0, aliases=["gadget"], description="a thing")]


def test_bad_source_lists_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        build_kb(["vital", "freebase"], tmp_path / "kb.parquet")
    with pytest.raises(ValueError, match="unknown"):
        build_kb([], tmp_path / "kb.parquet")
    with pytest.raises(ValueError, match="wikidata_dump"):
        build_kb(["wikidata"], tmp_path / "kb.parquet")
    assert not (tmp_path / "kb.parquet").exists()


def test_a_kb_and_its_alias_index_are_built_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("I2E_CACHE", str(tmp_path / "cache"))
    path = ensure_kb(DEMO_SOURCES, 100_000)
    assert path == default_kb_path(DEMO_SOURCES, 100_000) and path.is_relative_to(tmp_path / "cache")
    stamp = path.stat().st_mtime_ns
    assert ensure_kb(DEMO_SOURCES, 100_000) == path and path.stat().st_mtime_ns == stamp   # reused, not rebuilt
    table, version = read_kb(path)
    assert version.startswith("concepts+geonames+vital_articles-")
    ids = set(table.column("entity_id").to_pylist())
    assert {"enwiki:Eiffel_Tower", "enwiki:Cat", "enwiki:Paris", "enwiki:France", "wordnet:n02084071"} <= ids
    assert not list(path.parent.glob("*.tmp"))
    assert default_kb_path(DEMO_SOURCES, 50_000) != path
    with monkeypatch.context() as patch:     # other code that makes the rows: another file
        patch.setattr("i2e_engine.kb.build.kb_code_version", lambda: "other-code")
        assert default_kb_path(DEMO_SOURCES, 100_000) != path
    folder = ensure_alias_index(str(path))
    assert folder.parent == tmp_path / "cache" / "alias-index" and (folder / "meta.json").is_file()
    stamp = (folder / "keys.marisa").stat().st_mtime_ns
    assert ensure_alias_index(str(path)) == folder and (folder / "keys.marisa").stat().st_mtime_ns == stamp


def test_a_remote_kb_publishes_its_index_and_another_machine_copies_it(tmp_path, monkeypatch):
    monkeypatch.setenv("I2E_CACHE", str(tmp_path / "machine-a"))
    kb_uri = "memory://bucket/kb/small.parquet"
    table = build_kb(["vital"], kb_uri, limit=50)
    published = published_index_uri(kb_uri)
    assert storage.exists(storage.join(published, "meta.json"))
    monkeypatch.setenv("I2E_CACHE", str(tmp_path / "machine-b"))

    def no_build(*args, **kwargs):
        raise AssertionError("machine b must copy the published index, not build one")

    monkeypatch.setattr("i2e_engine.kb.build.build_index", no_build)
    folder = ensure_alias_index(kb_uri)
    assert folder.is_relative_to(tmp_path / "machine-b")
    first = table.to_pylist()[0]
    assert AliasIndex(folder).candidates(first["name"])[0][0] == first["entity_id"]


def test_build_reports_progress_per_source(tmp_path, monkeypatch):
    monkeypatch.setenv("I2E_CACHE", str(tmp_path / "cache"))
    calls = []
    build_kb(["vital", "geonames"], tmp_path / "kb.parquet", limit=5, progress=lambda *call: calls.append(call))
    finished = {source: done for source, done, total in calls if done == total}
    assert finished == {"vital": 5, "geonames": 5}
    assert all(0 <= done <= total for _, done, total in calls)


def test_an_index_built_by_other_index_code_is_not_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("I2E_CACHE", str(tmp_path / "cache"))
    kb = tmp_path / "kb.parquet"
    build_kb(["vital"], kb, limit=20)
    first = ensure_alias_index(str(kb))
    monkeypatch.setattr("i2e_engine.kb.build.index_code_version", lambda: "changed-code")
    second = ensure_alias_index(str(kb))
    assert second != first and second.name.endswith("-changed-code") and (second / "meta.json").is_file()
