"""The build in the shapes it meets on a cluster, on loopback, against a real S3 server
(moto, a subprocess): inputs and outputs only on S3, workers whose HOME has no
``~/.cache/i2e`` (so they must read the KB and its alias index that the driver publishes
next to the output, ``<output>/_kb/``), each compared with the local runner's tables on the
same input (every row, run ids aside; scores to float32 rounding, as in test_parity.py).

1. **Spark standalone**: a master and 2 workers (``spark-class ...Master`` / ``...Worker``,
   1 core each, their own HOME and work dir, started without the S3 credentials: those
   reach the executors as ``spark.executorEnv.*``, as the README says); the driver is a
   separate ``i2e build --runner spark --spark-master spark://...`` process.
2. **Beam portable runner, external SDK worker pool** (the shape of Dataflow workers): the
   pool runs from a venv holding only the project's built wheel and its declared
   dependencies (``tests/pipelines/wheel_venv.py``, cached), with its cwd outside the
   repository; the driver is ``i2e build --runner PortableRunner --job_endpoint=embed
   --environment_type=EXTERNAL --environment_config=localhost:<pool port>``.

Every server is its own process group, stopped by its handle (SIGTERM, then SIGKILL).
"""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from i2e_engine import storage, tables
from i2e_engine.config import BuildConfig
from i2e_engine.demo import demo_rows
from pipelines.run import run_build
from tests.conftest import REPO_ROOT, _free_port

pytestmark = pytest.mark.e2e

SHARDS = 4                      # the demo's 20 rows over 4 parquet shards, plus one of bad rows
S3_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
INPUTS = "s3://inputs/crawl/*.parquet"


# --- processes ------------------------------------------------------------------------------

class Server:
    """A long-running subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict, log_dir: Path, cwd: Optional[str] = None):
        self.name, self.log = name, log_dir / f"{name}.log"
        self._log_handle = open(self.log, "wb")
        self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=self._log_handle,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return f"--- {self.name} ({self.log}) ---\n" + self.log.read_text(errors="replace")[-chars:]
        except OSError as error:
            return f"--- {self.name}: no log ({error}) ---"

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        # children left in the group (a Spark executor, a Beam SDK worker) go with it
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log_handle.close()


def _wait_for_port(port: int, server: Server, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert server.alive(), f"{server.name} exited ({server.process.returncode})\n{server.tail()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{server.name} not listening on {port} after {timeout} s\n{server.tail()}")


def _driver(args: list[str], env: dict, cwd: str, timeout: float) -> subprocess.CompletedProcess:
    """``i2e build <args>`` in its own process (this venv's Python), killed on timeout."""
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "build", *args], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n[driver killed after {timeout} s]"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _build_or_fail(label: str, out: str, kb: str, runner_args: list[str], env: dict, cwd: str,
                   logs: Callable[[], str]) -> dict:
    """Build the S3 input into ``out`` with a driver process; the manifest, or a failure that
    carries the driver's stderr and ``logs()`` (the cluster's side)."""
    started = time.perf_counter()
    done = _driver([INPUTS, "--output", out, "--kb", kb, *runner_args], env, cwd=cwd, timeout=900)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, (f"driver failed ({done.returncode}) after {seconds:.0f} s\n"
                                  f"{done.stderr[-5000:]}\n{logs()}")
    print(f"{label} build: {seconds:.1f} s")
    return _read_manifest(out)


# --- S3, inputs and the local reference -----------------------------------------------------

