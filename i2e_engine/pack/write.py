"""Step 4, pass 2 (one task per destination shard): the shard's rows from every staging file,
in shuffle order, with class ids, written as one webdataset tar or parquet file."""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from typing import Mapping, Sequence

from i2e_engine import storage, tables
from i2e_engine.pack.plan import PackPlan, run_once, shard_relative_path

PACKED_ROW_GROUP = 256      # the contract: parquet shards have row groups of at most 256 rows


def _shard_rows(staging_uris: Sequence[str], shard_id: int) -> list[dict]:
    """The staged rows bound for ``shard_id``; row groups whose statistics exclude it are not read."""
    rows = []
    for uri in staging_uris:
        parquet = storage.parquet_file(uri)
        dest_column = parquet.schema_arrow.get_field_index("dest")
        for group in range(parquet.num_row_groups):
            stats = parquet.metadata.row_group(group).column(dest_column).statistics
            if stats is not None and stats.has_min_max and not stats.min <= shard_id <= stats.max:
                continue
            rows += [row for row in parquet.read_row_group(group).to_pylist() if row["dest"] == shard_id]
    return rows


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)     # fixed metadata: the same samples give the same bytes
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    tar.addfile(info, io.BytesIO(data))


def webdataset_bytes(samples: Sequence[dict]) -> bytes:
    """A webdataset tar: ``{i:09d}.jpg`` and ``{i:09d}.json`` (every other field) per sample, in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for position, sample in enumerate(samples):
            meta = {name: value for name, value in sample.items() if name != "jpg"}
            _tar_member(tar, f"{position:09d}.jpg", sample["jpg"])
            _tar_member(tar, f"{position:09d}.json",
                        json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return buffer.getvalue()


@dataclass
class ShardResult:
    shard_id: int
    path: str      # relative to the pack
    rows: int


def write_shard(plan: PackPlan, shard_id: int, staging_uris: Sequence[str], class_ids: Mapping[str, int]
                ) -> ShardResult:
    """Pass 2 for one destination shard: its rows from every staging file, in order-key
    order, with class ids, written as one tar or parquet file (memory: one shard). Done once
    per pack: a killed run's written shard is kept (the class ids are a function of the
    staged parts, which are the same under the same fingerprint)."""
    return run_once(plan, "written", f"{shard_id:05d}", ShardResult,
                 lambda: _write_shard(plan, shard_id, staging_uris, class_ids))


def _write_shard(plan: PackPlan, shard_id: int, staging_uris: Sequence[str], class_ids: Mapping[str, int]
                 ) -> ShardResult:
    staged = sorted(_shard_rows(staging_uris, shard_id),
                    key=lambda r: (r["order_key"], r["key"], r["source_shard"], r["row_in_shard"]))
    samples = [{"key": r["key"], "jpg": r["jpg"], "width": r["width"], "height": r["height"],
                "class_ids": [class_ids[e] for e in r["entity_ids"]], "scores": r["scores"],
                "alt_text": r["alt_text"], "source_shard": r["source_shard"], "row_in_shard": r["row_in_shard"]}
               for r in staged]
    relative = shard_relative_path(shard_id, plan.config.shard_format)
    if plan.config.shard_format == "webdataset":
        storage.write_bytes(plan.shard_path(shard_id), webdataset_bytes(samples))
    else:
        tables.write_rows(samples, "packed", plan.shard_path(shard_id), row_group_size=PACKED_ROW_GROUP)
    return ShardResult(shard_id, relative, len(samples))
