"""The linker's rules on small hand-made KBs: common nouns go to concepts only, names to
named entities through the link model, surnames, acronyms, pages that are no entities,
NIL, and the image-aware choice. The model here is set by hand (the plumbing); the shipped
model's quality is measured on gold sets (tests/i2e_engine/kb/test_linking_quality.py)."""
from __future__ import annotations

import numpy as np
import pytest

import schemas
from i2e_engine.config import LinkConfig
from i2e_engine.kb.alias_index import AliasIndex
from i2e_engine.link_model import FEATURES, LinkModel
from i2e_engine.kb.words import content_words
from i2e_engine.linking import (Linker, best_link_per_entity, choose_with_image, common_noun, resolve_overlaps,
                                sentence_initial, word_frequency)
from i2e_engine.records import Mention


def hand_model(threshold: float = 0.6, **weights: float) -> LinkModel:
    """p = sigmoid(6 prior - 3 + ...): a sole candidate (prior 1) gets 0.95, an even split
    of two 0.5 (NIL under 0.6), of eight 0.13."""
    w = {"prior": 6.0, **weights}
    return LinkModel(list(FEATURES), [{"weights": [[w.get(f, 0.0)] for f in FEATURES], "bias": [-3.0]}], threshold, {})


def kb_index(rows: list[tuple]) -> AliasIndex:
    """rows: (entity_id, name, description, aliases, popularity, kind)."""
    return AliasIndex.from_kb_table(schemas.from_records(
        [{"entity_id": e, "name": n, "description": d, "aliases": a, "source": "custom", "popularity": float(p),
          "qid": None, "wiki_title": None, "kind": k} for e, n, d, a, p, k in rows], "kb"))


KB = [
    ("wordnet:n10289039", "man", "any human being", ["human being"], 5, "concept"),
    ("wordnet:n02084071", "dog", "a domesticated canid", ["domestic dog"], 5, "concept"),
    ("enwiki:Man", "Man", "", [], 50, "thing"),
    ("geonames:1", "Man", "city in Ivory Coast", [], 5, "place"),
    ("enwiki:Dog", "Dog", "", [], 50, "thing"),
    ("enwiki:Frank_Sinatra", "Frank Sinatra", "", [], 30, "thing"),
    ("enwiki:Nancy_Sinatra", "Nancy Sinatra", "", [], 10, "thing"),
    ("enwiki:Karl_Marx", "Karl Marx", "", [], 40, "thing"),
    ("enwiki:Groucho_Marx", "Groucho Marx", "", [], 40, "thing"),
    ("enwiki:Microsoft_Office_Document_Imaging", "Microsoft Office Document Imaging", "", ["MODI"], 2, "thing"),
    ("enwiki:Jones", "Jones", "", [], 1, "name_page"),
    ("enwiki:Tom_Jones", "Tom Jones", "", [], 20, "thing"),
    ("enwiki:List_of_Dogs", "List of Dogs", "", ["Dogs list"], 9, "list"),
] + [(f"enwiki:John_Smith_{i}", "John Smith", "", [], 10, "thing") for i in range(8)]


@pytest.fixture(scope="module")
def index() -> AliasIndex:
    return kb_index(KB)


@pytest.fixture(scope="module")
def linker(index) -> Linker:
    return Linker(index, LinkConfig(), model=hand_model())


def mention(text: str, surface: str, source: str = "ner", label: str = "PERSON", occurrence: int = 0) -> Mention:
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(surface, start + 1)
    return Mention(text=surface, label=label, start=start, end=start + len(surface), source=source)


def alias(text: str, surface: str, occurrence: int = 0) -> Mention:
    return mention(text, surface, source="alias", label="ALIAS", occurrence=occurrence)


def ids(links: list[dict]) -> list[str]:
    return [link["entity_id"] for link in links]


def test_a_lower_case_common_noun_links_to_its_concept_only(linker):
    text = "a man walks a dog on the beach"
    links = linker.link(text, [alias(text, "a man"), alias(text, "dog")])
    assert ids(links) == ["wordnet:n10289039", "wordnet:n02084071"]   # not the page Man, the city, the page Dog
    assert all(link["link_score"] == 1.0 and link["runner_ups"] == [] for link in links)


