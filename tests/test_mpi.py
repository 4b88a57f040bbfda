"""Data-parallel training (nbnet/dist.py): `mpiexec -n N nbnet train` in subprocesses on localhost,
each with a timeout, so a hang fails the test instead of the CI run. Skipped when mpi4py or
mpiexec is missing (pip install 'nbnet[mpi]' puts mpiexec beside the venv's python)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_posix

import nbnet as nb
from nbnet import dist
from nbnet.data import batches, batches_reusing

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
_have_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="needs mpi4py and mpiexec: pip install 'nbnet[mpi]'",
)


def needs_mpi(test):
    """Skipped without mpi4py and mpiexec, or where mpiexec cannot start two plain Python processes
    at all (Open MPI run as root without OMPI_ALLOW_RUN_AS_ROOT=1, say): the MPI set-up's failure,
    not nbnet's, which the probe (no nbnet in it) tells apart."""
    return _have_mpi(pytest.mark.usefixtures("mpiexec_starts")(test))


TIMEOUT = 60  # a hang fails here, well before CI's limit
# 3 epochs of a small problem: 4 classes in 12-D; 480 train rows in batches of 64 (the last 32).
TRAIN = ["--hidden", "24,16", "--epochs", "3", "--batch-size", "64", "--lr", "0.05", "--quiet"]


def _env():
    env = {k: v for k, v in dist.launch_env().items() if not k.startswith("NBNET_MPI")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NUMBA_NUM_THREADS"] = "1"  # N processes on a 2-core machine: no oversubscription
    return env


@pytest.fixture(scope="module")
def mpiexec_starts():
    probe = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", "pass"], env=_env(), capture_output=True,
                           text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    if probe.returncode != 0:
        said = [line.strip() for line in probe.stderr.splitlines() if line.strip().strip("-")]
        pytest.skip(f"mpiexec cannot start 2 Python processes here: {said[0] if said else probe.returncode}")


def test_mpi_status_is_one_clean_line(monkeypatch):
    """nbnet info's MPI line: the library's first line, with no NUL byte (Open MPI 4.1.6 ends its
    version string in one) and no run of spaces."""
    import types as pytypes  # noqa: PLC0415

    fake_mpi = pytypes.SimpleNamespace(Get_library_version=lambda: "Open MPI v4.1.6, package: Debian\x00\nmore\n")
    monkeypatch.setitem(sys.modules, "mpi4py", pytypes.SimpleNamespace(__version__="4.1.2", MPI=fake_mpi))
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", fake_mpi)
    assert dist.mpi_status() == "mpi4py 4.1.2, Open MPI v4.1.6, package: Debian; 1 process(es) launched"


def test_a_new_job_keeps_the_users_mpi_settings_and_drops_its_own_jobs():
    """Found on a root container with Open MPI: dropping every OMPI_* variable took away
    OMPI_ALLOW_RUN_AS_ROOT and the image's OMPI_MCA_ settings, and mpiexec refused to start."""
    user = {"PATH": "/bin", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_plm_rsh_agent": "false", "HYDRA_HOST_FILE": "hosts"}
    assert dist.launch_env(user) == user  # not inside a job: nothing to drop
    job = {"PMI_RANK": "1", "PMI_SIZE": "2", "PMI_FD": "7", "MPI_LOCALRANKID": "1", "OMPI_COMM_WORLD_RANK": "1",
           "OMPI_COMM_WORLD_SIZE": "2", "OMPI_MCA_orte_hnp_uri": "x", "PMIX_RANK": "1", "MV2_COMM_WORLD_RANK": "1"}
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        inside = {**user, **{k: v for k, v in job.items() if k == name}}
        assert set(dist.launch_env(inside)) == {"PATH", "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
                                                "HYDRA_HOST_FILE"}
    assert set(dist.launch_env({**user, **job})) == set(dist.launch_env({**user, "PMI_RANK": "0"}))


def run(n, *args, env=None, timeout=TIMEOUT):
    """`nbnet ARGS` in n processes (n=1: no mpiexec at all). CompletedProcess; a hang fails."""
    cmd = [sys.executable, "-m", "nbnet", *map(str, args)]
    if n > 1:
        cmd = [MPIEXEC, "-n", str(n), *cmd]
    try:
        return subprocess.run(cmd, cwd=REPO, env={**_env(), **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} still running after {timeout} s: a hang\n{e.stderr}")


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def other_stderr(result):
    """stderr less the note that a cold Numba cache is being filled (nbnet.check.COMPILING)."""
    return [line for line in result.stderr.splitlines() if not line.startswith("compiling kernels")]


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpi") / "blobs.npz"
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 600)
    x = rng.normal(size=(600, 12)) * 0.8 + np.eye(4, 12)[y] * 1.5
    np.savez(path, x=x, y=y)
    return path


def arrays(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith(("layer", "optim/state/"))}


def max_rel(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-300)) for k in a)


# ------------------------------------------------------------------------------ without mpiexec


