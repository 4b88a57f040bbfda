"""PyTorch habits: callable layers and losses, Sequential as a container, state_dict, summary,
Linear(bias=False), clip_grad_norm_, astype, one dtype per model, forgiving targets."""

import importlib.util
import re
import warnings

import numpy as np
import pytest

import nbnet as nb
from nbnet.optim import one_flat


def mlp(dtype=np.float32, bias=True):
    return nb.Sequential(nb.Linear(4, 8, seed=0, dtype=dtype, bias=bias), nb.ReLU(),
                         nb.Linear(8, 3, seed=1, dtype=dtype, bias=bias))


def test_callable_layers_losses_and_sequential_of_args():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 4)).astype(np.float32), rng.integers(0, 3, 5)
    a, b = mlp(), nb.Sequential([nb.Linear(4, 8, seed=0), nb.ReLU(), nb.Linear(8, 3, seed=1)])
    np.testing.assert_array_equal(a(x), b.forward(x))
    layer = nb.Linear(4, 3, seed=2)
    np.testing.assert_array_equal(layer(x).copy(), layer.forward(x))
    loss_fn = nb.SoftmaxCrossEntropy()
    assert loss_fn(a(x), y) == nb.SoftmaxCrossEntropy().forward(a(x), y)
    assert loss_fn(a(x), y.tolist()) == loss_fn(a(x), y)  # a list of labels


def test_model_call_is_the_subclass_forward():
    """`__call__ = forward` bound Sequential.forward: a subclass's own forward ran for
    model.forward(x) and not for model(x)."""

    class Doubled(nb.Sequential):
        def forward(self, x):
            return super().forward(x) * 2

    model, x = Doubled(nb.Linear(4, 3, seed=0)), np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(model(x), 2 * nb.Sequential(nb.Linear(4, 3, seed=0)).forward(x))


def test_a_layer_class_instead_of_a_layer_is_named():
    """nb.ReLU for nb.ReLU(): a class has forward and backward too, and was a TypeError about a
    missing `self` in Layer.parameters."""
    with pytest.raises(ValueError, match=r"ReLU is a class, not a layer: write ReLU\(\)"):
        nb.Sequential(nb.Linear(2, 3), nb.ReLU, nb.Linear(3, 2))


def test_a_module_with_no_backward_is_not_a_layer():
    """A torch.nn.Module has forward, parameters and zero_grad, but no backward: refused as not a
    layer when the model is made, not at the first backward."""

    class Module:
        def forward(self, x):
            return x

        def parameters(self):
            return []

        def zero_grad(self):
            pass

    with pytest.raises(ValueError, match=r"^Sequential: Module\(\) is not a layer: it has no backward\(\)$"):
        nb.Sequential(nb.Linear(2, 3), Module())
    with pytest.raises(ValueError, match=r"^Sequential: 5 is not a layer: it has no forward\(\)$"):  # the first it lacks
        nb.Sequential(nb.Linear(2, 3), 5)

    class NoBack(nb.Layer):  # an nb.Layer was "<__main__.NoBack object at 0x..> is not a layer"
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match=r"^Sequential: NoBack\(\) has no backward\(\): a layer needs forward\(x\) "
                                         r"-> y and backward\(grad_y\) -> grad_x \(README"):
        nb.Sequential(nb.Linear(2, 3), NoBack())


def test_a_layer_of_the_users_own_without_parameters_or_zero_grad_is_named():
    """Sequential checked for forward and backward, then called parameters() (an AttributeError
    from its own __init__) and, at model.zero_grad(), zero_grad()."""

    class Double:
        def forward(self, x):
            return x * 2

        def backward(self, grad, **kwargs):
            return grad * 2

    for missing in ("parameters", "zero_grad"):
        layer = Double()
        setattr(layer, "zero_grad" if missing == "parameters" else "parameters", list)
        with pytest.raises(ValueError, match=re.escape(f"Sequential: Double() is not a layer: it has no {missing}()")):
            nb.Sequential(nb.Linear(2, 3), layer, nb.Linear(3, 2))


def test_one_layer_object_in_two_places_is_refused():
    """torch's `relu = nn.ReLU(); nn.Sequential(l1, relu, l2, relu, l3)` works there, but an nbnet
    layer keeps its forward's input and output for backward: the second place overwrote the first's,
    and l1's gradient came out wrong (0.43 off in float64), silently. A Linear twice was listed twice
    in parameters() and stepped twice."""
    relu, lin = nb.ReLU(), nb.Linear(3, 3)
    with pytest.raises(ValueError, match=r"layers 1 and 3 are the same ReLU\(\)"):
        nb.Sequential(nb.Linear(2, 3), relu, nb.Linear(3, 3), relu, nb.Linear(3, 2))
    with pytest.raises(ValueError, match=r"layers 0 and 1 are the same Linear\(3, 3\)"):
        nb.Sequential(lin, lin)
    block = nb.Sequential(nb.Linear(3, 3), nb.ReLU())
    with pytest.raises(ValueError, match="layers 0 and 2 are the same"):
        nb.Sequential(block, block)


def test_a_sequential_among_the_layers_gives_its_layers(tmp_path):
    """torch users nest blocks; nbnet keeps one flat stack. A nested Sequential trained but its
    save was an AttributeError ('Sequential' object has no attribute 'config')."""
    block = nb.Sequential(nb.Linear(4, 8, seed=0), nb.ReLU())
    model = nb.Sequential(block, nb.Linear(8, 3, seed=1))
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear"] and model[0] is block[0]
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(model(x), mlp()(x))
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(nb.load(tmp_path / "m.npz")(x), model(x))


def test_batches_of_lists():
    """Shuffled batches of lists were NumPy's 'only integer scalar arrays can be converted'."""
    x, y = [[0, 1], [2, 3], [4, 5]], [0, 1, 2]
    got = list(nb.batches(x, y, 2, shuffle=True, seed=0))
    assert sorted(int(v) for _, yb in got for v in yb) == [0, 1, 2]
    assert all(xb[i, 0] == 2 * yb[i] for xb, yb in got for i in range(len(yb)))



