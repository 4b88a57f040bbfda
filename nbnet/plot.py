"""Training curves as a PNG (`nbnet train --plot curves.png`). Needs the optional extra `nbnet[plot]`."""

import os

from .files import write_atomic


def _require_pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), imported on first use so that
    `import nbnet` never needs matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError:
        raise ImportError(
            "plotting needs matplotlib: pip install 'nbnet[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def file_format(path):
    """The format `path` is written in: its extension's (.png, .pdf, .svg, ...), or PNG for a name
    without one, written under exactly that name (matplotlib would append ".png"). A ValueError
    for an extension matplotlib cannot write, so that `nbnet train --plot` can say so before
    training rather than after it."""
    ext = os.path.splitext(os.fspath(path))[1][1:].lower()
    if not ext:
        return "png"
    _require_pyplot()
    from matplotlib.backend_bases import FigureCanvasBase  # noqa: PLC0415

    known = FigureCanvasBase.get_supported_filetypes()
    if ext not in known:
        raise ValueError(f"{os.fspath(path)}: matplotlib cannot write .{ext} files "
                         f"(use {', '.join('.' + t for t in sorted(known))})")
    return ext


def plot_curves(history, path, title=None):
    """Draw loss (left) and accuracy (right) per epoch, train, validation and test, and save a PNG
    to `path`.

    `history` is a list of per-epoch dicts as `nbnet train --metrics-out` writes them: keys `epoch`,
    `train_loss`, `train_accuracy`, `val_loss`, `val_accuracy`, `test_loss`, `test_accuracy`
    (accuracies as fractions; any of these may be missing or None, and that curve is left out).
    A regression run (`--loss mse`) has `*_r2` instead of `*_accuracy`: the right panel shows R².
    With validation data, a dotted line marks the epoch of the lowest validation loss.
    """
    history = list(history)
    if not history:
        raise ValueError("plot_curves: the history is empty (no epoch finished)")
    plt = _require_pyplot()
    fmt = file_format(path)

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    style = {"train": dict(color="tab:blue"), "val": dict(color="tab:green"), "test": dict(color="tab:orange")}
    names = {"train": "train", "val": "validation", "test": "test"}
    regression = not any(k.endswith("_accuracy") for k in history[0]) and any(k.endswith("_r2") for k in history[0])
    metric, metric_scale = ("r2", 1) if regression else ("accuracy", 100)
    marker = "o" if len(epochs) <= 30 else None  # dots help with few epochs, clutter with many

    for split in ("train", "val", "test"):
        for ax, key, scale in ((ax_loss, "loss", 1), (ax_acc, metric, metric_scale)):
            points = [(e, h.get(f"{split}_{key}")) for e, h in zip(epochs, history)]
            points = [(e, v * scale) for e, v in points if v is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker=marker, markersize=4, label=names[split], **style[split])

    val = [(h.get("val_loss"), e) for e, h in zip(epochs, history) if h.get("val_loss") is not None]
    if val:  # the epoch that --save-best keeps: the lowest validation loss (the first, on ties)
        best = min(val, key=lambda p: p[0])[1]
        for ax in (ax_loss, ax_acc):
            ax.axvline(best, color="tab:green", linestyle=":", linewidth=1)
        ax_loss.annotate(f"best validation epoch {best}", (best, 0.98), xycoords=("data", "axes fraction"),
                         ha="center", va="top", fontsize=8, color="tab:green")

    last = history[-1]
    ax_loss.set_title("loss")
    ax_loss.set_ylabel("mean squared error" if regression else "loss (mean per sample)")
    if regression:
        ax_acc.set_title("R²" + (f"  (final test {last['test_r2']:.4f})" if last.get("test_r2") is not None else ""))
        ax_acc.set_ylabel("R² (1 is perfect)")
    else:
        ax_acc.set_title("accuracy" + (
            f"  (final test {100 * last['test_accuracy']:.2f}%)"
            if last.get("test_accuracy") is not None else ""
        ))
        ax_acc.set_ylabel("% correct")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
        if len(epochs) <= 20:  # whole epochs only: 1, 2, 3 rather than 1.0, 1.5, 2.0
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title)
    try:
        # as a checkpoint is: a full disk or Ctrl-C half-way through must not leave a torn PNG
        # over the last run's curves
        write_atomic(path, lambda f: fig.savefig(f, dpi=100, format=fmt))
    finally:
        plt.close(fig)
    return path