def test_shares_cover_each_batch_once_in_the_global_order():
    x = np.arange(103 * 2, dtype=np.float32).reshape(103, 2)
    y = np.arange(103)
    for size in (1, 2, 3, 7):
        for shuffle in (True, False):
            whole = [yb.copy() for _, yb in batches(x, y, 20, shuffle=shuffle, seed=(5, 1))]
            parts = [[yb.copy() for _, yb in batches_reusing(x, y, 20, shuffle, (5, 1), part=(r, size))]
                     for r in range(size)]
            for b, global_batch in enumerate(whole):
                np.testing.assert_array_equal(np.concatenate([p[b] for p in parts]), global_batch)
                sizes = [len(p[b]) for p in parts]
                assert max(sizes) - min(sizes) <= 1


def test_one_process_needs_no_mpi4py(tmp_path):
    """Plain `nbnet train` does not import mpi4py (nor pay for it), and `nbnet info` says MPI."""
    code = ("import sys; from nbnet.cli import main\n"
            "try:\n    main(['train', '--epochs', '1', '--hidden', '8', '--quiet'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'\n")
    ok(subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                      timeout=TIMEOUT))
    info = ok(run(1, "info"))
    assert "MPI: " in info.stdout
    if importlib.util.find_spec("mpi4py") is None:
        assert "MPI: not available" in info.stdout
    else:
        assert "mpi4py" in info.stdout.split("MPI: ")[1]


def test_launched_without_mpi4py_is_one_error_line(tmp_path):
    """PMI_SIZE says 2 processes, mpi4py cannot be imported: one Error: line, not a traceback."""
    (tmp_path / "mpi4py").mkdir()
    (tmp_path / "mpi4py" / "__init__.py").write_text("raise ImportError('no MPI here')\n")
    env = {**_env(), "PMI_SIZE": "2", "PMI_RANK": "0", "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    result = subprocess.run([sys.executable, "-m", "nbnet", "train", "--epochs", "1"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert len(error_lines(result)) == 1 and error_lines(result) == other_stderr(result)
    assert "nbnet[mpi]" in result.stderr


class _Signalled(Exception):
    pass


@pytest.mark.parametrize("kind", ["sigint", "sigterm"])
def test_the_signal_fault_runs_this_process_s_handler_without_os_kill(monkeypatch, kind):
    """NBNET_MPI_FAULT's sigint and sigterm sent os.kill(os.getpid(), ...): on Windows that ends the
    process (TerminateProcess) for any signal but its console events, and no handler ran, so the
    Ctrl-C path it tests was never taken. The signal is raised in this process, its handler run at once."""
    import signal  # noqa: PLC0415

    def terminate_process(pid, sig):
        raise AssertionError("os.kill: on Windows, TerminateProcess")

    def handler(signum, frame):
        raise _Signalled(signum)

    monkeypatch.setattr(os, "kill", terminate_process)
    sig = getattr(signal, kind.upper())
    old = signal.signal(sig, handler)
    try:
        with pytest.raises(_Signalled) as e:
            dist._inject(kind, (1.0, 1, 1, 0))
    finally:
        signal.signal(sig, old)
    assert e.value.args == (sig,)


def test_signal_handling_needs_none_of_the_signals_windows_lacks(monkeypatch):
    """Windows' signal module has no SIGHUP, SIGKILL, SIGPIPE, SIGQUIT or SIGALRM: what handles the
    command's signals and MPI_Init's takes only those there are."""
    import signal  # noqa: PLC0415

    from nbnet import _startup, cli  # noqa: PLC0415

    for name in ("SIGHUP", "SIGKILL", "SIGPIPE", "SIGQUIT", "SIGALRM", "SIGUSR1"):
        monkeypatch.delattr(signal, name, raising=False)
    assert set(_startup.caught_signals()) <= {signal.SIGINT, signal.SIGTERM}
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with dist._signals_end_the_process():
        pass
    cli._leave_a_closed_terminal(signal.SIGTERM)
    assert {sig: signal.getsignal(sig) for sig in before} == before


# ------------------------------------------------------------------------------ with mpiexec


@needs_mpi
def test_two_processes_train_what_one_does(problem, tmp_path):
    """float64: weights, optimizer state and metrics after 3 epochs within 1e-9 of one process;
    3 processes too (uneven shares); the same bits on a second run with the same N."""
    common = ["--dataset", problem, *TRAIN, "--dtype", "float64"]
    ok(run(1, "train", *common, "--save", tmp_path / "one.npz", "--metrics-out", tmp_path / "one.jsonl"))
    two = ok(run(2, "train", *common, "--save", tmp_path / "two.npz", "--metrics-out", tmp_path / "two.jsonl"))
    notes = two.stderr.splitlines()  # --quiet, and the compiling note (whatever it says of the cache) once
    assert two.stdout == "" and len(notes) <= 1 and all(n.startswith("compiling kernels for this CPU") for n in notes)
    one_w, two_w = arrays(tmp_path / "one.npz"), arrays(tmp_path / "two.npz")
    assert max_rel(one_w, two_w) < 1e-9
    m1 = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    m2 = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert len(m2) == 3  # process 0 alone writes
    for a, b in zip(m1, m2):
        for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "lr"):
            assert abs(a[key] - b[key]) <= 1e-9 * abs(a[key]), key

    ok(run(2, "train", *common, "--save", tmp_path / "again.npz"))
    again = arrays(tmp_path / "again.npz")
    assert all(np.array_equal(two_w[k], again[k]) for k in two_w)

    ok(run(3, "train", *common, "--save", tmp_path / "three.npz"))
    assert max_rel(one_w, arrays(tmp_path / "three.npz")) < 1e-9


