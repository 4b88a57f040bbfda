"""`nbnet train | evaluate | predict | info`, in process with click's CliRunner; subprocesses only
for what needs a real process (Ctrl-C, and that no traceback reaches the user)."""

import gzip
import hashlib
import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import default_signals, needs_posix

import nbnet as nb
from nbnet import cli as cli_module
from nbnet import simd
from nbnet.checkpoint import load_checkpoint
from nbnet.cli import cli
from nbnet.train import TrainState

REPO = Path(__file__).resolve().parent.parent
FAST = ["--epochs", "2", "--hidden", "16", "--batch-size", "32"]


def nbnet(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_error(result, *fragments):
    """One line on stderr starting `Error:`, a non-zero exit, no traceback."""
    assert result.exit_code != 0, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def blobs(path, n=120, d=3, classes=3, seed=0):
    """An easy .npz classification problem."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (rng.normal(size=(n, d)) * 0.3 + y[:, None]).astype(np.float32)
    np.savez(path, x=x, y=y)
    return x, y


def weights(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith(("layer", "optim/state/"))}


# --------------------------------------------------------------------------------------------- train


def test_train_with_no_options_learns_spiral(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = nbnet("train")
    assert r.exit_code == 0, r.output
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("epoch 10/10")
    acc = float(last.split("test loss")[1].split("acc")[1].split("%")[0])
    assert acc >= 95.0, last


@pytest.mark.parametrize("hidden, says", [("", "training 2-3 linear on spiral"), ("8", "training 2-8-3 relu on spiral")])
def test_the_first_line_names_the_model(hidden, says):
    """--hidden "" trains a linear model, which the first line called "2-3 relu"."""
    r = nbnet("train", "--hidden", hidden, "--epochs", "1")
    assert r.exit_code == 0, r.output
    assert r.output.startswith(says), r.output


def test_metrics_out_is_jsonl_with_the_interface_keys(tmp_path):
    m = tmp_path / "m.jsonl"
    r = nbnet("train", *FAST, "--metrics-out", m, "--quiet")
    assert r.exit_code == 0 and r.stdout == ""
    rows = [json.loads(line) for line in m.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        assert {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
                "samples_per_second"} <= row.keys()
        assert 0 <= row["train_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1


@pytest.mark.parametrize("extra", [[], ["--val-split", "0.2"], ["--loss", "mse"]])
def test_metrics_out_csv_has_a_header_and_the_jsonl_numbers(tmp_path, extra):
    """A .csv name got JSON Lines, which a spreadsheet or pandas.read_csv cannot read."""
    data = []
    if "mse" in extra:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(200, 3)).astype(np.float32)
        np.savez(tmp_path / "reg.npz", x=x, y=x.sum(1))
        data = ["--dataset", tmp_path / "reg.npz"]
    for name in ("m.jsonl", "m.csv"):
        r = nbnet("train", *FAST, *data, *extra, "--metrics-out", tmp_path / name, "--quiet")
        assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    header, *lines = (tmp_path / "m.csv").read_text().splitlines()
    assert header.split(",") == list(rows[0]) and len(lines) == len(rows) == 2
    for line, row in zip(lines, rows):
        values = [float(v) for v in line.split(",")]
        skip = {"seconds", "samples_per_second"}  # timings differ from run to run
        assert [v for k, v in zip(row, values) if k not in skip] == [v for k, v in row.items() if k not in skip]


def test_resume_two_then_four_equals_four_straight(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    common = ["--hidden", "16", "--batch-size", "32", "--optimizer", "adam", "--quiet"]
    assert nbnet("train", *common, "--epochs", "4", "--save", a).exit_code == 0
    assert nbnet("train", *common, "--epochs", "2", "--save", b).exit_code == 0
    r = nbnet("train", "--epochs", "4", "--resume", b, "--save", b, "--metrics-out", tmp_path / "m.jsonl")
    assert r.exit_code == 0, r.output  # the other options come from the checkpoint
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and any(k.startswith("optim/state/") for k in wa)
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 4  # the whole run's history
    assert nb.load(b).layers[0].weight.shape == (16, 2)


def stop_after_step(monkeypatch, n, signum=signal.SIGINT):
    """Make `nbnet train` stop as a Ctrl-C (or `signum`) after its n-th step would, in process."""
    asked = []

    def requested(self):  # train asks before each step, and stops once that step is done
        asked.append(1)
        if len(asked) == n:
            self.signum = signum
        return self.signum is not None

    monkeypatch.setattr(cli_module.StopOnSignals, "requested", requested)


def test_resume_says_where_it_goes_on_as_the_interruption_did(tmp_path, monkeypatch):
    """The interruption says "in epoch 2 after step 80"; --resume said "from epoch 1, step 80",
    read as epoch 1 trained again. And the run resumed mid-epoch ends bit for bit as one that never stopped."""
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"  # 75 steps an epoch
    assert nbnet("train", *FAST, "--epochs", "3", "--save", a, "-q").exit_code == 0
    with monkeypatch.context() as m:
        stop_after_step(m, 80)
        r = nbnet("train", *FAST, "--epochs", "3", "--save", b)
    assert r.exit_code == 130 and "Interrupted in epoch 2 after step 80: checkpoint saved" in r.stderr, r.output
    r = nbnet("train", "--resume", b, "--epochs", "2")
    assert r.exit_code == 0 and r.stdout.splitlines()[0].split(": ")[0].endswith(" in epoch 2 after step 80"), r.output
    r = nbnet("train", "--resume", b, "--epochs", "3")
    assert r.exit_code == 0 and r.stdout.splitlines()[0].split(": ")[0].endswith(" after epoch 2 (step 150)"), r.output
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("option, value, fragment", [
    ("--seed", "5", "was trained with --seed 0, this run has 5"),
    ("--batch-size", "16", "was trained with --batch-size 32, this run has 16"),
    ("--optimizer", "adam", "was trained with --optimizer sgd, this run has adam"),
    ("--loss", "mse", "was trained with --loss cross-entropy, this run has mse"),
])
def test_resume_refuses_options_that_fix_the_run(tmp_path, option, value, fragment):
    """Options in MUST_MATCH_ON_RESUME (the model, the data, the order of the batches) given anew on
    --resume: the run would go on as another run than the one saved."""
    ck = tmp_path / "ck.npz"
    assert nbnet("train", *FAST, "--save", ck, "-q").exit_code == 0
    assert_error(nbnet("train", "--resume", ck, "--epochs", "3", option, value), "does not fit", fragment)


def test_thread_count_and_dtype(tmp_path):
    import numba  # noqa: PLC0415

    from nbnet import threads  # noqa: PLC0415

    before = numba.get_num_threads()
    try:
        assert nbnet("train", *FAST, "--save", tmp_path / "a.npz", "--threads", "1", "-q").exit_code == 0
        assert not threads.parallel()  # --threads 1: the serial twins, whatever the load
    finally:
        numba.set_num_threads(before)
        threads.auto()
    assert nbnet("train", *FAST, "--save", tmp_path / "b.npz", "-q").exit_code == 0
    wa, wb = weights(tmp_path / "a.npz"), weights(tmp_path / "b.npz")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)  # same seed, same run, whatever the threads
    assert nbnet("train", *FAST, "--save", tmp_path / "c.npz", "--dtype", "float64", "-q").exit_code == 0
    assert nb.load(tmp_path / "c.npz").layers[0].weight.dtype == np.float64


def test_config_file_sets_defaults_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('hidden = [8, 4]\nepochs = 1\nbatch-size = 64\nlr = 0.05\noptimizer = "adam"\n')
    ck = tmp_path / "c.npz"
    r = nbnet("train", "--config", cfg, "--lr", "0.01", "--save", ck, "--quiet")
    assert r.exit_code == 0, r.output
    stored = json.loads(str(np.load(ck)["train/config"]))
    assert stored["hidden"] == [8, 4] and stored["batch_size"] == 64 and stored["optimizer"] == "adam"
    assert stored["lr"] == 0.01 and stored["epochs"] == 1
    cfg.write_text("hiden = [8]\n")
    assert_error(nbnet("train", "--config", cfg), "unknown option 'hiden'")
    cfg.write_text("hidden = [8\n")
    assert_error(nbnet("train", "--config", cfg), "not valid TOML")


def test_progress_bar_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    out = cli_module.Output(quiet=False)
    assert out.bar
    out.step(TrainState(), 3, 3, 0.5)
    assert "\repoch 1/? [" in capsys.readouterr().out
    assert not cli_module.Output(quiet=True).bar


def test_the_bar_leaves_no_line_half_drawn_nor_an_empty_one(monkeypatch, capsys):
    """A run stopped after a finished epoch's line (the next bar not drawn yet: it draws every 0.1 s)
    printed an empty line before "Interrupted"; the bar's own line ends once."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    out = cli_module.Output(quiet=False)
    out.epochs = 2
    out.step(TrainState(), 3, 3, 0.5)
    out.epoch({"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.5, "seconds": 1.0, "samples_per_second": 1.0}, 2)
    out.end_bar()
    shown = capsys.readouterr().out
    assert shown.startswith("\repoch 1/2 [") and shown.endswith("samples/s\n") and shown.count("\n") == 1, repr(shown)
    out = cli_module.Output(quiet=False)  # (a new one draws at once: no bar for 0.1 s yet)
    out.step(TrainState(epoch=1), 1, 3, 0.5)
    out.end_bar()
    out.end_bar()
    assert capsys.readouterr().out.endswith("loss 0.5000\n")


@pytest.mark.parametrize("seconds, shown", [(0.0021, "  2.1ms  "), (0.0999, "  99.9ms  "), (0.48, "  0.48s  "),
                                            (1234.5, "  1234.50s  ")])
def test_the_epoch_line_shows_a_fast_epochs_time(capsys, seconds, shown):
    """A spiral epoch (~2 ms) was shown as "0.00s"."""
    cli_module.Output(quiet=False).epoch(
        {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.5, "seconds": seconds, "samples_per_second": 1.0}, 2)
    assert shown in capsys.readouterr().out


@pytest.mark.parametrize("schedule, rates", [("step", ["0.1", "0.01", "0.001"]), ("constant", [None] * 3)])
def test_the_epoch_line_shows_the_scheduled_rate_as_metrics_out_has_it(tmp_path, schedule, rates):
    """Under --lr-schedule step or cosine the epoch line never said the rate, which --metrics-out
    had: a drop at epoch 2 was nowhere on the screen."""
    m = tmp_path / "m.jsonl"
    r = nbnet("train", *FAST, "--epochs", "3", "--lr-schedule", schedule, "--metrics-out", m)
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stdout.splitlines() if line.startswith("epoch ")]
    shown = [line.split("  lr ")[1].split()[0] if "  lr " in line else None for line in lines]
    assert shown == rates, lines
    if schedule != "constant":
        assert [float(v) for v in shown] == pytest.approx([json.loads(row)["lr"] for row in m.read_text().splitlines()])


def test_an_error_in_training_starts_a_line_of_its_own_after_the_bar(monkeypatch):
    """Divergence (any error) ended the run with the bar half-drawn: on a terminal "Error: ..." came
    on the bar's line, after "loss 1.2184"."""
    real_init = cli_module.Output.__init__

    def on_a_terminal(self, quiet):
        real_init(self, quiet)
        self.bar = True

    monkeypatch.setattr(cli_module.Output, "__init__", on_a_terminal)
    r = nbnet("train", *FAST, "--lr", "1e30", "--momentum", "0")
    assert_error(r, "training diverged")
    assert "\repoch 1/2 [" in r.stdout and r.stdout.endswith("\n"), repr(r.stdout)


@pytest.mark.parametrize("columns, bar", [(200, 30), (50, 18), (37, 5), (36, None), (30, None)])
def test_the_bar_fits_the_terminal(monkeypatch, columns, bar):
    """The bar was 30 characters whatever the terminal: its ~60-character line wrapped on a narrower
    one, and each redraw (\r) then began a new row."""
    real_init = cli_module.Output.__init__

    def on_a_terminal(self, quiet):
        real_init(self, quiet)
        self.bar = True

    monkeypatch.setattr(cli_module.Output, "__init__", on_a_terminal)
    monkeypatch.setenv("COLUMNS", str(columns))  # shutil.get_terminal_size reads it first
    r = nbnet("train", *FAST, "--epochs", "1")
    assert r.exit_code == 0, r.output
    draws = [d for line in r.stdout.splitlines() for d in line.split("\r") if d.startswith("epoch 1/1 ") and "train loss" not in d]
    assert draws and all(len(d) <= columns - 1 for d in draws), draws
    if bar is None:
        assert all("[" not in d for d in draws) and draws[-1].startswith("epoch 1/1 75/75 loss "), draws
    else:
        assert all(len(d.split("[")[1].split("]")[0]) == bar for d in draws), draws
def bar_draws(monkeypatch, capsys, *steps):
    """What an Output on a terminal draws for each (columns, batch, n_batches, loss) in turn: the
    text between its carriage returns, padding and all."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    out = cli_module.Output(quiet=False)
    out.epochs = 1
    for columns, batch, n_batches, loss in steps:
        monkeypatch.setenv("COLUMNS", str(columns))
        out._last = 0.0  # each draws (it draws every 0.1 s)
        out.step(TrainState(), batch, n_batches, loss)
    out.end_bar()
    return capsys.readouterr().out.removesuffix("\n").split("\r")[1:]


def test_a_loss_wider_than_the_bar_leaves_room_for_is_cut_to_the_terminal(monkeypatch, capsys):
    """The bar leaves room for a loss of two digits before the point; a larger one (targets in the
    thousands under --loss mse) still ends the line at the terminal's width, bar or no bar."""
    for columns in (50, 30):
        (drawn,) = bar_draws(monkeypatch, capsys, (columns, 1, 8, 1234567.8))
        assert len(drawn) == columns - 1 and drawn.startswith("epoch 1/1 "), repr(drawn)
        assert ("[" in drawn) == (columns == 50), repr(drawn)


def test_a_terminal_narrowed_during_an_epoch_is_not_padded_past_its_width(monkeypatch, capsys):
    """The spaces that blank a longer line drawn before stop at the terminal's width: padded to the
    wider line of a window since narrowed, the redraw wrapped."""
    wide, narrow = bar_draws(monkeypatch, capsys, (200, 1, 8, 0.5), (40, 8, 8, 0.5))
    assert len(wide) > 39 and len(narrow) == 39 and narrow.startswith("epoch 1/1 ["), (wide, narrow)


def test_a_terminal_narrower_than_20_columns_is_drawn_on_as_20(monkeypatch, capsys):
    """A width below 20 (a tiny pane, COLUMNS=1) is taken as 20: the count and the loss's start,
    not a line cut to 'epoch' or to nothing."""
    for columns in (8, 1):
        assert bar_draws(monkeypatch, capsys, (columns, 1, 8, 0.5)) == ["epoch 1/1 1/8 loss "]


# --------------------------------------------------------------------------------------------- evaluate, predict


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    data = d / "blobs.npz"
    x, y = blobs(data)
    ck = d / "c.npz"
    r = nbnet("train", "--dataset", data, *FAST, "--save", ck, "--metrics-out", d / "m.jsonl", "--quiet")
    assert r.exit_code == 0, r.output
    last = json.loads((d / "m.jsonl").read_text().splitlines()[-1])
    return d, ck, x, last


def test_evaluate_json_reports_the_training_figures(trained):
    d, ck, _, last = trained
    r = nbnet("evaluate", "--checkpoint", ck, "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["accuracy"] == last["test_accuracy"] and got["loss"] == last["test_loss"]
    r = nbnet("evaluate", "--checkpoint", ck)
    assert "accuracy" in r.stdout


def test_predict_outputs(trained, tmp_path):
    d, ck, x, _ = trained
    np.savez(tmp_path / "in.npz", x=x[:5])
    r = nbnet("predict", "--checkpoint", ck, tmp_path / "in.npz")
    assert r.exit_code == 0, r.output
    pred = [int(v) for v in r.stdout.split()]
    assert len(pred) == 5 and all(0 <= p < 3 for p in pred)
    (tmp_path / "in.csv").write_text("".join(",".join(map(repr, row)) + "\n" for row in x[:5].tolist()))
    assert nbnet("predict", "--checkpoint", ck, tmp_path / "in.csv", "--output", tmp_path / "p.csv").exit_code == 0
    assert [int(v) for v in (tmp_path / "p.csv").read_text().split()] == pred
    assert nbnet("predict", "--checkpoint", ck, tmp_path / "in.npz", "-o", tmp_path / "p.npy").exit_code == 0
    assert np.load(tmp_path / "p.npy").tolist() == pred
    assert nbnet("predict", "--checkpoint", ck, tmp_path / "in.npz", "-o", tmp_path / "p.npz").exit_code == 0
    with np.load(tmp_path / "p.npz", allow_pickle=False) as f:
        assert f["pred"].tolist() == pred and f["probs"].shape == (5, 3)


def test_a_plain_saved_model_evaluates_and_predicts(trained, tmp_path):
    d, ck, x, last = trained
    nb.load(ck).save(tmp_path / "plain.npz")
    r = nbnet("evaluate", "--checkpoint", tmp_path / "plain.npz", "--dataset", d / "blobs.npz", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["accuracy"] == last["test_accuracy"]  # same seed 0 split
    assert_error(nbnet("evaluate", "--checkpoint", tmp_path / "plain.npz"), "pass --dataset")
    np.savez(tmp_path / "in.npz", x=x[:4])
    assert nbnet("predict", "--checkpoint", tmp_path / "plain.npz", tmp_path / "in.npz").exit_code == 0


def test_info():
    r = nbnet("info")
    assert r.exit_code == 0, r.output
    for word in ("nbnet", "numba", "numpy", "click", "python", "CPU threads", "threading layer", "GPU:"):
        assert word in r.stdout
    assert simd.describe() in r.stdout.splitlines()  # CPU, ISA, blocks: what a bug report should carry
    assert nbnet("--version").stdout.strip() == f"nbnet, version {nb.__version__}"


@pytest.mark.parametrize("why,line", [
    ("no usable CUDA GPU: Error at driver init", "GPU: no usable CUDA GPU: Error at driver init"),
    ("numba-cuda is not installed", "GPU: not usable: numba-cuda is not installed"),
])
def test_info_says_why_there_is_no_gpu_once(monkeypatch, why, line):
    """"GPU: not usable: no usable CUDA GPU: ..." said it twice, on every machine without a GPU."""
    gpu = pytest.importorskip("nbnet.gpu", exc_type=ImportError)

    def status():
        raise RuntimeError(why)
    monkeypatch.setattr(gpu, "gpu_status", status)
    r = nbnet("info")
    assert r.exit_code == 0, r.output
    assert line in r.stdout.splitlines()


def test_info_on_a_checkpoint_says_where_the_run_stands_and_how_it_was_trained(tmp_path, monkeypatch):
    """`nbnet info CHECKPOINT`: a .npz is opaque, and what a user asks of one (how far did it get,
    with which options, which layers) was answered only by loading it in Python. Its "trained with"
    line is the whole command: run again, it gives the checkpoint's weights bit for bit."""
    import shlex

    data, a, b = tmp_path / "blobs.npz", tmp_path / "a.npz", tmp_path / "b.npz"
    blobs(data)
    options = ["--dataset", data, *FAST, "--val-split", "0.25", "--optimizer", "adam", "--lr", "0.003",
               "--lr-schedule", "cosine", "--weight-decay", "0.001", "--seed", "3"]
    r = nbnet("train", *options, "--save", a, "--metrics-out", tmp_path / "m.jsonl", "-q")
    assert r.exit_code == 0, r.output
    last = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[-1])
    r = nbnet("info", a)
    assert r.exit_code == 0 and r.stderr == "", r.output
    lines = r.stdout.splitlines()
    model = nb.load(a)
    assert lines[0] == f"{a}: a checkpoint of `nbnet train`, {model.num_parameters():,} parameters"
    assert lines[1] == f"all 2 epochs done (6 steps), a finished run: `nbnet train --resume {a} --epochs 3` or more trains on"
    assert lines[2] == (f"epoch 2: train loss {last['train_loss']:.4f} acc {100 * last['train_accuracy']:.2f}%  "
                        f"val loss {last['val_loss']:.4f} acc {100 * last['val_accuracy']:.2f}%  "
                        f"test loss {last['test_loss']:.4f} acc {100 * last['test_accuracy']:.2f}%")
    best = load_checkpoint(a).state
    assert lines[3] == f"best epoch {best.best_epoch} (validation loss {best.best_val_loss:.4f})"
    assert lines[4].startswith("trained with: nbnet train --dataset ")
    assert "\n".join(lines[5:]) == model.summary()
    args = shlex.split(lines[4].removeprefix("trained with: nbnet train "))
    assert "--weight-decay" in args and "--lr-schedule" in args and "--save" not in args
    r = nbnet("train", *args, "--save", b, "-q")
    assert r.exit_code == 0, r.output
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)

    with monkeypatch.context() as m:  # 3 steps an epoch: stopped inside epoch 2, after its first
        stop_after_step(m, 4)
        assert nbnet("train", *options, "--save", b, "-q").exit_code == 130
    r = nbnet("info", b)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1] == (f"1 of 2 epochs done, then stopped in epoch 2 after step 4: "
                                        f"`nbnet train --resume {b}` finishes the run")
    assert r.stdout.splitlines()[2].startswith("epoch 1: train loss ")

    nb.load(a).save(tmp_path / "plain.npz")
    r = nbnet("info", tmp_path / "plain.npz")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].endswith("plain.npz: a model (model.save), "
                                             f"{model.num_parameters():,} parameters: nothing to resume; "
                                             "`nbnet evaluate` and `nbnet predict` take it")
    assert r.stdout.split("\n", 1)[1] == model.summary() + "\n"

    assert_error(nbnet("info", tmp_path / "none.npz"), "none.npz: no such file")
    (tmp_path / "t.npz").write_bytes(a.read_bytes()[:300])
    assert_error(nbnet("info", tmp_path / "t.npz"), "corrupt or truncated")
    with np.load(a) as f:
        arrays = dict(f)
    arrays["train/config"] = np.array(json.dumps({**json.loads(str(arrays["train/config"])), "batch_size": 0}))
    np.savez(tmp_path / "d.npz", **arrays)
    assert_error(nbnet("info", tmp_path / "d.npz"), "d.npz: damaged checkpoint", "batch_size")
    # A file that stores no options, or no --epochs (hand-made, damaged): said, not a KeyError
    for config in ({}, {"dataset": "spiral"}):
        arrays["train/config"] = np.array(json.dumps(config))
        np.savez(tmp_path / "n.npz", **arrays)
        r = nbnet("info", tmp_path / "n.npz")
        assert r.exit_code == 0, r.output
        lines = r.stdout.splitlines()
        assert lines[1] == "2 epochs done (6 steps); it stores no --epochs", lines
        assert any(line.startswith("trained with: ") for line in lines) == bool(config), lines
    # A history may hold a loss with no accuracy (NaN is "absent"): shown alone, not a KeyError
    with np.load(a) as f:
        arrays = dict(f)
    keys = json.loads(str(arrays["train/state"]))["history_keys"]
    arrays["train/history"] = arrays["train/history"].copy()
    arrays["train/history"][-1, [i for i, k in enumerate(keys) if k.endswith("_accuracy")]] = np.nan
    np.savez(tmp_path / "h.npz", **arrays)
    r = nbnet("info", tmp_path / "h.npz")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[2] == (f"epoch 2: train loss {last['train_loss']:.4f}  val loss "
                                        f"{last['val_loss']:.4f}  test loss {last['test_loss']:.4f}")


