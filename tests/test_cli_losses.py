"""`nbnet train --loss mse | bce`: regression and binary / multi-label from the command line, and
evaluate / predict on such checkpoints."""

import csv
import json

import numpy as np
import pytest

from nbnet.checkpoint import load_checkpoint

from test_cli import assert_error, nbnet


def epoch_line(output, epoch=1):
    return next(line for line in output.splitlines() if line.startswith(f"epoch {epoch}/"))


FAST = ["--hidden", "32", "--batch-size", "32", "--optimizer", "adam", "--lr", "0.01"]


def regression_file(path, n=400, outputs=1):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    w = rng.normal(size=(3, outputs))
    y = np.tanh(x @ w) + 0.05 * rng.normal(size=(n, outputs))
    np.savez(path, x=x, y=y[:, 0] if outputs == 1 else y)
    return x, y


def multilabel_file(path, n=400, labels=3):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.stack([x[:, j] > 0 for j in range(labels)], axis=1).astype(np.int64)
    np.savez(path, x=x, y=y if labels > 1 else y[:, 0])
    return x, y


@pytest.mark.parametrize("outputs", [1, 2])
def test_regression_reports_mse_and_r2(tmp_path, outputs):
    x, y = regression_file(tmp_path / "r.npz", outputs=outputs)
    out = nbnet("train", "--dataset", tmp_path / "r.npz", "--loss", "mse", *FAST, "--epochs", "15", "--val-split", "0.1",
                "--save", tmp_path / "m.npz", "--metrics-out", tmp_path / "m.jsonl")
    assert out.exit_code == 0, out.output
    assert f"3-32-{outputs}" in out.output and "R²" in epoch_line(out.output) and "acc" not in epoch_line(out.output)
    last = json.loads(open(tmp_path / "m.jsonl").read().splitlines()[-1])
    assert {"train_r2", "val_r2", "test_r2", "test_loss"} <= set(last) and last["test_r2"] > 0.8
    result = json.loads(nbnet("evaluate", "--checkpoint", tmp_path / "m.npz", "--json").output)
    assert result["mse"] == result["loss"] == pytest.approx(last["test_loss"], rel=1e-6)
    assert result["r2"] == pytest.approx(last["test_r2"], rel=1e-6) and result["samples"] == 80
    np.savez(tmp_path / "in.npz", x=x[:3])
    lines = nbnet("predict", "--checkpoint", tmp_path / "m.npz", tmp_path / "in.npz").output.split()
    assert len(lines) == 3 and all(len(line.split(",")) == outputs for line in lines)
    values = np.array([[float(v) for v in line.split(",")] for line in lines])
    assert np.abs(values - y[:3]).max() < 0.5
    nbnet("predict", "--checkpoint", tmp_path / "m.npz", tmp_path / "in.npz", "-o", tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as f:
        assert f["pred"].shape == (3, outputs) and f["pred"].dtype == np.float32 and "probs" not in f.files


def test_multi_label_bce(tmp_path):
    x, y = multilabel_file(tmp_path / "ml.npz")
    out = nbnet("train", "--dataset", tmp_path / "ml.npz", "--loss", "bce", *FAST, "--epochs", "10",
                "--save", tmp_path / "m.npz", "--metrics-out", tmp_path / "m.jsonl")
    assert out.exit_code == 0, out.output
    assert "4-32-3" in out.output and "label acc" in epoch_line(out.output)
    last = json.loads(open(tmp_path / "m.jsonl").read().splitlines()[-1])
    assert last["test_accuracy"] > 0.9
    result = json.loads(nbnet("evaluate", "--checkpoint", tmp_path / "m.npz", "--json").output)
    assert result["accuracy"] == last["test_accuracy"] and result["loss"] == pytest.approx(last["test_loss"], rel=1e-6)
    np.savez(tmp_path / "in.npz", x=x[:20])
    lines = nbnet("predict", "--checkpoint", tmp_path / "m.npz", tmp_path / "in.npz").output.split()
    expected = ["{" + ",".join(str(j) for j in np.flatnonzero(row)) + "}" for row in y[:20]]
    assert sum(a == b for a, b in zip(lines, expected)) >= 17, (lines, expected)
    nbnet("predict", "--checkpoint", tmp_path / "m.npz", tmp_path / "in.npz", "-o", tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as f:
        assert f["pred"].shape == (20, 3) and set(np.unique(f["pred"])) <= {0, 1}
        np.testing.assert_array_equal(f["pred"], (f["probs"] >= 0.5).astype(np.int64))
    # A .csv holds each row's set as one field: unquoted, "{0,2}" read as the two fields "{0" and "2}"
    nbnet("predict", "--checkpoint", tmp_path / "m.npz", tmp_path / "in.npz", "-o", tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as f:
        assert list(csv.reader(f)) == [[line] for line in lines]


def test_binary_bce_with_n_targets(tmp_path):
    x, y = multilabel_file(tmp_path / "b.npz", labels=1)
    out = nbnet("train", "--dataset", tmp_path / "b.npz", "--loss", "bce", *FAST, "--epochs", "5", "--save", tmp_path / "m.npz")
    assert out.exit_code == 0 and "4-32-1" in out.output, out.output
    np.savez(tmp_path / "in.npz", x=x[:10])
    lines = nbnet("predict", "--checkpoint", tmp_path / "m.npz", tmp_path / "in.npz").output.split()
    assert set(lines) <= {"0", "1"} and sum(int(a) == b for a, b in zip(lines, y[:10, 0])) >= 8
    # A --loss that contradicts the stored one scored bce logits as regression outputs ("R² -5").
    assert_error(nbnet("evaluate", "--checkpoint", tmp_path / "m.npz", "--loss", "mse"), "--loss mse", "bce")
    assert_error(nbnet("predict", "--checkpoint", tmp_path / "m.npz", "--loss", "cross-entropy", tmp_path / "in.npz"),
                 "trained with --loss bce")
    same = nbnet("predict", "--checkpoint", tmp_path / "m.npz", "--loss", "bce", tmp_path / "in.npz")
    assert same.output.split() == lines


def test_a_model_of_one_output_is_no_cross_entropy_classifier(tmp_path):
    """predict of a model.save file (which stores no loss, so cross-entropy) of a one-output bce
    model printed 0 for every row, and train on labels that are all 0 reported 100% accuracy."""
    import nbnet as nb

    x, _ = multilabel_file(tmp_path / "b.npz", labels=1)
    assert nbnet("train", "--dataset", tmp_path / "b.npz", "--loss", "bce", *FAST, "--epochs", "1",
                 "--save", tmp_path / "m.npz").exit_code == 0
    nb.load(tmp_path / "m.npz").save(tmp_path / "plain.npz")
    np.savez(tmp_path / "in.npz", x=x[:10])
    assert_error(nbnet("predict", "--checkpoint", tmp_path / "plain.npz", tmp_path / "in.npz"),
                 "1 output, but cross-entropy needs one per class", "bce")
    assert_error(nbnet("evaluate", "--checkpoint", tmp_path / "plain.npz", "--dataset", tmp_path / "b.npz"),
                 "1 output, but cross-entropy")
    assert nbnet("predict", "--checkpoint", tmp_path / "plain.npz", "--loss", "bce", tmp_path / "in.npz").exit_code == 0
    np.savez(tmp_path / "one.npz", x=x, y=np.zeros(len(x), np.int64))
    assert_error(nbnet("train", "--dataset", tmp_path / "one.npz", "--epochs", "1"), "every label is 0, one class")


def test_resume_keeps_the_loss_bitwise(tmp_path):
    regression_file(tmp_path / "r.npz")
    common = ["--dataset", tmp_path / "r.npz", "--loss", "mse", *FAST]
    assert nbnet("train", *common, "--epochs", "4", "--save", tmp_path / "a.npz").exit_code == 0
    assert nbnet("train", *common, "--epochs", "2", "--save", tmp_path / "b.npz").exit_code == 0
    out = nbnet("train", "--resume", tmp_path / "b.npz", "--epochs", "4", "--save", tmp_path / "c.npz")
    assert out.exit_code == 0 and "R²" in out.output, out.output
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "c.npz") as c:
        for key in a.files:
            if key.startswith(("layer", "optim/state")):
                np.testing.assert_array_equal(a[key], c[key], err_msg=key)
    assert_error(nbnet("train", "--resume", tmp_path / "b.npz", "--epochs", "4", "--loss", "bce"), "--loss")


def test_loss_errors(tmp_path):
    regression_file(tmp_path / "r.npz")
    assert_error(nbnet("train", "--loss", "mse"), "spiral", "class labels")
    assert_error(nbnet("train", "--dataset", tmp_path / "r.npz", "--loss", "bce"), "[0, 1]")
    assert_error(nbnet("train", "--dataset", tmp_path / "r.npz"), "is not a whole number")  # float targets, cross-entropy
    assert_error(nbnet("train", "--loss", "hinge"), "--loss")
    np.savez(tmp_path / "nan.npz", x=np.ones((10, 2)), y=np.r_[np.ones(9), np.nan])
    assert_error(nbnet("train", "--dataset", tmp_path / "nan.npz", "--loss", "mse"), "NaN")


def test_multi_label_bce_stopped_mid_epoch_resumes_bitwise(tmp_path, monkeypatch):
    # bce counts the labels it gets right, so a multi-label epoch in progress holds more "correct"
    # than rows seen: the checkpoint of a run stopped there is not damaged
    multilabel_file(tmp_path / "ml.npz")
    common = ["--dataset", tmp_path / "ml.npz", "--loss", "bce", *FAST, "--epochs", "3", "-q"]
    assert nbnet("train", *common, "--save", tmp_path / "straight.npz").exit_code == 0
    from nbnet.cli import StopOnSignals

    calls = iter(range(10**6))
    with monkeypatch.context() as m:
        m.setattr(StopOnSignals, "requested", lambda self: next(calls) == 13)  # step 14 of 30
        assert nbnet("train", *common, "--save", tmp_path / "c.npz").exit_code == 130
    with np.load(tmp_path / "c.npz") as f:
        state = json.loads(str(f["train/state"]))
    assert state["step"] == 14 and state["correct"] > state["seen"]
    out = nbnet("train", "--resume", tmp_path / "c.npz", "-q")
    assert out.exit_code == 0, out.output
    with np.load(tmp_path / "straight.npz") as a, np.load(tmp_path / "c.npz") as c:
        for key in a.files:
            if key.startswith(("layer", "optim/state")):
                np.testing.assert_array_equal(a[key], c[key], err_msg=key)
    runs = [load_checkpoint(tmp_path / name).state.history for name in ("straight.npz", "c.npz")]
    # the interrupted epoch reports what the straight run reported
    assert [(h["train_loss"], h["train_accuracy"]) for h in runs[0]] == [
        (h["train_loss"], h["train_accuracy"]) for h in runs[1]]
