"""The trainer on a real two-node Ray cluster on loopback, as `ray job submit` meets it on a GPU
cluster: a head node and a worker node started with `ray start`, each with 1 CPU, so each of the
2 train workers lands on its own node; packed data and checkpoints only on an S3 server (moto).
The worker node is killed mid-run (its raylet and workers, SIGKILL) and a replacement node joins:
the run resumes from the last checkpoint on S3 and ends at the same step with the same weights
as an unbroken run on the same cluster."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import _free_port
from trainer.train import REPO_ROOT

pytestmark = pytest.mark.e2e

VENV_BIN = str(Path(sys.executable).parent)
STEPS, CHECKPOINT_EVERY = 16, 4


class RayCluster:
    """`ray start` processes on loopback, each its own process group, stopped by their handles."""

    def __init__(self, env: dict, temp_dir: str):
        self.env, self.temp_dir = env, temp_dir
        self.port, self.dashboard = _free_port(), _free_port()
        self.nodes: dict[str, subprocess.Popen] = {}

    @property
    def job_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard}"

    def start_head(self, cpus: int) -> None:
        self._start("head", ["--head", "--port", str(self.port), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(self.dashboard), "--temp-dir", self.temp_dir], cpus)

    def add_node(self, name: str, cpus: int) -> None:
        self._start(name, ["--address", f"127.0.0.1:{self.port}"], cpus)

    def _start(self, name: str, args: list[str], cpus: int) -> None:
        self.nodes[name] = subprocess.Popen(
            [f"{VENV_BIN}/ray", "start", "--block", "--num-cpus", str(cpus), "--disable-usage-stats", *args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def kill(self, name: str) -> None:
        """The node is lost: its raylet, object store and workers die at once (SIGKILL)."""
        process = self.nodes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([f"{VENV_BIN}/ray", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def wait_for_cpus(self, cpus: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = self.ray("status", "--address", f"127.0.0.1:{self.port}", timeout=60)
            status = done.stdout + done.stderr
            match = re.search(r"([\d.]+)/([\d.]+) CPU", status)
            if match and float(match.group(2)) >= cpus:
                return
            time.sleep(2)
        raise TimeoutError(f"the cluster did not reach {cpus} CPUs: {status}")

    def stop(self) -> None:
        for name in list(self.nodes):
            process = self.nodes.pop(name)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def cluster_env() -> dict:
    """The environment of the cluster's `ray` processes: this venv's binaries first, token auth
    off, no inherited address. The in-process Ray is stopped first: two Ray clusters on 2 cores
    starve each other."""
    try:
        import ray
        ray.shutdown()
    except ImportError:
        pass
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": VENV_BIN + os.pathsep + os.environ["PATH"]}
    env.pop("RAY_ADDRESS", None)
    return env


def submit(cluster: RayCluster, run_name: str) -> str:
    done = cluster.ray(
        "job", "submit", "--no-wait", "--address", cluster.job_address, "--working-dir", str(REPO_ROOT),
        "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "tests", "benchmarks", "experiments"]}),
        "--", "python", "trainer/train.py", "--config", "smoke_mofi", "--packed", "s3://inputs/packed",
        "--storage-path", "s3://outputs/runs", "--run-name", run_name, "--num-workers", "2",
        "--cpus-per-worker", "1", "--steps", str(STEPS), "--max-failures", "2",
        "--set", f"checkpoint_every={CHECKPOINT_EVERY}", "--set", "keep_checkpoints=10")
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"raysubmit_\w+", done.stdout + done.stderr).group(0)


def wait_for_job(cluster: RayCluster, job_id: str, timeout: float = 300) -> str:
    """The job's final state: "succeeded", "failed" or "stopped"."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = cluster.ray("job", "status", "--address", cluster.job_address, job_id, timeout=60)
        status = done.stdout + done.stderr
        assert done.returncode == 0, status
        final = re.search(r"Job '\S+' (succeeded|failed|stopped)", status)
        if final:
            return final.group(1)
        time.sleep(2)
    raise TimeoutError(f"job {job_id} still running after {timeout} s")


def final_weights(fs, run_name: str) -> dict:
    last = f"outputs/runs/{run_name}/step_{STEPS:08d}"
    out = {"model": torch.load(io.BytesIO(fs.cat(f"{last}/model.pt")), weights_only=True)}
    for path in sorted(fs.glob(f"{last}/head_rank*.pt")):
        out[path.rsplit("/", 1)[1]] = torch.load(io.BytesIO(fs.cat(path)), weights_only=True)["weight"]
    return out


@pytest.mark.timeout(900)
def test_two_node_job_on_s3_survives_a_lost_node(caltech_packed, s3):
    env = cluster_env()
    s3.put(str(caltech_packed), "inputs/packed", recursive=True)
    # short: Ray's unix socket paths have a length limit
    cluster = RayCluster(env, tempfile.mkdtemp(prefix="raynodes", dir="/tmp"))
    try:
        cluster.start_head(cpus=1)
        cluster.add_node("worker", cpus=1)
        cluster.wait_for_cpus(2)
        unbroken = submit(cluster, "unbroken")
        assert wait_for_job(cluster, unbroken) == "succeeded", cluster.ray("job", "logs", "--address",
                                                                           cluster.job_address, unbroken).stdout[-4000:]
        broken = submit(cluster, "broken")
        first = f"outputs/runs/broken/step_{CHECKPOINT_EVERY:08d}/meta.json"
        deadline = time.time() + 300
        while not s3.exists(first):
            assert time.time() < deadline, "no first checkpoint on S3"
            time.sleep(0.3)
            s3.invalidate_cache()
        cluster.kill("worker")           # mid-run: the first checkpoint is on S3, the run goes on
        cluster.add_node("replacement", cpus=1)
        status = wait_for_job(cluster, broken)
        logs = cluster.ray("job", "logs", "--address", cluster.job_address, broken).stdout
        assert status == "succeeded", logs[-4000:]
        resumed = [json.loads(line[line.index("{"):]) for line in logs.splitlines() if '"event": "resumed"' in line]
        assert resumed and resumed[0]["step"] % CHECKPOINT_EVERY == 0 and resumed[0]["step"] < STEPS, logs[-4000:]
    finally:
        cluster.stop()
    s3.invalidate_cache()
    a, b = final_weights(s3, "unbroken"), final_weights(s3, "broken")
    assert set(a) == set(b) and len(a) == 3  # model + one head shard per worker
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5), key
    for key in a:
        if key != "model":
            assert torch.allclose(a[key], b[key], atol=1e-5), key
