"""Shared fixtures: where the real data lives, and skips with a reason when it does not."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

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


def jpeg_bytes(array, size=None) -> bytes:
    image = Image.fromarray(array)
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def bomb_bytes() -> bytes:
    """A real decompression bomb: a few KB of PNG that decode to 81 million pixels."""
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def bad_inputs_build(tmp_path_factory):
    """One build over bad inputs for the whole session: a parquet of broken rows, one
    without a caption column and a corrupt file. (output folder, manifest, input rows).
    Tests that change it must work on a copy."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from skimage import data

    from i2e_engine.config import BuildConfig
    from pipelines.run import run_build

    good = jpeg_bytes(data.chelsea())
    rows = [
        (good, "Chelsea the cat on a chair".encode()),
        (jpeg_bytes(data.coffee()), "A cup of coffee".encode()),
        (b"", b"a dog"),
        (b"\xff\xd8\xff garbage", b"a dog"),
        (good[: len(good) // 3], b"a cat, cut short"),
        (bomb_bytes(), b"a bomb of a cat"),
        (jpeg_bytes(data.astronaut()), b""),
        (jpeg_bytes(data.rocket()), b"\xff\xfe not utf-8 \xc3\x28 rocket"),
        (jpeg_bytes(data.rocket(), (200, 150)), ("rocket " * 10_000).encode()),
        (jpeg_bytes(data.astronaut(), (100, 100)), b"zzzz qqqq xxxx"),
    ]
    root = tmp_path_factory.mktemp("bad_inputs")
    inputs = root / "in"
    inputs.mkdir()
    pq.write_table(pa.table({"jpg": [r[0] for r in rows], "caption": [r[1] for r in rows]}), inputs / "a.parquet")
    pq.write_table(pa.table({"jpg": [good], "url": ["https://x"]}), inputs / "b-missing-caption.parquet")
    (inputs / "c-corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    out = root / "out"
    manifest = run_build(BuildConfig(inputs=[str(inputs)], output=str(out)), progress=lambda _: None)
    return out, manifest, len(rows) + 1 + 1


@pytest.fixture(scope="session")
def spark():
    """A real local Spark session (2 cores), its Python workers on this interpreter;
    stopped when the test session ends."""
    pytest.importorskip("pyspark", reason="pyspark is in the test extra: pip install -e '.[test]'")
    from pipelines.spark.job import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def s3(monkeypatch, tmp_path):
    """A real S3 endpoint: moto's standalone server on localhost (a subprocess), with the
    standard AWS environment pointing at it; yields an s3fs client with buckets "inputs"
    and "outputs". The S3 clients under test are not mocked."""
    s3fs = pytest.importorskip("s3fs", reason="s3fs is in the test extra")
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    s3fs.S3FileSystem.clear_instance_cache()   # fsspec caches clients, with their endpoint
    fs = s3fs.S3FileSystem()
    fs.mkdir("inputs")
    fs.mkdir("outputs")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def small_kb() -> str:
    """The small vital+geonames+concepts KB (40k entities, built once per machine in
    seconds), as a local file. Builds on object storage publish it next to their output with
    its alias index, exactly as they do the default KB, which takes minutes and 5 GB to build
    and copy: tests about a build's shape (cluster, publish) use this one."""
    from i2e_engine.kb.build import DEMO_SOURCES, ensure_alias_index, ensure_kb
    from i2e_engine.kb.geonames import DEFAULT_MIN_POPULATION

    path = ensure_kb(DEMO_SOURCES, DEFAULT_MIN_POPULATION)
    ensure_alias_index(str(path))
    return str(path)
