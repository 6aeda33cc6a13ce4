"""Alias normalization, priors, the memory-mapped index files and matchable keys, on the
merged offline demo KB and on small KBs."""
from __future__ import annotations

import pickle
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import schemas
from i2e_engine.kb.alias_index import (ALIAS_WEIGHT, FORMS, INDEX_FILES, KIND_TRAITS, MAX_CANDIDATES_PER_KEY, TRAIT_COMMA_NAME,
                                       TRAIT_PERSON_SHAPE, AliasIndex, build_index, fold, initialism, name_part,
                                       normalize_alias)
from i2e_engine.kb.build import merge_sources
from i2e_engine.kb.geonames import geonames_table
from i2e_engine.kb.vital import vital_table


def kb_row(entity_id: str, name: str, aliases=(), source: str = "custom", popularity: float = 1.0,
           kind: str = "thing", description: str = "") -> dict:
    return {"entity_id": entity_id, "name": name, "description": description or f"about {name}",
            "aliases": list(aliases), "source": source, "popularity": float(popularity), "qid": None,
            "wiki_title": None, "kind": kind}


def _kb(*rows: tuple) -> pa.Table:
    """rows: (entity_id, name, aliases, source, popularity)."""
    return schemas.from_records([kb_row(e, n, a, s, p) for e, n, a, s, p in rows], "kb")


@pytest.fixture(scope="module")
def default_kb() -> pa.Table:
    vital = vital_table()
    titles = {t.casefold().replace("_", " ") for t in vital.column("wiki_title").to_pylist()}
    return merge_sources([vital, geonames_table(wiki_titles=titles)])


@pytest.fixture(scope="module")
def index(default_kb) -> AliasIndex:
    return AliasIndex.from_kb_table(default_kb)


@pytest.mark.parametrize("text, key", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  the   Beatles ", "beatles"),
    ('"The Beatles"', "beatles"),
    ("Paris,", "paris"),
    ("(Paris)", "paris"),
    ("Paris's", "paris"),
    ("Paris\u2019s", "paris"),
    ("PARIS", "paris"),
    ("São Paulo", "sao paulo"),
    ("Coca-Cola", "coca cola"),
    ("\uff30\uff41\uff52\uff49\uff53", "paris"),      # full-width letters (NFKC)
    ("Straße", "strasse"),                             # casefold, not lower
    ("C++", "c++"),
    ("Theodore", "theodore"),                          # "the" only as a whole word
    ("Małgorzata Søe", "malgorzata soe"),              # letters Unicode does not decompose
])
def test_normalize_alias(text, key):
    assert normalize_alias(text) == key


def test_fold_of_ascii_text_takes_a_short_cut_to_the_same_result():
    # An ASCII text skips Unicode normalization; with one accented word appended the same
    # text goes the long way, and must fold the same.
    rng = random.Random(7)
    alphabet = "abcXYZ '`s-_.,0()\t"
    texts = ["Paris's", "O`Neil's Cafe", "ROCK 'N' ROLL", "it's", "Jones'", "A  B"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(2000)]
    for text in texts:
        assert fold(text + " \u00e9") == fold(text) + " e", text


def test_priors_of_every_alias_sum_to_at_most_one(index, default_kb):
    surfaces = set(default_kb.column("name").to_pylist())
    for aliases in default_kb.column("aliases").to_pylist():
        surfaces.update(aliases)
    assert len(index) == default_kb.num_rows
    ambiguous = 0
    for surface in surfaces:
        candidates = index.candidates(surface, k=10_000)
        assert candidates, surface
        assert sum(prior for _, prior in candidates) <= 1.0 + 1e-6
        assert all(0.0 < prior <= 1.0 + 1e-6 for _, prior in candidates)
        ambiguous += len(candidates) > 1
    assert ambiguous > 1000


