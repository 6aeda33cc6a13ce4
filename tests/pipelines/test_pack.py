"""`i2e pack` over the engine's own output (a build of coco-mini), checked against the tables
with pandas: the filters, the vocab, the accounting, the resized images, the shuffle, the
runners (local, Beam, Spark), both shard formats, object storage and a killed pack's resume.

Expected values are computed here from the tables, independently of ``i2e_engine.pack``;
shards are read with ``tarfile`` and ``pyarrow`` as the trainer's loader would.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

import schemas
from i2e_engine import pack
from i2e_engine.pack import PackConfig, PackExistsError
from i2e_engine.pack import stage as pack_stage
from i2e_engine.pack import write as pack_write
from i2e_engine.publish import table_uri
from pipelines.pack import run_pack

SHARD_ROWS = 40
MIN_IMAGES = 2
THRESHOLD = 0.25


@pytest.fixture(scope="module")
def tables(coco_mini: Path, tmp_path_factory) -> Path:
    """One `i2e build` of coco-mini (local runner, about a minute) for the whole module."""
    from i2e_engine.config import BuildConfig
    from pipelines.run import run_build

    out = tmp_path_factory.mktemp("coco_tables") / "tables"
    run_build(BuildConfig(inputs=[str(coco_mini)], output=str(out)), runner="local", progress=lambda _: None)
    return out


def _read_table(tables: Path, table: str, columns=None) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p, columns=columns) for p in sorted(Path(table_uri(str(tables), table))
                                                                          .glob("*.parquet"))], ignore_index=True)


@pytest.fixture(scope="module")
def pairs(tables: Path) -> pd.DataFrame:
    return _read_table(tables, "image_entities",
                       ["image_id", "entity_id", "image_entity_score", "rank", "source_shard", "row_in_shard"])


@pytest.fixture(scope="module")
def image_rows(tables: Path) -> pd.DataFrame:
    return _read_table(tables, "images", ["image_id", "source_shard", "row_in_shard", "width", "height", "alt_text"])


def _pack(tables: Path, out: Path, runner: str = "local", **options) -> tuple[Path, dict]:
    config = PackConfig(tables=str(tables), output=str(out), **{"shard_rows": SHARD_ROWS, **options})
    return out, run_pack(config, runner, spark_master="local[2]")


@pytest.fixture(scope="module")
def threshold_pack(tables: Path, tmp_path_factory) -> tuple[Path, dict]:
    return _pack(tables, tmp_path_factory.mktemp("packs") / "threshold", min_image_entity_score=THRESHOLD,
                 min_images_per_entity=MIN_IMAGES, max_labels=4)


@pytest.fixture(scope="module")
def quantile_pack(tables: Path, tmp_path_factory) -> tuple[Path, dict]:
    return _pack(tables, tmp_path_factory.mktemp("packs") / "quantile", keep_top_fraction=0.6,
                 min_images_per_entity=MIN_IMAGES)


def read_samples(out: Path, index: dict) -> list[dict]:
    """Every sample of a pack in index order, read with tarfile or pyarrow (not the engine)."""
    samples = []
    for shard in index["shards"]:
        path = out / shard["path"]
        if index["shard_format"] == "webdataset":
            with tarfile.open(path) as tar:
                members = tar.getmembers()
                names = [m.name for m in members]
                assert names == [f"{i:09d}.{ext}" for i in range(len(names) // 2) for ext in ("jpg", "json")]
                rows = []
                for jpg, meta in zip(members[::2], members[1::2]):
                    row = json.loads(tar.extractfile(meta).read().decode("utf-8"))
                    row["jpg"] = tar.extractfile(jpg).read()
                    rows.append(row)
        else:
            parquet = pq.ParquetFile(path)
            assert parquet.metadata.num_row_groups == 0 or max(
                parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)) <= 256
            rows = parquet.read().to_pylist()
            for row in rows:
                row["scores"] = [float(s) for s in row["scores"]]
        assert len(rows) == shard["rows"], shard
        samples += rows
    return samples


def expected_labels(pairs: pd.DataFrame, keep_score, min_images: int, max_labels: int) -> tuple[pd.DataFrame, dict]:
    """The pack's pair filters with pandas: (kept pairs, dropped pairs by reason)."""
    pairs = pairs.sort_values(["source_shard", "row_in_shard", "rank", "entity_id"])
    first = ~pairs.duplicated(["source_shard", "row_in_shard", "entity_id"])
    dropped = {"duplicate_entity": int((~first).sum())}
    pairs = pairs[first]
    scored = keep_score(pairs["image_entity_score"])
    dropped["score"] = int((~scored).sum())
    pairs = pairs[scored]
    images_per_entity = pairs.groupby("entity_id")["image_id"].size()   # one pair per image and entity now
    common = pairs["entity_id"].map(images_per_entity) >= min_images
    dropped["entity_below_min_images"] = int((~common).sum())
    pairs = pairs[common]
    position = pairs.groupby(["source_shard", "row_in_shard"]).cumcount()
    dropped["beyond_max_labels"] = int((position >= max_labels).sum())
    return pairs[position < max_labels], {k: v for k, v in dropped.items() if v}


