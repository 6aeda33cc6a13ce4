"""Packed shards -> this rank's decoded, augmented torch batches, with the text each sample's
contrastive loss reads and the position to resume from.

- Order and resume: :class:`trainer.packed.RankStream` (seeded shard permutation per epoch,
  rank r takes every W-th shard, shuffle buffer, fixed batches per epoch, exact resume from a
  :class:`trainer.packed.Position`).
- Decoding runs in a thread pool inside the rank (``data.decode_threads``; 0: the worker's
  CPUs), so there is no separate pool of Ray CPU tasks that a worker could starve. JPEGs are
  decoded at a reduced DCT scale (``Image.draft``, never below ``image_size`` a side) under the
  engine's size/bomb limits, then augmented (:func:`transform`) with an RNG seeded by
  (seed, epoch, sample key). At most ``data.prefetch_batches`` batches are in flight.
- A bad image stays in its batch with ``valid=0`` and zero pixels (counted, masked from every
  loss), so batch size and order never shift.
- Labels: the image's class ids (best rank first) up to ``data.max_labels``, -1 padded. The
  text entity is drawn among those (``data.text_entity="sampled"``, RNG seeded by (seed,
  epoch, key); ``entity_balanced`` weights each by 1/image_count of its class) or is the
  first; its text is ``data.text_template`` over {name}, {description}, {alt_text}.
"""
from __future__ import annotations

import hashlib
import math
import queue
import string
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
from PIL import Image

from i2e_engine.encoder.export_format import center_crop
from i2e_engine.images import ImageLimits, decode_rgb
from trainer.packed import PackedDataset, Position, RankStream

TEXT_FIELDS = ("name", "description", "alt_text")
TEXT_ENTITY = ("sampled", "first")
_LIMITS = ImageLimits()


