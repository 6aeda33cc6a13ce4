"""Assembling rows of the output tables, writing them as validated parquet parts, and
the run manifest. Column names come from ``schemas/``; this module only fills them."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional

import pyarrow as pa
import pyarrow.parquet as pq

import schemas

OUTPUT_TABLES = ("images", "entities", "image_entities", "rejects")
WORK_DIR = "_work"


def image_row(annotation: Mapping, run_id: str) -> dict:
    row = {name: annotation[name] for name in schemas.column_names("images")
           if name not in ("image_id", "run_id")}
    return {**row, "image_id": annotation["sha256"], "run_id": run_id}


def image_entity_rows(annotation: Mapping, links: Iterable[Mapping], scorer: str, kb_version: str,
                      run_id: str) -> list[dict]:
    """One row per kept link, ranked by image-entity score (1 = best)."""
    ordered = sorted(links, key=lambda l: (-l["image_entity_score"], l["entity_id"]))
    return [{**link, "image_id": annotation["sha256"], "sample_id": annotation["sample_id"],
             "rank": rank, "scorer": scorer, "kb_version": kb_version, "run_id": run_id}
            for rank, link in enumerate(ordered, start=1)]


def entity_row(entity: Mapping, image_count: int, kb_version: str) -> dict:
    return {"entity_id": entity["entity_id"], "name": entity["name"],
            "description": entity["description"], "aliases": list(entity["aliases"]),
            "source": entity["source"], "image_count": int(image_count), "kb_version": kb_version}


def reject_row(reject: Mapping, run_id: str) -> dict:
    return {**reject, "run_id": run_id}


def write_rows(rows: list[dict], table: str, path: str | Path) -> Path:
    """Validate ``rows`` against ``table``'s schema and write them atomically to ``path``."""
    schemas.write_table(schemas.from_records(rows, table), path, table)
    return Path(path)


def part_path(directory: str | Path, table: str, part: int, num_parts: int) -> Path:
    return Path(directory) / table / f"part-{part:05d}-of-{num_parts:05d}.parquet"


def count_rows(directory: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted(directory.glob("*.parquet")))


def read_output(out: str | Path, table: str, columns: Optional[list[str]] = None) -> pa.Table:
    """Read one output table (all its parts) with schema validation."""
    directory = Path(out) / table
    parts = sorted(directory.glob("*.parquet"))
    if not parts:
        empty = schemas.get_schema(table).empty_table()
        return empty if columns is None else empty.select(columns)
    return pa.concat_tables([schemas.read_table(p, table, columns=columns) for p in parts])


def summarize(out: str | Path) -> dict:
    """Row counts per table, rejects per (stage, kind, reason), and the input accounting:
    every input sample is either a kept image or a sample-level reject."""
    out = Path(out)
    rejects = read_output(out, "rejects", ["stage", "kind", "reason", "entity_id"]).to_pandas()
    sample_level = rejects[rejects["entity_id"].isna()]
    counts = {table: count_rows(out / table) for table in OUTPUT_TABLES}
    by_reason = (rejects.groupby(["stage", "kind", "reason"], dropna=False).size()
                 .sort_values(ascending=False))
    return {
        "rows": counts,
        "input_samples": counts["images"] + len(sample_level),
        "kept_images": counts["images"],
        "rejected_samples": int((sample_level["kind"] == "rejected").sum()),
        "filtered_samples": int((sample_level["kind"] == "filtered").sum()),
        "dropped_annotations": int(rejects["entity_id"].notna().sum()),
        "drops_by_reason": [{"stage": s, "kind": k, "reason": r, "rows": int(n)}
                            for (s, k, r), n in by_reason.items()],
    }


def write_manifest(out: str | Path, config: dict, run_id: str, versions: dict,
                   started: float) -> dict:
    """The run manifest: config, versions of code/models/KB, and counts read back from
    the tables just written (so the numbers are the tables' own)."""
    manifest = {
        "run_id": run_id,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "schema_version": schemas.CURRENT_VERSION,
        "versions": {**versions, "python": platform.python_version()},
        "config": config,
        **summarize(out),
    }
    path = Path(out) / "manifest.json"
    tmp = path.with_name(".manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return manifest