@needs_mpi
def test_empty_shares_and_float32(problem, tmp_path):
    """Batch 479 of 480 rows: the last batch has one row, so two of 3 processes have none."""
    common = ["--dataset", problem, *TRAIN, "--batch-size", "479", "--optimizer", "adam", "--lr", "0.01"]
    ok(run(1, "train", *common, "--save", tmp_path / "one.npz"))
    ok(run(3, "train", *common, "--save", tmp_path / "three.npz"))
    assert max_rel(arrays(tmp_path / "one.npz"), arrays(tmp_path / "three.npz")) < 1e-4  # float32 rounding


@needs_mpi
@pytest.mark.parametrize("rank", [0, 1])
def test_a_process_that_raises_ends_the_job_with_one_error_line(problem, tmp_path, rank):
    result = run(2, "train", "--dataset", problem, *TRAIN, "--save", tmp_path / "ck.npz",
                 env={"NBNET_MPI_FAULT": f"{rank}:12:raise"})  # step 12: in epoch 2
    assert result.returncode != 0, result.stderr
    assert len(error_lines(result)) == 1, result.stderr
    assert "injected fault" in error_lines(result)[0], result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    from nbnet.checkpoint import load_checkpoint

    assert load_checkpoint(str(tmp_path / "ck.npz")).state.epoch == 1  # the last one stays loadable


@needs_mpi
def test_a_process_that_dies_ends_the_job(problem, tmp_path):
    result = run(3, "train", "--dataset", problem, *TRAIN, "--save", tmp_path / "ck.npz",
                 env={"NBNET_MPI_FAULT": "2:20:die"})
    assert result.returncode != 0
    from nbnet.checkpoint import load_checkpoint

    assert load_checkpoint(str(tmp_path / "ck.npz")).state.epoch == 2


@needs_mpi
def test_a_process_that_hangs_is_given_up_on_after_the_timeout(problem, tmp_path):
    result = run(2, "train", "--dataset", problem, *TRAIN, env={"NBNET_MPI_FAULT": "1:5:hang", "NBNET_MPI_TIMEOUT": "2"})
    assert result.returncode != 0
    assert len(error_lines(result)) == 1 and "NBNET_MPI_TIMEOUT" in error_lines(result)[0], result.stderr


@needs_mpi
@pytest.mark.parametrize("value", ["ten", "0", "-5", "nan", "inf", ""])
def test_a_bad_mpi_timeout_is_one_error_line(problem, value):
    result = run(2, "train", "--dataset", problem, *TRAIN, env={"NBNET_MPI_TIMEOUT": value})
    assert result.returncode != 0
    assert len(error_lines(result)) == 1 and "NBNET_MPI_TIMEOUT" in error_lines(result)[0], result.stderr
    assert "Traceback" not in result.stderr


def test_the_mpi_timeout_is_read_strictly(monkeypatch):
    monkeypatch.setenv("NBNET_MPI_TIMEOUT", "2.5")
    assert dist.setup_timeout() == 2.5
    monkeypatch.delenv("NBNET_MPI_TIMEOUT")
    assert dist.setup_timeout() == 600
    monkeypatch.setenv("NBNET_MPI_TIMEOUT", "1")
    assert dist.setup_timeout() == 1
    for bad in ("ten", "0", "-1", "nan", "1e999", "1e-300", "0.5"):  # tiny: aborted a healthy job
        monkeypatch.setenv("NBNET_MPI_TIMEOUT", bad)
        with pytest.raises(ValueError, match="NBNET_MPI_TIMEOUT"):
            dist.setup_timeout()


@needs_mpi
def test_nan_on_one_process_stops_every_process_at_that_step(problem, tmp_path):
    result = run(2, "train", "--dataset", problem, *TRAIN, env={"NBNET_MPI_FAULT": "1:10:nan"})
    assert result.returncode == 1
    assert error_lines(result) == other_stderr(result)  # one line, no MPI_Abort: all agreed
    assert "training diverged: loss is nan at epoch 2, step 2" in result.stderr


