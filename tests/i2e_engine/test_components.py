"""The distributed connected components of near copies (i2e_engine.dedup.components),
compared with scipy's on graphs of chains, stars and many components, through the bare
runner's flow (Beam's and Spark's place the same functions: the parity tests)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from i2e_engine.dedup import components
from pipelines.local import ListFlow


def _scipy_labels(edges):
    """Vertex -> the smallest vertex of its component, for vertices not their own label."""
    vertices = sorted({v for edge in edges for v in edge})
    index = {v: i for i, v in enumerate(vertices)}
    graph = coo_matrix((np.ones(len(edges)), ([index[a] for a, _ in edges], [index[b] for _, b in edges])),
                       shape=(len(vertices), len(vertices)))
    _, labels = connected_components(graph, directed=False)
    smallest = {}
    for vertex, label in zip(vertices, labels):
        smallest.setdefault(label, vertex)   # vertices are sorted: the first is the smallest
    return {v: smallest[label] for v, label in zip(vertices, labels) if smallest[label] != v}


class _CountingFlow(ListFlow):
    rounds = 0

    def known_empty(self, items):
        self.rounds += 1
        return super().known_empty(items)


def _labels(edges, rounds=20):
    flow = _CountingFlow()
    labelled = components.label_components(flow, edges, rounds)
    labels = dict(labelled)
    assert len(labels) == len(labelled)   # one label a vertex
    return labels, flow.rounds


def _name(i, rng=None):
    return f"{i:05d}" if rng is None else f"{rng.randrange(10**9):09d}"


@pytest.mark.parametrize("order", ["sorted", "reversed", "shuffled"])
def test_a_chain_is_one_component_labelled_by_its_smallest_vertex(order):
    vertices = [_name(i) for i in range(500)]
    if order == "reversed":
        vertices.reverse()
    elif order == "shuffled":
        random.Random(1).shuffle(vertices)
    edges = list(zip(vertices, vertices[1:]))
    labels, rounds = _labels(edges)
    assert labels == _scipy_labels(edges) and set(labels.values()) == {"00000"}
    assert rounds <= 12


def test_stars_chains_and_many_components_match_scipy():
    rng = random.Random(7)
    edges = []
    for c in range(30):   # stars around a random centre, chains, and random trees
        members = [_name(0, rng) for _ in range(rng.randrange(2, 40))]
        shape = c % 3
        if shape == 0:
            edges += [(members[0], m) for m in members[1:]]
        elif shape == 1:
            edges += list(zip(members, members[1:]))
        else:
            edges += [(members[i], members[rng.randrange(i)]) for i in range(1, len(members))]
    edges += [("x", "y"), ("y", "x")]   # both directions of one pair
    labels, _ = _labels(edges)
    assert labels == _scipy_labels(edges)


def test_the_earlier_example_and_no_edges():
    labels, _ = _labels([("b", "c"), ("c", "d"), ("x", "y"), ("a", "d")])
    assert labels == {"b": "a", "c": "a", "d": "a", "y": "x"}
    assert _labels([]) == ({}, 1)


def test_too_few_rounds_fail_naming_the_setting():
    vertices = [_name(i) for i in range(200)]
    with pytest.raises(components.ComponentsNotConverged, match="component_rounds"):
        _labels(list(zip(vertices, vertices[1:])), rounds=3)


def test_the_star_steps_and_their_changes():
    step = components.Step
    assert sorted(components.large_star("c", ["a", "d", "e"])) == [step(("d", "a"), True), step(("e", "a"), True)]
    assert list(components.large_star("a", ["c", "b"])) == [step(("c", "a"), False), step(("b", "a"), False)]
    assert sorted(components.small_star("e", ["b", "a", "c"])) == [
        step(("b", "a"), True), step(("c", "a"), True), step(("e", "a"), False)]
    assert list(components.small_star("e", ["a", "a"])) == [step(("e", "a"), False)]   # a duplicate edge goes
    assert components.oriented(("a", "b")) == ("b", "a")
