"""The serial and parallel twins of the element-wise kernels (nbnet.cpu.Kernel) give the same bits:
which twin runs depends on the size only, so a run must not change with it (or with threads)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from nbnet import cpu

F = np.float32


def _args(name, rng):
    a = lambda *shape: rng.standard_normal(shape).astype(F)  # noqa: E731
    k, c, n = 37, 11, 1000
    probs = (rng.random((k, c)) * 0.98 + 0.01).astype(F)  # in [0.01, 0.99]: crossentropy_forward gives NaN outside [0, 1]
    labels = rng.integers(0, c, k)
    return {
        "relu_forward": (a(k, c), a(k, c)),
        "relu_backward": (a(k, c), a(k, c), a(k, c)),
        "sigmoid_forward": (a(k, c), a(k, c)),
        "sigmoid_backward": (a(k, c), a(k, c), a(k, c)),
        "tanh_backward": (a(k, c), a(k, c), a(k, c)),
        "crossentropy_backward": (a(k, c), probs, labels),
        "softmax_crossentropy_backward": (a(k, c), probs, labels),
        "mse_backward": (a(k, c), a(k, c), a(k, c)),
        "bce_with_logits_backward": (a(k, c), a(k, c), rng.random((k, c)).astype(F)),
        "tanh_forward": (a(k, c), a(k, c) * F(3)),
        "softmax_forward": (a(k, c), a(k, c)),
        "softmax_backward": (a(k, c), a(k, c), probs),
        "crossentropy_forward": (a(k), probs, labels),
        "softmax_crossentropy_forward": (a(k, c), a(k), a(k, c), labels),
        "transpose": (a(c, k), a(k, c)),
        "sgd_step": (a(n), a(n), a(n), F(0.1), F(0.9), F(0.01), True),
        "adam_step": (a(n), a(n), a(n), np.abs(a(n)), F(0.1), F(0.999), F(0.001), F(1e-8), F(0.01), F(0.99), F(0.1),
                      F(0.3)),
        "sgd_lanes": (a(n), a(n), a(n), F(0.1), F(0.9), F(0.01), True, *_SPANS),
        "adam_lanes": (a(n), a(n), a(n), np.abs(a(n)), F(0.1), F(0.999), F(0.001), F(1e-8), F(0.01), F(0.99), F(0.1),
                       F(0.3), *_SPANS),
    }[name]


# Lanes of 1000 elements (cpu.sgd_lanes): lane 0 two spans, lane 1 one, out of order.
_SPANS = (np.array([[0, 300], [700, 1000], [300, 700]], np.int64), np.array([0, 2, 3], np.int64))


NAMES = ["relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
         "softmax_forward", "softmax_backward", "crossentropy_forward", "crossentropy_backward",
         "softmax_crossentropy_forward", "softmax_crossentropy_backward", "mse_backward", "bce_with_logits_backward",
         "transpose", "sgd_step", "adam_step", "sgd_lanes", "adam_lanes"]


def test_every_kernel_is_in_the_twins_test():
    assert sorted(NAMES) == sorted(name for name, obj in vars(cpu).items() if isinstance(obj, cpu.Kernel)
                                   and not name.startswith("linear_"))


@pytest.mark.parametrize("name", NAMES)
def test_serial_and_parallel_twins_agree_bitwise(name):
    kernel = getattr(cpu, name)
    assert isinstance(kernel, cpu.Kernel)
    args = _args(name, np.random.default_rng(0))
    one = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
    two = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
    assert kernel.serial(*one) == kernel.parallel(*two)  # a loss: the same value
    for x, y in zip(one, two):
        if isinstance(x, np.ndarray):
            assert x.tobytes() == y.tobytes()
    changed = [not np.array_equal(x, y) for x, y in zip(one, args) if isinstance(x, np.ndarray)]
    assert any(changed)  # the kernel wrote something


THRESHOLD_SCRIPT = """
import numpy as np
from nbnet import cpu
x, w, b = np.ones((64, 784), np.float32), np.ones((256, 784), np.float32), np.zeros(256, np.float32)
out = np.empty((64, 256), np.float32)
cpu.linear_forward_act(out, out, x, w, b, False)  # 12.8M multiply-adds: above PARALLEL_WORK
p = np.zeros(1000, np.float32)
cpu.sgd_step(p, p, p, np.float32(0.1), np.float32(0.9), np.float32(0), False)  # below STEP_PARALLEL_WORK
print(len(cpu.linear_forward_act.parallel.signatures), len(cpu.linear_forward_act.serial.signatures),
      len(cpu.sgd_step.parallel.signatures), len(cpu.sgd_step.serial.signatures))
