"""The Wikidata reader against a dump written in Wikidata's exact JSON dump layout."""
from __future__ import annotations

import bz2
import gzip
import json
import logging
from pathlib import Path

import pytest

import schemas
from i2e_engine.kb.wikidata import WikidataStats, iter_wikidata, wikidata_table


def _text(language: str, value: str) -> dict:
    return {"language": language, "value": value}


def _sitelinks(*sites: str, title: str = "x") -> dict:
    return {site: {"site": site, "title": title, "badges": []} for site in sites}


def _instance_of(qid: str, numeric: int) -> dict:
    return {"P31": [{"mainsnak": {"snaktype": "value", "property": "P31",
                                  "datavalue": {"value": {"entity-type": "item", "numeric-id": numeric, "id": qid},
                                                "type": "wikibase-entityid"},
                                  "datatype": "wikibase-item"},
                     "type": "statement", "id": f"X${numeric}", "rank": "normal"}]}


ENTITIES = [
    {"type": "item", "id": "Q42", "pageid": 138, "ns": 0, "title": "Q42", "lastrevid": 2231275353,
     "modified": "2024-09-21T12:00:00Z",
     "labels": {"en": _text("en", "Douglas Adams"), "fr": _text("fr", "Douglas Adams")},
     "descriptions": {"en": _text("en", "English writer and humorist (1952–2001)"),
                      "de": _text("de", "britischer Science-Fiction-Autor")},
     "aliases": {"en": [_text("en", "Douglas Noël Adams"), _text("en", "Douglas Noel Adams"),
                        _text("en", "Douglas Adams")]},
     "claims": _instance_of("Q5", 5),
     "sitelinks": _sitelinks("enwiki", "frwiki", "dewiki", title="Douglas Adams")},
    {"type": "item", "id": "Q90", "labels": {"en": _text("en", "Paris")},
     "descriptions": {"en": _text("en", "capital and largest city of France")},
     "aliases": {"en": [_text("en", "City of Light"), _text("en", "Paris, France")],
                 "fr": [_text("fr", "Ville Lumière")]},
     "claims": _instance_of("Q515", 515),
     "sitelinks": _sitelinks("enwiki", "frwiki", "dewiki", "eswiki", "jawiki")},
    # German-only item: no English and no "mul" label, so it is not taken.
    {"type": "item", "id": "Q1497011", "labels": {"de": _text("de", "Dorfkirche Alt Tellin")},
     "descriptions": {"de": _text("de", "Kirchengebäude in Mecklenburg-Vorpommern")},
     "aliases": {}, "claims": {}, "sitelinks": _sitelinks("dewiki")},
    {"type": "property", "datatype": "wikibase-item", "id": "P31",
     "labels": {"en": _text("en", "instance of")},
     "descriptions": {"en": _text("en", "that class of which this subject is a particular example")},
     "aliases": {"en": [_text("en", "is a")]}, "claims": {}},
    # A name shared by every language, stored once under "mul" (Wikidata, since 2024).
    {"type": "item", "id": "Q5582", "labels": {"mul": _text("mul", "Vincent van Gogh")},
     "descriptions": {"en": _text("en", "Dutch painter (1853–1890)")},
     "aliases": {"mul": [_text("mul", "Vincent Willem van Gogh")], "en": [_text("en", "van Gogh")]},
     "claims": _instance_of("Q5", 5), "sitelinks": {}},
]
GARBAGE = '{"type":"item","id":"Q99","labels":{"en":{"language":"en","val'


def _dump_text() -> str:
    """Wikidata's layout: "[" line, one entity per line ending in ",", the last without, "]"."""
    lines = [json.dumps(entity, ensure_ascii=False, separators=(",", ":")) for entity in ENTITIES]
    lines.insert(2, GARBAGE)
    return "[\n" + ",\n".join(lines) + "\n]\n"


