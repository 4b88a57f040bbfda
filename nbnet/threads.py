"""How many threads nbnet's parallel kernels use: all the user allows, fewer while other processes
keep the cores busy.

Why: a parallel kernel ends when its last thread does. A thread that shares its core with another
process waits for its turn (milliseconds), and the whole step waits with it. Measured on 2 cores
(Zen 3, profiling/load.py, batch 128, one core held by a busy loop): 2 threads took 1.11x the time
of 1 thread on the same loaded machine, and 1.74x their quiet time; 1 thread ran at its quiet speed.
So while the cores are busy elsewhere, nbnet uses only the ones that are free.

How: every POLL seconds, during a kernel call that would run in parallel, nbnet reads how much
CPU time this process's cores gave to anything (/proc/stat, Linux), subtracts what this process
used (os.times), and uses floor(cores - others + MARGIN) threads, at least 1 and at most the
limit: NUMBA_NUM_THREADS, or what numba.set_num_threads / `nbnet train --threads` last set (both
are read as the user's limit). On 1 thread every Kernel runs its serial twin. Results do not
change: every kernel gives the same bits on any number of threads (tests/test_twins.py).

`fix(n)` turns this off and uses n threads (`--threads N` does); `auto()` turns it back on; the
environment variable NBNET_THREADS=fixed starts with it off. Without /proc/stat (macOS, Windows)
nbnet always uses the limit.

How waiting threads wait (libgomp, Numba's default "omp" threading layer, reads this once, when
Numba starts its threads: at the first parallel kernel call). libgomp's own default spins ~300,000
iterations (~3 ms) before a thread sleeps; a thread that spins while another process needs the core
takes it from that process, and 2-thread training under load ran 3-5x slower than quiet. So nbnet
sets OMP_WAIT_POLICY=passive, and, while it adapts the thread count (so that under load it runs
on one thread and nothing spins), a short spin, GOMP_SPINCOUNT=10000 (~0.1 ms): a thread that
finishes one parallel kernel catches the next one of the same step without going to sleep and
being woken (10-15 µs). Measured on 2 quiet cores (Zen 3, a training step, 3 interleaved runs),
spin 10000 over passive: batch 32 0.79x, 128 0.94x, 512 1.00x; 1000 already gives 0.82x at batch
32. With a fixed count on a loaded machine the same spin cost 2.2-4x (batch 128, 32) against 1.1-1.2x
passive, so fix() drops it when it comes before Numba started its threads. A value the user set
for either variable wins, and then nbnet sets neither. nbnet's values are in os.environ only while
Numba starts its threads (nbnet wraps the function of Numba's that does), so that the processes
the user starts before or after (a PyTorch or OpenBLAS program, whose OpenMP would wait passively
too) inherit the environment they had; `waiting()` keeps what the threads started with, for
`nbnet check`.

A process forked after Numba started GNU OpenMP (the "omp" layer on Linux: multiprocessing's
default start there, a Pool made after training) cannot run a parallel kernel: libgomp's threads
do not come along, and Numba ends such a child with SIGTERM at its first one. There every kernel
runs its serial twin (the same bits).

Numba's "workqueue" layer (where neither TBB nor OpenMP loads, or NUMBA_THREADING_LAYER says so)
is not threadsafe: two Python threads in parallel kernels at once abort the whole process. Under
it one parallel kernel runs at a time (`alone`), and a thread that finds one running runs the
serial twin meanwhile (the same bits).
"""

import contextlib
import math
import os
import sys
import threading
import time

import numba
import numba.np.ufunc.parallel as _numba_parallel
import numpy as np

POLL = 0.5  # seconds between looks: /proc/stat counts in 10 ms ticks, so a look needs ~0.1 s or more
FIRST_POLL = 0.1  # the first look comes sooner, so a run that starts on a loaded machine adapts in its first steps
MARGIN = 0.25  # a core counts as free while others use less than 0.75 of it

