"""The linker on real ambiguity: Paris the city / Paris Hilton / Paris of Troy, Mercury, John Smith."""
from __future__ import annotations

import pytest

import schemas
from i2e_engine.config import LinkConfig
from i2e_engine.kb.alias_index import AliasIndex
from i2e_engine.kb.vital import vital_table
from i2e_engine.linking import (Linker, bag_cosine, best_link_per_entity, choose_with_image, common_noun, content_words,
                                resolve_overlaps)
from i2e_engine.records import Mention

# Wikidata-like rows: descriptions as on Wikidata, popularity = sitelinks + 1.
PARIS_KB = [
    ("Q90", "Paris", "capital and largest city of France", ["City of Light", "Paris, France"], 288),
    ("Q47899", "Paris Hilton", "American media personality and businesswoman (born 1981)",
     ["Paris Whitney Hilton", "Paris"], 84),
    ("Q167646", "Paris", "son of Priam, king of Troy in Greek mythology", ["Alexandros", "Paris of Troy"], 61),
    ("Q65", "Los Angeles", "largest city in California, United States", ["LA", "L.A."], 250),
    ("Q243", "Eiffel Tower", "tower in Paris, France", [], 180),
    ("Q142", "France", "country in Western Europe", ["French Republic"], 320),
] + [
    # many people share one name and none stands out: a mention of it alone is NIL
    (f"Q{9000 + i}", "John Smith", description, [], 10) for i, description in enumerate([
        "English explorer and colonial governor of Jamestown, Virginia", "British Labour Party leader",
        "American football player", "Scottish footballer", "Australian cricketer", "Canadian politician",
        "English cricketer", "American actor"])
]


def kb_index(rows: list[tuple], source: str = "wikidata", kind: str = "thing") -> AliasIndex:
    """rows: (entity_id, name, description, aliases, popularity)."""
    return AliasIndex.from_kb_table(schemas.from_records(
        [{"entity_id": e, "name": n, "description": d, "aliases": a, "source": source, "popularity": float(p),
          "qid": None, "wiki_title": None, "kind": kind} for e, n, d, a, p in rows], "kb"))


@pytest.fixture(scope="module")
def paris_index() -> AliasIndex:
    return kb_index(PARIS_KB)


@pytest.fixture(scope="module")
def linker(paris_index) -> Linker:
    return Linker(paris_index, LinkConfig())


def mention(text: str, surface: str, source: str = "ner", label: str = "GPE", occurrence: int = 0) -> Mention:
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(surface, start + 1)
    return Mention(text=surface, label=label, start=start, end=start + len(surface), source=source)


def test_eiffel_tower_context_links_the_city(linker):
    text = "the Eiffel Tower in Paris, France"
    links = linker.link(text, [mention(text, "Eiffel Tower", label="FAC"), mention(text, "Paris"),
                               mention(text, "France")])
    assert [l["entity_id"] for l in links] == ["Q243", "Q90", "Q142"]
    paris = links[1]
    assert (paris["mention"], paris["mention_start"], paris["mention_end"]) == ("Paris", 20, 25)
    # "France" is in the alt-text and the description: 1 shared word of 3 and 4
    assert paris["link_context"] == pytest.approx(1 / 12 ** 0.5)
    prior, sim = paris["link_prior"], paris["link_context"]
    assert paris["link_score"] == pytest.approx(prior + sim - prior * sim)
    assert [r["entity_id"] for r in paris["runner_ups"]] == ["Q167646", "Q47899"]
    scores = [paris["link_score"]] + [r["link_score"] for r in paris["runner_ups"]]
    assert scores == sorted(scores, reverse=True)


def test_full_name_beats_the_substring_alias_hit(linker):
    text = "Paris Hilton at a party in Los Angeles"
    links = linker.link(text, [mention(text, "Paris", source="alias", label="ALIAS"),
                               mention(text, "Paris Hilton", label="PERSON"), mention(text, "Los Angeles")])
    assert [(l["entity_id"], l["mention"], l["mention_label"]) for l in links] == [
        ("Q47899", "Paris Hilton", "PERSON"), ("Q65", "Los Angeles", "GPE")]


