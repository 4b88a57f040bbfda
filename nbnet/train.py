"""The training loop, usable from Python as well as from `nbnet train`.

    model = build_model(784, [256, 128], 10, seed=0)
    opt = make_optimizer("sgd", model, lr=0.1, momentum=0.9)
    history = train(model, opt, (x_train, y_train, x_test, y_test), epochs=4, lr_schedule="cosine")

Bitwise reproducible and resumable: layer i is initialised from seed (seed, i), epoch e's batches
are shuffled with seed (seed, e), and the learning rate is a pure function of the global step. So a
`TrainState` (epochs and steps done, plus the running sums of the epoch in progress), the weights
and the optimizer state are all a resumed run needs to continue exactly where it stopped.

The same loop runs a model moved to the GPU: batches come from `batch_source` (a DeviceDataset,
copied over once, for a GPU model), and per step only the loss and the count of correct rows come
back to the host.
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .check import compile_kernels
from .data import batches, batches_reusing
from .layers import Linear, ReLU, Sigmoid, Tanh, kernels
from .losses import SoftmaxCrossEntropy, check_labels
from .model import Sequential, to_host
from .optim import OPTIMIZERS

ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}
SCHEDULES = ("constant", "cosine", "step")
STEP_DECAY = 0.1  # the `step` schedule multiplies the rate by this every max(1, epochs // 3) epochs


class TrainingDiverged(ValueError):
    """The loss became NaN or Inf."""


class TrainingInterrupted(Exception):
    """`should_stop()` said stop; `.state` is the state after the last completed step."""

    def __init__(self, state):
        super().__init__(f"interrupted after epoch {state.epoch}, step {state.step}")
        self.state = state


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed, over all epochs
    history: list = field(default_factory=list)  # one metrics dict per completed epoch
    # Sums over the completed steps of the epoch in progress (so a mid-epoch resume reports the
    # same epoch metrics as a run that never stopped).
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


def build_model(in_features, hidden, classes, activation="relu", dtype=np.float32, seed=0):
    """in -> hidden[0] -> ... -> classes, `activation` between Linear layers; logits out.
    Linear layer i is initialised from seed (seed, i)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r} (use {', '.join(ACTIVATIONS)})")
    sizes = [in_features, *hidden, classes]
    layers = []
    for i in range(len(sizes) - 1):
        if i:
            layers.append(ACTIVATIONS[activation]())
        layers.append(Linear(sizes[i], sizes[i + 1], dtype=dtype, seed=(seed, i)))
    return Sequential(layers)


