"""Recipes as one task object that returns named losses; the total is their configured
weighted sum (supervised: cosine-softmax over entities; contrastive: duplicate-aware CLIP
against each sample's text, made from its ``text_class`` entity; mofi: both)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.configs import TrainConfig
from trainer.dist import Comm
from trainer.heads import ShardedCosineHead
from trainer.losses import contrastive_loss

RECIPES = ("supervised", "contrastive", "mofi")


class Task:
    def __init__(self, cfg: TrainConfig, num_classes: int, comm: Comm, device="cpu"):
        if cfg.task.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {cfg.task.recipe!r}; known: {RECIPES}")
        self.cfg, self.comm = cfg, comm
        self.recipe = cfg.task.recipe
        self.uses_head = self.recipe in ("supervised", "mofi")
        self.uses_text = self.recipe in ("contrastive", "mofi")
        if self.uses_text and cfg.text.kind == "none":
            raise ValueError(f"recipe {self.recipe!r} needs a text tower (text.kind bytes | minilm)")
        self.head = (ShardedCosineHead(num_classes, cfg.embed_dim, comm.rank, comm.world, cfg.seed).to(device)
                     if self.uses_head else None)
        # bf16 operands (fp32 accumulation) for the head's logits matmuls: the CUDA bf16 path
        self.lowp = torch.device(device).type == "cuda" and cfg.precision == "bf16"
        self.weights = {"supervised": cfg.task.supervised_weight if self.recipe == "mofi" else 1.0,
                        "contrastive": cfg.task.contrastive_weight if self.recipe == "mofi" else 1.0}

    def losses(self, model, batch: dict, tokens: dict | None, generator: torch.Generator | None = None):
        """-> (weighted total, {task name: loss}) for one local batch."""
        t = self.cfg.task
        image, text, logit_scale = model(batch["pixels"], tokens if self.uses_text else None)
        image = F.normalize(image.float(), dim=-1)
        labels, valid = batch["labels"], batch["valid"].float()
        named = {}
        if self.uses_head:
            feats_all = self.comm.all_gather_grad(image)
            named["supervised"] = self.head(
                feats_all, self.comm.all_gather(labels), self.comm.all_gather(valid), scale=t.scale,
                margin=t.margin, chunk=t.logits_chunk, sample_rate=t.sample_rate, comm=self.comm,
                generator=generator, lowp=self.lowp)
        if self.uses_text:
            text = F.normalize(text.float(), dim=-1)
            scale = logit_scale.float().exp().clamp(max=t.max_logit_scale)
            named["contrastive"] = contrastive_loss(image, text, labels, batch["text_class"], valid, scale,
                                                    self.comm)
        total = sum(self.weights[name] * loss for name, loss in named.items())
        return total, named
