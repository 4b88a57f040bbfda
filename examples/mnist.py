"""MNIST end to end with the Python API: load, train, evaluate, print a confusion matrix.

    python examples/mnist.py [--data-dir DIR] [--download] [--epochs 2] [--limit N]

The data are the four original IDX files (train-images-idx3-ubyte.gz, ...) in --data-dir, by
default where `nbnet train --dataset mnist` looks: $NBNET_DATA_DIR/mnist, else ~/.cache/nbnet/mnist
(--download fetches the missing ones there, as `nbnet train --dataset mnist --download` does).
--limit N trains on the first N training images only (quick runs); the test set is always whole.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import nbnet as nb

DIGITS = [str(d) for d in range(10)]


def default_data_dir(folder):
    return Path(nb.datasets.default_data_dir(folder))  # where the library and the CLI look


def evaluate(model, x, y):
    """(mean loss, predicted classes) over the whole set, in one forward pass."""
    logits = model.forward(x)
    return nb.SoftmaxCrossEntropy().forward(logits, y), logits.argmax(axis=1)


def confusion_matrix(y_true, y_pred, classes):
    cm = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)  # cm[t, p] counts images of class t predicted as p
    return cm


def print_confusion(cm, names):
    """Rows: the true class; columns: the predicted class; the diagonal is what went right."""
    width = max(len(n) for n in names)
    print("\nconfusion matrix (rows: true class, columns: predicted class)")
    print(" " * (width + 1) + "".join(f"{j:>6}" for j in range(len(names))) + "   recall")
    for i, name in enumerate(names):
        cells = "".join(f"{c:>6}" for c in cm[i])
        print(f"{name:<{width}} {cells}   {cm[i, i] / max(cm[i].sum(), 1):6.1%}")
    if any(len(n) > 2 for n in names):  # columns are numbered: say which number is which class
        print("columns: " + ", ".join(f"{j} {n}" for j, n in enumerate(names)))
    mistakes = sorted(((cm[t, p], t, p) for t in range(len(names)) for p in range(len(names))
                       if t != p and cm[t, p] > 0), reverse=True)
    print("most confused: " + ", ".join(f"{names[t]} taken for {names[p]} ({n}x)"
                                        for n, t, p in mistakes[:3]))


def main(dataset="mnist", class_names=DIGITS):
    parser = argparse.ArgumentParser(description=f"Train an MLP on {dataset}, print a confusion matrix.")
    parser.add_argument("--data-dir", default=default_data_dir(dataset))
    parser.add_argument("--download", action="store_true", help="fetch the four files into --data-dir if missing")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--save", help="save the trained model to this .npz (load it with nb.load)")
    args = parser.parse_args()
    for name in ("epochs", "limit", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:  # a negative --limit would slice from the end
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not 0 <= args.lr < float("inf"):
        parser.error(f"--lr must be a finite number >= 0, got {args.lr}")
    if args.save:  # checked before training: the model must never replace the data it learnt from
        for path in nb.datasets.find_idx(dataset, args.data_dir).values():
            if os.path.exists(args.save) and os.path.samefile(args.save, path):
                parser.error(f"--save {args.save} is {dataset}'s {os.path.basename(path)}: it would be overwritten")

    try:
        x_train, y_train, x_test, y_test = nb.datasets.load(dataset, data_dir=args.data_dir, download=args.download)
    except (OSError, ValueError) as e:
        # The library's message for missing files already says where to point and to pass --download
        hint = "" if "--data-dir" in str(e) else f"\n(point --data-dir at the folder holding the four {dataset} IDX files)"
        sys.exit(f"Error: {e}{hint}")
    x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    print(f"{dataset}: {len(x_train)} training and {len(x_test)} test images")

    model = nb.Sequential([
        nb.Linear(784, 256, seed=0), nb.ReLU(),
        nb.Linear(256, 128, seed=1), nb.ReLU(),
        nb.Linear(128, 10, seed=2),
    ])
    loss_fn = nb.SoftmaxCrossEntropy()
    opt = nb.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(1, args.epochs + 1):
        start, total = time.perf_counter(), 0.0
        for xb, yb in nb.batches(x_train, y_train, batch_size=args.batch_size, seed=(0, epoch)):
            opt.zero_grad()
            loss = loss_fn.forward(model.forward(xb), yb)
            if not np.isfinite(loss):  # too large a rate: every later step would be NaN too
                sys.exit(f"Error: training diverged in epoch {epoch} (loss {loss}): try a lower --lr")
            total += loss * len(xb)
            model.backward(loss_fn.backward())
            opt.step()
        seconds = time.perf_counter() - start
        test_loss, pred = evaluate(model, x_test, y_test)
        print(f"epoch {epoch}: train loss {total / len(x_train):.4f}  test loss {test_loss:.4f}  "
              f"test accuracy {(pred == y_test).mean():.2%}  ({len(x_train) / seconds:,.0f} images/s)")

    print_confusion(confusion_matrix(y_test, pred, len(class_names)), class_names)
    if args.save:
        try:
            model.save(args.save)
        except (OSError, ValueError) as e:
            sys.exit(f"Error: cannot save {args.save}: {getattr(e, 'strerror', None) or e}")
        print(f"model saved to {args.save}")


if __name__ == "__main__":
    main()
