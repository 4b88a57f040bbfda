"""nbnet.threads: fewer threads while other processes keep the cores busy, the user's number
otherwise, and the Kernels' choice of twin follows it."""

import os
import subprocess
import sys
import time

import numba
import numpy as np
import pytest

from nbnet import cpu, threads

TWO = numba.config.NUMBA_NUM_THREADS >= 2


@pytest.fixture
def fresh(monkeypatch):
    """The module's state as at import, restored (with Numba's thread count) afterwards."""
    names = ("_limit", "_applied", "_n", "_fixed", "_next", "_last", "_others")
    saved = {name: getattr(threads, name) for name in names}
    before = numba.get_num_threads()
    for name, value in (("_limit", None), ("_applied", None), ("_n", None), ("_fixed", False), ("_next", 0.0),
                        ("_last", None), ("_others", None)):
        setattr(threads, name, value)
    yield threads
    numba.set_num_threads(before)
    for name, value in saved.items():
        setattr(threads, name, value)


@pytest.mark.parametrize("cores,others,limit,expected", [
    (2, 0.0, 2, 2), (2, 0.2, 2, 2), (2, 0.3, 2, 1), (2, 1.0, 2, 1), (2, 2.0, 2, 1),
    (16, 4.0, 16, 12), (16, 4.0, 8, 8), (16, 15.9, 16, 1), (4, 0.0, 1, 1),
])
def test_choose_takes_the_free_cores(cores, others, limit, expected):
    assert threads.choose(cores, others, limit) == expected


def test_busy_seconds_reads_the_given_cores(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  900 0 900 9000 0 0 0 0 0 0\n"
        "cpu0 100 10 20 5000 7 1 2 3 0 0\n"  # busy: user nice system irq softirq steal = 136 (not idle, iowait)
        "cpu1 400 0 0 1000 0 0 0 0 0 0\n"
        "cpu2 1 1 1 1 1 1 1 1 0 0\n"  # 6
        "intr 1 2 3\n"
    )
    tick = threads._TICK
    assert threads.busy_seconds([0], str(stat)) == pytest.approx(136 / tick)
    assert threads.busy_seconds([0, 2], str(stat)) == pytest.approx(142 / tick)
    assert threads.busy_seconds([1], str(stat)) == pytest.approx(400 / tick)
    assert threads.busy_seconds([0], str(tmp_path / "missing")) is None
    stat.write_text("cpu0 x y z\n")
    assert threads.busy_seconds([0], str(stat)) is None
    assert threads.busy_seconds(None, str(stat)) is None
    stat.write_text("cpu1 400 0 0 1000 0 0 0 0 0 0\n")
    monkeypatch.setattr(threads, "_TICK", 50)  # ticks are the kernel's USER_HZ, not always 100
    assert threads.busy_seconds([1], str(stat)) == 8.0


def _fake_machine(monkeypatch, cores):
    """A clock, and /proc/stat and os.times readings that move as `load` says: load["others"]
    cores busy elsewhere, this process using load["own"] cores."""
    load = {"t": 100.0, "busy": 0.0, "own": 0.0, "others_rate": 0.0, "own_rate": 1.0}

    def advance(dt):
        load["t"] += dt
        load["busy"] += dt * (load["others_rate"] + load["own_rate"])
        load["own"] += dt * load["own_rate"]

    monkeypatch.setattr(threads, "_CORES", list(range(cores)))
    monkeypatch.setattr(threads, "_clock", lambda: load["t"])
    monkeypatch.setattr(threads, "busy_seconds", lambda *a: load["busy"])
    monkeypatch.setattr(threads, "_own_seconds", lambda: load["own"])
    return load, advance


@pytest.mark.skipif(not TWO, reason="needs NUMBA_NUM_THREADS >= 2")
def test_drops_to_one_thread_while_a_core_is_busy_and_comes_back(fresh, monkeypatch):
    load, advance = _fake_machine(monkeypatch, 2)
    numba.set_num_threads(2)
    assert threads.parallel()  # the first look only takes a reading
    advance(threads.FIRST_POLL)
    assert threads.parallel()  # quiet: both cores
    load["others_rate"] = 1.0  # another process takes a core
    advance(threads.POLL / 2)
    assert threads.parallel()  # not looked yet
    advance(threads.POLL / 2)
    assert not threads.parallel()
    assert threads._others == pytest.approx(1.0)
    assert numba.get_num_threads() == 1  # also for the kernels that are not Kernels (transpose, losses)
    load["others_rate"] = 0.1
    advance(threads.POLL)
    assert threads.parallel()
    assert numba.get_num_threads() == 2
    # this process's own time (os.times) can run ahead of its cores' busy ticks (/proc/stat): the
    # others' load is then 0, never below
    load["others_rate"] = -0.5
    advance(threads.POLL)
    assert threads.parallel() and threads._others == 0.0


@pytest.mark.skipif(not TWO, reason="needs NUMBA_NUM_THREADS >= 2")
def test_the_users_thread_count_is_the_limit(fresh, monkeypatch):
    load, advance = _fake_machine(monkeypatch, 2)
    numba.set_num_threads(2)
    threads.parallel()
    numba.set_num_threads(1)  # the user's choice (as `nbnet train --threads 1`)
    advance(threads.POLL)
    assert not threads.parallel()
    assert threads._limit == 1
    numba.set_num_threads(2)
    advance(threads.POLL)
    assert threads.parallel()


