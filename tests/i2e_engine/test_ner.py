import pytest

import schemas
from i2e_engine.config import NerConfig
from i2e_engine.kb.alias_index import AliasIndex
from i2e_engine.linking import resolve_overlaps
from i2e_engine.ner import build_extractor


def index_of(*names: str, kind: str = "thing") -> AliasIndex:
    """An alias index of one entity per name."""
    return AliasIndex.from_kb_table(schemas.from_records(
        [{"entity_id": f"e:{name}", "name": name, "description": "", "aliases": [], "source": "custom",
          "popularity": 1.0, "qid": None, "wiki_title": None, "kind": kind} for name in names], "kb"))


@pytest.fixture(scope="module")
def extractor():
    return build_extractor(NerConfig(), index_of("dog", "pizza", "Eiffel Tower", "tower", "cat", "Space Shuttle"))


def test_real_ner_finds_names_with_offsets(extractor):
    text = "Barack Obama visits the Eiffel Tower in Paris"
    mentions = extractor.extract([text])[0]
    ner = {m["text"]: m for m in mentions if m["source"] == "ner"}
    assert "Barack Obama" in ner and ner["Barack Obama"]["label"] == "PERSON"
    assert "Paris" in ner and ner["Paris"]["label"] == "GPE"
    for m in mentions:
        assert text[m["start"]:m["end"]] == m["text"]


def test_alias_matcher_finds_concepts_the_ner_misses(extractor):
    mentions = extractor.extract(["A DOG eats pizza on the beach"])[0]
    found = {(m["text"], m["source"], m["label"]) for m in mentions}
    assert ("DOG", "alias", "ALIAS") in found
    assert ("pizza", "alias", "ALIAS") in found


def test_alias_matches_keep_every_span_for_the_linker(extractor):
    mentions = extractor.extract(["the space shuttle by the tower at dusk"])[0]
    texts = [m["text"] for m in mentions if m["source"] == "alias"]
    assert "space shuttle" in texts and "tower" in texts
    assert extractor.extract(["eiffel tower"])[0][0]["text"] == "eiffel tower"
    assert [m["text"] for m in extractor.extract(["eiffel tower"])[0]] == ["eiffel tower", "tower"]
    kept = resolve_overlaps(extractor.extract(["eiffel tower"])[0])
    assert [m["text"] for m in kept] == ["eiffel tower"]             # the linker keeps the longer


def test_unwanted_labels_are_dropped(extractor):
    mentions = extractor.extract(["On 4 July 2019 three people met"])[0]
    assert all(m["label"] not in ("DATE", "CARDINAL") for m in mentions)


def test_batch_equals_one_by_one(extractor):
    texts = ["Chelsea the cat", "A cup of coffee", "", "NASA launches the Space Shuttle from Florida"]
    batched = extractor.extract(texts, batch_size=2)
    assert batched == [extractor.extract([t])[0] for t in texts]
    assert batched[2] == []


def test_missing_model_gives_a_clear_error():
    with pytest.raises(RuntimeError, match="cannot load spaCy model 'no_such_model'"):
        build_extractor(NerConfig(model="no_such_model"))


def test_alias_hits_must_be_nouns():
    extractor = build_extractor(NerConfig(), index_of("nice", "reading", "book", "hat"))
    texts = [m["text"] for m in extractor.extract(["a nice hat: a girl reading a book"])[0]]
    assert "book" in texts and "hat" in texts
    assert "nice" not in texts and "reading" not in texts


def test_no_alias_hit_inside_a_date_or_a_number():
    extractor = build_extractor(NerConfig(), index_of("september", "leaders", "dozen"))
    text = "BRICS leaders in Hangzhou, China, 3 September 2016"
    [mentions] = extractor.extract([text])
    assert "3 September 2016" not in [m["text"] for m in mentions]      # DATE is no wanted label
    assert [m["text"] for m in mentions if m["source"] == "alias"] == ["leaders"]


