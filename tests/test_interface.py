"""The promises of the public interface (interface.md) that no other test file checks, in that
document's order; each test quotes the promise it checks. Small models on spiral data or random
arrays: the whole file runs in a few seconds."""

import dataclasses
import importlib.util
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import nbnet as nb
from nbnet.cli import cli

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None


# ------------------------------------------------------------------------------------------ Python


def test_the_interface_loop_trains_saves_and_loads(tmp_path):
    """The interface's first example: forward gives (N, C) logits, the loss is a Python float, the
    batch mean; backward fills every layer's gradients; save/load gives architecture + weights."""
    xtr, ytr, xte, yte = nb.datasets.load("spiral")
    model = nb.Sequential([nb.Linear(2, 32, seed=0), nb.ReLU(), nb.Linear(32, 3, seed=1)])
    loss_fn = nb.SoftmaxCrossEntropy()
    opt = nb.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for epoch in range(3):
        for xb, yb in nb.batches(xtr, ytr, batch_size=128, shuffle=True, seed=epoch):
            opt.zero_grad()
            logits = model.forward(xb)
            assert logits.shape == (len(xb), 3) and logits.dtype == np.float32
            loss = loss_fn.forward(logits, yb)
            assert type(loss) is float
            model.backward(loss_fn.backward())
            assert all(np.any(p.grad != 0) for p in model.parameters())
            opt.step()
            losses.append(loss)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    model.save(tmp_path / "model.npz")
    same = nb.load(tmp_path / "model.npz")
    assert [type(layer) for layer in same] == [nb.Linear, nb.ReLU, nb.Linear]
    assert np.array_equal(same(xte), model(xte))


def test_layers_are_dataclasses_with_the_documented_shapes():
    """"Layers (each a dataclass)"; Linear(in, out, *, dtype=np.float32, seed=None): weight
    (out, in), bias (out,), .grad_weight, .grad_bias; arrays C-contiguous, float32 unless dtype=."""
    for cls in (nb.Linear, nb.ReLU, nb.Sigmoid, nb.Tanh, nb.Softmax):
        assert dataclasses.is_dataclass(cls), cls
    layer = nb.Linear(784, 256, seed=0)
    for name, shape in [("weight", (256, 784)), ("bias", (256,)), ("grad_weight", (256, 784)),
                        ("grad_bias", (256,))]:
        a = getattr(layer, name)
        assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous, name
    wide = nb.Linear(3, 2, dtype=np.float64)
    assert wide.weight.dtype == wide.bias.dtype == wide.grad_weight.dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", [lambda d: nb.ReLU(), lambda d: nb.Sigmoid(), lambda d: nb.Tanh(),
                                  lambda d: nb.Softmax(), lambda d: nb.Linear(5, 5, seed=0, dtype=d)],
                         ids=["ReLU", "Sigmoid", "Tanh", "Softmax", "Linear"])
def test_every_layer_forward_backward_zero_grad(make, dtype):
    """"Every layer: forward(x) -> y, backward(grad_y) -> grad_x, zero_grad()": dL/dx of the
    layer's function (a finite-difference check in float64), in the layer's dtype."""
    layer = make(dtype)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5)).astype(dtype)
    g = rng.normal(size=(4, 5)).astype(dtype)
    y = layer.forward(x)
    assert y.shape == (4, 5) and y.dtype == dtype
    dx = layer.backward(g)
    assert dx.shape == x.shape and dx.dtype == dtype
    layer.zero_grad()
    if dtype == np.float64:
        eps, num = 1e-6, np.zeros_like(x)
        for idx in np.ndindex(*x.shape):
            xp, xm = x.copy(), x.copy()
            xp[idx] += eps
            xm[idx] -= eps
            num[idx] = (np.sum(layer.forward(xp) * g) - np.sum(layer.forward(xm) * g)) / (2 * eps)
        np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_are_pytorchs(dtype):
    """SoftmaxCrossEntropy is "the same as PyTorch CrossEntropyLoss()", MSELoss "the same as PyTorch
    MSELoss()", CrossEntropy is −(1/N) Σ log p[i, t_i]: forward -> float, backward() -> dL/dpred
    (the batch mean included), in the predictions' dtype."""
    import torch

    rng = np.random.default_rng(0)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
    z, t = rng.normal(size=(7, 4)).astype(dtype), rng.integers(0, 4, 7)
    targets = rng.normal(size=(7, 4)).astype(dtype)
    for ours, theirs, target, tt in [
        (nb.SoftmaxCrossEntropy(), torch.nn.CrossEntropyLoss(), t, torch.tensor(t)),
        (nb.MSELoss(), torch.nn.MSELoss(), targets, torch.tensor(targets)),
    ]:
        zt = torch.tensor(z, requires_grad=True)
        ref = theirs(zt, tt)
        ref.backward()
        value = ours.forward(z, target)
        grad = ours.backward()
        assert type(value) is float and grad.dtype == dtype and grad.shape == z.shape
        np.testing.assert_allclose(value, ref.item(), **tol)
        np.testing.assert_allclose(grad, zt.grad.numpy(), **tol)
    p = (np.exp(z) / np.exp(z).sum(1, keepdims=True)).astype(dtype)
    pt = torch.tensor(p, requires_grad=True)
    ref = -torch.log(pt[torch.arange(7), torch.tensor(t)]).mean()
    ref.backward()
    ce = nb.CrossEntropy()
    np.testing.assert_allclose(ce.forward(p, t), ref.item(), **tol)
    np.testing.assert_allclose(ce.backward(), pt.grad.numpy(), **tol)


