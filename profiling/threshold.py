"""Parallel vs serial: from which batch size does a kernel's `prange` start paying?

Measures, for a few nbnet.cpu kernels at MNIST widths and batch sizes 1, 2, 4, ... 1024, the time
of the kernel as shipped (@njit(parallel=True), all Numba threads) and of the same Python function
compiled serially (prange then runs as range), and prints the ratio serial / parallel (> 1:
parallel is faster) and the work size (elements or multiply-adds) at the crossover. Use it to
choose a size below which a kernel should run serially.

The serial copy is compiled with `numba.njit(kernel.py_func)` *without* cache=True: Numba's cache
index keys on the function and signature but not on `parallel`, so a cached serial copy would
overwrite (or be loaded as) the parallel kernel in nbnet's own cache.

    python profiling/threshold.py                           # ~40 s
    python profiling/threshold.py --kernels linear_forward,relu_forward --max-batch 4096
"""

import argparse

import numba
import numpy as np

from common import cpu_kernels, load_warning, rand, table, time_call

WIDTH, OUT = 784, 256  # the first MNIST layer


def make_args(name, k):
    """(arguments for batch size k, work per row: multiply-adds for Linear, else elements)."""
    x, g, w, b = rand(k, WIDTH), rand(k, OUT), rand(OUT, WIDTH), rand(OUT)
    a, da = rand(k, OUT), np.empty((k, OUT), np.float32)
    logits, labels = rand(k, 10), np.random.default_rng(0).integers(0, 10, k)
    cases = {
        "linear_forward": ((np.empty((k, OUT), np.float32), x, w, b), WIDTH * OUT),
        "linear_backward_params": ((np.zeros((OUT, WIDTH), np.float32), np.zeros(OUT, np.float32), g, x), WIDTH * OUT),
        "linear_backward_input": ((np.empty((k, WIDTH), np.float32), g, w), WIDTH * OUT),
        "relu_forward": ((da, a), OUT),
        "relu_backward": ((da, g, a), OUT),
        "softmax_forward": ((da, a), OUT),
        "softmax_crossentropy_forward": ((np.empty((k, 10), np.float32), np.empty(k, np.float32), logits, labels), 10),
    }
    return cases[name]


DEFAULT = "linear_forward,linear_backward_params,linear_backward_input,relu_forward,relu_backward,softmax_crossentropy_forward"


def main():
    parser = argparse.ArgumentParser(description="parallel vs serial crossover per kernel")
    parser.add_argument("--kernels", default=DEFAULT)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds of timing per point")
    args = parser.parse_args()

    kernels = cpu_kernels()
    batches = [2**p for p in range(0, args.max_batch.bit_length()) if 2**p <= args.max_batch]
    print(f"parallel ({numba.get_num_threads()} threads) vs serial, float32; "
          f"ratio = serial time / parallel time, > 1 means parallel is faster")
    if load_warning():
        print(load_warning())
    summary = []
    for name in args.kernels.split(","):
        if name not in kernels:
            print(f"\n{name}: not in nbnet.cpu, skipped")
            continue
        parallel = kernels[name]
        serial = numba.njit(parallel.py_func)  # no cache=True: see the docstring
        rows, crossover = [], None
        for k in batches:
            kargs, per_row = make_args(name, k)
            tp = time_call(parallel, *kargs, min_time=args.min_time)
            ts = time_call(serial, *kargs, min_time=args.min_time)
            rows.append([k, f"{k * per_row:,}", f"{ts * 1e6:,.1f}", f"{tp * 1e6:,.1f}", f"{ts / tp:.2f}"])
            if ts / tp > 1.0 and crossover is None:
                crossover = (k, k * per_row)
            elif ts / tp <= 1.0:
                crossover = None  # parallel must win at this size and every larger one
        print(f"\n{name}")
        print(table(["batch", "work", "serial µs", "parallel µs", "ratio"], rows, [">"] * 5))
        summary.append([name, crossover[0], f"{crossover[1]:,}"] if crossover else [name, "never", ""])
    print("\nparallel wins from (and at every larger size):")
    print(table(["kernel", "batch", "work"], summary))


if __name__ == "__main__":
    main()
