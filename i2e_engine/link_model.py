"""The disambiguation model: a small network over a few features of a (mention,
candidate) pair, fit on entity-linking gold sets, shipped as data.

Why a model and not hand-set weights: the signals disagree in ways that are hard to
weigh by hand (a surname's most popular bearer against the page of the surname itself, an
exact title against a popular redirect), and gold sets exist to weigh them. Why this
model: 23 features, one hidden layer of 32 ReLU units and a sigmoid; it fits in seconds,
runs as two small matrix products in numpy (scikit-learn only fits it), and scored higher
than a logistic regression on the same features at the same precision (BENCHMARKS.md).
``hidden=0`` fits the logistic regression instead.

Features (``FEATURES``; all in [0, 1] or small ranges, computed by
:func:`i2e_engine.linking.Linker.features_of`):

- ``prior``: P(entity | alias) from the alias index; ``top_prior``: the candidate has the
  key's largest prior; ``prior_margin``: its prior minus the best other candidate's;
  ``log_candidates``: log(1 + candidates of the key) / 5 (an ambiguous key);
- ``log_popularity``: log(1 + popularity) / 5 (redirects, titles that name it, source
  agreement); ``popularity_share``: popularity / the largest among the candidates;
- how the mention names the candidate: ``form_alias``, ``form_acronym``,
  ``form_name_part`` (a surname alone), ``in_text`` (the full name is another mention
  of the same text); the entity's own name is the reference;
- the mention: ``ner_person``, ``ner_place`` (GPE, LOC, FAC), ``ner_org``,
  ``ner_other`` (any other NER label), ``alias_only`` (found by the alias matcher only),
  ``single_token``, ``sentence_initial`` (its capital may be the sentence's), ``all_caps``,
  ``word_frequency`` (wordfreq's Zipf frequency of the mention in lower case / 8: "Good
  Morning" and "Win" are English words before they are names, "Minaj" is not);
- the candidate: ``person_shape`` (a name of two or three capitalized words),
  ``place_kind`` (a place kind or a "Town, Region" title);
- ``exact_case``: the mention (without a leading article) is the candidate's name
  written the same way, letter case included;
- ``context``: cosine of the words around the mention with the candidate's name and
  description (the other mentions of the text count: this is the coherence signal).

The NIL rule: the best candidate's probability under ``threshold`` is no link. The
threshold is chosen on the training data as the one that links the most mentions while
the links made stay right ``DEFAULT_MIN_PRECISION`` (80%) of the time there
(:func:`best_threshold`), so it is calibrated on data to a stated precision, not set by hand. The weights file records the KB
version it was fit with; the linker logs it when it links against another KB.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

FEATURES = ("prior", "top_prior", "prior_margin", "log_candidates", "log_popularity", "popularity_share",
            "form_alias", "form_acronym",
            "form_name_part", "in_text", "ner_person", "ner_place", "ner_org", "ner_other", "alias_only",
            "single_token", "sentence_initial", "all_caps", "word_frequency", "person_shape", "place_kind",
            "exact_case", "context")
WEIGHTS_PATH = Path(__file__).parent / "kb" / "link_model.json"
DEFAULT_MIN_PRECISION = 0.80
DEFAULT_HIDDEN = 32


@dataclass
class LinkModel:
    """A small network over ``features`` (names): ``layers`` of {"weights": in x out,
    "bias": out}, ReLU between them and a sigmoid at the end (one layer is a logistic
    regression); the NIL threshold on the probability; ``fit_info`` says what it was fit
    on (sets, sizes, versions)."""
    features: list[str]
    layers: list[dict]
    threshold: float
    fit_info: dict

    def __post_init__(self) -> None:
        if list(self.features) != list(FEATURES):
            raise ValueError(f"link model features {self.features} are not this engine's {list(FEATURES)}; "
                             "refit it (benchmarks/bench_linking.py --fit)")
        self._layers = [(np.asarray(layer["weights"], dtype=np.float64), np.asarray(layer["bias"], dtype=np.float64))
                        for layer in self.layers]
        if self._layers[0][0].shape[0] != len(FEATURES) or self._layers[-1][0].shape[1] != 1:
            raise ValueError(f"link model layers do not map {len(FEATURES)} features to one score")

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(candidate is the entity) for each row of a (candidates x features) matrix."""
        hidden = features
        for weights, bias in self._layers[:-1]:
            hidden = np.maximum(hidden @ weights + bias, 0.0)
        weights, bias = self._layers[-1]
        return 1.0 / (1.0 + np.exp(-(hidden @ weights + bias)[:, 0]))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path = WEIGHTS_PATH) -> "LinkModel":
        data = json.loads(Path(path).read_text())
        return cls(**{name: data[name] for name in ("features", "layers", "threshold", "fit_info")})

    def describe(self) -> str:
        """How much each feature weighs (its first-layer weights' norm), largest first."""
        first = self._layers[0][0]
        weight = np.linalg.norm(first, axis=1) * (np.sign(first[:, 0]) if first.shape[1] == 1 else 1.0)
        order = np.argsort(-np.abs(weight))
        hidden = [w.shape[1] for w, _ in self._layers[:-1]]
        lines = [f"  {self.features[i]:<16} {weight[i]:+.3f}" for i in order]
        return "\n".join([f"layers {[len(FEATURES), *hidden, 1]}, NIL under p = {self.threshold:.3f}; "
                          "first-layer weight per feature:", *lines])


