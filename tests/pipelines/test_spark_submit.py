"""`spark-submit pipelines/spark/submit.py <i2e build arguments>` runs the build on the session
spark-submit starts (a real local[2] master), with the same output as `i2e build`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from i2e_engine import tables
from i2e_engine.demo import DEMO_PAIRS, skimage_data_dir
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_spark_submit_runs_the_job(tmp_path):
    pytest.importorskip("pyspark", reason="pyspark is in the test extra")
    submit = Path(sys.executable).parent / "spark-submit"
    if not submit.exists():
        pytest.skip(f"no spark-submit next to {sys.executable}")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, text in DEMO_PAIRS[:4]:
        (photos / name).write_bytes((skimage_data_dir() / name).read_bytes())
        (photos / f"{name.split('.')[0]}.txt").write_text(text)
    out = tmp_path / "out"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    result = subprocess.run([str(submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                             str(REPO_ROOT / "pipelines" / "spark" / "submit.py"), str(photos), "--output", str(out)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tables in {out}" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runner"] == "spark:local[2]"
    assert manifest["input_samples"] == 4 == manifest["kept_images"] + manifest["filtered_samples"]
    assert len(tables.read_output(out, "images")) == manifest["kept_images"] > 0
