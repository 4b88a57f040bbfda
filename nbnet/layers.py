"""Layers: plain dataclasses holding parameters, gradients and the forward cache.

Each layer's forward/backward checks its input once, then calls its kernels (Linear's backward: two,
dW and db, then dX) from nbnet.cpu (NumPy arrays) or nbnet.gpu (CUDA device arrays), the same names
and arguments in both: the array's location picks the module, nothing else changes.

Buffers: a layer owns its output and input-gradient arrays and reuses them while the batch size
stays the same, so a training step allocates nothing. The array `forward` returns is therefore
overwritten by the next `forward` of the same layer: copy it if you need to keep it.

Layers and losses are callable, as in PyTorch: `layer(x)` is `layer.forward(x)`. A forward takes
exactly its dtype and converts nothing (a float64 batch into a float32 Linear is a ValueError, not a
silent downcast); nb.train / nb.evaluate / nb.predict are where features get converted.
"""

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import cpu, simd
from .files import gib, memory_budget


_FLOATS = (np.float32, np.float64)


def kernels(arr):
    """The kernel module for where `arr` lives: nbnet.cpu for NumPy arrays, else nbnet.gpu."""
    if isinstance(arr, np.ndarray):
        return cpu
    from . import gpu  # noqa: PLC0415 - optional, needs numba-cuda

    return gpu


def to_host(arr):
    """arr itself on the host, a host copy of a device array."""
    return arr if isinstance(arr, np.ndarray) else arr.copy_to_host()


def check_set_to_none(who, set_to_none):
    """torch's zero_grad(set_to_none=...): False is what nbnet's zero_grad does; True (torch's
    default) is refused, not ignored, since a step() with no backward since would still apply
    momentum, Adam's moments and weight decay where torch's skips the parameter."""
    if set_to_none is not False and set_to_none is not np.False_:
        raise ValueError(f"{who}.zero_grad: set_to_none={set_to_none!r}: nbnet's zero_grad() sets the gradients to 0, "
                         "as torch's set_to_none=False (the same values after the next backward); call zero_grad()")


def empty_like_shape(like, shape, dtype):
    """An uninitialised array of `shape` on the same device as `like`."""
    if isinstance(like, np.ndarray):
        return simd.empty(shape, dtype)
    from . import gpu  # noqa: PLC0415

    return gpu.empty(shape, dtype)


def let_go_of_batch(model):
    """Drop the batch the first layer keeps for a backward (`inp`), once nothing will backpropagate
    it: it is the caller's array or a view of it, which keeps all of it alive (the whole data set
    nb.predict and nb.evaluate ran in batches, or the copy they converted it into, or on the GPU
    the data set they copied over), for as long as the model lives. The model is marked
    (`_let_go`, until its next forward), so that its backward refuses, whatever its first layer:
    one of the user's that keeps `inp` met None inside its own code (a TypeError)."""
    layers = getattr(model, "layers", None)
    if layers and getattr(layers[0], "inp", None) is not None:
        layers[0].inp = None
        with contextlib.suppress(AttributeError):  # (a model object of the user's with __slots__)
            model._let_go = True


def array_fault(arr, shape, dtype, on_host):
    """None when `arr` is what a kernel indexes without checks: a C-contiguous array of `shape` and
    `dtype`, on the host (on_host) or the GPU; else what it is instead, for an error message."""
    host = isinstance(arr, np.ndarray)
    if not (host or hasattr(arr, "copy_to_host")) or not hasattr(arr, "dtype"):
        return type(arr).__name__
    contiguous = arr.flags.c_contiguous if host else arr.is_c_contiguous()
    if contiguous and tuple(arr.shape) == tuple(shape) and arr.dtype == dtype and host == on_host:
        return None
    layout = "C-contiguous" if contiguous else "strided"
    return f"a {layout} {arr.dtype} {tuple(arr.shape)} {'host' if host else 'GPU'} array"


KEPT_VIEWS = 4  # row counts Layer._first_rows keeps a view for, per buffer

# A smaller batch runs in the first rows of a layer's larger buffer (Layer._buffer) unless that
# buffer is both over KEPT_BYTES and more than KEPT_ROWS times the rows asked for: then it is let
# go and one of the batch's size made. Kept, one model(x) of 100,000 rows left a 784-256-128-10 MLP
# (0.94 MB of weights) holding 313 MB for the rest of its life, however small its batches after.
# Below the limits, an epoch's short last batch and a batch of 1 after 128 still allocate nothing.
KEPT_BYTES = 16 << 20
KEPT_ROWS = 4
_MADE_AGAIN = ("_kept_", "_views_", "_apart_")  # attribute prefixes of Layer._buffer, _first_rows, _device_overlap


