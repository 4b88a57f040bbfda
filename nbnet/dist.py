"""Data-parallel training over MPI: `mpiexec -n N nbnet train ...`, or from Python
`nb.train(..., comm=MPI.COMM_WORLD)` (extra `nbnet[mpi]`: mpi4py and mpich).

Every process holds the whole model and the whole data set, walks the same global order of rows,
and takes its own contiguous share of every global batch (`nbnet.data.share`). Its loss is the mean
over its k_local rows, so it scales its gradient by k_local / k_global: the sum over processes, one
Allreduce over the packed gradient buffer per step, is then the gradient of the global-batch mean,
and every process applies the same optimizer step to the same weights. A second Allreduce of four
numbers per step (loss·k, correct, k, and the Ctrl-C request) keeps the metrics global and the
stop/diverge decisions the same on every process, so no process is left waiting for another.

`Single` is the one-process stand-in (every collective the identity), so the training loop has one
code path. mpi4py is imported only when this process was started by an MPI launcher with more
than one process, or when a communicator is passed in: plain `nbnet train` never pays for it.

Errors (see `fail`): before training starts, the processes agree (a bounded collective) and
process 0 prints the first one once; all exit with its code. During training, a process that
raises prints its `Error:` line and aborts the whole job (MPI_Abort): never a hang.
"""

import math
import os
import stat
import sys
import time
import zlib

import numpy as np

from ._startup import say

# What MPI launchers put in each process's environment: MPICH/Intel (hydra), Open MPI, MVAPICH.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")

# A process that fails alone waits this long for process 0 to abort the job first (so an error
# that every process meets is printed once, by process 0) before it prints and aborts itself.
GRACE_SECONDS = 1.5
ABORT_PAUSE_SECONDS = 0.5  # < GRACE_SECONDS, with a margin: process 0 still aborts first
_MESSAGE_BYTES = 1024  # one error message per process in the start-of-training agreement
MIN_TIMEOUT = 1.0  # NBNET_MPI_TIMEOUT's least: a step's Allreduce waits milliseconds for a busy process
OTHER_COMMAND = -1  # the meeting's code of a process that runs a command other than train (see run_here)


def _env_int(names, default):
    for name in names:
        value = os.environ.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                pass
    return default


# A fresh MPI job started from inside a process (a script that runs `mpiexec`, a test) must not
# inherit what its own launcher set: the rank, size and contact variables below would make the new
# job's processes think they belong to the old one. The user's own MPI settings stay: Open MPI's
# OMPI_MCA_* parameters and OMPI_ALLOW_RUN_AS_ROOT* (a container run as root needs them: without
# them mpiexec refuses to start, and a singleton looks for ssh to start its daemon).
_JOB_PREFIXES = ("PMI_", "PMIX_", "MPI_LOCAL", "OMPI_", "MV2_COMM_WORLD_", "HYDI_")
_USER_SETTINGS = ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM")


def launch_env(environ=None):
    """A copy of the environment (os.environ by default) for starting a new MPI job from this
    process: outside a job, unchanged; inside one (a launcher's size or rank variable is set),
    without the launcher's per-job variables but with the user's MPI settings."""
    env = dict(os.environ if environ is None else environ)
    if not any(name in env for name in _SIZE_VARS + _RANK_VARS):
        return env
    return {k: v for k, v in env.items() if k in _USER_SETTINGS or not k.startswith(_JOB_PREFIXES)}


def _inherited():
    """Whether MPICH's variables came to this process from an MPI process that started it as a
    program of its own (a script under mpiexec that runs subprocess.run(["nbnet", ...])): the
    launcher hands each of its processes a socket, PMI_FD, which subprocess does not pass on. Such
    a process is no member of the job: its MPI_Init failed in a wall of MPICH's errors."""
    fd = os.environ.get("PMI_FD")
    if fd is None:
        return False
    try:
        return not stat.S_ISSOCK(os.fstat(int(fd)).st_mode)
    except (ValueError, OSError):
        return True


def launched_size():
    """How many processes the MPI launcher started (1 when not launched by one)."""
    return 1 if _inherited() else max(1, _env_int(_SIZE_VARS, 1))


def launched_rank():
    return 0 if _inherited() else _env_int(_RANK_VARS, 0)


def local_size_rank():
    """(processes on this machine, this one's index among them), from the launcher."""
    return max(1, _env_int(_LOCAL_SIZE_VARS, launched_size())), _env_int(_LOCAL_RANK_VARS, launched_rank())