def _check_pack_against_tables(out: Path, index: dict, pairs: pd.DataFrame, image_rows: pd.DataFrame,
                               keep_score, score_reason: str, max_labels: int) -> None:
    kept, dropped = expected_labels(pairs, keep_score, MIN_IMAGES, max_labels)
    if "score" in dropped:
        dropped[score_reason] = dropped.pop("score")
    counts = index["counts"]
    assert counts["dropped_pairs"] == dropped
    assert counts["kept_pairs"] == len(kept)
    assert counts["input_pairs"] == len(pairs) and counts["input_images"] == len(image_rows)
    kept_images = kept.groupby(["source_shard", "row_in_shard"]).ngroups
    assert counts["kept_images"] == kept_images == index["rows"]
    assert counts["dropped_images"] == ({"no_entity_left": len(image_rows) - kept_images}
                                        if len(image_rows) > kept_images else {})
    # the vocab: class ids are the kept entity ids sorted; image_count from the kept pairs
    vocab = pd.read_parquet(out / "vocab.parquet")
    image_counts = kept.groupby("entity_id").size().sort_index()
    assert vocab["entity_id"].tolist() == image_counts.index.tolist()
    assert vocab["class_id"].tolist() == list(range(len(vocab)))
    assert vocab["image_count"].tolist() == image_counts.tolist()
    assert index["num_classes"] == len(vocab)
    entities = _read_table(Path(index["tables"]), "entities", ["entity_id", "name", "description"]).set_index("entity_id")
    assert vocab["name"].tolist() == entities.loc[vocab["entity_id"], "name"].tolist()
    # every sample: its labels, best rank first, and its alt-text
    entity_of = dict(zip(vocab["class_id"], vocab["entity_id"]))
    by_key = {key: group for key, group in kept.groupby("image_id")}
    texts = dict(zip(image_rows["image_id"], image_rows["alt_text"]))
    samples = read_samples(out, index)
    assert len(samples) == kept_images and len({s["key"] for s in samples}) == kept_images
    for sample in samples:
        want = by_key[sample["key"]]
        assert [entity_of[c] for c in sample["class_ids"]] == want["entity_id"].tolist()
        assert np.allclose(sample["scores"], want["image_entity_score"].to_numpy(), atol=1e-6)
        assert sample["alt_text"] == texts[sample["key"]]
        assert (sample["source_shard"], sample["row_in_shard"]) == (want["source_shard"].iloc[0],
                                                                    want["row_in_shard"].iloc[0])


def test_threshold_min_images_and_vocab_match_pandas(threshold_pack, pairs, image_rows):
    out, index = threshold_pack
    _check_pack_against_tables(out, index, pairs, image_rows, lambda s: s >= np.float32(THRESHOLD),
                               "score_below_threshold", max_labels=4)
    assert index["counts"]["dropped_pairs"].get("score_below_threshold", 0) > 0
    assert index["counts"]["dropped_pairs"].get("entity_below_min_images", 0) > 0


def test_quantile_filter_matches_pandas(quantile_pack, pairs, image_rows):
    out, index = quantile_pack
    scores = np.sort(pairs["image_entity_score"].to_numpy(np.float32))
    cutoff = scores[len(scores) - math.ceil(0.6 * len(scores))]    # the top 60 % of all pair scores, ties kept
    _check_pack_against_tables(out, index, pairs, image_rows, lambda s: s.to_numpy(np.float32) >= cutoff,
                               "score_below_quantile", max_labels=8)
    assert index["counts"]["dropped_pairs"]["score_below_quantile"] == int((scores < cutoff).sum())


