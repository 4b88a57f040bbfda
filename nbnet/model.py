"""Sequential model, and saving/loading it as a plain .npz (no pickle anywhere).

File layout (also the model part of `nbnet train --save` checkpoints):
    "nbnet/architecture"   JSON string: {"format": "nbnet", "version": 1, "layers": [{"type": ..., ...}]}
    "layer<i>.<name>"      parameter <name> (weight, bias) of layer i
Other keys (optimizer state, config, ...) may sit beside these; `load` ignores them.
"""

import collections.abc
import contextlib
import copy
import functools
import json
import math
import os
import threading
import weakref
from operator import is_

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # NumPy < 2
    from numpy import byte_bounds

from . import cpu, simd, threads
from .files import check_memory, read_npz, write_npz_atomic  # noqa: F401 - nbnet.model.write_npz_atomic is used elsewhere
from .layers import LAYERS, Layer, Linear, Parameter, ReLU, check_set_to_none, forward_state, to_host

ARCH_KEY = "nbnet/architecture"
FORMAT_VERSION = 1
# Memory of one character of JSON text parsed (json_entry), the text as a str included: read_npz
# counts the stored 4 bytes a character, and a list is 56 bytes and more, so nested empty lists
# ("[[[]]],[[[]]],...", as a version 1 checkpoint's history could hold) peak at 43 bytes a
# character (tracemalloc), 10 times what was counted.
JSON_CHAR_BYTES = 48
KEPT_PLANS = 4  # batch shapes a Sequential keeps a plan for: training's, its short last batch, evaluation's


# What load_state_dict returns, as torch's `_IncompatibleKeys`: strict=False's caller can check it.
IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


# torch's and Keras' model methods that nbnet spells otherwise (Sequential.__getattr__)
_OTHER_FRAMEWORKS = {
    "double": "use model.astype(np.float64), which returns a float64 copy",
    "float": "use model.astype(np.float32), which returns a float32 copy",
    "half": "nbnet computes in float32 or float64 (model.astype), not float16",
    "cuda": 'use model.to("cuda")',
    "cpu": 'use model.to("cpu")',
    "fit": "use nb.train(model, opt, (x_train, y_train), epochs=...), or nbnet.sklearn's estimators",
    "compile": "there is no compile step: give the optimizer and loss= to nb.train(model, opt, data, loss=...)",
    "predict": "use nb.predict(model, x), or model(x) for the raw outputs of one batch",
    "evaluate": "use nb.evaluate(model, x, y)",
    "count_params": "use model.num_parameters()",
}


