"""Entity linking: mentions of an alt-text -> KB entities, with scores and runner-ups.

Two kinds of mention, two routes (:meth:`Linker.is_common`):

- A *common noun* (written in lower case: "a dog on a table"; or a sentence's first words
  whose capital is only the sentence's: "Horses grazing") links only to a visual concept
  (kind ``concept``: the ImageNet-21k WordNet nouns, one sense per word,
  :mod:`i2e_engine.kb.concepts`), or to nothing. A common English word never names a
  named entity by its lower-case form: "a cafe" is no band, "a couple" no film.
- A *name* gets candidates from the alias index (its title, redirects, acronyms written in
  capitals, the people whose surname it is: ``FORMS``), less the pages that are no
  entities (list and surname pages), concepts, and kinds its NER label rules out (a
  PERSON is no place). Each candidate gets the features of :mod:`i2e_engine.link_model`
  (prior, popularity, how the mention names it, NER label, word frequency, context, ...),
  and the link model's probability ranks them; the best is the link unless its
  probability is under the model's NIL threshold (calibrated when it was fit) or
  ``LinkConfig.nil_threshold``. A one-word name that is the first or last word of a
  longer name linked in the same text also gets that entity ("Marx" after "Karl Marx").

The next ``max_runner_ups`` candidates are kept with their scores, so the scoring stage
can revisit the choice with the image (:func:`choose_with_image`), which never overturns
a link the text is certain of.

Context similarity is deliberately cheap and deterministic: the cosine between two
binary bags of content words (folded, stop words removed, crudely singularized), one from
the alt-text with the mention's own characters cut out, the other from the entity's name
and description minus the mention's words. Cutting the mention out on both sides keeps
the word that made a candidate a candidate ("paris") from counting as evidence for any
one of them. The alt-text keeps the other mentions, which are often the best evidence
("Eiffel Tower", "France"): this is the coherence signal.

Ties are broken by entity_id (candidates) and by mention start (mentions), so the same
input always gives the same links.
"""
from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from spacy.lang.en.stop_words import STOP_WORDS

from i2e_engine.config import LinkConfig
from i2e_engine.inflect import singulars
from i2e_engine.kb.alias_index import (ARTICLES, FORM_ACRONYM, FORM_ALIAS, FORM_NAME, FORM_NAME_PART, KIND_TRAITS,
                                       TRAIT_COMMA_NAME, TRAIT_PERSON_SHAPE, AliasIndex, fold, normalize_alias)
from i2e_engine.link_model import FEATURES, WEIGHTS_PATH, LinkModel, log_scaled
from i2e_engine.records import Candidate, Link, Mention

log = logging.getLogger(__name__)
_WORDS = re.compile(r"[^\W_]+")
_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
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


def _span_length(mention: Mention) -> int:
    """Characters of a mention without a leading article ("a dog" is as long as "dog")."""
    return len(_ARTICLE.sub("", mention["text"]))


def heads_of_what_names_nothing(mentions: list[Mention], has_candidates: list[bool]) -> list[Mention]:
    """The mentions that have candidates, less the modifiers of an alias hit that has
    none: of "fire hydrant" (no concept) "hydrant", its head, may still link, "fire" may
    not. English compounds end in their head, so a part that ends before the span does is
    a modifier. A span the NER drew too long ("Chicago OHare International Airport") keeps
    all its parts: there the parts are names of their own (held out on Tweeki, dropping
    them cost 0.018 of recall)."""
    empty = [m for m, found in zip(mentions, has_candidates) if not found and m["source"] == "alias"]
    return [m for m, found in zip(mentions, has_candidates)
            if found and not any(_overlaps(m, e) and m["end"] < e["end"] for e in empty)]


