"""The Python training loop and checkpoints: history, schedules, divergence, bitwise resume,
atomic writes, and files that np.load(allow_pickle=False) and nb.load both read."""

import json
import math
import os
import tracemalloc

import numpy as np
import pytest

import nbnet as nb
from nbnet import checkpoint, datasets
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



@pytest.mark.parametrize("where", ["weights", "optimizer state"])
def test_a_checkpoint_is_never_written_with_nan_or_inf(tmp_path, where):
    """save_checkpoint's own check, behind nb.train's (which stops a diverged run first): a weight
    or a momentum buffer holding Inf is refused, and no file is left."""
    model, opt, _ = run(epochs=1, schedule="constant")
    if where == "weights":
        model.layers[0].weight[0, 0] = np.inf
    else:
        opt.state[0]["momentum_buffer"][3] = np.inf
    name = "layer0.weight" if where == "weights" else "optim/state/momentum_buffer.0"
    with pytest.raises(ValueError, match=rf"cannot save .*c\.npz: arrays {name} hold NaN or Inf"):
        save_checkpoint(tmp_path / "c.npz", model, opt, run.state, {})
    assert os.listdir(tmp_path) == []


def test_optimizer_state_holding_nan_is_refused_on_load(tmp_path):
    """A file whose momentum buffer holds NaN (damaged, or written by another tool) would resume
    into NaN weights at the first step: refused when read, naming the entry."""
    model, opt, _ = run(epochs=1, schedule="constant")
    save_checkpoint(tmp_path / "c.npz", model, opt, run.state, {})
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    key = next(k for k in arrays if k.startswith(checkpoint.STATE_PREFIX))
    arrays[key] = arrays[key].copy()
    arrays[key][0] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(ValueError, match=r"nan\.npz: optimizer state .* hold NaN or Inf"):
        load_checkpoint(tmp_path / "nan.npz")

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


def test_a_loss_whose_sum_over_the_epoch_overflows_stops_as_diverged_before_its_step():
    """float64 losses of 6e305: each step's sum is finite, the epoch's was inf, and train_loss inf made
    --save refuse the history after the epoch had trained ("holds NaN or Inf"); the test loss of
    the same rows already stopped the run as diverged."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 3)), 1e153 * rng.normal(size=256)
    model = nb.Sequential(nb.Linear(3, 1, seed=0, dtype=np.float64))
    opt, state = nb.SGD(model.parameters(), lr=1e-300), TrainState()
    with pytest.raises(TrainingDiverged, match=r"loss is \S+e\+305, the epoch's sum of them overflows, at epoch 1, step 7"):
        train(model, opt, (x, y), epochs=1, batch_size=32, loss="mse", state=state)
    assert state.step == 6 and math.isfinite(state.loss_sum) and opt.state_dict()["step_count"] == 6


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


def checkpoint_arrays(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_a_checkpoint_grows_by_the_numbers_of_an_epoch_not_by_the_text_of_its_history(tmp_path):
    """--save writes a checkpoint every epoch, and it held the whole history as JSON text in a
    4-bytes-a-character string (~800 bytes an epoch): each save wrote and encoded more than the
    last, and 3000 epochs of a tiny run took 101 s with --save, 17 s without."""
    model, opt, history = run(epochs=1)
    entry = dict(history[0], train_loss=math.pi, test_loss=math.e, seconds=1 / 3)  # full-length reprs
    sizes = []
    for epochs in (1, 2001):
        state = TrainState(epoch=epochs, step=6, history=[dict(entry, epoch=i + 1) for i in range(epochs)])
        save_checkpoint(tmp_path / f"{epochs}.npz", model, opt, state, {})
        sizes.append(os.path.getsize(tmp_path / f"{epochs}.npz"))
    assert sizes[1] - sizes[0] <= 2000 * 8 * len(entry) + 100  # a float64 per metric
    ck = load_checkpoint(tmp_path / "2001.npz")
    assert ck.state.history == state.history
    assert [list(m) for m in ck.state.history] == [list(m) for m in state.history]  # in their order
    assert all(type(m["epoch"]) is int for m in ck.state.history)


def test_a_version_1_checkpoint_loads_and_resumes_bitwise(tmp_path):
    """Version 1 (nbnet before train/history) kept the history in train/state's JSON."""
    straight, _, h4 = run(schedule="constant")
    model, opt, _ = run(epochs=2, schedule="constant")
    save_checkpoint(tmp_path / "c.npz", model, opt, run.state, {"seed": 7})
    arrays = checkpoint_arrays(tmp_path / "c.npz")
    state = json.loads(str(arrays.pop("train/state")))
    del state["history_keys"], arrays["train/history"]
    arrays["train/state"] = np.array(json.dumps({**state, "history": run.state.history}))
    arrays["checkpoint/version"] = np.array(1, np.int64)
    np.savez(tmp_path / "v1.npz", **arrays)
    ck = load_checkpoint(tmp_path / "v1.npz")
    assert ck.state == run.state
    opt2 = make_optimizer("sgd", ck.model, lr=1.0, momentum=0.9)
    opt2.load_state_dict(ck.optim_state)
    resumed, _, h = run(model=ck.model, opt=opt2, state=ck.state, schedule="constant")
    assert_same(weights(resumed), weights(straight))
    assert [m["test_loss"] for m in h] == [m["test_loss"] for m in h4]
    # saved again, in today's format, and an older nbnet's epochs without a metric stay without it
    del ck.state.history[0]["lr"]
    save_checkpoint(tmp_path / "c.npz", resumed, opt2, ck.state, {"seed": 7})
    assert load_checkpoint(tmp_path / "c.npz").state.history == ck.state.history