class Sequential:
    """Layers applied in order. `backward(grad)` runs them in reverse and fills the gradients;
    `backward(grad, need_input_grad=True)` also returns dL/dX.

    As torch.nn.Sequential: `Sequential([l1, l2])` or `Sequential(l1, l2)`; `model(x)`,
    `len(model)`, `model[i]` (a layer), `model[i:j]` (a Sequential sharing those layers), iteration
    over the layers, `state_dict()` / `load_state_dict()`. All layers must share one dtype. A
    Sequential among the layers contributes its layers (shared, not copied): the stack stays flat.

    Threads: the layers keep their outputs and the forward's cache in buffers of their own, so one
    model runs one call at a time. `lock` (a threading.RLock) makes that so: forward, backward,
    nb.predict and nb.evaluate (a whole call) and each step of nb.train hold it, so threads may
    predict with one model, and predict while another trains it (between its steps); so do save,
    state_dict, load_state_dict, astype and copy.deepcopy, which take or put the weights of one
    step (pickle.dumps reads the arrays __getstate__ gives after it returns: hold `with model.lock:`
    around it while another thread trains). A backward
    reads the cache of the last forward, which must be its own thread's (else RuntimeError); a
    hand-written loop shared by threads holds `with model.lock:` around forward, backward and step.
    Every Sequential that holds one of the same layers (a slice, `Sequential(body, head)`,
    `Sequential(model.layers)`) has the same lock, since they write the same buffers.
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = layers[0]
        self.layers = _checked_layers(layers)
        pack_parameters(self.parameters())
        self._plan = None  # the kernel calls of a CPU forward and backward at one batch shape (_Plan)
        self._last_shape, self._streak = None, 0  # forwards layer by layer in a row at this batch shape
        self._plan_after = 2  # ... after which one builds a plan; doubled when a plan's arrays were replaced
        self._plans = {}  # batch shape -> its plan, for the last few shapes planned (_forward)
        _join_group(self)  # .lock and ._forward_thread: see the class docstring and _join_group

    def __getstate__(self):
        # A lock cannot be copied or pickled, and the copy is a model of its own: it gets its own.
        # Not the device spans: a copy's arrays lie elsewhere (its layers' copies would pass as held).
        # Nor the plans: they name the original layers (by id), so a copy never runs one; each held
        # the layers' arrays again and the kernels, up to KEPT_PLANS of them in every pickle.
        return {k: v for k, v in self.__dict__.items()
                if k not in ("lock", "_forward_thread", "_device_spans", "_plan", "_plans")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        _join_group(self)  # the copy's layers are its own: a lock of its own (with any model pickled beside it)
        self._plan, self._plans = None, {}

    def __deepcopy__(self, memo):
        # A model on the GPU copies its device arrays on the GPU, each once (the memo keeps an
        # array two layers hold one array): deepcopy itself cannot copy numba-cuda's arrays (the
        # simulator's came out as host arrays, a copy silently on the CPU; real ones hold
        # driver handles, not values). The rest as deepcopy does, through __getstate__.
        new = object.__new__(type(self))
        memo[id(self)] = new
        with self.lock:  # the weights of one step, not some of the next one's (see state_dict)
            for layer in self.layers:
                # what the copy keeps (not the buffers Layer.__getstate__ leaves behind: copied, they
                # took twice the GPU memory of a model trained at a large batch for nothing)
                state = layer.__getstate__() if isinstance(layer, Layer) else vars(layer)
                for value in state.values():
                    if _on_device(value) and id(value) not in memo:
                        memo[id(value)] = copy_device_array(value)
            new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        # deepcopy copies each view of the flat buffer alone: packed again, the copy's optimizer
        # steps in one pass (one launch on the GPU), as the original's
        pack_parameters(new.parameters())
        return new

    def __getattr__(self, name):
        # Called only for a name the model lacks. Users bring torch's and Keras' model methods;
        # "no attribute 'double'" leaves them to search for nbnet's way.
        if name in _OTHER_FRAMEWORKS:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}': "
                                 f"{_OTHER_FRAMEWORKS[name]}")
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __repr__(self):
        inner = ",\n    ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n    {inner},\n])"

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            part = Sequential(self.layers[index])  # the same layers (already packed: left so), and lock ...
            part.lock, part._forward_thread = self.lock, self._forward_thread  # ... also where _GROUPS cannot hold one
            return part
        return self.layers[index]

    def state_dict(self):
        """{"<layer index>.<name>": host array}, e.g. "0.weight", "0.bias", "2.weight" (PyTorch's keys),
        in parameter order. Copies: training on does not change a state_dict taken before."""
        # Under the lock, as a step of nb.train: taken while another thread trains, it held some
        # layers of one step and some of a later one, weights the model never had.
        with self.lock:
            return {key: to_host(p.data).copy() for key, p in self.named_parameters()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters from `state_dict` (as `state_dict()` returns) into this model, in place
        (on whatever device it lives). Shapes and dtypes must match (no silent conversion: use
        `astype` first); strict=False loads the keys that match and ignores the others, but one
        that matches none is a ValueError. Nothing is written unless every entry fits. Returns
        (missing_keys, unexpected_keys), as torch's does."""
        if not isinstance(state_dict, collections.abc.Mapping):
            # A path, a model or a list got "unexpected keys ['w', '.', 'n', 'p', 'z']" or
            # "[Linear(2, 4), ReLU(), ...]": its items, iterated as if they were the keys.
            how = ("nb.load(path) reads a model.save file, a checkpoint's model too: "
                   "model.load_state_dict(nb.load(path).state_dict())" if isinstance(state_dict, (str, os.PathLike))
                   else "model.load_state_dict(other.state_dict())" if isinstance(state_dict, Sequential)
                   else "as model.state_dict() returns")
            raise TypeError(f"load_state_dict takes a dict of arrays by '<layer index>.<name>', not a "
                            f"{type(state_dict).__name__}: {how}")
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        # strict=False with keys that all differ ("net.0.weight", a torch model whose activations
        # are functions: "1.weight" for this model's "2.weight") loaded nothing and said nothing:
        # the model stayed as initialised, and trained or predicted as if it were the loaded one.
        if (missing or unexpected) and (strict or (own and len(missing) == len(own) and unexpected)):
            how = "" if strict else "strict=False, but none of its keys is one of this model's: "
            saved = "nbnet/architecture" in state_dict  # np.load of a model.save file: its own names
            raise ValueError(f"load_state_dict: {how}missing keys {missing}, unexpected keys {unexpected} (keys are "
                             "'<layer index>.<name>', activations counted, as model.state_dict() shows"
                             + ("; these are a model.save file's arrays: nb.load(path) reads them)" if saved else ")"))
        todo = []
        for key, p in own.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            value = value if isinstance(value, np.ndarray) else to_host(value) if hasattr(value, "copy_to_host") else np.asarray(value)
            if value.shape != p.data.shape or value.dtype != p.data.dtype:
                raise ValueError(
                    f"load_state_dict: {key} is {value.shape} {value.dtype}, the model has {p.data.shape} {p.data.dtype}"
                )
            todo.append((p, value))
        with self.lock:  # between two steps of another thread's training, as a whole (see state_dict)
            for p, value in todo:
                if isinstance(p.data, np.ndarray):
                    p.data[...] = value
                else:
                    p.data.copy_to_device(np.ascontiguousarray(value))
        return IncompatibleKeys(missing, unexpected)

    def train(self, mode=True):
        """Put every layer in training mode (`layer.training = mode`; eval() is train(False)), as
        torch's Module.train: only layers that read the flag (a dropout of your own) change. nb.train
        trains in training mode and scores in eval mode; nb.evaluate and nb.predict run in eval
        mode; each puts the layers' modes back as they were. Returns the model."""
        if not isinstance(mode, (bool, np.bool_)):  # model.train(data) is nb.train's call, not this one
            raise TypeError(f"Sequential.train(mode) sets training mode (True or False), got {type(mode).__name__}: "
                            "to train the model call nb.train(model, opt, data, epochs=...)")
        with self.lock:  # not in the middle of another thread's forward
            set_modes(self, bool(mode))
        return self

    def eval(self):
        """train(False): every layer in eval mode (see train). Returns the model."""
        return self.train(False)

    @property
    def training(self):
        """True unless some layer is in eval mode (see train)."""
        return all(getattr(layer, "training", True) for layer in self.layers)

    def num_parameters(self):
        return sum(int(np.prod(p.data.shape)) for p in self.parameters())

    def summary(self):
        """A table of the layers, their output shapes (N is the batch) and parameter counts, with
        the total; a string that prints as the table (and shows as one in a REPL)."""
        rows = [("#", "layer", "output shape", "parameters")]
        width = None
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Linear):
                width = layer.out_features
            elif type(layer) not in LAYERS.values():  # a layer of the user's own may change the width
                width = getattr(layer, "out_features", None)
            n = sum(int(np.prod(p.data.shape)) for p in layer.parameters())
            rows.append((str(i), _named(layer), f"(N, {'?' if width is None else width})", f"{n:,}"))
        sizes = [max(len(r[c]) for r in rows) for c in range(4)]
        line = "-" * (sum(sizes) + 6)

        def fmt(r):
            return f"{r[0]:>{sizes[0]}}  {r[1]:<{sizes[1]}}  {r[2]:<{sizes[2]}}  {r[3]:>{sizes[3]}}"

        body = [fmt(rows[0]), line, *map(fmt, rows[1:]), line]
        body.append(f"{self.num_parameters():,} parameters ({np.dtype(self.dtype).name}, "
                    f"{sum(p.data.nbytes for p in self.parameters()):,} bytes)")  # no host copy of a GPU model's
        return Summary("\n".join(body))

    def _check_rebuildable(self, what, how):
        """ValueError unless every layer is one of nbnet's own, which nb.load and astype rebuild from
        its type's name: a layer of the user's own was saved and then refused by nb.load ("unknown
        layer type"), and a subclass named as a built-in one (Linear) came back as the built-in,
        silently, with its own forward gone."""
        for i, layer in enumerate(self.layers):
            if LAYERS.get(type(layer).__name__) is not type(layer):
                raise ValueError(f"{what}: layer {i} is a {type(layer).__name__}, not one of nbnet's layers "
                                 f"({', '.join(LAYERS)}), and {how}")

    def astype(self, dtype):
        """A copy of this model (on the host) with every layer in `dtype` (np.float32 or
        np.float64), parameters converted; like NumPy's astype, the model itself is unchanged."""
        # np.dtype(None) is float64: astype(None) would double the model, as Linear(dtype=None) would.
        try:
            name = None if dtype is None else np.dtype(dtype).name
        except TypeError:
            name = None
        if name not in ("float32", "float64"):
            raise ValueError(f"astype: dtype must be float32 or float64, got {dtype if name is None else name}")
        self._check_rebuildable("astype", "astype rebuilds each layer from its type's name: convert that one yourself")
        with self.lock:  # state_arrays holds the live arrays: copies of one step's weights (see state_dict)
            arrays = self.state_arrays()
            arch = json.loads(str(arrays[ARCH_KEY]))
            for spec in arch["layers"]:
                if "dtype" in spec:
                    spec["dtype"] = name
            arrays[ARCH_KEY] = np.array(json.dumps(arch))
            for key in arrays:
                if key != ARCH_KEY:
                    # A float64 value past float32's range: Inf, with NumPy's RuntimeWarning, and
                    # model_from_arrays then said the weights "hold NaN or Inf", which this model's do not.
                    with np.errstate(over="ignore"):
                        value = arrays[key].astype(name)
                    if not np.isfinite(value).all() and np.isfinite(arrays[key]).all():
                        big = arrays[key].flat[np.abs(arrays[key]).argmax()]
                        raise ValueError(f"astype: {key} holds {big:g}, too large for {name}")
                    arrays[key] = value
        return model_from_arrays(arrays, source="astype")

    def forward(self, x):
        """The model's output for x, in a new array that belongs to the caller (a later call does
        not touch it, as in PyTorch)."""
        with self.lock:  # taken once, not again in forward_reusing: ~0.2 µs of a step at batch 1
            self._forward_thread[0] = threading.get_ident()
            out = self._forward(x)
            return out.copy() if isinstance(out, np.ndarray) else copy_device_array(out)

    def __call__(self, x):
        # Not `__call__ = forward`: that bound Sequential.forward itself, so in a subclass with a
        # forward of its own, model(x) ran the base class's and model.forward(x) the subclass's.
        return self.forward(x)

    def forward_reusing(self, x):
        """Like `forward`, but returns the last layer's own output buffer, which the next call
        overwrites: the allocation-free path of the training loop, evaluate and predict (which
        hold `lock` while they read it)."""
        with self.lock:
            self._forward_thread[0] = threading.get_ident()
            return self._forward(x)

    _let_go = False  # let_go_of_batch dropped the first layer's batch: backward refuses until a forward

    def _forward(self, x):
        if self._let_go:
            self._let_go = False
        plan = self._plan
        if plan is not None:
            if plan.fits(self, x):
                return plan.forward(_unaliased(x, plan.held))
            self._plan = None
            if plan.takes(x):  # the batch fits but an array was replaced: plan less eagerly
                self._plan_after = min(2 * self._plan_after, 1024)
                self._plans.pop(plan.shape, None)
        if type(x) is np.ndarray and simd.made_here(x):  # only nbnet's own arrays can be a layer's
            x = _unaliased(x, held_arrays(self.layers))
        elif _on_device(x):  # (a type looked up once: a failing hasattr on each host batch costs more)
            x = self._device_unaliased(x)
        out = self._forward_layers(x)
        shape = getattr(x, "shape", None)
        if self._plans:
            # Another batch shape (an epoch's last, short batch; an evaluation batch) ran in the
            # first rows of the layers' buffers, or in larger ones; back at a planned shape, the
            # layers give that plan's very arrays back (Layer._buffer), and it is taken up again:
            # it was rebuilt there, once an epoch, or at each switch between training and a larger
            # evaluation batch.
            kept = self._plans.get(shape)
            if kept is not None and kept.fits(self, x):
                self._plans[shape] = self._plans.pop(shape)  # the most recently used last
                self._plan, self._streak, self._last_shape = kept, 0, shape
                return out
            self._drop_stale_plans()
        # The second forward in a row at one batch shape plans the calls: a shape seen once, such
        # as an epoch's last short batch, is not worth building a plan for.
        self._streak = self._streak + 1 if shape == self._last_shape else 1
        self._last_shape = shape
        if self._streak >= self._plan_after:
            self._plan, self._streak = _Plan.build(self, x), 0
            if self._plan is not None:
                self._plans.pop(shape, None)
                if len(self._plans) >= KEPT_PLANS:
                    self._plans.pop(next(iter(self._plans)))
                self._plans[shape] = self._plan
        return out

    def _drop_stale_plans(self):
        """Forget the plans that can never fit again, so they keep no arrays alive: those of other
        layers, or that run on an array the layers no longer hold (nor a view of one they do)."""
        ids, held = tuple(map(id, self.layers)), held_arrays(self.layers)
        for shape, plan in list(self._plans.items()):
            if plan.ids != ids or not all(id(a) in held or id(a.base) in held for a in plan.arrays()):
                del self._plans[shape]

    def _device_unaliased(self, x):
        """_unaliased for a device batch: x, or a copy when its memory overlaps a device array a layer
        holds (found by where each lies: a device view has no .base). model(model[-1].out) on the GPU
        overwrote the first layer's input in the forward, and dW = Gᵀ X read the overwritten batch.
        The arrays' spans are kept while the layers hold the same arrays (checked by identity, as a
        plan's), so a step computes one span, its batch's. Kept through weak references: holding
        the arrays kept a batch shape's buffers on the GPU after the layers replaced them (after
        nb.evaluate's batch, for good); and each attribute's type is asked once (_on_device): a
        failing hasattr on every int and None of every layer took ~14 µs a step."""
        from .gpu import byte_span, copy  # noqa: PLC0415 - only device arrays get here

        try:
            lo, hi = byte_span(x)
        except (AttributeError, KeyError, TypeError):
            return x  # not a device array after all: the first layer's checks say what it is
        held = [a for layer in self.layers for name, a in vars(layer).items() if name != "inp" and _on_device(a)]
        kept = getattr(self, "_device_spans", None)  # ([weak reference to each held array], [its span])
        if kept is None or len(kept[0]) != len(held) or not all(r() is a for r, a in zip(kept[0], held)):
            kept = self._device_spans = ([weakref.ref(a) for a in held], [byte_span(a) for a in held])
        if lo < hi and any(lo < end and start < hi for start, end in kept[1]):
            return copy(x)
        return x

    def _forward_layers(self, x):
        """The forward layer by layer, through each layer's own checks and buffers."""
        layers, i = self.layers, 0
        while i < len(layers):
            try:
                if self._fuses_relu(i, x):
                    x = layers[i].forward_relu(x, layers[i + 1])
                    i += 2
                else:
                    x = layers[i].forward(x)
                    i += 1
            except ValueError as e:
                if i and type(layers[i]) in _OWN_BACKWARD and type(layers[i - 1]) not in _OWN_BACKWARD:
                    width = layers[i].in_features if type(layers[i]) is Linear else None
                    fault = _made_by_own_layer(layers, i - 1, i, "forward", x, self.dtype, (None, width))
                    if fault is not None:
                        raise fault from e
                raise
        return x

    def _fuses_relu(self, i, x):
        """Layer i is a Linear followed by a ReLU: one kernel does both (cpu and gpu alike)."""
        layers = self.layers
        return i + 1 < len(layers) and type(layers[i]) is Linear and type(layers[i + 1]) is ReLU

    def backward(self, grad, need_input_grad=False):
        """Fills every layer's gradients. Returns dL/dX only with need_input_grad=True; by default
        None, and the first Linear's input gradient is not computed at all (a third of that
        layer's backward, which a training loop never reads), as PyTorch skips the gradient of an
        input that does not require one. dL/dX is a new array that belongs to the caller, as
        forward's output does; layers' own backward always returns their dX, in their buffer."""
        with self.lock:
            if self._forward_thread[0] not in (None, threading.get_ident()):
                raise RuntimeError(
                    "backward: the model's last forward ran in another thread, so the layers hold its "
                    "cache, not this thread's: hold `with model.lock:` around forward, backward and "
                    "the step, or give each thread its own model (copy.deepcopy)")
            return self._backward(grad, need_input_grad)

    def _backward(self, grad, need_input_grad):
        plan = self._plan
        if plan is not None and not need_input_grad and plan.backward(self, grad):
            return None
        if self._let_go:
            # The first layer's batch was let go of (let_go_of_batch) while the later layers still
            # hold their caches: refused here, before those layers write their gradients.
            first = self.layers[0]
            if type(first) in _OWN_BACKWARD:
                first._check_grad(grad, None)
            raise ValueError(f"{type(first).__name__}: backward called after nb.predict, nb.evaluate or nb.train, "
                             "which keep no batch to backpropagate: run a forward first")
        # Layers before the first one with parameters need no gradient at all when the caller
        # does not want dL/dX, and that first layer needs only its parameters' gradients.
        stop = 0 if need_input_grad else self._first_with_parameters()
        i = len(self.layers) - 1
        layers = self.layers
        given = None  # the gradient the last layer of one's own was given (for _made_by_own_layer)
        while i >= stop:
            layer = layers[i]
            try:
                if i - 1 >= stop and self._after_relu(i, grad):
                    # Linear after a ReLU: its dX and the ReLU's backward in one pass.
                    grad = layer.backward(grad, relu=layers[i - 1])
                    i -= 2
                elif type(layer) in _OWN_BACKWARD:
                    grad = layer.backward(grad, need_input_grad=need_input_grad or i > stop)
                    i -= 1
                else:
                    # A layer of the user's own gets backward(grad_y), the documented signature: with
                    # need_input_grad= every one written as `def backward(self, grad)` was a TypeError.
                    given = grad
                    grad = layer.backward(grad)
                    i -= 1
            except ValueError as e:
                if i + 1 < len(layers) and type(layer) in _OWN_BACKWARD and type(layers[i + 1]) not in _OWN_BACKWARD:
                    shape = getattr(layer.out, "shape", None)
                    fault = shape and _made_by_own_layer(layers, i + 1, i, "backward", grad, self.dtype, shape, given)
                    if fault:
                        raise fault from e
                raise
        if not need_input_grad:
            return None
        return grad.copy() if isinstance(grad, np.ndarray) else copy_device_array(grad)

    def _after_relu(self, i, grad):
        layers = self.layers
        return (
            i >= 1
            and type(layers[i]) is Linear
            and type(layers[i - 1]) is ReLU
            and layers[i - 1].inp is not None
        )

    def _first_with_parameters(self):
        # A Linear always has parameters: asking it would build its Parameter handles every step.
        return next((i for i, layer in enumerate(self.layers) if type(layer) is Linear or layer.parameters()), 0)

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def named_parameters(self):
        """[(key, Parameter)] in parameters() order, keyed as state_dict() ("0.weight", "0.bias", ...)."""
        return [(f"{i}.{p.name}", p) for i, layer in enumerate(self.layers) for p in layer.parameters()]

    def zero_grad(self, set_to_none=False):
        """Every layer's zero_grad(); set_to_none: False only (see nbnet.layers.check_set_to_none)."""
        if set_to_none is not False:
            check_set_to_none("Sequential", set_to_none)
        for layer in self.layers:
            layer.zero_grad()

    @property
    def dtype(self):
        """The dtype of the model's arrays: its first Linear's, else its first parameter's (a layer of
        one's own: a float64 Scale alone read float32, and nb.train fed it float32 features), else a
        layer's own dtype, else float32. (The build refuses layers of different dtypes.)"""
        for layer in self.layers:
            if isinstance(layer, Linear):
                return np.dtype(layer.dtype)
        for layer in self.layers:
            for p in layer.parameters():
                if hasattr(p.data, "dtype"):
                    return np.dtype(p.data.dtype)
        for layer in self.layers:
            if getattr(layer, "dtype", None) is not None:
                return np.dtype(layer.dtype)
        return np.dtype(np.float32)

    def to(self, device):
        """Move parameters, gradients and the state of the optimizers over them to "cuda" or "cpu"
        (see nbnet.gpu.move_model)."""
        from .gpu import move_model  # noqa: PLC0415 - optional, needs numba-cuda for "cuda"
        from .optim import optimizers_over  # noqa: PLC0415 - optim imports layers, not model: no circle

        self._device_spans = None  # holds device arrays the move dropped
        self._plan, self._plans = None, {}  # host plans: they held the host arrays the move replaced
        # The state moves with the model, at once: left for the next step to move, it held its
        # device memory (Adam's: twice the parameters) after to("cpu") until then, or for good.
        opts = optimizers_over(self.layers)
        move_model(self, device, [(st, name) for _, states in opts for st in states for name in st
                                  if st[name] is not None], forward_state)
        for opt, _ in opts:
            opt.forget_arrays()
        pack_parameters(self.parameters())  # one flat buffer again: the optimizer's one-launch path
        return self

    def state_arrays(self):
        """The arrays `save` writes: the architecture and every parameter, on the host."""
        arch = {
            "format": "nbnet",
            "version": FORMAT_VERSION,
            "layers": [{"type": type(layer).__name__, **layer.config()} for layer in self.layers],
        }
        arrays = {ARCH_KEY: np.array(json.dumps(arr_safe(arch)))}
        for i, layer in enumerate(self.layers):
            # An array assigned to a layer (`layer.weight = w`) of another shape or dtype than its
            # config says was written, and nb.load refused the file: checked as a forward checks it.
            if hasattr(layer, "_check_arrays"):
                layer._check_arrays()
            for p in layer.parameters():
                arrays[f"layer{i}.{p.name}"] = to_host(p.data)
        return arrays

    def save(self, path):
        """Write the model to `path` (.npz, atomically); a model holding NaN or Inf is an error."""
        if not any(isinstance(layer, Linear) for layer in self.layers):  # nb.load refuses such a file
            raise ValueError(f"cannot save {os.fspath(path)}: the model has no Linear layer")
        self._check_rebuildable(f"cannot save {os.fspath(path)}", "nb.load could not rebuild it: save the "
                                "parameters with np.savez(path, **model.state_dict()) instead")
        # state_arrays holds the live host arrays: the lock is held until they are written, so
        # that a thread training meanwhile waits, and the file is the weights of one step (see state_dict).
        with self.lock:
            arrays = self.state_arrays()
            check_finite(arrays, f"cannot save {os.fspath(path)}")
            write_npz_atomic(path, arrays)


