"""Entity linking: mentions of an alt-text -> KB entities, with scores and runner-ups.

For each mention (after overlaps are resolved) the alias index gives up to
``top_k_candidates`` entities with priors P(entity | alias). Each candidate also gets a
context similarity, and the two are combined with spaCy's EntityLinker rule

    score = prior + sim - prior * sim

(a noisy-OR: either signal alone can carry a candidate, both together more, and the score
stays in [0, 1]). The best candidate is the link unless its score is under
``nil_threshold``, in which case the mention is NIL and dropped. The next
``max_runner_ups`` candidates are kept with their scores, so the
scoring stage can revisit the choice with the image (:func:`choose_with_image`).

Two rules keep common nouns from linking to proper names: a mention written all in lower
case never links to a place (``proper_noun_kinds``: "a nice day", "turkey"), and a
title with a disambiguator ("Group (mathematics)", "Field (physics)") is a candidate for a
lower-case mention only when the context shares a word with its name or description.

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

import functools
import math
import re
from typing import Iterable, Optional

from spacy.lang.en.stop_words import STOP_WORDS

from i2e_engine.config import LinkConfig
from i2e_engine.kb.alias_index import ARTICLES, AliasIndex, fold
from i2e_engine.records import Candidate, Link, Mention

_WORDS = re.compile(r"[^\W_]+")
_WORDS_CACHE = 200_000


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


def common_noun(mention: str) -> bool:
    """A mention written in lower case after any leading article ("a man", "A man", "the
    cat"): a common noun, not a name ("the Moon", "Man")."""
    words = mention.split()
    if len(words) > 1 and words[0].lower() in ARTICLES:
        words = words[1:]
    return bool(words) and all(word.islower() for word in words)


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
    the NER finds "Hennon Stadium" and the KB lacks it, the "Stadium" inside must not be
    linked to the concept. (Letting spans without candidates fall away instead gained
    recall on the Tweeki gold set, 0.486 -> 0.529, but cost more precision, 0.467 ->
    0.381: most such spans are names the KB lacks, not NER errors.)
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
        self._label_kinds = {label: frozenset(kinds) for label, kinds in self.config.label_excluded_kinds}
        # Bounded: a worker sees millions of distinct entities over a long run.
        self._words_of = functools.lru_cache(maxsize=_WORDS_CACHE)(self._entity_words)

    def _entity_words(self, row: int) -> frozenset[str]:
        index = self.alias_index
        return content_words(f"{index.field(row, 'name')} {index.field(row, 'description')}")

    def candidates(self, text: str, label: str = "ALIAS") -> list[tuple[int, float]]:
        """(entity row, prior) of a mention's candidates, best first. Kinds the mention
        cannot name are dropped and the remaining priors renormalized: a mention written
        all in lower case is a common noun ("a man on a horse", "a nice day"), never a
        place (``proper_noun_kinds``: the city of Man, Nice); an NER label excludes kinds
        (``label_excluded_kinds``: a PERSON "Justin" is not Justin, Texas)."""
        index = self.alias_index
        key_id = index.lookup_key(text)
        if key_id is None:
            return []
        rows, priors = index.candidate_rows(key_id, self.config.top_k_candidates)
        candidates = list(zip(rows.tolist(), priors.tolist()))
        excluded = set(self.config.proper_noun_kinds) if common_noun(text) else set()
        excluded.update(self._label_kinds.get(label, ()))
        if not excluded:
            return candidates
        kept = [(row, p) for row, p in candidates if index.field(row, "kind") not in excluded]
        total = sum(p for _, p in kept)
        return [(row, p / total) for row, p in kept] if total > 0 else kept

    def _disambiguated_off_topic(self, row: int, mention_text: str, sim: float) -> bool:
        """A title with a disambiguator ("Group (mathematics)") is not a candidate for a
        lower-case common noun ("a group of people") unless the context shares a word with
        the entity's name or description."""
        return sim == 0.0 and common_noun(mention_text) and "(" in self.alias_index.field(row, "name")

    def _link_one(self, alt_text: str, mention: Mention) -> Optional[Link]:
        candidates = self.candidates(mention["text"], mention["label"])
        if not candidates:
            return None
        mention_words = content_words(mention["text"])
        context = content_words(f"{alt_text[:mention['start']]} {alt_text[mention['end']:]}") - mention_words
        scored = []
        for row, prior in candidates:
            sim = bag_cosine(context, self._words_of(row) - mention_words)
            if self._disambiguated_off_topic(row, mention["text"], sim):
                continue
            scored.append((prior + sim - prior * sim, self.alias_index.entity_id(row), prior, sim))
        scored.sort(key=lambda item: (-item[0], item[1]))
        if not scored or scored[0][0] < self.config.nil_threshold:
            return None
        score, entity_id, prior, sim = scored[0]
        runner_ups = [Candidate(entity_id=e, link_score=s, link_prior=p, link_context=c, image_entity_score=None)
                      for s, e, p, c in scored[1:1 + self.config.max_runner_ups]]
        return Link(mention=mention["text"], mention_label=mention["label"], mention_source=mention["source"],
                    mention_start=mention["start"], mention_end=mention["end"], entity_id=entity_id,
                    link_score=score, link_prior=prior, link_context=sim, runner_ups=runner_ups)

    def link(self, alt_text: str, mentions: list[Mention]) -> list[Link]:
        """Links of the mentions of ``alt_text`` (offsets index into it), in text order.

        Overlapping mentions are resolved first (:func:`resolve_overlaps`); mentions
        without candidates or under the NIL threshold are dropped; when two mentions link
        to the same entity only the higher-scoring link is kept (the earlier on a tie).
        """
        return best_link_per_entity(self._link_one(alt_text, mention) for mention in resolve_overlaps(mentions))


def best_link_per_entity(links: Iterable[Optional[Link]]) -> list[Link]:
    """One link per entity (the higher link score, the earlier mention on a tie), in text order."""
    best: dict[str, Link] = {}
    for link in links:
        if link is None:
            continue
        held = best.get(link["entity_id"])
        if held is None or link["link_score"] > held["link_score"]:
            best[link["entity_id"]] = link
    return sorted(best.values(), key=lambda l: (l["mention_start"], l["entity_id"]))


def choose_with_image(link: Link, image_scores: dict[str, float], image_weight: float,
                      nil_score: Optional[float]) -> Optional[Link]:
    """Re-choose a mention's entity with the image: every remaining candidate (the text's
    choice and its runner-ups) has a link score ``l`` and an image-entity score ``s``; the
    choice is the candidate with the largest ``l + image_weight * s`` (ties by entity_id),
    and the mention is NIL (None) when every candidate's ``s`` is under ``nil_score`` (the
    image disagrees with all of them). The other candidates stay as runner-ups, best first,
    with both scores."""
    options = [Candidate(entity_id=link["entity_id"], link_score=link["link_score"], link_prior=link["link_prior"],
                         link_context=link["link_context"], image_entity_score=None), *link["runner_ups"]]
    options = [{**option, "image_entity_score": float(image_scores[option["entity_id"]])} for option in options]
    if nil_score is not None and max(o["image_entity_score"] for o in options) < nil_score:
        return None
    options.sort(key=lambda o: (-(o["link_score"] + image_weight * o["image_entity_score"]), o["entity_id"]))
    chosen, runner_ups = options[0], options[1:]
    return {**link, "entity_id": chosen["entity_id"], "link_score": chosen["link_score"],
            "link_prior": chosen["link_prior"], "link_context": chosen["link_context"],
            "image_entity_score": chosen["image_entity_score"], "runner_ups": runner_ups}
