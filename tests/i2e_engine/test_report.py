"""The run report's bounded aggregations on small hand-made tables: histograms, top-k,
deterministic samples, the funnel, and a page that stays under its size limit however large
the images are. Expected values are computed here with numpy/pandas, not by the report."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from i2e_engine import tables
from i2e_engine.report import build_report
from i2e_engine.report.data import BottomK, Histogram, funnel, gather, row_hashes, top_entities
from i2e_engine.workdir import shard_file_stem

RUN = "20260101T000000Z-abcdef"


def test_histogram_counts_like_numpy_with_out_of_range_values_in_the_end_bins():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.3, 5000), [-5.0, 7.0, np.nan]])
    histogram = Histogram(-1.0, 1.0, 40)
    for chunk in np.array_split(values, 7):
        histogram.add(chunk)
    finite = values[np.isfinite(values)]
    expected, _ = np.histogram(np.clip(finite, -1.0, 1.0 - 1e-12), bins=40, range=(-1.0, 1.0))
    assert histogram.counts.tolist() == expected.tolist()
    assert histogram.total == len(finite)


def test_row_hashes_are_stable_and_distinct():
    shards = pa.array(["a.parquet", "a.parquet", "b.parquet", "b.parquet"])
    rows = pa.array([0, 1, 0, 1], pa.int64())
    first = row_hashes(shards, rows)
    assert len(set(first.tolist())) == 4
    assert row_hashes(shards, rows).tolist() == first.tolist()
    # a row's hash depends on its key only, not on its neighbours in the batch
    assert row_hashes(pa.array(["b.parquet"]), pa.array([1], pa.int64())).tolist() == [first[3]]


def test_bottom_k_is_the_k_smallest_hashes_whatever_the_batching():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, 1000, dtype=np.int64).astype(np.uint64)
    items = [(f"f{i // 100}", i) for i in range(1000)]
    expected = [item for _, item in sorted(zip(hashes.tolist(), items))[:12]]
    for batch in (1000, 97, 5):
        sample = BottomK(12)
        for start in range(0, 1000, batch):
            sample.offer(hashes[start:start + batch], lambda i, start=start: items[start + i])
        assert sample.items() == expected


def test_top_entities_match_pandas_with_ties_broken_by_name():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"entity_id": [f"e{i}" for i in range(500)],
                          "name": [f"name {i % 97:03d} {i}" for i in range(500)],
                          "image_count": rng.integers(1, 4, 500)})   # many ties at the boundary
    batches = pa.Table.from_pandas(frame, preserve_index=False).to_batches(max_chunksize=64)
    expected = frame.sort_values(["image_count", "name"], ascending=[False, True]).head(10)
    assert top_entities(batches, 10) == list(zip(expected["entity_id"], expected["name"], expected["image_count"]))


def test_funnel_walks_the_stages_in_order():
    drops = [{"stage": "filter", "kind": "filtered", "reason": "no_entities_left", "rows": 2},
             {"stage": "image", "kind": "rejected", "reason": "image_empty", "rows": 3},
             {"stage": "dedup", "kind": "filtered", "reason": "near_duplicate", "rows": 4},
             {"stage": "image", "kind": "rejected", "reason": "image_truncated", "rows": 1}]
    stages = funnel(100, drops)
    assert [(s["stage"], s["rows_in"], s["rows_out"]) for s in stages] == [
        ("image", 100, 96), ("dedup", 96, 92), ("filter", 92, 90)]
    assert stages[0]["rejected"] == {"image_empty": 3, "image_truncated": 1}


def _noise_jpeg(rng, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _fake_output(root, n_images: int, image_side: int, n_rejects: int = 40) -> str:
    """An output folder as a build writes it: one shard's parts of every table, and a manifest."""
    rng = np.random.default_rng(3)
    shard = "/data/in/shard-0.parquet"
    stem = shard_file_stem(shard)
    images, pairs = [], []
    for row in range(n_images):
        data = _noise_jpeg(rng, image_side, image_side * 3 // 4)
        images.append({"image_id": f"{row:064x}", "sample_id": f"s{row}", "source": "parquet", "source_shard": shard,
                       "row_in_shard": row, "url": None, "width": image_side, "height": image_side * 3 // 4,
                       "image_format": "JPEG", "alt_text_raw": f"photo {row} " + "x" * 2000,
                       "alt_text": f"photo {row}", "alt_texts_of_copies": [], "image": data, "run_id": RUN})
        pairs.append({"image_id": f"{row:064x}", "sample_id": f"s{row}", "source_shard": shard, "row_in_shard": row,
                      "mention": "photo", "mention_label": "ALIAS", "mention_source": "alias", "mention_start": 0,
                      "mention_end": 5, "entity_id": f"e{row % 7}", "link_score": float(rng.random()),
                      "link_prior": 0.5, "link_context": 0.5, "runner_ups": [],
                      "image_entity_score": float(rng.random() * 0.6), "rank": 1, "scorer": "test",
                      "kb_version": "kb", "run_id": RUN})
    reasons = ["image_truncated", "image_empty", "text_empty", "image_undecodable"]
    rejects = [{"sample_id": f"r{i}", "source_shard": shard, "row_in_shard": n_images + i, "stage": "image",
                "kind": "rejected", "reason": reasons[i % len(reasons)], "entity_id": None, "cluster_id": None,
                "survivor_shard": None, "survivor_row": None, "detail": "broken " * 100, "run_id": RUN}
               for i in range(n_rejects)]
    entities = [{"entity_id": f"e{i}", "name": f"Entity {i}", "description": "", "aliases": [], "source": "test",
                 "qid": None, "wiki_title": None, "image_count": sum(p["entity_id"] == f"e{i}" for p in pairs),
                 "kb_version": "kb"} for i in range(7)]
    out = root / "out"
    for table, rows in (("images", images), ("image_entities", pairs), ("rejects", rejects), ("duplicates", [])):
        tables.write_rows(rows, table, str(out / table / f"part-{stem}-{RUN}.parquet"), row_group_size=16)
    tables.write_rows(entities, "entities", str(out / "entities" / f"part-00000-of-00001-{RUN}.parquet"))
    drops = pd.DataFrame(rejects).groupby(["stage", "kind", "reason"]).size().reset_index(name="rows")
    manifest = {"run_id": RUN, "runner": "test", "started_utc": "2026-01-01T00:00:00Z", "seconds": 1.0,
                "schema_version": 5, "versions": {}, "config": {}, "input_samples": n_images + n_rejects,
                "kept_images": n_images, "filtered_samples": 0, "rejected_samples": n_rejects,
                "dropped_annotations": 0,
                "rows": {"images": n_images, "entities": 7, "image_entities": n_images, "rejects": n_rejects,
                         "duplicates": 0},
                "drops_by_reason": drops.to_dict("records"), "sample_drops_by_reason": drops.to_dict("records"),
                "stages": {}, "tables": {table: table for table in tables.OUTPUT_TABLES}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return str(out)


def test_samples_are_deterministic_and_chosen_by_row_key_hash(tmp_path):
    out = _fake_output(tmp_path, n_images=30, image_side=64, n_rejects=12)
    first, second = gather(out, kept_samples=8, per_reason=2), gather(out, kept_samples=8, per_reason=2)
    keys = [(s.source_shard, s.row_in_shard) for s in first.kept_samples]
    assert keys == [(s.source_shard, s.row_in_shard) for s in second.kept_samples]
    # the 8 kept rows whose hash is smallest, hashed here one by one
    images = tables.read_output(out, "images", ["source_shard", "row_in_shard"]).to_pandas()
    hashes = row_hashes(pa.array(images["source_shard"]), pa.array(images["row_in_shard"]))
    expected = images.assign(h=hashes).sort_values("h").head(8)
    assert keys == list(zip(expected["source_shard"], expected["row_in_shard"]))
    assert all(s.image and s.entities and s.entities[0]["name"].startswith("Entity") for s in first.kept_samples)
    assert {reason: len(s) for reason, s in first.reject_samples.items()} == {
        f"image/rejected/{r}": 2 for r in ("image_truncated", "image_empty", "text_empty", "image_undecodable")}
    build_report(out, str(tmp_path / "a.html"))
    build_report(out, str(tmp_path / "b.html"))
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()   # the same page, byte for byte


def test_page_stays_under_its_size_limit_with_many_large_images(tmp_path):
    out = _fake_output(tmp_path, n_images=64, image_side=1200)
    result = build_report(out, str(tmp_path / "report.html"))
    assert result.bytes == (tmp_path / "report.html").stat().st_size < 5_000_000
    assert result.thumbnails == 48    # every kept sample shown: thumbnails are small whatever the image
    page = (tmp_path / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', page)) == 48
    # a tighter budget drops thumbnails, never the numbers
    small = build_report(out, str(tmp_path / "small.html"), max_bytes=150_000)
    assert small.bytes < 150_000 and 0 < small.thumbnails < 48
    assert 'id="input-samples" data-value="104"' in (tmp_path / "small.html").read_text()


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        build_report(str(tmp_path))
