"""Losses: `forward(pred, target) -> float` (the batch mean), then `backward() -> dL/dpred`.
Callable, as in PyTorch: `loss_fn(logits, y)` is `loss_fn.forward(logits, y)`.

The mean's 1/N is applied here and only here; layers' backwards never divide by the batch size.

Targets are data, not computed values, so a loss takes them as given: a list of labels becomes an
array, and MSELoss converts host targets of another dtype (float64, integers) to the predictions'
dtype and reads (N,) targets as (N, 1). Predictions are never converted.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import cpu
from .layers import Layer, kernels, to_host


def _onehot_hint(targets, n, classes):
    """Keras' categorical (one-hot) labels are the likely cause of an (n, classes) array, a column of
    labels of an (n, 1) one: say what to pass."""
    shape = tuple(getattr(targets, "shape", ()))
    if shape == (n, classes) and classes > 1:
        return " (one-hot rows? pass y.argmax(axis=1), each row's class)"
    if shape == (n, 1):  # Keras' sparse labels, or a column cut from a table
        return " (one column? pass y.ravel())"
    return ""


def check_labels(who, targets, n, classes):
    """Labels must be a 1-D integer array (or list) of length n with values in [0, classes)."""
    if isinstance(targets, (list, tuple)):
        targets = np.asarray(targets)
    if not isinstance(targets, np.ndarray) and not hasattr(targets, "copy_to_host"):
        # A torch tensor of int64 labels was refused as 'must be an integer array, got torch.int64'.
        raise ValueError(f"{who}: labels must be a NumPy integer array or a list, got {type(targets).__name__}")
    if getattr(targets.dtype, "kind", None) not in ("i", "u"):
        got = getattr(targets, "dtype", type(targets).__name__)
        raise ValueError(f"{who}: labels must be an integer array, got {got}{_onehot_hint(targets, n, classes)}")
    if targets.ndim != 1 or targets.shape[0] != n:
        raise ValueError(f"{who}: expected labels of shape ({n},), got {tuple(targets.shape)}"
                         f"{_onehot_hint(targets, n, classes)}")
    if isinstance(targets, np.ndarray):  # device labels are checked once, when copied over
        if not targets.dtype.isnative:  # a file's big-endian labels: the kernels read native order
            targets = targets.astype(targets.dtype.newbyteorder("="))
        if not targets.flags.c_contiguous:  # y[::2]: a copy, not a kernel compiled for strided arrays
            targets = np.ascontiguousarray(targets)
        lo, hi = map(int, cpu.label_bounds(targets))  # one pass: 5x cheaper than .min(), .max() at batch 1
        if lo < 0 or hi >= classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{who}: label {bad} is out of range [0, {classes})")
    return targets


@dataclass(eq=False)
class _ClassificationLoss(Layer):
    """Shared state of the two cross-entropies: the saved probabilities and labels."""

    probs: Any = field(init=False, default=None, repr=False)
    targets: Any = field(init=False, default=None, repr=False)
    losses: Any = field(init=False, default=None, repr=False)  # per-row scratch
    dinp: Any = field(init=False, default=None, repr=False)

    def _check_pair(self, pred, targets):
        pred = self._check_input(pred)
        for name in ("dinp", "probs_buf"):
            if self._aliases(pred, name):
                # pred is (a view of) this loss's own buffer (loss_fn(loss_fn.backward(), y)): the
                # kernels would write it while reading pred. A new one, as Linear's forward does.
                setattr(self, name, None)
        if isinstance(pred, np.ndarray) and hasattr(targets, "copy_to_host"):
            # Device labels for host logits come over (as MSELoss's targets do), and are checked there.
            targets = targets.copy_to_host()
        targets = check_labels(self.describe(), targets, pred.shape[0], pred.shape[1])
        if isinstance(targets, np.ndarray) and not isinstance(pred, np.ndarray):
            from .gpu import to_device  # noqa: PLC0415 - host labels, checked above, follow the logits

            targets = to_device(targets)
        return pred, targets

    def _loss(self, value):
        """The loss. Device labels are not checked before a step (that would copy them to the host
        each time): the kernels write NaN for one out of range, and a NaN loss has them checked here."""
        if value != value and not isinstance(self.targets, np.ndarray):
            check_labels(self.describe(), self.targets.copy_to_host(), *self.probs.shape)
        return value

    def _backward_check(self):
        if self.probs is None:
            raise ValueError(f"{self.describe()}: backward called before forward")
        return self._buffer("dinp", self.probs, self.probs.shape, self.probs.dtype)


@dataclass(eq=False)
class CrossEntropy(_ClassificationLoss):
    """On probabilities p (N, C) and labels t (N,):  L = −(1/N) Σ_i log p[i, t_i].
    Backward: dp_ij = −1/(N p_ij) at j = t_i, else 0. Pair it with a Softmax layer, or better use
    SoftmaxCrossEntropy on the logits (stable, and its gradient is simply (p − onehot)/N). A p[i, t_i]
    outside [0, 1] is a ValueError (logits: PyTorch's CrossEntropyLoss is SoftmaxCrossEntropy)."""

    def forward(self, probs, targets):
        probs, targets = self._check_pair(probs, targets)
        self.probs, self.targets = probs, targets
        losses = self._buffer("losses", probs, (probs.shape[0],), probs.dtype)
        value = self._loss(float(kernels(probs).crossentropy_forward(losses, probs, targets)))
        if value != value:
            self._check_probabilities(probs, targets)
        return value

    def _check_probabilities(self, probs, targets):
        """The kernels give NaN for a p[i, t_i] outside [0, 1]: logits, most likely, from a PyTorch
        habit (torch's CrossEntropyLoss takes logits), which gave a finite loss, wrong, silently
        (-log of a clamped negative, a negative loss above 1). A NaN p stays a NaN loss."""
        p, t = to_host(probs), to_host(targets)
        picked = p[np.arange(len(t)), t]
        bad = np.flatnonzero((picked < 0) | (picked > 1))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{self.describe()}: p[{i}, {int(t[i])}] = {picked[i]!s} is not a probability in [0, 1]; "
                             "CrossEntropy takes probabilities (a Softmax layer's output): for logits use "
                             "SoftmaxCrossEntropy, PyTorch's CrossEntropyLoss")

    def backward(self):
        dprobs = self._backward_check()
        kernels(dprobs).crossentropy_backward(dprobs, self.probs, self.targets)
        return dprobs


