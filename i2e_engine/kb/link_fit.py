"""Fit the link model (:mod:`i2e_engine.link_model`) on entity-linking gold sets, and
measure it on texts it was not fit on (k folds by text).

Training examples are what the linker itself sees: every name mention the engine's NER
and alias matcher find in a gold text, with its candidates' features
(:meth:`i2e_engine.linking.Linker.link` with a trace). A candidate is positive when it is
the gold entity of a gold mention the mention overlaps (the counting rule of
:mod:`i2e_engine.kb.evaluate`). A mention that overlaps no gold mention is an example
with no positive (it must not link) only in a gold set that annotates every name
(``complete``: Tweeki); Wikidata-MEL annotates only persons, so its other names teach
nothing and are left out.

Held-out scores: texts are split into ``folds`` by a hash of their id; for each fold the
model is fit on the others, the fold's texts are linked with that model, and the links
are counted; the counts add up over folds. No score is reported on a text the model was
fit on.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from i2e_engine.kb.evaluate import EntityTest, GoldText, LinkingScore, overlaps, score
from i2e_engine.link_model import DEFAULT_HIDDEN, DEFAULT_MIN_PRECISION, Example, LinkModel, fit
from i2e_engine.linking import Linker, Traced
from i2e_engine.records import Link, Mention


@dataclass
class GoldSet:
    """A gold set with its mentions as the engine's extractor finds them (found once:
    NER is the slow part and does not depend on the model)."""
    name: str
    texts: list[GoldText]
    mentions: list[list[Mention]]
    complete: bool      # every name is annotated: a name on no gold span must not link


def fold_of(text_id: str, folds: int) -> int:
    return int(hashlib.sha256(text_id.encode()).hexdigest()[:8], 16) % folds


def link_texts(linker: Linker, gold: GoldSet, keep: Optional[Sequence[int]] = None,
               trace: Optional[list[tuple[int, Traced]]] = None) -> list[list[Link]]:
    """Links of the texts at positions ``keep`` (default all); ``trace`` collects
    (text position, traced name) pairs."""
    out = []
    for i in (range(len(gold.texts)) if keep is None else keep):
        traced: list[Traced] = []
        out.append(linker.link(gold.texts[i].text, list(gold.mentions[i]), traced))
        if trace is not None:
            trace.extend((i, t) for t in traced)
    return out


def labelled(linker: Linker, gold: GoldSet, keep: Sequence[int]) -> list[tuple[int, Traced, np.ndarray]]:
    """(text position, the name as the linker scored it, which of its candidates are gold)
    for the names of the texts at positions ``keep`` that teach the model (module docstring)."""
    test = EntityTest(linker.alias_index)
    traced: list[tuple[int, Traced]] = []
    link_texts(linker, gold, keep, traced)
    out = []
    for i, t in traced:
        span = {"mention_start": t.mention["start"], "mention_end": t.mention["end"]}
        golds = [m for m in gold.texts[i].mentions if overlaps(span, m)]
        if not golds and not gold.complete:
            continue
        out.append((i, t, np.array([any(test.same(e, m) for m in golds) for e in t.entity_ids], dtype=bool)))
    return out


def examples(linker: Linker, gold: GoldSet, keep: Sequence[int]) -> list[Example]:
    """The training examples of the texts at positions ``keep`` (module docstring)."""
    return [Example(t.features, labels) for _, t, labels in labelled(linker, gold, keep)]


def fit_on(linker: Linker, sets: Sequence[GoldSet], keep: Optional[dict[str, list[int]]] = None,
           hidden: int = DEFAULT_HIDDEN, min_precision: Optional[float] = DEFAULT_MIN_PRECISION,
           fit_info: Optional[dict] = None, without: Sequence[str] = ()) -> LinkModel:
    """A model fit on the texts ``keep[set name]`` of each set (default: all), not using
    the features ``without`` (:func:`i2e_engine.link_model.fit`)."""
    found: list[Example] = []
    for gold in sets:
        found += examples(linker, gold, range(len(gold.texts)) if keep is None else keep[gold.name])
    return fit(found, hidden=hidden, min_precision=min_precision, fit_info=fit_info, without=without)


@dataclass
class HeldOut:
    """A set's score on held-out texts, and those links (aligned with the set's texts)."""
    score: LinkingScore
    links: list[list[Link]]


def cross_validate(linker: Linker, sets: Sequence[GoldSet], folds: int = 5, hidden: int = DEFAULT_HIDDEN,
                   min_precision: Optional[float] = DEFAULT_MIN_PRECISION,
                   without: Sequence[str] = ()) -> dict[str, HeldOut]:
    """Held-out scores and links of each set (module docstring), of models that do not
    use the features ``without``. The linker's model is restored after."""
    shipped, threshold = linker.model, linker.nil_threshold
    links: dict[str, list[list[Link]]] = {gold.name: [[] for _ in gold.texts] for gold in sets}
    try:
        for k in range(folds):
            train = {g.name: [i for i, t in enumerate(g.texts) if fold_of(t.id, folds) != k] for g in sets}
            linker.model, linker.nil_threshold = shipped, threshold
            model = fit_on(linker, sets, train, hidden=hidden, min_precision=min_precision, without=without)
            linker.model, linker.nil_threshold = model, model.threshold
            for gold in sets:
                held = [i for i, t in enumerate(gold.texts) if fold_of(t.id, folds) == k]
                for i, found in zip(held, link_texts(linker, gold, held)):
                    links[gold.name][i] = found
    finally:
        linker.model, linker.nil_threshold = shipped, threshold
    return {gold.name: HeldOut(score(gold.texts, links[gold.name], linker.alias_index), links[gold.name])
            for gold in sets}
