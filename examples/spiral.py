"""Three interleaved spirals: train a small MLP, then draw the regions it assigns to each class.

    python examples/spiral.py [--epochs 40] [--out spiral.png]

The picture shows every point of the plane coloured by the class the network predicts, with the
test points on top: a linear model could only cut the plane into three wedges.
Needs matplotlib for the picture (pip install 'nbnet[plot]'); without it, it trains and says so.
"""

import argparse
import sys

import numpy as np

import nbnet as nb
from nbnet.plot import file_format


def accuracy(model, x, y):
    return float((model.forward(x).argmax(axis=1) == y).mean())


def draw_regions(model, x, y, path, fmt, title):
    import matplotlib

    matplotlib.use("Agg")  # draw to a file, no window needed
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    # Predict the class of every pixel of a grid that covers the data with a margin.
    lo, hi = x.min(axis=0) - 0.15, x.max(axis=0) + 0.15
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 400), np.linspace(lo[1], hi[1], 400))
    grid = np.column_stack([gx.ravel(), gy.ravel()]).astype(x.dtype)
    regions = model.forward(grid).argmax(axis=1).reshape(gx.shape)

    light = ListedColormap(["#c6dbef", "#fdd0a2", "#c7e9c0"])  # region fills
    dark = ["#2171b5", "#d94801", "#238b45"]  # points: same hues, darker
    fig, ax = plt.subplots(figsize=(6, 6), constrained_layout=True)
    ax.imshow(regions, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), cmap=light,
              vmin=0, vmax=2, interpolation="nearest")
    for c in range(3):
        ax.scatter(x[y == c, 0], x[y == c, 1], color=dark[c], s=14, edgecolors="white",
                   linewidths=0.4, label=f"class {c}")
    ax.legend(loc="upper left", title="test points", framealpha=0.9)
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(path, dpi=100, format=fmt)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--out", default="spiral.png", help="where to save the picture")
    args = parser.parse_args()
    for name in ("epochs", "hidden"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    # Before training, not after it: matplotlib refuses an extension it cannot write, and appends
    # ".png" to a name without one; file_format gives the format to write exactly `--out` in.
    try:
        fmt = file_format(args.out)
    except ValueError as e:
        parser.error(f"--out {e}")
    except ImportError:
        fmt = None  # trains all the same, and says so at the end

    x_train, y_train, x_test, y_test = nb.datasets.load("spiral")  # (2400, 2), 3 classes
    h = args.hidden
    model = nb.Sequential([
        nb.Linear(2, h, seed=0), nb.ReLU(),
        nb.Linear(h, h, seed=1), nb.ReLU(),
        nb.Linear(h, 3, seed=2),
    ])
    loss_fn = nb.SoftmaxCrossEntropy()
    opt = nb.Adam(model.parameters(), lr=0.005)

    for epoch in range(1, args.epochs + 1):
        for xb, yb in nb.batches(x_train, y_train, batch_size=64, seed=(0, epoch)):
            opt.zero_grad()
            loss = loss_fn.forward(model.forward(xb), yb)
            model.backward(loss_fn.backward())
            opt.step()
        if epoch % 10 == 0 or epoch == args.epochs:
            acc = accuracy(model, x_test, y_test)
            print(f"epoch {epoch:3d}  last batch loss {loss:.4f}  test accuracy {acc:.1%}")

    test_acc = accuracy(model, x_test, y_test)
    try:
        draw_regions(model, x_test, y_test, args.out, fmt,
                     f"Decision regions of a 2-{h}-{h}-3 ReLU MLP\n"
                     f"{args.epochs} epochs, test accuracy {test_acc:.1%}")
        print(f"decision regions saved to {args.out}")
    except ImportError:
        print("no picture: matplotlib is not installed (pip install 'nbnet[plot]')")
    except OSError as e:
        sys.exit(f"Error: cannot write {args.out}: {e.strerror or e}")


if __name__ == "__main__":
    main()
