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

import contextlib
import math
import numbers
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import dist
from .check import compile_kernels, compile_seconds
from .data import batches_reusing, share, whole
from .datasets import check_features, first_nonfinite, first_where, is_real, not_whole
from .layers import Linear, ReLU, Sigmoid, Softmax, Tanh, kernels, let_go_of_batch
from .losses import LOSSES, check_labels, check_loss
from .model import Sequential, modes, set_modes, to_host
from .optim import OPTIMIZERS, _check_nonneg

ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}
SCHEDULES = ("constant", "cosine", "step")
STEP_DECAY = 0.1  # the `step` schedule multiplies the rate by this every max(1, epochs // 3) epochs


class TrainingDiverged(ValueError):
    """The loss became NaN or Inf."""


class NothingToTrain(UserWarning):
    """nb.train was given a state that already has its `epochs` done: it returned that history."""


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
    # Model selection on the validation set: the lowest validation loss so far, its epoch (1-based),
    # and the epochs since it (early stopping's patience counter). Saved in checkpoints, so a
    # resumed run chooses as one that never stopped.
    best_val_loss: float = None
    best_epoch: int = None
    bad_epochs: int = 0
    # With restore_best, a host copy of the best epoch's weights, so that a call resumed from this
    # state restores them as one that never stopped would. In memory only: checkpoints keep the
    # best epoch in a file of its own (--save-best).
    best_params: list = field(default=None, repr=False, compare=False)


