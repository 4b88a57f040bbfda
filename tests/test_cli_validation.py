"""`nbnet train --val-split / --test-split / --early-stopping / --save-best`: a validation set carved
from the training rows, model selection on it (never on the test set), and resume keeping it."""

import json

import numpy as np

from nbnet.checkpoint import load_checkpoint
from nbnet.model import read_npz, write_npz_atomic
from test_cli import assert_error, blobs, nbnet, weights


def epoch_line(output, epoch=1):
    return next(line for line in output.splitlines() if line.startswith(f"epoch {epoch}/"))


FAST = ["--hidden", "16", "--batch-size", "32"]


def metrics(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_val_split_comes_from_the_training_rows(tmp_path):
    out = nbnet("train", *FAST, "--epochs", "1", "--val-split", "0.1", "--metrics-out", tmp_path / "m.jsonl")
    assert out.exit_code == 0, out.output
    assert "(2160 train, 240 validation, 600 test)" in out.output  # 3000 spiral rows, 20% test
    assert "val loss" in epoch_line(out.output)
    m = metrics(tmp_path / "m.jsonl")[0]
    assert {"val_loss", "val_accuracy", "test_loss", "test_accuracy"} <= set(m) and 0 <= m["val_accuracy"] <= 1
    out = nbnet("train", *FAST, "--epochs", "1", "--test-split", "0.3")
    assert "(2100 train, 900 test)" in out.output and "val loss" not in out.output


def test_early_stopping_and_save_best_need_a_validation_set(tmp_path):
    assert_error(nbnet("train", "--early-stopping", "2"), "--early-stopping", "--val-split")
    assert_error(nbnet("train", "--save-best", tmp_path / "b.npz"), "--save-best", "--val-split")
    assert_error(nbnet("train", "--val-split", "1"), "--val-split")
    assert_error(nbnet("train", "--early-stopping", "0", "--val-split", "0.1"), "--early-stopping")
    assert_error(nbnet("train", "--val-split", "0.1", "--save", tmp_path / "a.npz", "--save-best", tmp_path / "a.npz"),
                 "--save-best", "--save")


def overfit_args(tmp_path):
    """A tiny noisy file and a wide net: the validation loss turns up within a few epochs."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    x = (rng.normal(size=(150, 2)) * 1.2 + y[:, None]).astype(np.float32)
    np.savez(tmp_path / "noisy.npz", x=x, y=y)
    return ["--dataset", tmp_path / "noisy.npz", "--hidden", "256", "--optimizer", "adam", "--lr", "0.02",
            "--batch-size", "10", "--val-split", "0.3", "--early-stopping", "3", "--epochs", "60"]


def test_early_stopping_saves_the_best_validation_epoch_and_resumes_bitwise(tmp_path):
    args = overfit_args(tmp_path)
    out = nbnet("train", *args, "--save", tmp_path / "a.npz", "--save-best", tmp_path / "best.npz",
                "--metrics-out", tmp_path / "m.jsonl")
    assert out.exit_code == 0, out.output
    hist = metrics(tmp_path / "m.jsonl")
    val = [h["val_loss"] for h in hist]
    best = int(np.argmin(val)) + 1
    assert len(hist) == best + 3 < 60  # stopped 3 epochs after the best validation loss
    assert f"early stopping: no better validation loss for 3 epochs; best epoch {best}" in out.output
    # The best checkpoint holds that epoch: its state and its weights (as a run stopped there).
    ck = load_checkpoint(tmp_path / "best.npz")
    assert ck.state.epoch == best == ck.state.best_epoch and ck.state.history[-1]["val_loss"] == min(val)
    out = nbnet("train", *args[:-4], "--epochs", best, "--save", tmp_path / "upto.npz")
    assert out.exit_code == 0, out.output
    for key, value in weights(tmp_path / "upto.npz").items():
        np.testing.assert_array_equal(value, weights(tmp_path / "best.npz")[key], err_msg=key)
    # Interrupted after 2 epochs and resumed: same stop, same best checkpoint, same final weights.
    out = nbnet("train", *args[:-1], "2", "--save", tmp_path / "r.npz", "--save-best", tmp_path / "rbest.npz")
    assert out.exit_code == 0, out.output
    out = nbnet("train", "--resume", tmp_path / "r.npz", "--epochs", "60", "--save", tmp_path / "r2.npz",
                "--save-best", tmp_path / "rbest.npz")
    assert out.exit_code == 0, out.output
    untimed = lambda name: [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_second")}  # noqa: E731
                            for h in load_checkpoint(tmp_path / name).state.history]
    assert untimed("r2.npz") == untimed("a.npz")
    for a, b in (("r2.npz", "a.npz"), ("rbest.npz", "best.npz")):
        wa, wb = weights(tmp_path / a), weights(tmp_path / b)
        assert wa.keys() == wb.keys()
        for key in wa:
            np.testing.assert_array_equal(wa[key], wb[key], err_msg=f"{a} {key}")
    # Resuming a run that stopped early trains no further.
    out = nbnet("train", "--resume", tmp_path / "a.npz", "--epochs", "60")
    assert out.exit_code == 0 and "early stopping" in out.output, out.output
    assert not any(line.startswith("epoch ") for line in out.output.splitlines())


def test_the_test_set_never_chooses(tmp_path):
    """Same run, two different test sets: the same epochs, best epoch and weights."""
    args = overfit_args(tmp_path)
    x, y = np.load(tmp_path / "noisy.npz")["x"], np.load(tmp_path / "noisy.npz")["y"]
    runs = []
    for i, labels in enumerate((y, np.random.default_rng(5).integers(0, 3, len(y)))):
        # --test-split rows are the same rows in both files; only their labels differ there
        from nbnet.datasets import split  # noqa: PLC0415

        order = np.random.default_rng(0).permutation(len(x))
        test_rows = order[-int(round(len(x) * 0.2)):]
        y2 = y.copy()
        y2[test_rows] = labels[test_rows]
        np.savez(tmp_path / f"t{i}.npz", x=x, y=y2)
        assert split(x, y2, 0.2, 0)[1].tolist() == split(x, y, 0.2, 0)[1].tolist()
        run_args = [a if a != tmp_path / "noisy.npz" else tmp_path / f"t{i}.npz" for a in args]
        out = nbnet("train", *run_args, "--save-best", tmp_path / f"b{i}.npz", "--metrics-out", tmp_path / f"m{i}.jsonl")
        assert out.exit_code == 0, out.output
        runs.append(metrics(tmp_path / f"m{i}.jsonl"))
    assert [h["val_loss"] for h in runs[0]] == [h["val_loss"] for h in runs[1]]
    assert [h["test_loss"] for h in runs[0]] != [h["test_loss"] for h in runs[1]]
    w0, w1 = weights(tmp_path / "b0.npz"), weights(tmp_path / "b1.npz")
    for key in w0:
        np.testing.assert_array_equal(w0[key], w1[key])


def test_checkpoints_from_before_test_split_evaluate_and_resume(tmp_path):
    """A checkpoint written when --val-split meant the test fraction (config without test_split)."""
    blobs(tmp_path / "b.npz", n=200)
    out = nbnet("train", "--dataset", tmp_path / "b.npz", *FAST, "--epochs", "2", "--test-split", "0.3",
                "--save", tmp_path / "new.npz")
    assert out.exit_code == 0, out.output
    arrays = read_npz(tmp_path / "new.npz")
    config = json.loads(str(arrays["train/config"]))
    config["val_split"] = config.pop("test_split")
    for key in ("early_stopping", "loss"):  # nor --loss nor --early-stopping then
        config.pop(key)
    arrays["train/config"] = np.array(json.dumps(config))
    write_npz_atomic(tmp_path / "old.npz", arrays)
    write_npz_atomic(tmp_path / "old-copy.npz", arrays)  # old.npz is resumed (and saved over) below
    new = json.loads(nbnet("evaluate", "--checkpoint", tmp_path / "new.npz", "--json").output)
    old = json.loads(nbnet("evaluate", "--checkpoint", tmp_path / "old.npz", "--json").output)
    assert old == new and old["samples"] == 60
    for name in ("new.npz", "old.npz"):
        out = nbnet("train", "--resume", tmp_path / name, "--epochs", "3")
        assert out.exit_code == 0 and "(140 train, 60 test)" in out.output, out.output
    wn, wo = weights(tmp_path / "new.npz"), weights(tmp_path / "old.npz")
    for key in wn:
        np.testing.assert_array_equal(wn[key], wo[key])
    # a run from before --loss was a classifier's: it resumes as one, and as no other
    out = nbnet("train", "--resume", tmp_path / "old-copy.npz", "--epochs", "3", "--loss", "mse")
    assert out.exit_code != 0 and "was trained with --loss cross-entropy, this run has mse" in out.output, out.output
