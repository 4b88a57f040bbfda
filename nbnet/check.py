"""`nbnet check`: compile the kernels for this CPU and check each against its formula, in seconds.

The first thing to run on a new machine, and what a bug report should carry: it prints the CPU,
the vector ISA and register blocks nbnet chose (nbnet.simd), the threading layer, then checks
- every fast Linear kernel against its plain formula kernel (the `_ref` in nbnet.cpu) on odd
  shapes that hit every block edge, float32 and float64, fused ReLU included;
- the same kernels bitwise equal on 1 thread and on all threads, float32 and float64 (skipped,
  saying why, where Numba has one thread);
- a small model's gradients against central finite differences in float64.
Exit status 1 when any check fails.

Also here: `compile_kernels`, which the training loop runs before timing epoch 1 so that its
samples/s do not include compilation, and which says "compiling kernels for this CPU" on stderr
when Numba's on-disk cache does not hold them yet (a real compilation, not a cache load).
"""

import contextlib
import copy
import os
import shutil
import sys
import threading
import time

import numba
import numba.core.event
import numpy as np

from . import cpu, simd, threads
from .data import whole

COMPILING = "compiling kernels for this CPU (cached for later runs)"
COMPILING_GPU = "compiling CUDA kernels for this GPU"

# (k, n, m): a single row, n ≡ 1 mod 64 and mod the vector width, more rows than one MC block,
# more steps than KC, widths below one vector, and a 10-output layer's dW large enough for the
# parallel twin, whose work units then split its columns (784->10 at batch 128: the tall blocks of
# 32-register CPUs once added one group's edge columns twice).
SHAPES = [(1, 65, 129), (3, 5, 9), (37, 70, 41), (130, 257, 66), (257, 33, 70), (128, 784, 10)]
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def compiling_note():
    """COMPILING, or the note that says why the kernels about to compile will not be cached, or
    where they will be instead of the NUMBA_CACHE_DIR that Numba passed over."""
    return _note(simd.cache_refusal())


def _note(refusal):
    if refusal is not None:
        return f"compiling kernels for this CPU (not cached: {refusal})"
    if simd.CACHE_DIR_REFUSAL is not None:
        return f"compiling kernels for this CPU (cached for later runs in {simd.CACHE_PATH}, as {simd.CACHE_DIR_REFUSAL})"
    return COMPILING


class _SayCompiling(numba.core.event.Listener):
    """Prints compiling_note() on stderr when Numba starts a real compilation of one of nbnet's CPU
    kernels ("numba:compile" fires only on a cache miss: a kernel loaded from the on-disk cache says
    nothing), once per process, wherever it happens: in nb.train's warm-up, or in the first
    forward of a loop of one's own, which otherwise sat silent for seconds. Registered with Numba
    when nbnet loads; not_saying_compiling() silences it."""

    said = False
    promised = False  # the note promised a cache, and no save has been refused since
    said_gpu = set()  # the dtypes whose CUDA kernels a warm-up compiled (see compile_kernels)
    silenced = 0  # > 0 inside not_saying_compiling()

    def on_start(self, event):
        if not _SayCompiling.said and not _SayCompiling.silenced and _ours((event.data or {}).get("dispatcher")):
            _SayCompiling.said = True
            why = simd.cache_refusal()
            _SayCompiling.promised = why is None
            print(_on_a_line_of_its_own() + _note(why), file=sys.stderr, flush=True)

    def on_end(self, event):
        pass


def _ours(dispatcher):
    """Whether a Numba dispatcher is one of nbnet's CPU kernels: not a user's own @njit function
    (a note about nbnet's kernels then would be wrong), nor a CUDA kernel (COMPILING_GPU)."""
    module = getattr(getattr(dispatcher, "py_func", None), "__module__", None) or ""
    return module.startswith("nbnet.") and type(dispatcher).__module__.startswith("numba.core")


numba.core.event.register("numba:compile", _SayCompiling())


class _CompileClock(numba.core.event.Listener):
    """Seconds each Python thread spent in Numba compiling (a cache miss) any function since nbnet
    loaded: nbnet's kernels, a custom layer's own @njit, a CUDA kernel. A compilation's callees
    compile inside it (nested events): only the outermost is timed. Per thread: another thread's
    compilation (a GUI predicting in float64) does not stop this one's training."""

    here = threading.local()  # .depth, .started, .seconds

    def on_start(self, event):
        here = _CompileClock.here
        depth = getattr(here, "depth", 0)
        if depth == 0:
            here.started = time.perf_counter()
        here.depth = depth + 1

    def on_end(self, event):
        # An end without its start (nbnet imported inside a compilation, by a user's @overload) is
        # skipped: an exception here would fail that compilation, in Numba's own event machinery.
        here = _CompileClock.here
        if getattr(here, "depth", 0) == 0:
            return
        here.depth -= 1
        if here.depth == 0:
            here.seconds = getattr(here, "seconds", 0.0) + time.perf_counter() - here.started


