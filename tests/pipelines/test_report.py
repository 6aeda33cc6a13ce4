"""The run report of real builds, opened in headless Chromium: the page renders (a screenshot
that is not blank), and the numbers in the rendered DOM equal the manifest's and the tables'
(read here with json and pandas). Also the CLI's `i2e report --html` and the per-stage counts
that Beam's counters reported."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from i2e_engine.publish import table_uri
from i2e_engine.report import build_report
from pipelines import local
from pipelines.cli import main

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`; .ci/run installs it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu"]


class _Elements(HTMLParser):
    """Every element's tag and attributes, in document order."""

    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


def _rendered(page: Path) -> list[tuple[str, dict]]:
    """The DOM as Chromium rendered it (--dump-dom), as (tag, attributes)."""
    dom = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    parser = _Elements()
    parser.feed(dom)
    assert parser.elements, "chromium rendered nothing"
    return parser.elements


def _screenshot_is_not_blank(page: Path, png: Path) -> None:
    subprocess.run([CHROMIUM, *FLAGS, f"--screenshot={png}", "--window-size=1280,2000", page.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100   # text, plots and photos, not one flat colour
    assert pixels.std() > 20


def _by_id(elements, key: str) -> dict:
    found = [attrs for _, attrs in elements if attrs.get("id") == key]
    assert len(found) == 1, key
    return found[0]


def _sample_drops(out: Path) -> dict[tuple[str, str, str], int]:
    rejects = pd.read_parquet(table_uri(str(out), "rejects"), columns=["stage", "kind", "reason", "entity_id"])
    whole = rejects[rejects["entity_id"].isna()]
    return {key: int(n) for key, n in whole.groupby(["stage", "kind", "reason"]).size().items()}


def _check_page(out: Path, tmp_path: Path) -> list[tuple[str, dict]]:
    page = out / "report.html"
    assert page.exists(), "the build did not write its report"
    assert page.stat().st_size < 5_000_000
    manifest = json.loads((out / "manifest.json").read_text())
    _screenshot_is_not_blank(page, tmp_path / "report.png")
    elements = _rendered(page)
    for key in ("input_samples", "kept_images", "filtered_samples", "rejected_samples", "dropped_annotations"):
        assert int(_by_id(elements, key.replace("_", "-"))["data-value"]) == manifest[key], key
    assert _by_id(elements, "accounting")["data-ok"] == "true"
    assert _by_id(elements, "funnel-check")["data-ok"] == "true"
    # the funnel's drops: exactly the manifest's sample drops, which are the rejects table's
    shown = {(a["data-stage"], a["data-kind"], a["data-reason"]): int(a["data-rows"])
             for tag, a in elements if tag == "tr" and a.get("class") == "drop"}
    expected = {(d["stage"], d["kind"], d["reason"]): d["rows"] for d in manifest["sample_drops_by_reason"]}
    assert shown == expected == _sample_drops(out)
    stages = [a for tag, a in elements if tag == "tr" and a.get("class") == "stage"]
    assert int(stages[0]["data-rows-in"]) == manifest["input_samples"]
    assert int(stages[-1]["data-rows-out"]) == manifest["kept_images"]
    for before, after in zip(stages, stages[1:]):
        assert before["data-rows-out"] == after["data-rows-in"]
    # every reason of the manifest is on the page with its count (samples in the funnel, pairs below it)
    pairs = {(a["data-stage"], a["data-kind"], a["data-reason"]): int(a["data-rows"])
             for tag, a in elements if tag == "tr" and "data-reason" in a and a.get("class") != "drop"}
    for drop in manifest["drops_by_reason"]:
        key = (drop["stage"], drop["kind"], drop["reason"])
        assert shown.get(key, 0) + pairs.get(key, 0) == drop["rows"], key
    # per-stage rows and seconds as in the manifest
    timed = {a["data-stage"]: (int(a["data-rows"]), float(a["data-seconds"]))
             for tag, a in elements if tag == "tr" and "data-seconds" in a}
    assert timed == {s: (v["rows"], v["seconds"]) for s, v in manifest["stages"].items()}
    # kept samples with thumbnails, the number the page promises
    cards = [a for tag, a in elements if tag == "div" and a.get("class") == "card" and a.get("data-reason") == ""]
    assert len(cards) == min(48, manifest["kept_images"])
    assert any(tag == "img" and a.get("src", "").startswith("data:image/jpeg;base64,") for tag, a in elements)
    return elements


@needs_chromium
def test_demo_report_renders_in_chromium_with_the_manifests_numbers(demo_build, tmp_path):
    out, manifest = demo_build
    assert manifest["report"] == str(out / "report.html")
    elements = _check_page(out, tmp_path)
    entities = pd.read_parquet(table_uri(str(out), "entities"), columns=["entity_id", "name", "image_count"])
    top = entities.sort_values(["image_count", "name"], ascending=[False, True]).head(25)
    shown = [(a["data-entity-id"], int(a["data-image-count"])) for tag, a in elements if "data-entity-id" in a]
    assert shown == list(zip(top["entity_id"], top["image_count"]))
    duplicates = pd.read_parquet(table_uri(str(out), "duplicates"), columns=["method", "role"])
    assert len(duplicates)   # the demo's exact copy
    clusters = {a["data-key"]: int(a["data-rows"]) for _, a in elements if "data-key" in a}
    assert clusters == (duplicates["method"] + "/" + duplicates["role"]).value_counts().to_dict()


@needs_chromium
def test_bad_inputs_report_renders_in_chromium_with_every_reject_reason(bad_inputs_build, tmp_path):
    out, manifest, _ = bad_inputs_build
    elements = _check_page(out, tmp_path)
    sections = {a["data-reason"] for tag, a in elements if tag == "h3" and "data-reason" in a}
    rejects = pd.read_parquet(table_uri(str(out), "rejects"), columns=["stage", "kind", "reason"])
    assert sections == set(rejects["stage"] + "/" + rejects["kind"] + "/" + rejects["reason"])


def test_report_cli_writes_the_same_page_as_the_build(demo_build, tmp_path, capsys):
    out, _ = demo_build
    page = tmp_path / "report.html"
    assert main(["report", str(out), "--html", str(page)]) == 0
    assert str(page) in capsys.readouterr().out
    assert page.read_bytes() == (out / "report.html").read_bytes()   # deterministic samples and plots


def test_beam_counters_report_the_manifests_per_stage_rows(demo_build):
    _, manifest = demo_build
    assert manifest["runner"].startswith("beam:")
    assert manifest["runner_metrics"] == {f"{stage}.rows": v["rows"] for stage, v in manifest["stages"].items()}
    rows = {stage: v["rows"] for stage, v in manifest["stages"].items()}
    assert rows["hash"] == rows["read"] == manifest["input_samples"]    # a fresh build: every row read twice
    assert all(v["seconds"] >= 0 and (v["rows_per_s"] or 0) >= 0 for v in manifest["stages"].values())


def test_report_reads_the_tables_from_object_storage(demo_build, s3, tmp_path):
    out, _ = demo_build
    s3.put(str(out), "outputs/demo", recursive=True)
    result = build_report("s3://outputs/demo")
    assert result.uri == "s3://outputs/demo/report.html"
    page = s3.cat_file("outputs/demo/report.html").decode()
    assert page.replace("s3://outputs/demo", str(out)) == (out / "report.html").read_text()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_local_progress_bar_shows_rows_per_second_only_on_a_terminal(monkeypatch, terminal):
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    shards = ["a", "b", "c"]
    markers = list(local._progress(shards, "annotate", "run", lambda shard: SimpleNamespace(
        shard=shard, pairs_read=10, run_id="run")))
    assert [m.shard for m in markers] == shards
    shown = stream.getvalue()
    if terminal:
        assert "annotate" in shown and "3/3" in shown and "rows/s" in shown
    else:
        assert shown == ""
