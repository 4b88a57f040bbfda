"""nbnet's training epoch side by side with PyTorch CPU, a hand-written NumPy MLP, and the sgemm peak.

MLP 784-256-128-10 ReLU, SGD momentum 0.9, float32, synthetic MNIST-shaped data (x in [0, 1],
labels 0-9). Every number is measured in this one run, alternating the contenders repeat by
repeat and keeping each one's best, so a loaded machine hurts them alike; read the ratios.

    python profiling/bench_vs_torch.py                      # full: 60,000 samples, batch 32/128/512, 1 and 2 threads
    python profiling/bench_vs_torch.py --samples 8192 --repeats 2
    python profiling/bench_vs_torch.py --device cuda        # GPU: nbnet vs PyTorch CUDA, batch 128/512/2048
"""

import argparse
import sys
import time

import numpy as np

from argtypes import MNIST_ROW, PROCESS, STEP_ROW, ShowDefaults, check_memory, largest, positive_int, positive_ints
from common import load_warning, match_blas, thread_counts  # first: it puts this checkout's nbnet first

import nbnet as nb
from nbnet import simd
from nbnet import threads as nbthreads
from nbnet.data import batches_reusing

SIZES = (784, 256, 128, 10)
PARAMS = sum(a * b + b for a, b in zip(SIZES, SIZES[1:]))  # 235,146
FLOP_PER_SAMPLE = 6 * PARAMS  # forward 2, backward 4 flop per weight


def nbnet_epoch(x, y, batch_size):
    model = nb.Sequential([nb.Linear(784, 256, seed=0), nb.ReLU(), nb.Linear(256, 128, seed=1), nb.ReLU(),
                           nb.Linear(128, 10, seed=2)])
    loss_fn, opt = nb.SoftmaxCrossEntropy(), nb.SGD(model.parameters(), lr=0.01, momentum=0.9)
    used = set()  # the thread counts nbnet ran the steps on: it adapts them to the load (run.used)

    def run():
        for xb, yb in batches_reusing(x, y, batch_size, seed=0):
            opt.zero_grad()
            loss_fn.forward(model.forward(xb), yb)
            model.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
            used.add(nbthreads._n)
    run.used = used
    return run


def torch_mlp(device):
    """PyTorch's twin of the benchmarked MLP (784-256-128-10 ReLU, SGD momentum 0.9, lr 0.01, seed 0):
    (model, optimizer, loss) on `device`, shared by every torch contender here and in bench_step.py."""
    import torch  # noqa: PLC0415

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), torch.nn.CrossEntropyLoss()


def torch_epoch(x, y, batch_size):
    import torch  # noqa: PLC0415

    model, opt, loss_fn = torch_mlp("cpu")
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def run():
        order = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss_fn(model(tx[idx]), ty[idx]).backward()
            opt.step()
    return run


def numpy_epoch(x, y, batch_size):
    """The same MLP by hand with np.dot (OpenBLAS): the 'what BLAS gives' reference."""
    rng = np.random.default_rng(0)
    ws = [rng.uniform(-np.sqrt(6 / a), np.sqrt(6 / a), (b, a)).astype(np.float32) for a, b in zip(SIZES, SIZES[1:])]
    bs = [np.zeros(b, np.float32) for b in SIZES[1:]]
    vs = [np.zeros_like(p) for p in ws + bs]

    def run():
        for xb, yb in batches_reusing(x, y, batch_size, seed=0):
            hs = [xb]
            for i, (w, b) in enumerate(zip(ws, bs)):
                h = hs[-1] @ w.T + b
                hs.append(np.maximum(h, 0) if i < 2 else h)
            z = hs[-1] - hs[-1].max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(yb)), yb] -= 1
            g = p / len(yb)
            grads_w, grads_b = [None] * 3, [None] * 3
            for i in (2, 1, 0):
                grads_w[i], grads_b[i] = g.T @ hs[i], g.sum(axis=0)
                if i:
                    g = (g @ ws[i]) * (hs[i] > 0)
            for p_, g_, v in zip(ws + bs, grads_w + grads_b, vs):
                v *= 0.9
                v += g_
                p_ -= 0.01 * v
    return run