class _Frame:
    """What nb.batches sees of a pandas DataFrame (pandas is not a dependency): a shape, len, an
    array of its values, and [] that picks columns, not rows."""

    def __init__(self, values):
        self.values, self.shape = values, values.shape

    def __len__(self):
        return len(self.values)

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def __getitem__(self, columns):
        raise KeyError(f"None of {columns!r} are in the columns")


def test_batches_of_a_data_frame_are_rows():
    """A DataFrame has a shape, so nb.batches kept it and indexed it with the shuffled rows, which
    a DataFrame reads as column labels: a KeyError, or other batches where the labels exist. Only
    host and GPU arrays are kept as they are; the rest is made an array."""
    x, y = np.arange(12.0).reshape(6, 2), np.arange(6)
    for shuffle in (True, False):
        got = list(nb.batches(_Frame(x), _Frame(y), 4, shuffle=shuffle, seed=0))
        want = list(nb.batches(x, y, 4, shuffle=shuffle, seed=0))
        for (a, b), (c, d) in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)


def test_batches_of_ranges_and_what_cannot_be_batched():
    """A range (batches of row indices, as a DataLoader over range(N) gives) was NumPy's 'only
    integer scalar arrays' TypeError when shuffled; a generator, None or a number was Python's
    'object of type ... has no len()' from inside batches."""
    got = list(nb.batches(range(5), range(10, 15), 2, seed=0))
    assert sorted(int(v) for xb, _ in got for v in xb) == [0, 1, 2, 3, 4]
    assert all((yb == xb + 10).all() for xb, yb in got)
    for x, y in (((i for i in range(5)), range(5)), (range(5), None), (5, 5)):
        with pytest.raises(TypeError, match="batches: x and y must be arrays or sequences of rows"):
            list(nb.batches(x, y, 2))


def test_len_indexing_slicing_iteration():
    model = mlp()
    assert len(model) == 3 and model[0] is model.layers[0] and model[-1] is model.layers[2]
    assert list(model) == model.layers and [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear"]
    arrays = [p.data for p in model.parameters()]
    head = model[:2]
    assert all(p.data is a for p, a in zip(model.parameters(), arrays))  # not repacked
    assert isinstance(head, nb.Sequential) and head.layers == model.layers[:2] and head[0] is model[0]
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(model[2](head(x).copy()), model(x))
    # the slice shares the layers without repacking them: the model's optimizer keeps its one pass
    assert one_flat([p.data for p in model.parameters()]) is not None
    with pytest.raises(ValueError, match="at least one layer"):
        model[3:]
    # a slice writes the model's buffers: it has the model's lock, and knows which thread ran the
    # last forward (a backward from another thread is refused through either)
    assert head.lock is model.lock and head._forward_thread is model._forward_thread


def test_a_hand_written_step_on_parameter_handles_updates_every_parameter():
    """PyTorch's hand-written step, `p.data -= lr * p.grad`, and gradient accumulation's
    `p.grad /= n`: Python writes the result back with `p.data = ...`, and the handles had no setter,
    so the first parameter was updated in place and then an AttributeError ended the loop."""
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    y = np.arange(8) % 3

    def model_with_gradients():
        model = nb.Sequential(nb.Linear(4, 5, seed=0), nb.ReLU(), nb.Linear(5, 3, seed=1))
        loss_fn = nb.SoftmaxCrossEntropy()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        return model

    model, reference = model_with_gradients(), model_with_gradients()
    for p in model.parameters():
        p.grad /= 2
        p.data -= 0.1 * p.grad
    opt = nb.SGD(reference.parameters(), lr=0.05)
    opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-6)
        assert p.data is p.layer.weight or p.data is p.layer.bias  # still the layer's own array
    # an assignment is the layer's (`layer.weight = w`), checked at its next call
    p, zeros = model.parameters()[0], np.zeros((5, 4), np.float32)
    p.data = zeros
    assert model[0].weight is zeros
    np.testing.assert_array_equal(model(x), np.tile(model[2].bias, (8, 1)))  # ReLU(0) W2ᵀ + b2
    p.data = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="weight must be a C-contiguous float32 \\(5, 4\\)"):
        model(x)


