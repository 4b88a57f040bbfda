"""nbnet.plot.plot_curves writes a real PNG of the training curves (skipped without matplotlib)."""

import contextlib
import errno
import math
import os
import struct
import sys

import pytest

from nbnet.plot import file_format, plot_curves


def fake_history(epochs):
    return [
        {
            "epoch": e,
            "train_loss": math.exp(-e / 3),
            "train_accuracy": 1 - 0.3 * math.exp(-e / 3),
            "test_loss": math.exp(-e / 3) + 0.05,
            "test_accuracy": 1 - 0.3 * math.exp(-e / 3) - 0.02,
            "seconds": 1.0,
            "samples_per_second": 1e4,
        }
        for e in range(1, epochs + 1)
    ]


def png_size(path):
    """(width, height) from the PNG header; fails unless the file starts like a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("epochs", [1, 12])
def test_plot_curves_writes_png(tmp_path, epochs):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    plot_curves(fake_history(epochs), path)
    width, height = png_size(path)
    assert width > 2 * height > 400  # two panels side by side
    assert path.stat().st_size > 10_000  # something was drawn, not an empty canvas


def test_a_name_without_extension_is_a_png_under_exactly_that_name(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves"
    plot_curves(fake_history(3), path)
    assert png_size(path)[0] > 400 and not (tmp_path / "curves.png").exists()  # matplotlib's own default appends .png


def test_file_format_follows_the_extension_and_refuses_what_matplotlib_cannot_write(tmp_path):
    pytest.importorskip("matplotlib")
    assert file_format("a.PDF") == "pdf" and file_format("a.svg") == "svg" and file_format("curves") == "png"
    with pytest.raises(ValueError, match=r"cannot write \.txt files \(use .*\.png"):
        file_format(tmp_path / "curves.txt")
    path = tmp_path / "curves.pdf"
    plot_curves(fake_history(2), path)
    assert path.read_bytes()[:5] == b"%PDF-"


def test_plot_curves_missing_test_metrics(tmp_path):
    pytest.importorskip("matplotlib")
    history = [dict(h, test_loss=None, test_accuracy=None) for h in fake_history(3)]
    plot_curves(history, tmp_path / "curves.png")
    png_size(tmp_path / "curves.png")


def test_plot_curves_empty_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_curves([], tmp_path / "curves.png")


def test_plot_curves_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match=r"pip install 'nbnet\[plot\]'"):
        plot_curves(fake_history(2), tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def drawn_curves(monkeypatch, history, tmp_path):
    """{panel title: [line labels]} of the figure plot_curves saves."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    seen = {}
    save = Figure.savefig

    def spy(fig, *args, **kwargs):
        for ax in fig.axes:
            seen[ax.get_title().split()[0]] = [line.get_label() for line in ax.lines]
            seen.setdefault("best", []).extend(
                line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":")
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    plot_curves(history, tmp_path / "curves.png")
    png_size(tmp_path / "curves.png")
    return seen


