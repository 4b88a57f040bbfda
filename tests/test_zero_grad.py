"""zero_grad() marks a Linear's gradients as zeros without writing them (issue #9: at batch 1 the
memset cost as much as the backward); the next backward writes dW = GᵀX, db = Σ_i G_i instead of
adding. These tests hold that to "the same as filling with zeros, then adding":

- every read of a gradient after zero_grad (layer attribute, Parameter.grad, the optimizer's step,
  clip_grad_norm_, re-packing, moving) sees zeros, never the old values;
- the first backward after zero_grad gives the gradient that fill-then-accumulate gives. Compared
  with np.array_equal, which takes -0.0 == +0.0: writing a zero sum leaves its sign (-0.0) where
  0 + (-0.0) gave +0.0, the one difference there can be; every other bit must agree;
- later backwards, and writes into a gradient between zero_grad and backward, accumulate as before;
- and zero_grad itself writes nothing (the laziness this is for).
"""

import numpy as np
import pytest

import nbnet as nb
from nbnet import cpu, simd
from nbnet.layers import Parameter
from nbnet.model import pack_parameters

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}  # sums in another order
# (batch, in, out): the row loop up to cpu.SHORT_SUM rows, register blocks from 4 rows, odd widths
# (columns past the last full tile), more than simd.KC rows (a second chunk of the sum), and two
# row blocks of simd.MC with A copied to panels.
SHAPES = [(1, 65, 33), (2, 65, 33), (3, 65, 33), (4, 65, 33), (9, 65, 33), (simd.KC + 7, 65, 33),
          (20, 300, simd.MC + 10)]


def mlp(dtype, n=65, m=33, bias=True):
    return nb.Sequential([nb.Linear(n, m, seed=0, dtype=dtype, bias=bias), nb.ReLU(),
                          nb.Linear(m, 7, seed=1, dtype=dtype), nb.Tanh(), nb.Linear(7, 3, seed=2, dtype=dtype)])


def batch(k, n, dtype, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((k, n)).astype(dtype), rng.integers(0, 3, k)


def backward(model, x, y, loss_fn=None):
    loss_fn = loss_fn or nb.SoftmaxCrossEntropy()
    loss_fn.forward(model.forward(x), y)
    model.backward(loss_fn.backward())


def fill_zeros(model):
    """The eager zero_grad this replaces: write zeros into every gradient."""
    for p in model.parameters():
        p.grad[...] = 0


def grads(model):
    return [p.grad.copy() for p in model.parameters()]


def assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and u.shape == v.shape
        assert np.array_equal(u, v), np.abs(u.astype(np.float64) - v).max()


def old_grads(model, k=5):
    """Make every gradient non-zero (a backward at batch k, from zeros), so that a stale read shows."""
    x, y = batch(k, model[0].in_features, model.dtype.type, seed=99)
    backward(model, x, y)
    assert all(np.count_nonzero(p.grad) > 0.9 * p.grad.size for p in model.parameters())


def twin(which):
    """linear_backward_params through the `which` twin of the kernel it routes to (rows or blocks)."""
    def run(dw, db, g, x, accumulate):
        kernel, args = cpu.backward_params_route(dw, db, g, x, accumulate)
        getattr(kernel, which)(*args)
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n,m", SHAPES)
def test_kernel_writes_without_reading_what_is_there(k, n, m, dtype):
    """accumulate=False over NaN gives what accumulate=True gives from zeros, both twins."""
    rng = np.random.default_rng(k)
    g, x = rng.standard_normal((k, m)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    g[:, 0] = 0  # a zero column of G: a zero row of dW and a zero db_0
    want_w, want_b = np.zeros((m, n), dtype), np.zeros(m, dtype)
    serial, parallel = (twin(which) for which in ("serial", "parallel"))
    serial(want_w, want_b, g, x, True)
    ref_w, ref_b = np.zeros((m, n), dtype), np.zeros(m, dtype)
    cpu.linear_backward_params_ref(ref_w, ref_b, g, x)
    np.testing.assert_allclose(want_w, ref_w, **TOL[dtype])
    twice_w, twice_b = want_w.copy(), want_b.copy()
    serial(twice_w, twice_b, g, x, True)
    for run in (serial, parallel):
        dw, db = np.full((m, n), np.nan, dtype), np.full(m, np.nan, dtype)
        run(dw, db, g, x, False)
        assert np.array_equal(dw, want_w) and np.array_equal(db, want_b)  # -0.0 == +0.0, NaN != NaN
        run(dw, db, g, x, True)  # and then it adds
        assert np.array_equal(dw, twice_w) and np.array_equal(db, twice_b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_grad_writes_nothing_and_every_read_sees_zeros(dtype):
    model = mlp(dtype)
    opt = nb.SGD(model.parameters(), lr=0.1, momentum=0.9)
    old_grads(model)
    kept = [p.grad for p in model.parameters()]  # the arrays themselves
    before = [g.copy() for g in kept]
    for zero_grad in (opt.zero_grad, model.zero_grad, lambda: [layer.zero_grad() for layer in model]):
        zero_grad()
        assert_same(kept, before)  # nothing written: the old values stay until a read or backward
        assert all(not layer.grad_weight.any() for layer in model if isinstance(layer, nb.Linear))
        assert all(not layer.grad_bias.any() for layer in model if isinstance(layer, nb.Linear))
        assert all(g is p.grad for g, p in zip(kept, model.parameters()))  # zeroed in place
        for g, b in zip(kept, before):
            g[...] = b
    for read in (lambda: [p.grad for p in model.parameters()], lambda: [model[0].grad_weight]):
        opt.zero_grad()
        read()
        assert not kept[0].any()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 3, 4, 9])
def test_one_backward_after_zero_grad_equals_fill_then_accumulate(k, dtype, bias):
    lazy, eager = mlp(dtype, bias=bias), mlp(dtype, bias=bias)
    for model in (lazy, eager):
        old_grads(model)
    x, y = batch(k, 65, dtype, seed=k)
    x[:, :3] = 0  # zero inputs: dW columns whose sums are zero (the sign of a zero may differ)
    lazy.zero_grad()
    fill_zeros(eager)
    for model in (lazy, eager):
        backward(model, x, y)
    assert_same(grads(lazy), grads(eager))
    assert not lazy[0]._zero_weight and not lazy[0]._zero_bias  # backward cleared the marks


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 6])
def test_backwards_after_the_first_accumulate(k, dtype):
    lazy, eager = mlp(dtype), mlp(dtype)
    (x1, y1), (x2, y2) = batch(k, 65, dtype, 1), batch(k + 1, 65, dtype, 2)
    for model in (lazy, eager):
        old_grads(model)
    lazy.zero_grad()
    fill_zeros(eager)
    for model in (lazy, eager):
        backward(model, x1, y1)
        backward(model, x2, y2)
    assert_same(grads(lazy), grads(eager))
    # and they are the sum of the two batches' gradients
    fresh = mlp(dtype)
    backward(fresh, x1, y1)
    g1 = grads(fresh)
    fresh.zero_grad()
    backward(fresh, x2, y2)
    for got, a, b in zip(grads(lazy), g1, grads(fresh)):
        np.testing.assert_allclose(got, a + b, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [2, 5])
