"""The profiling scripts can call every kernel in nbnet.cpu (no timing here: that is their job).

profiling/common.py binds each kernel's arguments by parameter name; a kernel with a parameter it
has no array for would silently drop out of the tables, so that fails here instead.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PROFILING = Path(__file__).resolve().parents[1] / "profiling"
sys.path.insert(0, str(PROFILING))
import common  # noqa: E402

from nbnet import _startup as nbnet_startup  # noqa: E402
from nbnet import simd  # noqa: E402


def test_every_cpu_kernel_has_arguments_at_mnist_shapes():
    cases, unowned = common.mnist_cases(batch=4)
    assert not unowned, f"kernels with no shapes in profiling/common.py: {unowned}"
    assert not [c.problem for c in cases if c.problem]
    names = {c.name for c in cases}
    assert {"linear_forward", "relu_backward", "softmax_crossentropy_forward", "adam_step"} <= names


def test_bound_arguments_run_and_compute_the_formula():
    cases, _ = common.mnist_cases(batch=4, dtype=np.float64)
    case = next(c for c in cases if c.name == "linear_forward" and c.group.label == "Linear 128->10")
    case.kernel(*case.args)
    a = case.group.arrays
    np.testing.assert_allclose(a["out"], a["inp"] @ a["weight"].T + a["bias"], rtol=1e-12)


def test_table_aligns_columns():
    text = common.table(["kernel", "µs"], [["a", "1.0"], ["linear_forward", "123.4"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # every row as wide as the header rule


SCRIPTS = sorted(p.name for p in PROFILING.glob("*.py") if p.name not in ("common.py", "argtypes.py"))


def test_scripts_have_help_and_say_what_they_measure():
    assert {"bench_epoch.py", "bench_gemm.py", "bench_step.py", "load.py"} <= set(SCRIPTS)
    for script in SCRIPTS:
        source = (PROFILING / script).read_text(encoding="utf-8")
        assert source.startswith('"""') and "python profiling/" in source, script
        done = subprocess.run([sys.executable, str(PROFILING / script), "--help"],
                              capture_output=True, text=True, cwd=PROFILING, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(PROFILING.parent)})
        assert done.returncode == 0 and "usage:" in done.stdout, (script, done.stderr)
        # Each option that takes a value says its default (argtypes.ShowDefaults): kernels.py's
        # --batch and --dtype, compile.py's, bench_gemm's --rounds ... did not.
        options = re.split(r"\n(?=  -)", done.stdout.split("options:", 1)[1])
        silent = [o.split()[0] for o in options if re.match(r"  --?[\w-]+ [A-Z{]", o) and "default" not in o]
        assert not silent, (script, silent)


def test_every_script_prints_the_machine_it_ran_on():
    """A figure without its CPU and ISA cannot be compared: each script prints simd.describe() (the
    processor, the CPU LLVM compiles for, cores, ISA, register blocks), as the runs of bench_gemm and
    bench_sklearn below check in their output."""
    missing = [s for s in SCRIPTS if "simd.describe()" not in (PROFILING / s).read_text(encoding="utf-8")]
    assert not missing, f"scripts that do not print simd.describe(): {missing}"


def test_every_script_warns_when_the_machine_is_loaded():
    """The README: timings "warn when other processes load the machine". compile.py,
    bench_vs_torch.py, denormals.py and load.py (whose "quiet" columns assume a quiet machine) did
    not."""
    missing = [s for s in SCRIPTS if not any(check in (PROFILING / s).read_text(encoding="utf-8")
                                             for check in ("load_warning()", "os.getloadavg()"))]
    assert not missing, f"scripts that time things without a load warning: {missing}"