def setup_timeout():
    """Seconds a process waits for the slowest one, at the start of training and in each step,
    before it decides that one is stuck and aborts the job (NBNET_MPI_TIMEOUT, default 600).
    A value that is not a number of seconds >= MIN_TIMEOUT is a ValueError (one Error: line), not a
    silent default: a typo must not turn a 10 s limit into 10 minutes; and 1e-300 (any tiny value)
    aborted a healthy job at the first step whose slowest process was not there at once."""
    text = os.environ.get("NBNET_MPI_TIMEOUT", "600")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (MIN_TIMEOUT <= value < math.inf):
        raise ValueError(f"NBNET_MPI_TIMEOUT must be a number of seconds >= {MIN_TIMEOUT:g}, got {text!r}")
    return value


def mpi_status():
    """One line for `nbnet info`: whether mpi4py imports, and the MPI library's version."""
    try:
        import mpi4py  # noqa: PLC0415
        from mpi4py import MPI  # noqa: PLC0415
    except Exception as e:  # noqa: BLE001 - any failure means "not usable", and says why
        why = "not installed" if isinstance(e, ModuleNotFoundError) else " ".join(str(e).split())
        return f"not available (mpi4py {why}; pip install 'nbnet[mpi]')"
    # Open MPI's version string ends in a NUL byte, which str.split() keeps (seen on the H100 image)
    library = " ".join(MPI.Get_library_version().replace("\0", " ").strip().splitlines()[0].split())
    return f"mpi4py {mpi4py.__version__}, {library}; {launched_size()} process(es) launched"


class Single:
    """One process: the identity for every collective."""

    rank = 0
    size = 1
    setup_done = True

    def sums(self, *values):
        return values

    def step_sums(self, loss_sum, correct, rows, stop):
        return loss_sum, correct, rows, stop

    def allreduce_grad(self, params, scale):
        pass

    def agree_setup(self, fingerprint=""):
        pass

    def agree(self, fingerprint):
        pass


