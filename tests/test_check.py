"""`nbnet check` and the warm-up compile the training loop runs before timing epoch 1."""

import errno
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from conftest import needs_posix
from click.testing import CliRunner

import nbnet as nb
from nbnet import check, cpu, simd, threads
from nbnet.cli import cli


def test_check_passes_and_says_what_it_compiled_for():
    r = CliRunner().invoke(cli, ["check"])
    assert r.exit_code == 0, r.output
    assert simd.describe() in r.output and "threading layer" in r.output
    assert f"(kernel sources {cpu.SOURCES_HASH[:12]})" in r.output.splitlines()[0]
    assert "all checks passed" in r.output and "FAIL" not in r.output


@pytest.mark.parametrize("name,features,isa,hint", [
    ("haswell", None, "avx512", "(NUMBA_CPU_NAME=haswell compiles with this machine's features: add "
                                "NUMBA_CPU_FEATURES= for haswell's own, avx2)"),
    ("x86-64-v3", None, "avx512", "for x86-64-v3's own, avx2)"),
    ("haswell", "", "avx2", None),  # haswell's own: what was asked for
    ("haswell", None, "avx2", None),  # an AVX2 host: nothing wider was added
    ("znver5", None, "avx512", None),
    (None, None, "avx512", None),
    ("sandybridge", None, "avx512", "for sandybridge's own, avx)"),  # AVX without AVX2: not SSE2
    ("haswell", "+avx512f", "avx512", None),  # NUMBA_CPU_FEATURES set: the ISA is what was asked for
    ("neoverse-n1", None, "neon", None),  # not x86: no width to compare (it raised ValueError)
])
def test_check_says_how_to_get_the_named_cpus_own_isa(monkeypatch, name, features, isa, hint):
    """NUMBA_CPU_NAME=haswell without NUMBA_CPU_FEATURES compiles AVX-512 code on an AVX-512 machine
    (Numba adds the host's features to the named CPU): `nbnet check` says so truthfully in its ISA,
    and now also how to get haswell's own AVX2 code, which is what such a setting usually wants."""
    monkeypatch.setattr(numba.config, "CPU_NAME", name)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", features)
    monkeypatch.setattr(simd, "ISA", isa)
    monkeypatch.setattr(simd, "EMULATED", False)
    said = check.own_isa_hint()
    assert (said is None) if hint is None else (said is not None and said.endswith(hint)), said


def test_check_gives_no_named_cpu_hint_in_an_emulated_layout(monkeypatch):
    """Under NBNET_SIMD_LAYOUT the ISA line is the layout's, not what Numba compiles for the named
    CPU: NUMBA_CPU_FEATURES= would not change it, and is not offered."""
    monkeypatch.setattr(numba.config, "CPU_NAME", "haswell")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    monkeypatch.setattr(simd, "ISA", "avx512")
    monkeypatch.setattr(simd, "EMULATED", True)
    assert check.own_isa_hint() is None


def _as_nbnets(func):
    """func, taken for one of nbnet's kernels: the compiling note is about those alone."""
    func.__module__ = "nbnet._test_kernels"
    return func


def test_check_prints_the_hint_and_says_compiling_while_it_checks(monkeypatch, capsys):
    """`nbnet check` prints own_isa_hint() after the ISA line, and its checks, which compile the
    kernels on a cold cache, say so on stderr as training does (a minute of silence otherwise)."""
    monkeypatch.setattr(check, "own_isa_hint", lambda: "(a hint)")
    monkeypatch.setattr(check._SayCompiling, "said", False)
    monkeypatch.setattr(check, "_run_checks", lambda out: (numba.njit(_as_nbnets(lambda a: 5 * a))(1), (0, 0))[1])
    said = []
    assert check.main(out=said.append) == 0
    assert said[1:3] == [simd.describe(), "(a hint)"], said
    assert capsys.readouterr().err == check.compiling_note() + "\n"


def test_check_counts_the_failures_each_check_names(monkeypatch):
    """The last line counts the failures (the lines under FAIL), not the checks that failed."""
    monkeypatch.setattr(check, "check_linear", lambda dtype: ["one", "two"] if dtype is np.float32 else [])
    monkeypatch.setattr(check, "check_threads", lambda: [])
    monkeypatch.setattr(check, "check_finite_differences", lambda: ["three"])
    said = []
    assert check.main(out=said.append) == 1
    assert said[-1].startswith("3 check(s) failed in "), said
    assert "     one" in said and "     three" in said, said


@pytest.mark.parametrize("kernel,says", [("linear_relu_forward", "linear_relu_forward "),
                                         ("linear_forward", "linear_forward "),
                                         ("linear_relu_backward_input", "linear_relu_backward_input "),
                                         ("linear_backward_params", "linear_backward_params (writing) ")])
