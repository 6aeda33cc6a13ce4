"""``python -m trainer.eval``: evaluate one encoder on one dataset, print a table, write JSON."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from trainer.eval.caption_retrieval import caption_retrieval_metrics
from trainer.eval.datasets import ImageList, LabelledImages, load_coco_captions, load_labelled, read_domain_map
from trainer.eval.embeddings import default_cache_dir, embed_images, encoder_cache_key, stderr_progress
from trainer.eval.encoders import ImageEncoder, load_encoder
from trainer.eval.knn import knn_classify
from trainer.eval.linear_probe import linear_probe
from trainer.eval.retrieval import retrieval_metrics
from trainer.eval.zeroshot import zeroshot_classify

TASKS = ("retrieval", "knn", "linear_probe", "zeroshot", "caption_retrieval")

DESCRIPTION = """\
Evaluate an image encoder. All metrics are percentages (x100, 2 decimals).

Tasks (--tasks, comma-separated):
  retrieval          GPR1200 protocol on the evaluation set (--split-file, else the whole
                     dataset): every image queries all images, itself included (the
                     self-match is a relevant hit), full ranking with no cut-off, cosine of
                     L2-normalized float32 embeddings, ties broken by (-similarity, index).
                     map_gpr1200 = mean AP x100. Also, under their own names:
                     map_leave_one_out and recall_at_1_leave_one_out (query removed from its
                     own ranking; queries whose class has no other image are excluded), and
                     per_domain_map when --domain-map is given.
  knn                k-nearest-neighbour top-1 accuracy: test images (--split-file) are
                     classified by their --k nearest train images (--train-split), votes
                     weighted by exp(cos/0.07) or uniform (--knn-weighting); vote ties go
                     to the class of the nearest neighbour.
  linear_probe       logistic regression on frozen embeddings: C swept on a validation split
                     (20% of train, per class), refit on all train, top-1 on test.
  zeroshot           class names (underscores -> spaces) in prompt templates through the
                     encoder's text tower, templates averaged; top-1/top-5 on the evaluation
                     set. Skipped for encoders without a text tower.
  caption_retrieval  with --captions (COCO captions JSON): text-to-image and image-to-text
                     recall@1/5/10; an image query hits when any of its captions is in the
                     top K. Needs a text tower.
Default: retrieval,knn,linear_probe,zeroshot (+ caption_retrieval when --captions is given).
Tasks that cannot run (no --train-split, no text tower) are recorded as skipped, with why.

Encoders (--encoder): offline (pretrained EfficientNet-Lite0 pooled features),
open_clip:<arch>:<checkpoint file>, exported:<path> or an exported encoder directory.
Embeddings are cached under --cache-dir, keyed by encoder weights and image list, so a
rerun only recomputes the metrics.

