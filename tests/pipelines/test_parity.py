"""One engine core, several runners: the same inputs through Beam (FnApiRunner), Spark
(local[2]) and the bare loop give identical rows in every table, rejects and manifest
counts included. The inputs exercise every global decision: real coco-mini photos split
over several shards, a parquet of broken rows, an exact duplicate pair and cross-shard
copies (dedup), a quantile cutoff, top-k and a minimum of images per entity.

Scores are compared to float32 rounding, everything else exactly: a torch CPU kernel's
last bits depend on the batch's shape and the thread count (Spark gives each Python worker
``spark.task.cpus`` threads; the text cache of each worker batches other texts together),
so an image-entity score may differ in its last bit between runners, never a decision."""
from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from i2e_engine import tables
from i2e_engine.config import BuildConfig, FilterConfig
from pipelines.run import run_build

pytestmark = pytest.mark.e2e
RUNNERS = ("beam", "spark", "local")
MANIFEST_COUNTS = ("rows", "input_samples", "kept_images", "filtered_samples", "rejected_samples",
                   "dropped_annotations", "drops_by_reason")


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG")   # a few KB that decode to 81 Mpixels
    return buffer.getvalue()


def _bad_rows(coco_mini) -> pa.Table:
    photo = sorted((coco_mini / "train2017").glob("*.jpg"))[0].read_bytes()
    other = sorted((coco_mini / "val2017").glob("*.jpg"))[0].read_bytes()
    rows = [
        (photo[: len(photo) // 2], "a truncated photo of a dog"),
        (b"", "a zero-byte image of a cat"),
        (b"<!DOCTYPE html><html><body>Not Found</body></html>", "a page instead of a photo of a horse"),
        (_bomb(), "a decompression bomb of a giraffe"),
        (other, ""),
        (other, b"\xff\xfe invalid \xc3\x28 utf-8 of a pizza"),
        (other, "a pizza on a table in a kitchen"),
        (other, "a pizza on a table in a kitchen"),        # the exact duplicate pair
        (photo, "the same photo as a coco row, another caption: a bus"),
    ]
    return pa.table({"jpg": [r[0] for r in rows],
                     "caption": pa.array([r[1].encode() if isinstance(r[1], str) else r[1] for r in rows], pa.binary()),
                     "url": [f"https://example.org/bad/{i}" for i in range(len(rows))]})


@pytest.fixture(scope="module")
def inputs(coco_mini, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity_inputs")
    pq.write_table(_bad_rows(coco_mini), folder / "bad-rows.parquet")
    return [str(coco_mini / "annotations" / "captions_train2017.json"), str(folder / "bad-rows.parquet")]


@pytest.fixture(scope="module")
def builds(inputs, spark, tmp_path_factory):
    out = {}
    filters = FilterConfig(keep_top_fraction=0.8, top_k_per_image=3, min_images_per_entity=2)
    for runner in RUNNERS:
        config = BuildConfig(inputs=inputs, output=str(tmp_path_factory.mktemp(runner) / "out"),
                             rows_per_shard=20, filter=filters)
        manifest = run_build(config, runner, spark_master="local[2]", progress=lambda _: None)
        out[runner] = (config.output, manifest)
    return out


def _frame(out, table) -> pd.DataFrame:
    frame = tables.read_output(out, table).to_pandas().drop(columns=["run_id"], errors="ignore")
    frame = frame.map(lambda v: json.dumps(v.tolist() if hasattr(v, "tolist") else v, sort_keys=True, default=str)
                      if isinstance(v, (list, dict)) or hasattr(v, "tolist") else v)
    exact = [c for c in frame.columns if frame[c].dtype.kind != "f"]
    return frame.sort_values(exact).reset_index(drop=True)


@pytest.mark.parametrize("runner", ["spark", "local"])
@pytest.mark.parametrize("table", tables.OUTPUT_TABLES)
def test_runner_gives_the_same_rows_as_beam(builds, runner, table):
    beam_frame, other = _frame(builds["beam"][0], table), _frame(builds[runner][0], table)
    assert len(beam_frame) > 0
    pd.testing.assert_frame_equal(beam_frame, other, check_exact=False, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("runner", ["spark", "local"])
def test_manifest_counts_agree(builds, runner):
    beam, other = builds["beam"][1], builds[runner][1]
    assert {k: beam[k] for k in MANIFEST_COUNTS} == {k: other[k] for k in MANIFEST_COUNTS}
    assert beam["runner"].startswith("beam:") and other["runner"].startswith(runner)


def test_every_input_row_is_accounted_and_every_decision_happened(builds, inputs, coco_mini):
    _, manifest = builds["beam"]
    captions = json.loads((coco_mini / "annotations" / "captions_train2017.json").read_text())
    num_inputs = len({a["image_id"] for a in captions["annotations"]}) + 9
    assert manifest["input_samples"] == num_inputs
    assert manifest["kept_images"] + manifest["filtered_samples"] + manifest["rejected_samples"] == num_inputs
    reasons = {d["reason"] for d in manifest["drops_by_reason"]}
    assert {"image_truncated", "image_empty", "image_undecodable", "image_too_large", "text_empty",
            "text_invalid_utf8", "duplicate_sha256", "below_quantile", "entity_too_rare"} <= reasons
    rejects = tables.read_output(builds["beam"][0], "rejects").to_pandas()
    duplicates = rejects[rejects["reason"] == "duplicate_sha256"]
    assert len(duplicates) >= 2   # the exact pair and the cross-shard copy
    images = tables.read_output(builds["beam"][0], "images", ["image_id"]).to_pandas()
    assert images["image_id"].is_unique


@pytest.mark.parametrize("runner", RUNNERS)
def test_runner_metrics_report_the_manifests_per_stage_rows(builds, runner):
    """Beam's counters (queried from the pipeline result), Spark's accumulators (read on the
    driver) and the bare loop's counters saw the rows each stage recorded in the markers."""
    _, manifest = builds[runner]
    assert manifest["runner_metrics"] == {f"{stage}.rows": v["rows"] for stage, v in manifest["stages"].items()}
    assert manifest["stages"]["read"]["rows"] == manifest["input_samples"]
    assert {s: v["rows"] for s, v in manifest["stages"].items()} == \
        {s: v["rows"] for s, v in builds["beam"][1]["stages"].items()}