def test_a_write_between_zero_grad_and_backward_is_kept(k, dtype):
    lazy, eager = mlp(dtype), mlp(dtype)
    x, y = batch(k, 65, dtype, 3)
    extra = np.random.default_rng(5).standard_normal(lazy[0].grad_weight.shape).astype(dtype)
    for model in (lazy, eager):
        old_grads(model)
    lazy.zero_grad()
    fill_zeros(eager)
    for model in (lazy, eager):
        model[0].grad_weight += extra
        model[2].grad_bias[1] = 2.5
        backward(model, x, y)
    assert_same(grads(lazy), grads(eager))
    fresh = mlp(dtype)
    backward(fresh, x, y)
    np.testing.assert_array_equal(lazy[0].grad_bias, fresh[0].grad_bias)
    np.testing.assert_allclose(lazy[0].grad_weight, extra + fresh[0].grad_weight, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_optimizer_over_unpacked_and_partial_parameters(dtype):
    """Parameters of layers outside a Sequential (not packed), and an optimizer that holds only the
    weights: its zero_grad leaves the biases' gradients to accumulate, as eager filling would."""
    def layers():
        return [nb.Linear(65, 33, seed=0, dtype=dtype), nb.ReLU(), nb.Linear(33, 3, seed=1, dtype=dtype)]

    runs = []
    for lazy in (True, False):
        ls = layers()
        weights = [Parameter(ls[0], "weight"), Parameter(ls[2], "weight")]
        opt = nb.SGD(weights, lr=0.05)
        assert opt._flat() is None  # not packed: one group per parameter
        loss_fn = nb.SoftmaxCrossEntropy()
        for step in range(3):
            x, y = batch(4 if step else 1, 65, dtype, step)
            if lazy:
                opt.zero_grad()
            else:
                for p in weights:
                    p.grad[...] = 0
            out = ls[2].forward(ls[1].forward(ls[0].forward(x)))
            loss_fn.forward(out, y)
            g = ls[2].backward(loss_fn.backward())
            ls[0].backward(ls[1].backward(g))
            opt.step()
        runs.append([a.copy() for layer in ls[::2] for a in (layer.weight, layer.grad_weight, layer.bias, layer.grad_bias)])
    assert_same(*runs)
    assert runs[0][3].any()  # the bias gradients summed three batches


class NotALinear:
    """A layer-like object with a parameter nbnet did not make: the optimizer fills its gradient."""

    def __init__(self):
        self.weight, self.grad_weight = np.ones(4), np.ones(4)


def test_an_optimizer_fills_gradients_that_are_not_a_linears():
    other = NotALinear()
    model = mlp(np.float64)
    opt = nb.SGD([*model.parameters(), Parameter(other, "weight")], lr=0.1)
    opt.zero_grad()
    assert not other.grad_weight.any()
    assert not any(p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt_cls", [lambda ps: nb.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
                                     lambda ps: nb.Adam(ps, lr=1e-3)])