@pytest.mark.skipif(not TWO, reason="needs NUMBA_NUM_THREADS >= 2")
def test_fix_keeps_the_number_whatever_the_load(fresh, monkeypatch):
    load, advance = _fake_machine(monkeypatch, 2)
    load["others_rate"] = 1.0
    threads.fix(2)
    for _ in range(3):
        advance(threads.POLL)
        assert threads.parallel()
    threads.fix(1)
    assert not threads.parallel()
    threads.auto()
    numba.set_num_threads(2)
    for _ in range(3):
        advance(threads.POLL)
        threads.parallel()
    assert not threads.parallel()  # adapting again: a core is busy
    with pytest.raises(ValueError):
        threads.fix(numba.config.NUMBA_NUM_THREADS + 1)


@pytest.mark.skipif(not TWO, reason="needs NUMBA_NUM_THREADS >= 2")
def test_the_counts_to_warm_are_those_a_load_change_may_ask_for(fresh, monkeypatch):
    """compile_kernels warms up the twins of each of counts_to_warm(): 1 thread and the limit while
    the count adapts to the load (whatever it is now), none where the count cannot change. as_if(n)
    makes kernels choose as n threads would, without reading the load, and puts the count back after."""
    load, advance = _fake_machine(monkeypatch, 2)
    numba.set_num_threads(2)
    threads.parallel()
    advance(threads.FIRST_POLL)
    assert threads.counts_to_warm() == (1, 2) and threads.in_use() == 2
    with threads.as_if(1):
        advance(threads.POLL)  # a look would be due: as_if holds the count
        assert not threads.parallel() and threads.in_use() == 1
        with threads.as_if(2):
            assert threads.parallel()
        assert not threads.parallel()
    assert threads.parallel() and threads.in_use() == 2
    load["others_rate"] = 1.0
    advance(threads.POLL)
    assert threads.counts_to_warm() == (1, 2) and threads.in_use() == 1
    with pytest.raises(KeyError), threads.as_if(2):  # put back when the warm-up fails too
        raise KeyError
    assert threads.in_use() == 1
    threads.fix(2)
    assert threads.counts_to_warm() == ()  # fixed: the count in use, always
    threads.auto()
    numba.set_num_threads(1)  # the user's limit: one thread, whatever the load
    advance(threads.POLL)
    assert threads.counts_to_warm() == ()
    monkeypatch.setattr(threads, "busy_seconds", lambda *a: None)  # no /proc/stat: the limit, always
    monkeypatch.setattr(threads, "_last", None)
    numba.set_num_threads(2)
    advance(threads.POLL)
    assert threads.counts_to_warm() == () and threads.in_use() == 2


def test_the_counts_to_warm_name_the_limit_and_none_in_a_forked_child_or_inside_as_if(fresh, monkeypatch):
    """While the count adapts, the counts to warm are 1 and the user's limit (4 here, not 2); a forked
    child has only serial twins (Numba ends it at a parallel one), so none there, and as_if keeps it
    serial; inside as_if the count does not change, so none there either. Module state set
    directly: no look at the load and no Numba call, any NUMBA_NUM_THREADS."""
    for name, value in (("_clock", lambda: 0.0), ("_fixed", False), ("_forked", False), ("_limit", 4),
                        ("_n", 1), ("_last", (0.0, 0.0, 0.0)), ("_next", 1.0)):
        monkeypatch.setattr(threads, name, value)
    assert threads.counts_to_warm() == (1, 4)
    with threads.as_if(1):
        assert threads.counts_to_warm() == ()
    monkeypatch.setattr(threads, "_forked", True)
    assert threads.counts_to_warm() == ()
    with threads.as_if(4):
        assert not threads.parallel() and threads.in_use() == 1
    assert threads.in_use() == 1