def test_info_on_a_checkpoint_that_stopped_early(tmp_path):
    """Early stopping ends a run before --epochs with no step left undone: read by its epochs
    alone, it was a run waiting for a --resume that would train nothing."""
    data, ck = tmp_path / "blobs.npz", tmp_path / "e.npz"
    blobs(data)
    r = nbnet("train", "--dataset", data, *FAST, "--epochs", "40", "--val-split", "0.25", "--early-stopping", "1",
              "--lr", "0.5", "--save", ck, "-q")
    assert r.exit_code == 0, r.output
    state = load_checkpoint(ck).state
    assert state.epoch < 40 and state.seen == 0 and state.bad_epochs == 1  # stopped early, as the run said
    lines = nbnet("info", ck).stdout.splitlines()
    assert lines[1] == (f"{state.epoch} of 40 epochs done ({state.step} steps): stopped early, no better "
                        "validation loss for 1 epoch")
    assert lines[3] == f"best epoch {state.best_epoch} (validation loss {state.best_val_loss:.4f})"
    assert "--early-stopping 1 " in lines[4]
    # The same run to that epoch ends there with the same epoch without improvement: it finished,
    # it did not stop early
    r = nbnet("train", "--dataset", data, *FAST, "--epochs", state.epoch, "--val-split", "0.25", "--early-stopping",
              "1", "--lr", "0.5", "--save", ck, "-q")
    assert r.exit_code == 0, r.output
    assert load_checkpoint(ck).state.bad_epochs == 1
    assert nbnet("info", ck).stdout.splitlines()[1] == (
        f"all {state.epoch} epochs done ({state.step} steps), a finished run: `nbnet train --resume {ck} --epochs "
        f"{state.epoch + 1}` or more trains on")


