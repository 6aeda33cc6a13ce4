"""The project's own trained MOFI encoder as the image-entity scorer (``--scorer mofi:PATH``).

This closes the paper's loop: ``i2e build`` writes I2E tables, ``trainer/`` trains a MOFI
encoder on them, ``trainer.export`` writes it as an exported-encoder directory, and the
next build scores its image-entity pairs with that encoder's image and text towers.

The export is a directory (``model_card.json`` + ``image_tower.pt`` + ``text_tower.pt``;
the format is :mod:`i2e_engine.encoder.export_format`, which the trainer writes through),
given as a local path or as a URI on any storage the engine reads (``s3://``, ``gs://`` ...),
which is copied once into ``$I2E_CACHE/mofi/`` (default ``~/.cache/i2e``); the card's file
names are checked before anything is fetched. The weights are loaded by
:func:`i2e_engine.encoder.exported.load_encoder` with ``torch.load(..., weights_only=True)``.

Image-entity scoring needs the text tower: an export without one (a supervised-only
model) is refused when the scorer is resolved, before any work.

The scorer's name is the export's identity, e.g.
``mofi:smoke_mofi@step12:image_tower.pt:sha256-…+text_tower.pt:sha256-…+model_card.json:sha256-…``:
the readable part is the card's name and training step, the rest the content hashes of
the weight files and of the card fields that shape an embedding (towers, embedding width,
preprocessing). It goes into the annotation fingerprint, so new weights (even at the same
path) are never mixed with annotations made by other ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import string
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from i2e_engine import storage
from i2e_engine.config import ScorerConfig
from i2e_engine.encoder.export_format import CARD, EMBEDDING_CARD_FIELDS, parse_card, weight_files
from i2e_engine.scorers.base import (DEFAULT_TEXT_CACHE_SIZE, Scorer, ScorerWeightsMissing,
                                     hub_offline, register_scorer, resolve_device)

log = logging.getLogger(__name__)

# The engine's entity-text modes and the trainer's text templates that produce the same kind of text.
_ENTITY_FIELDS_OF_MODE = {"name": {"name"}, "name_description": {"name", "description"}}


def entity_fields_of_template(template: str) -> set[str]:
    """The entity fields a trainer text template uses (``"{name}, {description}. {alt_text}"``
    -> name, description): what the build's entity texts should hold to match training.
    The image's alt-text is not an entity field; the build scores entity texts without it."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field} - {"alt_text"}
_HOW_TO_EXPORT = ("Export a trained encoder with `python -m trainer.export --checkpoint <step dir> --out <dir>` "
                  "(or train with --export-dir) and pass that directory: --scorer mofi:<dir>.")


class NoTextTower(ValueError):
    """The export has an image tower only; image-entity scores need a text tower too."""


@dataclass(frozen=True)
class ResolvedExport:
    """An exported encoder found on this machine, with its identity."""

    identity: str      # provenance: card name, step, content hashes (the scorer's name)
    local_dir: Path    # the export itself, or its copy in the local cache
    card: dict


def _sha256(path: Path, prefix_chars: int = 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:prefix_chars]


def _scoring_card(text: str, where: str) -> tuple[dict, list[str]]:
    """The checked card (:func:`export_format.parse_card`) and its weight files, refusing an
    export that cannot score image-entity pairs (no text tower)."""
    card = parse_card(text, where)
    if not card.get("text") or not card["files"].get("text"):
        raise NoTextTower(
            f"exported encoder {where} (name {card.get('name')!r}) has no text tower: it was trained "
            f"image-only (e.g. a supervised recipe), and image-entity scoring needs the text tower to "
            f"embed the entity texts. Export a model trained with a text tower (recipe mofi or "
            f"contrastive) to use it as the build's scorer.")
    return card, weight_files(card)