LOAD_CHANGE = """
import numba, numpy as np, nbnet as nb
from nbnet import cpu, simd, threads
from nbnet.check import compile_kernels
def overloads():
    found = [d for m in (cpu, simd) for v in vars(m).values()
             for d in ((v.serial, v.parallel) if isinstance(v, cpu.Kernel) else (v,))
             if isinstance(d, numba.core.dispatcher.Dispatcher)]
    return {d.py_func.__qualname__: len(d.overloads) for d in found}
m = nb.Sequential([nb.Linear(784, 256, seed=0), nb.ReLU(), nb.Linear(256, 128, seed=1), nb.ReLU(),
                   nb.Linear(128, 10, seed=2)])
opt, loss_fn = nb.SGD(m.parameters(), lr=0.01, momentum=0.9), nb.SoftmaxCrossEntropy()
y = np.zeros(128, np.int64)
compile_kernels(m, opt, loss_fn, y, train_rows=(128,), say=False)
before = overloads()
x = np.random.default_rng(0).random((128, 784), dtype=np.float32)
for n in (1, 2):  # what the load may choose later in the run
    threads.fix(n)
    for _ in range(3):  # the third step runs the model's plan
        opt.zero_grad()
        loss_fn.forward(m.forward(x), y)
        m.backward(loss_fn.backward())
        opt.step()
new = {k: v - before.get(k, 0) for k, v in overloads().items() if v != before.get(k, 0)}
assert not new, new
print("ok", threads.in_use())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adapts to the load only where /proc/stat is")
def test_a_load_change_after_the_warm_up_compiles_nothing():
    """A run that starts quiet and meets a busy core (or the other way round) asks for the other
    twin of its parallel kernels: compiled mid-epoch, it took seconds of that epoch's samples/s,
    and its note broke the progress bar. compile_kernels warms up both (threads.counts_to_warm)."""
    env = {k: v for k, v in os.environ.items() if k != "NBNET_THREADS"}
    env["NUMBA_NUM_THREADS"] = "2"
    p = subprocess.run([sys.executable, "-c", LOAD_CHANGE], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stderr[-3000:]


@pytest.mark.skipif(not TWO, reason="needs NUMBA_NUM_THREADS >= 2")
def test_fixing_the_number_this_module_last_set_is_still_the_users(fresh, monkeypatch):
    """Under load the module set 1 thread; the user's `--threads 1` (numba.set_num_threads(1),
    then fix()) must keep 1 after the load is gone, not return to the old limit of 2."""
    load, advance = _fake_machine(monkeypatch, 2)
    numba.set_num_threads(2)
    threads.parallel()
    load["others_rate"] = 1.0
    advance(threads.FIRST_POLL)
    assert not threads.parallel()
    numba.set_num_threads(1)
    threads.fix()
    load["others_rate"] = 0.0
    for _ in range(3):
        advance(threads.POLL)
        assert not threads.parallel()


def test_a_kernel_runs_its_parallel_twin_only_with_threads_and_work(monkeypatch):
    kernel = cpu.Kernel.__new__(cpu.Kernel)
    kernel.serial, kernel.parallel = (lambda n: "serial"), (lambda n: "parallel")
    kernel.work, kernel.threshold = (lambda n: n), 100
    monkeypatch.setattr(threads, "parallel", lambda: True)
    assert (kernel(99), kernel(100)) == ("serial", "parallel")
    monkeypatch.setattr(threads, "parallel", lambda: False)
    assert (kernel(99), kernel(100)) == ("serial", "serial")


@pytest.mark.skipif(not TWO or threads.busy_seconds() is None, reason="needs 2 threads and /proc/stat")
def test_a_busy_process_takes_a_thread_away(fresh):
    """The real thing: a busy loop in another process holds a core; nbnet then uses at most the
    cores left (one on a 2-core machine)."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        threads.parallel()
        time.sleep(0.3)
        threads._next = 0.0
        threads.parallel()
        assert threads._others >= 0.75
        assert threads._n <= max(1, len(threads._CORES) - 1)
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.parametrize("value,fixed", [("auto", False), ("", False), (" Fixed ", True), ("fixed", True)])
def test_nbnet_threads_values(monkeypatch, value, fixed):
    monkeypatch.setenv("NBNET_THREADS", value)
    assert threads.env_fixed() is fixed


