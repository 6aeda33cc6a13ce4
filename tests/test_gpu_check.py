"""The prepared GPU check (issue 21) runs its plumbing on a CPU: every section of
benchmarks/gpu_check.py at smoke sizes, and the shell driver's --help. The GPU numbers
themselves need a GPU (benchmarks/gpu_check.sh; BENCHMARKS.md, "GPU check (issue 21)")."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
DRIVER = REPO / "benchmarks" / "gpu_check.sh"


def test_smoke_run_reports_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["smoke"] is True and result["failed"] == []
    sections = result["sections"]
    assert set(sections) == {"mofi_train", "head_2m", "clip_scoring", "spacy_ner"}
    assert all(record["ok"] for record in sections.values())

    train = sections["mofi_train"]
    assert train["samples_per_s"] > 0 and train["model_tflops_per_s"] > 0 and train["model_flops_per_step"] > 0
    assert train["mfu"] is None and train["hfu"] is None and train["peak_tflops"] is None  # no peak for a CPU
    assert train["precision"] == "fp32" and train["loss_finite"]

    head = sections["head_2m"]
    assert head["num_classes"] == 20_000 and head["step_s_median"] > 0
    assert "peak_memory_bytes" in head and head["peak_memory_bytes"] is None  # CUDA's allocator only
    assert head["persistent_bytes"] == 20_000 * 768 * 4 * 4 + 4  # weight, grad, two AdamW moments, step

    scoring = sections["clip_scoring"]
    assert scoring["arch"] == "ViT-B-32" and "random-init" in scoring["weights"]
    assert scoring["images_per_s"] > 0 and scoring["decode_images_per_s"] > 0 and scoring["tower_images_per_s"] > 0

    ner = sections["spacy_ner"]
    assert ner["docs_per_s"] > 0 and ner["on_gpu"] is False and "ner" in ner["pipes"]

    lines = run.stdout.splitlines()
    records = [json.loads(line) for line in lines if line.startswith('{"section"')]
    assert [r["section"] for r in records] == list(sections)  # one JSON record per section
    assert "GPU check summary" in run.stdout


def test_driver_help():
    assert os.access(DRIVER, os.X_OK)
    run = subprocess.run(["bash", str(DRIVER), "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "--no-install" in run.stdout


def test_a_failing_section_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # dataclasses look their module up there
    spec.loader.exec_module(gpu_check)

    def broken(device, sizes):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(gpu_check, "SECTIONS", {"broken": broken, "fine": lambda device, sizes: ({"rate": 1.0}, "ok")})
    out = tmp_path / "result.json"
    assert gpu_check.main(["--device", "cpu", "--smoke", "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    assert result["failed"] == ["broken"]
    assert result["sections"]["broken"]["error"] == "RuntimeError: out of memory, say"
    fine = result["sections"]["fine"]
    assert fine["ok"] and fine["rate"] == 1.0 and "error" not in fine
    assert "FAILED: RuntimeError: out of memory, say" in capsys.readouterr().out


def test_benchmarks_md_says_how_to_run_it():
    text = (REPO / "BENCHMARKS.md").read_text()
    section = text[text.index("## GPU check (issue 21)"):]
    assert "bash benchmarks/gpu_check.sh" in section and "gpu_check.py --smoke --device cpu" in section
