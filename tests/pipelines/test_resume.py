"""A build killed after some shards committed resumes without redoing them, and ends with
the same tables as an unbroken build, on every runner (the driver process is killed with
its whole process group: Beam's in-process workers, Spark's JVM and Python workers)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from i2e_engine import tables
from i2e_engine.config import BuildConfig
from i2e_engine.demo import DEMO_PAIRS, skimage_data_dir
from i2e_engine.workdir import WORK_DIR, WorkDir
from pipelines.run import run_build

pytestmark = pytest.mark.e2e


def _photo_folder(path):
    path.mkdir()
    for name, text in DEMO_PAIRS[:12]:
        stem = name.split(".")[0]
        (path / name).write_bytes((skimage_data_dir() / name).read_bytes())
        (path / f"{stem}.txt").write_text(text)
    return path


def _content(out, table, drop=("run_id",)):
    frame = tables.read_output(out, table).to_pandas().drop(columns=list(drop), errors="ignore")
    key = [c for c in ("image_id", "entity_id", "sample_id", "stage", "reason") if c in frame.columns]
    return frame.sort_values(key).reset_index(drop=True)


@pytest.mark.parametrize("runner", ["beam", "spark"])
def test_killed_build_resumes_from_committed_shards(runner, tmp_path, request):
    if runner == "spark":
        request.getfixturevalue("spark")   # skips without pyspark; the killed run starts its own
    photos = _photo_folder(tmp_path / "photos")
    shards = 6
    args = [str(photos), "--rows-per-shard", "2", "--runner", runner, "--spark-master", "local[2]"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "build", *args, "--output", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    done = killed / WORK_DIR / "done"
    deadline = time.time() + 600
    while time.time() < deadline and not list(done.glob("*.json")) and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    committed = len(list(done.glob("*.json")))
    assert 1 <= committed < shards, f"expected a kill after the first of {shards} shards, found {committed}"
    before = {shard_id: marker.run_id for shard_id, marker in WorkDir(killed).markers().items()}

    messages = []
    config = BuildConfig(inputs=[str(photos)], output=str(killed), rows_per_shard=2)
    run_build(config, runner, spark_master="local[2]", progress=messages.append)
    assert f"{committed} already annotated, {shards - committed} to annotate" in messages[0]
    after = WorkDir(killed).markers()
    assert len(after) == shards and all(after[shard_id].run_id == run for shard_id, run in before.items())

    unbroken = tmp_path / "unbroken"
    run_build(BuildConfig(inputs=[str(photos)], output=str(unbroken), rows_per_shard=2), runner,
              spark_master="local[2]", progress=lambda _: None)
    for table in ("images", "image_entities", "entities", "rejects"):
        # scores may differ in the last float bits: the CNN sees other batch sizes
        pd.testing.assert_frame_equal(_content(killed, table), _content(unbroken, table), rtol=1e-5)


def test_retry_failed_reannotates_only_shards_with_model_failures(tmp_path):
    """A model failure leaves a `score_error` reject in a committed shard; --retry-failed
    redoes that shard (the row is kept this time) and leaves the others alone."""
    import pyarrow.parquet as pq

    import schemas

    photos = _photo_folder(tmp_path / "photos")
    out = tmp_path / "out"
    config = BuildConfig(inputs=[str(photos)], output=str(out), rows_per_shard=6)
    run_build(config, progress=lambda _: None)
    work = out / WORK_DIR
    first, second = sorted((work / "annotations").glob("*.parquet"))
    # turn one committed annotation of the first shard into the dead letter of a failed scorer
    annotations = schemas.read_table(first, "annotations")
    lost = annotations.slice(0, 1).to_pylist()[0]
    schemas.write_table(annotations.slice(1), first, "annotations")
    rejects = schemas.read_table(work / "rejects" / first.name, "rejects").to_pylist()
    rejects.append({"sample_id": lost["sample_id"], "source_shard": lost["source_shard"],
                    "row_in_shard": lost["row_in_shard"], "stage": "score", "kind": "rejected",
                    "reason": "score_error", "entity_id": None, "detail": "CUDA out of memory", "run_id": "r0"})
    tables.write_rows(rejects, "rejects", work / "rejects" / first.name)
    untouched = second.stat().st_mtime_ns

    messages = []
    run_build(config, progress=messages.append, retry_failed=True)
    assert messages[0] == "retrying 1 shards with failed rows"
    assert "1 already annotated, 1 to annotate" in messages[1]
    assert second.stat().st_mtime_ns == untouched
    images = tables.read_output(out, "images").to_pandas()
    assert lost["sample_id"] in set(images["sample_id"])
    assert "score_error" not in set(tables.read_output(out, "rejects").to_pandas()["reason"])
    assert pq.ParquetFile(first).metadata.num_rows == annotations.num_rows