_limit = None  # the most threads the user allows (None: not read yet)
_applied = None  # the count this module last passed to numba.set_num_threads
_here = threading.local()  # .applied: the count it last passed in this Python thread (see _user_count)
_n = None  # threads in use now
_fixed = None  # whether the count is fixed (None: NBNET_THREADS not read yet)
_next = 0.0  # time.monotonic() of the next look
_last = None  # (wall, busy seconds of our cores, own CPU seconds) at the last look
_others = None  # cores others used at the last look, for describe()
_forked = False  # forked after Numba started GNU OpenMP: serial twins only (see the module docstring)
exclusive = None  # whether the threading layer takes one parallel kernel at a time (None: not read yet)
_launch = threading.Lock()  # held by the thread in a parallel kernel, where `exclusive`
_set_env = {}  # the variables nbnet put in os.environ and their values, while Numba's threads start
_in_effect = None  # OMP_WAIT_POLICY and GOMP_SPINCOUNT as Numba's threads started with them (None: not yet)
_env_lock = threading.RLock()  # held while Numba's threads start with nbnet's values (and _threads_started in that)
_no_spin = False  # fix() came before Numba's threads started: a fixed count sleeps at once
_clock = time.monotonic


def env_fixed():
    """NBNET_THREADS read: "auto" (or unset) adapts to the load, "fixed" does not; else ValueError."""
    text = os.environ.get("NBNET_THREADS", "auto")
    mode = text.strip().lower()
    if mode not in ("auto", "fixed", ""):
        raise ValueError(f"NBNET_THREADS must be auto or fixed, got {text[:40]!r} "
                         "(set the number of threads with NUMBA_NUM_THREADS or --threads)")
    return mode == "fixed"


def _cores():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


SPIN = "10000"


def _set_wait_policy():
    """Set OMP_WAIT_POLICY (and GOMP_SPINCOUNT when adapting) unless the user set either.
    NBNET_WAIT_SET records what nbnet set, so that a child process that inherited them (one
    started while they were set) tells nbnet's values from its user's."""
    current = f"{os.environ.get('OMP_WAIT_POLICY', '')},{os.environ.get('GOMP_SPINCOUNT', '')}"
    if current != "," and current != os.environ.get("NBNET_WAIT_SET"):
        return  # the user's
    try:
        spin = "" if _no_spin or env_fixed() else SPIN
    except ValueError:  # reported when the count is first needed (or by the CLI at start)
        spin = ""
    _wait("passive", spin)


def _wait(policy, spin):
    os.environ["OMP_WAIT_POLICY"] = policy
    if spin:
        os.environ["GOMP_SPINCOUNT"] = spin
    else:
        os.environ.pop("GOMP_SPINCOUNT", None)
    os.environ["NBNET_WAIT_SET"] = f"{policy},{spin}"
    _set_env.clear()
    _set_env.update({name: os.environ[name] for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NBNET_WAIT_SET")
                     if name in os.environ})