@dataclass
class Example:
    """The candidates of one mention: a features matrix, and which rows are the gold
    entity (none when the gold entity is not a candidate, or the mention must not link)."""
    features: np.ndarray
    labels: np.ndarray


def fit(examples: Sequence[Example], hidden: int = DEFAULT_HIDDEN, min_precision: Optional[float] = DEFAULT_MIN_PRECISION,
        fit_info: Optional[dict] = None, seed: int = 0, without: Sequence[str] = ()) -> LinkModel:
    """A network with one hidden layer of ``hidden`` ReLU units (0: a logistic
    regression) on every candidate row, then the NIL threshold (:func:`best_threshold`)
    on the same examples (see the module docstring). Deterministic for a ``seed``.

    ``without`` names features the model must not use (ablations: what each signal is
    worth): they are zero while it is fit and their first-layer weights are zero after,
    so the model ignores them wherever it runs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    unknown = set(without) - set(FEATURES)
    if unknown:
        raise ValueError(f"no such link model features: {sorted(unknown)}")
    dropped = [FEATURES.index(name) for name in without]
    rows = [e for e in examples if len(e.labels)]
    x = np.concatenate([e.features for e in rows])
    x[:, dropped] = 0.0
    y = np.concatenate([e.labels for e in rows]).astype(int)
    if y.min() == y.max():
        raise ValueError("cannot fit the link model: the examples have only one class")
    if hidden:
        network = MLPClassifier((hidden,), max_iter=500, random_state=seed).fit(x, y)
        layers = [{"weights": w.tolist(), "bias": b.tolist()} for w, b in zip(network.coefs_, network.intercepts_)]
    else:
        regression = LogisticRegression(max_iter=2000).fit(x, y)
        layers = [{"weights": regression.coef_.T.tolist(), "bias": regression.intercept_.tolist()}]
    for index in dropped:
        layers[0]["weights"][index] = [0.0] * len(layers[0]["weights"][index])
    info = dict(fit_info or {}, candidates=int(len(y)), mentions=len(examples), min_precision=min_precision,
                hidden=hidden, seed=seed, **({"without": list(without)} if without else {}))
    model = LinkModel(list(FEATURES), layers, 0.5, info)
    model.threshold = best_threshold(model, examples, min_precision)
    return model


def decisions(model: LinkModel, examples: Sequence[Example]) -> list[tuple[float, bool]]:
    """(best probability, whether the best candidate is gold) per example with candidates."""
    out = []
    for example in examples:
        if len(example.labels):
            p = model.probability(example.features)
            best = int(np.argmax(p))
            out.append((float(p[best]), bool(example.labels[best])))
    return out


def best_threshold(model: LinkModel, examples: Sequence[Example], min_precision: Optional[float] = None) -> float:
    """The NIL threshold on the best candidate's probability. With ``min_precision``: the
    lowest threshold whose links (best candidates at or above it) are right at least that
    often, i.e. the most links a precision target allows ("no link beats a wrong link",
    made a number); without it, or when no threshold reaches the target: the threshold of
    the best F1 of correct links over links made and over mentions with a gold entity."""
    made = sorted(decisions(model, examples), key=lambda d: -d[0])
    gold = sum(1 for e in examples if e.labels.any()) or 1
    best_f1, best_t, lowest_precise, correct = -1.0, 1.0, None, 0
    for i, (p, right) in enumerate(made):
        correct += right
        if i + 1 < len(made) and made[i + 1][0] == p:
            continue
        precision, recall = correct / (i + 1), correct / gold
        f1 = 2 * precision * recall / (precision + recall) if correct else 0.0
        if f1 > best_f1:
            best_f1, best_t = f1, p
        if min_precision is not None and precision >= min_precision:
            lowest_precise = p
    return lowest_precise if lowest_precise is not None else best_t


def log_scaled(value: float) -> float:
    return math.log1p(max(0.0, value)) / 5.0
