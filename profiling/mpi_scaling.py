"""Data-parallel scaling: an MNIST epoch at batch 512 (784-256-128-10, float32, SGD) by 2 processes
of 1 thread each (`mpiexec -n 2`, nbnet.dist) against 1 process of 1 thread, the time of one
Allreduce of its gradient (235,146 float32, 0.94 MB), and from those a ring-allreduce estimate of
what N machines at 10/25/100 Gb/s would give.

    python profiling/mpi_scaling.py                 # MNIST if found (--help: where), else random rows of its shape
    python profiling/mpi_scaling.py --quick         # seconds: 4,096 rows, one repeat (the tests use it)
    python profiling/mpi_scaling.py --procs 2 --repeat 5 --data-dir DIR

Needs nbnet[mpi] (mpi4py, and mpiexec beside this python). The 1-process and N-process epochs run
alternately, --repeat times, each keeping its best, so a loaded machine hurts both alike; read the
ratio. Timed: the training steps of one epoch (history's "seconds"), after a warm-up epoch on a few
batches that loads the compiled kernels.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from argtypes import MNIST_HELP, MNIST_ROW, PROCESS, STEP_ROW, ShowDefaults, at_least, check_memory, directory, found_mnist, mnist_dirs, parse_args, positive_int

MNIST_DIRS = mnist_dirs()  # (argtypes)
SIZES = (784, 256, 128, 10)
LINKS_GBIT = (10, 25, 100)
LATENCY_S = 10e-6  # per message of the ring, assumed for a cluster network (TCP ~10-30 µs, RDMA ~2-5 µs)


def load_data(rows, data_dir):
    """(x, y, what): MNIST's training rows when found, else random rows of its shape (same cost)."""
    folder = data_dir or found_mnist(MNIST_DIRS)
    if folder:
        import nbnet as nb  # noqa: PLC0415

        x, y, _, _ = nb.datasets.load("mnist", data_dir=folder)
        return x[:rows], y[:rows], f"MNIST ({folder})"
    rng = np.random.default_rng(0)
    return (rng.random((rows, 784), dtype=np.float32), rng.integers(0, 10, rows),
            "random rows of MNIST's shape (no MNIST found)")


def worker(args):
    """One process of a measurement (under mpiexec, or alone): prints one JSON line from rank 0."""
    import nbnet as nb  # noqa: PLC0415
    from nbnet import dist  # noqa: PLC0415
    from nbnet.train import build_model, make_optimizer  # noqa: PLC0415

    comm = dist.world()
    mpi = comm.comm if comm.size > 1 else None
    x, y, what = load_data(args.rows, args.data_dir)

    def epoch(rows):
        model = build_model(784, list(SIZES[1:-1]), 10, seed=0)
        opt = make_optimizer("sgd", model, lr=0.05, momentum=0.9)
        history = nb.train(model, opt, (x[:rows], y[:rows]), epochs=1, batch_size=args.batch, seed=0, comm=mpi)
        return history[0]["seconds"]

    epoch(4 * args.batch)  # warm-up: kernels loaded, buffers touched
    seconds = epoch(len(x))
    result = {"seconds": seconds, "rows": len(x), "data": what, "procs": comm.size}
    if mpi is not None:
        from mpi4py import MPI  # noqa: PLC0415

        result["seconds"] = mpi.allreduce(seconds, op=MPI.MAX)
        params = sum(SIZES[i] * SIZES[i + 1] + SIZES[i + 1] for i in range(len(SIZES) - 1))
        for name, size in (("allreduce_grad_s", params), ("allreduce_8B_s", 2)):
            buf = np.ones(size, np.float32)
            times = []
            for i in range(args.allreduce_reps + 10):
                mpi.Barrier()
                t0 = time.perf_counter()
                mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                if i >= 10:
                    times.append(time.perf_counter() - t0)
            result[name] = mpi.allreduce(float(np.median(times)), op=MPI.MAX)
        result["grad_bytes"] = params * 4
    if comm.rank == 0:
        print(json.dumps(result), flush=True)