def forward_state(name, attrs):
    """Whether attribute `name` of a layer (whose __dict__ is `attrs`) is what its next forward makes
    again: the forward's cache (`inp`, the last batch), a buffer of Layer._buffer (and the largest
    one kept behind it, and its views), or what the checks keep by identity. A copy of the layer
    (Layer.__getstate__) and a move to another device (nbnet.gpu.move_model) leave them behind."""
    return name in ("inp", "_checked") or name.startswith(_MADE_AGAIN) or "_kept_" + name in attrs


def _worth_keeping(kept, rows):
    """Whether a batch of `rows` rows runs in the first rows of the buffer `kept` (see KEPT_BYTES)."""
    return kept.nbytes <= KEPT_BYTES or kept.shape[0] <= KEPT_ROWS * rows


def _view_of(buf, kept, like):
    """buf is kept or a view of it, and both are on like's device. A device view has no .base:
    where it lies says it (nbnet.gpu.byte_span; asked only when a buffer changes shape)."""
    if type(like) is np.ndarray:
        return type(buf) is np.ndarray and type(kept) is np.ndarray and kept.base is buf.base
    if type(buf) is np.ndarray or type(kept) is np.ndarray or not hasattr(buf, "copy_to_host"):
        return False
    if buf is kept:
        return True
    from .gpu import byte_span  # noqa: PLC0415 - only device arrays get here

    (blo, bhi), (klo, khi) = byte_span(buf), byte_span(kept)
    return klo <= blo and bhi <= khi


@dataclass(eq=False)
class Parameter:
    """A handle on one parameter of a layer: `.data` and `.grad` are that layer's arrays, looked up
    on each access, so the handle stays valid when the layer's arrays are replaced (e.g. moved to
    the GPU) or assigned. After zero_grad(), `.grad` reads zeros (see Linear)."""

    layer: Any
    name: str

    @property
    def data(self):
        return getattr(self.layer, self.name)

    @property
    def grad(self):
        return getattr(self.layer, "grad_" + self.name)

    # PyTorch's hand-written step `p.data -= lr * p.grad` (and `p.grad /= n`) works in place, then
    # Python assigns the result back: without setters that raised AttributeError after the first
    # parameter's update. An assignment is the layer's, as `layer.weight = w` (checked at its next call).
    @data.setter
    def data(self, value):
        setattr(self.layer, self.name, value)

    @grad.setter
    def grad(self, value):
        if value is None:  # torch's way of clearing: taken, it failed at the next backward, far from here
            layer = self.layer.describe() if isinstance(self.layer, Layer) else type(self.layer).__name__
            raise ValueError(f"grad of {self.name} of {layer}: nbnet keeps every gradient array, so it cannot be "
                             "None; clear gradients with model.zero_grad() or opt.zero_grad()")
        setattr(self.layer, "grad_" + self.name, value)

    @property
    def shape(self):
        return self.data.shape

    # torch freezes a parameter with `p.requires_grad = False`: on this dataclass that set an
    # attribute nothing reads, and the "frozen" layer went on training, silently. Every backward
    # computes every gradient; what trains is what the optimizer was given.
    @property
    def requires_grad(self):
        return True

    @requires_grad.setter
    def requires_grad(self, value):
        if not value:
            layer = self.layer.describe() if isinstance(self.layer, Layer) else type(self.layer).__name__
            raise ValueError(f"{self.name} of {layer}: nbnet has no requires_grad, so this would not "
                             "freeze it; to freeze a layer, give the optimizer the other parameters only: "
                             "nb.SGD([p for p in model.parameters() if p not in model[0].parameters()], lr=...)")

    def requires_grad_(self, requires_grad=True):
        self.requires_grad = requires_grad
        return self

    # One parameter whatever handle names it: parameters() makes new handles on each call, so by
    # identity `p not in model[0].parameters()` (PyTorch's way of freezing a layer, where the
    # handles are the same objects) held for every p, and the "frozen" layer was trained.
    def __eq__(self, other):
        if not isinstance(other, Parameter):
            return NotImplemented
        return self.layer is other.layer and self.name == other.name

    def __hash__(self):
        return hash((id(self.layer), self.name))


