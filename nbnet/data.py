"""Mini-batches."""

import numpy as np


def batches(x, y, batch_size, shuffle=True, seed=None):
    """Yield (xb, yb) mini-batches of `batch_size` rows (the last one may be smaller).

    With shuffle, the order is a permutation from np.random.default_rng(seed): the same seed gives
    the same batches. `seed` may be an int or a sequence of ints (e.g. (seed, epoch)).
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"batches: x has {n} rows but y has {len(y)}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
    if shuffle:
        order = np.random.default_rng(seed).permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
    else:
        for start in range(0, n, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