def modes(model):
    """Each layer's `training` flag (see Sequential.train): what set_modes puts back."""
    return [getattr(layer, "training", True) for layer in getattr(model, "layers", ())]


def set_modes(model, flags):
    """Set the layers' `training` flags to `flags` (a list, as modes gives, or one bool for all),
    writing only those that differ (nb.train does it each step)."""
    layers = getattr(model, "layers", ())
    for layer, flag in zip(layers, [flags] * len(layers) if isinstance(flags, bool) else flags):
        if getattr(layer, "training", True) is not flag:
            with contextlib.suppress(AttributeError):  # a layer of the user's with __slots__ and no such slot
                layer.training = flag


# The layers whose backward takes need_input_grad= (not their subclasses: an override may not).
_OWN_BACKWARD = frozenset(LAYERS.values())


_X, _G = object(), object()  # in a plan's kernel arguments: the batch, and the gradient backward gets


class _Plan:
    """A CPU forward and backward of a Sequential at one batch shape, as the kernel calls that the
    layers' own methods make, with their checks, buffer look-ups and routing done once. Built right
    after a forward layer by layer, from the buffers it left; `forward_reusing` and `backward` then
    run these calls instead while the batch fits and every array they name is still the one the
    layers hold (checked by identity at each call: an assigned weight, a model moved to the GPU,
    a layer run alone at another batch size all send the call back through the layers). The same
    kernels on the same arrays: the same bits. What it saves is the layers' Python: 784-256-128-10
    on one core, batch 1, 127 -> 109 µs a step (profiling/bench_step.py, "layers" column).

    A step is (kernel, arguments, bind, layer, arguments to accumulate); `bind` says the arguments
    hold _X or _G, and a dW step (layer not None) takes the second arguments when that Linear's
    gradients are not marked as zeros (see nbnet.layers.Linear.zero_grad)."""

    PLANNED = tuple(LAYERS.values())

    @classmethod
    def build(cls, model, x):
        """The plan for batches shaped as x, or None when a layer is not one it knows, or the
        arrays are not host arrays of one dtype."""
        layers = model.layers
        if (not layers or layers[0].inp is not x or type(x) is not np.ndarray
                or any(type(layer) not in cls.PLANNED for layer in layers)
                or not any(type(layer) is Linear for layer in layers)
                # The arrays behind .grad, not .grad itself: reading it fills what zero_grad marked
                # (nbnet.layers.Linear), and this step's backward would add to zeros, not write.
                or any(type(p.data) is not np.ndarray
                       or type(getattr(p.layer, "_grad_" + p.name)) is not np.ndarray for p in model.parameters())):
            return None
        return cls(model, x)

    def __init__(self, model, x):
        self.layers, self.ids, self.shape, self.dtype = list(model.layers), tuple(map(id, model.layers)), x.shape, x.dtype
        self.fwd, self.fwd_checks = self._planned(self._forward_calls(model, x), x, _G)  # (no gradient in a forward)
        # The backward is planned at its first call (_plan_backward): planned here, with the
        # buffers it writes (the layers' dinp), a model that only ever predicts (model(x) twice at
        # 400,000 rows, 784-64-64-10) held ~200 MB more from its second call on.
        self.bwd, self.bwd_checks = None, ((), (), ())
        # What a batch must not be a view of (_unaliased): the arrays its steps write and read, which
        # it holds anyway, and every other array the layers hold (held_arrays), weakly: those the
        # plan does not run on are written outside it (the first layer's dinp, by a backward with
        # need_input_grad=True, after dW read the batch: a second backward of that forward read dX
        # as its batch), and held strongly, a plan built at an evaluation batch kept arrays the
        # layers had since replaced alive while it was kept (four 5000-row dinp arrays). The id of
        # one that died may be another array's: at worst a needless copy.
        self.held = {i: _weakly(a) for i, a in held_arrays(self.layers).items()}
        self._hold(self.fwd)

    def _hold(self, steps):
        """The arrays the steps run on (and their bases) into the alias map, held."""
        for step in steps[False] + steps[True]:
            for a in step[1] + (step[4] or ()):
                if type(a) is np.ndarray:
                    self.held[id(a)] = a
                    if a.base is not None:
                        self.held[id(a.base)] = a.base

    def _plan_backward(self, model):
        """Plans the backward, from the layers as the planned forward left them (fits checked)."""
        g = np.empty(self.layers[-1].out.shape, self.dtype)  # a stand-in for backward's gradient
        x = self.layers[0].inp
        self.bwd, self.bwd_checks = self._planned(self._backward_calls(model, x, g), x, g)
        self._hold(self.bwd)

    def _forward_calls(self, model, x):
        calls, layers, i, inp = [], self.layers, 0, x
        while i < len(layers):
            layer = layers[i]
            if model._fuses_relu(i, x):
                relu = layers[i + 1]
                calls += cpu.forward_route(layer.out, relu.out, inp, layer.weight, layer._bias(x),
                                           layer._weight_t(inp), True)
                inp, i = relu.out, i + 2
            elif type(layer) is Linear:
                calls += cpu.forward_route(layer.out, layer.out, inp, layer.weight, layer._bias(x),
                                           layer._weight_t(inp), False)
                inp, i = layer.out, i + 1
            else:
                calls.append((getattr(cpu, layer.kernel + "_forward"), (layer.out, inp)))
                inp, i = layer.out, i + 1
        return calls

    def _backward_calls(self, model, x, g):
        """Sequential.backward's calls without dL/dX: from the last layer down to the first Linear,
        which computes only dW and db. dW calls come as (kernel, arguments to write, to add, layer)."""
        calls, layers, grad = [], self.layers, g
        stop = next(i for i, layer in enumerate(layers) if type(layer) is Linear)
        i = len(layers) - 1
        while i >= stop:
            layer = layers[i]
            if type(layer) is Linear:
                dbias = layer._dbias(grad)
                kernel, write = cpu.backward_params_route(layer._grad_weight, dbias, grad, layer.inp, False)
                calls.append((kernel, write, cpu.backward_params_route(layer._grad_weight, dbias, grad, layer.inp,
                                                                       True)[1], layer))
                if i == stop:
                    break
                relu = layers[i - 1] if model._after_relu(i, grad) else None
                owner = relu if relu is not None else layer
                dinp = owner._buffer("dinp", grad, layer.inp.shape, grad.dtype)
                preact = relu.inp if relu is not None else dinp
                calls.append(cpu.backward_input_route(dinp, grad, layer.weight, preact, relu is not None))
                grad, i = dinp, i - (2 if relu is not None else 1)
            else:
                dinp = layer._buffer("dinp", grad, grad.shape, grad.dtype)
                saved = layer.inp if layer.backward_uses_input else layer.out
                calls.append((getattr(cpu, layer.kernel + "_backward"), (dinp, grad, saved)))
                grad, i = dinp, i - 1
        return calls

    def _planned(self, calls, x, g):
        """The steps for the serial and for the parallel case (as cpu.Kernel would pick, from the
        work of these shapes), and the (layer, attribute, array) each call reads or writes."""
        steps = {False: [], True: []}
        for call in calls:
            kernel, args, acc = call[0], call[1], call[2] if len(call) > 2 else None
            placed = tuple(_X if a is x else _G if a is g else a for a in args)
            acc = None if acc is None else tuple(_X if a is x else _G if a is g else a for a in acc)
            bind = any(a is _X or a is _G for a in placed)
            layer = call[3] if len(call) > 3 else None
            if isinstance(kernel, cpu.Kernel):
                big = kernel.work(*args) >= kernel.threshold
                pair = (kernel.serial, kernel.parallel if big else kernel.serial)
            else:
                pair = (kernel, kernel)
            for par in (False, True):
                steps[par].append((pair[par], placed, bind, layer, acc))
        arrays = {id(a) for step in steps[False] for args in (step[1], step[4] or ()) for a in args
                  if type(a) is np.ndarray}
        checks = [(layer, name, value) for layer in self.layers for name, value in vars(layer).items()
                  if type(value) is np.ndarray and id(value) in arrays]
        return steps, (tuple(c[0] for c in checks), tuple(c[1] for c in checks), tuple(c[2] for c in checks))

    def arrays(self):
        """The layers' arrays it runs on (as layers' attributes)."""
        return self.fwd_checks[2] + self.bwd_checks[2]

    @staticmethod
    def _same(checks):
        owners, names, arrays = checks
        return all(map(is_, map(getattr, owners, names), arrays))

    def takes(self, x):
        """x is a batch this plan runs: a C-contiguous host array of the planned shape and dtype."""
        return type(x) is np.ndarray and x.shape == self.shape and x.dtype == self.dtype and x.flags.c_contiguous

    def fits(self, model, x):
        """x is a batch this plan runs, and the model's layers and arrays are the planned ones."""
        return self.takes(x) and tuple(map(id, model.layers)) == self.ids and self._same(self.fwd_checks)

    def forward(self, x):
        self.layers[0].inp = x
        _run_steps(self.fwd, x, None)
        return self.layers[-1].out

    def backward(self, model, grad):
        """Runs the backward and answers True, or answers False (nothing done) when it does not fit."""
        last, x = self.layers[-1].out, self.layers[0].inp
        if not (type(grad) is np.ndarray and grad.shape == last.shape and grad.dtype == last.dtype
                and grad.flags.c_contiguous and type(x) is np.ndarray and x.shape == self.shape
                and tuple(map(id, model.layers)) == self.ids):
            return False
        if self.bwd is None:
            if not self._same(self.fwd_checks):  # the layers' cache is not the planned forward's
                return False
            self._plan_backward(model)
        elif not self._same(self.bwd_checks):
            return False
        _run_steps(self.bwd, x, grad)
        return True


