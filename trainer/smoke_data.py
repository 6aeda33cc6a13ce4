"""Write a small I2E table set (images/, entities/, image_entities/, and a manifest.json with
their row counts, which `i2e pack` checks) from Caltech-101 photos, through ``schemas``
exactly as the engine writes them, for smoke runs, tests and benchmarks.

    python -m trainer.smoke_data --caltech ../shared/data/caltech101 --out /tmp/i2e_smoke

Five categories x ``per_category`` photos, one entity per category, plus an entity
"vehicle" attached at rank 2 to the airplane and motorbike photos (multi-label rows) and
``corrupt`` rows whose bytes are not an image (to prove they are counted and skipped).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

import schemas

CATEGORIES = {
    "airplanes": ("Q197", "Airplane", "powered fixed-wing aircraft"),
    "Motorbikes": ("Q34493", "Motorcycle", "two-wheeled motor vehicle"),
    "Leopards": ("Q34706", "Leopard", "large cat of the genus Panthera"),
    "bonsai": ("Q172937", "Bonsai", "Japanese art form using miniature trees"),
    "watch": ("Q178794", "Watch", "portable timepiece"),
}
VEHICLE = ("Q42889", "Vehicle", "mobile machine that transports people or cargo")
RUN_ID = "smoke-tables"


def build_caltech_tables(caltech: str | Path, out: str | Path, per_category: int = 8, corrupt: int = 1,
                         image_files: int = 2, row_group_size: int = 8) -> Path:
    root = Path(caltech) / "101_ObjectCategories"
    out = Path(out)
    images, links = [], []
    counts: dict[str, int] = {}

    def link(image_id, sample_id, mention, entity_id, rank):
        row = next(r for r in images if r["image_id"] == image_id)
        links.append(dict(image_id=image_id, sample_id=sample_id, source_shard=row["source_shard"],
                          row_in_shard=row["row_in_shard"], mention=mention, mention_label="ALIAS",
                          mention_source="alias", mention_start=0, mention_end=len(mention),
                          entity_id=entity_id, link_score=1.0, link_prior=1.0, link_context=1.0,
                          runner_ups=[], image_entity_score=0.5, rank=rank, scorer="smoke", kb_version="smoke",
                          run_id=RUN_ID))
        counts[entity_id] = counts.get(entity_id, 0) + 1

    for folder, (qid, name, _) in CATEGORIES.items():
        for path in sorted((root / folder).glob("*.jpg"))[:per_category]:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                width, height, fmt = im.size[0], im.size[1], im.format
            image_id = hashlib.sha256(data).hexdigest()
            sample_id = hashlib.sha256(data + b"\0" + f"a photo of {name}".encode()).hexdigest()
            images.append(dict(image_id=image_id, sample_id=sample_id, source="folder",
                               source_shard=f"caltech101/{folder}", row_in_shard=len(images), url=None, width=width, height=height,
                               image_format=fmt, alt_text_raw=f"a photo of {name}", alt_text=f"a photo of {name}",
                               alt_texts_of_copies=[], image=data, run_id=RUN_ID))
            link(image_id, sample_id, name, qid, 1)
            if folder in ("airplanes", "Motorbikes"):
                link(image_id, sample_id, name, VEHICLE[0], 2)
    for i in range(corrupt):
        data = b"\xff\xd8\xff\xe0 this is not a jpeg " + bytes([i])
        image_id = hashlib.sha256(data).hexdigest()
        images.insert(3 + i, dict(image_id=image_id, sample_id=image_id, source="folder", source_shard="corrupt",
                                  row_in_shard=i, url=None, width=64, height=64, image_format="JPEG", alt_text_raw="a photo of Leopard",
                                  alt_text="a photo of Leopard", alt_texts_of_copies=[], image=data, run_id=RUN_ID))
        link(image_id, image_id, "Leopard", CATEGORIES["Leopards"][0], 1)

    per_file = -(-len(images) // image_files)
    for i in range(image_files):  # each images part with its image_entities part of the same name, as the engine
        part = images[i * per_file:(i + 1) * per_file]
        ids = {row["image_id"] for row in part}
        schemas.write_table(schemas.from_records(part, "images"), out / "images" / f"part-{i:05d}.parquet",
                            "images", row_group_size=row_group_size)
        schemas.write_table(schemas.from_records([r for r in links if r["image_id"] in ids], "image_entities"),
                            out / "image_entities" / f"part-{i:05d}.parquet", "image_entities")
    entities = [dict(entity_id=qid, name=name, description=desc, aliases=[], source="custom", qid=qid,
                     wiki_title=None, image_count=counts.get(qid, 0), kb_version="smoke")
                for qid, name, desc in list(CATEGORIES.values()) + [VEHICLE]]
    schemas.write_table(schemas.from_records(entities, "entities"), out / "entities" / "part-00000.parquet", "entities")
    content = hashlib.sha256(json.dumps([[r["image_id"] for r in images], [(r["image_id"], r["entity_id"]) for r in links],
                                         image_files], sort_keys=True).encode()).hexdigest()
    manifest = {"run_id": RUN_ID, "created_by": "trainer.smoke_data", "fingerprint": content[:16],
                "rows": {"images": len(images), "entities": len(entities), "image_entities": len(links)},
                "tables": {table: table for table in ("images", "entities", "image_entities")}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caltech", default=str(Path(__file__).resolve().parents[2] / "shared/data/caltech101"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-category", type=int, default=8)
    args = parser.parse_args(argv)
    print(build_caltech_tables(args.caltech, args.out, args.per_category))
    return 0


if __name__ == "__main__":
    sys.exit(main())