def test_check_linear_names_each_wrong_kernel(monkeypatch, kernel, says):
    """Each fast Linear kernel check_linear compares, made wrong in what only its own comparison
    reads (the forward's ReLU'd copy, the write of dW after zero_grad, ...), is named: only a wrong
    dW with += was (test_check_fails_on_a_wrong_kernel)."""
    real = getattr(cpu, kernel)

    def wrong(*args):
        if kernel == "linear_backward_params":
            return real(*args[:4], True)  # adds to what is there, when told to write
        real(*args)
        wrong_one = {"linear_relu_forward": args[1]}.get(kernel, args[0])  # act: the ReLU'd copy
        wrong_one[-1, -1] += 1e-3

    monkeypatch.setattr(cpu, kernel, wrong)
    bad = check.check_linear(np.float64)
    assert bad and all(line.startswith(says) for line in bad), bad


@pytest.mark.parametrize("kernel,says", [("linear_backward_params", ("0.weight[", "2.weight[")),
                                         ("linear_backward_input", ("x[",))])
def test_check_finite_differences_names_a_wrong_gradient(monkeypatch, kernel, says):
    """A gradient kernel that is off (dW, or the dX = G W of the first layer, which only the input's
    gradient reads) fails the comparison with central differences."""
    real = getattr(cpu, kernel)

    def off(out, *args):
        real(out, *args)
        out *= 1.001

    monkeypatch.setattr(cpu, kernel, off)
    bad = check.check_finite_differences()
    assert bad and all(line.startswith(says) for line in bad), bad


def test_describe_names_the_processor_the_llvm_cpu_cores_and_isa(monkeypatch):
    line = simd.describe()
    assert line.startswith("CPU ") and f"({simd.cpu_name()}, {os.cpu_count()} cores)" in line
    assert f"ISA {simd.ISA}" in line and f"broadcast {simd.BCAST_MR}×{simd.BCAST_NV}" in line
    if simd.processor():
        assert line.startswith(f"CPU {simd.processor()} (")
    monkeypatch.setattr(simd, "processor", lambda: "")  # nothing names it (no /proc/cpuinfo, no platform name)
    assert simd.describe().startswith(f"CPU {simd.cpu_name()} ({os.cpu_count()} cores), ISA ")


@pytest.mark.parametrize("cpuinfo,want", [
    ("processor\t: 0\nmodel name\t: AMD EPYC 7763 64-Core Processor\nflags\t\t: fpu\n", "AMD EPYC 7763 64-Core Processor"),
    ("processor\t: 0\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4\n", "BCM2835"),
    ("model name\t:  \nModel\t: Raspberry Pi 4 Model B Rev 1.4\n", "Raspberry Pi 4 Model B Rev 1.4"),  # blank: next
    ("processor\t: 0\n", "from platform"),
    (None, "from platform"),  # no /proc/cpuinfo (macOS, Windows)
])
def test_processor_reads_proc_cpuinfo_then_platform(monkeypatch, cpuinfo, want):
    import io  # noqa: PLC0415
    import platform  # noqa: PLC0415

    def fake_open(path, *args, **kws):
        assert path == "/proc/cpuinfo"
        if cpuinfo is None:
            raise FileNotFoundError(path)
        return io.StringIO(cpuinfo)

    monkeypatch.setattr(simd, "open", fake_open, raising=False)
    monkeypatch.setattr(platform, "processor", lambda: "from platform")
    assert simd.processor() == want


def test_describe_says_an_emulated_layout_no_fma_and_a_tall_block(monkeypatch):
    """What `nbnet check` prints of a layout that is not the host's own (NBNET_SIMD_LAYOUT), of an
    ISA without FMA, and of the tall block of 32-register layouts."""
    monkeypatch.setattr(simd, "processor", lambda: "")
    for attr, value in dict(EMULATED=True, ISA="neon", VECTOR_BYTES=16, REGISTERS=32, HAS_FMA=False, TALL=True,
                            TALL_MR=10, TALL_NV=2, BCAST_MR=8, BCAST_NV=3, DOT_MR=4, DOT_NR=5).items():
        monkeypatch.setattr(simd, attr, value)
    assert simd.describe() == (f"CPU {simd.cpu_name()} ({os.cpu_count()} cores), ISA neon (NBNET_SIMD_LAYOUT, "
                               "emulated) (128-bit vectors × 32, no FMA), blocks: broadcast 8×3 vectors (tall 10×2), "
                               f"dot 4×5, KC {simd.KC}, MC {simd.MC}")
    monkeypatch.setattr(simd, "processor", lambda: "Cortex-X1")
    for attr, value in dict(EMULATED=False, HAS_FMA=True, TALL=False).items():
        monkeypatch.setattr(simd, attr, value)
    assert simd.describe().startswith(f"CPU Cortex-X1 ({simd.cpu_name()}, {os.cpu_count()} cores), ISA neon "
                                      "(128-bit vectors × 32, FMA), blocks: broadcast 8×3 vectors, dot 4×5")


