"""The command line against a hostile user (issue #10): silent wrong answers, lost work,
tracebacks, hangs, noise and faults, each class with the test that now covers it. In process with
CliRunner; subprocesses only for signals, pipes and what needs a real process."""

import errno
import hashlib
import importlib.util
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time

import numba
import numpy as np
import pytest
from conftest import default_signals, needs_posix

import nbnet as nb
from nbnet import cpu
import nbnet.cli  # noqa: F401 - nb.cli
from nbnet import cli as nbnet_cli
from nbnet.checkpoint import _history_table, load_checkpoint

from test_cli import FAST, REPO, blobs, nbnet, weights


def assert_error(result, *fragments):
    """One line on stderr starting `Error:`, a non-zero exit, no traceback. (nbnet.check's note
    that kernels are being compiled, printed once on a cold Numba cache, is not an error: it says
    "not cached: ..." or names another folder where the cache cannot be used, hence its prefix.)"""
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("compiling kernels for this CPU")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def strict_json(text):
    def no_constant(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=no_constant)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small trained checkpoint on a blobs .npz: (folder, checkpoint, x)."""
    d = tmp_path_factory.mktemp("run")
    x, _ = blobs(d / "blobs.npz")
    ck = d / "c.npz"
    r = nbnet("train", "--dataset", d / "blobs.npz", *FAST, "--save", ck, "--quiet")
    assert r.exit_code == 0, r.output
    return d, ck, x


def rewrite(src, dst, **changes):
    """Copy checkpoint src to dst with some arrays replaced (JSON entries given as Python objects)."""
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for key, value in changes.items():
        key = key.replace("__", "/")
        if key == "train/state" and isinstance(value, dict) and "history" in value:  # stored beside it
            value = dict(value)
            value["history_keys"], arrays["train/history"] = _history_table(value.pop("history"))
        arrays[key] = np.array(json.dumps(value)) if not isinstance(value, np.ndarray) else value
    np.savez(dst, **arrays)
    return dst


def stored(path, key):
    """A JSON entry; train/state with its history (train/history) put back in, as version 1 held it."""
    with np.load(path, allow_pickle=False) as f:
        value = json.loads(str(f[key]))
        if key == "train/state":
            names = value["history_keys"]
            value["history"] = [{k: int(v) if k == "epoch" else v for k, v in zip(names, row) if not math.isnan(v)}
                                for row in f["train/history"].tolist()]
        return value


# --------------------------------------------------------------------------------------------- 1. silent wrong answers, lost work


def test_divergence_on_the_last_step_is_an_error_and_saves_nothing(tmp_path):
    ck = tmp_path / "d.npz"
    r = nbnet("train", "--epochs", "1", "--batch-size", "100000", "--lr", "1e30", "--save", ck)
    assert_error(r, "training diverged", "epoch 1")
    assert not ck.exists()


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    ck = tmp_path / "d.npz"
    assert nbnet("train", *FAST, "--save", ck, "-q").exit_code == 0
    before = ck.read_bytes()
    # --resume X keeps saving to X: what X holds is the checkpoint read, not nothing
    assert_error(nbnet("train", "--resume", ck, "--epochs", "3", "--lr", "1e30"), "diverged",
                 f"{ck} holds the checkpoint this run resumed from (resume with a lower --lr)")
    assert ck.read_bytes() == before


def test_divergence_says_what_the_save_file_holds(tmp_path, monkeypatch):
    """An earlier run's file at the --save path read as this run's last good epoch."""
    ck = tmp_path / "d.npz"
    assert nbnet("train", *FAST, "--save", ck, "-q").exit_code == 0  # an earlier run
    assert_error(nbnet("train", *FAST, "--lr", "1e30", "--save", ck), "diverged", f"this run saved nothing to {ck}")
    epochs = []

    def weights_go_nan_in_epoch_3(model, message):
        epochs.append(1)
        if len(epochs) == 3:
            raise sys.modules["nbnet.train"].TrainingDiverged(message)
    monkeypatch.setattr(sys.modules["nbnet.train"], "check_finite_parameters", weights_go_nan_in_epoch_3)
    r = nbnet("train", *FAST, "--epochs", "5", "--save", ck)
    assert_error(r, "the weights became NaN or Inf in epoch 3", f"{ck} holds epoch 2 (resume from it")
    assert load_checkpoint(ck).state.epoch == 2


def test_a_checkpoint_with_nan_or_inf_weights_does_not_load(run, tmp_path):
    _, ck, x = run
    for bad in (np.nan, np.inf):
        w = nb.load(ck).layers[0].weight.copy()
        w[0, 0] = bad
        p = rewrite(ck, tmp_path / "nan.npz", **{"layer0.weight": w})
        assert_error(nbnet("evaluate", "--checkpoint", p), "nan.npz", "NaN or Inf")
        np.savez(tmp_path / "in.npz", x=x[:3])
        assert_error(nbnet("predict", "--checkpoint", p, tmp_path / "in.npz"), "NaN or Inf")
        with pytest.raises(ValueError, match="NaN or Inf"):
            nb.load(p)


def test_json_outputs_are_always_valid_json(run, tmp_path):
    d, ck, _ = run
    m = tmp_path / "m.jsonl"
    assert nbnet("train", "--dataset", d / "blobs.npz", *FAST, "--metrics-out", m, "-q").exit_code == 0
    for line in m.read_text().splitlines():
        strict_json(line)
    # finite weights whose logits overflow float32: the loss is not a number, the JSON says null
    model = nb.load(ck)
    model.layers[0].weight[...] = 3e38
    model.save(tmp_path / "huge.npz")
    r = nbnet("evaluate", "--checkpoint", tmp_path / "huge.npz", "--dataset", d / "blobs.npz", "--json")
    assert r.exit_code == 0, r.output
    assert strict_json(r.stdout)["loss"] is None


def test_a_metrics_csv_row_leaves_a_metric_that_is_not_finite_empty():
    """As JSON says null: "nan" or "inf" in a CSV column of numbers is text to most readers
    (a spreadsheet, csv.DictReader with float()), and "" is a missing value to all of them."""
    columns = ["epoch", "val_loss", "val_r2", "lr"]
    row = {"epoch": 3, "val_loss": math.inf, "val_r2": math.nan, "lr": 0.1}
    assert nbnet_cli.csv_line(row, columns) == "3,,,0.1"
    assert nbnet_cli.csv_line({"epoch": 3}, columns) == "3,,,"


def test_csv_with_bom_or_typo_gives_one_prediction_per_row_or_an_error(run, tmp_path):
    _, ck, x = run
    rows = "".join(",".join(map(repr, row)) + "\n" for row in x[:5].tolist())
    (tmp_path / "bom.csv").write_bytes(("\ufeff" + rows).encode())
    r = nbnet("predict", "--checkpoint", ck, tmp_path / "bom.csv")
    assert r.exit_code == 0, r.output
    want = nb.load(ck)(x[:5]).argmax(1).tolist()
    assert [int(v) for v in r.stdout.split()] == want  # N rows, N predictions, each on its row
    (tmp_path / "typo.csv").write_text("0.5,0.5,O.5\n" + rows)
    assert_error(nbnet("predict", "--checkpoint", ck, tmp_path / "typo.csv"), "row 1, column 3", "'O.5'")


def test_predictions_equal_model_argmax(run, tmp_path):
    _, ck, x = run
    np.savez(tmp_path / "in.npz", x=x)
    r = nbnet("predict", "--checkpoint", ck, tmp_path / "in.npz", "-o", tmp_path / "p.npz")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "p.npz") as f:
        pred, probs = f["pred"], f["probs"]
    logits = nb.load(ck)(x)
    assert np.array_equal(pred, logits.argmax(1))
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("case", ["save=dataset", "metrics=dataset", "metrics=resume", "plot=resume",
                                  "save_best=dataset", "save=config",
                                  pytest.param("symlink", marks=needs_posix("symbolic links without privileges")),
                                  "two outputs"])
def test_an_output_that_is_an_input_is_an_error(run, tmp_path, case):
    d, ck, _ = run
    data = tmp_path / "data.npz"
    blobs(data)
    ck2 = tmp_path / "c.npz"
    ck2.write_bytes(ck.read_bytes())
    (tmp_path / "run.toml").write_text("epochs = 1\n")
    before = {p: p.read_bytes() for p in (data, ck2, tmp_path / "run.toml")}
    args = {
        "save=dataset": ["--dataset", data, "--save", data],
        "metrics=dataset": ["--dataset", data, "--metrics-out", data],
        "metrics=resume": ["--resume", ck2, "--epochs", "3", "--metrics-out", ck2],
        "plot=resume": ["--resume", ck2, "--epochs", "3", "--plot", ck2],
        "save_best=dataset": ["--dataset", data, "--val-split", "0.2", "--save-best", data],
        "save=config": ["--config", tmp_path / "run.toml", "--save", tmp_path / "run.toml"],
        "symlink": ["--dataset", data, "--save", tmp_path / "link.npz"],
        "two outputs": ["--save", tmp_path / "o.npz", "--save-best", tmp_path / "o.npz", "--val-split", "0.2"],
    }[case]
    os.symlink(data, tmp_path / "link.npz")
    r = nbnet("train", *args)
    assert_error(r, "the same file" if case == "two outputs" else "of this run: it would be overwritten")
    assert {p: p.read_bytes() for p in before} == before


@needs_posix("os.mkfifo")
def test_an_output_never_replaces_a_device_or_fifo(run, tmp_path):
    # (a FIFO stands for /dev/null here: a regression must not replace a device of the machine)
    _, ck, x = run
    fifo = tmp_path / "out.npz"
    os.mkfifo(fifo)
    assert_error(nbnet("train", *FAST, "--save", fifo), "not a regular file")
    assert_error(nbnet("train", *FAST, "--val-split", "0.2", "--save-best", fifo), "not a regular file")
    if importlib.util.find_spec("matplotlib") is not None:  # --plot was written in place, after training
        os.mkfifo(tmp_path / "out.png")
        r = nbnet("train", *FAST, "--plot", tmp_path / "out.png")
        assert_error(r, "--plot", "not a regular file")
        assert "epoch" not in r.stdout
    np.savez(tmp_path / "in.npz", x=x[:3])
    assert_error(nbnet("predict", "--checkpoint", ck, tmp_path / "in.npz", "-o", fifo), "not a regular file")
    with pytest.raises(ValueError, match="not a regular file"):
        nb.load(ck).save(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_predict_reads_an_npy_as_np_save_wrote_it_and_refuses_a_bad_one(run, tmp_path):
    """.npy in, as --output writes .npy out: the same predictions as from an .npz; no pickle, and the
    header checked against the file's size before anything is allocated."""
    _, ck, x = run
    np.savez(tmp_path / "in.npz", x=x)
    np.save(tmp_path / "in.npy", x)
    from_npz, from_npy = (nbnet("predict", "--checkpoint", ck, tmp_path / name) for name in ("in.npz", "in.npy"))
    assert from_npy.exit_code == 0 and from_npy.stdout == from_npz.stdout and len(from_npy.stdout.split()) == len(x)
    np.save(tmp_path / "objects.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    assert_error(nbnet("predict", "--checkpoint", ck, tmp_path / "objects.npy"), "objects.npy", "no pickle")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "in.npy").read_bytes()[:200])
    assert_error(nbnet("predict", "--checkpoint", ck, tmp_path / "cut.npy"), "cut.npy", "but holds")
    with open(tmp_path / "huge.npy", "wb") as f:  # a header claiming 16 TB, and 16 bytes of data
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)})
        f.write(bytes(16))
    assert_error(nbnet("predict", "--checkpoint", ck, tmp_path / "huge.npy"), "huge.npy", "but holds 16 bytes")
    np.save(tmp_path / "row.npy", x[0])
    assert_error(nbnet("predict", "--checkpoint", ck, tmp_path / "row.npy"), "2-D")


