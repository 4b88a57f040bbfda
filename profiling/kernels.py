"""Per-kernel table: every kernel of nbnet.cpu at MNIST shapes, batch 128.

Measures, for the 784-256-128-10 MLP (Linear 784->256, 256->128, 128->10; ReLU, Sigmoid, Tanh,
Softmax on 128x256; the losses on 128x10; SGD and Adam steps over its 235,146 parameters):
microseconds per call (best of several rounds, compilation excluded), GFLOP/s for the matmuls and
that as a % of the sgemm peak (np.dot on 1024x1024, measured in the same run), and the same
computation in NumPy with the ratio NumPy time / nbnet time (> 1: nbnet is faster). NumPy's BLAS
gets as many threads as nbnet's kernels (--threads, else Numba's count).
Every kernel nbnet.cpu holds is measured (see common.py), so new or fused kernels appear by
themselves; Linear FLOPs count the matmul only, fused extras (bias, ReLU) are not counted.

    python profiling/kernels.py                      # ~20 s, all Numba threads
    python profiling/kernels.py --batch 512 --threads 1 --dtype float64 --min-time 1
"""

import argparse

import numba
import numpy as np

from common import limit_blas, load_warning, match_blas, mnist_cases, sgemm_peak, table, thread_counts, threads_in_use, time_call

from nbnet import simd
from argtypes import GROUPS_ROW, PROCESS, ShowDefaults, check_memory, positive_int, seconds


def main():
    parser = argparse.ArgumentParser(description="per-kernel timings at MNIST shapes", formatter_class=ShowDefaults)
    parser.add_argument("--batch", type=positive_int, default=128, help="rows of every kernel's input")
    parser.add_argument("--threads", type=positive_int, default=None, help="Numba threads (default: all)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="dtype of every array")
    parser.add_argument("--min-time", type=seconds, default=0.2, help="seconds of timing per kernel")
    args = parser.parse_args()
    size = np.dtype(args.dtype).itemsize  # the rows are counted in float32
    check_memory(parser, {"--batch": GROUPS_ROW * size // 4 * args.batch}, fixed=PROCESS + 3 * 1024**2 * size)
    if args.threads and args.threads > numba.config.NUMBA_NUM_THREADS:  # else numba's ValueError, a traceback
        parser.error(f"argument --threads: at most {numba.config.NUMBA_NUM_THREADS} threads here (NUMBA_NUM_THREADS)")
    if args.threads:
        from nbnet import threads  # noqa: PLC0415

        threads.fix(args.threads)  # that many, whatever the load

    dtype = np.dtype(args.dtype).type
    blas = match_blas()
    blas_threads = limit_blas(args.threads or numba.get_num_threads())  # the NumPy column and the peak
    peak = sgemm_peak(dtype=dtype)
    print(simd.describe())
    print(f"{blas}; {blas_threads}")
    print(f"nbnet.cpu kernels, batch {args.batch}, {args.dtype}, {numba.get_num_threads()} Numba "
          f"thread(s); sgemm peak (np.dot 1024x1024 {args.dtype}): {peak:.1f} GFLOP/s")
    if load_warning():
        print(load_warning())
    print()

    cases, unowned = mnist_cases(args.batch, dtype)
    # NumPy first: once a Numba parallel region has run, its OpenMP threads keep spinning for a
    # while and would slow the BLAS threads that NumPy's reference calls use.
    refs = {}
    for c in cases:
        fn = (c.group.numpy or {}).get(c.name)
        if fn is not None:
            refs[id(c)] = time_call(fn, min_time=args.min_time)

    rows, problems, used = [], [], set()
    for c in cases:
        if c.problem:
            problems.append(f"{c.name}: {c.problem}")
            continue
        sec = time_call(c.kernel, *c.args, min_time=args.min_time)
        used.add(threads_in_use())
        gflops = c.group.flops / sec / 1e9 if c.group.flops else None
        ref = refs.get(id(c))
        rows.append([
            c.name, c.group.shape, f"{sec * 1e6:,.1f}",
            f"{gflops:.1f}" if gflops else "", f"{100 * gflops / peak:.0f}%" if gflops else "",
            f"{ref * 1e6:,.1f}" if ref else "", f"{ref / sec:.2f}x" if ref else "",
        ])
    print(table(["kernel", "shape", "µs/call", "GFLOP/s", "% peak", "NumPy µs", "NumPy/nbnet"], rows))
    for line in problems + [f"{n}: no shapes for it here (add a Group in common.py)" for n in unowned]:
        print("not measured: " + line)
    from nbnet import threads  # noqa: PLC0415

    # The header's count is Numba's; nbnet runs on fewer while other processes keep the cores busy
    # (--threads fixes it), and a kernel under its work threshold on one.
    print(f"nbnet's thread count at the end of each kernel's timing: {thread_counts(used)}; now {threads.describe()}")


if __name__ == "__main__":
    main()