def nbnet_cuda_epoch(x, y, batch_size):
    """nbnet on the GPU: the data set copied over once (outside the timing), batches gathered there."""
    from nbnet.gpu import DeviceDataset  # noqa: PLC0415

    model = nb.Sequential([nb.Linear(784, 256, seed=0), nb.ReLU(), nb.Linear(256, 128, seed=1), nb.ReLU(),
                           nb.Linear(128, 10, seed=2)]).to("cuda")
    loss_fn, opt = nb.SoftmaxCrossEntropy(), nb.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = DeviceDataset(x, y)

    def run():
        for xb, yb in data.batches(batch_size, shuffle=True, seed=0):
            opt.zero_grad()
            loss_fn.forward(model.forward(xb), yb)  # a host float: one sync per step
            model.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
    return run


def torch_cuda_epoch(x, y, batch_size):
    """PyTorch CUDA, data on the GPU before timing; loss.item() each step, as nbnet's float loss."""
    import torch  # noqa: PLC0415

    model, opt, loss_fn = torch_mlp("cuda")
    tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

    def run():
        order = torch.from_numpy(np.random.default_rng(0).permutation(len(x))).cuda()
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(tx[idx]), ty[idx])
            loss.backward()
            opt.step()
            loss.item()
        torch.cuda.synchronize()
    return run