def test_check_fails_on_a_wrong_kernel(monkeypatch):
    def wrong(dweight, dbias, dout, inp, accumulate):
        cpu.linear_backward_params_ref(dweight, dbias, dout, inp)
        dweight[-1, -1] += 1e-3  # one element off

    monkeypatch.setattr(cpu, "linear_backward_params", wrong)
    r = CliRunner().invoke(cli, ["check"])
    assert r.exit_code == 1
    assert "FAIL Linear kernels vs formula, float32" in r.output and "linear_backward_params" in r.output


def test_compile_kernels_leaves_model_and_optimizer_alone(monkeypatch, capsys):
    model = nb.Sequential([nb.Linear(30, 20, seed=0), nb.ReLU(), nb.Linear(20, 3, seed=1)])
    opt = nb.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.data.copy() for p in model.parameters()] + [p.grad.copy() for p in model.parameters()]
    check.compile_kernels(model, opt, train_rows=(1, 70), eval_rows=(300,))
    after = [p.data for p in model.parameters()] + [p.grad for p in model.parameters()]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert opt.step_count == 0 and all(v is None for st in opt.state for v in st.values())


def test_compile_kernels_draws_its_batches_in_the_models_dtype():
    """The warm-up drew float64 numbers and copied them to float32: three times a batch of rows,
    at the eval batch size (376 MB beside check_memory's count for --eval-batch-size 60000 on MNIST)."""
    import tracemalloc

    model = nb.Sequential([nb.Linear(200, 4, seed=0), nb.ReLU(), nb.Linear(4, 3, seed=1)])
    check.compile_kernels(model, eval_rows=(20_000,), say=False)  # the kernels compiled or loaded
    tracemalloc.start()
    try:
        check.compile_kernels(model, eval_rows=(20_000,), say=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, peak  # the batch is 16 MB; was 48 MB


def test_compiling_is_said_on_a_real_compilation_only_and_once(monkeypatch, capsys):
    monkeypatch.setattr(check._SayCompiling, "said", False)
    twice = numba.njit(_as_nbnets(lambda a: 2 * a))  # not cached: calling it compiles
    with check.saying_compiling():
        pass
    assert capsys.readouterr().err == ""
    with check.saying_compiling():
        twice(1)
        twice(1.5)  # a second compilation
    with check.saying_compiling():
        twice(np.int8(1))
    assert capsys.readouterr().err == check.COMPILING + "\n"


TINY_FIT = """
import numpy as np, nbnet as nb
rng = np.random.default_rng(0)
x, y = rng.random((100, 7), dtype=np.float32), rng.integers(0, 3, 100)
for opt in ("sgd", "adam"):
    m = nb.Sequential([nb.Linear(7, 5, seed=0), nb.ReLU(), nb.Linear(5, 3, seed=1)])
    o = nb.SGD(m.parameters(), lr=0.1, momentum=0.9) if opt == "sgd" else nb.Adam(m.parameters())
    nb.train(m, o, (x, y), epochs=1, batch_size=16)
"""


def test_a_warm_cache_says_nothing_about_compiling():
    """The second fit in a fresh process finds every kernel in Numba's on-disk cache: it must not
    announce a compilation (the first one may, on a cold cache). With the thread count adapting to
    the load: a run on a busier machine takes the serial twin of a kernel whose parallel twin a
    quieter one ran, and the warm-up compiles both (test_threads' test_a_load_change_...)."""
    env = {k: v for k, v in os.environ.items() if k != "NBNET_THREADS"}
    run = lambda: subprocess.run([sys.executable, "-c", TINY_FIT], capture_output=True, text=True, timeout=600,
                                 env=env)
    first = run()
    assert first.returncode == 0, first.stderr
    second = run()
    assert second.returncode == 0, second.stderr
    assert check.COMPILING not in second.stderr


REFUSED_SCRIPT = """
import resource
import numpy as np
from nbnet import check, cpu
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
x = np.ones((3, 5), np.float32)
with check.saying_compiling():
    cpu.relu_forward.serial(np.empty_like(x), x)
"""


@needs_posix("the resource module")
def test_a_cache_folder_that_refuses_the_kernels_is_not_promised_as_a_cache(tmp_path):
    """A NUMBA_CACHE_DIR that takes Numba's check (an empty file) but no kernel (a full disk, a
    quota; here a file size limit, which stops root too, where chmod does not): every save failed
    in silence, and the note said "cached for later runs" in each run, which compiled again."""
    pytest.importorskip("resource")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", REFUSED_SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not list(tmp_path.rglob("*.nbc"))  # the save was refused: nothing was cached
    assert p.stderr.startswith(f"compiling kernels for this CPU (not cached: cannot write to {tmp_path}"), p.stderr
    assert p.stderr.endswith(": [Errno 27] File too large)\n") and p.stderr.count("\n") == 1, p.stderr


@_as_nbnets
def _plus_one(a):
    return a + 1


def _users_own(a):
    return a + 2


def test_the_compiling_note_is_for_nbnets_cpu_kernels_alone(monkeypatch, capsys):
    """A user's own @njit function compiling in nb.train (a custom layer's kernel) or anywhere else
    is not nbnet's kernels: no note about them."""
    monkeypatch.setattr(check._SayCompiling, "said", False)
    with check.saying_compiling():
        assert numba.njit(_users_own)(1) == 3
    assert capsys.readouterr().err == ""
    assert not check._ours(None) and not check._ours(numba.njit(_users_own))
    assert check._ours(cpu.linear_forward_ref) and check._ours(numba.njit(_as_nbnets(lambda a: a)))


COLD_LOOP = """
import sys
import numba, numpy as np
import nbnet as nb
numba.njit(lambda a: a + 1)(1)  # the user's own: says nothing
print("before", file=sys.stderr, flush=True)
nb.ReLU()(np.ones((2, 3), np.float32))
print("after", file=sys.stderr, flush=True)
"""


def test_a_loop_of_ones_own_says_it_compiles_nbnets_kernels_on_a_cold_cache(tmp_path):
    """Only nb.train and nbnet train said "compiling kernels": the loop interface.md shows sat
    silent for seconds in its first forward on a new machine. With the cache warm, nothing is said."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    run = lambda: subprocess.run([sys.executable, "-c", COLD_LOOP], env=env, capture_output=True, text=True,
                                 timeout=600)
    cold, warm = run(), run()
    assert cold.returncode == 0, cold.stderr[-3000:]
    assert cold.stderr == f"before\n{check.COMPILING}\nafter\n", cold.stderr
    assert (warm.returncode, warm.stderr) == (0, "before\nafter\n"), warm.stderr


def test_a_save_refused_after_the_note_promised_a_cache_is_said_once(monkeypatch, capsys):
    """A disk that fills while the kernels are written (Numba saves each after compiling it) took the
    note's probe: the saves refused after it are said when the compiling ends."""
    if not simd.CACHE:
        pytest.skip(f"kernels are not cached here: {simd.CACHE_OFF}")
    monkeypatch.setattr(check._SayCompiling, "said", False)
    monkeypatch.setattr(simd, "_REFUSED", [])

    def full(self, sig, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(numba.core.caching.Cache, "save_overload", full)
    kernel = numba.njit(cache=True)(_plus_one)
    kernel._cache = simd.DiskCache(kernel.py_func)
    with check.saying_compiling():
        assert kernel(1) == 2
    with check.saying_compiling():
        assert kernel(1.5) == 2.5
    assert capsys.readouterr().err == (f"{check.COMPILING}\nsome kernels were not cached after all "
                                       f"(cannot write to {simd.CACHE_PATH}: [Errno 28] No space left on device)\n")


def test_a_cache_folder_removed_since_import_is_no_refusal(monkeypatch, tmp_path):
    """The cache folder cleared while a process runs (`rm -rf ~/.cache/numba` beside a notebook's
    kernel): Numba makes it again before each save and caches, but the note's probe found no folder
    and said "not cached: ... No such file or directory"."""
    monkeypatch.setattr(simd, "CACHE_OFF", None)
    monkeypatch.setattr(simd, "_REFUSED", [])
    monkeypatch.setattr(simd, "CACHE_PATH", str(tmp_path / "gone" / "nbnet_0123"))
    assert simd.cache_refusal() is None
    assert os.listdir(tmp_path / "gone" / "nbnet_0123") == []  # and the probe left nothing


def test_numba_opt_0_says_once_that_nothing_is_cached(tmp_path):
    """NUMBA_OPT=0 (for a debugger) made Numba refuse to cache every kernel that calls another, each
    with a NumbaWarning and its source line: 7 in a one-epoch `nbnet train`, 11 in `nbnet check`."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_OPT="0", NUMBA_CACHE_DIR=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "nbnet", "train", "--epochs", "1", "--hidden", "8"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr == "compiling kernels for this CPU (not cached: NUMBA_OPT=0, whose kernels Numba cannot cache)\n"


def test_train_quiet_says_nothing_about_compiling(monkeypatch):
    """`nbnet train --quiet` prints nothing but errors (its --help): not the cold-cache note either,
    which a plain `nbnet train` prints on stderr."""
    train_module = sys.modules["nbnet.train"]  # the module: nbnet.train is also the function

    real = train_module.compile_kernels

    def compiles_something_new(*args, **kwargs):
        monkeypatch.setattr(check._SayCompiling, "said", False)
        with check.saying_compiling():  # as on a cold cache: a kernel that really compiles
            numba.njit(_as_nbnets(lambda a: 3 * a))(1)
        real(*args, **kwargs)

    monkeypatch.setattr(train_module, "compile_kernels", compiles_something_new)
    loud = CliRunner().invoke(cli, ["train", "--epochs", "1", "--hidden", "8"])
    assert loud.exit_code == 0, loud.output
    assert check.COMPILING in loud.stderr
    quiet = CliRunner().invoke(cli, ["train", "--epochs", "1", "--hidden", "8", "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout == "" and quiet.stderr == ""



def test_the_warm_up_runs_no_batch_larger_than_the_data(monkeypatch):
    """A batch size above the data's rows trains on the whole data a step, but the warm-up ran a
    throwaway step at the batch size itself: batch_size=10**6 on 10 rows of 100 features took 1.3 GB
    and 8 s before epoch 1 (more where that does not fit: a memory blow-up for nothing)."""
    train_module = sys.modules["nbnet.train"]
    asked = []
    monkeypatch.setattr(train_module, "compile_kernels", lambda *a, train_rows, **k: asked.append(train_rows))
    model = nb.Sequential(nb.Linear(2, 3, seed=0))
    x, y = np.ones((10, 2), np.float32), np.arange(10) % 3
    for batch_size in (10, 10**6, 4):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=1, batch_size=batch_size)
    assert [max(rows) for rows in asked] == [10, 10, 4]


def test_info_and_check_say_no_threading_layer_loads_and_go_on():
    """NUMBA_THREADING_LAYER=tbb without tbb: Numba's threads cannot start, and both commands
    stopped at their threads line with 'Error: No threading layer could be loaded' alone: info
    without its layer, GPU and MPI lines, check before any check ran. They say so and go on."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="tbb")
    run = lambda command: subprocess.run([sys.executable, "-m", "nbnet", command], capture_output=True,
                                         text=True, env=env, timeout=300)
    info = run("info")
    if "threading layer: tbb" in info.stdout:
        pytest.skip("TBB is installed here: the layer loads")
    assert info.returncode == 0, info.stderr
    assert "threading layer: unknown (No threading layer could be loaded. HINT: " in info.stdout, info.stdout
    assert "(NUMBA_THREADING_LAYER=tbb, or threading_layer in ./.numba_config.yaml, asks for it; unset it" \
        in info.stdout, info.stdout  # (Numba's message named only TBB, not the setting that asked for it)
    assert "CPU threads: none: " in info.stdout and "GPU:" in info.stdout and "MPI:" in info.stdout
    done = run("check")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "threading layer unknown (No threading layer could be loaded." in done.stdout
    assert "FAIL Linear kernels vs formula, float32" in done.stdout and "check(s) failed in" in done.stdout


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one thread: nothing to compare")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_threads_fails_on_a_kernel_whose_result_depends_on_the_thread_count(monkeypatch, dtype):
    """A forward twin that adds the thread count to one element: check_threads must name it, in
    the dtype it differs in (float64 was never compared: a float64 kernel could differ unseen)."""
    real = cpu.linear_forward_act

    class Wrong:
        def parallel(self, out, act, x, w, b, relu):
            real.parallel(out, act, x, w, b, relu)
            if out.dtype == dtype:
                out[0, 0] += numba.get_num_threads()

    monkeypatch.setattr(cpu, "linear_forward_act", Wrong())
    top = numba.config.NUMBA_NUM_THREADS
    assert check.check_threads() == [f"forward {np.dtype(dtype).name}: 1 thread and {top} threads differ"]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one thread: nothing to restore")
def test_check_threads_gives_back_the_thread_count_it_found():
    """check_threads sets 1 thread, then all: a program that had set fewer (numba.set_num_threads)
    ran on with all of them after calling it."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        check.check_threads(dtypes=(np.float32,))
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)


@pytest.fixture
def one_pass(monkeypatch):
    """compile_kernels' warm-up run once, for the thread count in use: where the count adapts to
    the load it runs once for 1 thread and once for all (test_threads' test_a_load_change_...)."""
    monkeypatch.setattr(threads, "counts_to_warm", lambda: ())


def test_the_warm_up_compiles_the_accuracy_count(monkeypatch, one_pass):
    """An epoch counts correct predictions (count_correct) for its accuracy: the warm-up runs it too,
    or its compilation fell in epoch 1's time."""
    counted = []
    real = cpu.count_correct
    monkeypatch.setattr(cpu, "count_correct", lambda *args: counted.append(args) or real(*args))
    check.compile_kernels(nb.Sequential(nb.Linear(2, 3, seed=0)), train_rows=(8,), eval_rows=(4,), say=False)
    assert [len(logits) for logits, _ in counted] == [8, 4]


def test_the_warm_up_runs_each_batch_size_once(monkeypatch, one_pass):
    """A batch size above the rows asks for train rows (n, n % batch) = (n, n): the same throwaway
    step ran twice, an epoch's worth of work for full-batch training."""
    steps = []
    real = nb.SGD.step
    monkeypatch.setattr(nb.SGD, "step", lambda opt: steps.append(opt) or real(opt))
    model = nb.Sequential(nb.Linear(2, 3, seed=0))
    check.compile_kernels(model, nb.SGD(model.parameters(), lr=0.1), train_rows=(10, 10), eval_rows=(10,), say=False)
    assert len(steps) == 1


def test_the_warm_up_skips_empty_batches_and_runs_on_copies_of_every_layer_and_the_loss(monkeypatch, one_pass):
    """Rows 0 (n % batch_size for batches that divide n) are no step: one would end the warm-up
    (its errors are swallowed) before the sizes after it. The copy has its own activations and loss,
    whose buffers the model's and the caller's keep; a model without parameters has nothing to compile."""
    sizes, steps = [], []
    real_forward, real_step = nb.Sequential.forward, nb.SGD.step
    monkeypatch.setattr(nb.Sequential, "forward", lambda m, x: sizes.append(len(x)) or real_forward(m, x))
    monkeypatch.setattr(nb.SGD, "step", lambda opt: steps.append(opt) or real_step(opt))
    model = nb.Sequential([nb.Linear(2, 3, seed=0), nb.ReLU(), nb.Linear(3, 3, seed=1)])
    loss_fn = nb.SoftmaxCrossEntropy()
    loss_fn.forward(model.forward(np.ones((5, 2), np.float32)), np.zeros(5, np.int64))
    kept = [dict(vars(model.layers[1])), dict(vars(loss_fn))]
    sizes.clear()
    check.compile_kernels(model, nb.SGD(model.parameters(), lr=0.1), loss_fn, train_rows=(0, 4),
                          eval_rows=(0, 6), say=False)
    assert sizes == [4, 6] and len(steps) == 1
    for before, now in zip(kept, (vars(model.layers[1]), vars(loss_fn))):
        assert before.keys() == now.keys() and all(now[k] is v for k, v in before.items())
    check.compile_kernels(nb.Sequential([nb.ReLU()]))


class _Scaled(nb.Layer):
    """The README's kind of layer of one's own: a constructor argument, a parameter, a forward
    cache; config() gives the argument back when `configured`."""

    built = 0

    def __init__(self, features, configured=False):
        _Scaled.built += 1
        self.features, self.configured = features, configured
        self.weight, self.grad_weight = np.full(features, 2, np.float32), np.zeros(features, np.float32)

    def config(self):
        return {"features": self.features, "configured": True} if self.configured else {}

    def parameters(self):
        return [nb.Parameter(self, "weight")]

    def forward(self, x):
        self.inp = x
        return x * self.weight

    def backward(self, grad_y):
        self.grad_weight += (grad_y * self.inp).sum(axis=0)
        return grad_y * self.weight


@pytest.mark.parametrize("configured", [False, True])
def test_the_warm_up_copies_a_layer_of_ones_own_that_needs_arguments(monkeypatch, one_pass, configured):
    """type(layer)() failed for a layer whose constructor takes an argument (the README's Scale):
    the warm-up ended before its first step, and every kernel compiled inside epoch 1. Such a layer
    is rebuilt from its config(), else deep-copied; the model's own layer is left as it was."""
    steps = []
    real_step = nb.SGD.step
    monkeypatch.setattr(nb.SGD, "step", lambda opt: steps.append(opt) or real_step(opt))
    own = _Scaled(3, configured)
    model = nb.Sequential([nb.Linear(2, 3, seed=0), own, nb.ReLU(), nb.Linear(3, 3, seed=1)])
    model.forward(np.ones((5, 2), np.float32))
    kept = dict(vars(own))
    built = _Scaled.built
    check.compile_kernels(model, nb.SGD(model.parameters(), lr=0.1), train_rows=(4,), say=False)
    assert len(steps) == 1 and steps[0].params[2].data is not own.weight  # [2]: the layer's own weight
    assert _Scaled.built == built + configured  # rebuilt from config(), or copied (no constructor call)
    assert vars(own).keys() == kept.keys() and all(vars(own)[k] is v for k, v in kept.items())
    assert np.array_equal(own.weight, np.full(3, 2, np.float32)) and not own.grad_weight.any()


class _Counting(_Scaled):
    """A layer of one's own whose constructor refuses a missing argument with a ValueError of its own
    (not Python's TypeError), and that keeps a count of the rows it saw in place, as running
    statistics are kept."""

    def __init__(self, features=None):
        if features is None:
            raise ValueError("features must be given")
        super().__init__(features)
        self.rows = np.zeros(1, np.int64)

    def forward(self, x):
        self.rows += len(x)
        return super().forward(x)


def test_the_warm_up_copies_a_layer_whatever_its_constructor_raises_and_leaves_its_state_alone(monkeypatch,
                                                                                               one_pass):
    """Any exception from rebuilding the layer falls back to a deep copy (a ValueError ended the
    warm-up before its first step); a copy of its own (not copy.copy's, which shares the arrays it
    updates in place): the model's own count is not moved by the warm-up's steps."""
    steps = []
    real_step = nb.SGD.step
    monkeypatch.setattr(nb.SGD, "step", lambda opt: steps.append(opt) or real_step(opt))
    own = _Counting(3)
    model = nb.Sequential([nb.Linear(2, 3, seed=0), own, nb.Linear(3, 3, seed=1)])
    model.forward(np.ones((5, 2), np.float32))
    check.compile_kernels(model, nb.SGD(model.parameters(), lr=0.1), train_rows=(4,), say=False)
    assert len(steps) == 1 and steps[0].params[2].data is not own.weight
    assert own.rows.tolist() == [5]


def test_the_compile_clock_times_whole_outermost_compilations_and_adds_them_up():
    """A compilation's own work before its callees compile (nested events) counts too, and each
    compilation adds to the seconds so far (nb.train subtracts the difference over an epoch)."""
    import time  # noqa: PLC0415

    import numba.core.event as ev  # noqa: PLC0415

    before = check.compile_seconds()
    with ev.trigger_event("numba:compile", data={"dispatcher": None}):
        time.sleep(0.05)  # typing the outer function, say
        with ev.trigger_event("numba:compile", data={"dispatcher": None}):
            time.sleep(0.05)
    first = check.compile_seconds() - before
    with ev.trigger_event("numba:compile", data={"dispatcher": None}):
        time.sleep(0.05)
    both = check.compile_seconds() - before
    assert 0.1 <= first < 5 and both - first >= 0.05


def test_a_compile_event_without_its_start_or_data_is_taken_quietly():
    """nbnet imported inside a compilation (a user's @overload) sees that compilation's end without
    its start: a listener that raised there would fail the user's compilation. An event with no data
    is not nbnet's kernel either."""
    import numba.core.event as ev  # noqa: PLC0415

    before = check.compile_seconds()
    for listener in (check._CompileClock(), check._SayCompiling()):
        listener.on_end(ev.Event("numba:compile", ev.EventStatus.END, data=None))
    with ev.trigger_event("numba:compile", data=None):
        pass
    assert 0 <= check.compile_seconds() - before < 1


def test_not_saying_compiling_ends_with_an_error_too(monkeypatch, capsys):
    """`nbnet train --quiet` that ends in an error (run in process: CliRunner, a notebook) left the
    note silenced for the rest of the process: a later plain run compiled without a word."""
    monkeypatch.setattr(check._SayCompiling, "said", False)
    with pytest.raises(RuntimeError), check.not_saying_compiling():
        raise RuntimeError("the run's error")
    with check.saying_compiling():
        numba.njit(_as_nbnets(lambda a: 6 * a))(1)
    assert capsys.readouterr().err == check.compiling_note() + "\n"


def test_a_refused_save_is_not_said_while_quiet(monkeypatch, capsys):
    """A note promised a cache earlier in the process, and a save was refused since: a `--quiet` run
    (which prints nothing but errors) must not say "some kernels were not cached after all"."""
    monkeypatch.setattr(check._SayCompiling, "promised", True)
    monkeypatch.setattr(simd, "CACHE_OFF", None)
    monkeypatch.setattr(simd, "_REFUSED", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))])
    with check.not_saying_compiling(), check.saying_compiling():
        pass
    assert capsys.readouterr().err == ""