def test_info_on_a_one_step_bce_run_in_a_folder_with_a_space(tmp_path):
    """One epoch of one step is said in the singular; a yes/no model's scores as its epoch lines
    say them (label acc); no best epoch without a validation set; paths quoted for the shell, and
    the options in `nbnet train --help`'s order, whatever order they were given in. A key that is
    no option of this nbnet's train (a newer version's, a hand-made file's) is left out."""
    import shlex

    folder = tmp_path / "my runs"
    folder.mkdir()
    data, ck = folder / "d.npz", folder / "c.npz"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    np.savez(data, x=x, y=(x[:, 0] > 0).astype(np.int64))
    r = nbnet("train", "--seed", "2", "--loss", "bce", "--dataset", data, "--epochs", "1", "--hidden", "4",
              "--batch-size", "64", "--save", ck, "-q")
    assert r.exit_code == 0, r.output
    lines = nbnet("info", ck).stdout.splitlines()
    assert lines[1] == (f"all 1 epoch done (1 step), a finished run: `nbnet train --resume {shlex.quote(str(ck))} "
                        "--epochs 2` or more trains on")
    assert lines[2].startswith("epoch 1: train loss ") and " label acc " in lines[2] and " test loss " in lines[2]
    assert lines[3].startswith("trained with: nbnet train ")
    args = shlex.split(lines[3].removeprefix("trained with: nbnet train "))
    assert args[args.index("--dataset") + 1] == str(data)
    order = ["--" + p.name.replace("_", "-") for p in cli_module.train_cmd.params]
    flags = [a for a in args if a.startswith("--")]
    assert flags == sorted(flags, key=order.index) and "--seed" in flags, flags

    with np.load(ck) as f:
        arrays = dict(f)
    arrays["train/config"] = np.array(json.dumps({**json.loads(str(arrays["train/config"])), "future_option": 3}))
    np.savez(tmp_path / "n.npz", **arrays)
    r = nbnet("info", tmp_path / "n.npz")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[3] == lines[3]


