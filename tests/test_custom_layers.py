"""Layers of the user's own, as the README's "Writing your own layer" has them: nb.Layer subclasses
with forward(x) and backward(grad_y), in a Sequential, through nb.train, nb.evaluate and nb.predict."""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import nbnet as nb

REPO = Path(__file__).resolve().parent.parent


class _Leaky(nb.Layer):
    """backward(self, grad): the signature the interface documents, no keywords."""

    def forward(self, x):
        self.inp = x
        return np.where(x > 0, x, 0.1 * x).astype(x.dtype)

    def backward(self, grad):
        return grad * np.where(self.inp > 0, 1, 0.1).astype(grad.dtype)


@pytest.mark.parametrize("first", [False, True])
def test_a_layer_of_ones_own_gets_backward_of_the_gradient_alone(first):
    """Sequential called every layer's backward with need_input_grad=, so a layer written as the
    interface says, `def backward(self, grad)`, was a TypeError at model.backward (first or not)."""
    layers = [_Leaky(), nb.Linear(3, 2, seed=1, dtype=np.float64)]
    if not first:
        layers.insert(0, nb.Linear(3, 3, seed=0, dtype=np.float64))
    model = nb.Sequential(layers)
    x = np.random.default_rng(0).standard_normal((4, 3))
    g = np.ones((4, 2))
    model(x)
    assert model.backward(g) is None
    want = layers[-1].grad_weight.copy()
    model.zero_grad()
    model(x)
    dx = model.backward(g, need_input_grad=True)
    np.testing.assert_array_equal(layers[-1].grad_weight, want)
    h = x
    for layer in layers:  # dL/dX by hand, layer by layer
        h = layer.forward(h)
    for layer in reversed(layers):
        g = layer.backward(g)
    np.testing.assert_allclose(dx, g)


@dataclass(eq=False)
class _Dropout(nb.Layer):
    p: float = 0.5

    def __post_init__(self):
        self.rng = np.random.default_rng(0)

    def forward(self, x):
        if not self.training:
            return x
        self.mask = (self.rng.random(x.shape) >= self.p).astype(x.dtype) / (1 - self.p)
        return x * self.mask

    def backward(self, grad):
        return grad * self.mask


def _dropout_model():
    return nb.Sequential(nb.Linear(4, 16, seed=0), nb.ReLU(), _Dropout(), nb.Linear(16, 3, seed=1))


def test_evaluate_and_predict_score_a_dropout_of_ones_own_in_eval_mode():
    """There was no train/eval mode: nb.evaluate and nb.predict ran a user's dropout as in
    training, each call another random loss and other classes. They run in eval mode now, and put
    the model's mode back."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 4)).astype(np.float32), rng.integers(0, 3, 50)
    model = _dropout_model()
    assert model.training and model[2].training
    first, again = nb.evaluate(model, x, y), nb.evaluate(model, x, y)
    assert first == again
    np.testing.assert_array_equal(nb.predict(model, x), nb.predict(model, x))
    assert model.training and model[2].training  # put back
    assert model.eval() is model and not model.training and not model[2].training
    assert first["loss"] == pytest.approx(nb.SoftmaxCrossEntropy()(model(x), y), rel=1e-6)
    nb.evaluate(model, x, y)
    assert not model[2].training  # eval stays eval
    assert model.train().training and all(layer.training for layer in model)


def test_train_trains_a_dropout_in_training_mode_and_scores_in_eval_mode():
    """nb.train's validation and test scores (and early stopping, restore_best) ran the dropout
    as in training: the scores it chose on were noisy. Steps run in training mode, scores in eval
    mode, and the model's modes are put back at the end."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 4)).astype(np.float32), rng.integers(0, 3, 60)
    model = _dropout_model().eval()  # training mode comes from nb.train, not from the caller
    seen = []
    drop = model[2]
    real_forward = drop.forward

    def forward(x):
        seen.append(drop.training)
        return real_forward(x)

    drop.forward = forward
    history = nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y, x, y), epochs=2, batch_size=30)
    assert True in seen and False in seen
    assert not model.training  # as it was given
    drop.forward = real_forward
    assert history[-1]["test_loss"] == pytest.approx(nb.evaluate(model, x, y)["loss"], rel=1e-6)


