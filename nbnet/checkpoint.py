"""Training checkpoints: one .npz of plain arrays (np.load(allow_pickle=False) and nb.load read it).

    nbnet/architecture, layer<i>.<name>   the model, exactly as Sequential.save writes it
    optim/state/<name>.<i>                 optimizer state arrays (momentum buffers, Adam moments)
    optim/meta                             JSON: the rest of optimizer.state_dict() (type, hyper-parameters, step_count)
    train/state                            JSON: epochs and steps done, the running sums of the epoch in
                                           progress, the history of per-epoch metrics, and the best
                                           validation loss so far, its epoch and the epochs since it
    train/config                           JSON: the resolved `nbnet train` options
    checkpoint/version                     int64 format version

There is no RNG state to store: shuffling is seeded with (seed, epoch) and initialisation with
(seed, layer), so the seed in the config reproduces every random draw.
"""

import json
import os

import numpy as np

from .model import model_from_arrays, read_npz, write_npz_atomic
from .train import TrainState

CHECKPOINT_VERSION = 1
STATE_PREFIX = "optim/state/"


def _json(obj):
    return np.array(json.dumps(obj))


def save_checkpoint(path, model, opt, state, config):
    """Write everything a resume needs, atomically (temp file + rename)."""
    arrays = model.state_arrays()
    sd = opt.state_dict()
    for key, arr in sd.pop("state").items():
        arrays[STATE_PREFIX + key] = arr
    arrays["optim/meta"] = _json(sd)
    arrays["train/state"] = _json({
        "epoch": state.epoch, "step": state.step, "loss_sum": state.loss_sum, "correct": state.correct,
        "seen": state.seen, "seconds": state.seconds, "history": state.history,
        "best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs,
    })
    arrays["train/config"] = _json(config)
    arrays["checkpoint/version"] = np.array(CHECKPOINT_VERSION, np.int64)
    write_npz_atomic(path, arrays)


class Checkpoint:
    """A loaded checkpoint: .model (Sequential), .config (dict), .state (TrainState),
    .optim_state (a state_dict for optimizer.load_state_dict). For a file that `Sequential.save`
    wrote, only .model: .config is {} and .state, .optim_state are None."""

    def __init__(self, path):
        path = os.fspath(path)
        arrays = read_npz(path)
        self.path = path
        self.model = model_from_arrays(arrays, source=path)
        self.config, self.state, self.optim_state = {}, None, None
        if "checkpoint/version" not in arrays:  # a model.save file: a model, nothing to resume
            return
        version = int(arrays["checkpoint/version"])
        if version > CHECKPOINT_VERSION:
            raise ValueError(f"{path}: written by a newer nbnet (checkpoint version {version})")
        try:
            self.config = json.loads(str(arrays["train/config"]))
            st = json.loads(str(arrays["train/state"]))
            sd = json.loads(str(arrays["optim/meta"]))
            self.state = TrainState(
                epoch=int(st["epoch"]), step=int(st["step"]), history=list(st["history"]),
                loss_sum=float(st["loss_sum"]), correct=int(st["correct"]), seen=int(st["seen"]),
                seconds=float(st["seconds"]),
                # absent from checkpoints written before validation existed: no best epoch yet
                best_val_loss=None if st.get("best_val_loss") is None else float(st["best_val_loss"]),
                best_epoch=None if st.get("best_epoch") is None else int(st["best_epoch"]),
                bad_epochs=int(st.get("bad_epochs", 0)),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: damaged checkpoint ({type(e).__name__}: {e})") from None
        sd["state"] = {k[len(STATE_PREFIX):]: v for k, v in arrays.items() if k.startswith(STATE_PREFIX)}
        self.optim_state = sd


def load_checkpoint(path):
    return Checkpoint(path)