def test_compile_kernels_says_nothing_when_told_not_to(monkeypatch, capsys):
    """say=False (MPI ranks other than 0: one note, not one a process) prints nothing, even where a
    kernel really compiles; say=True prints COMPILING."""
    monkeypatch.setattr(check, "_warm_up", lambda *args, **kwargs: numba.njit(_as_nbnets(lambda a: 4 * a))(1))
    model = nb.Sequential(nb.Linear(2, 3, seed=0))
    for say in (False, True):
        monkeypatch.setattr(check._SayCompiling, "said", False)
        check.compile_kernels(model, say=say)
        assert capsys.readouterr().err == ("" if not say else check.COMPILING + "\n")


@pytest.mark.parametrize("env,why", [("1", "NUMBA_NUM_THREADS=1"),
                                     (None, "this process may use 1 CPU, or num_threads: 1 in ./.numba_config.yaml")])
def test_check_says_it_skipped_the_thread_comparison_on_one_thread(monkeypatch, env, why):
    """With one Numba thread (NUMBA_NUM_THREADS=1, or Numba's default where the process may use one
    CPU: taskset, a container's cpuset) check_threads compared nothing, and `nbnet check` printed
    "ok   1 thread vs all threads, bitwise" all the same: a check it never did."""
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    if env is None:
        monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("NUMBA_NUM_THREADS", env)
    said = []
    assert check.main(out=said.append) == 0
    assert not any(line.startswith("ok   1 thread vs all threads") for line in said), said
    assert (f"skip 1 thread vs all threads, bitwise, float32 and float64: Numba has 1 thread ({why}): nothing to "
            "compare; NUMBA_NUM_THREADS=2 runs it, also on one CPU") in said, said
    assert said[-1].startswith("all checks passed in ") and said[-1].endswith(" s (1 skipped)"), said


