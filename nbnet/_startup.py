"""Signals and settings while the `nbnet` command starts. Imports only the standard library (and
Numba for its last check, numba_disable_jit_fault): it runs first, before NumPy and Numba load (about half a second), so that a Ctrl-C
or SIGTERM then ends the command with one line instead of a traceback, and so does an environment
variable that importing nbnet would refuse. nbnet.cli takes over once it runs."""

import functools
import os
import re
import signal
import sys
import warnings


def _end(signum, frame):
    try:
        os.write(2, b"Error: interrupted\n" if signum == signal.SIGINT else b"Error: terminated\n")
    except OSError:  # stderr on a terminal that closed (SIGHUP): EIO
        pass
    os._exit(128 + signum)  # nothing to clean up yet: no file is open for writing


def say(line):
    """`line` and a newline on stderr, a character its encoding lacks written as a \\u escape, as
    Python writes a traceback there: a cp1252 stderr on Windows (redirected, or strict by
    PYTHONIOENCODING) has no ≥, × or a Cyrillic path's letters, and a strict one raised
    UnicodeEncodeError instead of the Error line. Through sys.stderr, which writes to a Windows
    console as the console reads; os.write(2, line.encode()) gave it UTF-8, shown as cp1252 ('â‰¥').
    Nothing where stderr is closed (2>&-) or refuses (a terminal gone)."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        encoding = getattr(stream, "encoding", None) or "utf-8"
        stream.write(f"{line}\n".encode(encoding, "backslashreplace").decode(encoding))
        stream.flush()
    except (OSError, ValueError, LookupError):  # closed, a terminal gone, an encoding Python lacks
        pass


def module_run(argv):
    """The module that `python [options] -m MODULE` runs, from sys.orig_argv, or None (a script, -c,
    stdin). Interpreter options (-u, -X dev, -W error, -OO, grouped as -uW error) come before -m."""
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-", "--") or not arg.startswith("-"):
            return None
        if arg.startswith("--"):
            if arg == "--check-hash-based-pycs":
                next(args, None)
            continue
        for i, flag in enumerate(arg[1:], 2):
            if flag == "m":
                return arg[i:] or next(args, None)
            if flag == "c":
                return None
            if flag in "XW":  # the option's value: the group's rest, else the next argument
                if not arg[i:]:
                    next(args, None)
                break
    return None


def _is_the_command():
    argv0 = sys.argv[0] if sys.argv else ""
    # On Windows the console script is nbnet.exe, and argv[0] its path (C:\...\Scripts\nbnet.exe) while
    # nbnet imports: pip's launcher takes ".exe" off only after its import of nbnet.cli, when the
    # start-up checks and signal handlers have been passed by.
    name = re.sub(r"(\.exe|-script\.pyw?)\Z", "", os.path.basename(argv0))
    return name == "nbnet" or module_run(getattr(sys, "orig_argv", [])) in ("nbnet", "nbnet.cli")


def caught_signals():
    """The signals the command handles: Ctrl-C, SIGTERM and SIGHUP (a closed terminal, as SIGTERM;
    where it exists), less those ignored when it started, which stay ignored as a shell expects:
    SIGHUP under `nohup`, SIGINT for `nbnet train &` in a script (Python itself leaves that so)."""
    hangup = getattr(signal, "SIGHUP", None)
    return [sig for sig in (signal.SIGINT, signal.SIGTERM, *(() if hangup is None else (hangup,)))
            if signal.getsignal(sig) != signal.SIG_IGN]


def quiet_signals_while_starting():
    if not _is_the_command():
        return
    try:
        for sig in caught_signals():
            signal.signal(sig, _end)
    except ValueError:  # not the main thread: leave signals alone
        pass


SIMD_LAYOUTS = ("avx512", "neon", "avx2", "sse2")  # NBNET_SIMD_LAYOUT's values: see nbnet.simd.layout


def simd_layout():
    """(the layout NBNET_SIMD_LAYOUT names, or "" when it is unset or blank; why it cannot be used,
    or None). Read as NBNET_THREADS is: case and surrounding spaces do not matter."""
    text = os.environ.get("NBNET_SIMD_LAYOUT", "")
    name = text.strip().lower()
    if not name:
        return "", None
    if name not in SIMD_LAYOUTS:
        return name, f"NBNET_SIMD_LAYOUT must be one of {', '.join(SIMD_LAYOUTS)}, got {text[:40]!r}"
    if not os.environ.get("NUMBA_CACHE_DIR"):
        return name, "NBNET_SIMD_LAYOUT needs NUMBA_CACHE_DIR set (its kernels go to a subdirectory there)"
    return name, None


def numba_threads_fault():
    """Why NUMBA_NUM_THREADS cannot be used, or None (unset or a positive integer). Numba reads it
    with int() when it is imported: 0 or less ends the import in a traceback, and text int() refuses
    gives a RuntimeWarning with a traceback, then Numba's default as if it were unset."""
    text = os.environ.get("NUMBA_NUM_THREADS")
    if text is None:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        return f"NUMBA_NUM_THREADS must be a positive number of threads, got {text[:40]!r}"
    return None


