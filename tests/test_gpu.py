"""The GPU path, tested without a GPU.

- tests/gpu_cases.py (every CUDA kernel against its CPU twin, a training run, moves, checkpoints,
  the device data set) runs in a child pytest with NUMBA_ENABLE_CUDASIM=1: the simulator must be
  chosen before numba.cuda is first imported, and a child keeps that choice away from every other
  test (a CLI test asking for `--device cuda` must still see "no GPU" here).
- On a machine with a usable GPU the same cases also run for real.
- Every kernel compiles to PTX for float32 and float64 with no double arithmetic in float32
  (the simulator runs kernels as Python and checks no types); needs NVVM, skipped without it.
- Without a GPU, `to("cuda")` raises and says why; without numba-cuda, nbnet.gpu still imports.
"""

import functools
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nbnet as nb

ROOT = Path(__file__).resolve().parents[1]
CASES = Path(__file__).with_name("gpu_cases.py")
# The oldest numba-cuda that nbnet[cuda] takes (pyproject.toml). The test extra cannot ask for it,
# or it would not install beside Numba 0.59 (nbnet's floor), whose newest numba-cuda (0.17) does not
# import: the GPU tests skip there, saying why.
CUDA_FLOOR = re.search(r'"numba-cuda>=([\d.]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))[1]


def _numba_cuda_too_old():
    """Why the installed numba-cuda is no use to nbnet, or None."""
    have = importlib.metadata.version("numba-cuda")
    number = lambda v: tuple(int(p) for p in re.findall(r"\d+", v)[:3])  # noqa: E731
    if number(have) < number(CUDA_FLOOR):
        return f"numba-cuda {have} is older than {CUDA_FLOOR}, the oldest nbnet[cuda] takes (it needs Numba >= 0.60)"
    return None


NO_NUMBA_CUDA = ("numba-cuda not installed (pip install -e '.[test]' brings it)"
                 if importlib.util.find_spec("numba_cuda") is None else _numba_cuda_too_old())
HAVE_NUMBA_CUDA = NO_NUMBA_CUDA is None
needs_numba_cuda = pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason=str(NO_NUMBA_CUDA))


def run_python(args, **env):
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    environ.update(env)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600
    )


def run_cases(*pytest_args, **env):
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", *pytest_args, str(CASES)]
    proc = run_python(args, **env)
    assert proc.returncode == 0, f"tests/gpu_cases.py failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@functools.cache
def real_gpu():
    """A one-line description of a usable GPU, or None (asked in a child: no CUDA state here)."""
    if not HAVE_NUMBA_CUDA:
        return None
    proc = run_python(["-c", "from nbnet.gpu import gpu_status; print(gpu_status())"])
    return proc.stdout.strip() if proc.returncode == 0 else None


@needs_numba_cuda
def test_cuda_kernels_in_the_simulator():
    out = run_cases(NUMBA_ENABLE_CUDASIM="1", NBNET_CUDA_TILE="4")
    assert " passed" in out and "skipped" not in out


@needs_numba_cuda
def test_cuda_kernels_on_a_real_gpu():
    status = real_gpu()
    if status is None:
        pytest.skip("no usable GPU")
    run_cases(NUMBA_ENABLE_CUDASIM="0", NBNET_CUDA_TILE="4")  # partial tiles on hardware too
    run_cases("-k", "not tiles_are_small", NUMBA_ENABLE_CUDASIM="0")  # and the default tile


PTX_CHECK = r"""
import types, numba, numpy as np
import numba.cuda.dispatcher as dispatcher
from nbnet import gpu
# Device functions ask the current GPU for its compute capability; there is none here.
dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(7, 5))
i64 = np.zeros(3, np.int64)
for dt in (np.float32, np.float64):
    a, s = (lambda *shape: np.zeros(shape, dt)), dt(1)
    m2 = (a(3, 4), a(3, 4))
    examples = {
        "_linear_forward_kernel": (a(3, 4), a(3, 4), a(3, 5), a(4, 5), a(4), True),
        "_linear_backward_params_kernel": (a(4, 5), a(4), a(3, 4), a(3, 5), True),
        "_linear_backward_params_part_kernel": (a(2, 4, 5), a(2, 4), a(3, 4), a(3, 5), 2),
        "_linear_backward_params_sum_kernel": (a(4, 5), a(4), a(2, 4, 5), a(2, 4), True),
        "_linear_backward_input_kernel": (a(3, 5), a(3, 4), a(4, 5), a(3, 5), True),
        "_sum_kernel": (a(1), a(3)),
        "_squared_error_sum_kernel": (a(1), *m2),
        "_crossentropy_rows_kernel": (a(3), a(3, 4), i64, s),
        "_crossentropy_backward_kernel": (*m2, i64, s),
        "_softmax_crossentropy_rows_kernel": (a(3, 4), a(3), a(3, 4), i64),
        "_softmax_crossentropy_backward_kernel": (*m2, i64),
        "_softmax_crossentropy_forward_backward_kernel": (*m2, a(3), a(3, 4), i64),
        "_mse_backward_kernel": (a(3, 4), *m2),
        "_sgd_step_kernel": (a(4), a(4), a(4), s, s, s, True, s),
        "_adam_step_kernel": (a(4), a(4), a(4), a(4)) + (s,) * 9,
        "_fill_kernel": (a(4), s),
        "_copy_kernel": m2,
        "_gather_rows_kernel": (a(2, 4), i64[:2], a(3, 4), i64, i64, 0),
        "_count_correct_kernel": (np.zeros(1, np.int64), a(3, 4), i64),
        "_bce_with_logits_sum_kernel": (a(1), *m2),
        "_bce_with_logits_backward_kernel": (a(3, 4), *m2),
        "_count_correct_labels_kernel": (np.zeros(1, np.int64), *m2),
    }
    for act in ("relu", "sigmoid", "tanh", "softmax"):
        examples[f"_{act}_forward_kernel"] = m2
        examples[f"_{act}_backward_kernel"] = (a(3, 4), *m2)
    kernels = {n for n in dir(gpu) if n.startswith("_") and n.endswith("_kernel")}
    assert kernels == set(examples), f"kernels without a PTX example: {kernels ^ set(examples)}"
    for name, args in examples.items():
        ptx, _ = numba.cuda.compile_ptx(
            getattr(gpu, name).py_func, tuple(numba.typeof(x) for x in args), cc=(7, 5)
        )
        if dt == np.float32:
            assert ".f64" not in ptx, f"{name}: double arithmetic in the float32 kernel"
print("compiled", len(examples) * 2)
"""


