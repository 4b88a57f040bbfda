"""The serial and parallel twins of the element-wise kernels (nbnet.cpu.Kernel) give the same bits:
which twin runs depends on the size only, so a run must not change with it (or with threads)."""

import numpy as np
import pytest

from nbnet import cpu

F = np.float32


def _args(name, rng):
    a = lambda *shape: rng.standard_normal(shape).astype(F)  # noqa: E731
    k, c, n = 37, 11, 1000
    probs = rng.random((k, c)).astype(F) + F(0.01)
    labels = rng.integers(0, c, k)
    return {
        "relu_forward": (a(k, c), a(k, c)),
        "relu_backward": (a(k, c), a(k, c), a(k, c)),
        "sigmoid_forward": (a(k, c), a(k, c)),
        "sigmoid_backward": (a(k, c), a(k, c), a(k, c)),
        "tanh_backward": (a(k, c), a(k, c), a(k, c)),
        "crossentropy_backward": (a(k, c), probs, labels),
        "softmax_crossentropy_backward": (a(k, c), probs, labels),
        "mse_backward": (a(k, c), a(k, c), a(k, c)),
        "bce_with_logits_backward": (a(k, c), a(k, c), rng.random((k, c)).astype(F)),
        "sgd_step": (a(n), a(n), a(n), F(0.1), F(0.9), F(0.01), True),
        "adam_step": (a(n), a(n), a(n), np.abs(a(n)), F(0.9), F(0.999), F(1e-8), F(0.01), F(0.99), F(0.1), F(0.3)),
    }[name]


NAMES = ["relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward", "tanh_backward",
         "crossentropy_backward", "softmax_crossentropy_backward", "mse_backward", "bce_with_logits_backward",
         "sgd_step", "adam_step"]


@pytest.mark.parametrize("name", NAMES)
def test_serial_and_parallel_twins_agree_bitwise(name):
    kernel = getattr(cpu, name)
    assert isinstance(kernel, cpu.Kernel)
    args = _args(name, np.random.default_rng(0))
    one = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
    two = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
    kernel.serial(*one)
    kernel.parallel(*two)
    for x, y in zip(one, two):
        if isinstance(x, np.ndarray):
            assert x.tobytes() == y.tobytes()
    changed = [not np.array_equal(x, y) for x, y in zip(one, args) if isinstance(x, np.ndarray)]
    assert any(changed)  # the kernel wrote something
