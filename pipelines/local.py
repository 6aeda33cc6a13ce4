"""The bare runner: the engine core in one Python process, no framework.

It is the reference the other runners are compared with (parity tests, the benchmark's
bare baseline) and a quick way to build small inputs. It is single-machine by design: the
dedup plan's hash rows and the finalize plan's narrow rows of every shard are held in this
process's memory (a few hundred bytes an image), which is fine for millions of rows, not
for 10^9; use Beam or Spark there.
"""
from __future__ import annotations

import collections
import sys
import time
from typing import Iterator, Optional

from tqdm import tqdm

from i2e_engine import finalize
from i2e_engine.build import RunPlan
from i2e_engine.dedup.plan import ShardDedup, decide_in_process
from i2e_engine.finalize import ExactQuantile
from i2e_engine.metrics import CountingMetrics, StageMetrics
from i2e_engine.readers import ShardRef
from i2e_engine.shard import annotate_shard, hash_shard
from i2e_engine.workdir import ShardMarker

RUNNER = "local"


def _progress(shards: list[ShardRef], what: str, run_id: str, run) -> Iterator[ShardMarker]:
    """``run(shard)`` for every shard under a progress bar (shards, ETA, and rows/s of the
    shards this run did, not those committed before) on a terminal; silent when stderr is not one."""
    started, rows = time.perf_counter(), 0
    with tqdm(shards, desc=what, unit="shard", disable=not sys.stderr.isatty(), leave=True) as bar:
        for shard in bar:
            marker = run(shard)
            rows += marker.pairs_read if marker.run_id == run_id else 0
            bar.set_postfix_str(f"{rows / max(time.perf_counter() - started, 1e-9):.0f} rows/s")
            yield marker


def hash_and_dedup(plan: RunPlan, metrics: Optional[StageMetrics] = None) -> dict[str, ShardDedup]:
    """The hash pass over every shard, then the dedup decisions per shard."""
    check, work = plan.check_stage(), plan.work
    stems = [marker.stem for marker in _progress(plan.shards, "hash", plan.run_id, lambda shard: hash_shard(
        shard, check, work, plan.fingerprint, plan.run_id, plan.config.batch_rows, metrics=metrics))]
    rows = (row for stem in stems for row in work.hash_rows(stem))
    return decide_in_process(rows, plan.hash_index, plan.eval_index, plan.config.dedup.merge_alt_texts)


def annotate(plan: RunPlan, dedup: dict[str, ShardDedup], metrics: Optional[StageMetrics] = None) -> None:
    """Annotate and commit every shard under its decisions (current shards are skipped)."""
    annotator = plan.annotator()
    list(_progress(plan.shards, "annotate", plan.run_id, lambda shard: annotate_shard(
        shard, annotator, plan.work, plan.fingerprint, plan.run_id, dedup.get(shard.shard_id, ShardDedup()),
        plan.config.batch_rows, metrics=metrics)))


def _semantic_decisions(plan: RunPlan, rows: list[dict]) -> dict[str, dict[int, finalize.SemanticDecision]]:
    config = plan.config.dedup
    if not config.semantic or not rows:
        return {}
    fraction = finalize.semantic_sample_fraction(config, len(rows))
    centroids = finalize.semantic_centroids([r for r in rows if finalize.in_kmeans_sample(r, fraction)],
                                            config, len(rows))
    clusters = collections.defaultdict(list)
    for row in rows:
        clusters[finalize.semantic_cluster_of(row, centroids)].append(row)
    by_shard = collections.defaultdict(dict)
    for cluster, members in clusters.items():
        for decision in finalize.semantic_group(cluster, members, config):
            by_shard[decision.source_shard][decision.row_in_shard] = decision
    return by_shard


def execute(plan: RunPlan) -> tuple[str, dict[str, int]]:
    """Hash, dedup, annotate and write the tables; returns the runner's name and its counters."""
    metrics = CountingMetrics()
    annotate(plan, hash_and_dedup(plan, metrics), metrics)
    finalize_tables(plan, metrics)
    return RUNNER, metrics.values()


def finalize_tables(plan: RunPlan, metrics: Optional[StageMetrics] = None) -> None:
    """Project, decide and write the tables to the run's target."""
    work, cfg = plan.work, plan.config.filter
    committed = plan.committed()
    rows = [row for _, stem in committed
            for row in finalize.project_shard(work, stem, with_embeddings=plan.config.dedup.semantic)]
    semantic = _semantic_decisions(plan, rows)
    survivors = [row for row in rows
                 if not getattr(semantic.get(row["source_shard"], {}).get(row["row_in_shard"]), "dropped", False)]
    keys = [key for row in survivors for key in row["score_keys"]]
    cutoff = finalize.quantile_cutoff(
        cfg.keep_top_fraction,
        lambda: collections.Counter(ExactQuantile.high(k) for k in keys),
        lambda high: collections.Counter(ExactQuantile.low(k) for k in keys if ExactQuantile.high(k) == high))
    counts = collections.Counter(e for row in survivors for e in finalize.kept_entity_ids(row, cfg, cutoff))
    decisions = plan.decisions(cutoff, counts)
    for shard_id, stem in committed:
        finalize.write_shard_tables(work, stem, plan.target, semantic.get(shard_id, {}), decisions, metrics)
    parts = plan.entity_parts()
    by_part = collections.defaultdict(list)
    for entity_id, count in counts.items():
        if finalize.keeps_entity(count, cfg):
            by_part[finalize.entity_part(entity_id, parts)].append((entity_id, count))
    for part, items in by_part.items():
        finalize.write_entity_part(part, parts, items, plan.kb_path, plan.kb_version, plan.target)