def resolve_overlaps(mentions: list[Mention]) -> list[Mention]:
    """Non-overlapping mentions: of two that overlap the longer wins (a leading article
    not counted), then the NER one, then the one that ends later: English noun phrases
    end in their head ("SpaceX Falcon 9": "Falcon 9" wins over "SpaceX Falcon").

    :meth:`Linker.link` first drops the mentions that have no candidates, so a span that
    names nothing ("a cup of coffee") leaves its parts to be linked ("a cup", "coffee"),
    its head only where the parts are a compound (:func:`heads_of_what_names_nothing`).
    With the link model deciding, dropping them raised held-out recall on both gold sets
    (Wikidata-MEL 0.610 -> 0.624, Tweeki 0.485 -> 0.514) at about the same P(gold) (0.824
    -> 0.832, 0.724 -> 0.712); with the earlier prior-and-context score it had cost too
    much precision.
    """
    order = sorted(mentions, key=lambda m: (-_span_length(m), m["source"] != "ner", -m["end"], m["start"], m["text"]))
    kept: list[Mention] = []
    for mention in order:
        if not any(_overlaps(mention, other) for other in kept):
            kept.append(mention)
    return sorted(kept, key=lambda m: m["start"])


_NER_PLACE = frozenset({"GPE", "LOC", "FAC"})
_SENTENCE_ENDS = frozenset(".!?:;|\"\u2026")
_FEATURE = {name: i for i, name in enumerate(FEATURES)}


def sentence_initial(text: str, start: int) -> bool:
    """Whether a mention starts the text or a sentence (its capital says nothing then)."""
    before = text[:start].rstrip()
    return not before or before[-1] in _SENTENCE_ENDS


@functools.lru_cache(maxsize=_WORDS_CACHE)
def word_frequency(text: str) -> float:
    """wordfreq's Zipf frequency of ``text`` in lower case, / 8 (about 0 to 1)."""
    from wordfreq import zipf_frequency

    return zipf_frequency(text.lower(), "en") / 8.0


@dataclass
class Scored:
    """One candidate of a mention with its features and the model's probability."""
    row: int
    entity_id: str
    prior: float
    context: float
    probability: float


@dataclass
class Candidates:
    """A name's candidates as arrays: entity rows, priors, forms (``FORMS``), and whether
    the text names each in full elsewhere (``in_text``)."""
    rows: np.ndarray
    priors: np.ndarray
    forms: np.ndarray
    in_text: np.ndarray

    @classmethod
    def empty(cls) -> "Candidates":
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int8), np.zeros(0, bool))

    def with_in_text(self, in_text: dict[int, float]) -> "Candidates":
        """These candidates marked, plus the entities (row -> prior) of full names in the text."""
        if not in_text:
            return self
        marked = self.in_text | np.isin(self.rows, list(in_text))
        present = set(self.rows.tolist())
        extra = [row for row in in_text if row not in present]
        return Candidates(np.concatenate([self.rows, np.array(extra, np.int64)]),
                          np.concatenate([self.priors, [in_text[row] for row in extra]]),
                          np.concatenate([self.forms, np.full(len(extra), FORM_NAME_PART, np.int8)]),
                          np.concatenate([marked, np.ones(len(extra), bool)]))


@dataclass
class Traced:
    """A name's candidates (entity ids) and their features, as the model saw them."""
    mention: Mention
    entity_ids: list[str]
    features: np.ndarray


