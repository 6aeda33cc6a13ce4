"""The engine and the trainer meet only through the tables: what `i2e build` writes is what
the trainer reads, decodes and labels."""
import numpy as np

from i2e_engine import tables
from trainer.data import build_index, decode_batch


def _decode_every_row(index, image_size: int) -> dict:
    n = len(index.row_idx)
    batch = {"sample": np.arange(n), "epoch": np.zeros(n, dtype=np.int64), "file": index.file_idx,
             "row": index.row_idx, **{f"label_{k}": index.labels[:, k] for k in range(index.labels.shape[1])}}
    return decode_batch(batch, index.files, image_size=image_size, augment=False, crop_scale=(0.5, 1.0),
                        seed=0, num_labels=index.labels.shape[1])


def test_trainer_reads_the_engines_tables(demo_build):
    out, manifest = demo_build
    index = build_index(out, max_labels=4, text_template="name, description")
    entities = tables.read_output(out, "entities", ["entity_id", "name"]).to_pandas()
    assert index.entity_ids == sorted(entities["entity_id"])
    assert index.stats["image_rows"] == manifest["rows"]["images"]
    assert index.stats["annotation_rows"] == manifest["rows"]["image_entities"]
    assert (index.labels[:, 0] >= 0).all()  # every kept image has at least one entity

    decoded = _decode_every_row(index, 64)
    assert decoded["valid"].all()
    assert decoded["pixels"].shape == (len(index.row_idx), 64, 64, 3) and decoded["pixels"].std() > 10


def test_trainer_reads_the_tables_from_object_storage(demo_build, s3):
    """The same index and pixels from a bucket (moto's S3 server on localhost) as from disk."""
    out, _ = demo_build
    for table in ("images", "entities", "image_entities"):
        for part in sorted((out / table).glob("*.parquet")):
            s3.put(str(part), f"outputs/tables/{table}/{part.name}")
    s3.put(str(out / "manifest.json"), "outputs/tables/manifest.json")
    local = build_index(out, max_labels=4, text_template="name, description")
    remote = build_index("s3://outputs/tables", max_labels=4, text_template="name, description")
    assert remote.files[0].startswith("s3://outputs/tables/images/")
    assert remote.entity_ids == local.entity_ids and (remote.labels == local.labels).all()
    assert remote.manifest("s3://outputs/tables")["engine_manifest"]["run_id"] == \
        local.manifest(out)["engine_manifest"]["run_id"]
    assert _decode_every_row(remote, 32)["valid"].all()