def test_bench_gemm_quick_prints_cpu_isa_and_ratios():
    done = subprocess.run([sys.executable, str(PROFILING / "bench_gemm.py"), "--quick"], capture_output=True,
                          text=True, cwd=PROFILING, timeout=300, env={**os.environ, "PYTHONPATH": str(PROFILING.parent)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert simd.describe() in out.splitlines() and "% BLAS" in out and "% of sgemm" in out
    assert out.count("float32") >= 9  # forward, dW, dX at each of the three layers


def test_bench_sklearn_quick_runs_both_sides_and_prints_cpu_and_ratio():
    import pytest  # noqa: PLC0415

    pytest.importorskip("sklearn")
    done = subprocess.run([sys.executable, str(PROFILING / "bench_sklearn.py"), "--quick"],
                          capture_output=True, text=True, cwd=PROFILING, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(PROFILING.parent)})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.splitlines()[0] == simd.describe() and "speedup" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("synth")]
    assert [r[2] for r in rows] == ["adam", "sgd"]
    for r in rows:  # seconds, accuracy for each side, then the ratio
        assert float(r[3]) > 0 and 0 <= float(r[4]) <= 1 and float(r[5]) > 0 and 0 <= float(r[6]) <= 1
        assert r[7].endswith("x")


@pytest.mark.parametrize("script, args", [
    ("bench_gemm.py", ["--batches", "abc"]),
    ("bench_gemm.py", ["--dtypes", "float16"]),
    ("kernels.py", ["--batch", "0"]),
    ("kernels.py", ["--threads", "0"]),
    ("kernels.py", ["--threads", "100000"]),  # more than NUMBA_NUM_THREADS
    ("threads.py", ["--threads", "0"]),
    ("threads.py", ["--threads", "1,100000"]),  # said "error: at most N threads", naming no option
    ("bench_vs_torch.py", ["--threads", "1,100000"]),  # numba's ValueError after the CPU line
    ("threshold.py", ["--max-batch", "0"]),
    ("load.py", ["--batch", "0"]),
    ("load.py", ["--policies", "passive,bogus"]),  # ran with OpenMP's default, in a row labelled bogus
    ("bench_sklearn.py", ["--solvers", "lbfgs"]),
    ("bench_sklearn.py", ["--features", "3"]),
    ("bench_sklearn.py", ["--threads", "100000", "--quick"]),  # nbnet ran on fewer threads than BLAS  # make_classification's ValueError after the CPU line
    ("kernels.py", ["--min-time", "inf"]),  # timed until then: a hang
    ("threads.py", ["--min-time", "nan"]),
    ("threshold.py", ["--min-time", "0"]),
    ("bench_gemm.py", ["--min-time", "-1"]),
    ("mpi_scaling.py", ["--procs", "0"]),
    ("mpi_scaling.py", ["--procs", "1"]),  # 1 against 1, then a KeyError for its Allreduce time
    ("mpi_scaling.py", ["--data-dir", "/nonexistent-mnist"]),  # random rows instead, said in passing
    ("denormals.py", ["--data-dir", "/nonexistent-mnist"]),  # the same
    ("threshold.py", ["--kernels", "bogus,relu_forward"]),  # timed as nothing, listed after every other
])
def test_bad_arguments_are_usage_errors_before_any_work(script, args):
    """They were tracebacks (ValueError, KeyError, ZeroDivisionError) after the CPU line, or, for
    kernels.py --threads 0, a run with all threads."""
    done = subprocess.run([sys.executable, str(PROFILING / script), *args], capture_output=True, text=True,
                          cwd=PROFILING, timeout=120, env={**os.environ, "PYTHONPATH": str(PROFILING.parent)})
    assert done.returncode == 2 and f"error: argument {args[0]}" in done.stderr, (script, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == "", (script, done.stdout, done.stderr)


def test_threads_py_defaults_to_the_threads_numba_has():
    """With NUMBA_NUM_THREADS=1 (or a one-CPU cpuset) threads.py with no options was a usage error
    on the default --threads 1,2, an option the user never typed: it times 1 thread."""
    done = subprocess.run([sys.executable, str(PROFILING / "threads.py"), "--batch", "2", "--min-time", "0.001"],
                          capture_output=True, text=True, cwd=PROFILING, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(PROFILING.parent), "NUMBA_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "µs @ 1" in done.stdout and "µs @ 2" not in done.stdout, done.stdout


def test_bench_step_times_every_step_asked_for():
    """--steps below 10 timed no step (steps // 10 per chunk): the worker's median of nothing was a
    StatisticsError traceback; --steps 15 timed 10."""
    import bench_step  # noqa: PLC0415

    for steps in (1, 5, 10, 15, 1000, 1009):
        parts = bench_step.chunks(steps)
        assert sum(parts) == steps and min(parts) >= 1 and len(parts) <= 10
        assert max(parts) - min(parts) <= 1


def test_bench_step_bound_counts_the_steps_arithmetic():
    """The bound's FLOPs: forward and dW of the three layers, dX of the last two (the first
    layer's input gradient is not computed), 2 FLOPs per multiply-add."""
    import bench_step  # noqa: PLC0415

    weights = 784 * 256 + 256 * 128 + 128 * 10
    for batch in (1, 8):
        assert bench_step.step_flops(batch) == 2 * batch * (2 * weights + 256 * 128 + 128 * 10)


def test_child_processes_keep_the_users_pythonpath(monkeypatch):
    """bench_epoch, bench_step and load.py gave their workers PYTHONPATH=<checkout> alone: a PyTorch
    or scikit-learn on the user's PYTHONPATH vanished there, and its column with it. The checkout
    comes first; an empty entry (the working directory, to Python) is not added."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/opt/torch-here", "", "/opt/more"]))
    env = common.child_env(NUMBA_NUM_THREADS="2")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(PROFILING.parent), "/opt/torch-here", "/opt/more"]
    assert env["NUMBA_NUM_THREADS"] == "2" and "PYTHONPATH" in os.environ
    monkeypatch.delenv("PYTHONPATH")
    assert common.child_env({"A": "1"})["PYTHONPATH"] == str(PROFILING.parent)
    for script in SCRIPTS:  # every script that starts a Python child builds its environment there
        source = (PROFILING / script).read_text(encoding="utf-8")
        assert "PYTHONPATH=" not in source and '"PYTHONPATH"' not in source, script


def test_threshold_measures_every_kernel_of_its_default_list():
    """Four of threshold.py's default kernels were the Python functions that pick among the Linear
    kernels by shape, with no parallel twin to time: their rows said "-", and of the Linear kernels
    only the forward was measured. Each default kernel has a serial and a parallel twin here."""
    import threshold

    cases = {c.name: c for c in common.mnist_cases(batch=1)[0]}
    for name in threshold.DEFAULT.split(","):
        assert name in cases and not cases[name].problem, name
        assert not isinstance(threshold.serial_and_parallel(cases[name].kernel), str), name


def test_quick_sets_defaults_not_the_options_given(monkeypatch):
    """--quick overwrote what the command line gave: bench_step.py --quick --steps 5 ran 100 steps,
    bench_epoch.py --quick --threads 2 one thread, silently."""
    import argparse

    import argtypes

    for argv, threads, steps in ((["--quick"], "1", 100), (["--quick", "--steps", "5"], "1", 5),
                                 (["--threads", "2", "--quick"], "2", 100), ([], "1,2", 1000)):
        parser = argparse.ArgumentParser()
        parser.add_argument("--threads", type=argtypes.positive_ints, default="1,2")
        parser.add_argument("--steps", type=argtypes.positive_int, default=1000)
        parser.add_argument("--quick", action="store_true")
        monkeypatch.setattr(sys, "argv", ["script", *argv])
        args = argtypes.parse_args(parser, threads="1", steps=100)
        assert (args.threads, args.steps) == (threads, steps), argv
    for script in ("bench_epoch.py", "bench_step.py", "load.py", "mpi_scaling.py", "bench_gemm.py"):
        text = (PROFILING / script).read_text()
        assert "parse_args(parser, " in text and "if args.quick:" not in text, script


def test_bench_sklearn_quick_keeps_the_samples_given(capsys, monkeypatch):
    """--quick --samples 3000 ran 2,000 rows (min(--samples, 2000)), in a row labelled synth2k; and
    bench_gemm.py --quick --batches 32 ran batch 128 (it now takes parse_args's rule, above)."""
    pytest.importorskip("sklearn")
    import bench_sklearn

    monkeypatch.setattr(bench_sklearn.time, "sleep", lambda seconds: None)  # the pauses between contenders
    assert bench_sklearn.main(["--quick", "--samples", "3000", "--features", "10", "--hidden", "4",
                               "--solvers", "sgd", "--epochs", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("synth")]
    assert [r[0] for r in rows] == ["synth3k"]


def test_load_interleaves_the_settings_over_rounds_and_reports_medians_and_threads_used():
    """load.py timed each setting once, one after the other (a slow phase of a noisy VM fell on one
    setting), and printed nbnet's thread count at the end of the run only. Each round now runs every
    setting quiet then loaded, timing its share of the steps; each figure is the median of the
    rounds' means, with every thread count nbnet used during them."""
    import load

    calls, busy = [], []

    class Busy:
        def kill(self):
            busy.append("kill")

        def wait(self):
            pass

    def spin():
        busy.append("start")
        return Busy()

    def measure(key, steps):
        loaded = bool(busy) and busy[-1] == "start"
        calls.append((key, loaded, steps))
        means = {"1t": [3.0, 1.0, 2.0], "2t auto": [5.0, 9.0, 6.0]}[key]
        return {"mean": means[sum(1 for c in calls if c[:2] == (key, loaded)) - 1], "layer": "omp",
                "threads": [1, 2] if (key, loaded, len(calls)) == ("2t auto", True, 12) else [2 if key != "1t" else 1]}

    res = load.run_rounds(measure, ["1t", "2t auto"], 10, 3, spin)
    assert [c[:2] for c in calls] == [("1t", False), ("2t auto", False), ("1t", True), ("2t auto", True)] * 3
    assert [c[2] for c in calls[::4]] == [4, 3, 3] == load.shares(10, 3)  # every step timed, in 3 shares
    assert busy == ["start", "kill"] * 3
    assert res["1t", False]["mean"] == 2.0 and res["2t auto", True]["mean"] == 6.0  # medians, not the last
    assert res["2t auto", True]["threads"] == [1, 2] and res["2t auto", False]["threads"] == [2]
    assert "thread_counts(" in (PROFILING / "load.py").read_text(encoding="utf-8")
    assert load.shares(2, 3) == [1, 1]  # no round with no step


def test_benchmarks_report_the_threads_nbnet_ran_on():
    """nbnet adapts its thread count to the load (nbnet/threads.py): bench_epoch, bench_step,
    bench_vs_torch, bench_sklearn and kernels.py labelled rows with the count they set and never
    said that nbnet ran on 1 of 2 threads while another process held a core. They report the counts
    seen during the timed run."""
    import bench_vs_torch

    x = np.random.default_rng(0).random((32, 784), dtype=np.float32)
    run = bench_vs_torch.nbnet_epoch(x, np.arange(32) % 10, 8)
    run()
    assert run.used and run.used <= set(range(1, os.cpu_count() + 2))
    assert common.thread_counts([2, 1, 2]) == "1-2" and common.thread_counts([2, 2]) == "2"
    assert common.thread_counts([None]) == "-" == common.thread_counts([])
    for script in ("bench_epoch.py", "bench_step.py", "bench_vs_torch.py", "bench_sklearn.py", "kernels.py"):
        assert "thread_counts(" in (PROFILING / script).read_text(encoding="utf-8"), script


HUGE = "1000000000"


@pytest.mark.parametrize("script, args", [
    ("bench_step.py", ["--batch-sizes", "1," + HUGE]),
    ("bench_step.py", ["--steps", HUGE]),  # each timed step's figures are kept
    ("bench_epoch.py", ["--samples", HUGE]),
    ("bench_vs_torch.py", ["--samples", HUGE]),
    ("bench_vs_torch.py", ["--batch-sizes", HUGE, "--samples", "10000000"]),
    ("bench_sklearn.py", ["--samples", HUGE]),
    ("bench_sklearn.py", ["--features", HUGE]),
    ("bench_sklearn.py", ["--hidden", "100000,100000"]),
    ("kernels.py", ["--batch", HUGE]),
    ("threads.py", ["--batch", HUGE]),
    ("threshold.py", ["--max-batch", HUGE]),
    ("compile.py", ["--batch", HUGE]),
    ("load.py", ["--batch", "32," + HUGE]),
    ("load.py", ["--steps", HUGE + "000"]),
    ("mpi_scaling.py", ["--rows", HUGE]),  # random rows (no MNIST folder: see below)
    ("mpi_scaling.py", ["--procs", "100000"]),
    ("mpi_scaling.py", ["--allreduce-reps", HUGE + "000"]),
])
def test_sizes_that_cannot_fit_are_usage_errors_before_any_allocation(script, args, monkeypatch, capsys):
    """A batch, sample count, width or step count of 10**9 ended in a MemoryError traceback after
    the CPU line (or would have, hours into a run). Each script weighs what its sizes would allocate
    against half this machine's memory first (argtypes.check_memory). Run in this process: the check
    comes right after parsing, before anything is made."""
    import importlib

    module = importlib.import_module(script[:-3])
    if script == "mpi_scaling.py" and args[0] == "--rows":
        monkeypatch.setattr(module, "MNIST_DIRS", ())  # no MNIST: --rows random rows are made
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as exit_:
        module.main(args) if script in ("bench_vs_torch.py", "bench_sklearn.py") else module.main()
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == "", (out, err)
    assert f"error: argument {args[0]}: needs about " in err and "GiB of memory" in err, err


def test_bench_gemm_refuses_a_batch_that_cannot_fit():
    """bench_gemm.py sets its thread variables when imported: it runs in its own process."""
    done = subprocess.run([sys.executable, str(PROFILING / "bench_gemm.py"), "--batches", "32," + HUGE],
                          capture_output=True, text=True, cwd=PROFILING, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PROFILING.parent)})
    assert done.returncode == 2 and "error: argument --batches: needs about" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_the_memory_check_passes_the_default_sizes(monkeypatch):
    """The estimates are not so generous that a machine with 2 GiB to spare refuses the defaults."""
    import argparse

    import argtypes

    monkeypatch.setattr(argtypes, "memory_budget", lambda: 2 << 30)
    parser = argparse.ArgumentParser()
    argtypes.check_memory(parser, {"--batch": argtypes.GROUPS_ROW * 1024 * 2 + argtypes.STEP_ROW * 2048},
                          fixed=argtypes.PROCESS)  # threshold.py's default, bench_vs_torch's cuda batch
    with pytest.raises(SystemExit):
        argtypes.check_memory(parser, {"--batch": 1 << 40, "--steps": 1})


@pytest.mark.parametrize("script, option", [("mpi_scaling.py", "--data-dir"), ("denormals.py", "--data-dir"),
                                            ("bench_sklearn.py", "--data-dir")])
@pytest.mark.parametrize("missing", [False, True])
def test_a_data_dir_without_mnist_is_a_usage_error(script, option, missing, tmp_path):
    """A folder the user named that holds no MNIST, or no folder: denormals scanned random rows in
    its stead, mpi_scaling's workers each ended in the loader's traceback, and bench_sklearn ended in
    it (a ValueError) after the synthetic rows' table."""
    if script == "bench_sklearn.py":
        pytest.importorskip("sklearn")
    folder = tmp_path / "nowhere" if missing else tmp_path
    done = subprocess.run([sys.executable, str(PROFILING / script), option, str(folder)],
                          capture_output=True, text=True, cwd=PROFILING, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PROFILING.parent)})
    assert done.returncode == 2 and f"error: argument {option}: " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "CPU " not in done.stdout, (done.stdout, done.stderr)


