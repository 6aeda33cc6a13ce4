"""The finalize plan's global decisions: exact quantile from bin counts,
per-entity counts; and the per-shard writer's accounting."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from i2e_engine import finalize
from i2e_engine.config import DedupConfig, FilterConfig
from i2e_engine.filters import cutoff_for_top_fraction
from i2e_engine.finalize import ExactQuantile


def _cutoff_from_counts(scores, fraction):
    keys = [ExactQuantile.key(s) for s in scores]
    return finalize.quantile_cutoff(
        fraction,
        lambda: collections.Counter(ExactQuantile.high(k) for k in keys),
        lambda high: collections.Counter(ExactQuantile.low(k) for k in keys if ExactQuantile.high(k) == high))


def test_key_preserves_the_order_of_float32_values():
    values = np.array([-1.0, -0.5, -1e-30, 0.0, 1e-30, 0.1, 0.10000001, 0.5, 1.0], dtype=np.float32)
    keys = [ExactQuantile.key(float(v)) for v in values]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert [ExactQuantile.value(k) for k in keys] == [float(v) for v in values]


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.5, 0.9, 1.0])
def test_two_pass_cutoff_equals_the_sort_of_all_scores(fraction):
    rng = np.random.default_rng(0)
    # float32 scores as the tables hold them, with many ties and both signs
    scores = np.concatenate([rng.normal(0.2, 0.15, 5000), np.full(300, 0.25), rng.uniform(-1, 1, 200)])
    scores = [float(s) for s in scores.astype(np.float32)]
    assert _cutoff_from_counts(scores, fraction) == cutoff_for_top_fraction(scores, fraction)


def test_cutoff_of_nothing_is_none():
    assert _cutoff_from_counts([], 0.5) is None
    assert finalize.quantile_cutoff(None, lambda: {1: 1}, lambda high: {}) is None


def test_kept_entity_ids_apply_threshold_and_top_k():
    row = {"sample_id": "a", "source_shard": "s", "row_in_shard": 0,
           "links": [{"entity_id": e, "image_entity_score": s} for e, s in [("x", 0.9), ("y", 0.2), ("z", 0.5)]]}
    assert finalize.kept_entity_ids(row, FilterConfig(min_score=0.3), None) == ["x", "z"]
    assert finalize.kept_entity_ids(row, FilterConfig(top_k_per_image=1), 0.1) == ["x"]
    assert finalize.kept_entity_ids(row, FilterConfig(), 0.6) == ["x"]


def test_entity_parts_grow_slowly_and_cover_every_id():
    assert finalize.entity_part_count(1) == 1
    assert finalize.entity_part_count(100) == 10 and finalize.entity_part_count(10**6) == 1000
    parts = {finalize.entity_part(f"Q{i}", 7) for i in range(1000)}
    assert parts == set(range(7))


def test_embeddings_travel_as_float32_bytes_and_the_sample_as_one_matrix():
    import pyarrow as pa

    column = pa.array([[1.0, 2.0], None, [0.5, -1.5]], pa.list_(pa.float32()))
    as_bytes = finalize._embedding_bytes(column)
    assert as_bytes[1] == b"" and np.frombuffer(as_bytes[2], np.float32).tolist() == [0.5, -1.5]
    rows = [{"source_shard": "s", "row_in_shard": i, "image_embedding": b} for i, b in enumerate(as_bytes) if b]
    combiner = finalize.KMeansCentroids(DedupConfig(semantic_clusters=1))
    halves = [combiner.add(combiner.create(), row) for row in rows]   # as two workers would
    merged = combiner.merge(halves)
    assert merged.keys == [("s", 0), ("s", 2)]
    assert np.frombuffer(merged.data, np.float32).reshape(2, 2).tolist() == [[1.0, 2.0], [0.5, -1.5]]
    centroids = combiner.extract(merged, 2)
    assert centroids.shape == (1, 2) and centroids.dtype == np.float32
    assert combiner.extract(combiner.create(), 0) is None   # no rows: no k-means


def test_each_shard_gets_the_counts_of_the_entities_its_rows_link_to():
    from pipelines.local import ListFlow

    def row(shard, *entities):
        return {"source_shard": shard, "links": [{"entity_id": e} for e in entities]}

    narrow = [row("a", "x", "y"), row("a", "x"), row("b", "z"), row("b", "w")]
    got = finalize.entity_counts_by_shard(ListFlow(), narrow, [("x", 3), ("y", 1), ("z", 2)])
    assert sorted((shard, c.entity_id, c.images) for shard, c in got) == [
        ("a", "x", 3), ("a", "y", 1), ("b", "z", 2)]   # w has no count: none is sent
