"""Training checkpoints: one .npz of plain arrays (np.load(allow_pickle=False) and nb.load read it).

    nbnet/architecture, layer<i>.<name>   the model, exactly as Sequential.save writes it
    optim/state/<name>.<i>                 optimizer state arrays (momentum buffers, Adam moments)
    optim/meta                             JSON: the rest of optimizer.state_dict() (type, hyper-parameters, step_count)
    train/state                            JSON: epochs and steps done, the running sums of the epoch in
                                           progress, the names of the per-epoch metrics (history_keys),
                                           and the best validation loss so far, its epoch and the
                                           epochs since it
    train/history                          float64 (epochs, len(history_keys)): each epoch's metrics, NaN
                                           where an epoch has no such metric (those of older nbnets)
    train/config                           JSON: the resolved `nbnet train` options
    train/data                             JSON: the data's shapes and CRCs (dist.data_fingerprint), so
                                           that --resume on a dataset that changed since is refused;
                                           absent in checkpoints written before it existed
    checkpoint/version                     int64 format version

Version 1 kept the history in train/state as JSON: a checkpoint is written every epoch, and the
text of the whole history (float reprs, 4 bytes a character) made each save cost more than the
last, a long run's saves its square. Version 1 files still load and resume.

There is no RNG state to store: shuffling is seeded with (seed, epoch) and initialisation with
(seed, layer), so the seed in the config reproduces every random draw.
"""

import itertools
import json
import math
import os

import numpy as np

from .files import check_memory, described, read_npz, write_npz_atomic
from .layers import Linear
from .model import check_finite, json_entry, model_from_arrays
from .train import TrainState

CHECKPOINT_VERSION = 2
STATE_PREFIX = "optim/state/"
MAX_COUNT = 2**53  # epochs, steps, rows: whole numbers a float64 holds exactly
MAX_HISTORY_KEYS = 100
HISTORY_VALUE_BYTES = 128  # memory of one history value loaded: a float in a dict, its row's list


def _json(obj):
    return np.array(json.dumps(obj, allow_nan=False))


def _history_table(history):
    """The per-epoch metrics as train/history stores them: (names, float64 (epochs, names)),
    NaN where an epoch has no such metric."""
    keys = list(dict.fromkeys(itertools.chain.from_iterable(history)))
    table = np.array([[m.get(key, math.nan) for key in keys] for m in history], np.float64)
    table = table.reshape(len(history), len(keys))
    # NaN is "absent", so a metric that is NaN or Inf must not pass as one (JSON refused them too)
    absent = table.size - sum(len(m) for m in history)
    if np.isinf(table).any() or np.isnan(table).sum() != absent:
        raise ValueError("the training history holds NaN or Inf")
    return keys, table


def _stored_history(keys, table, bad, source):
    """train/history (and its names, train/state's history_keys) as the list of {name: number} a
    version 1 train/state held, checked before anything is built from it."""
    if not isinstance(keys, list) or len(keys) > MAX_HISTORY_KEYS or not all(isinstance(k, str) for k in keys) \
            or len(set(keys)) != len(keys):
        raise bad(f"train/state history_keys is not a list of at most {MAX_HISTORY_KEYS} distinct names")
    if table is None:
        raise bad("no train/history")
    if table.dtype != np.float64 or table.ndim != 2 or table.shape[1] != len(keys):
        raise bad(f"train/history is {described(table.shape, table.dtype)}, not float64 (epochs, {len(keys)})")
    check_memory(table.size * HISTORY_VALUE_BYTES, f"{source}: train/history {described(table.shape, table.dtype)}")
    if np.isinf(table).any():
        raise bad("train/history holds Inf")
    history = []
    for row in table.tolist():
        m = {key: v for key, v in zip(keys, row) if not math.isnan(v)}  # NaN: not a metric of that epoch
        if isinstance(m.get("epoch"), float) and m["epoch"].is_integer():
            m["epoch"] = int(m["epoch"])
        history.append(m)
    return history