def test_synthetic_rows_are_labelled_with_their_count():
    from bench_sklearn import synthetic_label

    assert [synthetic_label(n) for n in (500, 2000, 2500, 20000)] == ["synth500", "synth2k", "synth2500", "synth20k"]


def test_a_load_worker_past_its_time_limit_is_one_error_line(monkeypatch):
    """A worker over its 600 s ended in subprocess.TimeoutExpired's traceback (load.py --steps 2000000)."""
    import load

    def slow(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(load.subprocess, "run", slow)
    with pytest.raises(SystemExit, match=r"^error: the 2-thread \(auto\) worker timed 9 steps at batch 32 for "
                                         r"over 600 s: ask for fewer --steps"):
        load.measure((2, "auto"), None, 32, 9)


def test_peers_get_blas_kernels_of_nbnets_isa(monkeypatch):
    """On the AVX-512 Zen 5 machine the environment held OPENBLAS_CORETYPE=Haswell: NumPy's and
    scikit-learn's columns ran AVX2 kernels at about half this CPU's sgemm speed, against nbnet's
    AVX-512 kernels. A script now runs itself again with OpenBLAS's kernels for nbnet's ISA, and
    says so; a BLAS already on that ISA is left alone, and a test calling main() is never replaced."""
    calls = []
    monkeypatch.setattr(common.os, "execv", lambda exe, argv: calls.append((exe, argv)))
    monkeypatch.setattr(simd, "ISA", "avx512")
    monkeypatch.setattr(simd, "EMULATED", False)
    monkeypatch.delenv("NBNET_BLAS_MATCHED", raising=False)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setattr(common, "openblas_core", lambda: ("0.3.31", "Haswell"))
    # called from pytest (not a profiling script): the line says so, nothing is run again
    assert "not avx512 as nbnet's" in common.match_blas() and not calls
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(PROFILING / "bench_gemm.py"), raising=False)
    common.match_blas()
    assert calls and calls[0][0] == sys.executable
    assert os.environ["OPENBLAS_CORETYPE"] == "SkylakeX"
    assert os.environ["NBNET_BLAS_MATCHED"] == "Haswell kernels, OPENBLAS_CORETYPE=Haswell"
    monkeypatch.setattr(common, "openblas_core", lambda: ("0.3.31", "SkylakeX"))
    line = common.match_blas()  # the run again reports what it changed
    assert "SkylakeX kernels (OPENBLAS_CORETYPE=SkylakeX set by this script" in line and "ran Haswell" in line
    monkeypatch.delenv("NBNET_BLAS_MATCHED")
    calls.clear()
    assert common.match_blas() == "BLAS: OpenBLAS 0.3.31, SkylakeX kernels" and not calls  # already matched
    monkeypatch.setattr(simd, "ISA", "avx2")  # NUMBA_CPU_NAME=haswell on an AVX-512 machine
    common.match_blas()
    assert calls and os.environ["OPENBLAS_CORETYPE"] == "Haswell"