@pytest.mark.parametrize("value", ["2", "yes", "fixed2", "fix"])
def test_a_bad_nbnet_threads_is_one_error_line(monkeypatch, value):
    monkeypatch.setenv("NBNET_THREADS", value)
    with pytest.raises(ValueError, match="NBNET_THREADS"):
        threads.env_fixed()
    done = subprocess.run([sys.executable, "-m", "nbnet.cli", "info"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("Error: NBNET_THREADS must be auto or fixed")


WAIT_SCRIPT = """
import os, sys
import nbnet
from nbnet import threads
if sys.argv[1] == "fix":
    threads.fix(1)
print(*(os.environ.get(k, "-") for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NBNET_WAIT_SET")))
if sys.argv[1] == "user":  # set after import nbnet, before Numba's threads start: the user's, and kept
    os.environ["OMP_WAIT_POLICY"] = "active"
threads.parallel()  # Numba's threads start (fix(1) started them already)
print(*(v or "-" for v in threads.waiting().values()))
print(*(os.environ.get(k, "-") for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NBNET_WAIT_SET")))
threads.fix(1)  # once the threads started, a new count sets nothing again
print(*(os.environ.get(k, "-") for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NBNET_WAIT_SET")))
print(*(v or "-" for v in threads.waiting().values()))
"""


@pytest.mark.parametrize("env,action,expected,after", [
    ({}, "", "passive 10000", "- - -"),  # adapting: a short spin (under load it runs on one thread)
    ({}, "fix", "passive -", "- - -"),  # a fixed count, set before Numba started its threads: no spin
    ({"NBNET_THREADS": "fixed"}, "", "passive -", "- - -"),
    ({"OMP_WAIT_POLICY": "active"}, "", "active -", "active - -"),  # the user's: nbnet sets neither
    ({"GOMP_SPINCOUNT": "5"}, "", "- 5", "- 5 -"),
    ({}, "user", "active -", "active - -"),
    # A parent process's nbnet set them (NBNET_WAIT_SET says so): decided again here.
    ({"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "10000", "NBNET_WAIT_SET": "passive,10000",
      "NBNET_THREADS": "fixed"}, "", "passive -", "- - -"),
    ({"OMP_WAIT_POLICY": "passive", "NBNET_WAIT_SET": "passive,"}, "", "passive 10000", "- - -"),
    ({"OMP_WAIT_POLICY": "passive", "NBNET_WAIT_SET": "passive,10000"}, "", "passive -",  # changed: the user's
     "passive - passive,10000"),
])
def test_how_waiting_threads_wait(env, action, expected, after):
    """Numba's threads start with these values, and os.environ is what the user had before and
    after: every process started from it after import nbnet (a PyTorch or OpenBLAS program)
    inherited OMP_WAIT_POLICY=passive and GOMP_SPINCOUNT, and its own OpenMP threads waited as
    nbnet's do; once Numba's threads had started nbnet took them out, but a process started
    between import nbnet and its first kernel still had them."""
    ours = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NBNET_THREADS", "NBNET_WAIT_SET")
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    done = subprocess.run([sys.executable, "-c", WAIT_SCRIPT, action], env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    before_start, started_with, inherited, after_fix, still = done.stdout.splitlines()
    assert started_with.split() == still.split() == expected.split()
    assert inherited.split() == after_fix.split() == after.split()
    if action != "fix":  # import nbnet put nothing in os.environ: a process started now inherits what this one had
        assert before_start.split() == [env.get(k, "-") for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NBNET_WAIT_SET")]


@pytest.mark.parametrize("start", ["threads.parallel()", "numba.get_num_threads()"])
def test_gnu_openmp_starts_with_nbnets_waiting_after_os_environ_is_restored(start):
    """libgomp reads the variables when it loads, as Numba starts its threads: nbnet's values are in
    os.environ only then, and the threads wait as nbnet set them (OMP_DISPLAY_ENV has libgomp print
    what it read), whoever starts them: nbnet's first kernel, or the user's own Numba call."""
    ours = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NBNET_THREADS", "NBNET_WAIT_SET")
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    code = (f"import os, numba, nbnet\nfrom nbnet import threads\n{start}\n"
            "print(numba.threading_layer(), 'OMP_WAIT_POLICY' in os.environ)")
    done = subprocess.run([sys.executable, "-c", code], env={**clean, "OMP_DISPLAY_ENV": "verbose"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    if "  GOMP_" not in done.stderr:  # libgomp's own settings: another OpenMP, or another layer
        pytest.skip(f"not GNU OpenMP: {done.stdout.strip()}")
    assert done.stdout.split() == ["omp", "False"]
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in done.stderr and "GOMP_SPINCOUNT = '10000'" in done.stderr, done.stderr


def _forward_and_step(model, x, y):
    """Bytes of a forward's output and of the weights after one SGD step: one layer takes the
    forward's Wᵀ route (cpu.transpose), the other's kernels have enough work for their parallel twins."""
    import nbnet as nb  # noqa: PLC0415

    out = model(x)
    loss_fn, opt = nb.SoftmaxCrossEntropy(), nb.SGD(model.parameters(), lr=0.1)
    loss_fn(model.forward(x), y)
    model.backward(loss_fn.backward())
    opt.step()
    return b"".join(a.tobytes() for a in [out] + [p.data for p in model.parameters()])


@pytest.mark.skipif(not TWO or not hasattr(os, "fork"), reason="needs 2 threads and os.fork")
def test_a_process_forked_after_the_threads_started_runs_serial_twins(fresh):
    """multiprocessing's default start on Linux forks: a Pool made after nbnet ran a kernel. Numba
    ends a child of a process that started GNU OpenMP with SIGTERM at its first parallel kernel
    (libgomp's threads do not come along), and a Pool then waits for that worker for ever. The
    child runs the serial twins instead: the same bits."""
    import copy  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    import nbnet as nb  # noqa: PLC0415

    threads.fix(2)
    x0 = np.ones((4, 4), np.float32)
    cpu.relu_forward.parallel(np.empty_like(x0), x0)  # Numba's threads start
    rng = np.random.default_rng(0)
    x, y = rng.random((128, 16), dtype=np.float32), rng.integers(0, 512, 128)
    model = nb.Sequential([nb.Linear(16, 256, seed=0), nb.ReLU(), nb.Linear(256, 512, seed=1)])
    twin = copy.deepcopy(model)
    assert threads.parallel()
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: forking a process with threads
        pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            threads.fix(2)  # the user's count, set in the child: still the serial twins there
            data = _forward_and_step(model, x, y)
            with os.fdopen(write, "wb") as f:
                f.write(data)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        got = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"the forked child ended by signal {os.WTERMSIG(status)}"
    assert got == _forward_and_step(twin, x, y)


def test_under_an_exclusive_layer_a_kernel_runs_serially_while_another_thread_is_in_one(monkeypatch):
    kernel = cpu.Kernel.__new__(cpu.Kernel)
    kernel.serial, kernel.parallel = (lambda n: "serial"), (lambda n: "parallel")
    kernel.work, kernel.threshold = (lambda n: n), 100
    monkeypatch.setattr(threads, "parallel", lambda: True)
    monkeypatch.setattr(threads, "exclusive", True)
    assert kernel(100) == "parallel"
    with threads._launch:  # another thread's parallel kernel
        assert kernel(100) == "serial"
    assert kernel(100) == "parallel" and not threads._launch.locked()


WORKQUEUE_SCRIPT = """
import threading
import numpy as np
import nbnet as nb
from nbnet import threads
threads.fix(2)
rng = np.random.default_rng(0)
x, y = rng.random((256, 16), dtype=np.float32), rng.integers(0, 256, 256)
def run(seed, out):
    m = nb.Sequential([nb.Linear(16, 256, seed=seed), nb.ReLU(), nb.Linear(256, 256, seed=seed + 1)])
    opt, loss_fn = nb.SGD(m.parameters(), lr=0.1), nb.SoftmaxCrossEntropy()
    for _ in range(30):  # layer by layer, then planned steps
        opt.zero_grad()
        loss_fn(m.forward_reusing(x), y)
        m.backward(loss_fn.backward())
        opt.step()
    out[seed] = b"".join(p.data.tobytes() for p in m.parameters()) + m(x).tobytes()
alone, together = {}, {}
for seed in (0, 2):
    run(seed, alone)
pair = [threading.Thread(target=run, args=(seed, together)) for seed in (0, 2)]
for t in pair:
    t.start()
for t in pair:
    t.join()
print(threads.exclusive, alone == together)
"""


@pytest.mark.skipif(not TWO, reason="needs 2 threads")
def test_two_python_threads_train_at_once_under_the_workqueue_layer():
    """Numba's workqueue layer aborts the process when two threads launch parallel kernels at once
    ("Concurrent access has been detected"): nbnet runs one at a time there, the same bits."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    done = subprocess.run([sys.executable, "-c", WORKQUEUE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["True", "True"]


# -- one model, several Python threads: Sequential.lock ------------------------------------------

class Pause:
    """An identity layer that calls hook() in its forward: a test stops one thread there, half-way
    through a forward, and lets another run."""

    dtype = None

    def __init__(self, hook):
        self.hook = hook  # a function: copy.deepcopy keeps it as it is

    def forward(self, x):
        self.hook()
        return x

    def backward(self, dout, need_input_grad=True):
        return dout

    def parameters(self):
        return []

    def zero_grad(self):
        pass


class Meanwhile:
    """hook() for Pause: once armed, the first thread to reach it waits (at most `patience` s) while
    `other` runs in a second thread, which it starts there. Where the model holds its lock, `other`
    waits for the first thread's call to end instead, and the first thread goes on after `patience`."""

    def __init__(self, other, patience=0.3):
        import threading

        self.other, self.patience, self.armed, self.thread = other, patience, False, None
        self.done = threading.Event()

    def __call__(self):
        import threading

        if self.armed and self.thread is None:
            self.armed = False
            self.thread = threading.Thread(target=lambda: (self.other(), self.done.set()))
            self.thread.start()
            self.done.wait(self.patience)

    def join(self):
        if self.thread is not None:
            self.thread.join()


def _nothing():
    pass


def _model(hook=_nothing):
    import nbnet as nb

    return nb.Sequential(nb.Linear(16, 32, seed=0), nb.ReLU(), Pause(hook), nb.Linear(32, 4, seed=2))


@pytest.mark.parametrize("call", ["forward", "predict", "evaluate"])
def test_a_thread_predicting_with_a_model_another_is_running_gets_its_own_answer(call, monkeypatch):
    """A web server's threads predicting with one model: a forward wrote the layers' buffers while
    another thread's forward was half-way, whose last layer then read the other's rows; or
    between a thread's forward and its reading of the output (predict's softmax, evaluate's loss).
    The model's lock runs one call at a time. The first thread is stopped where the other would
    get in: in the forward, or after it."""
    import numpy as np

    import nbnet as nb

    rng = np.random.default_rng(0)
    x, other_x = (rng.standard_normal((8, 16)).astype(np.float32) for _ in range(2))
    labels = np.arange(8) % 4
    meanwhile = Meanwhile(lambda: answers.append(run(other_x)))
    model, answers = _model(meanwhile if call == "forward" else _nothing), []
    run = {"forward": model, "predict": lambda v: nb.predict(model, v, proba=True),
           "evaluate": lambda v: nb.evaluate(model, v, labels)["loss"]}[call]
    if call != "forward":  # the step that reads the model's output buffer stops first
        reader = nb.layers.Softmax if call == "predict" else nb.losses.SoftmaxCrossEntropy
        read = reader.forward

        def stopping_first(self, *args):
            meanwhile()
            return read(self, *args)

        monkeypatch.setattr(reader, "forward", stopping_first)
    expected = [run(v) for v in (x, other_x, x)]  # the second forward at a shape plans it: both ways
    meanwhile.armed = True
    mine = run(x)
    meanwhile.join()
    np.testing.assert_array_equal(mine, expected[0])
    np.testing.assert_array_equal(answers[0], expected[1])


def test_a_thread_predicts_while_another_trains_the_same_model(monkeypatch):
    """nb.train holds the model's lock a step at a time: a thread that predicts meanwhile runs
    between two steps, and the training is bit for bit a run nobody watched. Here the training
    thread stops between a step's forward and its backward (in the loss's backward), where a
    predict would overwrite the forward's cache."""
    import numpy as np

    import nbnet as nb

    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((64, 16)).astype(np.float32), rng.integers(0, 4, 64)
    loss_backward, hooks = nb.losses.SoftmaxCrossEntropy.backward, [_nothing]

    def stopping_first(self):
        hooks[0]()
        return loss_backward(self)

    monkeypatch.setattr(nb.losses.SoftmaxCrossEntropy, "backward", stopping_first)

    def trained(watch):
        seen = []
        hooks[0] = meanwhile = Meanwhile(lambda: seen.append(nb.predict(model, x[:8], proba=True)))
        model = _model()
        opt = nb.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def arm(state, *_):
            meanwhile.armed = watch and state.step == 3

        nb.train(model, opt, (x, y), epochs=2, batch_size=8, seed=0, on_step=arm)
        meanwhile.join()
        return [p.data.copy() for p in model.parameters()], seen

    alone, _ = trained(False)
    watched, seen = trained(True)
    for a, b in zip(alone, watched):
        np.testing.assert_array_equal(a, b)
    assert len(seen) == 1 and np.allclose(seen[0].sum(axis=1), 1)


def test_should_stop_may_wait_for_another_thread_that_predicts():
    """should_stop is asked outside the model's lock: one that waits for another thread's predict
    (a GUI asking "stop?" of a thread that also shows predictions) waited for ever inside it."""
    import threading

    import numpy as np

    import nbnet as nb

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((32, 16)).astype(np.float32), rng.integers(0, 4, 32)
    model = _model()
    others, waited = [], []

    def should_stop():
        others.append(threading.Thread(target=lambda: nb.predict(model, x[:4])))
        others[-1].start()
        others[-1].join(timeout=2)
        waited.append(not others[-1].is_alive())
        return False

    nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=1, batch_size=16,
             should_stop=should_stop)
    for other in others:
        other.join()
    assert waited == [True, True]


def test_restore_best_puts_the_weights_back_under_the_lock():
    """nb.train's last write of the weights, restore_best's copy of the best epoch, waits for a
    thread that holds the model's lock (reading the weights, or predicting) to let go."""
    import threading

    import numpy as np

    import nbnet as nb

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((32, 16)).astype(np.float32), rng.integers(0, 4, 32)
    model = _model()
    last_epoch, go = threading.Event(), threading.Event()

    def on_epoch(state, metrics):
        if state.epoch == 2:
            last_epoch.set()
            go.wait(5)

    trainer = threading.Thread(target=lambda: nb.train(
        model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=2, batch_size=16,
        val_data=(x[:8], y[:8]), restore_best=True, on_epoch=on_epoch))
    trainer.start()
    assert last_epoch.wait(30)
    with model.lock:
        go.set()
        trainer.join(timeout=0.3)
        assert trainer.is_alive()  # at the restore, waiting for the lock
    trainer.join()


@pytest.mark.parametrize("call", ["save", "state_dict", "deepcopy", "astype", "load_state_dict"])
def test_the_weights_read_or_written_whole_are_those_of_one_step(call, tmp_path):
    """A thread that saves the model (a checkpointing thread, a GUI's Save) or copies its weights
    while another trains it: the reads ran between the layers of a step, and the file held layers
    of two steps, weights the model never had (seen in 3 of 47 saves of a model nb.train trained in
    a thread); load_state_dict's writes mixed with a step's. They hold the model's lock, as a step
    does. The training thread here stops half-way through a step's writes, in the lock."""
    import copy
    import threading

    import nbnet as nb

    model = nb.Sequential(nb.Linear(16, 32, seed=0), nb.ReLU(), nb.Linear(32, 4, seed=2))
    first, last = model[0].bias, model[2].bias
    halfway, other_done = threading.Event(), threading.Event()

    def step():
        with model.lock:
            first[...] += 1
            halfway.set()
            other_done.wait(0.3)  # the other thread's call, had it not waited for the lock
            last[...] += 1

    def other():
        if call == "save":
            model.save(tmp_path / "m.npz")
            got.append(nb.load(tmp_path / "m.npz"))
        elif call == "state_dict":
            got.append(model.state_dict())
        elif call == "deepcopy":
            got.append(copy.deepcopy(model))
        elif call == "astype":
            got.append(model.astype(np.float64))
        else:
            model.load_state_dict(zeros)
        other_done.set()

    zeros = {k: np.zeros_like(v) for k, v in model.state_dict().items()}
    got, trainer = [], threading.Thread(target=step)
    trainer.start()
    assert halfway.wait(30)
    other()
    trainer.join()
    if call == "load_state_dict":  # loaded before or after the step: not a mix of both
        assert (first == 0).all() == (last == 0).all()
        return
    biases = (got[0]["0.bias"], got[0]["2.bias"]) if call == "state_dict" else (got[0][0].bias, got[0][2].bias)
    np.testing.assert_array_equal(biases[0], first)  # the weights after the step, all of them
    np.testing.assert_array_equal(biases[1], last)


@pytest.mark.parametrize("through", ["model", "slice"])
def test_a_backward_after_another_threads_forward_is_refused(through):
    """The layers keep the last forward's cache: a backward whose own forward was overwritten by
    another thread's would fill gradients from the wrong rows, so it is an error; also where the
    other forward ran through a slice (model[:2]), which shares the layers."""
    import threading

    import numpy as np

    import nbnet as nb

    model = _model()
    x = np.ones((4, 16), np.float32)
    loss_fn = nb.SoftmaxCrossEntropy()
    loss_fn(model(x), np.zeros(4, np.int64))
    other = threading.Thread(target=lambda: (model if through == "model" else model[:2])(2 * x))
    other.start()
    other.join()
    with pytest.raises(RuntimeError, match="another thread"):
        model.backward(loss_fn.backward())
    loss_fn(model(x), np.zeros(4, np.int64))  # its own forward again: fine
    model.backward(loss_fn.backward())


def test_the_lock_is_the_models_own_and_its_slices():
    import copy
    import pickle

    model = _model()
    assert model[0:2].lock is model.lock  # a slice shares the layers, so their buffers
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other.lock is not model.lock
        with other.lock:  # a working RLock of its own
            with other.lock:
                pass


@pytest.mark.parametrize("paused", ["body", "whole"])
def test_models_that_share_layers_share_the_lock(paused):
    """A feature extractor `body` and a classifier Sequential(body, head) share body's layers, so
    their buffers: with a lock of each model's own, a thread running one while another ran the
    other read the other's rows half-way (silently wrong numbers). One thread is stopped half-way
    through a forward of one model while another runs the other."""
    import numpy as np

    import nbnet as nb

    rng = np.random.default_rng(0)
    x, other_x = (rng.standard_normal((8, 16)).astype(np.float32) for _ in range(2))
    meanwhile = Meanwhile(lambda: answers.append(others(other_x)))
    body, answers = nb.Sequential(nb.Linear(16, 32, seed=0), nb.ReLU(), Pause(meanwhile)), []
    whole = nb.Sequential(body, nb.Linear(32, 4, seed=2))
    assert whole.lock is body.lock and whole[:2].lock is body.lock
    first, others = (body, whole) if paused == "body" else (whole, body)
    expected = [first(x), others(other_x)]
    meanwhile.armed = True
    mine = first(x)
    meanwhile.join()
    np.testing.assert_array_equal(mine, expected[0])
    np.testing.assert_array_equal(answers[0], expected[1])


def test_a_model_of_two_models_merges_their_locks():
    """Sequential(encoder, decoder): all three write the encoder's and the decoder's buffers, so
    they run under one lock from then on (the encoder and decoder too); copies keep locks of their own."""
    import copy

    import nbnet as nb

    encoder = nb.Sequential(nb.Linear(16, 8, seed=0), nb.ReLU())
    decoder = nb.Sequential(nb.Linear(8, 16, seed=1))
    tail = decoder[0:1]
    both = nb.Sequential(encoder, decoder)
    assert encoder.lock is both.lock and decoder.lock is both.lock and tail.lock is both.lock
    assert copy.deepcopy(both).lock is not both.lock
    assert nb.Sequential(nb.Linear(16, 8, seed=0)).lock is not both.lock


def test_a_model_another_nb_train_is_training_is_refused():
    """Two nb.train calls on one model (or one optimizer) took turns at its lock step by step,
    silently (a constant rate), or one failed saying its opt.lr was set "by a callback?" (a
    schedule). The second call, in another thread or in a callback, is refused; the first trains
    on as if alone."""
    import threading

    import numpy as np

    import nbnet as nb

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    y = np.arange(64) % 4

    def fresh():
        model = _model()
        return model, nb.SGD(model.parameters(), lr=0.1, momentum=0.9)

    model, opt = fresh()
    nb.train(model, opt, (x, y), epochs=2, batch_size=16, lr_schedule="cosine")
    expected = model.state_dict()
    model, opt = fresh()
    refused = []

    def second(m, o):
        try:
            nb.train(m, o, (x, y), epochs=1, batch_size=16)
        except RuntimeError as e:
            refused.append(str(e))

    def on_step(state, batch, n_batches, loss):
        if state.step == 1:  # in the middle of the run, another thread tries the model, then the optimizer
            for args in ((model, nb.SGD(model.parameters(), lr=0.1)), (nb.Sequential(model.layers), opt)):
                thread = threading.Thread(target=second, args=args)
                thread.start()
                thread.join(30)
            second(model, opt)  # and a callback of this call

    nb.train(model, opt, (x, y), epochs=2, batch_size=16, lr_schedule="cosine", on_step=on_step)
    assert len(refused) == 3 and "another thread" in refused[0] and "in this thread" in refused[2]
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, expected[key])
    nb.train(model, opt, (x, y), epochs=1, batch_size=16)  # done: free to train again


def test_a_ctrl_c_while_nb_train_waits_for_the_lock_leaves_the_model_trainable():
    """nb.train marked the model as in training, then waited for its lock (another thread's
    predict) outside its try: a Ctrl-C there left the mark, and every later nb.train of the model
    was refused as "being trained by another nb.train call, in this thread"."""
    import numpy as np

    import nbnet as nb

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 16)).astype(np.float32), np.arange(32) % 4
    model = _model()
    opt = nb.SGD(model.parameters(), lr=0.1)
    model.lock = _InterruptedLock(model.lock)  # a Ctrl-C in its first wait for the lock
    with pytest.raises(KeyboardInterrupt):
        nb.train(model, opt, (x, y), epochs=1, batch_size=16)
    model.lock = model.lock.lock
    assert len(nb.train(model, opt, (x, y), epochs=1, batch_size=16)) == 1


def test_a_ctrl_c_while_nb_train_waits_for_the_lock_at_its_end_leaves_the_model_trainable():
    """The same at the end: putting the modes back waits for the lock, and a Ctrl-C there skipped
    unmarking the model (and putting Python's SIGINT handler back)."""
    import signal

    import numpy as np

    import nbnet as nb

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 16)).astype(np.float32), np.arange(32) % 4
    model = _model()
    opt = nb.SGD(model.parameters(), lr=0.1)
    model.lock = _InterruptedLock(model.lock, armed=False)
    # Python's handler, which nb.train replaces, whatever the runner's (`pytest &` ignores SIGINT:
    # nb.train then leaves it alone, and this failed)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):  # armed after the last epoch: the next wait is the one at the end
            nb.train(model, opt, (x, y), epochs=1, batch_size=16,
                     on_epoch=lambda *_: setattr(model.lock, "armed", True))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, old)
    model.lock = model.lock.lock
    assert len(nb.train(model, opt, (x, y), epochs=1, batch_size=16)) == 1


