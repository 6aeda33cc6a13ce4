"""Dedup in a whole build, on real photos: copies are dropped before the models, the
survivor reads their alt-texts, clusters land in the ``duplicates`` table, copies of
evaluation images are dropped by --decontaminate, every runner decides the same, and
semantic dedup drops what the hashes were told not to see."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2e_engine import storage, tables
from i2e_engine.config import BuildConfig, DedupConfig
from i2e_engine.workdir import WorkDir
from pipelines.run import run_build
from tests.i2e_engine.dedup_photos import copies

pytestmark = pytest.mark.e2e

ORIGINALS = [("elephant", "an elephant"), ("dolphin", "a dolphin jumping"), ("butterfly", "a butterfly"),
             ("pizza", "a pizza with cheese"), ("grand_piano", "a piano in a hall"), ("kangaroo", "a kangaroo")]
# (row copied, edit, its own alt-text): rows 6..9
PLANTED = [(0, "jpeg_q30", "elephant in Kenya"), (1, "half_size", "dolphin"), (2, "cropped", "butterfly on a flower"),
           (3, "grayscale", "pizza")]
EVAL = [("lotus", "jpeg_q30"), ("sunflower", "cropped")]   # rows 10, 11 copy held-out evaluation photos


def _photo(caltech101, category, index=0):
    return sorted((caltech101 / "101_ObjectCategories" / category).glob("*.jpg"))[index].read_bytes()


@pytest.fixture(scope="module")
def dedup_input(caltech101, tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup")
    originals = [(_photo(caltech101, category), text) for category, text in ORIGINALS]
    rows = [{"jpg": data, "caption": text} for data, text in originals]
    rows += [{"jpg": copies(originals[i][0])[edit], "caption": text} for i, edit, text in PLANTED]
    held_out = root / "eval"
    held_out.mkdir()
    for category, edit in EVAL:
        data = _photo(caltech101, category, 1)
        (held_out / f"{category}.jpg").write_bytes(data)
        rows.append({"jpg": copies(data)[edit], "caption": f"a {category}"})
    path = root / "in" / "00000.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path, held_out


def _config(dedup_input, out, **dedup):
    path, held_out = dedup_input
    return BuildConfig(inputs=[str(path)], output=str(out),
                       dedup=DedupConfig(decontaminate=[str(held_out)], **dedup))


def _quiet(_):
    pass


def _dedup_rejects(out):
    rejects = tables.read_output(out, "rejects").to_pandas()
    return rejects[rejects["stage"] == "dedup"].set_index("row_in_shard").sort_index()


def _annotated_rows(out):
    work = WorkDir(str(out))
    (marker,) = work.markers().values()
    return tables.read_file(work.path("annotations", marker.stem), "annotations").to_pandas()


@pytest.fixture(scope="module")
def local_build(dedup_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    return out, run_build(_config(dedup_input, out), "local", progress=_quiet)


def test_copies_are_dropped_before_the_models_with_their_survivor(local_build):
    out, manifest = local_build
    dropped = _dedup_rejects(out)
    copies_ = dropped[dropped["reason"].isin(["near_duplicate", "duplicate_sha256"])]
    assert sorted(copies_.index) == [6, 7, 8, 9]
    assert list(copies_["survivor_row"]) == [0, 1, 2, 3]          # the originals: larger or earlier
    assert (copies_["survivor_shard"] == copies_["source_shard"]).all()
    assert (copies_["kind"] == "filtered").all() and copies_["cluster_id"].notna().all()
    annotated = _annotated_rows(out)
    assert not set(annotated["row_in_shard"]) & {6, 7, 8, 9, 10, 11}   # no model saw a dropped row
    elephant = annotated[annotated["row_in_shard"] == 0].iloc[0]
    assert list(elephant["alt_texts_of_copies"]) == ["elephant in Kenya"]
    # the copy's alt-text is read by NER: an entity found only there is linked to the survivor
    assert any(link["mention_start"] > len(elephant["alt_text"]) for link in elephant["links"])
    assert manifest["input_samples"] == 12 and manifest["kept_images"] + manifest["filtered_samples"] \
        + manifest["rejected_samples"] == 12


def test_duplicate_clusters_are_a_table(local_build):
    out, _ = local_build
    duplicates = tables.read_output(out, "duplicates").to_pandas()
    assert len(duplicates) == 8 and set(duplicates["method"]) == {"phash"}
    for cluster_id, members in duplicates.groupby("cluster_id"):
        survivor = members[members["role"] == "survivor"]
        copy = members[members["role"] == "duplicate"]
        assert len(survivor) == len(copy) == 1
        assert copy["survivor_row"].iloc[0] == survivor["row_in_shard"].iloc[0]
        assert 0 <= copy["distance"].iloc[0] <= DedupConfig().near_radius


def test_decontamination_drops_exactly_the_copies_of_evaluation_images(local_build, dedup_input):
    out, _ = local_build
    _, held_out = dedup_input
    tainted = _dedup_rejects(out)
    tainted = tainted[tainted["reason"] == "benchmark_contamination"]
    assert sorted(tainted.index) == [10, 11]
    for row, (category, _) in zip((10, 11), EVAL):
        assert storage.normalize(str(held_out / f"{category}.jpg")) in tainted.loc[row, "detail"]


@pytest.mark.parametrize("runner", ["beam", "spark"])
def test_every_runner_decides_the_same(runner, local_build, dedup_input, tmp_path, spark):
    out, _ = local_build
    other = tmp_path / "out"
    run_build(_config(dedup_input, other), runner, progress=_quiet)

    def duplicates(folder):
        frame = tables.read_output(folder, "duplicates").to_pandas().drop(columns=["run_id"])
        return frame.sort_values(["cluster_id", "row_in_shard"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(duplicates(other), duplicates(out))
    columns = ["reason", "survivor_row", "cluster_id", "detail"]
    pd.testing.assert_frame_equal(_dedup_rejects(other)[columns], _dedup_rejects(out)[columns])
    def texts(folder):
        return [list(t) for t in _annotated_rows(folder).sort_values("row_in_shard")["alt_texts_of_copies"]]

    assert texts(other) == texts(out)


def test_a_rerun_reuses_shards_and_reannotates_only_when_their_copies_change(local_build, dedup_input, tmp_path):
    out = tmp_path / "out"
    config = _config(dedup_input, out)
    first = run_build(config, "local", progress=_quiet)
    again = run_build(config, "local", progress=_quiet)
    assert first["annotated_this_run"] == 1 and again["annotated_this_run"] == 0
    fewer_texts = dataclasses.replace(config, dedup=dataclasses.replace(config.dedup, merge_alt_texts=0))
    changed = run_build(fewer_texts, "local", progress=_quiet)
    assert changed["annotated_this_run"] == 1
    assert all(len(texts) == 0 for texts in _annotated_rows(out)["alt_texts_of_copies"])


def test_semantic_dedup_drops_copies_the_hashes_did_not_see(dedup_input, tmp_path):
    out = tmp_path / "out"
    config = _config(dedup_input, out, near_radius=0, semantic=True, semantic_threshold=0.9)
    run_build(config, "local", progress=_quiet)
    dropped = _dedup_rejects(out)
    dropped = dropped[dropped["reason"] != "benchmark_contamination"]
    # radius 0 only joins identical hashes; the other planted copies are left to SemDeDup
    assert sorted(dropped.index) == [6, 7, 8, 9]
    assert {row: dropped.loc[row, "survivor_row"] for row in dropped.index} == {6: 0, 7: 1, 8: 2, 9: 3}
    semantic = dropped[dropped["reason"] == "semantic_duplicate"]
    assert len(semantic) >= 2 and semantic["cluster_id"].str.startswith("semantic:").all()
    assert semantic["detail"].str.contains("cosine").all()
    duplicates = tables.read_output(out, "duplicates").to_pandas()
    by_semantic = duplicates[duplicates["method"] == "semantic"]
    assert set(by_semantic["row_in_shard"]) == set(semantic.index) | set(semantic["survivor_row"])
    run_build(config, "local", overwrite=True, progress=_quiet)              # same seed, same drops
    assert sorted(_dedup_rejects(out).query("reason == 'semantic_duplicate'").index) == sorted(semantic.index)
