"""Optimizers with the update rules of torch.optim's classes of the same name, step for step
(except that a state value below the dtype's smallest normal number is stored as 0: see the
optimizer kernels in nbnet/cpu.py).

Each `step()` calls one kernel (nbnet.cpu.sgd_step / adam_step, or their nbnet.gpu twins) on flat
views: once over all parameters when a Sequential packed them into one buffer, else once per
parameter. Hyper-parameters are Python floats; like torch, the kernels get them cast to
the parameter dtype. `lr` is a plain attribute, so a schedule sets `opt.lr` before each step.
"""

import functools
import math
import numbers
import re
import threading
import weakref
from operator import getitem, is_

import numpy as np

from . import cpu, simd, threads
from .layers import Linear, Parameter, array_fault, check_set_to_none, empty_like_shape, kernels, to_host


def _flat(arr):
    return arr.reshape(arr.size)


def _an_array(arr):
    """A NumPy array, or a device array (numba-cuda's, which copy_to_host): what nbnet's kernels take."""
    return isinstance(arr, np.ndarray) or hasattr(arr, "copy_to_host")


def _type_name(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}".removeprefix("builtins.")


def _real(v):
    """A real number, NumPy scalars included (np.float32(0.01) is a rate too, as in torch and in
    nbnet.sklearn, which passes its parameters on as it accepted them)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_nonneg(cls, **values):
    for name, v in values.items():
        if not _real(v) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{cls}: {name} must be a finite number ≥ 0, got {v!r}")


def _check_parameter(who, i, data, grad):
    """A step reads a parameter and its gradient as flat arrays of one length: a parameter
    assigned since (`layer.weight = w`) with another shape would be read past its end by the
    kernel, and a strided one updated in a flat copy, leaving the layer's array as it was."""
    host = isinstance(data, np.ndarray)
    fault = array_fault(data, getattr(data, "shape", ()), getattr(data, "dtype", None), host)
    name = "the parameter"
    if fault is None:
        fault, name = array_fault(grad, data.shape, data.dtype, host), "its gradient"
    if fault:
        what = f" ({data.dtype} {tuple(data.shape)})" if name == "its gradient" else ""
        raise ValueError(f"{who}: parameter {i}{what} and its gradient must be C-contiguous arrays of one shape, "
                         f"dtype and device; {name} is {fault}")


def _batch_shape(layer):
    """The shape of the batch a layer last ran (None when it holds none)."""
    return getattr(layer.inp, "shape", None)