Example (Caltech-101's fixed split):
  python -m trainer.eval --encoder offline --dataset ../shared/data/caltech101 \\
      --split-file test.txt --train-split train.txt --out results.json
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.eval", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", required=True, help="encoder spec (see above)")
    parser.add_argument("--dataset", help="image folder (class = subfolder), GPR1200 flat folder, or label file")
    parser.add_argument("--split-file", help="evaluation/test list (<relpath> or <relpath> <label> per line)")
    parser.add_argument("--train-split", help="training list for knn and linear_probe")
    parser.add_argument("--layout", choices=("auto", "folder", "gpr1200"), default="auto",
                        help="how to read a --dataset folder without a split file (default: auto)")
    parser.add_argument("--domain-map", help="file of '<category> <domain>' lines for per-domain mAP")
    parser.add_argument("--tasks", help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument("--captions", help="COCO captions JSON for caption_retrieval")
    parser.add_argument("--caption-images", help="image folder for --captions (default: beside annotations/)")
    parser.add_argument("--k", type=int, default=20, help="neighbours for knn (default 20)")
    parser.add_argument("--knn-weighting", choices=("similarity", "uniform"), default="similarity")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder call")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache (default: $MOFI_EVAL_CACHE or ~/.cache/mofi-eval)")
    parser.add_argument("--no-cache", action="store_true", help="always re-encode")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _tasks(args: argparse.Namespace) -> list[str]:
    if args.tasks:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise SystemExit(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
        return tasks
    tasks = ["retrieval", "knn", "linear_probe", "zeroshot"] if args.dataset else []
    return tasks + (["caption_retrieval"] if args.captions else [])


class _Runner:
    """Holds the encoder and embeds each image set once per run (and once ever, via the cache)."""

    def __init__(self, encoder: ImageEncoder, cache_dir: Path | None, batch_size: int):
        self.encoder, self.cache_dir, self.batch_size = encoder, cache_dir, batch_size
        self.encode_s = 0.0

    def embed(self, images: ImageList, label: str) -> np.ndarray:
        start = time.perf_counter()
        _log(f"embedding {len(images)} images ({label}) with {self.encoder.name}")
        out = embed_images(self.encoder, images, self.cache_dir, self.batch_size, stderr_progress(label))
        self.encode_s += time.perf_counter() - start
        return out


def run(args: argparse.Namespace) -> dict[str, object]:
    """Run the requested tasks; return the JSON-ready report."""
    tasks = _tasks(args)
    if not tasks:
        raise SystemExit("nothing to do: give --dataset and/or --captions")
    label_tasks = [t for t in tasks if t != "caption_retrieval"]
    if label_tasks and not args.dataset:
        raise SystemExit(f"--dataset is required for {', '.join(label_tasks)}")
    if "caption_retrieval" in tasks and not args.captions:
        raise SystemExit("caption_retrieval needs --captions")

    encoder = load_encoder(args.encoder, args.device)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    runner = _Runner(encoder, cache_dir, args.batch_size)
    domain_map = read_domain_map(args.domain_map) if args.domain_map else None
    results: dict[str, dict[str, object]] = {}
    report: dict[str, object] = {"encoder": encoder.name, "encoder_key": encoder_cache_key(encoder),
                                 "tasks": tasks, "results": results}
    start = time.perf_counter()

    if label_tasks:
        test_set = load_labelled(args.dataset, args.split_file, args.layout, domain_map)
        train_set: LabelledImages | None = (
            load_labelled(args.dataset, args.train_split, args.layout, domain_map) if args.train_split else None)
        report["dataset"] = {"path": str(args.dataset), "eval_set": test_set.name, "n_eval": len(test_set.labels),
                             "n_classes": len(test_set.class_names),
                             "train_set": train_set.name if train_set else None,
                             "n_train": len(train_set.labels) if train_set else 0}
        x_test = runner.embed(test_set.images, "eval set")
        x_train = runner.embed(train_set.images, "train set") if train_set else None

        if "retrieval" in tasks:
            results["retrieval"] = retrieval_metrics(x_test, test_set.labels, test_set.domains).as_dict()
        for task in ("knn", "linear_probe"):
            if task in tasks and x_train is None:
                results[task] = {"skipped": "needs --train-split (and --split-file as the test set)"}
        if "knn" in tasks and x_train is not None:
            results["knn"] = knn_classify(x_train, train_set.labels, x_test, test_set.labels,
                                          k=args.k, weighting=args.knn_weighting).as_dict()
        if "linear_probe" in tasks and x_train is not None:
            _log("linear probe: sweeping C on a validation split of train")
            results["linear_probe"] = linear_probe(x_train, train_set.labels, x_test, test_set.labels,
                                                   progress=lambda m: _log(f"  {m}")).as_dict()
        if "zeroshot" in tasks:
            results["zeroshot"] = (zeroshot_classify(encoder, x_test, test_set.labels).as_dict()
                                   if encoder.has_text_tower else {"skipped": f"{encoder.name} has no text tower"})

    if "caption_retrieval" in tasks:
        if encoder.has_text_tower:
            captions = load_coco_captions(args.captions, args.caption_images)
            x_images = runner.embed(captions.images, "caption images")
            x_texts = np.concatenate([encoder.encode_texts(list(captions.captions[i:i + 256]))
                                      for i in range(0, len(captions.captions), 256)])
            results["caption_retrieval"] = caption_retrieval_metrics(x_images, x_texts, captions.caption_image)
        else:
            results["caption_retrieval"] = {"skipped": f"{encoder.name} has no text tower"}

    report["timing_s"] = {"encode": round(runner.encode_s, 2), "total": round(time.perf_counter() - start, 2)}
    return report


def format_table(report: dict[str, object]) -> str:
    """A readable ``task | metric | value`` table of the report's results."""
    rows = [("task", "metric", "value")]
    for task, metrics in report["results"].items():
        for metric, value in metrics.items():
            if isinstance(value, dict):
                rows.extend((task, f"{metric}[{key}]", str(v)) for key, v in value.items())
            else:
                rows.append((task, metric, str(value)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join([f"encoder: {report['encoder']}", *lines])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    print(format_table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        _log(f"wrote {args.out}")
    return 0
