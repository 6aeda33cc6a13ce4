"""Exact near-duplicate search over 64-bit hashes with multi-index hashing.

The 64 bits are cut into ``blocks`` blocks. Two hashes within ``radius`` bits differ in at
most ``radius`` blocks, so they agree exactly on at least ``blocks - radius`` of them
(pigeonhole). The index has one *table* per combination of ``blocks - radius`` blocks; a
hash's key in a table is its bits in those blocks, and every pair within the radius shares
a key in at least one table. Inside a bucket (one table, one key) all pairs are verified by
popcount. A pair is reported only by its *canonical* table, the first combination of the
blocks it agrees on, so each pair comes out exactly once without a global distinct.

Cost grows about linearly with the number of hashes while buckets stay small: a key has
``64 * (blocks - radius) / blocks`` bits (32 for the default radius 4 and 8 blocks, so a
billion random hashes still average under one per bucket). Each hash is emitted once per
table (C(8, 4) = 70 tables by default): that is the shuffle a runner pays, narrow (a key
and a vertex id).

The same :func:`pairs_in_table` runs inside a runner's bucket (grouped by
:meth:`HashIndex.bucket_keys`) and over whole arrays in one process (:func:`near_pairs`,
numpy, for the bare runner and the benchmark), so every runner finds the same pairs.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from i2e_engine.dedup.hashes import popcount64, to_unsigned

_VECTORIZED_RUN = 64      # runs up to this length are expanded into pairs all at once
_CHUNK = 4096             # longer runs are compared in blocks of this many rows


@dataclass(frozen=True)
class NearPairs:
    """Pairs of positions (first < second in the input) and their Hamming distance."""
    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return len(self.first)


@dataclass(frozen=True)
class HashIndex:
    radius: int = 4
    blocks: int = 8
    tables: tuple[tuple[int, ...], ...] = field(init=False, repr=False)
    _masks: np.ndarray = field(init=False, repr=False, compare=False)
    _canonical: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.blocks not in (1, 2, 4, 8, 16):
            raise ValueError(f"blocks must divide 64 into whole bytes or nibbles (1, 2, 4, 8, 16), got {self.blocks}")
        if not 0 <= self.radius < self.blocks:
            raise ValueError(f"radius must be in [0, blocks - 1] = [0, {self.blocks - 1}], got {self.radius}")
        tables = tuple(itertools.combinations(range(self.blocks), self.blocks - self.radius))
        width = 64 // self.blocks
        block_mask = (1 << width) - 1
        masks = np.array([sum(block_mask << (width * b) for b in table) for table in tables], dtype=np.uint64)
        # agreement pattern (bit b set: block b equal) -> index of its canonical table, or -1
        position = {table: i for i, table in enumerate(tables)}
        canonical = np.full(1 << self.blocks, -1, dtype=np.int64)
        for pattern in range(1 << self.blocks):
            agreeing = [b for b in range(self.blocks) if pattern >> b & 1]
            if len(agreeing) >= self.blocks - self.radius:
                canonical[pattern] = position[tuple(agreeing[:self.blocks - self.radius])]
        object.__setattr__(self, "tables", tables)
        object.__setattr__(self, "_masks", masks)
        object.__setattr__(self, "_canonical", canonical)

    def bucket_keys(self, value: int) -> list[tuple[int, int]]:
        """(table, key) of every bucket ``value`` (a signed or unsigned 64-bit hash) is in."""
        unsigned = to_unsigned(value)
        return [(t, unsigned & int(mask)) for t, mask in enumerate(self._masks)]

    def agreement(self, xor: np.ndarray) -> np.ndarray:
        """Bit pattern of the blocks where two hashes agree, from their xor."""
        width = 64 // self.blocks
        block_mask = np.uint64((1 << width) - 1)
        pattern = np.zeros(len(xor), dtype=np.int64)
        for b in range(self.blocks):
            equal = ((xor >> np.uint64(width * b)) & block_mask) == 0
            pattern |= equal.astype(np.int64) << b
        return pattern

    def mask(self, table: int) -> np.uint64:
        return self._masks[table]

    def canonical_table(self, xor: np.ndarray) -> np.ndarray:
        return self._canonical[self.agreement(xor)]


def _as_uint64(hashes) -> np.ndarray:
    return np.asarray(hashes, dtype=np.int64).view(np.uint64) if np.asarray(hashes).dtype != np.uint64 \
        else np.asarray(hashes)


def _candidate_pairs(order: np.ndarray, keys: np.ndarray):
    """Yield (i, j) position arrays of every pair sharing a key, i before j in ``order``."""
    sorted_keys = keys[order]
    boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.concatenate(([0], boundaries))
    lengths = np.diff(np.concatenate((starts, [len(order)])))
    for length in np.unique(lengths[lengths > 1]):
        run_starts = starts[lengths == length]
        if length <= _VECTORIZED_RUN:
            members = order[run_starts[:, None] + np.arange(length)]
            a, b = np.triu_indices(length, 1)
            yield members[:, a].ravel(), members[:, b].ravel()
            continue
        for start in run_starts:   # a crowded bucket: compared in blocks, memory bounded
            members = order[start:start + length]
            for lo in range(0, length, _CHUNK):
                block = members[lo:lo + _CHUNK]
                later = members[lo:]
                a = np.repeat(block, len(later))
                b = np.tile(later, len(block))
                rank_a = np.repeat(np.arange(lo, lo + len(block)), len(later))
                rank_b = np.tile(np.arange(lo, length), len(block))
                keep = rank_a < rank_b
                yield a[keep], b[keep]


def pairs_in_table(index: HashIndex, table: int, hashes, owners: Optional[np.ndarray] = None,
                   is_center: Optional[np.ndarray] = None) -> NearPairs:
    """Pairs of ``hashes`` within the radius whose canonical table is ``table``.

    ``owners`` (optional) says which item each hash belongs to: pairs of one owner are not
    reported; ``is_center`` marks central-crop hashes, which are compared with whole-image
    hashes only. Positions in the result refer to ``hashes``, the lower position first.
    """
    values = _as_uint64(hashes)
    keys = values & index.mask(table)
    order = np.argsort(keys, kind="stable")
    found_a, found_b, found_d = [], [], []
    for a, b in _candidate_pairs(order, keys):
        xor = values[a] ^ values[b]
        distance = popcount64(xor)
        keep = (distance <= index.radius)
        if owners is not None:
            keep &= owners[a] != owners[b]
        if is_center is not None:
            keep &= ~(is_center[a] & is_center[b])
        keep &= index.canonical_table(xor) == table
        if keep.any():
            a, b = a[keep], b[keep]
            found_a.append(np.minimum(a, b))
            found_b.append(np.maximum(a, b))
            found_d.append(distance[keep])
    return _concat(found_a, found_b, found_d)


def _concat(first, second, distance) -> NearPairs:
    if not first:
        empty = np.zeros(0, dtype=np.int64)
        return NearPairs(empty, empty.copy(), empty.copy())
    return NearPairs(np.concatenate(first), np.concatenate(second), np.concatenate(distance))


def near_pairs(index: HashIndex, hashes, owners: Optional[np.ndarray] = None,
               is_center: Optional[np.ndarray] = None) -> NearPairs:
    """Every pair within the radius, each once, in one process (table after table, so
    memory holds the hashes and one table's sort)."""
    parts = [pairs_in_table(index, t, hashes, owners, is_center) for t in range(len(index.tables))]
    return _concat([p.first for p in parts], [p.second for p in parts], [p.distance for p in parts])
