"""Thin Beam wrappers, one per stage; all logic is in ``i2e_engine``.

Each stage that can drop rows returns (kept, rejects) so the pipeline can route every
reject row to the dead-letter table.
"""
from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path
from typing import Iterable, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.utils.shared import Shared

import schemas
from i2e_engine import dedup, filters, stages, tables
from i2e_engine.config import BuildConfig
from i2e_engine.readers import read_shard
from i2e_engine.records import make_reject
from pipelines.beam.handlers import ScorerHandler, SpacyNerHandler

REJECTS = "rejects"
PROGRESS = logging.getLogger("i2e.progress")  # per-shard commits; the CLI shows it at INFO


def _split(result: tuple[Optional[dict], Optional[dict]]):
    """(record, None) -> main output; (None, reject) -> the 'rejects' output."""
    record, reject = result
    if reject is not None:
        yield beam.pvalue.TaggedOutput(REJECTS, reject)
    else:
        yield record


def _failed_batch_rejects(stage: str):
    """Turn RunInference's dead letter (batch, error) into one reject per record."""
    def to_rejects(failure) -> Iterable[dict]:
        batch, error = failure  # error: (exception type, message, traceback) from Beam
        kind, message = (error[0], error[1]) if isinstance(error, tuple) and len(error) > 1 else (None, error)
        detail = f"{kind.__name__ if isinstance(kind, type) else ''}: {message}"
        for record in batch:
            yield make_reject(record, stage, f"{stage}_error", detail)
    return to_rejects


class ReadAndCheck(beam.PTransform):
    """Read shards and check each pair's image and text. Outputs: main records, rejects."""

    def __init__(self, config: BuildConfig):
        super().__init__()
        self._config = config

    def expand(self, shards):
        return (shards
                | "Reshuffle shards" >> beam.Reshuffle()
                | "Read pairs" >> beam.FlatMap(read_shard)
                | "Check image and text" >> beam.Map(stages.check_pair, self._config)
                | "Split checked" >> beam.FlatMap(_split).with_outputs(REJECTS, main="records"))


class _LinkDoFn(beam.DoFn):
    """Links mentions; the alias index is loaded once per worker process and shared."""

    def __init__(self, kb_path: str, config: BuildConfig, shared: Shared):
        self._kb_path, self._config, self._shared = kb_path, config, shared

    def setup(self):
        def load():
            from i2e_engine.kb.build import load_alias_index
            from i2e_engine.linking import Linker

            return Linker(load_alias_index(self._kb_path), self._config.link)
        self._linker = self._shared.acquire(load)

    def process(self, element):
        record, mentions = element
        yield from _split(stages.link_record(record, mentions, self._linker,
                                             self._config.scorer.entity_text))


class Annotate(beam.PTransform):
    """NER -> linking -> image-entity scoring. Outputs: main annotations, rejects."""

    def __init__(self, config: BuildConfig, kb_path: str):
        super().__init__()
        self._config, self._kb_path = config, kb_path

    def expand(self, records):
        mentioned, ner_failed = (records | "NER" >> RunInference(
            SpacyNerHandler(self._config.ner, self._kb_path)).with_exception_handling())
        linked = (mentioned | "Link entities" >> beam.ParDo(
            _LinkDoFn(self._kb_path, self._config, Shared())).with_outputs(REJECTS, main="records"))
        scored, score_failed = (linked.records | "Score image-entity" >> RunInference(
            ScorerHandler(self._config.scorer, self._config.image)).with_exception_handling())
        split = scored | "Split scored" >> beam.FlatMap(_split).with_outputs(REJECTS, main="records")
        rejects = ((linked[REJECTS], split[REJECTS],
                    ner_failed.failed_inferences | "NER dead letter" >> beam.FlatMap(_failed_batch_rejects("ner")),
                    score_failed.failed_inferences | "Score dead letter" >> beam.FlatMap(_failed_batch_rejects("score")))
                   | "Annotate rejects" >> beam.Flatten())
        return {"records": split.records, REJECTS: rejects}