def test_train_steps_in_training_mode_after_a_callback_called_eval():
    """A callback that calls model.eval() (to look at the model) does not leave the next steps in
    eval mode: nb.train puts training mode back after user code, not at every step."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((90, 4)).astype(np.float32), rng.integers(0, 3, 90)
    model = _dropout_model()
    drop, seen = model[2], []
    real_forward = drop.forward

    def forward(x):
        seen.append(drop.training)
        return real_forward(x)

    drop.forward = forward
    for hook in ("on_step", "should_stop", "on_epoch"):
        seen.clear()
        callback = (lambda *args: bool(model.eval()) and False)
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=2, batch_size=30, **{hook: callback})
        assert seen == [True] * 6, (hook, seen)
        assert model.training  # put back as the call found it


def test_train_of_a_model_is_not_nb_train():
    """model.train(mode) is torch's mode switch; model.train(data) meant nb.train."""
    model = _dropout_model()
    with pytest.raises(TypeError, match=r"nb.train\(model, opt, data"):
        model.train((np.zeros((2, 4)), np.zeros(2)))


def test_the_readme_example_of_a_layer_of_ones_own_runs(tmp_path, monkeypatch):
    """The README's "Writing your own layer" block runs as written (its asserts included)."""
    monkeypatch.chdir(tmp_path)  # it saves weights.npz
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Writing your own layer", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md: Writing your own layer", "exec"), {"__name__": "readme_layer"})
    assert (tmp_path / "weights.npz").exists()


class _Returns(nb.Layer):
    """A layer of one's own whose forward or backward returns `bad(array)` instead of the array."""

    def __init__(self, where, bad):
        self.where, self.bad = where, bad

    def forward(self, x):
        return self.bad(x) if self.where == "forward" else x

    def backward(self, grad):
        return self.bad(grad) if self.where == "backward" else grad


def _one_step(model, x, y, how):
    """One training step on (x, y): the loop a user writes ("loop") or nb.train's ("nb.train")."""
    if how == "loop":
        loss_fn = nb.SoftmaxCrossEntropy()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
    else:
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=1, batch_size=6)


@pytest.mark.parametrize("where, bad, said", [
    ("forward", lambda x: x * np.ones(x.shape), r"forward\(\) returned a float64 array in a float32 model"),
    ("forward", lambda x: None, r"forward\(\) returned NoneType, not an array"),
    ("backward", lambda g: g * np.where(g >= 0, 1.0, 0.1), r"backward\(\) returned a float64 array in a float32 model"),
    ("backward", lambda g: None, r"backward\(\) returned NoneType, not an array"),
    ("forward", lambda x: x[:, :5],
     r"forward\(\) returned shape \(6, 5\), where layer 2, Linear\(8, 2\) takes \(N, 8\)"),
    ("backward", lambda g: g.sum(axis=0),
     r"backward\(\) returned shape \(8,\), where layer 0, Linear\(3, 8\) takes \(6, 8\)"),
], ids=["forward-float64", "forward-none", "backward-float64", "backward-none", "forward-shape", "backward-shape"])
@pytest.mark.parametrize("how", ["loop", "nb.train"])
def test_an_array_a_layer_of_ones_own_returns_wrong_is_blamed_on_that_layer(where, bad, said, how):
    """What a layer of one's own returned wrong was refused by the nbnet layer it went to, in that
    layer's name alone ('Linear(3, 8): expected gradient dtype float32, got float64'), with hints for
    a caller's input (model.astype, which refuses a layer of one's own; nb.train converting, where
    nb.train was running): the message now names the layer that made the array, and what is wrong."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3)).astype(np.float32), rng.integers(0, 2, 6)
    model = nb.Sequential(nb.Linear(3, 8, seed=0), _Returns(where, bad), nb.Linear(8, 2, seed=1))
    with pytest.raises(ValueError, match=r"^layer 1, _Returns\(\): its " + said) as err:
        _one_step(model, x, y, how)
    assert "model.astype" not in str(err.value)
    assert ("layer 2, Linear(8, 2)" if where == "forward" else "layer 0, Linear(3, 8)") in str(err.value)
    # Not the message for a float64 gradient passed on as given (below): np.dtype(None) is float64,
    # so a `given` left None compared equal to these float64 arrays (mutation round 23).
    assert "as it was given" not in str(err.value)


def test_a_fault_of_the_nbnet_layer_after_a_layer_of_ones_own_is_not_blamed_on_it():
    """Only what the layer of one's own returned is blamed on it: a weight assigned wrong in the
    nbnet layer after it keeps that layer's own error."""
    x = np.ones((4, 3), np.float32)
    model = nb.Sequential(nb.Linear(3, 8, seed=0), _Returns("forward", lambda x: x), nb.Linear(8, 2, seed=1))
    model[2].weight = np.zeros((2, 7), np.float32)
    with pytest.raises(ValueError, match=r"^Linear\(8, 2\): weight must be"):
        model(x)


