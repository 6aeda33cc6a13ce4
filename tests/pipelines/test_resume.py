"""A build killed after some shards committed resumes without redoing them, and ends with
the same tables as an unbroken build, on every runner (the driver process is killed with
every process under it: Beam's in-process workers, Spark's JVM and Python workers)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
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


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, with none left running in between.

    ``killpg`` is not enough: PySpark's worker daemon moves itself into its own process group
    (``os.setpgid(0, 0)`` in ``pyspark/daemon.py``), so a Python worker outlives the driver and
    can still commit the shard it holds after the kill. Every process is stopped first (a stopped
    process cannot fork, and none dies, so none is reparented out of the tree), the tree is
    walked again until it stops growing, then all are killed."""
    root = psutil.Process(pid)
    stopped: dict[int, psutil.Process] = {}
    while new := [p for p in (root, *root.children(recursive=True)) if p.pid not in stopped]:
        for process in new:
            stopped[process.pid] = process
            _signal(process, signal.SIGSTOP)
    for process in stopped.values():
        _signal(process, signal.SIGKILL)
    psutil.wait_procs(list(stopped.values()), timeout=30)


def _signal(process: psutil.Process, number: int) -> None:
    try:
        process.send_signal(number)
    except psutil.NoSuchProcess:   # a short-lived child that ended on its own
        pass


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
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    done = killed / WORK_DIR / "done"
    deadline = time.time() + 600
    while time.time() < deadline and not list(done.glob("*.json")) and process.poll() is None:
        time.sleep(0.05)
    _kill_tree(process.pid)
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


def test_retry_failed_reannotates_only_shards_with_model_failures(tmp_path, monkeypatch):
    """A model failure on one row leaves a `score_error` reject in its committed shard;
    --retry-failed redoes that shard (the row is kept this time) and leaves the others alone."""
    from i2e_engine.stages import ScoreStage

    photos = _photo_folder(tmp_path / "photos")
    out = tmp_path / "out"
    config = BuildConfig(inputs=[str(photos)], output=str(out), rows_per_shard=6)
    real = ScoreStage.process

    def out_of_memory_on_coffee(self, batch):
        if any("coffee" in item.record["alt_text"] for item in batch):
            raise RuntimeError("CUDA out of memory")
        return real(self, batch)

    monkeypatch.setattr(ScoreStage, "process", out_of_memory_on_coffee)
    run_build(config, progress=lambda _: None)
    failed = tables.read_output(out, "rejects").to_pandas().query("reason == 'score_error'")
    assert len(failed) == 1 and "CUDA out of memory" in failed["detail"].iloc[0]
    work = out / WORK_DIR
    first, second = sorted((work / "annotations").glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    untouched = {p: p.stat().st_mtime_ns for p in (first, second)}

    monkeypatch.setattr(ScoreStage, "process", real)
    messages = []
    run_build(config, progress=messages.append, retry_failed=True)
    assert messages[0] == "retrying 1 shards with failed rows"
    assert "1 already annotated, 1 to annotate" in messages[1]
    redone = [p for p, mtime in untouched.items() if p.stat().st_mtime_ns != mtime]
    assert len(redone) == 1
    images = tables.read_output(out, "images").to_pandas()
    assert failed["sample_id"].iloc[0] in set(images["sample_id"])
    assert "score_error" not in set(tables.read_output(out, "rejects").to_pandas()["reason"])