def held_arrays(layers):
    """{id: array} of the host arrays the layers write (buffers, parameters, gradients) and of the
    arrays that own their memory: what a batch must not be a view of (see _unaliased). Not the
    layers' inputs: the first's is the last batch, which the model only reads (a training loop's
    reused batch buffer, or a view of the data set, was copied every step), and the others' are
    outputs held as such. The arrays themselves are kept, not only their ids: an id of an array
    that died is soon another array's (a needless copy). A plan keeps its own such map, of the
    arrays it runs on (_Plan.__init__)."""
    held = {}
    for layer in layers:
        for name, a in vars(layer).items():
            if type(a) is np.ndarray and name != "inp":
                held[id(a)] = a
                if a.base is not None:
                    held[id(a.base)] = a.base
    return held


def _weakly(a):
    """A weak reference to a, or None where there can be none (an unpickled array's base is bytes):
    only the id is looked up (_unaliased), and such a base lives as long as its array."""
    try:
        return weakref.ref(a)
    except TypeError:
        return None


def _unaliased(x, held):
    """x, or a copy of it when it is (a view of) an array a layer holds (`held`, from held_arrays):
    the forward writes layers' outputs and the backward their gradients while the first layer still
    reads x, or reads it again for dW = Gᵀ X (model(model[-1].out), a Linear's own output fed to a
    model that holds it). A copy is the batch the caller passed, at the time of the call."""
    if type(x) is np.ndarray and (id(x) in held or id(x.base) in held):
        return x.copy()
    return x


