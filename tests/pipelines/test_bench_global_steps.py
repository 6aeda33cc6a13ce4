"""The global-steps benchmark (benchmarks/bench_global_steps.py) runs end to end in its smoke
mode: the shipped components and semantic dedup on Spark and Beam, in fresh processes, each
reporting its labels, drops and driver peak RSS."""
from __future__ import annotations

import pytest

from benchmarks import bench_global_steps

pytestmark = pytest.mark.e2e


def test_smoke_run_reports_every_size_on_both_runners(tmp_path):
    report = bench_global_steps.main(["--smoke", "--runners", "spark,beam", "--out", str(tmp_path / "out.json")])
    runs = {(run["runner"], run["rows"]): run for run in report["runs"]}
    assert set(runs) == {(runner, rows) for runner in ("spark", "beam") for rows in bench_global_steps.SMOKE_SIZES}
    for (runner, rows), run in runs.items():
        edges = [edge for part in range(bench_global_steps.PARTITIONS)
                 for edge in bench_global_steps.chain_edges(part, rows)]
        vertices = {v for edge in edges for v in edge}
        assert run["labels"] == len(vertices) - len(_components(edges))   # every vertex but the labels
        # one row in 10 is a near copy of the row before it (a copy whose k-means cluster
        # differs from its original's is missed); both runners decide the same
        assert 0.9 * rows // bench_global_steps.COPY_EVERY <= run["semantic_dropped"] <= rows // 10
        assert run["semantic_dropped"] == runs[("spark", rows)]["semantic_dropped"]
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