def test_a_sentence_initial_concept_word_is_common_but_a_surname_is_a_name(linker):
    text = "Dog on a beach. Sinatra in 1955"
    dog, sinatra = alias(text, "Dog"), alias(text, "Sinatra")
    assert linker.is_common(text, dog) and not linker.is_common(text, sinatra)
    assert ids(linker.link(text, [dog])) == ["wordnet:n02084071"]
    later = "The Bowery Boys meet Dog"                      # capitalized mid-sentence: a name
    assert not linker.is_common(later, alias(later, "Dog"))
    assert sentence_initial(text, text.index("Sinatra")) and not sentence_initial(later, later.index("Dog"))
    shouting = "A MAN WALKS HIS DOG PAST SINATRA"
    assert linker.is_common(shouting, alias(shouting, "DOG")) and not linker.is_common(shouting, alias(shouting, "SINATRA"))
    assert not linker.is_common(shouting, mention(shouting, "DOG"))       # an NER name stays a name


def test_a_capitalized_name_never_links_to_a_concept_and_ner_labels_exclude_kinds(linker):
    text = "market in the city of Man, Ivory Coast"
    [link] = linker.link(text, [mention(text, "Man", label="GPE")])
    assert link["entity_id"] in ("enwiki:Man", "geonames:1")
    person = "Man at the premiere"
    scored = linker.score_name(person, mention(person, "Man"), {})
    assert {s.entity_id for s in scored} == {"enwiki:Man"}       # a PERSON is no place, no concept


def test_a_surname_alone_gets_the_people_of_that_name_as_candidates(linker):
    text = "Sinatra in 1955"
    scored = linker.score_name(text, alias(text, "Sinatra"), {})
    assert [s.entity_id for s in scored] == ["enwiki:Frank_Sinatra", "enwiki:Nancy_Sinatra"]   # by prior
    features = linker.features_of([(text, alias(text, "Sinatra"), linker.name_candidates(alias(text, "Sinatra")))])
    assert features[:, FEATURES.index("form_name_part")].tolist() == [1.0, 1.0]
    assert features[:, FEATURES.index("person_shape")].tolist() == [1.0, 1.0]


def test_a_surname_takes_the_full_name_of_the_same_text(index):
    model = hand_model(in_text=8.0)
    linker = Linker(index, LinkConfig(), model=model)
    text = "Karl Marx in London. Marx wrote there"
    links = linker.link(text, [mention(text, "Karl Marx"), mention(text, "Marx", occurrence=1)])
    # one link per entity: the full name's link (same entity) is kept, the surname resolved to it
    assert ids(links) == ["enwiki:Karl_Marx"]
    alone = linker.link("Marx wrote there", [mention("Marx wrote there", "Marx")])
    assert alone == []                                    # Karl or Groucho: an even split is NIL
    traced = []
    linker.link(text, [mention(text, "Karl Marx"), mention(text, "Marx", occurrence=1)], traced)
    surname = [t for t in traced if t.mention["text"] == "Marx"][0]
    in_text = surname.features[:, FEATURES.index("in_text")]
    assert in_text[surname.entity_ids.index("enwiki:Karl_Marx")] == 1.0
    assert in_text[surname.entity_ids.index("enwiki:Groucho_Marx")] == 0.0


def test_an_acronym_alias_matches_only_a_mention_in_capitals(linker):
    text = "MODI scans and Modi speaks"
    upper = linker.name_candidates(mention(text, "MODI", label="ORG"))
    title = linker.name_candidates(mention(text, "Modi"))
    assert [linker.alias_index.entity_id(row) for row in upper.rows] == ["enwiki:Microsoft_Office_Document_Imaging"]
    assert len(title.rows) == 0


def test_list_and_name_pages_are_never_candidates(linker, index):
    assert index.candidates("Jones") == [("enwiki:Tom_Jones", pytest.approx(1.0))]     # the surname form only
    assert index.candidates("Dogs list") == [] and index.candidates("List of Dogs") == []


def test_nil_under_the_model_threshold_and_the_config_override(index, linker):
    text = "John Smith at home"
    assert linker.link(text, [mention(text, "John Smith")]) == []       # 8 equal people: p = 0.09
    lenient = Linker(index, LinkConfig(nil_threshold=0.05), model=hand_model())
    [link] = lenient.link(text, [mention(text, "John Smith")])
    assert link["entity_id"] == "enwiki:John_Smith_0"                    # ties by entity_id
    assert link["link_score"] == pytest.approx(1 / (1 + np.exp(-(6 / 8 - 3))), rel=0.05)
    strict = Linker(index, LinkConfig(nil_threshold=0.99), model=hand_model())
    text = "Frank Sinatra sings"
    assert strict.link(text, [mention(text, "Frank Sinatra")]) == []
    assert ids(linker.link(text, [mention(text, "Frank Sinatra")])) == ["enwiki:Frank_Sinatra"]