"""


@pytest.mark.parametrize("threads,expected", [("1", "0 1 0 1"), ("2", "1 0 0 1")])
def test_which_twin_runs(threads, expected):
    """Above its threshold a Kernel runs the parallel twin, below it the serial one; with one Numba
    thread always the serial one (a parallel region on one thread only costs). Fresh processes: the
    twins compile on first use, so their signatures show which ran."""
    env = dict(os.environ, NUMBA_NUM_THREADS=threads, NBNET_THREADS="fixed")  # not fewer on a loaded machine
    done = subprocess.run([sys.executable, "-c", THRESHOLD_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == expected.split()


def test_a_kernel_that_streams_a_large_weight_counts_as_parallel_work():
    big = np.empty((256, 784), np.float32)  # 784 KB: larger than STREAM_BYTES
    small = np.empty((128, 256), np.float32)  # 128 KB
    assert big.nbytes >= cpu.STREAM_BYTES > small.nbytes
    assert cpu._linear_work(1, big) == cpu.PARALLEL_WORK  # 200K multiply-adds, but a weight to stream
    assert cpu._linear_work(8, big) == 8 * big.size  # already above the threshold
    assert cpu._linear_work(1, big, split=False) == big.size  # dX of one row: one row loop, no split
    assert cpu._linear_work(8, small) == 8 * small.size < cpu.PARALLEL_WORK
    edge = np.empty((512, 256), np.float32)  # exactly STREAM_BYTES: streamed too
    assert edge.nbytes == cpu.STREAM_BYTES and cpu._linear_work(1, edge) == cpu.PARALLEL_WORK


def test_work_at_the_threshold_runs_the_parallel_twin(monkeypatch):
    """Kernel's threshold is the least parallel work (PARALLEL_WORK: "parallel from 1M multiply-adds"):
    a call of exactly that much runs the parallel twin, one less the serial one."""
    from nbnet import threads  # noqa: PLC0415

    monkeypatch.setattr(threads, "parallel", lambda: True)
    monkeypatch.setattr(threads, "exclusive", False)
    kernel = object.__new__(cpu.Kernel)
    kernel.serial, kernel.parallel = (lambda work: "serial"), (lambda work: "parallel")
    kernel.work, kernel.threshold = (lambda work: work), cpu.PARALLEL_WORK
    assert kernel(cpu.PARALLEL_WORK) == "parallel" and kernel(cpu.PARALLEL_WORK - 1) == "serial"


def test_the_sgd_step_goes_parallel_from_131k_parameters():
    """Its work counts twice its elements: it moves five arrays per element, an activation two."""
    f = np.float32(0)
    args = lambda n: (np.empty(n, F), np.empty(n, F), np.empty(n, F), f, f, f, False)  # noqa: E731
    assert cpu.sgd_step.work(*args(131_072)) >= cpu.STEP_PARALLEL_WORK > cpu.sgd_step.work(*args(131_071))


# The fewest rows of 4 columns (parameters for the steps) at which each kernel runs its parallel
# twin: STEP_PARALLEL_WORK elements for a pass that memory bounds, an eighth of that (EXP_COST) for
# one with an exp or a log per element, or per row for crossentropy_forward; half for sgd_step, a
# quarter for adam_step (the measurements beside STEP_PARALLEL_WORK).
FIRST_PARALLEL = {
    "relu_forward": 65_536, "relu_backward": 65_536, "sigmoid_forward": 8_192, "sigmoid_backward": 65_536,
    "tanh_forward": 8_192, "tanh_backward": 65_536, "softmax_forward": 8_192, "softmax_backward": 65_536,
    "crossentropy_forward": 32_768, "crossentropy_backward": 65_536, "softmax_crossentropy_forward": 8_192,
    "softmax_crossentropy_backward": 65_536, "mse_backward": 65_536, "bce_with_logits_backward": 8_192,
    "sgd_step": 131_072, "adam_step": 65_536, "sgd_lanes": 131_072, "adam_lanes": 65_536,
}


def _sized(like, rows):
    """Arrays shaped as `like`'s, of `rows` rows (of 4 columns where 2-D); scalars as they are."""
    return [np.empty((rows, 4) if a.ndim == 2 else rows, F) if isinstance(a, np.ndarray) else a for a in like]


def test_each_kernel_goes_parallel_at_the_size_measured_for_its_cost():
    """Which twin runs changes no result (above), so only this sees a kernel's work miscounted."""
    assert sorted(FIRST_PARALLEL) == sorted(set(NAMES) - {"transpose"})
    rng = np.random.default_rng(0)
    for name, first in FIRST_PARALLEL.items():
        kernel, like = getattr(cpu, name), _args(name, rng)
        assert kernel.work(*_sized(like, first)) >= cpu.STEP_PARALLEL_WORK > kernel.work(*_sized(like, first - 1)), name


