"""Linear-probe accuracy: multinomial logistic regression on frozen embeddings.

The regularization strength is chosen on a validation split carved from the training
set (never on the test set, which would overstate accuracy), then the model is refit on
the whole training set with the chosen value and scored once on test. Features are
standardized with training statistics so one C grid suits encoders of any scale.

C is chosen by validation accuracy, ties broken by validation log-loss. Good embeddings tie
at (near) 100% validation accuracy over a wide range of C; accuracy alone then always
picked the grid's smallest C (the tie rule), which under-fits the test set. The grid spans
1e-5 to 1e3 so the choice is not pinned to an end of it.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from trainer.eval.results import MetricResult

DEFAULT_CS: tuple[float, ...] = tuple(10.0 ** k for k in range(-5, 4))


@dataclass(frozen=True)
class LinearProbeResult(MetricResult):
    """``top1`` (test) and the validation accuracies are x100 to 2 decimals; ``val_log_loss``
    is the validation cross-entropy (nats) per C, the tie-breaker."""

    top1: float
    best_c: float
    val_top1: dict[float, float]
    val_log_loss: dict[float, float]
    n_train: int
    n_val: int
    n_test: int
    predictions: np.ndarray = field(repr=False)



def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded ``val_fraction`` of the items goes to validation.

    Every class with at least two items keeps at least one in each part; a class with one
    item stays in the fit part (it cannot be validated, but must still be learnable).
    """
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = 0 if len(members) < 2 else min(len(members) - 1, max(1, round(val_fraction * len(members))))
        val.extend(members[:n_val])
        fit.extend(members[n_val:])
    return np.sort(np.asarray(fit, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def _model(c: float, max_iter: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))


def _fit(model: Pipeline, x: np.ndarray, y: np.ndarray) -> Pipeline:
    # A probe that stops at max_iter is still a valid (slightly under-fit) probe; the
    # warning would bury the results table, so it is silenced here only.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def linear_probe(train: np.ndarray, train_labels: Sequence[object] | np.ndarray,
                 test: np.ndarray, test_labels: Sequence[object] | np.ndarray,
                 cs: Sequence[float] = DEFAULT_CS, val_fraction: float = 0.2, seed: int = 0,
                 max_iter: int = 1000, progress: Callable[[str], None] | None = None) -> LinearProbeResult:
    """Sweep ``cs`` on a validation split of train, refit on all of train, report test top-1.

    C is the one with the best validation accuracy; ties go to the lower validation log-loss.
    """
    x_train, x_test = np.asarray(train, dtype=np.float32), np.asarray(test, dtype=np.float32)
    y_train, y_test = np.asarray(train_labels), np.asarray(test_labels)
    if len(np.unique(y_train)) < 2:
        raise ValueError("a linear probe needs at least two classes in the training set")
    fit_idx, val_idx = stratified_split(y_train, val_fraction, seed)
    if len(val_idx) == 0:
        raise ValueError("no class has two training items: nothing to validate C on")
    val_top1: dict[float, float] = {}
    val_log_loss: dict[float, float] = {}
    for c in sorted(cs):
        model = _fit(_model(c, max_iter), x_train[fit_idx], y_train[fit_idx])
        proba = model.predict_proba(x_train[val_idx])  # predict() is its argmax: one pass for both
        val_top1[c] = round(float(np.mean(model.classes_[proba.argmax(axis=1)] == y_train[val_idx])) * 100.0, 2)
        val_log_loss[c] = float(log_loss(y_train[val_idx], proba, labels=model.classes_))
        if progress is not None:
            progress(f"C={c:g}: val top-1 {val_top1[c]:.2f}, log-loss {val_log_loss[c]:.4f}")
    best_c = max(val_top1, key=lambda c: (val_top1[c], -val_log_loss[c]))
    model = _fit(_model(best_c, max_iter), x_train, y_train)
    predictions = model.predict(x_test)
    return LinearProbeResult(
        top1=round(float(np.mean(predictions == y_test)) * 100.0, 2), best_c=best_c, val_top1=val_top1,
        val_log_loss=val_log_loss,
        n_train=len(y_train), n_val=len(val_idx), n_test=len(y_test), predictions=predictions)