class MPIComm:
    """An mpi4py communicator with the few collectives training needs."""

    def __init__(self, comm, timeout=None):
        from mpi4py import MPI  # noqa: PLC0415

        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.setup_done = False
        self._sums = np.zeros(8, np.float64)
        self._staging = None  # host buffer for gradients that are not one packed host array
        self._fault = _fault_plan(self.rank)
        self._calls = 0
        self._timeout = setup_timeout() if timeout is None else timeout  # checked once, when the job starts

    def step_sums(self, loss_sum, correct, rows, stop):
        """A training step's (Σ loss·rows, Σ correct, Σ rows, any process asked to stop)."""
        values = (loss_sum, correct, rows, stop)
        if self._fault is not None:
            self._calls += 1
            if self._calls == self._fault[0]:
                values = _inject(self._fault[1], values)
        loss_sum, correct, rows, stop = self.sums(*values)
        return loss_sum, correct, rows, stop > 0

    def sums(self, *values):
        """Each value summed over all processes (as float64: counts stay exact below 2**53)."""
        buf = self._sums[: len(values)]
        buf[:] = values
        # Where processes meet after computing on their own (a step's backward, an evaluation):
        # bounded, so that one stuck process cannot leave the others waiting forever. The
        # gradient Allreduce right after it finds every process there.
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM))
        return tuple(float(v) for v in buf)

    def _wait(self, request):
        if request.Test():
            return
        timeout = self._timeout
        start = time.monotonic()
        deadline = start + timeout
        while not request.Test():
            # Poll at full speed for the first millisecond (a step's peers are usually that
            # close), then sleep between polls: a process waiting for a slower one must not take
            # a core from it, nor from whatever else runs on the machine.
            now = time.monotonic()
            if now - start > 0.001:
                time.sleep(0.0002)
            if now > deadline:
                if self.rank != 0:
                    time.sleep(GRACE_SECONDS)  # process 0, if it is waiting too, speaks for all
                who = "" if self.rank == 0 else f"process {self.rank}: "
                _print_error(f"{who}another process did not reach the end of the step within {timeout:g} s "
                             "(NBNET_MPI_TIMEOUT): it is stuck; ending the job")
                self.abort(1)

    def allreduce_grad(self, params, scale):
        """grad ← Σ over processes of scale·grad, in place, for every parameter: one Allreduce
        over the packed buffer (a model on the GPU goes through one host buffer)."""
        from .optim import one_flat  # noqa: PLC0415

        grads = [p.grad for p in params]
        flat = one_flat(grads)
        if flat is not None and not isinstance(flat, np.ndarray):
            # Packed on the GPU (model.to("cuda")): one device view, which MPI and *= cannot take
            # as host memory; it goes through the host buffer as one array, one copy each way.
            grads, flat = [flat], None
        if flat is None:
            flat = self._stage_in(grads)
        if scale != 1:
            flat *= scale
        self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
        if flat is self._staging:
            self._stage_out(grads)

    def _stage_in(self, grads):
        total = sum(g.size for g in grads)
        if self._staging is None or self._staging.size != total or self._staging.dtype != grads[0].dtype:
            self._staging = np.empty(total, grads[0].dtype)
        start = 0
        for g in grads:
            view = self._staging[start : start + g.size].reshape(g.shape)
            if isinstance(g, np.ndarray):
                view[...] = g
            else:
                g.copy_to_host(view)
            start += g.size
        return self._staging

    def _stage_out(self, grads):
        start = 0
        for g in grads:
            view = self._staging[start : start + g.size].reshape(g.shape)
            if isinstance(g, np.ndarray):
                g[...] = view
            else:
                g.copy_to_device(view)
            start += g.size

    # -- errors --------------------------------------------------------------------------------

    def agree_setup(self, fingerprint=""):
        """The start-of-training meeting: returns when every process got here with the same
        fingerprint (the options, data shapes and initial weights); otherwise process 0 prints
        one `Error:` line and every process exits non-zero."""
        self._meet(0, fingerprint)

    def agree(self, fingerprint):
        """nb.train(comm=...)'s meeting: returns when every process has the same fingerprint, else
        raises ValueError on every process (all see every fingerprint, so none is left waiting)."""
        _, texts = self._exchange(0, fingerprint)
        odd = next((r for r in range(self.size) if texts[r] != texts[0]), None)
        if odd is not None:
            differs = self._what_differs(fingerprint, texts, odd)
            raise ValueError(f"nb.train: process {odd} does not train what process 0 does ({differs}): "
                             "every process needs the same arguments, data and weights")

    def _meet(self, code, text):
        """Exchange (code, text) with every process, bounded by NBNET_MPI_TIMEOUT; exits unless
        every code is 0 and every text equal."""
        self.setup_done = True  # from here on an error (even a Ctrl-C while waiting) aborts: one meeting only
        codes, texts = self._exchange(code, text)
        failed = [r for r in range(self.size) if codes[r] > 0]
        if failed:
            first = failed[0]
            if self.rank == 0:
                _print_error(texts[first] if first == 0 else f"process {first}: {texts[first]}")
            sys.exit(codes[first])
        other = [r for r in range(self.size) if codes[r] == OTHER_COMMAND]
        if other:
            self._other_commands(codes, texts, other)
            return
        if any(t != texts[0] for t in texts):
            odd = next(r for r in range(self.size) if texts[r] != texts[0])
            differs = self._what_differs(text, texts, odd)  # every process: it is a collective
            if self.rank == 0:
                _print_error(f"process {odd} does not train what process 0 does ({differs}): every process "
                             "needs the same options, data and checkpoint")
            sys.exit(1)

    def _other_commands(self, codes, texts, other):
        """The meeting's end where processes run a command other than `train` (their text: the
        command line): returns where none trains and all run the same command; otherwise process
        0 says which process runs what, and every process exits 2."""
        if len(other) == self.size:
            odd = next((r for r in range(self.size) if texts[r] != texts[0]), None)
            if odd is None:
                return
            why = (f"process {odd} runs `nbnet {texts[odd]}`, process 0 `nbnet {texts[0]}`: under mpiexec, "
                   "every process runs the same command (one other than train runs once, on process 0)")
        else:
            trains = next(r for r in range(self.size) if codes[r] == 0)
            why = (f"process {other[0]} runs `nbnet {texts[other[0]]}` beside process {trains}'s `nbnet train`: "
                   "every process of an MPI training job runs nbnet train")
        if self.rank == 0:
            _print_error(why)
        sys.exit(2)

    def _what_differs(self, mine, texts, odd):
        """What process `odd` trains otherwise than process 0, named: "--seed 1 (process 0: 0); ...".
        The texts hold only CRCs of the parts: every process, having seen all the texts, sends its
        own values of the parts that differ (a second exchange, bounded as the first)."""
        theirs, ours = _parts(texts[odd]), _parts(texts[0])
        names = [n for n in dict.fromkeys([*ours, *theirs]) if n != "all" and ours.get(n) != theirs.get(n)]
        shown = getattr(mine, "shown", {})
        # At most _SHOWN_PARTS values each way, so that they fit the exchange's message (the rest
        # were cut off it without a word): the others by name.
        sent, more = names[:_SHOWN_PARTS], names[_SHOWN_PARTS:]
        _, values = self._exchange(0, "\n".join(shown.get(n, (n, "none"))[1][:_SHOWN_CHARS] for n in sent))
        pairs = zip(sent, values[odd].split("\n"), values[0].split("\n"))
        named = "; ".join(f"{shown.get(n, (n,))[0]} {a} (process 0: {b})" for n, a, b in pairs)
        if more:
            named += f"; and {len(more)} more: " + ", ".join(shown.get(n, (n,))[0] for n in more)
        return named or f"{texts[odd]}; process 0: {texts[0]}"

    def _exchange(self, code, text):
        """(codes, texts): every process's (code, text), bounded by NBNET_MPI_TIMEOUT. A code: 0
        (training, the text a fingerprint), an exit code > 0 (the text an error), or OTHER_COMMAND."""
        mine = np.zeros(_MESSAGE_BYTES, np.uint8)
        raw = text.encode("utf-8", "replace")[: _MESSAGE_BYTES - 8]
        mine[:4] = np.frombuffer(np.int32(code).tobytes(), np.uint8)
        mine[4:8] = np.frombuffer(np.int32(len(raw)).tobytes(), np.uint8)
        mine[8 : 8 + len(raw)] = np.frombuffer(raw, np.uint8)
        everyone = np.zeros((self.size, _MESSAGE_BYTES), np.uint8)
        request = self.comm.Iallgather(mine, everyone)
        deadline = time.monotonic() + self._timeout
        while not request.Test():
            if time.monotonic() > deadline:
                if self.rank != 0:
                    time.sleep(GRACE_SECONDS)
                who = "" if self.rank == 0 else f"process {self.rank}: "
                _print_error(f"{who}not every process reached the start of training within {self._timeout:g} s "
                             "(NBNET_MPI_TIMEOUT)")
                self.abort(1)
            time.sleep(0.002)
        codes = [int(np.frombuffer(row[:4].tobytes(), np.int32)[0]) for row in everyone]
        texts = [row[8 : 8 + int(np.frombuffer(row[4:8].tobytes(), np.int32)[0])].tobytes().decode("utf-8", "replace")
                 for row in everyone]
        return codes, texts

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        # The launcher forwards a process's output asynchronously and stops forwarding when the
        # job is aborted: without a pause the Error line just written was sometimes lost on a
        # loaded machine (the job ended with exit 1 and an empty stderr).
        time.sleep(ABORT_PAUSE_SECONDS)
        self.comm.Abort(code)
        os._exit(code)  # MPICH's Abort may return to the caller before the launcher ends this process