def _kept_state(sd):
    """The state arrays an optimizer keeps after its steps (momentum buffers, Adam's moments), one
    per parameter, as its state_dict `sd` (without "state") says: what a checkpoint must hold."""
    if not sd.get("step_count", 0):
        return ()
    if sd["type"] != "SGD":
        return ("exp_avg", "exp_avg_sq")
    return ("momentum_buffer",) if sd.get("momentum", 0) > 0 else ()


def save_checkpoint(path, model, opt, state, config, data=None):
    """Write everything a resume needs, atomically (temp file + rename). Weights or optimizer
    state holding NaN or Inf are an error: a diverged run is never saved as a good one. `data`:
    the training data's fingerprint (dist.data_fingerprint), if known."""
    arrays = model.state_arrays()
    sd = opt.state_dict()
    optim_state = sd.pop("state")
    # Momentum given on resume to a run without it (--momentum 0.9) has no buffers before its first
    # step, and a save can come first (the epoch it stopped in had no step left). Zeros are what
    # that step starts from (b = μ·0 + g = g, torch's first step); without them, no load.
    for name in _kept_state(sd):
        for i, p in enumerate(opt.params):
            optim_state.setdefault(f"{name}.{i}", np.zeros(p.data.size, p.data.dtype))
    for key, arr in optim_state.items():
        arrays[STATE_PREFIX + key] = arr
    check_finite(arrays, f"cannot save {os.fspath(path)}", "arrays")
    arrays["optim/meta"] = _json(sd)
    history_keys, arrays["train/history"] = _history_table(state.history)
    arrays["train/state"] = _json({
        "epoch": state.epoch, "step": state.step, "loss_sum": state.loss_sum, "correct": state.correct,
        "seen": state.seen, "seconds": state.seconds, "history_keys": history_keys,
        "best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs,
    })
    arrays["train/config"] = _json(config)
    if data is not None:
        arrays["train/data"] = _json(data)
    arrays["checkpoint/version"] = np.array(CHECKPOINT_VERSION, np.int64)
    write_npz_atomic(path, arrays)


# ---------------------------------------------------------------------------------------------
# The schema of what a checkpoint stores beside the model (the model's own: nbnet.model).


def _is_int(v, lo=0, hi=MAX_COUNT):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_num(v, lo=-math.inf, hi=math.inf):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def _is_plain(v):
    """A JSON scalar (finite), or a short list of them: what an option value can be."""
    if v is None or isinstance(v, (bool, str)):
        return isinstance(v, bool) or v is None or len(v) <= 4096
    if isinstance(v, (int, float)):
        return math.isfinite(v)
    if isinstance(v, list):
        return len(v) <= 1000 and all(_is_plain(x) and not isinstance(x, list) for x in v)
    return False


