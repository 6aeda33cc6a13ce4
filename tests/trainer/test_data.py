"""Index, seeded/resumable sample order, decode with bad images — no Ray."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.configs import get_config
from trainer.data import build_index, iter_rank_batches, rank_order, rank_segments, steps_per_epoch


def test_index_joins_tables(i2e_tables):
    index = build_index(i2e_tables, max_labels=3, text_template="name, description")
    assert index.num_samples == 41 and index.num_classes == 6
    assert index.stats["multi_label_images"] == 16  # airplanes + motorbikes also carry "Vehicle"
    vehicle = index.entity_ids.index("Q42889")
    multi = index.labels[(index.labels >= 0).sum(1) == 2]
    assert (multi[:, 1] == vehicle).all()  # rank-2 entity second
    assert "Leopard, large cat of the genus Panthera" in index.entity_texts
    assert build_index(i2e_tables, text_template="name").entity_texts[0] == "Bonsai"


def test_rank_order_seeded_disjoint_and_resumable():
    n, world, batch = 50, 2, 4
    a = rank_order(n, world, 0, batch, seed=1, epoch=0)
    b = rank_order(n, world, 1, batch, seed=1, epoch=0)
    assert len(a) == steps_per_epoch(n, world, batch) * batch and not set(a) & set(b)
    assert np.array_equal(a, rank_order(n, world, 0, batch, seed=1, epoch=0))
    assert not np.array_equal(a, rank_order(n, world, 0, batch, seed=1, epoch=1))
    full = np.concatenate([s for s, _ in rank_segments(n, world, 0, batch, 1, 0, 20, segment_rows=12)])
    tail = np.concatenate([s for s, _ in rank_segments(n, world, 0, batch, 1, 7, 20, segment_rows=1000)])
    assert len(full) == 20 * batch and np.array_equal(full[7 * batch:], tail)


def test_bad_image_is_counted_and_masked(i2e_tables):
    cfg = get_config("smoke_supervised").data
    index = build_index(i2e_tables)
    seen, bad = [], 0
    for rank in range(2):
        for batch in iter_rank_batches(index, cfg, world=2, rank=rank, seed=0, start_step=0, total_steps=2,
                                       use_ray=False):
            assert batch["pixels"].shape == (cfg.batch_size, cfg.image_size, cfg.image_size, 3)
            bad += int((batch["valid"] == 0).sum())
            assert batch["pixels"][batch["valid"] == 0].sum() == 0
            seen.extend(batch["sample"].tolist())
    assert len(seen) == len(set(seen)) == 32
    corrupt = [i for i in range(index.num_samples) if index.row_idx[i] == 3 and index.file_idx[i] == 0]
    assert bad == sum(1 for s in seen if s in corrupt)


def test_missing_tables_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        build_index(tmp_path)