def _fault_plan(rank):
    """For the tests: NBNET_MPI_FAULT=RANK:STEP:KIND makes process RANK, in training step STEP
    (1-based, counted from the start of this run), raise a ValueError (raise), die at once without
    a word (die), stop responding (hang), see a NaN loss (nan), or get a Ctrl-C (sigint) or a SIGTERM
    (sigterm) on its own."""
    spec = os.environ.get("NBNET_MPI_FAULT")
    if not spec:
        return None
    try:
        r, step, kind = spec.split(":")
        return (int(step), kind) if int(r) == rank else None
    except ValueError:
        return None


def _inject(kind, values):
    if kind == "die":
        os._exit(7)
    if kind == "hang":
        while True:
            time.sleep(1)
    if kind == "nan":
        return (float("nan"), *values[1:])
    if kind in ("sigint", "sigterm"):
        import signal  # noqa: PLC0415

        # raise_signal, not os.kill(os.getpid(), ...): on Windows os.kill ends the process
        # (TerminateProcess) for any signal but its console events, and no handler ran.
        signal.raise_signal(getattr(signal, kind.upper()))  # the handler runs before the next Python line
        return values
    raise ValueError("injected fault (NBNET_MPI_FAULT)")


_world = None


def world():
    """The job's communicator: MPIComm(COMM_WORLD) when an MPI launcher started more than one
    process, else Single(). Raises RuntimeError when launched that way without mpi4py."""
    global _world
    if _world is None:
        if launched_size() > 1:
            try:
                with _signals_end_the_process():
                    from mpi4py import MPI  # noqa: PLC0415
            except ImportError:
                raise RuntimeError(
                    f"started by an MPI launcher as {launched_size()} processes, but mpi4py is not installed: "
                    "pip install 'nbnet[mpi]'"
                ) from None
            try:
                timeout, bad = setup_timeout(), None
            except ValueError as e:
                # A communicator all the same, bounded by the default: its start-of-training meeting
                # is where this process says so. Without one it ended alone (in silence on a process
                # other than 0), and the others waited out their own timeout, 600 s by default.
                timeout, bad = 600.0, str(e)
            _world = MPIComm(MPI.COMM_WORLD, timeout)
            _world.bad_setting = bad
        else:
            _world = Single()
    if getattr(_world, "bad_setting", None) is not None:
        raise ValueError(_world.bad_setting)
    return _world