@dataclass(eq=False)
class SoftmaxCrossEntropy(_ClassificationLoss):
    """On logits z (N, C) and labels t (N,), fused:  L = (1/N) Σ_i (logsumexp(z_i) − z_i,t_i),
    the same as PyTorch's CrossEntropyLoss(). Backward: dz = (softmax(z) − onehot(t)) / N.
    Finite for logits of any size (the row maximum is subtracted before exponentiating)."""

    probs_buf: Any = field(init=False, default=None, repr=False)  # the softmax, kept for backward

    def forward(self, logits, targets):
        probs, dlogits, losses = self.probs_buf, self.dinp, self.losses
        # The common case in few checks (as Layer._check_input): host logits of the last call's
        # shape and dtype (and none of this loss's buffers) with C-contiguous integer labels in
        # range. This runs every step, and the full checks and buffer look-ups cost ~2 µs of a
        # ~100 µs batch-1 step.
        if (type(logits) is np.ndarray and type(targets) is np.ndarray and probs is not None
                and type(probs) is np.ndarray and logits.shape == probs.shape and logits.dtype == probs.dtype
                and logits.flags.c_contiguous and targets.shape == losses.shape and targets.dtype.kind in "iu"
                and targets.dtype.isnative and targets.flags.c_contiguous
                and dlogits is not None and dlogits.shape == probs.shape
                and (logits.base is None or (logits.base is not probs.base and logits.base is not dlogits.base))):
            lo, hi = cpu.label_bounds(targets)
            if lo >= 0 and hi < logits.shape[1]:
                self.probs, self.targets = probs, targets
                return float(cpu.softmax_crossentropy_forward_backward(dlogits, probs, losses, logits, targets))
        logits, targets = self._check_pair(logits, targets)
        probs = self._buffer("probs_buf", logits, logits.shape, logits.dtype)
        losses = self._buffer("losses", logits, (logits.shape[0],), logits.dtype)
        self.probs, self.targets = probs, targets
        # One pass over the logits computes the backward's dz too; backward() only returns it.
        # (softmax_crossentropy_forward / _backward, the two halves, are its tested reference.)
        dlogits = self._buffer("dinp", logits, logits.shape, logits.dtype)
        return self._loss(float(kernels(logits).softmax_crossentropy_forward_backward(dlogits, probs, losses, logits,
                                                                                      targets)))

    def backward(self):
        return self._backward_check()