def test_scripts_measure_this_checkouts_nbnet_not_another_installed(tmp_path):
    """Run from a second checkout (a git worktree for an A/B run), kernels.py, bench_gemm.py,
    bench_vs_torch.py, denormals.py, bench_sklearn.py, ... imported the nbnet installed in the
    environment (the first checkout's editable install), while their child processes (child_env)
    and the file beside them were this checkout's: a table of the other code, or a CPU line of one
    and timings of the other. Here another nbnet comes first on PYTHONPATH and cannot be imported."""
    other = tmp_path / "nbnet"
    other.mkdir()
    (other / "__init__.py").write_text("raise ImportError('the nbnet of another checkout was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    runs = [([script, "--help"], 0) for script in SCRIPTS]
    # These two import nbnet only past --help: mpi_scaling's check of a --data-dir, bench_sklearn's run.
    runs.append((["mpi_scaling.py", "--data-dir", str(tmp_path)], 2))
    if importlib.util.find_spec("sklearn") is not None:
        runs.append((["bench_sklearn.py", "--quick", "--samples", "500", "--features", "10", "--hidden", "4",
                      "--solvers", "sgd", "--epochs", "1"], 0))
    for run, code in runs:
        done = subprocess.run([sys.executable, str(PROFILING / run[0]), *run[1:]], capture_output=True,
                              text=True, cwd=PROFILING, timeout=300, env=env)
        assert done.returncode == code and "another checkout" not in done.stderr, (run, done.stderr[-2000:])


def test_readmes_numba_inspection_block_runs_as_written(tmp_path):
    """The README's block for Numba's own tools on a kernel (inspect_asm, parallel_diagnostics)
    names nbnet.cpu's routes and twins: it runs, with the empty cache it asks for, and prints the
    kernel's assembly and Numba's parallel diagnostics."""
    readme = (PROFILING.parent / "README.md").read_text(encoding="utf-8")
    code = re.search(r"^NUMBA_CACHE_DIR=\$\(mktemp -d\) python - <<'EOF'\n(.*?)^EOF\n", readme, re.S | re.M).group(1)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(PROFILING.parent), "NUMBA_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "_linear_blocks" in done.stdout and "Parallel Accelerator Optimizing" in done.stdout
    assert "Inspection disabled" not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("script, args, peers", [
    ("bench_step.py", ["--quick", "--steps", "2", "--batch-sizes", "1"], ["torch"]),
    ("bench_epoch.py", ["--quick", "--samples", "256"], ["torch", "sklearn"]),
])
def test_a_missing_peer_is_said_not_just_a_dash(script, args, peers, tmp_path):
    """Without PyTorch (or scikit-learn) bench_step.py and bench_epoch.py filled its columns with
    "-" and said nothing, where bench_vs_torch.py says "PyTorch not installed". Each peer here is
    a module that cannot be imported, first on the PYTHONPATH the workers inherit."""
    for name in peers:
        (tmp_path / f"{name}.py").write_text(f"raise ModuleNotFoundError({f'No module named {name!r}'!r}, name={name!r})\n")
    done = subprocess.run([sys.executable, str(PROFILING / script), *args], capture_output=True, text=True,
                          cwd=PROFILING, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(PROFILING.parent), str(tmp_path)])})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    said = {"torch": "PyTorch could not be imported", "sklearn": "scikit-learn could not be imported"}
    for name in peers:
        assert said[name] in done.stdout, (name, done.stdout)