def test_counts_balance_and_index_lists_every_shard(threshold_pack):
    out, index = threshold_pack
    counts = index["counts"]
    assert counts["kept_images"] + sum(counts["dropped_images"].values()) == counts["input_images"]
    assert counts["kept_pairs"] + sum(counts["dropped_pairs"].values()) == counts["input_pairs"]
    assert index["format"] == "i2e-packed" and index["format_version"] == 1
    assert len(index["shards"]) == math.ceil(counts["kept_images"] / SHARD_ROWS)
    assert [s["path"] for s in index["shards"]] == [f"shards/{i:05d}.tar" for i in range(len(index["shards"]))]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [Path(s["path"]).name for s in index["shards"]]
    assert sum(s["rows"] for s in index["shards"]) == index["rows"]
    assert not (out / "_work").exists()
    vocab = pd.read_parquet(out / "vocab.parquet")
    assert index["classes_fingerprint"] == hashlib.sha256("\n".join(vocab["entity_id"]).encode()).hexdigest()[:16]
    manifest = (Path(index["tables"]) / "manifest.json").read_bytes()
    assert index["tables_manifest_sha256"] == hashlib.sha256(manifest).hexdigest()


def test_images_are_resized_once_to_the_shorter_side(threshold_pack, image_rows):
    out, index = threshold_pack
    original = {row.image_id: (row.width, row.height) for row in image_rows.itertuples()}
    for sample in read_samples(out, index):
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (sample["width"], sample["height"])
        width, height = original[sample["key"]]
        assert min(image.size) == min(256, width, height)
        assert abs(image.size[0] / image.size[1] - width / height) < 0.01


def test_same_seed_same_order_other_seed_other_order(tables, threshold_pack, tmp_path):
    out, index = threshold_pack
    order = [s["key"] for s in read_samples(out, index)]
    options = dict(min_image_entity_score=THRESHOLD, min_images_per_entity=MIN_IMAGES, max_labels=4)
    again_out, again = _pack(tables, tmp_path / "again", **options)
    assert [s["key"] for s in read_samples(again_out, again)] == order
    other_out, other = _pack(tables, tmp_path / "other", seed=1, **options)
    other_order = [s["key"] for s in read_samples(other_out, other)]
    assert sorted(other_order) == sorted(order) and other_order != order
    table_order = [k for k in _read_table(tables, "images")["image_id"] if k in set(order)]
    assert order != table_order


def _sample_bytes(out: Path, index: dict) -> list[tuple]:
    return [(s["key"], s["jpg"], tuple(s["class_ids"]), tuple(np.float32(s["scores"])), s["alt_text"],
             s["width"], s["height"], s["source_shard"], s["row_in_shard"]) for s in read_samples(out, index)]


@pytest.mark.parametrize("runner", ["beam", "spark"])
def test_beam_and_spark_write_the_same_pack_as_local(runner, tables, quantile_pack, tmp_path, request):
    if runner == "spark":
        request.getfixturevalue("spark")   # skips without pyspark; the session is shared
    out, index = quantile_pack
    other_out, other = _pack(tables, tmp_path / runner, runner, keep_top_fraction=0.6,
                             min_images_per_entity=MIN_IMAGES)
    assert other["runner"].startswith(runner)
    assert other["shards"] == index["shards"] and other["counts"] == index["counts"]
    assert _sample_bytes(other_out, other) == _sample_bytes(out, index)
    for shard in index["shards"]:
        assert (other_out / shard["path"]).read_bytes() == (out / shard["path"]).read_bytes()
    assert pd.read_parquet(other_out / "vocab.parquet").equals(pd.read_parquet(out / "vocab.parquet"))


def test_parquet_shards_hold_the_same_samples(tables, threshold_pack, tmp_path):
    out, index = threshold_pack
    parquet_out, parquet_index = _pack(tables, tmp_path / "parquet", shard_format="parquet",
                                       min_image_entity_score=THRESHOLD, min_images_per_entity=MIN_IMAGES, max_labels=4)
    assert [s["path"] for s in parquet_index["shards"]] == [f"shards/{i:05d}.parquet" for i in range(len(index["shards"]))]
    assert [s["rows"] for s in parquet_index["shards"]] == [s["rows"] for s in index["shards"]]
    assert _sample_bytes(parquet_out, parquet_index) == _sample_bytes(out, index)
    for shard in parquet_index["shards"]:   # written through the schema: readable and valid as `packed`
        assert schemas.read_table(parquet_out / shard["path"], "packed").num_rows == shard["rows"]


