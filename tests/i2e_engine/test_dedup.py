"""Near-duplicate search, clusters and decontamination of the engine core (i2e_engine.dedup)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from i2e_engine.dedup import plan
from i2e_engine.dedup.decontaminate import hash_eval_images
from i2e_engine.dedup.hashes import hash_image_bytes, near_distance, popcount64
from i2e_engine.dedup.index import HashIndex, near_pairs
from i2e_engine.images import ImageLimits
from tests.i2e_engine.dedup_photos import copies, distinct_photos

RADIUS = HashIndex().radius


def _planted(rng, n, copies_, max_flips):
    hashes = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64).view(np.uint64)
    originals = rng.choice(n, copies_, replace=False)
    flipped = hashes[originals].copy()
    for i in range(copies_):
        for bit in rng.choice(64, rng.integers(0, max_flips + 1), replace=False):
            flipped[i] ^= np.uint64(1) << np.uint64(bit)
    return np.concatenate([hashes, flipped])


def _brute_force(hashes, radius):
    distances = popcount64((hashes[:, None] ^ hashes[None, :]).ravel()).reshape(len(hashes), len(hashes))
    first, second = np.nonzero(np.triu(distances <= radius, 1))
    return set(zip(first.tolist(), second.tolist()))


@pytest.mark.parametrize("radius", [0, 2, 4, 6])
def test_multi_index_search_finds_exactly_the_pairs_brute_force_finds(radius):
    hashes = _planted(np.random.default_rng(radius), 2000, 300, radius + 2)
    found = near_pairs(HashIndex(radius), hashes)
    pairs = list(zip(found.first.tolist(), found.second.tolist()))
    assert len(pairs) == len(set(pairs))                      # each pair reported once
    assert set(pairs) == _brute_force(hashes, radius)
    assert len(pairs) > 50
    assert (found.distance == popcount64(hashes[found.first] ^ hashes[found.second])).all()


def test_runner_buckets_find_the_same_edges_as_the_in_process_search():
    rng = np.random.default_rng(7)
    whole = _planted(rng, 300, 60, 5).view(np.int64)
    middle = np.concatenate([_planted(rng, 300, 0, 0)[:240].view(np.int64), whole[:60] ^ 3])  # centre ~ whole
    vertices = sorted({f"{a}:{b}" for a, b in zip(whole.tolist(), middle.tolist())})
    index = HashIndex(RADIUS)
    buckets: dict = {}
    for vertex in vertices:
        for bucket, entry in plan.vertex_entries(index, vertex):
            buckets.setdefault(bucket, []).append(entry)
    by_buckets = {edge for (table, _), entries in buckets.items() for edge in plan.bucket_edges(index, table, entries)}
    in_process = set(plan.near_edges(index, vertices))
    assert by_buckets == in_process and len(in_process) >= 60
    for a, b in in_process:
        assert near_distance(plan.vertex_hashes(a), plan.vertex_hashes(b)) <= RADIUS


def _row(shard, row, pixels, text, sha="s", phash=0):
    return {"source_shard": shard, "row_in_shard": row, "sha256": sha, "phash": phash, "phash_center": phash,
            "pixels": pixels, "alt_text": text}


def test_the_survivor_is_the_largest_image_then_the_smallest_row_key_and_reads_its_copies_texts():
    rows = [_row("b", 0, 100, "small copy", sha="x", phash=1), _row("a", 5, 400, "big one"),
            _row("a", 2, 400, "same size, earlier row"), _row("a", 9, 400, "big one")]
    decisions = dict(((shard, d.row_in_shard), d) for shard, d in plan.cluster_decisions("v", rows, max_texts=8))
    survivor = decisions[("a", 2)]
    assert survivor.role == "survivor" and not survivor.dropped
    assert survivor.copy_texts == ("big one", "small copy")   # distinct, in survivor order
    assert {k for k, d in decisions.items() if d.dropped} == {("a", 5), ("a", 9), ("b", 0)}
    assert decisions[("a", 5)].reason == "duplicate_sha256" and decisions[("b", 0)].reason == "near_duplicate"
    assert decisions[("b", 0)].distance == 1
    assert all((d.survivor_shard, d.survivor_row) == ("a", 2) for d in decisions.values() if d.dropped)
    assert list(plan.cluster_decisions("v", rows[:1], 8)) == []           # a lone row: no decision
    limited = dict(((s, d.row_in_shard), d) for s, d in plan.cluster_decisions("v", rows, max_texts=1))
    assert limited[("a", 2)].copy_texts == ("big one",)


def test_shard_decisions_round_trip_and_their_digest_changes_with_them():
    decisions = plan.ShardDedup.of(d for _, d in plan.cluster_decisions(
        "v", [_row("a", 0, 4, "x"), _row("a", 1, 1, "y")], 8))
    again = plan.ShardDedup.from_json(decisions.to_json())
    assert again == decisions and again.digest() == decisions.digest()
    assert plan.ShardDedup().digest() != decisions.digest()


@pytest.fixture(scope="module")
def photos(caltech101):
    paths = distinct_photos(caltech101)
    assert len(paths) >= 200
    return [(path, path.read_bytes()) for path in paths]


def test_copies_of_real_photos_are_near_duplicates_and_distinct_photos_are_not(photos):
    limits = ImageLimits()
    hashes = [hash_image_bytes(data, limits)[1] for _, data in photos]
    found, missed = {}, []
    for (path, data), original in zip(photos, hashes):   # about 200 photos x 4 edits
        for edit, copy in copies(data).items():
            distance = near_distance(original, hash_image_bytes(copy, limits)[1])
            found.setdefault(edit, []).append(distance <= RADIUS)
            if distance > RADIUS:
                missed.append(f"{edit} of {path.parent.name}/{path.name} ({distance} bits)")
    recall = {edit: sum(hits) / len(hits) for edit, hits in found.items()}
    assert sum(map(sum, found.values())) / sum(map(len, found.values())) >= 0.99, missed
    assert min(recall.values()) >= 0.98 and recall["jpeg_q30"] == recall["grayscale"] == 1.0, (recall, missed)
    close = [(photos[i][0].parent.name + "/" + photos[i][0].name, photos[j][0].name)
             for i, j in itertools.combinations(range(len(photos)), 2)
             if near_distance(hashes[i], hashes[j]) <= RADIUS]
    assert close == [], f"distinct photos within {RADIUS} bits: {close}"


def test_decontamination_matches_copies_of_evaluation_images_and_names_them(photos, tmp_path):
    held_out = tmp_path / "eval"
    held_out.mkdir()
    for path, data in photos[:3]:
        (held_out / path.name.replace("image", path.parent.name)).write_bytes(data)
    index = hash_eval_images([str(held_out)], ImageLimits(), HashIndex(RADIUS), progress=lambda _: None)
    assert len(index) == 3
    limits = ImageLimits()
    for (path, data), name in zip(photos[:3], sorted(p.name for p in held_out.iterdir())):
        for copy in copies(data).values():
            info, hashes = hash_image_bytes(copy, limits)
            match = index.match(info.sha256, hashes)
            assert match is not None and match.uri.endswith(path.name.replace("image", path.parent.name))
    for _, data in photos[3:40]:
        info, hashes = hash_image_bytes(data, limits)
        assert index.match(info.sha256, hashes) is None
