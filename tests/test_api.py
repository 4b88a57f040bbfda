"""nb.train / nb.evaluate / nb.predict: the CLI's loop from Python, with validation, early stopping,
the best epoch, and the loss choice."""

import math
import re
import threading
import time

import numpy as np
import pytest

import nbnet as nb
from nbnet.checkpoint import load_checkpoint, save_checkpoint
from nbnet.train import TrainState, as_features, split_validation


def spiral_model(seed=0, dtype=np.float32):
    return nb.Sequential([nb.Linear(2, 32, seed=(seed, 0), dtype=dtype), nb.ReLU(),
                          nb.Linear(32, 3, seed=(seed, 1), dtype=dtype)])


def params(model):
    return [p.data.copy() for p in model.parameters()]


def test_train_converts_lists_and_float64_and_equals_float32_bitwise():
    xtr, ytr, xte, yte = nb.datasets.load("spiral")
    runs = []
    for data in ((xtr, ytr, xte, yte), (xtr.astype(np.float64), ytr.tolist(), xte.tolist(), list(yte))):
        model = spiral_model()
        opt = nb.SGD(model.parameters(), lr=0.1, momentum=0.9)
        history = nb.train(model, opt, data, epochs=2, batch_size=64)
        runs.append((params(model), [h["test_loss"] for h in history]))
        assert set(history[0]) >= {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                                   "lr", "seconds", "samples_per_second"}
        assert "val_loss" not in history[0] and history.best_epoch is None
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1] == runs[1][1]


def test_evaluate_and_predict_match_numpy():
    xtr, ytr, xte, yte = nb.datasets.load("spiral")
    model = spiral_model()
    nb.train(model, nb.SGD(model.parameters(), lr=0.1, momentum=0.9), (xtr, ytr), epochs=3)
    logits = model(xte).astype(np.float64)
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    result = nb.evaluate(model, xte.astype(np.float64), yte.tolist())
    assert result["loss"] == pytest.approx(-logp[np.arange(len(yte)), yte].mean(), rel=1e-5)
    assert result["accuracy"] == np.mean(logits.argmax(1) == yte)
    np.testing.assert_array_equal(nb.predict(model, xte), logits.argmax(1))
    np.testing.assert_allclose(nb.predict(model, xte, proba=True), np.exp(logp), rtol=1e-5, atol=1e-7)


def test_predict_and_evaluate_pick_a_rows_class_alike():
    """nb.predict took the argmax of the softmax, evaluate's accuracy of the logits: softmax rounds
    near-ties into ties and overflows to NaN, so predict said class 0 for rows the accuracy counted
    as class 1 (logits [0, 1e-8, 0], [0, inf, 0]), and the accuracy skipped a NaN after the first
    logit. One rule now, np.argmax of the logits (a NaN counts as the largest)."""
    model = nb.Sequential(nb.Linear(2, 3, seed=0))
    model[0].weight[...] = [[0, 0], [2, 2], [1, 0]]
    model[0].bias[...] = [0, 1e-8, 0]
    x = np.array([[0, 0], [3e38, 3e38], [3e38, -3e38], [1, -1]], np.float32)
    logits = model(x)  # [0, 1e-8, 0], [0, inf, 3e38], [0, NaN, 3e38], [0, 1e-8, 1]
    assert np.isinf(logits[1, 1]) and np.isnan(logits[2, 1])
    classes = nb.predict(model, x)
    np.testing.assert_array_equal(classes, logits.argmax(1))
    np.testing.assert_array_equal(classes, [1, 1, 1, 2])
    for y in ([1, 1, 1, 2], [0, 0, 2, 2], [0, 2, 0, 0]):
        assert nb.evaluate(model, x, y)["accuracy"] == np.mean(classes == y)


def test_validation_split_comes_from_the_training_rows_and_is_seeded():
    x = np.arange(100, dtype=np.float32).reshape(50, 2)
    y = np.arange(50)
    xt, yt, xv, yv = split_validation(x, y, 0.2, seed=3)
    assert len(yv) == 10 and len(yt) == 40 and sorted(np.r_[yt, yv].tolist()) == list(range(50))
    assert np.array_equal(yv, split_validation(x, y, 0.2, seed=3)[3])
    assert not np.array_equal(yv, split_validation(x, y, 0.2, seed=4)[3])
    assert split_validation(x, y, 0, seed=3)[2] is None
    assert len(split_validation(x[:9], y[:9], 0.3, seed=3)[3]) == 3  # round(2.7) rows, not 2
    with pytest.raises(ValueError, match="val_split"):
        split_validation(x, y, 1.0, seed=0)


def noisy_blobs(n, seed, flip=0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, 2)) * 0.8 + y[:, None]).astype(np.float32)
    if flip:
        y = np.where(rng.random(n) < flip, rng.integers(0, 3, n), y)
    return x, y


def test_early_stopping_picks_the_validation_epoch_never_the_test_one():
    """Overfit a small noisy set with a big net and a high rate: the validation loss turns up, and
    the run stops `patience` epochs after its minimum. Two test sets (clean, and with labels
    scrambled so that its loss has a different minimum) change nothing but the test columns."""
    xtr, ytr = noisy_blobs(60, 0, flip=0.3)
    xva, yva = noisy_blobs(200, 1)
    runs = []
    for test in (noisy_blobs(200, 2), (noisy_blobs(200, 2)[0], np.random.default_rng(9).integers(0, 3, 200))):
        model = nb.Sequential([nb.Linear(2, 256, seed=0), nb.ReLU(), nb.Linear(256, 3, seed=1)])
        opt = nb.Adam(model.parameters(), lr=0.01)
        best_weights = {}
        history = nb.train(model, opt, (xtr, ytr, *test), epochs=60, batch_size=20, val_data=(xva, yva),
                           early_stopping=3, restore_best=True,
                           on_best=lambda st, m: best_weights.update(epoch=m["epoch"], w=params(model)))
        val = [h["val_loss"] for h in history]
        assert history.stopped_early and len(history) < 60
        assert history.best_epoch == int(np.argmin(val)) + 1 == best_weights["epoch"]
        assert len(history) == history.best_epoch + 3
        assert history.best_val_loss == min(val)
        for a, b in zip(params(model), best_weights["w"]):  # restore_best put the best epoch back
            np.testing.assert_array_equal(a, b)
        runs.append((history, params(model)))
    (h1, w1), (h2, w2) = runs
    assert [h["val_loss"] for h in h1] == [h["val_loss"] for h in h2]
    assert h1.best_epoch == h2.best_epoch
    assert int(np.argmin([h["test_loss"] for h in h2])) + 1 != h2.best_epoch  # the test set would choose otherwise
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)


def test_regression_with_mse_reports_r2():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))  # float64 features for a float32 model
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=400)  # (N,) float64 targets
    model = nb.Sequential(nb.Linear(3, 16, seed=0), nb.Tanh(), nb.Linear(16, 1, seed=1))
    opt = nb.Adam(model.parameters(), lr=0.01)
    history = nb.train(model, opt, (x[:300], y[:300], x[300:], y[300:]), epochs=30, batch_size=32, loss="mse",
                       val_split=0.2)
    last = history[-1]
    assert {"train_r2", "val_r2", "test_r2", "val_loss"} <= set(last) and "train_accuracy" not in last
    assert last["test_r2"] > 0.95
    pred = nb.predict(model, x[300:], loss="mse")
    assert pred.shape == (100, 1) and pred.dtype == np.float32
    res = pred[:, 0].astype(np.float64) - y[300:]
    r2 = 1 - (res ** 2).sum() / ((y[300:] - y[300:].mean()) ** 2).sum()
    result = nb.evaluate(model, x[300:], y[300:], loss="mse")
    assert result["mse"] == result["loss"] == pytest.approx((res ** 2).mean(), rel=1e-4)
    assert result["r2"] == pytest.approx(r2, rel=1e-4) and result["r2"] == pytest.approx(last["test_r2"], rel=1e-4)


