"""A Python environment made the way a Dataflow worker image is made: the project's built
wheel and its declared dependencies (plus the ``s3`` extra), nothing else; no editable
install, no repository on ``sys.path``.

Installing the dependencies (torch with its CUDA libraries, spaCy, Beam ...: 7.2 GB) from
the local package index takes 8.5 to 13 minutes cold (measured on 2 shared cores, load
average 10 to 15), so the environment is cached under ``$I2E_CACHE/test-venvs/<key>``
(``~/.cache/i2e`` by default). The key covers what decides the dependency set: the base
interpreter and its version, the wheel's declared requirements (``Requires-Dist``, i.e. pyproject.toml's dependencies and extras)
and pip's constraints file. The project wheel itself is reinstalled (``--no-deps``, seconds)
whenever its content changes, so editing the engine never pays the cold install again;
editing its dependencies does, once (CI pays it once per dependency change when it keeps
the cache directory between runs). Warm: 15 to 45 s (building the wheel, about 10 s, and
reinstalling it when the sources changed, about 6 s). Prepare or time it alone with
``python -m tests.pipelines.wheel_venv``.

A file lock serializes test sessions that use the same environment (one installs, the
others wait and find it done; the lock is held while a test uses it, so a reinstall of the
wheel never happens under a running worker pool).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.conftest import REPO_ROOT

# What setuptools packs into the wheel (pyproject.toml: packages.find + readme).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "i2e_engine", "pipelines", "schemas", "trainer")
EXTRAS = "s3"
PIP_CONSTRAINTS = ("/etc/xdg/pip/constraints.txt", "/etc/pip/constraints.txt")


@dataclass
class WheelVenv:
    root: Path
    wheel: Path
    timings: dict   # seconds: wheel, dependencies (0 when cached), project

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    @property
    def bin(self) -> str:
        return str(self.root / "bin")


def _has_setuptools(major: int) -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= major


def build_wheel(out_dir: Path) -> Path:
    """The project's wheel, built from a copy of the working tree's package sources (so no
    ``build/`` or ``*.egg-info`` appears in the shared repository)."""
    source = Path(tempfile.mkdtemp(prefix="i2e-wheel-src-"))
    try:
        for name in WHEEL_SOURCES:
            path = REPO_ROOT / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, source / name)
        out_dir.mkdir(parents=True, exist_ok=True)
        flags = ["--no-build-isolation"] if _has_setuptools(68) else []   # no isolated build env to install
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *flags, "-w", str(out_dir),
                               str(source)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"pip wheel failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    finally:
        shutil.rmtree(source, ignore_errors=True)
    wheels = sorted(out_dir.glob("mofi_i2e-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _wheel_metadata(wheel: Path) -> tuple[list[str], str]:
    """(the wheel's Requires-Dist lines, a digest of its files' content, dist-info excluded:
    a rebuilt wheel of the same sources has another zip timestamp, not another digest)."""
    digest = hashlib.sha256()
    requires: list[str] = []
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if ".dist-info/" in name:
                if name.endswith(".dist-info/METADATA"):
                    requires = sorted(line.split(":", 1)[1].strip()
                                      for line in archive.read(name).decode().splitlines()
                                      if line.startswith("Requires-Dist:"))
                continue
            digest.update(name.encode() + b"\0" + archive.read(name) + b"\0")
    return requires, digest.hexdigest()


def _base_python() -> str:
    """The interpreter the venv is made from (its bin/python links to it)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _dependency_key(requires: list[str]) -> str:
    key = hashlib.sha256()
    key.update(f"{_base_python()}|{sys.version_info[:3]}|{EXTRAS}|".encode())
    key.update("\n".join(requires).encode())
    for constraints in PIP_CONSTRAINTS:
        if os.path.exists(constraints):
            key.update(Path(constraints).read_bytes())
    return key.hexdigest()[:16]


def _pip(python: str, *args: str, timeout: float = 1800) -> None:
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


@contextlib.contextmanager
def wheel_venv(cache_root: Path, wheel_dir: Path) -> Iterator[WheelVenv]:
    """The cached environment with this working tree's wheel installed; held (locked) while
    the ``with`` block runs."""
    started = time.perf_counter()
    wheel = build_wheel(wheel_dir)
    timings = {"wheel": round(time.perf_counter() - started, 1), "dependencies": 0.0, "project": 0.0}
    requires, content = _wheel_metadata(wheel)
    cache_root.mkdir(parents=True, exist_ok=True)
    root = cache_root / _dependency_key(requires)
    with open(root.with_name(root.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            complete = root / ".i2e-dependencies-installed"
            if not complete.exists() or not os.path.exists(root / "bin" / "python"):
                started = time.perf_counter()
                shutil.rmtree(root, ignore_errors=True)   # a half-made one, from a killed session
                subprocess.run([_base_python(), "-m", "venv", str(root)], check=True, timeout=300)
                # The wheel with its declared dependencies and the s3 extra, as a worker image's
                # `pip install "/opt/i2e[gcs]"` does (README, Dataflow).
                _pip(str(root / "bin" / "python"), f"{wheel}[{EXTRAS}]")
                (root / ".i2e-project").write_text(content)
                complete.write_text(json.dumps({"requires": requires}))
                timings["dependencies"] = round(time.perf_counter() - started, 1)
            marker = root / ".i2e-project"
            if not marker.exists() or marker.read_text() != content:
                started = time.perf_counter()
                _pip(str(root / "bin" / "python"), "--no-deps", "--force-reinstall", str(wheel))
                marker.write_text(content)
                timings["project"] = round(time.perf_counter() - started, 1)
            yield WheelVenv(root=root, wheel=wheel, timings=timings)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


if __name__ == "__main__":   # prepare (or time) the environment: python -m tests.pipelines.wheel_venv
    from i2e_engine import storage

    with tempfile.TemporaryDirectory(prefix="i2e-wheel-") as wheels, \
            wheel_venv(storage.local_cache() / "test-venvs", Path(wheels)) as venv:
        print(json.dumps({"venv": str(venv.root), "seconds": venv.timings}))
