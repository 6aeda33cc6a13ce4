import numpy as np
import pytest

from i2e_engine.dedup.semantic import (
    DEFAULT_THRESHOLD, SemanticDecision, assign_clusters, dedup_cluster, default_clusters,
    sample_for_kmeans, train_centroids,
)


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _cos(a, b):
    return float(np.dot(_unit(a), _unit(b)))


def _keys(n, shard="s"):
    return [(shard, i) for i in range(n)]


def _by_key(decisions):
    return {d.key: d for d in decisions}


# --- sampling -------------------------------------------------------------------------------

def test_sampling_is_deterministic_and_roughly_the_fraction():
    keys = [f"shard-{i // 100}:{i % 100}" for i in range(20000)]
    first = [sample_for_kmeans(k, 0.1) for k in keys]
    assert first == [sample_for_kmeans(k, 0.1) for k in keys]
    assert 0.09 < sum(first) / len(keys) < 0.11
    # a larger fraction picks a superset (the same hash, a higher cut)
    larger = [sample_for_kmeans(k, 0.3) for k in keys]
    assert all(b for a, b in zip(first, larger) if a)
    assert not any(sample_for_kmeans(k, 0.0) for k in keys[:100])
    assert all(sample_for_kmeans(k, 1.0) for k in keys[:100])


# --- k-means --------------------------------------------------------------------------------

def _blobs(rng, centers, per, noise):
    return np.concatenate([c + noise * rng.standard_normal((per, c.shape[0])) for c in centers]).astype(np.float32)


def test_centroids_are_deterministic_for_a_seed_under_shuffled_input():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((6, 16))
    x = _blobs(rng, centers, 50, 0.3)
    keys = [("shard", i) for i in range(len(x))]
    a = train_centroids(x, 6, seed=3, keys=keys)
    perm = rng.permutation(len(x))
    b = train_centroids(x[perm], 6, seed=3, keys=[keys[i] for i in perm])
    assert a.shape == (6, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # and the clustering finds the blobs
    labels = assign_clusters(x, a)
    assert all(len(set(labels[i * 50:(i + 1) * 50])) == 1 for i in range(6))
    assert len(set(labels)) == 6


def test_k_is_capped_by_the_sample_size():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    c = train_centroids(x, 100, seed=0, keys=_keys(5))
    assert c.shape == (5, 8)


def test_duplicate_training_keys_are_rejected():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError):
        train_centroids(x, 2, seed=0, keys=[("s", 0), ("s", 0), ("s", 1)])


def test_assignment_picks_the_nearest_centroid_by_cosine():
    centroids = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32)
    x = np.array([
        [10, 0.1, 0],      # 0: scale does not matter (cosine)
        [0.1, 5, 0.2],     # 1
        [0, 0, -1e-3 + 2],  # 2
        [3, 3.1, 0],       # 3: the diagonal centroid (unnormalized in input) wins
        [1, 0, 1],         # tie between centroids 0 and 2: the lower index
    ], dtype=np.float32)
    assert assign_clusters(x, centroids).tolist() == [0, 1, 2, 3, 0]
    # blocked evaluation gives the same answer
    assert assign_clusters(x, centroids, block_rows=2).tolist() == [0, 1, 2, 3, 0]


def test_assignment_matches_brute_force():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 12)).astype(np.float32)
    c = rng.standard_normal((7, 12)).astype(np.float32)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    assert assign_clusters(x, c, block_rows=64).tolist() == np.argmax(xn @ cn.T, axis=1).tolist()


# --- per-cluster dedup ----------------------------------------------------------------------

def test_planted_near_copies_are_duplicates_of_the_higher_ranked_copy():
    rng = np.random.default_rng(3)
    d = 64
    base = rng.standard_normal((20, d))           # distinct random vectors: cos ~ 0
    copies = {3: 11, 7: 15, 12: 0}                # copy of row k appended for each k
    rows = [b for b in base] + [base[k] + 1e-3 * rng.standard_normal(d) for k in copies]
    x = np.array(rows, dtype=np.float32)
    keys = _keys(len(x))
    # originals ranked first (order = row index), copies last
    order = [(i,) for i in range(len(x))]
    decisions = dedup_cluster(4, keys, order, x, DEFAULT_THRESHOLD)
    got = _by_key(decisions)
    dup_keys = {k for k, v in got.items() if v.role == "duplicate"}
    assert dup_keys == {("s", 20), ("s", 21), ("s", 22)}
    for offset, k in enumerate(copies):
        decision = got[("s", 20 + offset)]
        assert decision.nearest_survivor == ("s", k)
        assert decision.cluster == 4
        assert decision.similarity == pytest.approx(_cos(x[20 + offset], x[k]), abs=1e-5)
        assert decision.similarity >= DEFAULT_THRESHOLD
        assert got[("s", k)].role == "survivor"
        assert got[("s", k)].nearest_survivor is None
    # only duplicates and their referenced survivors are reported
    assert set(got) == dup_keys | {("s", k) for k in copies}


