"""Step latency at small batches: the loop users write, nbnet vs PyTorch CPU.

One training step as interface.md writes it (zero_grad, forward, loss, backward, step) of the
784-256-128-10 MLP, SGD momentum, float32, at batch 1 and 8, with 1 and 2 threads (each in a fresh
process with NUMBA_NUM_THREADS / OMP_NUM_THREADS set, and torch.set_num_threads). Prints the median
µs per step of each, interleaved in chunks, and nbnet's over PyTorch's (goal, issue #9: ≤ 0.2×).
At these sizes the arithmetic is ~1 MFLOP per sample (step_flops): what is measured is per-step
overhead (Python, kernel calls, waking threads) and moving the parameters, their gradients and
the velocity (4.7 MB in the optimizer's pass alone). Beside them, a lower bound for any such step on this
machine ("bound": the step's memory traffic or its FLOPs at the sgemm rate, then the optimizer's
pass; see _streams and main), and bound/torch: the ratio to PyTorch no code keeping the
interface's loop could beat here. A second table splits nbnet's step into its phases.

    python profiling/bench_step.py            # ~30 s
    python profiling/bench_step.py --quick    # 1 thread, a few seconds
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from argtypes import PROCESS, STEP_ROW, ShowDefaults, check_memory, largest, parse_args, positive_int, positive_ints  # noqa: E402
from bench_vs_torch import torch_mlp  # noqa: E402
from common import child_env, sgemm_peak, thread_counts, threads_in_use  # noqa: E402


def nbnet_step(x, y, planned=True):
    import nbnet as nb  # noqa: PLC0415

    model = nb.Sequential([nb.Linear(784, 256, seed=0), nb.ReLU(), nb.Linear(256, 128, seed=1), nb.ReLU(),
                           nb.Linear(128, 10, seed=2)])
    loss_fn, opt = nb.SoftmaxCrossEntropy(), nb.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if not planned:  # the calls layer by layer, as before Sequential planned them (nbnet.model._Plan)
        model._plan_after = float("inf")

    def step():
        opt.zero_grad()
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    def phased():
        """The same step, timed phase by phase: seconds of PHASES."""
        t0 = time.perf_counter()
        opt.zero_grad()
        t1 = time.perf_counter()
        out = model.forward(x)
        t2 = time.perf_counter()
        loss_fn.forward(out, y)
        g = loss_fn.backward()
        t3 = time.perf_counter()
        model.backward(g)
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4
    step.phased = phased
    return step


SIZES = ((784, 256), (256, 128), (128, 10))  # the MLP's Linear layers, (in, out)


def _streams():
    """The step's memory traffic alone, over flat float32 arrays of the MLP's parameter count, each
    pass split into prange chunks that one thread streams, as the kernels' row blocks are. Each
    loop runs over a slice from 0: an index Numba cannot prove non-negative gets a wrap-around check
    that kept LLVM from vectorizing (5× slower)."""
    import numba  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    count = sum(i * o + o for i, o in SIZES)
    w, g, v = (np.full(count, 0.5, np.float32) for _ in range(3))
    parts = 64

    @numba.njit(parallel=True, fastmath=True)
    def read(w):
        sums = np.zeros(parts, np.float32)
        for p in numba.prange(parts):
            s = np.float32(0.0)
            part = w[p * w.size // parts:(p + 1) * w.size // parts]
            for i in range(part.size):
                s += part[i]
            sums[p] = s
        return sums.sum()

    @numba.njit(parallel=True)
    def write(g, value):
        for p in numba.prange(parts):
            part = g[p * g.size // parts:(p + 1) * g.size // parts]
            for i in range(part.size):
                part[i] = value

    @numba.njit(parallel=True, fastmath=True)
    def momentum(w, g, v, lr, mu):
        for p in numba.prange(parts):
            lo, hi = p * w.size // parts, (p + 1) * w.size // parts
            wp, gp, vp = w[lo:hi], g[lo:hi], v[lo:hi]
            for i in range(wp.size):
                vi = mu * vp[i] + gp[i]
                vp[i] = vi
                wp[i] -= lr * vi

    lr, mu = np.float32(1e-9), np.float32(0.9)

    def traffic():  # the forward reads every parameter, the backward writes every gradient
        write(g, read(w) * np.float32(1e-12))

    def sweep():  # the optimizer's pass: read weight, gradient and velocity, write weight and velocity
        momentum(w, g, v, lr, mu)
    return traffic, sweep


def step_flops(batch):
    """The step's arithmetic: forward and dW of every layer, dX of all but the first."""
    return sum(2 * batch * i * o * (3 if n else 2) for n, (i, o) in enumerate(SIZES))


PHASES = ("zero_grad", "forward", "loss", "backward", "opt.step")


def torch_step(x, y):
    import torch  # noqa: PLC0415

    model, opt, loss_fn = torch_mlp("cpu")
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = loss_fn(model(tx), ty)
        loss.backward()
        opt.step()
        loss.item()  # nbnet's loss is a Python float: the same sync
    return step


