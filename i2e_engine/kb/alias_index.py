"""Normalized alias -> candidate entities with priors P(entity | alias).

Candidate generation in spaCy's EntityLinker, ReFinED and BLINK starts from an alias
table: surface forms normalized the same way on both sides (KB and mention), each with a
prior over the entities it can name. We have no anchor-link counts, so the prior comes
from the KB's ``popularity`` column.

The prior rule (see :class:`AliasIndex`):

1. *Per-source scale.* ``popularity`` is in each source's own unit (people for geonames,
   sitelinks + 1 for Wikidata, a constant for vital articles), so raw values cannot be
   compared across sources: a city's population would always beat any Wikidata item's
   sitelink count. Each entity's popularity is therefore divided by the median positive
   popularity of its source, so a typical entity of every source weighs 1; ratios inside
   a source are unchanged.
2. *Name over alias.* An entity contributes its scaled popularity to the alias that is its
   own name, and ``ALIAS_WEIGHT`` (0.5) of it to its other aliases: a surface form is
   more often used for the entity that carries it as a title than for one that merely
   lists it as an alias (as with Wikipedia titles against redirects).
3. *Smoothing.* ``prior = (1 - smoothing) * mass / sum(mass over the alias's entities)
   + smoothing / n_candidates``: no candidate of an alias ends at exactly zero (a
   zero-popularity entity is still reachable by context), and the priors of an alias
   sum to 1 (the NIL decision is the linker's threshold, not a prior mass).
"""
from __future__ import annotations

import re
import statistics
import unicodedata
from collections import defaultdict
from typing import Collection

import pyarrow as pa
from spacy.lang.en.stop_words import STOP_WORDS

from i2e_engine.inflect import singulars

ALIAS_WEIGHT = 0.5
DEFAULT_SMOOTHING = 0.01

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_POSSESSIVE = re.compile(r"(?<=\w)'s\b")
_DASHES = re.compile(r"[-_\u2010-\u2015]+")
# Sentence punctuation around a mention ("Paris," / "(Paris)" / '"The Beatles"'); symbols
# that can be part of a name (C++, C#, AT&T) are kept.
_END_PUNCT = ".,;:!?'\"()[]{}<>\u00ab\u00bb\u201c\u201d\u2026/\\|*~ "
_NUMERIC = re.compile(r"[\d\W_]+")
_WORDS = re.compile(r"[^\W_]+")


