"""The experiment configs. Each full config has a tiny CPU ``smoke_*`` variant.

Full configs follow the MOFI paper's shape (ViT-B/16 image tower, 2M-entity cosine head,
entity-name text tower); their batch/steps are placeholders to be set per cluster.
"""
from __future__ import annotations

from trainer.configs import (DataConfig, ImageTowerConfig, OptimConfig, TaskConfig, TextTowerConfig,
                             TrainConfig)

__all__ = ["supervised_vit_b16", "contrastive_vit_b16", "mofi_vit_b16", "mofi_efficientnet_lite0",
           "contrastive_openclip_vit_b32",
           "smoke_supervised", "smoke_contrastive", "smoke_mofi", "smoke_efficientnet_lite0",
           "smoke_contrastive_openclip"]

_TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
# open_clip model-config keys that shrink an open_clip arch to a tiny CPU model (CLIP's tokenizer, 77 tokens)
TINY_OPEN_CLIP = dict(embed_dim=32,
                      vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
                      text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _full(recipe: str) -> TrainConfig:
    text = TextTowerConfig(kind="none") if recipe == "supervised" else TextTowerConfig(
        kind="bytes", context_length=64, width=512, layers=8, heads=8)
    return TrainConfig(
        name=f"{recipe}_vit_b16", embed_dim=768, total_steps=200_000, precision="bf16",
        checkpoint_every=2000, num_workers=8, use_gpu=True, cpus_per_worker=8,
        data=DataConfig(image_size=224, batch_size=256, shuffle_buffer=8192),
        image=ImageTowerConfig(kind="timm", arch="vit_base_patch16_224", grad_checkpointing=True),
        text=text,
        task=TaskConfig(recipe=recipe, scale=32.0, margin=0.2, sample_rate=1.0),
        optim=OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=10_000, ema_decay=0.0),
    )


def supervised_vit_b16() -> TrainConfig:
    return _full("supervised")


def contrastive_vit_b16() -> TrainConfig:
    return _full("contrastive")


def mofi_vit_b16() -> TrainConfig:
    return _full("mofi")


def mofi_efficientnet_lite0() -> TrainConfig:
    """Fine-tune the engine's offline tower (ImageNet EfficientNet-Lite0) + packaged MiniLM."""
    config = _full("mofi")
    config.name = "mofi_efficientnet_lite0"
    config.embed_dim = 384
    config.image = ImageTowerConfig(kind="efficientnet_lite0", pretrained=True)
    config.text = TextTowerConfig(kind="minilm", context_length=64)
    config.data.mean, config.data.std = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)
    config.optim = OptimConfig(lr=1e-4, head_lr=1e-3, weight_decay=0.05, warmup_steps=1000)
    return config


def contrastive_openclip_vit_b32(pretrained_file: str | None = None) -> TrainConfig:
    """CLIP-style training of open_clip's ViT-B-32 (image and text towers of one open_clip model,
    open_clip's tokenizer, 77 tokens) on the entity texts; random init, or CLIP weights from a
    local checkpoint with --set image.pretrained_file=<file> --set text.pretrained_file=<file>."""
    config = _full("contrastive")
    config.name = "contrastive_openclip_vit_b32"
    config.embed_dim = 512
    config.image = ImageTowerConfig(kind="open_clip", arch="ViT-B-32", pretrained_file=pretrained_file)
    config.text = TextTowerConfig(kind="open_clip", arch="ViT-B-32", pretrained_file=pretrained_file,
                                  context_length=77)
    config.data.mean, config.data.std = OPENAI_MEAN, OPENAI_STD
    config.optim = OptimConfig(lr=5e-4, weight_decay=0.2, betas=(0.9, 0.98), warmup_steps=2000)
    return config


def _smoke(recipe: str) -> TrainConfig:
    text = TextTowerConfig(kind="none") if recipe == "supervised" else TextTowerConfig(
        kind="bytes", context_length=24, width=64, layers=1, heads=2)
    return TrainConfig(
        name=f"smoke_{recipe}", embed_dim=32, total_steps=12, seed=0, precision="fp32",
        checkpoint_every=4, log_every=1, keep_checkpoints=2, num_workers=2, use_gpu=False,
        cpus_per_worker=0.5, max_failures=1,
        data=DataConfig(image_size=32, batch_size=8, augment=True, shuffle_buffer=16),
        image=ImageTowerConfig(kind="timm", arch="vit_tiny_patch16_224", kwargs=dict(_TINY_VIT)),
        text=text,
        task=TaskConfig(recipe=recipe, scale=16.0, margin=0.1, logits_chunk=3),
        optim=OptimConfig(lr=2e-3, weight_decay=0.01, warmup_steps=2, clip_grad_norm=1.0),
    )


def smoke_supervised() -> TrainConfig:
    return _smoke("supervised")


def smoke_contrastive() -> TrainConfig:
    return _smoke("contrastive")


def smoke_mofi() -> TrainConfig:
    config = _smoke("mofi")
    config.task.contrastive_weight = 0.5
    config.optim.ema_decay = 0.9
    return config


def smoke_efficientnet_lite0() -> TrainConfig:
    config = _smoke("mofi")
    config.name = "smoke_efficientnet_lite0"
    config.image = ImageTowerConfig(kind="efficientnet_lite0", pretrained=True)
    config.data.image_size = 64
    config.data.mean, config.data.std = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)
    config.optim.lr = 1e-4
    config.optim.head_lr = 2e-3
    return config


def smoke_contrastive_openclip() -> TrainConfig:
    """The open_clip towers path at CPU size: ViT-B-32 shrunk by :data:`TINY_OPEN_CLIP`."""
    config = _smoke("contrastive")
    config.name = "smoke_contrastive_openclip"
    config.embed_dim = 32
    config.image = ImageTowerConfig(kind="open_clip", arch="ViT-B-32", kwargs=dict(TINY_OPEN_CLIP))
    config.text = TextTowerConfig(kind="open_clip", arch="ViT-B-32", kwargs=dict(TINY_OPEN_CLIP), context_length=77)
    config.data.mean, config.data.std = OPENAI_MEAN, OPENAI_STD
    return config
