"""What the profiling scripts share: the kernels of nbnet.cpu at MNIST shapes, a timer, the sgemm
peak. Not a script: kernels.py, threads.py, threshold.py and compile.py import it.

Kernels are found in nbnet.cpu when a script runs: every callable named `<something>_forward`,
`_backward...` or `_step...`, and each is called with the arrays its parameters name (`out`, `inp`,
`weight`, `dout`, ...). So whatever nbnet.cpu holds then, including faster or fused kernels with new
names or scratch arguments, is what gets measured, with no change here; a kernel whose parameters
name something unknown is listed as not measured, with the name.
"""

import inspect
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
from numba.core.errors import NumbaPerformanceWarning

# This checkout's nbnet, ahead of any other the environment holds (another worktree's editable
# install, a release): a script measures and describes the code beside it, as its child processes
# do (child_env). Run from a second checkout, the scripts timed the first one's kernels.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [CHECKOUT]:
    sys.path.insert(0, CHECKOUT)

try:
    import nbnet as nb

    nb.threads.env_fixed()  # NBNET_THREADS, else read at the first parallel kernel, after the CPU line
except ValueError as e:  # a setting nbnet refuses (NUMBA_DISABLE_JIT, ...): one line, as `nbnet train` says it
    sys.exit(f"Error: {e}")
from nbnet import cpu  # noqa: E402

# "parallel=True but nothing to parallelise" is about nbnet's code, not about these measurements.
warnings.simplefilter("ignore", NumbaPerformanceWarning)

KERNEL_NAME = re.compile(r"^[a-z][a-z0-9_]*_(forward|backward|step)(_[a-z0-9_]+)?$")


def python_function(kernel):
    """The Python function behind a kernel: a Numba dispatcher's py_func, a serial/parallel pair's
    serial.py_func, or a plain function that calls kernels itself."""
    for obj in (kernel, getattr(kernel, "serial", None)):
        if hasattr(obj, "py_func"):
            return obj.py_func
    return kernel if inspect.isfunction(kernel) else None


# Kernels measured through the entry points that route to them: linear_blocks computes dW, dX or
# the forward from Wᵀ depending on its arguments (linear_backward_params / linear_backward_input /
# linear_forward call it).
THROUGH_ENTRY = {"linear_blocks"}


def cpu_kernels():
    """{name: kernel} for every kernel in nbnet.cpu as it is now, in source order."""
    return {name: obj for name, obj in vars(cpu).items()
            if KERNEL_NAME.match(name) and name not in THROUGH_ENTRY and callable(obj)
            and python_function(obj) is not None}


def parameter_names(kernel):
    """The kernel's parameters that take an argument (those with a default keep it, as callers do)."""
    return [name for name, p in inspect.signature(python_function(kernel)).parameters.items()
            if p.default is inspect.Parameter.empty]