def _fetch_remote(uri: str, cache_root: Path) -> Path:
    """Copy a remote export's card and weight files into the local cache (once per version).

    The cache folder is named by the URI and the files' storage versions (size + ETag),
    so a replaced export is fetched again; a complete copy is published by a rename, so
    concurrent workers on one machine never read a half-written one.
    """
    card_uri = storage.join(uri, CARD)
    if not storage.isfile(card_uri):
        raise ScorerWeightsMissing(f"exported MOFI encoder {uri!r}: {card_uri} does not exist. {_HOW_TO_EXPORT}")
    card_bytes = storage.read_bytes(card_uri)
    _, names = _scoring_card(card_bytes.decode("utf-8"), repr(uri))
    missing = [n for n in names if not storage.isfile(storage.join(uri, n))]
    if missing:
        raise ScorerWeightsMissing(f"exported MOFI encoder {uri!r}: weight files {missing} are missing")
    key = hashlib.sha256("\n".join([uri, hashlib.sha256(card_bytes).hexdigest()]
                                   + [f"{n}\t{storage.identity(storage.join(uri, n))}" for n in names]
                                   ).encode()).hexdigest()[:16]
    target = cache_root / key
    if (target / CARD).is_file() and all((target / n).is_file() for n in names):
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = cache_root / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        for name in names:
            fs, path = storage.filesystem(storage.join(uri, name))
            fs.get_file(path, str(staging / name))
        (staging / CARD).write_bytes(card_bytes)   # last: the card marks a complete copy
        try:
            staging.rename(target)
        except OSError:
            if not (target / CARD).is_file():      # not another worker's complete copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_mofi_export(uri: Optional[str], cache_root: Optional[Path] = None) -> ResolvedExport:
    """Find the export at ``uri`` (fetching a remote one into the cache), check that it can
    score image-entity pairs, and compute its identity. Loads no model.

    Raises ScorerWeightsMissing when it is not there, NoTextTower (a ValueError) for an
    image-only export, ValueError for another format.
    """
    if not uri:
        raise ScorerWeightsMissing(f"the mofi scorer needs an exported encoder directory. {_HOW_TO_EXPORT}")
    uri = storage.normalize(uri)
    if storage.is_local(uri):
        local = Path(uri)
        if not local.is_dir():
            raise ScorerWeightsMissing(f"exported MOFI encoder {uri!r} does not exist or is not a directory. "
                                       f"{_HOW_TO_EXPORT}")
        if not (local / CARD).is_file():
            raise ScorerWeightsMissing(f"{uri!r} is not an exported MOFI encoder (no {CARD}). {_HOW_TO_EXPORT}")
    else:
        local = _fetch_remote(uri, cache_root or storage.local_cache() / "mofi")
    card, names = _scoring_card((local / CARD).read_text(), repr(uri))
    missing = [n for n in names if not (local / n).is_file()]
    if missing:
        raise ScorerWeightsMissing(f"exported MOFI encoder {uri!r}: weight files {missing} are missing")
    embedding_fields = {k: card.get(k) for k in EMBEDDING_CARD_FIELDS}
    card_hash = hashlib.sha256(json.dumps(embedding_fields, sort_keys=True).encode()).hexdigest()[:16]
    hashes = "+".join(f"{n}:sha256-{_sha256(local / n)}" for n in names)
    identity = f"mofi:{card.get('name')}@step{card.get('steps', 0)}:{hashes}+{CARD}:sha256-{card_hash}"
    return ResolvedExport(identity, local, card)


class MofiScorer(Scorer):
    """An exported MOFI encoder: its image tower embeds images, its text tower entity texts."""

    def __init__(self, path: Optional[str], device: str = "auto", batch_size: int = 32,
                 entity_text_mode: Optional[str] = None, cache_root: Optional[Path] = None,
                 text_cache_size: int = DEFAULT_TEXT_CACHE_SIZE):
        from i2e_engine.encoder.exported import load_encoder   # lazily: torch, timm

        super().__init__(batch_size=batch_size, text_cache_size=text_cache_size)
        self.device = resolve_device(device)
        export = resolve_mofi_export(path, cache_root)
        with hub_offline():   # a MiniLM text tower reads its packaged config; never the hub
            self.encoder = load_encoder(export.local_dir, device=self.device, batch_size=batch_size)
        if not self.encoder.has_text_tower:   # resolve_mofi_export checked the card already
            raise NoTextTower(f"exported encoder {path!r} has no text tower; image-entity scoring needs one")
        self.name = export.identity
        self.card = export.card
        self.dim = int(self.encoder.embed_dim)
        template = self.card.get("text_template")
        if entity_text_mode and template and \
                _ENTITY_FIELDS_OF_MODE.get(entity_text_mode) != entity_fields_of_template(template):
            log.warning("the MOFI encoder %s was trained on entity texts %r but the build scores %r texts "
                        "(--entity-text); scores may be off", self.card.get("name"), template, entity_text_mode)

    def _encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.encoder.encode_images(images)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode_texts(texts)


@register_scorer("mofi")
def _create_mofi(config: ScorerConfig, **kwargs) -> MofiScorer:
    return MofiScorer(config.pretrained, device=config.device, batch_size=config.batch_size,
                      entity_text_mode=config.entity_text, **kwargs)
