"""A test-only writer of packed datasets that follows the `i2e pack` contract
(/tmp/packed_format.md): ``index.json`` written last, ``vocab.parquet``, and shards as
webdataset tars (``{i:09d}.jpg`` + ``{i:09d}.json`` members in sample order) or parquet
(exactly the packed columns, row groups of at most 256 rows). Used until
``pipelines.pack.run_pack`` exists for the tests that need it, and for the loader benchmark's
synthetic rows."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

import schemas

def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def sample(key: str, jpg: bytes, class_ids, alt_text: str = "", row: int = 0) -> dict:
    with Image.open(io.BytesIO(jpg)) as im:
        width, height = im.size
    return {"key": key, "jpg": jpg, "width": width, "height": height, "class_ids": [int(c) for c in class_ids],
            "scores": [0.5] * len(class_ids), "alt_text": alt_text, "source_shard": "test", "row_in_shard": row}


def _write_tar(path: Path, rows) -> None:
    with tarfile.open(path, "w") as tar:
        for i, row in enumerate(rows):
            meta = json.dumps({k: v for k, v in row.items() if k != "jpg"}).encode()
            for name, data in ((f"{i:09d}.jpg", row["jpg"]), (f"{i:09d}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _write_parquet(path: Path, rows) -> None:
    schema = schemas.get_schema("packed")
    with pq.ParquetWriter(path, schema) as writer:
        chunk = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == 256:
                writer.write_table(schemas.from_records(chunk, "packed"))
                chunk = []
        if chunk:
            writer.write_table(schemas.from_records(chunk, "packed"))


def write_packed(out, shards: list, entities: list[tuple[str, str, str]], shard_format: str = "webdataset",
                 image_size: int = 64, seed: int = 0) -> Path:
    """``shards``: a list of shards, each a list (or a callable returning an iterable) of
    sample dicts; ``entities``: (entity_id, name, description) in class_id order."""
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    counts = np.zeros(len(entities), dtype=np.int64)
    listed = []
    for number, rows in enumerate(shards):
        suffix = "tar" if shard_format == "webdataset" else "parquet"
        path = out / "shards" / f"{number:05d}.{suffix}"
        n = [0]

        def counted(rows=rows):
            for row in (rows() if callable(rows) else rows):
                n[0] += 1
                counts[row["class_ids"]] += 1
                yield row
        (_write_tar if shard_format == "webdataset" else _write_parquet)(path, counted())
        listed.append({"path": f"shards/{path.name}", "rows": n[0]})
    vocab = [{"class_id": c, "entity_id": e[0], "name": e[1], "description": e[2], "image_count": int(counts[c])}
             for c, e in enumerate(entities)]
    schemas.write_table(schemas.from_records(vocab, "vocab"), out / "vocab.parquet", "vocab")
    rows = sum(s["rows"] for s in listed)
    index = {"format": "i2e-packed", "format_version": 1, "shard_format": shard_format, "shards": listed,
             "rows": rows, "seed": seed, "image_size": image_size, "vocab": "vocab.parquet",
             "num_classes": len(entities),
             "classes_fingerprint": hashlib.sha256("\n".join(e[0] for e in entities).encode()).hexdigest()[:16],
             "tables": "test", "tables_manifest_sha256": "0" * 64, "config": {"shard_rows": 0},
             "counts": {"kept_images": rows}, "created_by": "tests/trainer/packed_fixtures.py", "runner": "local"}
    (out / "index.json").write_text(json.dumps(index))
    return out


def synthetic_shards(rows_per_shard: list[int], num_classes: int, seed: int = 0, side: int = 24,
                     labels_per_image: int = 2) -> list:
    """Shards of tiny synthetic JPEGs (``side`` px, a handful of distinct pictures) with
    unique keys and 1..labels_per_image class ids each; lazily generated."""
    rng = np.random.default_rng(seed)
    pictures = [jpeg(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))) for _ in range(8)]
    shards, start = [], 0
    for n in rows_per_shard:
        def rows(start=start, n=n):
            local = np.random.default_rng([seed, start])
            for i in range(start, start + n):
                k = int(local.integers(1, labels_per_image + 1))
                classes = local.choice(num_classes, size=min(k, num_classes), replace=False)
                yield sample(f"s{i:09d}", pictures[i % len(pictures)], classes, f"alt text {i}", i)
        shards.append(rows)
        start += n
    return shards


def synthetic_entities(num_classes: int) -> list[tuple[str, str, str]]:
    return [(f"Q{c:07d}", f"entity {c}", f"description {c}" if c % 3 else "") for c in range(num_classes)]


CALTECH = {"airplanes": ("Q197", "Airplane", "powered fixed-wing aircraft"),
           "Motorbikes": ("Q34493", "Motorcycle", "two-wheeled motor vehicle"),
           "Leopards": ("Q34706", "Leopard", "large cat of the genus Panthera"),
           "bonsai": ("Q172937", "Bonsai", "Japanese art form using miniature trees"),
           "watch": ("Q178794", "Watch", "portable timepiece")}
VEHICLE = ("Q42889", "Vehicle", "mobile machine that transports people or cargo")


def caltech_packed(caltech, out, per_category: int = 8, shards: int = 4, shard_format: str = "webdataset",
                   image_size: int = 64, corrupt: int = 1) -> Path:
    """Five Caltech-101 categories (one entity each; airplanes and motorbikes also carry
    "Vehicle" at rank 2), resized to ``image_size`` shorter side, plus ``corrupt`` rows whose
    bytes are not an image; rows shuffled with a fixed seed and dealt into ``shards``."""
    entities = sorted(list(CALTECH.values()) + [VEHICLE])
    class_of = {e[0]: i for i, e in enumerate(entities)}
    rows = []
    for folder, (qid, name, _) in CALTECH.items():
        for path in sorted((Path(caltech) / "101_ObjectCategories" / folder).glob("*.jpg"))[:per_category]:
            with Image.open(path) as im:
                im = im.convert("RGB")
                scale = image_size / min(im.size)
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
            data = jpeg(im)
            classes = [class_of[qid]] + ([class_of[VEHICLE[0]]] if folder in ("airplanes", "Motorbikes") else [])
            rows.append(sample(hashlib.sha256(data).hexdigest(), data, classes, f"a photo of {name}", len(rows)))
    for i in range(corrupt):
        data = b"\xff\xd8\xff\xe0 this is not a jpeg " + bytes([i])
        rows.append({"key": hashlib.sha256(data).hexdigest(), "jpg": data, "width": 64, "height": 64,
                     "class_ids": [class_of[CALTECH["Leopards"][0]]], "scores": [0.5],
                     "alt_text": "a photo of Leopard", "source_shard": "corrupt", "row_in_shard": i})
    order = np.random.default_rng(0).permutation(len(rows))
    dealt = [[rows[j] for j in order[s::shards]] for s in range(shards)]
    return write_packed(out, dealt, entities, shard_format, image_size)
