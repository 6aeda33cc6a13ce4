"""The bags of content words the linker compares for context similarity: an alt-text's
(:mod:`i2e_engine.linking`) and each entity's name and description, which the alias index
stores once per KB as word ids (:func:`i2e_engine.kb.alias_index.build_index`), so that
linking reads them instead of parsing texts.

A bag: the folded words (:func:`i2e_engine.kb.alias_index.fold`), less spaCy's English
stop words and single letters, each crudely singularized ("towers"/"tower" and
"cities"/"city" meet).
"""
from __future__ import annotations

import functools
import re

from spacy.lang.en.stop_words import STOP_WORDS

from i2e_engine.kb.alias_index import fold

_WORDS = re.compile(r"[^\W_]+")
WORDS_CACHE = 200_000


def content_words(text: str) -> frozenset[str]:
    """The bag of words of ``text`` (module docstring)."""
    words = frozenset(map(content_word, _WORDS.findall(fold(text))))
    return words - {""} if "" in words else words


@functools.lru_cache(maxsize=WORDS_CACHE)
def content_word(word: str) -> str:
    """A folded word as a bag holds it: "" for a stop word or a single letter, else its
    crude singular."""
    if len(word) < 2 or word in STOP_WORDS:
        return ""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word

