"""The global-steps benchmark (benchmarks/bench_global_steps.py) runs end to end in its smoke
mode: the shipped components and semantic dedup on Spark, in fresh processes, each
reporting its labels, drops and driver peak RSS."""
from __future__ import annotations

import pytest

from benchmarks import bench_global_steps

pytestmark = pytest.mark.e2e


def test_smoke_run_reports_every_size(tmp_path):
    """On Spark only (each size is a fresh process with its own session); Beam's component
    rounds and semantic dedup are tested in test_components_runners.py and test_parity.py."""
    report = bench_global_steps.main(["--smoke", "--runners", "spark", "--out", str(tmp_path / "out.json")])
    runs = {(run["runner"], run["rows"]): run for run in report["runs"]}
    assert set(runs) == {("spark", rows) for rows in bench_global_steps.SMOKE_SIZES}
    for (runner, rows), run in runs.items():
        edges = [edge for part in range(bench_global_steps.PARTITIONS)
                 for edge in bench_global_steps.chain_edges(part, rows)]
        vertices = {v for edge in edges for v in edge}
        assert run["labels"] == len(vertices) - len(_components(edges))   # every vertex but the labels
        # one row in 10 is a near copy of the row before it (a copy whose k-means cluster
        # differs from its original's is missed)
        assert 0.9 * rows // bench_global_steps.COPY_EVERY <= run["semantic_dropped"] <= rows // 10
        assert run["driver_peak_rss_mb"] > 0
    assert (tmp_path / "out.json").exists()


def _components(edges):
    parent = {}

    def root(v):
        while parent.setdefault(v, v) != v:
            v = parent[v]
        return v

    for a, b in edges:
        parent[root(a)] = root(b)
    return {root(v) for v in list(parent)}
