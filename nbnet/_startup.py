"""Signals while the `nbnet` command starts. Imports only the standard library: it runs first,
before NumPy and Numba load (about half a second), so that a Ctrl-C or SIGTERM then ends the
command with one line instead of a traceback. nbnet.cli takes over once it runs."""

import os
import signal
import sys


def _end(signum, frame):
    os.write(2, b"Error: interrupted\n" if signum == signal.SIGINT else b"Error: terminated\n")
    os._exit(128 + signum)  # nothing to clean up yet: no file is open for writing


def _is_the_command():
    argv0 = sys.argv[0] if sys.argv else ""
    orig = getattr(sys, "orig_argv", [])
    return os.path.basename(argv0) == "nbnet" or orig[1:3] in (["-m", "nbnet"], ["-m", "nbnet.cli"])


def quiet_signals_while_starting():
    if not _is_the_command():
        return
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _end)
    except ValueError:  # not the main thread: leave signals alone
        pass