@pytest.mark.parametrize("variable, value, says", [("NUMBA_DISABLE_JIT", "1", nbnet_startup.NO_JIT),
                                                   ("NBNET_THREADS", "2", "NBNET_THREADS must be auto or fixed")])
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_setting_nbnet_refuses_is_one_error_line(script, variable, value, says):
    """NUMBA_DISABLE_JIT=1 (or NBNET_SIMD_LAYOUT without NUMBA_CACHE_DIR, a NUMBA_CPU_FEATURES LLVM
    cannot compile for): `nbnet train` says so in one line, every profiling script ended in a
    20-line traceback from `import nbnet`; NBNET_THREADS=2 in one from the first parallel kernel,
    after the CPU line. A real run's options: a script imports nbnet past --help."""
    args = ["--quick"] if "--quick" in (PROFILING / script).read_text(encoding="utf-8") else []
    done = subprocess.run([sys.executable, str(PROFILING / script), *args], capture_output=True, text=True,
                          cwd=PROFILING, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(PROFILING.parent), variable: value})
    assert done.returncode != 0 and "Traceback" not in done.stderr, (script, done.stderr[-3000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {says}"), (script, done.stderr[-3000:])


def test_kernels_py_gives_numpys_blas_as_many_threads_as_nbnet():
    """kernels.py's NumPy column ran OpenBLAS on all cores whatever --threads said: on a loaded
    2-core machine (or under taskset -c 0) a 784->256 product at batch 8 took 8-20 ms there against
    ~50 µs on one thread, so the column measured contention."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=None):  # puts the process's limits back on exit
        assert common.limit_blas(1) == "NumPy's BLAS: 1 thread(s), as nbnet's"
        blas = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
        assert blas and all(lib["num_threads"] == 1 for lib in blas)
    source = (PROFILING / "kernels.py").read_text(encoding="utf-8")
    assert "limit_blas(args.threads or numba.get_num_threads())" in source and '{blas}; {blas_threads}' in source


def test_the_scripts_look_for_mnist_in_one_order(tmp_path, monkeypatch):
    """mpi_scaling and bench_sklearn looked in one machine's absolute path, denormals in
    $NBNET_DATA_DIR: now each takes the first of nbnet's own default ($NBNET_DATA_DIR/mnist) and
    the checkout's shared/data/mnist that holds all four IDX files (a partial folder is passed over)."""
    from argtypes import found_mnist, mnist_dirs

    from nbnet.datasets import IDX_FILES

    monkeypatch.setenv("NBNET_DATA_DIR", str(tmp_path))
    first, second = mnist_dirs()
    assert first == str(tmp_path / "mnist") and second.endswith(os.path.join("shared", "data", "mnist"))
    mine = tmp_path / "mnist"
    mine.mkdir()
    for _, base in IDX_FILES[:3]:
        (mine / (base + ".gz")).write_bytes(b"")
    other = tmp_path / "other"
    other.mkdir()
    for _, base in IDX_FILES:
        (other / base).write_bytes(b"")
    assert found_mnist([str(mine), str(other)]) == str(other)  # three of four: passed over
    (mine / IDX_FILES[3][1]).write_bytes(b"")
    assert found_mnist([str(mine), str(other)]) == str(mine)
    assert found_mnist([str(tmp_path / "nowhere"), None]) is None


def test_limit_blas_sets_the_count_it_is_given_and_says_where_it_cannot(monkeypatch):
    """Under taskset -c N OpenBLAS starts with one thread, so the test above passes without a call
    (mutation round 23): the call itself, with n, and the line without threadpoolctl."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    calls = []
    monkeypatch.setattr(threadpoolctl, "threadpool_limits", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert common.limit_blas(3) == "NumPy's BLAS: 3 thread(s), as nbnet's"
    assert calls == [((3,), {"user_api": "blas"})]
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # an import of it raises ImportError
    assert common.limit_blas(2) == "NumPy's BLAS: its default thread count, not 2 (threadpoolctl not installed)"


def test_threads_in_use_is_the_count_nbnet_runs_its_kernels_on():
    from nbnet import threads  # noqa: PLC0415

    threads.parallel()  # nbnet looks at the load
    assert common.threads_in_use() == threads.in_use() >= 1


def test_show_defaults_adds_a_default_where_the_help_does_not_say_one():
    """argtypes.ShowDefaults, each case once (mutation round 23: the scripts' --help check asks only
    that each option says a default): not for None or a flag's False, not twice, and 0 is a default."""
    import argparse  # noqa: PLC0415

    from argtypes import ShowDefaults  # noqa: PLC0415

    parser = argparse.ArgumentParser(formatter_class=ShowDefaults)
    parser.add_argument("--rounds", type=int, default=5, help="rounds")
    parser.add_argument("--skip", type=int, default=0, help="rows skipped")
    parser.add_argument("--threads", default=None, help="threads (default: all)")
    parser.add_argument("--batch", type=int, default=128, help="batch (default: 128, or 8 with --quick)")
    parser.add_argument("--seed", type=int, default=None, help="worked out when it runs")
    parser.add_argument("--quick", action="store_true", help="quickly")
    text = " ".join(parser.format_help().split())
    assert "--seed SEED worked out when it runs --quick" in text
    assert "rounds (default: 5)" in text and "rows skipped (default: 0)" in text
    assert "threads (default: all) --batch" in text and "(default: 128, or 8 with --quick) --seed" in text
    assert text.endswith("--quick quickly")
