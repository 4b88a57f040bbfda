"""Training under load: 1 thread, 2 threads fixed, and 2 threads as nbnet adapts them, on a quiet
machine and with one core busy (another process spinning).

A training step of the 784-256-128-10 MLP (SGD momentum, float32) is timed in a fresh process per
setting (thread count and OMP_WAIT_POLICY are read when Numba starts its threads), after 0.5 s of
untimed steps (compilation, and nbnet.threads' first looks at the load). Settings:
- 1t: NUMBA_NUM_THREADS=1;
- 2t fixed: NUMBA_NUM_THREADS=2, NBNET_THREADS=fixed (2 threads whatever the load);
- 2t auto: NUMBA_NUM_THREADS=2, nbnet's default (fewer threads while other processes use the cores).
The runs (each setting, quiet and loaded, at each policy and batch size) are interleaved over
--rounds rounds, each timing its share of --steps, so a slow phase of a noisy machine falls on
every setting alike rather than on one. Prints the median over the rounds of each run's mean step
time, quiet and loaded, with the thread counts nbnet used during the timed steps in brackets
([1-2]: it changed them under load), and the loaded 2-thread auto time over its quiet time and
over 1 thread's loaded time. nbnet sets OMP_WAIT_POLICY=passive, and a short spin (GOMP_SPINCOUNT)
while it adapts the thread count, unless the user set either (nbnet/threads.py):
`--policies passive,active` shows why.
Goal (issue #9): loaded 2-thread ≤ 1.5× its quiet time and never slower than 1 thread loaded.

    python profiling/load.py                       # 3 rounds, ~1-2 min
    python profiling/load.py --quick               # one round, 20 steps: a check that it runs
    python profiling/load.py --policies passive,active --batch 32
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from argtypes import PROCESS, STEP_ROW, ShowDefaults, check_memory, largest, names_from, parse_args, positive_int, positive_ints

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(batch, steps):
    """Run in the child: mean (and median) seconds per training step, after one untimed warm-up,
    and the thread counts nbnet used over the timed steps."""
    sys.path.insert(0, HERE)
    from common import training_step  # noqa: PLC0415

    step = training_step(batch)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.5:  # untimed: compilation, and nbnet.threads' first looks at the load
        step()
    from nbnet import threads  # noqa: PLC0415

    times, used = [], set()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        used.add(threads._n)  # what nbnet ran this step on (it adapts to the load), after the clock
    from nbnet.check import threading_layer  # noqa: PLC0415 - works before any parallel region ran too

    # The mean, not the median: under time-slicing a step is either at full speed or stalled for
    # a slice, and the median hides the stalls that make training slower.
    return {"median": statistics.median(times), "mean": statistics.fmean(times), "layer": threading_layer(),
            "threads": sorted(used)}


def measure(setting, policy, batch, steps):
    threads, mode = setting
    from common import child_env  # noqa: PLC0415

    env = child_env(NUMBA_NUM_THREADS=str(threads), NBNET_THREADS=mode)
    if policy:  # the user's policy alone (not the spin count this process's nbnet import set)
        env["OMP_WAIT_POLICY"] = policy
        env.pop("GOMP_SPINCOUNT", None)
        env.pop("NBNET_WAIT_SET", None)
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", "--batch", str(batch), "--steps", str(steps)],
                              env=env, capture_output=True, text=True, timeout=WORKER_LIMIT_S)
    except subprocess.TimeoutExpired:  # was a traceback: say which setting and what to change
        raise SystemExit(f"error: the {threads}-thread ({mode}) worker timed {steps} steps at batch {batch} for "
                         f"over {WORKER_LIMIT_S} s: ask for fewer --steps, or a smaller --batch") from None
    if done.returncode != 0:
        raise SystemExit(f"worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


WORKER_LIMIT_S = 600  # one setting's share of the steps, in one round


SETTINGS = {"1t": (1, "fixed"), "2t fixed": (2, "fixed"), "2t auto": (2, "auto")}


def shares(steps, rounds):
    """`steps` split over `rounds` rounds as evenly as they go (fewer rounds when there are fewer
    steps): every step asked for is timed, and no round times none."""
    rounds = min(rounds, steps)
    return [steps // rounds + (i < steps % rounds) for i in range(rounds)]


def run_rounds(measure_one, keys, steps, rounds, busy_process):
    """{(key, loaded): {"mean": median over the rounds of each round's mean, "threads": every count
    seen, "layer"}}: each round runs every key (a setting, with its policy and batch) quiet, then
    every one loaded (one busy process for the whole block), so the rounds interleave them in time."""
    runs = {}
    for share in shares(steps, rounds):
        for loaded in (False, True):
            busy = busy_process() if loaded else None
            try:
                for key in keys:
                    runs.setdefault((key, loaded), []).append(measure_one(key, share))
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    return {key: {"mean": statistics.median(r["mean"] for r in rs), "layer": rs[0]["layer"],
                  "threads": sorted({n for r in rs for n in r["threads"]})}
            for key, rs in runs.items()}


def spin():
    """Another process keeping one core busy."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)
    return busy


