"""Datasets: load(name_or_path) -> (x_train, y_train, x_test, y_test).

x is float32 (N, D), y is int64 (N,). Images are scaled to [0, 1] and flattened.
"""

import numpy as np


def spiral(points_per_class=1000, classes=3, noise=0.2, seed=0, dtype=np.float32):
    """The classic 2-D spiral: `classes` interleaved arms, not linearly separable (CS231n's)."""
    rng = np.random.default_rng(seed)
    n = points_per_class * classes
    x = np.empty((n, 2), dtype)
    y = np.empty(n, np.int64)
    r = np.linspace(0.0, 1.0, points_per_class)
    for c in range(classes):
        t = np.linspace(c * 4.0, (c + 1) * 4.0, points_per_class) + rng.normal(0, noise, points_per_class)
        rows = slice(c * points_per_class, (c + 1) * points_per_class)
        x[rows, 0] = r * np.sin(t)
        x[rows, 1] = r * np.cos(t)
        y[rows] = c
    return x, y


def split(x, y, val_split, seed):
    """Shuffle with `seed` and cut off the last `val_split` fraction as the test set."""
    if not 0 < val_split < 1:
        raise ValueError(f"val_split must be in (0, 1), got {val_split}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * val_split)))
    if n_test >= len(x):
        raise ValueError(f"val_split {val_split} leaves no training rows out of {len(x)}")
    tr, te = order[:-n_test], order[-n_test:]
    return x[tr], y[tr], x[te], y[te]


def load(name, data_dir=None, val_split=0.2, seed=0):
    """`spiral` (embedded, generated), `mnist`, `fashion-mnist`, or a path to a .npz/.csv file."""
    if name == "spiral":
        x, y = spiral()
        return split(x, y, val_split, seed)
    raise ValueError(f"unknown dataset {name!r}")
