"""The whole pack on a runner that drives the steps from one process (the local loop, Spark):
the runner lends an :class:`Executor`; every decision stays in the steps."""
from __future__ import annotations

from typing import Callable, Iterable, Protocol, Sequence, TypeVar

from i2e_engine import finalize
from i2e_engine.pack.decide import (entity_image_counts, kept_image_count, score_bins, score_decision, with_counts,
                                    with_shards)
from i2e_engine.pack.finish import finish_pack
from i2e_engine.pack.plan import PackPlan
from i2e_engine.pack.stage import stage_part
from i2e_engine.pack.vocab import staged_entity_counts, write_vocab
from i2e_engine.pack.write import write_shard

T = TypeVar("T")


class Executor(Protocol):
    """What a driver-style runner lends :func:`execute`: parallel map, sum by key, broadcast."""

    def map(self, fn: Callable[[T], object], items: Sequence[T], desc: str) -> list: ...

    def sum_by_key(self, fn: Callable[[T], Iterable[tuple]], items: Sequence[T], desc: str) -> dict: ...

    def share(self, value: object): ...   # an object with ``.value``, readable in tasks


def execute(plan: PackPlan, executor: Executor, runner: str) -> dict:
    """The whole pack on a runner that drives steps from one process (the local loop, Spark)."""
    config, parts = plan.config, plan.parts
    cutoff = finalize.quantile_cutoff(
        config.keep_top_fraction,
        lambda: executor.sum_by_key(score_bins, parts, "score bins"),
        lambda high: executor.sum_by_key(lambda part: score_bins(part, high), parts, "score bins in the cutoff bin"))
    scored = score_decision(config, cutoff)
    counts = executor.sum_by_key(lambda part: entity_image_counts(part, config, scored), parts, "images per entity")
    counted = executor.share(with_counts(scored, counts))   # O(entities): broadcast, not shipped per task
    kept = sum(executor.map(lambda part: kept_image_count(part, config, counted.value), parts, "kept images"))
    decisions = executor.share(with_shards(counted.value, kept, config))
    results = executor.map(lambda part: stage_part(plan, part, decisions.value), parts, "resize and stage")
    staging = [r.staging for r in results]
    class_ids = executor.share(write_vocab(plan, executor.sum_by_key(staged_entity_counts, staging, "vocab")))
    shards = executor.map(lambda shard_id: write_shard(plan, shard_id, staging, class_ids.value),
                          list(range(decisions.value.num_shards)), "write shards")
    return finish_pack(plan, results, shards, class_ids.value, runner)
