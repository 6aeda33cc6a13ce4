"""The linking gold-set counting rule (i2e_engine/kb/evaluate.py) on hand-made cases."""
from __future__ import annotations

import json

import pytest

import schemas
from i2e_engine.kb.alias_index import AliasIndex
from i2e_engine.kb.evaluate import GoldMention, GoldText, LinkingScore, load_gold, score_links


def _index() -> AliasIndex:
    rows = [("enwiki:Myanmar", "Myanmar", ["Burma"], "Q836", "Myanmar"),
            ("enwiki:Zürich", "Zürich", [], None, "Zürich"),
            ("Q90", "Paris", [], "Q90", None),
            ("enwiki:Paris_Hilton", "Paris Hilton", [], None, "Paris_Hilton")]
    return AliasIndex.from_kb_table(schemas.from_records(
        [{"entity_id": e, "name": n, "description": "", "aliases": a, "source": "custom", "popularity": 1.0,
          "qid": q, "wiki_title": t, "kind": "thing"} for e, n, a, q, t in rows], "kb"))


def _link(start: int, end: int, entity_id: str) -> dict:
    return {"mention_start": start, "mention_end": end, "entity_id": entity_id}


def test_counting_rule():
    gold = [GoldText("1", "Burma and Zurich", [GoldMention(0, 5, "Burma", "Burma", None),       # renamed: an alias
                                               GoldMention(10, 16, "Zurich", "Zurich", None)]),  # accents folded
            GoldText("2", "Paris Hilton in Paris", [GoldMention(0, 12, "Paris Hilton", "Paris_Hilton", None),
                                                    GoldMention(16, 21, "Paris", "Paris", "Q90")]),
            GoldText("3", "nothing here", [GoldMention(0, 7, "nothing", "Nothing_(band)", None)])]
    predicted = [
        [_link(0, 5, "enwiki:Myanmar"), _link(11, 14, "enwiki:Zürich")],        # both right (overlap counts)
        [_link(0, 5, "Q90"),                                                    # overlaps Paris Hilton, wrong entity
         _link(16, 21, "Q90"), _link(17, 20, "Q90")],                           # right once; the second is a duplicate
        [_link(8, 12, "enwiki:Paris_Hilton")],                                  # no gold span there
    ]
    counts = score_links(gold, predicted, _index())
    assert (counts.correct, counts.links) == (3, 6)
    assert counts.on_gold == 5   # every link but the one on "here" overlaps a gold span
    assert counts.covered == 4   # Nothing_(band) is not in the KB
    score = LinkingScore.of(3, 5, counts, 1.0)
    assert score.precision == 3 / 6 and score.precision_gold == 3 / 5 and score.recall == 3 / 5
    assert score.f1 == pytest.approx(0.6)


def test_a_gold_mention_may_list_the_ids_it_accepts(tmp_path):
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps({"id": "c1", "text": "a dog and a cat", "mentions": [
        {"start": 2, "end": 5, "surface": "dog", "accept": ["enwiki:Paris_Hilton", "Q90"]},
        {"start": 12, "end": 15, "surface": "cat", "accept": ["wordnet:n0"]}]}) + "\n")
    gold = load_gold(str(path))
    assert gold[0].mentions[0].accept == ("enwiki:Paris_Hilton", "Q90") and gold[0].mentions[0].title == "enwiki:Paris_Hilton"
    counts = score_links(gold, [[_link(2, 5, "Q90"), _link(12, 15, "enwiki:Myanmar")]], _index())
    assert (counts.correct, counts.links, counts.on_gold) == (1, 2, 2)
    assert counts.covered == 1          # wordnet:n0 is not in this KB


def test_load_gold_reads_json_lines(tmp_path):
    path = tmp_path / "gold.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": "Paris", "mentions": [
        {"start": 0, "end": 5, "surface": "Paris", "title": "Paris", "qid": "Q90"}]}) for i in range(3)) + "\n\n")
    gold = load_gold(str(path), limit=2)
    assert [g.id for g in gold] == ["0", "1"] and gold[0].mentions[0] == GoldMention(0, 5, "Paris", "Paris", "Q90")