# --------------------------------------------------------------------------------------------- errors


def test_error_bad_option_values(tmp_path):
    assert_error(nbnet("train", "--epochs", "0"), "--epochs")
    assert_error(nbnet("train", "--hidden", "64,x"), "--hidden")
    for typo in ("64,,32", "64,", ",,,", "\uff15", "1_0", "+8"):  # were read as 64,32 / 64 / none / 5 / 10 / 8
        assert_error(nbnet("train", "--hidden", typo), "--hidden", "comma-separated layer widths")
    assert_error(nbnet("train", "--hidden", "8,0"), "--hidden", "layer widths must be positive")
    assert_error(nbnet("train", "--hidden", ",".join(["1"] * 1001)), "--hidden", "1001 hidden layers: at most 1000")
    assert_error(nbnet("train", "--activation", "gelu"), "--activation")
    assert_error(nbnet("train", "--val-split", "1.5"), "--val-split")
    # was "0.0 is not in the range x>0", of a value no one gave
    assert_error(nbnet("train", "--lr", "1e-400"), "--lr", "1e-400 is too small for a float: it reads as 0.0")
    assert_error(nbnet("train", "--lr", "0"), "--lr", "0.0 is not in the range x>0")
    # not "too small": a zero written with an exponent, a negative rate, a typo
    assert_error(nbnet("train", "--lr", "0e-5"), "--lr", "0.0 is not in the range x>0")
    assert_error(nbnet("train", "--lr", "-0.5"), "--lr", "-0.5 is not in the range x>0")
    assert_error(nbnet("train", "--lr", "1x"), "--lr", "'1x' is not a valid float")
    assert_error(nbnet("train", "--threads", "9999"), "--threads 9999")
    assert_error(nbnet("train", "--dataset", "cifar"), "unknown dataset")
    assert_error(nbnet("train", "--bogus"), "--bogus")
    assert_error(nbnet("predict", "--checkpoint", tmp_path / "c.npz", "x.npz", "-o", "p.txt"), ".csv, .npy or .npz")