def fold(text: str) -> str:
    """NFKC, case-folded, accents removed, one kind of apostrophe, possessive "'s" dropped.

    Accents are removed because web alt-text often drops them ("Sao Paulo", "Pokemon")
    while KB names keep them. Shared by alias keys and the linker's context words.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()
    decomposed = unicodedata.normalize("NFKD", text)
    text = unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))
    return _POSSESSIVE.sub("", text)


def normalize_alias(text: str) -> str:
    """The key under which a surface form is looked up; applied to KB aliases and mentions alike.

    Folded (:func:`fold`), possessive "'s" removed ("Paris's" -> "paris"), hyphens and
    underscores read as spaces ("Coca-Cola" = "Coca Cola"), whitespace collapsed,
    sentence punctuation stripped at both ends, and a leading "the " dropped ("The
    Beatles" = "Beatles").
    """
    text = " ".join(_DASHES.sub(" ", fold(text)).split()).strip(_END_PUNCT)
    if text.startswith("the "):
        text = text[4:].strip(_END_PUNCT)
    return text


def _stop_words_only(key: str) -> bool:
    return all(word in STOP_WORDS for word in _WORDS.findall(key))


class AliasIndex:
    """Candidate entities of a normalized alias, with priors (rule in the module docstring).

    Built once per process from a ``kb`` table; lookups are dictionary reads.
    """

    def __init__(self, kb: pa.Table, *, smoothing: float = DEFAULT_SMOOTHING):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        rows = kb.select(["entity_id", "name", "description", "aliases", "source", "popularity"]).to_pylist()
        self._entities: dict[str, dict] = {}
        for row in rows:
            if row["entity_id"] in self._entities:
                raise ValueError(f"duplicate entity_id {row['entity_id']!r} in the KB table")
            if not row["popularity"] >= 0.0:   # also rejects NaN
                raise ValueError(f"entity {row['entity_id']!r} has popularity {row['popularity']!r}; "
                                 "popularity must be a non-negative number")
            self._entities[row["entity_id"]] = row
        scale = self._source_scales(rows)

        masses: dict[str, dict[str, float]] = defaultdict(dict)
        # normalized key -> surface form -> sources of the entities that carry it (plain
        # dicts, so the index pickles for engines that ship it to workers)
        self._surfaces: dict[str, dict[str, set[str]]] = {}
        for row in rows:
            mass = row["popularity"] / scale[row["source"]]
            forms = [(row["name"], 1.0)] + [(alias, ALIAS_WEIGHT) for alias in row["aliases"]]
            for surface, weight in forms:
                key = normalize_alias(surface)
                if not key:
                    continue
                self._surfaces.setdefault(key, {}).setdefault(surface, set()).add(row["source"])
                by_entity = masses[key]
                by_entity[row["entity_id"]] = max(by_entity.get(row["entity_id"], 0.0), weight * mass)

        self._candidates: dict[str, list[tuple[str, float]]] = {}
        for key, by_entity in masses.items():
            total, n = sum(by_entity.values()), len(by_entity)
            priors = {entity_id: ((1.0 - smoothing) * mass / total + smoothing / n) if total > 0 else 1.0 / n
                      for entity_id, mass in by_entity.items()}
            self._candidates[key] = sorted(priors.items(), key=lambda item: (-item[1], item[0]))

    @classmethod
    def from_kb_table(cls, kb: pa.Table, *, smoothing: float = DEFAULT_SMOOTHING) -> "AliasIndex":
        """Same as ``AliasIndex(kb)``; the name the engine's wrappers call it by."""
        return cls(kb, smoothing=smoothing)

    @staticmethod
    def _source_scales(rows: list[dict]) -> dict[str, float]:
        """Median positive popularity of each source (1.0 for a source with none)."""
        by_source: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            if row["popularity"] > 0:
                by_source[row["source"]].append(row["popularity"])
        scales = {source: statistics.median(values) for source, values in by_source.items()}
        return {row["source"]: scales.get(row["source"], 1.0) for row in rows}

    def __len__(self) -> int:
        """Number of entities."""
        return len(self._entities)

    def candidates(self, mention: str, k: int = 30) -> list[tuple[str, float]]:
        """Up to ``k`` (entity_id, prior) pairs for a mention, best first (ties by entity_id).

        A plural mention with no candidates of its own ("coins") gets its singular's.
        """
        key = normalize_alias(mention)
        found = self._candidates.get(key)
        for singular in ([] if found else singulars(key)):
            found = self._candidates.get(singular)
            if found:
                break
        return list((found or ())[:k])

    def entity(self, entity_id: str) -> dict:
        """The KB row of an entity: entity_id, name, description, aliases, source, popularity.

        Raises KeyError for an id the KB does not hold.
        """
        row = self._entities[entity_id]
        return {**row, "aliases": list(row["aliases"])}

    def phrases(self, min_chars: int = 3, exclude_sources: Collection[str] = ("geonames",)) -> list[str]:
        """Surface forms for a case-insensitive spaCy PhraseMatcher, sorted.

        Meant for concepts the small NER model does not tag ("dog", "pizza"). Left out:
        forms whose normalized key is shorter than ``min_chars``, made only of English
        stop words ("The Who", "It"), or only digits and punctuation ("1", "1984"); forms
        with a parenthetical ("Mercury (planet)"), which never occur as such in text; and,
        by default, forms that only entities of ``exclude_sources`` carry: many city names
        are common words ("Nice", "Reading", "Mobile", "Split") and places are what the
        NER's GPE/LOC labels already find. A matched form is still linked against all its
        candidates, geonames included.
        """
        excluded = frozenset(exclude_sources)
        out: set[str] = set()
        for key, surfaces in self._surfaces.items():
            if len(key) < min_chars or _NUMERIC.fullmatch(key) or _stop_words_only(key):
                continue
            out.update(surface for surface, sources in surfaces.items()
                       if "(" not in surface and not sources <= excluded)
        return sorted(out)