def test_predict_output_that_is_its_input_is_an_error(run, tmp_path):
    _, ck, x = run
    np.savez(tmp_path / "in.npz", x=x[:3])
    assert_error(nbnet("predict", "--checkpoint", ck, tmp_path / "in.npz", "-o", tmp_path / "in.npz"), "INPUT")
    assert_error(nbnet("predict", "--checkpoint", ck, tmp_path / "in.npz", "-o", ck), "--checkpoint")


def test_an_output_another_program_holds_open_on_windows_is_one_error_naming_where_the_result_is(run, tmp_path, monkeypatch):
    """Windows refuses to rename over a file that is open elsewhere (the last predictions, open in
    Excel): one Error line that names the output and the file its new content was kept in, after
    the rename was tried again for about a second, and no traceback."""
    _, ck, x = run
    np.savez(tmp_path / "in.npz", x=x[:3])
    out = tmp_path / "p.csv"
    out.write_text("the predictions before\n")
    tries = []

    def refused(src, dst):
        tries.append(dst)
        raise PermissionError(13, "The process cannot access the file because it is being used by another process")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "replace", refused)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    r = nbnet("predict", "--checkpoint", ck, tmp_path / "in.npz", "-o", out)
    monkeypatch.undo()
    assert_error(r, f"{out}: cannot replace it (another program has it open", f"is in {tmp_path / 'p.unsaved.csv'}")
    assert len(tries) > 1
    assert out.read_text() == "the predictions before\n"
    assert len((tmp_path / "p.unsaved.csv").read_text().splitlines()) == 3  # a class a row


def test_a_predict_output_that_cannot_be_written_is_an_error_naming_it_before_predicting(run, tmp_path, monkeypatch):
    """As train's outputs are: it was found only when the predictions were written, and the error
    named nbnet's temporary file ('No such file or directory: /proc/.tmp-nbnet-...'), or the
    folder ('File exists: .../afile')."""
    _, ck, x = run
    np.savez(tmp_path / "in.npz", x=x[:3])
    (tmp_path / "afile").write_text("")
    predicted = []
    monkeypatch.setattr(nbnet_cli, "predict", lambda *a, **k: predicted.append(1))
    for out, why in ((tmp_path / "afile" / "p.npz", f"{tmp_path / 'afile'} is a file, not a folder"),
                     (tmp_path / ("p" * 300 + ".npz"), "cannot write it")):
        assert_error(nbnet("predict", "--checkpoint", ck, tmp_path / "in.npz", "-o", out), f"--output {out}", why)
    assert predicted == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in.npz"]