def test_error_missing_corrupt_and_truncated_files(tmp_path, trained):
    _, ck, _, _ = trained
    assert_error(nbnet("train", "--dataset", tmp_path / "nope.npz"), "no such file")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert_error(nbnet("train", "--dataset", tmp_path / "bad.npz"), "bad.npz")
    (tmp_path / "t.npz").write_bytes(Path(ck).read_bytes()[:300])
    assert_error(nbnet("evaluate", "--checkpoint", tmp_path / "t.npz"), "corrupt or truncated")
    assert_error(nbnet("train", "--resume", tmp_path / "t.npz"), "corrupt or truncated")
    assert_error(nbnet("predict", "--checkpoint", tmp_path / "none.npz", tmp_path / "x.npz"), "no such file")
    # many tools' standard input: said, not "-: no such file" alone
    assert_error(nbnet("predict", "--checkpoint", ck, "-"), "-: no such file ('-' is not standard input here: give a file)")
    assert_error(nbnet("train", "--dataset", "mnist", "--data-dir", tmp_path / "empty"), "not found", "--download")
    (tmp_path / "file").write_text("")
    assert_error(nbnet("train", "--save", tmp_path / "file" / "c.npz"), "--save")  # a file as folder


def test_error_bad_data(tmp_path):
    x = np.zeros((20, 2), np.float32)
    np.savez(tmp_path / "neg.npz", x=x, y=np.r_[np.zeros(19, int), -3])
    assert_error(nbnet("train", "--dataset", tmp_path / "neg.npz"), "label -3")
    x[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.zeros(20, int))
    assert_error(nbnet("train", "--dataset", tmp_path / "nan.npz"), "NaN")
    (tmp_path / "len.csv").write_text("0,1,2\n1,3\n")
    assert_error(nbnet("train", "--dataset", tmp_path / "len.csv"), "columns")


