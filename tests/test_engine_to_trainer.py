"""The engine and the trainer meet only through the tables: what `i2e build` writes is what
the trainer reads, decodes and labels."""
import numpy as np

from i2e_engine import tables
from trainer.data import build_index, decode_batch


def test_trainer_reads_the_engines_tables(demo_build):
    out, manifest = demo_build
    index = build_index(out, max_labels=4, text_template="name, description")
    entities = tables.read_output(out, "entities", ["entity_id", "name"]).to_pandas()
    assert index.entity_ids == sorted(entities["entity_id"])
    assert index.stats["image_rows"] == manifest["rows"]["images"]
    assert index.stats["annotation_rows"] == manifest["rows"]["image_entities"]
    assert (index.labels[:, 0] >= 0).all()  # every kept image has at least one entity

    n = len(index.row_idx)
    batch = {"sample": np.arange(n), "epoch": np.zeros(n, dtype=np.int64), "file": index.file_idx,
             "row": index.row_idx, **{f"label_{k}": index.labels[:, k] for k in range(index.labels.shape[1])}}
    decoded = decode_batch(batch, index.files, image_size=64, augment=False, crop_scale=(0.5, 1.0),
                           seed=0, num_labels=index.labels.shape[1])
    assert decoded["valid"].all()
    assert decoded["pixels"].shape == (n, 64, 64, 3) and decoded["pixels"].std() > 10