def rand(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@dataclass
class Group:
    """Arrays of one layer at one shape, by the parameter names kernels use for them."""

    label: str  # e.g. "Linear 784->256"
    shape: str
    prefixes: tuple  # kernel names this group measures start with one of these
    arrays: dict
    flops: float = 0.0  # 2 x multiply-adds, for the matmuls; 0: not a matmul
    numpy: dict = None  # kernel name -> the same computation in NumPy, as a reference
    work: int = 0  # multiply-adds for the matmuls, else elements: the size a thread pool splits

    def prefix(self, name):
        """Length of the longest of this group's prefixes that `name` starts with (0: none)."""
        return max((len(p) for p in self.prefixes if name.startswith(p)), default=0)

    def args(self, kernel):
        """The kernel's arguments, or raise KeyError naming the parameter we have no array for."""
        return tuple(self.arrays[p] for p in parameter_names(kernel))


def mnist_groups(batch=128, dtype=np.float32):
    """Every layer of the 784-256-128-10 MNIST MLP at batch size `batch`, the activations at
    (batch, 256), the loss at (batch, 10), and optimizer steps over all 235,146 parameters."""
    k, d = batch, dtype
    groups = []
    for n, m in ((784, 256), (256, 128), (128, 10)):
        a = dict(inp=rand(k, n, dtype=d), weight=rand(m, n, dtype=d, seed=1), bias=rand(m, dtype=d),
                 dout=rand(k, m, dtype=d, seed=2), preact=rand(k, n, dtype=d, seed=3),
                 out=np.empty((k, m), d), act=np.empty((k, m), d), dinp=np.empty((k, n), d),
                 dweight=np.zeros((m, n), d), dbias=np.zeros(m, d), relu=False, accumulate=True)
        o_fwd, o_dx = np.empty((k, m), d), np.empty((k, n), d)  # NumPy's outputs
        numpy = {
            "linear_forward": lambda a=a, o=o_fwd: np.add(np.dot(a["inp"], a["weight"].T, out=o),
                                                          a["bias"], out=o),
            "linear_backward_params": lambda a=a: (np.dot(a["dout"].T, a["inp"]), a["dout"].sum(0)),
            "linear_backward_input": lambda a=a, o=o_dx: np.dot(a["dout"], a["weight"], out=o),
        }
        groups.append(Group(f"Linear {n}->{m}", f"{k}x{n} -> {m}", ("linear_",), a,
                            flops=2.0 * k * n * m, work=k * n * m, numpy=numpy))

    x, g = rand(k, 256, dtype=d), rand(k, 256, dtype=d, seed=1)
    y = np.random.default_rng(2).uniform(0.01, 0.99, (k, 256)).astype(d)  # a forward's output
    r = np.empty((k, 256), d)  # NumPy's output
    for layer, forward, backward in (
        ("relu", lambda: np.maximum(x, 0, out=r), lambda: np.multiply(g, x >= 0, out=r)),
        ("sigmoid", lambda: np.divide(1, 1 + np.exp(-x), out=r),
         lambda: np.multiply(g * y, 1 - y, out=r)),
        ("tanh", lambda: np.tanh(x, out=r), lambda: np.multiply(g, 1 - y * y, out=r)),
        ("softmax", lambda: _np_softmax(x), lambda: y * (g - (g * y).sum(1, keepdims=True))),
    ):
        # Backward kernels read the forward's input (`inp`, ReLU) or output (`out`). A forward
        # kernel overwrites `out` with its true output of `inp`, which suits the backward as well.
        a = dict(inp=x, dout=g, out=y.copy(), dinp=np.empty((k, 256), d))
        numpy = {f"{layer}_forward": forward, f"{layer}_backward": backward}
        groups.append(Group(layer.capitalize(), f"{k}x256", (layer + "_",), a, work=k * 256,
                            numpy=numpy))

    z, t = rand(k, 10, dtype=d), np.random.default_rng(0).integers(0, 10, k)
    a = dict(logits=z, targets=t, probs=_np_softmax(z), losses=np.empty(k, d),
             dlogits=np.empty((k, 10), d), dprobs=np.empty((k, 10), d),
             pred=z, target=rand(k, 10, dtype=d, seed=1), dpred=np.empty((k, 10), d))
    numpy = {
        "softmax_crossentropy_forward": lambda: -np.log(_np_softmax(z)[np.arange(k), t]).mean(),
        "softmax_crossentropy_backward": lambda: (_np_softmax(z) - np.eye(10, dtype=d)[t]) / d(k),
    }
    groups.append(Group("Losses", f"{k}x10", ("softmax_crossentropy_", "crossentropy_", "mse_"), a,
                        work=k * 10, numpy=numpy))

    # BCEWithLogits: the same logits against float targets in [0, 1] (multi-label)
    tb = np.random.default_rng(3).uniform(0, 1, (k, 10)).astype(d)
    a = dict(logits=z, targets=tb, dlogits=np.empty((k, 10), d))
    numpy = {"bce_with_logits_forward": lambda: (np.maximum(z, 0) - z * tb + np.log1p(np.exp(-np.abs(z)))).mean()}
    groups.append(Group("BCEWithLogits", f"{k}x10", ("bce_",), a, work=k * 10, numpy=numpy))

    n = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    a = dict(param=rand(n, dtype=d), grad=rand(n, dtype=d, seed=1) * d(1e-3), buf=np.zeros(n, d),
             m=np.zeros(n, d), v=np.zeros(n, d), lr=d(0.01), momentum=d(0.9), weight_decay=d(0),
             nesterov=False, one_beta1=d(0.1), beta2=d(0.999), one_beta2=d(0.001), eps=d(1e-8), l2=d(0), decay=d(1),
             step_size=d(1e-3), bc2_sqrt=d(0.03))
    numpy = {"sgd_step": lambda: _np_sgd(a), "adam_step": lambda: _np_adam(a)}
    groups.append(Group("Optimizers", f"{n} params", ("sgd_", "adam_"), a, work=n, numpy=numpy))
    return groups


def _np_softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _np_sgd(a):
    buf = a["buf"].copy()
    buf *= 0.9
    buf += a["grad"]
    return a["param"] - a["lr"] * buf


def _np_adam(a):
    m = a["m"] + 0.1 * (a["grad"] - a["m"])
    v = 0.999 * a["v"] + 0.001 * a["grad"] * a["grad"]
    return a["param"] - 1e-3 * m / (np.sqrt(v) / 0.03 + 1e-8)


@dataclass
class Case:
    group: Group
    name: str
    kernel: object
    args: tuple = None
    problem: str = ""  # why it cannot be measured here, if it cannot


def mnist_cases(batch=128, dtype=np.float32):
    """(group, kernel) pairs for every kernel in nbnet.cpu, in group order then source order, and
    the names of kernels that no group owns."""
    kernels = cpu_kernels()
    groups = mnist_groups(batch, dtype)
    # A kernel belongs to the group(s) whose prefix fits it best: softmax_crossentropy_forward
    # to the losses, not to Softmax.
    best = {name: max(g.prefix(name) for g in groups) for name in kernels}
    cases, owned = [], set()
    for grp in groups:
        for name, kernel in kernels.items():
            if best[name] == 0 or grp.prefix(name) != best[name]:
                continue
            owned.add(name)
            case = Case(grp, name, kernel)
            try:
                case.args = grp.args(kernel)
            except KeyError as e:
                case.problem = f"needs an argument named {e.args[0]!r}"
            cases.append(case)
    return cases, sorted(set(kernels) - owned)


def time_call(fn, *args, min_time=0.2, repeat=5):
    """Seconds per call: the best of `repeat` rounds of enough calls to last min_time/repeat each.
    The first call (compilation, first touch of memory) is not timed."""
    fn(*args)
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < min_time / repeat / 4:
        fn(*args)
        calls += 1
    per_round = max(1, int(calls * 4))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(per_round):
            fn(*args)
        best = min(best, (time.perf_counter() - t0) / per_round)
    return best


# OpenBLAS picks its kernels from the CPU when it loads, unless OPENBLAS_CORETYPE names them. On the
# AVX-512 Zen 5 machine of 2026-11-24 the environment held OPENBLAS_CORETYPE=Haswell: AVX2 kernels at
# about half the AVX-512 speed (sgemm 1024², one thread: 123 vs 229 GFLOP/s); and a release that
# does not know a new CPU falls back the same way (0.3.31 misses Zen 5 in its table: OpenBLAS#6029).
# A comparison with such a BLAS flatters nbnet, so the peers get OpenBLAS's kernels for the ISA
# nbnet's kernels are compiled for: AVX-512 or AVX2 (also under NUMBA_CPU_NAME=haswell on an AVX-512
# machine: an AVX2 row against AVX2 BLAS). A core OpenBLAS has for every AVX-512 or AVX2 CPU.
BLAS_CORES = {"avx512": ("SkylakeX", {"skylakex", "cooperlake", "sapphirerapids"}),
              "avx2": ("Haswell", {"haswell", "zen"})}


def openblas_core():
    """(version, core name) of the OpenBLAS NumPy uses, or None: another BLAS, or no threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415
    except ImportError:
        return None
    for lib in threadpool_info():
        if lib.get("internal_api") == "openblas":
            return lib.get("version"), lib.get("architecture") or "?"
    return None


def match_blas():
    """Make NumPy's OpenBLAS run kernels of the ISA nbnet's run (BLAS_CORES), whatever
    OPENBLAS_CORETYPE said: where they differ, run this script again with it set (OpenBLAS reads it
    when it loads; the script's own child processes inherit it). Returns the line a benchmark
    prints: which BLAS, which kernels, and what was changed."""
    from nbnet import simd  # noqa: PLC0415

    found = openblas_core()
    if found is None:
        return "BLAS: not OpenBLAS, or threadpoolctl not installed (its kernels not checked)"
    version, core = found
    line = f"BLAS: OpenBLAS {version}, {core} kernels"
    if os.environ.get("NBNET_BLAS_MATCHED"):  # this is the run again
        return (f"{line} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} set by this script to "
                f"match nbnet's {simd.ISA}; it ran {os.environ['NBNET_BLAS_MATCHED']})")
    want, fits = BLAS_CORES.get(simd.ISA, (None, ()))
    if want is None or simd.EMULATED or core.lower() in fits:
        return line
    script = os.path.abspath(getattr(sys.modules["__main__"], "__file__", "") or "")
    if os.path.dirname(script) != os.path.dirname(os.path.abspath(__file__)):  # a test calling main()
        return f"{line}: not {simd.ISA} as nbnet's (run the script itself to match them)"
    user = os.environ.get("OPENBLAS_CORETYPE")
    was = f"{core} kernels" + (f", OPENBLAS_CORETYPE={user}" if user else "")
    os.environ["OPENBLAS_CORETYPE"], os.environ["NBNET_BLAS_MATCHED"] = want, was
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def limit_blas(n):
    """Give NumPy's BLAS n threads, as many as nbnet's kernels it is set against get, and return the
    line that says so. Left at its default (all cores), a reference measured contention instead: two
    OpenBLAS threads sharing one core took 16-20 ms for a 784->256 product at batch 8 that one thread
    does in ~50 µs (taskset -c 0; the same on a loaded 2-core machine)."""
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:
        return f"NumPy's BLAS: its default thread count, not {n} (threadpoolctl not installed)"
    threadpool_limits(n, user_api="blas")  # stays in effect: the object only restores on exit or when asked
    return f"NumPy's BLAS: {n} thread(s), as nbnet's"


def sgemm_peak(n=1024, dtype=np.float32):
    """GFLOP/s of np.dot on two n x n matrices: what this machine's BLAS reaches, measured now,
    with the threads NumPy's BLAS uses (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS)."""
    a, b = rand(n, n, dtype=dtype), rand(n, n, dtype=dtype, seed=1)
    out = np.empty((n, n), dtype)
    return 2.0 * n**3 / time_call(lambda: np.dot(a, b, out=out), min_time=0.5, repeat=3) / 1e9


def training_step(batch=128, dtype=np.float32):
    """A function doing one SGD training step of the 784-256-128-10 MLP on a fixed random batch."""
    model = nb.Sequential([
        nb.Linear(784, 256, dtype=dtype, seed=0), nb.ReLU(),
        nb.Linear(256, 128, dtype=dtype, seed=1), nb.ReLU(),
        nb.Linear(128, 10, dtype=dtype, seed=2),
    ])
    loss_fn = nb.SoftmaxCrossEntropy()
    opt = nb.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = np.random.default_rng(0).uniform(0, 1, (batch, 784)).astype(dtype)
    y = np.random.default_rng(1).integers(0, 10, batch)

    def step():
        opt.zero_grad()
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()

    return step


def child_env(base=None, **variables):
    """The environment for a script's child process: `base` (default os.environ) with `variables`,
    and this checkout first on PYTHONPATH, ahead of the user's entries, which stay: a child given
    PYTHONPATH=<checkout> alone lost them, and with them a PyTorch or scikit-learn installed there,
    whose column then went missing from the table though the script's own process had found it.
    Empty entries are dropped (Python reads one as the working directory)."""
    env = dict(os.environ if base is None else base, **variables)
    paths = [CHECKOUT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def threads_in_use():
    """The thread count nbnet's parallel kernels run on now. nbnet adapts it to the load
    (nbnet/threads.py): a run given 2 threads on a busy machine may run on 1, so a benchmark
    reports what it saw here beside the count it set. None before nbnet first looked (no kernel
    with enough work to go parallel has run)."""
    from nbnet import threads  # noqa: PLC0415

    return threads.in_use()


def thread_counts(used):
    """The counts threads_in_use() gave during a run, as text: "2", "1-2" where nbnet changed them,
    "-" where it never looked (every kernel ran serially)."""
    used = sorted(n for n in used if n is not None)
    if not used:
        return "-"
    return str(used[0]) if used[0] == used[-1] else f"{used[0]}-{used[-1]}"


# Why a peer's column shows "-" in every row: its package did not import in the workers.
PEERS = {"torch": "PyTorch could not be imported (pip install torch --index-url https://download.pytorch.org/whl/cpu)",
         "sklearn": "scikit-learn could not be imported (pip install 'nbnet[bench]')"}


def missing_peers(results, peers):
    """The lines that say why: one for each of `peers` that no result (a dict by contender name) has."""
    return [f"{name}: '-', {PEERS[name]}" for name in peers if not any(name in r for r in results)]


def load_warning():
    """A line to print when other processes compete for the cores (timings are then unreliable)."""
    load, cores = os.getloadavg()[0], os.cpu_count()
    if load > 0.5 * cores:
        return (f"warning: load average {load:.1f} on {cores} cores: other processes are running, "
                "timings are noisy; rerun on a quiet machine for figures to quote")
    return None


def table(headers, rows, aligns=None):
    """Rows as an aligned text table (first column left, the others right-aligned)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    aligns = aligns or ["<"] + [">"] * (len(headers) - 1)
    line = lambda r: "  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(r, aligns, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