numba.core.event.register("numba:compile", _CompileClock())


def compile_seconds():
    """Seconds this Python thread spent compiling so far (see _CompileClock): nb.train takes what
    falls inside an epoch out of its seconds and samples/s (a kernel its warm-up could not reach)."""
    return getattr(_CompileClock.here, "seconds", 0.0)


def _on_a_line_of_its_own():
    """What clears a terminal's current line before the note: a kernel that first compiles in the
    middle of an epoch (a thread count the load changed asks for the other twin) printed the note
    after the half-drawn progress bar, on its line."""
    try:
        if not sys.stderr.isatty():
            return ""
    except (AttributeError, ValueError, OSError):  # None (pythonw), closed, a file-like without isatty
        return ""
    return "\r" + " " * (shutil.get_terminal_size().columns - 1) + "\r"


@contextlib.contextmanager
def saying_compiling():
    """A context whose kernels that really compile say so (as they do anywhere: _SayCompiling), and
    where a save refused after the note promised a cache (a disk that filled as the kernels were
    written: Numba saves each after compiling it) is said when the context ends, once."""
    yield
    if _SayCompiling.promised and not _SayCompiling.silenced:
        why = simd.cache_refusal(probe=False)
        if why is not None:
            _SayCompiling.promised = False
            print(f"some kernels were not cached after all ({why})", file=sys.stderr, flush=True)


@contextlib.contextmanager
def not_saying_compiling():
    """A context in which nothing says COMPILING (`nbnet train --quiet` prints nothing but errors)."""
    _SayCompiling.silenced += 1
    try:
        yield
    finally:
        _SayCompiling.silenced -= 1


def compile_kernels(model, opt=None, loss_fn=None, targets=None, train_rows=(128,), eval_rows=(), say=True):
    """Compile what training and evaluating `model` (a Sequential, on the CPU or the GPU) will run, by running
    it on a throwaway copy of the same widths: training steps (forward, `loss_fn`, backward,
    `opt`'s step) at each of `train_rows` batch sizes and forwards at `eval_rows`, so exactly the
    kernels those shapes choose (serial or parallel twin, dot or broadcast forward) get compiled,
    or loaded from Numba's cache, for each thread count a change in the load may choose (one and
    all: threads.counts_to_warm). The model and optimizer are not touched. Says COMPILING on
    stderr when a kernel is not in Numba's cache. What it cannot copy is left to compile on first use."""
    params = model.parameters()
    if not params:
        return
    if not isinstance(params[0].data, np.ndarray):  # on the GPU: numba-cuda compiles once per process
        # (per dtype: kernels are compiled for their argument types, not shapes). Said before every
        # warm-up, each nb.train call (one epoch a call, say) printed it again with nothing to compile.
        if say and not _SayCompiling.silenced and params[0].data.dtype not in _SayCompiling.said_gpu:
            _SayCompiling.said_gpu.add(params[0].data.dtype)
            print(COMPILING_GPU, file=sys.stderr, flush=True)
        _warm_up(model, opt, loss_fn, targets, train_rows, eval_rows, device="cuda")
        return
    with saying_compiling() if say else not_saying_compiling():
        # While the thread count adapts to the load, the twins of both counts: a load that came or
        # went mid-run asked for the others there (one thread while another process keeps a core
        # busy), and their compilation, seconds, fell in that epoch. Measured (Zen 5, 2 cores,
        # 784-256-128-10, batch 128): started quiet, 8.9 s + 0.6 s for the serial twins; started
        # loaded, 4.0 s + 5.2 s for the parallel ones; from the cache 0.2 s + 0.01-0.02 s.
        counts = threads.counts_to_warm()
        if not counts:  # the count in use is the only one this run will see
            _warm_up(model, opt, loss_fn, targets, train_rows, eval_rows)
        for n in counts:
            with threads.as_if(n):
                _warm_up(model, opt, loss_fn, targets, train_rows, eval_rows)
    # Numba's threads start at the first parallel kernel, which the warm-up's copy may never reach
    # (too little work a layer; the training loop's planned steps ask at step 2): that start, ~20 ms,
    # fell in epoch 1, which reported a quarter of the samples/s of epoch 2 on the spiral data.
    numba.get_num_threads()


