"""The visual-concepts source on the real ImageNet-21k WordNet files shipped with timm."""
from __future__ import annotations

import subprocess
import sys

import pytest

import schemas
from i2e_engine.kb.alias_index import normalize_alias
from i2e_engine.kb.concepts import SENSES, STOP_WORDS, concept_table, data_dir, described_concept, read_synsets


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    table = concept_table()
    schemas.validate(table, "kb")
    return table.to_pylist()


@pytest.fixture(scope="module")
def owner(rows) -> dict[str, str]:
    """normalized word -> synset id of the row that holds it."""
    return {normalize_alias(word): row["entity_id"].removeprefix("wordnet:")
            for row in rows for word in [row["name"], *row["aliases"]]}


def test_reads_the_21k_list_without_importing_timm():
    code = ("import sys; from i2e_engine.kb.concepts import concept_table; "
            "concept_table(limit=3); print('timm' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    ids, lemmas, glosses = read_synsets()
    assert (data_dir() / "imagenet21k_goog_synsets.txt").is_file()
    assert len(ids) == 21_844 and len(set(ids)) == len(ids)       # 21,843 of 21k + teddy bear of 1k
    assert set(ids) <= lemmas.keys() and set(ids) <= glosses.keys()
    assert lemmas["n02084071"] == ["dog", "domestic dog", "Canis familiaris"]


def test_rows_are_valid_unique_concepts(rows):
    assert 15_000 <= len(rows) <= 21_844
    ids = [row["entity_id"] for row in rows]
    assert len(set(ids)) == len(ids) and all(i.startswith("wordnet:n") and len(i) == 17 for i in ids)
    assert {row["source"] for row in rows} == {"concepts"} and {row["kind"] for row in rows} == {"concept"}
    assert all(row["qid"] is None and row["wiki_title"] is None and row["description"] for row in rows)
    assert all(row["popularity"] >= 0.01 for row in rows)


def test_one_sense_per_word(rows):
    seen: dict[str, str] = {}
    for row in rows:
        keys = [normalize_alias(word) for word in [row["name"], *row["aliases"]]]
        assert len(keys) == len(set(keys)), row
        for key in keys:
            assert key not in seen, (key, seen.get(key), row["entity_id"])
            seen[key] = row["entity_id"]


def test_only_lower_case_words_and_no_stop_words(rows, owner):
    assert all(not word[0].isupper() for row in rows for word in [row["name"], *row["aliases"]])
    assert not STOP_WORDS & owner.keys()
    assert not {"group", "couple", "bunch", "view", "item", "board", "sink", "white"} & owner.keys()


def test_chosen_senses(owner):
    assert owner["dog"] == "n02084071"            # not the andiron
    assert owner["table"] == "n04379243"          # the furniture
    assert owner["mouse"] == "n03793489"          # the computer mouse (override)
    assert owner["toilet"] == "n03371875"         # the fixture, a word its synset lacks (EXTRA_WORDS)
    assert "riding" not in owner and "snow" not in owner       # acts and phenomena are no concepts
    assert owner["cat"] == "n02121620" and owner["horse"] == "n02374451" and owner["car"] == "n02958343"
    assert owner["ball"] == "n02778669"           # the object before "the game of baseball" (class rule)
    assert owner["orange"] == "n07747607"         # the fruit before the colour
    assert owner["cup"] == "n03147509"            # the container, not the 1k class "punch"
    assert owner["teddy bear"] == "n04399382"     # the 1k class missing from 21k
    assert all(owner[word] == synset for word, synset in SENSES.items())
    assert owner["field"] == "n09393605" and owner["tie"] == "n03815615"


def test_a_colour_or_young_before_a_concept_word_is_no_concept(owner):
    # WordNet has "white sheep" (Dall sheep) and "young man" (young buck); in a caption
    # they describe a sheep and a man, which link instead.
    assert "white sheep" not in owner and "young man" not in owner and "black bear" not in owner
    assert owner["sheep"] and owner["man"] and owner["bear"]
    assert owner["hot dog"]                       # not a colour: a concept of its own
    assert described_concept("white sheep", {"sheep"}) and not described_concept("white sheep", {"goat"})
    assert not described_concept("barbed wire", {"wire"})


def test_words_whose_only_sense_captions_never_mean_are_no_concepts(owner):
    # "trick" is a prostitute's customer, "game" hunted animals, "pile" a column driven into
    # the ground: what "a skateboarding trick", "a baseball game", "a pile of" never mean.
    assert not {"trick", "game", "pile", "wind", "batter", "dinner", "pitch"} & owner.keys()


def test_popularity_follows_word_frequency(rows):
    by_name = {row["name"]: row["popularity"] for row in rows}
    assert by_name["dog"] > 50 > by_name["jaguar"] > 1
    floored = [name for name, popularity in by_name.items() if popularity == 0.01]
    assert "hogchoker" in floored and 0.02 * len(rows) < len(floored) < 0.3 * len(rows)


def test_limit():
    table = concept_table(limit=25)
    assert table.num_rows == 25
    assert table.column("entity_id").to_pylist() == concept_table().column("entity_id").to_pylist()[:25]