class Layer:
    """What every layer shares: no parameters by default, a reusable buffer, and input checks.

    Subclass it to write a layer of your own (README: "Writing your own layer"): forward(x) -> y,
    backward(grad_y) -> grad_x (adding into the gradients of its parameters), and parameters()
    [Parameter(self, "weight"), ...] for each array `weight` with its gradient in `grad_weight`.
    `training` is False while the layer is scored (model.eval(), nb.evaluate, nb.predict, nb.train's
    validation and test scores): a layer that behaves differently in training (dropout) reads it."""

    training = True  # (a class attribute, not a dataclass field: subclasses' constructors take no such argument)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def parameters(self):
        return []

    def zero_grad(self):
        """Every gradient reads as zeros from now on (here: filled; Linear only marks them)."""
        for p in self.parameters():
            kernels(p.grad).fill(p.grad, 0)

    def config(self):
        """The constructor arguments that rebuild this layer (saved in checkpoints)."""
        return {}

    def _buffer(self, name, like, shape, dtype):
        """self.<name>, reallocated only when the shape, dtype or device changes; a batch of fewer
        rows (an epoch's last, short one) gets the first rows of the largest one
        (self._kept_<name>), and the next full batch that one again: reallocating both ways cost
        two allocations of every buffer an epoch, every other step where an epoch has two (on the
        GPU too, where each is a cudaMalloc and a free). Not where the larger one is far larger
        (KEPT_BYTES): a big forward's buffers are let go at the next small batch."""
        buf = getattr(self, name, None)
        if (
            buf is None
            or buf.shape != shape
            or buf.dtype != dtype
            or isinstance(buf, np.ndarray) != isinstance(like, np.ndarray)
        ):
            kept = getattr(self, "_kept_" + name, None)
            # Only while self.<name> is its view: None there asks for a new array (see _out).
            if (kept is not None and buf is not None and kept.dtype == dtype and kept.shape[1:] == shape[1:]
                    and kept.shape[0] >= shape[0] and len(shape) == kept.ndim and _worth_keeping(kept, shape[0])
                    and _view_of(buf, kept, like)):
                buf = kept if kept.shape[0] == shape[0] else self._first_rows(name, kept, shape[0], like)
            else:
                buf = empty_like_shape(like, shape, dtype)
                setattr(self, "_kept_" + name, buf)
                setattr(self, "_views_" + name, None)  # views of the array replaced: not to be kept alive
            setattr(self, name, buf)
        return buf

    def _first_rows(self, name, kept, rows, like):
        """kept[:rows], the same view object each time for a given row count: a Sequential's plan
        (nbnet.model._Plan) runs on the arrays it was built with, checked by identity, and a new
        view at every change of batch size (training's batch after a larger evaluation batch,
        every epoch) left each plan stale, rebuilt every epoch. A few row counts are kept (an
        epoch's batch and short last batch, the evaluation's short last batches)."""
        kept_views = getattr(self, "_views_" + name, None)
        if kept_views is None or kept_views[0] is not kept:
            kept_views = (kept, {})
            setattr(self, "_views_" + name, kept_views)
        views = kept_views[1]
        view = views.pop(rows, None)  # put back last: the least recently used goes first
        if view is None or not _view_of(view, kept, like):  # (a copied layer's are copies, not views)
            if len(views) >= KEPT_VIEWS:
                views.pop(next(iter(views)))
            view = kept[:rows]
        views[rows] = view
        return view

    def __getstate__(self):
        # A copy (pickle, copy.deepcopy) is the layer: its parameters, gradients and settings, not
        # what a forward makes again (forward_state). Carried, the pickle of a 64-128-10 model (38 KB
        # of weights) was 183 MB after one training step at 100,000 rows (the largest batch's outputs
        # and input gradients), every deepcopy as large, and the copy held the last batch, a view
        # that keeps the caller's whole data set alive. (So a copy's buffers are made by its next
        # forward, as nbnet's own arrays, which the forward's alias check looks among: simd.made_here.)
        return {k: None if forward_state(k, self.__dict__) else v for k, v in self.__dict__.items()
                if not k.startswith(_MADE_AGAIN)}

    def _aliases(self, x, name):
        """x is (a view of) self.<name>, or of the array that is the first rows of (self._kept_<name>,
        see _buffer): a kernel writing that buffer would overwrite x while reading it. On the host
        the views of one array share its .base; on the GPU where they lie says it."""
        buf = getattr(self, name, None)
        if buf is None:
            return False
        if x is buf or type(x) is np.ndarray:
            return x is buf or (type(buf) is np.ndarray and x.base is not None and x.base is buf.base)
        kept = getattr(self, "_kept_" + name, None)
        return self._device_overlap(x, buf, name) or (
            kept is not None and kept is not buf and self._device_overlap(x, kept, "_kept_" + name))

    def _device_overlap(self, x, buf, name):
        """Device arrays x and buf share memory: a device view has no .base to compare (a host
        view cannot alias a device buffer), so where they lie says it (nbnet.gpu.byte_span). A
        pair found apart is kept (by identity, as self._apart_<name>): a training step passes the
        same buffers each time, and computes no span. Two arrays apart stay apart, and deepcopy
        gives each device array memory of its own (Sequential.__deepcopy__): the copies are apart too."""
        if type(x) is np.ndarray or type(buf) is np.ndarray or not hasattr(x, "copy_to_host"):
            return False
        apart = getattr(self, "_apart_" + name, None)  # weak: a pair held kept replaced buffers on the GPU
        if apart is not None and apart[0]() is x and apart[1]() is buf:
            return False
        from .gpu import byte_span  # noqa: PLC0415 - only device arrays get here

        (xlo, xhi), (blo, bhi) = byte_span(x), byte_span(buf)
        if xlo < bhi and blo < xhi:
            return True
        setattr(self, "_apart_" + name, (weakref.ref(x), weakref.ref(buf)))
        return False

    def _check_input(self, x, width=None, dtype=None, like=None):
        """x checked (an array, float32/64, (N, width), not empty) and C-contiguous; with `like`,
        also on like's device (a host batch is copied to the GPU when the parameters live there)."""
        # The common case (a host batch that is already right) in few checks: this runs for every
        # layer of every step, and the full checks cost a few µs per step at batch 1.
        if (type(x) is np.ndarray and x.ndim == 2 and x.shape[0] and (width is None or x.shape[1] == width)
                and (x.dtype == dtype if dtype is not None else x.dtype in _FLOATS) and x.flags.c_contiguous
                and (like is None or type(like) is np.ndarray)):
            return x
        if not isinstance(x, np.ndarray) and not hasattr(x, "copy_to_host"):
            # A torch tensor has a shape and a dtype, but torch's: reading it as NumPy's raised
            # AttributeError ('torch.dtype' object has no attribute 'kind').
            raise ValueError(f"{self.describe()}: expected a NumPy array, got {type(x).__name__}")
        if x.dtype not in (np.float32, np.float64):
            swapped = (f" in the other byte order (x.astype('{x.dtype.newbyteorder('=').name}') makes it native)"
                       if x.dtype.kind == "f" and not x.dtype.isnative else "")
            raise ValueError(f"{self.describe()}: expected dtype float32 or float64, got {x.dtype}{swapped}")
        if dtype is not None and x.dtype != dtype:  # never converted here (no silent casts): said how
            want = np.dtype(dtype).name
            raise ValueError(f"{self.describe()}: expected dtype {want}, got {x.dtype} (x.astype(np.{want}), or "
                             f"model.astype(np.{x.dtype.name}) for a {x.dtype.name} model; nb.predict and nb.train "
                             "convert their input)")
        if x.ndim != 2 or (width is not None and x.shape[1] != width):
            expected = f"(N, {width})" if width is not None else "(N, D)"
            # one sample given as a row (a torch habit: nn.Linear takes (in,)): said as nb.predict says it
            one = " (one sample: x[None])" if x.ndim == 1 and x.shape[0] == (width or x.shape[0]) else ""
            raise ValueError(f"{self.describe()}: expected input of shape {expected}, got {tuple(x.shape)}{one}")
        if x.shape[0] == 0:
            raise ValueError(f"{self.describe()}: got an empty batch of shape {tuple(x.shape)}")
        if isinstance(x, np.ndarray) and not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        if like is not None and isinstance(x, np.ndarray) != isinstance(like, np.ndarray):
            from .gpu import to_device_like  # noqa: PLC0415

            x = to_device_like(x, like)
        return x

    def _check_grad(self, dout, out):
        if (type(dout) is np.ndarray and type(out) is np.ndarray and dout.shape == out.shape
                and dout.dtype == out.dtype and dout.flags.c_contiguous):
            return dout  # the common case, in few checks (as _check_input)
        if out is None:
            raise ValueError(f"{self.describe()}: backward called before forward (or after nb.predict, "
                             "nb.evaluate or nb.train, which keep no batch to backpropagate)")
        if not isinstance(dout, np.ndarray) and not hasattr(dout, "copy_to_host"):
            # model.backward(loss) is PyTorch's loss.backward() spelled with the float a loss returns;
            # a torch tensor was 'expected gradient dtype float32, got torch.float32'.
            raise ValueError(f"{self.describe()}: expected the gradient array dL/dY {tuple(out.shape)}, e.g. "
                             f"loss_fn.backward(), got {type(dout).__name__}")
        if tuple(dout.shape) != tuple(out.shape):
            raise ValueError(
                f"{self.describe()}: expected gradient of shape {tuple(out.shape)}, got {tuple(dout.shape)}"
            )
        if dout.dtype != out.dtype:
            raise ValueError(f"{self.describe()}: expected gradient dtype {out.dtype}, got {dout.dtype}")
        if isinstance(dout, np.ndarray) and not dout.flags.c_contiguous:
            dout = np.ascontiguousarray(dout)
        if isinstance(dout, np.ndarray) != isinstance(out, np.ndarray):
            # As _check_input: the kernels are picked by the gradient's device, and the layer's
            # arrays live on the other one (a host gradient for a model on the GPU, say).
            from .gpu import to_device_like  # noqa: PLC0415

            dout = to_device_like(dout, out)
        return dout

    def describe(self):
        return type(self).__name__ + "()"