def _run_steps(steps, x, g):
    """The serial or the parallel steps of a plan, as cpu.Kernel chooses (threads.alone included)."""
    if not threads.parallel():
        _run(steps[False], x, g)
    elif threads.exclusive:
        threads.alone(lambda: _run(steps[True], x, g), lambda: _run(steps[False], x, g))
    else:
        _run(steps[True], x, g)


def _run(steps, x, g):
    for kernel, args, bind, layer, acc in steps:
        # A Linear's dW adds unless zero_grad marked both its gradients (Linear.backward's rule).
        if layer is not None and (not (layer._zero_weight or layer._zero_bias) or layer._accumulate()):
            args = acc
        if bind:
            args = tuple([x if a is _X else g if a is _G else a for a in args])
        kernel(*args)


# Sequentials that share a layer share its buffers, so they must share one lock (and the record of
# whose forward the caches hold). With a lock of each model's own, `body(x)` in one thread and
# `Sequential(body, head)(x)` in another wrote the same layers' outputs at once: each got numbers
# computed partly from the other's input, silently. id(layer) -> (weak reference to it, its group);
# a layer that takes no weak reference (a user's with __slots__) links no models.
_GROUPS = {}
_GROUPS_LOCK = threading.RLock()  # (re-entrant: a layer collected while it is held runs _forget_layer)


