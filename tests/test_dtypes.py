"""float32 stays float32 (no silent upcasting, in the outputs or inside the kernels), float64 works,
and the stable kernels stay finite at extreme inputs."""

import numba
import numpy as np
import pytest

import nbnet as nb
from nbnet import cpu


def one_step(dtype, act=nb.ReLU, opt_cls=nb.SGD):
    rng = np.random.default_rng(0)
    model = nb.Sequential([nb.Linear(5, 4, dtype=dtype, seed=0), act(), nb.Linear(4, 3, dtype=dtype, seed=1)])
    opt = opt_cls(model.parameters(), lr=0.01, **({"momentum": 0.9} if opt_cls is nb.SGD else {}))
    x = rng.normal(size=(6, 5)).astype(dtype)
    t = rng.integers(0, 3, size=6)
    loss_fn = nb.SoftmaxCrossEntropy()
    logits = model.forward(x)
    loss_fn.forward(logits, t)
    dx = model.backward(loss_fn.backward(), need_input_grad=True)
    opt.step()
    return model, logits, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_and_gradients_keep_the_dtype(dtype):
    model, logits, dx = one_step(dtype)
    assert logits.dtype == dtype and dx.dtype == dtype
    for p in model.parameters():
        assert p.data.dtype == dtype and p.grad.dtype == dtype
    for layer in (nb.Sigmoid(), nb.Tanh(), nb.Softmax(), nb.ReLU()):
        y = layer.forward(np.ones((2, 3), dtype))
        assert y.dtype == dtype and layer.backward(np.ones((2, 3), dtype)).dtype == dtype
    for loss, pred, target in (
        (nb.MSELoss(), np.ones((2, 3), dtype), np.zeros((2, 3), dtype)),
        (nb.CrossEntropy(), np.full((2, 3), 1 / 3, dtype), np.array([0, 2])),
    ):
        assert isinstance(loss.forward(pred, target), float)
        assert loss.backward().dtype == dtype


def exercise_every_kernel_in_float32():
    for act in (nb.ReLU, nb.Sigmoid, nb.Tanh, nb.Softmax):
        one_step(np.float32, act=act)
    for opt_cls in (nb.Adam, nb.AdamW):
        one_step(np.float32, opt_cls=opt_cls)
    for loss, pred, target in (
        (nb.MSELoss(), np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)),
        (nb.CrossEntropy(), np.full((2, 3), 1 / 3, np.float32), np.array([0, 2])),
    ):
        loss.forward(pred, target)
        loss.backward()
    f32 = np.ones((3, 4), np.float32), np.ones((2, 4), np.float32), np.ones(2, np.float32), np.ones((3, 2), np.float32)
    x, w, b, g = f32
    cpu.linear_forward_ref(g.copy(), x, w, b)
    cpu.linear_backward_params_ref(w.copy(), b.copy(), g, x)
    cpu.linear_backward_input_ref(x.copy(), g, w)
    cpu.transpose(w.T.copy(), w)  # the large-batch forward's Wᵀ copy
    # A model fuses every ReLU that follows a Linear into it: the stand-alone pair runs only after
    # other layers, so call it here (this test relied on other tests having done so).
    cpu.relu_forward(x.copy(), x)
    cpu.relu_backward(x.copy(), x, x)
    t = np.array([0, 1, 1])
    cpu.rows_mean(np.ones(3, np.float32))  # the losses' sum: its callers may come from Numba's cache
    cpu.softmax_crossentropy_forward(g.copy(), np.ones(3, np.float32), g, t)  # the unfused pair
    cpu.softmax_crossentropy_backward(g.copy(), g, t)
    cpu.count_correct(g, t)
    bce = nb.BCEWithLogits()  # bce_with_logits_forward / _backward, and the label count
    bce.forward(g, np.ones_like(g))
    bce.backward()
    cpu.count_correct_labels(g, np.ones_like(g))
    # The optimizers' two forms: which one a small step takes depends on the thread count (the
    # lanes need two; on two the flat step is not taken at these batches), so on one CPU the check
    # below found no float32 twin of the lanes (StopIteration), and run alone on two, none of the
    # flat step (other tests had compiled it). Both here, with the argument types the optimizers
    # pass (float32 scalars, int64 spans).
    p, spans, first = np.ones(4, np.float32), np.array([[0, 4]], np.int64), np.array([0, 1], np.int64)
    one = np.float32(0.5)
    cpu.sgd_step(p, p.copy(), p.copy(), one, one, one, False)
    cpu.sgd_lanes(p, p.copy(), p.copy(), one, one, one, False, spans, first)
    cpu.adam_step(p, p.copy(), p.copy(), p.copy(), *[one] * 8)
    cpu.adam_lanes(p, p.copy(), p.copy(), p.copy(), *[one] * 8, spans, first)


def float32_signatures(dispatcher):
    def is_f32(t):
        return getattr(t, "dtype", None) == numba.float32 or t == numba.float32

    return [sig for sig in dispatcher.signatures if any(is_f32(t) for t in sig)]


def compiled_body(ir):
    """The IR lines of the kernel itself (and its parallel parts), without the CPython wrapper,
    which boxes a returned float32 as a Python float (a double) by necessity."""
    lines, keep = [], True
    for line in ir.splitlines():
        if line.startswith("define"):
            keep = "7cpython" not in line and "@cfunc." not in line
        if keep and not line.startswith("declare"):
            lines.append(line)
    return lines


