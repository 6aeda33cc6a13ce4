"""End-to-end runs of the Beam pipeline (DirectRunner) with the real models, read back
with pandas: joins, counts, accounting of every input row, resume and refiltering."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from i2e_engine import tables
from i2e_engine.config import BuildConfig, FilterConfig
from i2e_engine.demo import DEMO_PAIRS, demo_rows
from i2e_engine.workdir import ConfigChangedError
from pipelines.run import run_build

pytestmark = pytest.mark.e2e


def _read(out, table) -> pd.DataFrame:
    return tables.read_output(out, table).to_pandas()


def _check_tables(out, num_inputs: int) -> dict:
    """The invariants every build must hold; returns the tables."""
    t = {name: _read(out, name) for name in tables.OUTPUT_TABLES}
    images, pairs, entities, rejects = t["images"], t["image_entities"], t["entities"], t["rejects"]
    sample_level = rejects[rejects["entity_id"].isna()]
    # every input row is kept, filtered or rejected, exactly once
    assert len(images) + len(sample_level) == num_inputs
    assert not set(images["sample_id"]) & set(sample_level["sample_id"])
    assert images["image_id"].is_unique
    # joins: every annotation points at a kept image and a described entity
    assert set(pairs["image_id"]) == set(images["image_id"])
    assert set(pairs["entity_id"]) == set(entities["entity_id"])
    counts = pairs.groupby("entity_id")["image_id"].nunique()
    assert (entities.set_index("entity_id")["image_count"].sort_index() == counts.sort_index()).all()
    # ranks are 1..n per image, best score first
    for _, group in pairs.groupby("image_id"):
        group = group.sort_values("rank")
        assert list(group["rank"]) == list(range(1, len(group) + 1))
        assert group["image_entity_score"].is_monotonic_decreasing
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_samples"] == num_inputs
    assert manifest["rows"]["images"] == len(images)
    return t


def test_demo_build_accounts_for_every_row(demo_build):
    out, manifest = demo_build
    t = _check_tables(out, len(demo_rows()))
    reasons = set(t["rejects"]["reason"])
    assert {"image_truncated", "image_empty", "text_empty", "duplicate_sha256"} <= reasons
    assert len(t["images"]) >= len(DEMO_PAIRS) // 2
    assert manifest["versions"]["kb"] and manifest["versions"]["scorer"].startswith("offline")


def test_demo_links_real_entities(demo_build):
    out, _ = demo_build
    t = _check_tables(out, len(demo_rows()))
    joined = t["image_entities"].merge(t["images"][["image_id", "alt_text"]], on="image_id") \
        .merge(t["entities"][["entity_id", "name"]], on="entity_id")
    cat = joined[joined["alt_text"].str.contains("cat", case=False)]
    assert "wordnet:n02121620" in set(cat["entity_id"])          # the concept cat
    assert not cat["mention"].str.startswith("Chelsea").any()     # no article is about this cat
    coffee = joined[joined["alt_text"].str.contains("coffee")]
    assert "wordnet:n07929519" in set(coffee["entity_id"])       # the beverage
    # the default KB knows SpaceX's rocket: "SpaceX Falcon 9" is not the bird of prey
    rocket = joined[joined["alt_text"].str.contains("Falcon 9")]
    assert "enwiki:Falcon_9" in set(rocket["entity_id"]) and "enwiki:Falcon" not in set(joined["entity_id"])
    assert not set(t["entities"]["entity_id"]) & {"enwiki:Chelsea", "enwiki:Table", "enwiki:Group"}


def test_rerun_resumes_and_refilters_without_reannotating(demo_build, tmp_path):
    first_out, first = demo_build
    out = tmp_path / "copy"
    shutil.copytree(first_out, out)
    messages = []
    config = BuildConfig(output=str(out), filter=FilterConfig(top_k_per_image=1))
    manifest = run_build(config, progress=messages.append)
    assert "0 to annotate" in messages[0]
    t = _check_tables(out, len(demo_rows()))
    assert t["image_entities"].groupby("image_id").size().max() == 1
    assert "beyond_top_k" in set(t["rejects"]["reason"])
    assert manifest["rows"]["image_entities"] < first["rows"]["image_entities"] or \
        first["rows"]["image_entities"] == first["rows"]["images"]
    with pytest.raises(ConfigChangedError):
        run_build(BuildConfig(output=str(out), link=type(config.link)(nil_threshold=0.5)), progress=lambda _: None)


def test_bad_inputs_never_crash_and_never_vanish(bad_inputs_build):
    out, _, num_inputs = bad_inputs_build
    t = _check_tables(out, num_inputs)
    reasons = set(t["rejects"]["reason"])
    for expected in ("image_empty", "image_undecodable", "image_truncated", "image_too_large",
                     "text_empty", "text_invalid_utf8", "text_too_long", "missing_column", "unreadable_shard"):
        assert expected in reasons, (expected, reasons)
    assert "Chelsea the cat on a chair" in set(t["images"]["alt_text"])


def test_coco_mini_end_to_end(coco_mini, tmp_path):
    captions = coco_mini / "annotations" / "captions_train2017.json"
    out = tmp_path / "coco"
    manifest = run_build(BuildConfig(inputs=[str(captions)], output=str(out), rows_per_shard=40),
                         progress=lambda _: None)
    with_captions = {a["image_id"] for a in json.loads(captions.read_text())["annotations"]}
    t = _check_tables(out, len(with_captions))
    assert len(t["images"]) > len(with_captions) // 2
    assert manifest["rows"]["entities"] >= 10
    assert t["images"]["url"].str.startswith("http").all()
    assert (t["image_entities"]["image_entity_score"].between(-1, 1)).all()