class _Group:
    """What every Sequential holding some of the same layers shares: `lock`, `forward_thread`
    (see Sequential) and the models themselves (weakly), to give them the lock of a group merged
    into another."""

    def __init__(self):
        self.lock, self.forward_thread, self.models = threading.RLock(), [None], weakref.WeakSet()


def _join_group(model):
    """Give `model` the lock of the models that hold any of its layers. A model made of two
    models' layers (Sequential(encoder, decoder)) merges their groups: every model of the others
    takes the first's lock from then on. Their old locks are held while that changes (taken in
    one order, outside _GROUPS_LOCK, so that neither a merge in another thread nor a call that
    holds one and makes a model meanwhile waits on this one for ever), so no call that holds an
    old lock runs on beside the new lock's holders. Not covered: merging models that other threads
    are using at that moment. A thread already waiting on an old lock gets it after the merge and
    runs beside the new lock's holders; nb.train holds the lock it read when it started; and two
    threads that each hold one model's lock while making a model of both wait on each other."""
    while True:
        with _GROUPS_LOCK:
            groups = _groups_of(model.layers)
            if len(groups) <= 1:
                return _enter(model, groups[0] if groups else _Group())
        with contextlib.ExitStack() as held:
            for other in sorted(groups[1:], key=id):
                held.enter_context(other.lock)
            with _GROUPS_LOCK:
                if _groups_of(model.layers) != groups:
                    continue  # merged meanwhile: look again
                group = groups[0]
                for other in groups[1:]:
                    for m in list(other.models):
                        m.lock, m._forward_thread = group.lock, group.forward_thread
                        group.models.add(m)
                    for key, (ref, owner) in list(_GROUPS.items()):
                        if owner is other:
                            _GROUPS[key] = (ref, group)
                return _enter(model, group)


def _groups_of(layers):
    groups = []
    for layer in layers:
        entry = _GROUPS.get(id(layer))
        if entry is not None and entry[0]() is layer and entry[1] not in groups:
            groups.append(entry[1])
    return groups


def _enter(model, group):
    for layer in model.layers:
        try:
            ref = weakref.ref(layer, functools.partial(_forget_layer, id(layer)))
        except TypeError:
            continue
        _GROUPS[id(layer)] = (ref, group)
    model.lock, model._forward_thread = group.lock, group.forward_thread
    try:
        group.models.add(model)
    except TypeError:  # a subclass that is not hashable keeps the lock, but no later merge reaches it
        pass


def _forget_layer(key, ref):
    with _GROUPS_LOCK:
        if _GROUPS.get(key, (None,))[0] is ref:  # not a newer layer's entry under the same id
            del _GROUPS[key]


class Summary(str):
    """Sequential.summary()'s table: a str whose repr is itself, so a REPL shows the table."""

    def __repr__(self):
        return str(self)


def _named(layer):
    """A layer as a message or summary() shows it: its repr, or its class's name where the repr is
    object's own ("<__main__.Square object at 0x7f...>": a layer written as a plain class)."""
    return type(layer).__name__ + "()" if type(layer).__repr__ is object.__repr__ else repr(layer)


def _made_by_own_layer(layers, j, i, what, arr, dtype, shape, given=None):
    """The ValueError that names what is wrong with `arr`, what layer j, one of the user's own,
    returned from its `what` ("forward" or "backward"), which nbnet's layer i refused; None where arr
    is not at fault. Layer i's own error names layer i alone ('Linear(3, 8): expected gradient dtype
    float32, got float64'), not the layer to fix, with hints for a caller's input (model.astype,
    which refuses a layer of one's own; nb.train converting features). `shape`: what layer i takes,
    None for any size; `given`: the gradient layer j's backward was given."""
    mine, theirs = f"layer {j}, {_named(layers[j])}", f"layer {i}, {_named(layers[i])}"
    if not (hasattr(arr, "dtype") and hasattr(arr, "shape")):
        why = f"returned {type(arr).__name__}, not an array (a missing `return`?)"
    elif arr.dtype != dtype and what == "backward" and hasattr(given, "dtype") and given.dtype == arr.dtype:
        # its backward passed on the gradient it got (`return grad`, right): the loss took predictions
        # of that dtype, so a forward made them (the last layer of one's own, or one after it)
        why = (f"returned a {arr.dtype} array in a {dtype} model, as it was given: the loss got {arr.dtype} "
               f"predictions, so its forward() or a later layer's returned {arr.dtype}: compute in the input's "
               "dtype (np.ones(x.shape) is float64 whatever x is: np.ones_like(x), or add .astype(x.dtype))")
    elif arr.dtype != dtype:
        why = (f"returned a {arr.dtype} array in a {dtype} model, whose layers take exactly {dtype}: compute in "
               "the input's dtype (np.where(x >= 0, 1.0, 0.1) is float64 whatever x is: add .astype(x.dtype), or "
               "write x.dtype.type(0.1))")
    elif len(arr.shape) != len(shape) or any(w is not None and w != a for a, w in zip(arr.shape, shape)):
        want = "(" + ", ".join("N" if w is None else str(w) for w in shape) + ")"
        why = (f"returned shape {tuple(arr.shape)}, where {theirs} takes {want}"
               + (" (dL/dx has the shape of the layer's input)" if what == "backward" else ""))
        return ValueError(f"{mine}: its {what}() {why}")
    else:
        return None
    return ValueError(f"{mine}: its {what}() {why} ({theirs} refused it)")