class _Factor(nb.Layer):
    """y = x ⊙ w, a parameter of one's own made by `make(features)` -> (w, its gradient)."""

    def __init__(self, make, features=8):
        self.weight, self.grad_weight = make(features)

    def parameters(self):
        return [nb.Parameter(self, "weight")]

    def forward(self, x):
        self.inp = x
        return x * self.weight

    def backward(self, grad):
        self.grad_weight += (grad * self.inp).sum(axis=0)
        return grad * self.weight


def test_a_parameter_of_ones_own_made_float64_in_a_float32_model_is_refused_at_build():
    """np.ones(n) is float64: such a parameter among float32 Linears was taken (the README says layers
    of different dtypes are a ValueError when the model is built), its layer's outputs then float64,
    refused one layer later with a hint about the layer's arithmetic (np.where), not its arrays; made
    float32 by .astype there, the model trained in mixed precision and summary() said float32."""
    def float64(n):
        return np.ones(n), np.zeros(n)

    with pytest.raises(ValueError, match=r"different dtypes, float32 \(Linear\(8, 2\)\) and float64 \(weight of "
                                         r"_Factor\(\)\).*give them the model's dtype="):
        nb.Sequential(nb.Linear(3, 8, seed=0), _Factor(float64), nb.Linear(8, 2, seed=1))
    nb.Sequential(nb.Linear(3, 8, seed=0, dtype=np.float64), _Factor(float64), nb.Linear(8, 2, seed=1, dtype=np.float64))
    nb.Sequential(nb.Linear(3, 8, seed=0), _Factor(lambda n: (np.ones(n, np.float32), np.zeros(n, np.float32))))


class _Scale(_Factor):
    """_Factor under another name."""


class _Cast(nb.Layer):
    """A layer of one's own that says its dtype: no parameters, and no repr of its own."""

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, x):
        return x.astype(self.dtype)

    def backward(self, grad):
        return grad


def test_layers_of_different_dtypes_are_named_as_the_student_wrote_them_and_the_hint_names_the_odd_one():
    """The hint named the first layer of one's own with parameters, here a float32 _Factor that was
    right, not the float64 _Scale; and a layer of one's own with a dtype attribute was its object
    repr, '<test_custom_layers._Cast object at 0x7f...>', where messages write _Cast()."""
    f32 = lambda n: (np.ones(n, np.float32), np.zeros(n, np.float32))  # noqa: E731
    with pytest.raises(ValueError, match=r"float32 \(Linear\(3, 8\)\) and float64 \(weight of _Scale\(\)\): .*; "
                                         r"_Scale\(\) makes its arrays itself") as err:
        nb.Sequential(nb.Linear(3, 8, seed=0), _Factor(f32), _Scale(lambda n: (np.ones(n), np.zeros(n))))
    assert "_Factor()" not in str(err.value)
    with pytest.raises(ValueError, match=r"float32 \(Linear\(3, 8\)\) and float64 \(_Cast\(\)\): "):
        nb.Sequential(nb.Linear(3, 8, seed=0), _Cast(np.float64))


def test_a_model_of_ones_own_float64_layers_alone_says_float64():
    """model.dtype was the first Linear's, else float32: a model of a float64 layer of one's own
    alone said float32, in summary() too (nb.train and nb.predict ask for a Linear)."""
    model = nb.Sequential(_Factor(lambda n: (np.ones(n), np.zeros(n))))
    assert model.dtype == np.float64 and "float64" in model.summary() and "float32" not in model.summary()
    assert nb.Sequential(_Factor(lambda n: (np.ones(n, np.float32), np.zeros(n, np.float32)))).dtype == np.float32
    assert nb.Sequential(nb.ReLU()).dtype == np.float32
    assert nb.Sequential(nb.ReLU(), _Cast(np.float64)).dtype == np.float64  # no parameters: its own dtype


