"""Step latency at small batches: the loop users write, nbnet vs PyTorch CPU.

One training step as interface.md writes it (zero_grad, forward, loss, backward, step) of the
784-256-128-10 MLP, SGD momentum, float32, at batch 1 and 8, with 1 and 2 threads (each in a fresh
process with NUMBA_NUM_THREADS / OMP_NUM_THREADS set, and torch.set_num_threads). Prints the median
µs per step of each, interleaved in chunks, and nbnet's over PyTorch's (goal, issue #9: ≤ 0.2×).
At these sizes the arithmetic is ~1.4 MFLOP per sample: what is measured is per-step overhead
(Python, kernel calls, waking threads). A second table splits nbnet's step into its phases.

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

from argtypes import PROCESS, STEP_ROW, check_memory, largest, parse_args, positive_int, positive_ints  # noqa: E402
from bench_vs_torch import torch_mlp  # noqa: E402
from common import child_env, thread_counts, threads_in_use  # noqa: E402


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

    makers = {"nbnet": nbnet_step, "layers": lambda x, y: nbnet_step(x, y, planned=False)}
    try:
        import torch  # noqa: PLC0415

        torch.set_num_threads(threads)
        makers["torch"] = torch_step
    except ImportError:
        pass
    result = {}
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
                    if name != "torch":  # the count nbnet ran the step on (it adapts it to the load)
                        used.add(threads_in_use())
        result[bs] = {name: statistics.median(v) for name, v in times.items()}
        result[bs]["nbnet threads"] = thread_counts(used)
        # nbnet's step phase by phase, after the interleaved timing (so its timer calls, ~0.1 µs
        # each, stay out of the figures above): where the time goes
        phases = [fns["nbnet"].phased() for _ in range(steps)]
        result[bs]["phases"] = [statistics.median(p[i] for p in phases) for i in range(len(PHASES))]
    return result


def main():
    parser = argparse.ArgumentParser(description="step latency at batch 1 and 8: nbnet vs PyTorch CPU")
    parser.add_argument("--batch-sizes", type=positive_ints, default="1,8")
    parser.add_argument("--threads", type=positive_ints, default="1,2")
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
    from nbnet import simd  # noqa: PLC0415

    print(simd.describe())
    print(f"training step (zero_grad, forward, loss, backward, step), MLP 784-256-128-10, SGD momentum, float32; "
          f"median of {args.steps}")
    if os.getloadavg()[0] > 0.5 * os.cpu_count():
        print(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: timings are noisy")
    print("(layers: nbnet with its forward and backward run layer by layer, not as planned calls)")
    print("(nbnet thr: the thread counts nbnet ran the timed steps on, fewer than threads while other processes "
          "keep the cores busy)")
    print(f"\n{'threads':>7} {'batch':>5} {'nbnet µs':>9} {'layers µs':>10} {'torch µs':>9} {'nbnet/torch':>12} "
          f"{'nbnet thr':>9}")
    phases = []
    for t in args.threads.split(","):
        env = child_env(NUMBA_NUM_THREADS=t, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t)
        done = subprocess.run([sys.executable, __file__, "--worker", "--threads", t, "--batch-sizes", args.batch_sizes,
                               "--steps", str(args.steps)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"worker failed:\n{done.stderr[-3000:]}")
        for bs, res in json.loads(done.stdout.strip().splitlines()[-1]).items():
            torch_us = f"{res['torch'] * 1e6:9.0f}" if "torch" in res else f"{'-':>9}"
            ratio = f"{res['nbnet'] / res['torch']:11.2f}x" if "torch" in res else f"{'-':>12}"
            print(f"{t:>7} {bs:>5} {res['nbnet'] * 1e6:9.0f} {res['layers'] * 1e6:10.0f} {torch_us} {ratio} "
                  f"{res['nbnet threads']:>9}")
            phases.append((t, bs, res["phases"]))
    print(f"\nnbnet's step phase by phase, µs (medians, timed after the above)\n{'threads':>7} {'batch':>5} "
          + " ".join(f"{p:>9}" for p in PHASES) + f" {'sum':>7}")
    for t, bs, times in phases:
        print(f"{t:>7} {bs:>5} " + " ".join(f"{v * 1e6:9.1f}" for v in times) + f" {sum(times) * 1e6:7.1f}")


if __name__ == "__main__":
    main()
