"""Entity linking: mentions of an alt-text -> KB entities, with scores and runner-ups.

For each mention (after overlaps are resolved) the alias index gives up to
``top_k_candidates`` entities with priors P(entity | alias). Each candidate also gets a
context similarity, and the two are combined with spaCy's EntityLinker rule

    score = prior + sim - prior * sim

(a noisy-OR: either signal alone can carry a candidate, both together more, and the score
stays in [0, 1]). The best candidate is the link unless its score is under
``nil_threshold``, in which case the mention is NIL and dropped. The next
``max_runner_ups`` candidates are kept with their scores, so a later stage with another
signal (the image) can revisit the choice.

Context similarity is deliberately cheap and deterministic: the cosine between two
binary bags of content words (folded, stop words removed, crudely singularized), one from
the alt-text with the mention's own characters cut out, the other from the entity's name
and description minus the mention's words. Cutting the mention out on both sides keeps
the word that made a candidate a candidate ("paris") from counting as evidence for any
one of them. The alt-text keeps the other mentions, which are often the best evidence
("Eiffel Tower", "France").

Ties are broken by entity_id (candidates) and by mention start (mentions), so the same
input always gives the same links.
"""
from __future__ import annotations

import math
import re
from typing import Optional

from spacy.lang.en.stop_words import STOP_WORDS

from i2e_engine.config import LinkConfig
from i2e_engine.kb.alias_index import AliasIndex, fold
from i2e_engine.records import Candidate, Link, Mention

_WORDS = re.compile(r"[^\W_]+")


def content_words(text: str) -> frozenset[str]:
    """The bag of words compared by the linker (see the module docstring)."""
    return frozenset(_singular(word) for word in _WORDS.findall(fold(text))
                     if len(word) > 1 and word not in STOP_WORDS)


def _singular(word: str) -> str:
    """A crude singular so that "towers"/"tower" and "cities"/"city" meet."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def bag_cosine(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / sqrt(|a| |b|), 0 when either bag is empty."""
    if not a or not b:
        return 0.0
    return len(a & b) / math.sqrt(len(a) * len(b))


def _overlaps(a: Mention, b: Mention) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def resolve_overlaps(mentions: list[Mention]) -> list[Mention]:
    """Non-overlapping mentions: of two that overlap the longer wins, then the NER one.

    This runs before linking, so a longer mention wins even if it will not link: when
    the NER finds "Paris Hilton" and the KB lacks her, the "Paris" inside must not be
    linked to the city.
    """
    order = sorted(mentions, key=lambda m: (-(m["end"] - m["start"]), m["source"] != "ner", m["start"],
                                            m["end"], m["text"]))
    kept: list[Mention] = []
    for mention in order:
        if not any(_overlaps(mention, other) for other in kept):
            kept.append(mention)
    return sorted(kept, key=lambda m: m["start"])


class Linker:
    """Links the mentions of one alt-text at a time against an :class:`AliasIndex`."""

    def __init__(self, alias_index: AliasIndex, config: Optional[LinkConfig] = None):
        self.alias_index = alias_index
        self.config = config or LinkConfig()
        self._entity_words: dict[str, frozenset[str]] = {}

    def _words_of(self, entity_id: str) -> frozenset[str]:
        words = self._entity_words.get(entity_id)
        if words is None:
            entity = self.alias_index.entity(entity_id)
            words = self._entity_words[entity_id] = content_words(f"{entity['name']} {entity['description']}")
        return words

    def _candidates(self, text: str) -> list[tuple[str, float]]:
        """Candidates with priors; a mention written all in lower case is a common noun
        ("a man on a horse"), so entities of proper-noun-only sources (places: the city of
        Man, Nice, Reading) are dropped and the remaining priors renormalized."""
        candidates = self.alias_index.candidates(text, self.config.top_k_candidates)
        excluded = set(self.config.proper_noun_sources)
        if not text.islower() or not excluded:
            return candidates
        kept = [(e, p) for e, p in candidates if self.alias_index.entity(e)["source"] not in excluded]
        total = sum(p for _, p in kept)
        return [(e, p / total) for e, p in kept] if total > 0 else kept

    def _link_one(self, alt_text: str, mention: Mention) -> Optional[Link]:
        candidates = self._candidates(mention["text"])
        if not candidates:
            return None
        mention_words = content_words(mention["text"])
        context = content_words(f"{alt_text[:mention['start']]} {alt_text[mention['end']:]}") - mention_words
        scored = []
        for entity_id, prior in candidates:
            sim = bag_cosine(context, self._words_of(entity_id) - mention_words)
            scored.append((prior + sim - prior * sim, entity_id, prior, sim))
        scored.sort(key=lambda item: (-item[0], item[1]))
        score, entity_id, prior, sim = scored[0]
        if score < self.config.nil_threshold:
            return None
        runner_ups = [Candidate(entity_id=e, link_score=s) for s, e, _, _ in scored[1:1 + self.config.max_runner_ups]]
        return Link(mention=mention["text"], mention_label=mention["label"], mention_source=mention["source"],
                    mention_start=mention["start"], mention_end=mention["end"], entity_id=entity_id,
                    link_score=score, link_prior=prior, link_context=sim, runner_ups=runner_ups)

    def link(self, alt_text: str, mentions: list[Mention]) -> list[Link]:
        """Links of the mentions of ``alt_text`` (offsets index into it), in text order.

        Overlapping mentions are resolved first (:func:`resolve_overlaps`); mentions
        without candidates or under the NIL threshold are dropped; when two mentions link
        to the same entity only the higher-scoring link is kept (the earlier on a tie).
        """
        best: dict[str, Link] = {}
        for mention in resolve_overlaps(mentions):
            link = self._link_one(alt_text, mention)
            if link is None:
                continue
            held = best.get(link["entity_id"])
            if held is None or link["link_score"] > held["link_score"]:
                best[link["entity_id"]] = link
        return sorted(best.values(), key=lambda l: (l["mention_start"], l["entity_id"]))
