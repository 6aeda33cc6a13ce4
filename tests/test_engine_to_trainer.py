"""The engine and the trainer meet through the packed shards: what `i2e pack` writes from an
`i2e build` is what the trainer's loader reads, decodes and labels (from disk and from a
bucket)."""
import dataclasses

import pytest

from i2e_engine import tables
from trainer.configs import DataConfig
from trainer.data import Loader
from trainer.packed import open_packed


def _pack(out, target):
    pack = pytest.importorskip("pipelines.pack", reason="`i2e pack` (pipelines/pack.py) is not in this checkout yet")
    from i2e_engine.pack import PackConfig
    return pack.run_pack(PackConfig(tables=str(out), output=str(target)))


def _one_epoch(ds, image_size=32):
    """Every row once (world 1, batch 1: nothing is dropped), decoded without augmentation."""
    cfg = dataclasses.replace(DataConfig(), batch_size=1, image_size=image_size, augment=False, shuffle_buffer=8)
    rows = []
    for batch in Loader(ds, cfg, seed=0, rank=0, world=1, threads=2):
        if batch["position"]["epoch"] > 0:
            break
        rows.append(batch)
    return rows


def test_trainer_reads_what_i2e_pack_writes(demo_build, tmp_path):
    out, _ = demo_build
    index = _pack(out, tmp_path / "packed")
    ds = open_packed(tmp_path / "packed")
    assert ds.rows == index["rows"] > 0 and ds.num_classes == index["num_classes"]
    links = tables.read_output(out, "image_entities", ["image_id", "entity_id", "rank"]).to_pandas()
    ranked = {image: list(group.sort_values("rank")["entity_id"]) for image, group in links.groupby("image_id")}
    assert ds.entity_ids == sorted(ds.entity_ids) and set(ds.entity_ids) <= set(links["entity_id"])
    rows = _one_epoch(ds)
    assert len(rows) == ds.rows and len({b["keys"][0] for b in rows}) == ds.rows
    for batch in rows:
        assert batch["valid"].all() and batch["pixels"].float().std() > 5
        entities = [ds.entity_ids[c] for c in batch["labels"][0].tolist() if c >= 0]
        linked = [e for e in ranked[batch["keys"][0]] if e in entities]
        assert entities == linked[:len(entities)]  # the image's entities, best rank first


def test_trainer_reads_packed_shards_from_object_storage(demo_build, tmp_path, s3):
    out, _ = demo_build
    _pack(out, tmp_path / "packed")
    for path in sorted((tmp_path / "packed").rglob("*")):
        if path.is_file():
            s3.put(str(path), f"outputs/packed/{path.relative_to(tmp_path / 'packed')}")
    local, remote = open_packed(tmp_path / "packed"), open_packed("s3://outputs/packed")
    assert remote.entity_ids == local.entity_ids and remote.rows == local.rows
    a, b = _one_epoch(local), _one_epoch(remote)
    assert [x["keys"] for x in a] == [x["keys"] for x in b]
    assert all((x["pixels"] == y["pixels"]).all() for x, y in zip(a, b))
