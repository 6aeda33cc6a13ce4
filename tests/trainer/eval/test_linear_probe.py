"""Linear probe: C chosen on validation carved from train, accuracy that can fail."""
from __future__ import annotations

import numpy as np

from trainer.eval.linear_probe import linear_probe, stratified_split


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
