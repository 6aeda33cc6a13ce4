"""Image deduplication. Exact dedup by sha256 of the bytes is implemented; the seam for
near-duplicate (perceptual hash) and semantic (embedding) dedup is ``DEDUP_KEYS``: a
function from an annotation to a grouping key, and ``choose_survivor`` over each group."""
from __future__ import annotations

from typing import Callable

from i2e_engine.records import make_reject

STAGE = "dedup"

DEDUP_KEYS: dict[str, Callable[[dict], str]] = {
    "sha256": lambda record: record["sha256"],
}


def choose_survivor(records: list[dict], method: str = "sha256") -> tuple[dict, list[dict]]:
    """Keep the record with the most linked entities, then the smallest sample_id (so the
    choice is the same on any runner); the others become 'filtered' rejects pointing at it."""
    ordered = sorted(records, key=lambda r: (-len(r.get("links") or ()), r["sample_id"]))
    survivor = ordered[0]
    rejects = [make_reject(r, STAGE, f"duplicate_{method}", f"duplicate of sample {survivor['sample_id']}",
                           kind="filtered") for r in ordered[1:]]
    return survivor, rejects
