"""open_clip encoders from a local checkpoint: a tiny random-initialized config, since no
real CLIP weights are reachable here. These check the plumbing, not the accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.eval import cli
from trainer.eval.encoders import load_encoder

open_clip = pytest.importorskip("open_clip")

ARCH = "tiny-eval-test-clip"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("open_clip")
    config = folder / f"{ARCH}.json"
    config.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    path = folder / "tiny.pt"
    torch.save(open_clip.create_model(ARCH).state_dict(), path)
    return path


def test_loads_weights_from_the_file(checkpoint: Path, tmp_path: Path) -> None:
    encoder = load_encoder(f"open_clip:{ARCH}:{checkpoint}", device="cpu")
    assert encoder.has_text_tower and encoder.name == f"open_clip:{ARCH}:tiny.pt"
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 40), (10, 10, 200))]
    x = encoder.encode_images(images)
    t = encoder.encode_texts(["a red square", "a blue square", "a dog"])
    assert x.shape == (2, 32) and t.shape == (3, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    state = torch.load(checkpoint, weights_only=True)
    assert torch.equal(encoder.model.state_dict()["visual.conv1.weight"], state["visual.conv1.weight"])
    # other weights under another file: a different cache identity
    other = tmp_path / "other.pt"
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, other)
    assert load_encoder(f"open_clip:{ARCH}:{other}", device="cpu").cache_key != encoder.cache_key


def test_missing_checkpoint_is_not_downloaded() -> None:
    with pytest.raises(FileNotFoundError, match="no download"):
        load_encoder(f"open_clip:{ARCH}:/nonexistent/weights.pt")
    with pytest.raises(ValueError, match="open_clip:<arch>"):
        load_encoder("open_clip:ViT-B-32")


def test_cli_zeroshot_and_caption_retrieval(checkpoint: Path, coco_mini: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    for cls, colour in (("red_square", (220, 0, 0)), ("blue_square", (0, 0, 220))):
        for i in range(3):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), tuple(c + 10 * i for c in colour)).save(root / cls / f"{i}.png")
    report = cli.run(cli.build_parser().parse_args([
        "--encoder", f"open_clip:{ARCH}:{checkpoint}", "--dataset", str(root),
        "--tasks", "retrieval,zeroshot,caption_retrieval", "--device", "cpu",
        "--captions", str(coco_mini / "annotations" / "captions_val2017.json"), "--no-cache"]))
    zeroshot = report["results"]["zeroshot"]
    assert zeroshot["n_classes"] == 2 and zeroshot["n_images"] == 6 and zeroshot["top5"] is None
    assert 0.0 <= zeroshot["top1"] <= 100.0
    captions = report["results"]["caption_retrieval"]
    assert (captions["n_captions"], captions["n_images"], captions["n_image_queries"]) == (395, 79, 79)
    assert captions["t2i_r1"] <= captions["t2i_r5"] <= captions["t2i_r10"]
    assert captions["i2t_r1"] <= captions["i2t_r5"] <= captions["i2t_r10"]
    assert report["results"]["retrieval"]["n_queries"] == 6
