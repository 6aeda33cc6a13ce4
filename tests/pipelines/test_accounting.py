"""Nothing is lost and no run reuses another input's results, through the whole build:
inputs that share a file name, exact duplicate pairs, a parquet file damaged in the middle,
a tar with a corrupt member and one without text, and a fault in every stage on 5% of
rows that --retry-failed recovers. Runs on the bare runner (the parity test shows Beam and
Spark write the same rows)."""
from __future__ import annotations

import hashlib
import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2e_engine import stages, tables
from i2e_engine.config import BuildConfig
from i2e_engine.demo import demo_rows
from pipelines.run import run_build

pytestmark = pytest.mark.e2e


def _quiet(_):
    pass


def _good_rows(start, stop):
    return [r for r in demo_rows()[start:stop] if r["jpg"]]


def _write(path, rows, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(
        [("jpg", pa.binary()), ("caption", pa.string()), ("url", pa.string())])), path, **kwargs)
    return path


def _build(inputs, out, **kwargs):
    return run_build(BuildConfig(inputs=[str(i) for i in inputs], output=str(out)), "local",
                     progress=_quiet, **kwargs)


def _accounted(out, manifest):
    images = tables.read_output(out, "images").to_pandas()
    rejects = tables.read_output(out, "rejects").to_pandas()
    sample_level = rejects[rejects["entity_id"].isna()]
    keys = list(zip(images["source_shard"], images["row_in_shard"])) + \
        list(zip(sample_level["source_shard"], sample_level["row_in_shard"]))
    assert manifest["input_samples"] == len(keys) == len(set(keys))   # each input row exactly once
    assert manifest["kept_images"] == len(images)
    return images, sample_level


def test_a_second_input_with_the_same_file_name_is_not_mistaken_for_the_first(tmp_path):
    first = _write(tmp_path / "crawl-a" / "00000.parquet", _good_rows(0, 4))
    second = _write(tmp_path / "crawl-b" / "00000.parquet", _good_rows(4, 8))
    out = tmp_path / "out"
    _build([first], out)
    messages = []
    manifest = run_build(BuildConfig(inputs=[str(second)], output=str(out)), "local", progress=messages.append)
    assert "0 already annotated, 1 to annotate" in messages[0]
    images, _ = _accounted(out, manifest)
    assert set(images["source_shard"]) == {str(second)}
    assert set(images["alt_text_raw"]) <= {r["caption"] for r in _good_rows(4, 8)}


@pytest.mark.parametrize("runner", ["local", "beam"])
def test_a_changed_file_is_annotated_again(tmp_path, runner):
    path = _write(tmp_path / "in" / "00000.parquet", _good_rows(0, 3))
    out = tmp_path / "out"
    _build([path], out)
    _write(path, _good_rows(3, 7))
    messages = []
    manifest = run_build(BuildConfig(inputs=[str(path)], output=str(out)), runner, progress=messages.append)
    assert "1 to annotate (1 changed since annotated)" in messages[0]
    images, _ = _accounted(out, manifest)
    assert set(images["alt_text_raw"]) <= {r["caption"] for r in _good_rows(3, 7)}


def test_exact_duplicate_pairs_are_two_rows_one_kept(tmp_path):
    cat = demo_rows()[2]
    path = _write(tmp_path / "in" / "dups.parquet", [cat, cat, demo_rows()[3]])
    out = tmp_path / "out"
    manifest = _build([path], out)
    images, sample_level = _accounted(out, manifest)
    assert manifest["input_samples"] == 3
    duplicate = sample_level[sample_level["reason"] == "duplicate_sha256"]
    assert len(duplicate) == 1
    kept_cat = images[images["alt_text_raw"] == cat["caption"]]
    assert len(kept_cat) == 1
    # the two copies share a sample id (same content) but are told apart by their row key
    assert duplicate["sample_id"].iloc[0] == kept_cat["sample_id"].iloc[0]
    assert {duplicate["row_in_shard"].iloc[0], kept_cat["row_in_shard"].iloc[0]} == {0, 1}
    pairs = tables.read_output(out, "image_entities").to_pandas()
    assert set(pairs["row_in_shard"]) == set(images["row_in_shard"])