class _InterruptedLock:
    """A lock whose next wait, once armed, is interrupted by a Ctrl-C (KeyboardInterrupt)."""

    def __init__(self, lock, armed=True):
        self.lock, self.armed = lock, armed

    def __enter__(self):
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


PER_THREAD_SCRIPT = r"""
import threading
import numba
from nbnet import threads
threads.fix(2)  # of NUMBA_NUM_THREADS=3
seen = []

def worker():
    threads._next = 0.0  # its first kernel looks at the load, as a poll falls due
    seen.append((threads.parallel(), numba.get_num_threads()))
    numba.set_num_threads(1)  # the user's number, in this thread
    threads._next = 0.0
    seen.append((threads.parallel(), numba.get_num_threads()))

t = threading.Thread(target=worker)
t.start()
t.join()
print(seen, threads.describe())
"""


def test_the_thread_count_holds_in_every_python_thread():
    """Numba's thread count is per Python thread, and a new thread starts at NUMBA_NUM_THREADS:
    nbnet took a worker's 3 for a number its user set, so `fix(2)` in the main thread became 3
    (all the cores, whatever the load, in every thread that trains in the background). A thread
    gets the count in use; a number the user sets in a thread is still theirs."""
    env = dict(os.environ, NUMBA_NUM_THREADS="3", NBNET_THREADS="auto")
    done = subprocess.run([sys.executable, "-c", PER_THREAD_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("[(True, 2), (False, 1)] 1 of at most 1 threads (fixed"), done.stdout


ENTER_SCRIPT = r"""
import threading
import numba
from nbnet import threads
threads.fix(2)  # of NUMBA_NUM_THREADS=3; fixed: no poll falls due for POLL seconds
seen, mine, theirs = [], threading.Event(), threading.Event()

def worker():
    seen.append((threads.parallel(), numba.get_num_threads()))
    numba.set_num_threads(1)  # the user's number, in this thread
    mine.set()
    theirs.wait()
    seen.append((threads.parallel(), numba.get_num_threads()))  # no poll: _enter sees the change

t = threading.Thread(target=worker)
t.start()
mine.wait()
threads.fix(3)  # another thread changes the count in use
theirs.set()
t.join()
print(seen, threads._limit)
"""


def test_a_count_set_in_a_thread_survives_another_threads_change():
    """Between polls, a thread's first kernel after another thread changed the count (_enter) takes
    the number its user set in this thread, not the other thread's: with that rule gone the worker
    ran 3 threads where its user asked for 1, and every test passed (mutation testing; it takes
    three threads to tell the user's 1 from the count of 2 this thread had)."""
    env = dict(os.environ, NUMBA_NUM_THREADS="3", NBNET_THREADS="auto")
    done = subprocess.run([sys.executable, "-c", ENTER_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[(True, 2), (False, 1)] 1", done.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_a_thread_holds_the_launch_lock_leaves_the_child_free():
    """The thread in a parallel kernel (under an exclusive layer) is not in a forked child: the
    child's lock is a new one, else every kernel there ran its serial twin for ever (alone())."""
    import warnings  # noqa: PLC0415

    with threads._launch, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: forking a process with threads
        pid = os.fork()
        if pid == 0:
            os._exit(0 if threads._launch.acquire(blocking=False) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("n, error", [(True, TypeError), (np.True_, TypeError), ("2", TypeError), (2.5, TypeError),
                                      (0, ValueError), (-1, ValueError), (10**6, ValueError)])
def test_fix_refuses_what_is_not_a_thread_count_before_changing_anything(fresh, n, error):
    """Numba takes True for 1 thread: threads.fix(True), read as "yes, fix it", ran one thread."""
    before = numba.get_num_threads()
    with pytest.raises(error, match=r"^threads\.fix: n must be"):
        fresh.fix(n)
    assert fresh._fixed is False and numba.get_num_threads() == before
    fresh.fix(np.int64(1))  # a NumPy integer is a number of threads
    assert fresh._fixed is True and numba.get_num_threads() == 1


def test_a_first_call_meeting_another_threads_first_call_sees_a_thread_count(fresh, monkeypatch):
    """Two Python threads' first kernels at once: one that ran its whole first look while the other
    was between setting the limit and the count got None > 1, a TypeError from a kernel call (the
    first look takes a reading only, and returns the count another look set)."""
    import threading

    _fake_machine(monkeypatch, 2)
    set_count, seen = threads._set, []

    def set_with_another_thread_meanwhile(n):
        if not seen:  # the first thread's first look, half-way: the second thread's turn
            seen.append(None)
            other = threading.Thread(target=lambda: seen.append(_answer(threads.parallel)))
            other.start()
            other.join(30)
        set_count(n)

    monkeypatch.setattr(threads, "_set", set_with_another_thread_meanwhile)
    assert _answer(threads.parallel) in (True, False)
    assert seen[1] in (True, False), seen[1]


def _answer(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the test says what was raised
        return repr(e)
