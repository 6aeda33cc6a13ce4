"""The open_clip scorer inside the pipeline, from a local checkpoint file. No CLIP weights
can be had here, so the model is a tiny random-initialized open_clip ViT: this tests the
plumbing (loading by path, provenance, scores as columns, fast failure), not quality."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch

from i2e_engine import tables
from i2e_engine.config import BuildConfig, ScorerConfig
from i2e_engine.scorers import ScorerWeightsMissing
from i2e_engine.scorers.openclip import OpenClipScorer
from i2e_engine.workdir import ConfigChangedError
from pipelines.run import run_build

pytestmark = pytest.mark.e2e
TINY = "i2e-pipeline-tiny-vit"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / f"{TINY}.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}))
    open_clip.add_model_config(folder / f"{TINY}.json")
    scorer = OpenClipScorer(TINY, pretrained=None, allow_random_init=True, device="cpu")
    torch.save(scorer.model.state_dict(), folder / "tiny.pt")
    return folder / "tiny.pt"


def test_open_clip_scorer_from_a_checkpoint_file(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    config = BuildConfig(output=str(out), scorer=ScorerConfig(name="open_clip", arch=TINY,
                                                              pretrained=str(tiny_checkpoint)))
    manifest = run_build(config, progress=lambda _: None)
    pairs = tables.read_output(out, "image_entities").to_pandas()
    assert len(pairs) > 0 and pairs["image_entity_score"].between(-1, 1).all()
    assert pairs["image_entity_score"].nunique() > 1
    assert set(pairs["scorer"]) == {manifest["versions"]["scorer"]}
    assert TINY in manifest["versions"]["scorer"]


def test_missing_checkpoint_fails_before_any_work(tmp_path):
    config = BuildConfig(output=str(tmp_path / "out"),
                         scorer=ScorerConfig(name="open_clip", arch="ViT-B-32", pretrained=str(tmp_path / "no.pt")))
    with pytest.raises(ScorerWeightsMissing, match="does not exist"):
        run_build(config, progress=lambda _: None)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_checkpoint_replaced_at_the_same_path_is_never_reused_silently(tiny_checkpoint, tmp_path):
    """The fingerprint holds the checkpoint's content hash: new weights at the old path make
    the rerun refuse the old annotations, and --overwrite annotates with the new weights."""
    weights = tmp_path / "weights.pt"
    weights.write_bytes(tiny_checkpoint.read_bytes())
    out = tmp_path / "out"
    config = BuildConfig(output=str(out), scorer=ScorerConfig(name="open_clip", arch=TINY, pretrained=str(weights)))
    run_build(config, "local", progress=lambda _: None)
    before = tables.read_output(out, "image_entities").to_pandas()

    torch.manual_seed(1)
    other = OpenClipScorer(TINY, pretrained=None, allow_random_init=True, device="cpu")
    torch.save({k: torch.randn_like(v) for k, v in other.model.state_dict().items()}, weights)
    with pytest.raises(ConfigChangedError):
        run_build(config, "local", progress=lambda _: None)
    run_build(config, "local", overwrite=True, progress=lambda _: None)
    after = tables.read_output(out, "image_entities").to_pandas()
    assert set(after["scorer"]) != set(before["scorer"])
    merged = before.merge(after, on=["image_id", "entity_id"], suffixes=("_old", "_new"))
    assert len(merged) and (merged["image_entity_score_old"] != merged["image_entity_score_new"]).any()
