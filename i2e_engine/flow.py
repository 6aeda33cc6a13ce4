"""The few data-parallel primitives the engine's global sequences are written against.

The dedup plan (``i2e_engine.dedup.plan.decide``), the connected components of near copies
(``i2e_engine.dedup.components``) and the finalize plan (``i2e_engine.finalize.finalize_tables``)
are each written once, as calls on a :class:`Flow`; every runner lends one, thinly:

- the bare loop (``pipelines.local.ListFlow``): collections are lists, evaluated at once;
- Beam (``pipelines.beam.pipeline.BeamFlow``): collections are PCollections, side values
  singleton side inputs; nothing runs until the pipeline does;
- Spark (``pipelines.spark.job.SparkFlow``): collections are RDDs; a side value reaches the
  driver as a value (a combine's merge and extract run in one executor task) and the tasks
  that read it in their closures.

A *collection* is the runner's own (a list, a PCollection, an RDD) and may be as large as
the input. A *side value* is small and bounded (a count, bins of counts, k-means centroids):
the only thing that may pass through one process. Element functions take one element and
then the values of the side values named after it (``flow.map(name, items, fn, side)`` calls
``fn(item, value_of_side)``). Grouped values are iterables that a function may iterate more
than once but should not hold in full (Beam iterates a large group lazily).

``name`` labels a step (Beam's transform label; unique within a pipeline).

This module imports no runner (design rule 1).
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterable, Protocol, TypeVar

A = TypeVar("A")   # an accumulator
T = TypeVar("T")   # an element


def first(values: Iterable, default=None):
    """The first of a group's values, or ``default`` when it has none."""
    return next(iter(values), default)


class Combiner(Generic[A, T]):
    """A global aggregate with a bounded accumulator (Beam's CombineFn): ``add`` runs where
    the elements are, ``merge`` and ``extract`` in one worker, which hands only the
    extracted value on (on Spark too: the driver receives the value, not the accumulators)."""

    def create(self) -> A:
        raise NotImplementedError

    def add(self, accumulator: A, item: T) -> A:
        raise NotImplementedError

    def merge(self, accumulators: Iterable[A]) -> A:
        raise NotImplementedError

    def extract(self, accumulator: A, *sides) -> Any:
        """The result, from the merged accumulator and the values of the side values
        :meth:`Flow.combine` named."""
        return accumulator


class CountItems(Combiner[int, Any]):
    """How many elements a collection holds."""

    def create(self) -> int:
        return 0

    def add(self, accumulator: int, item: Any) -> int:
        return accumulator + 1

    def merge(self, accumulators: Iterable[int]) -> int:
        return sum(accumulators)


class CountBins(Combiner[dict, Any]):
    """Counts per ``bin_of(item)``: bounded by the number of bins, not of items."""

    def __init__(self, bin_of: Callable[[Any], Any]):
        self.bin_of = bin_of

    def create(self) -> dict:
        return {}

    def add(self, accumulator: dict, item: Any) -> dict:
        key = self.bin_of(item)
        accumulator[key] = accumulator.get(key, 0) + 1
        return accumulator

    def merge(self, accumulators: Iterable[dict]) -> dict:
        merged: dict = {}
        for accumulator in accumulators:
            for key, count in accumulator.items():
                merged[key] = merged.get(key, 0) + count
        return merged


class Flow(Protocol):
    """What a runner lends the engine's global sequences (see the module docstring)."""

    def map(self, name: str, items, fn: Callable, *sides): ...

    def flat_map(self, name: str, items, fn: Callable, *sides): ...

    def filter(self, name: str, items, fn: Callable, *sides): ...

    def flatten(self, name: str, *collections): ...

    def distinct(self, name: str, items): ...

    def group_by_key(self, name: str, pairs):
        """(key, value) pairs -> (key, iterable of its values)."""

    def cogroup(self, name: str, **keyed):
        """Collections of (key, value) by name -> (key, {name: iterable of its values there}):
        a join by key (read a possibly missing value with :func:`first`)."""

    def count_per_element(self, name: str, items):
        """-> (element, how many times it occurs)."""

    def combine(self, name: str, items, combiner: Combiner, *sides):
        """A side value: ``combiner`` over every element (its accumulator must stay bounded),
        its ``extract`` given the values of ``sides``."""

    def constant(self, name: str, value):
        """A side value known when the sequence is written."""

    def derive(self, name: str, fn: Callable, *sides):
        """A side value: ``fn`` of the values of other side values."""

    def cache(self, items):
        """The same collection; a hint that it is read more than once."""

    def known_empty(self, items) -> bool:
        """True when the runner can tell now that ``items`` is empty (Spark and the bare loop
        evaluate it; Beam builds a static graph and never can): lets a loop stop early."""

    def fail_if_any(self, name: str, items, error: Exception) -> None:
        """Fail the run with ``error`` if ``items`` holds anything (Beam: when it runs)."""

    def near_edges(self, vertices, index):
        """Near pairs of perceptual-hash vertices (``i2e_engine.dedup.plan``): each runner
        groups the buckets its own way (:func:`i2e_engine.dedup.plan.bucket_near_edges` on
        these primitives, Spark in the JVM, the bare loop with numpy)."""

    def per_shard(self, name: str, shards, values, fn: Callable, *sides) -> None:
        """``fn((shard_id, stem), [its values], *side values)`` once per element of ``shards``
        ((shard_id, stem) pairs, one per committed shard) with the values of ``values``
        ((shard_id, value) pairs) keyed by its shard id, run for its side effects."""

    def run(self, name: str, items) -> None:
        """Make the side effects behind ``items`` happen (Spark: an action; Beam: the pipeline)."""
