"""The bare runner: the engine core in one Python process, no framework.

It is the reference the other runners are compared with (parity tests, the benchmark's
bare baseline) and a quick way to build small inputs. It is single-machine by design: its
:class:`ListFlow` holds the dedup plan's hash rows and the finalize plan's narrow rows of
every shard as lists in this process's memory (a few hundred bytes an image), which is fine
for millions of rows, not for 10^9; use Beam or Spark there.
"""
from __future__ import annotations

import collections
import sys
import time
from typing import Callable, Iterator, Optional

from tqdm import tqdm

from i2e_engine import finalize
from i2e_engine.build import RunPlan
from i2e_engine.dedup import plan as dedup_plan
from i2e_engine.dedup.index import HashIndex
from i2e_engine.dedup.plan import ShardDedup
from i2e_engine.flow import Combiner
from i2e_engine.metrics import CountingMetrics, StageMetrics
from i2e_engine.readers import ShardRef
from i2e_engine.shard import annotate_shard, hash_shard
from i2e_engine.workdir import ShardMarker

RUNNER = "local"


class ListFlow:
    """The :class:`~i2e_engine.flow.Flow` of one process: collections are lists, every step
    runs when it is called, side values are plain values."""

    def map(self, name: str, items: list, fn: Callable, *sides) -> list:
        return [fn(item, *sides) for item in items]

    def flat_map(self, name: str, items: list, fn: Callable, *sides) -> list:
        return [out for item in items for out in fn(item, *sides)]

    def filter(self, name: str, items: list, fn: Callable, *sides) -> list:
        return [item for item in items if fn(item, *sides)]

    def flatten(self, name: str, *collections_: list) -> list:
        return [item for items in collections_ for item in items]

    def distinct(self, name: str, items: list) -> list:
        return list(dict.fromkeys(items))

    def group_by_key(self, name: str, pairs: list) -> list:
        groups: dict = {}
        for key, value in pairs:
            groups.setdefault(key, []).append(value)
        return list(groups.items())

    def cogroup(self, name: str, **keyed: list) -> list:
        joined: dict = {}
        for tag, pairs in keyed.items():
            for key, value in pairs:
                joined.setdefault(key, {t: [] for t in keyed})[tag].append(value)
        return list(joined.items())

    def count_per_element(self, name: str, items: list) -> list:
        return list(collections.Counter(items).items())

    def combine(self, name: str, items: list, combiner: Combiner, *sides):
        accumulator = combiner.create()
        for item in items:
            accumulator = combiner.add(accumulator, item)
        return combiner.extract(accumulator, *sides)

    def constant(self, name: str, value):
        return value

    def derive(self, name: str, fn: Callable, *sides):
        return fn(*sides)

    def cache(self, items: list) -> list:
        return items

    def known_empty(self, items: list) -> bool:
        return not items

    def fail_if_any(self, name: str, items: list, error: Exception) -> None:
        if items:
            raise error

    def near_edges(self, vertices: list, index: HashIndex) -> list:
        return dedup_plan.near_edges(index, sorted(vertices))   # numpy over every vertex at once

    def per_shard(self, name: str, shards: list, values: list, fn: Callable, *sides) -> None:
        by_shard = collections.defaultdict(list)
        for shard_id, value in values:
            by_shard[shard_id].append(value)
        for shard in shards:
            fn(shard, by_shard.get(shard[0], []), *sides)

    def run(self, name: str, items: list) -> None:
        pass   # every step already ran


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
    rows = [row for stem in stems for row in work.hash_rows(stem)]
    by_shard = collections.defaultdict(list)
    for shard_id, decision in dedup_plan.decide(ListFlow(), rows, plan.hash_index, plan.eval_index, plan.config.dedup):
        by_shard[shard_id].append(decision)
    return {shard_id: ShardDedup.of(decisions) for shard_id, decisions in by_shard.items()}


def annotate(plan: RunPlan, dedup: dict[str, ShardDedup], metrics: Optional[StageMetrics] = None) -> None:
    """Annotate and commit every shard under its decisions (current shards are skipped)."""
    annotator = plan.annotator()
    list(_progress(plan.shards, "annotate", plan.run_id, lambda shard: annotate_shard(
        shard, annotator, plan.work, plan.fingerprint, plan.run_id, dedup.get(shard.shard_id, ShardDedup()),
        plan.config.batch_rows, metrics=metrics)))


def execute(plan: RunPlan) -> tuple[str, dict[str, int]]:
    """Hash, dedup, annotate and write the tables; returns the runner's name and its counters."""
    metrics = CountingMetrics()
    annotate(plan, hash_and_dedup(plan, metrics), metrics)
    finalize_tables(plan, metrics)
    return RUNNER, metrics.values()


def finalize_tables(plan: RunPlan, metrics: Optional[StageMetrics] = None) -> None:
    """The finalize plan (``i2e_engine.finalize.finalize_tables``) in this process."""
    finalize.finalize_tables(ListFlow(), plan, plan.committed(), metrics)
