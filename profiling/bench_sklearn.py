"""nbnet.sklearn.MLPClassifier against scikit-learn's own MLPClassifier: fit time and test accuracy.

The same work on both sides: the same hidden layers, solver, batch size (200, scikit-learn's
"auto"), learning rate, alpha, epochs (tol=0 and n_iter_no_change=max_iter, so both run exactly
--epochs epochs), float32 data, and threads (BLAS threads for scikit-learn pinned with
threadpoolctl, Numba threads for nbnet). Fits alternate nbnet / scikit-learn repeat by repeat and
each keeps its best time, so a loaded machine hurts them alike: read the ratios.

    python profiling/bench_sklearn.py                   # 20,000 x 100 synthetic and MNIST (if found)
    python profiling/bench_sklearn.py --quick           # seconds: a small synthetic run (the tests use it)
    python profiling/bench_sklearn.py --threads 1,2 --solvers adam,sgd --data-dir DIR
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np
from argtypes import MNIST_HELP, PROCESS, ShowDefaults, at_least, check_memory, directory, found_mnist, mnist_dirs, names_from, positive_int, positive_ints



def synthetic_label(n):
    """The synthetic work's row label: synth20k for 20,000 rows, synth500 for 500 (n // 1000 said synth0k)."""
    return f"synth{n // 1000}k" if n % 1000 == 0 else f"synth{n}"


