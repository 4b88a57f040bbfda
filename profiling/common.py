"""What the profiling scripts share: the kernel cases at MNIST shapes, a timer, the sgemm peak.

Not a script: kernels.py, threads.py and threshold.py import it. Kernels are looked up in nbnet.cpu
by name when a script runs, so whatever nbnet.cpu holds then (e.g. a faster linear_forward) is what
gets measured, and any extra kernel named `<case>_<something>` (a variant) is timed beside it.
"""

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from numba.core.registry import CPUDispatcher

import nbnet as nb
from nbnet import cpu


@dataclass
class Case:
    kernel: str  # name in nbnet.cpu
    shape: str  # what a reader needs to place it, e.g. "128x784 @ 784->256"
    args: tuple
    flops: float = 0.0  # multiply-adds x 2, for matmuls; 0: not a matmul
    numpy: Callable = None  # the same computation in NumPy, as a reference
    tags: tuple = field(default=())


def rand(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def mnist_cases(batch=128, dtype=np.float32):
    """Forward and backward of every layer of the 784-256-128-10 MNIST MLP, plus optimizer steps
    over all its 235,146 parameters."""
    k = batch
    cases = []
    for n, m in ((784, 256), (256, 128), (128, 10)):
        x, w, b, g = rand(k, n, dtype=dtype), rand(m, n, dtype=dtype), rand(m, dtype=dtype), rand(k, m, dtype=dtype)
        y, dx = np.empty((k, m), dtype), np.empty((k, n), dtype)
        dw, db = np.zeros((m, n), dtype), np.zeros(m, dtype)
        shape = f"{k}x{n} -> {m}"
        flops = 2.0 * k * n * m
        cases += [
            Case("linear_forward", shape, (y, x, w, b), flops, lambda x=x, w=w, b=b, y=y: np.add(np.dot(x, w.T, out=y), b, out=y)),
            Case("linear_backward_params", shape, (dw, db, g, x), flops, lambda g=g, x=x: (np.dot(g.T, x), g.sum(0))),
            Case("linear_backward_input", shape, (dx, g, w), flops, lambda g=g, w=w, dx=dx: np.dot(g, w, out=dx)),
        ]
    x, g = rand(k, 256, dtype=dtype), rand(k, 256, dtype=dtype, seed=1)
    out, dx, yy = np.empty((k, 256), dtype), np.empty((k, 256), dtype), np.empty((k, 256), dtype)
    y = np.random.default_rng(2).uniform(0.01, 0.99, (k, 256)).astype(dtype)  # a forward's output
    s = f"{k}x256"
    cases += [
        Case("relu_forward", s, (out, x), numpy=lambda: np.maximum(x, 0, out=yy)),
        Case("relu_backward", s, (dx, g, x), numpy=lambda: np.multiply(g, x >= 0, out=yy)),
        Case("sigmoid_forward", s, (out, x), numpy=lambda: np.divide(1, 1 + np.exp(-x), out=yy)),
        Case("sigmoid_backward", s, (dx, g, y), numpy=lambda: g * y * (1 - y)),
        Case("tanh_forward", s, (out, x), numpy=lambda: np.tanh(x, out=yy)),
        Case("tanh_backward", s, (dx, g, y), numpy=lambda: g * (1 - y * y)),
        Case("softmax_forward", s, (out, x), numpy=lambda: _np_softmax(x)),
        Case("softmax_backward", s, (dx, g, y), numpy=lambda: y * (g - (g * y).sum(1, keepdims=True))),
    ]
    z, t = rand(k, 10, dtype=dtype), np.random.default_rng(0).integers(0, 10, k)
    p, losses, dz = _np_softmax(z), np.empty(k, dtype), np.empty((k, 10), dtype)
    cases += [
        Case("softmax_crossentropy_forward", f"{k}x10", (p, losses, z, t),
             numpy=lambda: -np.log(_np_softmax(z)[np.arange(k), t]).mean()),
        Case("softmax_crossentropy_backward", f"{k}x10", (dz, p, t),
             numpy=lambda: _np_softmax(z) - np.eye(10, dtype=dtype)[t]),
    ]
    n = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    param, grad = rand(n, dtype=dtype), rand(n, dtype=dtype, seed=1) * dtype(1e-3)
    buf, m1, v1 = np.zeros(n, dtype), np.zeros(n, dtype), np.zeros(n, dtype)
    d = dtype
    cases += [
        Case("sgd_step", f"{n} params", (param, grad, buf, d(0.01), d(0.9), d(0), False),
             numpy=lambda: (np.multiply(buf, 0.9, out=buf), np.add(buf, grad, out=buf),
                            np.subtract(param, d(0.01) * buf, out=param))),
        Case("adam_step", f"{n} params",
             (param, grad, m1, v1, d(0.9), d(0.999), d(1e-8), d(0), d(1), d(1e-3), d(0.03)),
             numpy=lambda: _np_adam(param, grad, m1, v1)),
    ]
    return cases


def _np_softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _np_adam(param, grad, m, v):
    m += 0.1 * (grad - m)
    v *= 0.999
    v += 0.001 * grad * grad
    param -= 1e-3 * m / (np.sqrt(v) / 0.03 + 1e-8)


def cpu_kernels():
    """{name: dispatcher} for every compiled kernel in nbnet.cpu, as it is now."""
    return {name: obj for name, obj in vars(cpu).items() if isinstance(obj, CPUDispatcher)}


def variants(case_name, kernels, case_names):
    """The case's kernel, then any `<case>_<suffix>` kernel that is not itself a case (a variant)."""
    names = [case_name] if case_name in kernels else []
    names += sorted(n for n in kernels if n.startswith(case_name + "_") and n not in case_names)
    return names


def time_call(fn, *args, min_time=0.2, repeat=5):
    """Seconds per call: the best of `repeat` rounds of enough calls to last min_time/repeat each.
    The first call (compilation, first touch of memory) is not timed."""
    fn(*args)
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < min_time / repeat / 4:
        fn(*args)
        calls += 1
    per_round = max(1, int(calls * 4))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(per_round):
            fn(*args)
        best = min(best, (time.perf_counter() - t0) / per_round)
    return best


def sgemm_peak(n=1024, dtype=np.float32):
    """GFLOP/s of np.dot on two n x n float32 matrices: what this machine's BLAS reaches, measured
    now, with the threads NumPy's BLAS uses (see `nbnet info` / OMP_NUM_THREADS)."""
    a, b = rand(n, n, dtype=dtype), rand(n, n, dtype=dtype, seed=1)
    out = np.empty((n, n), dtype)
    return 2.0 * n**3 / time_call(lambda: np.dot(a, b, out=out), min_time=0.5, repeat=3) / 1e9


def table(headers, rows, aligns=None):
    """Rows of strings as an aligned text table (numbers right-aligned)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    aligns = aligns or ["<"] + [">"] * (len(headers) - 1)
    line = lambda r: "  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(r, aligns, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def training_step(batch=128, dtype=np.float32):
    """A function doing one SGD training step of the 784-256-128-10 MLP on a fixed random batch."""
    model = nb.Sequential([
        nb.Linear(784, 256, dtype=dtype, seed=0), nb.ReLU(),
        nb.Linear(256, 128, dtype=dtype, seed=1), nb.ReLU(),
        nb.Linear(128, 10, dtype=dtype, seed=2),
    ])
    loss_fn = nb.SoftmaxCrossEntropy()
    opt = nb.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = np.random.default_rng(0).uniform(0, 1, (batch, 784)).astype(dtype)
    y = np.random.default_rng(1).integers(0, 10, batch)

    def step():
        opt.zero_grad()
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()

    return step


def load_warning():
    """A line to print when other processes compete for the cores (timings are then unreliable)."""
    load, cores = os.getloadavg()[0], os.cpu_count()
    if load > 0.5 * cores:
        return (f"warning: load average {load:.1f} on {cores} cores: other processes are running, "
                "timings are noisy; rerun on a quiet machine for figures to quote")
    return None