def _warm_up(model, opt, loss_fn, targets, train_rows, eval_rows, device=None):
    from .layers import Linear, kernels  # noqa: PLC0415
    from .losses import SoftmaxCrossEntropy  # noqa: PLC0415
    from .model import Sequential  # noqa: PLC0415

    try:
        layers = [Linear(layer.in_features, layer.out_features, dtype=layer.dtype, seed=0)
                  if isinstance(layer, Linear) else _like(layer) for layer in model.layers]
        copy = Sequential(layers)
        if device is not None:
            copy.to(device)
        copy_opt = None
        if opt is not None:
            copy_opt = type(opt)(copy.parameters(), **{k: getattr(opt, k) for k in opt.hyper_names})
        loss_fn = type(loss_fn)() if loss_fn is not None else SoftmaxCrossEntropy()
        targets = np.zeros(1, np.int64) if targets is None else np.asarray(targets)
        width = next(layer for layer in model.layers if isinstance(layer, Linear)).in_features
        rng = np.random.default_rng(0)
        # dict.fromkeys: a batch size above the rows asks for the same step twice (n and n % batch)
        for rows, train in dict.fromkeys([(r, True) for r in train_rows if r > 0] + [(r, False) for r in eval_rows if r > 0]):
            # Drawn in the model's dtype: float64 draws and their copy held 3 batches' worth of a
            # float32 model's rows (28 MB at an eval batch of 3000 MNIST rows), never counted in check_memory.
            x = rng.random((rows, width), dtype=copy.dtype)
            y = np.zeros((rows,) + targets.shape[1:], targets.dtype)
            if device is not None and y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
                from .gpu import DeviceDataset  # noqa: PLC0415 - the batches' gather kernel

                x, y = next(iter(DeviceDataset(x, y).batches(rows, shuffle=True, seed=0)))
            copy.zero_grad()
            logits = copy.forward(x)
            if y.ndim == 1:
                kernels(logits).count_correct(logits, y)
            loss_fn.forward(logits, y)
            if train:
                copy.backward(loss_fn.backward())
                if copy_opt is not None:
                    copy_opt.step()
    except Exception:  # noqa: BLE001, S110 - a warm-up only: what it could not run compiles on first use
        pass


def _like(layer):
    """A layer to stand for `layer` in the warm-up's copy: rebuilt from its config() (nbnet's
    activations, a layer of one's own that gives its arguments), else a deep copy of it (its
    parameters and forward cache too). type(layer)() alone failed for the README's own Scale(features):
    that ended the warm-up before its first step, and every kernel compiled in epoch 1."""
    try:
        return type(layer)(**layer.config())
    except Exception:  # noqa: BLE001 - a constructor of one's own may raise anything for missing arguments
        return copy.deepcopy(layer)


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def check_linear(dtype):
    """Failures (strings) of the fast Linear kernels against the formula kernels at SHAPES."""
    bad = []
    for k, n, m in SHAPES:
        rng = np.random.default_rng(k + n + m)
        x, w, b, g = _rand(rng, (k, n), dtype), _rand(rng, (m, n), dtype), _rand(rng, m, dtype), _rand(rng, (k, m), dtype)
        name = f"{np.dtype(dtype).name} k={k} n={n} m={m}"
        ref, out, act = np.empty((k, m), dtype), np.full((k, m), np.nan, dtype), np.full((k, m), np.nan, dtype)
        cpu.linear_forward_ref(ref, x, w, b)
        wt = np.empty((n, m), dtype)
        cpu.linear_relu_forward(out, act, x, w, b, wt)
        if not np.abs(out - ref).max() <= TOL[dtype] * n or not np.array_equal(act, np.maximum(out, 0)):
            bad.append(f"linear_relu_forward {name}: max error {np.abs(out - ref).max():.3g}")
        out.fill(np.nan)
        cpu.linear_forward(out, x, w, b)
        if not np.abs(out - ref).max() <= TOL[dtype] * n:
            bad.append(f"linear_forward {name}: max error {np.abs(out - ref).max():.3g}")
        dx, dx_ref = np.full((k, n), np.nan, dtype), np.empty((k, n), dtype)
        cpu.linear_backward_input_ref(dx_ref, g, w)
        preact = _rand(rng, (k, n), dtype)
        cpu.linear_relu_backward_input(dx, g, w, preact)
        want = np.where(preact >= 0, dx_ref, 0)
        if not np.abs(dx - want).max() <= TOL[dtype] * m:
            bad.append(f"linear_relu_backward_input {name}: max error {np.abs(dx - want).max():.3g}")
        dw, db = np.ones((m, n), dtype), np.ones(m, dtype)
        dw_ref, db_ref = dw.copy(), db.copy()
        cpu.linear_backward_params(dw, db, g, x, True)
        cpu.linear_backward_params_ref(dw_ref, db_ref, g, x)
        err = max(np.abs(dw - dw_ref).max(), np.abs(db - db_ref).max())
        if not err <= TOL[dtype] * k:
            bad.append(f"linear_backward_params {name}: max error {err:.3g}")
        # accumulate=False (after zero_grad) writes over what is there: NaN must not show through.
        dw, db, dw_ref, db_ref = np.full((m, n), np.nan, dtype), np.full(m, np.nan, dtype), np.zeros((m, n), dtype), np.zeros(m, dtype)
        cpu.linear_backward_params(dw, db, g, x, False)
        cpu.linear_backward_params_ref(dw_ref, db_ref, g, x)
        err = max(np.abs(dw - dw_ref).max(), np.abs(db - db_ref).max())
        if not err <= TOL[dtype] * k:
            bad.append(f"linear_backward_params (writing) {name}: max error {err:.3g}")
    return bad


