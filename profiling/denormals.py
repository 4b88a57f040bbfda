"""Do subnormal (denormal) floats occur in training, and would they slow the kernels?

Two measurements, one run:
1. Train a 784-256-128-10 ReLU MLP on MNIST (or MNIST-shaped random data when the files are
   absent) and count subnormal values in every activation, gradient, weight and momentum value
   after each step (the optimizers store a subnormal momentum as 0: see nbnet/cpu.py).
2. Time the Linear kernels on normal inputs and on inputs made entirely of subnormals (the worst
   case), to see what the hardware charges for them (x86 cores without FTZ/DAZ often take a
   microcode assist per subnormal operand).

    python profiling/denormals.py [--data-dir DIR] [--steps 469]
"""

import argparse
import time

import numpy as np

from argtypes import MNIST_HELP, ShowDefaults, directory, found_mnist, mnist_dirs, positive_int
from common import load_warning  # first: it puts this checkout's nbnet first

import nbnet as nb
from nbnet import cpu, simd


def subnormals(arr):
    a = np.abs(arr)
    return int(np.count_nonzero((a > 0) & (a < np.finfo(arr.dtype).tiny)))


def count_in_training(x, y, steps, batch_size=128):
    model = nb.Sequential([nb.Linear(784, 256, seed=0), nb.ReLU(), nb.Linear(256, 128, seed=1), nb.ReLU(),
                           nb.Linear(128, 10, seed=2)])
    loss_fn, opt = nb.SoftmaxCrossEntropy(), nb.SGD(model.parameters(), lr=0.1, momentum=0.9)
    found = seen = 0
    for step, (xb, yb) in enumerate(nb.batches(x, y, batch_size, seed=0)):
        if step == steps:
            break
        opt.zero_grad()
        loss_fn.forward(model.forward(xb), yb)
        model.backward(loss_fn.backward(), need_input_grad=True)
        opt.step()
        arrays = [p.data for p in model.parameters()] + [p.grad for p in model.parameters()]
        arrays += [a for layer in model.layers for a in (layer.out, layer.dinp) if a is not None]
        arrays += [a for st in opt.state for a in st.values() if a is not None]  # momentum (flushed below tiny)
        found += sum(subnormals(a) for a in arrays)
        seen += sum(a.size for a in arrays)
    return found, seen, min(step + 1, steps)


def best_of(fn, repeats=20):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=ShowDefaults)
    ap.add_argument("--data-dir", type=directory, default=None, help=MNIST_HELP + ", else random MNIST-shaped rows)")
    ap.add_argument("--steps", type=positive_int, default=469, help="training steps to scan (469 = one epoch at batch 128)")
    args = ap.parse_args()
    if args.data_dir and len(nb.datasets.find_idx("mnist", args.data_dir)) < len(nb.datasets.IDX_FILES):
        ap.error(f"argument --data-dir: {args.data_dir!r} does not hold MNIST's four IDX files")
    print(simd.describe())
    if load_warning():
        print(load_warning())
    folder = args.data_dir or found_mnist(mnist_dirs())
    try:
        if folder is None:
            raise ValueError("no MNIST found")
        x, y, _, _ = nb.datasets.load("mnist", data_dir=folder)
        source = f"MNIST from {folder}"
    except ValueError as e:
        if args.data_dir:  # a folder the user named: its MNIST, not random rows in its stead
            ap.error(f"argument --data-dir: {e}")
        rng = np.random.default_rng(0)
        x, y = rng.random((60000, 784), dtype=np.float32), rng.integers(0, 10, 60000)
        source = "random MNIST-shaped data (no MNIST files found)"
    found, seen, steps = count_in_training(x, y, args.steps)
    print(f"1. {source}, {steps} steps: {found:,} subnormal values among {seen:,} scanned "
          f"({found / max(seen, 1):.2e})")

    rng = np.random.default_rng(1)
    k, n, m = 128, 784, 256
    tiny = np.finfo(np.float32).tiny
    cases = {
        "normal": (rng.standard_normal((k, n)).astype(np.float32), rng.standard_normal((k, m)).astype(np.float32)),
        "all subnormal": ((rng.random((k, n)) * tiny / 2).astype(np.float32),
                          (rng.random((k, m)) * tiny / 2).astype(np.float32)),
    }
    w, b = rng.standard_normal((m, n)).astype(np.float32), np.zeros(m, np.float32)
    out, dw, db, dx = np.empty((k, m), np.float32), np.zeros((m, n), np.float32), np.zeros(m, np.float32), np.empty((k, n), np.float32)
    print(f"2. Linear {n}->{m}, batch {k}, float32: µs per call")
    print(f"   {'inputs':<14} {'forward':>9} {'dW':>9} {'dX':>9}")
    times = {}
    for name, (xin, g) in cases.items():
        assert name == "normal" or subnormals(xin) == xin.size
        times[name] = [best_of(lambda: cpu.linear_forward(out, xin, w, b)),
                       best_of(lambda: cpu.linear_backward_params(dw, db, g, xin, True)),
                       best_of(lambda: cpu.linear_backward_input(dx, g, w))]
        print(f"   {name:<14} " + " ".join(f"{t * 1e6:9.1f}" for t in times[name]))
    ratios = [s / n for s, n in zip(times["all subnormal"], times["normal"])]
    print("   slowdown      " + " ".join(f"{r:8.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
