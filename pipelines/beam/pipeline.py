"""The I2E build on Beam: one pipeline per run, a thin adapter over the engine core.

- *Hash* each shard in a worker (:func:`i2e_engine.shard.hash_shard`, no model), then the
  dedup plan (``i2e_engine.dedup.plan``) on its narrow hash rows: decontamination as a map,
  distinct vertices -> ``GroupByKey`` by bucket key -> verified near pairs -> connected
  components (one global step over the edges) -> ``GroupByKey`` by cluster -> survivors.
- *Annotate*: each shard, joined with its decisions (``CoGroupByKey`` by shard), is one
  element; a worker annotates it with :func:`i2e_engine.shard.annotate_shard` and commits it
  there (a shard committed under the same decisions is skipped), so a killed run keeps
  every shard committed before the kill.
- *Finalize* (``i2e_engine.finalize``): narrow rows of every committed shard -> optional
  SemDeDup (k-means on a bounded sample, ``GroupByKey`` by cluster) -> ``Count.PerElement``
  of score-key bins (the exact quantile's two passes) and of kept entity ids -> per-shard
  table writing joined with its semantic decisions and the cutoff and counts as side
  inputs. Only keys, hashes, scores (and embeddings for SemDeDup) cross the shuffle; image
  bytes are read once per pass and written once by the shard writer.
"""
from __future__ import annotations

import collections
from typing import Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from i2e_engine import finalize
from i2e_engine.build import RunPlan
from i2e_engine.finalize import ExactQuantile
from i2e_engine.dedup import plan as dedup_plan
from i2e_engine.metrics import STAGES
from pipelines.beam.transforms import NAMESPACE, AnnotateShardDoFn, HashShardDoFn, WriteShardDoFn

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


def _dedup_decisions(pipeline, plan: RunPlan):
    """The hash pass and the dedup plan (``i2e_engine.dedup.plan``): (shard_id, RowDedup)."""
    work, index, eval_index = plan.work, plan.hash_index, plan.eval_index
    max_texts = plan.config.dedup.merge_alt_texts
    rows = (pipeline | "Shards to hash" >> beam.Create(plan.shards)
            | "Spread hashing" >> beam.Reshuffle()
            | "Hash and commit" >> beam.ParDo(HashShardDoFn(plan.config, work, plan.fingerprint, plan.run_id))
            | "Read hash rows" >> beam.FlatMap(work.hash_rows))
    checked = rows | "Decontaminate" >> beam.Map(lambda row: (row, dedup_plan.contamination(row, eval_index)))
    tainted = (checked | "Contaminated" >> beam.Filter(lambda item: item[1] is not None)
               | "Key tainted by shard" >> beam.MapTuple(lambda row, decision: (row["source_shard"], decision)))
    clean = (checked | "Clean" >> beam.Filter(lambda item: item[1] is None)
             | "Key by vertex" >> beam.MapTuple(lambda row, _: (dedup_plan.vertex_of(row), row)))
    edges = (clean | "Vertices" >> beam.Keys() | "Distinct vertices" >> beam.Distinct()
             | "Bucket keys" >> beam.FlatMap(lambda vertex: dedup_plan.vertex_entries(index, vertex))
             | "Group buckets" >> beam.GroupByKey()
             | "Near pairs" >> beam.FlatMapTuple(lambda bucket, entries: dedup_plan.bucket_edges(index, bucket[0], entries))
             | "Distinct edges" >> beam.Distinct())
    labels = (edges | "All edges (global, narrow)" >> beam.combiners.ToList()
              | "Components" >> beam.FlatMap(lambda all_edges: dedup_plan.connected_components(all_edges).items()))
    decisions = ({"rows": clean, "label": labels} | "Join labels" >> beam.CoGroupByKey()
                 | "Key by cluster" >> beam.FlatMapTuple(
                     lambda vertex, joined: ((next(iter(joined["label"]), vertex), row) for row in joined["rows"]))
                 | "Group clusters" >> beam.GroupByKey()
                 | "Choose survivors" >> beam.FlatMapTuple(
                     lambda label, members: dedup_plan.cluster_decisions(label, members, max_texts)))
    return (tainted, decisions) | "All decisions" >> beam.Flatten()


def _semantic(narrow, plan: RunPlan):
    """SemDeDup's decisions as (shard_id, SemanticDecision); empty when it is off."""
    config = plan.config.dedup
    if not config.semantic:
        return narrow.pipeline | "No semantic dedup" >> beam.Create([])
    count = beam.pvalue.AsSingleton(narrow | "Count rows" >> beam.combiners.Count.Globally())
    centroids = beam.pvalue.AsSingleton(
        narrow | "K-means sample" >> beam.Filter(
            lambda row, n: finalize.in_kmeans_sample(row, finalize.semantic_sample_fraction(config, n)), count)
        | "Sample (global, bounded)" >> beam.combiners.ToList()
        | "K-means" >> beam.Map(finalize.semantic_centroids, config, count))
    return (narrow | "Assign clusters" >> beam.Map(lambda row, c: (finalize.semantic_cluster_of(row, c), row), centroids)
            | "Group semantic clusters" >> beam.GroupByKey()
            | "SemDeDup" >> beam.FlatMapTuple(lambda cluster, rows: finalize.semantic_group(cluster, rows, config))
            | "Key semantic by shard" >> beam.Map(lambda d: (d.source_shard, d)))


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
    cfg = plan.config.filter
    work, target, parts = plan.work, plan.target, plan.entity_parts()
    with_embeddings = plan.config.dedup.semantic
    pipeline = beam.Pipeline(options=options)
    decisions = _dedup_decisions(pipeline, plan)
    shard_refs = (pipeline | "Shards" >> beam.Create(plan.shards)
                  | "Key shards" >> beam.Map(lambda shard: (shard.shard_id, shard)))
    shards = ({"shard": shard_refs, "dedup": decisions} | "Decisions per shard" >> beam.CoGroupByKey()
              | "Spread shards" >> beam.Reshuffle()
              | "Annotate and commit" >> beam.ParDo(AnnotateShardDoFn(
                  plan.config, plan.kb_path, work, plan.fingerprint, plan.run_id, Shared())))
    narrow = shards | "Project narrow rows" >> beam.FlatMap(
        lambda shard: finalize.project_shard(work, shard[1], with_embeddings))
    semantic = _semantic(narrow, plan)
    dropped = (semantic | "Semantic drops" >> beam.Filter(lambda item: item[1].dropped)
               | "Key drops by row" >> beam.Map(lambda item: ((item[0], item[1].row_in_shard), True)))
    survivors = ({"row": narrow | "Key rows" >> beam.Map(lambda r: ((r["source_shard"], r["row_in_shard"]), r)),
                  "dropped": dropped}
                 | "Join semantic drops" >> beam.CoGroupByKey()
                 | "Survivors" >> beam.FlatMapTuple(lambda _, j: [] if j["dropped"] else j["row"]))
    cutoff = _cutoff(survivors, cfg.keep_top_fraction)
    counts = (survivors
              | "Kept entity ids" >> beam.FlatMap(finalize.kept_entity_ids, cfg, beam.pvalue.AsSingleton(cutoff))
              | "Images per entity" >> beam.combiners.Count.PerElement())
    _ = ({"stem": shards, "semantic": semantic}
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
    result = pipeline.run()
    result.wait_until_finish()
    runner = options.view_as(beam.options.pipeline_options.StandardOptions).runner or LOCAL_RUNNER
    return f"beam:{runner if isinstance(runner, str) else type(runner).__name__}", stage_counters(result)