STARTS_THREADS = """
import numba.np.ufunc.parallel as layer
import nbnet as nb
from nbnet import check
model = nb.Sequential([nb.Linear(2, 4, seed=0), nb.ReLU(), nb.Linear(4, 3, seed=1)])
check.compile_kernels(model, {opt}, train_rows=(8,), say=False)
print(layer._is_initialized)
"""


@pytest.mark.parametrize("opt", ["nb.SGD(model.parameters(), lr=0.1)", "None"])
def test_the_warm_up_starts_numbas_threads(opt):
    """A small model's warm-up ran no parallel kernel, and Numba's threading layer started (~20 ms,
    on one thread too) in epoch 1's second step: its samples/s were a quarter of epoch 2's on the
    spiral data. Without an optimizer too (whose step asks nbnet.threads, and so starts them: the
    warm-up's own start went unseen with one)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, "-c", STARTS_THREADS.format(opt=opt)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.split() == ["True"], p.stdout + p.stderr


def test_info_and_check_say_where_the_kernels_are_cached(monkeypatch):
    """Where a run's compiled kernels go (and why not the NUMBA_CACHE_DIR given) was said only when
    something compiled: a warm cache in an unexpected folder left no trace."""
    monkeypatch.setattr(simd, "CACHE_OFF", None)
    monkeypatch.setattr(simd, "CACHE_PATH", "/some/where/nbnet")
    monkeypatch.setattr(simd, "CACHE_DIR_REFUSAL", None)
    assert simd.describe_cache() == "kernel cache: /some/where/nbnet"
    monkeypatch.setattr(simd, "CACHE_DIR_REFUSAL", "NUMBA_CACHE_DIR /ro cannot be written")
    assert simd.describe_cache() == "kernel cache: /some/where/nbnet (NUMBA_CACHE_DIR /ro cannot be written)"
    monkeypatch.setattr(simd, "CACHE_OFF", "NUMBA_OPT=0, whose kernels Numba cannot cache")
    assert simd.describe_cache() == "kernel cache: none (NUMBA_OPT=0, whose kernels Numba cannot cache): each run compiles"
    info = CliRunner().invoke(cli, ["info"])
    assert info.exit_code == 0 and simd.describe_cache() + "\n" in info.stdout, info.output
    said = []
    monkeypatch.setattr(check, "_run_checks", lambda out: (0, 0))
    check.main(out=said.append)
    assert simd.describe_cache() in said, said


def test_the_note_clears_a_terminals_line_first(monkeypatch):
    """A kernel first compiled mid-epoch (the load changed the thread count: the other twin) put the
    note after the half-drawn progress bar, on its line. On a terminal the line is cleared first;
    into a file or pipe the note is the line alone."""
    import io  # noqa: PLC0415

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(check.shutil, "get_terminal_size", lambda: os.terminal_size((30, 24)))
    for stream, lead in ((Terminal(), "\r" + " " * 29 + "\r"), (io.StringIO(), "")):
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setattr(check._SayCompiling, "said", False)
        numba.njit(_as_nbnets(lambda a: 7 * a))(1)
        assert stream.getvalue() == lead + check.compiling_note() + "\n"