@pytest.mark.parametrize("option", ["--save", "--save-best", "--metrics-out", "--plot", "--output"])
def test_an_output_inside_a_file_says_that_it_is_a_file_before_any_work(run, tmp_path, monkeypatch, option):
    """--save f/x.npz where f is a file said 'cannot create folder .../f (File exists)' (f/sub/x.npz:
    'Not a directory'), as if f could not be made."""
    _, ck, x = run
    (tmp_path / "f").write_text("")
    np.savez(tmp_path / "in.npz", x=x[:3])
    monkeypatch.chdir(tmp_path)
    if option == "--plot":
        pytest.importorskip("matplotlib")
    monkeypatch.setattr(nbnet_cli, "_load_data", lambda *a, **k: pytest.fail("loaded the data"))
    monkeypatch.setattr(nbnet_cli, "load_checkpoint", lambda *a, **k: pytest.fail("loaded the checkpoint"))
    for out in (os.path.join("f", "x.png"), os.path.join("f", "sub", "x.png")):
        if option == "--output":
            r = nbnet("predict", "--checkpoint", ck, "in.npz", "--output", out.replace(".png", ".npz"))
        else:
            r = nbnet("train", option, out.replace(".png", ".npz") if "save" in option else out, "--val-split", "0.1")
        assert_error(r, f"{option} {os.path.join('f', '')}", ": f is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "in.npz"]


@pytest.mark.parametrize("option", ["--save", "--metrics-out"])
def test_an_output_named_as_a_file_download_will_write_is_an_error(tmp_path, monkeypatch, option):
    """The check of outputs against inputs knew only the IDX files already there: with --download,
    --save DIR/train-labels-idx1-ubyte.gz passed, the download wrote the labels there, and the
    first epoch's checkpoint replaced them (--metrics-out truncated them before training)."""
    from test_datasets import make_mnist  # noqa: PLC0415

    served = tmp_path / "served"
    make_mnist(served)
    monkeypatch.setattr(nb.datasets, "_download", lambda url, *args: (served / url.rsplit("/", 1)[1]).read_bytes())
    monkeypatch.setitem(nb.datasets.MD5, "mnist",
                        {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()})
    data = tmp_path / "data"
    out = data / "train-labels-idx1-ubyte.gz"
    r = nbnet("train", "--dataset", "mnist", "--data-dir", data, "--download", option, out, "--hidden", "4",
              "--epochs", "1")
    assert_error(r, f"{option} {out} is the mnist train labels file of this run")
    assert not out.exists() or out.read_bytes() == (served / out.name).read_bytes()


def test_download_where_home_is_a_file_is_one_line_naming_the_data_folder(tmp_path, monkeypatch):
    """The default data folder ~/.cache/nbnet/mnist under a HOME that cannot hold it (a service
    account's) was "Error: [Errno 20] Not a directory: '.../.cache'"."""
    monkeypatch.setattr(nb.datasets, "_download", lambda *args: pytest.fail("downloaded"))
    monkeypatch.delenv("NBNET_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").write_text("")
    r = nbnet("train", "--dataset", "mnist", "--download", "--epochs", "1")
    assert_error(r, f"cannot download into the data folder {tmp_path / 'home' / '.cache' / 'nbnet' / 'mnist'}: "
                    f"{tmp_path / 'home'} is a file", "--data-dir")


def test_resume_without_save_keeps_saving_to_the_checkpoint(tmp_path):
    ck = tmp_path / "c.npz"
    assert nbnet("train", *FAST, "--save", ck, "-q").exit_code == 0
    r = nbnet("train", "--resume", ck, "--epochs", "3")  # the README's line
    assert r.exit_code == 0, r.output
    assert f"saved {ck}" in r.stdout
    assert stored(ck, "train/state")["epoch"] == 3


def test_save_best_given_on_resume_does_not_claim_a_best_epoch_from_before_the_resume(run, tmp_path):
    """--save-best first given on --resume, the best epoch before it and none better after: the run
    ended 'best epoch 1 (...), saved to b.npz' and no b.npz existed (or one of another run did).
    Only the resume checkpoint's weights are at hand, not the best epoch's: the line says so."""
    d, _, _ = run
    ck, best = tmp_path / "c.npz", tmp_path / "b.npz"
    assert nbnet("train", "--dataset", d / "blobs.npz", *FAST, "--val-split", "0.25", "--save", ck, "-q").exit_code == 0
    st = stored(ck, "train/state")
    st["history"][0]["val_loss"] = 0.0  # epoch 1 the best, and no later one better
    rewrite(ck, ck, train__state={**st, "best_epoch": 1, "best_val_loss": 0.0, "bad_epochs": 1})
    r = nbnet("train", "--resume", ck, "--epochs", "3", "--save-best", best)
    assert r.exit_code == 0, r.output
    assert not best.exists()
    assert "best epoch 1 (validation loss 0.0000), before --resume: this run saved nothing to" in r.stdout
    assert f"saved to {best}" not in r.stdout


def test_resume_may_take_momentum_away_and_give_it_back(run, tmp_path):
    # --momentum may change on resume: 0 was refused ("unexpected optimizer state entry
    # 'momentum_buffer.0'"), as the run saved with 0 was by the next resume
    d, _, _ = run
    ck = tmp_path / "c.npz"
    assert nbnet("train", "--dataset", d / "blobs.npz", *FAST, "--save", ck, "-q").exit_code == 0
    for epochs, momentum in (("3", "0"), ("4", "0"), ("5", "0.5")):
        r = nbnet("train", "--resume", ck, "--epochs", epochs, "--momentum", momentum, "-q")
        assert r.exit_code == 0, r.output
        assert stored(ck, "optim/meta")["momentum"] == float(momentum)
        assert ("optim/state/momentum_buffer.0" in np.load(ck).files) == (momentum != "0")


def test_resume_on_a_dataset_file_that_changed_is_refused(tmp_path):
    """The checkpoint names its dataset by path: a file changed since (one pixel) resumed silently,
    training another problem from the stored weights. The data's fingerprint is checked now, and
    an unchanged file (or an older checkpoint without one) resumes as before."""
    data, ck = tmp_path / "blobs.npz", tmp_path / "c.npz"
    x, y = blobs(data)
    assert nbnet("train", "--dataset", data, *FAST, "--val-split", "0.2", "--save", ck, "-q").exit_code == 0
    assert load_checkpoint(ck).data.startswith("data ")
    changed = x.copy()
    changed[7, 1] += 1
    np.savez(data, x=changed, y=y)
    assert_error(nbnet("train", "--resume", ck, "--epochs", "3"), str(ck), "trained on other data")
    np.savez(data, x=x, y=y)
    assert nbnet("train", "--resume", ck, "--epochs", "3", "-q").exit_code == 0
    with np.load(ck, allow_pickle=False) as f:
        older = {k: f[k] for k in f.files if k != "train/data"}
    np.savez(ck, **older)
    assert load_checkpoint(ck).data is None
    assert nbnet("train", "--resume", ck, "--epochs", "4", "-q").exit_code == 0
    assert_error(nbnet("train", "--resume", rewrite(ck, tmp_path / "bad.npz", train__data=[1]), "--epochs", "5"),
                 "train/data is not a data fingerprint")


@pytest.mark.parametrize("option", ["--resume", "--save", "--metrics-out", "--plot", "--config", "--save-best"])
def test_empty_paths_are_errors(option):
    assert_error(nbnet("train", option, ""), option, "empty path")


def test_a_metrics_file_open_in_another_program_on_windows_says_so(tmp_path, monkeypatch):
    """Windows refuses to open a file another program holds (a spreadsheet showing the last run's
    metrics): 'Permission denied' alone did not say why. Simulated: os.open refused as there."""
    import nbnet.cli as cli

    real_open = os.open

    def refused(path, flags, *args):
        if str(path).endswith("m.jsonl"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(cli.os, "open", refused)
    monkeypatch.setattr(cli.sys, "platform", "win32")
    with pytest.raises(cli.CliError, match=r"--metrics-out .*m\.jsonl: cannot write it \(another program has it "
                                           r"open, or it is read-only: Permission denied\)"):
        cli._open_metrics(str(tmp_path / "m.jsonl"))
    monkeypatch.setattr(cli.sys, "platform", "linux")
    with pytest.raises(cli.CliError, match=r"cannot write it \(Permission denied\)"):
        cli._open_metrics(str(tmp_path / "m.jsonl"))


def test_a_metrics_file_the_file_system_refuses_is_one_error_line_before_training(tmp_path):
    """The folder is writable (so the early check passes) but the name is not a file one can
    create: too long here, as /proc or an ACL would refuse it. One line that names the option."""
    path = tmp_path / ("m" * 300 + ".jsonl")
    r = nbnet("train", "--metrics-out", path, *FAST)
    assert_error(r, "--metrics-out", "cannot write it")
    assert "epoch" not in r.stdout


@pytest.mark.parametrize("name", ["m.json", "M.JSON"])
def test_a_metrics_file_named_json_is_an_error_before_training(tmp_path, name):
    """--metrics-out writes JSON Lines: under a .json name it made a file json.load (and
    pandas.read_json without lines=True) fails on after the first epoch. Said before training,
    naming .jsonl and .csv; nothing is written."""
    path = tmp_path / name
    r = nbnet("train", "--metrics-out", path, *FAST)
    assert_error(r, "--metrics-out", name, ".jsonl", ".csv")
    assert "epoch" not in r.stdout and not path.exists()


def test_only_a_metrics_file_named_dot_json_is_refused(tmp_path):
    """The refusal above is for --metrics-out's .json names alone (mutation round 23): a name that
    ends in 'json' without the dot still gets JSON Lines, and --save keeps whatever name it is given."""
    metrics, save = tmp_path / "epochs_json", tmp_path / "model.json"
    r = nbnet("train", *FAST, "--metrics-out", metrics, "--save", save, "-q")
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    assert nb.load(save).layers


@pytest.mark.parametrize("option", ["--save", "--save-best", "--metrics-out", "--plot"])
def test_an_output_named_as_a_folder_is_an_error_before_training(tmp_path, option):
    """A name ending in a separator ("out/") names a folder even before one exists: --save and
    --save-best failed after the first epoch (rename's ENOTDIR, naming nbnet's temp file), --plot
    after the whole run."""
    path = f"{tmp_path / 'out'}{os.sep}"
    r = nbnet("train", option, path, "--val-split", "0.2", *FAST)
    assert_error(r, option, path, "folder")
    assert "epoch" not in r.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--save", "--metrics-out"])
def test_an_output_in_a_folder_that_is_not_writable_is_an_error_before_training(tmp_path, option, monkeypatch):
    """Said of the folder, before any epoch. (As root every folder is writable to os.access: the
    permission is what the test fakes.)"""
    real = os.access
    monkeypatch.setattr(nbnet_cli.os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(tmp_path / "ro")
                        and mode == os.W_OK else real(p, mode, **kw))
    (tmp_path / "ro").mkdir()
    r = nbnet("train", option, tmp_path / "ro" / "out", *FAST)
    assert_error(r, option, f"folder {tmp_path / 'ro'} is not writable")
    assert "epoch" not in r.stdout and list((tmp_path / "ro").iterdir()) == []


@pytest.mark.parametrize("option", ["--save", "--save-best", "--metrics-out", "--plot"])
def test_an_output_that_is_an_existing_folder_is_an_error_before_training(tmp_path, option):
    """--save runs (a folder there, no separator at the end): refused before the first epoch (by
    click's path type, before nbnet's own _check_writable), the folder and what it holds left as
    they were."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("kept")
    r = nbnet("train", option, tmp_path / "runs", "--val-split", "0.2", *FAST)
    assert_error(r, option, f"{tmp_path / 'runs'}' is a directory")
    assert "epoch" not in r.stdout
    assert os.listdir(tmp_path / "runs") == ["keep.txt"]


@pytest.mark.parametrize("option, suffix", [("--save", ".npz"), ("--save-best", ".npz"), ("--plot", ".png")])
def test_a_file_name_the_file_system_refuses_is_one_error_line_before_training(tmp_path, option, suffix):
    """As for --metrics-out above: --save and --save-best failed after the first epoch (rename's
    error, naming nbnet's temp file), --plot after the whole run. Nothing is left behind."""
    path = tmp_path / ("m" * 300 + suffix)
    r = nbnet("train", option, path, "--val-split", "0.2", *FAST)
    assert_error(r, option, "cannot write it")
    assert "epoch" not in r.stdout
    assert list(tmp_path.iterdir()) == []


@needs_posix("os.mkfifo and O_NONBLOCK")
def test_a_metrics_fifo_nobody_reads_is_an_error_not_a_hang(tmp_path):
    # a real process: opening a FIFO for writing waits for a reader, and would hang this test
    os.mkfifo(tmp_path / "m.fifo")
    p = subprocess.run([sys.executable, "-m", "nbnet", "train", "--metrics-out", tmp_path / "m.fifo", *FAST],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 1 and p.stderr.splitlines()[-1] == (
        f"Error: --metrics-out {tmp_path / 'm.fifo'}: cannot write it (a FIFO that no process reads)"), p.stderr
    # one that is read streams the lines
    fd = os.open(tmp_path / "m.fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert nbnet("train", "--metrics-out", tmp_path / "m.fifo", *FAST, "-q").exit_code == 0
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as f:
            fd = None
            assert [json.loads(line)["epoch"] for line in f.read().splitlines()] == [1, 2]
    finally:
        if fd is not None:
            os.close(fd)


def test_a_plot_format_matplotlib_cannot_write_is_an_error_before_training(tmp_path):
    """It was found only when the curves were saved, after the last epoch."""
    pytest.importorskip("matplotlib")
    r = nbnet("train", "--plot", tmp_path / "curves.txt", *FAST)
    assert_error(r, "--plot", "cannot write .txt files")
    assert "epoch" not in r.stdout


def test_mid_epoch_checkpoint_with_too_few_epochs_is_an_error(run, tmp_path):
    _, ck, _ = run
    st = stored(ck, "train/state")
    mid = {**st, "epoch": 1, "step": st["step"] // 2 + 1, "history": st["history"][:1], "seen": 32,
           "loss_sum": 1.0, "correct": 10}
    p = rewrite(ck, tmp_path / "mid.npz", train__state=mid,
                optim__meta={**stored(ck, "optim/meta"), "step_count": mid["step"]})
    r = nbnet("train", "--resume", p, "--epochs", "1")
    assert_error(r, "stopped in epoch 2", "--epochs 2 or more")
    assert "saved" not in r.stdout


@pytest.mark.parametrize("step, seen", [(6, 0), (4, 0), (4, 33), (3, 5)])
def test_running_sums_that_do_not_fit_the_steps_done_are_an_error(run, tmp_path, step, seen):
    # epoch 2 of 3 steps (96 rows, batch 32): `step - 3` steps done, each of 1 .. 32 rows
    _, ck, _ = run
    st = stored(ck, "train/state")
    p = rewrite(ck, tmp_path / "bad.npz", train__state={**st, "epoch": 1, "step": step, "seen": seen,
                                                          "history": st["history"][:1], "correct": 0},
                optim__meta={**stored(ck, "optim/meta"), "step_count": step})
    assert_error(nbnet("train", "--resume", p, "--epochs", "3"), "rows seen")


def with_val(history, *losses):
    return [{**m, "val_loss": v} for m, v in zip(history, losses)]


@pytest.mark.parametrize("change", [
    {"history": []},
    {"history": [], "best_epoch": 2, "best_val_loss": 0.5},  # an IndexError when the run reported it
    {"history": "first"},
    {"history": "swapped"},
    {"best_epoch": 2},  # no best_val_loss
    {"best_epoch": 2, "best_val_loss": 0.5},  # its entry has no val_loss: a KeyError
    {"bad_epochs": 1},  # no best epoch to count from
    {"history": "val", "best_epoch": 1, "best_val_loss": 0.4},  # 1 epoch since: a resume early-stops later
    {"history": "val", "best_epoch": 2, "best_val_loss": 0.4},
])
def test_a_train_state_that_does_not_fit_its_history_is_an_error(run, tmp_path, change):
    # 2 epochs done: a resumed run reports its history, early-stops and picks its best epoch from it
    _, ck, _ = run
    st = stored(ck, "train/state")
    named = {"first": st["history"][:1], "swapped": st["history"][::-1], "val": with_val(st["history"], 0.4, 0.6)}
    history = change.get("history", st["history"])
    p = rewrite(ck, tmp_path / "bad.npz", train__state={**st, **change, "history": named.get(str(history), history)})
    assert_error(nbnet("train", "--resume", p, "--epochs", "3"), "damaged checkpoint", "train/state")


@pytest.mark.parametrize("toml, fragment", [
    # click's "'2.9' is not a valid integer range" said nothing of the decimal point
    ("epochs = 2.9", "epochs = 2.9: expected a whole number, not a number with a decimal point"),
    ("seed = 1.0", "seed = 1.0: expected a whole number, not a number with a decimal point"),
    ("hidden = true", "hidden = true: expected layer widths, \"256,128\", [256, 128] or 256, not true/false"),
    ("hidden = 8.5", "hidden = 8.5: expected layer widths, \"256,128\", [256, 128] or 256, not a number"),
    ("hidden = 0", "layer widths must be positive"),
    ("quiet = 5", "expected true or false"),
    ("epochs = inf", "epochs = inf"),
    ("lr = nan", "not a finite number"),
    ("epochs = [1]", "epochs = [1]"),
    ("save = 5", "save = 5"),
    ("hidden = [8, true]", "layer widths"),
    ("optimizer = {a = 1}", "not a dict"),
    ("x = " + "[" * 3000 + "]" * 3000, "nested too deeply"),
    ("epochs = 0", "0"),
    ("save = ''", "empty path"),
    ("batch-size = 4\nbatch_size = 5", "'batch-size' and 'batch_size' are one option"),  # one was dropped
    ("epochs = true", "epochs = true: expected a whole number, not true/false"),  # not "'True' is not a valid integer"
    ("lr = true", "lr = true: expected a number, not true/false"),
    ("optimizer = 5", "optimizer = 5: expected one of sgd, adam, adamw (a quoted string), not a number"),
    ("save = 5", "save = 5: expected a path (a quoted string), not a number"),
    ("dataset = 3", "dataset = 3: expected a quoted string, not a number"),
    ("hidden = [8, \"16\"]", "expected a list of layer widths (integers)"),
    ("hidden = \"" + "1" * 5000 + "\"", "more than 18 digits is past any machine's memory"),  # int() stops at 4300
    ("hidden = \"8,1234567890123456789\"", "more than 18 digits is past any machine's memory"),
    ("save = '  '", "empty path"),
    ("# " + "x" * (1 << 20), "more than nbnet reads (1048576 bytes)"),
])
def test_toml_values_go_through_the_command_line_checks(tmp_path, toml, fragment):
    (tmp_path / "c.toml").write_text(toml + "\n")
    assert_error(nbnet("train", "--config", tmp_path / "c.toml"), fragment)


def test_hidden_widths_are_counted_without_leading_zeros():
    assert nbnet_cli._parse_hidden(None, None, " 8, 0000000000000000000016 ") == [8, 16]
    assert nbnet_cli._parse_hidden(None, None, "") == []


def test_toml_hidden_as_one_width_and_a_byte_order_mark_train(tmp_path):
    """`hidden = 16` (a TOML integer, where "16" and [16] were taken) was "expected a quoted string";
    a file that starts with a UTF-8 byte-order mark (Notepad's) was "not valid TOML (Invalid
    statement (at line 1, column 1))", though the .csv reader takes one."""
    (tmp_path / "c.toml").write_bytes(b"\xef\xbb\xbfepochs = 1\nhidden = 16\n")
    r = nbnet("train", "--config", tmp_path / "c.toml")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("training 2-16-3 relu on spiral") and ", 1 epoch," in r.stdout.splitlines()[0]


def test_a_toml_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "c.toml").write_bytes(b"epochs = 2 # \xff\n")
    assert_error(nbnet("train", "--config", tmp_path / "c.toml"), "c.toml: not valid TOML (not UTF-8 text: byte 13)")


def test_float64_predictions_never_pass_through_float32(tmp_path):
    data = tmp_path / "d.npz"
    blobs(data)
    ck = tmp_path / "c.npz"
    assert nbnet("train", "--dataset", data, *FAST, "--dtype", "float64", "--save", ck, "-q").exit_code == 0
    x = np.array([[0.1, 1 + 2**-40, 3.3], [1e-50, 2.0, -1.0]])  # not float32 values
    np.savez(tmp_path / "in.npz", x=x)
    assert nbnet("predict", "--checkpoint", ck, tmp_path / "in.npz", "-o", tmp_path / "p.npz").exit_code == 0
    model = nb.load(ck)
    with np.load(tmp_path / "p.npz") as f:
        assert f["probs"].dtype == np.float64
        logits = model(x)
        e = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(f["probs"], e / e.sum(1, keepdims=True), rtol=1e-13)
        assert not np.array_equal(model(x), model(x.astype(np.float32).astype(np.float64)))


# --------------------------------------------------------------------------------------------- 2. tracebacks -> one line


def test_hidden_layers_too_big_for_memory_are_an_error_before_allocating():
    t0 = time.monotonic()
    assert_error(nbnet("train", "--hidden", "100000,100000"), "needs about", "GiB")
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("change, fragment", [
    ({"nbnet__architecture": {"layers": {"a": 1}}}, "architecture"),
    ({"nbnet__architecture": {"version": "2", "layers": []}}, "version"),
    ({"nbnet__architecture": {"layers": [{"type": "ReLU"}]}}, "no Linear layer"),
    ({"nbnet__architecture": {"layers": [{"type": "Linear", "in_features": 100000, "out_features": 100000}]}},
     "layer0.weight has shape"),
    ({"nbnet__architecture": {"layers": [{"type": "Linear", "in_features": 3, "out_features": 16, "seed": [1]}]}},
     "not a plain value"),
    # nested deeper than any CPython parses (3.11 stops near 1,000 levels; 3.12.3 parsed 5,000)
    ({"nbnet__architecture": np.array("[" * 100_000 + "]" * 100_000)}, "not valid JSON"),
    ({"train__state": "EPOCH"}, "train/state"),
    ({"optim__meta": {"type": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": [1], "nesterov": False,
                      "step_count": 1}}, "weight_decay"),
    ({"optim__meta": {"type": "Pickle"}}, "optim/meta"),
    # past float32's range: a RuntimeWarning at the cast, then a diverged run
    ({"optim__meta": {"type": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e300, "nesterov": False,
                      "step_count": 1}}, "weight_decay = 1e+300 is too large for float32"),
    ({"train__config": [1, 2]}, "train/config"),
    ({"train__config": {"epochs": 2.5}}, "stored option epochs"),
    ({"train__config": {"hidden": "16", "lr": "fast"}}, "stored option lr"),
    ({"train__config": {"hidden": "16", "batch_size": None}}, "stored option batch_size = null: expected a value"),
    ({"checkpoint__version": np.array("1")}, "checkpoint/version"),
    ({"checkpoint__version": np.array(0, np.int64)}, "checkpoint/version 0"),  # was read as version 1
    ({"checkpoint__version": np.array(-1, np.int64)}, "checkpoint/version -1"),
])
def test_checkpoint_metadata_is_checked_against_a_schema(run, tmp_path, change, fragment):
    _, ck, _ = run
    p = rewrite(ck, tmp_path / "bad.npz", **change)
    r = nbnet("train", "--resume", p, "--epochs", "5")
    assert_error(r, fragment)


@pytest.mark.parametrize("index", ["\u00b2", "00"])
def test_a_bad_optimizer_state_key_names_the_checkpoint(run, tmp_path, index):
    # "momentum_buffer.²" was "Error: invalid literal for int() ...", naming neither key nor file;
    # "momentum_buffer.00" beside "momentum_buffer.0" replaced it silently
    _, ck, _ = run
    with np.load(ck, allow_pickle=False) as f:
        key = next(k for k in f.files if k.startswith("optim/state/") and k.endswith(".0"))
        p = rewrite(ck, tmp_path / "bad.npz", **{key[:-1] + index: f[key] + 1})
    assert_error(nbnet("train", "--resume", p, "--epochs", "3"), f"{p}: ", "unexpected optimizer state entry",
                 key[len("optim/state/"):-1] + index)


@pytest.mark.parametrize("betas", [[1.0, 0.999], [0.9, 1.0]])
def test_adam_betas_of_1_in_a_checkpoint_are_an_error(run, tmp_path, betas):
    # β1 = 1 divided by 1 - β1^t = 0 at the first step (a ZeroDivisionError), β2 = 1 by √(1 - β2^t)
    d, _, _ = run
    ck = tmp_path / "adam.npz"
    assert nbnet("train", "--dataset", d / "blobs.npz", *FAST, "--optimizer", "adam", "--save", ck, "-q").exit_code == 0
    p = rewrite(ck, tmp_path / "bad.npz", optim__meta={**stored(ck, "optim/meta"), "betas": betas})
    assert_error(nbnet("train", "--resume", p, "--epochs", "3"), "damaged checkpoint", "optim/meta betas")


def test_a_negative_adam_second_moment_is_a_damaged_checkpoint(run, tmp_path):
    # v is a running mean of squares: √v of a negative entry made the resumed run "diverge"
    d, _, _ = run
    ck = tmp_path / "ck.npz"
    assert nbnet("train", "--dataset", d / "blobs.npz", *FAST, "--optimizer", "adam", "--save", ck, "-q").exit_code == 0
    with np.load(ck, allow_pickle=False) as f:
        v = f["optim/state/exp_avg_sq.2"].copy()
    v[1] = -1e-3
    p = rewrite(ck, tmp_path / "bad.npz", **{"optim/state/exp_avg_sq.2": v})
    assert_error(nbnet("train", "--resume", p, "--epochs", "3"), "damaged checkpoint", "exp_avg_sq.2")


@pytest.mark.parametrize("optimizer, change", [
    ("sgd", {"step_count": 0}),  # its steps counted again from 0: nothing in SGD reads it, Adam's bias correction does
    ("adam", {"step_count": 0}),
    ("adam", {"step_count": 7}),
    ("sgd", {"drop": "optim/state/momentum_buffer.1"}),  # a buffer restarted from zeros
    ("adam", {"drop": "optim/state/exp_avg_sq.0"}),
    ("adamw", {"drop": "optim/state/exp_avg.3"}),
])
def test_optimizer_state_that_does_not_fit_the_steps_done_is_an_error(run, tmp_path, optimizer, change):
    # the resumed run would silently go on from other optimizer state than the saved run had
    d, _, _ = run
    ck = tmp_path / "ck.npz"
    assert nbnet("train", "--dataset", d / "blobs.npz", *FAST, "--optimizer", optimizer, "--save", ck, "-q").exit_code == 0
    with np.load(ck, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != change.get("drop")}
    if "step_count" in change:
        arrays["optim/meta"] = np.array(json.dumps({**stored(ck, "optim/meta"), **change}))
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_error(nbnet("train", "--resume", tmp_path / "bad.npz", "--epochs", "3"), "damaged checkpoint", "optim")


@pytest.mark.parametrize("change, fragment", [
    ({"dtype": "float64"}, "its model has --dtype float32, this run has float64"),
    ({"hidden": [4]}, "its model has --hidden 16, this run has 4"),
    ({"hidden": []}, 'this run has ""'),
    ({"activation": "tanh"}, "layers are Linear, ReLU, Linear, this run has --activation tanh"),
])
def test_stored_options_that_contradict_the_stored_model_are_an_error(run, tmp_path, change, fragment):
    # else the run reports (and saves as its config) one network while it trains another
    _, ck, _ = run
    p = rewrite(ck, tmp_path / "bad.npz", train__config={**stored(ck, "train/config"), **change})
    assert_error(nbnet("train", "--resume", p, "--epochs", "3"), "does not fit", fragment)


@pytest.mark.parametrize("change, fragment", [
    ({"loss": [1]}, "stored option loss"),
    ({"loss": 5}, "stored option loss"),
    ({"test_split": "abc"}, "stored option test_split"),
    ({"seed": 1.5}, "stored option seed"),
    ({"dataset": 5}, "stored option dataset"),
    ({"dataset": "mnist", "data_dir": True}, "stored option data_dir"),
])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_check_the_stored_options(run, tmp_path, change, fragment, command):
    d, ck, x = run
    p = rewrite(ck, tmp_path / "bad.npz", train__config={**stored(ck, "train/config"), **change})
    np.savez(tmp_path / "in.npz", x=x[:3])
    args = ["--checkpoint", p] + ([tmp_path / "in.npz"] if command == "predict" else [])
    assert_error(nbnet(command, *args), "damaged checkpoint", fragment)


def test_epoch_1e400_in_a_checkpoint(run, tmp_path):
    _, ck, _ = run
    st = stored(ck, "train/state")
    p = rewrite(ck, tmp_path / "bad.npz")
    with np.load(p) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["train/state"] = np.array(json.dumps(st).replace(f'"epoch": {st["epoch"]}', '"epoch": 1e400'))
    np.savez(p, **arrays)
    assert_error(nbnet("train", "--resume", p, "--epochs", "5"), "train/state epoch")


@needs_posix("os.mkfifo and /dev/zero")
def test_dev_zero_and_fifos_are_errors_not_hangs(run, tmp_path):
    _, ck, _ = run
    os.mkfifo(tmp_path / "f.csv")
    os.mkfifo(tmp_path / "f.toml")
    t0 = time.monotonic()
    assert_error(nbnet("train", "--dataset", tmp_path / "f.csv"), "not a regular file")
    assert_error(nbnet("train", "--config", tmp_path / "f.toml"), "not a regular file")
    assert_error(nbnet("predict", "--checkpoint", ck, tmp_path / "f.csv"), "not a regular file")
    assert_error(nbnet("predict", "--checkpoint", ck, "/dev/zero"), "not a regular file")
    assert_error(nbnet("evaluate", "--checkpoint", "/dev/zero"), "not a regular file")
    assert time.monotonic() - t0 < 30


# --------------------------------------------------------------------------------------------- 4. noise


@pytest.mark.parametrize("args, fragment", [
    (["--lr", "1e39"], "too large for float32"),
    (["--lr", "1e-50"], "--lr 1e-50 is 0 in float32 (too small)"),  # was a run that learned nothing
    (["--dataset", "LABELS"], "too large"),
])
def test_no_warnings_before_the_error_line(tmp_path, args, fragment):
    (tmp_path / "big.csv").write_text("0,1,2\n1e300,1,2\n1,2,3\n")
    args = [str(tmp_path / "big.csv") if a == "LABELS" else a for a in args]
    p = subprocess.run([sys.executable, "-W", "default", "-m", "nbnet", "train", *args], capture_output=True,
                       text=True, env=_env(), timeout=120)
    assert p.returncode == 1
    lines = [line for line in p.stderr.splitlines() if "compiling kernels" not in line]
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], p.stderr


# --------------------------------------------------------------------------------------------- 7. small


def test_unknown_dataset_is_named_as_given_and_evaluate_says_test_data(run, tmp_path):
    d, ck, _ = run
    assert_error(nbnet("train", "--dataset", "cifar10"), "unknown dataset 'cifar10'")
    np.savez(tmp_path / "wide.npz", x=np.zeros((10, 5), np.float32), y=np.zeros(10, int))
    r = nbnet("evaluate", "--checkpoint", ck, "--dataset", tmp_path / "wide.npz")
    assert_error(r, "test data has")
    assert "train data" not in r.stderr


# --------------------------------------------------------------------------------------------- 3, 5. signals, pipes


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@needs_posix("SIGTERM as a signal a process handles")
def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    data = tmp_path / "d.npz"
    blobs(data, n=2000, d=8)
    ck = tmp_path / "c.npz"
    p = subprocess.Popen(
        [sys.executable, "-m", "nbnet", "train", "--dataset", data, "--epochs", "100000", "--hidden", "8",
         "--batch-size", "16", "--save", ck, "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
    )
    try:
        for _ in range(2):
            line = p.stdout.readline()
        assert line.startswith("epoch 1/"), line
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 143
    err = "\n".join(line for line in err.splitlines() if "compiling kernels" not in line)
    assert err.startswith("Terminated in epoch") and "checkpoint saved" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert stored(ck, "train/state")["step"] > 0


def _train_on_a_terminal(tmp_path, ignore=()):
    """`nbnet train --save c.npz` with a pseudo-terminal as its controlling terminal, stdin, stdout
    and stderr, as from an interactive shell; returns (process, the terminal's master side, what
    it printed up to epoch 1's progress bar)."""
    pty = pytest.importorskip("pty")
    import fcntl  # noqa: PLC0415
    import termios  # noqa: PLC0415

    data = tmp_path / "d.npz"
    blobs(data, n=2000, d=8)
    master, slave = pty.openpty()

    def as_a_shell_starts_it():  # a session of its own, whose controlling terminal is the pty
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        default_signals()  # not the runner's (nohup: SIGHUP ignored)
        for sig in ignore:  # as nohup does SIGHUP, and a script's `cmd &` SIGINT
            signal.signal(sig, signal.SIG_IGN)

    p = subprocess.Popen(
        [sys.executable, "-m", "nbnet", "train", "--dataset", data, "--epochs", "100000", "--hidden", "8",
         "--batch-size", "16", "--save", tmp_path / "c.npz", "--threads", "1"],
        stdin=slave, stdout=slave, stderr=slave, env=_env(), cwd=tmp_path, start_new_session=True,
        preexec_fn=as_a_shell_starts_it)
    os.close(slave)
    shown = b""
    try:
        while b"epoch 1/" not in shown:
            chunk = os.read(master, 4096)
            assert chunk, shown
            shown += chunk
    except BaseException:
        p.kill()
        os.close(master)
        raise
    return p, master, shown


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP (Windows)")
def test_closing_the_terminal_of_a_training_run_saves_a_checkpoint_and_exits_129(tmp_path):
    """SIGHUP (the terminal closed) killed `nbnet train` with its default action: no checkpoint
    of the steps since the last epoch, where SIGTERM and Ctrl-C stop after the step and save. It
    takes SIGTERM's path now, and the terminal's end (every write there fails with EIO) does not
    turn the save into an OSError."""
    p, master, _ = _train_on_a_terminal(tmp_path)
    try:
        time.sleep(0.2)
        os.close(master)  # the terminal closes: the kernel sends SIGHUP to its session's leader
        assert p.wait(timeout=60) == 129
    finally:
        p.kill()
    state = stored(tmp_path / "c.npz", "train/state")
    assert state["step"] > 0


@needs_posix("Unix signals and preexec_fn")
@pytest.mark.parametrize("name", ["SIGHUP", "SIGINT"])
def test_a_signal_ignored_at_start_stays_ignored(tmp_path, name):
    """`nohup nbnet train ...` starts it with SIGHUP ignored, to outlive its terminal; a script's
    `nbnet train &` with SIGINT ignored, so that a Ctrl-C for the script leaves it be (Python
    itself keeps that so). nbnet's handlers took both over."""
    if not hasattr(signal, name):
        pytest.skip(f"no {name} here")
    sig = getattr(signal, name)
    p, master, _ = _train_on_a_terminal(tmp_path, ignore=(sig,))
    try:
        p.send_signal(sig)
        time.sleep(0.3)
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 143
    finally:
        p.kill()
        os.close(master)


@needs_posix("Unix signals and preexec_fn")
@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "Error: interrupted"),
                                             (signal.SIGTERM, 143, "Error: terminated"),
                                             *([(signal.SIGHUP, 129, "Error: terminated")]
                                               if hasattr(signal, "SIGHUP") else [])])
def test_a_signal_while_the_command_starts_is_one_line(sig, code, line):
    # `nbnet` as argv[0] is the command; the signal arrives right after the package starts loading
    script = (f"import sys; sys.argv[0] = 'nbnet'; import nbnet, os; os.kill(os.getpid(), {int(sig)}); "
              "import time; time.sleep(30)")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=60,
                       preexec_fn=default_signals)
    assert (p.returncode, p.stderr) == (code, line + "\n")


