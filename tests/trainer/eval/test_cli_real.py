"""End to end on real photos: the pretrained offline tower on Caltech-101, through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.eval import cli
from trainer.eval.encoders import OfflineEncoder
from trainer.eval.retrieval import chance_map

CATEGORIES = ("accordion", "dalmatian", "Motorbikes")
PER_CLASS = 6


def _split(caltech101: Path, name: str, out: Path) -> Path:
    lines = (caltech101 / name).read_text().split()
    chosen = [line for cat in CATEGORIES for line in [x for x in lines if x.split("/")[0] == cat][:PER_CLASS]]
    assert len(chosen) == len(CATEGORIES) * PER_CLASS
    out.write_text("\n".join(chosen) + "\n")
    return out


def test_offline_tower_end_to_end_with_cache(caltech101: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    test_split = _split(caltech101, "test.txt", tmp_path / "test.txt")
    train_split = _split(caltech101, "train.txt", tmp_path / "train.txt")
    argv = ["--encoder", "offline", "--dataset", str(caltech101), "--split-file", str(test_split),
            "--train-split", str(train_split), "--tasks", "retrieval,knn,linear_probe,zeroshot",
            "--k", "5", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "r.json")]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    retrieval = report["results"]["retrieval"]
    labels = np.repeat(np.arange(len(CATEGORIES)), PER_CLASS)
    chance = chance_map(labels)
    assert retrieval["n_queries"] == 18 and retrieval["n_classes"] == 3
    assert retrieval["map_gpr1200"] > chance + 30.0, (retrieval, chance)
    assert retrieval["map_leave_one_out"] <= retrieval["map_gpr1200"]  # the self-match can only help
    assert report["results"]["knn"]["top1"] >= 80.0
    assert report["results"]["linear_probe"]["top1"] >= 80.0
    assert "no text tower" in report["results"]["zeroshot"]["skipped"]
    table = capsys.readouterr().out
    assert "map_gpr1200" in table and str(retrieval["map_gpr1200"]) in table

    # second run: every embedding must come from the cache, and the numbers must not move
    def no_encoding(self, images):
        raise AssertionError("re-encoded despite the cache")

    monkeypatch.setattr(OfflineEncoder, "encode_images", no_encoding)
    assert cli.main(argv) == 0
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["results"] == report["results"]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_cli_reports_tasks_it_cannot_run(caltech101: Path, tmp_path: Path) -> None:
    test_split = _split(caltech101, "test.txt", tmp_path / "test.txt")
    report = cli.run(cli.build_parser().parse_args(
        ["--encoder", "offline", "--dataset", str(caltech101), "--split-file", str(test_split),
         "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]))
    assert report["tasks"] == ["retrieval", "knn", "linear_probe", "zeroshot"]
    assert "train-split" in report["results"]["knn"]["skipped"]
    assert "train-split" in report["results"]["linear_probe"]["skipped"]
    assert report["results"]["retrieval"]["n_queries"] == 18


def test_cli_rejects_unknown_task() -> None:
    with pytest.raises(SystemExit, match="unknown task"):
        cli.run(cli.build_parser().parse_args(["--encoder", "offline", "--dataset", ".", "--tasks", "mAP"]))