def template_fields(template: str) -> list[str]:
    """The fields of a ``str.format`` template; ValueError on unknown ones or format specs."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"text_template {template!r}: {error}") from error
    fields = [f for _, f, _, _ in parts if f is not None]
    bad = [f for f in fields if f not in TEXT_FIELDS]
    if bad or not fields:
        raise ValueError(f"text_template {template!r}: fields must be among {{{'}, {'.join(TEXT_FIELDS)}}}"
                         + (f", got {bad}" if bad else ", none given"))
    if any(spec or conv for _, f, spec, conv in parts if f is not None):
        raise ValueError(f"text_template {template!r}: format specs and conversions are not allowed")
    return fields


def render_text(template: str, values: dict) -> str:
    """``template`` filled from ``values``; an empty field takes the literal text before it with
    it (its separator), or for the first field the literal after it, so "{name}, {description}"
    is just "Leopard" when the description is empty."""
    parts = list(string.Formatter().parse(template))
    pieces: list[str] = []
    drop_next = False
    for i, (literal, field_name, _, _) in enumerate(parts):
        value = values.get(field_name, "") if field_name is not None else None
        keep_literal = not drop_next and not (field_name is not None and not value and i > 0)
        drop_next = field_name is not None and not value and i == 0
        if keep_literal:
            pieces.append(literal)
        if value:
            pieces.append(value)
    return "".join(pieces).strip()


def _key_int(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)


def sample_rng(seed: int, epoch: int, key: str, stream: int) -> np.random.Generator:
    """Per-sample RNG: stream 0 augments, stream 1 draws the text entity."""
    return np.random.default_rng([seed, epoch, _key_int(key), stream])


def choose_entity(labels: list[int], rng: np.random.Generator, mode: str,
                  image_count: np.ndarray | None = None) -> int:
    """The text entity among ``labels`` (class ids): the first, or drawn uniformly, or with
    probability proportional to 1/image_count of the class (``image_count`` given)."""
    if mode == "first" or len(labels) == 1:
        return labels[0]
    if image_count is None:
        return labels[int(rng.integers(len(labels)))]
    weights = 1.0 / np.maximum(image_count[labels].astype(np.float64), 1.0)
    return labels[int(rng.choice(len(labels), p=weights / weights.sum()))]

# ------------------------------------------------------------------------ decode + augment


def decode_image(data: bytes | None, size: int) -> Image.Image:
    """RGB image under the engine's limits; a JPEG decodes at the smallest DCT scale that
    keeps both sides >= ``size`` (``decode_rgb``'s ``min_side``)."""
    return decode_rgb(data, _LIMITS, min_side=size)


def _random_resized_crop(w: int, h: int, rng: np.random.Generator, scale) -> tuple[float, float, float, float]:
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if cw <= w and ch <= h:
            x, y = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return x, y, x + cw, y + ch
    side = min(w, h)
    return (w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2


def transform(image: Image.Image, size: int, augment: bool, rng: np.random.Generator | None,
              crop_scale=(0.35, 1.0)) -> np.ndarray:
    """Train: random resized crop + flip. Eval: shorter side to ``size``, center crop. -> uint8 HWC."""
    if not augment:
        return center_crop(image, size)
    w, h = image.size
    out = image.resize((size, size), Image.BILINEAR, box=_random_resized_crop(w, h, rng, crop_scale))
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def decode_sample(data: bytes | None, size: int, augment: bool, crop_scale, rng) -> np.ndarray | None:
    """uint8 HWC pixels, or None for an image that cannot be used."""
    try:
        return transform(decode_image(data, size), size, augment, rng, crop_scale)
    except Exception:  # ImageRejected or anything a broken file throws: the row is masked
        return None

# ------------------------------------------------------------------------------ the loader


class Loader:
    """This rank's batches: dicts of ``pixels`` (uint8 NHWC), ``labels`` (N, max_labels, -1
    padded), ``valid``, ``text_class`` (N,) torch tensors, plus ``texts`` and ``keys`` (lists)
    and ``position`` (the :class:`Position` dict after this batch, to store in a checkpoint)."""

    def __init__(self, ds: PackedDataset, data_cfg, *, seed: int, rank: int, world: int,
                 position: Position | dict | None = None, threads: int = 1):
        template_fields(data_cfg.text_template)
        if data_cfg.text_entity not in TEXT_ENTITY:
            raise ValueError(f"data.text_entity {data_cfg.text_entity!r} not in {TEXT_ENTITY}")
        if isinstance(position, dict):
            position = Position.from_dict(position)
        self.ds, self.cfg, self.seed, self.threads = ds, data_cfg, seed, max(1, int(threads))
        self.stream = RankStream(ds, seed=seed, rank=rank, world=world, batch_size=data_cfg.batch_size,
                                 buffer_size=data_cfg.shuffle_buffer, position=position)

    def _meta(self, sample: dict, epoch: int) -> tuple[list[int], int, str]:
        cfg = self.cfg
        labels = [int(c) for c in sample["class_ids"][:cfg.max_labels]]
        balanced = self.ds.image_count if cfg.entity_balanced else None
        chosen = choose_entity(labels, sample_rng(self.seed, epoch, sample["key"], 1), cfg.text_entity, balanced)
        text = render_text(cfg.text_template, {"name": self.ds.names[chosen],
                                               "description": self.ds.descriptions[chosen],
                                               "alt_text": sample.get("alt_text") or ""})
        return labels + [-1] * (cfg.max_labels - len(labels)), chosen, text

    def _produce(self, pool: ThreadPoolExecutor, out: queue.Queue, stop: threading.Event) -> None:
        cfg = self.cfg
        try:
            for raw, position in self.stream:
                meta = [self._meta(s, position.epoch) for s in raw]
                futures = [pool.submit(decode_sample, s["jpg"], cfg.image_size, cfg.augment, tuple(cfg.crop_scale),
                                       sample_rng(self.seed, position.epoch, s["key"], 0)) for s in raw]
                item = ([s["key"] for s in raw], meta, futures, position)
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as error:  # handed to the consumer, raised there
            out.put(error)

    def __iter__(self) -> Iterator[dict]:
        import torch
        cfg = self.cfg
        out: queue.Queue = queue.Queue(maxsize=max(1, cfg.prefetch_batches))
        stop = threading.Event()
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        producer = threading.Thread(target=self._produce, args=(pool, out, stop), daemon=True)
        producer.start()
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                keys, meta, futures, position = item
                pixels = np.zeros((len(keys), cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
                valid = np.ones(len(keys), dtype=np.int64)
                for i, future in enumerate(futures):
                    result = future.result()
                    if result is None:
                        valid[i] = 0
                    else:
                        pixels[i] = result
                yield {"pixels": torch.from_numpy(pixels), "valid": torch.from_numpy(valid),
                       "labels": torch.tensor([m[0] for m in meta], dtype=torch.int64),
                       "text_class": torch.tensor([m[1] for m in meta], dtype=torch.int64),
                       "texts": [m[2] for m in meta], "keys": keys, "position": position.to_dict()}
        finally:
            stop.set()
            while producer.is_alive():
                try:
                    out.get(timeout=0.1)
                except queue.Empty:
                    pass
            pool.shutdown(wait=True, cancel_futures=True)
