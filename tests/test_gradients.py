"""Every layer and loss against NumPy (forward) and central finite differences in float64 (backward).

Layers are checked through the scalar L = Σ_ij u_ij y_ij with a fixed random u, whose gradient with
respect to y is u: so backward(u) must equal the numerical dL/dx (and dL/dW, dL/db).
"""

import ast
from dataclasses import dataclass
import re

import numpy as np
import pytest
from conftest import ROOT, numerical_grad, rel_err

import nbnet as nb
from nbnet import cpu
from nbnet.losses import LOSSES

TOL = 1e-6
F64 = np.float64


def away_from_zero(rng, shape, margin=0.05):
    """Inputs with |x| ≥ margin, so a finite difference never straddles ReLU's kink."""
    x = rng.uniform(margin, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return x.astype(F64)


def check_layer_input_grad(layer, x, rng):
    u = rng.normal(size=layer.forward(x).shape)
    analytic = layer.backward(u).copy()
    numeric = numerical_grad(lambda: float(np.sum(u * layer.forward(x))), x)
    assert rel_err(analytic, numeric) < TOL


# ---- forward against NumPy ---------------------------------------------------------------------


def test_linear_forward_matches_numpy(rng):
    layer = nb.Linear(7, 5, dtype=F64, seed=0)
    layer.bias[...] = rng.normal(size=5)
    x = rng.normal(size=(4, 7))
    np.testing.assert_allclose(layer.forward(x), x @ layer.weight.T + layer.bias, rtol=1e-12)


# the forward's dot form at 1, 5 and 100 rows; with 24 float32 inputs at 64 rows its form over Wᵀ
@pytest.mark.parametrize("k,n,dtype", [(1, 64, F64), (5, 64, F64), (100, 64, F64), (64, 24, np.float32)])
def test_a_square_linear_applied_to_its_own_output(k, n, dtype, rng):
    """lin(lin(x)): the second forward's input is the first one's output buffer, which the kernel
    overwrote while reading it (6-14 off in float64, silently)."""
    layer = nb.Linear(n, n, dtype=dtype, seed=0)
    layer.bias[...] = rng.normal(size=n)
    x = rng.normal(size=(k, n)).astype(dtype)
    once = x @ layer.weight.T + layer.bias
    twice = once @ layer.weight.T + layer.bias
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(layer(x)), twice, **tol)
    np.testing.assert_allclose(layer(layer(x)[k // 2:]), once[k // 2:] @ layer.weight.T + layer.bias, **tol)
    np.testing.assert_allclose(layer.forward_relu(layer(x), nb.ReLU()), np.maximum(twice, 0), **tol)


@pytest.mark.parametrize(
    "layer, ref",
    [
        (nb.ReLU(), lambda x: np.maximum(x, 0)),
        (nb.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
        (nb.Tanh(), np.tanh),
        (nb.Softmax(), lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
    ],
    ids=["relu", "sigmoid", "tanh", "softmax"],
)
def test_activation_forward_matches_numpy(layer, ref, rng):
    x = rng.normal(size=(5, 6)) * 3
    np.testing.assert_allclose(layer.forward(x), ref(x), rtol=1e-12, atol=1e-15)


# ---- backward against finite differences --------------------------------------------------------


def test_linear_gradients(rng):
    layer = nb.Linear(6, 4, dtype=F64, seed=0)
    layer.bias[...] = rng.normal(size=4)
    x = rng.normal(size=(5, 6))
    u = rng.normal(size=(5, 4))

    def loss():
        return float(np.sum(u * layer.forward(x)))

    layer.forward(x)
    dx = layer.backward(u).copy()
    assert rel_err(dx, numerical_grad(loss, x)) < TOL
    assert rel_err(layer.grad_weight, numerical_grad(loss, layer.weight)) < TOL
    assert rel_err(layer.grad_bias, numerical_grad(loss, layer.bias)) < TOL
    # And the closed forms of the notes: dW = Gᵀ X, db = Σ_i G, dX = G W.
    np.testing.assert_allclose(layer.grad_weight, u.T @ x, rtol=1e-12)
    np.testing.assert_allclose(layer.grad_bias, u.sum(0), rtol=1e-12)
    np.testing.assert_allclose(dx, u @ layer.weight, rtol=1e-12)


@pytest.mark.parametrize("layer", [nb.ReLU(), nb.Sigmoid(), nb.Tanh()], ids=["relu", "sigmoid", "tanh"])
def test_elementwise_activation_gradients(layer, rng):
    check_layer_input_grad(layer, away_from_zero(rng, (4, 7)), rng)


def test_softmax_jacobian_vector_product(rng):
    x = rng.normal(size=(4, 6)) * 2
    layer = nb.Softmax()
    check_layer_input_grad(layer, x, rng)
    # dx_i = y_i (g_i − Σ_k g_k y_k) is J g with the full Jacobian J = diag(y) − y yᵀ.
    g = rng.normal(size=x.shape)
    y = layer.forward(x).copy()
    dx = layer.backward(g)
    for i in range(x.shape[0]):
        jac = np.diag(y[i]) - np.outer(y[i], y[i])
        np.testing.assert_allclose(dx[i], jac @ g[i], rtol=1e-12, atol=1e-15)


def test_relu_derivative_at_zero_is_one():
    layer = nb.ReLU()
    x = np.array([[-1.0, 0.0, 2.0]])
    layer.forward(x)
    np.testing.assert_array_equal(layer.backward(np.ones((1, 3))), [[0.0, 1.0, 1.0]])


def test_softmax_crossentropy_value_and_gradient(rng):
    z = rng.normal(size=(5, 4)) * 3
    t = np.array([0, 3, 1, 1, 2])
    loss = nb.SoftmaxCrossEntropy()
    value = loss.forward(z, t)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert value == pytest.approx(-logp[np.arange(5), t].mean(), rel=1e-12)
    analytic = loss.backward().copy()
    numeric = numerical_grad(lambda: loss.forward(z, t), z)
    assert rel_err(analytic, numeric) < TOL
    onehot = np.eye(4)[t]
    np.testing.assert_allclose(analytic, (np.exp(logp) - onehot) / 5, rtol=1e-12, atol=1e-15)


def test_crossentropy_on_probabilities(rng):
    p = rng.uniform(0.05, 1.0, size=(6, 3))
    p /= p.sum(1, keepdims=True)
    t = np.array([2, 0, 1, 1, 0, 2])
    loss = nb.CrossEntropy()
    value = loss.forward(p, t)
    assert value == pytest.approx(-np.log(p[np.arange(6), t]).mean(), rel=1e-12)
    analytic = loss.backward().copy()
    assert rel_err(analytic, numerical_grad(lambda: loss.forward(p, t), p)) < TOL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_crossentropy_counts_a_probability_below_the_smallest_normal_as_it(dtype):
    """The README's difference from torch (whose nll_loss(p.log(), t) is inf at p = 0): finite."""
    tiny = np.finfo(dtype).tiny
    p = np.array([[0.0, 1.0], [tiny / 8, 1.0]], dtype)
    loss = nb.CrossEntropy()
    assert loss(p, np.array([0, 0])) == pytest.approx(-np.log(tiny), rel=1e-6)
    np.testing.assert_array_equal(loss.backward(), np.array([[-1 / (2 * tiny), 0]] * 2, dtype))


def test_softmax_then_crossentropy_equals_fused(rng):
    z = rng.normal(size=(5, 4))
    t = np.array([1, 0, 3, 2, 2])
    sm, ce, fused = nb.Softmax(), nb.CrossEntropy(), nb.SoftmaxCrossEntropy()
    assert ce.forward(sm.forward(z), t) == pytest.approx(fused.forward(z, t), rel=1e-12)
    np.testing.assert_allclose(sm.backward(ce.backward()), fused.backward(), rtol=1e-9, atol=1e-15)


def test_mse_value_and_gradient(rng):
    p = rng.normal(size=(4, 3))
    y = rng.normal(size=(4, 3))
    loss = nb.MSELoss()
    assert loss.forward(p, y) == pytest.approx(np.mean((p - y) ** 2), rel=1e-12)
    analytic = loss.backward().copy()
    assert rel_err(analytic, numerical_grad(lambda: loss.forward(p, y), p)) < TOL
    np.testing.assert_allclose(analytic, 2 * (p - y) / p.size, rtol=1e-12)


@pytest.mark.parametrize("loss_cls", [nb.MSELoss, nb.BCEWithLogits])
def test_float32_elementwise_losses_of_many_outputs_stay_accurate(loss_cls):
    """A float32 MSE / BCE sums k·d terms in float32: one running sum was 3.7e-4 (MSE) and 5e-6
    (BCE) off at 1000 × 784 (nb.evaluate's batch of an autoencoder), 3% and 1% at 20000 × 784."""
    rng = np.random.default_rng(0)
    p = rng.normal(size=(1000, 784)).astype(np.float32)
    y = (rng.random((1000, 784)) < 0.5).astype(np.float32)
    want = loss_cls().forward(p.astype(np.float64), y.astype(np.float64))
    assert loss_cls().forward(p, y) == pytest.approx(want, rel=1e-6)


def test_elementwise_losses_over_more_rows_than_a_block_match_numpy():
    """MSE and BCE sum their rows in blocks of SUM_ROWS: every block, the last partial one too,
    is in the mean. (The float32 test above compares with the same kernel in float64, which a
    block left out of both would pass.)"""
    rng = np.random.default_rng(0)
    k = 2 * cpu.SUM_ROWS + 3
    p, y = rng.normal(size=(k, 3)), (rng.random((k, 3)) < 0.5).astype(F64)
    assert nb.MSELoss().forward(p, y) == pytest.approx(np.mean((p - y) ** 2), rel=1e-12)
    bce = np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p)))
    assert nb.BCEWithLogits().forward(p, y) == pytest.approx(bce.mean(), rel=1e-12)


def test_a_losss_sum_runs_in_row_order_then_by_blocks_of_rows():
    """As cpu.SUM_ROWS says: up to SUM_ROWS rows a loss's row terms are one running sum in row order
    (the same bits as before the blocks), beyond it each block's running sum is added to the total in
    order. Pinned bit for bit in float32 (np.cumsum is such a running sum): the accuracy tests pass
    blocks cut anywhere."""
    rng = np.random.default_rng(0)

    def running(terms):
        return np.cumsum(np.asarray(terms, np.float32), dtype=np.float32)[-1]

    def blocked(rows):
        return running([running(rows[b:b + cpu.SUM_ROWS]) for b in range(0, len(rows), cpu.SUM_ROWS)])

    for k in (cpu.SUM_ROWS, 2 * cpu.SUM_ROWS + 3):  # one block: a running sum; three
        terms = rng.uniform(0, 3, k).astype(np.float32)
        terms[::cpu.SUM_ROWS] = 4096  # the small terms after each round differently added to it one by one
        assert cpu.rows_mean(terms) == blocked(terms) / np.float32(k)
        p, y = rng.normal(size=(2, k, 3)).astype(np.float32)
        p[::cpu.SUM_ROWS, 0] = 64
        rows = [running((p[i] - y[i]) ** 2) for i in range(k)]
        assert cpu.mse_forward(p, y) == blocked(rows) / np.float32(k * 3)
    # quarter-ulps of 4096, the last row of the first block 4096: any other cut rounds them otherwise
    terms = np.full(2 * cpu.SUM_ROWS + 3, 2.0**-13, np.float32)
    terms[cpu.SUM_ROWS - 1] = 4096
    assert cpu.rows_mean(terms) == blocked(terms) / np.float32(terms.size)


def test_float32_crossentropy_of_many_rows_is_summed_accurately():
    """Cross-entropy sums a term per row: one running float32 sum was 4.7e-6 off here, at 60,000 rows
    (a whole MNIST split in one batch), and 4e-5 at 600,000; in blocks of rows, 3.2e-7. Checked against the float64 mean of the very
    row terms the kernel wrote, so only the sum is measured: for the fused loss (twice: the first
    call takes the checked path, the second the per-step fast path), its unfused reference, and
    the loss on probabilities."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60000, 10)).astype(np.float32)
    t = rng.integers(0, 10, size=60000)
    fused, losses = nb.SoftmaxCrossEntropy(), np.empty(60000, np.float32)
    for _ in range(2):
        assert fused.forward(z, t) == pytest.approx(fused.losses.astype(np.float64).mean(), rel=1e-6)
    unfused = cpu.softmax_crossentropy_forward(np.empty_like(z), losses, z, t)
    assert unfused == pytest.approx(losses.astype(np.float64).mean(), rel=1e-6)
    on_probs = nb.CrossEntropy()
    assert on_probs.forward(fused.probs, t) == pytest.approx(on_probs.losses.astype(np.float64).mean(), rel=1e-6)


@pytest.mark.parametrize("act", [nb.ReLU, nb.Sigmoid, nb.Tanh])
def test_three_layer_mlp_all_parameter_gradients(act, rng):
    model = nb.Sequential(
        [
            nb.Linear(5, 8, dtype=F64, seed=1), act(),
            nb.Linear(8, 6, dtype=F64, seed=2), act(),
            nb.Linear(6, 3, dtype=F64, seed=3),
        ]
    )
    for p in model.parameters():  # nonzero biases, so they matter
        if p.name == "bias":
            p.data[...] = rng.normal(size=p.shape) * 0.1
    x = rng.normal(size=(7, 5))
    t = rng.integers(0, 3, size=7)
    loss_fn = nb.SoftmaxCrossEntropy()

    def loss():
        return loss_fn.forward(model.forward(x), t)

    model.zero_grad()
    loss()
    dx = model.backward(loss_fn.backward(), need_input_grad=True).copy()
    for p in model.parameters():
        assert rel_err(p.grad, numerical_grad(loss, p.data)) < TOL, p.name
    if act is not nb.ReLU:  # ReLU's kink makes dL/dx numerically fragile at arbitrary x
        assert rel_err(dx, numerical_grad(loss, x)) < TOL


def test_gradients_accumulate_until_zero_grad(rng):
    model = nb.Sequential([nb.Linear(4, 5, dtype=F64, seed=0), nb.Tanh(), nb.Linear(5, 2, dtype=F64, seed=1)])
    loss_fn = nb.MSELoss()
    x1, y1 = rng.normal(size=(3, 4)), rng.normal(size=(3, 2))
    x2, y2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))

    def grads_of(x, y):
        model.zero_grad()
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        return [p.grad.copy() for p in model.parameters()]

    g1, g2 = grads_of(x1, y1), grads_of(x2, y2)
    model.zero_grad()
    for x, y in ((x1, y1), (x2, y2)):
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
    for p, a, b in zip(model.parameters(), g1, g2):
        np.testing.assert_allclose(p.grad, a + b, rtol=1e-12)
    model.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())


def test_backward_without_input_grad_gives_same_parameter_gradients(rng):
    model = nb.Sequential([nb.ReLU(), nb.Linear(4, 3, dtype=F64, seed=0), nb.Sigmoid(), nb.Linear(3, 2, dtype=F64, seed=1)])
    x, y = rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    loss_fn = nb.MSELoss()
    loss_fn.forward(model.forward(x), y)
    assert model.backward(loss_fn.backward(), need_input_grad=True) is not None
    full = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    loss_fn.forward(model.forward(x), y)
    assert model.backward(loss_fn.backward()) is None  # the default: no dL/dX, as in a training loop
    for p, g in zip(model.parameters(), full):
        np.testing.assert_array_equal(p.grad, g)



@pytest.mark.parametrize("first", [nb.Tanh, nb.Sigmoid, nb.Softmax])
def test_input_gradient_of_a_model_that_starts_with_an_activation(first, rng):
    """need_input_grad=True backpropagates through the layers before the first Linear too: with
    them skipped (as the default may, having no parameters there), dL/dX would be the gradient at
    the Linear's input, a wrong answer of the right shape. Finite differences, float64."""
    model = nb.Sequential([first(), nb.Linear(4, 3, dtype=F64, seed=0), nb.Tanh(), nb.Linear(3, 2, dtype=F64, seed=1)])
    x, y = rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    loss_fn = nb.MSELoss()

    def loss():
        return loss_fn.forward(model.forward(x), y)

    loss()
    dx = model.backward(loss_fn.backward(), need_input_grad=True)
    assert rel_err(dx, numerical_grad(loss, x)) < TOL

def test_relu_passes_nan_through_so_divergence_is_seen():
    """max(0, NaN) must stay NaN (as in PyTorch): a ReLU that turned it into 0 would hide a
    diverged layer from the loss."""
    x = np.array([[np.nan, -1.0, 2.0]], np.float32)
    y = nb.ReLU().forward(x)
    assert np.isnan(y[0, 0]) and y[0, 1] == 0 and y[0, 2] == 2
    model = nb.Sequential([nb.Linear(3, 2, seed=0), nb.ReLU(), nb.Linear(2, 2, seed=1)])  # fused path
    model.layers[0].bias[0] = np.nan
    assert np.isnan(model.forward(np.ones((1, 3), np.float32))).any()


def test_the_input_gradient_belongs_to_the_caller(rng):
    """model.backward(g, need_input_grad=True) returned the first layer's buffer: the next backward
    overwrote what the caller kept, though model(x)'s output is the caller's."""
    model = nb.Sequential([nb.Linear(4, 3, dtype=F64, seed=0), nb.ReLU(), nb.Linear(3, 2, dtype=F64, seed=1)])
    x, g = rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    model.forward(x)
    first = model.backward(g, need_input_grad=True)
    kept = first.copy()
    model.forward(2 * x)
    second = model.backward(3 * g, need_input_grad=True)
    assert second is not first
    np.testing.assert_array_equal(first, kept)


def _python_cases():
    """(name, args) for every kernel of README's table but the fast Linear ones, at odd small shapes
    (a batch of 1 among them), float64."""
    rng = np.random.default_rng(5)
    r = lambda *shape: rng.standard_normal(shape)
    k, n, m = 3, 1, 4
    x, w, b, g = r(k, n), r(m, n), r(m), r(k, m)
    z, t = r(k, m), rng.integers(0, m, k)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    e = lambda *shape: np.empty(shape)
    cases = [("linear_forward_ref", (e(k, m), x, w, b)), ("linear_forward_ref", (e(1, 1), r(1, 1), r(1, 1), r(1))),
             ("linear_backward_params_ref", (r(m, n), r(m), g, x)), ("linear_backward_input_ref", (e(k, n), g, w))]
    for act in ("relu", "sigmoid", "tanh", "softmax"):
        cases += [(f"{act}_forward", (e(k, m), z)), (f"{act}_backward", (e(k, m), g, p))]
    bits = (rng.random((k, m)) < 0.5).astype(np.float64)
    cases += [("crossentropy_forward", (e(k), p, t)), ("crossentropy_backward", (e(k, m), p, t)),
              ("softmax_crossentropy_forward", (e(k, m), e(k), z, t)), ("softmax_crossentropy_backward", (e(k, m), p, t)),
              ("softmax_crossentropy_forward_backward", (e(k, m), e(k, m), e(k), z, t)),
              ("mse_forward", (z, g)), ("mse_backward", (e(k, m), z, g)),
              ("bce_with_logits_forward", (z, bits)), ("bce_with_logits_backward", (e(k, m), z, bits)),
              ("sgd_step", (r(7), r(7), r(7), 0.1, 0.9, 0.01, True)),
              ("adam_step", (r(7), r(7), r(7), np.abs(r(7)), 0.1, 0.999, 0.001, 1e-8, 0.01, 1.0, 0.01, 0.5))]
    return cases


@pytest.mark.parametrize("name,args", _python_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_kernel_but_the_fast_linear_ones_runs_as_python_through_py_func(name, args):
    """nbnet refuses NUMBA_DISABLE_JIT (the fast Linear kernels exist only compiled), so a learner
    steps through a kernel with pdb or print by calling its py_func, as README says: the serial/parallel
    pairs (cpu.Kernel: relu_forward, sgd_step...) had none, only .serial.py_func, a renamed copy."""
    kernel = getattr(cpu, name)
    compiled = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    python = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    want, got = kernel(*compiled), kernel.py_func(*python)
    assert kernel.py_func.__name__.lstrip("_") == name  # the function as written in cpu.py
    np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), rtol=1e-12, atol=1e-15)
    for c, py in zip(compiled, python):
        if isinstance(c, np.ndarray) and c.dtype.kind == "f":
            np.testing.assert_allclose(py, c, rtol=1e-12, atol=1e-15, err_msg=name)


def _readme_kernel_table():
    """The rows of README's kernel table, each as its five cells. A `|` inside a cell must be
    written `\\|`: a bare one (BCE's `e^(−|z|)`) split its row into seven cells, the formula cut in two."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| layer | formula |"):]
    rows = table[:table.index("\n\n")].splitlines()[2:]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row.strip()[1:-1])] for row in rows]


def _defined(path):
    """Names of the functions and assignments at the top level of the Python file `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return names | {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}


def test_readme_kernel_table_names_kernels_and_tests_that_exist():
    """README's table (layer | formula | CPU kernel | GPU kernel | test) is what a learner follows
    from the math to the code and its check: every row has its five cells, every kernel it names
    is in nbnet/cpu.py and nbnet/gpu.py, and every test it names is in the file it says."""
    cpu_names, gpu_names = _defined(ROOT / "nbnet" / "cpu.py"), _defined(ROOT / "nbnet" / "gpu.py")
    rows = _readme_kernel_table()
    assert len(rows) >= 15
    for cells in rows:
        assert len(cells) == 5, f"README kernel table row {cells[0]!r} has {len(cells)} cells, not 5"
        layer, _, on_cpu, on_gpu, tests = cells
        names = []
        for name in re.findall(r"`(\w+)`", on_cpu):  # `_backward` after `softmax_crossentropy_forward`
            names.append(names[-1].rsplit("_", 1)[0] + name if name.startswith("_") else name)
        assert names and set(names) <= cpu_names, (layer, set(names) - cpu_names)
        wanted = [n for n in names if not n.endswith("_ref")] if on_gpu == "same names" else re.findall(r"`(\w+)`", on_gpu)
        assert wanted and set(wanted) <= gpu_names, (layer, set(wanted) - gpu_names)
        path = None
        for file, test in re.findall(r"`(\w+\.py)?::(\w+)`", tests):
            path = ROOT / "tests" / file if file else path
            assert test in _defined(path), f"README's {layer} row names {path.name}::{test}, which does not exist"


class _Scale(nb.Layer):
    """y = x ⊙ w, with a backward that can be made wrong: `bug` scales dL/dw or dL/dx by 2."""

    def __init__(self, features, bug=None):
        self.training, self.bug = True, bug
        self.weight = np.linspace(0.5, 1.5, features)
        self.grad_weight = np.zeros(features)

    def parameters(self):
        return [nb.Parameter(self, "weight")]

    def zero_grad(self):
        self.grad_weight = np.zeros_like(self.weight)  # a new array: gradcheck must read it after backward

    def forward(self, x):
        self.inp = x
        return x * self.weight

    def backward(self, grad_y):
        self.grad_weight += (grad_y * self.inp).sum(axis=0) * (2 if self.bug == "dw" else 1)
        return grad_y * self.weight * (2 if self.bug == "dx" else 1)


def _scaled(bug=None):
    return nb.Sequential(nb.Linear(3, 4, dtype=F64, seed=0), nb.Tanh(), _Scale(4, bug), nb.Linear(4, 2, dtype=F64, seed=1))


X3 = np.random.default_rng(5).standard_normal((6, 3))
Y3 = np.array([0, 1, 1, 0, 1, 0])


@pytest.mark.parametrize("loss, y", [("cross-entropy", Y3), ("mse", np.random.default_rng(6).standard_normal((6, 2))),
                                     ("bce", np.eye(2)[Y3])])
def test_gradcheck_passes_a_right_backward_and_keeps_the_model(loss, y):
    model = _scaled()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    x = X3.astype(np.float32)  # converted to float64, copied: the caller's x is not moved
    assert nb.gradcheck(model, x, y, loss=loss, samples=None) == []
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # put back bit for bit
    assert np.array_equal(x, X3.astype(np.float32))
    # the gradients left are this batch's: those of one forward and backward on it
    fresh, loss_fn = _scaled(), LOSSES[loss]()
    loss_fn(fresh(x.astype(F64)), y if loss == "cross-entropy" else np.asarray(y, F64))
    fresh.backward(loss_fn.backward())
    assert all(np.array_equal(p.grad, q.grad) for p, q in zip(model.parameters(), fresh.parameters()))


@pytest.mark.parametrize("bug, names", [("dw", ["2.weight"]), ("dx", ["0.weight", "0.bias", "x"])])
def test_gradcheck_names_the_elements_a_wrong_backward_gets_wrong(bug, names):
    """A layer whose dL/dw is twice the truth is named by its weight; one whose dL/dx is, by every
    gradient computed from it: the layers before it, and x."""
    bad = nb.gradcheck(_scaled(bug), X3, Y3, samples=None)
    assert sorted({line.split("[")[0] for line in bad}) == sorted(names), bad
    assert len([line for line in bad if line.startswith(names[0] + "[")]) >= 3
    assert re.fullmatch(r"\S+\[\d+(, \d+)?\]: backward -?[\d.e+-]+, finite difference -?[\d.e+-]+", bad[0]), bad[0]
    # sampled: a few elements of each array, the same ones for the same seed
    some = nb.gradcheck(_scaled(bug), X3, Y3, samples=2, seed=4)
    assert 0 < len(some) <= 2 * len(names) and some == nb.gradcheck(_scaled(bug), X3, Y3, samples=2, seed=4)


def test_gradcheck_tolerance_and_step():
    model = _scaled()
    assert nb.gradcheck(model, X3, Y3, tol=0.0, samples=None) != []  # rounding: never exactly equal
    assert nb.gradcheck(_scaled("dw"), X3, Y3, tol=10.0) == []  # 2x off, within ten times max(1, |d|)
    assert nb.gradcheck(model, X3, Y3, eps=1.0) != []  # a step that large is no derivative


def test_gradcheck_refuses_what_it_cannot_check():
    x32 = nb.Sequential(nb.Linear(3, 2, seed=0))
    with pytest.raises(ValueError, match=r"gradcheck needs float64 parameters, 0.weight is float32: .*astype"):
        nb.gradcheck(x32, X3, Y3)
    with pytest.raises(TypeError, match=r"takes an nb.Sequential, not Linear: wrap a layer"):
        nb.gradcheck(nb.Linear(3, 2, dtype=F64), X3, Y3)

    @dataclass(eq=False)
    class Noise(nb.Layer):
        def forward(self, x):
            return x + np.random.default_rng().standard_normal(x.shape) if self.training else x

        def backward(self, grad_y):
            return grad_y

    noisy = nb.Sequential(nb.Linear(3, 2, dtype=F64, seed=0), Noise())
    with pytest.raises(ValueError, match=r"two outputs for one x: .*model.eval\(\) first"):
        nb.gradcheck(noisy, X3, Y3)
    noisy.eval()
    assert nb.gradcheck(noisy, X3, Y3) == []
    model = _scaled()
    for kwargs, says in [({"eps": 0}, "eps must be a finite number > 0"), ({"eps": float("nan")}, "eps must"),
                         ({"tol": -1}, "tol must be a finite number >= 0"), ({"tol": True}, "tol must"),
                         ({"samples": 0}, "samples must be a positive integer or None"),
                         ({"seed": "s"}, "seed must be a non-negative integer, got 's'"), ({"seed": -1}, "seed must"),
                         ({"loss": "hinge"}, "unknown loss 'hinge'")]:
        with pytest.raises(ValueError, match=says):
            nb.gradcheck(model, X3, Y3, **kwargs)
    with pytest.raises(ValueError, match=r"x must be a batch \(N, D\) with N >= 1, got shape \(3,\)"):
        nb.gradcheck(model, X3[0], Y3[:1])
    with pytest.raises(ValueError, match="x must be real numbers: could not convert string to float: 'a'"):
        nb.gradcheck(model, [["a", "b", "c"]], Y3[:1])
    with pytest.raises(ValueError, match="the loss is nan on this batch"):
        nb.gradcheck(model, np.full((6, 3), np.nan), Y3)
