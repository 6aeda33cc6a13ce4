"""`i2e pack` on any runner: plan (core), execute (runner), finish (core, inside execute).

The local runner is the engine core in this process, one part or shard after another
(with a progress bar on a terminal); Beam and Spark place the same core steps on workers
(``pipelines/beam/pack.py``, ``pipelines/spark/pack.py``).
"""
from __future__ import annotations

import collections
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from i2e_engine import pack
from i2e_engine.pack import PackConfig

RUNNERS = ("local", "beam", "spark")


@dataclass(frozen=True)
class Shared:
    value: Any


class LocalExecutor:
    """:class:`i2e_engine.pack.Executor` in this process: a loop, a Counter, the value itself."""

    def __init__(self, show_progress: Optional[bool] = None):
        self.show_progress = sys.stderr.isatty() if show_progress is None else show_progress

    def _each(self, items: Sequence, desc: str):
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="task", disable=not self.show_progress, leave=False)

    def map(self, fn: Callable, items: Sequence, desc: str) -> list:
        return [fn(item) for item in self._each(items, desc)]

    def sum_by_key(self, fn: Callable, items: Sequence, desc: str) -> dict:
        total: collections.Counter = collections.Counter()
        for item in self._each(items, desc):
            for key, count in fn(item):
                total[key] += count
        return dict(total)

    def share(self, value: Any) -> Shared:
        return Shared(value)


def run_pack(config: PackConfig, runner: str = "local", *, overwrite: bool = False,
             beam_args: Sequence[str] = (), spark_master: Optional[str] = "local[*]",
             spark_conf: Sequence[str] = (), spark=None, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Pack ``config.tables`` into ``config.output`` on ``runner`` and return the index
    (also ``<output>/index.json``). A complete pack of the same config and tables is
    returned as it is; another pack in the output is refused unless ``overwrite``.

    ``beam_args`` are Beam pipeline options; ``spark`` an existing session, else one is made
    for ``spark_master`` with ``spark_conf`` (``KEY=VALUE``).
    """
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose one of {RUNNERS}")
    plan = pack.plan_pack(config, overwrite=overwrite)
    if plan.existing is not None:
        progress(f"{plan.out} already holds this pack; nothing to do")
        return plan.existing
    resumed = ", ".join(f"{count} {pack.STEPS[step]}" for step, count in plan.resumed.items() if count)
    progress(f"i2e pack: {len(plan.parts)} table parts from {plan.config.tables} on {runner}"
             + (f"; resuming a killed run ({resumed})" if resumed else ""))
    if runner == "beam":
        from pipelines.beam.pack import execute

        return execute(plan, beam_args)
    if runner == "spark":
        from pipelines.spark.job import spark_session
        from pipelines.spark.pack import SparkExecutor

        session = spark or spark_session(spark_master or None, spark_conf)
        return pack.execute(plan, SparkExecutor(session), f"spark:{session.sparkContext.master}")
    return pack.execute(plan, LocalExecutor(), "local")