def _threads_started(started=True):
    """Numba's threads run (libgomp read the variables when it loaded, LLVM's and Intel's OpenMP
    when Numba set their thread count): note what they started with, and take nbnet's values out
    of os.environ, leaving any the user set since. (started=False: they failed to start.)"""
    global _in_effect
    with _env_lock:
        if _in_effect is not None:
            return
        if started:
            _in_effect = {name: os.environ.get(name, "") for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        for name, value in _set_env.items():
            if os.environ.get(name) == value:
                del os.environ[name]
        _set_env.clear()


def _start_numba_threads():
    """Numba's numba.np.ufunc.parallel._launch_threads, which Numba calls wherever its threads may
    start (its thread count asked or set, a parallel function compiled, loaded from its cache or
    run), whoever asks first: nbnet's values are in os.environ only while it starts them, so that
    no process started before then (a subprocess right after import nbnet) or after inherits them."""
    if _in_effect is not None:
        return _numba_launch()
    with _env_lock:
        if _in_effect is not None:
            return _numba_launch()
        _set_wait_policy()
        try:
            return _numba_launch()
        except ValueError as e:  # no layer loads: say which setting asked for the one missing
            raise ValueError(_no_layer(e)) from e
        finally:
            _threads_started(getattr(_numba_parallel, "_is_initialized", True))


def _no_layer(e):
    """Numba's "No threading layer could be loaded ... Intel TBB is required", saying what asked for
    that layer: NUMBA_THREADING_LAYER (or threading_layer in .numba_config.yaml), which a user may
    have set long ago, or copied from a guide, and need only unset."""
    said, layer = " ".join(str(e).split()), numba.config.THREADING_LAYER
    if layer == "default":
        return said
    return (f"{said} (NUMBA_THREADING_LAYER={layer}, or threading_layer in ./.numba_config.yaml, asks for it; "
            "unset it for the layer Numba finds)")


def waiting():
    """{"OMP_WAIT_POLICY": ..., "GOMP_SPINCOUNT": ...} ("" where unset) as Numba's threads started
    with them, or as they are in os.environ while the threads have not started (nbnet's values
    go there only as they start)."""
    if _in_effect is not None:
        return dict(_in_effect)
    return {name: os.environ.get(name, "") for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}


_numba_launch = getattr(_numba_parallel, "_launch_threads", None)
if _numba_launch is None:  # a Numba without it: nbnet's values from import on, until its first look (_poll)
    _set_wait_policy()
else:
    _numba_parallel._launch_threads = _start_numba_threads
_CORES = _cores()
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_seconds(cores=_CORES, path="/proc/stat"):
    """CPU seconds the given cores have spent on anything since boot (user, nice, system, irq,
    softirq and steal: a hypervisor's steal is a core someone else has), or None where
    /proc/stat cannot be read."""
    if not cores:
        return None
    wanted = {f"cpu{c}" for c in cores}
    total = 0
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.startswith(b"cpu") or not line[3:4].isdigit():
                    continue
                fields = line.split()
                if fields[0].decode() in wanted:
                    v = [int(x) for x in fields[1:9]]
                    total += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    except (OSError, ValueError, IndexError):
        return None
    return total / _TICK


def _own_seconds():
    t = os.times()
    return t.user + t.system


def choose(cores, others, limit):
    """Threads to use with `cores` cores of which others keep `others` busy: the free ones."""
    return max(1, min(limit, math.floor(cores - others + MARGIN)))


def _set(n):
    global _n, _applied
    _n = 1 if _forked else n
    _applied = n
    _apply_here()


def _apply_here():
    if numba.get_num_threads() != _applied:
        numba.set_num_threads(_applied)
    _here.applied = _applied


def _user_count():
    """The count the user set in this Python thread (numba.set_num_threads) since nbnet last set
    it here, or None. Numba's count is per thread, and a thread nbnet never set starts at
    NUMBA_NUM_THREADS: one thread's count is not the user's choice for another."""
    current = numba.get_num_threads()
    return current if current != getattr(_here, "applied", numba.config.NUMBA_NUM_THREADS) else None


def _poll():
    """Look at the load (see the module docstring) and set the thread count."""
    global _limit, _next, _last, _others, _fixed, exclusive
    now = _clock()
    if _fixed is None:
        _fixed = env_fixed()
    current = numba.get_num_threads()  # starts Numba's threads: its layer is known from here
    if _in_effect is None:
        _threads_started()
    if exclusive is None:
        exclusive = numba.threading_layer() == "workqueue"
    user = _user_count()
    if _limit is None or user is not None:  # first call, or the user set a number: their limit
        # _n before _limit: a second thread's first call, between the two, took _limit as a sign
        # that _n was set, and returned None > 1 (TypeError) when its look only took a reading.
        _set(current)
        _limit = current
    busy = None if _fixed else busy_seconds()
    if busy is None:
        _next = now + POLL  # still looks at what the user set
        _set(_limit)
        return
    own = _own_seconds()
    if _last is not None and now - _last[0] > 0:
        wall = now - _last[0]
        _others = max(0.0, (busy - _last[1]) / wall - (own - _last[2]) / wall)
        _set(choose(len(_CORES), _others, _limit))
    _next = now + (FIRST_POLL if _last is None else POLL)
    _last = (now, busy, own)


def _gnu_openmp_started():
    """Whether Numba started its threads on GNU OpenMP (read from Numba's own module state)."""
    layer = sys.modules.get("numba.np.ufunc.parallel")
    omp = sys.modules.get("numba.np.ufunc.omppool")
    return (getattr(layer, "_is_initialized", False) and getattr(layer, "_threading_layer", None) == "omp"
            and getattr(omp, "openmp_vendor", None) == "GNU")


def _after_fork_in_child():
    global _forked, _n, _launch, _env_lock
    if _gnu_openmp_started():
        _forked, _n = True, 1
    _launch = threading.Lock()  # another thread may have held it at the fork, and is not here
    _env_lock = threading.RLock()


def alone(run_parallel, run_serial):
    """Where `exclusive`: run_parallel() unless another thread is in a parallel kernel, run_serial()
    if one is (waiting for it would leave this thread's core idle)."""
    if not _launch.acquire(blocking=False):
        return run_serial()
    try:
        return run_parallel()
    finally:
        _launch.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel():
    """Whether a kernel with enough work should run its parallel twin now (more than one thread)."""
    if _clock() >= _next:
        _poll()
    elif _n > 1 and getattr(_here, "applied", None) != _applied:  # one thread: the serial twin, any count
        _enter()
    return _n > 1


def counts_to_warm():
    """The thread counts whose kernels (serial and parallel twins) this run may ask for, in a change
    of the load: (1, the limit) while the count adapts to it; () where the count in use does not
    change (fixed, a limit of 1, no load to read, a forked child). nbnet.check.compile_kernels
    warms up each, as_if(n)."""
    parallel()  # the limit, and whether the load could be read
    if _fixed or _forked or _limit <= 1 or _last is None or _next == math.inf:
        return ()
    return (1, _limit)


@contextlib.contextmanager
def as_if(n):
    """Kernels choose their twins as if n threads were in use, and the load is not read meanwhile
    (a warm-up that compiles the twins a load change would ask for mid-epoch: counts_to_warm). Numba's
    own count stays as it is: a twin compiles the same for any count, and a parallel one runs on
    fewer threads than its units (optim's lanes, prange) the same bits, only slower."""
    global _n, _next
    parallel()
    saved = _n, _next
    _n, _next = (1 if _forked else n), math.inf
    try:
        yield
    finally:
        _n, _next = saved


def _enter():
    """This Python thread's first kernel, or its first since another thread changed the count:
    Numba's count is per thread, so give it the count in use, or take the one its user set here."""
    global _limit
    user = _user_count()
    if user is not None:
        _limit = user
        _set(user)
    else:
        _apply_here()


def fix(n=None):
    """Use n threads (default: the current limit) whatever the load, until auto()."""
    global _fixed, _next, _limit, _no_spin
    # Checked before anything changes. Numba takes True for 1 thread (fix(True) read as "yes, fix
    # it" ran one thread, silently) and says 'The number of threads must be an integer' of a string.
    # NumPy < 2's np.bool_ has an __index__ (deprecated), which Numba refuses as not an integer.
    if n is not None and (isinstance(n, (bool, np.bool_)) or not isinstance(n, int)
                          and not hasattr(n, "__index__")):
        raise TypeError(f"threads.fix: n must be a whole number of threads, got {n!r}")
    if n is not None and not 1 <= int(n) <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads.fix: n must be in 1..{numba.config.NUMBA_NUM_THREADS} "
                         f"(NUMBA_NUM_THREADS), got {n!r}")
    with _env_lock:  # once Numba's threads started, it would have no effect
        if _in_effect is None:
            _no_spin = True  # a fixed count sleeps at once: read as they start (below, or later)
            if _set_env:  # set from import on (a Numba without _launch_threads)
                _wait("passive", "")
    if n is not None:
        numba.set_num_threads(n)  # raises ValueError outside 1..NUMBA_NUM_THREADS
    # The number now set is the user's even when it equals what this module last set (after a
    # drop to 1 thread under load, `--threads 1` must not read as "unchanged").
    _fixed, _limit, _next = True, numba.get_num_threads(), 0.0
    _set(_limit)
    _poll()


def auto():
    """Adapt the thread count to the load again (the default)."""
    global _fixed, _next, _last
    _fixed, _next, _last = False, 0.0, None


def in_use():
    """The number of threads nbnet's parallel kernels run on now (after parallel())."""
    return _n


def describe():
    """One line for `nbnet check` / `nbnet info`."""
    parallel()
    how = ("serial: forked after GNU OpenMP started" if _forked else
           "fixed" if _fixed else "adaptive: fewer while other processes use the cores"
           if _CORES is not None and busy_seconds() is not None else "fixed (no /proc/stat to read the load from)")
    seen = f", others used {_others:.1f} cores at the last look" if _others is not None and not _fixed else ""
    return f"{_n} of at most {_limit} threads ({how}{seen})"
