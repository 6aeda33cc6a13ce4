"""Linear probe: C chosen on validation carved from train, accuracy that can fail."""
from __future__ import annotations

import numpy as np

from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from trainer.eval.linear_probe import DEFAULT_CS, linear_probe, stratified_split


def _data(seed: int, separable: bool, n: int = 240, classes: int = 4, dim: int = 16):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((n, dim))
    if separable:
        x[np.arange(n), labels] += 4.0  # a linearly separable margin along one axis per class
    return x, labels


def test_separable_features_probe_well() -> None:
    x_train, y_train = _data(0, True)
    x_test, y_test = _data(1, True)
    result = linear_probe(x_train, y_train, x_test, y_test, cs=(0.01, 1.0, 100.0))
    assert result.top1 > 90.0
    assert set(result.val_top1) == {0.01, 1.0, 100.0}
    assert result.val_top1[result.best_c] == max(result.val_top1.values())
    assert result.n_val + len(y_train) - result.n_val == result.n_train


def test_accuracy_ties_go_to_the_c_with_the_lowest_validation_cross_entropy() -> None:
    """Widely separated classes: many Cs of the grid validate at 100%, so accuracy cannot
    choose among them; the tied C whose probabilities fit the validation labels best must win
    (computed here by hand from each C's predicted probability of the true class), not the
    smallest tied C (the old rule)."""
    x_train, y_train = _data(4, True)
    x_train[np.arange(len(y_train)), y_train] += 6.0
    x_test, y_test = _data(5, True)
    result = linear_probe(x_train, y_train, x_test, y_test)
    assert min(DEFAULT_CS) <= 1e-5 and max(DEFAULT_CS) >= 1e3
    tied = [c for c, top1 in result.val_top1.items() if top1 == 100.0]
    assert len(tied) >= 3
    fit, val = stratified_split(y_train, 0.2, seed=0)
    scaler = StandardScaler().fit(x_train[fit])
    nll = {}
    for c in DEFAULT_CS:
        clf = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(x_train[fit]), y_train[fit])
        p_true = clf.predict_proba(scaler.transform(x_train[val]))[np.arange(len(val)), y_train[val]]
        nll[c] = -np.mean(np.log(p_true))
    assert result.best_c == min(tied, key=nll.get)
    assert result.best_c != min(tied)  # what the old tie rule (smallest C) picked


def test_random_features_probe_near_chance() -> None:
    x_train, y_train = _data(2, False)
    x_test, y_test = _data(3, False)
    result = linear_probe(x_train, y_train, x_test, y_test, cs=(0.01, 1.0))
    assert result.top1 < 40.0  # chance is 25%


def test_stratified_split_keeps_every_class_learnable() -> None:
    labels = np.array(["a"] * 10 + ["b"] * 2 + ["solo"])
    fit, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(13))
    assert (labels[val] == "a").sum() == 2 and (labels[val] == "b").sum() == 1
    assert "solo" in labels[fit] and "solo" not in labels[val]
    assert set(labels[fit]) == {"a", "b", "solo"}
    again, _ = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(fit, again)