@needs_posix("Unix signals and preexec_fn")
def test_a_signal_while_the_command_starts_with_stderr_gone_still_ends_it():
    """The closed terminal that sends SIGHUP also fails the write of "Error: terminated" (EIO): the
    handler's OSError would escape into whatever the process was doing, a traceback and exit 1 in
    place of 129/143. Here stderr is a pipe whose reader has gone (EPIPE), from the start."""
    script = ("import sys; sys.argv[0] = 'nbnet'; import nbnet, os, signal; os.kill(os.getpid(), signal.SIGTERM); "
              "import time; time.sleep(30)")
    read, write = os.pipe()
    os.close(read)
    try:
        p = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=write, env=_env(),
                           timeout=60, preexec_fn=default_signals)
    finally:
        os.close(write)
    assert (p.returncode, p.stdout) == (143, b"")


@needs_posix("preexec_fn")
def test_import_nbnet_in_a_program_leaves_its_signals_alone():
    """Outside the `nbnet` command (a program or notebook that imports nbnet) Ctrl-C stays Python's
    KeyboardInterrupt and SIGTERM its default: nbnet's start-up handlers, which end the process with
    os._exit, are the command's only."""
    script = ("import signal, nbnet\n"
              "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,\n"
              "      *(signal.getsignal(s) == signal.SIG_DFL for s in (signal.SIGTERM, getattr(signal, 'SIGHUP', 15))))")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=60,
                       preexec_fn=default_signals)
    assert (p.returncode, p.stdout.split(), p.stderr) == (0, ["True"] * 3, "")