def _bad_rows() -> list[dict]:
    """A few broken rows, each with a reason of its own (no corrupt file: its rows could not
    be counted from the source, and this test checks the count)."""
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG")      # a few KB that decode to 81 Mpixels
    photo = demo_rows()[1]["jpg"]
    return [
        {"jpg": bomb.getvalue(), "caption": "a decompression bomb of a giraffe", "url": None},
        {"jpg": b"<!DOCTYPE html><html><body>Not Found</body></html>", "caption": "a page, not a horse", "url": None},
        {"jpg": photo, "caption": "", "url": "https://example.org/no-caption"},
        {"jpg": photo[: len(photo) // 3], "caption": "a rocket, cut short", "url": None},
    ]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """moto's S3 server for the whole module (a subprocess on loopback), with buckets
    "inputs" (the input shards, uploaded here) and "outputs"; yields (its AWS environment,
    the number of input rows). The environment is set in this process too while the module
    runs, for the in-process local build and the readers."""
    s3fs = pytest.importorskip("s3fs", reason="s3fs is in the test extra")
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    port = _free_port()
    log_dir = tmp_path_factory.mktemp("moto")
    server = Server("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    {**os.environ}, log_dir)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        try:
            _wait_for_port(port, server, timeout=60)
            s3fs.S3FileSystem.clear_instance_cache()   # fsspec caches clients, with their endpoint
            fs = s3fs.S3FileSystem()
            fs.mkdir("inputs")
            fs.mkdir("outputs")
            rows = demo_rows()
            schema = pa.schema([("jpg", pa.binary()), ("caption", pa.string()), ("url", pa.string())])
            per = -(-len(rows) // SHARDS)
            shards = [rows[i * per:(i + 1) * per] for i in range(SHARDS)] + [_bad_rows()]
            for index, shard in enumerate(shards):
                with fs.open(f"inputs/crawl/{index:05d}.parquet", "wb") as handle:
                    pq.write_table(pa.Table.from_pylist(shard, schema=schema), handle)
            yield env, sum(map(len, shards))
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@pytest.fixture(scope="module")
def local_reference(s3_env, small_kb, tmp_path_factory):
    """The local runner's build of the same S3 input (tables on local disk)."""
    out = str(tmp_path_factory.mktemp("local_reference") / "out")
    manifest = run_build(BuildConfig(inputs=[INPUTS], output=out, kb=small_kb), "local", progress=lambda _: None)
    return out, manifest


def _frame(out: str, table: str) -> pd.DataFrame:
    frame = tables.read_output(out, table).to_pandas().drop(columns=["run_id"], errors="ignore")
    frame = frame.map(lambda v: json.dumps(v.tolist() if hasattr(v, "tolist") else v, sort_keys=True, default=str)
                      if isinstance(v, (list, dict)) or hasattr(v, "tolist") else v)
    exact = [c for c in frame.columns if frame[c].dtype.kind != "f"]
    return frame.sort_values(exact).reset_index(drop=True)


def _check_against_local(out: str, manifest: dict, reference, input_rows: int, runner_prefix: str) -> None:
    local_out, local_manifest = reference
    assert manifest["runner"].startswith(runner_prefix), manifest["runner"]
    assert manifest["input_samples"] == input_rows == \
        manifest["kept_images"] + manifest["filtered_samples"] + manifest["rejected_samples"], \
        {k: manifest[k] for k in ("input_samples", "kept_images", "filtered_samples", "rejected_samples")}
    counts = ("rows", "input_samples", "kept_images", "filtered_samples", "rejected_samples",
              "dropped_annotations", "drops_by_reason")
    assert {k: manifest[k] for k in counts} == {k: local_manifest[k] for k in counts}
    reasons = {d["reason"] for d in manifest["drops_by_reason"]}
    assert {"image_too_large", "image_undecodable", "image_truncated", "text_empty", "duplicate_sha256"} <= reasons
    assert manifest["runner_metrics"]["read.rows"] == input_rows
    for table in tables.OUTPUT_TABLES:
        local, remote = _frame(local_out, table), _frame(out, table)
        assert len(local) > 0, table
        try:
            pd.testing.assert_frame_equal(local, remote, check_exact=False, rtol=1e-5, atol=1e-6)
        except AssertionError as error:
            raise AssertionError(f"table {table} differs from the local runner's: {error}") from None


def _read_manifest(out: str) -> dict:
    return json.loads(storage.read_text(storage.join(out, "manifest.json")))


def _java_or_skip() -> None:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java (java on PATH or JAVA_HOME): Spark's master and workers are JVMs")


# --- 1. Spark standalone ----------------------------------------------------------------------

class SparkStandalone:
    """A standalone master and workers on loopback (``spark-class``), stopped by their handles."""

    def __init__(self, root: Path):
        import pyspark

        self.root = root
        self.spark_home = str(Path(pyspark.__file__).parent)
        self.spark_class = os.path.join(self.spark_home, "bin", "spark-class")
        self.port, self.ui_port = _free_port(), _free_port()
        self.master: Optional[Server] = None
        self.workers: list[tuple[Server, Path, Path]] = []   # (server, HOME, work dir)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _env(self, home: Path) -> dict:
        env = {k: v for k, v in os.environ.items()
               if k not in S3_ENV_KEYS and not k.startswith(("PYSPARK_", "SPARK_", "I2E_"))}
        env.update(SPARK_HOME=self.spark_home, SPARK_LOCAL_IP="127.0.0.1", HOME=str(home),
                   SPARK_LOG_DIR=str(self.root / "logs"), SPARK_NO_DAEMONIZE="1")
        return env

    def start(self, workers: int, cores: int = 1, memory: str = "1536m") -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        master_home = self.root / "master-home"
        master_home.mkdir()
        self.master = Server("spark-master", [self.spark_class, "org.apache.spark.deploy.master.Master",
                                              "--host", "127.0.0.1", "--port", str(self.port),
                                              "--webui-port", str(self.ui_port)],
                             self._env(master_home), self.root / "logs", cwd=str(master_home))
        _wait_for_port(self.port, self.master)
        for index in range(workers):
            home, work = self.root / f"worker{index}-home", self.root / f"worker{index}-work"
            home.mkdir()
            work.mkdir()
            server = Server(f"spark-worker{index}", [
                self.spark_class, "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                "--cores", str(cores), "--memory", memory, "--work-dir", str(work),
                "--webui-port", str(_free_port())], self._env(home), self.root / "logs", cwd=str(home))
            self.workers.append((server, home, work))
        self.wait_for_workers(workers)

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as response:
            return json.loads(response.read())

    def wait_for_workers(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for server, _, _ in self.workers:
                assert server.alive(), f"{server.name} exited\n{self.logs()}"
            try:
                if len([w for w in self.status().get("workers", []) if w.get("state") == "ALIVE"]) >= n:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{n} Spark workers did not register in {timeout} s\n{self.logs()}")

    def logs(self, chars: int = 2500) -> str:
        """Tails of the master's and workers' logs and of every executor's stderr."""
        parts = [self.master.tail(chars)] if self.master else []
        for server, _, work in self.workers:
            parts.append(server.tail(chars))
            for stderr in sorted(glob.glob(str(work / "app-*" / "*" / "stderr"))):
                parts.append(f"--- executor {stderr} ---\n" + Path(stderr).read_text(errors="replace")[-chars:])
        return "\n".join(parts)

    def stop(self) -> None:
        for server, _, _ in self.workers:
            server.stop()
        if self.master:
            self.master.stop()


@pytest.fixture()
def spark_cluster(tmp_path):
    _java_or_skip()
    pytest.importorskip("pyspark", reason="pyspark is in the spark extra")
    # Short paths: Spark's work dirs hold executor folders per app.
    cluster = SparkStandalone(Path(tempfile.mkdtemp(prefix="i2e-spark-")))
    try:
        cluster.start(workers=2)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.mark.timeout(1200)
def test_spark_standalone_cluster_on_s3_matches_local(s3_env, small_kb, local_reference, spark_cluster, tmp_path):
    env, input_rows = s3_env
    for _, home, _ in spark_cluster.workers:
        assert not (home / ".cache" / "i2e").exists()
    out = "s3://outputs/spark"
    executor_env = [f"spark.executorEnv.{key}={value}" for key, value in env.items()]
    conf = ["spark.executor.cores=1", "spark.executor.memory=1g", "spark.cores.max=2", "spark.ui.enabled=false",
            "spark.driver.host=127.0.0.1", "spark.driver.bindAddress=127.0.0.1", *executor_env]
    driver_env = {**os.environ, **env, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                  "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    manifest = _build_or_fail("spark standalone", out, small_kb,
                              ["--runner", "spark", "--spark-master", spark_cluster.url,
                               *[a for c in conf for a in ("--spark-conf", c)]],
                              driver_env, str(tmp_path), spark_cluster.logs)
    try:
        _check_against_local(out, manifest, local_reference, input_rows, f"spark:{spark_cluster.url}")
        # The executors ran on the workers, whose HOMEs started without a cache: the alias
        # index they used was copied from the KB published next to the output.
        assert manifest["config"]["kb"] == small_kb
        assert storage.exists(storage.join(out, "_kb", storage.name(small_kb)))
        executors = [work for _, _, work in spark_cluster.workers if glob.glob(str(work / "app-*" / "*"))]
        assert len(executors) == 2, "an executor on every worker"
        copied = [home for _, home, _ in spark_cluster.workers
                  if glob.glob(str(home / ".cache" / "i2e" / "alias-index" / "*" / "meta.json"))]
        assert copied, "no worker copied the published alias index into its HOME's cache"
    except AssertionError as error:
        raise AssertionError(f"{error}\n{spark_cluster.logs()}") from None


# --- 2. Beam portable runner, external worker pool from a wheel-only venv -------------------

@pytest.fixture()
def wheel_env(tmp_path):
    from tests.pipelines.wheel_venv import wheel_venv

    with wheel_venv(storage.local_cache() / "test-venvs", tmp_path / "wheel") as venv:
        print(f"wheel venv {venv.root}: seconds {venv.timings}")
        yield venv


@pytest.mark.timeout(3000)   # a cold environment (torch, CUDA libraries, spaCy ...) takes minutes
def test_beam_portable_runner_with_wheel_worker_pool_on_s3_matches_local(s3_env, small_kb, local_reference,
                                                                          wheel_env, tmp_path):
    env, input_rows = s3_env
    outside = tmp_path / "pool"          # cwd of the pool: not the repository
    home = tmp_path / "pool-home"        # a worker's HOME: no ~/.cache/i2e
    outside.mkdir()
    home.mkdir()
    pool_env = {k: v for k, v in os.environ.items()
                if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("I2E_")}
    # The pool starts its SDK workers as `python -c ...`: the wheel venv's python must come first.
    pool_env.update(env, HOME=str(home), PATH=wheel_env.bin + os.pathsep + os.environ.get("PATH", ""),
                    PYTHONUNBUFFERED="1")
    where = subprocess.run([wheel_env.python, "-c", "import sys, i2e_engine, pipelines.beam.transforms as t; "
                            "print(i2e_engine.__file__); print(t.__file__); print(sys.path)"],
                           cwd=outside, env=pool_env, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    engine_file, transforms_file = where.stdout.splitlines()[:2]
    site = str(wheel_env.root / "lib")
    for path in (engine_file, transforms_file):
        assert path.startswith(site) and "site-packages" in path and not path.startswith(str(REPO_ROOT)), path
    assert str(REPO_ROOT) not in where.stdout.splitlines()[2]

    port = _free_port()
    pool = Server("beam-worker-pool", [wheel_env.python, "-m", "apache_beam.runners.worker.worker_pool_main",
                                       f"--service_port={port}"], pool_env, tmp_path, cwd=str(outside))
    try:
        _wait_for_port(port, pool)
        out = "s3://outputs/beam"
        manifest = _build_or_fail("beam portable", out, small_kb,
                                  ["--runner", "PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                                   f"--environment_config=localhost:{port}"],
                                  {**os.environ, **env, "PYTHONUNBUFFERED": "1"}, str(tmp_path),
                                  lambda: pool.tail(5000))
        try:
            _check_against_local(out, manifest, local_reference, input_rows, "beam:PortableRunner")
            assert manifest["config"]["kb"] == small_kb
            # The pool started the SDK worker (the embedded job service runs one: it ignores
            # --direct_num_workers), and that worker, its HOME without a cache, copied the alias
            # index published on S3.
            assert "Starting worker with command" in pool.log.read_text(errors="replace")
            assert glob.glob(str(home / ".cache" / "i2e" / "alias-index" / "*" / "meta.json")), \
                "the pool's workers did not copy the published alias index"
        except AssertionError as error:
            raise AssertionError(f"{error}\n{pool.tail(5000)}") from None
    finally:
        pool.stop()
