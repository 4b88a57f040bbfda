"""Your own data: write a CSV, train on it with the `nbnet` command line, then with the Python API.

    python examples/custom_csv.py [--rows 1500] [--epochs 20] [--workdir DIR] [--api-only]

The CSV format nbnet reads: one sample per line, the integer class label in the first column, the
features after it; a first row of names is read as a header (this example writes none). Here the
data are 2-D points in three concentric rings (label = ring), which no linear model can separate.
The same file goes through
    nbnet train --dataset rings.csv ...   and   nbnet evaluate --checkpoint ...
and then through a few lines of Python; the checkpoint the CLI saved loads with nb.load.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import nbnet as nb


def write_rings_csv(path, rows, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, rows)
    radius = 1.0 + label + rng.normal(0, 0.25, rows)  # ring k has radius k + 1
    angle = rng.uniform(0, 2 * np.pi, rows)
    data = np.column_stack([label, radius * np.cos(angle), radius * np.sin(angle)])
    np.savetxt(path, data, fmt=["%d", "%.5f", "%.5f"], delimiter=",")


def nbnet_cli(*args):
    """Run `nbnet ARGS...` (as `python -m nbnet.cli`, so it uses this Python) and return its stdout."""
    cmd = [sys.executable, "-m", "nbnet.cli", *args]
    print("$ nbnet " + " ".join(args))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"nbnet {args[0]} failed (exit {done.returncode}):\n{done.stderr}")
    print(done.stdout.rstrip())
    return done.stdout


def with_cli(csv, workdir, epochs):
    checkpoint = workdir / "rings_model.npz"
    nbnet_cli("train", "--dataset", str(csv), "--hidden", "32,32", "--optimizer", "adam",
              "--lr", "0.01", "--batch-size", "32", "--epochs", str(epochs), "--seed", "0",
              "--save", str(checkpoint))
    result = json.loads(nbnet_cli("evaluate", "--checkpoint", str(checkpoint),
                                  "--dataset", str(csv), "--json"))
    print(f"CLI: accuracy {result['accuracy']:.1%}, loss {result['loss']:.4f} "
          "on the rows held out for testing (--test-split, default 20%)")

    model = nb.load(checkpoint)  # the CLI's checkpoint is an ordinary nbnet model
    points = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, -3.0]], dtype=np.float32)
    print(f"nb.load(checkpoint) predicts rings {model.forward(points).argmax(axis=1).tolist()} "
          f"for points at radius 1, 2, 3 (expected [0, 1, 2])")


def with_api(csv, epochs):
    data = np.loadtxt(csv, delimiter=",", dtype=np.float32)
    x, y = data[:, 1:], data[:, 0].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))  # hold out 20% for testing
    test, train = order[: len(x) // 5], order[len(x) // 5:]

    model = nb.Sequential([nb.Linear(2, 32, seed=0), nb.ReLU(),
                           nb.Linear(32, 32, seed=1), nb.ReLU(),
                           nb.Linear(32, 3, seed=2)])
    loss_fn = nb.SoftmaxCrossEntropy()
    opt = nb.Adam(model.parameters(), lr=0.01)
    for epoch in range(epochs):
        for xb, yb in nb.batches(x[train], y[train], batch_size=32, seed=(0, epoch)):
            opt.zero_grad()
            loss = loss_fn.forward(model.forward(xb), yb)
            model.backward(loss_fn.backward())
            opt.step()
    accuracy = (model.forward(x[test]).argmax(axis=1) == y[test]).mean()
    print(f"API: test accuracy {accuracy:.1%} after {epochs} epochs (last batch loss {loss:.4f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workdir", help="where to write the CSV and model (default: a temp dir)")
    parser.add_argument("--api-only", action="store_true", help="skip the command-line part")
    args = parser.parse_args()
    if args.rows < 10:  # the 20% held out for testing must not be empty
        parser.error(f"--rows must be at least 10, got {args.rows}")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            sys.exit(f"Error: cannot create --workdir {workdir}: {e.strerror or e}")
        csv = workdir / "rings.csv"
        write_rings_csv(csv, args.rows)
        print(f"wrote {args.rows} rows to {csv}; first line: {csv.read_text().splitlines()[0]}\n")
        if not args.api_only:
            with_cli(csv, workdir, args.epochs)
            print()
        with_api(csv, args.epochs)


if __name__ == "__main__":
    main()