@needs_posix("Unix signals and preexec_fn")
@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), *([("SIGHUP", 129)] if hasattr(signal, "SIGHUP") else [])])
def test_a_signal_while_loading_data_is_one_line(tmp_path, sig, code):
    script = ("import sys, time, signal, os; sys.argv[0] = 'nbnet'; import nbnet.cli, nbnet.datasets as d; "
              f"d.load = lambda *a, **k: (os.kill(os.getpid(), signal.{sig}), time.sleep(30)); nbnet.cli.main(['train'])")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=60,
                       preexec_fn=default_signals)
    assert (p.returncode, p.stderr) == (code, "Error: terminated\n")


SWALLOWED_SIGNAL = """
import os, signal, sys, time
sys.argv[0] = 'nbnet'
import nbnet.cli, nbnet.datasets as d
real = getattr(d, {fn!r})
def load(*args, **kwargs):
    try:  # as a ctypes callback (llvmlite's, while Numba loads a kernel) does: printed, then dropped
        os.kill(os.getpid(), signal.{sig})
        time.sleep(30)
    except BaseException as e:
        print('Exception ignored:', type(e).__name__, file=sys.stderr)
    return real(*args, **kwargs)
setattr(d, {fn!r}, load)
nbnet.cli.main({args!r})
"""