def test_paris_is_one_entity_from_two_sources_and_ranks_first(index):
    candidates = index.candidates("Paris", k=30)
    assert candidates[0][0] == "enwiki:Paris"
    paris = index.entity("enwiki:Paris")
    assert paris["source"] == "geonames+vital_articles" and paris["kind"] == "place"
    assert paris["description"] == "Capital of France"          # the vital article's, not "City in France"
    assert candidates == sorted(candidates, key=lambda c: (-c[1], c[0]))
    assert index.candidates("the paris's", k=30) == candidates
    assert index.candidates("Lutetia", k=30)[0][0] == "enwiki:Paris"   # a GeoNames alternate name


def test_equal_popularity_ties_break_by_id(index):
    candidates = index.candidates("Mercury", k=5)
    assert candidates == [("enwiki:Mercury_(element)", pytest.approx(0.5)),
                          ("enwiki:Mercury_(planet)", pytest.approx(0.5))]


def test_name_weighs_more_than_an_alias():
    index = AliasIndex.from_kb_table(_kb(("wd:1", "Jaguar", [], "wikidata", 10),
                                         ("wd:2", "Jaguar Cars", ["Jaguar"], "wikidata", 10)), smoothing=0.0)
    assert index.candidates("jaguar") == [("wd:1", pytest.approx(1 / (1 + ALIAS_WEIGHT))),
                                          ("wd:2", pytest.approx(ALIAS_WEIGHT / (1 + ALIAS_WEIGHT)))]
    # an entity whose name and alias normalize alike counts once, as a name
    index = AliasIndex.from_kb_table(_kb(("wd:1", "The Who", ["Who"], "wikidata", 1), ("wd:2", "Who", [], "wikidata", 1)),
                                     smoothing=0.0)
    assert index.candidates("who") == [("wd:1", pytest.approx(0.5)), ("wd:2", pytest.approx(0.5))]


def test_smoothing_keeps_zero_popularity_reachable():
    index = AliasIndex.from_kb_table(_kb(("a", "Alpha", [], "custom", 9), ("b", "Alpha", [], "custom", 0)),
                                     smoothing=0.1)
    assert index.candidates("alpha") == [("a", pytest.approx(0.9 * 1.0 + 0.05)), ("b", pytest.approx(0.05))]
    all_zero = AliasIndex.from_kb_table(_kb(("a", "Beta", [], "custom", 0), ("b", "Beta", [], "custom", 0)))
    assert all_zero.candidates("beta") == [("a", 0.5), ("b", 0.5)]


def test_k_truncates_after_the_priors_are_computed(index):
    full = index.candidates("London", k=30)
    assert len(full) >= 2 and index.candidates("London", k=1) == full[:1]
    assert index.candidates("no such entity anywhere", k=30) == []


def test_a_key_keeps_a_bounded_list_with_priors_over_all_candidates():
    n = MAX_CANDIDATES_PER_KEY + 20
    index = AliasIndex.from_kb_table(_kb(*[(f"e{i:04d}", "Crowded", [], "custom", 1) for i in range(n)]),
                                     smoothing=0.0)
    candidates = index.candidates("crowded", k=10_000)
    assert len(candidates) == MAX_CANDIDATES_PER_KEY
    assert candidates[0] == ("e0000", pytest.approx(1 / n))      # 1/n of all n, not of the kept ones


def test_plural_mentions_fall_back_to_the_singular(index):
    assert index.candidates("coins")[0][0] == "enwiki:Coin"
    assert index.candidates("galaxies")[0][0] == "enwiki:Galaxy"


def test_entity_lookup(index):
    cat = index.entity("enwiki:Cat")
    assert cat["name"] == "Cat" and cat["description"] == "Small domesticated carnivorous mammal"
    assert cat["source"] == "vital_articles" and cat["aliases"] == [] and cat["entity_id"] == "enwiki:Cat"
    assert cat["wiki_title"] == "Cat" and cat["kind"] == "thing"
    cat["aliases"].append("kitty")
    assert index.entity("enwiki:Cat")["aliases"] == []            # a copy: the index is unchanged
    with pytest.raises(KeyError):
        index.entity("enwiki:No_such_article")


