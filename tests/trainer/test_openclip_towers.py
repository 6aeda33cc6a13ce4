"""open_clip towers (image.kind / text.kind = "open_clip"): shapes, tokenizer, one shared model,
a local checkpoint file, export and one train step. ViT-B-32 shrunk to a tiny CPU model by
``TINY_OPEN_CLIP`` (CLIP's tokenizer, 77 tokens) — no Ray, no download."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.configs import get_config
from trainer.configs.mofi import TINY_OPEN_CLIP
from trainer.dist import Comm
from trainer.export import export_encoder, load_encoder
from trainer.state import build_state, train_step
from trainer.towers import DualEncoder

open_clip = pytest.importorskip("open_clip")

TEXTS = ["Eiffel Tower, wrought-iron lattice tower in Paris", "Leopard", "a dog on a beach"]


def _model(cfg=None) -> DualEncoder:
    cfg = cfg or get_config("smoke_contrastive_openclip")
    torch.manual_seed(0)
    return DualEncoder(cfg.image, cfg.text, cfg.embed_dim, cfg.data.mean, cfg.data.std, cfg.task.init_logit_scale)


def _pixels(n: int, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_towers_give_embeddings_of_the_configured_width_from_one_shared_model(monkeypatch):
    import trainer.towers as towers
    built = []
    real = towers.build_open_clip
    monkeypatch.setattr(towers, "build_open_clip", lambda cfg, load_weights=True: built.append(cfg) or real(cfg, load_weights))
    model = _model()
    assert len(built) == 1  # image and text towers name the same open_clip model: built once
    image, text, scale = model(_pixels(2), model.text.tokenize(TEXTS))
    assert image.shape == (2, 32) and text.shape == (3, 32) and scale is not None
    assert torch.isfinite(image).all() and torch.isfinite(text).all()
    # open_clip's projections map to embed_dim already: no extra projection of ours
    assert isinstance(model.image.proj, torch.nn.Identity) and isinstance(model.text.proj, torch.nn.Identity)
    # the towers of one model, none of its other parameters (CLIP's logit_scale): nothing unused under DDP
    names = [n for n, _ in model.named_parameters()]
    assert names.count("logit_scale") == 1 and not any(n.endswith(".logit_scale") for n in names)


def test_tokenizer_is_open_clips_cut_after_the_longest_text():
    cfg = get_config("smoke_contrastive_openclip")
    reference = open_clip.get_tokenizer("ViT-B-32")(TEXTS)  # (3, 77)
    longest = max(len(open_clip.tokenizer.SimpleTokenizer().encode(t)) for t in TEXTS) + 2  # + start, end
    ids = _model(cfg).text.tokenize(TEXTS)["input_ids"]
    assert ids.dtype == torch.long and ids.shape == (3, longest) and longest < 77
    assert torch.equal(ids, reference[:, :longest]) and (reference[:, longest:] == 0).all()
    cfg.text.trim_padding = False
    assert torch.equal(_model(cfg).text.tokenize(TEXTS)["input_ids"], reference)


def test_cut_texts_give_the_embeddings_and_gradients_of_all_77_tokens():
    """The cut batch runs our forward (the causal mask cut to its length); the full batch runs
    open_clip's own TextTransformer.forward. Same weights, so both must agree, gradients too."""
    model = _model()
    model.text.trunk.text.set_grad_checkpointing(False)
    cut = model.text.tokenize(TEXTS)
    full = {"input_ids": open_clip.get_tokenizer("ViT-B-32")(TEXTS)}
    assert cut["input_ids"].shape[1] < full["input_ids"].shape[1] == 77
    outputs, grads = [], []
    for tokens in (cut, full):
        model.zero_grad(set_to_none=True)
        out = model.text(tokens)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.text.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and "trunk.text.positional_embedding" in grads[0]
    for name in grads[0]:
        scale = grads[1][name].abs().max().item()  # fp32 sums of other lengths: rounding only
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5 * scale)
    # positions after the longest text got no gradient in the full run either
    length = cut["input_ids"].shape[1]
    assert (grads[1]["trunk.text.positional_embedding"][length:] == 0).all()