class Skipped(Exception):  # noqa: N818 - not an error: a check with nothing to compare says why
    """Raised by a check that cannot run here; `nbnet check` prints "skip" and the reason."""


def check_threads(dtypes=(np.float32, np.float64)):
    """Failures of 1 thread vs all threads, bitwise, on each fast Linear kernel (parallel twins).
    Skipped where Numba has one thread: there is nothing to compare (it returned no failures, and
    `nbnet check` printed "ok" for a comparison it never made: under NUMBA_NUM_THREADS=1, or where
    the process may use one CPU (taskset, a container's cpuset), Numba's default)."""
    top = numba.config.NUMBA_NUM_THREADS
    if top < 2:
        why = ("NUMBA_NUM_THREADS=1" if os.environ.get("NUMBA_NUM_THREADS")
               else "this process may use 1 CPU, or num_threads: 1 in ./.numba_config.yaml")
        raise Skipped(f"Numba has 1 thread ({why}): nothing to compare; NUMBA_NUM_THREADS=2 runs it, also on one CPU")
    k, n, m = 130, 257, 66
    bad = []
    before = numba.get_num_threads()
    try:
        for dtype in dtypes:
            rng = np.random.default_rng(7)
            x, w, b, g = (_rand(rng, s, dtype) for s in ((k, n), (m, n), (m,), (k, m)))
            runs = []
            for t in (1, top):
                numba.set_num_threads(t)
                out, out_t = np.empty((k, m), dtype), np.empty((k, m), dtype)
                dx, dw, db = np.empty((k, n), dtype), np.ones((m, n), dtype), np.ones(m, dtype)
                cpu.linear_forward_act.parallel(out, out, x, w, b, False)
                cpu.linear_blocks.parallel(out_t, x, w.T.copy(), b, out_t, cpu.FORWARD)
                for kernel, args in (cpu.backward_input_route(dx, g, w, dx, False),
                                     cpu.backward_params_route(dw, db, g, x, True)):
                    kernel.parallel(*args)
                runs.append((out, out_t, dx, dw, db))
            bad += [f"{name} {np.dtype(dtype).name}: 1 thread and {top} threads differ" for name, a, c in
                    zip(("forward", "forward from Wᵀ", "dX", "dW", "db"), *runs) if not np.array_equal(a, c)]
    finally:
        numba.set_num_threads(before)
    return bad


def check_finite_differences():
    """Failures of a small float64 model's gradients against central differences."""
    from .layers import Linear, ReLU  # noqa: PLC0415
    from .model import Sequential  # noqa: PLC0415

    rng = np.random.default_rng(3)
    model = Sequential([Linear(9, 17, dtype=np.float64, seed=1), ReLU(), Linear(17, 4, dtype=np.float64, seed=2)])
    return gradcheck(model, rng.standard_normal((5, 9)), rng.integers(0, 4, 5), seed=3)


