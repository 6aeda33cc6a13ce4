"""The I2E build on Beam: one pipeline per run, a thin adapter over the engine core.

- *Hash* each shard in a worker (:func:`i2e_engine.shard.hash_shard`, no model), then the
  dedup plan (:func:`i2e_engine.dedup.plan.decide`) on its narrow hash rows, placed by
  :class:`BeamFlow`: decontamination as a map, distinct vertices -> ``GroupByKey`` by
  bucket key -> verified near pairs -> connected components in ``component_rounds``
  unrolled rounds of group-bys (the graph is static: the last round is checked to have
  changed nothing, or the pipeline fails) -> labels joined to rows (``CoGroupByKey``) ->
  ``GroupByKey`` by cluster -> survivors.
- *Annotate*: each shard, joined with its decisions (``CoGroupByKey`` by shard), is one
  element; a worker annotates it with :func:`i2e_engine.shard.annotate_shard` and commits it
  there (a shard committed under the same decisions is skipped), so a killed run keeps
  every shard committed before the kill.
- *Finalize* (:func:`i2e_engine.finalize.finalize_tables`, placed by :class:`BeamFlow`):
  narrow rows of every committed shard -> optional SemDeDup (k-means on a bounded sample
  combined into one float32 matrix, ``GroupByKey`` by cluster) -> combines of score-key
  bins (the exact quantile's two passes) and ``Count.PerElement`` of kept entity ids ->
  per-shard table writing, each shard joined with its semantic decisions and its entities'
  counts (``CoGroupByKey``), the cutoff as a singleton side input. Only keys, hashes,
  scores (and float32 embeddings for SemDeDup) cross the shuffle; image bytes are read once
  per pass and written once by the shard writer.
"""
from __future__ import annotations

import collections
from typing import Callable, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from i2e_engine import finalize
from i2e_engine.build import RunPlan
from i2e_engine.dedup import plan as dedup_plan
from i2e_engine.dedup.index import HashIndex
from i2e_engine.flow import Combiner
from i2e_engine.metrics import STAGES
from pipelines.beam.transforms import NAMESPACE, AnnotateShardDoFn, BeamStageMetrics, HashShardDoFn

# The local default. Beam's DirectRunner would first try the Prism runner, whose binary
# it downloads at run time (impossible offline), then fall back to this same runner.
LOCAL_RUNNER = "FnApiRunner"


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args.append(f"--runner={LOCAL_RUNNER}")
    return PipelineOptions(args, save_main_session=False)


class _AccumulateFn(beam.CombineFn):
    """A core :class:`~i2e_engine.flow.Combiner`'s accumulation as Beam's CombineFn; its
    ``extract`` (which may read side inputs) runs in the Map after it."""

    def __init__(self, combiner: Combiner):
        self._combiner = combiner

    def create_accumulator(self):
        return self._combiner.create()

    def add_input(self, accumulator, item):
        return self._combiner.add(accumulator, item)

    def merge_accumulators(self, accumulators):
        return self._combiner.merge(accumulators)

    def extract_output(self, accumulator):
        return accumulator


def _fail(_, error: Exception):
    raise error