def test_a_longer_mention_wins_even_when_it_does_not_link(linker):
    text = "Paris Jackson arrives at the Grammys"
    assert linker.link(text, [mention(text, "Paris Jackson", label="PERSON"),
                              mention(text, "Paris", source="alias", label="ALIAS")]) == []


def test_same_span_ner_wins_over_alias():
    text = "lights of Paris"
    kept = resolve_overlaps([mention(text, "Paris", source="alias", label="ALIAS"), mention(text, "Paris")])
    assert [(m["source"], m["label"]) for m in kept] == [("ner", "GPE")]


def test_context_raises_the_mythological_paris_but_the_prior_still_rules(linker):
    neutral = "a photo of Paris"
    troy = "Paris, prince of Troy, in Greek mythology"
    by_text = {}
    for text in (neutral, troy):
        [link] = linker.link(text, [mention(text, "Paris", label="PERSON")])
        by_text[text] = link
    assert by_text[neutral]["entity_id"] == by_text[troy]["entity_id"] == "Q90"
    runner = {r["entity_id"]: r["link_score"] for r in by_text[troy]["runner_ups"]}
    neutral_runner = {r["entity_id"]: r["link_score"] for r in by_text[neutral]["runner_ups"]}
    assert runner["Q167646"] > neutral_runner["Q167646"] + 0.3
    assert list(runner)[0] == "Q167646"


def test_context_decides_between_equal_priors_on_real_vital_articles():
    linker = Linker(AliasIndex.from_kb_table(vital_table()), LinkConfig())
    sky = "Mercury seen low on the horizon next to the Sun before dawn"
    lab = "a drop of liquid mercury, the toxic chemical element, in a thermometer"
    [planet] = linker.link(sky, [mention(sky, "Mercury", source="alias", label="ALIAS")])
    [element] = linker.link(lab, [mention(lab, "mercury", source="alias", label="ALIAS")])
    assert planet["entity_id"] == "enwiki:Mercury_(planet)"
    assert element["entity_id"] == "enwiki:Mercury_(element)"
    assert planet["link_prior"] == pytest.approx(element["link_prior"]) == pytest.approx(0.5)
    assert planet["runner_ups"][0]["entity_id"] == "enwiki:Mercury_(element)"


def test_nil_under_the_threshold(linker, paris_index):
    text = "John Smith at home"
    assert linker.link(text, [mention(text, "John Smith", label="PERSON")]) == []   # 8 equal people, prior 1/8
    explorer = "John Smith, the English explorer, at Jamestown in Virginia"
    [link] = linker.link(explorer, [mention(explorer, "John Smith", label="PERSON")])
    assert link["entity_id"] == "Q9000" and link["link_score"] >= LinkConfig().nil_threshold
    strict = Linker(paris_index, LinkConfig(nil_threshold=0.9))
    text = "a photo of Paris and the Eiffel Tower"
    assert [l["entity_id"] for l in strict.link(text, [mention(text, "Paris"), mention(text, "Eiffel Tower")])] \
        == ["Q243"]                                                                  # Paris: prior ~0.73
    assert linker.link("Berlin", [Mention(text="Berlin", label="GPE", start=0, end=6, source="ner")]) == []


def test_runner_up_count_follows_the_config(paris_index):
    text = "a photo of Paris"
    mentions = [mention(text, "Paris")]
    for max_runner_ups, expected in ((0, 0), (1, 1), (3, 2), (10, 2)):
        [link] = Linker(paris_index, LinkConfig(max_runner_ups=max_runner_ups)).link(text, mentions)
        assert len(link["runner_ups"]) == expected
    [link] = Linker(paris_index, LinkConfig(top_k_candidates=1)).link(text, mentions)
    assert link["runner_ups"] == [] and link["entity_id"] == "Q90"