def test_r2_sums_each_part_s_targets_once_a_call(monkeypatch):
    """SS_tot of the train, validation and test targets was summed again at every epoch (4 ms each
    for 60000 rows of 10), though they do not change within a call: now once a call each."""
    import importlib

    train = importlib.import_module("nbnet.train")
    summed = []
    ss_tot = train._ss_tot
    monkeypatch.setattr(train, "_ss_tot", lambda y: summed.append(y) or ss_tot(y))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)).astype(np.float32), rng.normal(size=(60, 2)).astype(np.float32)
    model = nb.Sequential(nb.Linear(3, 2, seed=0))
    history = nb.train(model, nb.SGD(model.parameters(), lr=0.01), (x[:40], y[:40], x[40:], y[40:]), epochs=4,
                       batch_size=8, loss="mse", val_split=0.25)
    assert len(history) == 4 and len(summed) == 3, len(summed)  # was 12
    assert [len(rows) for rows in summed] == [30, 10, 20] and np.array_equal(summed[2], y[40:])  # train, val, test


def test_train_refuses_bad_arguments():
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    opt = nb.SGD(model.parameters(), lr=0.1)
    for kwargs, msg in (
        ({"early_stopping": 2}, "validation data"),
        ({"restore_best": True}, "validation data"),
        ({"loss": "hinge"}, "unknown loss"),
        ({"val_split": 0.2, "val_data": (xtr, ytr)}, "not both"),
        ({"early_stopping": 0, "val_split": 0.1}, "early_stopping"),
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),  # else a finished run: nothing, silently
        ({"val_split": "0.1"}, r"val_split must be in \[0, 1\), got '0.1'"),  # a TOML or argv string
    ):
        with pytest.raises(ValueError, match=msg):
            nb.train(model, opt, (xtr, ytr), **{"epochs": 1, **kwargs})
    # a third array: x_test without its labels, or (x, y, y), was ignored silently
    with pytest.raises(ValueError, match=r"data must be \(x_train, y_train\) or \(x_train, y_train, x_test, y_test\)"):
        nb.train(model, opt, (xtr, ytr, xtr), epochs=1)
    with pytest.raises(ValueError, match="integer class labels"):
        nb.train(model, opt, (xtr, ytr + 0.5), epochs=1)
    with pytest.raises(ValueError, match="real numbers"):
        nb.train(model, opt, (np.array([["a", "b"]] * len(ytr)), ytr), epochs=1)


def test_train_refuses_x_and_y_of_different_lengths_with_val_split():
    """val_split draws its rows from x's length for both arrays: with more labels than rows it
    trained silently on the wrong labels, with fewer it was an IndexError."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    opt = nb.SGD(model.parameters(), lr=0.1)
    for x, y in ((xtr[: len(xtr) // 2], ytr), (xtr, ytr[: len(ytr) // 2])):
        with pytest.raises(ValueError, match=r"x_train has \d+ rows but y_train has \d+"):
            nb.train(model, opt, (x, y), epochs=1, val_split=0.2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])  # 1e300: Inf once made float32
def test_nan_or_inf_in_features_is_an_error_naming_its_place(bad):
    """As `nbnet train` refuses them: before, train stopped with "training diverged", evaluate
    gave a NaN loss, and predict answered class 0 for the row."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    x = xtr.astype(np.float64)
    x[5, 1] = bad
    model = spiral_model()
    opt = nb.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"^x_train: x\[5, 1\] is .*NaN/Inf"):
        nb.train(model, opt, (x, ytr), epochs=1)
    with pytest.raises(ValueError, match=r"^x_test: x\[5, 1\]"):
        nb.train(model, opt, (xtr, ytr, x, ytr), epochs=1)
    with pytest.raises(ValueError, match=r"^x: x\[5, 1\]"):
        nb.evaluate(model, x, ytr)
    with pytest.raises(ValueError, match=r"^x: x\[5, 1\]"):
        nb.predict(model, x)


def test_features_are_checked_for_nan_a_block_of_rows_at_a_time():
    """~np.isfinite of the whole features held a bool array of their size (47 MB for MNIST's
    60000 x 784) while nb.train, nb.evaluate or nb.predict checked them. The value named is
    still the first bad one, whatever block it lies in."""
    import tracemalloc

    x = np.ones((1 << 19, 2), np.float32)  # 4 MB
    tracemalloc.start()
    try:
        as_features(spiral_model(), x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # was 1 MB, the bools of all of x
    x[400_000, 0], x[300_000, 1], x[300_001, 0] = np.nan, np.inf, np.nan
    with pytest.raises(ValueError, match=r"^x: x\[300000, 1\] is inf"):
        as_features(spiral_model(), x)


def test_float_labels_are_checked_for_whole_numbers_a_block_at_a_time():
    """Float labels were checked whole: np.round of all of them and the bools beside it held more
    than the labels (9 MB for these 8 MB), under cross-entropy in nb.train and nb.evaluate and in a
    file's check_labels. The row named is still the first bad one, whatever block it lies in."""
    import tracemalloc

    from nbnet.datasets import check_labels
    from nbnet.train import as_targets

    y = np.ones(1 << 20)  # 8 MB
    y[-1] = 0.5
    for check, match in ((lambda: as_targets(spiral_model(), y, "cross-entropy"), "needs integer class labels"),
                         (lambda: check_labels(y, "f"), r"^f: y\[1048575\]: label 0.5 is not a whole number")):
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=match):
                check()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2 << 20, peak  # was 9 MB
    y[600_000], y[300_000], y[300_001] = np.inf, np.nan, 2.5
    with pytest.raises(ValueError, match=r"^f: y\[300000\]: label nan is not"):
        check_labels(y, "f")
    y[300_000:300_002] = 7
    with pytest.raises(ValueError, match=r"^f: y\[600000\]: label inf is not"):
        check_labels(y, "f")
    y[600_000] = y[-1] = 3
    assert np.array_equal(as_targets(spiral_model(), y, "cross-entropy"), y.astype(np.int64))
    assert as_targets(spiral_model(), np.float32(3), "cross-entropy") == 3  # 0-d, as before (check_data refuses it)


def test_float_targets_are_checked_for_nan_and_range_a_block_at_a_time():
    """mse/bce targets were checked whole: np.isfinite of all of them in nb.train and nb.evaluate
    (bools of their count), and a file's regression targets as a float32 copy of all of them and
    its bools beside the float64 targets (3 MB beside 60000 x 10 targets)."""
    import tracemalloc

    from nbnet.datasets import check_xy
    from nbnet.train import as_targets

    model = nb.Sequential([nb.Linear(1, 4, seed=0)])
    y = np.ones((1 << 19, 4), np.float32)  # 8 MB, as the model wants them: not copied
    x = np.ones((len(y), 1), np.float32)
    for check in (lambda: as_targets(model, y, "mse"), lambda: check_xy(x, y, "f", "values")):
        tracemalloc.start()
        try:
            out = check()
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        del out
        assert peak - current < 1.5 * (1 << 20), (peak, current)  # beyond what it returns; was 2 and 10 MB
    y[500_000, 1], y[300_000, 3] = np.inf, np.nan
    with pytest.raises(ValueError, match=r"^y: targets hold NaN or Inf"):
        as_targets(model, y, "mse")
    with pytest.raises(ValueError, match=r"^f: targets hold NaN or Inf: y\[300000, 3\] is nan \(counted from 0\)$"):
        check_xy(x, y, "f", "values")  # the first in C order, named as a NumPy index
    y = y.astype(np.float64)
    y[500_000, 1], y[300_000, 3], y[300_001, 0] = 1e39, 1, -1e300
    with pytest.raises(ValueError, match=r"^f: target y\[300001, 0\] is -1e\+300 \(counted from 0\), too large"):
        check_xy(x, y, "f", "values")
    with pytest.raises(ValueError, match="targets of shape"):  # a 0-d target, checked as before
        nb.evaluate(model, np.ones((1, 1), np.float32), np.float32(3), loss="mse")


