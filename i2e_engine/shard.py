"""The two passes over an input shard, each streamed in bounded batches and committed with
its completion marker:

- ``hash_shard``: the checks and perceptual hashes only (no model), whose narrow rows the
  dedup plan reads, so duplicates are decided before any model runs;
- ``annotate_shard``: the stages (check, NER, link, score) under the shard's dedup decisions.

These are the units of work every runner places on a worker (a Beam element, a Spark
task, an iteration of a bare loop). Memory holds one batch of pairs and its results,
whatever the shard's size: the reader streams, and the writer appends each batch to parquet.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import time
from typing import Iterable, Iterator, Optional, TypeVar

from i2e_engine import storage
from i2e_engine.dedup.plan import ShardDedup
from i2e_engine.images import ImageLimits
from i2e_engine.metrics import StageClock, StageMetrics
from i2e_engine.readers import ReaderOptions, ShardRef, declared_rows, read_shard
from i2e_engine.stages import Annotator, CheckStage, hash_row, run_stage
from i2e_engine.workdir import HASH_PASS, ShardMarker, ShardWriter, WorkDir, shard_file_stem

PROGRESS = logging.getLogger("i2e.progress")  # one line per committed shard; the CLI shows it
DEFAULT_BATCH_ROWS = 256

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def reason_key(reject: dict) -> str:
    return f"{reject['stage']}/{reject['kind']}/{reject['reason']}"


def _with_image_limit(options: ReaderOptions, limits: ImageLimits) -> ReaderOptions:
    """The reader leaves unread the images the check would reject for their size anyway."""
    return dataclasses.replace(options, max_image_bytes=limits.max_bytes)


def hash_shard(shard: ShardRef, check: CheckStage, work: WorkDir, fingerprint: str, run_id: str,
               batch_rows: int = DEFAULT_BATCH_ROWS,
               reader_options: ReaderOptions = ReaderOptions(),
               metrics: Optional[StageMetrics] = None) -> ShardMarker:
    """Check and hash ``shard`` and commit its hash rows; a shard already hashed at its
    current identity and fingerprint is not read again. Rows the checks reject are only
    counted here: the annotate pass rejects them again, with the same reason, into the tables.
    ``metrics`` (a runner's counters) receives the rows hashed."""
    marker = work.marker(shard_file_stem(shard.shard_id), HASH_PASS[0])
    if marker is not None and marker.is_current(shard.identity, fingerprint):
        return marker
    started, retries = time.time(), storage.retry_count()
    clock = StageClock(metrics)
    writer = ShardWriter(work, shard.shard_id, HASH_PASS)
    pairs_read = rejected = 0
    pairs_in = read_shard(shard, _with_image_limit(reader_options, check.config.image))
    try:
        for pairs in batched(pairs_in, batch_rows):
            pairs_read += len(pairs)
            result = run_stage(check, pairs)
            rejected += len(result.rejects)
            writer.write("hashes", [hash_row(record) for record in result.kept])
    except BaseException:
        writer.abort()
        raise
    clock.add("hash", pairs_read, time.time() - started)   # the whole pass: read, check, hash, write
    return writer.commit(ShardMarker(
        shard_id=shard.shard_id, stem=writer.stem, identity=shard.identity, fingerprint=fingerprint,
        run_id=run_id, source_rows=declared_rows(shard), pairs_read=pairs_read, annotations=writer.rows["hashes"],
        rejects=rejected, seconds=round(time.time() - started, 3), stages=clock.to_dict(),
        storage_retries=storage.retry_count() - retries))


def annotate_shard(shard: ShardRef, annotator: Annotator, work: WorkDir, fingerprint: str, run_id: str,
                   dedup: ShardDedup = ShardDedup(), batch_rows: int = DEFAULT_BATCH_ROWS,
                   reader_options: ReaderOptions = ReaderOptions(),
                   metrics: Optional[StageMetrics] = None) -> ShardMarker:
    """Read, check, annotate and commit ``shard`` under its ``dedup`` decisions; returns its
    completion marker. A shard committed at its current identity, fingerprint and dedup
    decisions is not annotated again (a resumed run, or a shard whose copies did not change).

    ``annotator`` is set up on first use (``Annotator.setup()`` is idempotent per process
    for the runners that share it). Rerunning a committed shard replaces its files with the
    same content. Rows and seconds per stage go into the marker (``stages``), and the rows into
    ``metrics`` (a runner's counters) as they are made.
    """
    digest = dedup.digest()
    marker = work.marker(shard_file_stem(shard.shard_id))
    if marker is not None and marker.is_current(shard.identity, fingerprint, digest):
        return marker
    annotator.setup()   # once per process; not in the shard's seconds
    started, retries = time.time(), storage.retry_count()
    source_rows = declared_rows(shard)
    writer = ShardWriter(work, shard.shard_id)
    clock = StageClock(metrics)
    reasons: collections.Counter[str] = collections.Counter()
    pairs_read = 0
    pairs_in = read_shard(shard, _with_image_limit(reader_options, annotator.config.image))
    try:
        for pairs in clock.timed("read", batched(pairs_in, batch_rows)):
            pairs_read += len(pairs)
            result = annotator.process(pairs, dedup, clock)
            rejects = [{**reject, "run_id": run_id} for reject in result.rejects]
            reasons.update(reason_key(reject) for reject in rejects)
            with clock.time("write", len(result.kept) + len(rejects)):
                writer.write("annotations", result.kept)
                writer.write("rejects", rejects)
        storage.write_text(work.dedup_path(writer.stem), dedup.to_json())
    except BaseException:
        writer.abort()
        raise
    marker = writer.commit(ShardMarker(
        shard_id=shard.shard_id, stem=writer.stem, identity=shard.identity, fingerprint=fingerprint,
        run_id=run_id, source_rows=source_rows, pairs_read=pairs_read, annotations=writer.rows["annotations"],
        rejects=writer.rows["rejects"], seconds=round(time.time() - started, 3),
        reasons=dict(sorted(reasons.items())), dedup_digest=digest, stages=clock.to_dict(),
        storage_retries=storage.retry_count() - retries))
    PROGRESS.info("committed shard %s: %d pairs, %d annotated, %d dropped in %.1f s", shard.shard_id,
                  pairs_read, marker.annotations, marker.rejects, marker.seconds)
    return marker