@pytest.mark.parametrize("make, said", [
    (lambda n: (np.ones(n, np.float32), None), r"has no grad_weight, which its Parameter\(self, 'weight'\) reads: .*"
                                               r"self.grad_weight \(np.zeros_like\(self.weight\)\)"),
    (lambda n: (np.ones(n, np.float32), np.zeros(n - 1, np.float32)),
     r"_Factor\(\)'s grad_weight is float32 \(7,\) and its weight float32 \(8,\): a gradient has its parameter's shape"),
    (lambda n: ([1.0] * n, np.zeros(n, np.float32)), r"weight of _Factor\(\) is a list, not an array"),
    (lambda n: (np.ones(n, np.float32), np.zeros(n)),
     r"_Factor\(\)'s grad_weight is float64 \(8,\) and its weight float32 \(8,\): a gradient has its parameter's"),
    (lambda n: (np.ones(n, np.float32), [0.0] * n), r"grad_weight of _Factor\(\) is a list, not an array"),
], ids=["no-gradient", "gradient-of-another-shape", "a-list", "gradient-of-another-dtype", "gradient-a-list"])
def test_a_parameter_of_ones_own_without_a_gradient_array_of_its_shape_is_named_at_build(make, said):
    """A Parameter(self, "weight") whose layer had no grad_weight was an AttributeError from inside
    packing ("'_Factor' object has no attribute 'grad_weight'"), one of another size NumPy's "could
    not broadcast" from there: now a ValueError at Sequential(...) naming the layer and what to make."""
    layer = _Factor(make)
    if layer.grad_weight is None:
        del layer.grad_weight
    with pytest.raises(ValueError, match="^Sequential: .*" + said):
        nb.Sequential(nb.Linear(3, 8, seed=0), layer, nb.Linear(8, 2, seed=1))


class _Linear(nb.Linear):
    """nbnet's Linear under another name: its arrays are nbnet's, made in its dtype."""


@pytest.mark.parametrize("first", [nb.Linear, _Linear], ids=["Linear", "a-subclass"])
def test_nbnets_layers_of_two_dtypes_get_no_hint_about_a_layer_of_ones_own(first):
    """The hint that a layer of one's own makes its arrays itself is for such a layer (mutation round
    23: checking nbnet's layers' parameters as one's own, a Linear (or a subclass) was named there)."""
    with pytest.raises(ValueError, match=r"float32 \(.*Linear\(3, 8\)\) and float64 \(Linear\(8, 2, dtype=np.float64\)\): "
                                         r"convert one with Linear\(..., dtype=...\) or model.astype\(dtype\)$"):
        nb.Sequential(first(3, 8, seed=0), nb.Linear(8, 2, seed=1, dtype=np.float64))


def test_parameters_that_are_not_nb_parameters_are_named_at_build():
    """`def parameters(self): return [self.weight]` (the arrays, not nb.Parameter handles) was an
    AttributeError from inside packing ("'memoryview' object has no attribute 'dtype'": an ndarray's
    .data) when the Sequential was built."""
    layer = _Factor(lambda n: (np.ones(n, np.float32), np.zeros(n, np.float32)))
    layer.parameters = lambda: [layer.weight]
    with pytest.raises(ValueError, match=r"^Sequential: _Factor\(\).parameters\(\) holds a ndarray, not an "
                                         r"nb.Parameter: return nb.Parameter\(self, name\)"):
        nb.Sequential(nb.Linear(3, 8, seed=0), layer, nb.Linear(8, 2, seed=1))


@pytest.mark.parametrize("how", ["loop", "nb.train"])
def test_a_float64_gradient_passed_through_is_blamed_on_the_forward_that_made_the_loss_float64(how):
    """A layer of one's own last in a float32 model whose forward returns float64 gives the loss
    float64 predictions, so the gradient it is given is float64 and its backward, `return grad`,
    hands it on: the message told the student to fix that backward (np.where(x >= 0, 1.0, 0.1)),
    which is right, and said nothing of the forward, which is not."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3)).astype(np.float32), rng.integers(0, 2, 6)
    model = nb.Sequential(nb.Linear(3, 2, seed=0), _Returns("forward", lambda x: x * np.ones(x.shape)))
    with pytest.raises(ValueError, match=r"^layer 1, _Returns\(\): its backward\(\) returned a float64 array in a "
                                         r"float32 model, as it was given: .*its forward\(\) or a later layer's"):
        _one_step(model, x, y, how)