@pytest.mark.parametrize("change, fragment", [
    ({"train/history": None}, "no train/history"),
    ({"train/history": np.zeros((2, 8), np.float32)}, "train/history is (2, 8) float32, not float64 (epochs, 8)"),
    ({"train/history": np.zeros((2, 8), "<U3")}, "not float64"),
    ({"train/history": np.zeros(16)}, "train/history is (16,) float64"),
    ({"train/history": np.zeros((2, 7))}, "not float64 (epochs, 8)"),
    ({"train/history": np.zeros((1, 8))}, "not a list of one entry per epoch done"),
    ({"train/history": "inf"}, "train/history holds Inf"),
    ({"train/history": "nan epoch"}, "train/state history entry 1 is of epoch None"),
    ({"train/history": "1.5 epoch"}, "train/state history entry 2 is of epoch 1.5"),
    ({"history_keys": "epoch"}, "history_keys is not a list"),
    ({"history_keys": [1] * 8}, "history_keys is not a list"),
    ({"history_keys": ["epoch"] * 8}, "distinct names"),
    ({"history_keys": [str(i) for i in range(101)]}, "at most 100"),
    ({"history_keys": None}, "history_keys is not a list"),
])
def test_a_damaged_train_history_is_one_value_error(tmp_path, change, fragment):
    model, opt, history = run(epochs=2, schedule="constant")
    save_checkpoint(tmp_path / "c.npz", model, opt, run.state, {})
    arrays = checkpoint_arrays(tmp_path / "c.npz")
    state = json.loads(str(arrays["train/state"]))
    assert len(state["history_keys"]) == 8 and arrays["train/history"].shape == (2, 8)
    table = arrays["train/history"]
    named = {"inf": np.where(np.arange(8) == 1, np.inf, table), "nan epoch": np.where(np.arange(8) == 0, np.nan, table),
             "1.5 epoch": np.where(np.arange(8) == 0, [[1], [1.5]], table)}
    for key, value in change.items():
        if key == "history_keys":
            state[key] = value
        elif value is None:
            del arrays[key]
        else:
            arrays[key] = named.get(value, value) if isinstance(value, str) else value
    arrays["train/state"] = np.array(json.dumps(state))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="damaged checkpoint") as e:
        load_checkpoint(tmp_path / "bad.npz")
    assert fragment in str(e.value)