@needs_mpi
def test_ctrl_c_on_one_process_stops_all_at_one_step_and_resumes_with_another_count(problem, tmp_path):
    """Process 1 alone gets SIGINT in step 5: all stop after step 6 (asked before the reduction of
    each step), process 0 saves, exit 130; resumed by 3 processes, then by 1 (constant rate: cosine
    and step rates are functions of --epochs), the run of one process that never stopped."""
    common = ["--dataset", problem, *TRAIN, "--dtype", "float64"]
    ok(run(1, "train", *common, "--save", tmp_path / "whole.npz"))
    result = run(2, "train", *common, "--save", tmp_path / "ck.npz", env={"NBNET_MPI_FAULT": "1:5:sigint"})
    assert result.returncode == 130, result.stderr
    assert result.stderr.count("Interrupted in epoch 1 after step 6") == 1, result.stderr
    from nbnet.checkpoint import load_checkpoint

    assert load_checkpoint(str(tmp_path / "ck.npz")).state.step == 6
    # Checkpoints hold nothing that depends on N: on with 3 processes to the end of epoch 2, then 1.
    ok(run(3, "train", "--resume", tmp_path / "ck.npz", "--epochs", "2", "--save", tmp_path / "two.npz"))
    ok(run(1, "train", "--resume", tmp_path / "two.npz", "--epochs", "3", "--save", tmp_path / "end.npz"))
    assert max_rel(arrays(tmp_path / "whole.npz"), arrays(tmp_path / "end.npz")) < 1e-9


@needs_mpi
def test_sigterm_on_a_process_other_than_0_ends_the_job_as_terminated(problem, tmp_path):
    """Process 1 alone gets SIGTERM in step 5: all stop after step 6, as for Ctrl-C, and the job
    ends as one terminated (exit 143, "Terminated", as a SIGTERM to process 0 or to one process
    gives), not as "Interrupted", exit 130: process 0 saw only the agreed stop."""
    result = run(2, "train", "--dataset", problem, *TRAIN, "--save", tmp_path / "ck.npz",
                 env={"NBNET_MPI_FAULT": "1:5:sigterm"})
    assert result.returncode == 143, result.stderr
    assert result.stderr.count("Terminated in epoch 1 after step 6") == 1, result.stderr
    assert "Interrupted" not in result.stderr, result.stderr
    from nbnet.checkpoint import load_checkpoint

    assert load_checkpoint(str(tmp_path / "ck.npz")).state.step == 6


@needs_mpi
def test_bad_input_is_reported_once(problem, tmp_path):
    for args in (["--dataset", tmp_path / "missing.npz"], ["--epochs", "0"], ["--dataset", problem, "--hidden", "x"]):
        result = run(2, "train", *args)
        assert result.returncode != 0
        assert len(error_lines(result)) == 1, result.stderr
        assert "Traceback" not in result.stderr