def test_predict_on_no_rows_says_so():
    model = spiral_model()
    with pytest.raises(ValueError, match="x is empty"):
        nb.predict(model, np.zeros((0, 2), np.float32))


@pytest.mark.parametrize("size", [-1, 0, True, 2.5, "10", None])
def test_a_bad_batch_size_for_predict_or_evaluate_is_refused_by_its_name(size):
    """nb.predict did not check it: -1 returned None (its loop ran no batch), True predicted a row
    at a time, 0 and 2.5 were range()'s errors; nb.evaluate's refusal came from inside, as
    "batches: ...", once the features were converted."""
    model = spiral_model()
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    for call in (lambda: nb.predict(model, x, batch_size=size), lambda: nb.evaluate(model, x, y, batch_size=size)):
        with pytest.raises(ValueError, match=rf"^batch_size must be a positive integer, got {re.escape(repr(size))}$"):
            call()


def test_evaluate_and_predict_run_batches_of_the_size_asked():
    """The batch size reaches the loops: no batch is larger (the layer keeps its largest output)."""
    x, y = np.zeros((10, 2), np.float32), np.zeros(10, np.int64)
    for size, call in ((4, lambda m: nb.evaluate(m, x, y, batch_size=4)), (3, lambda m: nb.predict(m, x, batch_size=3))):
        model = spiral_model()
        call(model)
        assert model.layers[0]._kept_out.shape[0] == size


@pytest.mark.parametrize("proba", ["no", 0, 1, None])
def test_predict_proba_must_be_true_or_false(proba):
    """proba="no" is truthy: it returned the probabilities where the classes were asked for."""
    model = spiral_model()
    with pytest.raises(ValueError, match=rf"^proba must be True or False, got {re.escape(repr(proba))}$"):
        nb.predict(model, np.zeros((4, 2), np.float32), proba=proba)
    assert nb.predict(model, np.zeros((4, 2), np.float32), proba=np.bool_(True)).shape == (4, 3)


def test_features_of_more_than_two_dimensions_are_refused_before_any_check_of_their_values():
    """Images not flattened: with a NaN among them it was 'too many values to unpack'."""
    model = spiral_model()
    x = np.full((4, 2, 1), np.nan, np.float32)
    with pytest.raises(ValueError, match=r"^x: expected a 2-D \(N, D\) array, got shape \(4, 2, 1\) \(images"):
        nb.predict(model, x)


def test_evaluate_names_the_data_it_was_given_not_training_data():
    model = spiral_model()
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"^evaluated data: label 9 is out of range \[0, 3\)"):
        nb.evaluate(model, x, np.full(4, 9))
    with pytest.raises(ValueError, match=r"^evaluated data has 5 features per row, the model expects 2"):
        nb.evaluate(model, np.zeros((4, 5), np.float32), np.zeros(4, int))


def test_multi_label_with_bce_reports_the_fraction_of_labels_right():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 4)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] < 0.5], axis=1).astype(np.int64)  # (N, 3) 0/1
    model = nb.Sequential(nb.Linear(4, 32, seed=0), nb.ReLU(), nb.Linear(32, 3, seed=1))
    history = nb.train(model, nb.Adam(model.parameters(), lr=0.01), (x[:500], y[:500], x[500:], y[500:]),
                       epochs=15, batch_size=32, loss="bce", val_split=0.1, early_stopping=5)
    last = history[-1]
    assert {"train_accuracy", "val_accuracy", "test_accuracy"} <= set(last) and last["test_accuracy"] > 0.9
    labels = nb.predict(model, x[500:], loss="bce")
    proba = nb.predict(model, x[500:], loss="bce", proba=True)
    z = model(x[500:]).astype(np.float64)
    np.testing.assert_allclose(proba, 1 / (1 + np.exp(-z)), rtol=1e-5)
    np.testing.assert_array_equal(labels, (z >= 0).astype(np.int64))
    result = nb.evaluate(model, x[500:], y[500:], loss="bce")
    assert result["accuracy"] == np.mean(labels == y[500:]) == last["test_accuracy"]
    expected = np.mean(np.maximum(z, 0) - z * y[500:] + np.log1p(np.exp(-np.abs(z))))
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    # binary: (N,) 0/1 targets for one output
    one = nb.Sequential(nb.Linear(4, 1, seed=0))
    h = nb.train(one, nb.SGD(one.parameters(), lr=0.5), (x, y[:, 0].tolist()), epochs=5, loss="bce")
    assert h[-1]["train_accuracy"] > 0.9 and nb.predict(one, x[:3], loss="bce").shape == (3, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        nb.train(one, nb.SGD(one.parameters(), lr=0.5), (x, y[:, 0] * 2), epochs=1, loss="bce")


def test_early_stopping_true_is_refused_not_a_patience_of_one():
    """bool is an int subclass: early_stopping=True (as scikit-learn spells "on") stopped after
    one epoch without improvement, where epochs=True and batch_size=True are refused."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    opt = nb.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="early_stopping must be a positive integer"):
        nb.train(model, opt, (xtr, ytr), epochs=2, val_split=0.1, early_stopping=True)


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_schedule_base_rate_survives_a_second_call_and_a_resume_from_state(schedule):
    """lr=None takes the optimizer's rate on entry as the schedule's base, and the schedule left
    opt.lr at its last step's rate: a second nb.train started cosine from ~0, and a run resumed
    from TrainingInterrupted's state with the optimizer's state_dict() took the interrupted
    step's rate as its base."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    kwargs = dict(epochs=3, batch_size=100, lr_schedule=schedule)

    def run(opt_of, model, **more):
        opt, rates = opt_of(model), []
        nb.train(model, opt, (xtr, ytr), on_step=lambda *a: rates.append(opt.lr), **kwargs, **more)
        return opt, rates

    model = spiral_model()
    opt, whole = run(lambda m: nb.SGD(m.parameters(), lr=0.1), model)
    assert opt.lr == 0.1
    again = []
    nb.train(model, opt, (xtr, ytr), on_step=lambda *a: again.append(opt.lr), **kwargs)
    assert again == whole

    model, steps = spiral_model(), iter(range(1, 10**6))
    opt = nb.SGD(model.parameters(), lr=0.1)
    first = []
    with pytest.raises(nb.TrainingInterrupted) as stopped:
        nb.train(model, opt, (xtr, ytr), on_step=lambda *a: first.append(opt.lr),
                 should_stop=lambda: next(steps) == 40, **kwargs)
    saved = opt.state_dict()
    fresh = nb.SGD(model.parameters(), lr=0.5)
    fresh.load_state_dict(saved)
    _, rest = run(lambda m: fresh, model, state=stopped.value.state)
    assert first + rest == whole


@pytest.mark.parametrize("callback", ["on_step", "on_epoch"])
def test_a_rate_set_in_a_callback_is_refused_not_undone(callback):
    """A Keras habit, decaying the rate in a callback: nb.train set opt.lr from its schedule before
    the next step, so the decay did nothing, without a word. A rate changed meanwhile is refused
    at the next step, before it runs; the optimizer gets its base rate back, as on any exit."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    for optimizer in (nb.SGD(model.parameters(), lr=0.1, momentum=0.9), nb.Adam(model.parameters(), lr=0.01)):
        base, steps = optimizer.lr, []

        def decay(state, *_):
            steps.append(state.step)
            optimizer.lr = optimizer.lr / 2

        kwargs = {callback: decay}
        with pytest.raises(ValueError, match=r"opt.lr was set to .* during training \(by a callback"):
            nb.train(model, optimizer, (xtr, ytr), epochs=3, batch_size=64, lr_schedule="cosine", **kwargs)
        assert optimizer.lr == base and len(steps) == 1  # refused at the next step
        nb.train(model, optimizer, (xtr, ytr), epochs=2, batch_size=64, lr_schedule="cosine")  # a schedule's own rates


@pytest.mark.parametrize("lr", [-0.1, float("nan"), float("inf"), "0.1", None])
def test_a_bad_learning_rate_is_refused_before_any_step(lr):
    """The optimizers refuse a negative or non-finite rate, but nb.train's lr= (and opt.lr set by
    hand, which lr=None reads) went to the schedule unchecked: lr=-0.1 trained uphill silently,
    NaN made every weight NaN, a string failed inside the cosine schedule."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    opt = nb.SGD(model.parameters(), lr=0.1)
    before = params(model)
    with pytest.raises(ValueError, match=r"lr must be a finite number ≥ 0"):
        if lr is None:
            opt.lr = -0.1
            nb.train(model, opt, (xtr, ytr), epochs=1)
        else:
            nb.train(model, opt, (xtr, ytr), epochs=1, lr=lr, lr_schedule="cosine")
    for a, b in zip(before, params(model), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", [None, -1, 1.5, True, "0"])
def test_a_seed_that_is_not_a_non_negative_integer_is_refused_up_front(seed):
    """seed=None (random, as numpy spells it) ended in a traceback from inside NumPy's SeedSequence
    after the kernels compiled ("object of type 'NoneType' has no len()"), -1 in NumPy's words."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (xtr, ytr), epochs=1, seed=seed)


def test_min_delta_is_the_least_improvement_that_counts():
    """An epoch is the best only when its validation loss beats the best by more than min_delta:
    with a min_delta above every later gain, epoch 1 stays the best and early stopping counts
    from it. (min_delta was never used for anything but being refused when bad.)"""
    xtr, ytr, _, _ = nb.datasets.load("spiral")

    def run(**more):
        model = spiral_model()
        return nb.train(model, nb.SGD(model.parameters(), lr=0.1, momentum=0.9), (xtr, ytr), epochs=4,
                        val_split=0.2, **more)
    plain = run()
    val = [h["val_loss"] for h in plain]
    assert plain.best_epoch > 1 and min(val[1:]) < val[0]
    strict = run(min_delta=2 * (val[0] - min(val[1:])), early_stopping=2)
    assert strict.best_epoch == 1 and strict.best_val_loss == val[0]
    assert len(strict) == 3 and strict.stopped_early


def test_patience_running_out_at_the_last_epoch_is_no_early_stop():
    """stopped_early says early stopping ended the run before `epochs`: a run whose patience runs
    out in its last epoch trained every epoch it was asked for."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    history = nb.train(model, nb.SGD(model.parameters(), lr=0.1), (xtr, ytr), epochs=3, val_split=0.2,
                       early_stopping=2, min_delta=1e9)
    assert len(history) == 3 and history.best_epoch == 1 and not history.stopped_early