def test_two_mentions_of_one_entity_keep_the_better_link(linker):
    text = "Paris, the City of Light, at night"
    links = linker.link(text, [mention(text, "Paris"), mention(text, "City of Light", source="alias", label="ALIAS")])
    assert [(l["entity_id"], l["mention"]) for l in links] == [("Q90", "City of Light")]
    text = "Paris in spring, Paris in winter"
    links = linker.link(text, [mention(text, "Paris", occurrence=1), mention(text, "Paris")])
    assert [(l["entity_id"], l["mention_start"]) for l in links] == [("Q90", 0)]     # tie: the earlier


def test_output_does_not_depend_on_mention_order(linker):
    text = "the Eiffel Tower in Paris, France, not Paris Hilton"
    mentions = [mention(text, "Eiffel Tower", label="FAC"), mention(text, "Paris"), mention(text, "France"),
                mention(text, "Paris Hilton", label="PERSON"),
                mention(text, "Paris", source="alias", label="ALIAS", occurrence=1)]
    forward = linker.link(text, mentions)
    assert forward == linker.link(text, list(reversed(mentions)))
    assert [l["entity_id"] for l in forward] == ["Q243", "Q90", "Q142", "Q47899"]


def test_equal_candidates_tie_break_by_entity_id():
    index = kb_index([(e, "Mercury", "", [], 1.0) for e in ("custom:b", "custom:a")], source="custom")
    [link] = Linker(index, LinkConfig()).link("Mercury", [Mention(text="Mercury", label="ALIAS", start=0, end=7,
                                                                  source="alias")])
    assert link["entity_id"] == "custom:a" and link["runner_ups"][0]["entity_id"] == "custom:b"


def test_content_words_and_cosine():
    assert content_words("The towers of the cities, and Paris's museums") == {"tower", "city", "paris", "museum"}
    assert bag_cosine(frozenset({"a1", "b1"}), frozenset({"a1", "c1", "d1", "e1"})) == pytest.approx(0.5 ** 1.5)
    assert bag_cosine(frozenset(), frozenset({"x1"})) == 0.0


def test_lowercase_common_noun_never_links_to_a_place():
    kb = schemas.from_records([
        {"entity_id": "enwiki:Man", "name": "Man", "description": "Male adult human", "aliases": [],
         "source": "vital_articles", "popularity": 1.0, "qid": None, "wiki_title": "Man", "kind": "thing"},
        {"entity_id": "geonames:1", "name": "Man", "description": "City in Ivory Coast", "aliases": [],
         "source": "geonames", "popularity": 5.0, "qid": None, "wiki_title": None, "kind": "place"},
    ], "kb")
    linker = Linker(AliasIndex.from_kb_table(kb), LinkConfig())
    common = linker.link("a man on a horse", [Mention(text="man", label="ALIAS", start=2, end=5, source="alias")])
    assert [l["entity_id"] for l in common] == ["enwiki:Man"] and common[0]["link_prior"] == 1.0
    text = "market in the city of Man, Ivory Coast"
    start = text.index("Man")
    proper = linker.link(text, [Mention(text="Man", label="GPE", start=start, end=start + 3, source="ner")])
    assert proper[0]["entity_id"] == "geonames:1"


