"""Alias normalization, priors and matcher phrases, on the real offline KB and on small KBs."""
from __future__ import annotations

import pickle

import pyarrow as pa
import pytest

import schemas
from i2e_engine.kb.alias_index import ALIAS_WEIGHT, AliasIndex, normalize_alias
from i2e_engine.kb.geonames import geonames_table
from i2e_engine.kb.vital import vital_table


def _kb(*rows: tuple) -> pa.Table:
    """rows: (entity_id, name, aliases, source, popularity)."""
    return schemas.from_records([{"entity_id": e, "name": n, "description": f"about {n}", "aliases": list(a),
                                  "source": s, "popularity": float(p)} for e, n, a, s, p in rows], "kb")


@pytest.fixture(scope="module")
def default_kb() -> pa.Table:
    return pa.concat_tables([vital_table(), geonames_table()])


@pytest.fixture(scope="module")
def index(default_kb) -> AliasIndex:
    return AliasIndex(default_kb)


@pytest.mark.parametrize("text, key", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  the   Beatles ", "beatles"),
    ('"The Beatles"', "beatles"),
    ("Paris,", "paris"),
    ("(Paris)", "paris"),
    ("Paris's", "paris"),
    ("Paris\u2019s", "paris"),
    ("PARIS", "paris"),
    ("São Paulo", "sao paulo"),
    ("Coca-Cola", "coca cola"),
    ("\uff30\uff41\uff52\uff49\uff53", "paris"),      # full-width letters (NFKC)
    ("Straße", "strasse"),                             # casefold, not lower
    ("C++", "c++"),
    ("Theodore", "theodore"),                          # "the" only as a whole word
])
def test_normalize_alias(text, key):
    assert normalize_alias(text) == key


def test_priors_of_every_alias_sum_to_at_most_one(index, default_kb):
    surfaces = set(default_kb.column("name").to_pylist())
    for aliases in default_kb.column("aliases").to_pylist():
        surfaces.update(aliases)
    assert len(index) == default_kb.num_rows
    ambiguous = 0
    for surface in surfaces:
        candidates = index.candidates(surface, k=10_000)
        assert candidates, surface
        assert sum(prior for _, prior in candidates) <= 1.0 + 1e-9
        assert all(0.0 < prior <= 1.0 for _, prior in candidates)
        ambiguous += len(candidates) > 1
    assert ambiguous > 1000


def test_paris_ranks_the_city_first(index):
    candidates = index.candidates("Paris", k=30)
    assert candidates[0][0] == "geonames:2988507"
    assert "enwiki:Paris" in dict(candidates)
    assert candidates == sorted(candidates, key=lambda c: (-c[1], c[0]))
    assert index.candidates("the paris's", k=30) == candidates
    assert index.candidates("Lutetia", k=30)[0][0] == "geonames:2988507"


def test_equal_popularity_ties_break_by_id(index):
    candidates = index.candidates("Mercury", k=5)
    assert candidates == [("enwiki:Mercury_(element)", pytest.approx(0.5)),
                          ("enwiki:Mercury_(planet)", pytest.approx(0.5))]


def test_name_weighs_more_than_an_alias():
    index = AliasIndex(_kb(("wd:1", "Jaguar", [], "wikidata", 10), ("wd:2", "Jaguar Cars", ["Jaguar"], "wikidata", 10)),
                       smoothing=0.0)
    assert index.candidates("jaguar") == [("wd:1", pytest.approx(1 / (1 + ALIAS_WEIGHT))),
                                          ("wd:2", pytest.approx(ALIAS_WEIGHT / (1 + ALIAS_WEIGHT)))]
    # an entity whose name and alias normalize alike counts once, as a name
    index = AliasIndex(_kb(("wd:1", "The Who", ["Who"], "wikidata", 1), ("wd:2", "Who", [], "wikidata", 1)),
                       smoothing=0.0)
    assert index.candidates("who") == [("wd:1", pytest.approx(0.5)), ("wd:2", pytest.approx(0.5))]