def run_worker(procs, args, mpiexec):
    from nbnet import dist  # noqa: PLC0415

    me = [sys.executable, os.path.abspath(__file__), "--worker", "--rows", str(args.rows), "--batch", str(args.batch),
          "--allreduce-reps", str(args.allreduce_reps)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    cmd = [mpiexec, "-n", str(procs), *me] if procs > 1 else me
    from common import child_env  # noqa: PLC0415

    env = child_env(dist.launch_env(), NUMBA_NUM_THREADS="1")  # not this process's own job, if it has one
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ring_allreduce_s(n, nbytes, gbit, latency=LATENCY_S):
    """Ring allreduce (reduce-scatter + allgather): each link carries 2(N−1)/N of the buffer, in
    2(N−1) messages: 2(N−1)/N · bytes / bandwidth + 2(N−1) · latency."""
    return 2 * (n - 1) / n * nbytes / (gbit * 1e9 / 8) + 2 * (n - 1) * latency


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=ShowDefaults)
    # 1 process is the reference each run is compared with, and has no Allreduce to time
    parser.add_argument("--procs", type=at_least(2), default=2, help="processes compared with 1 (at least 2)")
    parser.add_argument("--rows", type=positive_int, default=60000, help="training rows (MNIST has 60,000)")
    parser.add_argument("--batch", type=positive_int, default=512, help="the global batch")
    parser.add_argument("--repeat", type=positive_int, default=3, help="timed epochs per process count (the best kept)")
    parser.add_argument("--allreduce-reps", type=positive_int, default=200, help="timed Allreduce calls of the gradients")
    parser.add_argument("--data-dir", type=directory, default=None, help=MNIST_HELP + ", else random MNIST-shaped rows)")
    parser.add_argument("--quick", action="store_true", help="4,096 rows, one repeat: a check that it runs (options given win)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, rows=4096, repeat=1, allreduce_reps=20)
    if not args.worker:  # this checkout's nbnet, as the workers get (child_env), not another installed
        import common  # noqa: F401, PLC0415
    # Every one of --procs processes loads the data (MNIST: all 60,000 rows, of which --rows are
    # used) and steps at its share of the batch, and keeps its Allreduce times.
    if args.data_dir and not args.worker:
        from nbnet.datasets import IDX_FILES, find_idx  # noqa: PLC0415

        if len(find_idx("mnist", args.data_dir)) < len(IDX_FILES):  # else each worker's traceback
            parser.error(f"argument --data-dir: {args.data_dir!r} does not hold MNIST's four IDX files")
    mnist = bool(args.data_dir or found_mnist(MNIST_DIRS))
    data = 70000 * 784 * 9 if mnist else MNIST_ROW * args.rows  # MNIST as loaded (nbnet/files.py), or the rows made
    check_memory(parser, {"--rows": 0 if mnist else args.procs * data,
                          "--batch": STEP_ROW * min(args.batch, args.rows) + args.procs * STEP_ROW,
                          "--procs": args.procs * (PROCESS + (data if mnist else 0)),
                          "--allreduce-reps": args.procs * 80 * args.allreduce_reps})
    if args.worker:
        return worker(args)

    mpiexec = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if mpiexec is None:
        sys.exit("needs mpiexec: pip install 'nbnet[mpi]'")
    from nbnet import simd  # noqa: PLC0415

    print(simd.describe())
    load, cores = os.getloadavg()[0], os.cpu_count()
    if load > 0.5 * cores:
        print(f"warning: load average {load:.1f} on {cores} cores: timings are noisy; rerun on a quiet machine")
    best = {}
    for _ in range(args.repeat):
        for procs in (1, args.procs):
            r = run_worker(procs, args, mpiexec)
            if procs not in best or r["seconds"] < best[procs]["seconds"]:
                best[procs] = r
    one, many = best[1], best[args.procs]
    steps = -(-one["rows"] // args.batch)
    print(f"data: {one['data']}, {one['rows']} rows, global batch {args.batch} ({steps} steps), "
          f"{'-'.join(map(str, SIZES))} float32, SGD; best of {args.repeat}, each process 1 thread")
    for r in (one, many):
        print(f"  {r['procs']} process(es) x 1 thread: {r['seconds']:.3f} s/epoch, "
              f"{r['rows'] / r['seconds']:,.0f} samples/s, {1e3 * r['seconds'] / steps:.2f} ms/step")
    print(f"speedup {args.procs} processes vs 1: {one['seconds'] / many['seconds']:.2f}x "
          f"(parallel efficiency {one['seconds'] / many['seconds'] / args.procs:.0%})")
    nbytes, ar, ar8 = many["grad_bytes"], many["allreduce_grad_s"], many["allreduce_8B_s"]
    print(f"allreduce on this machine ({args.procs} processes, shared memory): {nbytes / 1e6:.2f} MB gradient "
          f"{1e6 * ar:.0f} µs ({nbytes / ar / 1e9:.2f} GB/s algorithm bandwidth), 8 bytes {1e6 * ar8:.1f} µs; "
          f"{100 * ar / (many['seconds'] / steps):.1f}% of a {args.procs}-process step")

    t1 = one["seconds"] / steps  # one process, 1 thread, the whole global batch
    print(f"\nestimate for N machines, one process of 1 thread each (step = {1e3 * t1:.2f} ms / N compute + ring "
          f"allreduce 2(N-1)/N x {nbytes / 1e6:.2f} MB / bandwidth + 2(N-1) x {1e6 * LATENCY_S:.0f} µs):")
    ns = (2, 4, 8, 16, 32, 64)
    rows = []
    for gbit in LINKS_GBIT:
        cells = []
        for n in ns:
            comm = ring_allreduce_s(n, nbytes, gbit)
            cells.append(f"{t1 / (t1 / n + comm):5.1f}x{'*' if comm > t1 / n else ' '}")
        crossover = next((n for n in range(2, 4097) if ring_allreduce_s(n, nbytes, gbit) > t1 / n), None)
        rows.append(f"  {gbit:>3} Gb/s  " + " ".join(cells) + f"   communication > compute from N = {crossover}")
    print("  speedup  " + " ".join(f"N={n:<5}" for n in ns))
    print("\n".join(rows))
    print("  (* communication takes longer than the compute of a step; a multi-threaded process per machine "
          "shrinks the compute, and moves that point down by its thread speedup)")


if __name__ == "__main__":
    main()
