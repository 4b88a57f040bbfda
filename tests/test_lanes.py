"""Work shares that stay with one thread (nbnet.simd.claim_near, nbnet.cpu.dw_shares) and the
optimizer steps in lanes (cpu.sgd_lanes, adam_lanes, nbnet.optim's _lanes): which thread does
what may change nothing but the time."""

import numba
import numpy as np
import pytest
from numba import njit, prange

import nbnet as nb
from nbnet import cpu, simd, threads

F = np.float32


@njit(parallel=True)
def _claim_all(done, group):
    units = done.shape[0]
    counter, flags = simd.unit_counter(), simd.unit_flags()
    for first in prange(units):
        u = simd.claim_near(flags, counter, first, units, group)
        while u < units:
            done[u] += 1
            u = simd.claim_near(flags, counter, u + 1, units, group)


@pytest.mark.parametrize("units", [1, 2, 3, 7, 64, simd.MAX_FLAGGED, simd.MAX_FLAGGED + 1, 1000])
@pytest.mark.parametrize("group", [1, 3])
def test_claim_near_hands_out_every_unit_once(units, group):
    for _ in range(20):
        done = np.zeros(units, np.int64)
        _claim_all(done, group)
        assert (done == 1).all()


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


@pytest.mark.parametrize("batch", [1, 8, 64])
@pytest.mark.parametrize("lanes", [2, 3])
def test_the_lanes_cover_every_parameter_once_and_follow_dw(batch, lanes, monkeypatch):
    model = _mlp()
    opt = nb.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = np.random.default_rng(0).standard_normal((batch, 784)).astype(F)
    model.backward(nb.SoftmaxCrossEntropy().forward(model.forward(x), np.zeros(batch, np.int64)) * 0 + model.layers[-1].out)
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
    shares = cpu.dw_shares(w1, batch, lanes)
    for t, r0, r1, c0, c1 in shares:  # the first layer's dW runs parallel at every batch (it streams)
        assert (lane[:w1.size].reshape(w1.shape)[r0:r1, c0:c1] == t).all()
    w2_at = w1.size + 256
    w2 = model.layers[2].weight
    if cpu.dw_shares(w2, batch, lanes) is None:  # run serially: updated by the calling thread too
        assert (lane[w2_at:w2_at + w2.size] == 0).all()


def test_one_thread_or_unpacked_parameters_take_the_flat_step(monkeypatch):
    model = _mlp()
    opt = nb.SGD(model.parameters(), lr=0.01)
    monkeypatch.setattr(threads, "parallel", lambda: False)
    assert opt._lanes(opt._groups()) is None
    monkeypatch.setattr(threads, "parallel", lambda: True)
    w = [nb.Linear(4, 3, seed=0), nb.Linear(3, 2, seed=1)]
    loose = nb.SGD(w[0].parameters() + w[1].parameters(), lr=0.1)
    assert loose._lanes(loose._groups()) is None or len(loose._groups()) == 1
