"""Parallel vs serial: from which work size does a kernel's `prange` start paying?

Measures, for nbnet.cpu kernels at MNIST widths (Linear 784->256, activations on 256 columns) and
batch sizes 1, 2, 4, ... 1024, the parallel kernel (all Numba threads) and the same Python function
compiled serially (prange then runs as range), and prints serial time / parallel time (> 1:
parallel is faster) and the work size (multiply-adds for Linear, else elements) from which parallel
wins at every larger size: below it, a kernel should run serially.

The serial copy is compiled here with `numba.njit(kernel.py_func)` *without* cache=True (also for
kernels that come as a `.serial`/`.parallel` pair): Numba's cache index keys on the function's name
and its signature but not on `parallel`, so two cached compilations of one Python function load
each other's code, and a cached serial copy would be loaded as nbnet's parallel kernel.

    python profiling/threshold.py                           # ~40 s
    python profiling/threshold.py --kernels linear_forward_act,relu_forward --max-batch 4096
"""

import argparse

import numba

from common import load_warning, mnist_cases, table, time_call

from nbnet import simd
from argtypes import GROUPS_ROW, PROCESS, ShowDefaults, check_memory, positive_int, seconds

# The kernels with a parallel twin: linear_forward and linear_backward_* are Python functions that
# choose among these (and the register-blocked linear_blocks) by shape, so they have none to time.
DEFAULT = ("linear_forward_act,linear_backward_params_rows,linear_backward_input_rows,relu_forward,relu_backward,"
           "softmax_crossentropy_forward,sgd_step")


def serial_and_parallel(kernel):
    """(serial, parallel) callables for a kernel, or a string saying why there are none. The
    serial one is compiled here, uncached, with the parallel one's options less `parallel`."""
    parallel = getattr(kernel, "parallel", kernel)  # a serial/parallel pair: its parallel half
    if not hasattr(parallel, "py_func"):
        return "a Python function that picks its kernels itself"
    options = {k: v for k, v in parallel.targetoptions.items() if k not in ("parallel", "nopython")}
    if not parallel.targetoptions.get("parallel"):
        return "compiled serial only"
    return numba.njit(**options)(parallel.py_func), parallel  # no cache=True: see the docstring


def main():
    parser = argparse.ArgumentParser(description="parallel vs serial crossover per kernel", formatter_class=ShowDefaults)
    parser.add_argument("--kernels", default=DEFAULT, help="comma-separated nbnet.cpu kernel names (default: "
                        + ", ".join(DEFAULT.split(",")) + ")")
    parser.add_argument("--max-batch", type=positive_int, default=1024, help="the largest batch size measured (powers of 2 up to it)")
    parser.add_argument("--min-time", type=seconds, default=0.05, help="seconds of timing per point")
    args = parser.parse_args()
    # The kernels' arrays at every power of two up to --max-batch are all made first: 2 x the largest rows.
    check_memory(parser, {"--max-batch": GROUPS_ROW * 2 * 2 ** (args.max_batch.bit_length() - 1)}, fixed=PROCESS)

    # A name that is no kernel here was timed as nothing, after every other, and listed at the end.
    unknown = [n for n in args.kernels.split(",") if n not in {c.name for c in mnist_cases(1)[0]}]
    if unknown:
        parser.error(f"argument --kernels: no kernel {', '.join(map(repr, unknown))} in nbnet.cpu to time")

    batches = [2**p for p in range(args.max_batch.bit_length()) if 2**p <= args.max_batch]
    print(simd.describe())
    print(f"parallel ({numba.get_num_threads()} threads) vs serial, float32; "
          f"ratio = serial time / parallel time, > 1: parallel is faster")
    if load_warning():
        print(load_warning())
    # The cases at every batch size, first (widest) Linear only: {batch: {name: case}}.
    by_batch = {}
    for k in batches:
        cases, _ = mnist_cases(k)
        by_batch[k] = {}
        for c in cases:
            by_batch[k].setdefault(c.name, c)

    summary = []
    for name in args.kernels.split(","):
        case = by_batch[batches[0]].get(name)
        if case is None or case.problem:
            summary.append([name, "-", "(not in nbnet.cpu)" if case is None else f"({case.problem})"])
            continue
        pair = serial_and_parallel(case.kernel)
        if isinstance(pair, str):
            summary.append([name, "-", f"({pair})"])
            continue
        serial, parallel = pair
        rows, crossover = [], None
        for k in batches:
            c = by_batch[k][name]
            ts = time_call(serial, *c.args, min_time=args.min_time)
            tp = time_call(parallel, *c.args, min_time=args.min_time)
            rows.append([k, f"{c.group.work:,}", f"{ts * 1e6:,.1f}", f"{tp * 1e6:,.1f}",
                         f"{ts / tp:.2f}"])
            if ts / tp <= 1.0:
                crossover = None  # parallel must win here and at every larger size
            elif crossover is None:
                crossover = (k, c.group.work)
        print(f"\n{name} ({case.group.label})")
        print(table(["batch", "work", "serial µs", "parallel µs", "ratio"], rows, [">"] * 5))
        summary.append([name, crossover[0], f"{crossover[1]:,}"] if crossover else [name, "never", ""])
    print("\nparallel wins from (and at every larger size up to the largest measured):")
    print(table(["kernel", "batch", "work"], summary))


if __name__ == "__main__":
    main()