def _he_uniform(rng, out_features, in_features, dtype):
    """He (Kaiming) uniform: U(-√(6/fan_in), √(6/fan_in)), keeps ReLU activations' variance. Drawn
    in float64 a block of rows at a time: the same numbers as one draw of the whole (the
    generator's stream is sequential), without a float64 copy of a float32 layer beside it."""
    bound = np.sqrt(6.0 / in_features)
    weight = np.empty((out_features, in_features), dtype)
    rows = max(1, (1 << 20) // in_features)  # 8 MB of float64 a block
    for r in range(0, out_features, rows):
        weight[r : r + rows] = rng.uniform(-bound, bound, size=(min(rows, out_features - r), in_features))
    return weight


@dataclass(eq=False)
class Linear(Layer):
    """Y = X Wᵀ + b:  y_ij = Σ_l x_il w_jl + b_j.   X (N, in), W (out, in), b (out,).

    Backward with G = dL/dY:  dW += Gᵀ X,  db += Σ_i G_i,  dX = G W.
    Weights He-uniform from `seed`, bias zero. With bias=False there is no b (`.bias` and
    `.grad_bias` are None, parameters() is [weight]): the kernels get a zero vector for b and a
    scratch for db that nothing reads, so every device runs the one tested kernel.

    zero_grad() writes nothing: it marks the gradients as zeros, and the next backward writes
    dW = Gᵀ X, db = Σ_i G_i instead of adding (the same values as adding them to zeros, without
    a pass over the arrays first: at batch 1 that pass cost as much as the backward itself).
    Reading `.grad_weight` / `.grad_bias` (or a Parameter's `.grad`) while they are marked fills
    them with zeros first, so every read sees zeros; an array taken from them before zero_grad()
    keeps its old values until the next backward or read (as torch's zero_grad(set_to_none=True)
    leaves an old .grad tensor alone). Assigning `.grad_weight = arr` clears the mark.
    """

    in_features: int
    out_features: int
    bias: Any = field(default=True, kw_only=True, repr=False)
    dtype: Any = field(default=np.float32, kw_only=True)
    seed: Any = field(default=None, kw_only=True, repr=False)
    weight: Any = field(init=False, repr=False)
    _grad_weight: Any = field(init=False, default=None, repr=False)  # behind the grad_weight property
    _grad_bias: Any = field(init=False, default=None, repr=False)
    _zero_weight: bool = field(init=False, default=False, repr=False)  # marked by zero_grad: reads as zeros
    _zero_bias: bool = field(init=False, default=False, repr=False)
    inp: Any = field(init=False, default=None, repr=False)  # forward cache: X
    out: Any = field(init=False, default=None, repr=False)
    dinp: Any = field(init=False, default=None, repr=False)
    weight_t: Any = field(init=False, default=None, repr=False)  # forward scratch: Wᵀ
    _checked: Any = field(init=False, default=None, repr=False)  # the arrays _check_arrays last passed
    training: bool = field(init=False, default=True, repr=False)  # (Layer.training; set in __init__, as every attribute)

    def __post_init__(self):
        for name in ("in_features", "out_features"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Linear: {name} must be a positive integer, got {v!r}")
        self.in_features, self.out_features = int(self.in_features), int(self.out_features)
        # np.dtype(None) is float64: dtype=None would double a layer's size behind the float32 default.
        dtype = None if self.dtype is None else np.dtype(self.dtype).type
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"Linear: dtype must be float32 or float64, got {dtype if dtype is None else np.dtype(dtype)}")
        self.dtype = dtype
        if not isinstance(self.bias, (bool, np.bool_)):
            raise ValueError(f"Linear: bias must be True or False, got {self.bias!r}")
        has_bias = bool(self.bias)
        need, budget = 2 * self.out_features * self.in_features * np.dtype(self.dtype).itemsize, memory_budget()
        if need > budget:  # before allocating: a layer that cannot be trained here is an error, not a swap storm
            raise ValueError(f"{self!r}: its weight and gradient need {gib(need)}, more than {gib(budget)}, "
                             "half of this machine's memory")
        try:
            rng = np.random.default_rng(self.seed)
        except (TypeError, ValueError):  # NumPy's words named neither this layer nor the argument
            raise ValueError(f"{self.describe()}: seed must be None, a non-negative integer or a sequence of "
                             f"them, got {self.seed!r}") from None
        self.weight = _he_uniform(rng, self.out_features, self.in_features, self.dtype)
        self.bias = np.zeros(self.out_features, self.dtype) if has_bias else None
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = np.zeros_like(self.bias) if has_bias else None

    def __repr__(self):
        extra = ", bias=False" if self.bias is None else ""
        dtype = "" if self.dtype is np.float32 else f", dtype=np.{np.dtype(self.dtype).name}"
        return f"Linear({self.in_features}, {self.out_features}{extra}{dtype})"

    def describe(self):
        return f"Linear({self.in_features}, {self.out_features})"

    @property
    def grad_weight(self):
        """dL/dW (out, in); zeros after zero_grad() until the next backward."""
        if self._zero_weight:
            self._zero_marked()
        return self._grad_weight

    @grad_weight.setter
    def grad_weight(self, value):
        self._grad_weight, self._zero_weight = value, False

    @property
    def grad_bias(self):
        """dL/db (out,), or None with bias=False; zeros after zero_grad() until the next backward."""
        if self._zero_bias:
            self._zero_marked()
        return self._grad_bias

    @grad_bias.setter
    def grad_bias(self, value):
        self._grad_bias, self._zero_bias = value, False

    def zero_grad(self):
        """Mark both gradients as zeros, writing nothing (see the class docstring)."""
        self._zero_weight = True
        self._zero_bias = self._grad_bias is not None

    def _zero_marked(self):
        """Fill the marked gradients with zeros for real and clear their marks."""
        for name in ("weight", "bias"):
            if getattr(self, "_zero_" + name):
                setattr(self, "_zero_" + name, False)
                arr = getattr(self, "_grad_" + name)
                kernels(arr).fill(arr, 0)

    def _accumulate(self):
        """For this backward's kernel: False (write dW and db) when zero_grad marked both as zeros
        since the last backward, else True (add). Clears the marks; a gradient marked alone (an
        optimizer over the weight only, say) is zeroed for real first."""
        if self._zero_weight and (self._zero_bias or self._grad_bias is None):
            self._zero_weight = self._zero_bias = False
            return False
        self._zero_marked()
        return True

    def config(self):
        cfg = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "dtype": np.dtype(self.dtype).name,
        }
        if self.bias is None:  # only then: checkpoints of a biased layer read as before
            cfg["bias"] = False
        return cfg

    def parameters(self):
        if self.bias is None:
            return [Parameter(self, "weight")]
        return [Parameter(self, "weight"), Parameter(self, "bias")]

    def _bias(self, like):
        """b, or for bias=False a zero vector on like's device (made once per device)."""
        if self.bias is not None:
            return self.bias
        zeros = getattr(self, "zero_bias", None)
        if zeros is None or isinstance(zeros, np.ndarray) != isinstance(like, np.ndarray):
            zeros = self._buffer("zero_bias", like, (self.out_features,), self.weight.dtype)
            kernels(zeros).fill(zeros, 0)
        return zeros

    def _dbias(self, like):
        """db's array as it is (a mark of zero_grad left alone), or for bias=False a scratch the
        kernel writes into and nothing reads."""
        if self._grad_bias is not None:
            return self._grad_bias
        return self._buffer("grad_bias_scratch", like, (self.out_features,), self.weight.dtype)

    def _check_arrays(self):
        """Weight, bias and their gradients must be what the kernels index: arrays may be assigned
        (`layer.weight = w`), and the kernels do not check bounds, dtypes or strides, so a wrong
        shape would read or write past an array and a float64 or strided one fail inside Numba.
        Checked again only when one of them was replaced (by identity: a few attribute reads)."""
        c = self._checked
        if (c is not None and c[0] is self.weight and c[1] is self.bias and c[2] is self._grad_weight
                and c[3] is self._grad_bias):
            return
        dtype, w = np.dtype(self.dtype), (self.out_features, self.in_features)
        shapes = {"weight": w, "bias": w[:1], "grad_weight": w, "grad_bias": w[:1]}
        arrays = {name: getattr(self, "_" + name if name.startswith("grad") else name) for name in shapes}
        # The device most of the arrays live on (ties: the gradients', which users seldom assign):
        # one array assigned from the other device is the one named, not its untouched neighbour.
        # A list assigned counts as a host array gone wrong.
        hosts = [not hasattr(a, "copy_to_host") for a in arrays.values() if a is not None]
        on_host = 2 * sum(hosts) > len(hosts) or (2 * sum(hosts) == len(hosts)
                                                   and not hasattr(self._grad_weight, "copy_to_host"))
        for name, arr in arrays.items():
            if arr is None and name.endswith("bias"):
                continue
            fault = array_fault(arr, shapes[name], dtype, on_host)
            if fault:
                raise ValueError(
                    f"{self.describe()}: {name} must be a C-contiguous {dtype} {shapes[name]} {'host' if on_host else 'GPU'} "
                    f"array (np.ascontiguousarray(a, np.{dtype}) makes one), got {fault}")
        self._checked = (self.weight, self.bias, self._grad_weight, self._grad_bias)

    def forward(self, x):
        self._check_arrays()
        x = self._check_input(x, self.in_features, self.dtype, like=self.weight)
        self.inp = x
        out = self._out(x)
        kernels(x).linear_forward(out, x, self.weight, self._bias(x), self._weight_t(x))
        return out

    def forward_relu(self, x, relu):
        """This layer then `relu` (a ReLU) in one kernel: bias and max(0, ·) in the matmul's last
        pass. Leaves both layers' caches as their own forwards would; returns the ReLU's output."""
        self._check_arrays()
        x = self._check_input(x, self.in_features, self.dtype, like=self.weight)
        self.inp = x
        out = self._out(x)
        act = relu._buffer("out", x, out.shape, x.dtype)
        relu.inp = out
        kernels(x).linear_relu_forward(out, act, x, self.weight, self._bias(x), self._weight_t(x))
        return act

    def _out(self, x):
        """The output buffer for x; a new one when x is (a view of) the last one, as in lin(lin(x)):
        the kernel would overwrite its input while reading it, and dW = Gᵀ X read the result."""
        if self._aliases(x, "out"):
            self.out = None
        return self._buffer("out", x, (x.shape[0], self.out_features), x.dtype)

    def _weight_t(self, x):
        """Scratch for Wᵀ, which the CPU forward uses at some shapes (nbnet.cpu.forward_over_weight_t)."""
        k = x.shape[0]
        if (k < cpu.FORWARD_T_ROWS or kernels(x) is not cpu
                or not cpu.forward_over_weight_t(k, self.in_features, self.out_features, x.dtype)):
            return None
        return self._buffer("weight_t", x, (self.in_features, self.out_features), x.dtype)

    def backward(self, dout, need_input_grad=True, relu=None):
        """dW += Gᵀ X, db += Σ_i G_i (=, not +=, right after zero_grad), and (if wanted) dX = G W.
        With `relu` (the ReLU layer that fed this one), returns the gradient at that ReLU's input
        instead, in the same pass."""
        self._check_arrays()
        dout = self._check_grad(dout, self.out if self.inp is not None else None)  # (inp: see let_go_of_batch)
        k = kernels(dout)
        accumulate = not (self._zero_weight or self._zero_bias) or self._accumulate()
        k.linear_backward_params(self._grad_weight, self._dbias(dout), dout, self.inp, accumulate)
        if not need_input_grad:
            return None
        if relu is not None:
            # the kernel reads relu.inp as this layer's input: another shape reads past its end
            pre = getattr(relu, "inp", None)
            if (not isinstance(relu, ReLU) or type(pre) is not type(self.inp) or pre.shape != self.inp.shape
                    or pre.dtype != self.inp.dtype):
                raise ValueError(f"{self.describe()}.backward: relu= must be the ReLU layer whose forward made "
                                 f"this layer's input, of shape {tuple(self.inp.shape)}")
            dinp = relu._buffer("dinp", dout, self.inp.shape, dout.dtype)
            k.linear_relu_backward_input(dinp, dout, self.weight, relu.inp)
            return dinp
        if self._aliases(dout, "dinp"):  # lin.backward(lin.backward(g)): dX = G W wrote over G while reading it
            self.dinp = None
        dinp = self._buffer("dinp", dout, self.inp.shape, dout.dtype)
        k.linear_backward_input(dinp, dout, self.weight)
        return dinp


