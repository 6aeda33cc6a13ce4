"""`i2e build --scorer mofi:PATH`: the encoder trained and exported by trainer/ scores the
next build's image-entity pairs. The encoders are the trainer's tiny smoke models, randomly
initialized and exported with trainer.export; the build runs on the embedded demo photos
through the CLI. This tests the loop's plumbing, not the scores' quality."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from i2e_engine import tables
from i2e_engine.encoder.exported import load_encoder
from i2e_engine.scorers.base import entity_text
from i2e_engine.scorers.mofi import resolve_mofi_export
from pipelines.cli import main
from tests.tiny_mofi import DEVICES, export_tiny_mofi

pytestmark = pytest.mark.e2e


def _build(capsys, *args: str, runner: str = "local") -> tuple[int, str, str]:
    """Run `i2e build ARGS` through the CLI; (exit code, stdout, stderr)."""
    try:
        code = main(["build", "--runner", runner, *args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _expected_scores(out, export, device: str, mode: str = "name_description") -> tuple[np.ndarray, np.ndarray]:
    """(scores in image_entities, the same pairs scored independently with the exported encoder)."""
    pairs = tables.read_output(out, "image_entities").to_pandas()
    images = tables.read_output(out, "images", columns=["image_id", "image"]).to_pandas().set_index("image_id")
    entities = tables.read_output(out, "entities").to_pandas().set_index("entity_id")
    encoder = load_encoder(export, device=device)
    image_ids = sorted(set(pairs["image_id"]))
    photos = [Image.open(io.BytesIO(images.loc[i, "image"])).convert("RGB") for i in image_ids]
    image_emb = dict(zip(image_ids, encoder.encode_images(photos)))
    texts = [entity_text(entities.loc[e, "name"], entities.loc[e, "description"], mode) for e in pairs["entity_id"]]
    text_emb = encoder.encode_texts(texts)
    expected = np.array([image_emb[i] @ t for i, t in zip(pairs["image_id"], text_emb)], dtype=np.float32)
    return pairs["image_entity_score"].to_numpy(), expected


@pytest.mark.parametrize("device", DEVICES)
def test_build_scores_are_the_exported_encoders(device, tmp_path, capsys):
    export = export_tiny_mofi(tmp_path / "encoder")
    out = tmp_path / "out"
    code, stdout, stderr = _build(capsys, "--scorer", f"mofi:{export}", "--output", str(out), "--device", device,
                                  runner="beam")   # the default runner; the other tests use the quicker local one
    assert code == 0, stderr
    identity = resolve_mofi_export(str(export)).identity
    assert f"scorer {identity}" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["scorer"] == identity
    pairs = tables.read_output(out, "image_entities").to_pandas()
    assert len(pairs) > 5 and set(pairs["scorer"]) == {identity}
    got, expected = _expected_scores(out, export, device)
    assert len(set(got.round(5))) > 1
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _progress(stdout: str) -> tuple[int, int]:
    """(shards already annotated, shards to annotate) from the build's first progress line."""
    found = re.search(r"(\d+) already annotated, (\d+) to annotate", stdout)
    return int(found.group(1)), int(found.group(2))


def test_other_weights_reannotate_instead_of_reusing(tmp_path, capsys):
    """The fingerprint holds the export's content hash: a rerun with the same export reuses
    the annotations, new weights at the same path are refused until --overwrite, which
    annotates everything again with the new weights."""
    export = export_tiny_mofi(tmp_path / "encoder", seed=0)
    out = tmp_path / "out"
    args = ("--scorer", f"mofi:{export}", "--output", str(out), "--device", "cpu", "--entity-text", "name")
    code, stdout, _ = _build(capsys, *args)
    assert code == 0 and _progress(stdout) == (0, 1)
    before = tables.read_output(out, "image_entities").to_pandas()
    code, stdout, _ = _build(capsys, *args)
    assert code == 0 and _progress(stdout) == (1, 0)              # same weights: reused

    export_tiny_mofi(export, seed=1)                              # retrained weights, same path and name
    code, _, stderr = _build(capsys, *args)
    assert code == 2 and "annotated with another configuration" in stderr
    code, stdout, _ = _build(capsys, *args, "--overwrite")
    assert code == 0 and _progress(stdout) == (0, 1)
    after = tables.read_output(out, "image_entities").to_pandas()
    (old_name,), (new_name,) = set(before["scorer"]), set(after["scorer"])
    assert old_name.split(":")[:2] == new_name.split(":")[:2] and old_name != new_name
    merged = before.merge(after, on=["image_id", "entity_id"], suffixes=("_old", "_new"))
    assert len(merged) and not np.allclose(merged["image_entity_score_old"], merged["image_entity_score_new"])
    got, expected = _expected_scores(out, export, "cpu", mode="name")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_an_image_only_export_fails_before_any_work(tmp_path, capsys):
    export = export_tiny_mofi(tmp_path / "supervised", config="smoke_supervised")
    code, _, stderr = _build(capsys, "--scorer", f"mofi:{export}", "--output", str(tmp_path / "out"))
    assert code == 2
    assert "has no text tower" in stderr and "image-entity scoring needs the text tower" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "out" / "manifest.json").exists()


def test_a_missing_export_fails_before_any_work(tmp_path, capsys):
    code, _, stderr = _build(capsys, "--scorer", f"mofi:{tmp_path / 'no-encoder'}", "--output", str(tmp_path / "out"))
    assert code == 2 and "no-encoder" in stderr and "does not exist" in stderr and "trainer.export" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "out" / "manifest.json").exists()


def test_scorer_argument(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["build", "--scorer", "mofi:runs/encoder", "--print-config"]) == 0
    scorer = json.loads(capsys.readouterr().out)["scorer"]
    assert scorer["name"] == "mofi" and scorer["pretrained"] == str(tmp_path / "runs" / "encoder")
    assert main(["build", "--scorer", "mofi:s3://bucket/encoder", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["scorer"]["pretrained"] == "s3://bucket/encoder"
    for name in ("offline", "open_clip"):
        assert main(["build", "--scorer", name, "--print-config"]) == 0
        assert json.loads(capsys.readouterr().out)["scorer"]["name"] == name

    for bad, message in ((["--scorer", "clip"], "unknown scorer 'clip': choose offline, open_clip or mofi:PATH"),
                         (["--scorer", "mofi"], "mofi needs the exported encoder's directory"),
                         (["--scorer", "mofi:"], "mofi needs the exported encoder's directory"),
                         (["--scorer", "mofi:enc", "--pretrained", "x.pt"], "--pretrained is open_clip's")):
        with pytest.raises(SystemExit) as exit_:
            main(["build", *bad, "--print-config"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert "mofi:PATH" in capsys.readouterr().out