class _HeldCtrlC:
    """Ctrl-C held while a step or an epoch's end changes the weights, the optimizer and the
    TrainState together, and raised as the KeyboardInterrupt it is once they agree (release()).
    Raised where it fell, it came after opt.step() had moved the weights (and counted Adam's step)
    and before `state` counted the step, and a call resumed from that state took the step twice.
    Elsewhere (forward, validation, callbacks) it is raised at once, as before. Only under Python's
    own SIGINT handler, which only the main thread can replace: a handler of the caller's (the
    command line's: stop after the step, then save) is left alone."""

    def __init__(self):
        self.held = self.pending = False
        self._old = None

    def catch(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old = signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame):
        if not self.held:
            raise KeyboardInterrupt
        self.pending = True

    def hold(self):
        self.held = True

    def release(self):
        self.held = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def restore(self):
        """Python's handler back (a Ctrl-C still held is dropped: only an error leaves one held, and it wins)."""
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def build_model(in_features, hidden, classes, activation="relu", dtype=np.float32, seed=0):
    """in -> hidden[0] -> ... -> classes, `activation` between Linear layers; logits out.
    Linear layer i is initialised from seed (seed, i)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r} (use {', '.join(ACTIVATIONS)})")
    sizes = [in_features, *hidden, classes]
    check_memory(sizes, dtype)
    layers = []
    for i in range(len(sizes) - 1):
        if i:
            layers.append(ACTIVATIONS[activation]())
        layers.append(Linear(sizes[i], sizes[i + 1], dtype=dtype, seed=(seed, i)))
    return Sequential(layers)


OPTIMIZER_SLOTS = {"sgd": 1, "adam": 2, "adamw": 2}  # state arrays per parameter (momentum; moments)
EVAL_ROWS = 1000  # evaluate's batch


def model_bytes(sizes, dtype, batch_size=1, optimizer="sgd"):
    """Bytes a model of layer widths `sizes` takes to train: its parameters four times over
    (weights, gradients, the copy while packing them, Wᵀ scratch), the optimizer's state, and the
    activations and their gradients of one training or evaluation batch."""
    params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    rows = max(batch_size, EVAL_ROWS)
    return np.dtype(dtype).itemsize * (params * (4 + OPTIMIZER_SLOTS.get(optimizer, 2)) + 4 * rows * sum(sizes))


def check_memory(sizes, dtype, batch_size=1, optimizer="sgd"):
    """ValueError, before anything is allocated, when training a model of these layer widths
    would need more than nbnet.files.memory_budget() (half this machine's memory)."""
    from .files import gib, memory_budget  # noqa: PLC0415

    need, budget = model_bytes(sizes, dtype, batch_size, optimizer), memory_budget()
    if need > budget:
        raise ValueError(
            f"a {'-'.join(map(str, sizes))} model needs about {gib(need)} to train "
            f"(batch {batch_size}, {optimizer}, {np.dtype(dtype).name}): more than {gib(budget)}, "
            "half of this machine's memory"
        )


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


# What each loss reports beside itself: accuracy for the classifiers (for bce: the fraction of
# correct labels, every output a label), R² for mse (whose loss is the MSE).
METRIC = {"cross-entropy": "accuracy", "mse": "r2", "bce": "accuracy"}
VAL_SEED_TAG = 0x56414C  # "VAL": the validation split's own seed stream, (seed, VAL_SEED_TAG)


def check_optimizer(opt):
    """Keras' compile(optimizer="adam"), or the class for an instance: "'str' object has no attribute
    'params'", from deep inside train."""
    made = "nb.SGD(model.parameters(), lr=0.1)"
    if isinstance(opt, str):
        cls = OPTIMIZERS.get(opt.strip().lower())
        made = made if cls is None else f"nb.{cls.__name__}(model.parameters(), lr=...)"
        raise TypeError(f"opt must be an optimizer made for the model's parameters, such as {made}, not the "
                        f"string {opt[:40]!r}")
    if isinstance(opt, type):
        raise TypeError(f"opt must be an optimizer made for the model's parameters, "
                        f"{opt.__name__}(model.parameters(), ...), not the class {opt.__name__}")
    if not all(hasattr(opt, name) for name in ("params", "step", "zero_grad")):
        raise TypeError(f"opt must be an optimizer made for the model's parameters, such as {made}, "
                        f"got {type(opt).__name__}")


def as_features(model, x, who="x"):
    """x as a C-contiguous (N, D) array of the model's dtype: lists, integer, bool and float64 (for
    a float32 model) features are converted here, in nb.train / nb.evaluate / nb.predict, and only
    here (a layer's forward converts nothing). NaN, Inf, or a value too large for the dtype is an
    error naming its place, as in `nbnet train`: else training stopped as "diverged", evaluate
    reported a NaN loss and predict class 0."""
    if not isinstance(x, np.ndarray) and hasattr(x, "copy_to_host"):
        _check_device_features(x, who)  # already on the GPU: its dtype is checked by the first layer
        return x
    x = _array(x, who)
    if not is_real(x.dtype):
        raise ValueError(f"{who}: features must be real numbers, got {x.dtype}")
    if x.ndim != 2:
        hint = " (one sample: x[None])" if x.ndim == 1 else " (images: x.reshape(len(x), -1))" if x.ndim > 2 else ""
        raise ValueError(f"{who}: expected a 2-D (N, D) array, got shape {x.shape}{hint}")
    return check_features(x, who, model.dtype)


def _check_device_features(x, who, block_bytes=64 << 20):
    """NaN or Inf in features on the GPU is the host features' error: unchecked, predict gave class
    0 for every row and evaluate a NaN loss. Checked on host copies of a block of rows at a time
    (once a call: ~10 ms a 188 MB data set over PCIe), not a copy of the whole."""
    if x.ndim != 2 or not x.size:
        return  # the first layer names the shape
    rows = max(1, block_bytes // (x.shape[1] * x.dtype.itemsize))
    for lo in range(0, x.shape[0], rows):
        block = x[lo:lo + rows].copy_to_host()
        bad = ~np.isfinite(block)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"{who}: x[{lo + row}, {col}] is {block[row, col]} (counted from 0; NaN/Inf are not allowed)")


def as_targets(model, y, loss, who="y", block_bytes=64 << 20):
    """Targets as the loss wants them: integer labels (N,) for cross-entropy; for mse (and bce)
    float arrays of the model's dtype, (N,) made (N, 1). Float targets on the GPU are checked as
    host ones, on host copies of a block of rows at a time (labels: by check_data)."""
    if not isinstance(y, np.ndarray) and hasattr(y, "copy_to_host"):  # on the GPU: as it is, but (N,) as below
        if loss == "cross-entropy":
            return y
        if y.ndim in (1, 2) and y.dtype.kind == "f":  # else the loss names the shape or dtype
            width = y.shape[1] if y.ndim == 2 else 1
            rows = max(1, block_bytes // (max(1, width) * y.dtype.itemsize))
            for lo in range(0, len(y), rows):
                _check_target_values(y[lo:lo + rows].copy_to_host(), loss, who, "")
        return y.reshape(-1, 1) if y.ndim == 1 else y
    y = _array(y, who)
    if loss == "cross-entropy":
        # Looked at a block at a time: np.round of all of y and its bools held more than y beside it
        if y.dtype.kind == "f" and y.size and first_where(y, not_whole) is None:
            _check_int64(y, who)
            y = y.astype(np.int64)  # whole numbers stored as floats are labels too
        if y.dtype.kind not in "iu":
            raise ValueError(f"{who}: cross-entropy needs integer class labels, got {y.dtype}")
        if y.dtype == np.uint64 and y.size:
            _check_int64(y, who)
        return np.ascontiguousarray(y, dtype=np.int64)
    if not is_real(y.dtype):
        raise ValueError(f"{who}: {loss} needs numeric targets, got {y.dtype}")
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    with np.errstate(over="ignore", invalid="ignore"):  # too large for the dtype: the error below says so
        y = np.ascontiguousarray(y, dtype=model.dtype)
    _check_target_values(y, loss, who, f" (or values too large for {model.dtype})")
    return y


def _check_target_values(y, loss, who, too_large):
    """mse / bce targets are finite, and bce's lie in [0, 1]: NaN made evaluate's loss NaN and
    nb.train stop as diverged."""
    if y.size and first_nonfinite(y) is not None:  # a block at a time: no bools of all of y
        raise ValueError(f"{who}: targets hold NaN or Inf{too_large}")
    if loss == "bce" and y.size and (y.min() < 0 or y.max() > 1):
        raise ValueError(f"{who}: bce targets must lie in [0, 1] (0/1 labels or probabilities)")


def _array(a, who):
    """np.asarray(a), where NumPy can only wrap `a` whole, as one object (a generator or an
    iterator, a dict, None), a TypeError that says what was given: else a ValueError about dtype
    object ("features must be real numbers, got object")."""
    array = np.asarray(a)
    if array.ndim == 0 and array.dtype == object:
        raise TypeError(f"{who} must be an array or an array-like (a NumPy array or a list), got {type(a).__name__}")
    return array


def _check_int64(y, who):
    """Labels beyond int64 (1e30 as a float, 2**63 as uint64) are out of range: as int64 they
    wrapped, and the error named a label the data does not hold (-9223372036854775808)."""
    lo, hi = y.min(), y.max()
    for v in (lo, hi):
        if not -(2.0**63) <= v < 2.0**63:
            raise ValueError(f"{who}: label {v} is out of range (labels are class numbers 0, 1, ...)")


def split_validation(x, y, fraction, seed):
    """(x_train, y_train, x_val, y_val): a fraction of the rows, shuffled with (seed, VAL_SEED_TAG),
    held out for validation. fraction 0 gives no validation rows (x_val, y_val None)."""
    # numbers.Real: a fraction computed in NumPy (np.float32) is one too, as the optimizers take them.
    if not isinstance(fraction, numbers.Real) or not 0 <= fraction < 1:
        raise ValueError(f"val_split must be in [0, 1), got {fraction!r}")
    if fraction == 0:
        return x, y, None, None
    n = len(x)
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise ValueError(f"val_split {fraction} leaves no training rows out of {n}")
    order = np.random.default_rng((seed, VAL_SEED_TAG)).permutation(n)
    tr, va = np.sort(order[:-n_val]), np.sort(order[-n_val:])
    return x[tr], y[tr], x[va], y[va]


def _r2(ss_res, ss_tot):
    """R² = 1 − SS_res / SS_tot, summed over every output (sklearn's "variance_weighted", the same
    as its default for one output). R² is undefined where the targets have no variance: SS_tot 0
    (a constant target, or a variance that underflows) or so small that SS_res / SS_tot overflows
    (float64 targets of 1e-155: SS_tot is subnormal). There, as sklearn's r2_score with
    force_finite=True does for a constant target, it is 1 if predicted exactly, else 0: always a
    finite number, as the history and its checkpoint hold (-inf made --save refuse a trained epoch).
    Where the loss itself is not finite (inf or NaN predictions), neither is R²: NaN, not the 0 of
    "as good as the mean" (training stops on such a loss before R² is taken; evaluate reports it)."""
    if not math.isfinite(ss_res):
        return math.nan
    if ss_tot > 0:
        ratio = ss_res / ss_tot
        if math.isfinite(ratio):
            return 1.0 - ratio
    return 1.0 if ss_res == 0 else 0.0


SS_BLOCK = 1 << 16  # target values _ss_tot holds in float64 at a time (512 KB)


def _ss_tot(y):
    """Σ (y − ȳ)² over every output, in float64, taken about the first row (the same sum in exact
    arithmetic): a constant target's mean rounds off its value (64 rows of 0.1: by an ulp), and its
    SS_tot came out 1e-32 instead of 0, an R² of -4e34 instead of a constant target's 0 or 1.
    Summed a block of rows at a time: a float64 copy of all the targets, and their deviations
    beside it, held twice their count in float64 (9.6 MB for 60000 rows of 10 outputs) at every
    R², each epoch's too."""
    n, width = y.shape
    rows = max(1, SS_BLOCK // max(1, width))
    first = to_host(y[:1]).astype(np.float64)

    def blocks():
        for lo in range(0, n, rows):
            block = to_host(y[lo:lo + rows]).astype(np.float64)
            block -= first
            yield block

    mean = sum(block.sum(axis=0) for block in blocks()) / n
    ss = 0.0
    for block in blocks():
        block -= mean
        ss += float(np.square(block, out=block).sum())
    return ss


def _batch_correct(loss, logits, yb):
    """What the epoch's metric sums per batch: rows with the right class (cross-entropy), labels
    predicted right (bce: every output a yes/no label, z ≥ 0 read as yes); nothing for mse (R²
    comes from the loss sums)."""
    if loss == "cross-entropy":
        return kernels(logits).count_correct(logits, yb)
    if loss == "bce":
        return kernels(logits).count_correct_labels(logits, yb)
    return 0


def _metric(loss, loss_sum, correct, seen, y, ss_tot=None):
    """The epoch's metric from its sums: loss_sum = Σ batch mean loss × rows, correct, seen rows
    (ss_tot: y's _ss_tot, where the caller keeps it)."""
    if loss == "mse":
        width = y.shape[1]
        return _r2(loss_sum * width, _ss_tot(y) if ss_tot is None else ss_tot)
    if loss == "bce":
        return correct / (seen * y.shape[1])  # the fraction of labels, not of rows, right
    return correct / seen


def _metric_of(loss, y):
    """_metric(loss, loss_sum, correct, seen, y) as a function of the sums, for every epoch of a
    call: R²'s SS_tot is summed once, at the first, and kept (the targets do not change within a
    call; summing them again took 4 ms an epoch for 60000 rows of 10, for each of train,
    validation and test)."""
    kept = []

    def metric(loss_sum, correct, seen):
        if loss == "mse" and not kept:
            kept.append(_ss_tot(y))
        return _metric(loss, loss_sum, correct, seen, y, *kept)

    return metric


def batch_source(model, x, y, part=(0, 1)):
    """`batches(batch_size, shuffle, seed)` over (x, y) where the model lives: on the host, gathered
    into reused buffers (no allocation per step); for a model on the GPU, from a DeviceDataset
    copied over once (class labels; other targets come from the host, copied per batch). All give
    exactly the batches of `nbnet.batches`; part=(rank, size): this data-parallel process's share
    of each (see nbnet.dist)."""
    on_host = isinstance(model.parameters()[0].data, np.ndarray)
    if on_host:
        # Data on the GPU comes over once: in-order batches would be views of the device arrays,
        # which the host kernels (the accuracy's) cannot read, and a shuffled gather of a device
        # array copies all of it to the host for every batch.
        x, y = to_host(x), to_host(y)
    if on_host or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        return lambda batch_size, shuffle, seed=None: batches_reusing(x, y, batch_size, shuffle, seed, part)
    from .gpu import DeviceDataset  # noqa: PLC0415

    every = DeviceDataset(x, y).batches
    if part == (0, 1):
        return every

    def mine(batch_size, shuffle, seed=None):
        for xb, yb in every(batch_size, shuffle, seed):
            lo, hi = share(len(yb), *part)
            yield xb[lo:hi], yb[lo:hi]

    return mine


def evaluate(model, x, y, batch_size=1000, source=None, loss="cross-entropy"):
    """(mean loss, metric) of the model on (x, y), in batches: the metric is the accuracy for
    cross-entropy, R² for mse (see METRIC)."""
    source = batch_source(model, x, y) if source is None else source
    loss_sum, correct = _evaluate_sums(model, batch_size, source, check_loss(loss))
    return loss_sum / len(y), _metric(loss, loss_sum, correct, len(y), y)


def _evaluate_sums(model, batch_size, source, loss):
    """(Σ batch mean loss × rows, Σ correct rows) over the batches of `source`."""
    loss_fn = LOSSES[loss]()
    loss_sum, correct = 0.0, 0
    forward = getattr(model, "forward_reusing", model.forward)  # read at once: no copy needed
    with scoring(model):  # its lock: one set of weights for the whole call, and buffers no other thread writes
        for xb, yb in source(batch_size, shuffle=False):
            if len(yb):  # a data-parallel share may be empty
                logits = forward(xb)
                loss_sum += loss_fn.forward(logits, yb) * len(yb)
                correct += _batch_correct(loss, logits, yb)
    return loss_sum, correct


def lock(model):
    """The model's lock (Sequential.lock: see there), or none for a model of the user's own."""
    return getattr(model, "lock", _NO_LOCK)


_NO_LOCK = contextlib.nullcontext()


@contextlib.contextmanager
def scoring(model):
    """The model's layers in eval mode for the block, their modes put back after: a dropout of the
    user's dropped units while nb.evaluate, nb.predict and nb.train's validation scored (noisy
    scores, and early stopping and restore_best chose on them). Within the model's lock."""
    with lock(model):
        before = modes(model)
        set_modes(model, False)
        try:
            yield
        finally:
            set_modes(model, before)
            let_go_of_batch(model)  # the last scored batch: a view of all the rows scored


def predict(model, x, batch_size=1000, loss="cross-entropy", proba=None):
    """(predictions, scores) for the rows of x: for cross-entropy the classes (N,), np.argmax of
    the logits, and class probabilities (N, C); for bce the 0/1 labels (N, L) int64 (z ≥ 0, i.e.
    σ(z) ≥ ½) and σ(z); for mse the outputs (N, D), twice. Predictions are decided on the logits,
    as evaluate's accuracy decides (count_correct, count_correct_labels): the squashed scores
    round near-ties into ties (softmax of [0, 1e-8] is [½, ½] in float32) and overflow into NaN
    (logits [0, inf]), so their argmax was class 0 where the accuracy counted class 1.
    proba: False for the predictions alone, True for the scores alone (the other is None), None for
    both: nb.predict wants one, and the other cost a squash and, from the GPU, a copy of each batch."""
    check_loss(loss)
    check_head(model, loss)
    squash = {"cross-entropy": Softmax(), "bce": Sigmoid()}.get(loss)
    want_labels = squash is not None and proba is not True
    want_scores = squash is None or proba is not False
    forward = getattr(model, "forward_reusing", model.forward)
    scores = labels = None
    with scoring(model):
        for start in range(0, len(x), batch_size):
            z = forward(x[start : start + batch_size])
            if start == 0:
                # The results, made once and filled batch by batch: a copy of each batch, then their
                # concatenation, held the scores twice.
                scores = np.empty((len(x), z.shape[1]), z.dtype) if want_scores else None
                labels = np.empty((len(x), z.shape[1]) if loss == "bce" else len(x), np.int64) if want_labels else None
            rows = slice(start, start + len(z))
            if want_labels and loss == "bce":
                # Decided on z ≥ 0, as evaluate's accuracy (count_correct_labels) decides: σ(z) rounds
                # to ½ for z just below 0 (above -6e-8 in float32), which `σ(z) ≥ ½` read as yes.
                np.greater_equal(to_host(z), 0, out=labels[rows])
            elif want_labels:
                np.argmax(to_host(z), axis=1, out=labels[rows])
            if want_scores:
                scores[rows] = to_host(z if squash is None else squash.forward(z))
    if loss == "cross-entropy":
        return labels, scores
    if loss == "bce":
        return labels, scores
    return scores, scores


def check_finite_parameters(model, message):
    """Raise TrainingDiverged(message) when a parameter holds NaN or Inf."""
    for p in model.parameters():
        if first_nonfinite(to_host(p.data)) is not None:  # a block at a time: no bools of the whole
            raise TrainingDiverged(message)


def check_finite_state(opt, message):
    """Raise TrainingDiverged(message + what) when an optimizer's state holds NaN or Inf. Adam's
    exp_avg_sq overflows first (float32 gradients past ~1e19 square to Inf): the weights stay
    finite and stop moving (m / sqrt(Inf) is 0), and the run went on, silently, to the end (only
    --save refused such a state)."""
    for i, st in enumerate(getattr(opt, "state", ())):
        for name, arr in st.items() if isinstance(st, dict) else ():
            if arr is not None and first_nonfinite(to_host(arr)) is not None:
                raise TrainingDiverged(f"{message}: the optimizer's {name} of parameter {i} holds NaN or Inf "
                                       "(gradients too large for the dtype: scale the features?)")


def check_head(model, loss):
    """A model whose last layer is the squashing its loss applies itself (a Softmax before
    cross-entropy, a Sigmoid before bce, which take logits) is a ValueError: it trained on
    probabilities read as logits and predict squashed twice, silently (Keras warns of the same).
    So is a model of one output under cross-entropy (one class)."""
    last = model.layers[-1] if len(model.layers) else None
    for name, layer in (("cross-entropy", Softmax), ("bce", Sigmoid)):
        if loss == name and isinstance(last, layer):
            squash = "softmax" if layer is Softmax else "sigmoid"
            raise ValueError(
                f"the model ends in a {layer.__name__} layer, but loss {name!r} takes logits and applies "
                f"the {squash} itself: use the model without it, model[:-1] (predict(..., proba=True) gives the probabilities)"
            )
    # A softmax over one logit is 1 whatever the logit: such a model predicted class 0 for every
    # row (a bce or mse model given to predict, whose default loss this is) and trained on labels
    # that are all 0 at loss 0 and accuracy 100%, silently.
    linears = [layer for layer in model.layers if isinstance(layer, Linear)]
    if loss == "cross-entropy" and linears and linears[-1].out_features == 1:
        raise ValueError("the model has 1 output, but cross-entropy needs one per class, at least 2: a model "
                         "of one yes/no output takes loss bce, one of values loss mse")


def check_data(model, data, loss="cross-entropy", parts=("train", "test", "validation")):
    """The data must fit the model: feature count, dtype, labels within its classes (targets of
    its output width for mse). data: (x_train, y_train[, x_test, y_test]), a part may be None;
    `parts` names the pairs in the errors."""
    linears = [layer for layer in model.layers if isinstance(layer, Linear)]
    if not linears:  # nothing gives the feature count or the classes
        raise ValueError("the model has no Linear layer")
    check_head(model, loss)
    first, last = linears[0], linears[-1]
    for i in range(0, len(data), 2):
        part, x, y = parts[i // 2], data[i], data[i + 1]
        if x is None:
            continue
        if x.ndim != 2:
            raise ValueError(f"{part} data has shape {tuple(x.shape)}, the model expects (N, {first.in_features})")
        if x.shape[1] != first.in_features:
            raise ValueError(f"{part} data has {x.shape[1]} features per row, the model expects {first.in_features}")
        if len(x) == 0:
            raise ValueError(f"{part} data is empty")
        if loss == "cross-entropy":
            # Device labels are range-checked on a host copy (check_labels leaves them alone): the
            # loss kernels index each row's logits with its label unchecked.
            check_labels(f"{part} data", y if isinstance(y, np.ndarray) else to_host(y), len(x), last.out_features)
        elif y.shape != (len(x), last.out_features):
            # One 0/1 label a row for a model of several outputs: a binary classifier built for a
            # softmax (Keras' 2-unit head), whose (N,) labels the error called (N, 1) targets.
            hint = (" (one 0/1 label a row, (N,) or (N, 1): a yes/no model has 1 output; class labels 0, 1, ... "
                    "take loss cross-entropy)" if loss == "bce" and y.shape[1:] == (1,) else "")
            raise ValueError(
                f"{part} data has targets of shape {tuple(y.shape)}, the model outputs ({len(x)}, {last.out_features})"
                f"{hint}"
            )


def _check_callbacks(**callbacks):
    """Each callback is None or a function: an object that is not (a Keras callback, a list of
    them) failed with "'X' object is not callable" only when called, after a whole epoch trained."""
    for name, f in callbacks.items():
        if f is not None and not callable(f):
            keras = " (Keras-style callback objects are not called: pass a function, e.g. " \
                    "on_epoch=lambda state, metrics: ...)" if name != "should_stop" else ""
            raise TypeError(f"{name} must be a function or None, got {type(f).__name__}{keras}")


# Keras' names for what nbnet calls otherwise, or does not do: Python's "unexpected keyword
# argument 'validation_split'" left the nbnet way to be found in the README.
KERAS_KEYWORDS = {
    "validation_split": "nbnet's is val_split=",
    "validation_data": "nbnet's is val_data=(x_val, y_val)",
    "callbacks": "nbnet takes functions: on_epoch(state, metrics), on_step, on_best, should_stop",
    "initial_epoch": "to resume, pass state= (a TrainState); epochs is the total, as in Keras",
    "verbose": "nbnet prints no progress",
    "class_weight": "nbnet has no class or sample weights",
    "sample_weight": "nbnet has no class or sample weights",
    "return_dict": "nb.evaluate returns a dict",
}

# Where train's way differs from evaluate's and predict's, which take no callbacks.
TRAIN_KEYWORDS = {"verbose": "nbnet prints no progress: print from on_epoch or on_step"}


def refuse_unknown_keywords(function, keywords):
    """A TypeError for keywords `function` does not take, as Python's, with nbnet's way for Keras' names."""
    if keywords:
        name = next(iter(keywords))
        way = (TRAIN_KEYWORDS if function == "train" else {}).get(name) or KERAS_KEYWORDS.get(name)
        hint = f" ({way})" if way else ""
        raise TypeError(f"{function}() got an unexpected keyword argument {name!r}{hint}")


class History(list):
    """What `train` returns: the per-epoch metrics dicts (a list), plus `best_epoch` and
    `best_val_loss` (the epoch with the lowest validation loss, None without validation data) and
    `stopped_early` (early stopping ended the run before `epochs`)."""

    best_epoch = None
    best_val_loss = None
    stopped_early = False

    @property
    def history(self):
        """The metrics by name, each a list over the epochs, as Keras' History.history has them (for
        plotting), under nbnet's names: history.history["train_loss"], ["val_loss"], ..."""
        keys = dict.fromkeys(key for metrics in self for key in metrics)
        return _Metrics({key: [metrics.get(key) for metrics in self] for key in keys})


class _Metrics(dict):
    """History.history: a missing name says which there are (Keras' "loss" is nbnet's "train_loss")."""

    def __missing__(self, key):
        hint = f"; nbnet's name for it is 'train_{key}'" if f"train_{key}" in self else ""
        raise KeyError(f"no metric {key!r} in this history: it has {', '.join(self) or 'none'}{hint}")


_TRAINING = {}  # id of a layer or optimizer -> the thread of the nb.train call training it
_TRAINING_LOCK = threading.Lock()


def _start_training(model, opt):
    """Refuse a model or optimizer another nb.train call is training: two calls (two threads, or a
    callback's) took turns at the model's lock step by step, each with its own state and epoch
    count, silently, or failed with "opt.lr was set ... (by a callback?)" where one's schedule met
    the other's rate. By its layers: Sequential(model.layers) is the same model. Returns what
    _stop_training takes."""
    keys = (id(opt), *map(id, model.layers))
    with _TRAINING_LOCK:
        busy = next((_TRAINING[k] for k in keys if k in _TRAINING), None)
        if busy is not None:
            where = "this thread (in a callback?)" if busy == threading.get_ident() else "another thread"
            raise RuntimeError(f"nb.train: this model or its optimizer is being trained by another nb.train call, in "
                               f"{where}: train a model in one call at a time (copy.deepcopy the model, and make an "
                               "optimizer for the copy, to train both)")
        for k in keys:
            _TRAINING[k] = threading.get_ident()
    return keys


def _stop_training(keys):
    with _TRAINING_LOCK:
        for k in keys:
            _TRAINING.pop(k, None)


def train(model, opt, data, *more, epochs, batch_size=128, seed=0, lr_schedule="constant", lr=None,
          loss="cross-entropy", val_data=None, val_split=0.0, early_stopping=None, min_delta=0.0,
          restore_best=False, shuffle=True, state=None, on_step=None, on_epoch=None, on_best=None,
          should_stop=None, eval_batch_size=1000, comm=None, **unknown):
    """Train up to `epochs` epochs in total (continuing from `state`), and return the History:
    one dict per epoch with epoch, train_loss, train_<metric>, [val_loss, val_<metric>,]
    [test_loss, test_<metric>,] lr, seconds, samples_per_second; <metric> is accuracy for
    cross-entropy and bce, r2 for mse (whose loss is the MSE). seconds: the epoch's steps and
    callbacks, not its evaluation, and not Numba compiling (which samples_per_second leaves out too).

    data: (x_train, y_train) or (x_train, y_train, x_test, y_test): NumPy arrays or lists;
        features are converted to the model's dtype (float64 or integers for a float32 model),
        targets to what the loss wants (see as_targets). The test set is only reported, never
        used to choose anything.
    loss: "cross-entropy" (softmax cross-entropy on logits, integer labels), "mse" (float targets,
        R² reported) or "bce" (sigmoid + binary cross-entropy on logits: 0/1 targets (N,) or
        (N, L) multi-label; accuracy is the fraction of labels right).
    val_data=(x_val, y_val), or val_split=F: hold out a fraction F of the training rows (shuffled
        with (seed, VAL_SEED_TAG)) for validation. The best epoch is the one with the lowest
        validation loss (improving by more than min_delta).
    early_stopping=N: stop after N epochs in a row without a better validation loss.
    restore_best: at the end, put back the weights of the best epoch (kept in `state`, so that a call
        resumed from an interrupted one's state restores them too).
    lr: the base rate of the schedule (default: the optimizer's rate on entry). The schedule sets
        opt.lr before each step (history's "lr" is the epoch's last); when train returns or raises,
        opt.lr is the base rate again. A rate set on opt.lr meanwhile (in a callback) is a ValueError.
    on_step(state, batch, n_batches, running_loss) after each step; on_best(state, metrics) after
    an epoch that is the best so far, then on_epoch(state, metrics) after each epoch.
    state: a TrainState to continue from (None: a new run). train updates the one it is given in
    place, and the callbacks and TrainingInterrupted get that object: pass a TrainState() (from
    nbnet.train import TrainState) and keep it, or keep the callbacks', to resume with the same
    model and optimizer.
    A `state` with all `epochs` done trains nothing: train returns its history (restore_best puts
    its best epoch back) with a NothingToTrain warning; one past `epochs` is a ValueError.
    should_stop() is asked before each step, outside the model's lock: True raises
    TrainingInterrupted(state) once that step is done.
    Ctrl-C (in the main thread, under Python's own SIGINT handler) raises KeyboardInterrupt where it
    falls, but never between a step's update and `state` counting it: a call resumed from `state`
    goes on as if never stopped.
    Raises TrainingDiverged (a ValueError) on a NaN/Inf loss, before that step updates anything.
    A model (any of its layers) or optimizer that another nb.train call is training, in another
    thread or in a callback, is a RuntimeError: other threads may predict with it meanwhile.

    comm: an mpi4py communicator (e.g. MPI.COMM_WORLD) to train data-parallel over its processes
    (see nbnet.dist): each takes its share of every global batch of `batch_size` rows and of the
    validation and test sets; the weights, history and state come out the same on every process,
    and those of one process within rounding. The processes first compare their arguments, data
    and weights: where one differs, every process raises ValueError. Start the script with
    `mpiexec -n N python -m mpi4py script.py`, so that an exception on one process ends them all
    (examples/mpi_train.py).
    """
    if more:  # Keras' fit(x, y): Python's "takes 3 positional arguments but 4 ... were given" said not which
        how = ("epochs and the other options go by keyword, nb.train(model, opt, data, epochs=...)"
               if isinstance(data, tuple) else "data is one tuple, nb.train(model, opt, (x_train, y_train), epochs=...)")
        raise TypeError(f"train() takes 3 positional arguments (model, opt, data) but {3 + len(more)} were given: {how}")
    refuse_unknown_keywords("train", unknown)
    check_optimizer(opt)
    check_loss(loss)
    comm = dist.wrap(comm)
    if not whole(epochs, 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if not whole(size, 1):
            raise ValueError(f"{name} must be a positive integer, got {size!r}")
    # Every epoch's shuffle and the validation split draw from (seed, ...): None (NumPy's "random")
    # or a negative one failed inside NumPy's SeedSequence, after the kernels compiled.
    if not whole(seed, 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, flag in (("shuffle", shuffle), ("restore_best", restore_best)):
        if not isinstance(flag, (bool, np.bool_)):  # "no" is truthy: it shuffled, or restored
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if early_stopping is not None and not whole(early_stopping, 1):
        raise ValueError(f"early_stopping must be a positive integer (epochs of patience), got {early_stopping!r}")
    # Read first after epoch 1: a string failed there, NaN or a negative one chose epochs silently.
    _check_nonneg("nb.train", min_delta=min_delta)
    # Python floats, as the optimizers keep their rates: arithmetic with an np.float32 runs in
    # float32, so best - min_delta rounded a float64 model's validation loss (and lr its schedule).
    min_delta = float(min_delta)
    _check_callbacks(on_step=on_step, on_epoch=on_epoch, on_best=on_best, should_stop=should_stop)
    if not isinstance(data, (tuple, list)):  # a generator of batches: Python's "has no len()"
        raise TypeError("data must be a tuple (x_train, y_train) or (x_train, y_train, x_test, y_test) of arrays or "
                        f"array-likes (train batches them itself), got {type(data).__name__}")
    if len(data) not in (2, 4):
        raise ValueError("data must be (x_train, y_train) or (x_train, y_train, x_test, y_test)")
    if len(data) == 2 and all(isinstance(part, tuple) and len(part) == 2 and getattr(part[0], "ndim", 0) >= 2
                              for part in data):
        # Keras' datasets give ((x_train, y_train), (x_test, y_test)): NumPy's "inhomogeneous shape"
        # error came out of as_features, about x_train. (An x_train whose first row is 2-D is an
        # error anyway: this changes only what it says.)
        raise ValueError("data is one flat tuple, (x_train, y_train) or (x_train, y_train, x_test, y_test), got "
                         "two pairs ((x_train, y_train), (x_test, y_test)): pass (x_train, y_train, x_test, y_test)")
    x_train, y_train = as_features(model, data[0], "x_train"), as_targets(model, data[1], loss, "y_train")
    if len(x_train) != len(y_train):  # before val_split draws rows of x for both
        raise ValueError(f"x_train has {len(x_train)} rows but y_train has {len(y_train)}")
    x_test = y_test = x_val = y_val = None
    if len(data) == 4 and (data[2] is None) != (data[3] is None):  # else one was ignored, or misnamed
        raise ValueError("give x_test and y_test together, or neither")
    if len(data) == 4 and data[2] is not None:
        x_test, y_test = as_features(model, data[2], "x_test"), as_targets(model, data[3], loss, "y_test")
    if val_data is not None and (not isinstance(val_data, (tuple, list)) or len(val_data) != 2):
        raise ValueError("val_data must be (x_val, y_val)")
    if val_data is not None and val_split:
        raise ValueError("give val_data or val_split, not both")
    if val_data is not None:
        x_val, y_val = as_features(model, val_data[0], "x_val"), as_targets(model, val_data[1], loss, "y_val")
    elif val_split:
        x_train, y_train, x_val, y_val = split_validation(x_train, y_train, val_split, seed)
    if (early_stopping is not None or on_best is not None or restore_best) and x_val is None:
        raise ValueError("early stopping and keeping the best epoch need validation data (val_data or val_split)")
    check_data(model, (x_train, y_train, x_test, y_test, x_val, y_val), loss)
    # An optimizer made for another model (one since rebuilt, or the original of an astype copy)
    # stepped that model's weights with its stale gradients: this one never moved, silently.
    layers = set(map(id, model.layers))
    if any(hasattr(p, "layer") and id(p.layer) not in layers for p in opt.params):
        raise ValueError("the optimizer updates arrays that are not parameters of this model: "
                         "make it with this model's model.parameters()")
    metric = METRIC[loss]
    base_lr = opt.lr if lr is None else lr
    scheduled = None  # the rate this call last gave opt.lr: one that differs at the next step was set by a callback
    # The optimizers check their rate when made, but lr= and a rate set on opt.lr since reach the
    # schedule only here: a negative one trained uphill silently, NaN made every weight NaN.
    _check_nonneg("nb.train", **{"lr" if lr is not None else "opt.lr": base_lr})
    base_lr = float(base_lr)  # (see min_delta)
    if state is not None and not isinstance(state, TrainState):  # a dict failed at state.epoch (AttributeError)
        raise TypeError("state must be None or a TrainState (from nbnet.train; the one on_step, on_epoch and "
                        f"on_best get, or TrainingInterrupted's .state), got {type(state).__name__}")
    state = TrainState() if state is None else state
    # A state past `epochs` trained nothing and returned its old history, as if this call had run.
    # One at `epochs` is a finished run (below): it returns its history, and says so.
    if state.epoch > epochs or (state.epoch == epochs and state.seen):
        stopped = f" (stopped in epoch {state.epoch + 1})" if state.seen else ""
        raise ValueError(f"state has {state.epoch} epochs done{stopped}: epochs={epochs} would train none of them; "
                         f"epochs is a total, give {state.epoch + 1} or more to train on")
    if comm.size > 1:
        # Processes given other arguments, data or weights sum gradients of different problems:
        # another seed or file trained silently; another batch size or epoch count left a process
        # done (with a wrong model) and the others waiting for NBNET_MPI_TIMEOUT.
        hyper = {k: v for k, v in opt.state_dict().items() if k not in ("lr", "state")}
        # The layers too: models whose activations differ have the same weights (a Tanh where
        # process 0 has a ReLU summed the gradients of two networks, silently).
        layers = [{"type": type(layer).__name__, **layer.config()} for layer in model.layers]
        options = dict(model=layers, epochs=epochs, batch_size=batch_size, seed=seed, lr_schedule=lr_schedule, lr=base_lr,
                       loss=loss, shuffle=shuffle, val_split=val_split, early_stopping=early_stopping,
                       min_delta=min_delta, restore_best=restore_best, optimizer=hyper,
                       state=(state.epoch, state.step, state.seen, state.bad_epochs, state.best_val_loss))
        comm.agree(dist.fingerprint(options, (x_train, y_train, x_test, y_test, x_val, y_val),
                                           model.parameters()))
    n = len(x_train)
    steps_per_epoch = math.ceil(n / batch_size)
    loss_fn = LOSSES[loss]()
    forward = getattr(model, "forward_reusing", model.forward)  # the loop owns the buffers it reads
    model_lock = lock(model)
    params = model.parameters()
    train_batches = batch_source(model, x_train, y_train, (comm.rank, comm.size))

    def evaluator(x, y):
        """(loss, metric) on (x, y) as a function of the current weights: each process scores its
        share of the rows, and the sums are added up over processes."""
        if x is None:
            return None
        lo, hi = share(len(y), comm.rank, comm.size)
        source = batch_source(model, x[lo:hi], y[lo:hi]) if hi > lo else (lambda *args, **kwargs: iter(()))
        part_metric = _metric_of(loss, y)  # (not `metric`: the loop's name of the metric, train_{metric})

        def score():
            loss_sum, correct = comm.sums(*_evaluate_sums(model, eval_batch_size, source, loss))
            return loss_sum / len(y), part_metric(loss_sum, correct, len(y))

        return score

    score_val, score_test = evaluator(x_val, y_val), evaluator(x_test, y_test)
    train_metric = _metric_of(loss, y_train)
    # Compile (or load from Numba's cache) every kernel now, on a throwaway copy, so that epoch 1's
    # seconds and samples/s measure training, not compilation.
    # (A batch size above the rows is a step of them all: a warm-up at the batch size itself held
    # batch_size rows, 1.3 GB for batch_size=10**6 of 100 features on a data set of 10 rows.)
    local = [hi - lo for lo, hi in (share(b, comm.rank, comm.size) for b in (min(batch_size, n), n % batch_size))]
    if state.epoch < epochs:
        compile_kernels(model, opt, loss_fn, y_train, train_rows=local, eval_rows=(min(eval_batch_size, n),),
                        say=comm.rank == 0)
    elif comm.rank == 0:
        # Returned, not refused: resuming a finished run loses nothing that way (restore_best puts
        # its best epoch back, and `nbnet train --resume` writes its metrics and plot from the
        # history), but it is never a silent no-op that looks like training.
        warnings.warn(f"state has {state.epoch} epochs done, all of epochs={epochs}: nothing to train, its history is "
                      f"returned (epochs is a total: give {epochs + 1} or more to train on)", NothingToTrain,
                      stacklevel=2)

    ctrl_c = _HeldCtrlC()
    with model_lock:  # before _start_training: a Ctrl-C while another thread holds the lock leaves nothing marked
        user_modes = modes(model)  # put back at the end: the steps run in training mode
    training = _start_training(model, opt)
    # The steps run in training mode: set before the first, and again only after user code (a
    # callback) may have called model.eval(); set at every step it cost ~0.3 µs of a 16 µs step.
    stale_modes = True
    try:
        ctrl_c.catch()
        while state.epoch < epochs:
            if early_stopping is not None and state.bad_epochs >= early_stopping:
                break  # stopped before (e.g. a resumed run that had already stopped early)
            epoch = state.epoch
            skip = state.step - epoch * steps_per_epoch  # steps of this epoch done before a resume
            if not 0 <= skip <= steps_per_epoch:  # == : stopped after its last step
                raise ValueError(
                    f"training state (epoch {epoch}, step {state.step}) does not fit "
                    f"{steps_per_epoch} steps per epoch: was the batch size or the data changed?"
                )
            # The epoch's metrics divide by `seen`: each step done took 1 .. batch_size rows.
            if not skip <= state.seen <= skip * batch_size:
                raise ValueError(
                    f"training state (epoch {epoch}, step {state.step}) counts {state.seen} rows seen in the "
                    f"{skip} steps done of its epoch, at most {batch_size} rows a step: was the batch size changed?"
                )
            # The epoch's clock leaves out compilation: the warm-up's copy cannot reach every kernel
            # (a layer of one's own that cannot be copied, its own @njit), which then compiled in epoch 1.
            t0, c0 = time.perf_counter(), compile_seconds()
            for b, (xb, yb) in enumerate(train_batches(batch_size, shuffle=shuffle, seed=(seed, epoch))):
                if b < skip:
                    continue
                if scheduled is not None and opt.lr != scheduled:  # a Keras habit: decay in a callback
                    raise ValueError(
                        f"nb.train: opt.lr was set to {opt.lr!r} during training (by a callback?), but nb.train "
                        f"sets it before each step from lr_schedule ({', '.join(SCHEDULES)}) and would undo "
                        "that: choose a schedule, or write the training loop yourself"
                    )
                opt.lr = scheduled = learning_rate(lr_schedule, base_lr, state.step, epoch, epochs, steps_per_epoch)
                # Asked outside the lock: a should_stop that waits for another thread's use of the
                # model (a GUI's predict) would otherwise wait for ever. Still after on_step(b - 1).
                stop = False
                if should_stop is not None:
                    stop, stale_modes = bool(should_stop()), True
                with model_lock:  # a step at a time: another thread may predict between steps
                    if stale_modes:
                        set_modes(model, True)
                        stale_modes = False
                    opt.zero_grad()
                    rows, value, correct = len(yb), 0.0, 0
                    if rows:  # a data-parallel share may be empty
                        logits = forward(xb)
                        value = loss_fn.forward(logits, yb)
                        correct = _batch_correct(loss, logits, yb)
                        if math.isfinite(value):
                            model.backward(loss_fn.backward(), need_input_grad=False)
                    # Summed over the processes (one process: as they are), so that all decide alike.
                    loss_sum, correct, seen, stop = comm.step_sums(value * rows, correct, rows, stop)
                    if not math.isfinite(loss_sum):
                        raise TrainingDiverged(
                            f"training diverged: loss is {loss_sum / seen} at epoch {epoch + 1}, step {b + 1}"
                        )
                    # The epoch's sum too: float64 losses of 1e306, each step's finite, overflowed it
                    # (train_loss inf, a history no checkpoint holds), as they do the test loss's sum.
                    if not math.isfinite(state.loss_sum + loss_sum):
                        raise TrainingDiverged(
                            f"training diverged: loss is {loss_sum / seen}, the epoch's sum of them overflows, "
                            f"at epoch {epoch + 1}, step {b + 1}"
                        )
                    comm.allreduce_grad(params, rows / seen)  # between backward and the step
                    ctrl_c.hold()  # from the step until `state` has counted it
                    opt.step()
                state.step += 1
                state.loss_sum += loss_sum
                state.correct += int(correct)
                state.seen += int(seen)
                ctrl_c.release()
                if on_step is not None:
                    on_step(state, b + 1, steps_per_epoch, state.loss_sum / state.seen)
                    stale_modes = True
                if stop:
                    state.seconds += time.perf_counter() - t0 - (compile_seconds() - c0)
                    raise TrainingInterrupted(state)
            seconds = state.seconds + time.perf_counter() - t0 - (compile_seconds() - c0)
            # The loss of each step is checked before its update; the update of the epoch's last step
            # is checked here, with the weights, before anyone (on_epoch: --save) sees them.
            check_finite_parameters(model, f"training diverged: the weights became NaN or Inf in epoch {epoch + 1}")
            check_finite_state(opt, f"training diverged in epoch {epoch + 1}")
            metrics = {
                "epoch": epoch + 1,
                "train_loss": state.loss_sum / state.seen,
                f"train_{metric}": train_metric(state.loss_sum, state.correct, state.seen),
            }
            if score_val is not None:
                metrics["val_loss"], metrics[f"val_{metric}"] = score_val()
            if score_test is not None:
                metrics["test_loss"], metrics[f"test_{metric}"] = score_test()
            for part in ("val", "test"):
                if not math.isfinite(metrics.get(f"{part}_loss", 0.0)):
                    raise TrainingDiverged(
                        f"training diverged: {part} loss is {metrics[part + '_loss']} after epoch {epoch + 1}"
                    )
            metrics.update({
                # The rate of the epoch's last step, from the schedule: opt.lr holds it only when this
                # call took that step (a run resumed after it takes none in this epoch).
                "lr": learning_rate(lr_schedule, base_lr, state.step - 1, epoch, epochs, steps_per_epoch),
                "seconds": seconds,
                "samples_per_second": state.seen / seconds if seconds > 0 else 0.0,
            })
            ctrl_c.hold()  # the epoch counted, its history entry and its best-epoch bookkeeping: all or none
            state.epoch += 1
            state.loss_sum, state.correct, state.seen, state.seconds = 0.0, 0, 0, 0.0
            state.history.append(metrics)
            improved = False
            if x_val is not None:
                v = metrics["val_loss"]
                if state.best_val_loss is None or v < state.best_val_loss - min_delta:
                    state.best_val_loss, state.best_epoch, state.bad_epochs = v, epoch + 1, 0
                    improved = True
                    if restore_best:
                        state.best_params = [to_host(p.data).copy() for p in model.parameters()]
                else:
                    state.bad_epochs += 1
            ctrl_c.release()
            if improved and on_best is not None:
                on_best(state, metrics)
                stale_modes = True
            if on_epoch is not None:
                on_epoch(state, metrics)
                stale_modes = True
    finally:
        _stop_training(training)
        ctrl_c.restore()
        # The schedule set opt.lr step by step; give the optimizer its base rate back, so that a
        # second call, or a resume from `state` with the optimizer's state_dict() taken now, starts
        # its schedule from the same base (lr=None reads opt.lr) and not from the last step's rate.
        opt.lr = base_lr
        # Last: it may wait for the lock (another thread's predict), where a Ctrl-C skipped the
        # lines above, leaving the model marked as in training and SIGINT nbnet's for good.
        with model_lock:
            set_modes(model, user_modes)
            let_go_of_batch(model)  # the last training batch: in order, a view of all the training rows
    if restore_best and state.best_params is not None:
        with model_lock:
            for p, value in zip(model.parameters(), state.best_params):
                if isinstance(p.data, np.ndarray):
                    p.data[...] = value
                else:
                    p.data.copy_to_device(value)
    history = History(state.history)
    history.best_epoch, history.best_val_loss = state.best_epoch, state.best_val_loss
    history.stopped_early = early_stopping is not None and state.bad_epochs >= early_stopping and state.epoch < epochs
    return history
