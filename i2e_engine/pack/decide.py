"""Step 1, the global decisions, made on narrow data (per part, then summed by the runner;
only keys, counts and score bins move): the score filter (a threshold, or the exact quantile
of ``keep_top_fraction``), the images of each entity after it, the kept images (which fix
the number of shards), and each image's labels and place in the shuffle."""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional

from i2e_engine.finalize import ExactQuantile
from i2e_engine.pack.plan import PackConfig
from i2e_engine.pack.source import Part, read_pairs

RowKey = tuple[str, int]     # (source_shard, row_in_shard): the engine's key of an input row
Label = tuple[str, float]    # (entity_id, image_entity_score)


def score_bins(part: Part, high_bin: Optional[int] = None) -> Iterator[tuple[int, int]]:
    """(bin, count) of the part's pair scores for :class:`finalize.ExactQuantile`: per high
    bin (pass 1), or, given ``high_bin``, per low bin of the scores inside it (pass 2)."""
    keys = (ExactQuantile.key(pair["image_entity_score"]) for pair in read_pairs(part))
    if high_bin is None:
        counts = collections.Counter(ExactQuantile.high(key) for key in keys)
    else:
        counts = collections.Counter(ExactQuantile.low(key) for key in keys if ExactQuantile.high(key) == high_bin)
    return iter(counts.items())


@dataclass(frozen=True)
class Decisions:
    """The global decisions every part needs: small, except the per-entity counts
    (O(entities), broadcast to the tasks)."""
    threshold: Optional[float]             # pairs scoring below it are dropped
    threshold_reason: str                  # score_below_threshold or score_below_quantile
    entity_counts: Optional[Mapping[str, int]] = None  # images per entity after the score filter
    num_shards: int = 0


def score_decision(config: PackConfig, cutoff: Optional[float]) -> Decisions:
    """The score filter: the fixed threshold, or the quantile's ``cutoff`` (None when not asked)."""
    if config.keep_top_fraction is not None:
        return Decisions(cutoff, "score_below_quantile")
    return Decisions(config.min_image_entity_score, "score_below_threshold")


def label_images(pairs: Iterable[dict], config: PackConfig, decisions: Decisions
                 ) -> tuple[dict[RowKey, list[Label]], collections.Counter]:
    """Each image's kept labels (best rank first) and the dropped pairs by reason. Every pair
    gets one fate, in this order: a repeat of an entity already on the image
    (``duplicate_entity``), the score filter, then, once the per-entity counts are known,
    ``entity_below_min_images`` and ``beyond_max_labels``."""
    by_image: dict[RowKey, list[dict]] = collections.defaultdict(list)
    for pair in pairs:
        by_image[(pair["source_shard"], pair["row_in_shard"])].append(pair)
    labels: dict[RowKey, list[Label]] = {}
    dropped: collections.Counter = collections.Counter()
    counts = decisions.entity_counts
    for key, image_pairs in by_image.items():
        kept: list[Label] = []
        seen: set[str] = set()
        for pair in sorted(image_pairs, key=lambda p: (p["rank"], p["entity_id"])):
            entity, score = pair["entity_id"], pair["image_entity_score"]
            if entity in seen:
                dropped["duplicate_entity"] += 1
            elif decisions.threshold is not None and score < decisions.threshold:
                dropped[decisions.threshold_reason] += 1
            elif counts is not None and counts.get(entity, 0) < config.min_images_per_entity:
                dropped["entity_below_min_images"] += 1
            elif counts is not None and len(kept) >= config.max_labels:
                dropped["beyond_max_labels"] += 1
            else:
                kept.append((entity, score))
            seen.add(entity)
        if kept:
            labels[key] = kept
    return labels, dropped


def entity_image_counts(part: Part, config: PackConfig, decisions: Decisions) -> Iterator[tuple[str, int]]:
    """(entity_id, images of this part carrying it after the score filter); summed over parts
    (an image's pairs are all in its part) this is the count ``min_images_per_entity`` reads."""
    labels, _ = label_images(read_pairs(part), config, decisions)
    return iter(collections.Counter(entity for kept in labels.values() for entity, _ in kept).items())


def kept_image_count(part: Part, config: PackConfig, decisions: Decisions) -> int:
    """Images of this part with a label left after every pair filter (before decoding)."""
    return len(label_images(read_pairs(part), config, decisions)[0])


def with_counts(decisions: Decisions, entity_counts: Mapping[str, int]) -> Decisions:
    return dataclasses.replace(decisions, entity_counts=dict(entity_counts))


def with_shards(decisions: Decisions, kept_images: int, config: PackConfig) -> Decisions:
    """num_shards = ceil(kept images / shard_rows): shards of about shard_rows samples."""
    return dataclasses.replace(decisions, num_shards=math.ceil(kept_images / config.shard_rows))


def order_key(seed: int, image_id: str) -> int:
    """A sample's place in the shuffle: 63 bits of blake2b(seed, image_id) (fits a signed int64)."""
    digest = hashlib.blake2b(f"{seed}\0{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