def main():
    parser = argparse.ArgumentParser(description="1 vs 2 threads (fixed, adaptive), quiet vs one core busy", formatter_class=ShowDefaults)
    parser.add_argument("--batch", type=positive_ints, default="128", help="batch sizes, comma-separated")
    parser.add_argument("--steps", type=positive_int, default=200, help="timed steps per setting (over all rounds)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="rounds that interleave the settings; each times its share of --steps")
    # OpenMP ignores a value it does not know: the row would be labelled with it and be the default's
    parser.add_argument("--policies", type=names_from("passive", "active"), default=None,
                        help="OMP_WAIT_POLICY values to compare (default: nbnet's)")
    parser.add_argument("--quick", action="store_true", help="20 steps per setting, 1 round (options given win)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, steps=20, rounds=1)
    # A worker's step at the largest batch and its step times, beside this process and the busy one
    check_memory(parser, {"--batch": STEP_ROW * largest(args.batch), "--steps": 40 * args.steps}, fixed=3 * PROCESS)
    if args.worker:
        print(json.dumps(worker(int(args.batch), args.steps)))
        return

    sys.path.insert(0, os.path.dirname(HERE))
    from common import load_warning, thread_counts  # noqa: PLC0415
    from nbnet import simd  # noqa: PLC0415

    print(simd.describe())

    if load_warning():  # the "quiet" columns are only quiet on a quiet machine
        print(load_warning())
    rounds = len(shares(args.steps, args.rounds))
    print(f"training step, MLP 784-256-128-10, float32; {args.steps} steps per setting over {rounds} interleaved "
          f"round(s), the median of the rounds' mean step times; {os.cpu_count()} cores; "
          f"the threads nbnet used during the timed steps in brackets")
    policies = args.policies.split(",") if args.policies else [""]
    batches = list(map(int, args.batch.split(",")))
    print(f"\n{'policy':<18} {'batch':>5} {'layer':<5}" + "".join(f" {'quiet ' + n:>16}" for n in SETTINGS)
          + "".join(f" {'busy ' + n:>16}" for n in SETTINGS) + f" {'auto busy/quiet':>16} {'auto busy/1t busy':>18}")
    keys = [(policy, batch, name) for policy in policies for batch in batches for name in SETTINGS]
    res = run_rounds(lambda key, steps: measure(SETTINGS[key[2]], key[0], key[1], steps), keys,
                     args.steps, args.rounds, spin)
    for policy in policies:
        for batch in batches:
            r = {(name, loaded): res[(policy, batch, name), loaded] for name in SETTINGS for loaded in (False, True)}
            cells = "".join(f" {r[n, loaded]['mean'] * 1e6:>9.0f}µ {'[' + thread_counts(r[n, loaded]['threads']) + ']':>5}"
                            for loaded in (False, True) for n in SETTINGS)
            auto_q, auto_l, one_l = (r[k]["mean"] for k in (("2t auto", False), ("2t auto", True), ("1t", True)))
            print(f"{policy or 'nbnet' + chr(39) + 's default':<18} {batch:>5} {r['2t auto', False]['layer']:<5}{cells}"
                  f" {auto_l / auto_q:>15.2f}x {auto_l / one_l:>17.2f}x")

if __name__ == "__main__":
    main()
