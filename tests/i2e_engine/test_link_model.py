"""Fitting the link model (i2e_engine/link_model.py) on synthetic examples whose gold
candidate is known: what it learns, the calibrated NIL threshold, ablated features."""
from __future__ import annotations

import numpy as np
import pytest

from i2e_engine.link_model import FEATURES, Example, LinkModel, best_threshold, decisions, fit

PRIOR, CONTEXT = FEATURES.index("prior"), FEATURES.index("context")


def synthetic(n: int = 400, seed: int = 0) -> list[Example]:
    """Mentions of 3 candidates; the gold one has the largest prior + context (the other
    features are noise); every fifth mention's gold entity is no candidate."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.random((3, len(FEATURES)))
        labels = np.zeros(3, dtype=bool)
        if i % 5:
            labels[int(np.argmax(x[:, PRIOR] + x[:, CONTEXT]))] = True
        out.append(Example(x, labels))
    return out


def accuracy(model: LinkModel, examples: list[Example]) -> float:
    picks = [e.labels[int(np.argmax(model.probability(e.features)))] for e in examples if e.labels.any()]
    return float(np.mean(picks))


def test_the_model_learns_the_signal_and_its_threshold_keeps_the_precision(tmp_path):
    train, test = synthetic(seed=0), synthetic(seed=1)
    model = fit(train, hidden=8, min_precision=0.9)
    assert accuracy(model, test) > 0.7                     # chance is 1/3
    made = [(p, right) for p, right in decisions(model, train) if p >= model.threshold]
    assert made and sum(right for _, right in made) / len(made) >= 0.9
    model.save(tmp_path / "model.json")                    # shipped as data, read back the same
    loaded = LinkModel.load(tmp_path / "model.json")
    assert loaded.threshold == model.threshold
    assert np.allclose(loaded.probability(test[0].features), model.probability(test[0].features))


def test_a_model_fit_without_features_ignores_them():
    train = synthetic()
    model = fit(train, hidden=8, without=("prior",))
    assert model.fit_info["without"] == ["prior"]
    assert not np.any(np.asarray(model.layers[0]["weights"])[PRIOR])
    x = train[0].features.copy()
    changed = x.copy()
    changed[:, PRIOR] = 1.0 - changed[:, PRIOR]
    assert np.allclose(model.probability(x), model.probability(changed))
    full = fit(train, hidden=8)
    assert not np.allclose(full.probability(x), full.probability(changed))    # the full model reads it
    with pytest.raises(ValueError, match="no such"):
        fit(train, without=("not_a_feature",))


def test_fitting_needs_both_classes():
    examples = [Example(np.zeros((2, len(FEATURES))), np.zeros(2, dtype=bool))]
    with pytest.raises(ValueError, match="one class"):
        fit(examples)


def test_best_threshold_links_the_most_at_the_precision_asked():
    class Fixed:                      # probabilities given per example: its first row's feature 0
        def probability(self, features):
            return features[:, 0]

    rows = [(0.9, True), (0.8, True), (0.7, False), (0.6, True), (0.5, False), (0.4, False)]
    examples = [Example(np.array([[p]]), np.array([right])) for p, right in rows]
    assert best_threshold(Fixed(), examples, 0.75) == 0.6          # 3 right of 4 made
    assert best_threshold(Fixed(), examples, 1.0) == 0.8
