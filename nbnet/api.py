"""nb.train, nb.evaluate, nb.predict: the loop `nbnet train` runs (nbnet.train), from Python.

    model = nb.Sequential(nb.Linear(784, 256, seed=0), nb.ReLU(), nb.Linear(256, 10, seed=1))
    opt = nb.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = nb.train(model, opt, (x_train, y_train, x_test, y_test), epochs=10, batch_size=128,
                       val_split=0.1, early_stopping=3, restore_best=True)
    nb.evaluate(model, x_test, y_test)      # {"loss": ..., "accuracy": ...}
    nb.predict(model, x_new)                # classes (N,); proba=True: probabilities (N, C)

Features may be lists, integers or float64: they are converted to the model's dtype here (never
inside a layer's forward, which takes exactly its dtype). `loss` picks the task: "cross-entropy"
(integer labels, accuracy reported), "mse" (float targets, MSE and R² reported), "bce" (binary or
multi-label 0/1 targets; accuracy = the fraction of labels predicted right).
"""

import numpy as np

from . import train as _loop
from .data import whole
from .train import History, NothingToTrain, TrainingDiverged, TrainingInterrupted  # noqa: F401 - re-exported

train = _loop.train


def _check_batch_size(batch_size):
    # Before the features are converted (a copy of them all), as nb.train checks its own: predict's
    # loop, range(0, N, batch_size), ran no batch for a negative one and returned None.
    if not whole(batch_size, 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def evaluate(model, x, y, *, loss="cross-entropy", batch_size=1000, **unknown):
    """The model's mean loss on (x, y) and its metric, as a dict: {"loss", "accuracy"} for
    cross-entropy and bce (for bce the fraction of labels right); {"loss", "mse", "r2"} for mse
    (loss and mse are the same number)."""
    _loop.refuse_unknown_keywords("evaluate", unknown)
    _loop.check_loss(loss)
    _check_batch_size(batch_size)
    x, y = _loop.as_features(model, x), _loop.as_targets(model, y, loss)
    _loop.check_data(model, (x, y), loss, parts=("evaluated",))
    value, metric = _loop.evaluate(model, x, y, batch_size, loss=loss)
    if loss == "mse":
        return {"loss": value, "mse": value, "r2": metric}
    return {"loss": value, _loop.METRIC[loss]: metric}


def predict(model, x, *, loss="cross-entropy", proba=False, batch_size=1000, **unknown):
    """Predictions for the rows of x, a new array: for cross-entropy the class of each row (N,)
    int64, np.argmax of its logits (the first largest, a NaN counting as the largest), the class
    evaluate's accuracy counts, or with proba=True the class probabilities (N, C); for bce the 0/1 labels (N, L) int64
    (σ(z) ≥ ½), or with proba=True σ(z); for mse the outputs (N, D) (proba=True is an error)."""
    _loop.refuse_unknown_keywords("predict", unknown)
    _loop.check_loss(loss)
    _check_batch_size(batch_size)
    if not isinstance(proba, (bool, np.bool_)):  # "no" is truthy: it returned the probabilities
        raise ValueError(f"proba must be True or False, got {proba!r}")
    if proba and loss == "mse":  # it returned the outputs: a regression has no probabilities to ask for
        raise ValueError("proba=True is for cross-entropy and bce; with mse nb.predict returns the outputs")
    x = _loop.as_features(model, x)
    if len(x) == 0:  # as evaluate: else NumPy's "need at least one array to concatenate"
        raise ValueError("x is empty: no rows to predict")
    pred, scores = _loop.predict(model, x, batch_size, loss=loss, proba=bool(proba))
    return scores if proba else pred
