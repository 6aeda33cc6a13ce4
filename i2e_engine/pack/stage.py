"""Step 2, pass 1 (one task per table part): the part's kept images decoded, resized once,
re-encoded and written to its staging file in sorted runs, with their destination shard."""
from __future__ import annotations

import collections
import io
from dataclasses import dataclass, field
from typing import Optional

from PIL import Image

import schemas
from i2e_engine import images, storage
from i2e_engine.pack.decide import Decisions, label_images, order_key
from i2e_engine.pack.plan import PackError, PackPlan, run_once
from i2e_engine.pack.source import Part, read_pairs

READ_BATCH_ROWS = 64        # image rows (original bytes) a pass-1 task holds at once
STAGING_RUN_ROWS = 1024     # resized images a pass-1 task holds before writing a sorted run
STAGING_ROW_GROUP = 64      # small row groups: a shard's reader skips the others by statistics


def resize_image(data: bytes, image_size: int, quality: int,
                 limits: images.ImageLimits = images.ImageLimits()) -> tuple[bytes, int, int]:
    """(JPEG bytes, width, height): ``data`` decoded under the engine's limits (a JPEG at a
    reduced DCT scale, see ``images.decode_rgb``), resized so its shorter side is
    ``image_size`` (never upscaled), RGB, re-encoded; raises ImageRejected."""
    image = images.decode_rgb(data, limits, min_side=image_size)
    width, height = image.size
    target = (width, height) if min(width, height) <= image_size else (
        (image_size, max(1, round(height * image_size / width))) if width <= height
        else (max(1, round(width * image_size / height)), image_size))
    if image.size != target:
        image = image.resize(target, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue(), target[0], target[1]


@dataclass
class PartResult:
    """What one part contributed; the index sums these."""
    name: str
    staging: Optional[str]
    input_images: int = 0
    input_pairs: int = 0
    kept_images: int = 0
    kept_pairs: int = 0
    dropped_images: dict[str, int] = field(default_factory=dict)
    dropped_pairs: dict[str, int] = field(default_factory=dict)


def _staging_order(row: dict) -> tuple:
    return row["dest"], row["order_key"], row["key"], row["source_shard"], row["row_in_shard"]


class _StagingWriter:
    """A part's staging file, written in sorted runs of at most STAGING_RUN_ROWS rows."""

    def __init__(self, uri: str):
        self._sink = storage.ParquetSink(uri, schemas.get_schema("pack_staging"))
        self._run: list[dict] = []

    def add(self, row: dict) -> None:
        self._run.append(row)
        if len(self._run) >= STAGING_RUN_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._run:
            table = schemas.from_records(sorted(self._run, key=_staging_order), "pack_staging")
            for start in range(0, table.num_rows, STAGING_ROW_GROUP):   # one row group a write
                self._sink.write(table.slice(start, STAGING_ROW_GROUP))
            self._run = []

    def close(self) -> None:
        self.flush()
        self._sink.close()

    def abort(self) -> None:
        self._sink.abort()


def stage_part(plan: PackPlan, part: Part, decisions: Decisions) -> PartResult:
    """Pass 1 for one part: label its images, resize the kept ones and write them to its
    staging file, sorted by (destination shard, order key). Counts every input image and
    pair once: kept, or dropped with a reason. Done once per pack (a killed run's staged
    part is kept)."""
    return run_once(plan, "staged", part.name, PartResult, lambda: _stage_part(plan, part, decisions))


def _stage_part(plan: PackPlan, part: Part, decisions: Decisions) -> PartResult:
    config = plan.config
    pairs = read_pairs(part)
    labels, dropped_pairs = label_images(pairs, config, decisions)
    result = PartResult(part.name, plan.staging_path(part), input_pairs=len(pairs))
    dropped_images: collections.Counter = collections.Counter()
    writer = _StagingWriter(result.staging)
    try:
        if part.images is not None:
            parquet = storage.parquet_file(part.images)
            columns = schemas.projection("pack_images")
            for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
                for row in batch.to_pylist():
                    result.input_images += 1
                    kept = labels.pop((row["source_shard"], row["row_in_shard"]), None)
                    if kept is None:
                        dropped_images["no_entity_left"] += 1
                        continue
                    try:
                        jpg, width, height = resize_image(row["image"], config.image_size, config.jpeg_quality)
                    except images.ImageRejected:
                        dropped_images["undecodable_image"] += 1
                        dropped_pairs["undecodable_image"] += len(kept)
                        continue
                    key = order_key(config.seed, row["image_id"])
                    writer.add({"dest": key % decisions.num_shards, "order_key": key, "key": row["image_id"],
                                "jpg": jpg, "width": width, "height": height,
                                "entity_ids": [entity for entity, _ in kept], "scores": [s for _, s in kept],
                                "alt_text": row["alt_text"], "source_shard": row["source_shard"],
                                "row_in_shard": row["row_in_shard"]})
                    result.kept_images += 1
                    result.kept_pairs += len(kept)
            if result.input_images != parquet.metadata.num_rows:
                raise PackError(f"{part.images}: its footer says {parquet.metadata.num_rows} rows, "
                                f"{result.input_images} were read")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    # Pairs whose image row is not in the part's images file (none in the engine's tables).
    dropped_pairs["image_not_in_tables"] += sum(len(kept) for kept in labels.values())
    result.dropped_pairs = {k: v for k, v in sorted(dropped_pairs.items()) if v}
    result.dropped_images = dict(sorted(dropped_images.items()))
    return result