def _targets_like(loss, target, pred):
    """Float targets for pred (N, D): a list becomes an array, (N,) becomes (N, 1) when D = 1, a
    host array of another real dtype is converted to pred's; then shape and device as pred's."""
    if isinstance(target, (list, tuple)):
        target = np.asarray(target)
    if getattr(target, "ndim", None) == 1 and pred.shape[1] == 1:  # device targets too
        target = target.reshape(-1, 1)
    if isinstance(target, np.ndarray):
        real = np.issubdtype(target.dtype, np.number) or target.dtype == np.bool_
        if target.dtype != pred.dtype and real and not np.iscomplexobj(target):
            target = target.astype(pred.dtype)
    target = loss._check_input(target, pred.shape[1], pred.dtype, like=pred)
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(f"{loss.describe()}: expected targets of shape {tuple(pred.shape)}, got {tuple(target.shape)}")
    return target


@dataclass(eq=False)
class MSELoss(Layer):
    """On predictions p (N, D) and targets t (N, D):  L = (1/(N D)) Σ_ij (p_ij − t_ij)², the same as
    PyTorch's MSELoss(). Backward: dp = 2 (p − t) / (N D).

    Targets may be a list, (N,) for (N, 1) predictions, or of another real dtype (converted to the
    predictions' dtype: float64 targets for a float32 model are rounded to float32 once, here)."""

    pred: Any = field(init=False, default=None, repr=False)
    target: Any = field(init=False, default=None, repr=False)
    dinp: Any = field(init=False, default=None, repr=False)

    def forward(self, pred, target):
        pred = self._check_input(pred)
        target = _targets_like(self, target, pred)
        self.pred, self.target = pred, target
        return float(kernels(pred).mse_forward(pred, target))

    def backward(self):
        if self.pred is None:
            raise ValueError("MSELoss(): backward called before forward")
        dpred = self._buffer("dinp", self.pred, self.pred.shape, self.pred.dtype)
        kernels(dpred).mse_backward(dpred, self.pred, self.target)
        return dpred


@dataclass(eq=False)
class BCEWithLogits(Layer):
    """Sigmoid + binary cross-entropy on logits z (N, C), fused and stable, for binary (C = 1) and
    multi-label targets t (N, C) of 0/1 (or probabilities):
        L = (1/(N C)) Σ_ij max(z_ij, 0) − z_ij t_ij + log(1 + e^(−|z_ij|)),   dz = (σ(z) − t) / (N C)
    the same as PyTorch's BCEWithLogitsLoss() (mean over every element). Targets as MSELoss's:
    (N,) is read as (N, 1), lists and other dtypes are converted to the logits' dtype."""

    logits: Any = field(init=False, default=None, repr=False)
    target: Any = field(init=False, default=None, repr=False)
    dinp: Any = field(init=False, default=None, repr=False)

    def forward(self, logits, target):
        logits = self._check_input(logits)
        target = _targets_like(self, target, logits)
        self.logits, self.target = logits, target
        return float(kernels(logits).bce_with_logits_forward(logits, target))

    def backward(self):
        if self.logits is None:
            raise ValueError("BCEWithLogits(): backward called before forward")
        dlogits = self._buffer("dinp", self.logits, self.logits.shape, self.logits.dtype)
        kernels(dlogits).bce_with_logits_backward(dlogits, self.logits, self.target)
        return dlogits


# The losses by the names nb.train, nb.evaluate, nb.gradcheck and `nbnet train --loss` take.
LOSSES = {"cross-entropy": SoftmaxCrossEntropy, "mse": MSELoss, "bce": BCEWithLogits}


def check_loss(loss):
    if not isinstance(loss, str) or loss not in LOSSES:
        # PyTorch's habit, a loss object: said as unknown, with no word of which name is that loss
        name = {cls: key for key, cls in LOSSES.items()}.get(type(loss))
        hint = f"; loss= takes a name: {type(loss).__name__}() is loss={name!r}" if name else ""
        raise ValueError(f"unknown loss {loss!r} (use {', '.join(LOSSES)}){hint}")
    return loss
