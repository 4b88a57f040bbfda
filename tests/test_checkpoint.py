"""The Python training loop and checkpoints: history, schedules, divergence, bitwise resume,
atomic writes, and files that np.load(allow_pickle=False) and nb.load both read."""

import math
import os

import numpy as np
import pytest

import nbnet as nb
from nbnet import datasets
from nbnet.checkpoint import load_checkpoint, save_checkpoint
from nbnet.train import (
    TrainingDiverged, TrainingInterrupted, TrainState, build_model, learning_rate, make_optimizer, train,
)

KEYS = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "samples_per_second"}


def tiny_data():
    x, y = datasets.spiral(points_per_class=40)
    return datasets.split(x, y, 0.25, seed=0)


def run(optimizer="sgd", epochs=4, schedule="cosine", state=None, model=None, opt=None, should_stop=None):
    data = tiny_data()
    state = TrainState() if state is None else state
    if model is None:
        model = build_model(2, [16], 3, seed=7)
        opt = make_optimizer(optimizer, model, lr=0.05 if optimizer == "sgd" else 0.01, momentum=0.9)
    history = train(model, opt, data, epochs=epochs, batch_size=16, seed=7, lr_schedule=schedule,
                    lr=0.05 if optimizer == "sgd" else 0.01, state=state, should_stop=should_stop)
    run.state = state
    return model, opt, history


def weights(model):
    return {k: v for k, v in model.state_arrays().items() if k.startswith("layer")}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_history_has_the_interface_keys():
    _, _, history = run(epochs=2)
    assert [m["epoch"] for m in history] == [1, 2]
    for m in history:
        assert KEYS <= m.keys()
        assert 0 <= m["train_accuracy"] <= 1 and 0 <= m["test_accuracy"] <= 1


def test_schedules():
    assert learning_rate("constant", 0.1, 7, 1, 4, 10) == 0.1
    assert learning_rate("cosine", 0.1, 0, 0, 4, 10) == 0.1
    assert learning_rate("cosine", 0.1, 20, 2, 4, 10) == pytest.approx(0.05)
    assert learning_rate("cosine", 0.1, 30, 3, 4, 10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    # step: ×0.1 every max(1, epochs // 3) epochs
    assert [learning_rate("step", 1.0, 0, e, 9, 10) for e in range(9)] == pytest.approx(
        [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])
    assert learning_rate("step", 1.0, 0, 2, 2, 10) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        learning_rate("linear", 0.1, 0, 0, 1, 1)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_after_two_epochs_is_bitwise_four_straight(tmp_path, optimizer):
    # constant rate: a finished 2-epoch run extended to 4 (cosine/step depend on --epochs, so
    # there only a run stopped before its end resumes bitwise: the next test)
    straight, _, h4 = run(optimizer, schedule="constant")
    model, opt, _ = run(optimizer, epochs=2, schedule="constant")
    assert run.state.epoch == 2 and run.state.step == 2 * 6  # 90 rows in batches of 16
    save_checkpoint(tmp_path / "c.npz", model, opt, run.state, {"seed": 7})
    ck = load_checkpoint(tmp_path / "c.npz")
    opt2 = make_optimizer(optimizer, ck.model, lr=1.0, momentum=0.9)
    opt2.load_state_dict(ck.optim_state)
    resumed, _, h = run(optimizer, model=ck.model, opt=opt2, state=ck.state, schedule="constant")
    assert_same(weights(resumed), weights(straight))
    assert [m["test_loss"] for m in h] == [m["test_loss"] for m in h4]  # the history carries over


def test_mid_epoch_interrupt_resumes_bitwise(tmp_path):
    straight, _, h4 = run(epochs=4)
    calls = iter(range(10**6))
    with pytest.raises(TrainingInterrupted) as e:
        run(epochs=4, should_stop=lambda: next(calls) == 8)  # stops inside epoch 2 (6 steps/epoch)
    st = e.value.state
    assert (st.epoch, st.step) == (1, 9)
    # the interrupted model is gone with the exception frame; rebuild it through a checkpoint
    model = build_model(2, [16], 3, seed=7)
    opt = make_optimizer("sgd", model, lr=0.05, momentum=0.9)
    calls = iter(range(10**6))
    with pytest.raises(TrainingInterrupted) as e:
        run(epochs=4, model=model, opt=opt, should_stop=lambda: next(calls) == 8)
    save_checkpoint(tmp_path / "c.npz", model, opt, e.value.state, {})
    ck = load_checkpoint(tmp_path / "c.npz")
    opt2 = make_optimizer("sgd", ck.model, lr=0.05, momentum=0.9)
    opt2.load_state_dict(ck.optim_state)
    resumed, _, h = run(epochs=4, model=ck.model, opt=opt2, state=ck.state)
    assert_same(weights(resumed), weights(straight))
    assert h[-1]["train_loss"] == h4[-1]["train_loss"]  # the epoch's running sums survived too


def test_checkpoint_reads_without_pickle_and_with_nb_load(tmp_path):
    model, opt, history = run(epochs=1)
    path = tmp_path / "c.npz"
    save_checkpoint(path, model, opt, TrainState(epoch=1, step=6, history=history), {"hidden": [16]})
    with np.load(path, allow_pickle=False) as f:
        assert {"train/config", "train/state", "optim/meta", "checkpoint/version"} <= set(f.files)
        assert any(k.startswith("optim/state/momentum_buffer.") for k in f.files)
    assert_same(weights(nb.load(path)), weights(model))
    ck = load_checkpoint(path)
    assert ck.config == {"hidden": [16]} and ck.state.history == history


def test_a_failed_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    model, opt, _ = run(epochs=1)
    path = tmp_path / "c.npz"
    save_checkpoint(path, model, opt, TrainState(epoch=1, step=6), {})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, opt, TrainState(epoch=2, step=12), {})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def test_truncated_checkpoint_is_a_value_error(tmp_path):
    model, opt, _ = run(epochs=1)
    path = tmp_path / "c.npz"
    save_checkpoint(path, model, opt, TrainState(epoch=1, step=6), {})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_nan_loss_stops_with_epoch_and_step():
    model = build_model(2, [16], 3, seed=7)
    model.layers[-1].bias[0] = np.nan  # (a NaN before a ReLU would be clipped to 0 by it)
    opt = make_optimizer("sgd", model, lr=0.05)
    with pytest.raises(TrainingDiverged, match=r"training diverged: loss is nan at epoch 1, step 1"):
        train(model, opt, tiny_data(), epochs=1, batch_size=16)