def test_state_dict_round_trip_and_errors():
    model, other = mlp(), nb.Sequential(nb.Linear(4, 8, seed=5), nb.ReLU(), nb.Linear(8, 3, seed=6))
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    sd_before = {k: v.copy() for k, v in sd.items()}
    model.layers[0].weight[...] += 1  # a copy: the state_dict does not follow
    np.testing.assert_array_equal(sd["0.weight"], sd_before["0.weight"])
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    x = np.ones((2, 4), np.float32)
    model.load_state_dict(sd)
    np.testing.assert_array_equal(model(x), other(x))
    untouched = other.state_dict()
    bad = dict(sd, **{"2.bias": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="2.bias"):
        other.load_state_dict(dict(bad, **{"0.weight": sd["0.weight"] + 1}))
    np.testing.assert_array_equal(other.state_dict()["0.weight"], untouched["0.weight"])  # nothing written
    with pytest.raises(ValueError, match="float64"):
        other.load_state_dict({k: v.astype(np.float64) for k, v in sd.items()})
    with pytest.raises(ValueError, match="missing keys"):
        other.load_state_dict({"0.weight": sd["0.weight"]})
    with pytest.raises(ValueError, match="unexpected keys"):
        other.load_state_dict(dict(sd, extra=np.zeros(1)))
    other.load_state_dict({"0.weight": sd["0.weight"] * 0}, strict=False)
    assert not other.layers[0].weight.any() and other.layers[2].weight.any()


def test_summary_lists_layers_shapes_and_parameters(capsys):
    model = nb.Sequential(nb.Linear(784, 256, seed=0), nb.ReLU(), nb.Linear(256, 10, seed=1, bias=False))
    text = model.summary()
    lines = text.splitlines()
    assert "Linear(784, 256)" in lines[2] and "(N, 256)" in lines[2] and "200,960" in lines[2]
    assert "ReLU()" in lines[3] and "(N, 256)" in lines[3]
    assert "bias=False" in lines[4] and "(N, 10)" in lines[4] and "2,560" in lines[4]
    assert lines[-1].startswith("203,520 parameters (float32")
    assert 784 * 256 + 256 + 256 * 10 == model.num_parameters() == 203_520
    assert repr(text) == text  # a REPL shows the table itself


def test_summary_of_layers_of_the_users_own():
    """A layer of the user's own that narrows (N, 8) to (N, 7) was shown as (N, 8), the last Linear's
    width; one written as a plain class as "<__main__.Square object at 0x7f...>"."""

    class Square:  # a plain class: forward, backward, parameters, zero_grad
        def forward(self, x):
            self.x = x
            return x * x

        def backward(self, grad):
            return 2 * self.x * grad

        def parameters(self):
            return []

        def zero_grad(self):
            pass

    class Narrow(nb.Layer):
        def forward(self, x):
            return x[:, :-1]

        def backward(self, grad):
            return np.pad(grad, ((0, 0), (0, 1)))

    class Halve(Narrow):  # one that says its width, as Linear does
        out_features = 4

    model = nb.Sequential(nb.Linear(3, 8, seed=0), Square(), nb.ReLU(), Narrow(), nb.Tanh(), Halve(),
                          nb.Sigmoid(), nb.Linear(4, 2, seed=1))
    rows = [line.split("  ") for line in model.summary().splitlines()[2:10]]
    shapes = [[f for f in row if f.strip()][2].strip() for row in rows]
    names = [[f for f in row if f.strip()][1].strip() for row in rows]
    assert names[1] == "Square()" and names[3] == "Narrow()"
    assert shapes == ["(N, 8)", "(N, ?)", "(N, ?)", "(N, ?)", "(N, ?)", "(N, 4)", "(N, 4)", "(N, 2)"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_without_bias(dtype, tmp_path):
    rng = np.random.default_rng(2)
    layer = nb.Linear(4, 3, seed=0, dtype=dtype, bias=False)
    assert layer.bias is None and layer.grad_bias is None and [p.name for p in layer.parameters()] == ["weight"]
    x, g = rng.normal(size=(5, 4)).astype(dtype), rng.normal(size=(5, 3)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12)
    np.testing.assert_allclose(layer(x), x @ layer.weight.T, **tol)
    dx = layer.backward(g)
    np.testing.assert_allclose(dx, g @ layer.weight, **tol)
    np.testing.assert_allclose(layer.grad_weight, g.T @ x, **tol)
    # a model (fused Linear+ReLU path), its optimizers, save/load and checkpoints
    model = mlp(dtype, bias=False)
    assert [p.name for p in model.parameters()] == ["weight", "weight"]
    for opt in (nb.SGD(model.parameters(), lr=0.1, momentum=0.9), nb.Adam(model.parameters())):
        h = nb.train(model, opt, (rng.normal(size=(40, 4)), rng.integers(0, 3, 40)), epochs=2, batch_size=8)
        assert np.isfinite(h[-1]["train_loss"])
    model.save(tmp_path / "m.npz")
    loaded = nb.load(tmp_path / "m.npz")
    assert loaded[0].bias is None and repr(loaded) == repr(model)
    xs = rng.normal(size=(3, 4)).astype(dtype)
    np.testing.assert_array_equal(loaded(xs), model(xs))
    # and the checked formula: finite differences of the mean loss in float64
    if dtype == np.float64:
        loss_fn = nb.SoftmaxCrossEntropy()
        t = rng.integers(0, 3, 3)
        model.zero_grad()
        loss_fn(model(xs), t)
        model.backward(loss_fn.backward())
        w = model[2].weight
        num = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            old = w[idx]
            w[idx] = old + 1e-6
            up = loss_fn(model(xs), t)
            w[idx] = old - 1e-6
            down = loss_fn(model(xs), t)
            w[idx] = old
            num[idx] = (up - down) / 2e-6
        np.testing.assert_allclose(model[2].grad_weight, num, rtol=1e-6, atol=1e-9)


def numpy_clip(grads, max_norm, q):
    flat = np.concatenate([g.ravel().astype(np.float64) for g in grads])
    total = np.abs(flat).max() if q == np.inf else (np.abs(flat) ** q).sum() ** (1 / q)
    coef = min(1.0, max_norm / (total + 1e-6))
    return total, [g * np.float32(coef) if coef < 1 else g for g in grads]


@pytest.mark.parametrize("max_norm,q", [(0.5, 2.0), (100.0, 2.0), (0.1, np.inf), (0.3, 1.0)])
def test_clip_grad_norm_matches_numpy(max_norm, q):
    rng = np.random.default_rng(3)
    model = mlp()
    for p in model.parameters():
        p.grad[...] = rng.normal(size=p.grad.shape)
    before = [p.grad.copy() for p in model.parameters()]
    total, expected = numpy_clip(before, max_norm, q)
    got = nb.clip_grad_norm_(model.parameters(), max_norm, norm_type=q)
    assert isinstance(got, float) and got == pytest.approx(total, rel=1e-12)
    for p, e in zip(model.parameters(), expected):
        np.testing.assert_allclose(p.grad, e, rtol=1e-6)
    after = np.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in model.parameters()))
    if q == 2.0:
        assert after == pytest.approx(min(total, max_norm), rel=1e-5)
    with pytest.raises(ValueError):
        nb.clip_grad_norm_(model.parameters(), -1.0)


