"""Mini-batches. Every batch iterator here (and nbnet.gpu.DeviceDataset) takes its order from
`batch_order`, so they all give exactly the same batches for the same seed."""

import numpy as np

from . import simd


def whole(value, least):
    """Whether `value` is an integer (a NumPy one too) of at least `least`. bool is an int to Python,
    but True is no batch size, epoch count or patience (scikit-learn's early_stopping=True)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= least


def share(n, rank, size):
    """Rows [lo, hi) of n that process `rank` of `size` takes: contiguous, sizes differ by at most 1."""
    return n * rank // size, n * (rank + 1) // size


def batch_order(n, batch_size, shuffle, seed):
    """The row order of an epoch: a permutation from np.random.default_rng(seed), or None for
    rows in order. `seed` may be an int or a sequence of ints (e.g. (seed, epoch))."""
    if not whole(batch_size, 1):
        raise ValueError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(shuffle, (bool, np.bool_)):  # "no" is truthy: it shuffled
        raise ValueError(f"batches: shuffle must be True or False, got {shuffle!r}")
    if not shuffle:
        return None
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError):  # NumPy's words ("expected non-negative integer") name no argument
        raise ValueError(f"batches: seed must be None or an integer ≥ 0 (or a sequence of them), got {seed!r}") from None
    return rng.permutation(n)


def _check_lengths(x, y):
    if len(x) != len(y):
        raise ValueError(f"batches: x has {len(x)} rows but y has {len(y)}")


def batches(x, y, batch_size, shuffle=True, seed=None):
    """Yield (xb, yb) mini-batches of `batch_size` rows (the last one may be smaller).

    With shuffle, the order is a permutation from np.random.default_rng(seed): the same seed gives
    the same batches. `seed` may be an int or a sequence of ints (e.g. (seed, epoch)). Lists,
    tuples and ranges are made arrays (they cannot be indexed by the shuffled rows).
    """
    # Whatever is not a host or GPU array made an array: a pandas DataFrame has a shape too, but
    # df[rows] picks columns (a KeyError, or silently other batches). What is then no sequence of
    # rows (a generator, None, a number) is refused here, not by len() below.
    rows = [a if isinstance(a, np.ndarray) or hasattr(a, "copy_to_host") else np.asarray(a) for a in (x, y)]
    if any(a.ndim == 0 for a in rows):
        raise TypeError(f"batches: x and y must be arrays or sequences of rows, got "
                        f"{type(x).__name__} and {type(y).__name__}")
    x, y = rows
    _check_lengths(x, y)
    order = batch_order(len(x), batch_size, shuffle, seed)
    for start in range(0, len(x), batch_size):
        idx = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
        yield x[idx], y[idx]


def batches_reusing(x, y, batch_size, shuffle=True, seed=None, part=(0, 1)):
    """Like `batches` (same batches, same order), but gathers each batch into two buffers made once,
    so a training step allocates nothing. Each yielded pair is overwritten by the next one: use it
    in a training loop, not to keep batches. (In order, the batches are views of x and y.)
    part=(rank, size): only rows share(len(batch), rank, size) of every batch (possibly
    none), the share of one of `size` data-parallel processes."""
    _check_lengths(x, y)
    order = batch_order(len(x), batch_size, shuffle, seed)
    rank, size = part
    if order is None:
        for xb, yb in batches(x, y, batch_size, shuffle=False):
            lo, hi = share(len(xb), rank, size)
            yield xb[lo:hi], yb[lo:hi]
        return
    rows = -(-min(batch_size, len(x)) // size)
    xbuf = simd.empty((rows,) + x.shape[1:], x.dtype)  # aligned: the kernels read it by vectors
    ybuf = np.empty((rows,) + y.shape[1:], y.dtype)
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        lo, hi = share(len(idx), rank, size)
        idx = idx[lo:hi]
        xb, yb = xbuf[: len(idx)], ybuf[: len(idx)]
        # mode="clip": the order's indices are in range, and the default mode="raise" with `out`
        # gathers into a temporary array first and copies it over (2.2x the time at batch 512).
        np.take(x, idx, axis=0, out=xb, mode="clip")
        np.take(y, idx, axis=0, out=yb, mode="clip")
        yield xb, yb
