"""Step 5: check that every input image and pair is accounted for, write ``index.json`` (last:
its presence means the pack is complete); and read a complete pack's index."""
from __future__ import annotations

import collections
import json
from typing import Iterable, Mapping, Sequence

from i2e_engine import __version__, storage
from i2e_engine.pack.plan import FORMAT, FORMAT_VERSION, WORK_DIR, PackError, PackPlan
from i2e_engine.pack.stage import PartResult
from i2e_engine.pack.vocab import classes_fingerprint
from i2e_engine.pack.write import ShardResult


def _sum(counters: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: collections.Counter = collections.Counter()
    for counter in counters:
        total.update(counter)
    return dict(sorted(total.items()))


def finish_pack(plan: PackPlan, parts: Sequence[PartResult], shards: Sequence[ShardResult],
                class_ids: Mapping[str, int], runner: str) -> dict:
    """Check that every input image and pair is kept or dropped with a reason (and that the
    inputs are the tables' own counts), write ``index.json`` last, delete ``_work``."""
    config = plan.config
    counts = {"input_images": sum(p.input_images for p in parts), "input_pairs": sum(p.input_pairs for p in parts),
              "kept_images": sum(p.kept_images for p in parts), "kept_pairs": sum(p.kept_pairs for p in parts),
              "dropped_pairs": _sum(p.dropped_pairs for p in parts),
              "dropped_images": _sum(p.dropped_images for p in parts)}
    shards = sorted(shards, key=lambda s: s.shard_id)
    table_rows = plan.manifest.get("rows", {})
    problems = []
    if counts["kept_images"] + sum(counts["dropped_images"].values()) != counts["input_images"]:
        problems.append("kept + dropped images != input images")
    if counts["kept_pairs"] + sum(counts["dropped_pairs"].values()) != counts["input_pairs"]:
        problems.append("kept + dropped pairs != input pairs")
    if (table_rows.get("images"), table_rows.get("image_entities")) != (counts["input_images"], counts["input_pairs"]):
        problems.append(f"the tables' manifest says {table_rows.get('images')} images and "
                        f"{table_rows.get('image_entities')} pairs")
    if sum(s.rows for s in shards) != counts["kept_images"] or [s.shard_id for s in shards] != list(range(len(shards))):
        problems.append(f"shards hold {sum(s.rows for s in shards)} rows in {len(shards)} shards")
    if problems:
        raise PackError(f"pack of {config.tables} does not add up ({'; '.join(problems)}): {counts}; "
                        "index.json not written")
    classes = sorted(class_ids, key=class_ids.__getitem__)
    index = {"format": FORMAT, "format_version": FORMAT_VERSION, "shard_format": config.shard_format,
             "shards": [{"path": s.path, "rows": s.rows} for s in shards],
             "rows": sum(s.rows for s in shards), "seed": config.seed, "image_size": config.image_size,
             "vocab": "vocab.parquet", "num_classes": len(classes), "classes_fingerprint": classes_fingerprint(classes),
             "tables": config.tables, "tables_manifest_sha256": plan.manifest_sha256,
             "config": config.to_dict(), "counts": counts, "created_by": f"i2e {__version__}", "runner": runner}
    storage.write_text(storage.join(plan.out, "index.json"), json.dumps(index, indent=2) + "\n")
    storage.remove(storage.join(plan.out, WORK_DIR))
    return index


def format_summary(index: dict, out: str) -> str:
    """A short human summary: kept, dropped by reason, shards, where."""
    c = index["counts"]
    lines = [f"packed {c['kept_images']} of {c['input_images']} images and {c['kept_pairs']} of "
             f"{c['input_pairs']} pairs into {len(index['shards'])} {index['shard_format']} shards "
             f"({index['num_classes']} classes, images {index['image_size']} px) on {index['runner']}"]
    for kind in ("pairs", "images"):
        dropped = c[f"dropped_{kind}"]
        if dropped:
            lines.append(f"  dropped {kind}: " + ", ".join(f"{reason} {n}" for reason, n in dropped.items()))
    lines.append(f"  index: {storage.join(out, 'index.json')}; vocab: {storage.join(out, index['vocab'])}")
    return "\n".join(lines)


def read_index(out: str) -> dict:
    """A complete pack's index (raises FileNotFoundError when the pack is not complete)."""
    return json.loads(storage.read_text(storage.join(storage.normalize(out), "index.json")))
