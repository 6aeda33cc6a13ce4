"""annotate_shard with the real models: every pair read lands in the committed annotations
or rejects, a row that breaks a stage becomes its own reject, and a failed shard leaves
nothing committed."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from i2e_engine.config import BuildConfig
from i2e_engine.demo import demo_rows
from i2e_engine.kb.build import ensure_default_kb
from i2e_engine.readers import list_shards
from i2e_engine.shard import annotate_shard
from i2e_engine.stages import Annotator, run_stage, CheckStage
from i2e_engine.workdir import WorkDir


@pytest.fixture(scope="module")
def annotator():
    return Annotator(BuildConfig(), str(ensure_default_kb())).setup()


@pytest.fixture()
def demo_shard(tmp_path):
    path = tmp_path / "demo.parquet"
    pq.write_table(pa.Table.from_pylist(demo_rows()), path)
    return list_shards([str(path)])[0]


def _ids(work, table, stem):
    return schemas.read_table(work.path(table, stem), table, columns=["row_in_shard"]).column(0).to_pylist()


def test_every_pair_is_committed_once_with_its_marker(annotator, demo_shard, tmp_path):
    work = WorkDir(tmp_path / "out")
    marker = annotate_shard(demo_shard, annotator, work, "fp", "run1", batch_rows=6)
    annotated, rejected = _ids(work, "annotations", marker.stem), _ids(work, "rejects", marker.stem)
    assert marker.pairs_read == len(demo_rows()) == len(annotated) + len(rejected)
    assert sorted(annotated + rejected) == list(range(len(demo_rows())))
    assert (marker.annotations, marker.rejects) == (len(annotated), len(rejected))
    # "Human retina photographed through the eye", "Gray-level text image used for corner
    # detection": no word names a visual concept (the compound "corner detection" leaves
    # only its head, which names nothing)
    assert marker.reasons == {"image/rejected/image_empty": 1, "image/rejected/image_truncated": 1,
                              "text/rejected/text_empty": 1, "link/filtered/no_entity_linked": 2}
    assert work.markers()[demo_shard.shard_id] == marker
    assert not list(Path(work.root).rglob("*.tmp"))


def test_a_row_that_breaks_a_stage_is_rejected_alone(annotator, demo_shard, tmp_path, monkeypatch):
    linker = annotator.link.linker
    real_link_many = linker.link_many

    def link_many(alt_texts, mentions_of):
        if any("coffee" in text for text in alt_texts):
            raise MemoryError("simulated out of memory on this row")
        return real_link_many(alt_texts, mentions_of)

    monkeypatch.setattr(linker, "link_many", link_many)
    work = WorkDir(tmp_path / "out")
    marker = annotate_shard(demo_shard, annotator, work, "fp", "run1", batch_rows=8)
    rejects = schemas.read_table(work.path("rejects", marker.stem), "rejects").to_pylist()
    errors = [r for r in rejects if r["reason"] == "link_error"]
    assert len(errors) == 1 and "MemoryError" in errors[0]["detail"] and errors[0]["stage"] == "link"
    # the rows batched with it were linked and annotated all the same
    assert marker.annotations == len(demo_rows()) - 3 - 2 - 1   # 3 bad inputs, 2 link nothing, 1 failed row


def test_a_failed_shard_commits_nothing(annotator, demo_shard, tmp_path, monkeypatch):
    def crash(batch):
        raise KeyboardInterrupt  # not an Exception: the worker itself is going down

    monkeypatch.setattr(annotator.score, "process", crash)
    work = WorkDir(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        annotate_shard(demo_shard, annotator, work, "fp", "run1")
    assert work.markers() == {}
    assert not [p for p in Path(work.root).rglob("*") if p.is_file()]


def test_run_stage_retries_a_failed_batch_row_by_row():
    calls = []

    class Flaky(CheckStage):
        def process(self, batch):
            calls.append(len(batch))
            if any(pair["text"] == "bad" for pair in batch):
                raise RuntimeError("boom")
            return super().process(batch)

    pairs = [{"sample_id": str(i), "source": "t", "source_shard": "s", "row_in_shard": i, "url": None,
              "image": None, "text": text, "read_error": "missing_column:jpg"} for i, text in enumerate("a bad c".split())]
    result = run_stage(Flaky(BuildConfig()), pairs)
    assert calls == [3, 1, 1, 1]
    assert sorted(r["reason"] for r in result.rejects) == ["check_error", "missing_column", "missing_column"]
