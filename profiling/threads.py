"""Thread scaling: each nbnet.cpu kernel and one whole training step at 1, 2, ... Numba threads.

Measures microseconds per call at MNIST shapes, batch 128 (the cases of kernels.py), with
nbnet.threads.fix(t) (t threads whatever the load) for each t in --threads, and the speed-up
over 1 thread. Results are the same bitwise at every thread count (each output element has one
owner); only the time changes. A speed-up well below t on a small kernel means waking the threads
costs about as much as the work: threshold.py finds where parallel starts paying.

    python profiling/threads.py                   # 1 and 2 threads, ~30 s
    python profiling/threads.py --threads 1,2,4,8 --batch 512
"""

import argparse

import numba

from common import load_warning, mnist_cases, table, time_call, training_step

from nbnet import simd
from nbnet import threads as nbthreads
from nbnet.check import threading_layer
from argtypes import GROUPS_ROW, PROCESS, STEP_ROW, ShowDefaults, check_memory, positive_int, positive_ints, seconds


def main():
    parser = argparse.ArgumentParser(description="thread scaling of nbnet.cpu kernels", formatter_class=ShowDefaults)
    parser.add_argument("--threads", type=positive_ints, default=None,
                        help="comma-separated thread counts (default: 1,2, or 1 where Numba has one thread)")
    parser.add_argument("--batch", type=positive_int, default=128, help="rows of every kernel's input and of the training step")
    parser.add_argument("--min-time", type=seconds, default=0.1, help="seconds of timing per point")
    args = parser.parse_args()
    check_memory(parser, {"--batch": (GROUPS_ROW + STEP_ROW) * args.batch}, fixed=PROCESS)  # the kernels' arrays, a step
    # The default is not the user's to get wrong: with NUMBA_NUM_THREADS=1 (or a one-CPU cpuset,
    # Numba's default there) "1,2" was a usage error on an option nobody typed.
    counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)})
    if max(counts) > numba.config.NUMBA_NUM_THREADS:
        parser.error(f"argument --threads: at most {numba.config.NUMBA_NUM_THREADS} threads here (NUMBA_NUM_THREADS)")

    print(simd.describe())
    print(f"thread scaling, batch {args.batch}, float32")
    if load_warning():
        print(load_warning())
    cases, _ = mnist_cases(args.batch)
    work = [(c.name, c.group.shape, c.kernel, c.args) for c in cases if not c.problem]
    work.append(("training step", "784-256-128-10 SGD", training_step(args.batch), ()))

    rows = []
    for name, shape, fn, fargs in work:
        times = []
        for t in counts:
            nbthreads.fix(t)
            times.append(time_call(fn, *fargs, min_time=args.min_time))
        rows.append([name, shape] + [f"{s * 1e6:,.1f}" for s in times]
                    + [f"{times[0] / s:.2f}x" for s in times[1:]])
    print(f"threading layer: {threading_layer()}\n")
    headers = (["kernel", "shape"] + [f"µs @ {t}" for t in counts]
               + [f"speed-up @ {t}" for t in counts[1:]])
    print(table(headers, rows))


if __name__ == "__main__":
    main()