class BeamFlow:
    """The :class:`~i2e_engine.flow.Flow` of one Beam pipeline: collections are
    PCollections, side values singleton side inputs; nothing runs until the pipeline does,
    so :meth:`known_empty` never knows and loops run their full bound."""

    def __init__(self, pipeline: beam.Pipeline):
        self.pipeline = pipeline
        self._labels: collections.Counter[str] = collections.Counter()

    def _label(self, name: str) -> str:
        """``name``, numbered when a sequence uses it again (Beam wants unique labels)."""
        self._labels[name] += 1
        return name if self._labels[name] == 1 else f"{name} ({self._labels[name]})"

    def map(self, name: str, items, fn: Callable, *sides):
        return items | self._label(name) >> beam.Map(fn, *sides)

    def flat_map(self, name: str, items, fn: Callable, *sides):
        return items | self._label(name) >> beam.FlatMap(fn, *sides)

    def filter(self, name: str, items, fn: Callable, *sides):
        return items | self._label(name) >> beam.Filter(fn, *sides)

    def flatten(self, name: str, *collections_):
        return collections_ | self._label(name) >> beam.Flatten()

    def distinct(self, name: str, items):
        return items | self._label(name) >> beam.Distinct()

    def group_by_key(self, name: str, pairs):
        return pairs | self._label(name) >> beam.GroupByKey()

    def cogroup(self, name: str, **keyed):
        return keyed | self._label(name) >> beam.CoGroupByKey()

    def count_per_element(self, name: str, items):
        return items | self._label(name) >> beam.combiners.Count.PerElement()

    def combine(self, name: str, items, combiner: Combiner, *sides):
        label = self._label(name)
        return beam.pvalue.AsSingleton(
            items | label >> beam.CombineGlobally(_AccumulateFn(combiner))
            | f"{label}: extract" >> beam.Map(lambda accumulator, *values: combiner.extract(accumulator, *values),
                                              *sides))

    def constant(self, name: str, value):
        return beam.pvalue.AsSingleton(self.pipeline | self._label(name) >> beam.Create([value]))

    def derive(self, name: str, fn: Callable, *sides):
        label = self._label(name)
        return beam.pvalue.AsSingleton(self.pipeline | f"{label}: start" >> beam.Create([None])
                                       | label >> beam.Map(lambda _, *values: fn(*values), *sides))

    def cache(self, items):
        return items

    def known_empty(self, items) -> bool:
        return False

    def fail_if_any(self, name: str, items, error: Exception) -> None:
        _ = items | self._label(name) >> beam.Map(_fail, error)

    def near_edges(self, vertices, index: HashIndex):
        return dedup_plan.bucket_near_edges(self, vertices, index)

    def per_shard(self, name: str, shards, values, fn: Callable, *sides) -> None:
        label = self._label(name)

        def run(item, *side_values):
            shard_id, joined = item
            for stem in joined["stem"]:
                fn((shard_id, stem), joined["values"], *side_values)
            return []

        _ = ({"stem": shards, "values": values} | f"{label}: join" >> beam.CoGroupByKey()
             | label >> beam.FlatMap(run, *sides))

    def run(self, name: str, items) -> None:
        pass   # a Beam step runs with the pipeline


def stage_counters(result) -> dict[str, int]:
    """The per-stage row counters (``<stage>.rows``) of a finished pipeline, summed over steps."""
    totals: collections.Counter[str] = collections.Counter()
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        name = counter.key.metric.name
        if name.partition(".")[0] in STAGES:
            totals[name] += counter.committed if counter.committed is not None else counter.attempted
    return dict(totals)


def execute(plan: RunPlan, beam_args: Sequence[str] = ()) -> tuple[str, dict[str, int]]:
    """Hash, dedup, annotate and write the tables into ``plan.target``; returns the runner's
    name and its per-stage row counters."""
    options = pipeline_options(beam_args)
    work = plan.work
    pipeline = beam.Pipeline(options=options)
    flow = BeamFlow(pipeline)
    rows = (pipeline | "Shards to hash" >> beam.Create(plan.shards)
            | "Spread hashing" >> beam.Reshuffle()
            | "Hash and commit" >> beam.ParDo(HashShardDoFn(plan.config, work, plan.fingerprint, plan.run_id))
            | "Read hash rows" >> beam.FlatMap(work.hash_rows))
    decisions = dedup_plan.decide(flow, rows, plan.hash_index, plan.eval_index, plan.config.dedup)
    shard_refs = (pipeline | "Shards" >> beam.Create(plan.shards)
                  | "Key shards" >> beam.Map(lambda shard: (shard.shard_id, shard)))
    shards = ({"shard": shard_refs, "dedup": decisions} | "Decisions per shard" >> beam.CoGroupByKey()
              | "Spread shards" >> beam.Reshuffle()
              | "Annotate and commit" >> beam.ParDo(AnnotateShardDoFn(
                  plan.config, plan.kb_path, work, plan.fingerprint, plan.run_id, Shared())))
    finalize.finalize_tables(flow, plan, shards, BeamStageMetrics())
    result = pipeline.run()
    result.wait_until_finish()
    runner = options.view_as(beam.options.pipeline_options.StandardOptions).runner or LOCAL_RUNNER
    return f"beam:{runner if isinstance(runner, str) else type(runner).__name__}", stage_counters(result)