def one_flat(arrays):
    """A 1-D view covering all of `arrays` when they lie back to back in one buffer, in order (as
    after nbnet.model.pack_parameters), else None."""
    first = arrays[0]
    if not isinstance(first, np.ndarray):
        from .gpu import one_flat as on_device  # noqa: PLC0415 - only device arrays get here

        return on_device(arrays)
    base = first.base
    # An unpickled array of 1 KiB or more has the pickle's bytes as its base (NumPy takes them as
    # they are when aligned): no buffer of nbnet's, and no ndarray (a model sent to a process).
    if not isinstance(base, np.ndarray) or base.ndim != 1 or not base.flags.c_contiguous:
        return None
    start = (first.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize
    pos = start
    for arr in arrays:
        if not isinstance(arr, np.ndarray) or arr.base is not base or not arr.flags.c_contiguous:
            return None
        if arr.__array_interface__["data"][0] != base.__array_interface__["data"][0] + pos * base.itemsize:
            return None
        pos += arr.size
    return base[start:pos]


_INDEX = re.compile(r"0|[1-9][0-9]*")  # a parameter number: ASCII digits, no leading zero
_LIVE = weakref.WeakSet()  # every optimizer: model.to() moves the state of those over its parameters
# A WeakSet survives entries the collector removes while it is walked, not those another thread
# adds: model.to() while a thread made an optimizer raised 'Set changed size during iteration'.
_LIVE_LOCK = threading.Lock()


def optimizers_over(layers):
    """[(optimizer, [its state dicts of parameters of `layers`])] for the optimizers alive that
    hold a Parameter of one of `layers` (Sequential.to moves their state; other handles' state
    moves at the next step, as _state does)."""
    ids, found = set(map(id, layers)), []
    with _LIVE_LOCK:
        live = list(_LIVE)
    for opt in live:
        states = [st for p, st in zip(opt.params, opt.state) if isinstance(p, Parameter) and id(p.layer) in ids]
        if states:
            found.append((opt, states))
    return found


@functools.lru_cache(maxsize=None)
def _largest(dtype):
    """The dtype's largest finite value, as a Python float (np.finfo's lookup costs ~0.3 µs)."""
    return float(np.finfo(dtype).max)


class Optimizer:
    """Holds the parameter handles and, per parameter, named state arrays (flat)."""

    state_names = ()
    hyper_names = ()

    def __init__(self, params):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got no parameters to optimize")
        # SGD(model) iterates over the layers: refused here, not as an AttributeError at step().
        bad = next((p for p in self.params if not (hasattr(p, "data") and hasattr(p, "grad"))), None)
        if bad is not None:
            raise ValueError(f"{type(self).__name__}: expected parameters, e.g. model.parameters(), "
                             f"got {type(bad).__name__}")
        # A torch model's parameters have .data and .grad too: taken, they failed only at step()
        # ("the parameter is Tensor"), and zero_grad() with a TypeError from inside torch.
        i = next((i for i, p in enumerate(self.params) if not _an_array(p.data)), None)
        if i is not None:
            raise TypeError(f"{type(self).__name__}: parameter {i} holds a {_type_name(self.params[i].data)}, not a "
                            "NumPy array: nbnet's optimizers step an nbnet model's parameters (model.parameters())")
        # One parameter given twice (body.parameters() + model.parameters(), body inside model) was
        # stepped twice over each step, silently. (By handle: a weight tied by assigning one array
        # to two layers has two gradients, and is two parameters.)
        first = {}
        for i, p in enumerate(self.params):
            j = first.setdefault((id(p.layer), p.name) if isinstance(p, Parameter) else id(p), i)
            if j != i:
                raise ValueError(f"{type(self).__name__}: parameter {i} is parameter {j} again: give each "
                                 "parameter once (model.parameters() holds every layer's)")
        self.step_count = 0
        self.state = [{name: None for name in self.state_names} for _ in self.params]
        self._flat_for = None  # (the arrays, flat data, flat grad) of the last one_flat check
        self._groups_for = None  # (the arrays, the state arrays, groups) of the last packed _groups
        self._fast = None  # what _groups checks before answering its last groups again (see _fast_check)
        self._spans = None  # (key, the flat data, (spans, first), the Linears) of the last _lanes
        self._owners = self._attrs = self._owners_of = None  # (layer, attribute) of each array, for _arrays_now
        self._marks = self._fills = None  # what zero_grad marks (layer, flag) and what it fills (handles)
        self._cast = None  # ((dtype, hyper-parameters), the same cast to dtype), for _scalars
        self._hyper_ok = None  # the hyper-parameters last checked (see _check_hyper_now)
        with _LIVE_LOCK:
            _LIVE.add(self)

    @property
    def param_groups(self):
        # torch's way to change the rate mid-training, `for g in opt.param_groups: g["lr"] = ...`,
        # was a bare AttributeError; nbnet keeps one group, its hyper-parameters plain attributes.
        raise AttributeError(f"{type(self).__name__} has no param_groups: its hyper-parameters are attributes, "
                             f"checked at the next step: opt.lr = 0.01 (also {', '.join(self.hyper_names[1:])})")

    _CACHES = ("_flat_for", "_groups_for", "_fast", "_owners", "_attrs", "_owners_of", "_marks", "_fills", "_cast",
               "_spans")

    def __getstate__(self):
        # Without the caches: copy.deepcopy and pickle copy a view as an array of its own, so the
        # cached flat views became copies no layer reads, while every array the fast check compares
        # (by identity) was copied consistently: the copy's steps updated nothing it trains.
        return {**self.__dict__, **dict.fromkeys(self._CACHES)}

    def __setstate__(self, state):
        self.__dict__.update(state)
        with _LIVE_LOCK:
            _LIVE.add(self)  # a copy's state moves with its model too

    SERIAL_SHARE = 1 / 16  # see _lanes

    def _lanes(self, groups):
        """(spans, first) for cpu.sgd_lanes / adam_lanes: each thread's spans of the packed
        parameters, the rows where it wrote dW and db in the last backward (cpu.dw_shares at that
        batch; a layer's that ran serially all on thread 0), other parameters split evenly. Made
        again only when the thread count, a batch size or the parameters' arrays change.

        None (the flat step, an even split) with one thread, without one packed host group, and
        where less than SERIAL_SHARE of the parameters had their gradient written serially: the
        lanes pay where small layers run on the calling thread, whose rows an even split hands to
        another core (784-256-128-10 on 2 threads, SGD pass lanes / flat, Zen 5 VM: batch 1 27 /
        70 µs, 8 32 / 42), but not once every sizable layer runs parallel (32: 48 / 39, 128: 110
        / 93, 512: 125 / 98; there the kernels take their units in order, cpu.NEAR_ROWS)."""
        if len(groups) != 1 or type(groups[0][0]) is not np.ndarray or not threads.parallel():
            return None
        lanes, data = threads.in_use(), groups[0][0]
        made = getattr(self, "_spans", None)  # (an optimizer pickled before it had one)
        # Checked against the flat data view, not the list of handles: opt.params changed in place
        # or a layer's arrays replaced and packed again (the same batch shapes) kept the old sizes'
        # spans, and the step left the parameters past them as they were, silently. The view is
        # made again whenever an array behind a handle changes (_flat), and kept while none does.
        # The batch shapes are read from each Linear once (made[3]), not per parameter: 1.4 -> ~0.6 µs a step.
        if made is not None and made[1] is data and made[0][0] == lanes and made[0][1] == tuple(map(_batch_shape, made[3])):
            return made[2]
        batches = tuple(getattr(getattr(p, "layer", None), "inp", None) for p in self.params)
        linears = tuple({id(p.layer): p.layer for p in self.params if isinstance(getattr(p, "layer", None), Linear)}.values())
        key = (lanes, tuple(map(_batch_shape, linears)))
        owned = []  # (lane, start, end) in the packed buffer
        start = serial = 0
        for p, x in zip(self.params, batches):
            size = p.data.size
            layer = getattr(p, "layer", None)
            shares = None
            if isinstance(layer, Linear) and isinstance(x, np.ndarray) and x.ndim == 2 and p.name in ("weight", "bias"):
                shares = cpu.dw_shares(layer.weight, x.shape[0], lanes)
                if shares is None:
                    shares, serial = [(0, 0, layer.weight.shape[0], 0, 0)], serial + size
                # Whole rows, each to the thread of its first columns (and db_j's): a span per part
                # of a row cost more to start than its cache lines saved (256 -> 128 at batch 128).
                n = layer.weight.shape[1] if p.name == "weight" else 1
                owned.extend((t, start + r0 * n, start + r1 * n) for t, r0, r1, c0, _ in shares if c0 == 0)
            else:
                ends = cpu.static_shares(size, lanes)
                owned.extend((t, start + ends[t], start + ends[t + 1]) for t in range(lanes) if ends[t] < ends[t + 1])
            start += size
        if serial < self.SERIAL_SHARE * start:
            self._spans = (key, data, None, linears)
            return None
        owned.sort()
        merged = []
        for t, a, b in owned:
            if merged and merged[-1][0] == t and merged[-1][2] == a:
                merged[-1][2] = b
            else:
                merged.append([t, a, b])
        spans = np.array([[a, b] for _, a, b in merged], np.int64).reshape(-1, 2)
        first = np.searchsorted([t for t, _, _ in merged], np.arange(lanes + 1)).astype(np.int64)
        self._spans = (key, data, (spans, first), linears)
        return spans, first

    def forget_arrays(self):
        """Drop the caches that hold the parameters' arrays (the model moved: they are the old
        device's, whose memory they kept until the next step rebuilt them)."""
        self._flat_for = self._groups_for = self._fast = self._spans = None

    def _handles(self):
        """Per-parameter lookups made once (again when opt.params is reassigned): the (layer,
        attribute) of each array for _arrays_now, and for zero_grad the (layer, flag) marking each
        Linear parameter's gradient as zeros and the other handles, whose gradients it fills."""
        if self._owners is None or self._owners_of != self.params:
            self._owners_of = list(self.params)  # kept alive: the comparison is by identity
            if all(isinstance(p, Parameter) for p in self.params):
                self._owners = [p.layer for p in self.params] * 2
                self._attrs = [p.name for p in self.params] + ["grad_" + p.name for p in self.params]
            else:
                self._owners = False
            lazy = [isinstance(p, Parameter) and isinstance(p.layer, Linear) and p.name in ("weight", "bias")
                    for p in self.params]
            self._marks = [(p.layer, "_zero_" + p.name) for p, ok in zip(self.params, lazy) if ok]
            self._fills = [p for p, ok in zip(self.params, lazy) if not ok]

    def _arrays_now(self):
        """The arrays the layers hold now, data then grad, and a key of their ids. With Parameter
        handles the lookups are C-level (map/getattr): this runs once per step, and a Python
        loop over the handles' properties cost ~5 µs each time."""
        self._handles()
        if self._owners:
            arrays = list(map(getattr, self._owners, self._attrs))
        else:
            arrays = [p.data for p in self.params] + [p.grad for p in self.params]
        return arrays, tuple(map(id, arrays))

    def _flat(self):
        """(data, grad) flat views over all parameters when they are packed, else None. Checked
        against the arrays the layers hold now, so a moved or reassigned parameter falls back.
        (The cache keeps the arrays it was built from alive, so their ids cannot be reused.)"""
        arrays, key = self._arrays_now()
        cached = self._flat_for
        if cached is None or cached[3] != key:
            n = len(self.params)
            data, grad = one_flat(arrays[:n]), one_flat(arrays[n:])
            cached = self._flat_for = (arrays, data, grad, key)
        return None if cached[1] is None or cached[2] is None else (cached[1], cached[2])

    def _flat_state(self, name, data):
        """State `name` of every parameter as one flat array whose per-parameter views are what
        state_dict saves; built (keeping any values, e.g. loaded ones) when they are not yet."""
        views = [st.get(name) for st in self.state]
        on_host = isinstance(data, np.ndarray)
        if all(v is not None and isinstance(v, np.ndarray) == on_host for v in views):
            flat = one_flat(views)
            if flat is not None and flat.size == data.size:
                return flat
        flat = simd.zeros(data.size, data.dtype)
        start = 0
        for view, p in zip(views, self.params):
            if view is not None:  # e.g. loaded, or made per parameter (or on the other device) before
                flat[start : start + p.data.size] = to_host(view)
            start += p.data.size
        if not on_host:
            from .gpu import to_device  # noqa: PLC0415 - only device arrays get here

            flat = to_device(flat)
        start = 0
        for st, p in zip(self.state, self.params):
            st[name] = flat[start : start + p.data.size]
            start += p.data.size
        return flat

    def zero_grad(self, set_to_none=False):
        """Every parameter's gradient reads as zeros from now on. A Linear's gradients are only
        marked (nothing is written): its next backward writes them instead of adding, and reading
        them before that fills them with zeros (see nbnet.layers.Linear). So an array taken from
        `.grad` before zero_grad() keeps its old values until then. Other gradients are filled.
        set_to_none: False only (see nbnet.layers.check_set_to_none)."""
        if set_to_none is not False:
            check_set_to_none(type(self).__name__, set_to_none)
        self._handles()
        for layer, flag in self._marks:
            setattr(layer, flag, True)
        if not self._fills:
            return
        flat = None if self._marks else self._flat()
        if flat is not None:  # no Linear: one pass over the packed buffer
            kernels(flat[1]).fill(flat[1], 0)
            return
        for p in self._fills:
            kernels(p.grad).fill(p.grad, 0)

    def _state(self, i, p):
        """Parameter i's state arrays, created as zeros (torch's start) on the parameter's device,
        and moved there if the model was moved since."""
        st = self.state[i]
        for name in self.state_names:
            arr = st.get(name)
            if arr is None:
                arr = empty_like_shape(p.data, (p.data.size,), p.data.dtype)
                kernels(arr).fill(arr, 0)
                st[name] = arr
            elif isinstance(arr, np.ndarray) != isinstance(p.data, np.ndarray):
                from .gpu import to_device_like  # noqa: PLC0415

                st[name] = to_device_like(arr, p.data)
        return st

    def _groups(self):
        """What a step updates, as (data, grad, state) with flat arrays: one group covering every
        parameter when they lie packed in one buffer (see nbnet.model.pack_parameters), so one
        kernel call updates them all; else one group per parameter. Kept while the parameter and
        state arrays stay the same ones: a step must not search the buffers again (one_flat costs
        more than a small model's step), nor make new flat views (on the GPU each new view costs
        its typing at the launch, ~50 µs)."""
        fast = self._fast
        if (fast is not None and len(self.params) == len(fast[0]) and all(map(is_, self.params, fast[0]))
                and not any(map(getattr, *fast[1])) and all(map(is_, map(getattr, *fast[2]), fast[3]))
                and all(map(is_, map(getitem, *fast[4]), fast[5]))):
            return fast[6]
        groups = self._groups_checked()
        self._fast = self._fast_check(groups)
        return groups

    def _fast_check(self, groups):
        """What _groups checks to answer `groups` again, in C-level maps (~1.5 µs; the full checks
        of _groups_checked cost ~4 µs a step, a twentieth of a batch-1 step): the same parameter
        handles; no Linear gradient marked as zeros (so the arrays behind .grad are what it
        reads); the same data, gradient and state arrays. None for handles that are not Parameters."""
        if not self._owners:
            return None
        params, fills = list(self.params), set(map(id, self._fills))  # _handles' split: marked or filled
        marks = ([layer for layer, _ in self._marks], [flag for _, flag in self._marks])
        owners = [p.layer for p in params] * 2
        names = [p.name for p in params] + [("grad_" if id(p) in fills else "_grad_") + p.name for p in params]
        states = ([st for st in self.state for _ in self.state_names], [n for _ in self.state for n in self.state_names])
        return (params, marks, (owners, names), tuple(map(getattr, owners, names)),
                states, tuple(map(getitem, *states)), groups)

    def _groups_checked(self):
        flat = self._flat()
        cached = self._groups_for
        if cached is not None and cached[0] is self._flat_for:
            views = [st.get(name) for st in self.state for name in self.state_names]
            if tuple(map(id, views)) == cached[3]:
                return cached[2]
        arrays, n, who = self._flat_for[0], len(self.params), type(self).__name__
        # State is kept per parameter number, made for the parameters as they were: for a resized
        # layer or a reassigned opt.params the kernels read and wrote past the ends of the old
        # state arrays (a crash, or other memory overwritten), or indexed past the state list.
        if len(self.state) != n:
            raise ValueError(f"{who}: {n} parameters but optimizer state for {len(self.state)}: "
                             "for other parameters make a new optimizer")
        for i in range(n):
            _check_parameter(who, i, arrays[i], arrays[n + i])
            for name in self.state_names:
                st = self.state[i].get(name)
                if st is not None and (st.size != arrays[i].size or st.dtype != arrays[i].dtype):
                    raise ValueError(f"{who}: parameter {i} is {arrays[i].dtype} {tuple(arrays[i].shape)} but its "
                                     f"state {name} was made for {st.size} {st.dtype} numbers: for other or "
                                     "resized parameters make a new optimizer")
        if flat is not None:
            data, grad = flat
            groups = [(data, grad, {name: self._flat_state(name, data) for name in self.state_names})]
        else:
            groups = [(_flat(p.data), _flat(p.grad), self._state(i, p)) for i, p in enumerate(self.params)]
        views = [st[name] for st in self.state for name in self.state_names]
        self._groups_for = (self._flat_for, views, groups, tuple(map(id, views)))
        return groups

    def _check_hyper_now(self):
        """Checks the hyper-parameters as the constructor does, when they changed since the last
        step: set after construction (opt.lr = None, -0.1; opt.betas = 0.9) they reached the
        kernels unchecked, and the weights became NaN or the loss climbed, without a word."""
        values = tuple(getattr(self, name) for name in self.checked_names)
        if values != self._hyper_ok:
            self._check_hyper(*values)
            self._hyper_ok = values

    def _scalars(self, dtype, names, *values):
        """values cast to dtype (as torch casts Python scalars), kept while they stay the same:
        making NumPy scalars costs ~0.3 µs each, a step. A value past the dtype's range (named by
        `names`) is a ValueError: cast, it became Inf with NumPy's RuntimeWarning, and the weights
        Inf or NaN, or (Adam's eps) the step none at all, silently. (nbnet train and a checkpoint's
        optim/meta refuse such values too.) Called for every group before any is updated."""
        key = (dtype, values)
        if self._cast is None or self._cast[0] != key:
            top = _largest(dtype)
            if any(abs(float(v)) > top for v in values):  # as floats: np.float32(0.1) > 1.8e308 warns (overflow)
                name, v = next((n, v) for n, v in zip(names, values) if abs(v) > top)
                raise ValueError(f"{type(self).__name__}: {name} = {v:g} is too large for {dtype} parameters")
            cast = tuple(dtype.type(v) for v in values)
            # One that rounds to 0 (lr=1e-50 on float32): steps that change nothing, or Adam's
            # eps 0 a 0/0 where a gradient stays 0; `nbnet train` refuses them the same way.
            tiny = next(((n, v) for n, v, c in zip(names, values, cast) if v and not c), None) if 0 in cast else None
            if tiny is not None:
                raise ValueError(f"{type(self).__name__}: {tiny[0]} = {tiny[1]:g} is 0 in {dtype} (too small)")
            self._cast = (key, cast)
        return self._cast[1]

    def state_dict(self):
        """{"type", hyper-parameters, "step_count", "state": {"<name>.<i>": host array}}. Copies, as
        Sequential.state_dict's (and as a model on the GPU always got): training on does not
        change a state_dict taken before, nor does writing into one change the optimizer."""
        state = {}
        for i, st in enumerate(self.state):
            for name in self.state_names:  # not a buffer kept from before momentum was set to 0
                arr = st.get(name)
                if arr is not None:
                    state[f"{name}.{i}"] = arr.copy() if isinstance(arr, np.ndarray) else arr.copy_to_host()
        # Python numbers: a NumPy scalar set after construction (opt.lr = np.float32(0.05)) made
        # the checkpoint's JSON writer fail ("float32 is not JSON serializable") after the epoch.
        hyper = {name: _plain(getattr(self, name)) for name in self.hyper_names}
        return {"type": type(self).__name__, **hyper, "step_count": self.step_count, "state": state}

    def load_state_dict(self, sd):
        who = type(self).__name__
        if not isinstance(sd, dict) or not isinstance(sd.get("state", {}), dict):
            raise TypeError(f"{who}: expected a state_dict() (a dict whose 'state' is a dict), got {type(sd).__name__}")
        if "param_groups" in sd:  # was "unexpected optimizer state entry '0'", torch's first parameter
            raise ValueError(f"{who}: this is a torch.optim state_dict (it has 'param_groups'); nbnet's is "
                             "{'type', hyper-parameters, 'step_count', 'state': {'exp_avg.0': flat array, ...}}: "
                             "README's 'Coming from PyTorch' shows the conversion")
        if sd.get("type", who) != who:
            raise ValueError(f"{who}: cannot load the state_dict of {str(sd['type'])[:40]}, another optimizer")
        # Checked as the constructor checks them, before anything is loaded: a NaN or negative
        # rate, a β of 1 or nesterov without momentum failed only at the next step, or never. By
        # the constructor of the nbnet optimizer this one is: a subclass's may take other arguments.
        base = next((c for c in type(self).__mro__ if c in OPTIMIZERS.values()), type(self))
        checked = base(self.params, **{name: sd.get(name, getattr(self, name)) for name in base.hyper_names})
        step_count = sd.get("step_count", 0)
        if not isinstance(step_count, numbers.Integral) or isinstance(step_count, bool) or step_count < 0:
            raise ValueError(f"{who}: step_count must be a whole number ≥ 0, got {step_count!r}")
        new_state = [{name: None for name in checked.state_names} for _ in self.params]
        for key, arr in sd.get("state", {}).items():
            name, _, idx = key.rpartition(".") if isinstance(key, str) else ("", "", "")
            # "<name>.<i>" as state_dict writes it: str.isdigit() also took "²" (then int() failed,
            # a message naming neither key nor file), int() reads "٣" and "00" (a second entry for
            # parameter 0 then replaced the first, silently); the length check keeps int() bounded.
            n = len(self.params)
            if not (name in checked.state_names and _INDEX.fullmatch(idx) and len(idx) <= len(str(n)) and int(idx) < n):
                names = "|".join(checked.state_names) or "(none)"
                raise ValueError(f"{who}: unexpected optimizer state entry {str(key)[:80]!r} "
                                 f"(expected {names}.<parameter number 0 .. {n - 1}>)")
            p = self.params[int(idx)]
            arr = np.asarray(arr)
            if arr.shape != (p.data.size,) or arr.dtype != p.data.dtype:
                raise ValueError(
                    f"{who}: state {key!r} has shape {arr.shape} {arr.dtype}, "
                    f"expected ({p.data.size},) {p.data.dtype}"
                )
            new_state[int(idx)][name] = arr.copy()
        for name in self.hyper_names:
            setattr(self, name, getattr(checked, name) if name in base.hyper_names else sd.get(name, getattr(self, name)))
        self.step_count = int(step_count)
        self.state = new_state
        # New dicts: _groups' cached groups (and its fast check, which reads the old dicts) still
        # held the state arrays of before, and the next step would go on from those.
        self._fast = self._groups_for = None


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0):
        g = ∇θ + λθ;   b = μ b + g (b = g on the first step);   θ ← θ − lr (nesterov ? g + μ b : b)
    """

    hyper_names = ("lr", "momentum", "weight_decay", "nesterov")
    checked_names = hyper_names  # _check_hyper's arguments (a subclass may add hyper_names of its own)
    _SCALAR_NAMES = ("lr", "momentum", "weight_decay")  # sgd_step's, as _scalars names them

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        self._check_hyper(lr, momentum, weight_decay, nesterov)
        self.momentum = float(momentum)  # first: it decides the state names
        super().__init__(params)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.nesterov = bool(nesterov)

    @staticmethod
    def _check_hyper(lr, momentum, weight_decay, nesterov):
        _check_nonneg("SGD", lr=lr, momentum=momentum, weight_decay=weight_decay)
        if not isinstance(nesterov, (bool, np.bool_)):  # nesterov="no" is truthy: it meant yes
            raise ValueError(f"SGD: nesterov must be True or False, got {nesterov!r}")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov momentum requires momentum > 0")

    @property
    def momentum(self):
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        # A buffer while momentum > 0, also for momentum given after construction (opt.momentum =
        # 0.9, a loaded state_dict): a step without one read the weights as the buffer. Checked as
        # the constructor checks it: a negative one kept no buffer and the kernel used the weights.
        _check_nonneg("SGD", momentum=value)
        self._momentum = value
        names = ("momentum_buffer",) if value > 0 else ()
        if names != self.state_names:
            self.state_names = names
            self._fast = self._groups_for = None  # groups made without the buffer

    def step(self):
        self._check_hyper_now()
        groups = self._groups()  # first: a step it refuses leaves step_count as it was
        names = self._SCALAR_NAMES
        if len(groups) > 1:  # a step _scalars refuses changes nothing: every group's dtype first
            for data, _, _ in groups:
                self._scalars(data.dtype, names, self.lr, self.momentum, self.weight_decay)
        lanes = self._lanes(groups)  # (None unless one group: then it is that group's)
        for data, grad, st in groups:
            lr, momentum, weight_decay = self._scalars(data.dtype, names, self.lr, self.momentum, self.weight_decay)
            buf = st["momentum_buffer"] if self.state_names else data  # without momentum the kernel never reads it
            if lanes is not None:
                cpu.sgd_lanes(data, grad, buf, lr, momentum, weight_decay, self.nesterov, *lanes)
            else:
                kernels(data).sgd_step(data, grad, buf, lr, momentum, weight_decay, self.nesterov)
        self.step_count += 1


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient):
        g = ∇θ + λθ;  m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²
        θ ← θ − lr/(1−β1^t) · m / (√v / √(1−β2^t) + ε)
    """

    state_names = ("exp_avg", "exp_avg_sq")
    hyper_names = ("lr", "betas", "eps", "weight_decay")
    checked_names = hyper_names  # _check_hyper's arguments (a subclass may add hyper_names of its own)
    decoupled = False
    _SCALAR_NAMES = ("1 - betas[0]", "betas[1]", "1 - betas[1]", "eps", "weight_decay",
                     "1 - lr * weight_decay")  # adam_step's first six, as _scalars names them

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self._check_hyper(lr, betas, eps, weight_decay)
        super().__init__(params)
        self.lr, self.eps, self.weight_decay = float(lr), float(eps), float(weight_decay)
        self.betas = (float(betas[0]), float(betas[1]))

    def _check_hyper(self, lr, betas, eps, weight_decay):
        name = type(self).__name__
        _check_nonneg(name, lr=lr, eps=eps, weight_decay=weight_decay)
        if not (hasattr(betas, "__len__") and len(betas) == 2 and all(_real(b) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"{name}: betas must be two numbers in [0, 1), got {betas!r}")

    def step(self):
        self._check_hyper_now()
        groups = self._groups()  # first: a step it refuses leaves t, Adam's bias correction, as it was
        t = self.step_count + 1
        # Scalars in Python doubles, as torch computes them (1 - β too), then cast to the parameter
        # dtype: float() first, as the constructor keeps them (an np.float32 set since, opt.lr =
        # np.float32(0.01), made lr / (1 - β1^t), 1 - β and 1 - lr λ in float32 arithmetic).
        lr, weight_decay = float(self.lr), float(self.weight_decay)
        beta1, beta2 = map(float, self.betas)
        step_size = lr / (1 - beta1**t)
        bc2_sqrt = math.sqrt(1 - beta2**t)
        l2 = 0.0 if self.decoupled else weight_decay
        decay = 1 - lr * weight_decay if self.decoupled else 1.0
        # The six that stay from step to step are cast once (_scalars keeps them); step_size and
        # bc2_sqrt change every step: cast here, bc2_sqrt in (0, 1], step_size checked as _scalars
        # checks (a lookup in the cache that always missed cost Adam's step 4 µs, a third of its Python).
        scalars = []
        for data, _, _ in groups:
            dt = data.dtype
            if abs(step_size) > _largest(dt):
                raise ValueError(f"{type(self).__name__}: lr / (1 - betas[0]**t) = {step_size:g} is too large for "
                                 f"{dt} parameters")
            size = dt.type(step_size)
            if step_size and not size:
                raise ValueError(f"{type(self).__name__}: lr / (1 - betas[0]**t) = {step_size:g} is 0 in {dt} (too small)")
            scalars.append(self._scalars(dt, self._SCALAR_NAMES, 1 - beta1, beta2, 1 - beta2, self.eps, l2, decay)
                           + (size, dt.type(bc2_sqrt)))
        self.step_count = t
        lanes = self._lanes(groups)
        for (data, grad, st), values in zip(groups, scalars):
            if lanes is not None:
                cpu.adam_lanes(data, grad, st["exp_avg"], st["exp_avg_sq"], *values, *lanes)
            else:
                kernels(data).adam_step(data, grad, st["exp_avg"], st["exp_avg_sq"], *values)


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay θ ← θ (1 − lr λ) before the Adam step (which then
    uses the plain gradient)."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def _plain(value):
    """value with NumPy scalars (also inside a tuple, as betas) as the Python numbers they hold."""
    if isinstance(value, np.generic):
        return value.item()
    return tuple(map(_plain, value)) if isinstance(value, (tuple, list)) else value


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """torch.nn.utils.clip_grad_norm_: the norm of all gradients together, as one vector,
    total = (Σ_p Σ_i |g_pi|^q)^(1/q) (q = norm_type; inf: max |g|); where c = max_norm / (total + 1e-6)
    is below 1, every gradient is scaled in place by c, as torch does (so a total just under max_norm,
    within 1e-6, is scaled by a hair too). Returns total (a float).

    parameters: Parameters (e.g. model.parameters()) or a single one. The sum runs in float64 (on a
    copy for a model on the GPU); the scale is applied in the gradients' dtype. A NaN total leaves
    the gradients as they are (torch multiplies them by NaN): error_if_nonfinite=True raises there.
    Where |g|^q overflows float64 (q = 2: gradients past ~1e154), the norm is taken over |g| / max|g|:
    finite and right, where torch's is inf and zeroes every gradient.
    """
    params = [parameters] if hasattr(parameters, "grad") else list(parameters)
    if not _real(max_norm) or not max_norm >= 0:  # NumPy scalars too, as the optimizers take them
        raise ValueError(f"clip_grad_norm_: max_norm must be a number ≥ 0, got {max_norm!r}")
    q = float(norm_type)
    if not (q > 0):
        raise ValueError(f"clip_grad_norm_: norm_type must be > 0 or inf, got {norm_type!r}")
    if not params:
        return 0.0
    grads = [p.grad for p in params if p.grad is not None]
    bad = next((g for g in grads if not _an_array(g)), None)
    if bad is not None:  # a torch model's parameters: an AttributeError ('copy_to_host') from inside
        raise TypeError(f"clip_grad_norm_: a gradient is a {_type_name(bad)}, not a NumPy array: it clips an nbnet "
                        "model's parameters (model.parameters()); for torch's use torch.nn.utils.clip_grad_norm_")
    host = [to_host(g) for g in grads]
    host = [g.astype(np.float64, copy=False).ravel() for g in host]
    if math.isinf(q):
        # np.max, not max(): Python's max() keeps a NaN only when it comes first, and a NaN in a
        # later gradient gave the others' maximum (which error_if_nonfinite passed)
        total = float(np.max([np.abs(g).max(initial=0.0) for g in host], initial=0.0))
    else:
        with np.errstate(over="ignore"):
            total = sum(float(np.sum(np.abs(g) ** q)) for g in host) ** (1.0 / q)
        if math.isinf(total) and all(np.isfinite(g).all() for g in host):
            # |g|^q overflowed float64 (q = 2: |g| past 1.3e154): the norm was inf and every
            # gradient was scaled to 0 (torch's too). Taken again over |g| / max|g| (each term ≤ 1).
            top = max(float(np.abs(g).max(initial=0.0)) for g in host)
            total = top * sum(float(np.sum((np.abs(g) / top) ** q)) for g in host) ** (1.0 / q)
    if error_if_nonfinite and not math.isfinite(total):
        raise ValueError(f"clip_grad_norm_: the total norm of the gradients is {total}")
    coef = float(max_norm) / (total + 1e-6)  # in double, as before: np.float32 / float is float32
    if coef < 1.0:
        for g in grads:
            if isinstance(g, np.ndarray):
                g *= g.dtype.type(coef)
            else:
                g.copy_to_device(g.copy_to_host() * g.dtype.type(coef))
    return total