class Linker:
    """Links the mentions of one alt-text at a time against an :class:`AliasIndex`.

    Two kinds of mention (``is_common``): a common noun (written in lower case, or a
    capitalized first word of a sentence that is a concept word: "Dog on a beach") links
    only to a visual concept (kind ``concept``, one sense per word, by its prior); a name
    links to a named entity, chosen by the link model (:mod:`i2e_engine.link_model`) over
    its candidates' features, or to nothing under the model's NIL threshold. A single
    word that is the first or last word of a longer name linked in the same text ("Marx"
    after "Karl Marx") gets that entity as a candidate (``in_text``).
    """

    def __init__(self, alias_index: AliasIndex, config: Optional[LinkConfig] = None,
                 model: Optional[LinkModel] = None):
        self.alias_index = alias_index
        self.config = config or LinkConfig()
        self.model = model or LinkModel.load(self.config.model_path or WEIGHTS_PATH)
        fit_on = self.model.fit_info.get("kb_version")
        if fit_on and fit_on != alias_index.meta.get("kb_version"):
            log.info("the link model was fit on KB %s; linking against KB %s (refit with "
                     "benchmarks/bench_linking.py --fit --kb ... for the best links)", fit_on,
                     alias_index.meta.get("kb_version"))
        unknown = {kind for _, kinds in self.config.label_excluded_kinds for kind in kinds} - set(KIND_TRAITS)
        if unknown:
            raise ValueError(f"label_excluded_kinds names kinds {sorted(unknown)}; the linker can exclude "
                             f"{sorted(KIND_TRAITS)}")
        concept = KIND_TRAITS["concept"]
        self._excluded_traits = {label: concept | functools.reduce(lambda a, k: a | KIND_TRAITS[k], kinds, 0)
                                 for label, kinds in self.config.label_excluded_kinds}
        threshold = self.config.nil_threshold
        self.nil_threshold = self.model.threshold if threshold is None else threshold
        # Bounded: a worker sees millions of distinct entities and surfaces over a long run.
        self._words_of = functools.lru_cache(maxsize=_WORDS_CACHE)(self._entity_words)
        self._concept = functools.lru_cache(maxsize=_WORDS_CACHE)(self._find_concept)
        self._name_candidates = functools.lru_cache(maxsize=_WORDS_CACHE)(self._find_name_candidates)

    def clear_caches(self) -> None:
        """Forget the per-surface and per-entity caches (benchmarks measure cold)."""
        for cache in (self._words_of, self._concept, self._name_candidates, word_frequency):
            cache.cache_clear()

    def _entity_words(self, row: int) -> frozenset[str]:
        index = self.alias_index
        return content_words(f"{index.field(row, 'name')} {index.field(row, 'description')}")

    def _find_concept(self, text: str) -> Optional[tuple[int, float]]:
        """The visual concept a common noun names (row, prior among concepts), if any; a
        plural whose own key names no concept tries its singular ("Horses": the key
        "horses" is an album's title)."""
        index = self.alias_index
        key = normalize_alias(text)
        for form in (key, *singulars(key)):
            key_id = index.lookup_key(form)
            if key_id is None:
                continue
            rows, priors = index.candidate_rows(key_id, self.config.top_k_candidates)
            concepts = [(row, float(p)) for row, p, traits in zip(rows.tolist(), priors.tolist(),
                                                                  index.traits[rows].tolist())
                        if traits & KIND_TRAITS["concept"]]
            if concepts:
                total = sum(p for _, p in concepts)
                row, prior = concepts[0]
                return row, prior / total if total > 0 else 1.0
        return None

    def is_common(self, alt_text: str, mention: Mention) -> bool:
        """A common noun, not a name (see the class docstring): written in lower case, or
        an alias hit that starts a sentence and whose capital is only the sentence's: its
        other words in lower case ("Aerial view", "Plastic containers"), or one word that
        names a concept ("Dog on a beach"; "Sinatra in 1955" stays a name); in a text
        written all in capitals, an alias hit that names a concept ("BASEBALL GAME WITH
        BATTER"). A common
        English word never names a named entity by its lower-case form."""
        text = mention["text"]
        if common_noun(text):
            return True
        if mention["source"] != "alias":
            return False
        if alt_text.isupper():          # a text in capitals says nothing about names
            return self._concept(text) is not None
        if not text[1:].islower() or not sentence_initial(alt_text, mention["start"]):
            return False
        return len(text.split()) > 1 or self._concept(text) is not None

    def name_candidates(self, mention: Mention) -> Candidates:
        """A name's candidates, best prior first: concepts, kinds the NER label excludes
        (``label_excluded_kinds``: a PERSON is no place) and acronyms of a mention not
        written in capitals ("Modi" is not MODI) are dropped."""
        return self._name_candidates(mention["text"], mention["label"])

    def _find_name_candidates(self, text: str, label: str) -> Candidates:
        index = self.alias_index
        key_id = index.lookup_key(text)
        if key_id is None:
            return Candidates.empty()
        k = self.config.top_k_candidates
        rows, priors = index.candidate_rows(key_id, k)
        forms = index.candidate_forms(key_id, k)
        keep = (index.traits[rows] & self._excluded_traits.get(label, KIND_TRAITS["concept"])) == 0
        if not text.isupper():
            keep &= forms != FORM_ACRONYM
        return Candidates(np.asarray(rows)[keep].astype(np.int64), np.asarray(priors)[keep].astype(np.float64),
                          np.asarray(forms)[keep], np.zeros(int(keep.sum()), dtype=bool))

    def features(self, alt_text: str, mention: Mention, candidates: Candidates) -> tuple[np.ndarray, np.ndarray]:
        """The model's features of each candidate (rows in order; ``FEATURES``) and each
        candidate's context similarity."""
        index = self.alias_index
        n = len(candidates.rows)
        text, label = mention["text"], mention["label"]
        mention_words = content_words(text)
        context_words = content_words(f"{alt_text[:mention['start']]} {alt_text[mention['end']:]}") - mention_words
        bare = _ARTICLE.sub("", text)
        rows, priors, forms = candidates.rows, candidates.priors, candidates.forms
        popularity = index.popularity[rows]
        traits = index.traits[rows]
        f = _FEATURE
        # What the mention alone says, the same for every candidate: one row, broadcast.
        same = np.zeros(len(FEATURES))
        same[f["log_candidates"]] = log_scaled(n)
        same[f["ner_person"]] = label == "PERSON"
        same[f["ner_place"]] = label in _NER_PLACE
        same[f["ner_org"]] = label == "ORG"
        same[f["ner_other"]] = mention["source"] == "ner" and label not in _NER_PLACE and label not in ("PERSON", "ORG")
        same[f["alias_only"]] = mention["source"] == "alias"
        same[f["single_token"]] = len(text.split()) == 1
        same[f["sentence_initial"]] = sentence_initial(alt_text, mention["start"])
        same[f["all_caps"]] = text.isupper()
        same[f["word_frequency"]] = word_frequency(bare)
        x = np.empty((n, len(FEATURES)))
        x[:] = same
        best = priors.max()
        second = np.partition(priors, -2)[-2] if n > 1 else 0.0
        x[:, f["prior"]] = priors
        x[:, f["top_prior"]] = priors >= best
        x[:, f["prior_margin"]] = priors - np.where(priors >= best, second, best)
        x[:, f["log_popularity"]] = np.log1p(popularity) / 5.0
        x[:, f["popularity_share"]] = popularity / (popularity.max() or 1.0)
        x[:, f["form_alias"]] = forms == FORM_ALIAS
        x[:, f["form_acronym"]] = forms == FORM_ACRONYM
        x[:, f["form_name_part"]] = forms == FORM_NAME_PART
        x[:, f["in_text"]] = candidates.in_text
        x[:, f["person_shape"]] = (traits & TRAIT_PERSON_SHAPE) > 0
        x[:, f["place_kind"]] = (traits & (KIND_TRAITS["place"] | TRAIT_COMMA_NAME)) > 0
        # Only the candidates named by this very surface can be spelled the same way.
        x[:, f["exact_case"]] = [form == FORM_NAME and index.field(row, "name") == bare
                                 for row, form in zip(rows.tolist(), forms.tolist())]
        contexts = np.array([bag_cosine(context_words, self._words_of(row) - mention_words) if context_words else 0.0
                             for row in rows.tolist()])
        x[:, f["context"]] = contexts
        return x, contexts

    def score_name(self, alt_text: str, mention: Mention, in_text: dict[int, float],
                   trace: Optional[list[Traced]] = None) -> list[Scored]:
        """The candidates of a name with the model's probabilities, best first (ties by
        entity_id, which is row order); ``in_text`` adds entities (row -> prior) named in
        full in the text; ``trace`` collects the features (to fit the model on what the
        linker sees)."""
        candidates = self.name_candidates(mention).with_in_text(in_text)
        if not len(candidates.rows):
            return []
        x, contexts = self.features(alt_text, mention, candidates)
        rows = candidates.rows.tolist()
        if trace is not None:
            trace.append(Traced(mention, [self.alias_index.entity_id(row) for row in rows], x))
        probability = self.model.probability(x)
        order = sorted(range(len(rows)), key=lambda i: (-probability[i], rows[i]))[:1 + self.config.max_runner_ups]
        return [Scored(rows[i], self.alias_index.entity_id(rows[i]), float(candidates.priors[i]), float(contexts[i]),
                       float(probability[i])) for i in order]

    def _make_link(self, mention: Mention, scored: Sequence[Scored]) -> Link:
        best = scored[0]
        runner_ups = [Candidate(entity_id=s.entity_id, link_score=s.probability, link_prior=s.prior,
                                link_context=s.context, image_entity_score=None)
                      for s in scored[1:1 + self.config.max_runner_ups]]
        return Link(mention=mention["text"], mention_label=mention["label"], mention_source=mention["source"],
                    mention_start=mention["start"], mention_end=mention["end"], entity_id=best.entity_id,
                    link_score=best.probability, link_prior=best.prior, link_context=best.context,
                    runner_ups=runner_ups)

    def _link_common(self, mention: Mention) -> Optional[Link]:
        found = self._concept(mention["text"])
        if found is None:
            return None
        row, prior = found
        return self._make_link(mention, [Scored(row, self.alias_index.entity_id(row), prior, 0.0, 1.0)])

    def _has_candidates(self, alt_text: str, mention: Mention) -> bool:
        if self.is_common(alt_text, mention):
            return self._concept(mention["text"]) is not None
        return len(self.name_candidates(mention).rows) > 0

    def link(self, alt_text: str, mentions: list[Mention], trace: Optional[list[Traced]] = None) -> list[Link]:
        """Links of the mentions of ``alt_text`` (offsets index into it), in text order.

        Overlapping mentions are resolved first (:func:`resolve_overlaps`); names of
        several words are linked before single words, so that a single word can take the
        entity of a full name in the text; mentions without candidates or under the NIL
        threshold are dropped; when two mentions link to the same entity only the
        higher-scoring link is kept (the earlier on a tie).
        """
        links: list[Optional[Link]] = []
        full_names: list[tuple[list[str], int, float]] = []    # (folded words, row, probability)
        names = []
        for mention in resolve_overlaps(heads_of_what_names_nothing(
                mentions, [self._has_candidates(alt_text, m) for m in mentions])):
            if self.is_common(alt_text, mention):
                links.append(self._link_common(mention))
            else:
                names.append(mention)
        for mention in sorted(names, key=lambda m: (len(m["text"].split()) == 1, m["start"])):
            words = fold(mention["text"]).split()
            in_text = {row: p for full, row, p in full_names if len(words) == 1 and words[0] in (full[0], full[-1])}
            scored = self.score_name(alt_text, mention, in_text, trace)
            if not scored or scored[0].probability < self.nil_threshold:
                continue
            links.append(self._make_link(mention, scored))
            if len(words) > 1:
                full_names.append((words, scored[0].row, scored[0].probability))
        return best_link_per_entity(links)


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
                      nil_score: Optional[float], certain_score: float = 1.0) -> Optional[Link]:
    """Re-choose a mention's entity with the image: every remaining candidate (the text's
    choice and its runner-ups) has a link score ``l`` and an image-entity score ``s``; the
    choice is the candidate with the largest ``l + image_weight * s`` (ties by entity_id),
    and the mention is NIL (None) when every candidate's ``s`` is under ``nil_score`` (the
    image disagrees with all of them). A link the text is certain of (``l >=
    certain_score``: a common noun's concept, a name the model is sure of) keeps its
    entity and is never dropped by the image: an alt-text that names what the photo does
    not show to the scorer (an unrelated photo, a concept the scorer does not know) loses
    nothing it was sure of. The other candidates stay as runner-ups, best first, with both
    scores."""
    options = [Candidate(entity_id=link["entity_id"], link_score=link["link_score"], link_prior=link["link_prior"],
                         link_context=link["link_context"], image_entity_score=None), *link["runner_ups"]]
    options = [{**option, "image_entity_score": float(image_scores[option["entity_id"]])} for option in options]
    if link["link_score"] < certain_score:
        if nil_score is not None and max(o["image_entity_score"] for o in options) < nil_score:
            return None
        options.sort(key=lambda o: (-(o["link_score"] + image_weight * o["image_entity_score"]), o["entity_id"]))
    chosen, runner_ups = options[0], options[1:]
    return {**link, "entity_id": chosen["entity_id"], "link_score": chosen["link_score"],
            "link_prior": chosen["link_prior"], "link_context": chosen["link_context"],
            "image_entity_score": chosen["image_entity_score"], "runner_ups": runner_ups}
