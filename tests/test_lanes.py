"""Work shares that stay with one thread (nbnet.simd.claim_near, nbnet.cpu.dw_shares) and the
optimizer steps in lanes (cpu.sgd_lanes, adam_lanes, nbnet.optim's _lanes): which thread does
what may change nothing but the time."""

import numba
import numpy as np
import pytest
from numba import njit, prange

import nbnet as nb
from nbnet import cpu, threads

F = np.float32


def test_static_shares_are_numbas_static_split():
    @njit(parallel=True)
    def who(out):
        for i in prange(out.shape[0]):
            out[i] = numba.get_thread_id()

    lanes = numba.get_num_threads()
    for units in (1, 2, 3, 5, 10, 37):
        out = np.zeros(units, np.int64)
        who(out)
        starts = cpu.static_shares(units, lanes)
        expected = np.repeat(np.arange(lanes), np.diff(starts))
        assert out.tolist() == expected.tolist()


@pytest.mark.parametrize("name", ["sgd", "adam"])
@pytest.mark.parametrize("twin", ["serial", "parallel"])
def test_a_step_in_lanes_is_the_flat_steps_bits(name, twin):
    rng = np.random.default_rng(1)
    n = 5000
    cuts = np.sort(rng.choice(np.arange(1, n), 9, replace=False))
    bounds = np.concatenate([[0], cuts, [n]])
    lane_of = rng.integers(0, 3, len(bounds) - 1)
    order = np.argsort(lane_of, kind="stable")
    spans = np.stack([bounds[:-1], bounds[1:]], 1)[order].astype(np.int64)
    first = np.searchsorted(lane_of[order], np.arange(4)).astype(np.int64)
    a = lambda: rng.standard_normal(n).astype(F)  # noqa: E731
    if name == "sgd":
        args, scalars = [a(), a(), a()], (F(0.1), F(0.9), F(0.01), False)
    else:
        args, scalars = [a(), a(), a(), np.abs(a())], (F(0.1), F(0.999), F(0.001), F(1e-8), F(0.01), F(0.99), F(0.1), F(0.3))
    flat = [x.copy() for x in args]
    getattr(cpu, f"{name}_step").serial(*flat, *scalars)
    getattr(getattr(cpu, f"{name}_lanes"), twin)(*args, *scalars, spans, first)
    for x, y in zip(args, flat):
        assert np.array_equal(x, y)


def _mlp():
    return nb.Sequential([nb.Linear(784, 256, seed=0), nb.ReLU(), nb.Linear(256, 128, seed=1), nb.ReLU(),
                          nb.Linear(128, 10, seed=2)])


def _trained_once(batch):
    model = _mlp()
    opt = nb.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = nb.SoftmaxCrossEntropy()
    x = np.random.default_rng(0).standard_normal((batch, 784)).astype(F)
    loss.forward(model.forward(x), np.zeros(batch, np.int64))
    model.backward(loss.backward())
    return model, opt


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("lanes", [2, 3])
def test_the_lanes_cover_every_parameter_once_and_follow_dw(batch, lanes, monkeypatch):
    model, opt = _trained_once(batch)
    monkeypatch.setattr(threads, "parallel", lambda: True)
    monkeypatch.setattr(threads, "in_use", lambda: lanes)
    spans, first = opt._lanes(opt._groups())
    total = sum(p.data.size for p in model.parameters())
    cover = np.zeros(total, np.int64)
    lane = np.full(total, -1)
    for t in range(lanes):
        for a, b in spans[first[t]:first[t + 1]]:
            cover[a:b] += 1
            lane[a:b] = t
    assert (cover == 1).all()
    w1 = model.layers[0].weight
    for t, r0, r1, c0, c1 in cpu.dw_shares(w1, batch, lanes):  # parallel at every batch: it streams
        if c0 == 0:  # whole rows go with their first columns
            assert (lane[:w1.size].reshape(w1.shape)[r0:r1] == t).all()
            assert (lane[w1.size + r0:w1.size + r1] == t).all()  # db_j with dw_j0
    w2_at, w2 = w1.size + 256, model.layers[2].weight
    assert cpu.dw_shares(w2, batch, lanes) is None  # run serially: updated on the calling thread too
    assert (lane[w2_at:w2_at + w2.size] == 0).all()


def test_once_every_sizable_layer_runs_parallel_the_step_is_flat(monkeypatch):
    model, opt = _trained_once(64)  # 256->128 at 64 rows: 2M multiply-adds, parallel
    monkeypatch.setattr(threads, "parallel", lambda: True)
    monkeypatch.setattr(threads, "in_use", lambda: 2)
    assert cpu.dw_shares(model.layers[2].weight, 64, 2) is not None
    assert opt._lanes(opt._groups()) is None