class _signals_end_the_process:
    """While MPI_Init runs: Ctrl-C, SIGTERM and SIGHUP end the process (their default), the
    command's handlers put back after. MPI_Init waits in C, holding the GIL, until every process of
    the job has called it, so a Python handler never ran: a job of which one process exited without
    MPI (a program that is not nbnet, in `mpiexec ... : -n 1 prog`) ignored mpiexec's Ctrl-C and
    `timeout`'s SIGTERM alike, only SIGKILL ended it. Nothing is open for writing yet."""

    def __enter__(self):
        import signal  # noqa: PLC0415

        self.old = {}
        try:
            for name in ("SIGINT", "SIGTERM", "SIGHUP"):
                sig = getattr(signal, name, None)
                if sig is not None and signal.getsignal(sig) not in (signal.SIG_IGN, None):
                    self.old[sig] = signal.signal(sig, signal.SIG_DFL)
        except ValueError:  # not the main thread: signals are not ours to change
            pass
        return self

    def __exit__(self, *exc):
        import signal  # noqa: PLC0415

        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def training_job(args):
    """Whether the command's arguments (sys.argv[1:]) start a training job of more than one process
    (`train --help` prints, as any other command: see run_here)."""
    args = list(args)
    return launched_size() > 1 and args[:1] == ["train"] and not {"-h", "--help"} & set(args)


def run_here(args):
    """In a process of an MPI launch of more than one (size > 1) whose command is not a training
    job: whether this process runs it. Any command but `train` runs once, on process 0, and the
    others exit quietly: every process printed `nbnet info` (and interleaved predict's output on
    one stdout), and each wrote evaluate's and predict's --output. Every process meets the others
    first (with mpi4py), at the meeting where training processes start (MPIComm._meet): beside a
    training job, a process that ended without MPI left the trainers waiting in MPI_Init for ever;
    now process 0 says which process runs what, once, and the job ends with exit code 2, as it
    does where processes run different commands (`mpiexec -n 1 nbnet predict a.npz : -n 1 nbnet
    predict b.npz` would have done a's alone)."""
    global _world
    try:
        world()
    except RuntimeError:  # no mpi4py: nothing to meet; training cannot run here either
        return launched_rank() == 0
    except ValueError:  # a bad NBNET_MPI_TIMEOUT is a training process's error, not this command's
        pass
    import shlex  # noqa: PLC0415

    _world._meet(OTHER_COMMAND, " ".join(map(shlex.quote, args))[:200])
    # Process 0 goes on as a one-process command: its errors end it alone, with no MPI_Abort of
    # the others (which have exited), as they would without mpiexec.
    _world = Single()
    return launched_rank() == 0


def refuse_in_job(why):
    """In one process of an MPI launch of more than one (`mpiexec -n N nbnet ...`), end with `why`
    as every error before training ends: MPICH leaves the job's other processes waiting in MPI_Init
    for ever once one has exited without it, and a setting refused before nbnet loads may be this
    process's alone (another machine's, or `mpiexec ... : -n 1 env NUMBA_NUM_THREADS=...`). Meets
    the others at the start-of-training meeting (where processes that run another command meet
    too, run_here), where process 0 prints the line; returns where none can be had."""
    if launched_size() == 1:
        return
    try:
        world()
    except RuntimeError:  # no mpi4py: no meeting to be had
        return
    except ValueError:  # a bad NBNET_MPI_TIMEOUT as well: the communicator is made all the same
        pass
    fail(why, 2)