@pytest.fixture(scope="module")
def dumps(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("wikidata")
    text = _dump_text()
    plain = folder / "latest-all.json"
    plain.write_text(text, encoding="utf-8")
    gz = folder / "latest-all.json.gz"
    gz.write_bytes(gzip.compress(text.encode("utf-8")))
    bz = folder / "latest-all.json.bz2"
    bz.write_bytes(bz2.compress(text.encode("utf-8")))
    misnamed = folder / "dump.json"     # gzip content under a plain name
    misnamed.write_bytes(gzip.compress(text.encode("utf-8")))
    return {"plain": plain, "gz": gz, "bz2": bz, "misnamed": misnamed}


def test_rows_follow_the_row_rule(dumps):
    stats = WikidataStats()
    rows = list(iter_wikidata(dumps["plain"], stats=stats))
    assert [r["entity_id"] for r in rows] == ["Q42", "Q90", "Q5582"]
    adams, paris, gogh = rows
    assert adams == {"entity_id": "Q42", "name": "Douglas Adams",
                     "description": "English writer and humorist (1952–2001)",
                     "aliases": ["Douglas Noël Adams", "Douglas Noel Adams"],   # the label itself is not an alias
                     "source": "wikidata", "popularity": 4.0, "qid": "Q42", "kind": "thing",
                     "wiki_title": "Douglas_Adams"}
    assert paris["aliases"] == ["City of Light", "Paris, France"]       # French aliases left out
    assert paris["popularity"] == 6.0
    assert gogh["name"] == "Vincent van Gogh" and gogh["popularity"] == 1.0
    assert gogh["wiki_title"] is None and paris["qid"] == "Q90"       # no English sitelink, no title
    assert gogh["aliases"] == ["van Gogh", "Vincent Willem van Gogh"]
    assert stats == WikidataStats(lines=6, kept=3, not_item=1, no_label=1, bad_lines=1)


@pytest.mark.parametrize("kind", ["gz", "bz2", "misnamed"])
def test_compressed_dumps_give_the_same_rows(dumps, kind):
    assert list(iter_wikidata(dumps[kind])) == list(iter_wikidata(dumps["plain"]))


def test_limit_stops_early(dumps):
    stats = WikidataStats()
    rows = list(iter_wikidata(dumps["gz"], limit=2, stats=stats))
    assert [r["entity_id"] for r in rows] == ["Q42", "Q90"]
    assert stats.kept == 2 and stats.no_label == 0     # stopped before reading the rest


def test_other_language(dumps):
    rows = list(iter_wikidata(dumps["plain"], language="de"))
    # German label for Q1497011; "mul" for van Gogh; Q42/Q90 have no German label.
    assert [r["entity_id"] for r in rows] == ["Q1497011", "Q5582"]
    assert rows[0]["description"] == "Kirchengebäude in Mecklenburg-Vorpommern"
    assert rows[1]["description"] == ""         # no German (or mul) description
    assert rows[1]["aliases"] == ["Vincent Willem van Gogh"]


def test_table_is_a_valid_kb_table_and_bad_lines_are_logged(dumps, caplog):
    with caplog.at_level(logging.INFO, logger="i2e_engine.kb.wikidata"):
        table = wikidata_table(dumps["bz2"])
    assert schemas.validate(table, "kb").num_rows == 3
    assert table.column("entity_id").to_pylist() == ["Q42", "Q90", "Q5582"]
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "1 bad lines" in warning[0].getMessage()


def test_a_dump_of_only_bad_lines_gives_an_empty_table(tmp_path):
    path = tmp_path / "broken.json"
    invalid_utf8 = b'{"type":"item","id":"Q1","labels":{"en":{"language":"en","value":"\xff\xfe"}}}'
    path.write_bytes(b"[\nnot json,\n[1, 2],\n\"a string\",\n" + invalid_utf8 + b"\n]\n")
    stats = WikidataStats()
    assert list(iter_wikidata(path, stats=stats)) == []
    assert stats.bad_lines == 4
    assert wikidata_table(path).num_rows == 0
