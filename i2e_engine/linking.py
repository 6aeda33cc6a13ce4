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
binary bags of content words (:mod:`i2e_engine.kb.words`), one from the alt-text, the
other from the entity's name and description (stored in the alias index as word ids),
both less the mention's own words. Taking the mention's words out on both sides keeps
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

from i2e_engine.config import LinkConfig
from i2e_engine.inflect import singulars
from i2e_engine.kb.alias_index import (ARTICLES, FORM_ACRONYM, FORM_ALIAS, FORM_NAME, FORM_NAME_PART, KIND_TRAITS,
                                       TRAIT_COMMA_NAME, TRAIT_PERSON_SHAPE, AliasIndex, fold, normalize_alias)
from i2e_engine.kb.words import content_word, content_words
from i2e_engine.link_model import FEATURES, WEIGHTS_PATH, LinkModel, log_scaled
from i2e_engine.records import Candidate, Link, Mention

log = logging.getLogger(__name__)
_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
_WORDS_CACHE = 200_000
_BAGS_CACHE = 4_096


def common_noun(mention: str) -> bool:
    """A mention written in lower case after any leading article ("a man", "A man", "the
    cat"): a common noun, not a name ("the Moon", "Man")."""
    words = mention.split()
    if len(words) > 1 and words[0].lower() in ARTICLES:
        words = words[1:]
    return bool(words) and all(word.islower() for word in words)


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
    """wordfreq's Zipf frequency of ``text`` in lower case, / 8 (about 0 to 1).

    Plain words (ASCII letters between spaces) are read straight from wordfreq's table and
    combined by wordfreq's own rule (1/f = 1/f1 + 1/f2 + ..., three significant digits,
    0 when a word is unknown): the same number without its Unicode tokenizer, which cost
    a sixth of the linker's time. Anything else goes through wordfreq."""
    from wordfreq import zipf_frequency

    words = text.lower().split()
    if not words or not all(word.isascii() and word.isalpha() for word in words):
        return zipf_frequency(text.lower(), "en") / 8.0
    table = _frequencies()
    frequencies = [table.get(word, 0.0) for word in words]
    if not all(frequencies):
        return 0.0
    frequency = 1.0 / sum(1.0 / f for f in frequencies)
    frequency = round(frequency, math.floor(-math.log10(frequency)) + 3)
    return round(math.log10(frequency) + 9, 2) / 8.0