def test_a_step_in_lanes_trains_as_the_flat_step(monkeypatch):
    """The same bits whichever path updates: 2 lanes at batch 8 against the flat step."""
    monkeypatch.setattr(threads, "parallel", lambda: True)
    monkeypatch.setattr(threads, "in_use", lambda: 2)
    runs = []
    for lanes in (False, True):
        model, opt = _trained_once(8)
        if not lanes:
            opt._lanes = lambda groups: None
        else:
            assert opt._lanes(opt._groups()) is not None
        for _ in range(3):
            opt.step()
        runs.append([p.data.copy() for p in model.parameters()])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_one_thread_or_unpacked_parameters_take_the_flat_step(monkeypatch):
    model = _mlp()
    opt = nb.SGD(model.parameters(), lr=0.01)
    monkeypatch.setattr(threads, "parallel", lambda: False)
    assert opt._lanes(opt._groups()) is None
    monkeypatch.setattr(threads, "parallel", lambda: True)
    w = [nb.Linear(4, 3, seed=0), nb.Linear(3, 2, seed=1)]  # not in a Sequential: not packed
    loose = nb.SGD(w[0].parameters() + w[1].parameters(), lr=0.1)
    assert len(loose._groups()) == 4
    assert loose._lanes(loose._groups()) is None


def test_parameters_changed_in_place_get_lanes_of_their_own(monkeypatch):
    """opt.params replaced in place by a packed model's of other sizes (the same batch shapes):
    the lanes made for the old sizes left the new last layer's bias as it was, silently."""
    monkeypatch.setattr(threads, "parallel", lambda: True)
    monkeypatch.setattr(threads, "in_use", lambda: 2)
    model, opt = _trained_once(1)
    opt.step()
    assert opt._lanes(opt._groups()) is not None
    other = nb.Sequential([nb.Linear(784, 256, seed=0), nb.ReLU(), nb.Linear(256, 128, seed=1), nb.ReLU(),
                           nb.Linear(128, 20, seed=2)])
    loss = nb.SoftmaxCrossEntropy()
    loss.forward(other.forward(np.ones((1, 784), F)), np.zeros(1, np.int64))
    other.backward(loss.backward())
    opt = nb.SGD(model.parameters(), lr=0.5)  # no state: nothing checks the sizes against it
    opt.step()
    opt.params[:] = other.parameters()
    last = other.layers[4]
    want = last.bias - F(0.5) * last.grad_bias
    opt.step()
    assert np.array_equal(last.bias, want)


CLAIM_SCRIPT = """
import numpy as np
from numba import njit, prange
from nbnet import simd

def claim_all(done, group, spin, shared):
    units = done.shape[0]
    counter, flags = simd.unit_counter(), simd.unit_flags()
    for first in prange(units):
        u = simd.claim_near(flags, counter, first, units, group, shared)
        while u < units:
            done[u] += 1
            s = 0.0
            for i in range(spin * (1 + (u * 7919) % 13)):  # units of uneven cost: threads steal
                s += i * 1e-9
            done[u] += s < 0
            u = simd.claim_near(flags, counter, u + 1, units, group, shared)

# shared=False: a serial twin's one thread (prange runs as range)
for kernel, shared in ((njit(parallel=True)(claim_all), True), (njit(claim_all), False)):
    for units in (1, 2, 3, 5, 7, 17, 64, 100, 256, 257, 1000):
        for group in (0, 1, 3, 7, 300):
            for spin in (0, 2000):
                for _ in range(5):
                    done = np.zeros(units, np.int64)
                    kernel(done, group, spin, shared)
                    assert (done == 1).all(), (units, group, spin, shared, done)
print("ok")
"""


def test_claim_near_hands_out_every_unit_once():
    """Every unit exactly once, in order (group 0) or shares first, more units than flags too, and
    in order in a serial kernel (shared=False). In a
    process of its own on 5 threads: this one may have a single core (taskset -c 1), so one
    thread; 5 threads share the cores, are preempted mid-claim and steal."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_NUM_THREADS="5")
    done = subprocess.run([sys.executable, "-c", CLAIM_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_lanes_follow_the_batch_the_layers_last_ran(monkeypatch):
    """Made once per batch shape and thread count: a batch of another size makes them again."""
    monkeypatch.setattr(threads, "parallel", lambda: True)
    monkeypatch.setattr(threads, "in_use", lambda: 2)
    model, opt = _trained_once(1)
    loss = nb.SoftmaxCrossEntropy()
    lanes = []
    for batch in (1, 64, 1):
        x = np.ones((batch, 784), F)
        loss.forward(model.forward(x), np.zeros(batch, np.int64))
        model.backward(loss.backward())
        lanes.append(opt._lanes(opt._groups()))
    assert lanes[0] is not None and lanes[1] is None and lanes[2] is not None
    monkeypatch.setattr(threads, "in_use", lambda: 3)
    spans, first = opt._lanes(opt._groups())
    assert len(first) == 4


@pytest.mark.parametrize("m, n", [(256, 784), (128, 256), (10, 128), (700, 700)])
@pytest.mark.parametrize("k", [1, 3, 4, 8, 32, 128])
def test_dw_shares_says_serial_exactly_where_the_backward_runs_serially(m, n, k):
    """dw_shares repeats cpu.Kernel's choice of twin for the dW call; a threshold changed on one
    side only would hand the optimizer's lanes rows their threads never wrote."""
    dw, db = np.zeros((m, n), F), np.zeros(m, F)
    kernel, args = cpu.backward_params_route(dw, db, np.zeros((k, m), F), np.zeros((k, n), F), True)
    serial = kernel.work(*args) < kernel.threshold
    shares = cpu.dw_shares(dw, k, 2)
    assert (shares is None) == serial
    if shares is not None:  # whole dW, each element once
        cover = np.zeros((m, n), np.int64)
        for _, r0, r1, c0, c1 in shares:
            cover[r0:r1, c0:c1] += 1
        assert (cover == 1).all()
