"""BCEWithLogits: the fused, stable sigmoid + binary cross-entropy on logits, against finite
differences, a NumPy transcription of PyTorch's definition, and PyTorch itself when installed."""

import importlib.util

import numpy as np
import pytest

import nbnet as nb
from nbnet import cpu


def torch_formula(z, t):
    """PyTorch's binary_cross_entropy_with_logits (aten/src/ATen/native/Loss.cpp, no weights),
    transcribed in float64:  loss = (1 − t) z + m + log(e^(−m) + e^(−z − m)),  m = max(−z, 0),
    then the mean over every element; its gradient (σ(z) − t) / numel."""
    z, t = z.astype(np.float64), t.astype(np.float64)
    m = np.maximum(-z, 0)
    loss = (1 - t) * z + m + np.log(np.exp(-m) + np.exp(-z - m))
    return loss.mean(), (1 / (1 + np.exp(-z)) - t) / z.size


def sample(dtype, k=6, c=3, seed=0, soft=False):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3, size=(k, c)).astype(dtype)
    t = (rng.random((k, c)) if soft else rng.integers(0, 2, (k, c))).astype(dtype)
    return z, t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("soft", [False, True])
def test_value_and_gradient_match_torchs_definition(dtype, soft):
    z, t = sample(dtype, soft=soft)
    loss = nb.BCEWithLogits()
    value = loss(z, t)
    grad = loss.backward()
    expected, expected_grad = torch_formula(z, t)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
    assert isinstance(value, float) and grad.dtype == dtype
    np.testing.assert_allclose(value, expected, **tol)
    np.testing.assert_allclose(grad, expected_grad, **tol)