def test_a_model_number_ends_a_name_and_the_later_head_wins():
    extractor = build_extractor(NerConfig(), index_of("spacex falcon", "falcon 9", "spacex", "rocket"))
    text = "Launch of the satellite on a SpaceX Falcon 9 rocket"
    [mentions] = extractor.extract([text])
    aliases = [m["text"] for m in mentions if m["source"] == "alias"]
    assert "Falcon 9" in aliases and "SpaceX" in aliases and "rocket" in aliases
    assert not any("," in a or a.endswith(".") for a in aliases)


def test_plural_forms_of_aliases_are_found():
    extractor = build_extractor(NerConfig(), index_of("coin", "galaxy"))
    mentions = extractor.extract(["Greek coins and distant galaxies"])[0]
    assert [m["text"] for m in mentions if m["source"] == "alias"] == ["coins", "galaxies"]


def test_mistagged_nouns_after_a_determiner_still_count():
    extractor = build_extractor(NerConfig(), index_of("water lily", "revolver", "nice"))
    texts = [m["text"] for t in ["a water lily on display", "a photo of a revolver", "a nice day"]
             for m in extractor.extract([t])[0]]
    assert texts == ["water lily", "revolver"]


def test_the_alias_matcher_can_be_turned_off():
    extractor = build_extractor(NerConfig(alias_matcher=False), index_of("dog"))
    assert extractor.extract(["a dog"])[0] == []


def test_a_leading_article_and_punctuation_do_not_hide_a_name():
    extractor = build_extractor(NerConfig(), index_of("The Beatles", "Coca-Cola"))
    found = extractor.extract(["poster of the beatles and a bottle of coca-cola"])[0]
    assert [m["text"] for m in found if m["source"] == "alias"][0] == "beatles"   # the key drops a leading "the"
    assert "coca-cola" in {m["text"] for m in found}


def test_a_common_noun_that_modifies_the_next_noun_is_no_mention():
    extractor = build_extractor(NerConfig(), index_of("bathroom", "sink", "stone", "bench", "Wii", "controller"))
    found = [m["text"] for m in extractor.extract(["A bathroom sink filled with soap next to a stone bench"])[0]]
    assert "sink" in found and "bench" in found                         # the heads stay
    assert not {"A bathroom", "bathroom", "a stone", "stone"} & set(found)  # their modifiers go
    alone = [m["text"] for m in extractor.extract(["A bathroom with a bench of stone"])[0]]
    assert {"bench"} <= set(alone) and any(t.endswith("bathroom") for t in alone) and any(t.endswith("stone") for t in alone)
    pictured = [m["text"] for m in extractor.extract(["Bathroom photo", "stone bench texture"])[1]]
    assert "stone" not in pictured and "bench" in pictured         # a word for the picture is no head
    assert "Bathroom" in [m["text"] for m in extractor.extract(["Bathroom photo"])[0]]
    named = [m["text"] for m in extractor.extract(["A man holding a Wii game controller"])[0]]
    assert "Wii" in named                                                # a proper noun is a name, not a modifier


def test_a_participle_the_tagger_calls_a_noun_is_no_head():
    # "jumping" is tagged a noun at the end of "a dolphin jumping"; it names no concept, so
    # the dolphin stays. "building" names one, so "brick" only modifies it.
    extractor = build_extractor(NerConfig(), index_of("dolphin", "brick", "building", kind="concept"))
    assert "dolphin" in [m["text"] for m in extractor.extract(["a dolphin jumping"])[0]]
    found = [m["text"] for m in extractor.extract(["a brick building"])[0]]
    assert "building" in found and not {"a brick", "brick"} & set(found)
    # were "jumping" a visual concept, it would be the head
    jumping = build_extractor(NerConfig(), index_of("dolphin", "jumping", kind="concept"))
    assert "dolphin" not in [m["text"] for m in jumping.extract(["a dolphin jumping"])[0]]
