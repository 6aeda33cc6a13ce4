"""Claim: GPR1200-protocol mAP over 12,000 embeddings takes seconds, with bounded memory.

Times ``trainer.eval.retrieval.retrieval_metrics`` (chunked, exact ranks under the
``(-sim, index)`` tie rule, plus leave-one-out metrics) against a bare baseline on the
same data: one full ``n x n`` similarity matrix, one ``argsort(kind="stable")`` over it,
and AP from cumulative hits (self-match mAP only). Both must agree on the mAP; the script
fails otherwise. Data: ``--classes`` x ``--per-class`` random Gaussian embeddings
(default 1200 x 10 = 12,000, the GPR1200 size), ``--dim`` 768. Prints the median of
``--repeats`` runs as a markdown table row.

Run: ``.venv/bin/python benchmarks/bench_eval_map.py``
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from trainer.eval.retrieval import l2_normalize, retrieval_metrics


def baseline_map(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Self-match mAP the obvious way: whole similarity matrix, full stable argsort."""
    x = l2_normalize(embeddings)
    order = np.argsort(-(x @ x.T), axis=1, kind="stable")
    relevant = labels[order] == labels[:, None]
    del order
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, labels.shape[0] + 1)
    ap = (precision * relevant).sum(axis=1) / relevant.sum(axis=1)
    return round(float(ap.mean()) * 100.0, 2)


def _median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1200)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-baseline", action="store_true", help="when n x n does not fit in memory")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(args.classes), args.per_class)
    centers = rng.standard_normal((args.classes, args.dim)).astype(np.float32)
    embeddings = (centers[labels] * 0.3 + rng.standard_normal((labels.shape[0], args.dim))).astype(np.float32)
    n = labels.shape[0]

    ours_s, result = _median_seconds(lambda: retrieval_metrics(embeddings, labels), args.repeats)
    row = f"| eval mAP (GPR1200 protocol, + LOO, R@1) | n={n}, d={args.dim} | {ours_s:.2f} s | "
    if args.skip_baseline:
        row += "n/a | n/a |"
    else:
        base_s, base_map = _median_seconds(lambda: baseline_map(embeddings, labels), args.repeats)
        if base_map != result.map_gpr1200:
            raise SystemExit(f"mAP mismatch: ours {result.map_gpr1200} vs baseline {base_map}")
        row += f"{base_s:.2f} s (full stable argsort) | {base_s / ours_s:.1f}x |"
    print(f"mAP {result.map_gpr1200}  LOO mAP {result.map_leave_one_out}  "
          f"R@1 {result.recall_at_1_leave_one_out}  ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, median of {args.repeats})")
    print("| benchmark | data | ours (median) | baseline (median) | speed-up |")
    print("|---|---|---|---|---|")
    print(row)


if __name__ == "__main__":
    main()
