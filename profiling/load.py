"""Training under load: 1 vs 2 threads with one core busy (another process spinning) vs quiet.

A training step of the 784-256-128-10 MLP (SGD momentum, float32) is timed in a fresh process per
setting (thread count and OMP_WAIT_POLICY are read when Numba starts its threads), once on a quiet
machine and once while a busy-loop process holds a core. Prints the mean step time per setting,
each loaded time over its quiet time, and 2 threads over 1 thread on the loaded machine. nbnet
sets OMP_WAIT_POLICY=passive unless the user set it: `--policies passive,active` shows why.
Goal (issue #9): loaded 2-thread ≤ 1.5× its quiet time and never slower than 1 thread loaded.

    python profiling/load.py                       # ~1 min
    python profiling/load.py --quick               # a few seconds
    python profiling/load.py --policies passive,active --batch 32
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(batch, steps):
    """Run in the child: mean (and median) seconds per training step, after one untimed warm-up."""
    sys.path.insert(0, HERE)
    from common import training_step  # noqa: PLC0415

    step = training_step(batch)
    step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    from nbnet.check import threading_layer  # noqa: PLC0415 - works before any parallel region ran too

    # The mean, not the median: under time-slicing a step is either at full speed or stalled for
    # a slice, and the median hides the stalls that make training slower.
    return {"median": statistics.median(times), "mean": statistics.fmean(times), "layer": threading_layer()}


def measure(threads, policy, batch, steps):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), PYTHONPATH=os.path.dirname(HERE))
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run([sys.executable, __file__, "--worker", "--batch", str(batch), "--steps", str(steps)],
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description="1 vs 2 threads, quiet vs one core busy")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per setting")
    parser.add_argument("--policies", default="", help="OMP_WAIT_POLICY values to compare (default: nbnet's)")
    parser.add_argument("--quick", action="store_true", help="20 steps per setting")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps = 20
    if args.worker:
        print(json.dumps(worker(args.batch, args.steps)))
        return

    sys.path.insert(0, os.path.dirname(HERE))
    from nbnet import simd  # noqa: PLC0415

    print(simd.describe())
    print(f"training step, MLP 784-256-128-10, batch {args.batch}, float32; mean of {args.steps} steps, "
          f"{os.cpu_count()} cores")
    policies = args.policies.split(",") if args.policies else [""]
    rows = []
    for policy in policies:
        res = {}
        for loaded in (False, True):
            busy = None
            if loaded:
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(0.3)
            try:
                for t in (1, 2):
                    res[t, loaded] = measure(t, policy, args.batch, args.steps)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
        name = policy or f"default ({os.environ.get('OMP_WAIT_POLICY', 'passive')})"
        layer = res[2, False]["layer"]
        q1, q2, l1, l2 = (res[k]["mean"] * 1e6 for k in ((1, False), (2, False), (1, True), (2, True)))
        rows.append((name, layer, q1, q2, l1, l2))
    print(f"\n{'policy':<20} {'layer':<9} {'quiet 1t':>9} {'quiet 2t':>9} {'busy 1t':>9} {'busy 2t':>9}"
          f" {'2t busy/quiet':>14} {'busy 2t/1t':>11}")
    for name, layer, q1, q2, l1, l2 in rows:
        print(f"{name:<20} {layer:<9} {q1:>8.0f}µ {q2:>8.0f}µ {l1:>8.0f}µ {l2:>8.0f}µ {l2 / q2:>13.2f}x {l2 / l1:>10.2f}x")


if __name__ == "__main__":
    main()