@pytest.mark.parametrize("last", [None, nb.ReLU, nb.Sigmoid, nb.Tanh, nb.Softmax])
def test_what_forward_returns_belongs_to_the_caller(last):
    """"What forward / model(x) returns belongs to the caller: a later call never overwrites it":
    at one batch shape again and again (from the second call a Sequential runs a plan) and at
    another, through forward and model(x), with backwards between."""
    layers = [nb.Linear(3, 6, seed=0), nb.ReLU(), nb.Linear(6, 4, seed=1)] + ([last()] if last else [])
    model = nb.Sequential(layers)
    rng = np.random.default_rng(0)
    kept = []
    for i, rows in enumerate([5, 5, 5, 5, 2, 5]):
        x = rng.normal(size=(rows, 3)).astype(np.float32)
        y = model(x) if i % 2 else model.forward(x)
        model.backward(np.ones_like(y))
        assert not any(np.shares_memory(y, other) for other, _ in kept)
        kept.append((y, y.copy()))
    for y, copy in kept:
        assert np.array_equal(y, copy)


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
@pytest.mark.parametrize("make, kwargs", [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
])
def test_optimizers_follow_torch_optim_step_for_step(make, kwargs):
    """SGD(params, lr, momentum=0.0, weight_decay=0.0, nesterov=False), Adam(params, lr=1e-3,
    betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), AdamW(..., weight_decay=0.01): "the update
    rules of torch.optim of the same name, step for step" (defaults included), in float64."""
    import torch

    rng = np.random.default_rng(0)
    layer = nb.Linear(4, 3, seed=0, dtype=np.float64)
    layer.bias[...] = rng.normal(size=3)
    params = layer.parameters()
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt, ref = getattr(nb, make)(params, **kwargs), getattr(torch.optim, make)(theirs, **kwargs)
    for step in range(5):
        opt.zero_grad()
        ref.zero_grad()
        for p, t in zip(params, theirs):
            g = rng.normal(size=p.data.shape) if step != 2 else np.zeros(p.data.shape)
            p.grad[...] = g
            t.grad = torch.tensor(g)
        opt.step()
        ref.step()
        for p, t in zip(params, theirs):
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_spiral_is_2d_points_in_3_classes_split_by_test_split_with_the_seed():
    """"spiral is 2-D points in 3 classes", split into train and test "by --test-split (default
    0.2), shuffled with the seed"."""
    xtr, ytr, xte, yte = nb.datasets.load("spiral")
    assert xtr.shape[1] == xte.shape[1] == 2 and set(np.unique(np.concatenate([ytr, yte]))) == {0, 1, 2}
    assert len(xte) == round(0.2 * (len(xtr) + len(xte)))
    half = nb.datasets.load("spiral", test_split=0.5)
    assert len(half[2]) == len(half[0])
    other = nb.datasets.load("spiral", seed=1)
    assert not np.array_equal(other[2], xte)  # another seed, another shuffle
    everything = lambda d: np.sort(np.concatenate([d[0], d[2]]), axis=0)  # noqa: E731
    assert np.array_equal(everything(other), everything((xtr, ytr, xte, yte)))  # the same points


@pytest.mark.skipif(not HAVE_SKLEARN, reason="needs scikit-learn")
def test_sklearn_estimators_take_sklearns_parameters_and_defaults():
    """"the parameters of sklearn.neural_network's estimators of the same names, with their
    meanings (...), plus dtype": the names, and scikit-learn's defaults for them."""
    import sklearn.neural_network as sk_nn

    from nbnet.sklearn import MLPClassifier, MLPRegressor

    names = ["hidden_layer_sizes", "activation", "solver", "alpha", "batch_size", "learning_rate_init",
             "max_iter", "momentum", "nesterovs_momentum", "shuffle", "random_state", "tol",
             "early_stopping", "validation_fraction", "n_iter_no_change", "verbose"]
    for ours, theirs in [(MLPClassifier, sk_nn.MLPClassifier), (MLPRegressor, sk_nn.MLPRegressor)]:
        got, want = ours().get_params(), theirs().get_params()
        assert set(names) | {"dtype"} <= got.keys()
        assert {n: got[n] for n in names} == {n: want[n] for n in names}, ours
        assert np.dtype(got["dtype"]) == np.float32
        assert ours(solver="adamw").get_params()["solver"] == "adamw"


# ------------------------------------------------------------------------------------ command line


def test_cosine_anneals_per_step_from_lr_to_zero_over_all_epochs(tmp_path):
    """"cosine anneals the learning rate per step from --lr to 0 over all --epochs"; "--metrics-out
    writes one JSON object per epoch, one per line"; "Accuracies are fractions in [0, 1]"."""
    m = tmp_path / "m.jsonl"
    r = CliRunner().invoke(cli, ["train", "--epochs", "3", "--hidden", "8", "--batch-size", "256", "--lr", "0.2",
                                 "--lr-schedule", "cosine", "--metrics-out", str(m), "--quiet"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in m.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    steps = math.ceil(2400 / 256)  # spiral's 2400 training rows
    total = 3 * steps
    for row in rows:  # the rate of each epoch's last step
        step = row["epoch"] * steps - 1
        assert row["lr"] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * step / total)), rel=1e-12)
        assert 0 <= row["train_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1
    assert rows[-1]["lr"] < 0.2 * 0.01  # one step from 0