def test_clip_grad_norm_adds_torchs_1e6_to_the_norm():
    """The scale is max_norm / (total + 1e-6), as torch's: at gradients of norm 1e-6 that halves it."""
    model = mlp(np.float64)
    for p in model.parameters():
        p.grad[...] = 0
    model.parameters()[0].grad.flat[0] = 1e-6
    assert nb.clip_grad_norm_(model.parameters(), 1e-7) == pytest.approx(1e-6, rel=1e-12)
    assert model.parameters()[0].grad.flat[0] == pytest.approx(1e-6 * 1e-7 / 2e-6, rel=1e-12)


def test_clip_grad_norm_takes_numpy_scalars():
    """A max_norm computed in NumPy (np.float32, np.int64) is a number, as the optimizers' rates are
    (and torch takes it): it was refused as 'must be a number ≥ 0, got np.float32(0.5)'."""
    rng = np.random.default_rng(3)
    model = mlp()
    for p in model.parameters():
        p.grad[...] = rng.normal(size=p.grad.shape)
    grads = [p.grad.copy() for p in model.parameters()]
    for max_norm in (np.float32(0.5), np.int64(1)):
        for p, g in zip(model.parameters(), grads):
            p.grad[...] = g
        total = nb.clip_grad_norm_(model.parameters(), max_norm)
        assert total == pytest.approx(numpy_clip(grads, float(max_norm), 2.0)[0], rel=1e-12)
        clipped = np.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in model.parameters()))
        assert clipped == pytest.approx(float(max_norm), rel=1e-5)
    scaled = []  # a float64 model's scale stays in double: np.float32(0.5) clips as 0.5 does, bit for bit
    for max_norm in (0.5, np.float32(0.5)):
        wide = mlp(np.float64)
        for p, g in zip(wide.parameters(), grads):
            p.grad[...] = g
        nb.clip_grad_norm_(wide.parameters(), max_norm)
        scaled.append(b"".join(p.grad.tobytes() for p in wide.parameters()))
    assert scaled[0] == scaled[1]
    for bad in (True, np.float32(-1), np.float64("nan"), "1"):
        with pytest.raises(ValueError, match="max_norm must be a number"):
            nb.clip_grad_norm_(model.parameters(), bad)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_clip_grad_norm_matches_torch():
    import torch  # noqa: PLC0415

    rng = np.random.default_rng(4)
    grads = [rng.normal(size=s).astype(np.float32) for s in ((8, 4), (8,), (3, 8), (3,))]
    model = mlp()
    for p, g in zip(model.parameters(), grads):
        p.grad[...] = g
    tparams = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for t, g in zip(tparams, grads):
        t.grad = torch.from_numpy(g.copy())
    expected = float(torch.nn.utils.clip_grad_norm_(tparams, 0.7))
    assert nb.clip_grad_norm_(model.parameters(), 0.7) == pytest.approx(expected, rel=1e-6)
    for p, t in zip(model.parameters(), tparams):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("where", [0, 3])
def test_clip_grad_norm_inf_norm_of_a_nan_gradient_is_nan(where):
    """The inf-norm is the largest |g| of all gradients: with a NaN in any of them it is NaN, as in
    torch (and as the 2-norm's sum makes it). Python's max() of the per-gradient maxima kept a NaN
    only when it came first: a NaN in a later parameter gave the others' maximum, which
    error_if_nonfinite passed and training went on with NaN gradients."""
    model = mlp()
    for p in model.parameters():
        p.grad[...] = 1
    model.parameters()[where].grad.flat[0] = np.nan
    assert np.isnan(nb.clip_grad_norm_(model.parameters(), 1.0, norm_type=np.inf))
    with pytest.raises(ValueError, match="total norm of the gradients is nan"):
        nb.clip_grad_norm_(model.parameters(), 1.0, norm_type=np.inf, error_if_nonfinite=True)


def test_clip_grad_norm_of_one_parameter_and_the_inf_norm_of_negative_gradients():
    """A single Parameter is clipped as [it] (torch takes a tensor for an iterable of one); the
    inf-norm is of |g|: a largest gradient of −5 is a norm of 5."""
    model = mlp(np.float64)
    for p in model.parameters():
        p.grad[...] = 0.5
    model.parameters()[2].grad[1, 2] = -5.0
    assert nb.clip_grad_norm_(model.parameters(), 10.0, norm_type=np.inf) == 5.0
    weight = model.parameters()[2]
    assert nb.clip_grad_norm_(weight, 1.0, norm_type=np.inf) == 5.0
    assert weight.grad[1, 2] == pytest.approx(-1.0, rel=1e-6) and model.parameters()[0].grad[0, 0] == 0.5


@pytest.mark.parametrize("q", [0, 0.0, -1.0, float("nan")])
def test_clip_grad_norm_refuses_a_norm_type_that_is_not_positive(q):
    """norm_type 0 was taken and failed dividing by it, a ZeroDivisionError naming nothing."""
    with pytest.raises(ValueError, match="norm_type must be > 0 or inf"):
        nb.clip_grad_norm_(mlp().parameters(), 1.0, norm_type=q)


def test_astype_copies_and_mixed_dtypes_are_refused():
    model = mlp()
    wide = model.astype(np.float64)
    assert wide.dtype == np.float64 and model.dtype == np.float32
    assert all(p.data.dtype == np.float64 for p in wide.parameters())
    for p, q in zip(model.parameters(), wide.parameters()):
        np.testing.assert_array_equal(p.data.astype(np.float64), q.data)
    x = np.random.default_rng(5).normal(size=(3, 4))
    np.testing.assert_allclose(wide(x), model(x.astype(np.float32)), rtol=1e-5, atol=1e-6)
    wide[0].weight[...] = 0  # a copy
    assert model[0].weight.any()
    with pytest.raises(ValueError, match="different dtypes"):
        nb.Sequential(nb.Linear(4, 8), nb.ReLU(), nb.Linear(8, 3, dtype=np.float64))
    with pytest.raises(ValueError, match="dtype"):
        model.astype(np.int32)
    # np.dtype(None) is float64: astype(None) made a float64 copy, where Linear(dtype=None) is refused
    for bad in (None, "bogus"):
        with pytest.raises(ValueError, match="dtype must be float32 or float64"):
            model.astype(bad)


