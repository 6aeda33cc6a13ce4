"""Connected components of the near-copy graph, computed with the runner, never in one process.

The alternating algorithm of Kiveris et al. 2014 ("Connected Components in MapReduce and
Beyond"): edges are kept *oriented*, ``(high, low)`` with ``high > low`` (string order), and
each round is

1. *large-star*: group every vertex ``u`` with all its neighbours; ``m`` is the smallest of
   them and ``u``; every neighbour ``v > u`` is re-attached to ``m``;
2. *small-star*: group every vertex ``u`` with its smaller neighbours; ``m`` is the smallest
   of them; ``u`` and those neighbours (but ``m``) are attached to ``m``;
each step counting its *changes*: large-star an edge re-attached elsewhere than ``u``,
small-star an edge of ``u``'s neighbour other than the smallest.

Neither step adds to the number of edges, each keeps every component connected, and a round
without a change is a fixed point where each component is a star around its smallest vertex
(and, conversely, such a star forest changes nothing): the edges are then exactly
``(vertex, label)``, once, for every vertex but the label (the component's smallest vertex,
which labels itself), the label ``scipy.sparse.csgraph`` with sorted vertices gives (the
tests compare the two). The rounds needed grow like the logarithm of a
component's diameter (O(log^2 n) proven; a chain of 10^4 vertices takes 15, of 10^5 18).

Each round moves every edge through two group-bys (about 50 bytes an edge:
10^7 edges, 1% near copies in 10^9 images, is 0.5 GB across the cluster per step); a group
holds one vertex's neighbours (a star's centre holds its component). Nothing goes through
one process but, on Spark and the bare loop, a count of a round's changes.

How many rounds: ``DedupConfig.component_rounds`` at most. Spark and the bare loop stop at
the first round without a change; Beam's graph is static, so it runs all of them and checks
in the pipeline that the last one changed nothing. Any runner fails, naming the setting,
when the graph needs more rounds: labels are never silently wrong.
"""
from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

from i2e_engine.flow import Flow

Edge = tuple[str, str]
"""An oriented edge ``(high, low)``, ``high > low``."""


class Step(NamedTuple):
    """An edge a star step emits, and whether it differs from the edge it replaces."""
    edge: Edge
    changed: bool


class ComponentsNotConverged(RuntimeError):
    """The near-copy graph needed more rounds than ``DedupConfig.component_rounds``."""

    def __init__(self, rounds: int):
        super().__init__(f"connected components of near copies did not converge in {rounds} rounds "
                         f"(DedupConfig.component_rounds = {rounds}): raise it and rerun")
        self.rounds = rounds

    def __reduce__(self):   # pickled into a Beam step, raised on a worker
        return type(self), (self.rounds,)


def oriented(edge: tuple[str, str]) -> Edge:
    a, b = edge
    return (a, b) if a > b else (b, a)


def both_directions(edge: Edge) -> tuple[Edge, Edge]:
    """Large-star's input: each vertex keyed with each of its neighbours."""
    high, low = edge
    return (high, low), (low, high)


def large_star(vertex: str, neighbours: Iterable[str]) -> Iterator[Step]:
    """Every neighbour larger than ``vertex`` is attached to the smallest of its neighbourhood
    (``vertex`` and its neighbours): a change when that is not ``vertex`` itself.
    ``neighbours`` is iterated twice, never held."""
    smallest = min(min(neighbours), vertex)
    return (Step((v, smallest), smallest != vertex) for v in neighbours if v > vertex)


def small_star(vertex: str, smaller: Iterable[str]) -> Iterator[Step]:
    """``vertex`` and its other smaller neighbours are attached to the smallest of them: a
    change for each other neighbour (``vertex``'s own edge to the smallest stays)."""
    smallest = min(smaller)
    yield Step((vertex, smallest), False)
    yield from (Step((v, smallest), True) for v in smaller if v != smallest)


def label_components(flow: Flow, edges, rounds: int):
    """(vertex, label) for every vertex of an edge that is not its component's label, the
    label being the component's smallest vertex. ``edges``: distinct near pairs ``(a, b)``.

    GLOBAL, through the runner: see the module docstring for what each round moves."""
    if rounds < 1:
        raise ValueError(f"component_rounds must be >= 1, got {rounds}")
    edges = flow.map("Orient edges", edges, oriented)
    for round_ in range(1, rounds + 1):
        neighbours = flow.group_by_key(f"Neighbours {round_}",
                                       flow.flat_map(f"Both directions {round_}", edges, both_directions))
        large = flow.cache(flow.flat_map(f"Large-star {round_}", neighbours, lambda group: large_star(*group)))
        smaller = flow.group_by_key(f"Smaller neighbours {round_}", flow.map(f"Edges {round_}", large, _edge))
        small = flow.cache(flow.flat_map(f"Small-star {round_}", smaller, lambda group: small_star(*group)))
        changes = flow.flatten(f"Changes {round_}", flow.filter(f"Large-star changes {round_}", large, _changed),
                               flow.filter(f"Small-star changes {round_}", small, _changed))
        edges = flow.map(f"Star edges {round_}", small, _edge)
        if flow.known_empty(changes):
            return edges
    flow.fail_if_any("Check components converged", changes, ComponentsNotConverged(rounds))
    return edges


def _edge(step: Step) -> Edge:
    return step.edge


def _changed(step: Step) -> bool:
    return step.changed