def test_samples_per_second_counts_rows():
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    history = nb.train(model, nb.SGD(model.parameters(), lr=0.1), (xtr, ytr), epochs=1, batch_size=7)
    assert history[0]["samples_per_second"] == pytest.approx(len(xtr) / history[0]["seconds"], rel=1e-12)


@pytest.mark.parametrize("compiling", ["no", "here", "elsewhere"])
def test_an_epochs_seconds_leave_out_compilation(compiling):
    """Epoch 1's samples/s must not include compilation (issue #9). What the warm-up cannot reach (a
    layer of one's own that cannot be copied, its own @njit) compiles inside the epoch: those
    seconds are left out. Here 0.3 s in a step's callback, inside Numba's compile event (as a real
    compilation fires it: nested, as a kernel's callees compile) or not (counted, as any callback's
    time); another thread's compilation meanwhile is not this epoch's."""
    import numba.core.event as ev  # noqa: PLC0415

    def compile_for(seconds):
        with ev.trigger_event("numba:compile", data={"dispatcher": None}):
            with ev.trigger_event("numba:compile", data={"dispatcher": None}):
                time.sleep(seconds * 2 / 3)
            time.sleep(seconds / 3)

    def on_step(state, batch, n_batches, running_loss):
        if batch == 2:
            if compiling == "here":
                compile_for(0.3)
                return
            other = threading.Thread(target=compile_for, args=(0.3,))
            if compiling == "elsewhere":
                other.start()
            time.sleep(0.3)
            if compiling == "elsewhere":
                other.join()

    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    history = nb.train(model, nb.SGD(model.parameters(), lr=0.1), (xtr, ytr), epochs=1, on_step=on_step)
    assert (0 < history[0]["seconds"] < 0.2) if compiling == "here" else (history[0]["seconds"] >= 0.3)
    assert history[0]["samples_per_second"] == pytest.approx(len(xtr) / history[0]["seconds"], rel=1e-12)


def test_r2_of_a_constant_target_is_1_when_predicted_exactly_else_0():
    """R² has no variance to divide by for a constant target: 1 for an exact prediction, else 0."""
    model = nb.Sequential(nb.Linear(2, 1, seed=0))
    model[0].weight[...], model[0].bias[...] = 0, 3
    x = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    assert nb.evaluate(model, x, np.full(10, 3.0), loss="mse")["r2"] == 1.0
    assert nb.evaluate(model, x, np.full(10, 4.0), loss="mse")["r2"] == 0.0


@pytest.mark.parametrize("value", [0.1, 0.7])
def test_r2_of_a_constant_target_whose_mean_rounds_is_still_that_of_a_constant(value):
    """64 rows of 0.1 have a float64 mean an ulp off 0.1: SS_tot was 1e-32, not 0, and R² -4e34."""
    model = nb.Sequential(nb.Linear(2, 2, seed=0, dtype=np.float64))
    model[0].weight[...], model[0].bias[...] = 0, 3
    x, y = np.zeros((64, 2)), np.full((64, 2), value)
    assert nb.evaluate(model, x, y, loss="mse")["r2"] == 0.0
    y[:, 1] = np.arange(64)  # a constant output beside one that varies adds nothing to SS_tot
    ss_tot = ((y[:, 1] - y[:, 1].mean()) ** 2).sum()
    assert nb.evaluate(model, x, y, loss="mse")["r2"] == pytest.approx(1 - ((y - 3) ** 2).sum() / ss_tot, rel=1e-12)