def test_error_data_or_checkpoint_that_does_not_fit(tmp_path, trained):
    d, ck, x, _ = trained
    np.savez(tmp_path / "wide.npz", x=np.zeros((10, 5), np.float32), y=np.zeros(10, int))
    assert_error(nbnet("evaluate", "--checkpoint", ck, "--dataset", tmp_path / "wide.npz"), "expects 3")
    assert_error(nbnet("predict", "--checkpoint", ck, tmp_path / "wide.npz"), "expects 3")
    np.savez(tmp_path / "many.npz", x=np.zeros((10, 3), np.float32), y=np.arange(10))
    assert_error(nbnet("evaluate", "--checkpoint", ck, "--dataset", tmp_path / "many.npz"), "out of range")
    assert_error(nbnet("train", "--resume", ck, "--hidden", "32", "--epochs", "5"), "--hidden 16", "32")
    assert_error(nbnet("train", "--resume", ck, "--dataset", "spiral", "--epochs", "5"), "--dataset")
    assert_error(nbnet("train", "--resume", ck, "--epochs", "1"), "already has 2 epochs, more than --epochs 1")
    nb.load(ck).save(tmp_path / "plain.npz")
    assert_error(nbnet("train", "--resume", tmp_path / "plain.npz"), "not a training checkpoint")


