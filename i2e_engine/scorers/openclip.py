"""open_clip scorer: any open_clip architecture, with weights that are already on disk.

Weights are resolved before open_clip is called: a checkpoint file path, a pretrained tag
found in the local caches, or an ``hf-hub:`` / ``local-dir:`` model name whose files are
local. open_clip itself would try to download a missing tag and, on a machine without
network, sit in connection retries; here a missing file raises ScorerWeightsMissing at
once, and open_clip then runs with the Hugging Face Hub switched to offline as a second
guard. Random initialization is possible only when asked for by name
(``allow_random_init``), because a silently random scorer would write plausible-looking
but meaningless scores.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from i2e_engine.config import ScorerConfig
from i2e_engine.scorers.base import (DEFAULT_TEXT_CACHE_SIZE, Scorer, ScorerWeightsMissing,
                                     hub_offline, register_scorer, resolve_device)

RANDOM_INIT_SEED = 0  # random-init models are seeded so plumbing tests are reproducible
_HOW_TO_SUPPLY = (
    "This machine cannot download weights. Pass a local checkpoint file as `pretrained` "
    "(with `i2e build`: --scorer open_clip --pretrained /path/to/open_clip_pytorch_model.bin), use "
    "'local-dir:/path/to/folder' as the arch, or copy the weights into the cache first "
    "(Hugging Face cache: $HF_HUB_CACHE, default ~/.cache/huggingface/hub; OpenAI URLs: ~/.cache/clip)."
)


@dataclass(frozen=True)
class ResolvedWeights:
    """Where an open_clip model's weights come from, decided without touching the network."""

    identity: str                        # provenance: arch + tag/file hash/hub commit
    checkpoint: Optional[str] = None     # local file passed to open_clip as `pretrained`
    tag_cfg: dict = field(default_factory=dict)  # the tag's preprocessing and quick_gelu
    random_init: bool = False            # only ever True when allow_random_init was passed


def file_sha256(path: str | Path, prefix_chars: int = 16) -> str:
    """Leading hex digits of a file's sha256: identifies a checkpoint by content, not name."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:prefix_chars]


def _cached_hub_file(repo_id: str, filenames: list[str], cache_dir: Optional[str]) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str):  # None: not cached; a sentinel: known absent upstream
            return found
    return None


def _hub_weight_names(filename: str) -> list[str]:
    """open_clip's order: a safetensors twin first, then the named file."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _resolve_tag(arch: str, tag: str, cache_dir: Optional[str]) -> ResolvedWeights:
    import open_clip
    from open_clip.constants import HF_WEIGHTS_NAME

    tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not tag_cfg:
        known = open_clip.list_pretrained_tags_by_model(arch)
        raise ScorerWeightsMissing(
            f"open_clip pretrained={tag!r} for arch {arch!r} is neither an existing file nor a "
            f"known tag (known tags: {known or 'none'}). {_HOW_TO_SUPPLY}")
    candidates: list[str] = []
    if tag_cfg.get("file"):
        candidates.append(tag_cfg["file"])
    if tag_cfg.get("hf_hub"):
        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        found = _cached_hub_file(repo_id, _hub_weight_names(filename or HF_WEIGHTS_NAME), cache_dir)
        if found:
            candidates.append(found)
    if tag_cfg.get("url"):
        clip_cache = cache_dir or os.path.expanduser("~/.cache/clip")
        candidates.append(os.path.join(clip_cache, os.path.basename(tag_cfg["url"])))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return ResolvedWeights(f"open_clip:{arch}:{tag}", candidate, tag_cfg)
    raise ScorerWeightsMissing(
        f"open_clip weights for arch {arch!r}, pretrained tag {tag!r} are not in the local cache "
        f"(looked for hub {tag_cfg.get('hf_hub') or '-'} and url {tag_cfg.get('url') or '-'}). "
        f"{_HOW_TO_SUPPLY}")


def _resolve_schema(arch: str, cache_dir: Optional[str]) -> ResolvedWeights:
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.factory import parse_model_name

    schema, identifier = parse_model_name(arch)
    if schema == "hf-hub":
        config = _cached_hub_file(identifier, ["open_clip_config.json"], cache_dir)
        weights = _cached_hub_file(identifier, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME], cache_dir)
        if not (config and weights):
            raise ScorerWeightsMissing(
                f"open_clip model {arch!r}: config or weights not in the local Hugging Face cache. "
                f"{_HOW_TO_SUPPLY}")
        return ResolvedWeights(f"open_clip:{arch}@{Path(weights).parent.name}")
    folder = Path(identifier).expanduser()
    weight_files = sorted(p for pattern in ("*.safetensors", "*.bin", "*.pth")
                          for p in folder.glob(pattern))
    if not (folder / "open_clip_config.json").is_file() or not weight_files:
        raise ScorerWeightsMissing(
            f"open_clip model {arch!r}: expected open_clip_config.json and a weights file "
            f"(*.safetensors, *.bin or *.pth) in {folder}. {_HOW_TO_SUPPLY}")
    hashes = "+".join(f"{p.name}:{file_sha256(p)}" for p in weight_files)
    return ResolvedWeights(f"open_clip:{arch}:{hashes}")


