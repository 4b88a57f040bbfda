"""Epoch time: nbnet vs PyTorch CPU, hand-written NumPy and scikit-learn's MLPClassifier.

MLP 784-256-128-10 ReLU, SGD momentum 0.9 (lr 0.01), float32 (scikit-learn: its own float32
fit), synthetic MNIST-shaped data, at batch 32, 128, 512, with 1 and with 2 threads. Each thread
count runs in a fresh process with NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS and OMP_NUM_THREADS set
to it (and torch.set_num_threads), so every contender gets the same cores. Contenders alternate
epoch by epoch and each keeps its best: a loaded machine hurts them alike; read the ratios.
"nbnet / best" is nbnet's time over the fastest other contender's (goal, issue #9: ≤ 1.0).
PyTorch and scikit-learn columns need `pip install 'nbnet[bench]'` plus the CPU torch wheel.
The GPU comparison is profiling/bench_vs_torch.py --device cuda.

    python profiling/bench_epoch.py                   # 60,000 samples, ~3 min
    python profiling/bench_epoch.py --quick           # 4,096 samples, batch 128, 1 thread
    python profiling/bench_epoch.py --samples 20000 --threads 2 --batch-sizes 32,512
"""

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from argtypes import MNIST_ROW, PROCESS, STEP_ROW, ShowDefaults, check_memory, largest, parse_args, positive_int, positive_ints

HERE = os.path.dirname(os.path.abspath(__file__))


def sklearn_epoch(x, y, batch_size):
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415
    from sklearn.neural_network import MLPClassifier  # noqa: PLC0415

    clf = MLPClassifier(hidden_layer_sizes=(256, 128), solver="sgd", learning_rate_init=0.01, momentum=0.9,
                        nesterovs_momentum=False, alpha=0.0, batch_size=batch_size, shuffle=True,
                        random_state=0, max_iter=1)
    classes = list(range(10))

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.partial_fit(x, y, classes=classes)  # one pass over the data in mini-batches
    return run


PAUSE_SECONDS = 0.5


def worker(args):
    import numpy as np  # noqa: PLC0415

    sys.path.insert(0, HERE)
    from bench_vs_torch import nbnet_epoch, numpy_epoch, torch_epoch  # noqa: PLC0415

    makers = {"nbnet": nbnet_epoch, "numpy": numpy_epoch}
    try:
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
        torch.set_flush_denormal(True)
        makers["torch"] = torch_epoch
    except ImportError:
        pass
    try:
        import sklearn  # noqa: F401, PLC0415

        makers["sklearn"] = sklearn_epoch
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    x = rng.random((args.samples, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.samples)
    result = {}
    for bs in map(int, args.batch_sizes.split(",")):
        runs = {name: make(x, y, bs) for name, make in makers.items()}
        for make in makers.values():  # warm-up on two batches: compilation, caches
            make(x[: 2 * bs], y[: 2 * bs], bs)()
        best = {name: float("inf") for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                # A pause first, so the previous contender's idle threads are asleep when this one's
                # clock starts: OpenBLAS's spin (with sched_yield) for a while after their last call,
                # measured to add 0.03-0.06 s to a 2-thread nbnet epoch that followed NumPy's.
                time.sleep(PAUSE_SECONDS)
                t = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - t)
        result[bs] = {"best": best, "nbnet threads": list(runs["nbnet"].used)}
    return result


def main():
    parser = argparse.ArgumentParser(description="epoch time: nbnet vs PyTorch CPU, NumPy, scikit-learn", formatter_class=ShowDefaults)
    parser.add_argument("--batch-sizes", type=positive_ints, default="32,128,512", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=positive_ints, default="1,2", help="comma-separated thread counts, each in a process of its own")
    parser.add_argument("--samples", type=positive_int, default=60000, help="training rows per epoch")
    parser.add_argument("--repeats", type=positive_int, default=2, help="timed epochs per contender (best kept)")
    parser.add_argument("--quick", action="store_true", help="4,096 samples, batch 128, 1 thread, 1 repeat (options given win)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, samples=4096, batch_sizes="128", threads="1", repeats=1)
    # The data (and scikit-learn's one-hot labels), and four contenders' steps at the largest batch
    # (a batch larger than the data is the data): before any work.
    check_memory(parser, {"--samples": (MNIST_ROW + 100) * args.samples,
                          "--batch-sizes": 4 * STEP_ROW * min(largest(args.batch_sizes), args.samples)}, fixed=PROCESS)
    if args.worker:
        args.threads = int(args.threads)
        print(json.dumps(worker(args)))
        return

    sys.path.insert(0, os.path.dirname(HERE))
    from common import child_env, match_blas, missing_peers, thread_counts  # noqa: PLC0415
    from nbnet import simd  # noqa: PLC0415

    blas = match_blas()  # the workers inherit its OPENBLAS_CORETYPE
    print(simd.describe())
    print(blas)
    print(f"MLP 784-256-128-10 ReLU, SGD momentum, float32, {args.samples} samples/epoch, best of {args.repeats}")
    if os.getloadavg()[0] > 0.5 * os.cpu_count():
        print(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: timings are noisy")
    print(f"\n{'threads':>7} {'batch':>5} " + " ".join(f"{n:>9}" for n in ("nbnet", "torch", "numpy", "sklearn"))
          + f" {'nbnet / best':>13} {'nbnet thr':>9}   (seconds per epoch; nbnet thr: the thread counts nbnet ran on,"
          " fewer than threads while other processes keep the cores busy)")
    results = []
    for t in args.threads.split(","):
        env = child_env(NUMBA_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t)
        cmd = [sys.executable, __file__, "--worker", "--threads", t, "--samples", str(args.samples),
               "--batch-sizes", args.batch_sizes, "--repeats", str(args.repeats)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"worker failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        for bs, res in result.items():
            best = res["best"]
            cells = " ".join(f"{best[n]:9.3f}" if n in best else f"{'-':>9}" for n in ("nbnet", "torch", "numpy", "sklearn"))
            others = [v for n, v in best.items() if n != "nbnet"]
            ratio = f"{best['nbnet'] / min(others):12.2f}x" if others else f"{'-':>13}"
            print(f"{t:>7} {bs:>5} {cells} {ratio} {thread_counts(res['nbnet threads']):>9}")
            results.append(best)
    for line in missing_peers(results, ["torch", "sklearn"]):
        print(line)


if __name__ == "__main__":
    main()