def test_a_layer_forward_converts_nothing():
    with pytest.raises(ValueError, match="expected dtype float32, got float64"):
        nb.Linear(4, 3)(np.ones((2, 4)))


def test_mse_targets_of_shape_n_and_other_dtypes():
    pred = np.array([[0.5], [1.5], [-1.0]], np.float32)
    ref = nb.MSELoss()
    expected = ref(pred, np.array([[1.0], [1.0], [0.0]], np.float32))
    grad = ref.backward().copy()
    for target in (np.array([1.0, 1.0, 0.0]), np.array([1, 1, 0]), [1.0, 1.0, 0.0], np.array([[1.0], [1.0], [0.0]])):
        loss = nb.MSELoss()
        assert loss(pred, target) == expected
        np.testing.assert_array_equal(loss.backward(), grad)
    assert expected == pytest.approx((0.25 + 0.25 + 1.0) / 3)
    with pytest.raises(ValueError, match="shape"):
        nb.MSELoss()(np.ones((3, 2), np.float32), np.ones(3))


@pytest.mark.parametrize("layers", [[nb.Linear(4, 3, seed=0)], [nb.Linear(4, 8, seed=0), nb.ReLU(), nb.Linear(8, 3)],
                                    [nb.Linear(4, 3, seed=0), nb.Sigmoid()]])
def test_backward_of_the_loss_value_says_what_it_wants(layers):
    """model.backward(loss), loss.backward() spelled the nbnet way with the float loss_fn returns,
    was "AttributeError: 'float' object has no attribute 'shape'" from inside a layer."""
    model = nb.Sequential(layers)
    x, y = np.ones((5, 4), np.float32), np.zeros(5, np.int64)
    loss_fn = nb.SoftmaxCrossEntropy()
    loss = loss_fn(model(x), y)
    for grad in (loss, None, loss_fn.backward().tolist()):
        with pytest.raises(ValueError, match=r"expected the gradient array .*loss_fn\.backward\(\)"):
            model.backward(grad)
    model.backward(loss_fn.backward())


class _TorchLike:
    """What a torch tensor shows nbnet: a shape, ndim and a dtype that is torch's, not NumPy's."""

    class dtype:  # noqa: N801 - torch.float32 has no .kind, .isnative or .newbyteorder
        pass

    def __init__(self, shape):
        self.shape, self.ndim = shape, len(shape)


def test_a_torch_tensor_into_a_layer_loss_or_backward_says_numpy_array():
    """model(torch.tensor(x)) raised AttributeError: 'torch.dtype' object has no attribute 'kind',
    and a tensor of int64 labels or of a gradient was refused as 'labels must be an integer array,
    got torch.int64' / 'expected gradient dtype float32, got torch.float32'."""
    model = mlp()
    x, y = np.ones((5, 4), np.float32), np.zeros(5, np.int64)
    for call, shape in ((model, (5, 4)), (nb.ReLU(), (5, 4)), (lambda t: nb.MSELoss()(model(x), t), (5, 3)),
                        (lambda t: nb.BCEWithLogits()(model(x), t), (5, 3))):
        with pytest.raises(ValueError, match="expected a NumPy array, got _TorchLike"):
            call(_TorchLike(shape))
    for loss_fn in (nb.SoftmaxCrossEntropy(), nb.CrossEntropy()):
        with pytest.raises(ValueError, match="labels must be a NumPy integer array or a list, got _TorchLike"):
            loss_fn(nb.Softmax()(model(x)), _TorchLike((5,)))
    loss_fn = nb.SoftmaxCrossEntropy()
    loss_fn(model(x), y)
    with pytest.raises(ValueError, match=r"expected the gradient array .*got _TorchLike"):
        model.backward(_TorchLike((5, 3)))


def test_one_hot_labels_into_a_cross_entropy_say_how_to_make_class_labels():
    """Keras' categorical labels: the errors said only 'labels must be an integer array, got
    float64' or 'expected labels of shape (N,)', not what to pass instead."""
    model = mlp()
    x, y = np.ones((6, 4), np.float32), np.arange(6) % 3
    for onehot in (np.eye(3)[y], np.eye(3, dtype=np.int64)[y]):
        for loss_fn in (nb.SoftmaxCrossEntropy(), nb.CrossEntropy()):
            with pytest.raises(ValueError, match=r"one-hot rows\? pass y\.argmax\(axis=1\)"):
                loss_fn(model(x) if isinstance(loss_fn, nb.SoftmaxCrossEntropy) else nb.Softmax()(model(x)), onehot)
        with pytest.raises(ValueError, match=r"one-hot rows\? pass y\.argmax\(axis=1\)"):
            nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, onehot), epochs=1)
        with pytest.raises(ValueError, match=r"one-hot rows\? pass y\.argmax\(axis=1\)"):
            nb.evaluate(model, x, onehot)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_into_the_cross_entropy_on_probabilities_say_which_loss_takes_logits(dtype):
    """torch's CrossEntropyLoss takes logits; nbnet's CrossEntropy probabilities. Logits gave a
    finite loss, silently wrong: a negative one clamped (-log tiny = 87 in float32), one above 1 a
    negative term. Probabilities of 0 and 1, and NaN ones, are what they were."""
    logits = np.array([[-0.5, 2.0, 0.1], [0.3, 0.2, 0.4], [1.7, 0.3, 0.3]], dtype)
    for y, where in (([0, 1, 2], r"p\[0, 0\] = -0\.5"), ([1, 1, 1], r"p\[0, 1\] = 2\.0"), ([2, 2, 0], r"p\[2, 0\] = 1\.7")):
        with pytest.raises(ValueError, match=where + r" is not a probability in \[0, 1\].*SoftmaxCrossEntropy"):
            nb.CrossEntropy()(logits, y)
    ce = nb.CrossEntropy()
    assert ce(np.array([[0, 1, 0], [1, 0, 0]], dtype), [1, 0]) == 0.0
    assert ce(np.array([[0, 1, 0]], dtype), [0]) == pytest.approx(-np.log(np.finfo(dtype).tiny))
    assert np.isnan(ce(np.full((2, 3), np.nan, dtype), [0, 1]))


