"""Embedding an image list once, with a disk cache, so re-running an evaluation is cheap.

The cache file name hashes (encoder cache key, image list fingerprint): the encoder key
changes with its weights, the fingerprint with the root, paths, sizes and mtimes. Files are
written to a temporary name and renamed, so an interrupted run never leaves a truncated
``.npy`` that a later run would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np

from trainer.eval.datasets import ImageList
from trainer.eval.encoders import ImageEncoder

ProgressFn = Callable[[int, int], None]


def default_cache_dir() -> Path:
    """``$MOFI_EVAL_CACHE``, else ``~/.cache/mofi-eval``."""
    return Path(os.environ.get("MOFI_EVAL_CACHE", Path.home() / ".cache" / "mofi-eval"))


def encoder_cache_key(encoder: ImageEncoder) -> str:
    return getattr(encoder, "cache_key", None) or encoder.name


def cache_path(encoder: ImageEncoder, images: ImageList, cache_dir: Path) -> Path:
    key = hashlib.sha256(f"{encoder_cache_key(encoder)}\n{images.fingerprint()}".encode()).hexdigest()[:32]
    return Path(cache_dir) / f"{key}.npy"


def stderr_progress(label: str, every_s: float = 2.0) -> ProgressFn:
    """A progress printer for long encodes: at most one line per ``every_s``, plus the last."""
    start = time.perf_counter()
    last = [float("-inf")]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] >= every_s:
            last[0] = now
            rate = done / max(now - start, 1e-9)
            print(f"  {label}: {done}/{total} images ({rate:.1f} img/s)", file=sys.stderr, flush=True)

    return report


def _batches(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(islice(items, size)):
        yield batch


def embed_images(encoder: ImageEncoder, images: ImageList, cache_dir: Path | None = None,
                 batch_size: int = 64, progress: ProgressFn | None = None) -> np.ndarray:
    """Embeddings (n x d float32, rows L2-normalized) of ``images``; cached when ``cache_dir``."""
    path = cache_path(encoder, images, cache_dir) if cache_dir is not None else None
    if path is not None and path.exists():
        cached = np.load(path)
        if cached.shape[0] == len(images):
            return cached
    chunks = []
    done = 0
    for batch in _batches(images.iter_images(), batch_size):
        out = np.asarray(encoder.encode_images(batch), dtype=np.float32)
        if out.shape[0] != len(batch):
            raise ValueError(f"{encoder.name} returned {out.shape[0]} embeddings for {len(batch)} images")
        chunks.append(out)
        done += len(batch)
        if progress is not None:
            progress(done, len(images))
    embeddings = np.concatenate(chunks)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, embeddings)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps({
            "encoder": encoder.name, "encoder_key": encoder_cache_key(encoder),
            "root": str(images.root.resolve()), "n_images": len(images),
            "dim": int(embeddings.shape[1]),
        }, indent=1))
    return embeddings