def test_r2_sums_its_targets_a_block_of_rows_at_a_time():
    """SS_tot made a float64 copy of all the targets and their deviations beside it: twice their
    count in float64 (9.6 MB for 60000 rows of 10 outputs) at every R², each epoch's too."""
    import tracemalloc

    from nbnet.train import SS_BLOCK, _ss_tot

    y = np.random.default_rng(0).normal(3, 2, size=(100_000, 4)).astype(np.float32)  # 1.6 MB
    tracemalloc.start()
    try:
        ss = _ss_tot(y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * SS_BLOCK * 8, peak  # two blocks at most (one made while the last is held); was 6.4 MB
    y64 = y.astype(np.float64)
    assert ss == pytest.approx(((y64 - y64.mean(axis=0)) ** 2).sum(), rel=1e-12)
    assert _ss_tot(np.full((100_000, 4), 0.1, np.float32)) == 0.0  # constant over many blocks


def test_r2_of_targets_whose_variance_underflows_is_finite_and_the_run_saves(tmp_path):
    """float64 targets of 1e-155 have a subnormal SS_tot: SS_res / SS_tot overflowed, R² was -inf,
    and --save refused the history after the epoch had trained ("holds NaN or Inf"). As for a
    constant target, R² is then 1 if predicted exactly, else 0."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 2)), 1e-155 * rng.normal(size=32)
    model = nb.Sequential(nb.Linear(2, 1, seed=0, dtype=np.float64))
    opt = nb.SGD(model.parameters(), lr=0.01)
    save = lambda state, metrics: save_checkpoint(tmp_path / "c.npz", model, opt, state, {})  # noqa: E731
    history = nb.train(model, opt, (x, y, x, y), epochs=1, batch_size=8, loss="mse", on_epoch=save)
    assert history[0]["train_r2"] == history[0]["test_r2"] == 0.0
    assert load_checkpoint(tmp_path / "c.npz").state.history == list(history)
    assert nb.evaluate(model, x, y, loss="mse")["r2"] == 0.0
    assert nb.evaluate(model, x, 1e-80 * y, loss="mse")["r2"] == 0.0  # SS_tot underflows to 0
    model[0].weight[...], model[0].bias[...] = 0, 0.05  # SS_res / SS_tot 2.5e307: R² defined, as it is
    assert -1e300 > nb.evaluate(model, x, y, loss="mse")["r2"] > -math.inf

@pytest.mark.parametrize("min_delta", [-0.5, float("nan"), "0.01", None])
def test_a_bad_min_delta_is_refused_up_front(min_delta):
    """min_delta was first used after epoch 1: a string failed there with a TypeError, NaN made no
    epoch an improvement and a negative one made worse epochs improvements, both silently."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    with pytest.raises(ValueError, match="min_delta must be a finite number ≥ 0"):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (xtr, ytr), epochs=2, val_split=0.2,
                 early_stopping=1, min_delta=min_delta)


def test_val_split_as_a_numpy_scalar_is_a_fraction_too():
    """np.float32(0.2) (a fraction computed in NumPy) was refused as 'must be in [0, 1), got
    np.float32(0.2)', where np.float64 and the optimizers' NumPy scalars are taken."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    runs = []
    for fraction in (0.25, np.float32(0.25)):
        model = spiral_model()
        runs.append(nb.train(model, nb.SGD(model.parameters(), lr=0.1), (xtr, ytr), epochs=1, val_split=fraction))
    assert [(h["train_loss"], h["val_loss"]) for h in runs[0]] == [(h["train_loss"], h["val_loss"]) for h in runs[1]]


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_a_numpy_float32_rate_or_min_delta_is_the_number_it_holds(schedule):
    """nb.train computed with an np.float32 lr and min_delta as NumPy does, in float32: a float64
    model's scheduled rates were rounded to float32 (other weights than the same number as a Python
    float gives, and a float32 'lr' in the history), and best - min_delta rounded the best validation
    loss to float32, so epochs each better by ~3e-10 were no improvement: best epoch 1 of 6."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 3)), rng.integers(0, 3, 32)
    runs = []
    for f in (lambda v: float(np.float32(v)), np.float32):  # the same numbers, as float and np.float32
        model = nb.Sequential(nb.Linear(3, 3, dtype=np.float64, seed=0))
        history = nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=6, batch_size=16,
                           lr=f(1e-9), lr_schedule=schedule, val_data=(x[:8], y[:8]), min_delta=f(0))
        assert all(type(h["lr"]) is float for h in history)
        losses = [(h["train_loss"], h["val_loss"], h["lr"]) for h in history]
        runs.append((history.best_epoch, losses, [p.data.tobytes() for p in model.parameters()]))
    assert runs[0][0] == 6 and runs[1] == runs[0]


@pytest.mark.parametrize("val_data", ["x only", "x, y, weights"])
def test_val_data_that_is_not_a_pair_is_refused(val_data):
    """(x_val,) was an IndexError from inside nb.train; a third entry (Keras' sample weights) was
    dropped silently."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    pair = {"x only": (xtr,), "x, y, weights": (xtr, ytr, np.ones(len(ytr)))}[val_data]
    with pytest.raises(ValueError, match=r"val_data must be \(x_val, y_val\)"):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (xtr, ytr), epochs=1, val_data=pair)


def test_an_iterator_or_generator_of_data_is_one_clear_type_error():
    """nb.train(model, opt, batches_generator) was Python's "object of type 'generator' has no
    len()"; nb.evaluate / nb.predict given a generator of rows said "features must be real
    numbers, got object", about a dtype the user never chose."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    opt = nb.SGD(model.parameters(), lr=0.1)
    for data in (iter([(xtr, ytr)]), ((x, y) for x, y in [(xtr, ytr)]), {"x": xtr, "y": ytr}):
        with pytest.raises(TypeError, match=r"data must be a tuple \(x_train, y_train\) .* of arrays or array-likes"
                           rf".*got {type(data).__name__}$"):
            nb.train(model, opt, data, epochs=1)
    with pytest.raises(TypeError, match="x_train must be an array or an array-like .*got generator"):
        nb.train(model, opt, ((row for row in xtr), ytr), epochs=1)
    with pytest.raises(TypeError, match="x must be an array or an array-like .*got generator"):
        nb.evaluate(model, (row for row in xtr), ytr)
    with pytest.raises(TypeError, match="y must be an array or an array-like .*got list_iterator"):
        nb.evaluate(model, xtr, iter(list(ytr)))
    with pytest.raises(TypeError, match="x must be an array or an array-like .*got map"):
        nb.predict(model, map(np.asarray, xtr))
    assert nb.predict(model, list(map(list, xtr[:3]))).shape == (3,)  # a list of rows is an array-like


def test_an_optimizer_of_another_models_parameters_is_refused():
    """Made before the model was rebuilt (or for the model astype() copied): the loop computed this
    model's gradients and stepped the other's weights, so the model never moved and the history
    looked like a run that does not learn. An optimizer over some of the model's parameters
    (the others frozen) is fine."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model, other = spiral_model(), spiral_model()
    with pytest.raises(ValueError, match="not parameters of this model"):
        nb.train(model, nb.SGD(other.parameters(), lr=0.1), (xtr, ytr), epochs=1)
    with pytest.raises(ValueError, match="not parameters of this model"):
        nb.train(model.astype(np.float64), nb.SGD(model.parameters(), lr=0.1), (xtr, ytr), epochs=1)
    frozen = params(model)[:2]
    nb.train(model, nb.SGD(model.parameters()[2:], lr=0.1), (xtr, ytr), epochs=1)
    for a, b in zip(frozen, params(model)[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(params(model)[2], params(spiral_model())[2])


@pytest.mark.parametrize("size", [0, None, 2.5, True])
def test_a_bad_eval_batch_size_is_refused_by_its_name(size):
    """eval_batch_size went unchecked to min(eval_batch_size, rows): None was a TypeError from
    there, 0 or 2.5 an error naming batches' batch_size, not this argument."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    with pytest.raises(ValueError, match="eval_batch_size must be a positive integer"):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (xtr, ytr), epochs=1, val_split=0.2,
                 eval_batch_size=size)


@pytest.mark.parametrize("loss, head, y", [("cross-entropy", nb.Softmax, [0, 1, 2, 1]),
                                           ("bce", nb.Sigmoid, [0.0, 1.0, 1.0, 0.0])])