def _check_state(st, bad, labels_per_row=1):
    """labels_per_row: what one row adds to `correct` at most (bce counts every label it gets right)."""
    if not isinstance(st, dict):
        raise bad("train/state is not a JSON object")
    rules = {"epoch": _is_int, "step": _is_int, "correct": _is_int, "seen": _is_int,
             "loss_sum": lambda v: _is_num(v, 0), "seconds": lambda v: _is_num(v, 0)}
    for key, ok in rules.items():
        if not ok(st.get(key)):
            raise bad(f"train/state {key} = {str(st.get(key))[:40]} is not valid")
    if st["correct"] > st["seen"] * labels_per_row:
        raise bad("train/state counts more correct rows (or labels) than it has seen")
    # Each epoch done appended its entry: the run reports (--metrics-out, --plot) and picks its
    # best epoch from them, so one missing is a run that no longer fits its own record.
    history = st.get("history")
    if not isinstance(history, list) or len(history) != st["epoch"]:
        raise bad("train/state history is not a list of one entry per epoch done")
    for i, m in enumerate(history):
        if not isinstance(m, dict) or len(m) > MAX_HISTORY_KEYS or not all(
            isinstance(k, str) and _is_num(v) for k, v in m.items()
        ):
            raise bad("train/state history holds an entry that is not {name: finite number}")
        if m.get("epoch") != i + 1:
            raise bad(f"train/state history entry {i + 1} is of epoch {str(m.get('epoch'))[:40]}")
    # model selection (absent from checkpoints written before validation existed)
    best_val_loss, best_epoch, bad_epochs = st.get("best_val_loss"), st.get("best_epoch"), st.get("bad_epochs", 0)
    if not (best_val_loss is None or _is_num(best_val_loss)):
        raise bad(f"train/state best_val_loss = {str(best_val_loss)[:40]} is not valid")
    if not (best_epoch is None or _is_int(best_epoch, 1, st["epoch"])) or not _is_int(bad_epochs, 0, st["epoch"]):
        raise bad("train/state best_epoch or bad_epochs is not valid")
    # The best epoch is the history's entry of that loss, and the epochs since it are the patience
    # early stopping counts: else a resumed run stops early at once, or never, or reports the best
    # epoch from an entry that has no validation loss.
    if (best_epoch is None) != (best_val_loss is None) or (best_epoch is not None and (
            history[best_epoch - 1].get("val_loss") != best_val_loss or bad_epochs != st["epoch"] - best_epoch)):
        raise bad("train/state best_epoch, best_val_loss and bad_epochs do not fit its history")
    if best_epoch is None and bad_epochs:
        raise bad("train/state counts epochs since a best epoch it does not have")
    return TrainState(epoch=st["epoch"], step=st["step"], history=history, loss_sum=float(st["loss_sum"]),
                      correct=st["correct"], seen=st["seen"], seconds=float(st["seconds"]),
                      best_val_loss=None if best_val_loss is None else float(best_val_loss),
                      best_epoch=best_epoch, bad_epochs=bad_epochs)


# Hyper-parameters an optimizer stores (nbnet.optim), and what each may be; others must be
# finite numbers or booleans.
_HYPER = {
    "lr": lambda v: _is_num(v, 0),
    "momentum": lambda v: _is_num(v, 0, 1),
    "weight_decay": lambda v: _is_num(v, 0),
    "eps": lambda v: _is_num(v, 0),
    "nesterov": lambda v: isinstance(v, bool),
    # in [0, 1), as Adam takes them: a step divides by 1 - β1^t and by √(1 - β2^t)
    "betas": lambda v: isinstance(v, list) and len(v) == 2 and all(_is_num(b, 0, 1) and b < 1 for b in v),
    "step_count": _is_int,
}


def _check_optim_meta(sd, bad, dtype):
    from .optim import OPTIMIZERS  # noqa: PLC0415

    types = {cls.__name__ for cls in OPTIMIZERS.values()}
    if not isinstance(sd, dict) or not isinstance(sd.get("type"), str) or sd["type"] not in types:
        raise bad(f"optim/meta names no known optimizer (one of {', '.join(sorted(types))})")
    top = float(np.finfo(dtype).max)
    for key, value in sd.items():
        if key == "type":
            continue
        ok = _HYPER.get(key, lambda v: isinstance(v, bool) or _is_num(v))
        if not ok(value):
            raise bad(f"optim/meta {key} = {str(value)[:40]} is not valid")
        # Each step casts the hyper-parameters to the weights' dtype: past its range they would
        # become Inf (with a RuntimeWarning) and the run would diverge.
        values = value if isinstance(value, list) else [value]
        if key != "step_count" and any(_is_num(v) and abs(v) > top for v in values):
            raise bad(f"optim/meta {key} = {str(value)[:40]} is too large for {np.dtype(dtype).name}")
    return sd


