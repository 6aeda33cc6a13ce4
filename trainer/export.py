"""Export a trained encoder: the trainer's side of the exported-encoder format.

The format (card, weight files, how they are checked and read) is the engine's,
:mod:`i2e_engine.encoder.export_format`; this module fills the card from a ``TrainConfig``
and writes through it. Loading is the engine's too (:func:`load_encoder`, re-exported here
for the evaluation and the tests).

    python -m trainer.export --checkpoint <ray checkpoint dir> --out <dir>
"""
from __future__ import annotations

import argparse
import datetime as _dt
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from i2e_engine.encoder.export_format import CARD, write_export
from i2e_engine.encoder.exported import load_encoder
from trainer.checkpoint import CheckpointError, read_meta, safe_load
from trainer.configs import TrainConfig, from_dict, to_dict

# load_encoder is the engine's, named here too: the evaluation and the trainer's users load through this module.
__all__ = ["export_encoder", "export_from_checkpoint", "load_encoder", "main"]


def export_encoder(out_dir: str | Path, model, config: TrainConfig, *, data_manifest: dict | None = None,
                   steps: int = 0, metrics: dict | None = None, name: str | None = None,
                   ema: bool = False) -> Path:
    """Write ``model`` (a trainer.towers.DualEncoder, unwrapped) as an exported encoder."""
    text = getattr(model, "text", None)
    cfg = to_dict(config)
    card = {
        "name": name or config.run_name or config.name, "embed_dim": config.embed_dim,
        "image": {"tower": cfg["image"], "image_size": config.data.image_size,
                  "mean": list(config.data.mean), "std": list(config.data.std)},
        "text": cfg["text"] if text is not None else None,
        "text_template": config.data.text_template,
        "config": cfg, "data_manifest": data_manifest or {}, "steps": int(steps), "metrics": metrics or {},
        "ema": bool(ema), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    return write_export(out_dir, card, model.image.state_dict(), text.state_dict() if text is not None else None)


def export_from_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, use_ema: bool = True) -> Path:
    """Export the encoder of a training checkpoint directory (as written by trainer.loop)."""
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