@pytest.mark.parametrize("seed", [-1, 1.5, "7"])
def test_batches_names_a_bad_seed(seed):
    """NumPy's own words ("expected non-negative integer", "SeedSequence expects int") named no
    argument."""
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="batches: seed must be None or an integer ≥ 0"):
        list(nb.batches(x, y, 2, seed=seed))


def test_a_big_endian_batch_into_a_layer_says_how_to_make_it_native():
    """Layers convert nothing; a '>f4' batch (np.load of a file from a big-endian machine) was
    refused as 'got >f4', which reads like another type."""
    with pytest.raises(ValueError, match=r"got >f4 in the other byte order \(x.astype\('float32'\)"):
        nb.Linear(3, 2)(np.zeros((2, 3), ">f4"))


def test_flags_must_be_booleans():
    """shuffle="no" (or restore_best="no") is truthy in Python: it shuffled (restored) silently."""
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="batches: shuffle must be True or False"):
        list(nb.batches(x, y, 2, shuffle="no"))
    model = nb.Sequential(nb.Linear(2, 2, seed=0))
    for kwargs in ({"shuffle": "no"}, {"restore_best": "no", "val_split": 0.5}, {"shuffle": 0}):
        with pytest.raises(ValueError, match="must be True or False"):
            nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=1, **kwargs)
    assert len(list(nb.batches(x, y, 2, shuffle=np.bool_(False)))) == 2


@pytest.mark.parametrize("q", [2.0, 3.0])
def test_clip_grad_norm_of_float64_gradients_whose_powers_overflow(q):
    """Σ|g|^q overflowed float64 for gradients past ~1e154 (q = 2): the norm was inf, every
    gradient was scaled to 0 and NumPy warned. It is now taken over |g| / max|g|: the true norm."""
    model = nb.Sequential([nb.Linear(2, 1, dtype=np.float64, seed=0)])
    weight, bias = model.parameters()
    weight.grad[...], bias.grad[...] = [[1e200, -3e199]], 2e199
    want = 1e200 * (1 + 0.3**q + 0.2**q) ** (1 / q)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nb.clip_grad_norm_(model.parameters(), 1.0, norm_type=q) == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(weight.grad, [[1e200 / want, -3e199 / want]], rtol=1e-6)
    assert bias.grad[0] == pytest.approx(2e199 / want, rel=1e-6)


def test_optimizer_state_dict_holds_python_numbers():
    """A NumPy scalar set as a hyper-parameter after construction stayed one in state_dict(), and
    the checkpoint's JSON writer failed on it ('float32 is not JSON serializable')."""
    import json  # noqa: PLC0415

    opt = nb.Adam(mlp().parameters())
    opt.lr, opt.betas, opt.weight_decay = np.float32(0.05), (np.float32(0.9), np.float64(0.99)), np.float64(0.0)
    sd = opt.state_dict()
    assert type(sd["lr"]) is float and all(type(b) is float for b in sd["betas"]) and type(sd["weight_decay"]) is float
    assert json.loads(json.dumps({k: v for k, v in sd.items() if k != "state"}))["lr"] == float(np.float32(0.05))


def test_a_column_of_labels_says_to_ravel_it():
    """(N, 1) labels (Keras' sparse labels, a column cut from a table) were refused as 'expected
    labels of shape (N,), got (N, 1)', without what to pass."""
    model = mlp()
    x, y = np.ones((6, 4), np.float32), (np.arange(6) % 3)[:, None]
    hint = r"expected labels of shape \(6,\), got \(6, 1\) \(one column\? pass y\.ravel\(\)\)"
    with pytest.raises(ValueError, match=hint):
        nb.SoftmaxCrossEntropy()(model(x), y)
    with pytest.raises(ValueError, match=hint):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=1)
    with pytest.raises(ValueError, match=hint):
        nb.evaluate(model, x, y)


def test_a_grad_set_to_none_is_refused_where_it_is_set():
    """torch clears a gradient with `p.grad = None`: taken, the next backward failed with "grad_weight
    must be a C-contiguous float32 (16, 2) host array ..., got NoneType", far from the cause."""
    model = mlp()
    p = model.parameters()[0]
    before = p.grad
    with pytest.raises(ValueError, match=r"^grad of weight of Linear\(4, 8\): nbnet keeps every gradient array, so "
                                         r"it cannot be None; clear gradients with model.zero_grad\(\)"):
        p.grad = None
    assert p.grad is before  # nothing set
    p.grad = np.zeros_like(before)  # an array is an assignment, as before (checked at the next call)
    assert p.grad is not before and not p.grad.any()


def test_requires_grad_false_is_refused_not_ignored():
    """torch's way to freeze a layer, `for p in model[0].parameters(): p.requires_grad = False`, set an
    attribute nothing read: the layer went on training, silently. The error names nbnet's way."""
    model = mlp()
    for p in model.parameters():
        p.requires_grad = True  # every gradient is computed: True is what it is
        assert p.requires_grad and p.requires_grad_() is p
    with pytest.raises(ValueError, match=r"weight of Linear\(4, 8\): nbnet has no requires_grad.*p not in model\[0\]"):
        model.parameters()[0].requires_grad = False
    with pytest.raises(ValueError, match="bias of Linear"):
        model.parameters()[1].requires_grad_(False)
    # the way the error names freezes layer 0
    frozen = model[0].weight.copy()
    opt = nb.SGD([p for p in model.parameters() if p not in model[0].parameters()], lr=0.5)
    loss_fn = nb.SoftmaxCrossEntropy()
    loss_fn(model(np.ones((3, 4), np.float32)), [0, 1, 2])
    model.backward(loss_fn.backward())
    last = model[2].weight.copy()
    opt.step()
    np.testing.assert_array_equal(model[0].weight, frozen)
    assert not np.array_equal(model[2].weight, last)