@needs_numba_cuda
def test_every_kernel_compiles_to_ptx_without_doubles_in_float32():
    proc = run_python(["-c", PTX_CHECK])
    missing = [lib for lib in ("nvvm", "nvrtc") if f"lib{lib}" in proc.stderr.lower() or lib.upper() in proc.stderr]
    if proc.returncode != 0 and missing:
        pytest.skip(f"CUDA toolkit library {'/'.join(missing)} not found (pip install 'numba-cuda[cu13]')")
    if proc.returncode != 0 and "row_stack" in proc.stderr:  # see test_numpy_too_new_for_numba_cuda_...
        pytest.skip(f"numba-cuda does not load with numpy {np.__version__} (pip install 'numpy<2.5')")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "compiled" in proc.stdout


def test_to_cuda_without_a_gpu_raises_and_says_why():
    if real_gpu() is not None or os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != "0":
        pytest.skip("a GPU (or the simulator) is usable in this process")
    model = nb.Sequential([nb.Linear(2, 3, seed=0)])
    weight = model.layers[0].weight
    with pytest.raises(RuntimeError) as err:
        model.to("cuda")
    reason = str(err.value)
    assert "\n" not in reason
    if not HAVE_NUMBA_CUDA:
        assert "install 'nbnet[cuda]'" in reason
    elif not hasattr(np, "row_stack"):  # numpy 2.5 beside numba-cuda 0.30.4: that is the reason given first
        assert "cannot compile kernels with numpy" in reason
    else:
        assert "no usable CUDA GPU" in reason
    assert model.layers[0].weight is weight  # left as it was, on the host
    with pytest.raises(RuntimeError):
        from nbnet.gpu import gpu_status

        gpu_status()
    with pytest.raises(ValueError, match="unknown device"):
        model.to("gpu0")
    with pytest.raises(ValueError, match="pick it with CUDA_VISIBLE_DEVICES"):  # torch's spelling
        model.to("cuda:1")


@needs_numba_cuda
def test_numpy_too_new_for_numba_cuda_is_one_clear_reason():
    """numba-cuda 0.30.4 cannot compile a kernel once numpy lost np.row_stack (numpy 2.5): seen on
    a real H100, where every launch raised AttributeError deep in numba-cuda. nbnet says why
    before any launch, as the reason there is no usable GPU."""
    if np.lib.NumpyVersion(np.__version__) < "2.0.0":
        pytest.skip("numba-cuda overloads np.row_stack only beside numpy >= 2")
    code = ("import numpy as np\nif hasattr(np, 'row_stack'):\n    del np.row_stack  # as numpy 2.5\n"
            "from nbnet import gpu\n"
            "try:\n    gpu.gpu_status()\nexcept RuntimeError as e:\n    print('RuntimeError:', e)")
    proc = run_python(["-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RuntimeError: numba-cuda" in proc.stdout and "numpy<2.5" in proc.stdout, proc.stdout


def test_packed_lookup_falls_back_when_device_arrays_lack_the_internals_it_reads():
    """gpu.one_flat reads numba-cuda internals (gpu_data.owner, device pointers) to find packed
    parameters; with a numba-cuda whose arrays lack them it answers None (one launch per
    parameter), never an AttributeError in the middle of opt.step()."""
    import types as pytypes  # noqa: PLC0415

    from nbnet import gpu  # noqa: PLC0415

    odd = pytypes.SimpleNamespace(gpu_data=object(), dtype=np.dtype(np.float32), size=4)
    assert gpu.one_flat([odd, odd]) is None
    assert gpu.one_flat([np.zeros(3, np.float32)]) is None  # no device data at all


def test_gpu_module_imports_without_numba_cuda():
    hide = (
        "import importlib.util, sys\n"
        "find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'numba_cuda' else find(name, *a)\n"
        "import numpy as np, nbnet as nb\n"
        "from nbnet import gpu\n"
        "for call in (gpu.gpu_status, lambda: nb.Sequential([nb.Linear(2, 2)]).to('cuda'),\n"
        "             lambda: gpu.empty(3, np.float32)):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as e:\n"
        "        print(e)\n"
    )
    proc = run_python(["-c", hide])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3 and all("install 'nbnet[cuda]'" in line for line in lines), proc.stdout


def test_gpu_status_names_the_simulator():
    if not HAVE_NUMBA_CUDA:
        pytest.skip(NO_NUMBA_CUDA)
    proc = run_python(["-c", "from nbnet.gpu import gpu_status; gpu_status()"], NUMBA_ENABLE_CUDASIM="1")
    assert proc.returncode != 0 and "simulator" in proc.stderr.strip().splitlines()[-1]


def test_host_model_unchanged_by_the_gpu_changes():
    # Layer._check_input's like= is a no-op for host arrays: no copy, same object.
    model = nb.Sequential([nb.Linear(2, 3, seed=0)])
    x = np.ones((4, 2), np.float32)
    model.forward(x)
    assert model.layers[0].inp is x