def test_popularity_is_compared_in_units_of_each_sources_median():
    # geonames counts people, wikidata sitelinks: each source's median entity weighs 1.
    index = AliasIndex(_kb(("geonames:1", "Springfield", [], "geonames", 150_000),
                           ("geonames:2", "Shelbyville", [], "geonames", 50_000),
                           ("Q1", "Springfield", [], "wikidata", 60),
                           ("Q2", "Ogdenville", [], "wikidata", 20)), smoothing=0.0)
    # medians: geonames 100,000, wikidata 40 -> masses 1.5 and 1.5
    assert dict(index.candidates("Springfield")) == {"geonames:1": pytest.approx(0.5), "Q1": pytest.approx(0.5)}


def test_smoothing_keeps_zero_popularity_reachable():
    index = AliasIndex(_kb(("a", "Alpha", [], "custom", 9), ("b", "Alpha", [], "custom", 0)), smoothing=0.1)
    assert index.candidates("alpha") == [("a", pytest.approx(0.9 * 1.0 + 0.05)), ("b", pytest.approx(0.05))]
    all_zero = AliasIndex(_kb(("a", "Beta", [], "custom", 0), ("b", "Beta", [], "custom", 0)))
    assert all_zero.candidates("beta") == [("a", 0.5), ("b", 0.5)]


def test_k_truncates_after_the_priors_are_computed(index):
    full = index.candidates("London", k=30)
    assert len(full) >= 3 and index.candidates("London", k=1) == full[:1]
    assert index.candidates("no such entity anywhere", k=30) == []


def test_entity_lookup(index):
    cat = index.entity("enwiki:Cat")
    assert cat["name"] == "Cat" and cat["description"] == "Small domesticated carnivorous mammal"
    assert cat["source"] == "vital_articles" and cat["aliases"] == [] and cat["entity_id"] == "enwiki:Cat"
    cat["name"] = "changed"
    cat["aliases"].append("kitty")
    assert index.entity("enwiki:Cat") == {**cat, "name": "Cat", "aliases": []}   # a copy: the index is unchanged
    with pytest.raises(KeyError):
        index.entity("enwiki:No_such_article")


def test_phrases_for_the_matcher(index):
    phrases = index.phrases()
    assert phrases == sorted(phrases) and len(phrases) > 9_000
    present = set(phrases)
    assert {"Dog", "Pizza", "Cat", "Eiffel Tower", "Mercury", "Austin"} <= present
    assert not any("(" in p for p in phrases)                   # "Mercury (planet)" never occurs in text
    assert "Lutetia" not in present                             # only a geonames city carries it
    assert "Lutetia" in set(index.phrases(exclude_sources=()))
    assert len(index.phrases(min_chars=10)) < len(phrases)


def test_phrases_leave_out_stop_words_numbers_and_short_forms():
    index = AliasIndex(_kb(("wd:1", "The Who", [], "wikidata", 1), ("wd:2", "1984", ["1,984"], "wikidata", 1),
                           ("wd:3", "Ox", [], "wikidata", 1), ("wd:4", "Let It Be", [], "wikidata", 1),
                           ("wd:5", "Dog", ["domestic dog"], "wikidata", 1)))
    assert index.phrases() == ["Dog", "Let It Be", "domestic dog"]
    assert "Ox" in index.phrases(min_chars=2)


def test_index_pickles_for_shipping_to_workers(index):
    copy = pickle.loads(pickle.dumps(index))
    assert copy.candidates("Paris") == index.candidates("Paris") and copy.phrases() == index.phrases()


def test_from_kb_table_with_smoothing():
    kb = _kb(("a", "Alpha", [], "custom", 1), ("b", "Alpha", [], "custom", 0))
    assert AliasIndex.from_kb_table(kb, smoothing=0.2).candidates("alpha") == [("a", pytest.approx(0.9)),
                                                                                ("b", pytest.approx(0.1))]
    with pytest.raises(ValueError, match="smoothing"):
        AliasIndex.from_kb_table(kb, smoothing=1.0)


def test_bad_kb_tables_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        AliasIndex(_kb(("a", "Alpha", [], "custom", 1), ("a", "Alpha", [], "custom", 1)))
    with pytest.raises(ValueError, match="non-negative"):
        AliasIndex(_kb(("a", "Alpha", [], "custom", -1)))
    with pytest.raises(ValueError, match="non-negative"):
        AliasIndex(_kb(("a", "Alpha", [], "custom", float("nan"))))