def test_load_state_dict_strict_false_returns_the_keys_and_refuses_a_dict_that_matches_none():
    """strict=False with keys that all differ (torch's "net.0.weight" of a wrapped model, "1.weight" of
    a torch model whose ReLU is a function) loaded nothing and said nothing: the model stayed as
    initialised. It returned None, where torch returns the missing and unexpected keys."""
    model, sd = mlp(), mlp().state_dict()
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['2.weight', '2.bias'\], unexpected keys \['1.weight', "
                       r"'1.bias'\] \(keys are '<layer index>.<name>', activations counted"):
        model.load_state_dict({k.replace("2.", "1."): v for k, v in sd.items()})
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"missing keys \['0.weight', .*unexpected keys \['net.0.weight'"):
            model.load_state_dict({"net." + k: v for k, v in sd.items()}, strict=strict)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # nothing written
    assert model.load_state_dict(sd) == ([], [])
    result = model.load_state_dict({"0.weight": sd["0.weight"], "head.weight": sd["2.weight"]}, strict=False)
    assert result.missing_keys == ["0.bias", "2.weight", "2.bias"] and result.unexpected_keys == ["head.weight"]
    np.testing.assert_array_equal(model[0].weight, sd["0.weight"])
    assert model.load_state_dict({}, strict=False).missing_keys == list(sd)  # nothing given, nothing refused


def test_load_state_dict_given_a_path_a_model_or_a_saved_files_arrays_says_what_it_takes(tmp_path):
    """A path or a model was iterated as if it were the keys: "unexpected keys ['w', '.', 'n', 'p',
    'z']", "[Linear(2, 4), ReLU(), ...]". np.load of a model.save file (its keys are "layer0.weight")
    said only that every key was missing."""
    model = mlp()
    model.save(tmp_path / "m.npz")
    for given, how in [(str(tmp_path / "m.npz"), r"not a str: nb.load\(path\) reads a model.save file"),
                       (tmp_path / "m.npz", rf"not a {type(tmp_path).__name__}: nb.load\(path\)"),
                       (nb.load(tmp_path / "m.npz"), r"not a Sequential: model.load_state_dict\(other.state_dict\(\)\)"),
                       (list(model.state_dict().values()), r"not a list: as model.state_dict\(\) returns")]:
        with pytest.raises(TypeError, match=r"^load_state_dict takes a dict of arrays by '<layer index>.<name>', " + how):
            model.load_state_dict(given)
    with np.load(tmp_path / "m.npz") as f, pytest.raises(
            ValueError, match=r"these are a model.save file's arrays: nb.load\(path\) reads them\)$"):
        model.load_state_dict(f)
    with pytest.raises(ValueError, match=r"activations counted, as model.state_dict\(\) shows\)$"):
        model.load_state_dict({"x": 1})  # no such hint for other keys


def test_a_torch_models_parameters_into_an_optimizer_or_clip_grad_norm_are_refused_at_once():
    """nb.SGD(torch_model.parameters()) was taken (a torch Parameter has .data and .grad): step() then
    said 'the parameter is Tensor', zero_grad() raised a TypeError from inside torch, and
    nb.clip_grad_norm_ "'Tensor' object has no attribute 'copy_to_host'"."""
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    net(torch.ones(2, 4)).sum().backward()
    for make in (nb.SGD, nb.Adam):
        with pytest.raises(TypeError, match=r"parameter 0 holds a torch.Tensor, not a NumPy array.*model.parameters"):
            make(net.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"clip_grad_norm_: a gradient is a torch.Tensor.*torch.nn.utils.clip_grad_norm_"):
        nb.clip_grad_norm_(net.parameters(), 1.0)


def test_weights_move_between_torch_and_nbnet_through_state_dict():
    """README's recipe, both ways: the outputs agree to float32 rounding (float64 in float64)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    x = np.random.default_rng(0).standard_normal((7, 20)).astype(np.float32)
    model = nb.Sequential(nb.Linear(20, 16), nb.ReLU(), nb.Linear(16, 5))
    model.load_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
    with torch.no_grad():
        np.testing.assert_allclose(model(x), net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    model.load_state_dict(nb.Sequential(nb.Linear(20, 16, seed=3), nb.ReLU(), nb.Linear(16, 5, seed=4)).state_dict())
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="float64, the model has .* float32"):  # no silent conversion
        model.load_state_dict({k: v.double().numpy() for k, v in net.state_dict().items()})
    wide = model.astype(np.float64)
    net.double().load_state_dict({k: torch.from_numpy(v) for k, v in wide.state_dict().items()})
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x).double()).numpy(), wide(x.astype(np.float64)), rtol=1e-12)


def test_adam_state_moves_between_torch_and_nbnet_as_readme_shows():
    """torch's optimizer state_dict was refused as "unexpected optimizer state entry '0'"; now it is
    named as torch's, and README's conversion (run here as written) goes on step for step, both ways."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.arange(8) % 3
    torch_opt = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=0.1)

    def torch_steps(n):
        for _ in range(n):
            torch_opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            torch_opt.step()

    def nbnet_steps(n):
        loss_fn = nb.SoftmaxCrossEntropy()
        for _ in range(n):
            opt.zero_grad()
            loss_fn(model(x.numpy()), y.numpy())
            model.backward(loss_fn.backward())
            opt.step()

    torch_steps(3)
    model = nb.Sequential(nb.Linear(6, 5, dtype=np.float64), nb.ReLU(), nb.Linear(5, 3, dtype=np.float64))
    model.load_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
    opt = nb.Adam(model.parameters())
    t = torch_opt.state_dict()
    with pytest.raises(ValueError, match="Adam: this is a torch.optim state_dict .*README"):
        opt.load_state_dict(t)
    exec(_readme_optimizer_recipe(), {"torch_opt": torch_opt, "opt": opt})  # as README writes it
    torch_steps(2)
    nbnet_steps(2)
    for k, v in net.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v.numpy(), rtol=1e-10, atol=1e-14)
    # and back: nbnet's steps go on in torch
    nbnet_steps(2)
    sd = opt.state_dict()
    torch_opt.load_state_dict({"state": {i: {"step": torch.tensor(float(sd["step_count"])),
                                             **{name: torch.from_numpy(sd["state"][f"{name}.{i}"].reshape(p.shape))
                                                for name in ("exp_avg", "exp_avg_sq")}}
                                         for i, p in enumerate(net.parameters())},
                               "param_groups": torch_opt.state_dict()["param_groups"]})
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    torch_steps(1)
    nbnet_steps(1)
    for k, v in net.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v.numpy(), rtol=1e-10, atol=1e-14)