def test_a_squashing_last_layer_before_a_loss_on_logits_is_refused(loss, head, y):
    # The loss applies the softmax (sigmoid) itself: a model ending in one trained on probabilities
    # read as logits, and predict squashed twice, with no word said.
    x = np.arange(8, dtype=np.float32).reshape(4, 2) / 8
    out = 3 if loss == "cross-entropy" else 1
    model = nb.Sequential(nb.Linear(2, out, seed=0), head())
    before = params(model)
    y = np.asarray(y)
    for call in (lambda: nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=1, loss=loss),
                 lambda: nb.evaluate(model, x, y, loss=loss),
                 lambda: nb.predict(model, x, loss=loss)):
        with pytest.raises(ValueError, match=f"ends in a {head.__name__} layer.*takes logits"):
            call()
    for a, b in zip(before, params(model)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(nb.predict(model[:-1], x, loss=loss, proba=True), model(x), rtol=1e-6)
    # Squashed outputs are fine targets for mse, and a hidden Softmax/Sigmoid is no head.
    nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, np.full((4, out), 0.5)), epochs=1, loss="mse")
    hidden = nb.Sequential(nb.Linear(2, 4, seed=0), head(), nb.Linear(4, out, seed=1))
    nb.train(hidden, nb.SGD(hidden.parameters(), lr=0.1), (x, y), epochs=1, loss=loss)


def test_a_model_of_one_output_is_refused_by_cross_entropy():
    """A softmax over one logit is 1 whatever it is: nb.predict (whose default loss is
    cross-entropy) gave class 0 for every row of a bce or mse model loaded with nb.load, and
    nb.train on labels that are all 0 reported accuracy 100% and loss 0, with no word said."""
    x = np.arange(8, dtype=np.float32).reshape(4, 2) / 8
    model = nb.Sequential(nb.Linear(2, 4, seed=0), nb.Tanh(), nb.Linear(4, 1, seed=1))
    before = params(model)
    for call in (lambda: nb.predict(model, x),
                 lambda: nb.evaluate(model, x, [0, 0, 0, 0]),
                 lambda: nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, [0, 0, 0, 0]), epochs=1)):
        with pytest.raises(ValueError, match="1 output, but cross-entropy needs one per class"):
            call()
    for a, b in zip(before, params(model)):
        np.testing.assert_array_equal(a, b)
    assert set(nb.predict(model, x, loss="bce").ravel()) <= {0, 1}
    nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, [0.0, 1.0, 1.0, 0.0]), epochs=1, loss="bce")
    nb.predict(model, x, loss="mse")


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_a_run_resumed_after_an_epochs_last_step_reports_that_epochs_rate(schedule):
    # Resumed with every step of its epoch done, the loop steps no more in it, and the epoch's "lr"
    # read opt.lr: the base rate, not the rate of the epoch's last step that a whole run reports.
    x, y = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32), np.arange(40) % 3
    kwargs = dict(epochs=3, batch_size=10, lr_schedule=schedule)
    model = spiral_model()
    whole = nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), **kwargs)
    model, steps = spiral_model(), iter(range(1, 100))
    opt = nb.SGD(model.parameters(), lr=0.1)
    with pytest.raises(nb.TrainingInterrupted) as stopped:
        nb.train(model, opt, (x, y), should_stop=lambda: next(steps) == 8, **kwargs)  # epoch 2's last step
    resumed = nb.train(model, opt, (x, y), state=stopped.value.state, **kwargs)
    assert [h["lr"] for h in resumed] == [h["lr"] for h in whole]
    assert resumed[1]["lr"] < 0.1


def test_restore_best_survives_a_resume():
    """The best epoch's weights were kept in a local of the call: a call resumed from an interrupted
    one's state, whose best epoch came before the stop, ended on the last epoch's weights while its
    history named the best (a run that never stopped restores it)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 4)).astype(np.float32), rng.integers(0, 3, 120)
    kwargs = dict(epochs=8, batch_size=16, val_split=0.3, restore_best=True)

    def run(**more):
        model = nb.Sequential(nb.Linear(4, 16, seed=0), nb.ReLU(), nb.Linear(16, 3, seed=1))
        return model, nb.SGD(model.parameters(), lr=6.0), more

    model, opt, _ = run()
    whole = nb.train(model, opt, (x, y), **kwargs)
    assert whole.best_epoch == 5 and len(whole) == 8  # the best comes before the stop below
    want = params(model)
    model, opt, _ = run()
    steps = iter(range(1, 10**6))
    with pytest.raises(nb.TrainingInterrupted) as stopped:
        nb.train(model, opt, (x, y), should_stop=lambda: next(steps) == 36, **kwargs)  # in epoch 7
    resumed = nb.train(model, opt, (x, y), state=stopped.value.state, **kwargs)
    assert resumed.best_epoch == 5
    for a, b in zip(params(model), want):
        np.testing.assert_array_equal(a, b)


def test_a_state_past_epochs_is_refused():
    """nb.train(state=..., epochs=fewer than done) trained nothing and returned the old history,
    as if it had run (the command line refuses the same)."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    opt = nb.SGD(model.parameters(), lr=0.1)
    steps = iter(range(1, 10**6))
    with pytest.raises(nb.TrainingInterrupted) as stopped:
        nb.train(model, opt, (xtr, ytr), epochs=3, should_stop=lambda: next(steps) == 40)
    state = stopped.value.state
    for epochs in (state.epoch, state.epoch - 1):
        with pytest.raises(ValueError, match="epochs is a total"):
            nb.train(model, opt, (xtr, ytr), epochs=epochs, state=state)
    with pytest.raises(ValueError, match="x_test and y_test together"):
        nb.train(model, opt, (xtr, ytr, xtr, None), epochs=3)
    with pytest.raises(ValueError, match="x_test and y_test together"):
        nb.train(model, opt, (xtr, ytr, None, ytr), epochs=3)