def test_a_train_history_too_large_for_memory_is_refused_before_it_is_built(tmp_path, monkeypatch):
    """Each stored float becomes a Python float in a dict (some 100 bytes): 16 times its size."""
    model, opt, _ = run(epochs=1)
    entry = {"epoch": 1, "train_loss": 1.0}
    state = TrainState(epoch=50_000, history=[dict(entry, epoch=i + 1) for i in range(50_000)])
    save_checkpoint(tmp_path / "c.npz", model, opt, state, {})  # 800 kB of history
    monkeypatch.setattr(nb.files, "memory_budget", lambda: 4 << 20)
    with pytest.raises(ValueError, match=r"c.npz: train/history \(50000, 2\) float64: needs"):
        load_checkpoint(tmp_path / "c.npz")


def test_a_version_1_history_too_large_for_memory_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    """Version 1 kept the history in train/state's JSON text, which read_npz counts at its stored 4
    bytes a character; parsed, nested empty lists take some 43 bytes a character. The text is
    refused, as train/history is, before any of it is built."""
    model, opt, _ = run(epochs=1)
    save_checkpoint(tmp_path / "c.npz", model, opt, run.state, {})
    arrays = checkpoint_arrays(tmp_path / "c.npz")
    state = json.loads(str(arrays.pop("train/state")))
    del state["history_keys"], arrays["train/history"]
    arrays["train/state"] = np.array(json.dumps({**state, "history": "X"}).replace('"X"', "[" + "[[[]]]," * 40_000 + "0]"))
    arrays["checkpoint/version"] = np.array(1, np.int64)
    np.savez(tmp_path / "v1.npz", **arrays)  # 280 000 characters: 1.1 MB stored, 12 MB parsed
    budget = 4 << 20
    monkeypatch.setattr(nb.files, "memory_budget", lambda: budget)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"v1.npz: train/state, JSON text of 28\d{4} characters: needs"):
            load_checkpoint(tmp_path / "v1.npz")
        assert tracemalloc.get_traced_memory()[1] < budget
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The arrays of a checkpoint after 2 epochs (12 steps, momentum buffers), its JSON entries as
    Python objects, and a function that loads them with some entries replaced. In version 1's
    layout, the history in train/state, so that a test can set any part of the state as one JSON
    object: version 2's train/history is read into the same {name: number} entries, which
    _check_state then checks alike (its own checks: test_a_damaged_train_history_is_one_value_error)."""
    model, opt, _ = run(epochs=2, schedule="constant")
    path = tmp_path_factory.mktemp("saved") / "c.npz"
    save_checkpoint(path, model, opt, run.state, {"seed": 7, "hidden": [16]}, data="data 90x2 features 0 labels 0")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    state = json.loads(str(arrays["train/state"]))
    del state["history_keys"], arrays["train/history"]
    arrays["train/state"] = np.array(json.dumps({**state, "history": run.state.history}))
    arrays["checkpoint/version"] = np.array(1, np.int64)
    entries = {k: json.loads(str(arrays[k])) for k in ("train/state", "optim/meta", "train/config")}

    def load(**changes):
        changed = dict(arrays)
        for key, value in changes.items():
            changed[key.replace("__", "/")] = np.array(json.dumps(value))
        out = path.with_name("changed.npz")
        np.savez(out, **changed)
        return load_checkpoint(out)

    return entries, load


def with_val(history, *losses):
    return [{**m, "val_loss": v} for m, v in zip(history, losses)]


BIG = 2**53 + 1  # past MAX_COUNT: a count a float64 no longer holds exactly


@pytest.mark.parametrize("change, fragment", [
    ({"seen": BIG, "correct": 0}, "train/state seen"),
    ({"seen": 16, "correct": 17, "loss_sum": 0.5}, "more correct rows"),  # one past: 16 of 16 loads (below)
    ({"step": BIG}, "train/state step"),
    ({"loss_sum": -1.0}, "train/state loss_sum"),  # a mean loss below 0: no loss nbnet has
    ({"seconds": -1.0}, "train/state seconds"),
    ({"history": "wide"}, "not {name: finite number}"),  # 101 metrics in an entry: past MAX_HISTORY_KEYS
    # the best epoch out of 1 .. epochs: 0 read history[-1] as its entry, 3 was an IndexError
    ({"history": "val", "best_epoch": 0, "best_val_loss": 0.6, "bad_epochs": 2}, "best_epoch or bad_epochs"),
    ({"history": "val", "best_epoch": 3, "best_val_loss": 0.4, "bad_epochs": 0}, "best_epoch or bad_epochs"),
])
def test_train_state_out_of_its_ranges_is_a_damaged_checkpoint(saved, change, fragment):
    """Each bound of the train/state schema (checkpoint._check_state), alone: the rest of the state fits."""
    entries, load = saved
    st = entries["train/state"]
    named = {"val": with_val(st["history"], 0.4, 0.6),
             "wide": [st["history"][0], {"epoch": 2, **{f"m{i}": 0.0 for i in range(checkpoint.MAX_HISTORY_KEYS)}}]}
    history = change.get("history", st["history"])
    state = {**st, **change, "history": named.get(str(history), history)}
    meta = {**entries["optim/meta"], "step_count": state["step"]}
    with pytest.raises(ValueError, match="damaged checkpoint") as e:
        load(train__state=state, optim__meta=meta)
    assert fragment in str(e.value)


def test_a_checkpoint_of_a_newer_format_is_refused_as_such(tmp_path):
    """A format this nbnet does not know is not read as its own (as a damaged file it would be
    reported wrongly, as the current format it would be misread)."""
    model, opt, _ = run(epochs=1, schedule="constant")
    path = tmp_path / "c.npz"
    save_checkpoint(path, model, opt, run.state, {"seed": 7})
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    assert int(arrays["checkpoint/version"]) == checkpoint.CHECKPOINT_VERSION
    for version in (checkpoint.CHECKPOINT_VERSION + 1, 2**40):
        arrays["checkpoint/version"] = np.array(version, np.int64)
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=rf"written by a newer nbnet \(checkpoint version {version}\)$"):
            load_checkpoint(path)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_history_metric_of_nan_or_inf_is_not_saved(tmp_path, value):
    """train/history stores an epoch's missing metric as NaN: a NaN metric saved would load as no
    metric at all, silently, so neither it nor Inf is saved."""
    model, opt, _ = run(epochs=1, schedule="constant")
    run.state.history[0]["test_loss"] = value
    with pytest.raises(ValueError, match="the training history holds NaN or Inf"):
        save_checkpoint(tmp_path / "c.npz", model, opt, run.state, {"seed": 7})
    assert not (tmp_path / "c.npz").exists()


def test_a_mid_epoch_state_with_every_row_right_loads(saved):
    """`correct` may equal `seen` (a perfect running accuracy): only more is damage."""
    entries, load = saved
    ck = load(train__state={**entries["train/state"], "seen": 16, "correct": 16, "loss_sum": 0.5})
    assert (ck.state.seen, ck.state.correct) == (16, 16)


@pytest.mark.parametrize("change, fragment", [
    ({"optim__meta": "momentum 1.5"}, "optim/meta momentum"),  # each step's buffer grows: a diverged run
    ({"train__config": "many"}, "train/config is not a JSON object of options"),
    ({"train__config": "long"}, "train/config hidden"),
    ({"train__config": "nested"}, "train/config hidden"),  # an option value is a scalar or a list of them
    ({"train__data": "x" * 1001}, "train/data is not a data fingerprint"),
])
def test_metadata_past_its_sizes_and_ranges_is_a_damaged_checkpoint(saved, change, fragment):
    """The bounds of optim/meta, train/config and train/data: momentum in [0, 1], at most 200 options,
    option strings up to 4096 characters, a fingerprint up to 1000."""
    entries, load = saved
    named = {"momentum 1.5": {**entries["optim/meta"], "momentum": 1.5},
             "many": {**entries["train/config"], **{f"option{i}": 1 for i in range(200)}},
             "long": {**entries["train/config"], "hidden": "1," * 2049},
             "nested": {**entries["train/config"], "hidden": [[16]]}}
    with pytest.raises(ValueError, match="damaged checkpoint") as e:
        load(**{key: named.get(value, value) for key, value in change.items()})
    assert fragment in str(e.value)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_ctrl_c_during_a_step_of_nb_train_resumes_from_state_bitwise(optimizer):
    """Ctrl-C in nb.train (a notebook's interrupt) raised KeyboardInterrupt where it fell: after
    opt.step() had moved the weights (and counted Adam's step) but before `state` counted the
    step, so a call resumed from that state took the step again (seen in 3 of 8 runs interrupted
    at random moments). It is raised once the step is counted, still as KeyboardInterrupt."""
    import signal  # noqa: PLC0415

    straight, opt_s, _ = run(optimizer, epochs=3)
    model = build_model(2, [16], 3, seed=7)
    opt = make_optimizer(optimizer, model, lr=0.05 if optimizer == "sgd" else 0.01, momentum=0.9)
    real_step, steps = opt.step, iter(range(10**6))

    def step_then_ctrl_c():  # the signal lands as the step's kernels return
        real_step()
        if next(steps) in (4, 5, 11):  # mid-epoch, the last step of epoch 1, and of epoch 2
            os.kill(os.getpid(), signal.SIGINT)

    opt.step = step_then_ctrl_c
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's, whatever the test runner's
    try:
        state, stops = TrainState(), 0
        while True:
            try:
                run(optimizer, epochs=3, model=model, opt=opt, state=state)
                break
            except KeyboardInterrupt:
                stops += 1
                assert state.step == opt.step_count
    finally:
        signal.signal(signal.SIGINT, old)
    assert stops == 3
    assert_same(weights(model), weights(straight))
    assert opt.state_dict()["step_count"] == opt_s.state_dict()["step_count"]


def test_a_flipped_bit_that_hides_members_of_a_checkpoint_is_an_error(tmp_path):
    """zipfile lists the members its central directory holds, up to the size the end record gives
    it: a bit flipped in the length of one member's comment read the members after it as that
    comment, silently, and a checkpoint without its train/*, optim/* and checkpoint/version
    entries loaded as a plain model (`nbnet predict` on an mse checkpoint printed classes, exit 0).
    The end record's count of members is checked against the list."""
    import struct  # noqa: PLC0415

    model, opt, _ = run(epochs=1)
    path = tmp_path / "c.npz"
    save_checkpoint(path, model, opt, run.state, {})
    raw = path.read_bytes()
    end = raw.rfind(b"PK\x05\x06")
    count, size, start = struct.unpack("<HII", raw[end + 10:end + 20])
    entries, pos = [], start
    while pos < start + size:  # each central directory entry: 46 bytes, then name, extra, comment
        name, extra, comment = struct.unpack("<HHH", raw[pos + 28:pos + 34])
        entries.append(pos)
        pos += 46 + name + extra + comment
    assert len(entries) == count
    for pos in entries:
        for bit in (0x01, 0x80):  # the comment length's high byte: 256 or 32768 more bytes
            flipped = bytearray(raw)
            flipped[pos + 33] ^= bit
            (tmp_path / "f.npz").write_bytes(bytes(flipped))
            try:
                ck = load_checkpoint(tmp_path / "f.npz")
            except ValueError as e:
                assert "f.npz: " in str(e)
                continue
            # the last member's comment runs into the end record: it hides no member
            assert pos == entries[-1] and ck.state == run.state and ck.optim_state["step_count"] == 6
            assert_same(weights(ck.model), weights(model))