def _readme_optimizer_recipe():
    """README's torch -> nbnet optimizer-state conversion, the python block in its list item."""
    import re
    import textwrap
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    text = readme.split("Converting an `Adam`'s", 1)[1]
    return textwrap.dedent(re.search(r"```python\n(.*?)\n\s*```", text, re.S).group(1))


def test_zero_grad_takes_set_to_none_false_and_refuses_true():
    """`opt.zero_grad(set_to_none=True)`, torch's habit, was "unexpected keyword argument" (the
    model's too); False is what nbnet does, True (a step skipping untouched parameters) is named."""
    model = mlp()
    opt = nb.Adam(model.parameters())
    loss_fn = nb.SoftmaxCrossEntropy()
    loss_fn(model(np.ones((3, 4), np.float32)), [0, 1, 2])
    model.backward(loss_fn.backward())
    for who, zero_grad in (("Adam", opt.zero_grad), ("Sequential", model.zero_grad)):
        for bad in (True, None, 1):
            with pytest.raises(ValueError, match=rf"{who}.zero_grad: set_to_none={bad!r}: .*set_to_none=False"):
                zero_grad(set_to_none=bad)
        assert model[0].grad_weight.any()  # refused: nothing done
        zero_grad(set_to_none=False)
        assert not any(p.grad.any() for p in model.parameters())
        model.backward(loss_fn.backward())


def test_param_groups_names_the_lr_attribute_and_setting_it_changes_the_step():
    """`for g in opt.param_groups: g["lr"] = ...` was "'SGD' object has no attribute 'param_groups'"."""
    model = mlp()
    opt = nb.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(AttributeError, match=r"SGD has no param_groups: .*opt.lr = 0.01 \(also momentum, weight_decay, "
                                             r"nesterov\)"):
        opt.param_groups
    assert not hasattr(nb.Adam(model.parameters()), "param_groups")
    loss_fn = nb.SoftmaxCrossEntropy()
    loss_fn(model(np.ones((3, 4), np.float32)), [0, 1, 2])
    model.backward(loss_fn.backward())
    before, grad = model[2].bias.copy(), model[2].grad_bias.copy()
    opt.lr = 0.5
    opt.step()
    np.testing.assert_allclose(model[2].bias, before - 0.5 * grad, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.dtype(np.float32), "float64", "double"])
def test_to_a_dtype_names_astype(dtype):
    """torch's model.to(torch.float64) / model.to("double") said only 'unknown device'."""
    with pytest.raises(ValueError, match=r"unknown device .*expected 'cuda' or 'cpu' \(for a dtype: model.astype"):
        mlp().to(dtype)


def test_named_parameters_are_state_dicts_keys_in_parameter_order():
    """torch's `for name, p in model.named_parameters()` was an AttributeError."""
    model = nb.Sequential(nb.Linear(4, 8, seed=0), nb.ReLU(), nb.Linear(8, 3, seed=1, bias=False))
    named = model.named_parameters()
    assert [k for k, _ in named] == list(model.state_dict()) == ["0.weight", "0.bias", "2.weight"]
    assert [p for _, p in named] == model.parameters()
    assert dict(named)["2.weight"].data is model[2].weight


@pytest.mark.parametrize("name, says", [
    ("double", r"model.astype\(np.float64\)"), ("float", r"model.astype\(np.float32\)"),
    ("cuda", r'model.to\("cuda"\)'), ("cpu", r'model.to\("cpu"\)'), ("fit", r"nb.train\(model, opt"),
    ("compile", "no compile step"), ("predict", r"nb.predict\(model, x\)"),
    ("evaluate", r"nb.evaluate\(model, x, y\)"), ("count_params", r"model.num_parameters\(\)"),
    ("half", "not float16")])
def test_torch_and_keras_model_methods_name_nbnets_way(name, says):
    """model.double(), model.cuda(), model.fit(...) said only "no attribute 'double'"."""
    model = mlp()
    with pytest.raises(AttributeError, match=f"has no attribute '{name}': .*{says}"):
        getattr(model, name)
    assert not hasattr(model, name)
    with pytest.raises(AttributeError, match=r"has no attribute 'fitt'$"):
        model.fitt
    # what the hint says to use exists
    assert model.astype(np.float64).dtype == np.float64 and model.num_parameters() > 0


def test_one_sample_as_a_row_says_how_to_make_it_a_batch():
    """torch's nn.Linear takes one sample of shape (in,); nbnet's layers take batches (N, in)."""
    model = mlp()
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4\), got \(4,\) \(one sample: x\[None\]\)$"):
        model(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4\), got \(5,\)$"):  # not one sample of it
        model(np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4\), got \(1, 1, 4\)$"):
        model(np.ones((1, 1, 4), np.float32))
    assert model(np.ones(4, np.float32)[None]).shape == (1, 3)
