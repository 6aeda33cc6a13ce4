"""The linking gold-set counting rule (i2e_engine/kb/evaluate.py) on hand-made cases."""
from __future__ import annotations

import json

import schemas
from i2e_engine.kb.alias_index import AliasIndex
from i2e_engine.kb.evaluate import GoldMention, GoldText, load_gold, score_links


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
    correct, links, covered = score_links(gold, predicted, _index())
    assert (correct, links) == (3, 6)
    assert covered == 4          # Nothing_(band) is not in the KB


def test_load_gold_reads_json_lines(tmp_path):
    path = tmp_path / "gold.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": "Paris", "mentions": [
        {"start": 0, "end": 5, "surface": "Paris", "title": "Paris", "qid": "Q90"}]}) for i in range(3)) + "\n\n")
    gold = load_gold(str(path), limit=2)
    assert [g.id for g in gold] == ["0", "1"] and gold[0].mentions[0] == GoldMention(0, 5, "Paris", "Paris", "Q90")