def test_a_disambiguated_title_needs_context_for_a_common_noun():
    index = kb_index([("enwiki:Group_(mathematics)", "Group (mathematics)", "", ["Group"], 50),
                      ("enwiki:Field_(physics)", "Field (physics)", "", ["field"], 10),
                      ("enwiki:Field", "Field", "open land used for agriculture", [], 1)], source="dbpedia")
    linker = Linker(index, LinkConfig())
    people = "a group of people in a field"
    group, field = (Mention(text=w, label="ALIAS", start=people.index(w), end=people.index(w) + len(w),
                            source="alias") for w in ("group", "field"))
    assert [l["entity_id"] for l in linker.link(people, [group, field])] == ["enwiki:Field"]
    algebra = "a group in mathematics: the symmetries of a square"
    [link] = linker.link(algebra, [Mention(text="group", label="ALIAS", start=2, end=7, source="alias")])
    assert link["entity_id"] == "enwiki:Group_(mathematics)"          # the context supports it
    proper = "Group of Seven"                                           # capitalised: a name, kept
    [link] = linker.link(proper, [Mention(text="Group", label="ORG", start=0, end=5, source="ner")])
    assert link["entity_id"] == "enwiki:Group_(mathematics)"


def _link(entity_id: str, score: float, runner_ups: list[tuple[str, float]]) -> dict:
    return {"mention": "Falcon", "mention_label": "ALIAS", "mention_source": "alias", "mention_start": 7,
            "mention_end": 13, "entity_id": entity_id, "link_score": score, "link_prior": score, "link_context": 0.0,
            "runner_ups": [{"entity_id": e, "link_score": s, "link_prior": s, "link_context": 0.0,
                            "image_entity_score": None} for e, s in runner_ups]}


def test_the_image_can_overturn_the_text_choice_and_keeps_both_scores():
    link = _link("enwiki:Falcon", 0.8, [("enwiki:Falcon_9", 0.6), ("enwiki:Falcon_Heavy", 0.3)])
    image = {"enwiki:Falcon": 0.05, "enwiki:Falcon_9": 0.40, "enwiki:Falcon_Heavy": 0.38}
    chosen = choose_with_image(link, image, image_weight=1.0, nil_score=None)
    # 0.8 + 0.05 = 0.85 < 0.6 + 0.40 = 1.00; Falcon Heavy 0.68
    assert chosen["entity_id"] == "enwiki:Falcon_9" and chosen["image_entity_score"] == pytest.approx(0.40)
    assert chosen["link_score"] == 0.6 and chosen["mention"] == "Falcon"
    assert [(r["entity_id"], r["link_score"], r["image_entity_score"]) for r in chosen["runner_ups"]] == [
        ("enwiki:Falcon", 0.8, pytest.approx(0.05)), ("enwiki:Falcon_Heavy", 0.3, pytest.approx(0.38))]
    # with no weight on the image the text's choice stands
    assert choose_with_image(link, image, image_weight=0.0, nil_score=None)["entity_id"] == "enwiki:Falcon"


def test_nil_when_the_image_disagrees_with_every_candidate():
    link = _link("enwiki:Falcon", 0.8, [("enwiki:Falcon_9", 0.6)])
    assert choose_with_image(link, {"enwiki:Falcon": 0.10, "enwiki:Falcon_9": 0.12}, 1.0, nil_score=0.2) is None
    kept = choose_with_image(link, {"enwiki:Falcon": 0.10, "enwiki:Falcon_9": 0.21}, 1.0, nil_score=0.2)
    assert kept["entity_id"] == "enwiki:Falcon"          # one candidate agrees: 0.8 + 0.10 > 0.6 + 0.21


def test_best_link_per_entity_keeps_the_higher_score_in_text_order():
    a = {**_link("e:1", 0.5, []), "mention_start": 9}
    b = {**_link("e:1", 0.7, []), "mention_start": 20}
    c = {**_link("e:2", 0.1, []), "mention_start": 0}
    assert [(l["entity_id"], l["mention_start"]) for l in best_link_per_entity([a, None, b, c])] == [
        ("e:2", 0), ("e:1", 20)]


@pytest.mark.parametrize("mention, common", [("man", True), ("a man", True), ("A man", True), ("the cat", True),
                                             ("The cat", True), ("the Moon", False), ("Man", False),
                                             ("NYC", False), ("A", False), ("New York", False)])
def test_common_noun(mention, common):
    assert common_noun(mention) is common