INTEGER_ONLY = {"label_bounds"}  # kernels with no float argument: nothing to check here
# Helpers called only from inside a Linear kernel (whose compiled code, helpers included, is checked
# in test_fast_kernels): their own dispatcher is never called from Python.
CHECKED_IN_CALLER = {"_bias_rows"}


def test_no_float64_inside_float32_kernels():
    """A float64 literal or accumulator in a float32 kernel shows up as `double` in its LLVM IR.
    (The tiled Linear kernels, which are not plain dispatchers, are checked in test_fast_kernels.)

    The IR is optimised: where float64 arithmetic provably rounds to the same float32 result (e.g.
    one division of two widened floats), LLVM removes it, so what this flags is float64 arithmetic
    that really runs (an accumulator `acc = 0.0` does)."""
    exercise_every_kernel_in_float32()
    kernels = {
        name: obj
        for name, obj in vars(cpu).items()
        # inline="always" helpers have no code of their own: they are checked inside their callers
        if isinstance(obj, numba.core.registry.CPUDispatcher) and obj.targetoptions.get("inline") != "always"
        and name not in INTEGER_ONLY | CHECKED_IN_CALLER
    }
    # Serial/parallel twins (cpu.Kernel): the one twin a small step ran. The Linear ones are checked
    # in test_fast_kernels.
    for name, obj in vars(cpu).items():
        if isinstance(obj, cpu.Kernel) and not name.startswith("linear_"):
            kernels[name] = next(twin for twin in (obj.serial, obj.parallel) if float32_signatures(twin))
    assert {"sgd_step", "adam_step"} <= set(kernels) and len(kernels) >= 15
    for name, kernel in kernels.items():
        sigs = float32_signatures(kernel)
        assert sigs, f"cpu.{name} was never compiled for float32"
        # Recompile without the on-disk cache: Numba cannot show the IR of cached code.
        opts = {k: v for k, v in kernel.targetoptions.items() if k in ("parallel", "fastmath", "error_model")}
        fresh = numba.njit(**opts)(kernel.py_func)
        for sig in sigs:
            fresh.compile(sig)
            body = compiled_body(fresh.inspect_llvm(sig))
            assert any("float" in line for line in body), f"no IR for cpu.{name}{sig}"
            bad = [line.strip() for line in body if "double" in line]
            assert not bad, f"cpu.{name}{sig} computes in float64: {bad[:3]}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_crossentropy_is_finite_at_extreme_logits(dtype):
    z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -1000.0], [1000.0, 1000.0, -1000.0]], dtype)
    t = np.array([1, 0, 0])
    loss = nb.SoftmaxCrossEntropy()
    value = loss.forward(z, t)
    grad = loss.backward()
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # Row 0: the true class is 2000 below the max: loss 2000. Row 1: uniform, log 3. Row 2: log 2.
    assert value == pytest.approx((2000 + np.log(3) + np.log(2)) / 3, rel=1e-6)
    np.testing.assert_allclose(grad.sum(1), 0, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_subtracts_the_row_max_wherever_it_is(dtype):
    """The row max is found over every column, the last one too: a large logit missed by it
    overflows e^(z - m) to inf, and the loss and the probabilities to NaN."""
    for c in range(3):
        z = np.full((1, 3), -1000.0, dtype)
        z[0, c] = 1000.0
        onehot = np.eye(3, dtype=dtype)[[c]]
        assert nb.SoftmaxCrossEntropy().forward(z, np.array([c])) == 0.0
        np.testing.assert_array_equal(nb.Softmax().forward(z), onehot)
        probs = np.empty_like(z)
        assert cpu.softmax_crossentropy_forward(probs, np.empty(1, dtype), z, np.array([c])) == 0.0
        np.testing.assert_array_equal(probs, onehot)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_are_finite_at_extreme_inputs(dtype):
    x = np.array([[1000.0, -1000.0, 0.0, 88.0, -104.0]], dtype)
    for layer in (nb.Sigmoid(), nb.Tanh(), nb.Softmax()):
        y = layer.forward(x)
        assert np.all(np.isfinite(y)), type(layer).__name__
        assert np.all(np.isfinite(layer.backward(np.ones_like(x))))
    np.testing.assert_array_equal(nb.Sigmoid().forward(x)[0, :2], [1.0, 0.0])


def test_crossentropy_on_a_zero_probability_is_large_but_finite():
    loss = nb.CrossEntropy()
    value = loss.forward(np.array([[0.0, 1.0]], np.float32), np.array([0]))
    assert np.isfinite(value) and value > 80
    assert np.all(np.isfinite(loss.backward()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_crossentropy_keeps_log_sum_at_large_equal_logits(dtype):
    """A row of C equal logits has loss log C whatever their size: the row max must cancel against
    the target's logit before log Σ e^(z - m) (< 1e-7 of it) is added, or that term rounds away."""
    t = np.array([0, 2, 1])
    for big in (1e4, 1e8, 3e38):
        z = np.full((3, 3), big, dtype)
        z[1] = -big
        z[2, 0] = -big  # z_2 = (-big, big, big): loss log 2
        want = (np.log(3) + np.log(3) + np.log(2)) / 3
        assert nb.SoftmaxCrossEntropy().forward(z, t) == pytest.approx(want, rel=1e-6), big
        probs, losses = np.empty_like(z), np.empty(3, dtype)
        assert cpu.softmax_crossentropy_forward(probs, losses, z, t) == pytest.approx(want, rel=1e-6), big