ONE_DRIVER_SCRIPT = """
import numpy as np
from numba.core import types
from nbnet import cpu, simd
dw, g, x, db = np.empty((10, 20), np.float32), np.ones((6, 10), np.float32), np.ones((6, 20), np.float32), np.empty(10, np.float32)
cpu.linear_blocks.serial(dw, g, x, db, dw, cpu.DW)
print(sum(isinstance(t, types.Literal) for sig in simd.bcast_unit.signatures for t in sig), len(simd.bcast_unit.signatures))
"""


def test_the_twins_of_linear_blocks_share_one_compilation_of_bcast_unit(tmp_path):
    """The serial twin sees SHARED_UNITS as the constant False; passed on as that constant, it made
    simd.bcast_unit (and what it calls) a function of its own for each twin, compiled twice on a
    cold start (~1.3 s of 13 on Zen 3). A fresh Numba cache, so that bcast_unit really compiles."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", ONE_DRIVER_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "1"]  # no literal argument types; one signature


def test_cprofile_shows_the_twins_as_two_rows():
    """cProfile names a Numba call by its dispatcher's __code__; the twins share one code object, so
    `python -m cProfile` summed both into one row, `cpu.py:N(_relu_forward)`. The serial twin's row is
    `_relu_forward_serial`; what Numba compiles and caches stays the code as written."""
    import cProfile  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    out, inp = _args("relu_forward", np.random.default_rng(0))
    kernel = cpu.relu_forward
    kernel.serial(out, inp), kernel.parallel(out, inp)  # compiled (or loaded) outside the profile
    profile = cProfile.Profile()
    profile.runcall(lambda: (kernel.serial(out, inp), kernel.parallel(out, inp), kernel.parallel(out, inp)))
    rows = {(line, name): stat[0] for (path, line, name), stat in pstats.Stats(profile).stats.items()
            if path == cpu.__file__}
    line = kernel.py_func.__code__.co_firstlineno
    assert rows == {(line, "_relu_forward_serial"): 1, (line, "_relu_forward"): 2}
    assert kernel.serial.py_func.__code__ is kernel.parallel.py_func.__code__  # co_name found by NUMBA_DEBUGINFO


@pytest.mark.parametrize("name", ["inspect_asm", "inspect_llvm", "inspect_types", "signatures", "parallel_diagnostics"])
def test_numbas_dispatcher_api_on_a_kernel_names_its_twins(name):
    """A user following Numba's docs asks the Kernel itself: an AttributeError that says where the
    dispatchers are and which has compiled, not Python's bare "no attribute"."""
    kernel = cpu.relu_forward
    with pytest.raises(AttributeError, match=rf"\.parallel\.{name} .* or \.serial\.{name} .*compiled so far"):
        getattr(kernel, name)
    assert getattr(kernel.parallel, name) is not None and not hasattr(kernel, "no_such_thing")
    assert getattr(kernel, "__deepcopy__", None) is None  # Python's own protocol lookups answer as before
    assert repr(kernel) == "<Kernel _relu_forward: Numba dispatchers .serial and .parallel>"


def _doubled(out, inp):
    for i in range(inp.shape[0]):
        out[i] = 2 * inp[i]


def test_a_kernels_attribute_errors_count_each_twins_signatures_and_leave_other_names_bare():
    """What the test above leaves open (mutation round 23): the counts are each twin's own (here the
    serial twin alone has compiled), the function is named as written, not as its serial copy; a name
    no dispatcher has, or a private one, gets Python's own message; a copy (which looks for
    __setstate__ before its attributes are there) does not recurse; and the serial twin's __code__,
    which profilers read, has its qualified name too (Python 3.11+)."""
    import copy  # noqa: PLC0415

    kernel = cpu.Kernel(_doubled, lambda out, inp: inp.size, threshold=1)
    kernel.serial(np.empty(3), np.ones(3))
    with pytest.raises(AttributeError, match=r"^a Kernel is two Numba dispatchers of _doubled: .*compiled so far: "
                                             r"\.parallel 0 signature\(s\), \.serial 1$"):
        kernel.signatures
    for name in ("no_such_thing", "_cache"):  # the dispatchers have _cache
        with pytest.raises(AttributeError, match=rf"^'Kernel' object has no attribute '{name}'$"):
            getattr(kernel, name)
    assert repr(copy.copy(kernel)) == "<Kernel _doubled: Numba dispatchers .serial and .parallel>"
    assert getattr(kernel.serial.__code__, "co_qualname", "_doubled_serial") == "_doubled_serial"