def test_matchable_keys(index):
    phrases = index.phrases()
    assert phrases == sorted(phrases) and len(phrases) > 9_000
    present = set(phrases)
    assert {"dog", "pizza", "cat", "eiffel tower", "mercury", "austin", "paris"} <= present
    assert not any("(" in p for p in phrases)                   # "Mercury (planet)" never occurs in text
    # a city only GeoNames knows is found by the NER, not by the free-text matcher
    only_geonames = [e for e, _ in index.candidates("Sint Maarten")]
    assert only_geonames and index.entity(only_geonames[0])["source"] == "geonames"
    assert not index.is_match_key("sint maarten")
    assert index.is_match_key("dogs") and index.has_prefix("eiffel") and not index.has_prefix("eiffelzz")


def test_matchable_keys_leave_out_stop_words_numbers_and_short_forms():
    index = AliasIndex.from_kb_table(_kb(("wd:1", "The Who", [], "wikidata", 1),
                                         ("wd:2", "1984", ["1,984"], "wikidata", 1),
                                         ("wd:3", "Ox", [], "wikidata", 1), ("wd:4", "Let It Be", [], "wikidata", 1),
                                         ("wd:5", "Dog", ["domestic dog"], "wikidata", 1)))
    assert index.phrases() == ["dog", "domestic dog", "let it be", "lib"]     # "lib": Let It Be's initials
    assert index.candidates("Ox") == [("wd:3", 1.0)]              # still a candidate when the NER finds it


def test_index_files_are_arrays_and_a_second_process_maps_them(index, tmp_path):
    # a plain view of the mapped file (its memory is the file's, not a copy)
    assert isinstance(index._candidates.base, np.memmap) and index._candidates.dtype == np.int32
    assert not index._candidates.flags.owndata and not index.traits.flags.owndata
    script = (f"from i2e_engine.kb.alias_index import AliasIndex; "
              f"print(AliasIndex({str(index.folder)!r}).candidates('Paris', 2))")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    assert out.strip() == repr(index.candidates("Paris", 2))


def test_index_files_name_every_file_the_build_writes(index):
    # what publishing an index beside its KB copies (i2e_engine.kb.build)
    assert sorted(path.name for path in index.folder.iterdir()) == sorted(INDEX_FILES)


def test_entity_bags_are_stored_as_word_ids(index):
    from i2e_engine.kb.words import content_words

    rows = np.array([index.row_of(e) for e in ("enwiki:Paris", "enwiki:Mercury_(planet)", "enwiki:Paris")])
    sizes, ids = index.entity_words(rows)
    bags = np.split(ids, np.cumsum(sizes)[:-1])
    for row, bag in zip(rows.tolist(), bags):
        words = content_words(f"{index.field(row, 'name')} {index.field(row, 'description') or ''}")
        assert sorted(bag.tolist()) == sorted(index.word_ids(words).tolist()) and len(bag) == len(words) > 0
    assert bags[0].tolist() == bags[2].tolist()
    assert index.word_ids(["zzqxv-not-a-word"]).tolist() == []
    empty_sizes, empty_ids = index.entity_words(np.zeros(0, dtype=np.int64))
    assert len(empty_sizes) == 0 and len(empty_ids) == 0


def test_index_pickles_for_shipping_to_workers(index):
    copy = pickle.loads(pickle.dumps(index))
    assert copy.candidates("Paris") == index.candidates("Paris") and len(copy) == len(index)


def test_smoothing_must_be_below_one():
    kb = _kb(("a", "Alpha", [], "custom", 1), ("b", "Alpha", [], "custom", 0))
    assert AliasIndex.from_kb_table(kb, smoothing=0.2).candidates("alpha") == [("a", pytest.approx(0.9)),
                                                                                ("b", pytest.approx(0.1))]
    with pytest.raises(ValueError, match="smoothing"):
        AliasIndex.from_kb_table(kb, smoothing=1.0)


