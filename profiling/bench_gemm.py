"""Linear kernels as a % of single-thread BLAS at the MLP's shapes, and a training step vs sgemm.

For each Linear of the 784-256-128-10 MLP (784->256, 256->128, 128->10) at batch 32, 128, 512,
float32 and float64: nbnet's forward (Y = X Wᵀ + b), dW (+= Gᵀ X, with db) and dX (= G W) on one
thread against np.dot of the same product with OpenBLAS pinned to one thread, measured interleaved
in this run (best of rounds each). "% BLAS" = np.dot's time / nbnet's time (above 100%: faster).
Then one whole training step at batch 512 (forward, loss, backward, SGD momentum) on one thread,
its GFLOP/s (6 flop per weight per sample) as a % of the sgemm peak (1024² np.dot, one thread).
Goal (issue #9): every kernel ≥ 70% (float32) / 60% (float64), the step ≥ 60%.
"as step" times the same kernel called as a Sequential's training step calls it (its planned calls,
nbnet.model._Plan: the serial twin directly), without the API function's routing and cpu.Kernel's
work and thread checks, ~0.5-1 µs of Python a call; what is left is Numba's dispatch (~0.5 µs for
six arguments) and the kernel. At a few µs a call (128->10 at batch 32) that Python is a quarter of
the time.

    python profiling/bench_gemm.py             # ~1-2 min
    python profiling/bench_gemm.py --quick     # batch 128 float32 only, a few seconds
"""

import os

# One BLAS thread and one Numba thread: set before numpy and numba start their pools.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from argtypes import PROCESS, STEP_ROW, ShowDefaults, check_memory, largest, names_from, parse_args, positive_int, positive_ints, seconds  # noqa: E402
from common import load_warning, match_blas, rand, training_step  # noqa: E402  (puts this checkout's nbnet first)
from nbnet import cpu, simd  # noqa: E402

LAYERS = ((784, 256), (256, 128), (128, 10))


# Everything here runs on the calling thread, so by default its CPU time is what is measured
# (time.thread_time): time spent descheduled on a loaded machine is not counted. --wall: wall time.
clock = time.thread_time


def best_interleaved(fns, rounds, min_time):
    """Best seconds per call of each function, alternating them round by round."""
    calls = []
    for fn in fns:
        fn()
        t0, n = clock(), 0
        while clock() - t0 < min_time / rounds:
            fn()
            n += 1
        calls.append(max(1, n))
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = clock()
            for _ in range(calls[i]):
                fn()
            best[i] = min(best[i], (clock() - t0) / calls[i])
    return best


def aligned(a):
    """a copied to an array that starts on a cache line (simd.empty)."""
    out = simd.empty(a.shape, a.dtype)
    out[...] = a
    return out


def kernel_rows(k, n, m, dtype, rounds, min_time):
    x, w, b, g = rand(k, n, dtype=dtype), rand(m, n, dtype=dtype, seed=1), rand(m, dtype=dtype), rand(k, m, dtype=dtype, seed=2)
    wT, gT = w.T, g.T  # BLAS reads NumPy's arrays as NumPy gives them; nbnet's start on a cache line,
    x, w, b, g = (aligned(a) for a in (x, w, b, g))  # as a model's buffers do (simd.empty)
    out, act, wt = simd.empty((k, m), dtype), simd.empty((k, m), dtype), simd.empty((n, m), dtype)
    dx, dw, db = simd.empty((k, n), dtype), simd.zeros((m, n), dtype), simd.zeros(m, dtype)
    o_fwd, o_dw, o_dx = np.empty((k, m), dtype), np.empty((m, n), dtype), np.empty((k, n), dtype)
    pairs = {
        "forward": (lambda: cpu.linear_relu_forward(out, act, x, w, b, wt), lambda: np.dot(x, wT, out=o_fwd),
                    cpu.forward_route(out, act, x, w, b, wt, True)),
        "dW": (lambda: cpu.linear_backward_params(dw, db, g, x, True), lambda: np.dot(gT, x, out=o_dw),
               [cpu.backward_params_route(dw, db, g, x, True)]),
        "dX": (lambda: cpu.linear_backward_input(dx, g, w), lambda: np.dot(g, w, out=o_dx),
               [cpu.backward_input_route(dx, g, w, dx, False)]),
    }
    rows = []
    for name, (ours, blas, route) in pairs.items():
        t_ours, t_blas, t_step = best_interleaved([ours, blas, as_step(route)], rounds, min_time)
        flops = 2.0 * k * n * m
        rows.append((f"{n}->{m}", k, name, np.dtype(dtype).name, t_ours * 1e6, t_step * 1e6, t_blas * 1e6,
                     flops / t_ours / 1e9, 100 * t_blas / t_ours, 100 * t_blas / t_step))
    return rows


