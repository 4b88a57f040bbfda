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


def batches_reusing(x, y, batch_size, shuffle=True, seed=None):
    """Like `batches` (same batches, same order), but gathers each batch into two buffers reused for
    every batch of the same size: no allocation per step. Each yielded pair is overwritten by the
    next one, so use it in a training loop, not to keep batches."""
    xb = yb = None
    for idx in _orders(len(x), batch_size, shuffle, seed, len(y)):
        if xb is None or xb.shape[0] != len(idx):
            xb = np.empty((len(idx),) + x.shape[1:], x.dtype)
            yb = np.empty((len(idx),) + y.shape[1:], y.dtype)
        np.take(x, idx, axis=0, out=xb)
        np.take(y, idx, axis=0, out=yb)
        yield xb, yb


def _orders(n, batch_size, shuffle, seed, ny):
    if ny != n:
        raise ValueError(f"batches: x has {n} rows but y has {ny}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