@needs_posix("Unix signals and preexec_fn")
@pytest.mark.parametrize("sig, code, line", [("SIGINT", 130, "Error: interrupted"), ("SIGTERM", 143, "Error: terminated")])
@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_a_signal_a_library_swallowed_still_ends_the_command(run, tmp_path, command, sig, code, line):
    """An exception raised in a ctypes callback is printed and dropped by Python: a Ctrl-C that
    came while Numba loaded a kernel was lost, and the command ran to its end with exit 0."""
    folder, ck, _ = run
    args = {"train": ["train", "--epochs", "50", "--save", str(tmp_path / "c.npz")],
            "evaluate": ["evaluate", "--checkpoint", str(ck)],
            "predict": ["predict", "--checkpoint", str(ck), str(folder / "blobs.npz"), "-o", str(tmp_path / "c.npz")]}[command]
    p = subprocess.run([sys.executable, "-c", SWALLOWED_SIGNAL.format(sig=sig, args=args, fn="load_inputs" if command == "predict" else "load")], capture_output=True,
                       text=True, env=_env(), cwd=tmp_path, timeout=120, preexec_fn=default_signals)
    err = p.stderr.replace("compiling kernels for this CPU (cached for later runs)\n", "")
    assert (p.returncode, err) == (code, f"Exception ignored: {'KeyboardInterrupt' if sig == 'SIGINT' else 'Terminated'}\n{line}\n")
    assert p.stdout == ("" if command != "train" else p.stdout.splitlines()[0] + "\n")  # no epoch, no result
    assert not (tmp_path / "c.npz").exists()

@needs_posix("SIGPIPE's exit status 141")
def test_a_closed_stdout_ends_quietly(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "nbnet", "train", "--epochs", "50", "--hidden", "8"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=tmp_path)
    first = p.stdout.readline()  # `| head -1`
    p.stdout.close()
    _, err = p.communicate(timeout=120)
    assert first.startswith(b"training")
    assert err.replace(b"compiling kernels for this CPU (cached for later runs)\n", b"") == b"" and p.returncode == 141



def _closed_stdout():
    os.close(1)  # as the shell's `>&-` does


@needs_posix("preexec_fn")
def test_train_with_stdout_closed_trains_and_saves(tmp_path):
    """Python makes sys.stdout None where fd 1 is closed: the progress output's isatty() was an
    AttributeError traceback before the first epoch."""
    p = subprocess.run([sys.executable, "-m", "nbnet", "train", "--epochs", "1", "--hidden", "8", "--save", "c.npz"],
                       stdout=None, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path, timeout=120,
                       preexec_fn=_closed_stdout)
    err = p.stderr.replace("compiling kernels for this CPU (cached for later runs)\n", "")
    assert (p.returncode, err) == (0, "")
    assert stored(tmp_path / "c.npz", "train/state")["epoch"] == 1


@needs_posix("preexec_fn")
@pytest.mark.parametrize("command", ["predict", "evaluate", "info"])
def test_predict_evaluate_and_info_refuse_a_closed_stdout(run, tmp_path, command):
    """Their result is what they print: with stdout closed, click.echo dropped it and they exited 0
    (`nbnet info CHECKPOINT` too: what the checkpoint holds)."""
    folder, ck, _ = run
    args = {"predict": ["predict", "--checkpoint", ck, folder / "blobs.npz"], "evaluate": ["evaluate", "--checkpoint", ck],
            "info": ["info", ck]}[command]
    p = subprocess.run([sys.executable, "-m", "nbnet", *map(str, args)], stdout=None, stderr=subprocess.PIPE,
                       text=True, env=_env(), cwd=tmp_path, timeout=120, preexec_fn=_closed_stdout)
    assert p.returncode == 1 and p.stderr.startswith("Error: stdout is closed: nowhere to print"), p.stderr
    assert len(p.stderr.splitlines()) == 1


@needs_posix("preexec_fn")
def test_with_stderr_closed_an_error_line_does_not_go_into_the_output(tmp_path):
    """print(..., file=sys.stderr) writes to stdout when the shell closed stderr (sys.stderr None):
    `nbnet predict ... 2>&- | next-tool` fed the Error line to the next tool as a prediction."""
    p = subprocess.run([sys.executable, "-m", "nbnet", "predict", "--checkpoint", "nope.npz", "in.csv"],
                       stdout=subprocess.PIPE, stderr=None, text=True, env=_env(), cwd=tmp_path, timeout=120,
                       preexec_fn=lambda: os.close(2))
    assert (p.returncode, p.stdout) == (1, "")


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["train", "--help"]])
def test_help_and_version_into_a_closed_pipe_end_as_train_does(args):
    """click ends a broken pipe met while parsing (the group's --help and --version print there)
    with a silent exit 1, an error status for `nbnet --version | true`."""
    p = subprocess.Popen([sys.executable, "-m", "nbnet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=_env())
    p.stdout.close()  # the reader is gone before the command writes
    _, err = p.communicate(timeout=60)
    assert (p.returncode, err) == (141, b"")

# --------------------------------------------------------------------------------------------- 6. tests the mutation pass missed


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [65, 129])
def test_dx_with_one_column_in_the_last_tile(n, dtype):
    """n % 64 == 1: dX's outer-product tiles end with a tile of one column."""
    rng = np.random.default_rng(n)
    k, m = 5, 7
    g, w = rng.standard_normal((k, m)).astype(dtype), rng.standard_normal((m, n)).astype(dtype)
    dx = np.full((k, n), np.nan, dtype)
    cpu.linear_backward_input(dx, g, w)
    np.testing.assert_allclose(dx, g.astype(np.float64) @ w, rtol=0, atol=1e-4 if dtype == np.float32 else 1e-12)


def test_resume_with_a_non_default_seed_is_bitwise(tmp_path):
    common = ["--hidden", "16", "--batch-size", "32", "--seed", "5", "--val-split", "0.2", "-q"]
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert nbnet("train", *common, "--epochs", "3", "--save", a).exit_code == 0
    assert nbnet("train", *common, "--epochs", "1", "--save", b).exit_code == 0
    assert nbnet("train", "--resume", b, "--epochs", "3").exit_code == 0  # seed from the checkpoint
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    wc = tmp_path / "c.npz"
    other = ["--hidden", "16", "--batch-size", "32", "--seed", "6", "--val-split", "0.2", "-q"]
    assert nbnet("train", *other, "--epochs", "3", "--save", wc).exit_code == 0
    assert not np.array_equal(weights(wc)["layer0.weight"], wa["layer0.weight"])  # the seed matters


def test_a_torn_checkpoint_is_a_one_line_error_and_a_failed_save_keeps_the_old(run, tmp_path, monkeypatch):
    _, ck, _ = run
    raw = ck.read_bytes()
    for cut in (0, 10, len(raw) // 3, len(raw) // 2, len(raw) - 30, len(raw) - 1):
        (tmp_path / "torn.npz").write_bytes(raw[:cut])
        assert_error(nbnet("evaluate", "--checkpoint", tmp_path / "torn.npz"), "torn.npz")
    # a save that fails half-way through writing the file
    target = tmp_path / "c.npz"
    target.write_bytes(raw)
    real_savez = np.savez

    def half(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", half)
    assert_error(nbnet("train", "--resume", target, "--epochs", "3"), "No space left")
    assert target.read_bytes() == raw
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


@pytest.mark.parametrize("limit", ["full disk", "file size limit"])
def test_a_metrics_line_the_disk_cuts_short_is_taken_back_and_the_error_names_the_file(tmp_path, monkeypatch, limit):
    """--metrics-out's second line, written in part before the disk was full (write(2) writes what
    fits, the next call fails), stayed torn at the end of the file, and the error named no file
    ('[Errno 28] No space left on device'). The file size limit (RLIMIT_FSIZE) cuts a real write
    short, as a full disk does."""
    m = tmp_path / "m.jsonl"
    if limit == "full disk":
        real_write, full = os.write, []

        def full_disk(fd, data):  # epoch 2's line: what fits (up to "train_loss), then ENOSPC
            if fd in full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if b'"epoch": 2' not in data:
                return real_write(fd, data)
            full.append(fd)
            return real_write(fd, bytes(data)[:bytes(data).index(b"train_loss")])

        monkeypatch.setattr(os, "write", full_disk)
        r = nbnet("train", *FAST, "--metrics-out", m, "-q")
    else:
        resource = pytest.importorskip("resource")
        assert nbnet("train", *FAST, "-q").exit_code == 0  # every kernel compiled (and cached) before
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (Python's own setting): write fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (350, hard))  # one line (< 260 bytes), not two
        try:
            r = nbnet("train", *FAST, "--metrics-out", m, "-q")
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)
    assert_error(r, str(m), "No space left" if limit == "full disk" else "File too large")
    lines = m.read_text().split("\n")
    assert lines[-1] == "" and [json.loads(line)["epoch"] for line in lines[:-1]] == [1]


def test_the_rate_applied_on_the_first_and_last_step(monkeypatch):
    from nbnet.train import build_model, make_optimizer, train  # noqa: PLC0415

    x, y = nb.datasets.spiral(points_per_class=20)
    model = build_model(2, [8], 3, seed=0)
    opt = make_optimizer("sgd", model, lr=0.5)
    applied = []
    real_step = opt.step
    monkeypatch.setattr(opt, "step", lambda: (applied.append(opt.lr), real_step()))
    train(model, opt, (x, y, x, y), epochs=2, batch_size=16, lr_schedule="cosine")
    total = 2 * math.ceil(60 / 16)
    assert len(applied) == total
    assert applied[0] == 0.5
    assert applied[-1] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * (total - 1) / total)), rel=1e-12)


