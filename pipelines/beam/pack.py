"""`i2e pack` on Beam: one pipeline, the core's steps (``i2e_engine.pack``) as transforms.

Narrow decisions are combines over keys and counts: the exact quantile's two passes of
score-bin counts, images per entity (``CombinePerKey(sum)``), the kept-image total; they
reach the passes as side inputs. Pass 1 (resize and stage) is a ``Map`` over table parts,
pass 2 (write shards) a ``Map`` over destination shard ids; image bytes never cross a
shuffle, only staging file names do. The vocab is one step on one worker (O(entities)),
and so is the index, written last.
"""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam

from i2e_engine import finalize, pack
from i2e_engine.pack import PackPlan
from pipelines.beam.pipeline import LOCAL_RUNNER, pipeline_options


def _score_decision(parts, config: pack.PackConfig):
    """The score filter as a singleton: the fixed threshold, or the exact quantile cutoff."""
    start = parts.pipeline | "Score decision" >> beam.Create([None])
    if config.keep_top_fraction is None:
        return start | "Threshold" >> beam.Map(lambda _: pack.score_decision(config, None))
    high = beam.pvalue.AsDict(parts | "High score bins" >> beam.FlatMap(pack.score_bins)
                              | "Sum high bins" >> beam.CombinePerKey(sum))
    located = start | "Locate cutoff bin" >> beam.Map(
        lambda _, counts: finalize.cutoff_bin(config.keep_top_fraction, counts), high)
    low = beam.pvalue.AsDict(
        parts | "Low score bins" >> beam.FlatMap(
            lambda part, target: pack.score_bins(part, target[0]) if target else iter(()),
            beam.pvalue.AsSingleton(located))
        | "Sum low bins" >> beam.CombinePerKey(sum))
    return located | "Quantile" >> beam.Map(
        lambda target, counts: pack.score_decision(config, finalize.cutoff_value(target, counts)), low)


def execute(plan: PackPlan, beam_args: Sequence[str] = ()) -> dict:
    """Run the pack on Beam and return the index it wrote."""
    options = pipeline_options(beam_args)
    runner_option = options.view_as(beam.options.pipeline_options.StandardOptions).runner or LOCAL_RUNNER
    runner = f"beam:{runner_option if isinstance(runner_option, str) else type(runner_option).__name__}"
    config = plan.config
    with beam.Pipeline(options=options) as pipeline:
        parts = pipeline | "Table parts" >> beam.Create(plan.parts) | "Spread parts" >> beam.Reshuffle()
        scored = beam.pvalue.AsSingleton(_score_decision(parts, config))
        counts = beam.pvalue.AsDict(
            parts | "Images per entity" >> beam.FlatMap(
                lambda part, decisions: pack.entity_image_counts(part, config, decisions), scored)
            | "Sum images per entity" >> beam.CombinePerKey(sum))
        counted = (pipeline | "Counted" >> beam.Create([None])
                   | "With counts" >> beam.Map(lambda _, d, c: pack.with_counts(d, c), scored, counts))
        kept = beam.pvalue.AsSingleton(
            parts | "Kept images" >> beam.Map(
                lambda part, d: pack.kept_image_count(part, config, d), beam.pvalue.AsSingleton(counted))
            | "Sum kept images" >> beam.CombineGlobally(sum))
        decisions = counted | "With shards" >> beam.Map(lambda d, k: pack.with_shards(d, k, config), kept)
        decisions_side = beam.pvalue.AsSingleton(decisions)
        results = parts | "Resize and stage" >> beam.Map(
            lambda part, d: pack.stage_part(plan, part, d), decisions_side)
        staging = beam.pvalue.AsList(results | "Staging files" >> beam.Map(lambda r: r.staging))
        class_ids = beam.pvalue.AsSingleton(
            pipeline | "Vocab" >> beam.Create([None])
            | "Write vocab (global, O(entities))" >> beam.Map(
                lambda _, counts: pack.write_vocab(plan, counts),
                beam.pvalue.AsDict(results | "Staged entities" >> beam.FlatMap(
                    lambda r: pack.staged_entity_counts(r.staging))
                    | "Sum staged entities" >> beam.CombinePerKey(sum))))
        shards = (decisions | "Shard ids" >> beam.FlatMap(lambda d: range(d.num_shards))
                  | "Spread shards" >> beam.Reshuffle()
                  | "Write shards" >> beam.Map(lambda shard_id, files, ids: pack.write_shard(plan, shard_id, files, ids),
                                               staging, class_ids))
        _ = (pipeline | "Index" >> beam.Create([None])
             | "Write index (last)" >> beam.Map(
                 lambda _, r, s, ids: pack.finish_pack(plan, r, s, ids, runner),
                 beam.pvalue.AsList(results), beam.pvalue.AsList(shards), class_ids))
    return pack.read_index(plan.out)