def mpmd(*commands, env=None, timeout=TIMEOUT):
    """`mpiexec -n 1 nbnet A : -n 1 nbnet B ...`, each command a list of nbnet's arguments."""
    cmd = [MPIEXEC]
    for args in commands:
        cmd += [*([":"] if len(cmd) > 1 else []), "-n", "1", sys.executable, "-m", "nbnet", *map(str, args)]
    try:
        return subprocess.run(cmd, cwd=REPO, env={**_env(), **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} still running after {timeout} s: a hang\n{e.stderr}")


@needs_mpi
def test_commands_other_than_train_run_once_on_process_0(problem, tmp_path):
    """Every process ran them: info printed twice, predict's rows came twice on one
    stdout (interleaved where they are long), and both wrote --output."""
    ok(run(1, "train", "--dataset", problem, *TRAIN, "--epochs", "1", "--save", tmp_path / "ck.npz"))
    info = ok(run(2, "info"))
    assert info.stdout.count("MPI: ") == 1 and "2 process(es) launched" in info.stdout
    rows = ok(run(2, "predict", "--checkpoint", tmp_path / "ck.npz", problem)).stdout.splitlines()
    assert len(rows) == 600
    evaluated = ok(run(3, "evaluate", "--checkpoint", tmp_path / "ck.npz", "--json"))
    assert len(evaluated.stdout.splitlines()) == 1 and other_stderr(evaluated) == []
    bad = run(2, "evaluate", "--checkpoint", tmp_path / "missing.npz")  # process 0's error alone: no abort
    assert bad.returncode == run(1, "evaluate", "--checkpoint", tmp_path / "missing.npz").returncode != 0
    assert len(error_lines(bad)) == 1 and other_stderr(bad) == error_lines(bad), bad.stderr


@needs_mpi
def test_nbnet_run_by_a_process_of_a_job_is_a_command_of_its_own(problem, tmp_path):
    """A script under mpiexec that runs `nbnet evaluate` in a subprocess: the child inherits the
    launcher's variables but not its socket (PMI_FD), so it is no member of the job and runs as
    plain nbnet does, on every process (it tried MPI_Init: a wall of MPICH errors, exit 15)."""
    ok(run(1, "train", "--dataset", problem, *TRAIN, "--epochs", "1", "--save", tmp_path / "ck.npz"))
    # Each process's result in a file of its own: the two lines printed through mpiexec's stdout
    # came interleaved once in CI ('00 {"loss": ...' then ' {"loss": ...'), failing a passing run.
    script = ("import os, subprocess, sys\n"
              f"r = subprocess.run([sys.executable, '-m', 'nbnet', 'evaluate', '--checkpoint', {str(tmp_path / 'ck.npz')!r},"
              " '--json'], capture_output=True, text=True, timeout=30)\n"
              f"with open(os.path.join({str(tmp_path)!r}, f'out-{{os.getpid()}}.txt'), 'w') as f:\n"
              "    f.write(f'{r.returncode} {r.stdout.strip()} {r.stderr.strip()[-300:]}')\n")
    result = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", script], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    ok(result)
    lines = [p.read_text() for p in sorted(tmp_path.glob("out-*.txt"))]
    assert len(lines) == 2 and all(line.startswith('0 {"loss"') for line in lines), lines


@needs_mpi
def test_another_command_beside_training_is_one_error_line(problem, tmp_path):
    """MPMD: a process that ran `nbnet info` or `nbnet evaluate` beside `nbnet train` left the
    trainer waiting for ever (in MPI_Init, or at its start-of-training meeting): now one Error
    line names who runs what, and the job ends with exit code 2. Processes that run different
    commands (not train) are refused alike: process 1's would not have run."""
    train = ["train", "--dataset", problem, *TRAIN]
    for commands, who in ((["info"], train), (train, ["evaluate", "--checkpoint", tmp_path / "x.npz"])):
        result = mpmd(commands, who)
        assert result.returncode == 2, result.stderr
        assert len(error_lines(result)) == 1 and other_stderr(result) == error_lines(result), result.stderr
        assert "beside process" in result.stderr and "nbnet train" in result.stderr
    result = mpmd(["--version"], ["info"])
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert error_lines(result) == ["Error: process 1 runs `nbnet info`, process 0 `nbnet --version`: under mpiexec, "
                                   "every process runs the same command (one other than train runs once, on process 0)"]


@needs_mpi
@needs_posix("os.killpg and SIGTERM as a signal a process handles")
def test_sigterm_ends_a_job_whose_other_process_never_starts_mpi(problem):
    """A process that exits without MPI (here a Python that is not nbnet) leaves the trainer in
    MPI_Init, which waits in C: the command's Python handlers never ran, so mpiexec's SIGTERM (or a
    Ctrl-C) left it running until SIGKILL. During MPI_Init those signals end the process."""
    cmd = [MPIEXEC, "-n", "1", sys.executable, "-m", "nbnet", "train", "--dataset", str(problem), *TRAIN,
           ":", "-n", "1", sys.executable, "-c", "pass"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        proc.communicate(timeout=4)  # by then the trainer waits in MPI_Init
        pytest.fail("the job ended without a peer")
    except subprocess.TimeoutExpired:
        pass
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail("SIGTERM did not end a job waiting in MPI_Init")
    assert proc.returncode != 0


@needs_mpi
def test_processes_that_disagree_are_stopped_before_training(problem, tmp_path):
    """MPMD launch: process 1 has another seed (other weights), or a file process 0 lacks, or an
    option click refuses (that process ended before MPI started, and MPICH left process 0 waiting
    in MPI_Init for ever), or an NBNET_MPI_TIMEOUT it refuses (that process ended without a word
    and process 0 waited out its own 600 s), or a setting the command refuses before nbnet loads
    (the same hang as click's)."""
    py = [sys.executable, "-m", "nbnet", "train", "--dataset", str(problem), *TRAIN]
    cases = [([*py, "--seed", "1"], "does not train what process 0 does (--seed 1 (process 0: 0); data "),
             ([*py, "--batch-size", "32"], "does not train what process 0 does (--batch-size 32 (process 0: 64)): "),
             ([*py, "--resume", str(tmp_path / "missing.npz")], "process 1:"),
             ([*py, "--epochs", "x"], "process 1: Invalid value for '--epochs'"),
             (["env", "NBNET_MPI_TIMEOUT=x", *py], "process 1: NBNET_MPI_TIMEOUT must be"),
             (["env", "NUMBA_NUM_THREADS=abc", *py], "process 1: NUMBA_NUM_THREADS must be"),
             # both: the timeout's refusal came after MPI_Init, and the process ended without meeting
             (["env", "NBNET_MPI_TIMEOUT=x", "NUMBA_NUM_THREADS=abc", *py], "process 1: NUMBA_NUM_THREADS must be")]
    for other, expected in cases:
        result = subprocess.run([MPIEXEC, "-n", "1", *py, ":", "-n", "1", *other], cwd=REPO, env=_env(),
                                capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode != 0
        assert len(error_lines(result)) == 1 and expected in error_lines(result)[0], result.stderr


def test_the_fingerprint_covers_the_features():
    """Two machines whose copies of a data set differ in one pixel alone (same path, shapes and
    labels) train two problems: their fingerprints differ (features were left out of it)."""
    rng = np.random.default_rng(4)
    x, y = rng.random((6, 3)).astype(np.float32), np.arange(6) % 2
    params = nb.Sequential(nb.Linear(3, 2, seed=0)).parameters()
    other = x.copy()
    other[4, 1] += 0.5
    for data in ((other, y, x, y), (x, y, other, y)):
        assert dist.fingerprint({}, data, params) != dist.fingerprint({}, (x, y, x, y), params)


def test_the_fingerprint_covers_every_label_array_and_every_weight():
    """Test labels that differ (a copy of the test file with one label changed), or weights that
    differ in a later layer only (another seed for it), are another run too."""
    rng = np.random.default_rng(4)
    x, y = rng.random((6, 3)).astype(np.float32), np.arange(6) % 2
    params = nb.Sequential(nb.Linear(3, 4, seed=0), nb.ReLU(), nb.Linear(4, 2, seed=1)).parameters()
    base = dist.fingerprint({}, (x, y, x, y), params)
    flipped = y.copy()
    flipped[3] ^= 1
    for data in ((x, flipped, x, y), (x, y, x, flipped), (x, y, x, y, x, flipped)):
        assert dist.fingerprint({}, data, params) != base
    params[-1].data[1] += 0.5  # the last layer's bias
    assert dist.fingerprint({}, (x, y, x, y), params) != base


def test_a_one_process_communicator_takes_the_one_process_path():
    """train(comm=...) with a communicator of one process runs as with none (dist.Single): no mpi4py,
    no NBNET_MPI_TIMEOUT, no collectives."""
    class One:
        def Get_size(self):
            return 1

        def Get_rank(self):
            return 0

    assert type(dist.wrap(One())) is dist.Single and type(dist.wrap(None)) is dist.Single
    single = dist.Single()
    assert dist.wrap(single) is single


def test_launcher_variables_give_the_job_and_the_machine(monkeypatch):
    """Without per-machine variables all processes are on this machine (cli shares its cores among
    them); a launcher variable that is no number is passed over for the next launcher's."""
    for name in dist._SIZE_VARS + dist._RANK_VARS + dist._LOCAL_SIZE_VARS + dist._LOCAL_RANK_VARS:
        monkeypatch.delenv(name, raising=False)
    assert (dist.launched_size(), dist.launched_rank(), dist.local_size_rank()) == (1, 0, (1, 0))
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("PMI_RANK", "3")
    assert (dist.launched_size(), dist.local_size_rank()) == (4, (4, 3))
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    assert dist.local_size_rank() == (2, 1)
    monkeypatch.setenv("PMI_SIZE", "")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    assert dist.launched_size() == 3


def test_a_launcher_size_below_1_is_one_process(monkeypatch):
    for name in dist._SIZE_VARS + dist._RANK_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PMI_SIZE", "0")
    assert dist.launched_size() == 1


def _meeting(capsys, rank, codes, texts):
    """MPIComm._meet on process `rank` of len(codes), every process's (code, text) as given (no MPI
    needed): (exit code or None where it returns, what it printed on stderr)."""
    comm = object.__new__(dist.MPIComm)
    comm.rank, comm.size = rank, len(codes)
    comm._exchange = lambda code, text: (codes, texts)
    try:
        comm._meet(codes[rank], texts[rank])
        code = None
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_the_meeting_reports_the_first_failed_process_its_exit_code_and_which_runs_what(capsys):
    """Process 0 prints the first failed process's error as one line (its own without a "process
    0:" prefix) and every process exits with that process's code; where some run another command
    beside training, it says which process runs what, and all exit 2; all running one other
    command go on."""
    other = dist.OTHER_COMMAND
    assert _meeting(capsys, 0, [0, 2, 1], ["fp", "bad --epochs", "disk full"]) == (2, "Error: process 1: bad --epochs\n")
    assert _meeting(capsys, 1, [0, 2, 1], ["fp", "bad --epochs", "disk full"]) == (2, "")
    assert _meeting(capsys, 0, [2, 2], ["no such file", "no such file"]) == (2, "Error: no such file\n")
    code, err = _meeting(capsys, 0, [other, other, 0], ["info", "info", "fp"])
    assert code == 2 and "process 0 runs `nbnet info` beside process 2's `nbnet train`" in err
    assert _meeting(capsys, 0, [other, other], ["info", "info"]) == (None, "")
    code, err = _meeting(capsys, 0, [other, other], ["info", "predict a.npz"])
    assert code == 2 and "process 1 runs `nbnet predict a.npz`, process 0 `nbnet info`" in err


def test_an_error_every_process_raised_alike_is_printed_by_process_0_alone(monkeypatch, capsys):
    """fail(agreed=True) (a divergence every process sees at the same step): one Error: line for
    the job, process 0's; every process exits with the code."""
    comm = object.__new__(dist.MPIComm)
    comm.size, comm.setup_done = 2, True
    monkeypatch.setattr(dist, "_world", comm)
    for rank, said in ((1, ""), (0, "Error: training diverged\n")):
        comm.rank = rank
        with pytest.raises(SystemExit) as e:
            dist.fail("training diverged", 1, agreed=True)
        assert e.value.code == 1 and capsys.readouterr().err == said


@needs_mpi
def test_processes_with_other_pixels_in_the_same_files_are_stopped(tmp_path):
    """NBNET_DATA_DIR (an environment-dependent default) gives process 1 MNIST files whose
    images differ from process 0's in one pixel: one Error: line before training."""
    rng = np.random.default_rng(5)
    labels, images = rng.integers(0, 10, 40).astype(np.uint8), rng.integers(0, 256, (40, 2, 2)).astype(np.uint8)
    for name, change in (("a", 0), ("b", 1)):
        folder = tmp_path / name / "mnist"
        folder.mkdir(parents=True)
        pixels = images.copy()
        pixels[3, 1, 0] ^= change
        for prefix, arr in (("train-images-idx3-ubyte", pixels), ("train-labels-idx1-ubyte", labels),
                            ("t10k-images-idx3-ubyte", pixels[:10]), ("t10k-labels-idx1-ubyte", labels[:10])):
            head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            (folder / prefix).write_bytes(head + arr.tobytes())
    py = [sys.executable, "-m", "nbnet", "train", "--dataset", "mnist", "--hidden", "4", "--epochs", "1", "--quiet"]
    result = subprocess.run([MPIEXEC, "-n", "1", "env", f"NBNET_DATA_DIR={tmp_path / 'a'}", *py, ":",
                             "-n", "1", "env", f"NBNET_DATA_DIR={tmp_path / 'b'}", *py],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0
    assert len(error_lines(result)) == 1 and "does not train what process 0 does" in error_lines(result)[0], \
        result.stderr


DISAGREE = """
import json, numpy as np, nbnet as nb
from mpi4py import MPI
comm = MPI.COMM_WORLD
rng = np.random.default_rng(0)
x, y = rng.normal(size=(24, 3)), rng.integers(0, 3, 24)
refused = []
for what in ("seed", "x", "batch_size", "epochs", "layers"):
    args, data = dict(epochs=2, batch_size=4, seed=0), (x, y)
    if comm.rank == 1:
        if what == "x":
            data = (x + 1, y)
        elif what != "layers":
            args[what] += 1
    more = [nb.Tanh()] if comm.rank == 1 and what == "layers" else []
    model = nb.Sequential(nb.Linear(3, 3, seed=0), *more)
    try:
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), data, comm=comm, **args)
    except ValueError as e:
        refused.append([what, str(e)])
everyone = comm.gather(refused)  # printed by one process: the launcher mixes two processes' lines
if comm.rank == 0:
    print(json.dumps(everyone))
"""


@needs_mpi
def test_train_with_comm_refuses_processes_that_disagree():
    """nb.train(comm=...) on processes given another seed or data (silently another training), or
    another batch size or epoch count (one process done with a wrong model, the others waiting
    for NBNET_MPI_TIMEOUT), or a layer more with the same weights (the gradients of two networks
    summed): every process raises ValueError before the first step."""
    result = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", DISAGREE], cwd=REPO,
                            env={**_env(), "NBNET_MPI_TIMEOUT": "20"}, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    for refused in json.loads(result.stdout):
        assert [what for what, _ in refused] == ["seed", "x", "batch_size", "epochs", "layers"], result.stdout
        assert all(e.startswith("nb.train: process 1 does not train what process 0 does") for _, e in refused)
        named = {what: e.split(" does (", 1)[1] for what, e in refused}  # what differs, named: it said CRCs only
        assert named["seed"].startswith("seed 1 (process 0: 0)): "), named
        assert named["x"].startswith("data 24x3/24/-/-/-/- features "), named
        assert named["batch_size"].startswith("batch_size 5 (process 0: 4)): "), named
        assert named["epochs"].startswith("epochs 3 (process 0: 2)): "), named
        assert named["layers"].startswith("model [{'type': 'Linear', "), named


@needs_mpi
def test_python_example_trains_with_comm_world(tmp_path):
    """examples/mpi_train.py: nb.train(..., comm=MPI.COMM_WORLD); the processes end with the same weights."""
    cmd = [MPIEXEC, "-n", "3", sys.executable, "-m", "mpi4py", str(REPO / "examples" / "mpi_train.py"),
           "--epochs", "3", "--out", str(tmp_path / "m.npz")]
    result = subprocess.run(cmd, cwd=tmp_path, env={**_env(), "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("epoch 3 ") == 1, result.stdout  # process 0 prints
    assert "same weights on all 3 processes: True" in result.stdout  # uneven shares: 42-43 rows each
    assert float(result.stdout.split("test accuracy ")[-1].split("%")[0]) > 80


@needs_mpi
def test_scaling_script_quick_prints_cpu_speedup_and_estimate():
    done = subprocess.run([sys.executable, str(REPO / "profiling" / "mpi_scaling.py"), "--quick"], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    from nbnet import simd  # noqa: PLC0415

    assert out.splitlines()[0] == simd.describe() and "speedup 2 processes vs 1: " in out
    assert "0.94 MB gradient" in out and "communication > compute from N = " in out


@needs_mpi
@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None, reason="needs numba-cuda (the simulator)")
def test_gpu_models_in_the_cuda_simulator_train_what_one_cpu_process_does(tmp_path):
    """--device cuda under mpiexec: batches sliced on the device, gradients through a host buffer."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 80)
    np.savez(tmp_path / "tiny.npz", x=rng.normal(size=(80, 3)) * 0.3 + y[:, None], y=y)
    common = ["--dataset", tmp_path / "tiny.npz", "--hidden", "4", "--batch-size", "16", "--epochs", "2",
              "--dtype", "float64", "--quiet"]
    ok(run(1, "train", *common, "--save", tmp_path / "cpu.npz"))
    ok(run(2, "train", *common, "--device", "cuda", "--save", tmp_path / "gpu.npz",
           env={"NUMBA_ENABLE_CUDASIM": "1", "NBNET_CUDA_TILE": "4"}))
    assert max_rel(arrays(tmp_path / "cpu.npz"), arrays(tmp_path / "gpu.npz")) < 1e-9


@needs_mpi
def test_gradient_through_a_host_buffer(tmp_path):
    """Gradients that are not one packed host array (a GPU model's) go through the staging buffer:
    checked on COMM_SELF with arrays standing in for device arrays, with the other collectives."""
    code = """
import numpy as np
from mpi4py import MPI
from nbnet import dist

class Dev:  # a device array's copy_to_host / copy_to_device
    def __init__(self, a): self.a, self.shape, self.size, self.dtype = a, a.shape, a.size, a.dtype
    def copy_to_host(self, out): out[...] = self.a
    def copy_to_device(self, src): self.a[...] = src

class P:
    def __init__(self, g): self.grad = g

g1, g2 = np.arange(6.0).reshape(2, 3), np.arange(4.0)
comm = dist.MPIComm(MPI.COMM_SELF)
comm.allreduce_grad([P(Dev(g1)), P(g2)], 0.5)
assert np.array_equal(g1, np.arange(6.0).reshape(2, 3) * 0.5) and np.array_equal(g2, np.arange(4.0) * 0.5)
g3 = np.arange(15.0)  # more elements than the buffer made for the last call: a new one
comm.allreduce_grad([P(Dev(g3))], 2.0)
assert np.array_equal(g3, np.arange(15.0) * 2)
# as many elements in the other dtype (a float64 model trained after a float32 one): a buffer of
# that dtype, not the float32 one, which would round 1 + 2**-40 to 1
g6, g7 = np.arange(16, dtype=np.float32), np.full(16, 1 + 2.0**-40)
comm.allreduce_grad([P(Dev(g6))], 2.0)
comm.allreduce_grad([P(Dev(g7))], 2.0)
assert np.array_equal(g7, np.full(16, 2 + 2.0**-39))
# the sums take as many values as given; a fingerprint or error text longer than its message slot is cut
assert comm.sums(1.0, 2.0) == (1.0, 2.0) and comm.step_sums(3.0, 2, 4, True) == (3.0, 2.0, 4.0, True)
comm.agree("x" * 5000)
comm.agree("é" * 1000)
# On a GPU, model.to("cuda") packs the gradients and one_flat finds them as one device view: that
# view goes through the host buffer too (it was scaled with *=, which device arrays lack, and summed
# as if it were host memory)
from nbnet import gpu
packed = np.arange(10.0)
g4, g5 = Dev(packed[:6].reshape(2, 3)), Dev(packed[6:])
gpu.one_flat = lambda arrays: Dev(packed) if arrays[0] is g4 else None
comm.allreduce_grad([P(g4), P(g5)], 0.5)
assert np.array_equal(packed, np.arange(10.0) * 0.5)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_processes_that_differ_in_many_options_name_them_all():
    """The values of the parts that differ went in one 1 KB message: with five or more options
    different, those after the cut were dropped without a word. Four values each way are shown,
    and the others by name."""
    rng = np.random.default_rng(4)
    x, y = rng.random((6, 3)).astype(np.float32), np.arange(6) % 2
    params = nb.Sequential(nb.Linear(3, 2, seed=0)).parameters()
    opts = [{f"option_{i}": "x" * 300 + str(p) for i in range(6)} for p in (0, 1)]
    fps = [dist.fingerprint(o, (x, y, x, y), params) for o in opts]
    texts = [str(f) for f in fps]
    sent = {}

    class Captured(Exception):
        pass

    def comm(rank, replies=None):
        c = object.__new__(dist.MPIComm)

        def exchange(code, text):
            if replies is None:
                sent[rank] = text
                raise Captured
            return [0, 0], replies

        c._exchange = exchange
        return c

    for rank in (0, 1):
        with pytest.raises(Captured):
            comm(rank)._what_differs(fps[rank], texts, 1)
    assert all(len(t.encode()) <= dist._MESSAGE_BYTES - 8 for t in sent.values())
    said = comm(1, [sent[0], sent[1]])._what_differs(fps[1], texts, 1)
    assert said.count("(process 0: ") == 4 and said.endswith("and 2 more: option_4, option_5"), said