def test_bad_kb_tables_are_refused(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        build_index(_kb(("a", "Alpha", [], "custom", 1), ("a", "Alpha", [], "custom", 1)), tmp_path / "a")
    with pytest.raises(ValueError, match="non-negative"):
        build_index(_kb(("a", "Alpha", [], "custom", -1)), tmp_path / "b")
    with pytest.raises(ValueError, match="non-negative"):
        build_index(_kb(("a", "Alpha", [], "custom", float("nan"))), tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="not an alias index"):
        AliasIndex(tmp_path)


def test_initialisms_are_weak_aliases_that_the_popular_name_wins():
    index = AliasIndex.from_kb_table(_kb(("e:nyc", "New York City", [], "custom", 100),
                                         ("e:nyk", "New York Knicks", [], "custom", 10),
                                         ("e:nycx", "Nyc", [], "custom", 1)), smoothing=0.0)
    # masses for "nyc": New York City's initialism 0.1 x 100, "Nyc" by name 1 x 1
    assert index.candidates("NYC") == [("e:nyc", pytest.approx(10 / 11)), ("e:nycx", pytest.approx(1 / 11))]
    assert index.candidates("NYK") == [("e:nyk", 1.0)]
    assert initialism("United States of America") == "USA" and initialism("Paris, Texas") is None
    assert initialism("Coca-Cola") is None and initialism("Cat") is None and initialism("Group (mathematics)") is None


@pytest.mark.parametrize("name, part", [("Frank Sinatra", "Sinatra"), ("B. J. Armstrong", "Armstrong"),
                                        ("Quincy Delight Jones", "Jones"),
                                        ("Paris", None), ("Louis XIV of France", None), ("Akron, Ohio", None),
                                        ("Falcon 9", None), ("Jo Li", None), ("Frank Sinatra Jr.", None)])
def test_name_part_is_the_surname_of_a_person_shaped_name(name, part):
    assert name_part(name) == part


def test_each_candidate_says_how_its_key_names_it():
    kb = schemas.from_records([
        kb_row("e:sinatra", "Frank Sinatra", ["Ol' Blue Eyes"], popularity=10),
        kb_row("e:modi", "Microsoft Office Document Imaging", ["MODI"], popularity=1),
        kb_row("e:narendra", "Narendra Modi", popularity=20),
        kb_row("e:jones", "Jones", kind="name_page", popularity=5),
        kb_row("e:tom", "Tom Jones", popularity=3),
        kb_row("e:list", "List of Dogs", ["Dogs list"], kind="list"),
        kb_row("e:akron", "Akron, Ohio", kind="place"),
    ], "kb")
    index = AliasIndex.from_kb_table(kb)

    def forms(mention: str) -> dict[str, str]:
        key_id = index.lookup_key(mention)
        rows, _ = index.candidate_rows(key_id, 10)
        return {index.entity_id(r): FORMS[f] for r, f in zip(rows.tolist(), index.candidate_forms(key_id, 10).tolist())}

    assert forms("Frank Sinatra") == {"e:sinatra": "name"} and forms("Ol' Blue Eyes") == {"e:sinatra": "alias"}
    assert forms("Sinatra") == {"e:sinatra": "name_part"}
    assert forms("Modi") == {"e:narendra": "name_part", "e:modi": "acronym"}     # the linker drops the acronym
    assert forms("Jones") == {"e:tom": "name_part"}                              # a name page is never a candidate
    assert index.candidates("List of Dogs") == [] and index.candidates("Dogs list") == []
    traits = {e: int(index.traits[index.row_of(e)]) for e in ("e:sinatra", "e:akron", "e:modi")}
    assert traits["e:sinatra"] & TRAIT_PERSON_SHAPE and not traits["e:modi"] & TRAIT_PERSON_SHAPE
    assert traits["e:akron"] & KIND_TRAITS["place"] and traits["e:akron"] & TRAIT_COMMA_NAME
    assert index.popularity[index.row_of("e:narendra")] == 20.0