def test_rerun_is_a_no_op_and_another_config_refuses(tables, tmp_path):
    out, index = _pack(tables, tmp_path / "p", max_labels=2)
    stamp = os.stat(out / "index.json").st_mtime_ns
    _, again = _pack(tables, tmp_path / "p", max_labels=2)
    assert again == index and os.stat(out / "index.json").st_mtime_ns == stamp
    with pytest.raises(PackExistsError):
        _pack(tables, tmp_path / "p", max_labels=3)
    config = PackConfig(tables=str(tables), output=str(out), shard_rows=SHARD_ROWS, max_labels=3)
    replaced = run_pack(config, overwrite=True)
    assert replaced["config"]["max_labels"] == 3
    assert replaced["counts"]["input_pairs"] == index["counts"]["input_pairs"]


def test_cli_packs_and_prints_a_summary(tables, tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "cli"
    assert main(["pack", str(tables), "--output", str(out), "--min-score", "0.3", "--shard-rows", "100",
                 "--image-size", "128", "--shard-format", "parquet"]) == 0
    printed = capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    assert f"packed {index['counts']['kept_images']} of {index['counts']['input_images']} images" in printed
    assert "score_below_threshold" in printed and str(out / "index.json") in printed
    assert index["image_size"] == 128 and index["config"]["min_image_entity_score"] == 0.3
    assert all(min(Image.open(io.BytesIO(s["jpg"])).size) == 128 for s in read_samples(out, index))
    with pytest.raises(SystemExit):
        main(["pack", str(tables), "--output", str(out), "--min-score", "0.3", "--keep-top-fraction", "0.5"])


def test_pack_to_and_from_object_storage(tables, threshold_pack, s3):
    """Tables on the local S3 server, the pack written there; the same samples as on disk."""
    out, index = threshold_pack
    for path in [Path(tables) / "manifest.json",
                 *(p for table in ("images", "image_entities", "entities")
                   for p in Path(table_uri(str(tables), table)).iterdir())]:
        s3.put_file(str(path), f"inputs/tables/{path.relative_to(tables).as_posix()}")
    config = PackConfig(tables="s3://inputs/tables", output="s3://outputs/packed", shard_rows=SHARD_ROWS,
                        min_image_entity_score=THRESHOLD, min_images_per_entity=MIN_IMAGES, max_labels=4)
    remote = run_pack(config)
    assert remote["tables"] == "s3://inputs/tables" and remote["counts"] == index["counts"]
    assert not s3.exists("outputs/packed/_work")
    local_copy = Path(str(out) + "-from-s3")
    for name in ["index.json", "vocab.parquet", *(shard["path"] for shard in remote["shards"])]:
        (local_copy / name).parent.mkdir(parents=True, exist_ok=True)
        s3.get_file(f"outputs/packed/{name}", str(local_copy / name))
    assert json.loads((local_copy / "index.json").read_text()) == remote
    assert _sample_bytes(local_copy, remote) == _sample_bytes(out, index)
    assert run_pack(config) == remote   # a rerun on object storage is a no-op too


def test_webdataset_reads_the_tars_as_written(threshold_pack):
    """The `webdataset` package itself reads every shard: one sample per key, the JPEG and
    the JSON fields, in the written order."""
    import webdataset

    out, index = threshold_pack
    expected = read_samples(out, index)
    urls = [str(out / shard["path"]) for shard in index["shards"]]
    read = [(sample["__key__"], sample["jpg"], json.loads(sample["json"]))
            for sample in webdataset.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert [key for key, _, _ in read] == [f"{i:09d}" for shard in index["shards"] for i in range(shard["rows"])]
    assert [jpg for _, jpg, _ in read] == [sample["jpg"] for sample in expected]
    assert [meta["key"] for _, _, meta in read] == [sample["key"] for sample in expected]
    assert [meta["class_ids"] for _, _, meta in read] == [sample["class_ids"] for sample in expected]


# `i2e pack` that SIGKILLs itself when it starts shard 1, leaving what a kill in the middle of a
# local write leaves (a hidden temp file beside the shard): a kill at a known point, no race.
KILLED_PACK = """
import os, signal, sys
from i2e_engine.pack import write
from pipelines.cli import main
real = write._write_shard
def write_or_die(plan, shard_id, *args):
    if shard_id == 1:
        with open(os.path.join(plan.out, "shards", ".00001.tar.0badc0de.tmp"), "wb") as half:
            half.write(b"half a tar")
        os.kill(os.getpid(), signal.SIGKILL)
    return real(plan, shard_id, *args)
write._write_shard = write_or_die
sys.exit(main(["pack", *sys.argv[1:]]))
"""
THRESHOLD_OPTIONS = dict(min_image_entity_score=THRESHOLD, min_images_per_entity=MIN_IMAGES, max_labels=4)


def _kill_a_pack(tables: Path, out: Path) -> None:
    """Run the threshold pack into ``out`` until it dies at shard 1 (all parts staged, shard 0 written)."""
    args = [str(tables), "--output", str(out), "--shard-rows", str(SHARD_ROWS), "--min-score", str(THRESHOLD),
            "--min-images-per-entity", str(MIN_IMAGES), "--max-labels", "4"]
    killed = subprocess.run([sys.executable, "-c", KILLED_PACK, *args], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "index.json").exists()
    assert sorted(p.name for p in (out / "_work" / "written").iterdir()) == ["00000.json"]


def _count_tasks(monkeypatch) -> collections.Counter:
    """Count the pass-1 and pass-2 tasks this process actually does (not those resumed)."""
    calls: collections.Counter = collections.Counter()
    for module, name in ((pack_stage, "_stage_part"), (pack_write, "_write_shard")):
        real = getattr(module, name)

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)
        monkeypatch.setattr(module, name, counted)
    return calls


def _without_output(index: dict) -> dict:
    return {**index, "config": {k: v for k, v in index["config"].items() if k != "output"}}


def test_killed_pack_resumes_to_the_pack_an_unbroken_run_writes(tables, threshold_pack, tmp_path, monkeypatch):
    out, index = threshold_pack
    assert len(index["shards"]) >= 3
    killed = tmp_path / "killed"
    _kill_a_pack(tables, killed)
    staged = len(list((killed / "_work" / "staged").iterdir()))
    assert staged == len(pack.list_parts(str(tables)))

    calls = _count_tasks(monkeypatch)
    messages = []
    resumed = run_pack(PackConfig(tables=str(tables), output=str(killed), shard_rows=SHARD_ROWS, **THRESHOLD_OPTIONS),
                       progress=messages.append)
    assert f"resuming a killed run ({staged} table parts staged, 1 shards written)" in messages[0]
    assert calls == {"_write_shard": len(index["shards"]) - 1}   # nothing staged again, shard 0 kept
    assert _without_output(resumed) == _without_output(index)
    assert sorted(p.name for p in (killed / "shards").iterdir()) == [Path(s["path"]).name for s in index["shards"]]
    for shard in index["shards"]:
        assert (killed / shard["path"]).read_bytes() == (out / shard["path"]).read_bytes()
    assert pd.read_parquet(killed / "vocab.parquet").equals(pd.read_parquet(out / "vocab.parquet"))
    assert not (killed / "_work").exists()


def test_a_killed_pack_of_another_config_is_not_reused(tables, tmp_path, monkeypatch):
    """No run reuses another pack's work: a different config into a killed pack's output
    starts over (every part staged again) and equals a fresh pack of that config."""
    out = tmp_path / "killed"
    _kill_a_pack(tables, out)
    calls = _count_tasks(monkeypatch)
    messages = []
    options = {**THRESHOLD_OPTIONS, "max_labels": 2}
    other = run_pack(PackConfig(tables=str(tables), output=str(out), shard_rows=SHARD_ROWS, **options),
                     progress=messages.append)
    assert "resuming" not in messages[0]
    assert calls["_stage_part"] == len(pack.list_parts(str(tables))) and calls["_write_shard"] == len(other["shards"])
    monkeypatch.undo()
    fresh_out, fresh = _pack(tables, tmp_path / "fresh", **options)
    assert _without_output(other) == _without_output(fresh)
    assert _sample_bytes(out, other) == _sample_bytes(fresh_out, fresh)