@dataclass(eq=False)
class _Activation(Layer):
    """An activation: y = f(x), dx = g ⊙ f'(x) element by element (ReLU, Sigmoid, Tanh), or row by
    row for Softmax (dx_i = J_i g_i, its Jacobian-vector product). Subclasses name their two kernels
    (`kernel = "relu"`: relu_forward and relu_backward, in nbnet.cpu and nbnet.gpu) and whether the
    backward reads the forward's input (ReLU) or its output (Sigmoid, Tanh, Softmax)."""

    inp: Any = field(init=False, default=None, repr=False)
    out: Any = field(init=False, default=None, repr=False)
    dinp: Any = field(init=False, default=None, repr=False)
    training: bool = field(init=False, default=True, repr=False)  # (as Linear's)
    backward_uses_input = False

    def forward(self, x):
        x = self._check_input(x)
        self.inp = x
        # act(act(x)), or a view of the output: written in place, the caller's first output changed
        # under it, and a view shifted by rows raced between threads (one wrote rows another read)
        if self._aliases(x, "out"):
            self.out = None
        out = self._buffer("out", x, x.shape, x.dtype)
        getattr(kernels(x), self.kernel + "_forward")(out, x)
        return out

    def backward(self, dout, need_input_grad=True):
        dout = self._check_grad(dout, self.out if self.inp is not None else None)  # (inp: see let_go_of_batch)
        if self._aliases(dout, "dinp"):  # as forward's: act.backward(act.backward(g)[1:])
            self.dinp = None
        dinp = self._buffer("dinp", dout, dout.shape, dout.dtype)
        saved = self.inp if self.backward_uses_input else self.out
        getattr(kernels(dout), self.kernel + "_backward")(dinp, dout, saved)
        return dinp


@dataclass(eq=False)
class ReLU(_Activation):
    """y = max(0, x); dx = g where x ≥ 0, else 0 (ReLU'(0) = 1, nbnet's convention: README, "Each
    kernel and the equation it implements"; PyTorch uses 0 there)."""

    kernel = "relu"
    backward_uses_input = True


@dataclass(eq=False)
class Sigmoid(_Activation):
    """y = 1 / (1 + e^-x); dx = g y (1 - y)."""

    kernel = "sigmoid"


@dataclass(eq=False)
class Tanh(_Activation):
    """y = tanh(x); dx = g (1 - y²)."""

    kernel = "tanh"


@dataclass(eq=False)
class Softmax(_Activation):
    """Row-wise y_ij = e^(x_ij) / Σ_k e^(x_ik) (max-subtracted); dx_ij = y_ij (g_ij − Σ_k g_ik y_ik)."""

    kernel = "softmax"


LAYERS = {cls.__name__: cls for cls in (Linear, ReLU, Sigmoid, Tanh, Softmax)}
