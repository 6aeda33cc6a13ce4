"""Image-text retrieval recall on caption sets with several captions per image (COCO style).

Text-to-image: every caption queries all images; a hit at K when its own image is in the
top K. Image-to-text: every image that has captions queries all captions; a hit at K when
any of its captions is in the top K (the rank of its best-ranked caption). Similarity is
the cosine of normalized embeddings, ties broken by ``(-similarity, index)`` as everywhere
in this package. Ranks are counted exactly, chunk by chunk, without sorting.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trainer.eval.retrieval import DEFAULT_CHUNK_BYTES, l2_normalize


def target_ranks(sims: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of column ``targets[i]`` in row ``i`` under ``(-sim, index)``."""
    rows = np.arange(sims.shape[0])
    value = sims[rows, targets][:, None]
    earlier = np.arange(sims.shape[1])[None, :] < targets[:, None]
    return 1 + (sims > value).sum(axis=1) + ((sims == value) & earlier).sum(axis=1)


def caption_retrieval_metrics(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                              caption_image: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5, 10),
                              chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> dict[str, float | int]:
    """``t2i_r{K}`` and ``i2t_r{K}`` (x100, 2 decimals) plus query counts."""
    images, texts = l2_normalize(image_embeddings), l2_normalize(text_embeddings)
    owner = np.asarray(caption_image, dtype=np.int64)
    if owner.shape != (texts.shape[0],):
        raise ValueError("caption_image needs one image index per caption")
    if owner.min() < 0 or owner.max() >= images.shape[0]:
        raise ValueError("caption_image refers to an image that is not in image_embeddings")

    t2i = np.empty(texts.shape[0], dtype=np.int64)
    step = max(1, chunk_bytes // (4 * images.shape[0]))
    for start in range(0, texts.shape[0], step):
        t2i[start:start + step] = target_ranks(texts[start:start + step] @ images.T, owner[start:start + step])

    queried = np.unique(owner)  # images without captions are not image-to-text queries
    i2t = np.empty(queried.shape[0], dtype=np.int64)
    step = max(1, chunk_bytes // (8 * texts.shape[0]))
    for start in range(0, queried.shape[0], step):
        query = queried[start:start + step]
        sims = images[query] @ texts.T
        own = owner[None, :] == query[:, None]
        best = np.argmax(np.where(own, sims, -np.inf), axis=1)  # first index among equal maxima
        i2t[start:start + step] = target_ranks(sims, best)

    metrics: dict[str, float | int] = {}
    for k in ks:
        metrics[f"t2i_r{k}"] = round(float(np.mean(t2i <= k)) * 100.0, 2)
    for k in ks:
        metrics[f"i2t_r{k}"] = round(float(np.mean(i2t <= k)) * 100.0, 2)
    metrics["n_captions"] = int(texts.shape[0])
    metrics["n_images"] = int(images.shape[0])
    metrics["n_image_queries"] = int(queried.shape[0])
    return metrics