def test_data_that_does_not_fit_the_model():
    model = build_model(3, [4], 3, seed=0)
    opt = make_optimizer("sgd", model, lr=0.1)
    with pytest.raises(ValueError, match="train data has 2 features per row, the model expects 3"):
        train(model, opt, tiny_data(), epochs=1)
    x_tr, y_tr, x_te, y_te = tiny_data()
    model = build_model(2, [4], 2, seed=0)
    with pytest.raises(ValueError, match="out of range"):
        train(model, make_optimizer("sgd", model, lr=0.1), (x_tr, y_tr, x_te, y_te), epochs=1)


def test_momentum_given_on_resume_saves_a_checkpoint_that_loads(tmp_path):
    """A run without momentum stopped after the last step of epoch 1, resumed with momentum
    (--momentum 0.9): that resume's first save (epoch 1 ends with no step of its own) had no
    momentum buffers after 6 steps, and loading it said 'damaged checkpoint'."""
    def stopped_with_momentum_on():
        model = build_model(2, [16], 3, seed=7)
        opt = make_optimizer("sgd", model, lr=0.05, momentum=0.0)
        calls = iter(range(10**6))
        with pytest.raises(TrainingInterrupted) as e:
            run(epochs=2, model=model, opt=opt, should_stop=lambda: next(calls) == 5)  # 6 steps/epoch
        assert (e.value.state.epoch, e.value.state.step) == (0, 6)
        opt.momentum = 0.9
        return model, opt, e.value.state

    model, opt, state = stopped_with_momentum_on()
    straight, _, _ = run(epochs=2, model=model, opt=opt, state=state)
    model, opt, state = stopped_with_momentum_on()
    run(epochs=1, model=model, opt=opt, state=state)
    save_checkpoint(tmp_path / "c.npz", model, opt, state, {})
    ck = load_checkpoint(tmp_path / "c.npz")
    opt2 = make_optimizer("sgd", ck.model, lr=0.05, momentum=0.9)
    opt2.load_state_dict(ck.optim_state)
    resumed, _, _ = run(epochs=2, model=ck.model, opt=opt2, state=ck.state)
    assert_same(weights(resumed), weights(straight))