@functools.lru_cache(maxsize=1)
def _frequencies() -> dict[str, float]:
    from wordfreq import get_frequency_dict

    return get_frequency_dict("en")


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
        self._concept = functools.lru_cache(maxsize=_WORDS_CACHE)(self._find_concept)
        self._name_candidates = functools.lru_cache(maxsize=_WORDS_CACHE)(self._find_name_candidates)
        # The bags of the alt-text and its mentions, asked once per candidate list.
        self._bag = functools.lru_cache(maxsize=_BAGS_CACHE)(content_words)
        self._bag_ids = functools.lru_cache(maxsize=_BAGS_CACHE)(alias_index.word_ids)

    def clear_caches(self) -> None:
        """Forget the per-surface and per-entity caches (benchmarks measure cold)."""
        for cache in (self._concept, self._name_candidates, self._bag, self._bag_ids, word_frequency, content_word):
            cache.cache_clear()

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

    def _mention_features(self, alt_text: str, mention: Mention, n: int) -> list[float]:
        """What the mention alone says, the same for each of its ``n`` candidates."""
        text, label = mention["text"], mention["label"]
        same = [0.0] * len(FEATURES)
        f = _FEATURE
        same[f["log_candidates"]] = log_scaled(n)
        same[f["ner_person"]] = label == "PERSON"
        same[f["ner_place"]] = label in _NER_PLACE
        same[f["ner_org"]] = label == "ORG"
        same[f["ner_other"]] = mention["source"] == "ner" and label not in _NER_PLACE and label not in ("PERSON", "ORG")
        same[f["alias_only"]] = mention["source"] == "alias"
        same[f["single_token"]] = len(text.split()) == 1
        same[f["sentence_initial"]] = sentence_initial(alt_text, mention["start"])
        same[f["all_caps"]] = text.isupper()
        same[f["word_frequency"]] = word_frequency(_ARTICLE.sub("", text))
        return same

    def features_of(self, named: Sequence[tuple[str, Mention, Candidates]]) -> np.ndarray:
        """The model's features (``FEATURES``) of the candidates of many names (alt-text,
        mention, its candidates: at least one), one row per candidate, their candidate
        lists one after the other: one pass of array operations per batch of texts, not
        per name, which is most of the linker's speed."""
        index = self.alias_index
        sizes = [len(candidates.rows) for _, _, candidates in named]
        starts = np.cumsum([0] + sizes[:-1])
        rows = np.concatenate([candidates.rows for _, _, candidates in named])
        priors = np.concatenate([candidates.priors for _, _, candidates in named])
        forms = np.concatenate([candidates.forms for _, _, candidates in named])
        popularity = index.popularity[rows]
        traits = index.traits[rows]
        f = _FEATURE
        x = np.repeat(np.array([self._mention_features(alt_text, mention, n)
                                for (alt_text, mention, _), n in zip(named, sizes)]), sizes, axis=0)
        # Per name: the best prior, the second (the best again on a tie), the most popular.
        each = np.repeat(np.arange(len(named)), sizes)
        best = np.maximum.reduceat(priors, starts)[each]
        top = priors >= best
        tied = np.add.reduceat(top, starts)[each] > 1
        below = np.maximum.reduceat(np.where(top, -np.inf, priors), starts)[each]
        second = np.where(tied, best, np.where(np.isfinite(below), below, 0.0))
        x[:, f["prior"]] = priors
        x[:, f["top_prior"]] = top
        x[:, f["prior_margin"]] = priors - np.where(top, second, best)
        x[:, f["log_popularity"]] = np.log1p(popularity) / 5.0
        most_popular = np.maximum.reduceat(popularity, starts)[each]
        x[:, f["popularity_share"]] = popularity / np.where(most_popular > 0, most_popular, 1.0)
        x[:, f["form_alias"]] = forms == FORM_ALIAS
        x[:, f["form_acronym"]] = forms == FORM_ACRONYM
        x[:, f["form_name_part"]] = forms == FORM_NAME_PART
        x[:, f["in_text"]] = np.concatenate([candidates.in_text for _, _, candidates in named])
        x[:, f["person_shape"]] = (traits & TRAIT_PERSON_SHAPE) > 0
        x[:, f["place_kind"]] = (traits & (KIND_TRAITS["place"] | TRAIT_COMMA_NAME)) > 0
        # Only the candidates named by this very surface can be spelled the same way.
        named_by_surface = np.flatnonzero(forms == FORM_NAME)
        bare = [_ARTICLE.sub("", mention["text"]) for _, mention, _ in named]
        x[named_by_surface, f["exact_case"]] = [index.field(rows[i], "name") == bare[each[i]]
                                                for i in named_by_surface.tolist()]
        x[:, f["context"]] = self._contexts(named, rows, each)
        return x

    def _contexts(self, named: Sequence[tuple[str, Mention, Candidates]], rows: np.ndarray,
                  each: np.ndarray) -> np.ndarray:
        """The context similarity of every candidate (``rows``, of name ``each``): the
        cosine of two binary bags (module docstring), |C & E| / sqrt(|C| |E|) with C the
        alt-text's words and E the entity's (its bag in the alias index), both less the
        mention's words; 0 when either is empty. Array operations over the whole batch:
        each word id is tagged with the name it is counted for."""
        sizes, words = self.alias_index.entity_words(rows)
        owner = np.repeat(np.arange(len(rows)), sizes)            # the candidate of each entity word
        tagged = (each[owner] << 32) | words
        context_sizes = np.zeros(len(named))
        context_tags, mention_tags = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for j, (alt_text, mention, _) in enumerate(named):
            mention_words = self._bag(mention["text"])
            context = self._bag(alt_text) - mention_words
            context_sizes[j] = len(context)
            context_tags.append((j << 32) | self._bag_ids(context))
            mention_tags.append((j << 32) | self._bag_ids(mention_words))
        entity_sizes = np.bincount(owner[~np.isin(tagged, np.concatenate(mention_tags))], minlength=len(rows))
        shared = np.bincount(owner[np.isin(tagged, np.concatenate(context_tags))], minlength=len(rows))
        product = context_sizes[each] * entity_sizes
        return np.where(product > 0, shared / np.sqrt(np.where(product > 0, product, 1.0)), 0.0)

    def score_name(self, alt_text: str, mention: Mention, in_text: dict[int, float],
                   trace: Optional[list[Traced]] = None) -> list[Scored]:
        """The candidates of a name with the model's probabilities, best first (ties by
        entity_id, which is row order); ``in_text`` adds entities (row -> prior) named in
        full in the text; ``trace`` collects the features (to fit the model on what the
        linker sees)."""
        return self.score_names([(alt_text, mention, in_text)], trace)[0]

    def score_names(self, names: Sequence[tuple[str, Mention, dict[int, float]]],
                    trace: Optional[list[Traced]] = None) -> list[list[Scored]]:
        """:meth:`score_name` of many names (alt-text, mention, in_text), scored together."""
        named = [(i, alt_text, mention, self.name_candidates(mention).with_in_text(in_text))
                 for i, (alt_text, mention, in_text) in enumerate(names)]
        named = [item for item in named if len(item[3].rows)]
        scored: list[list[Scored]] = [[] for _ in names]
        if not named:
            return scored
        x = self.features_of([(alt_text, mention, candidates) for _, alt_text, mention, candidates in named])
        contexts = x[:, _FEATURE["context"]]
        # Rounded: a matrix product sums in an order that depends on the batch's shape, so
        # unrounded, equal candidates would differ in the last bit and a name's choice and
        # runner-ups would depend on the other texts of its batch.
        probability = np.round(self.model.probability(x), 12)
        start = 0
        for i, _, mention, candidates in named:
            end = start + len(candidates.rows)
            rows = candidates.rows.tolist()
            p = probability[start:end].tolist()
            if trace is not None:
                trace.append(Traced(mention, [self.alias_index.entity_id(row) for row in rows], x[start:end]))
            order = sorted(range(len(rows)), key=lambda j: (-p[j], rows[j]))[:1 + self.config.max_runner_ups]
            scored[i] = [Scored(rows[j], self.alias_index.entity_id(rows[j]), float(candidates.priors[j]),
                                float(contexts[start + j]), p[j]) for j in order]
            start = end
        return scored

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

    def link(self, alt_text: str, mentions: list[Mention], trace: Optional[list[Traced]] = None) -> list[Link]:
        """Links of the mentions of ``alt_text`` (offsets index into it), in text order.

        Overlapping mentions are resolved first (:func:`resolve_overlaps`); names of
        several words are linked before single words, so that a single word can take the
        entity of a full name in the text; mentions without candidates or under the NIL
        threshold are dropped; when two mentions link to the same entity only the
        higher-scoring link is kept (the earlier on a tie).
        """
        return self.link_many([alt_text], [mentions], trace)[0]

    def link_many(self, alt_texts: Sequence[str], mentions_of: Sequence[list[Mention]],
                  trace: Optional[list[Traced]] = None) -> list[list[Link]]:
        """:meth:`link` of a batch of alt-texts, the same links; their names are scored
        together (:meth:`score_names`), which is what makes a batch fast."""
        links: list[list[Optional[Link]]] = [[] for _ in alt_texts]
        names: list[tuple[int, Mention]] = []
        for t, (alt_text, mentions) in enumerate(zip(alt_texts, mentions_of)):
            common = {id(m): self.is_common(alt_text, m) for m in mentions}
            found = [self._concept(m["text"]) is not None if common[id(m)] else len(self.name_candidates(m).rows) > 0
                     for m in mentions]
            for mention in resolve_overlaps(heads_of_what_names_nothing(mentions, found)):
                if common[id(mention)]:
                    links[t].append(self._link_common(mention))
                else:
                    names.append((t, mention))
        # Names of several words first; then single words, which may take the entity of a
        # full name linked in the same text ("Marx" after "Karl Marx").
        full_names: list[list[tuple[list[str], int, float]]] = [[] for _ in alt_texts]  # (folded words, row, p)
        for single in (False, True):
            group = [(t, m) for t, m in names if (len(m["text"].split()) == 1) == single]
            words = [fold(m["text"]).split() for _, m in group]
            in_texts = [{row: p for full, row, p in full_names[t] if len(w) == 1 and w[0] in (full[0], full[-1])}
                        for (t, _), w in zip(group, words)]
            scored_all = self.score_names([(alt_texts[t], m, in_text) for (t, m), in_text in zip(group, in_texts)],
                                          trace)
            for (t, mention), w, scored in zip(group, words, scored_all):
                if not scored or scored[0].probability < self.nil_threshold:
                    continue
                links[t].append(self._make_link(mention, scored))
                if len(w) > 1:
                    full_names[t].append((w, scored[0].row, scored[0].probability))
        return [best_link_per_entity(found) for found in links]


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