def test_plot_curves_show_validation_beside_train_and_test(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    history = [dict(h, val_loss=h["test_loss"] + 0.1, val_accuracy=h["test_accuracy"] - 0.01) for h in fake_history(4)]
    history[2]["val_loss"] = 0.01  # the best validation epoch: 3
    seen = drawn_curves(monkeypatch, history, tmp_path)
    assert [label for label in seen["loss"] if not label.startswith("_")] == ["train", "validation", "test"]
    assert [label for label in seen["accuracy"] if not label.startswith("_")] == ["train", "validation", "test"]
    assert seen["best"] == [3.0, 3.0]


def test_plot_curves_of_a_regression_show_r2(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    history = [{"epoch": e, "train_loss": 1 / e, "train_r2": 1 - 1 / e, "test_loss": 1.1 / e, "test_r2": 0.9 - 1 / e}
               for e in (1, 2, 3)]
    assert drawn_curves(monkeypatch, history, tmp_path) == {"loss": ["train", "test"], "R²": ["train", "test"], "best": []}


def test_a_failed_plot_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """The curves were written in place: a full disk (or Ctrl-C) half-way through the PNG left a
    torn file over the previous run's plot. Now written to a temporary file and renamed."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from matplotlib.figure import Figure  # noqa: PLC0415

    path = tmp_path / "curves.png"
    plot_curves(fake_history(2), path)
    before = path.read_bytes()

    def full_disk(fig, fname, *args, **kwargs):
        with open(fname, "wb") if isinstance(fname, (str, os.PathLike)) else contextlib.nullcontext(fname) as f:
            f.write(b"\x89PNG torn")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full_disk)
    open_before = plt.get_fignums()
    with pytest.raises(OSError, match="No space left"):
        plot_curves(fake_history(5), path)
    assert path.read_bytes() == before and plt.get_fignums() == open_before  # its figure closed too
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left


def test_plot_curves_draws_the_values_as_given_and_closes_its_figure(tmp_path, monkeypatch):
    """R² is drawn as is (accuracy in %), a 0 is a point like any other (only None is left out),
    up to 20 epochs are whole ticks, the title is the figure's, and the figure is closed (pyplot
    keeps open figures: a process plotting in a loop grew, and warned after 20)."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from matplotlib.figure import Figure  # noqa: PLC0415

    seen = {}
    save = Figure.savefig

    def spy(fig, *args, **kwargs):
        seen["title"] = fig.get_suptitle()
        for ax in fig.axes:
            seen[ax.get_title().split()[0]] = {line.get_label(): list(line.get_ydata()) for line in ax.lines}
            seen.setdefault("ticks", []).append(list(ax.get_xticks()))
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    open_before = plt.get_fignums()
    epochs = range(1, 13)
    plot_curves([{"epoch": e, "train_loss": 0.0, "train_r2": 0.5} for e in epochs], tmp_path / "r.png", title="run 7")
    assert seen["R²"] == {"train": [0.5] * 12} and seen["loss"] == {"train": [0.0] * 12}
    assert seen["ticks"] == [list(epochs)] * 2 and seen["title"] == "run 7"
    plot_curves([{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.0}, {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.25}],
                tmp_path / "a.png")
    assert seen["accuracy"] == {"train": [0.0, 25.0]}
    assert plt.get_fignums() == open_before


def test_file_format_without_matplotlib_says_how_to_install(monkeypatch):
    """file_format is asked before training: without matplotlib it says how to install it, as
    plot_curves does, rather than "import of matplotlib halted"."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'nbnet\[plot\]'"):
        file_format("curves.pdf")


def figure_seen(monkeypatch):
    """What each figure plot_curves saves holds: [{panel title: (x data per line, xticks)}]."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    seen = []
    save = Figure.savefig

    def spy(fig, *args, **kwargs):
        seen.append({ax.get_title(): ([list(line.get_xdata()) for line in ax.lines], list(ax.get_xticks()))
                     for ax in fig.axes})
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def test_plot_curves_of_later_epochs_any_iterable_ties_and_none(tmp_path, monkeypatch):
    """The epochs as numbered (a resumed run's, 4 to 6, from a generator), the best validation epoch
    the first of equal losses (as --save-best keeps it), a val_loss of None no epoch at all, the
    title's final test accuracy the last epoch's, and 20 epochs still whole ticks."""
    pytest.importorskip("matplotlib")
    seen = figure_seen(monkeypatch)
    history = [dict(h, epoch=h["epoch"] + 3, val_loss=0.5, val_accuracy=0.5) for h in fake_history(3)]
    history[1]["test_accuracy"], history[2]["test_accuracy"] = 0.125, 0.25
    plot_curves((h for h in history), tmp_path / "a.png")
    lines, ticks = seen[0]["loss"]
    assert lines[:3] == [[4, 5, 6]] * 3 and ticks == [4, 5, 6]
    assert lines[3] == [4, 4]  # the marker: epoch 4, not 6
    assert seen[0]["accuracy  (final test 25.00%)"][0][3] == [4, 4]
    plot_curves([dict(h, val_loss=None) for h in fake_history(20)], tmp_path / "b.png")
    lines, ticks = seen[1]["loss"]
    assert len(lines) == 2 and ticks == list(range(1, 21))  # train and test, no marker


def test_plot_curves_of_a_loss_alone_or_no_test_r2(tmp_path):
    """A history with no accuracy or R² leaves the right panel empty: a legend there warned
    "No artists with labels found to put in legend". A regression's test_r2 of None is no final
    test R² in the title (as test_accuracy's None)."""
    pytest.importorskip("matplotlib")
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_curves([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}], tmp_path / "c.png")
    png_size(tmp_path / "c.png")
    plot_curves([{"epoch": 1, "train_loss": 1.0, "train_r2": 0.5, "test_loss": None, "test_r2": None}], tmp_path / "d.png")
    png_size(tmp_path / "d.png")