def make_optimizer(name, model, lr, momentum=0.0, weight_decay=None):
    """SGD (with momentum), Adam or AdamW; weight_decay None means the optimizer's default."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (use {', '.join(OPTIMIZERS)})")
    kwargs = {"lr": lr}
    if weight_decay is not None:
        kwargs["weight_decay"] = weight_decay
    if name == "sgd":
        kwargs["momentum"] = momentum
    return OPTIMIZERS[name](model.parameters(), **kwargs)


def learning_rate(schedule, lr, step, epoch, epochs, steps_per_epoch):
    """The rate for the optimizer step `step` (0-based, global) in epoch `epoch` (0-based).
    constant: lr.  cosine: lr · ½(1 + cos(π t / T)), t = step, T = epochs · steps_per_epoch.
    step: lr · 0.1^⌊epoch / max(1, epochs // 3)⌋."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / (epochs * steps_per_epoch)))
    if schedule == "step":
        return lr * STEP_DECAY ** (epoch // max(1, epochs // 3))
    raise ValueError(f"unknown lr schedule {schedule!r} (use {', '.join(SCHEDULES)})")


def batch_source(model, x, y):
    """`batches(batch_size, shuffle, seed)` over (x, y) where the model lives: on the host, gathered
    into reused buffers (no allocation per step); for a model on the GPU, from a DeviceDataset
    copied over once. Both give exactly the batches of `nbnet.batches`."""
    if isinstance(model.parameters()[0].data, np.ndarray):
        return lambda batch_size, shuffle, seed=None: batches_reusing(x, y, batch_size, shuffle, seed)
    from .gpu import DeviceDataset  # noqa: PLC0415

    return DeviceDataset(x, y).batches


def evaluate(model, x, y, batch_size=1000, source=None):
    """(mean loss, accuracy) of the model on (x, y), in batches."""
    loss_fn = SoftmaxCrossEntropy()
    loss_sum, correct = 0.0, 0
    source = batch_source(model, x, y) if source is None else source
    for xb, yb in source(batch_size, shuffle=False):
        logits = model.forward(xb)
        loss_sum += loss_fn.forward(logits, yb) * len(yb)
        correct += kernels(logits).count_correct(logits, yb)
    return loss_sum / len(y), correct / len(y)


def predict(model, x, batch_size=1000):
    """Predicted classes (N,) and class probabilities (N, C)."""
    from .layers import Softmax  # noqa: PLC0415

    softmax = Softmax()
    probs = [to_host(softmax.forward(model.forward(xb))).copy() for xb, _ in
             batches(x, np.zeros(len(x)), batch_size, shuffle=False)]
    probs = np.concatenate(probs)
    return probs.argmax(axis=1), probs


def check_data(model, data):
    """The data must fit the model: feature count, dtype, labels within its classes."""
    first = next(layer for layer in model.layers if isinstance(layer, Linear))
    last = [layer for layer in model.layers if isinstance(layer, Linear)][-1]
    for part, x, y in (("train", data[0], data[1]), ("test", data[2], data[3])):
        if x.ndim != 2 or x.shape[1] != first.in_features:
            raise ValueError(
                f"{part} data has {x.shape[1:]} features per row, the model expects {first.in_features}"
            )
        if len(x) == 0:
            raise ValueError(f"{part} data is empty")
        check_labels(f"{part} data", y, len(x), last.out_features)


def train(model, opt, data, *, epochs, batch_size=128, seed=0, lr_schedule="constant", lr=None,
          state=None, on_step=None, on_epoch=None, should_stop=None, eval_batch_size=1000):
    """Train up to `epochs` epochs in total (continuing from `state`), and return the history:
    one dict per epoch with epoch, train_loss, train_accuracy, test_loss, test_accuracy, lr,
    seconds, samples_per_second.

    data: (x_train, y_train, x_test, y_test), host arrays in the model's dtype.
    lr: the base rate of the schedule (default: the optimizer's rate on entry).
    on_step(state, batch, n_batches, running_loss) after each step; on_epoch(state, metrics) after
    each epoch; should_stop() is asked after each step: True raises TrainingInterrupted(state).
    Raises TrainingDiverged (a ValueError) on a NaN/Inf loss, before that step updates anything.
    """
    x_train, y_train, x_test, y_test = data
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_data(model, data)
    base_lr = opt.lr if lr is None else lr
    state = TrainState() if state is None else state
    n = len(x_train)
    steps_per_epoch = math.ceil(n / batch_size)
    loss_fn = SoftmaxCrossEntropy()
    train_batches = batch_source(model, x_train, y_train)
    test_batches = batch_source(model, x_test, y_test)
    # Compile (or load from Numba's cache) every kernel now, on a throwaway copy, so that epoch 1's
    # seconds and samples/s measure training, not compilation.
    compile_kernels(model, opt, np.asarray(y_train).dtype)

    while state.epoch < epochs:
        epoch = state.epoch
        skip = state.step - epoch * steps_per_epoch  # steps of this epoch done before a resume
        if not 0 <= skip <= steps_per_epoch:  # == : stopped after its last step
            raise ValueError(
                f"training state (epoch {epoch}, step {state.step}) does not fit "
                f"{steps_per_epoch} steps per epoch: was the batch size or the data changed?"
            )
        t0 = time.perf_counter()
        for b, (xb, yb) in enumerate(train_batches(batch_size, shuffle=True, seed=(seed, epoch))):
            if b < skip:
                continue
            opt.lr = learning_rate(lr_schedule, base_lr, state.step, epoch, epochs, steps_per_epoch)
            opt.zero_grad()
            logits = model.forward(xb)
            loss = loss_fn.forward(logits, yb)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged: loss is {loss} at epoch {epoch + 1}, step {b + 1}"
                )
            correct = kernels(logits).count_correct(logits, yb)
            model.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
            state.step += 1
            state.loss_sum += loss * len(yb)
            state.correct += correct
            state.seen += len(yb)
            if on_step is not None:
                on_step(state, b + 1, steps_per_epoch, state.loss_sum / state.seen)
            if should_stop is not None and should_stop():
                state.seconds += time.perf_counter() - t0
                raise TrainingInterrupted(state)
        seconds = state.seconds + time.perf_counter() - t0
        test_loss, test_acc = evaluate(model, x_test, y_test, eval_batch_size, test_batches)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": state.loss_sum / state.seen,
            "train_accuracy": state.correct / state.seen,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "lr": opt.lr,
            "seconds": seconds,
            "samples_per_second": state.seen / seconds if seconds > 0 else 0.0,
        }
        state.epoch += 1
        state.loss_sum, state.correct, state.seen, state.seconds = 0.0, 0, 0, 0.0
        state.history.append(metrics)
        if on_epoch is not None:
            on_epoch(state, metrics)
    return state.history
