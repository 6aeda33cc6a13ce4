"""The bare runner: the engine core in one Python process, no framework.

It is the reference the other runners are compared with (parity tests, the benchmark's
bare baseline) and a quick way to build small inputs. It is single-machine by design: the
finalize plan's narrow rows of every shard are held in this process's memory (about 360
bytes an image), which is fine for millions of rows, not for 10^9; use Beam or Spark there.
"""
from __future__ import annotations

import collections

from i2e_engine import finalize
from i2e_engine.build import RunPlan
from i2e_engine.finalize import ExactQuantile
from i2e_engine.shard import annotate_shard

RUNNER = "local"


def annotate(plan: RunPlan) -> None:
    """Annotate and commit every shard still to do, one after the other."""
    if not plan.todo:
        return
    annotator = plan.annotator().setup()
    for shard in plan.todo:
        annotate_shard(shard, annotator, plan.work, plan.fingerprint, plan.run_id, plan.config.batch_rows)


def finalize_tables(plan: RunPlan) -> None:
    """Project, decide and write the tables to the run's target."""
    work, cfg = plan.work, plan.config.filter
    committed = plan.committed()
    by_sha: dict[str, list[dict]] = collections.defaultdict(list)
    for _, stem in committed:
        for row in finalize.project_shard(work, stem):
            by_sha[row["sha256"]].append(row)
    survivors, duplicates = [], collections.defaultdict(dict)
    for rows in by_sha.values():
        survivor, copies = finalize.dedup_group(rows)
        survivors.append(survivor)
        for copy in copies:
            duplicates[copy.source_shard][copy.row_in_shard] = copy.survivor_sample_id
    keys = [key for row in survivors for key in row["score_keys"]]
    cutoff = finalize.quantile_cutoff(
        cfg.keep_top_fraction,
        lambda: collections.Counter(ExactQuantile.high(k) for k in keys),
        lambda high: collections.Counter(ExactQuantile.low(k) for k in keys if ExactQuantile.high(k) == high))
    counts = collections.Counter(e for row in survivors for e in finalize.kept_entity_ids(row, cfg, cutoff))
    decisions = plan.decisions(cutoff, counts)
    for shard_id, stem in committed:
        finalize.write_shard_tables(work, stem, plan.target, duplicates.get(shard_id, {}), decisions)
    parts = plan.entity_parts()
    by_part = collections.defaultdict(list)
    for entity_id, count in counts.items():
        if finalize.keeps_entity(count, cfg):
            by_part[finalize.entity_part(entity_id, parts)].append((entity_id, count))
    for part, items in by_part.items():
        finalize.write_entity_part(part, parts, items, plan.kb_path, plan.kb_version, plan.target)
