"""Publishing on a real S3 endpoint (moto's server, the client unmocked) and on a local disk:
immutable versions with ``manifest.json`` as the commit point, and one writer per output.

The end-to-end tests kill builds (SIGKILL, as ``kill -9``) at each named point of finalize
and publish and check what a reader sees through ``table_uri`` + pandas: the previous
complete version or the new complete one, never a mix or a part; the rerun then publishes
the tables of an unbroken run."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2e_engine import publish
from i2e_engine.demo import demo_rows
from i2e_engine.publish import Lease, LeaseHeldError, LeaseLostError, LeaseRecord, table_uri
from i2e_engine.tables import OUTPUT_TABLES

# ----------------------------------------------------------------------------- the lease


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    """An output folder on a local disk or in the S3 server's bucket."""
    if request.param == "local":
        return str(tmp_path / "out")
    request.getfixturevalue("s3")
    return "s3://outputs/leased"


def _write_lease(out: str, **fields) -> None:
    record = {"run_id": "other-run", "token": "t0", "host": socket.gethostname(), "pid": os.getpid(),
              "heartbeat": time.time(), "ttl_s": 120.0, **fields}
    publish.storage.write_text(publish.storage.join(out, publish.LEASE), json.dumps(record))


def test_a_second_writer_fails_fast_and_the_first_keeps_its_lease(output):
    first = Lease(output, "run-1").acquire()
    try:
        started = time.perf_counter()
        with pytest.raises(LeaseHeldError, match=r"another build is writing this output: run run-1 \(pid"):
            Lease(output, "run-2").acquire()
        assert time.perf_counter() - started < 10
        first.check()   # unharmed
    finally:
        first.release()
    assert not publish.storage.exists(publish.storage.join(output, publish.LEASE))
    Lease(output, "run-3").acquire().release()   # free again once released


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(output):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _write_lease(output, pid=child.pid, heartbeat=time.time())   # fresh heartbeat, but the process is gone
    lease = Lease(output, "run-2").acquire()
    try:
        lease.check()
    finally:
        lease.release()


def test_a_remote_holder_is_taken_over_only_after_its_ttl(output):
    _write_lease(output, host="some-other-host", pid=1, heartbeat=time.time() - 5, ttl_s=60)
    with pytest.raises(LeaseHeldError, match="some-other-host"):
        Lease(output, "run-2").acquire()
    _write_lease(output, host="some-other-host", pid=1, heartbeat=time.time() - 61, ttl_s=60)
    lease = Lease(output, "run-3").acquire()
    lease.check()
    lease.release()


def test_the_heartbeat_renews_and_a_lost_lease_stops_the_commit(tmp_path):
    out = str(tmp_path / "out")
    lease = Lease(out, "run-1", ttl_s=0.4).acquire()
    try:
        first = lease.record.heartbeat
        time.sleep(0.5)
        on_disk = LeaseRecord(**json.loads((tmp_path / "out" / publish.LEASE).read_text()))
        assert on_disk.heartbeat > first and on_disk.token == lease.record.token
        _write_lease(out, run_id="intruder", token="t9")   # taken over while this build stalled
        with pytest.raises(LeaseLostError, match="intruder"):
            publish.commit(out, {"run_id": "run-1", "tables": {}}, lease)
        assert not (tmp_path / "out" / publish.MANIFEST).exists()
    finally:
        lease.release()
    assert json.loads((tmp_path / "out" / publish.LEASE).read_text())["run_id"] == "intruder"   # not its to remove


# ----------------------------------------------------------------------------- versions

def _commit_version(out: str, run_id: str, lease: Lease) -> dict:
    folder = publish.version_folder(out, run_id)
    os.makedirs(os.path.join(folder, "images"))
    pq.write_table(pa.table({"run": [run_id]}), os.path.join(folder, "images", "part-0.parquet"))
    return publish.commit(out, {"run_id": run_id, "tables": {"images": f"_versions/{run_id}/images"}}, lease)


def test_each_commit_switches_the_version_and_keeps_only_the_previous_one(tmp_path):
    out = str(tmp_path / "out")
    lease = Lease(out, "writer").acquire()
    try:
        for run in ("v1", "v2", "v3"):
            manifest = _commit_version(out, run, lease)
            assert pd.read_parquet(table_uri(out, "images"))["run"].tolist() == [run]
    finally:
        lease.release()
    assert manifest["previous_run_id"] == "v2"
    assert sorted(os.listdir(tmp_path / "out" / "_versions")) == ["v2", "v3"]
    with pytest.raises(KeyError, match="no table 'entities'"):
        table_uri(out, "entities")
    with pytest.raises(FileNotFoundError, match="no build has published"):
        table_uri(str(tmp_path / "empty"), "images")


# ----------------------------------------------------------------------------- end to end on S3

def _upload(fs, prefix: str, rows: list[dict]) -> None:
    schema = pa.schema([("jpg", pa.binary()), ("caption", pa.string()), ("url", pa.string())])
    with fs.open(f"inputs/{prefix}.parquet", "wb") as handle:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), handle)


def _build(inputs: list[str], out: str, kb: str, fault: str = "", wait: bool = True) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "I2E_FAULT": fault}
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "build", *inputs, "--output", out,
                                "--kb", kb, "--runner", "local"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if wait:
        process.output = process.communicate(timeout=600)[0]
    return process