def test_survivor_choice_follows_order_not_input_position():
    rng = np.random.default_rng(4)
    v = rng.standard_normal(32)
    x = np.array([v, v + 1e-4 * rng.standard_normal(32), v + 1e-4 * rng.standard_normal(32)],
                 dtype=np.float32)
    keys = [("a", 0), ("b", 5), ("c", 9)]
    # caller's order: more pixels first, so row ("b", 5) is preferred
    pixels = [100, 400, 200]
    order = [(-p, k[0], k[1]) for p, k in zip(pixels, keys)]
    got = _by_key(dedup_cluster(0, keys, order, x, 0.95))
    assert got[("b", 5)].role == "survivor"
    assert got[("a", 0)].role == "duplicate" and got[("a", 0)].nearest_survivor == ("b", 5)
    assert got[("c", 9)].role == "duplicate" and got[("c", 9)].nearest_survivor == ("b", 5)
    # the same answer whatever order the rows arrive in
    perm = [2, 0, 1]
    again = dedup_cluster(0, [keys[i] for i in perm], [order[i] for i in perm], x[perm], 0.95)
    assert again == sorted(got.values(), key=lambda d: d.key)


def _chain(eps):
    """Unit vectors a, b, c in a plane: angle(a,b) = angle(b,c) = eps, angle(a,c) = 2 eps."""
    angles = [0.0, eps, 2 * eps]
    return np.array([[np.cos(t), np.sin(t), 0.0] for t in angles], dtype=np.float32)


def test_chain_is_dropped_against_any_higher_ranked_row():
    # cos(eps) ~ 0.97 >= 0.95, cos(2 eps) ~ 0.88 < 0.95
    eps = np.arccos(0.97)
    x = _chain(eps)
    keys = [("s", 0), ("s", 1), ("s", 2)]    # a, b, c
    order = [(0,), (1,), (2,)]               # a < b < c
    got = _by_key(dedup_cluster(1, keys, order, x, 0.95))
    a, b, c = keys
    assert got[a].role == "survivor"
    assert got[b].role == "duplicate" and got[b].nearest_survivor == a
    assert got[b].similarity == pytest.approx(0.97, abs=1e-5)
    # c is within the threshold only of b, which is itself dropped: SemDeDup drops c anyway,
    # and its nearest survivor is a, at a similarity below the threshold
    assert got[c].role == "duplicate" and got[c].nearest_survivor == a
    assert got[c].similarity == pytest.approx(_cos(x[2], x[0]), abs=1e-5)
    assert got[c].similarity < 0.95


def test_chain_with_the_middle_row_ranked_first():
    eps = np.arccos(0.97)
    x = _chain(eps)
    keys = [("s", 0), ("s", 1), ("s", 2)]
    order = [(1,), (0,), (2,)]               # b < a < c: b survives, both others drop for it
    got = _by_key(dedup_cluster(1, keys, order, x, 0.95))
    assert got[("s", 1)].role == "survivor"
    assert got[("s", 0)].nearest_survivor == ("s", 1)
    assert got[("s", 2)].nearest_survivor == ("s", 1)


def test_nothing_similar_returns_nothing():
    x = np.eye(5, dtype=np.float32)
    assert dedup_cluster(0, _keys(5), [(i,) for i in range(5)], x, 0.5) == []
    assert dedup_cluster(0, [], [], np.zeros((0, 4), dtype=np.float32), 0.5) == []


def _brute_force(x, order, threshold):
    """SemDeDup's rule, written directly: list of (duplicate?, nearest survivor index)."""
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    ranked = sorted(range(len(x)), key=lambda i: order[i])
    dup = {}
    for pos, i in enumerate(ranked):
        dup[i] = any(xn[i] @ xn[j] >= threshold for j in ranked[:pos])
    nearest = {}
    for pos, i in enumerate(ranked):
        if dup[i]:
            survivors = [j for j in ranked[:pos] if not dup[j]]
            nearest[i] = max(survivors, key=lambda j: xn[i] @ xn[j])
    return dup, nearest


@pytest.mark.parametrize("block_rows", [1, 3, 7, 512])
def test_blocked_computation_matches_brute_force(block_rows):
    rng = np.random.default_rng(5)
    d = 8
    centers = rng.standard_normal((5, d))
    x = np.concatenate([c + 0.15 * rng.standard_normal((8, d)) for c in centers]).astype(np.float32)
    n = len(x)
    keys = _keys(n)
    order = [(int(rng.integers(0, 1000)), i) for i in range(n)]
    threshold = 0.97
    dup, nearest = _brute_force(x, order, threshold)
    assert 0 < sum(dup.values()) < n - 5     # the case is not trivial
    got = _by_key(dedup_cluster(2, keys, order, x, threshold, block_rows=block_rows))
    for i in range(n):
        decision = got.get(keys[i])
        assert (decision is not None and decision.role == "duplicate") == dup[i]
        if dup[i]:
            assert decision.nearest_survivor == keys[nearest[i]]
            assert not dup[nearest[i]]
            assert got[keys[nearest[i]]].role == "survivor"
            assert decision.similarity == pytest.approx(_cos(x[i], x[nearest[i]]), abs=1e-5)
    referenced = {keys[j] for j in nearest.values()}
    assert {k for k, v in got.items() if v.role == "survivor"} == referenced


def test_decision_type_is_frozen():
    decision = SemanticDecision("s", 1, "duplicate", 0, ("s", 0), 0.99)
    assert decision.key == ("s", 1) and decision.dropped
    with pytest.raises(Exception):
        decision.role = "survivor"


def test_default_clusters():
    assert default_clusters(0) == 1
    assert default_clusters(1) == 1
    assert default_clusters(10_000) == 100
    assert default_clusters(1_000_000) == 1000