def test_resuming_a_finished_run_trains_nothing_and_says_so(tmp_path, trained):
    """--resume of a run that has all its --epochs was an error ("raise --epochs to train on") while
    nb.train returned the history: both train nothing now and say so, and lose nothing: the
    run's --metrics-out and --save come from the checkpoint, which is left as it was."""
    d, ck, _, _ = trained
    before = ck.read_bytes()
    metrics, copy = tmp_path / "m.jsonl", tmp_path / "copy.npz"
    r = nbnet("train", "--resume", ck, "--metrics-out", metrics, "--save", copy)
    assert r.exit_code == 0, r.output
    assert f"{ck} already has all 2 epochs of --epochs 2: nothing to train" in r.stdout, r.stdout
    assert "epoch 1/" not in r.stdout and f"saved {copy}" in r.stdout and not r.stderr
    timing = ("seconds", "samples_per_second")
    runs = [[{k: v for k, v in json.loads(line).items() if k not in timing} for line in f.read_text().splitlines()]
            for f in (d / "m.jsonl", metrics)]
    assert len(runs[0]) == 2 and runs[0] == runs[1]
    held, same = load_checkpoint(ck), load_checkpoint(copy)
    assert (same.state.epoch, same.state.step) == (held.state.epoch, held.state.step)
    for p, q in zip(held.model.parameters(), same.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    r = nbnet("train", "--resume", ck)  # keeps saving to ck: nothing to write, nor to say was saved
    assert r.exit_code == 0 and "nothing to train" in r.stdout and "saved" not in r.stdout, r.output
    assert ck.read_bytes() == before


def test_error_divergence_names_epoch_and_step():
    assert_error(nbnet("train", *FAST, "--lr", "1e30", "--momentum", "0"), "training diverged: loss is", "at epoch 1, step",
                 "; try a lower --lr than 1e+30")


def test_divergence_in_regression_says_to_lower_the_rate_or_scale_the_targets(tmp_path):
    """Targets of a few units (y = x·[1, 2, 3]) diverged at the default --lr 0.1 with momentum, and
    the error said only "training diverged: test loss is inf": what to change was a guess."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 3)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=x @ np.array([1, 2, 3], np.float32) + 0.1)
    r = nbnet("train", "--dataset", tmp_path / "reg.npz", "--loss", "mse", "--epochs", "3", "-q")
    assert_error(r, "training diverged", "; try a lower --lr than 0.1 or scale the targets to about unit size")
    r = nbnet("train", "--dataset", tmp_path / "reg.npz", "--loss", "mse", "--epochs", "3", "--lr", "0.01", "-q")
    assert r.exit_code == 0, r.output  # the hint is right: a tenth of the rate trains
    r = nbnet("train", *FAST, "--lr", "1e30", "--momentum", "0", "--save", tmp_path / "c.npz")
    assert_error(r, "training diverged", f"; this run saved nothing to {tmp_path / 'c.npz'}; try a lower --lr than 1e+30")
    assert "targets" not in r.stderr  # a classifier's labels are not scaled


def test_error_device_cuda_without_gpu_and_plot_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nbnet.gpu", None)  # as if numba-cuda were missing
    r = nbnet("train", "--device", "cuda")
    assert_error(r, "--device cuda")
    monkeypatch.setitem(sys.modules, "nbnet.plot", None)
    r = nbnet("train", "--plot", tmp_path / "p.png")
    assert_error(r, "--plot needs matplotlib: pip install 'nbnet[plot]'")
    assert "epoch" not in r.stdout  # checked before training


def test_ctrl_c_before_training_is_one_line(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nb.datasets, "load", interrupted)
    r = nbnet("train")
    assert_error(r, "Error: interrupted")
    assert r.exit_code == 130


def test_download_through_the_cli(tmp_path, monkeypatch):
    # a local HTTP mirror is exercised in test_datasets; here the file:// scheme keeps it short
    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("train-images-idx3-ubyte", (64, 4, 4)), ("train-labels-idx1-ubyte", (64,)),
                        ("t10k-images-idx3-ubyte", (32, 4, 4)), ("t10k-labels-idx1-ubyte", (32,))):
        arr = rng.integers(0, 10 if len(shape) == 1 else 256, shape).astype(np.uint8)
        raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
        (served / (name + ".gz")).write_bytes(gzip.compress(raw))

    monkeypatch.setitem(nb.datasets.MIRRORS, "mnist", [served.as_uri() + "/"])
    monkeypatch.setitem(nb.datasets.MD5, "mnist", {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()})
    r = nbnet("train", "--dataset", "mnist", "--data-dir", tmp_path / "dl", "--download", "--epochs", "1", "--hidden", "8")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "dl").iterdir())) == 4


# --------------------------------------------------------------------------------------------- subprocesses


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def test_no_traceback_from_a_real_process(tmp_path):
    p = subprocess.run([sys.executable, "-m", "nbnet", "train", "--dataset", tmp_path / "missing.csv"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 1
    assert p.stderr.splitlines() == [f"Error: {tmp_path / 'missing.csv'}: no such file"]


PLOT = importlib.util.find_spec("matplotlib") is not None


@needs_posix("preexec_fn")
def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path):
    data = tmp_path / "d.npz"
    blobs(data, n=2000, d=8)
    ck = tmp_path / "c.npz"
    p = subprocess.Popen(
        [sys.executable, "-m", "nbnet.cli", "train", "--dataset", data, "--epochs", "100000", "--hidden", "8",
         "--batch-size", "16", "--save", ck, "--threads", "1",
         *(["--plot", tmp_path / "p.png"] if PLOT else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
        preexec_fn=default_signals,
    )
    try:
        for _ in range(2):  # wait until training runs (an epoch line is printed)
            line = p.stdout.readline()
        assert line.startswith("epoch 1/"), line
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130
    assert "Interrupted" in err and "checkpoint saved" in err and "Traceback" not in err
    if PLOT:  # the curves of the epochs done (it was written only by a run that finished)
        assert "epoch(s) done saved to" in err and (tmp_path / "p.png").stat().st_size > 1000, err
    state = json.loads(str(np.load(ck, allow_pickle=False)["train/state"]))
    assert state["step"] > 0
    # resumable: continue to the end of the epoch it was in
    r = nbnet("train", "--resume", ck, "--epochs", str(state["epoch"] + 1), "--quiet", "--save", ck)
    assert r.exit_code == 0, r.output
    assert json.loads(str(np.load(ck)["train/state"]))["epoch"] == state["epoch"] + 1


# --------------------------------------------------------------------------------------------- real data


def test_evaluate_on_an_image_dataset_reads_only_its_test_files(tmp_path):
    """A folder of the two t10k files was "train-images-idx3-ubyte[.gz] not found": evaluate read
    the 60,000 training images too, to score none of them."""
    from test_datasets import make_mnist

    make_mnist(tmp_path / "mnist", n_train=60, n_test=30)
    ck = tmp_path / "c.npz"
    r = nbnet("train", "--dataset", "mnist", "--data-dir", tmp_path / "mnist", *FAST, "--save", ck, "-q",
              "--metrics-out", tmp_path / "m.jsonl")
    assert r.exit_code == 0, r.output
    last = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[-1])
    for base in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / "mnist" / base).unlink()
    r = nbnet("evaluate", "--checkpoint", ck, "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["samples"] == 30 and got["accuracy"] == last["test_accuracy"]


def test_labels_that_leave_most_classes_unused_are_said(tmp_path):
    """Labels 60000..60002 (an id, a year) made a model of 60,003 outputs, 60,000 of them for
    classes no row has, silently. Labels from 1 (class 0 unused) are common and fine: no note."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    np.savez(tmp_path / "ids.npz", x=x, y=60000 + rng.integers(0, 3, 300))
    np.savez(tmp_path / "from1.npz", x=x, y=1 + rng.integers(0, 10, 300))
    r = nbnet("train", "--dataset", tmp_path / "ids.npz", "--epochs", "1", "--hidden", "4", "-q")
    assert r.exit_code == 0, r.output
    assert r.stderr == (f"note: --dataset {tmp_path / 'ids.npz'}: the labels run up to 60002, so the model has "
                        "60,003 outputs, but only 3 different labels occur: numbered 0 .. 2, they need 3\n")
    r = nbnet("train", "--dataset", tmp_path / "from1.npz", "--epochs", "1", "--hidden", "4", "-q")
    assert r.exit_code == 0 and r.stderr == "", r.output


@pytest.mark.parametrize("labels, said", [
    ([0, 1, 12], True),  # 10 of 13 outputs unused: at least 10, and more than the 3 used
    ([0, 1, 11], False),  # 9 unused: fewer than 10
    ([*range(15), 29], False),  # 14 unused: at least 10, but fewer than the 16 used
])
def test_the_unused_classes_note_takes_ten_unused_and_most_of_the_outputs(capsys, labels, said):
    """The note's rule: said where at least 10 outputs, and more of them than are used, have no
    label (labels 60000..60002); labels from 1, or a few classes missing from many, are let be."""
    cli_module._say_unused_classes("d.npz", max(labels) + 1, np.array(labels[:2]), np.array(labels[2:]))
    assert ("note: --dataset d.npz: the labels run up to" in capsys.readouterr().err) == said


def test_labels_only_in_the_test_split_count_as_used(tmp_path):
    """The note counts the labels of the training and the test rows: a class whose few rows all fell
    into the test split is no unused output."""
    rng = np.random.default_rng(0)
    y = np.r_[rng.integers(0, 3, 99), 12]  # 0, 1, 2 and one row of 12: 9 of 13 outputs unused
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(100, 2)).astype(np.float32), y=y)
    seed = next(s for s in range(100) if 12 not in nb.datasets.load(str(tmp_path / "d.npz"), test_split=0.2, seed=s)[1])
    r = nbnet("train", "--dataset", tmp_path / "d.npz", "--seed", seed, "--epochs", "1", "--hidden", "4", "-q")
    assert r.exit_code == 0 and r.stderr == "", r.output


