"""Step 3, the vocab (global, one process, O(entities)): the entities actually staged, sorted,
are the class ids; counted after decoding, so ``image_count`` is exact."""
from __future__ import annotations

import collections
import hashlib
from typing import Iterator, Mapping, Sequence

from i2e_engine import storage, tables
from i2e_engine.pack.plan import PackError, PackPlan
from i2e_engine.pack.source import read_entities


def staged_entity_counts(staging_uri: str) -> Iterator[tuple[str, int]]:
    """(entity_id, staged images carrying it) of one staging file (its narrow column only)."""
    counts: collections.Counter = collections.Counter()
    for batch in storage.parquet_file(staging_uri).iter_batches(batch_size=4096, columns=["entity_ids"]):
        for entity_ids in batch.column("entity_ids").to_pylist():
            counts.update(entity_ids)
    return iter(counts.items())


def write_vocab(plan: PackPlan, image_counts: Mapping[str, int]) -> dict[str, int]:
    """GLOBAL, one process, O(entities): class ids = the staged entity ids sorted; writes
    ``P/vocab.parquet`` (schema ``vocab``) and returns entity_id -> class_id."""
    kept = sorted(entity for entity, count in image_counts.items() if count > 0)
    wanted = set(kept)
    entities = read_entities(plan.config.tables)
    known = {row["entity_id"]: row for row in entities.to_pylist() if row["entity_id"] in wanted}
    missing = wanted - known.keys()
    if missing:
        raise PackError(f"{len(missing)} packed entities are not in {plan.config.tables}/entities "
                        f"(e.g. {sorted(missing)[0]!r}); the tables are inconsistent")
    rows = [{"class_id": class_id, "entity_id": entity, "name": known[entity]["name"],
             "description": known[entity]["description"], "image_count": int(image_counts[entity])}
            for class_id, entity in enumerate(kept)]
    tables.write_rows(rows, "vocab", storage.join(plan.out, "vocab.parquet"))
    return {entity: class_id for class_id, entity in enumerate(kept)}


def classes_fingerprint(entity_ids_in_class_order: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(entity_ids_in_class_order).encode()).hexdigest()[:16]
