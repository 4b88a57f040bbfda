import faulthandler
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def numerical_grad(f, x, eps=1e-6):
    """Central finite differences of the scalar f() with respect to every element of x (in place)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def rel_err(a, b):
    """max |a - b| relative to the largest magnitude of either: 0 when equal, ~1 when unrelated."""
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300)
    return float(np.max(np.abs(a - b)) / scale)


def default_signals():
    """preexec_fn for a child process a test sends SIGINT or SIGHUP (or that sends them itself). A
    runner started under `nohup` ignores SIGHUP, one started as a script's `pytest &` SIGINT; a
    child inherits an ignored signal across exec, and Python (and nbnet, on purpose) keep it
    ignored, so those tests failed there (a Ctrl-C that never came, a 60 s timeout)."""
    for name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


def needs_posix(what):
    """Skip a test of what Windows lacks (FIFOs, Unix signals and modes, preexec_fn, symbolic links
    without privileges) there, saying which, instead of failing; it runs on Linux and macOS."""
    return pytest.mark.skipif(os.name != "posix", reason=f"needs {what}: not on Windows")


def needs_linux(what):
    """Skip a test of what only Linux has (/proc: a folder nothing can be written in) elsewhere."""
    return pytest.mark.skipif(not sys.platform.startswith("linux"), reason=f"needs {what}: Linux only")


# A test that hangs (a child process waited on for ever, a lock never released) ends the run after
# this many seconds with every thread's traceback, instead of running into CI's limit with nothing
# said. faulthandler's watchdog is a C thread: it fires even while a Numba kernel holds the GIL.
# The slowest test took 8 s with a warm cache (2026-11-24); 0 turns the guard off. A debugger
# (--pdb, breakpoint()) turns it off for the test it stops in.
TEST_TIMEOUT = 300.0
_stderr_fd = None


def _test_timeout():
    text = os.environ.get("NBNET_TEST_TIMEOUT", "300")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise pytest.UsageError(f"NBNET_TEST_TIMEOUT={text!r}: give the seconds a test may run, or 0 for no limit")
    return seconds


def pytest_configure(config):
    global _stderr_fd, TEST_TIMEOUT
    TEST_TIMEOUT = _test_timeout()
    # pytest captures fd 2 inside each test; the traceback must reach the real stderr
    _stderr_fd = os.dup(2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if TEST_TIMEOUT > 0:
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True, file=_stderr_fd)
    try:
        yield
    finally:
        if TEST_TIMEOUT > 0:
            faulthandler.cancel_dump_traceback_later()


def pytest_enter_pdb(config, pdb):
    """A debugger entered (--pdb, breakpoint()) may stay as long as its user: no guard there."""
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def data_dir(name):
    """Folder of a real dataset in ../shared/data (or $NBNET_DATA_DIR), or skip the test."""
    base = Path(os.environ.get("NBNET_DATA_DIR", ROOT.parent / "shared" / "data"))
    folder = base / name
    if not (folder / "train-images-idx3-ubyte.gz").exists() and not (
        folder / "train-images-idx3-ubyte"
    ).exists():
        pytest.skip(f"{name} data not found in {base}")
    return folder