def test_training_is_bitwise_the_same_as_with_eager_zeros(opt_cls, dtype):
    results = []
    for lazy in (True, False):
        model = mlp(dtype)
        opt = opt_cls(model.parameters())
        loss_fn = nb.SoftmaxCrossEntropy()
        for step in range(6):
            x, y = batch((1, 2, 5, 1, 8, 3)[step], 65, dtype, step)
            if lazy:
                opt.zero_grad()
            else:
                fill_zeros(model)
            backward(model, x, y, loss_fn)
            if step == 3:  # gradient accumulation over two batches
                backward(model, *batch(4, 65, dtype, 10), loss_fn)
            opt.step()
        results.append([p.data.copy() for p in model.parameters()] + grads(model))
    assert_same(*results)


def test_a_step_without_backward_sees_zero_gradients():
    model = mlp(np.float64)
    opt = nb.SGD(model.parameters(), lr=0.1)
    old_grads(model)
    before = [p.data.copy() for p in model.parameters()]
    opt.zero_grad()
    opt.step()  # the gradients read as zeros: nothing moves
    assert_same([p.data for p in model.parameters()], before)


def test_clip_pack_and_move_read_zeros():
    model = mlp(np.float64)
    old_grads(model)
    model.zero_grad()
    assert nb.clip_grad_norm_(model.parameters(), 1.0) == 0.0

    # Layers marked before they are packed: the packed buffer holds zeros, not the old values.
    layers = [nb.Linear(4, 3, seed=0, dtype=np.float64), nb.Linear(3, 2, seed=1, dtype=np.float64)]
    for layer in layers:
        layer.grad_weight[...], layer.grad_bias[...] = 1, 1
        layer.zero_grad()
    model = nb.Sequential(layers)
    assert not any(p.grad.any() for p in model.parameters())

    # model.to("cpu") moves (here: keeps) the gradients and packs them again: zeros, still usable.
    model = mlp(np.float64)
    old_grads(model)
    model.zero_grad()
    model.to("cpu")
    assert all(isinstance(p.grad, np.ndarray) and not p.grad.any() for p in model.parameters())
    x, y = batch(3, 65, np.float64, 4)
    backward(model, x, y)
    fresh = mlp(np.float64)
    backward(fresh, x, y)
    assert_same(grads(model), grads(fresh))


def test_pack_parameters_reads_through_the_mark():
    layer = nb.Linear(5, 4, seed=0)
    layer.grad_weight[...] = 3
    layer.zero_grad()
    pack_parameters(layer.parameters())
    assert layer.grad_weight.base is not None and not layer.grad_weight.any()


def test_linear_keeps_its_repr_config_and_attributes():
    layer = nb.Linear(5, 4, seed=0, bias=False)
    assert repr(layer) == "Linear(5, 4, bias=False)" and layer.config()["bias"] is False
    assert layer.grad_bias is None and layer.grad_weight.shape == (4, 5) and not layer.grad_weight.any()
    layer.zero_grad()
    assert not layer._zero_bias  # no bias: nothing to mark
    new = np.ones((4, 5), np.float32)
    layer.grad_weight = new  # assigning clears the mark: the array is used as it is
    assert layer.grad_weight is new and layer.grad_weight.all()


def test_a_linear_without_bias_writes_its_gradient_without_filling_it_first(monkeypatch):
    """bias=False has no bias gradient to be marked: a marked weight gradient alone is the whole
    mark, and the backward writes dW instead of filling zeros, then adding."""
    model = mlp(np.float32, bias=False)
    x, y = batch(4, 65, np.float32, 0)
    backward(model, x, y)
    fills = []
    monkeypatch.setattr(cpu, "fill", lambda arr, value: fills.append(arr.shape))
    model.zero_grad()
    backward(model, x, y)
    assert fills == []
    monkeypatch.undo()
    want = model[0].grad_weight.copy()
    fill_zeros(model)
    backward(model, x, y)
    np.testing.assert_array_equal(model[0].grad_weight, want)


def test_zero_grad_of_a_layer_of_the_users_own_fills_its_gradients():
    """nbnet.layers.Layer, the base Sequential's error names for a layer of one's own: its
    zero_grad() writes zeros into every gradient its parameters() list."""
    from nbnet.layers import Layer

    class Scale(Layer):
        def __init__(self):
            self.weight, self.grad_weight = np.ones(3, np.float32), np.full(3, 5, np.float32)

        def parameters(self):
            return [Parameter(self, "weight")]

        def forward(self, x):
            return x * self.weight

        def backward(self, grad, need_input_grad=True):
            return grad * self.weight

    layer = Scale()
    nb.Sequential(nb.Linear(2, 3), layer).zero_grad()
    np.testing.assert_array_equal(layer.grad_weight, np.zeros(3, np.float32))