def _check_config(config, bad):
    if not isinstance(config, dict) or len(config) > 200:
        raise bad("train/config is not a JSON object of options")
    for key, value in config.items():
        if not _is_plain(value):
            raise bad(f"train/config {key} = {str(value)[:40]} is not an option value")
    return config


class Checkpoint:
    """A loaded checkpoint: .model (Sequential), .config (dict), .state (TrainState),
    .optim_state (a state_dict for optimizer.load_state_dict), .data (the data's fingerprint, or
    None if the file has none). For a file that `Sequential.save` wrote, only .model: .config is
    {} and .state, .optim_state, .data are None.

    Everything is checked against the schema above (types, ranges, sizes) and the arrays against
    the architecture before anything is built; NaN or Inf anywhere is an error. The option values
    in .config are checked again, as command-line values, by `nbnet train --resume`."""

    def __init__(self, path):
        path = os.fspath(path)
        arrays = read_npz(path)
        self.path = path
        self.model = model_from_arrays(arrays, source=path)
        self.config, self.state, self.optim_state, self.data = {}, None, None, None
        if "checkpoint/version" not in arrays:  # a model.save file: a model, nothing to resume
            return

        def bad(why):
            return ValueError(f"{path}: damaged checkpoint ({why})")

        version = arrays["checkpoint/version"]
        if version.shape != () or version.dtype.kind not in "iu":
            raise bad("checkpoint/version is not an integer")
        if int(version) < 1:  # versions count from 1: 0 or -1 was read as the current format
            raise bad(f"checkpoint/version {int(version)}")
        if int(version) > CHECKPOINT_VERSION:
            raise ValueError(f"{path}: written by a newer nbnet (checkpoint version {int(version)})")
        for key in ("train/config", "train/state", "optim/meta"):
            if key not in arrays:
                raise bad(f"no {key}")
        self.config = _check_config(json_entry(arrays, "train/config", path), bad)
        # bce's `correct` counts labels: a multi-label run stopped mid-epoch holds more than `seen`
        outputs = [layer for layer in self.model.layers if isinstance(layer, Linear)][-1].out_features
        per_row = outputs if self.config.get("loss") == "bce" else 1
        st = json_entry(arrays, "train/state", path)
        if int(version) >= 2 and isinstance(st, dict):
            st["history"] = _stored_history(st.get("history_keys"), arrays.get("train/history"), bad, path)
        self.state = _check_state(st, bad, per_row)
        sd = _check_optim_meta(json_entry(arrays, "optim/meta", path), bad, self.model.dtype)
        state = {k[len(STATE_PREFIX):]: v for k, v in arrays.items() if k.startswith(STATE_PREFIX)}
        check_finite(state, path, "optimizer state")
        # Adam's v is a running mean of squares; a step takes its square root
        negative = next((k for k, v in state.items() if k.startswith("exp_avg_sq.") and v.dtype.kind == "f"
                         and (v < 0).any()), None)
        if negative is not None:
            raise bad(f"optimizer state {negative} holds a negative value (a mean of squares)")
        # Each step done stepped the optimizer once and made every state array it keeps (momentum
        # buffers, Adam's moments), one per parameter. A step count that differs (Adam's bias
        # correction reads it) or a missing array (restarted from zeros) would resume another run.
        if sd.get("step_count", 0) != self.state.step:
            raise bad(f"optim/meta step_count {sd.get('step_count', 0)} is not the {self.state.step} steps done")
        missing = [f"{name}.{i}" for name in _kept_state(sd) for i in range(len(self.model.parameters()))
                   if f"{name}.{i}" not in state]
        if missing:
            raise bad(f"no optimizer state {missing[0]} after {self.state.step} steps")
        sd["state"] = state
        self.optim_state = sd
        if "train/data" in arrays:
            self.data = json_entry(arrays, "train/data", path)
            if not isinstance(self.data, str) or len(self.data) > 1000:
                raise bad("train/data is not a data fingerprint")


def load_checkpoint(path):
    return Checkpoint(path)