def test_output_does_not_depend_on_mention_order(linker):
    text = "Frank Sinatra and a dog, with Tom Jones"
    mentions = [mention(text, "Frank Sinatra"), alias(text, "a dog"), mention(text, "Tom Jones"),
                alias(text, "Sinatra")]
    forward = linker.link(text, mentions)
    assert forward == linker.link(text, list(reversed(mentions)))
    assert ids(forward) == ["enwiki:Frank_Sinatra", "wordnet:n02084071", "enwiki:Tom_Jones"]


def test_a_batch_links_each_text_as_it_would_alone(index):
    # link_many scores the names of many texts in one matrix; ties (eight John Smiths with
    # equal features) and the surname rule must come out as they do text by text.
    linker = Linker(index, LinkConfig(nil_threshold=0.0, max_runner_ups=3), model=hand_model())
    texts = ["Frank Sinatra and a dog, with Tom Jones", "John Smith sings", "Karl Marx read, and Marx wrote",
             "Sinatra sings", "a man", "nothing to link"]
    mentions = [[mention(texts[0], "Frank Sinatra"), alias(texts[0], "a dog"), mention(texts[0], "Tom Jones")],
                [mention(texts[1], "John Smith")],
                [mention(texts[2], "Karl Marx"), mention(texts[2], "Marx", occurrence=1)],
                [mention(texts[3], "Sinatra")], [alias(texts[4], "a man")], []]
    alone = [linker.link(text, found) for text, found in zip(texts, mentions)]
    assert linker.link_many(texts, mentions) == alone
    assert linker.link_many(texts[::-1], mentions[::-1]) == alone[::-1]
    assert [r["entity_id"] for r in alone[1][0]["runner_ups"]] == [f"enwiki:John_Smith_{i}" for i in (1, 2, 3)]
    marx = alone[2][-1]          # "Marx" had "Karl Marx" of the same text as a candidate
    assert marx["mention"] == "Marx" and "enwiki:Karl_Marx" in [marx["entity_id"], *ids(marx["runner_ups"])]
    assert alone[5] == []


@pytest.mark.parametrize("text", ["dog", "The", "Sinatra", "zzqxv", "New York", "café", "rock'n'roll", "x2",
                                  "Barack Obama", "the Eiffel Tower", "New zzqxv", "Hello  World", "Falcon 9"])
def test_word_frequency_reads_wordfreq(text):
    from wordfreq import zipf_frequency

    assert word_frequency(text) == zipf_frequency(text.lower(), "en") / 8.0


def test_runner_ups_follow_the_config(index):
    text = "Sinatra sings"
    for max_runner_ups, expected in ((0, 0), (1, 1), (3, 1)):
        linker = Linker(index, LinkConfig(max_runner_ups=max_runner_ups, nil_threshold=0.0), model=hand_model())
        [link] = linker.link(text, [mention(text, "Sinatra")])
        assert len(link["runner_ups"]) == expected


def test_a_model_with_other_features_is_refused(tmp_path):
    path = tmp_path / "model.json"
    model = hand_model()
    model.save(path)
    assert LinkModel.load(path).layers == model.layers
    text = path.read_text().replace('"context"', '"something_else"')
    path.write_text(text)
    with pytest.raises(ValueError, match="refit"):
        LinkModel.load(path)


def test_a_compound_that_names_nothing_leaves_its_head_not_its_modifier(linker):
    text = "a dog man statue"          # "dog man" names nothing here; "man" is its head
    links = linker.link(text, [alias(text, "a dog man"), alias(text, "dog"), alias(text, "man")])
    assert ids(links) == ["wordnet:n10289039"]
    assert ids(linker.link(text, [alias(text, "dog"), alias(text, "man")])) == ["wordnet:n02084071",
                                                                                  "wordnet:n10289039"]


def test_longer_mentions_win_overlaps_then_ner():
    text = "lights of Paris Hilton"
    kept = resolve_overlaps([alias(text, "Paris"), mention(text, "Paris Hilton"), mention(text, "Paris")])
    assert [(m["text"], m["source"]) for m in kept] == [("Paris Hilton", "ner")]
    kept = resolve_overlaps([alias(text, "Paris"), mention(text, "Paris", label="GPE")])
    assert [(m["source"], m["label"]) for m in kept] == [("ner", "GPE")]


def test_content_words():
    assert content_words("The towers of the cities, and Paris's museums") == {"tower", "city", "paris", "museum"}
    assert content_words("a I of") == frozenset()