def _snapshot(fs, out: str) -> dict[str, list[str]]:
    """Every table of the current version, as sorted JSON rows without the run id: what a
    pandas reader gets through ``table_uri``."""
    fs.invalidate_cache()
    manifest = json.loads(fs.cat_file(out.removeprefix("s3://") + "/manifest.json"))
    found = {}
    for table in OUTPUT_TABLES:
        frame = pd.read_parquet(table_uri(out, table, manifest)).drop(columns=["run_id"], errors="ignore")
        found[table] = sorted(json.dumps(row, sort_keys=True, default=repr) for row in frame.to_dict("records"))
    assert len(found["images"]) == manifest["kept_images"], "the manifest and the tables it names disagree"
    return found


def test_builds_killed_at_every_publish_step_leave_a_whole_version(s3, small_kb):
    rows = demo_rows()
    _upload(s3, "a/part-0", rows[:7])
    _upload(s3, "a/part-1", rows[7:14])
    _upload(s3, "b/part-0", rows[14:])
    small, large = ["s3://inputs/a/*.parquet"], ["s3://inputs/a/*.parquet", "s3://inputs/b/*.parquet"]
    out = "s3://outputs/i2e"

    reference = _build(large, "s3://outputs/reference", small_kb)   # an unbroken build of the larger input
    assert reference.returncode == 0, reference.output
    expected_large = _snapshot(s3, "s3://outputs/reference")
    first = _build(small, out, small_kb)
    assert first.returncode == 0, first.output
    expected_small = _snapshot(s3, out)
    assert len(expected_small["images"]) < len(expected_large["images"])

    for point in ("publish.start", "publish.before_commit"):   # killed before the commit: the old version
        killed = _build(large, out, small_kb, fault=f"{point}:kill")
        assert killed.returncode == -signal.SIGKILL, killed.output
        assert _snapshot(s3, out) == expected_small, point

    killed = _build(large, out, small_kb, wait=False)   # kill -9 from outside, while the shard tables are being written
    while killed.poll() is None and not s3.glob("outputs/i2e/_versions/*/images/*.parquet"):
        s3.invalidate_cache()
        time.sleep(0.05)
    versions = {path.split("/")[3] for path in s3.glob("outputs/i2e/_versions/*/images/*.parquet")}
    killed.kill()
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL and len(versions) == 2, "not killed while finalizing"
    assert _snapshot(s3, out) == expected_small

    killed = _build(large, out, small_kb, fault="publish.after_commit:kill")   # committed, old versions not yet pruned
    assert killed.returncode == -signal.SIGKILL, killed.output
    assert _snapshot(s3, out) == expected_large

    rerun = _build(large, out, small_kb)
    assert rerun.returncode == 0, rerun.output
    assert _snapshot(s3, out) == expected_large
    manifest = json.loads(s3.cat_file("outputs/i2e/manifest.json"))
    s3.invalidate_cache()
    left = sorted(path.rsplit("/", 1)[1] for path in s3.ls("outputs/i2e/_versions"))
    assert left == sorted([manifest["run_id"], manifest["previous_run_id"]]), "crashed runs' folders not cleaned"
    assert not s3.exists("outputs/i2e/_lease.json")


def test_a_second_build_on_the_same_output_fails_fast_and_the_first_is_unharmed(s3, small_kb):
    _upload(s3, "a/part-0", demo_rows())
    out = "s3://outputs/i2e"
    first = _build(["s3://inputs/a/*.parquet"], out, small_kb, fault="publish.start:sleep=15", wait=False)
    deadline = time.time() + 300
    while first.poll() is None and not s3.exists("outputs/i2e/_lease.json") and time.time() < deadline:
        s3.invalidate_cache()
        time.sleep(0.2)
    second = _build(["s3://inputs/a/*.parquet"], out, small_kb)
    first_output = first.communicate(timeout=600)[0]
    assert second.returncode == 2, second.output
    assert "another build is writing this output" in second.output
    assert first.returncode == 0, first_output
    assert "finished" in first_output
    s3.invalidate_cache()
    manifest = json.loads(s3.cat_file("outputs/i2e/manifest.json"))
    assert len(pd.read_parquet(table_uri(out, "images"))) == manifest["kept_images"] > 0


def test_publishing_stops_when_the_parts_hold_other_rows_than_the_writers_reported(tmp_path):
    from i2e_engine.build import AccountingError, _check_written_rows
    from i2e_engine.finalize import Target

    target = Target(tables=str(tmp_path / "v"), stats=str(tmp_path / "v" / "_stats"), run_id="r")
    (tmp_path / "v" / "images").mkdir(parents=True)
    for name, rows in (("part-a", 2), ("part-b", 1)):
        pq.write_table(pa.table({"x": list(range(rows))}), tmp_path / "v" / "images" / f"{name}.parquet")
    (tmp_path / "v" / "images" / ".part-c.parquet.tmp").write_bytes(b"a writer's unfinished temp file")
    _check_written_rows(target, {"images": 3})
    with pytest.raises(AccountingError, match="hold 3 rows but its writers reported 2"):
        _check_written_rows(target, {"images": 2})


def test_a_plan_with_its_lease_pickles_for_workers_and_the_heartbeat_stays(tmp_path):
    import cloudpickle

    lease = Lease(str(tmp_path / "out"), "run-1").acquire()
    try:
        copy = cloudpickle.loads(cloudpickle.dumps(lease))
        assert copy.record == lease.record and copy._thread is None
        assert lease._thread.is_alive()
    finally:
        lease.release()
