"""Per-kernel table: every forward and backward kernel of nbnet.cpu at MNIST shapes, batch 128.

Measures, for each kernel of the 784-256-128-10 MLP (Linear 784->256, 256->128, 128->10; ReLU,
Sigmoid, Tanh, Softmax on 128x256; fused softmax + cross-entropy on 128x10; SGD and Adam steps over
its 235,146 parameters): microseconds per call (best of several rounds, compilation excluded),
GFLOP/s for the matmuls, that as % of the sgemm peak (np.dot on 1024x1024 float32, measured in the
same run), and the same computation in NumPy with the ratio NumPy time / nbnet time (> 1: nbnet is
faster). Kernels are looked up in nbnet.cpu by name, so faster kernels show up as soon as they land;
kernels named `<kernel>_<suffix>` are timed as variants beside the kernel they replace.

    python profiling/kernels.py                      # ~20 s, threads as Numba chooses
    python profiling/kernels.py --batch 512 --threads 1 --dtype float64 --min-time 1
"""

import argparse

import numba
import numpy as np

from common import cpu_kernels, load_warning, mnist_cases, sgemm_peak, table, time_call, variants


def main():
    parser = argparse.ArgumentParser(description="per-kernel timings at MNIST shapes")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds of timing per kernel")
    args = parser.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    if load_warning():
        print(load_warning())

    dtype = np.dtype(args.dtype).type
    peak = sgemm_peak(dtype=dtype)
    print(f"nbnet.cpu kernels, batch {args.batch}, {args.dtype}, {numba.get_num_threads()} Numba "
          f"thread(s); sgemm peak (np.dot 1024x1024 {args.dtype}): {peak:.1f} GFLOP/s\n")

    kernels = cpu_kernels()
    cases = mnist_cases(args.batch, dtype)
    case_names = {c.kernel for c in cases}
    # NumPy first: once a Numba parallel region has run, its OpenMP threads keep spinning for a
    # while and would slow the BLAS threads that NumPy's reference calls use.
    refs = [time_call(c.numpy, min_time=args.min_time) if c.numpy else None for c in cases]
    rows, absent = [], []
    for case, ref in zip(cases, refs):
        names = variants(case.kernel, kernels, case_names)
        if not names:
            absent.append(case.kernel)
        for name in names:
            try:
                sec = time_call(kernels[name], *case.args, min_time=args.min_time)
            except Exception as e:  # a variant with a different signature
                rows.append([name, case.shape, f"error: {type(e).__name__}", "", "", "", ""])
                continue
            gflops = case.flops / sec / 1e9 if case.flops else None
            rows.append([
                name, case.shape, f"{sec * 1e6:,.1f}",
                f"{gflops:.1f}" if gflops else "", f"{100 * gflops / peak:.0f}%" if gflops else "",
                f"{ref * 1e6:,.1f}" if ref else "", f"{ref / sec:.2f}x" if ref else "",
            ])
    print(table(["kernel", "shape", "µs/call", "GFLOP/s", "% peak", "NumPy µs", "NumPy/nbnet"], rows))
    measured = {r[0] for r in rows}
    others = sorted(set(kernels) - measured)
    if absent:
        print(f"\nnot in nbnet.cpu (renamed?): {', '.join(absent)}")
    if others:
        print(f"\nnot measured here: {', '.join(others)}")


if __name__ == "__main__":
    main()