def test_tiny_mnist_subset_trains(tmp_path):
    root = os.environ.get("NBNET_DATA_DIR") or str(REPO.parent / "shared" / "data")
    folder = Path(root) / "mnist"
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no mnist data in {root}")
    x_tr, y_tr, _, _ = nb.datasets.load("mnist", data_dir=folder)
    np.savez(tmp_path / "sub.npz", x=x_tr[:1500], y=y_tr[:1500])
    m = tmp_path / "m.jsonl"
    r = nbnet("train", "--dataset", tmp_path / "sub.npz", "--hidden", "32", "--epochs", "3", "--lr", "0.05",
              "--metrics-out", m, "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads(m.read_text().splitlines()[-1])["test_accuracy"] > 0.8


def test_predict_prints_float64_values_that_read_back_exactly(tmp_path):
    """mse predictions on stdout carry the digits of the model's dtype: 17 for float64 (at 9 they
    came out rounded to about float32's precision)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    np.savez(tmp_path / "r.npz", x=x, y=x @ np.array([0.3, -1.7, 2.1]) + 0.1)
    ck = tmp_path / "ck.npz"
    assert nbnet("train", "--dataset", tmp_path / "r.npz", "--loss", "mse", "--dtype", "float64", *FAST,
                 "--save", ck, "-q").exit_code == 0
    np.save(tmp_path / "x.npy", x)
    r = nbnet("predict", "--checkpoint", ck, tmp_path / "x.npy")
    assert r.exit_code == 0, r.output
    expected = nb.predict(nb.load(ck), x, loss="mse").ravel()
    assert [float(v) for v in r.stdout.split()] == expected.tolist()


def test_evaluate_all_rows_scores_a_test_file_of_its_own(tmp_path):
    """evaluate --dataset OTHER.npz scored the --test-split part of it (a fifth), as if it were the
    training file, silently: it now says so on stderr, and --all-rows scores every row."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    train_file, test_file, ck = tmp_path / "train.npz", tmp_path / "test.npz", tmp_path / "c.npz"
    np.savez(train_file, x=x, y=y)
    np.savez(test_file, x=x[:50], y=y[:50])
    assert nbnet("train", "--dataset", train_file, *FAST, "--save", ck, "--quiet").exit_code == 0
    own = nbnet("evaluate", "--checkpoint", ck, "--dataset", train_file, "--json")
    assert own.exit_code == 0 and own.stderr == "" and json.loads(own.stdout)["samples"] == 40
    part = nbnet("evaluate", "--checkpoint", ck, "--dataset", test_file, "--json")
    assert part.exit_code == 0 and json.loads(part.stdout)["samples"] == 10
    assert part.stderr == (f"note: scored only the --test-split part of {test_file} (10 rows; the model was trained "
                           f"on {train_file}, not on it); --all-rows scores every row\n")  # it said "as held out in training"
    nb.load(ck).save(tmp_path / "plain.npz")  # a model.save file names no training file
    part = nbnet("evaluate", "--checkpoint", tmp_path / "plain.npz", "--dataset", test_file, "--json")
    assert part.stderr == (f"note: scored only the --test-split part of {test_file} (10 rows; as a run trained on it "
                           "would hold out); --all-rows scores every row\n")
    whole = nbnet("evaluate", "--checkpoint", ck, "--dataset", test_file, "--all-rows", "--json")
    assert whole.exit_code == 0 and whole.stderr == ""
    got = json.loads(whole.stdout)
    want = nb.evaluate(nb.load(ck), x[:50], y[:50])
    assert got["samples"] == 50
    assert got["accuracy"] == want["accuracy"] and got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    whole_own = nbnet("evaluate", "--checkpoint", ck, "--all-rows", "--json")  # the training file, whole
    assert whole_own.exit_code == 0 and json.loads(whole_own.stdout)["samples"] == 200
    assert whole_own.stderr.startswith("note: scored every row of") and "training rows among them" in whole_own.stderr
    assert_error(nbnet("evaluate", "--checkpoint", ck, "--dataset", "spiral", "--all-rows"),
                 "--all-rows is for a .npz or .csv file")


def test_evaluate_all_rows_reads_regression_targets_as_training_did(tmp_path):
    """--all-rows loads the file itself: its (N,) targets must become the (N, 1) the model's loss reads."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 2)).astype(np.float32)
    f, ck = tmp_path / "r.npz", tmp_path / "c.npz"
    np.savez(f, x=x, y=x[:, 0] - x[:, 1])
    assert nbnet("train", "--dataset", f, "--loss", "mse", *FAST, "--save", ck, "--quiet").exit_code == 0
    got = nbnet("evaluate", "--checkpoint", ck, "--all-rows", "--json")
    assert got.exit_code == 0, got.output
    want = nb.evaluate(nb.load(ck), x, (x[:, 0] - x[:, 1])[:, None], loss="mse")
    assert json.loads(got.stdout)["samples"] == 60 and json.loads(got.stdout)["mse"] == pytest.approx(want["mse"], rel=1e-6)
