"""``annotate_shard``: one input shard streamed through the stages in bounded batches and
committed with its completion marker.

This is the unit of work every runner places on a worker (a Beam element, a Spark task,
an iteration of a bare loop). Memory holds one batch of pairs and its results, whatever
the shard's size: the reader streams, and the writer appends each batch to parquet.
"""
from __future__ import annotations

import collections
import itertools
import logging
import time
from typing import Iterable, Iterator, TypeVar

from i2e_engine.readers import ReaderOptions, ShardRef, declared_rows, read_shard
from i2e_engine.stages import Annotator
from i2e_engine.workdir import ShardMarker, ShardWriter, WorkDir

PROGRESS = logging.getLogger("i2e.progress")  # one line per committed shard; the CLI shows it
DEFAULT_BATCH_ROWS = 256

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def reason_key(reject: dict) -> str:
    return f"{reject['stage']}/{reject['kind']}/{reject['reason']}"


def annotate_shard(shard: ShardRef, annotator: Annotator, work: WorkDir, fingerprint: str, run_id: str,
                   batch_rows: int = DEFAULT_BATCH_ROWS,
                   reader_options: ReaderOptions = ReaderOptions()) -> ShardMarker:
    """Read, check, annotate and commit ``shard``; returns its completion marker.

    ``annotator`` must be set up (``Annotator.setup()``); it is shared across shards of a
    process. Rerunning a committed shard replaces its files with the same content.
    """
    started = time.time()
    source_rows = declared_rows(shard)
    writer = ShardWriter(work, shard.shard_id)
    reasons: collections.Counter[str] = collections.Counter()
    pairs_read = 0
    try:
        for pairs in batched(read_shard(shard, reader_options), batch_rows):
            pairs_read += len(pairs)
            result = annotator.process(pairs)
            rejects = [{**reject, "run_id": run_id} for reject in result.rejects]
            reasons.update(reason_key(reject) for reject in rejects)
            writer.write("annotations", result.kept)
            writer.write("rejects", rejects)
    except BaseException:
        writer.abort()
        raise
    marker = writer.commit(ShardMarker(
        shard_id=shard.shard_id, stem=writer.stem, identity=shard.identity, fingerprint=fingerprint,
        run_id=run_id, source_rows=source_rows, pairs_read=pairs_read, annotations=writer.rows["annotations"], rejects=writer.rows["rejects"],
        seconds=round(time.time() - started, 3), reasons=dict(sorted(reasons.items()))))
    PROGRESS.info("committed shard %s: %d pairs, %d annotated, %d dropped in %.1f s", shard.shard_id,
                  pairs_read, marker.annotations, marker.rejects, marker.seconds)
    return marker