def cuda_main(args, x, y):
    """--device cuda: nbnet and PyTorch on the GPU, per batch size, and a float32 torch.mm peak."""
    from nbnet import gpu  # noqa: PLC0415

    try:
        print(f"GPU: {gpu.gpu_status()}")
    except Exception as e:  # noqa: BLE001 - whatever the GPU stack says, as one line
        sys.exit(f"Error: --device cuda: {e}")
    makers = {"nbnet": nbnet_cuda_epoch}
    peak = None
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            makers["torch"] = torch_cuda_epoch
            torch.backends.cuda.matmul.allow_tf32 = False
            a = torch.rand(8192, 8192, device="cuda")
            torch.mm(a, a)
            torch.cuda.synchronize()
            peak = 2 * 8192**3 / min(timed(lambda: (torch.mm(a, a), torch.cuda.synchronize())) for _ in range(3)) / 1e9
        else:
            print("PyTorch has no usable CUDA here: its column is skipped")
    except ImportError:
        print("PyTorch not installed: its column is skipped")
    flop = FLOP_PER_SAMPLE * args.samples
    print(f"MLP 784-256-128-10 ReLU, SGD momentum, float32, {args.samples} samples/epoch, best of {args.repeats}")
    if peak:
        print(f"float32 torch.mm peak (TF32 off): {peak:.0f} GFLOP/s")
    print(f"{'batch':>5} {'who':>6} {'s/epoch':>8} {'samples/s':>10} {'GFLOP/s':>8} {'%peak':>6} {'vs torch':>8}")
    for bs in map(int, args.batch_sizes.split(",")):
        runs = {name: make(x, y, bs) for name, make in makers.items()}
        for make in makers.values():  # warm-up: kernel compilation, first launches
            make(x[: 2 * bs], y[: 2 * bs], bs)()
        best = {name: float("inf") for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                best[name] = min(best[name], timed(run))
        for name, sec in best.items():
            ratio = f"{best['torch'] / sec:7.2f}x" if "torch" in best else "    n/a"
            pct = f"{100 * flop / sec / 1e9 / peak:5.1f}%" if peak else "   n/a"
            print(f"{bs:>5} {name:>6} {sec:8.3f} {args.samples / sec:10.0f} {flop / sec / 1e9:8.1f} {pct} {ratio}")
    print("vs torch = torch's seconds / this one's: above 1 is faster than PyTorch.")


def sgemm_gflops(size=2048, repeats=3):
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    best = min(timed(lambda: np.dot(a, a)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def set_threads(n, have_torch):
    import numba  # noqa: PLC0415

    numba.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        threadpool_limits(n)
    except ImportError:
        print(f"(threadpoolctl not installed: numpy/sgemm use OpenBLAS's default threads, not {n})")
    if have_torch:
        import torch  # noqa: PLC0415

        torch.set_num_threads(n)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=ShowDefaults)
    ap.add_argument("--batch-sizes", type=positive_ints, default=None, help="comma-separated batch sizes (default: 32,128,512 on cpu, 128,512,2048 on cuda)")
    ap.add_argument("--threads", type=positive_ints, default="1,2", help="comma-separated thread counts")
    ap.add_argument("--samples", type=positive_int, default=60000, help="samples per epoch (fewer for a quick run)")
    ap.add_argument("--repeats", "--epochs", type=positive_int, default=3, help="timed epochs per contender (best kept)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where nbnet and PyTorch train")
    args = ap.parse_args(argv)
    # The data, three contenders' steps at the largest batch (at most the data), sgemm's matrices:
    # the host's memory, also under --device cuda (the data is made there first).
    batch = largest(args.batch_sizes or "128,512,2048")
    check_memory(ap, {"--samples": MNIST_ROW * args.samples, "--batch-sizes": 3 * STEP_ROW * min(batch, args.samples)},
                 fixed=PROCESS + 3 * 2048**2 * 4)
    import numba  # noqa: PLC0415

    if max(map(int, args.threads.split(","))) > numba.config.NUMBA_NUM_THREADS:  # else numba's ValueError, a traceback
        ap.error(f"argument --threads: at most {numba.config.NUMBA_NUM_THREADS} threads here (NUMBA_NUM_THREADS)")
    blas = match_blas()
    print(simd.describe())  # the host CPU, also under --device cuda (it runs the Python)
    print(blas)
    if load_warning():
        print(load_warning())
    if args.batch_sizes is None:
        args.batch_sizes = "128,512,2048" if args.device == "cuda" else "32,128,512"
    if args.device == "cuda":
        rng = np.random.default_rng(0)
        return cuda_main(args, rng.random((args.samples, 784), dtype=np.float32), rng.integers(0, 10, args.samples))

    try:
        import torch  # noqa: PLC0415

        torch.set_flush_denormal(True)
        have_torch = True
    except ImportError:
        have_torch = False
        print("PyTorch not installed: its column is skipped (pip install torch --index-url https://download.pytorch.org/whl/cpu)")

    rng = np.random.default_rng(0)
    x = rng.random((args.samples, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.samples)
    flop = FLOP_PER_SAMPLE * args.samples
    print(f"MLP 784-256-128-10 ReLU, SGD momentum, float32, {args.samples} samples/epoch, best of {args.repeats}")
    print(f"{'thr':>3} {'batch':>5} {'who':>6} {'s/epoch':>8} {'samples/s':>10} {'GFLOP/s':>8} {'%sgemm':>7} {'vs torch':>8} "
          f"{'thr used':>8}")
    for threads in map(int, args.threads.split(",")):
        set_threads(threads, have_torch)
        peak = sgemm_gflops()
        print(f"{threads:>3} {'':>5} {'sgemm':>6} {'':>8} {'':>10} {peak:8.1f} {100:6.0f}%")
        for bs in map(int, args.batch_sizes.split(",")):
            makers = {"nbnet": nbnet_epoch, "numpy": numpy_epoch}
            if have_torch:
                makers["torch"] = torch_epoch
            runs = {name: make(x, y, bs) for name, make in makers.items()}
            for make in makers.values():  # warm-up on two batches: compile, load caches
                make(x[: 2 * bs], y[: 2 * bs], bs)()
            best = {name: float("inf") for name in runs}
            for _ in range(args.repeats):  # interleaved
                for name, run in runs.items():
                    best[name] = min(best[name], timed(run))
            for name, sec in best.items():
                ratio = f"{best['torch'] / sec:7.2f}x" if have_torch else "    n/a"
                used = thread_counts(runs[name].used) if name == "nbnet" else ""
                print(f"{threads:>3} {bs:>5} {name:>6} {sec:8.3f} {args.samples / sec:10.0f} "
                      f"{flop / sec / 1e9:8.1f} {100 * flop / sec / 1e9 / peak:6.0f}% {ratio} {used:>8}")
    print("vs torch = torch's seconds / this one's: above 1 is faster than PyTorch.")
    print("thr used = the thread counts nbnet ran its timed epochs on (fewer than thr while other processes "
          "keep the cores busy: nbnet/threads.py).")


if __name__ == "__main__":
    main()