def shard_file_stem(shard_id: str) -> str:
    """A filesystem-safe, unique file name for a shard id."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in shard_id)[-60:]
    return f"{safe}-{zlib.crc32(shard_id.encode()):08x}"


class _WriteShardDoFn(beam.DoFn):
    """Commit one input shard's annotations and rejects, then its completion marker; a
    rerun skips shards whose marker exists (resume per shard)."""

    def __init__(self, work_dir: str, fingerprint: str, run_id: str):
        self._work, self._fingerprint, self._run_id = Path(work_dir), fingerprint, run_id

    def process(self, element):
        shard_id, tagged = element
        annotations = [row for kind, row in tagged if kind == "annotation"]
        rejects = [tables.reject_row(row, self._run_id) for kind, row in tagged if kind == "reject"]
        stem = shard_file_stem(shard_id)
        tables.write_rows(annotations, "annotations", self._work / "annotations" / f"{stem}.parquet")
        tables.write_rows(rejects, "rejects", self._work / "rejects" / f"{stem}.parquet")
        marker = {"shard_id": shard_id, "fingerprint": self._fingerprint, "run_id": self._run_id,
                  "annotations": len(annotations), "rejects": len(rejects)}
        done = self._work / "done" / f"{stem}.json"
        done.parent.mkdir(parents=True, exist_ok=True)
        done.with_suffix(".tmp").write_text(json.dumps(marker))
        done.with_suffix(".tmp").replace(done)
        PROGRESS.info("committed shard %s: %d annotated, %d dropped", shard_id, len(annotations), len(rejects))
        yield marker


class CommitShards(beam.PTransform):
    """Group a stage's outputs by input shard and commit each shard atomically."""

    def __init__(self, work_dir: str, fingerprint: str, run_id: str):
        super().__init__()
        self._args = (work_dir, fingerprint, run_id)

    def expand(self, outputs):
        annotations, rejects = outputs
        keyed = ((annotations | "Key annotations" >> beam.Map(lambda r: (r["source_shard"], ("annotation", r))),
                  rejects | "Key rejects" >> beam.Map(lambda r: (r["source_shard"], ("reject", r))))
                 | "Flatten shard outputs" >> beam.Flatten())
        return (keyed | "Group by shard" >> beam.GroupByKey()
                | "Write shard" >> beam.ParDo(_WriteShardDoFn(*self._args)))


def _read_rows(table: str):
    def read(path: str) -> Iterable[dict]:
        yield from schemas.read_table(path, table).to_pylist()
    return read


class _EntityRowsDoFn(beam.DoFn):
    def __init__(self, kb_path: str, kb_version: str, shared: Shared):
        self._kb_path, self._kb_version, self._shared = kb_path, kb_version, shared

    def setup(self):
        def load():
            from i2e_engine.kb.build import load_alias_index

            return load_alias_index(self._kb_path)
        self._index = self._shared.acquire(load)

    def process(self, entity_count):
        entity_id, count = entity_count
        yield tables.entity_row({"entity_id": entity_id, **self._index.entity(entity_id)}, count, self._kb_version)


def _part_of(key: str, num_parts: int) -> int:
    return zlib.crc32(key.encode()) % num_parts


class WriteTable(beam.PTransform):
    """Validate and write rows of one table as ``num_parts`` parquet parts, by a stable key."""

    def __init__(self, table: str, directory: str, num_parts: int, key: str):
        super().__init__()
        self._table, self._dir, self._parts, self._key = table, directory, num_parts, key

    def expand(self, rows):
        table, directory, parts, key = self._table, self._dir, self._parts, self._key
        return (rows
                | f"Part {table}" >> beam.Map(lambda r: (_part_of(str(r[key]), parts), r))
                | f"Group {table}" >> beam.GroupByKey()
                | f"Write {table}" >> beam.MapTuple(
                    lambda part, group: str(tables.write_rows(
                        sorted(group, key=lambda r: tuple(str(r.get(c)) for c in (key, "entity_id", "stage"))),
                        table, tables.part_path(directory, table, part, parts)))))


def _per_image_filters(record: dict, config, cutoff) -> tuple[dict, list[dict], list[dict]]:
    return (record, *filters.filter_links(record, config, cutoff))