def test_reported_losses_equal_the_loss_on_the_whole_set():
    from nbnet.train import build_model, make_optimizer, train  # noqa: PLC0415

    x, y = nb.datasets.spiral(points_per_class=50, dtype=np.float64)
    x_tr, y_tr, x_te, y_te = nb.datasets.split(x, y, 0.3, seed=0)
    model = build_model(2, [8], 3, dtype=np.float64, seed=0)
    opt = make_optimizer("sgd", model, lr=0.0)  # the weights stay: every batch sees one model
    history = train(model, opt, (x_tr, y_tr, x_te, y_te), epochs=1, batch_size=16)
    loss_fn = nb.SoftmaxCrossEntropy()
    assert history[0]["train_loss"] == pytest.approx(loss_fn.forward(model(x_tr), y_tr), rel=1e-12)
    assert history[0]["test_loss"] == pytest.approx(loss_fn.forward(model(x_te), y_te), rel=1e-12)
    assert history[0]["train_accuracy"] == np.mean(model(x_tr).argmax(1) == y_tr)
    assert history[0]["test_accuracy"] == np.mean(model(x_te).argmax(1) == y_te)


def test_model_output_belongs_to_the_caller():
    model = nb.Sequential([nb.Linear(3, 5, seed=0), nb.ReLU(), nb.Linear(5, 2, seed=1)])
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    p1 = model(a)
    kept = p1.copy()
    p2 = model(b)
    assert np.array_equal(p1, kept) and not np.array_equal(p1, p2)
    p3 = model.forward(a)
    assert np.array_equal(p3, kept) and p3 is not p1


def test_weights_that_overflow_on_the_last_step_stop_before_on_epoch():
    """No test set to notice: the weights are checked themselves when the epoch ends."""
    from nbnet.train import TrainingDiverged, build_model, make_optimizer, train  # noqa: PLC0415

    x, y = nb.datasets.spiral(points_per_class=20)
    x *= 1e4  # gradients far above 1: lr · g overflows float32, the loss before the step does not
    model = build_model(2, [8], 3, seed=0)
    opt = make_optimizer("sgd", model, lr=1e38)  # one step: finite loss before it, Inf weights after
    saved = []
    with pytest.raises(TrainingDiverged, match="weights became NaN or Inf in epoch 1"):
        train(model, opt, (x, y), epochs=1, batch_size=60, on_epoch=lambda st, m: saved.append(m))
    assert saved == []


def test_resuming_a_gpu_run_where_there_is_no_gpu_says_the_cpu_can_go_on(run, tmp_path, monkeypatch):
    """The device comes from the checkpoint when --device is not given: its error names the way on."""
    monkeypatch.setitem(sys.modules, "nbnet.gpu", None)  # as if numba-cuda were missing
    _, ck, _ = run
    config = stored(ck, "train/config")
    gpu_ck = rewrite(ck, tmp_path / "gpu.npz", train__config=dict(config, device="cuda"))
    assert_error(nbnet("train", "--resume", gpu_ck, "--epochs", "3"), "--device cpu goes on with it on the CPU")
    r = nbnet("train", "--resume", gpu_ck, "--epochs", "3", "--device", "cuda")  # asked for: no hint
    assert_error(r, "--device cuda")
    assert "--device cpu" not in r.output


# --------------------------------------------------------------------------------------------- 7. the environment


@pytest.mark.parametrize("value", ["0", "-2", "abc", "", "2.5"])
def test_a_numba_num_threads_numba_cannot_use_is_one_error_line(value):
    """Numba reads NUMBA_NUM_THREADS when it is imported: 0 or less was a traceback from inside
    `import numba`, text a RuntimeWarning with a traceback before the command ran on as if unset."""
    p = subprocess.run([sys.executable, "-m", "nbnet", "info"], capture_output=True, text=True, timeout=60,
                       env={**_env(), "NUMBA_NUM_THREADS": value})
    assert (p.returncode, p.stdout) == (2, ""), p.stderr[-2000:]
    assert p.stderr == f"Error: NUMBA_NUM_THREADS must be a positive number of threads, got {value!r}\n"


@pytest.mark.parametrize("encoding", ["cp1252", "cp1252:strict"])
def test_a_start_up_error_on_a_stderr_whose_encoding_lacks_its_characters_is_readable(encoding):
    """The start-up refusals were written to fd 2 as UTF-8 whatever the stream's encoding: on a
    Windows console or a cp1252 file '≥' read 'â‰¥'. They go through sys.stderr now, a character
    the encoding lacks written as Python writes it in a traceback there (a \\u escape)."""
    p = subprocess.run([sys.executable, "-m", "nbnet", "info"], capture_output=True, timeout=60,
                       env={**_env(), "NUMBA_NUM_THREADS": "≥4", "PYTHONIOENCODING": encoding})
    assert (p.returncode, p.stdout) == (2, b""), p.stderr[-2000:]
    assert p.stderr.decode("cp1252") == "Error: NUMBA_NUM_THREADS must be a positive number of threads, got '\\u22654'\n"


def test_an_error_line_outside_the_command_on_a_strict_cp1252_stderr_is_written(monkeypatch):
    """dist.fail prints where the command's streams are not made lenient (an MPI process refusing a
    setting as nbnet loads, a bug's traceback after the command): on a strict cp1252 stderr a path's
    Cyrillic letters or a '≥' raised UnicodeEncodeError, a traceback instead of the line."""
    import io  # noqa: PLC0415

    from nbnet import dist  # noqa: PLC0415

    err = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")  # errors="strict"
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(SystemExit) as e:
        dist.fail("C:\\Данные\\x.npz: --lr must be ≥ 0 (é is in cp1252)", 2)
    assert e.value.code == 2
    assert err.buffer.getvalue().decode("cp1252") == (
        "Error: C:\\\\u0414\\u0430\\u043d\\u043d\\u044b\\u0435\\x.npz: --lr must be \\u2265 0 (é is in cp1252)\n")


@pytest.mark.parametrize("name,value,says", [("NUMBA_OPT", "9", "supported values are 0, 1, 2, 3, and 'max'"),
                                             ("NUMBA_BOUNDSCHECK", "yes", "invalid literal for int()"),
                                             ("NUMBA_DEBUGINFO", "x", "invalid literal for int()")])
def test_a_numba_setting_numba_cannot_read_is_one_error_line(name, value, says):
    """Numba reads each NUMBA_ variable as it loads, and one it cannot parse (NUMBA_OPT=9, a
    NUMBA_BOUNDSCHECK=yes) was a RuntimeWarning holding a traceback, a dozen lines before the
    command ran on with Numba's default, as NUMBA_NUM_THREADS=abc was."""
    p = subprocess.run([sys.executable, "-m", "nbnet", "info"], capture_output=True, text=True, timeout=60,
                       env={**_env(), name: value})
    assert (p.returncode, p.stdout) == (2, ""), p.stderr[-2000:]
    assert p.stderr.startswith(f"Error: {name}={value!r} is not a value Numba can read (") and says in p.stderr
    assert p.stderr.count("\n") == 1, p.stderr

def test_numba_disable_jit_is_one_error_line_and_a_clear_import_error():
    """NUMBA_DISABLE_JIT=1 (set to debug one's own Numba code) makes njit return the plain Python
    function, and nbnet's kernels are built from LLVM intrinsics that run only compiled: importing
    nbnet ended in "AttributeError: 'function' object has no attribute 'py_func'"."""
    env = {**_env(), "NUMBA_DISABLE_JIT": "1"}
    p = subprocess.run([sys.executable, "-m", "nbnet", "info"], capture_output=True, text=True, timeout=60, env=env)
    assert (p.returncode, p.stdout) == (2, ""), p.stderr[-2000:]
    assert p.stderr.startswith("Error: NUMBA_DISABLE_JIT") and p.stderr.count("\n") == 1, p.stderr
    # one who set it to step through a kernel is told what works instead (README: "Stepping through")
    assert p.stderr.endswith("(to step through a kernel in Python, call its py_func: "
                             "nbnet.cpu.relu_forward.py_func(out, x))\n"), p.stderr
    p = subprocess.run([sys.executable, "-c", "import nbnet"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 1 and p.stderr.splitlines()[-1].startswith("ValueError: NUMBA_DISABLE_JIT"), p.stderr


def test_numba_disable_jit_from_numba_config_yaml_is_one_error_line(tmp_path):
    """Numba also reads NUMBA_DISABLE_JIT from a .numba_config.yaml in the current folder (with
    pyyaml): the command, which looked at the environment only, ended in import nbnet's traceback."""
    pytest.importorskip("yaml")
    (tmp_path / ".numba_config.yaml").write_text("disable_jit: 1\n")
    env = _env()
    env.pop("NUMBA_DISABLE_JIT", None)
    p = subprocess.run([sys.executable, "-m", "nbnet", "info"], capture_output=True, text=True, timeout=60,
                       env=env, cwd=tmp_path)
    assert (p.returncode, p.stdout) == (2, ""), p.stderr[-2000:]
    assert p.stderr.startswith("Error: NUMBA_DISABLE_JIT") and p.stderr.count("\n") == 1, p.stderr
    assert ".numba_config.yaml" in p.stderr


def test_numba_refusing_to_load_is_one_error_line(tmp_path):
    """A setting Numba's import refuses where the start-up checks do not look (num_threads: 0 in a
    .numba_config.yaml, read with pyyaml) ended in a traceback from inside `import numba`. Here a
    numba package that raises as Numba does stands in for it."""
    fake = tmp_path / "fake" / "numba"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ValueError("Number of threads specified must be > 0")\n')
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(fake.parent), _env()["PYTHONPATH"]])}
    p = subprocess.run([sys.executable, "-m", "nbnet", "info"], capture_output=True, text=True, timeout=60,
                       env=env, cwd=tmp_path)
    assert (p.returncode, p.stdout) == (2, ""), p.stderr[-2000:]
    assert p.stderr == "Error: Numba cannot start: ValueError: Number of threads specified must be > 0\n"