def resolve_openclip_weights(arch: str, pretrained: Optional[str], allow_random_init: bool = False,
                             cache_dir: Optional[str] = None) -> ResolvedWeights:
    """Decide, offline and fast, which local weights ``arch`` + ``pretrained`` mean.

    Raises ScorerWeightsMissing when they are not on this machine.
    """
    import open_clip
    from open_clip.factory import parse_model_name

    if parse_model_name(arch)[0] is not None:
        if pretrained:
            raise ValueError(f"arch {arch!r} names its own weights; leave `pretrained` empty")
        return _resolve_schema(arch, cache_dir)
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip arch {arch!r}; known: {open_clip.list_models()}")
    if not pretrained:
        if allow_random_init:
            return ResolvedWeights(f"open_clip:{arch}:random-init-seed{RANDOM_INIT_SEED}",
                                   random_init=True)
        raise ScorerWeightsMissing(
            f"open_clip arch {arch!r} has no `pretrained` weights set, and random "
            f"initialization was not allowed (allow_random_init=True is for plumbing tests "
            f"only). {_HOW_TO_SUPPLY}")
    path = os.path.expanduser(pretrained)
    if os.path.isfile(path):
        return ResolvedWeights(f"open_clip:{arch}:file:{Path(path).name}:sha256-{file_sha256(path)}", path)
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz")):
        raise ScorerWeightsMissing(
            f"open_clip checkpoint file {pretrained!r} for arch {arch!r} does not exist. {_HOW_TO_SUPPLY}")
    return _resolve_tag(arch, pretrained, cache_dir)


class OpenClipScorer(Scorer):
    """Any open_clip model, scored with its own preprocess and tokenizer; autocast on cuda."""

    def __init__(self, arch: str = "ViT-B-32", pretrained: Optional[str] = None,
                 device: str = "auto", batch_size: int = 32, allow_random_init: bool = False,
                 cache_dir: Optional[str] = None, text_cache_size: int = DEFAULT_TEXT_CACHE_SIZE):
        import open_clip

        super().__init__(batch_size=batch_size, text_cache_size=text_cache_size)
        self.device = resolve_device(device)
        self.arch = arch
        weights = resolve_openclip_weights(arch, pretrained, allow_random_init, cache_dir)
        tag_cfg = weights.tag_cfg
        try:
            with hub_offline(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch,
                    pretrained=weights.checkpoint,
                    device=self.device,
                    weights_only=True,
                    require_pretrained=not weights.random_init,
                    force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                    image_mean=tag_cfg.get("mean"),
                    image_std=tag_cfg.get("std"),
                    image_interpolation=tag_cfg.get("interpolation"),
                    image_resize_mode=tag_cfg.get("resize_mode"),
                    cache_dir=cache_dir,
                )
                self.tokenizer = open_clip.get_tokenizer(arch, cache_dir=cache_dir)
        except OSError as error:  # a tower's config or tokenizer not in the HF cache
            raise ScorerWeightsMissing(f"open_clip model {arch!r}: {error}. {_HOW_TO_SUPPLY}") from error
        self.model = model.eval()
        self.preprocess = preprocess
        self.name = weights.identity
        self.dim = int(self._encode_texts([""]).shape[-1])

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cuda", enabled=self.device.startswith("cuda"))

    @torch.inference_mode()
    def _encode_images(self, images: list[Image.Image]) -> np.ndarray:
        batch = torch.stack([self.preprocess(im if im.mode == "RGB" else im.convert("RGB"))
                             for im in images]).to(self.device)
        with self._autocast():
            features = self.model.encode_image(batch)
        return features.float().cpu().numpy()

    @torch.inference_mode()
    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts).to(self.device)
        with self._autocast():
            features = self.model.encode_text(tokens)
        return features.float().cpu().numpy()


@register_scorer("open_clip")
def _create_open_clip(config: ScorerConfig, **kwargs) -> OpenClipScorer:
    return OpenClipScorer(arch=config.arch, pretrained=config.pretrained, device=config.device,
                          batch_size=config.batch_size, **kwargs)