def test_a_finished_state_returns_its_history_and_says_so():
    """nb.train(state=a finished run's, epochs=its epochs) returned quietly, where `nbnet train
    --resume` refused: both now train nothing and say so (here a NothingToTrain warning), and lose
    nothing: the history, and with restore_best the best epoch's weights, as the call that never
    stopped ended with (this one was stopped in its last on_epoch, before restoring them)."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    kwargs = dict(epochs=4, batch_size=32, val_split=0.3, restore_best=True)

    def run(on_epoch=None):
        model = spiral_model()
        opt = nb.SGD(model.parameters(), lr=0.5, momentum=0.9)  # epoch 3 the best
        state = TrainState()
        try:
            history = nb.train(model, opt, (xtr, ytr), state=state, on_epoch=on_epoch, **kwargs)
        except KeyboardInterrupt:
            history = None
        return model, opt, state, history

    model, _, _, whole = run()
    want = params(model)
    assert whole.best_epoch < 4, "the test needs a best epoch before the last"

    def stop_after_the_last(st, metrics):
        if st.epoch == 4:
            raise KeyboardInterrupt

    model, opt, state, _ = run(stop_after_the_last)
    assert state.epoch == 4
    with pytest.warns(nb.NothingToTrain, match="nothing to train"):
        again = nb.train(model, opt, (xtr, ytr), state=state, **kwargs)
    timing = ("seconds", "samples_per_second")
    assert [{k: v for k, v in h.items() if k not in timing} for h in again] == \
        [{k: v for k, v in h.items() if k not in timing} for h in whole]
    assert again.best_epoch == whole.best_epoch and not again.stopped_early
    for a, b in zip(params(model), want):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="epochs is a total"):  # past it: still refused
        nb.train(model, opt, (xtr, ytr), state=state, **dict(kwargs, epochs=3))


def test_state_must_be_a_train_state_and_a_kept_one_resumes():
    """nb.train(state={}) (a dict, as a user guessing at "state (resume)" might pass) failed with
    AttributeError: 'dict' object has no attribute 'epoch'; now a TypeError naming TrainState. A
    TrainState() passed in is the one train updates: passed again, the run goes on from it."""
    xtr, ytr, _, _ = nb.datasets.load("spiral")
    model = spiral_model()
    opt = nb.SGD(model.parameters(), lr=0.1)
    for bad in ({}, {"epoch": 1}, 3):
        with pytest.raises(TypeError, match="TrainState"):
            nb.train(model, opt, (xtr, ytr), epochs=2, state=bad)
    state = TrainState()
    nb.train(model, opt, (xtr, ytr), epochs=1, state=state)
    assert state.epoch == 1
    history = nb.train(model, opt, (xtr, ytr), epochs=2, state=state)
    assert [h["epoch"] for h in history] == [1, 2] and state.epoch == 2


@pytest.mark.parametrize("loss", ["cross-entropy", "mse", "bce"])
def test_predict_allocates_its_results_once(loss):
    """nb.predict fills its results batch by batch: it copied each batch's scores, then concatenated
    the copies, so it held the scores twice (and a float64 zero per row beside). NumPy reports its
    data allocations to tracemalloc."""
    import tracemalloc

    model = nb.Sequential([nb.Linear(2, 16, seed=0), nb.ReLU(), nb.Linear(16, 64, seed=1)])
    x = np.random.default_rng(0).random((4000, 2), np.float32)
    nb.predict(model, x, loss=loss, batch_size=100)  # the model's buffers made
    tracemalloc.start()
    try:
        nb.predict(model, x, loss=loss, batch_size=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    scores = 4000 * 64 * 4  # 1 MB
    results = {"cross-entropy": scores + 4000 * 8, "mse": scores, "bce": scores + 4000 * 64 * 8}[loss]
    assert peak < results + 64_000, (peak, results)


# --------------------------------------------------------------------------------------------- mutation-found gaps


def blobs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("epoch, step, seen, fragment", [
    (1, 4 + 5, 50, "does not fit 4 steps per epoch"),  # one step past epoch 2's last (of 4)
    (0, 2, 21, "counts 21 rows seen"),  # more rows than 2 steps of 10 take
    (0, 2, 1, "counts 1 rows seen"),  # fewer rows than 2 steps take
])
def test_a_state_whose_steps_or_rows_do_not_fit_its_epoch_is_refused(epoch, step, seen, fragment):
    x, y = blobs()
    model = spiral_model()
    state = TrainState(epoch=epoch, step=step, seen=seen)
    with pytest.raises(ValueError, match=fragment):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=3, batch_size=10, state=state)


def test_every_step_takes_the_rate_of_its_own_global_step():
    """Step t of T runs at lr·½(1 + cos(πt/T)) from t = 0 (the base rate), and the history's "lr"
    is the rate of each epoch's last step: 40 rows in batches of 16 are 3 steps an epoch."""
    x, y = blobs()
    model = spiral_model()
    opt, rates = nb.SGD(model.parameters(), lr=0.1), []
    history = nb.train(model, opt, (x, y), epochs=2, batch_size=16, lr_schedule="cosine",
                       on_step=lambda *args: rates.append(opt.lr))
    want = [0.1 * 0.5 * (1.0 + math.cos(math.pi * t / 6)) for t in range(6)]
    assert rates[0] == 0.1 and rates == pytest.approx(want, rel=1e-12, abs=0)
    assert [h["lr"] for h in history] == [rates[2], rates[5]]


def test_epoch_metrics_are_means_over_rows_with_the_short_batch_weighed_by_its_rows():
    """At rate 0 the weights stay put, so the epoch's train, validation and test metrics are those
    nb.evaluate gives for the same rows: 50 rows in batches of 16 end in a batch of 2, which counts
    2/50 of the train loss (not 16/50, nor one batch in 4)."""
    x, y = blobs(50)
    xv, yv = blobs(30, seed=1)
    xt, yt = blobs(20, seed=2)
    model = spiral_model()
    history = nb.train(model, nb.SGD(model.parameters(), lr=0.0), (x, y, xt, yt), epochs=1, batch_size=16,
                       val_data=(xv, yv))
    for part, (xs, ys) in (("train", (x, y)), ("val", (xv, yv)), ("test", (xt, yt))):
        want = nb.evaluate(model, xs, ys)
        assert history[0][f"{part}_loss"] == pytest.approx(want["loss"], rel=1e-6), part
        assert history[0][f"{part}_accuracy"] == want["accuracy"], part


def test_a_validation_loss_that_only_equals_the_best_is_no_improvement():
    """min_delta=0: the best epoch is one whose validation loss is lower, not as low; at rate 0
    every epoch's is the same, so epoch 1 stays the best and patience runs out after 2 more."""
    x, y = blobs(60)
    model = spiral_model()
    best = []
    history = nb.train(model, nb.SGD(model.parameters(), lr=0.0), (x, y), epochs=6, batch_size=16,
                       val_split=0.25, early_stopping=2, on_best=lambda st, m: best.append(m["epoch"]))
    assert len({h["val_loss"] for h in history}) == 1
    assert history.best_epoch == 1 and best == [1] and len(history) == 3 and history.stopped_early


def test_an_interrupted_epoch_keeps_the_seconds_it_ran():
    """The epoch's seconds of a resumed run count the time before the stop too (state.seconds)."""
    x, y = blobs()
    model = spiral_model()
    steps = iter(range(1, 100))
    with pytest.raises(nb.TrainingInterrupted) as stopped:
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=2, batch_size=10,
                 should_stop=lambda: next(steps) == 2)
    assert stopped.value.state.seconds > 0 and stopped.value.state.seen == 20


def test_an_interrupted_epochs_seconds_leave_out_compilation():
    """The seconds kept for a resumed epoch (state.seconds) leave compilation out as a whole epoch's
    do: 0.3 s inside Numba's compile event in the step the stop comes after."""
    import numba.core.event as ev  # noqa: PLC0415

    def on_step(state, batch, n_batches, running_loss):
        if batch == 2:
            with ev.trigger_event("numba:compile", data={"dispatcher": None}):
                time.sleep(0.3)

    x, y = blobs()
    model = spiral_model()
    steps = iter(range(1, 100))
    with pytest.raises(nb.TrainingInterrupted) as stopped:
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=2, batch_size=10, on_step=on_step,
                 should_stop=lambda: next(steps) == 2)
    assert 0 < stopped.value.state.seconds < 0.2 and stopped.value.state.seen == 20


def test_a_test_loss_that_overflows_stops_the_run_as_diverged():
    """A finite test row whose logits overflow makes the test loss NaN: the run stops (as for a
    validation loss), not a history with a NaN test loss in it."""
    x, y = blobs()
    xt = x[:5].copy()
    xt[0, 0] = 3e38
    model = spiral_model()
    with pytest.raises(nb.TrainingDiverged, match="test loss is nan after epoch 1"):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y, xt, y[:5]), epochs=1)


def test_on_best_without_validation_data_is_refused():
    """There is no best epoch without a validation loss: on_best would never be called, silently."""
    x, y = blobs()
    model = spiral_model()
    with pytest.raises(ValueError, match="need validation data"):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=1, on_best=lambda st, m: None)


def test_val_split_edges_name_the_fraction_or_the_rows():
    """1 is out of [0, 1) by itself; a fraction that rounds to every row leaves no training rows."""
    x, y = blobs(10)
    with pytest.raises(ValueError, match=r"val_split must be in \[0, 1\), got 1"):
        split_validation(x, y, 1, seed=0)
    with pytest.raises(ValueError, match="val_split 0.96 leaves no training rows out of 10"):
        split_validation(x, y, 0.96, seed=0)