def wrap(comm):
    """What `train(comm=...)` accepts: None (one process), an mpi4py communicator, or one of ours."""
    if comm is None:
        return Single()
    if isinstance(comm, (Single, MPIComm)):
        return comm
    if comm.Get_size() == 1:
        return Single()
    wrapped = MPIComm(comm)
    wrapped.setup_done = True  # a Python caller handles its own errors (see examples/mpi_train.py)
    return wrapped


def _crc(arrays):
    value = 0
    for arr in arrays:
        value = zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1), value)
    return f"{value:08x}"


def data_fingerprint(data):
    """A short string naming the data (x, y, x, y, ...; a missing pair None): shapes and CRCs of
    the features and of the labels. The features count too: a machine whose copy of a file differs
    in its pixels alone (same path, same labels) trained another problem silently. (A CRC of
    MNIST's 188 MB of float32 features takes ~0.1 s.) A checkpoint keeps it, so that --resume on
    a file that changed since is refused."""
    from .layers import to_host  # noqa: PLC0415

    data = [None if a is None else to_host(a) for a in data]
    shapes = "/".join("-" if a is None else "x".join(map(str, a.shape)) for a in data)
    features, labels = [a for a in data[0::2] if a is not None], [a for a in data[1::2] if a is not None]
    return f"data {shapes} features {_crc(features)} labels {_crc(labels)}"


class Fingerprint(str):
    """What fingerprint() gives: the text processes compare, `all=CRC` of everything then
    `name=CRC` of each part (each option, the data, the weights); `shown` holds each part as an
    error names it, {name: (label, value)}, so that processes that disagree can say in what."""

    shown = {}


_SHOWN_CHARS = 200  # of a part's value, in the error that names it
_SHOWN_PARTS = 4  # parts whose values it shows: 4 x (200 + 1) bytes fit the exchange's message


def fingerprint(options, data, params, label=str):
    """A short text (a Fingerprint) that two processes share when their options, data and weights
    are the same: what agree_setup and agree compare. label(option name): how errors name an
    option (the command line's --batch-size, nb.train's batch_size)."""
    from .layers import to_host  # noqa: PLC0415

    shown = {name: (label(name), repr(value)) for name, value in sorted(options.items())}
    shown["data"] = ("data", data_fingerprint(data).removeprefix("data "))
    shown["weights"] = ("weights", _crc([to_host(p.data) for p in params]))
    crcs = {name: _crc([np.frombuffer(value.encode(), np.uint8)]) for name, (_, value) in shown.items()}
    # `all` first: a text cut short by the exchange (_MESSAGE_BYTES) still differs where any part does
    text = Fingerprint(" ".join([f"all={_crc([np.frombuffer(''.join(crcs.values()).encode(), np.uint8)])}",
                                 *(f"{name}={crc}" for name, crc in crcs.items())]))
    text.shown = shown
    return text


def _parts(text):
    """{name: CRC} of a Fingerprint's text."""
    return dict(word.split("=", 1) for word in text.split(" ") if "=" in word)


def _print_error(message, before=""):
    say(f"{before}Error: {message}")


def fail(message, code, agreed=False, before=""):
    """End this process for an error, printing `Error: message` once for the whole job (`before`,
    e.g. a bug's traceback, printed just ahead of it).

    Not launched by MPI: print and exit. Before training started (world() created, agree_setup not
    yet passed): meet the other processes; process 0 prints the first error. `agreed`: every
    process raised it at the same point (divergence): process 0 prints, all exit. Otherwise this
    process may be alone with it: wait GRACE_SECONDS for process 0 to end the job, then print and
    abort every process."""
    comm = _world
    if comm is None or comm.size == 1:
        if launched_rank() == 0:
            _print_error(message, before)
        sys.exit(code)
    if not comm.setup_done:
        comm._meet(code or 1, message)
    if agreed:
        if comm.rank == 0:
            _print_error(message, before)
        sys.exit(code)
    if comm.rank != 0:
        time.sleep(GRACE_SECONDS)
        message = f"process {comm.rank}: {message}"
    _print_error(message, before)
    comm.abort(code or 1)
