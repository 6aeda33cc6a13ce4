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