def as_step(route):
    """The route's kernel calls as a planned training step makes them: each serial twin directly."""
    calls = [(kernel.serial if isinstance(kernel, cpu.Kernel) else kernel, args) for kernel, args in route]
    if len(calls) == 1:
        (fn, args), = calls
        return lambda: fn(*args)

    def run():
        for fn, args in calls:
            fn(*args)
    return run


def main():
    parser = argparse.ArgumentParser(description="Linear kernels vs single-thread BLAS, and a step vs sgemm", formatter_class=ShowDefaults)
    parser.add_argument("--batches", type=positive_ints, default="32,128,512", help="comma-separated batch sizes")
    parser.add_argument("--dtypes", type=names_from("float32", "float64"), default="float32,float64", help="comma-separated dtypes")
    parser.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds per kernel (the best kept)")
    parser.add_argument("--min-time", type=seconds, default=0.3, help="seconds of timing per kernel")
    parser.add_argument("--quick", action="store_true", help="batch 128, float32, short timings (options given win)")
    parser.add_argument("--wall", action="store_true", help="wall-clock time instead of the thread's CPU time")
    args = parse_args(parser, batches="128", dtypes="float32", rounds=2, min_time=0.03)
    # Per row at 784->256: x, dX and NumPy's dX (784 wide), the output, activation, G and NumPy's
    # outputs (256 wide), in the widest dtype asked for; then a training step at batch 512.
    size = 8 if "float64" in args.dtypes else 4
    check_memory(parser, {"--batches": (3 * 784 + 5 * 256) * size * largest(args.batches)},
                 fixed=PROCESS + 512 * STEP_ROW)
    global clock
    if args.wall:
        clock = time.perf_counter

    blas = match_blas()
    print(simd.describe())
    print(blas)
    print(f"one thread: OPENBLAS_NUM_THREADS=1, NUMBA_NUM_THREADS=1; best of interleaved rounds, "
          f"{'wall' if args.wall else 'thread CPU'} time")
    if load_warning():
        print(load_warning())
    print(f"\n{'layer':<9} {'batch':>5} {'kernel':<8} {'dtype':<8} {'nbnet µs':>9} {'as step':>8} {'BLAS µs':>8} "
          f"{'GFLOP/s':>8} {'% BLAS':>7} {'as step':>8}")
    worst = {}
    for dtype in args.dtypes.split(","):
        for k in map(int, args.batches.split(",")):
            for n, m in LAYERS:
                for row in kernel_rows(k, n, m, np.dtype(dtype).type, args.rounds, args.min_time):
                    print(f"{row[0]:<9} {row[1]:>5} {row[2]:<8} {row[3]:<8} {row[4]:9.1f} {row[5]:8.1f} {row[6]:8.1f} "
                          f"{row[7]:8.1f} {row[8]:6.0f}% {row[9]:7.0f}%")
                    low = worst.get(dtype, (1e9, 1e9))
                    worst[dtype] = (min(low[0], row[8]), min(low[1], row[9]))
    for dtype, (pct, step_pct) in worst.items():
        print(f"lowest % BLAS, {dtype}: {pct:.0f}% (as a training step calls them: {step_pct:.0f}%)")

    size = 256 if args.quick else 1024
    a, c, o = rand(size, size), rand(size, size, seed=1), np.empty((size, size), np.float32)
    batch = 128 if args.quick else 512
    step = training_step(batch)
    t_gemm, t_step = best_interleaved([lambda: np.dot(a, c, out=o), step], args.rounds, args.min_time * 3)
    peak = 2.0 * size**3 / t_gemm / 1e9
    params = sum(i * j + j for i, j in ((784, 256), (256, 128), (128, 10)))
    step_gflops = 6.0 * params * batch / t_step / 1e9
    print(f"\nsgemm {size}² one thread: {peak:.1f} GFLOP/s")
    print(f"training step, batch {batch}, one thread: {t_step * 1e6:.0f} µs, {step_gflops:.1f} GFLOP/s, "
          f"{100 * step_gflops / peak:.0f}% of sgemm")


if __name__ == "__main__":
    main()