def test_text_models_that_read_padding_are_never_cut():
    cfg = get_config("smoke_contrastive_openclip")
    kwargs = {**TINY_OPEN_CLIP, "text_cfg": {**TINY_OPEN_CLIP["text_cfg"], "pool_type": "last"}}
    cfg.image.kwargs = cfg.text.kwargs = kwargs  # 'last' pooling reads position 77: padding matters
    model = _model(cfg)
    assert not model.text.trunk.trim_padding
    assert model.text.tokenize(TEXTS)["input_ids"].shape == (3, 77)
    with pytest.raises(ValueError, match="needs all 77"):
        model.text({"input_ids": torch.ones(3, 10, dtype=torch.long)})


def test_checkpoint_file_round_trip(tmp_path):
    torch.manual_seed(123)
    reference = open_clip.create_model("ViT-B-32", **TINY_OPEN_CLIP)  # a plain CLIP state dict (converted on load)
    state = reference.state_dict()
    path = tmp_path / "clip_tiny.pt"
    torch.save(state, path)
    cfg = get_config("smoke_contrastive_openclip")
    cfg.image.pretrained_file = cfg.text.pretrained_file = str(path)
    model = _model(cfg)
    assert torch.equal(model.image.trunk.visual.conv1.weight, state["visual.conv1.weight"])
    assert torch.equal(model.image.trunk.visual.proj, state["visual.proj"])
    assert torch.equal(model.text.trunk.text.token_embedding.weight, state["token_embedding.weight"])
    assert torch.equal(model.text.trunk.text.text_projection, state["text_projection"])
    # the same embeddings as open_clip's own model with these weights
    reference.eval()
    model.eval()
    texts = open_clip.get_tokenizer("ViT-B-32")(TEXTS)
    with torch.no_grad():
        ours = model.text(model.text.tokenize(TEXTS))
        torch.testing.assert_close(ours, reference.encode_text(texts), rtol=1e-4, atol=1e-5)
    missing = dataclasses.replace(cfg.image, pretrained_file=str(tmp_path / "absent.pt"))
    with pytest.raises(FileNotFoundError, match="no download"):
        DualEncoder(missing, dataclasses.replace(cfg.text, kind="none"), 32, cfg.data.mean, cfg.data.std)


def test_export_round_trip(tmp_path):
    cfg = get_config("smoke_contrastive_openclip")
    model = _model(cfg).eval()
    out = export_encoder(tmp_path / "enc", model, cfg)
    encoder = load_encoder(out)
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 40), (10, 10, 200))]
    emb = encoder.encode_images(images)
    pixels = torch.from_numpy(np.stack([encoder.preprocess(im) for im in images]))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.image(pixels), dim=-1).numpy()
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
    texts = encoder.encode_texts(TEXTS)
    assert texts.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"channels_last": True, "adamw_impl": "fused"}])
def test_one_train_step(overrides):
    cfg = get_config("smoke_contrastive_openclip")
    cfg.channels_last = overrides.get("channels_last", False)
    cfg.optim.adamw_impl = overrides.get("adamw_impl", "auto")
    comm = Comm(0, 1, torch.device("cpu"))
    state = build_state(cfg, num_classes=5, comm=comm)
    before = state.model.image.trunk.visual.conv1.weight.detach().clone()
    batch = {"pixels": _pixels(8), "valid": torch.ones(8, dtype=torch.int64),
             "labels": torch.arange(8).remainder(5)[:, None], "text_class": torch.arange(8).remainder(5),
             "texts": [TEXTS[i % 3] for i in range(8)]}
    result = train_step(state, batch, comm, measure_flops=True)
    assert result.step == 1 and np.isfinite(result.loss) and state.flops_per_step > 0
    assert not torch.equal(before, state.model.image.trunk.visual.conv1.weight)