def test_a_numba_warning_in_a_form_not_known_is_still_one_error_line(tmp_path):
    """A RuntimeWarning about a NUMBA_ variable that does not read as Numba's "is defined but its
    associated value ... could not be parsed" (another Numba version's wording) is said as it is, in
    one line: the command must not go on as if Numba had loaded, to a traceback. A numba package
    that warns so stands in for it."""
    fake = tmp_path / "fake" / "numba"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import warnings\n"
                                      "warnings.warn(\"Environment variable 'NUMBA_X' is not\\n  understood\", RuntimeWarning)\n")
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(fake.parent), _env()["PYTHONPATH"]])}
    p = subprocess.run([sys.executable, "-m", "nbnet", "info"], capture_output=True, text=True, timeout=60,
                       env=env, cwd=tmp_path)
    assert (p.returncode, p.stdout) == (2, ""), p.stderr[-2000:]
    assert p.stderr == "Error: Numba cannot start: Environment variable 'NUMBA_X' is not\n", p.stderr


def test_a_numba_config_yaml_numba_cannot_read_is_one_warning(tmp_path):
    """Without pyyaml Numba warns that it cannot read ./.numba_config.yaml each time it reads its
    settings: as numba and numba-cuda load, and for every function it compiles, so `nbnet info`
    printed it twice and import nbnet with a first compile 8 times. Here a yaml that does not
    import stands in for pyyaml missing."""
    (tmp_path / ".numba_config.yaml").write_text("num_threads: 1\n")
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "yaml.py").write_text('raise ImportError("no yaml here")\n')
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(stub), _env()["PYTHONPATH"]])}
    p = subprocess.run([sys.executable, "-m", "nbnet", "info"], capture_output=True, text=True, timeout=60,
                       env=env, cwd=tmp_path)
    assert (p.returncode, p.stderr) == (0, "Warning: ./.numba_config.yaml is ignored: Numba reads it with pyyaml, "
                                           "which is not installed\n"), p.stderr[-2000:]
    code = "import nbnet, numba; numba.njit(lambda x: x + 1)(1); numba.njit(lambda x: x * 2)(1)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert p.returncode == 0 and p.stderr.count("Warning: ") == 1, p.stderr[-2000:]
    assert "UserWarning: ./.numba_config.yaml is ignored" in p.stderr


def test_a_numba_config_yaml_warning_asked_for_with_w_always_is_shown(tmp_path):
    """nbnet's filter of Numba's unread-.numba_config.yaml warning is appended to the filters, so a
    filter of the user's own (-W always, to see every warning) comes first and still shows it."""
    (tmp_path / ".numba_config.yaml").write_text("num_threads: 1\n")
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "yaml.py").write_text('raise ImportError("no yaml here")\n')
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(stub), _env()["PYTHONPATH"]])}
    p = subprocess.run([sys.executable, "-W", "always", "-c", "import nbnet"], capture_output=True, text=True,
                       timeout=60, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "A Numba config file is found but YAML parsing" in p.stderr, p.stderr[-2000:]


def test_values_in_the_start_up_errors_are_cut_to_40_characters(monkeypatch):
    """The environment's values are echoed in the one Error line cut to 40 characters, as the CLI's
    options are: a NUMBA_NUM_THREADS, NBNET_SIMD_LAYOUT or NUMBA_CPU_NAME of 5000 characters (a
    variable filled by a script gone wrong) was a 5000-character line."""
    from nbnet import _startup

    long = "x" * 5000
    monkeypatch.setenv("NBNET_SIMD_LAYOUT", long)
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/tmp")
    monkeypatch.setenv("NUMBA_NUM_THREADS", long)
    monkeypatch.setattr(numba.config, "CPU_NAME", long)
    for why in (_startup.simd_layout()[1], _startup.numba_threads_fault(), _startup.numba_cpu_name_fault()):
        assert f"{'x' * 40!r}" in why and len(why) < 200, why[:300]


@needs_posix("a current folder that can be deleted, and preexec_fn")
@pytest.mark.parametrize("command", ["info", "check"])
def test_a_deleted_current_folder_is_one_error_line(tmp_path, command):
    """`mkdir d; cd d; rmdir ../d; nbnet ...`: relative paths cannot be resolved there, Numba's
    compiler among them (os.path.relpath while it compiles a kernel), so `nbnet check` reported
    three failed checks and a first `nbnet train` ended in "Error: [Errno 2] No such file or
    directory", naming nothing."""
    gone = tmp_path / "gone"
    gone.mkdir()

    def in_a_deleted_folder():
        os.chdir(gone)
        os.rmdir(gone)

    p = subprocess.run([sys.executable, "-m", "nbnet", command], capture_output=True, text=True, timeout=60,
                       env=_env(), preexec_fn=in_a_deleted_folder)
    assert (p.returncode, p.stdout) == (2, ""), p.stdout + p.stderr[-2000:]
    assert p.stderr == "Error: the current folder no longer exists (it was deleted): cd to one that does\n"


def test_a_deleted_current_folder_under_the_python_api_is_one_clear_error(tmp_path):
    """Numba's compiler formats source locations with os.path.relpath (the current folder) as it
    compiles: a first kernel call with nothing cached, in a folder deleted after import nbnet,
    ended in "FileNotFoundError: [Errno 2] No such file or directory" from deep inside Numba. (A
    cached kernel needs no current folder, and still loads there.)"""
    code = ("import os, sys, numpy as np, nbnet as nb; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); "
            "nb.Sequential([nb.Linear(4, 3, seed=0)]).forward(np.ones((2, 4), np.float32))")
    env = {**_env(), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}  # nothing cached
    gone = tmp_path / "gone"
    gone.mkdir()
    p = subprocess.run([sys.executable, "-c", code, gone], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1 and p.stderr.splitlines()[-1] == f"FileNotFoundError: {nb.simd.NO_CWD}", p.stderr
    assert os.path.dirname(numba.__file__) not in p.stderr, p.stderr  # nothing from inside Numba


@pytest.mark.parametrize("loss, pred, text", [
    ("cross-entropy", np.array([3, 0, 7, 1, 2], np.int64), "3\n0\n7\n1\n2\n"),
    ("bce", np.array([[1], [0], [1]], np.int64), "1\n0\n1\n"),
    ("bce", np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], np.int64), "{0,2}\n{}\n{1}\n"),
    ("mse", np.array([[0.5, -2.0], [1e-9, 3.25], [7.0, 1.0]], np.float32), "0.5,-2\n9.99999972e-10,3.25\n7,1\n"),
    # a float64 model's outputs read back as the same numbers, not rounded to float32's digits
    ("mse", np.array([[1 / 3, -2.0], [0.1, 1e300]]), "0.33333333333333331,-2\n0.10000000000000001,1.0000000000000001e+300\n"),
])
def test_predict_text_comes_in_blocks_that_join_to_one_line_per_row(loss, pred, text):
    """predict held a Python string per row for every row (about 60 bytes a row) before writing."""
    for rows in (1, 2, 1 << 14):
        blocks = list(nb.cli._prediction_text(pred, loss, rows=rows))
        assert "".join(blocks) == text and len(blocks) == -(-len(pred) // rows)


def test_user_csv_exports_are_one_error_line_saying_what_to_do(tmp_path):
    """A pandas to_csv with its index trained on the index as the label (N classes); predicting on
    the training file itself said only that it has one feature too many."""
    rows = "".join(f"{i},{i % 3},{0.1 * i},{1 - 0.1 * i}\n" for i in range(30))
    (tmp_path / "idx.csv").write_text(",label,a,b\n" + rows)
    assert_error(nbnet("train", "--dataset", tmp_path / "idx.csv", *FAST), "first column has no name", "index")
    (tmp_path / "d.csv").write_text("label,a,b\n" + "".join(r.split(",", 1)[1] for r in rows.splitlines(True)))
    assert nbnet("train", "--dataset", tmp_path / "d.csv", *FAST, "--save", tmp_path / "m.npz").exit_code == 0
    assert_error(nbnet("predict", "--checkpoint", tmp_path / "m.npz", tmp_path / "d.csv"),
                 "has 3 features per row", "expects 2", "drop the label column")
    # one too few: named as such, before the model sees it (no label-column hint)
    (tmp_path / "a.csv").write_text("a\n" + "".join(f"{0.1 * i}\n" for i in range(5)))
    r = nbnet("predict", "--checkpoint", tmp_path / "m.npz", tmp_path / "a.csv")
    assert_error(r, f"a.csv has 1 features per row, the model in {tmp_path / 'm.npz'} expects 2")
    assert "label column" not in r.output


def test_help_reaches_a_stdout_whose_encoding_lacks_its_characters(monkeypatch):
    """Windows writes a redirected stdout (`nbnet train --help > help.txt`, `| more`) in its ANSI
    code page, cp1252, strictly: the help's π and σ ended the command in "Error: 'charmap' codec
    can't encode character". Such a character is written as "?" instead, and the stream is given
    back strict."""
    import io  # noqa: PLC0415

    out = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")  # errors="strict", as Windows opens it
    monkeypatch.setattr(sys, "stdout", out)
    for command in ("train", "predict"):
        with pytest.raises(SystemExit) as e:
            nbnet_cli.main([command, "--help"])
        assert e.value.code == 0
    out.flush()
    text = " ".join(out.buffer.getvalue().decode("cp1252").split())  # as wrapped to any width
    assert "lr·½(1+cos(?·step/total_steps))" in text and "or ?(z) for bce" in text
    assert out.errors == "strict"