def _checked_layers(layers):
    # A Sequential among the layers gives its layers, the same objects: nbnet's model is one flat
    # stack (its plan fuses a Linear with the ReLU after it, and checkpoints list layers), and a
    # nested one trained but could not be saved (torch keeps the block: model[0] would be it).
    layers = [sub for layer in layers for sub in (layer.layers if isinstance(layer, Sequential) else [layer])]
    if not layers:
        raise ValueError("Sequential: needs at least one layer")
    for layer in layers:
        if isinstance(layer, type):  # has forward and backward too, and failed later on `self`
            raise ValueError(f"Sequential: {layer.__name__} is a class, not a layer: write {layer.__name__}()")
        lacks = next((name for name in ("forward", "backward") if not hasattr(layer, name)), None)
        if lacks and isinstance(layer, Layer):  # a layer of the user's own, half written
            raise ValueError(f"Sequential: {_named(layer)} has no {lacks}(): a layer needs forward(x) -> y and "
                             "backward(grad_y) -> grad_x (README: \"Writing your own layer\")")
        if lacks:
            raise ValueError(f"Sequential: {_named(layer)} is not a layer: it has no {lacks}()")
        # What a Sequential calls on every layer besides (packing and optimizers list the
        # parameters, model.zero_grad clears them): without them an AttributeError from inside.
        missing = next((name for name in ("parameters", "zero_grad") if not hasattr(layer, name)), None)
        if missing:
            raise ValueError(f"Sequential: {_named(layer)} is not a layer: it has no {missing}() "
                             "(nbnet.layers.Layer has both: parameters() [] and zero_grad() for none)")
    # A layer keeps its forward's input and output for its backward: in two places, the second
    # forward overwrote what the first place's backward reads (wrong gradients, silently), and a
    # Linear's parameters were listed, packed and stepped twice.
    first = {}
    for i, layer in enumerate(layers):
        j = first.setdefault(id(layer), i)
        if j != i:
            raise ValueError(f"Sequential: layers {j} and {i} are the same {layer!r}: give each place a layer "
                             f"of its own (a layer keeps its forward's input for backward)")
    dtypes = {np.dtype(layer.dtype).name: _named(layer) for layer in layers if getattr(layer, "dtype", None) is not None}
    # The layer of one's own whose parameters (made by its own constructor) brought the dtype that
    # the layers before lack: the first of them with parameters named a float32 one that was right.
    own = None
    for layer in layers:
        for name, dtype in _own_parameter_dtypes(layer):
            if dtype not in dtypes:
                dtypes[dtype] = f"{name} of {_named(layer)}"
                own = _named(layer)
    if len(dtypes) > 1:
        kinds = " and ".join(f"{name} ({who})" for name, who in dtypes.items())
        how = "Linear(..., dtype=...) or model.astype(dtype)"
        if own is not None:  # model.astype refuses a layer of one's own
            how += (f"; {own} makes its arrays itself (np.ones(n) and np.zeros(n) are float64: give them the "
                    "model's dtype=)")
        raise ValueError(f"Sequential: layers of different dtypes, {kinds}: convert one with {how}")
    return layers


def _own_parameter_dtypes(layer):
    """[(name, dtype name)] of a layer's parameters, checked as packing and the optimizers read them:
    each Parameter(layer, name) needs the arrays layer.<name> and layer.grad_<name> of one shape and
    dtype. A layer of one's own without grad_<name> was an AttributeError from inside packing, and
    one whose arrays were float64 (np.ones(n)) in a float32 model was taken, its outputs float64,
    refused one layer later with a hint about the layer's arithmetic, not its parameters."""
    if isinstance(layer, Linear) or type(layer) in LAYERS.values():
        return []  # nbnet's own: made in their dtype, and Linear checks its arrays at each call
    found = []
    for p in layer.parameters():
        if not isinstance(p, Parameter):  # its arrays (`return [self.weight]`): packing read p.data.dtype, a memoryview's
            raise ValueError(f"Sequential: {_named(layer)}.parameters() holds a {type(p).__name__}, not an nb.Parameter: "
                             "return nb.Parameter(self, name) for each array self.<name>, whose gradient is "
                             "self.grad_<name> (README: \"Writing your own layer\")")
        for attr in (p.name, "grad_" + p.name):
            if not hasattr(p.layer, attr):
                raise ValueError(f"Sequential: {_named(p.layer)} has no {attr}, which its Parameter(self, {p.name!r}) "
                                 f"reads: a parameter `{p.name}` needs the array self.{p.name} and its gradient "
                                 f"self.grad_{p.name} (np.zeros_like(self.{p.name})), both set in the constructor")
        data, grad = p.data, p.grad
        if not (hasattr(data, "dtype") and hasattr(data, "shape") and hasattr(grad, "dtype") and hasattr(grad, "shape")):
            bad = p.name if not hasattr(data, "dtype") else "grad_" + p.name
            raise ValueError(f"Sequential: {bad} of {_named(p.layer)} is a {type(getattr(p.layer, bad)).__name__}, "
                             "not an array")
        if tuple(data.shape) != tuple(grad.shape) or data.dtype != grad.dtype:
            raise ValueError(f"Sequential: {_named(p.layer)}'s grad_{p.name} is {grad.dtype} {tuple(grad.shape)} and its "
                             f"{p.name} {data.dtype} {tuple(data.shape)}: a gradient has its parameter's shape and dtype "
                             f"(np.zeros_like(self.{p.name}))")
        found.append((p.name, np.dtype(data.dtype).name))
    return found


_DEVICE_TYPES = {}  # type -> whether its objects are device arrays (see _on_device)


def _on_device(a):
    """a is a device array (numba-cuda's, or the simulator's): asked of its type once."""
    kind = type(a)
    found = _DEVICE_TYPES.get(kind)
    if found is None:
        found = _DEVICE_TYPES[kind] = kind is not np.ndarray and hasattr(kind, "copy_to_host")
    return found