def test_parquet_damaged_in_the_middle_accounts_for_every_row(tmp_path):
    rows = _good_rows(0, 10)
    path = _write(tmp_path / "in" / "half.parquet", rows, row_group_size=3)
    offset = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    damaged = bytearray(path.read_bytes())
    damaged[offset:offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(damaged))
    out = tmp_path / "out"
    manifest = _build([path], out)
    images, sample_level = _accounted(out, manifest)
    assert manifest["input_samples"] == len(rows) and manifest["shards_counted_by_reading"] == 0
    unread = sample_level[sample_level["reason"] == "unreadable_shard"]
    assert sorted(unread["row_in_shard"]) == list(range(3, len(rows)))
    assert set(images["alt_text_raw"]) <= {r["caption"] for r in rows[:3]}


def _tar(path, samples):
    with tarfile.open(path, "w") as archive:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_tar_with_a_corrupt_member_and_a_member_without_text(tmp_path):
    rows = _good_rows(0, 4)
    (tmp_path / "in").mkdir()
    _tar(tmp_path / "in" / "00000.tar", [
        ("a.png", rows[0]["jpg"]), ("a.txt", rows[0]["caption"].encode()),
        ("b.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"), ("b.txt", b"a broken photo of a dog"),
        ("c.png", rows[2]["jpg"]),                                  # no text
        ("d.png", rows[3]["jpg"]), ("d.txt", rows[3]["caption"].encode())])
    out = tmp_path / "out"
    manifest = _build([tmp_path / "in"], out)
    images, sample_level = _accounted(out, manifest)
    assert manifest["input_samples"] == 4 and manifest["shards_counted_by_reading"] == 1
    assert {"image_undecodable", "missing_text"} <= set(sample_level["reason"])


@pytest.fixture()
def faulty_stages(monkeypatch):
    """Every stage fails on its own 5% of rows, chosen by a hash of the row key without the
    input's directory, so the same rows fail wherever the data is checked out."""
    def unlucky(record, stage_name):
        shard_in_folder = record["source_shard"].rsplit("/", 1)[-1]
        key = f"{stage_name}:{shard_in_folder}:{record['row_in_shard']}"
        return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 20 == 0

    for cls in (stages.CheckStage, stages.NerStage, stages.LinkStage, stages.ScoreStage):
        real = cls.process

        def process(self, batch, real=real):
            for item in batch:
                if unlucky(self.record_of(item), self.name):
                    raise RuntimeError(f"injected fault in {self.name}")
            return real(self, batch)

        monkeypatch.setattr(cls, "process", process)
    return monkeypatch


def test_faults_in_every_stage_lose_no_row_and_retry_recovers_them(coco_mini, tmp_path, faulty_stages):
    captions = coco_mini / "annotations" / "captions_val2017.json"
    config = BuildConfig(inputs=[str(captions)], output=str(tmp_path / "out"), rows_per_shard=20)
    manifest = run_build(config, "local", progress=_quiet)
    _, sample_level = _accounted(tmp_path / "out", manifest)
    errors = sample_level[sample_level["reason"].str.endswith("_error")]
    assert set(errors["stage"]) == {"check", "ner", "link", "score"}
    faulty_stages.undo()
    retried = run_build(config, "local", retry_failed=True, progress=_quiet)
    clean = run_build(BuildConfig(inputs=[str(captions)], output=str(tmp_path / "clean"), rows_per_shard=20),
                      "local", progress=_quiet)
    _, after = _accounted(tmp_path / "out", retried)
    assert not after["reason"].str.endswith("_error").any()
    assert (retried["kept_images"], retried["input_samples"]) == (clean["kept_images"], clean["input_samples"])