def test_gradient_by_finite_differences_in_float64():
    z, t = sample(np.float64, k=4, c=2, seed=1)
    loss = nb.BCEWithLogits()
    loss(z, t)
    grad = loss.backward().copy()
    num = np.zeros_like(z)
    h = 1e-6
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        num[idx] = (nb.BCEWithLogits()(zp, t) - nb.BCEWithLogits()(zm, t)) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_at_extreme_logits(dtype):
    z = np.array([[1000.0, -1000.0, 0.0, 90.0, -90.0]], dtype)
    t = np.array([[0.0, 1.0, 1.0, 1.0, 0.0]], dtype)
    loss = nb.BCEWithLogits()
    value = loss(z, t)
    grad = loss.backward()
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value == pytest.approx((1000 + 1000 + np.log(2) + 2 * np.log1p(np.exp(-90.0))) / 5, rel=1e-6)
    np.testing.assert_allclose(grad, [[0.2, -0.2, -0.1, 0.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinite_logits_give_the_losss_limit(dtype):
    """max(z, 0) − z t was inf − inf = NaN at z = +inf (torch: inf, the limit, for t < 1), and at
    z = −inf with t = 0 (0 × inf); z = −inf with t > 0 gave the limit, inf (torch: NaN). Now
    the limit everywhere: a sure right answer costs 0, a sure wrong one inf; the gradient was finite."""
    z = np.array([[np.inf, np.inf, np.inf, -np.inf, -np.inf, -np.inf]], dtype)
    t = np.array([[0.0, 0.5, 1.0, 0.0, 0.5, 1.0]], dtype)
    expected = [np.inf, np.inf, 0.0, 0.0, np.inf, np.inf]
    with np.errstate(all="ignore"):
        for j in range(z.shape[1]):
            assert nb.BCEWithLogits()(z[:, j:j + 1], t[:, j:j + 1]) == expected[j]
        loss = nb.BCEWithLogits()
        assert loss(z[:, [2, 3]], t[:, [2, 3]]) == 0.0
        np.testing.assert_array_equal(loss.backward(), [[0.0, 0.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_soft_target_near_1_keeps_its_precision(dtype):
    """z − z t cancelled for t near 1; z (1 − t) is exact there."""
    bits = 20 if dtype == np.float32 else 40
    z, t = np.array([[1000.1]], dtype), np.array([[1 - 2.0 ** -bits]], dtype)
    assert nb.BCEWithLogits()(z, t) == pytest.approx(float(z[0, 0]) * 2.0 ** -bits, rel=1e-6, abs=0)


@pytest.mark.parametrize("dtype, big", [(np.float32, 20.0), (np.float64, 40.0)])
def test_a_sure_right_answer_keeps_its_small_loss(dtype, big):
    """log(1 + e^(−|z|)) is taken as log1p(e^(−|z|)): at |z| = 20 in float32 (40 in float64) 1 + e^(−|z|)
    rounds to 1, and a right answer that sure had a loss of exactly 0 instead of e^(−|z|)."""
    z, t = np.array([[big, -big]], dtype), np.array([[1.0, 0.0]], dtype)
    assert nb.BCEWithLogits()(z, t) == pytest.approx(np.log1p(np.exp(-big)), rel=1e-6)



@pytest.mark.parametrize("dtype, big", [(np.float32, 20.0), (np.float64, 40.0)])
def test_the_gradient_of_a_sure_right_answer_keeps_its_precision(dtype, big):
    """A sure right answer has the gradient of the loss the forward reports, log1p(e^(−|z|)):
    ∓e^(−|z|) / (1 + e^(−|z|)) / n on both sides. At z ≥ 0 σ(z) = 1 / (1 + e^(−z)) rounded to 1 (z = 20 in
    float32, 40 in float64): σ(z) − 1 was 0, while z < 0 (e^z / (1 + e^z) − 0) kept it."""
    z, t = np.array([[-big, big]], dtype), np.array([[0.0, 1.0]], dtype)
    loss = nb.BCEWithLogits()
    loss(z, t)
    e = np.exp(-big)
    np.testing.assert_allclose(loss.backward(), [[e / (1 + e) / 2, -e / (1 + e) / 2]], rtol=1e-6)


def test_targets_of_shape_n_lists_and_other_dtypes():
    z = np.array([[2.0], [-1.0], [0.5]], np.float32)
    expected = nb.BCEWithLogits()(z, np.array([[1.0], [0.0], [0.0]], np.float32))
    for t in ([1, 0, 0], np.array([1, 0, 0]), np.array([True, False, False]), np.array([1.0, 0.0, 0.0])):
        assert nb.BCEWithLogits()(z, t) == expected
    with pytest.raises(ValueError, match="shape"):
        nb.BCEWithLogits()(np.ones((3, 2), np.float32), [1, 0, 0])


def test_count_correct_labels_matches_numpy():
    z, t = sample(np.float32, k=20, c=4, seed=2)
    z[0, 0], t[0, 0] = 0.0, 1.0  # z = 0 is σ = ½: read as yes
    t[0, 1] = 0.5  # so is a target of ½ (the GPU's count_correct_labels counts it so too)
    assert cpu.count_correct_labels(z, t) == np.count_nonzero((z >= 0) == (t >= 0.5))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch(dtype):
    import torch  # noqa: PLC0415

    z, t = sample(dtype, k=7, c=5, seed=3, soft=True)
    z[0, :2] = [80, -80]
    zt = torch.tensor(z, requires_grad=True)
    expected = torch.nn.BCEWithLogitsLoss()(zt, torch.tensor(t))
    expected.backward()
    loss = nb.BCEWithLogits()
    tol = dict(rtol=2e-6, atol=1e-8) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(loss(z, t), expected.item(), **tol)
    np.testing.assert_allclose(loss.backward(), zt.grad.numpy(), **tol)


def test_predict_decides_as_evaluate_counts_at_logits_just_below_zero():
    """nb.predict read σ(z) ≥ ½ as yes, evaluate's accuracy z ≥ 0: in float32 σ(-1e-8) rounds to
    ½, so the two disagreed on such an output."""
    model = nb.Sequential(nb.Linear(1, 1, seed=0))
    model[0].weight[...] = 1
    model[0].bias[...] = 0
    x = np.array([[-1e-8], [0], [1e-8], [-1], [1]], np.float32)
    yes, probs = nb.predict(model, x, loss="bce"), nb.predict(model, x, loss="bce", proba=True)
    np.testing.assert_array_equal(yes, [[0], [1], [1], [0], [1]])
    assert probs[0, 0] == np.float32(0.5)  # why the probability cannot decide
    assert nb.evaluate(model, x, yes.astype(np.float32), loss="bce")["accuracy"] == 1.0
