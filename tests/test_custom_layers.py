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
