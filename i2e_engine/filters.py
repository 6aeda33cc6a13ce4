"""Annotation filters. Every dropped annotation comes back as a reject row with its reason,
so a user can see what each threshold cost and change it without rerunning the models
(all scores are kept in the ``annotations`` work table)."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from i2e_engine.config import FilterConfig
from i2e_engine.records import make_reject

STAGE = "filter"


def cutoff_index(total: int, keep_fraction: float) -> Optional[int]:
    """Index, in ascending order of ``total`` scores, of the score at or above which the top
    ``keep_fraction`` lie (ties at it are kept); None when there are no scores. The one rule
    behind the cutoff, whether computed from all scores or from counts per bin."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if total == 0:
        return None
    return total - int(np.ceil(keep_fraction * total - 1e-9))


def cutoff_for_top_fraction(scores: Sequence[float], keep_fraction: float) -> float:
    """The score at or above which the top ``keep_fraction`` of ``scores`` lie, by sorting
    them (``finalize.ExactQuantile`` finds the same value from counts, on any runner).

    ``scores`` may be every score or a fine, evenly spaced quantile summary of them; ties at
    the cutoff are kept.
    """
    values = np.sort(np.asarray(scores, dtype=np.float64))
    index = cutoff_index(values.size, keep_fraction)
    return float("-inf") if index is None else float(values[index])


def _drop(record: dict, links: list[dict], reason: str, detail: str) -> list[dict]:
    return [make_reject(record, STAGE, reason, detail.format(**link), kind="filtered",
                        entity_id=link["entity_id"]) for link in links]


def filter_links(record: dict, config: FilterConfig,
                 score_cutoff: Optional[float] = None) -> tuple[list[dict], list[dict]]:
    """Apply the per-image filters to one annotation: fixed threshold, global quantile
    cutoff (computed beforehand over all scores), then top-k by score.

    Returns (kept links best-first, reject rows for dropped links).
    """
    links = sorted(record["links"], key=lambda l: (-l["image_entity_score"], l["entity_id"]))
    rejects: list[dict] = []
    if config.min_score is not None:
        low = [l for l in links if l["image_entity_score"] < config.min_score]
        rejects += _drop(record, low, "below_threshold",
                         "score {image_entity_score:.4f} < min_score " + f"{config.min_score}")
        links = [l for l in links if l["image_entity_score"] >= config.min_score]
    if score_cutoff is not None:
        low = [l for l in links if l["image_entity_score"] < score_cutoff]
        rejects += _drop(record, low, "below_quantile",
                         "score {image_entity_score:.4f} < cutoff " + f"{score_cutoff:.4f} "
                         f"(keep_top_fraction={config.keep_top_fraction})")
        links = [l for l in links if l["image_entity_score"] >= score_cutoff]
    if config.top_k_per_image is not None:
        rejects += _drop(record, links[config.top_k_per_image:], "beyond_top_k",
                         "not in the image's top " + f"{config.top_k_per_image}")
        links = links[:config.top_k_per_image]
    return links, rejects


def drop_rare_entities(record: dict, links: list[dict], entity_counts: Mapping[str, int],
                       min_images: int) -> tuple[list[dict], list[dict]]:
    """Drop links to entities that have fewer than ``min_images`` kept images overall."""
    rare = [l for l in links if entity_counts.get(l["entity_id"], 0) < min_images]
    kept = [l for l in links if entity_counts.get(l["entity_id"], 0) >= min_images]
    rejects = [make_reject(record, STAGE, "entity_too_rare",
                           f"{entity_counts.get(l['entity_id'], 0)} images < min_images_per_entity {min_images}",
                           kind="filtered", entity_id=l["entity_id"]) for l in rare]
    return kept, rejects
