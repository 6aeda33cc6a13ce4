"""The whole build against a real S3 endpoint: moto's standalone server on localhost,
started here; the S3 client (s3fs/botocore) is not mocked and finds the server through the
standard AWS environment (AWS_ENDPOINT_URL ...). img2dataset parquet shards in a bucket ->
tables in a bucket -> a run killed and resumed -> tables read back with pandas."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2e_engine.config import BuildConfig, DedupConfig
from i2e_engine.demo import demo_rows
from i2e_engine.publish import table_uri
from pipelines.run import run_build

pytestmark = pytest.mark.e2e


def _upload_shards(fs, shards: int) -> list[dict]:
    rows = demo_rows()
    schema = pa.schema([("jpg", pa.binary()), ("caption", pa.string()), ("url", pa.string())])
    per = -(-len(rows) // shards)
    for index in range(shards):
        table = pa.Table.from_pylist(rows[index * per:(index + 1) * per], schema=schema)
        with fs.open(f"inputs/crawl/{index:05d}.parquet", "wb") as handle:
            pq.write_table(table, handle)
    return rows


def test_build_from_and_to_a_bucket_killed_and_resumed(s3, tmp_path):
    rows = _upload_shards(s3, 5)
    out = "s3://outputs/i2e"
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "build", "s3://inputs/crawl/*.parquet",
                                "--output", out, "--runner", "local"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 600
    committed = []
    while time.time() < deadline and not committed and process.poll() is None:
        s3.invalidate_cache()
        committed = s3.glob("outputs/i2e/_work/done/*.json")
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    s3.invalidate_cache()
    committed = s3.glob("outputs/i2e/_work/done/*.json")
    assert 1 <= len(committed) < 5, f"expected a kill after the first of 5 shards, found {len(committed)}"

    messages = []
    manifest = run_build(BuildConfig(inputs=["s3://inputs/crawl/*.parquet"], output=out), "local",
                         progress=messages.append)
    assert f"{len(committed)} already annotated, {5 - len(committed)} to annotate" in messages[0]
    assert manifest["input_samples"] == len(rows)
    assert manifest["config"]["kb"] is None and s3.glob("outputs/i2e/_kb/*.parquet")

    s3.invalidate_cache()
    images = pd.read_parquet(table_uri(out, "images"))
    rejects = pd.read_parquet(table_uri(out, "rejects"))
    pairs = pd.read_parquet(table_uri(out, "image_entities"))
    assert len(images) == manifest["kept_images"] and len(pairs) == manifest["rows"]["image_entities"]
    assert images["source_shard"].str.startswith("s3://inputs/crawl/").all()
    assert len(images) + int(rejects["entity_id"].isna().sum()) == len(rows)

    local = tmp_path / "local"
    for index, path in enumerate(sorted(s3.glob("inputs/crawl/*.parquet"))):
        (local / "crawl").mkdir(parents=True, exist_ok=True)
        s3.get(path, str(local / "crawl" / f"{index:05d}.parquet"))
    unbroken = run_build(BuildConfig(inputs=[str(local / "crawl")], output=str(local / "out")), "local",
                         progress=lambda _: None)
    local_images = pd.read_parquet(table_uri(str(local / "out"), "images"))
    assert sorted(images["sample_id"]) == sorted(local_images["sample_id"])
    assert {k: manifest[k] for k in ("rows", "kept_images", "drops_by_reason")} == \
        {k: unbroken[k] for k in ("rows", "kept_images", "drops_by_reason")}


def test_decontamination_against_evaluation_images_in_a_bucket(s3, monkeypatch):
    """Also: a connection to the input dropped once per kind of request (below botocore's own
    retries) is retried by the engine and counted in the manifest."""
    import s3fs

    real, dropped = s3fs.S3FileSystem._call_s3, set()

    async def drop_once(self, method, *args, **kwargs):
        if kwargs.get("Key", "").startswith("crawl/") and method not in dropped:
            dropped.add(method)
            raise ConnectionError(f"connection dropped during {method}")
        return await real(self, method, *args, **kwargs)

    rows = _upload_shards(s3, 1)
    evaluated = rows[2]   # a photo the demo holds twice (its exact duplicate pair)
    with s3.open("inputs/eval/held-out.png", "wb") as handle:
        handle.write(evaluated["jpg"])
    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", drop_once)
    config = BuildConfig(inputs=["s3://inputs/crawl/*.parquet"], output="s3://outputs/decontaminated",
                         dedup=DedupConfig(decontaminate=["s3://inputs/eval"]))
    manifest = run_build(config, "local", progress=lambda _: None)
    s3.invalidate_cache()
    rejects = pd.read_parquet(table_uri("s3://outputs/decontaminated", "rejects"))
    tainted = rejects[rejects["reason"] == "benchmark_contamination"]
    copies = [i for i, row in enumerate(rows) if row["jpg"] == evaluated["jpg"]]
    assert len(copies) == 2 and sorted(tainted["row_in_shard"]) == copies
    assert tainted["detail"].str.contains("s3://inputs/eval/held-out.png").all()
    assert manifest["input_samples"] == len(rows)
    assert dropped and manifest["storage_retries"] >= 1
