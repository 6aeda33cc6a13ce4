"""The I2E build on Beam: one pipeline per run, a thin adapter over the engine core.

- *Annotate*: each shard still to do is one element; a worker annotates it with
  :func:`i2e_engine.shard.annotate_shard` and commits it there, so a killed run keeps every
  shard committed before the kill.
- *Finalize* (``i2e_engine.finalize``): narrow rows of every committed shard ->
  ``GroupByKey`` by sha256 for dedup survivors -> ``Count.PerElement`` of score-key bins
  (the exact quantile's two passes) and of kept entity ids -> per-shard table writing
  joined with its duplicate decisions (``CoGroupByKey`` by shard, narrow) and the cutoff and
  counts as side inputs. Only keys, hashes and scores cross the shuffle; image bytes are
  read once and written once by the shard writer.
"""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from i2e_engine import finalize
from i2e_engine.build import RunPlan
from i2e_engine.finalize import ExactQuantile
from pipelines.beam.transforms import DUPLICATES, AnnotateShardDoFn, DedupDoFn, WriteShardDoFn

# The local default. Beam's DirectRunner would first try the Prism runner, whose binary
# it downloads at run time (impossible offline), then fall back to this same runner.
LOCAL_RUNNER = "FnApiRunner"


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args.append(f"--runner={LOCAL_RUNNER}")
    return PipelineOptions(args, save_main_session=False)


def _cutoff(survivors, keep_fraction):
    """The exact quantile cutoff as a singleton PCollection (two passes of bin counts)."""
    if keep_fraction is None:
        return survivors.pipeline | "No cutoff" >> beam.Create([None])
    keys = survivors | "Score keys" >> beam.FlatMap(lambda row: row["score_keys"])
    high = beam.pvalue.AsDict(keys | "High bins" >> beam.Map(ExactQuantile.high)
                              | "Count high bins" >> beam.combiners.Count.PerElement())
    located = (survivors.pipeline | "Quantile pass 1" >> beam.Create([None])
               | "Locate cutoff bin" >> beam.Map(lambda _, counts: finalize.cutoff_bin(keep_fraction, counts), high))
    located_side = beam.pvalue.AsSingleton(located)
    low = beam.pvalue.AsDict(
        keys | "Keys in cutoff bin" >> beam.Filter(
            lambda key, t: t is not None and ExactQuantile.high(key) == t[0], located_side)
        | "Low bins" >> beam.Map(ExactQuantile.low)
        | "Count low bins" >> beam.combiners.Count.PerElement())
    return located | "Cutoff value" >> beam.Map(finalize.cutoff_value, low)


def execute(plan: RunPlan, beam_args: Sequence[str] = ()) -> str:
    """Annotate ``plan.todo`` and write the tables into ``plan.target``; returns the runner's name."""
    options = pipeline_options(beam_args)
    cfg = plan.config.filter
    committed = plan.committed()
    work, target, parts = plan.work, plan.target, plan.entity_parts()
    with beam.Pipeline(options=options) as pipeline:
        annotated = (pipeline | "Shards to annotate" >> beam.Create(plan.todo)
                     | "Spread shards" >> beam.Reshuffle()
                     | "Annotate and commit" >> beam.ParDo(AnnotateShardDoFn(
                         plan.config, plan.kb_path, work, plan.fingerprint, plan.run_id, Shared())))
        shards = ((pipeline | "Committed before" >> beam.Create(committed), annotated)
                  | "Committed shards" >> beam.Flatten())
        deduped = (shards
                   | "Project narrow rows" >> beam.FlatMap(lambda shard: finalize.project_shard(work, shard[1]))
                   | "Key by sha256" >> beam.Map(lambda row: (row["sha256"], row))
                   | "Group copies" >> beam.GroupByKey()
                   | "Choose survivors" >> beam.ParDo(DedupDoFn()).with_outputs(DUPLICATES, main="survivors"))
        survivors = deduped.survivors
        cutoff = _cutoff(survivors, cfg.keep_top_fraction)
        counts = (survivors
                  | "Kept entity ids" >> beam.FlatMap(finalize.kept_entity_ids, cfg, beam.pvalue.AsSingleton(cutoff))
                  | "Images per entity" >> beam.combiners.Count.PerElement())
        _ = ({"stem": shards, "duplicates": deduped[DUPLICATES]}
             | "Join decisions to shards" >> beam.CoGroupByKey()
             | "Write shard tables" >> beam.ParDo(
                 WriteShardDoFn(work, target, plan.decisions(None, {})),
                 beam.pvalue.AsSingleton(cutoff), beam.pvalue.AsDict(counts)))
        _ = (counts
             | "Entities kept" >> beam.Filter(lambda item: finalize.keeps_entity(item[1], cfg))
             | "Entity part" >> beam.Map(lambda item: (finalize.entity_part(item[0], parts), item))
             | "Group entity parts" >> beam.GroupByKey()
             | "Write entities" >> beam.MapTuple(lambda part, items: finalize.write_entity_part(
                 part, parts, items, plan.kb_path, plan.kb_version, target)))
    runner = options.view_as(beam.options.pipeline_options.StandardOptions).runner or LOCAL_RUNNER
    return f"beam:{runner if isinstance(runner, str) else type(runner).__name__}"