def pack_parameters(params):
    """Move the parameters (and their gradients) into one flat buffer each, leaving every layer's
    arrays as views of it, so an optimizer updates them all in one pass (see nbnet.optim). Values
    are kept; `layer.weight[...] = w` still writes through. Arrays of one dtype on one device only
    (on the GPU, nbnet.gpu.pack does the same)."""
    if not params:
        return
    from .optim import one_flat  # noqa: PLC0415 - optim imports layers, not model: no circle

    on_host = [isinstance(p.data, np.ndarray) for p in params]
    dtype = params[0].data.dtype
    if any(p.data.dtype != dtype for p in params) or len(set(on_host)) != 1:
        return
    if one_flat([p.data for p in params]) is not None and one_flat([p.grad for p in params]) is not None:
        return  # already back to back in one buffer (e.g. a slice of a packed model): keep it
    if _tied([p.data for p in params]) or _tied([p.grad for p in params]):
        return  # one array in two layers (a tied weight): packing copied it into two, untying them
    if not on_host[0]:
        from .gpu import pack, simulator_enabled  # noqa: PLC0415 - only device arrays get here

        if simulator_enabled():
            return  # the simulator's arrays cannot be found packed again (gpu.one_flat)
        for name, arrays in (("", [p.data for p in params]), ("grad_", [p.grad for p in params])):
            for p, view in zip(params, pack(arrays)[1]):
                setattr(p.layer, name + p.name, view)
        return
    total = sum(p.data.size for p in params)
    data, grad = simd.empty(total, dtype), simd.empty(total, dtype)
    start = 0
    for p in params:
        end = start + p.data.size
        data[start:end] = p.data.ravel()
        grad[start:end] = p.grad.ravel()
        setattr(p.layer, p.name, data[start:end].reshape(p.data.shape))
        setattr(p.layer, "grad_" + p.name, grad[start:end].reshape(p.grad.shape))
        start = end


def _tied(arrays):
    """Two of the arrays are one (`layer2.weight = layer1.weight`), or their memory overlaps on
    the host: sorted by start, some array starts before the one before it ends (n log n: a model
    may have thousands of parameters, and a check of every pair took seconds)."""
    if len(set(map(id, arrays))) < len(arrays):
        return True
    spans = sorted(byte_bounds(a) for a in arrays if isinstance(a, np.ndarray) and a.size)
    return any(start < end for (_, end), (start, _) in zip(spans, spans[1:]))


def copy_device_array(arr):
    from .gpu import copy  # noqa: PLC0415 - only device arrays get here

    return copy(arr)


def arr_safe(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


MAX_LAYERS = 10_000


def json_entry(arrays, key, source):
    """The JSON value stored as a 0-d string array `arrays[key]`; ValueError if it is not one, or if
    what it parses into could need more than memory_budget() (JSON_CHAR_BYTES a character)."""
    value = arrays[key]
    if not isinstance(value, np.ndarray) or value.shape != () or value.dtype.kind != "U":
        raise ValueError(f"{source}: {key} is not a JSON string")
    chars = value.dtype.itemsize // 4
    check_memory(chars * JSON_CHAR_BYTES, f"{source}: {key}, JSON text of {chars} characters")
    try:
        return json.loads(str(value))
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{source}: {key} is not valid JSON ({type(e).__name__})") from None


def check_finite(arrays, source, what="weights"):
    """ValueError naming the first array (of a {name: array} dict) holding NaN or Inf."""
    for name, arr in arrays.items():
        if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"{source}: {what} {name} hold NaN or Inf")


def _int_in(value, lo, hi):
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _check_layer_specs(arch, arrays, source):
    """The architecture checked against its schema and the stored arrays, before any layer is
    built (so no layer allocates what the file does not hold)."""
    if not isinstance(arch, dict) or not isinstance(arch.get("layers"), list):
        raise ValueError(f"{source}: architecture is not {{..., \"layers\": [...]}}")
    version = arch.get("version", FORMAT_VERSION)
    if not _int_in(version, 0, 2**31):
        raise ValueError(f"{source}: architecture version {version!r} is not a whole number")
    if version > FORMAT_VERSION:
        raise ValueError(f"{source}: written by a newer nbnet (format version {version})")
    specs = arch["layers"]
    if not 1 <= len(specs) <= MAX_LAYERS:
        raise ValueError(f"{source}: {len(specs)} layers (expected 1 to {MAX_LAYERS})")
    width = None  # output width of the last Linear seen
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str) or spec["type"] not in LAYERS:
            kind = spec.get("type") if isinstance(spec, dict) else spec
            raise ValueError(f"{source}: layer {i}: unknown layer type {str(kind)[:40]!r}")
        for key, value in spec.items():
            if not isinstance(value, (str, int, float)) or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"{source}: layer {i}: {key} = {str(value)[:40]} is not a plain value")
        if spec["type"] != "Linear":
            continue
        n_in, n_out, dtype = spec.get("in_features"), spec.get("out_features"), spec.get("dtype", "float32")
        if not (_int_in(n_in, 1, 2**31 - 1) and _int_in(n_out, 1, 2**31 - 1)):
            raise ValueError(f"{source}: layer {i}: Linear sizes {n_in!r}, {n_out!r} are not positive integers")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"{source}: layer {i}: dtype {str(dtype)[:20]!r} (expected float32 or float64)")
        if width is not None and n_in != width:
            raise ValueError(f"{source}: layer {i} takes {n_in} inputs but the Linear before it gives {width}")
        has_bias = spec.get("bias", True)
        if not isinstance(has_bias, bool):
            raise ValueError(f"{source}: layer {i}: bias = {str(has_bias)[:20]} (expected true or false)")
        width = n_out
        for name, shape in (("weight", (n_out, n_in)), ("bias", (n_out,)))[: 2 if has_bias else 1]:
            key = f"layer{i}.{name}"
            value = arrays.get(key)
            if value is None:
                raise ValueError(f"{source}: missing array {key!r}")
            if value.shape != shape or value.dtype != np.dtype(dtype):
                raise ValueError(
                    f"{source}: {key} has shape {value.shape} {value.dtype}, expected {shape} {np.dtype(dtype)}"
                )
    if width is None:
        raise ValueError(f"{source}: the model has no Linear layer")
    return specs


def model_from_arrays(arrays, source="checkpoint"):
    """Rebuild a Sequential from the arrays `Sequential.state_arrays` wrote. The architecture is
    checked against its schema and the stored arrays before any layer is built; parameters holding
    NaN or Inf are an error (a diverged model is never loaded as a good one)."""
    if ARCH_KEY not in arrays:
        raise ValueError(f"{source}: not an nbnet model (no {ARCH_KEY!r} entry)")
    specs = _check_layer_specs(json_entry(arrays, ARCH_KEY, source), arrays, source)
    check_finite({k: v for k, v in arrays.items() if k.startswith("layer")}, source)
    layers = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        cls = LAYERS[spec.pop("type")]
        try:
            layer = cls(**spec)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: bad settings for layer {i} ({e})") from None
        for p in layer.parameters():
            key = f"layer{i}.{p.name}"
            if key not in arrays:
                raise ValueError(f"{source}: missing array {key!r}")
            value = arrays[key]
            if value.shape != p.data.shape or value.dtype != p.data.dtype:
                raise ValueError(
                    f"{source}: {key} has shape {value.shape} {value.dtype}, "
                    f"expected {p.data.shape} {p.data.dtype}"
                )
            p.data[...] = value
        layers.append(layer)
    try:
        return Sequential(layers)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def load(path):
    """Load a model saved by `Sequential.save` or a checkpoint from `nbnet train --save`."""
    return model_from_arrays(read_npz(path), source=os.fspath(path))
