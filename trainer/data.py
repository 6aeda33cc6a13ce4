"""I2E tables -> per-rank, seeded, resumable torch batches through Ray Data.

Design (why it is index-based): every rank must see a *deterministic* sequence of samples
so that a run resumed at step s sees exactly the samples it had not seen, and every rank
must get the same number of fixed-size batches (uneven splits deadlock DDP). So:

1. ``build_index`` reads only the small columns through ``schemas.read_table``:
   images(image_id) with each row's (file, row), image_entities(image_id, entity_id, rank),
   entities(entity_id, name, description). It joins them into: per image the class ids of
   its entities (best rank first, up to ``max_labels``, -1 padded), and per class the
   entity text ("name" or "name, description"). Classes are entity ids sorted.
2. ``rank_order`` gives, per epoch, a permutation seeded by (seed, epoch); global step t
   of that epoch takes rows [t*W*B, (t+1)*W*B) and rank r the r-th B of them. The tail
   that does not fill a global batch is dropped for that epoch (it is reshuffled next).
3. ``rank_dataset`` is a Ray Dataset (``preserve_order``) over this rank's remaining
   (file, row, labels) refs; ``map_batches(decode_batch)`` runs on CPU tasks: it reads the
   ``image`` column of just the needed parquet row groups, decodes with the engine's
   ``decode_rgb`` (bomb limits), and augments with an RNG seeded per (seed, epoch, sample).
   A bad image never crashes: its row stays in the batch with ``valid=0`` and zero pixels
   (counted per step, masked out of every loss), so batch size and order never shift.
4. ``iter_torch_batches(batch_size=B, drop_last=True)`` on each worker.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import schemas
from i2e_engine import storage
from i2e_engine.images import decode_rgb
from i2e_engine.tables import read_file

IMAGES, ENTITIES, IMAGE_ENTITIES = "images", "entities", "image_entities"
for _table, _cols in ((IMAGES, ("image_id", "image")), (ENTITIES, ("entity_id", "name", "description")),
                      (IMAGE_ENTITIES, ("image_id", "entity_id", "rank"))):
    _missing = set(_cols) - set(schemas.column_names(_table))
    assert not _missing, f"schemas/{_table} lacks {_missing}; the trainer needs them"


def table_files(tables: str | Path, name: str) -> list[str]:
    """The parquet parts of one table under ``tables`` (a local path or any URI)."""
    root = storage.normalize(tables)
    folder, single = storage.join(root, name), storage.join(root, f"{name}.parquet")
    if storage.isdir(folder):
        files = storage.find(folder, (".parquet",))
    elif storage.isfile(single):
        files = [single]
    else:
        files = []
    if not files:
        raise FileNotFoundError(f"no {name} parquet files under {root} (expected {folder}/*.parquet)")
    return files


def entity_text(name: str, description: str, template: str) -> str:
    """``template`` lists fields joined by ', ' (e.g. "name" or "name, description")."""
    values = {"name": name, "description": description}
    parts = [p.strip() for p in template.split(",")]
    unknown = set(parts) - set(values)
    if unknown:
        raise ValueError(f"text_template {template!r}: unknown fields {sorted(unknown)}")
    return ", ".join(values[p] for p in parts if values[p])


@dataclass
class DataIndex:
    files: list[str]
    file_idx: np.ndarray          # (N,) int32
    row_idx: np.ndarray           # (N,) int64
    labels: np.ndarray            # (N, K) int64 class ids, -1 pads
    entity_ids: list[str]         # (C,) sorted
    entity_texts: list[str]       # (C,)
    stats: dict = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.entity_ids)

    def classes_fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.entity_ids).encode()).hexdigest()[:16]

    def manifest(self, tables: str | Path) -> dict:
        root = storage.normalize(tables)
        out = {"tables": root, "image_files": [
            {"path": f, "bytes": storage.size(f)} for f in self.files],
            "num_samples": self.num_samples, "num_classes": self.num_classes,
            "classes_fingerprint": self.classes_fingerprint(), **self.stats}
        engine_manifest = storage.join(root, "manifest.json")
        if storage.isfile(engine_manifest):
            try:
                out["engine_manifest"] = json.loads(storage.read_text(engine_manifest))
            except json.JSONDecodeError:
                out["engine_manifest"] = "unreadable"
        return out


def build_index(tables: str | Path, max_labels: int = 4, text_template: str = "name") -> DataIndex:
    files = table_files(tables, IMAGES)
    ids, file_idx, row_idx = [], [], []
    for i, path in enumerate(files):
        t = read_file(path, IMAGES, columns=["image_id"])
        ids.extend(t.column("image_id").to_pylist())
        file_idx.append(np.full(t.num_rows, i, dtype=np.int32))
        row_idx.append(np.arange(t.num_rows, dtype=np.int64))
    file_idx = np.concatenate(file_idx) if file_idx else np.zeros(0, np.int32)
    row_idx = np.concatenate(row_idx) if row_idx else np.zeros(0, np.int64)

    ent = pa.concat_tables([read_file(p, ENTITIES, columns=["entity_id", "name", "description"])
                            for p in table_files(tables, ENTITIES)]).to_pandas()
    ent = ent.drop_duplicates("entity_id").sort_values("entity_id", kind="stable").reset_index(drop=True)
    class_of = {e: i for i, e in enumerate(ent["entity_id"])}
    links = pa.concat_tables([read_file(p, IMAGE_ENTITIES, columns=["image_id", "entity_id", "rank"])
                              for p in table_files(tables, IMAGE_ENTITIES)]).to_pandas()
    n_links = len(links)
    links["cls"] = links["entity_id"].map(class_of)
    unknown_entity = int(links["cls"].isna().sum())
    links = links.dropna(subset=["cls"]).drop_duplicates(["image_id", "cls"])
    links = links.sort_values(["image_id", "rank", "cls"], kind="stable")
    per_image: dict[str, list[int]] = {}
    for image_id, cls in zip(links["image_id"], links["cls"].astype(np.int64)):
        lst = per_image.setdefault(image_id, [])
        if len(lst) < max_labels:
            lst.append(int(cls))

    keep, labels, seen = [], [], set()
    for i, image_id in enumerate(ids):
        if image_id in seen or image_id not in per_image:
            continue
        seen.add(image_id)
        keep.append(i)
        row = per_image[image_id]
        labels.append(row + [-1] * (max_labels - len(row)))
    keep = np.asarray(keep, dtype=np.int64)
    label_arr = np.asarray(labels, dtype=np.int64).reshape(-1, max_labels)
    texts = [entity_text(n, d, text_template) for n, d in zip(ent["name"], ent["description"])]
    stats = {"image_rows": len(ids), "images_without_entities": len(ids) - len(seen) - (len(ids) - len(set(ids))),
             "duplicate_image_rows": len(ids) - len(set(ids)), "annotation_rows": n_links,
             "annotations_unknown_entity": unknown_entity,
             "multi_label_images": int(((label_arr >= 0).sum(1) > 1).sum()) if len(label_arr) else 0}
    return DataIndex([str(f) for f in files], file_idx[keep], row_idx[keep], label_arr,
                     list(ent["entity_id"]), texts, stats)

# ------------------------------------------------------------------------------ sample order


def steps_per_epoch(num_samples: int, world: int, batch: int) -> int:
    steps = num_samples // (world * batch)
    if steps == 0:
        raise ValueError(f"{num_samples} samples cannot fill one global batch of {world} x {batch}")
    return steps


def rank_order(num_samples: int, world: int, rank: int, batch: int, seed: int, epoch: int) -> np.ndarray:
    """Sample indices this rank sees in ``epoch``, in order (steps_per_epoch * batch of them)."""
    steps = steps_per_epoch(num_samples, world, batch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_samples)[:steps * world * batch]
    return perm.reshape(steps, world, batch)[:, rank, :].reshape(-1)


def rank_segments(num_samples: int, world: int, rank: int, batch: int, seed: int, start_step: int,
                  total_steps: int, segment_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(sample indices, epochs) for global steps [start_step, total_steps), cut in segments
    of at most ``segment_rows`` rows (whole batches), each becoming one Ray Dataset."""
    spe = steps_per_epoch(num_samples, world, batch)
    per_segment = max(1, segment_rows // batch)
    step = start_step
    pending_s, pending_e, pending_n = [], [], 0
    while step < total_steps:
        epoch, offset = divmod(step, spe)
        take = min(spe - offset, total_steps - step, per_segment - pending_n)
        order = rank_order(num_samples, world, rank, batch, seed, epoch)
        pending_s.append(order[offset * batch:(offset + take) * batch])
        pending_e.append(np.full(take * batch, epoch, dtype=np.int64))
        pending_n += take
        step += take
        if pending_n >= per_segment or step >= total_steps:
            yield np.concatenate(pending_s), np.concatenate(pending_e)
            pending_s, pending_e, pending_n = [], [], 0

# ------------------------------------------------------------------------ decode + augment

_PARQUET_CACHE: dict[str, tuple[pq.ParquetFile, np.ndarray]] = {}
_IMAGE_TYPE = schemas.get_schema(IMAGES).field("image").type


def _parquet(path: str) -> tuple[pq.ParquetFile, np.ndarray]:
    if path not in _PARQUET_CACHE:
        if len(_PARQUET_CACHE) > 64:
            _PARQUET_CACHE.clear()
        pf = storage.parquet_file(path)
        if pf.schema_arrow.field("image").type != _IMAGE_TYPE:
            raise schemas.SchemaError(f"{path}: column 'image' is not {_IMAGE_TYPE}")
        starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
        _PARQUET_CACHE[path] = (pf, starts)
    return _PARQUET_CACHE[path]


def read_image_bytes(files: list[str], file_idx: np.ndarray, row_idx: np.ndarray) -> list[bytes | None]:
    """The ``image`` column of the given rows, reading only the row groups that hold them."""
    out: list[bytes | None] = [None] * len(file_idx)
    for f in np.unique(file_idx):
        pf, starts = _parquet(files[int(f)])
        where = np.nonzero(file_idx == f)[0]
        rows = row_idx[where]
        groups = np.searchsorted(starts, rows, side="right") - 1
        for g in np.unique(groups):
            col = pf.read_row_group(int(g), columns=["image"]).column("image")
            for w, r in zip(where[groups == g], rows[groups == g]):
                out[int(w)] = col[int(r - starts[g])].as_py()
    return out


def _random_resized_crop(w: int, h: int, rng: np.random.Generator, scale) -> tuple[float, float, float, float]:
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if cw <= w and ch <= h:
            x, y = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return x, y, x + cw, y + ch
    side = min(w, h)
    return (w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2


def transform(image: Image.Image, size: int, augment: bool, rng: np.random.Generator | None,
              crop_scale=(0.35, 1.0)) -> np.ndarray:
    """Train: random resized crop + flip. Eval: shorter side to ``size``, center crop. -> uint8 HWC."""
    w, h = image.size
    if augment:
        box = _random_resized_crop(w, h, rng, crop_scale)
        out = image.resize((size, size), Image.BILINEAR, box=box)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
    else:
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        out = image.resize((size, size), Image.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


def decode_batch(batch: dict, files: list[str], image_size: int, augment: bool, crop_scale,
                 seed: int, num_labels: int) -> dict:
    """Ray Data map_batches function (numpy format): refs -> pixels, labels, valid."""
    n = len(batch["sample"])
    images = read_image_bytes(files, np.asarray(batch["file"]), np.asarray(batch["row"]))
    pixels = np.zeros((n, image_size, image_size, 3), dtype=np.uint8)
    valid = np.ones(n, dtype=np.int64)
    for i, data in enumerate(images):
        try:
            rng = np.random.default_rng([seed, int(batch["epoch"][i]), int(batch["sample"][i])])
            pixels[i] = transform(decode_rgb(data), image_size, augment, rng, crop_scale)
        except Exception:  # ImageRejected or anything a broken file throws: count, mask, go on
            valid[i] = 0
    labels = np.stack([np.asarray(batch[f"label_{k}"], dtype=np.int64) for k in range(num_labels)], axis=1)
    return {"pixels": pixels, "labels": labels, "valid": valid,
            "sample": np.asarray(batch["sample"], dtype=np.int64)}


def refs_table(index: DataIndex, samples: np.ndarray, epochs: np.ndarray) -> pa.Table:
    cols = {"sample": samples, "epoch": epochs, "file": index.file_idx[samples].astype(np.int64),
            "row": index.row_idx[samples]}
    for k in range(index.labels.shape[1]):
        cols[f"label_{k}"] = index.labels[samples, k]
    return pa.table(cols)


def rank_dataset(index: DataIndex, samples: np.ndarray, epochs: np.ndarray, data_cfg, seed: int):
    """A Ray Dataset of decoded, augmented rows for this rank, in the given order."""
    import ray.data
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    table = refs_table(index, samples, epochs)
    block = data_cfg.block_rows or 2 * data_cfg.batch_size
    blocks = [table.slice(i, block) for i in range(0, table.num_rows, block)]
    ds = ray.data.from_arrow(blocks)
    return ds.map_batches(decode_batch, batch_format="numpy", batch_size=data_cfg.batch_size,
                          num_cpus=data_cfg.cpus_per_task,
                          fn_kwargs=dict(files=index.files, image_size=data_cfg.image_size,
                                         augment=data_cfg.augment, crop_scale=tuple(data_cfg.crop_scale),
                                         seed=seed, num_labels=index.labels.shape[1]))


def iter_rank_batches(index: DataIndex, data_cfg, *, world: int, rank: int, seed: int, start_step: int,
                      total_steps: int, use_ray: bool = True, device=None):
    """Torch batches (dict: pixels uint8 NHWC, labels, valid, sample) for global steps
    [start_step, total_steps) of this rank. ``use_ray=False`` decodes in-process (debugging)."""
    import torch
    for samples, epochs in rank_segments(index.num_samples, world, rank, data_cfg.batch_size, seed,
                                         start_step, total_steps, data_cfg.segment_rows):
        if use_ray:
            ds = rank_dataset(index, samples, epochs, data_cfg, seed)
            yield from ds.iter_torch_batches(batch_size=data_cfg.batch_size, drop_last=True,
                                             prefetch_batches=data_cfg.prefetch_batches, device=device or "cpu")
        else:
            table = refs_table(index, samples, epochs)
            b = data_cfg.batch_size
            for i in range(0, table.num_rows, b):
                part = {k: v.to_numpy() for k, v in zip(table.column_names, table.slice(i, b).columns)}
                out = decode_batch(part, index.files, data_cfg.image_size, data_cfg.augment,
                                   tuple(data_cfg.crop_scale), seed, index.labels.shape[1])
                yield {k: torch.from_numpy(np.array(v)) for k, v in out.items()}