def test_labels_at_two_to_the_63_are_out_of_range_by_their_own_value():
    """2**63 as a float is past int64: as int64 it wrapped to -2**63, a label the data does not hold."""
    x, y = blobs(2)
    model = spiral_model()
    with pytest.raises(ValueError, match=r"y_train: label 9\.223372036854776e\+18 is out of range"):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, [0.0, 2.0**63]), epochs=1)


def test_bce_targets_above_1_are_refused_and_a_zero_logit_is_a_yes():
    x = np.ones((2, 2), np.float32)
    model = nb.Sequential(nb.Linear(2, 1, seed=0))
    with pytest.raises(ValueError, match=r"bce targets must lie in \[0, 1\]"):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, [0.0, 1.2]), epochs=1, loss="bce")
    model[0].weight[...] = 0  # z = 0 exactly: σ(z) = ½, read as yes by predict as by evaluate's accuracy
    assert nb.predict(model, x, loss="bce").tolist() == [[1], [1]]
    assert nb.evaluate(model, x, [1.0, 1.0], loss="bce")["accuracy"] == 1.0


@pytest.mark.parametrize("part", ["test", "validation"])
def test_an_empty_test_or_validation_set_is_named(part):
    x, y = blobs()
    model = spiral_model()
    data, more = ((x, y, x[:0], y[:0]), {}) if part == "test" else ((x, y), {"val_data": (x[:0], y[:0])})
    with pytest.raises(ValueError, match=f"{part} data is empty"):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), data, epochs=1, **more)


def test_model_bytes_counts_an_evaluation_batch_of_at_least_1000_rows():
    from nbnet.train import model_bytes

    params = 3 * 4 + 4
    assert model_bytes([3, 4], np.float32, batch_size=10) == 4 * (params * (4 + 1) + 4 * 1000 * 7)
    assert model_bytes([3, 4], np.float64, batch_size=2000, optimizer="adam") == 8 * (params * 6 + 4 * 2000 * 7)


def test_build_model_seeds_linear_layer_i_with_seed_i():
    from nbnet.train import build_model

    model = build_model(2, [16], 3, seed=7)
    np.testing.assert_array_equal(model[0].weight, nb.Linear(2, 16, seed=(7, 0)).weight)
    np.testing.assert_array_equal(model[2].weight, nb.Linear(16, 3, seed=(7, 1)).weight)


def test_predict_proba_with_mse_is_refused():
    """A regression has no probabilities: proba=True returned the outputs as if it had been honoured."""
    model = nb.Sequential(nb.Linear(2, 3, seed=0))
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"^proba=True is for cross-entropy and bce; with mse"):
        nb.predict(model, x, loss="mse", proba=True)
    assert nb.predict(model, x, loss="mse").shape == (4, 3)


@pytest.mark.parametrize("call", ["predict", "predict float64", "evaluate", "train", "train in order"])
def test_the_model_lets_go_of_the_data_it_scored_or_trained_on(call):
    """The first layer keeps its last batch for a backward, and nb.predict / nb.evaluate's last
    batch is a view of all the rows they were given (or of the float32 copy they converted them
    into): a service's model held the last request's whole array, a notebook's the whole data set
    (100 MB after nb.predict on 400,000 rows), until its next forward. A backward after them has
    no batch to backpropagate: a ValueError that says so."""
    import gc
    import weakref

    model = nb.Sequential(nb.Linear(8, 16, seed=0), nb.ReLU(), nb.Linear(16, 3, seed=1))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2500, 8)).astype(np.float64 if "float64" in call else np.float32)
    y = rng.integers(0, 3, len(x))
    seen = []
    forward = model.forward_reusing  # what nb.predict and nb.evaluate run: look at what the model kept
    model.forward_reusing = lambda xb: (seen.append(weakref.ref(xb.base if xb.base is not None else xb)),
                                        forward(xb))[1]
    if call.startswith("predict"):
        nb.predict(model, x)
    elif call == "evaluate":
        nb.evaluate(model, x, y)
    else:
        nb.train(model, nb.SGD(model.parameters(), lr=0.01), (x, y), epochs=1, batch_size=1000,
                 shuffle=call == "train")
    del model.forward_reusing
    kept = weakref.ref(x)
    del x
    gc.collect()
    assert kept() is None and not any(ref() is not None and ref().nbytes > 1000 * 8 * 4 for ref in seen)
    with pytest.raises(ValueError, match="backward called before forward .or after nb.predict"):
        model.backward(np.ones(model[-1].out.shape, np.float32))  # the last batch's shape: the first layer says it


@pytest.mark.parametrize("first", ["Linear", "ReLU"])
def test_a_backward_after_predict_is_refused_before_any_gradient_is_written(first):
    """nb.predict lets go of the first layer's batch only: the later layers kept theirs, and a
    backward after it wrote their gradients (the last Linear's, of the predicted rows) before the
    first layer refused. A model starting with an activation never reached it, and backpropagated
    the predicted rows silently."""
    layers = [nb.Linear(4, 8, seed=0), nb.ReLU(), nb.Linear(8, 3, seed=1)]
    model = nb.Sequential(layers if first == "Linear" else [nb.ReLU(), *layers])
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    loss_fn = nb.SoftmaxCrossEntropy()
    for _ in range(3):  # a planned step too
        loss_fn(model(x), [0, 1, 2, 0, 1, 2])
        model.backward(loss_fn.backward())
    grads = [p.grad.copy() for p in model.parameters()]
    nb.predict(model, x)
    with pytest.raises(ValueError, match=rf"^{first}.*backward called before forward .or after nb.predict"):
        model.backward(loss_fn.backward())
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)


def test_a_backward_after_predict_is_refused_with_a_first_layer_of_the_users():
    """A first layer of the user's own that keeps `inp` (README's Scale) had it set to None by
    nb.predict, and the model's backward failed inside the user's code (a TypeError on None);
    it is refused as for nbnet's layers, and a forward makes backward work again."""
    from dataclasses import dataclass, field
    from typing import Any

    @dataclass(eq=False)
    class Scale(nb.Layer):
        weight: Any = field(default_factory=lambda: np.ones(4, np.float32))
        grad_weight: Any = field(default_factory=lambda: np.zeros(4, np.float32))
        inp: Any = None

        def forward(self, x):
            self.inp = x
            return x * self.weight

        def backward(self, grad):
            self.grad_weight += (grad * self.inp).sum(axis=0)
            return grad * self.weight

        def parameters(self):
            return [nb.Parameter(self, "weight")]

    model = nb.Sequential(Scale(), nb.Linear(4, 3, seed=0))
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    loss_fn = nb.SoftmaxCrossEntropy()
    loss_fn(model(x), [0, 1, 2, 0, 1, 2])
    nb.predict(model, x)
    with pytest.raises(ValueError, match=r"^Scale: backward called after nb.predict"):
        model.backward(loss_fn.backward())
    loss_fn(model(x), [0, 1, 2, 0, 1, 2])
    model.backward(loss_fn.backward())  # a forward since: backward works


@pytest.mark.parametrize("weight", [1e19, np.nan])
def test_r2_of_a_loss_that_is_not_finite_is_nan_not_0(weight):
    """SS_res inf (weights of 1e19 in float32: the squares overflow) or NaN made R² 0.0, "as good as
    the mean", beside a loss of inf or NaN; `nbnet evaluate --json` printed "r2": 0.0 by "loss": null."""
    model = nb.Sequential(nb.Linear(2, 1, seed=0))
    model[0].weight[...] = weight
    x = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    result = nb.evaluate(model, x, np.arange(10.0), loss="mse")
    assert not math.isfinite(result["loss"]) and math.isnan(result["r2"])