def test_context_is_the_cosine_of_the_bags_less_the_mention_words():
    index = kb_index([
        ("e:Paris", "Paris", "capital city of France with the Eiffel Tower", [], 5, "place"),
        ("e:Paris_Hilton", "Paris Hilton", "", [], 5, "thing"),
        ("e:Paris_album", "Paris", "album recorded in Lamar County", [], 1, "thing")])
    linker = Linker(index, LinkConfig(), model=hand_model())
    texts = ["Paris and the Eiffel Tower, France", "Paris", "towers in Lamar County near Paris"]
    named = [(text, mention(text, "Paris", label="GPE", occurrence=0), None) for text in texts]
    named = [(text, m, linker.name_candidates(m)) for text, m, _ in named]
    contexts = linker.features_of(named)[:, FEATURES.index("context")]
    got = {}
    start = 0
    for text, m, candidates in named:
        for row, value in zip(candidates.rows.tolist(), contexts[start:start + len(candidates.rows)].tolist()):
            got[(text, index.entity_id(row))] = value
        start += len(candidates.rows)

    def cosine(c: frozenset, e: frozenset) -> float:          # the rule, written out
        return len(c & e) / (len(c) * len(e)) ** 0.5 if c and e else 0.0

    for (text, entity_id), value in got.items():
        entity = index.entity(entity_id)
        mention_words = content_words("Paris")
        expected = cosine(content_words(text) - mention_words,
                          content_words(f"{entity['name']} {entity['description']}") - mention_words)
        assert value == pytest.approx(expected, abs=1e-12), (text, entity_id)
    # C = {eiffel, tower, france}; E = {capital, city, france, eiffel, tower}: 3 shared
    assert got[(texts[0], "e:Paris")] == pytest.approx(3 / (3 * 5) ** 0.5)
    assert got[(texts[2], "e:Paris_album")] > got[(texts[2], "e:Paris")] > 0     # "Lamar County" over "towers"
    assert all(value == 0.0 for (text, _), value in got.items() if text == "Paris")   # no context words


def _link(entity_id: str, score: float, runner_ups: list[tuple[str, float]]) -> dict:
    return {"mention": "Falcon", "mention_label": "ALIAS", "mention_source": "alias", "mention_start": 7,
            "mention_end": 13, "entity_id": entity_id, "link_score": score, "link_prior": score, "link_context": 0.0,
            "runner_ups": [{"entity_id": e, "link_score": s, "link_prior": s, "link_context": 0.0,
                            "image_entity_score": None} for e, s in runner_ups]}


def test_the_image_can_overturn_an_uncertain_text_choice_and_keeps_both_scores():
    link = _link("enwiki:Falcon", 0.8, [("enwiki:Falcon_9", 0.6), ("enwiki:Falcon_Heavy", 0.3)])
    image = {"enwiki:Falcon": 0.05, "enwiki:Falcon_9": 0.40, "enwiki:Falcon_Heavy": 0.38}
    chosen = choose_with_image(link, image, image_weight=1.0, nil_score=None, certain_score=0.9)
    # 0.8 + 0.05 = 0.85 < 0.6 + 0.40 = 1.00; Falcon Heavy 0.68
    assert chosen["entity_id"] == "enwiki:Falcon_9" and chosen["image_entity_score"] == pytest.approx(0.40)
    assert chosen["link_score"] == 0.6 and chosen["mention"] == "Falcon"
    assert [(r["entity_id"], r["link_score"], r["image_entity_score"]) for r in chosen["runner_ups"]] == [
        ("enwiki:Falcon", 0.8, pytest.approx(0.05)), ("enwiki:Falcon_Heavy", 0.3, pytest.approx(0.38))]
    assert choose_with_image(link, image, image_weight=0.0, nil_score=None)["entity_id"] == "enwiki:Falcon"


def test_nil_when_the_image_disagrees_but_never_for_a_certain_link():
    link = _link("enwiki:Falcon", 0.8, [("enwiki:Falcon_9", 0.6)])
    scores = {"enwiki:Falcon": 0.10, "enwiki:Falcon_9": 0.12}
    assert choose_with_image(link, scores, 1.0, nil_score=0.2, certain_score=0.9) is None
    kept = choose_with_image(link, {"enwiki:Falcon": 0.10, "enwiki:Falcon_9": 0.21}, 1.0, nil_score=0.2)
    assert kept["entity_id"] == "enwiki:Falcon"          # one candidate agrees: 0.8 + 0.10 > 0.6 + 0.21
    certain = _link("enwiki:Falcon", 0.95, [("enwiki:Falcon_9", 0.02)])
    chosen = choose_with_image(certain, {"enwiki:Falcon": 0.0, "enwiki:Falcon_9": 0.9}, 1.0, nil_score=0.2,
                               certain_score=0.9)
    assert chosen["entity_id"] == "enwiki:Falcon" and chosen["image_entity_score"] == 0.0


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
