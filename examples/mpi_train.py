"""Data-parallel training from Python with MPI: every process runs this same script.

    pip install 'nbnet[mpi]'                                    # mpi4py + mpich (mpiexec)
    mpiexec -n 2 python -m mpi4py examples/mpi_train.py [--epochs 10] [--out spiral_mpi.npz]

`nb.train(..., comm=MPI.COMM_WORLD)` gives each process its share of every global batch of
--batch-size rows and sums the gradients with one Allreduce per step, so the N processes end with
the same weights, and those of one process (`python examples/mpi_train.py`) within rounding.
`python -m mpi4py` makes an exception on one process abort them all rather than leave the others
waiting for it. (The command line does the same with `mpiexec -n 2 nbnet train ...`.)
"""

import argparse
import zlib

import nbnet as nb


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch, over all processes")
    parser.add_argument("--out", default=None, help="save the model here (process 0 writes it)")
    args = parser.parse_args()
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")

    try:
        from mpi4py import MPI
    except ImportError:
        raise SystemExit("this example needs mpi4py: pip install 'nbnet[mpi]'") from None
    comm = MPI.COMM_WORLD

    data = nb.datasets.load("spiral")  # the same data on every process
    model = nb.Sequential(  # the same initial weights on every process: seeded
        nb.Linear(2, 64, seed=0), nb.ReLU(), nb.Linear(64, 64, seed=1), nb.ReLU(), nb.Linear(64, 3, seed=2),
    )
    opt = nb.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def on_epoch(state, m):  # every process has the same metrics; one prints them
        if comm.rank == 0:
            print(f"epoch {m['epoch']}  train loss {m['train_loss']:.4f}  "
                  f"test accuracy {m['test_accuracy']:.1%}  ({comm.size} process{'es' * (comm.size != 1)})")

    nb.train(model, opt, data, epochs=args.epochs, batch_size=args.batch_size, seed=0, on_epoch=on_epoch, comm=comm)

    # What data parallelism promises: every process holds the very same weights.
    crc = zlib.crc32(b"".join(p.data.tobytes() for p in model.parameters()))
    same = len(set(comm.allgather(crc))) == 1
    if comm.rank == 0:
        print(f"same weights on all {comm.size} processes: {same}")
        if args.out:
            try:
                model.save(args.out)
            except (OSError, ValueError) as e:
                raise SystemExit(f"Error: cannot save {args.out}: {getattr(e, 'strerror', None) or e}") from None
            print(f"saved {args.out}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