def chunks(steps, parts=10):
    """`steps` split into at most `parts` interleaved chunks, as even as they go: every step asked
    for is timed (steps // 10 per chunk timed none below 10 steps, and no median came out)."""
    parts = min(parts, steps)
    return [steps // parts + (i < steps % parts) for i in range(parts)]


def worker(threads, batches, steps):
    import numpy as np  # noqa: PLC0415

    traffic, sweep = _streams()
    makers = {"nbnet": nbnet_step, "layers": lambda x, y: nbnet_step(x, y, planned=False),
              "traffic": lambda x, y: traffic, "sweep": lambda x, y: sweep}
    try:
        import torch  # noqa: PLC0415

        torch.set_num_threads(threads)
        makers["torch"] = torch_step
    except ImportError:
        pass
    result, peak = {}, sgemm_peak()
    for bs in batches:
        rng = np.random.default_rng(0)
        x, y = rng.random((bs, 784), dtype=np.float32), rng.integers(0, 10, bs)
        fns = {name: make(x, y) for name, make in makers.items()}
        times, used = {name: [] for name in fns}, set()
        for fn in fns.values():  # warm-up, 0.5 s each: compilation, caches, allocator, threads
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.5:
                fn()
        for chunk in chunks(steps):  # interleaved
            for name, fn in fns.items():
                for _ in range(chunk):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
                    if name in ("nbnet", "layers"):  # the count nbnet ran the step on (it adapts it to the load)
                        used.add(threads_in_use())
        result[bs] = {name: statistics.median(v) for name, v in times.items()}
        result[bs]["nbnet threads"] = thread_counts(used)
        result[bs]["arith"] = step_flops(bs) / (peak * 1e9)
        # nbnet's step phase by phase, after the interleaved timing (so its timer calls, ~0.1 µs
        # each, stay out of the figures above): where the time goes
        phases = [fns["nbnet"].phased() for _ in range(steps)]
        result[bs]["phases"] = [statistics.median(p[i] for p in phases) for i in range(len(PHASES))]
    return result


def main():
    parser = argparse.ArgumentParser(description="step latency at batch 1 and 8: nbnet vs PyTorch CPU", formatter_class=ShowDefaults)
    parser.add_argument("--batch-sizes", type=positive_ints, default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=positive_ints, default="1,2", help="comma-separated thread counts, each in a process of its own")
    parser.add_argument("--steps", type=positive_int, default=1000, help="timed steps per contender and batch size")
    parser.add_argument("--quick", action="store_true", help="1 thread, 100 steps (options given win)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, threads="1", steps=100)
    # Three contenders' steps at the largest batch, and each timed step's figures (three floats in
    # lists, the phases' tuple): a hostile size is a usage error before any work.
    check_memory(parser, {"--batch-sizes": 3 * STEP_ROW * largest(args.batch_sizes), "--steps": 320 * args.steps},
                 fixed=PROCESS)
    if args.worker:
        print(json.dumps(worker(int(args.threads), list(map(int, args.batch_sizes.split(","))), args.steps)))
        return

    sys.path.insert(0, os.path.dirname(HERE))
    from common import match_blas, missing_peers  # noqa: PLC0415
    from nbnet import simd  # noqa: PLC0415

    blas = match_blas()  # the workers inherit its OPENBLAS_CORETYPE (the bound's sgemm rate)
    print(simd.describe())
    print(blas)
    print(f"training step (zero_grad, forward, loss, backward, step), MLP 784-256-128-10, SGD momentum, float32; "
          f"median of {args.steps}")
    if os.getloadavg()[0] > 0.5 * os.cpu_count():
        print(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: timings are noisy")
    print("(layers: nbnet with its forward and backward run layer by layer, not as planned calls)")
    print("(nbnet thr: the thread counts nbnet ran the timed steps on, fewer than threads while other processes "
          "keep the cores busy)")
    print("(bound: max(memory, arithmetic) of forward and backward, then the optimizer's pass. Memory: every "
          "parameter read and every gradient written once, timed as plain loops over arrays of the MLP's size; "
          "arithmetic: the step's FLOPs at the sgemm rate of np.dot on 1024² matrices with as many threads; the "
          "pass: weight, gradient and velocity read, weight and velocity written. A step that keeps them as "
          "float32 arrays between calls, as the interface's loop does (a user may read .grad before step), "
          "takes at least this: bound/torch is the best ratio to PyTorch any code could reach here)")
    print(f"\n{'threads':>7} {'batch':>5} {'nbnet µs':>9} {'layers µs':>10} {'bound µs':>9} {'torch µs':>9} "
          f"{'nbnet/torch':>12} {'bound/torch':>12} {'nbnet thr':>9}")
    phases, results = [], []
    for t in args.threads.split(","):
        env = child_env(NUMBA_NUM_THREADS=t, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t)
        done = subprocess.run([sys.executable, __file__, "--worker", "--threads", t, "--batch-sizes", args.batch_sizes,
                               "--steps", str(args.steps)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"worker failed:\n{done.stderr[-3000:]}")
        for bs, res in json.loads(done.stdout.strip().splitlines()[-1]).items():
            torch_us = f"{res['torch'] * 1e6:9.0f}" if "torch" in res else f"{'-':>9}"
            ratio = f"{res['nbnet'] / res['torch']:11.2f}x" if "torch" in res else f"{'-':>12}"
            bound = max(res["traffic"], res["arith"]) + res["sweep"]
            best = f"{bound / res['torch']:11.2f}x" if "torch" in res else f"{'-':>12}"
            print(f"{t:>7} {bs:>5} {res['nbnet'] * 1e6:9.0f} {res['layers'] * 1e6:10.0f} {bound * 1e6:9.0f} "
                  f"{torch_us} {ratio} {best} {res['nbnet threads']:>9}")
            phases.append((t, bs, res["phases"]))
            results.append(res)
    for line in missing_peers(results, ["torch"]):
        print(line)
    print(f"\nnbnet's step phase by phase, µs (medians, timed after the above)\n{'threads':>7} {'batch':>5} "
          + " ".join(f"{p:>9}" for p in PHASES) + f" {'sum':>7}")
    for t, bs, times in phases:
        print(f"{t:>7} {bs:>5} " + " ".join(f"{v * 1e6:9.1f}" for v in times) + f" {sum(times) * 1e6:7.1f}")


if __name__ == "__main__":
    main()