def _min_images_filter(item: tuple, counts: dict, min_images: int) -> tuple[dict, list[dict], list[dict]]:
    """(record, kept links, all rejects of the record), the record itself rejected when no
    entity is left."""
    record, links, rejects = item
    kept, rare = filters.drop_rare_entities(record, links, counts, min_images)
    rejects = rejects + rare
    if not kept:
        rejects.append(make_reject(record, "filter", "no_entities_left",
                                   "every entity of the image was filtered out", kind="filtered"))
    return record, kept, rejects


class Finalize(beam.PTransform):
    """From committed annotations: dedup, filters, then the images / entities /
    image_entities / rejects tables."""

    def __init__(self, config: BuildConfig, kb_path: str, kb_version: str, scorer_name: str,
                 run_id: str, staging_dir: str, num_parts: int):
        super().__init__()
        self._config, self._kb_path, self._kb_version = config, kb_path, kb_version
        self._scorer, self._run_id, self._staging, self._parts = scorer_name, run_id, staging_dir, num_parts

    def expand(self, inputs):
        annotation_files, reject_files = inputs
        cfg, run_id = self._config.filter, self._run_id
        annotations = annotation_files | "Read annotations" >> beam.FlatMap(_read_rows("annotations"))
        old_rejects = reject_files | "Read shard rejects" >> beam.FlatMap(_read_rows("rejects"))

        deduped = (annotations
                   | "Key by sha256" >> beam.Map(lambda r: (dedup.DEDUP_KEYS["sha256"](r), r))
                   | "Group duplicates" >> beam.GroupByKey()
                   | "Choose survivor" >> beam.MapTuple(lambda _, group: dedup.choose_survivor(list(group))))
        survivors = deduped | "Survivors" >> beam.MapTuple(lambda survivor, _: survivor)
        dedup_rejects = deduped | "Duplicates" >> beam.FlatMapTuple(lambda _, rejects: rejects)

        cutoff = None
        if cfg.keep_top_fraction is not None:
            cutoff = beam.pvalue.AsSingleton(
                survivors
                | "All scores" >> beam.FlatMap(lambda r: [l["image_entity_score"] for l in r["links"]])
                | "Score quantiles" >> beam.transforms.stats.ApproximateQuantiles.Globally(1001)
                | "Cutoff" >> beam.Map(filters.cutoff_for_top_fraction, cfg.keep_top_fraction))
        filtered = survivors | "Per-image filters" >> beam.Map(_per_image_filters, cfg, cutoff)
        counts = beam.pvalue.AsDict(
            filtered
            | "Kept entity ids" >> beam.FlatMap(lambda item: [l["entity_id"] for l in item[1]])
            | "Count per entity" >> beam.combiners.Count.PerElement())
        final = filtered | "Min images per entity" >> beam.Map(_min_images_filter, counts,
                                                               cfg.min_images_per_entity)
        kept = final | "Has entities" >> beam.Filter(lambda item: bool(item[1]))
        filter_rejects = final | "Filter rejects" >> beam.FlatMap(lambda item: item[2])
        new_rejects = ((dedup_rejects, filter_rejects) | "New rejects" >> beam.Flatten()
                       | "Stamp run" >> beam.Map(tables.reject_row, run_id))

        image_rows = kept | "Image rows" >> beam.Map(lambda item: tables.image_row(item[0], run_id))
        pair_rows = kept | "Image-entity rows" >> beam.FlatMap(
            lambda item: tables.image_entity_rows(item[0], item[1], self._scorer, self._kb_version, run_id))
        entity_rows = (pair_rows
                       | "Entity of pair" >> beam.Map(lambda row: row["entity_id"])
                       | "Images per entity" >> beam.combiners.Count.PerElement()
                       | "Entity rows" >> beam.ParDo(_EntityRowsDoFn(self._kb_path, self._kb_version, Shared())))
        all_rejects = (old_rejects, new_rejects) | "All rejects" >> beam.Flatten()
        parts = self._parts
        return {
            "images": image_rows | "images" >> WriteTable("images", self._staging, parts, "image_id"),
            "image_entities": pair_rows | "image_entities" >> WriteTable(
                "image_entities", self._staging, parts, "image_id"),
            "entities": entity_rows | "entities" >> WriteTable("entities", self._staging, parts, "entity_id"),
            "rejects": all_rejects | "rejects" >> WriteTable("rejects", self._staging, parts, "sample_id"),
        }
