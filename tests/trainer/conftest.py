"""Trainer fixtures: a small I2E table set and a packed dataset from real Caltech-101 photos,
and a local Ray."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def i2e_tables(caltech101, tmp_path_factory) -> Path:
    from trainer.smoke_data import build_caltech_tables
    # 5 categories x 8 photos + 1 corrupt row, 2 image files with 8-row row groups (+ manifest.json).
    return build_caltech_tables(caltech101, tmp_path_factory.mktemp("i2e") / "tables", per_category=8, corrupt=1)


@pytest.fixture(scope="session")
def caltech_packed(caltech101, tmp_path_factory) -> Path:
    from tests.trainer.packed_fixtures import caltech_packed as write
    # 5 categories x 8 photos + 1 corrupt row = 41 rows in 4 webdataset shards, 64 px shorter side.
    return write(caltech101, tmp_path_factory.mktemp("packed") / "caltech", per_category=8, shards=4)


@pytest.fixture(scope="session")
def local_ray():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = False
    if not ray.is_initialized():
        # with its own dashboard, as trainer.train.init_ray (why: see there)
        ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
        started = True
    yield ray
    if started:
        ray.shutdown()