def synthetic(n, d, seed=0):
    from sklearn.datasets import make_classification  # noqa: PLC0415

    x, y = make_classification(n, d, n_informative=d // 2, n_redundant=d // 4, n_classes=10,
                               n_clusters_per_class=2, class_sep=1.5, random_state=seed)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    cut = int(0.8 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def mnist(data_dir):
    import nbnet as nb  # noqa: PLC0415

    return nb.datasets.load("mnist", data_dir=data_dir)


def estimators(hidden, solver, epochs, lr):
    from sklearn.neural_network import MLPClassifier as SkMLP  # noqa: PLC0415

    from nbnet.sklearn import MLPClassifier as NbMLP  # noqa: PLC0415

    same = dict(hidden_layer_sizes=hidden, solver=solver, batch_size=200, learning_rate_init=lr, alpha=1e-4,
                max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1, momentum=0.9,
                nesterovs_momentum=True, random_state=0, shuffle=True)
    return {"nbnet": lambda: NbMLP(**same), "sklearn": lambda: SkMLP(**same)}


def set_threads(n):
    """n threads for both: Numba's for nbnet, BLAS's for scikit-learn (a context to enter)."""
    import numba  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    numba.set_num_threads(n)
    return threadpool_limits(limits=n, user_api="blas")


def run(name, data, hidden, solver, epochs, lr, threads, repeats):
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415

    from common import thread_counts, threads_in_use  # noqa: PLC0415

    x, y, xt, yt = data
    makers = estimators(hidden, solver, epochs, lr)
    rows = []
    for t in threads:
        with set_threads(t), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for make in makers.values():  # warm-up: compile / load the kernels, touch the data
                make().set_params(max_iter=1).fit(x[:400], y[:400])
            best, cpu, acc, used = {k: np.inf for k in makers}, {k: np.inf for k in makers}, {}, set()
            for _ in range(repeats):  # interleaved
                for who, make in makers.items():
                    est = make()
                    time.sleep(0.5)  # the other side's idle BLAS threads asleep first (see bench_epoch.py)
                    t0, c0 = time.perf_counter(), time.process_time()
                    est.fit(x, y)
                    best[who] = min(best[who], time.perf_counter() - t0)
                    cpu[who] = min(cpu[who], time.process_time() - c0)
                    if who == "nbnet":  # the count nbnet ran on at the end of the fit (it adapts it to the load)
                        used.add(threads_in_use())
                    acc[who] = est.score(xt, yt)
                    dtype = est.coefs_[0].dtype
        ratio, cpu_ratio = best["sklearn"] / best["nbnet"], cpu["sklearn"] / cpu["nbnet"]
        rows.append((name, t, solver, best["nbnet"], acc["nbnet"], best["sklearn"], acc["sklearn"], ratio))
        print(f"{name:<10} {t:>3} {solver:>5} {best['nbnet']:9.2f} {acc['nbnet']:8.4f} "
              f"{best['sklearn']:9.2f} {acc['sklearn']:8.4f} {ratio:7.2f}x {cpu['nbnet']:7.2f} {cpu['sklearn']:7.2f} "
              f"{cpu_ratio:7.2f}x  (nbnet ended its fits on {thread_counts(used)} thread(s); sklearn trained in {dtype})",
              flush=True)
    return rows


def needs(args, mnist_dir):
    """{option: bytes} a run holds: make_classification's float64 data and the temporaries of its
    standardising (5 x 8 bytes a value), MNIST as loaded (9 bytes a pixel, nbnet/files.py), each
    side's weights, gradients and optimizer state (12 x 4 bytes a parameter, both sides), their
    activations and deltas at batch 200 and at scoring the test rows, and a record per epoch."""
    widths = [int(h) for h in args.hidden.split(",")]
    inputs, test_rows = max(args.features, 784 if mnist_dir else 0), max(args.samples // 5, 10000 if mnist_dir else 0)
    params = sum(a * b + b for a, b in zip([inputs, *widths], [*widths, 10]))
    data = 40 * args.samples * args.features
    return {"--samples" if args.samples / 20000 >= args.features / 100 else "--features": data,
            "--data-dir": 70000 * 784 * 9 if mnist_dir else 0,
            "--hidden": 48 * params + sum(widths) * (200 * 32 + 8 * test_rows),
            "--epochs": 2000 * (args.epochs or 10)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=ShowDefaults)
    ap.add_argument("--quick", action="store_true", help="2,000 x 100 synthetic, 2 epochs, 1 repeat, no MNIST")
    ap.add_argument("--threads", type=positive_ints, default=None, help="comma list (default: 1,2; --quick: 1)")
    ap.add_argument("--solvers", type=names_from("adam", "sgd"), default="adam,sgd", help="comma-separated solvers, of adam and sgd")
    ap.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: 10 synthetic, 5 MNIST; --quick: 2)")
    ap.add_argument("--repeats", type=positive_int, default=None, help="fits per side, best time kept (default: 2; --quick: 1)")
    ap.add_argument("--hidden", type=positive_ints, default="100", help="hidden layer sizes, comma list (scikit-learn's default 100)")
    ap.add_argument("--samples", type=positive_int, default=None,
                    help="synthetic rows, 80%% train, 20%% test (default: 20,000; --quick: 2,000)")
    # make_classification's 10 classes of 2 clusters need 2**(features // 2) >= 20 informative corners
    ap.add_argument("--features", type=at_least(10), default=100, help="synthetic features (at least 10)")
    ap.add_argument("--data-dir", type=directory, default=None, help=MNIST_HELP + ")")
    args = ap.parse_args(argv)
    try:
        import sklearn  # noqa: PLC0415
    except ImportError:
        print("scikit-learn is not installed: pip install 'nbnet[sklearn]'")
        return 1
    sys.path.insert(0, os.path.dirname(__file__))
    from common import load_warning, match_blas  # noqa: PLC0415
    from nbnet.datasets import IDX_FILES, find_idx  # noqa: PLC0415

    if args.data_dir and len(find_idx("mnist", args.data_dir)) < len(IDX_FILES):  # else the loader's traceback
        ap.error(f"argument --data-dir: {args.data_dir!r} does not hold MNIST's four IDX files")
    mnist_dir = None if args.quick else args.data_dir or found_mnist(mnist_dirs())

    if args.quick:
        args.samples, args.threads = args.samples or 2000, args.threads or "1"
        args.epochs, args.repeats = args.epochs or 2, args.repeats or 1
    args.samples = args.samples or 20000
    threads = [int(t) for t in (args.threads or "1,2").split(",")]
    check_memory(ap, needs(args, mnist_dir=mnist_dir), fixed=PROCESS)
    import numba  # noqa: PLC0415

    # Both sides get the count asked for: nbnet's was capped at NUMBA_NUM_THREADS while
    # scikit-learn's BLAS got it all, in a row labelled with the count asked for.
    if max(threads) > numba.config.NUMBA_NUM_THREADS:
        ap.error(f"argument --threads: at most {numba.config.NUMBA_NUM_THREADS} threads here (NUMBA_NUM_THREADS)")
    repeats = args.repeats or 2
    hidden = tuple(int(h) for h in args.hidden.split(","))
    from nbnet import simd  # noqa: PLC0415

    blas = match_blas()
    print(simd.describe())
    print(blas)
    print(f"scikit-learn {sklearn.__version__}, NumPy {np.__version__}; hidden {hidden}, batch 200, "
          f"alpha 1e-4, float32 data, best of {repeats} fits per side, interleaved")
    if load_warning():
        print(load_warning())
    print(f"{'data':<10} {'thr':>3} {'solver':>5} {'nbnet s':>9} {'nb acc':>8} {'sklearn s':>9} {'sk acc':>8} {'speedup':>8} {'nb cpu':>7} {'sk cpu':>7} {'cpu sp':>8}")
    lr = {"adam": 1e-3, "sgd": 0.01, "adamw": 1e-3}
    works = [(synthetic_label(args.samples), synthetic(args.samples, args.features), args.epochs or 10)]
    if mnist_dir:
        works.append(("mnist", mnist(mnist_dir), args.epochs or 5))
    elif not args.quick:
        print("MNIST not found (--data-dir): synthetic only")
    for name, data, epochs in works:
        for solver in args.solvers.split(","):
            run(name, data, hidden, solver, epochs, lr[solver], threads, repeats)
    print("speedup = scikit-learn's fit seconds / nbnet's: above 1, nbnet is faster. "
          "Accuracy on held-out rows (MNIST: its test set).\n"
          "cpu = process CPU seconds (all threads; spinning included): on a loaded machine the 1-thread "
          "cpu speedup is the steadier figure.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