def cwd_fault():
    """Why the current folder cannot be used, or None. One deleted while the shell was in it leaves
    no relative path to resolve, and Numba's compiler resolves its sources' (os.path.relpath) as it
    compiles a kernel: a first run (or `nbnet check`) ended in "[Errno 2] No such file or directory"."""
    try:
        os.getcwd()
    except FileNotFoundError:
        return "the current folder no longer exists (it was deleted): cd to one that does"
    return None


NO_JIT = ("NUMBA_DISABLE_JIT is set (in the environment, or as disable_jit in ./.numba_config.yaml): "
          "nbnet's kernels are built from LLVM intrinsics, which run only compiled; unset it (to step through a "
          "kernel in Python, call its py_func: nbnet.cpu.relu_forward.py_func(out, x))")


def numba_disable_jit_fault():
    """NO_JIT where Numba's compiler is off (njit then gives back the Python function, and
    nbnet.simd's intrinsics exist only compiled). Numba's own reading is asked, as it also takes
    NUMBA_DISABLE_JIT from a .numba_config.yaml in the current folder: this imports Numba, whose
    own refusals (num_threads: 0 in that file, say) are one line too, and so is a NUMBA_ variable
    it cannot parse (NUMBA_OPT=9), which it reads as unset after a RuntimeWarning that holds a
    traceback."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="Environment variable '", category=RuntimeWarning)
            from numba.core import config  # noqa: PLC0415
    except RuntimeWarning as e:
        lines = str(e).split("\n")
        said = re.match(r"Environment variable '(\w+)' is defined but its associated value '(.*)' could not", lines[0])
        if said is None:
            return f"Numba cannot start: {' '.join(lines[0].split())}"
        why = next((line.strip() for line in reversed(lines) if line.strip()), "")
        return f"{said[1]}={said[2][:40]!r} is not a value Numba can read ({why}); fix or unset it"
    except Exception as e:  # noqa: BLE001 - whatever stops Numba loading stops the command: say what
        return f"Numba cannot start: {type(e).__name__}: {' '.join(str(e).split())}"
    return NO_JIT if config.DISABLE_JIT else None


def numba_cpu_name_fault():
    """Why NUMBA_CPU_NAME cannot be used, or None (unset, or a CPU this LLVM knows). LLVM's CPU names
    are exact, lower-case: for another (Haswell, a typo) it prints "'Haswell' is not a recognized
    processor for this target (ignoring processor)" each time Numba makes a target machine (a wall
    of them in `nbnet check`) and compiles for the host, and with NUMBA_CPU_FEATURES set it aborts
    the process ("LLVM ERROR: 64-bit code requested on a subtarget that doesn't support it!").
    Imports Numba's settings: call after numba_disable_jit_fault."""
    from numba.core import config  # noqa: PLC0415

    name = config.CPU_NAME
    if name is None or _llvm_knows_cpu(name):
        return None
    hint = f": {name.lower()!r}?" if name != name.lower() else ""
    return (f"NUMBA_CPU_NAME={name[:40]!r} is not a CPU name LLVM knows (names are exact, lower-case{hint}); "
            "fix or unset it")


