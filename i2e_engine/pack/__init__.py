"""`i2e pack`: I2E tables -> globally shuffled, resized training shards with integer class ids.

The format is ``schemas/`` tables ``packed`` and ``vocab`` (schema v5) plus ``index.json``;
the trainer's loader reads nothing else. A pack at ``P`` (any URI) holds ``P/index.json``
(written last: its presence means the pack is complete), ``P/vocab.parquet`` and
``P/shards/NNNNN.tar`` (webdataset) or ``.parquet``.

The unit of work is a *table part*: the ``images`` and ``image_entities`` files the engine
wrote for one input shard (same file name in both folders, so all pairs of an image are in
the part that holds its bytes). Runners only place the steps below; every decision is here.

1. **Decide, on narrow data** (per part, then summed; only keys, counts and score bins
   move): the exact score quantile of ``keep_top_fraction`` (``finalize.ExactQuantile``'s
   two passes of bin counts, so every runner finds the same cutoff), the distinct images
   of each entity after the score filter (a group-by, O(entities)), and the kept images
   after every pair filter, which fixes ``num_shards = ceil(kept / shard_rows)``.
2. **Stage** (pass 1, one task per part): the part's image rows are read in batches of
   READ_BATCH_ROWS, images with a surviving entity are decoded with the engine's safe
   decoder (JPEGs at a reduced DCT scale), resized once so the shorter side is
   ``image_size`` (never upscaled) and re-encoded; each gets ``order_key`` = a hash of
   (seed, image_id) and destination shard ``order_key % num_shards``. Rows go to
   ``P/_work/staging/<part>.parquet`` in sorted runs of at most STAGING_RUN_ROWS rows
   (sorted by destination, then order key) cut into row groups of STAGING_ROW_GROUP rows,
   so memory holds one run and a reader of one destination skips the other row groups by
   their statistics.
3. **Vocab** (global, one process, O(entities)): the entities actually staged, counted from
   the staging files' narrow ``entity_ids`` column, sorted -> class ids; names and
   descriptions from the tables' ``entities``. Counting after decoding makes ``image_count``
   exact even when an image fails to decode.
4. **Write shards** (pass 2, one task per destination shard): the shard's rows are read
   from every staging file (row groups whose ``dest`` statistics exclude it are skipped),
   sorted by order key, mapped to class ids and written; memory holds one shard.
5. **Finish**: check the accounting (kept + dropped = input, for pairs and images, and the
   inputs equal the tables' manifest), write ``index.json`` atomically, delete ``_work``.

Resume. Each part of pass 1 and each shard of pass 2 ends with a completion marker
(``_work/staged/<part>.json``, ``_work/written/<shard>.json``: the task's result with its
counts, written after its files). A killed pack rerun with the same config over the same
tables, by the same pack code (``_work/fingerprint.json``), keeps those tasks and does the
rest; any other rerun starts over. The narrow decisions are recomputed (they are cheap and
deterministic), so the resumed pack is byte for byte the pack an unbroken run writes.

Costs at scale. Image bytes never cross a runner shuffle: they are read once from the
tables, written twice (staging, final shard) and read once more from staging. Pass 2 opens
every staging file's footer once per shard: M parts x R shards footer reads (at 10^9 rows,
10^5 parts and R = 10^6 shards of 1,000 rows that is 10^11 small reads; use larger
``shard_rows`` there, which divides R), plus only the row groups that hold the shard.
The shuffle order is a function of (seed, image_id) alone: a seeded random permutation,
the same on every runner and for any processing order.

Modules, one per step: ``source`` (the tables as the pack reads them), ``plan`` (config,
plan, resume), ``decide`` (1), ``stage`` (2), ``vocab`` (3), ``write`` (4), ``finish`` (5),
and ``driver`` (all of them on a driver-style runner). The names the runners use are
importable from here.
"""
from __future__ import annotations

from i2e_engine.pack.decide import (Decisions, entity_image_counts, kept_image_count, label_images, score_bins,
                                    score_decision, with_counts, with_shards)
from i2e_engine.pack.driver import Executor, execute
from i2e_engine.pack.finish import finish_pack, format_summary, read_index
from i2e_engine.pack.plan import STEPS, PackConfig, PackError, PackExistsError, PackPlan, plan_pack
from i2e_engine.pack.source import Part, list_parts
from i2e_engine.pack.stage import PartResult, resize_image, stage_part
from i2e_engine.pack.vocab import staged_entity_counts, write_vocab
from i2e_engine.pack.write import ShardResult, write_shard

__all__ = ["Decisions", "Executor", "PackConfig", "PackError", "PackExistsError", "PackPlan", "Part", "PartResult",
           "STEPS", "ShardResult", "entity_image_counts", "execute", "finish_pack", "format_summary",
           "kept_image_count", "label_images", "list_parts", "plan_pack", "read_index", "resize_image",
           "score_bins", "score_decision", "stage_part", "staged_entity_counts", "with_counts", "with_shards",
           "write_shard", "write_vocab"]