def gradcheck(model, x, y, *, loss="cross-entropy", eps=1e-6, tol=1e-6, samples=6, seed=0):
    """Checks the model's backward against the loss's central differences, in float64: the lines
    that disagree, [] when none does. For a layer of one's own, put it in a float64 model:

        model = nb.Sequential(nb.Linear(3, 4, dtype=np.float64, seed=0), MyLayer(), nb.Linear(4, 2, dtype=np.float64, seed=1))
        assert nb.gradcheck(model, x, y) == []

    For `samples` elements of each parameter and of x (all of them with samples=None), drawn with
    `seed`: the gradient backward gives, dL/dθ, against (L(θ + eps) − L(θ − eps)) / (2 eps), the
    mean loss `loss` (as nb.train's: "cross-entropy", "mse", "bce") on the whole batch (x, y). A
    line is written where |dL/dθ − difference| > tol · max(1, |difference|), naming the element as
    state_dict does ("0.weight[2, 1]"), or x[i, j]. A difference across a kink (ReLU at 0) is not a
    derivative: such an element can disagree by itself. The parameters are put back bit for bit
    (x is copied); the model's gradients are left holding this batch's, and its mode (train/eval)
    as it is: a forward that draws random numbers (a Dropout in training mode) is refused."""
    from .losses import LOSSES, check_loss  # noqa: PLC0415

    if not hasattr(model, "named_parameters") or not hasattr(model, "lock"):
        raise TypeError(f"gradcheck takes an nb.Sequential, not {type(model).__name__}: wrap a layer, "
                        "nb.Sequential(layer)")
    check_loss(loss)
    for name, value, ok in (("eps", eps, lambda v: 0 < v < np.inf), ("tol", tol, lambda v: 0 <= v < np.inf)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not ok(value):
            raise ValueError(f"{name} must be a finite number {'> 0' if name == 'eps' else '>= 0'}, got {value!r}")
    if samples is not None and not whole(samples, 1):
        raise ValueError(f"samples must be a positive integer or None (every element), got {samples!r}")
    if not whole(seed, 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    named = model.named_parameters()
    for key, p in named:
        if not isinstance(p.data, np.ndarray):
            raise ValueError("gradcheck runs on the host: model.to('cpu') first")
        if p.data.dtype != np.float64:
            raise ValueError(f"gradcheck needs float64 parameters, {key} is {p.data.dtype}: in float32 a difference "
                             f"of step {eps:g} is rounding noise (model.astype(np.float64), or dtype=np.float64 "
                             "in each layer of one's own)")
    try:
        x = np.array(x, dtype=np.float64, order="C")  # a copy: its elements are moved in turn
    except (TypeError, ValueError) as e:  # NumPy's words name no argument: "could not convert string to float"
        raise ValueError(f"x must be real numbers: {e}") from None
    if x.ndim != 2 or not len(x):
        raise ValueError(f"x must be a batch (N, D) with N >= 1, got shape {x.shape}")
    if loss == "cross-entropy":
        y = np.asarray(y)
    else:
        y = np.asarray(y, dtype=np.float64)
        y = y.reshape(-1, 1) if y.ndim == 1 else y
    loss_fn = LOSSES[loss]()
    rng = np.random.default_rng(seed)

    def chosen(shape):
        size = int(np.prod(shape))
        flat = np.arange(size) if samples is None else rng.choice(size, size=min(samples, size), replace=False)
        return [np.unravel_index(i, shape) for i in flat]

    def value():
        return loss_fn.forward(model.forward(x), y)

    def difference(arr, at):
        old = arr[at]
        arr[at] = old + eps
        up = value()
        arr[at] = old - eps
        down = value()
        arr[at] = old
        return (up - down) / (2 * eps)

    with model.lock:
        if not np.array_equal(model.forward(x), model.forward(x), equal_nan=True):
            raise ValueError("the model's forward gave two outputs for one x: a layer draws random numbers (a Dropout "
                             "in training mode?); call model.eval() first, or check that layer without them")
        at_x = value()
        if not np.isfinite(at_x):
            raise ValueError(f"the loss is {at_x} on this batch: no derivative to check")
        numeric = [(key, at, difference(p.data, at)) for key, p in named for at in chosen(p.data.shape)]
        numeric += [("x", at, difference(x, at)) for at in chosen(x.shape)]
        # last, on the unperturbed batch: the gradients and the layers' caches are this batch's
        model.zero_grad()
        value()
        grads = {"x": model.backward(loss_fn.backward(), need_input_grad=True)}
        grads.update((key, p.grad) for key, p in named)  # read now: a layer's zero_grad may make new arrays
    return [f"{key}[{', '.join(map(str, at))}]: backward {grads[key][at]:.8g}, finite difference {num:.8g}"
            for key, at, num in numeric if not abs(grads[key][at] - num) <= tol * max(1.0, abs(num))]


def threading_layer():
    """Numba's threading layer, or "unknown (why)": where none loads (NUMBA_THREADING_LAYER=tbb
    without tbb) starting Numba's threads raises its ValueError, and `nbnet info` and `nbnet check`
    say so on their threads line and go on (check's kernels then fail one by one), rather than
    stopping at it with that error alone."""
    try:
        # Starts Numba's threads, choosing the layer, outside any compilation: a parallel kernel's
        # first call (how this started them) raised its ValueError from inside Numba's compiler,
        # which Numba 0.59 (old-style captured errors) wrapped in a LoweringError: a traceback.
        numba.get_num_threads()
        return numba.threading_layer()
    except ValueError as e:
        return f"unknown ({' '.join(str(e).split())})"


def describe_threads():
    """threads.describe(), or what stops Numba's threads from starting (see threading_layer)."""
    try:
        return threads.describe()
    except ValueError:  # it starts them: numba.get_num_threads() raises where no layer loads
        return "none: Numba's threads do not start (see the threading layer)"


_WIDTH = ("sse2", "avx", "avx2", "avx512")  # x86 vector ISAs, narrowest first


def own_isa_hint():
    """A hint, or None: NUMBA_CPU_NAME without NUMBA_CPU_FEATURES compiles for the named CPU with this
    machine's features added (Numba passes the host's list), so NUMBA_CPU_NAME=haswell on an AVX-512
    machine is AVX-512 code, as describe() says; one who wanted haswell's portable AVX2 code is told
    how to get it."""
    name = numba.config.CPU_NAME
    if name is None or numba.config.CPU_FEATURES is not None or simd.EMULATED or simd.ISA not in _WIDTH:
        return None
    feats = simd.own_features(name)
    own = "avx512" if "avx512f" in feats else "avx2" if "avx2" in feats else "avx" if "avx" in feats else "sse2"
    if _WIDTH.index(own) >= _WIDTH.index(simd.ISA):
        return None
    return (f"(NUMBA_CPU_NAME={name} compiles with this machine's features: add NUMBA_CPU_FEATURES= for "
            f"{name}'s own, {own})")


def main(out=print):
    """Run every check, printing as it goes; returns the exit status (0: all passed)."""
    from . import __version__  # noqa: PLC0415

    if simd.FOREIGN_CODE is not None:  # every check would fail with it: said once
        raise ValueError(simd.FOREIGN_CODE)
    # the sources' hash names the kernels' code exactly, also in a git checkout between versions
    out(f"nbnet {__version__} (kernel sources {cpu.SOURCES_HASH[:12]}), numba {numba.__version__}, "
        f"numpy {np.__version__}")
    out(simd.describe())
    hint = own_isa_hint()
    if hint is not None:
        out(hint)
    out(f"threads: {describe_threads()}; NUMBA_NUM_THREADS {numba.config.NUMBA_NUM_THREADS}, threading layer "
        f"{threading_layer()}, " + ", ".join(f"{k}={v}" for k, v in threads.waiting().items()))
    out(simd.describe_cache())
    t0 = time.perf_counter()
    with saying_compiling():
        failures, skipped = _run_checks(out)
    out(f"{'all checks passed' if not failures else f'{failures} check(s) failed'} in {time.perf_counter() - t0:.1f} s"
        f"{f' ({skipped} skipped)' if skipped else ''}")
    return 1 if failures else 0


def _run_checks(out):
    """Runs and prints each check; returns (failures, checks skipped)."""
    failures = skipped = 0
    for name, run in (("Linear kernels vs formula, float32", lambda: check_linear(np.float32)),
                      ("Linear kernels vs formula, float64", lambda: check_linear(np.float64)),
                      ("1 thread vs all threads, bitwise, float32 and float64", check_threads),
                      ("gradients vs finite differences, float64", check_finite_differences)):
        t = time.perf_counter()
        try:
            bad = run()
        except Skipped as e:
            skipped += 1
            out(f"skip {name}: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - a kernel that fails to compile or run is a failure
            bad = [f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"]
        failures += len(bad)
        out(f"{'ok  ' if not bad else 'FAIL'} {name} ({time.perf_counter() - t:.1f} s)")
        for line in bad:
            out(f"     {line}")
    return failures, skipped