def numba_cpu_features_fault():
    """Why NUMBA_CPU_FEATURES cannot be used, or None (unset, or every entry a + or - flag). LLVM
    takes the list as it is, comma-separated: an entry without its sign ("avx2"), or one after a
    comma and a space ("+avx2, +fma"), stopped the process on an LLVM assertion as nbnet loaded, with
    nothing said of the variable. (Empty entries LLVM skips.) Imports Numba's settings: call after
    numba_disable_jit_fault."""
    from numba.core import config  # noqa: PLC0415

    text = config.CPU_FEATURES
    bad = None if text is None else next((f for f in text.split(",") if f and f[0] not in "+-"), None)
    if bad is None:
        return None
    return (f"NUMBA_CPU_FEATURES={text[:40]!r}: {bad[:40]!r} is not a feature LLVM takes (each is + or - and a "
            "name, comma-separated without spaces: +avx2,+fma); fix or unset it")


@functools.lru_cache(maxsize=None)
def _llvm_knows_cpu(name):
    """Whether LLVM takes `name` as a CPU: it is asked, and its warning caught from stderr (llvmlite
    gives no list of CPUs). Once a name: the command asks before nbnet loads, and simd again when
    it does (foreign_code)."""
    import tempfile  # noqa: PLC0415

    import llvmlite.binding as llb  # noqa: PLC0415

    llb.initialize_native_target()
    target = llb.Target.from_default_triple()
    with tempfile.TemporaryFile() as said:
        if sys.stderr is not None:
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 to catch LLVM's warning on (2>&-, where the file above did not take
            # that number): the name is let be
            return True
        os.dup2(said.fileno(), 2)
        try:
            target.create_target_machine(cpu=name, features="")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        said.seek(0)
        return b"not a recognized processor" not in said.read()


NUMBA_YAML_UNREAD = "./.numba_config.yaml is ignored: Numba reads it with pyyaml, which is not installed"


def numba_yaml_unread():
    """NUMBA_YAML_UNREAD where Numba will find ./.numba_config.yaml and not read it (pyyaml does
    not import), else None; Numba's own warning is then filtered out. Numba gives it each time it
    reads its settings: as numba and numba-cuda load, and again for every function it compiles
    (its compiler re-emits the warnings it caught, with no registry to remember them; a "once"
    filter does not hold across that), so import nbnet and a first kernel printed it 8 times or
    more. Appended, so that a filter of the user's own (-W always, say) still comes first."""
    if not os.path.isfile(".numba_config.yaml"):
        return None
    try:
        import yaml  # noqa: F401, PLC0415 - Numba's own test: an import that works
    except ImportError:
        warnings.filterwarnings("ignore", message="A Numba config file is found but YAML parsing",
                                category=UserWarning, append=True)
        return NUMBA_YAML_UNREAD
    return None


def warn_numba_yaml_unread():
    """import nbnet outside the command: Numba's warning about ./.numba_config.yaml, once."""
    if not _is_the_command():  # the command said it in one line (refuse_bad_environment)
        why = numba_yaml_unread()
        if why is not None:
            warnings.warn(why, UserWarning, stacklevel=2)


def refuse_bad_environment(meet=None):
    """In the `nbnet` command: one Error line and exit 2 for a setting that importing nbnet refuses,
    or that Numba's import would turn into a traceback or a warning. meet(why) first: in a process of
    an MPI job, nbnet.dist.refuse_in_job (given by nbnet/__init__.py: this module
    is below the ones dist imports)."""
    if not _is_the_command():
        return
    unread = numba_yaml_unread()  # said after the checks, so that a refusal is still one line
    # In this order: Numba is imported only once NUMBA_NUM_THREADS lets it load.
    for fault in (cwd_fault, lambda: simd_layout()[1], numba_threads_fault, numba_disable_jit_fault,
                  numba_cpu_features_fault, numba_cpu_name_fault):
        why = fault()
        if why is not None:
            if meet is not None:
                meet(why)
            say(f"Error: {why}")
            sys.exit(2)
    if unread is not None:
        say(f"Warning: {unread}")
