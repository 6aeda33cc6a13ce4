"""Shared fixtures: where the real data lives, and skips with a reason when it does not."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("I2E_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set I2E_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    return _need(SHARED_DATA / "coco-mini")


@pytest.fixture(scope="session")
def caltech101() -> Path:
    return _need(SHARED_DATA / "caltech101")


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory):
    """One `i2e build` of the embedded demo for the whole session: (output folder, manifest).
    Tests that change it must work on a copy."""
    from i2e_engine.config import BuildConfig
    from pipelines.run import run_build

    out = tmp_path_factory.mktemp("demo") / "out"
    manifest = run_build(BuildConfig(output=str(out)), progress=lambda _: None)
    return out, manifest


@pytest.fixture(scope="session")
def spark():
    """A real local Spark session (2 cores), its Python workers on this interpreter;
    stopped when the test session ends."""
    pytest.importorskip("pyspark", reason="pyspark is in the test extra: pip install -e '.[test]'")
    from pipelines.spark.job import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()
