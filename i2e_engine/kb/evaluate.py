"""Linking quality on a gold set: link plain texts with the engine's NER and linker, then
precision and recall of the linked mentions, and the KB's coverage of the gold entities.

Gold format (``../shared/data/nel/tweeki_gold.jsonl``, see its README): one JSON object per
line with ``text`` and ``mentions`` ([{start, end, surface, title, qid}], ``title`` an
English Wikipedia title with underscores, from about 2020). A mention may instead list
the entity ids that count as right (``accept``: ["wordnet:n02084071", ...], as in
``benchmarks/gold/coco_mini_entities.jsonl``); then only those count.

The counting rule (the README's, as in GERBIL's strong annotation match with overlapping
spans): a predicted link is correct when its span overlaps a gold mention's span and its
entity *is* the gold entity; each gold mention is matched at most once. Precision =
correct / predicted links (P(all)); P(gold) = correct / links whose span overlaps a gold
mention; recall = correct / gold mentions. An entity is the gold entity
when its Wikipedia title equals the gold title (case-insensitive, underscores as
spaces), or its QID equals the gold QID, or the gold title is one of its aliases (titles
renamed since 2020 are redirects, and the KB keeps redirects as aliases). Coverage is the
share of gold mentions whose entity the KB holds at all, by the same test.

Texts are linked as given (no alt-text normalization), so offsets index the gold text.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Optional, Sequence

from i2e_engine.config import LinkConfig, NerConfig
from i2e_engine.kb.alias_index import AliasIndex, normalize_alias
from i2e_engine.kb.geonames import title_key
from i2e_engine.records import Link


@dataclass
class GoldMention:
    start: int
    end: int
    surface: str
    title: str
    qid: Optional[str]
    accept: tuple[str, ...] = ()    # entity ids that count as right (gold files that list them)


@dataclass
class GoldText:
    id: str
    text: str
    mentions: list[GoldMention]


@dataclass
class LinkCounts:
    """What :func:`score_links` counts over a set of texts."""
    correct: int        # links to the gold entity of a gold span they overlap
    links: int          # all links made
    on_gold: int        # links whose span overlaps a gold mention
    covered: int        # gold mentions whose entity the KB holds

    def __add__(self, other: "LinkCounts") -> "LinkCounts":
        return LinkCounts(self.correct + other.correct, self.links + other.links, self.on_gold + other.on_gold,
                          self.covered + other.covered)


@dataclass
class LinkingScore:
    """What :func:`evaluate` reports; ``texts_per_second`` covers NER and linking.

    ``precision`` is P(all), correct / all links; ``precision_gold`` is P(gold), correct /
    links whose span overlaps a gold mention (the measure for gold sets that annotate only
    some names, like Wikidata-MEL's persons); ``f1`` is of P(gold) and recall."""
    texts: int
    gold_mentions: int
    predicted_links: int
    correct: int
    covered: int
    precision: float
    precision_gold: float
    recall: float
    f1: float
    coverage: float
    seconds: float
    texts_per_second: float

    @classmethod
    def of(cls, texts: int, gold_mentions: int, counts: LinkCounts, seconds: float) -> "LinkingScore":
        precision_gold = counts.correct / counts.on_gold if counts.on_gold else 0.0
        recall = counts.correct / gold_mentions if gold_mentions else 0.0
        f1 = 2 * precision_gold * recall / (precision_gold + recall) if counts.correct else 0.0
        return cls(texts=texts, gold_mentions=gold_mentions, predicted_links=counts.links, correct=counts.correct,
                   covered=counts.covered, precision=counts.correct / counts.links if counts.links else 0.0,
                   precision_gold=precision_gold, recall=recall, f1=f1,
                   coverage=counts.covered / gold_mentions if gold_mentions else 0.0,
                   seconds=seconds, texts_per_second=texts / seconds if seconds > 0 else 0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def load_gold(path: str, limit: Optional[int] = None) -> list[GoldText]:
    """The gold texts of a JSON-lines file, at most ``limit``."""
    out: list[GoldText] = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            item = json.loads(line)
            out.append(GoldText(id=str(item["id"]), text=item["text"],
                                mentions=[GoldMention(m["start"], m["end"], m["surface"],
                                                      m.get("title") or m["accept"][0], m.get("qid"),
                                                      tuple(m.get("accept", ())))
                                          for m in item["mentions"]]))
    return out


class TextLinker:
    """The engine's own NER and link stages over plain texts (no image), set up once."""

    def __init__(self, kb_path: str, ner: NerConfig = NerConfig(), link: LinkConfig = LinkConfig()):
        from i2e_engine.stages import LinkStage, NerStage, freeze_setup_objects

        self.ner, self.link = NerStage(ner, kb_path), LinkStage(link, kb_path, "name")
        self.ner.setup()
        self.link.setup()
        freeze_setup_objects()

    def __call__(self, texts: Sequence[str], batch_size: int = 256) -> Iterator[list[Link]]:
        """The links of each text, in order."""
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            found = self.ner.extractor.extract(batch, self.ner.config.batch_size)
            yield from self.link.linker.link_many(batch, [list(mentions) for mentions in found])


class EntityTest:
    """Whether a KB entity is a gold entity (rule in the module docstring)."""

    def __init__(self, index: AliasIndex):
        self.index = index

    def same(self, entity_id: str, gold: GoldMention) -> bool:
        if gold.accept:
            return entity_id in gold.accept
        try:
            entity = self.index.entity(entity_id)
        except KeyError:          # an id outside the KB (the naive lookup's): its title alone
            title = entity_id.partition("enwiki:")[2]
            return bool(title) and title_key(title) == title_key(gold.title)
        if entity["wiki_title"] and title_key(entity["wiki_title"]) == title_key(gold.title):
            return True
        if gold.qid and entity["qid"] == gold.qid:
            return True
        key = normalize_alias(gold.title.replace("_", " "))
        return any(normalize_alias(alias) == key for alias in entity["aliases"])

    def covered(self, gold: GoldMention) -> bool:
        if gold.accept:
            return any(self._holds(entity_id) for entity_id in gold.accept)
        candidates = self.index.candidates(gold.title.replace("_", " "), k=100)
        return any(self.same(entity_id, gold) for entity_id, _ in candidates)


    def _holds(self, entity_id: str) -> bool:
        try:
            self.index.row_of(entity_id)
        except KeyError:
            return False
        return True


def overlaps(link: Link, mention: GoldMention) -> bool:
    return link["mention_start"] < mention.end and mention.start < link["mention_end"]


def score_links(gold: Sequence[GoldText], predicted: Iterable[list[Link]], index: AliasIndex) -> LinkCounts:
    """Counts by the counting rule: each gold mention is matched by at most one link."""
    test = EntityTest(index)
    counts = LinkCounts(0, 0, 0, 0)
    for item, links in zip(gold, predicted):
        counts.links += len(links)
        counts.covered += sum(test.covered(m) for m in item.mentions)
        unmatched = list(item.mentions)
        for link in links:
            counts.on_gold += any(overlaps(link, m) for m in item.mentions)
            for mention in unmatched:
                if overlaps(link, mention) and test.same(link["entity_id"], mention):
                    counts.correct += 1
                    unmatched.remove(mention)
                    break
    return counts


def evaluate(gold: Sequence[GoldText], kb_path: str, ner: NerConfig = NerConfig(),
             link: LinkConfig = LinkConfig()) -> LinkingScore:
    """Link every gold text and score the links (rule in the module docstring). The time
    covers NER and linking, not loading the models."""
    linker = TextLinker(kb_path, ner, link)
    started = time.perf_counter()
    predicted = list(linker([item.text for item in gold]))
    seconds = time.perf_counter() - started
    return score(gold, predicted, linker.link.linker.alias_index, seconds)


def score(gold: Sequence[GoldText], predicted: Iterable[list[Link]], index: AliasIndex,
          seconds: float = 0.0) -> LinkingScore:
    """The :class:`LinkingScore` of links made for ``gold`` (one list per text)."""
    counts = score_links(gold, predicted, index)
    return LinkingScore.of(len(gold), sum(len(item.mentions) for item in gold), counts, seconds)
