"""Layers of the user's own: Layer subclasses with forward(x) and backward(grad_y), in a Sequential."""

import numpy as np
import pytest

import nbnet as nb


class _Leaky(nb.layers.Layer):
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
