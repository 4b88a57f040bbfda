"""GPU kernels against the CPU kernels, run by tests/test_gpu.py in a child pytest process.

That child has NUMBA_ENABLE_CUDASIM=1 (Numba's CUDA simulator: the same kernels, run in Python) and
NBNET_CUDA_TILE=4, so tiny shapes still leave partial tiles in every dimension. On a machine with a
GPU, `NUMBA_ENABLE_CUDASIM=0 python -m pytest tests/gpu_cases.py` runs the same cases for real
(test_gpu.py does that when one is usable). The simulator runs one Python thread per GPU thread:
keep shapes tiny and steps few.
"""

import numpy as np
import pytest

import nbnet as nb
from nbnet import cpu, gpu
from nbnet.model import to_host
from nbnet.optim import one_flat

DTYPES = [np.float32, np.float64]
# float32: the simulator evaluates math.exp/log/tanh in double before rounding, the CPU in float,
# and a loss's mean is summed in tree order on the GPU, in row order on the CPU: a few ulp apart.
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
# Shapes (k, n, m) with TILE = 4 (output tiles of BT = 16): partial tiles in k, n and m; a single
# partial tile; several full ones; several tiles with partial edges, and steps past one TILE.
LINEAR_SHAPES = [(5, 7, 6), (3, 2, 1), (8, 4, 9), (32, 16, 48), (37, 21, 35)]
def rand(rng, shape, dtype, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def on_both(fn, *host_args):
    """Run fn from nbnet.cpu on copies of the host arrays and the same-named launcher from
    nbnet.gpu on device copies; return (cpu result, gpu result, cpu arrays, gpu arrays on host)."""
    h = [a.copy() if isinstance(a, np.ndarray) else a for a in host_args]
    d = [gpu.to_device(a) if isinstance(a, np.ndarray) else a for a in host_args]
    r_cpu = getattr(cpu, fn)(*h)
    r_gpu = getattr(gpu, fn)(*d)
    return r_cpu, r_gpu, h, [to_host(a) if hasattr(a, "copy_to_host") else a for a in d]


def assert_same(fn, *host_args, check=None):
    """Every array argument (outputs included) ends equal on both; so does the return value."""
    r_cpu, r_gpu, h, d = on_both(fn, *host_args)
    dtype = next(a.dtype.type for a in host_args if isinstance(a, np.ndarray) and a.dtype.kind == "f")
    for idx in check if check is not None else range(len(h)):
        if isinstance(h[idx], np.ndarray):
            np.testing.assert_allclose(d[idx], h[idx], **TOL[dtype], err_msg=f"{fn} argument {idx}")
    if r_cpu is not None:
        assert isinstance(r_gpu, (float, np.floating)), f"{fn} must return a host scalar"
        np.testing.assert_allclose(r_gpu, r_cpu, **TOL[dtype], err_msg=f"{fn} result")
    return d


def test_tiles_are_small_enough_to_be_partial():
    # LINEAR_SHAPES leave partial tiles only for TILE < 9 (test_gpu.py sets NBNET_CUDA_TILE=4).
    assert gpu.TILE <= 8


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n,m", LINEAR_SHAPES)
def test_linear_kernels(k, n, m, dtype):
    rng = np.random.default_rng(k * 100 + n * 10 + m)
    x, w, b = rand(rng, (k, n), dtype), rand(rng, (m, n), dtype), rand(rng, (m,), dtype)
    g = rand(rng, (k, m), dtype)
    out = assert_same("linear_forward", np.empty((k, m), dtype), x, w, b)[0]
    np.testing.assert_allclose(out, x @ w.T + b, **TOL[dtype])  # and the formula itself
    # Parameter gradients accumulate into what is there: start from non-zero values.
    dw, db = rand(rng, (m, n), dtype), rand(rng, (m,), dtype)
    assert_same("linear_backward_params", dw, db, g, x, True, check=[0, 1])
    # accumulate=False (the backward after zero_grad) writes the sums over what is there.
    d = assert_same("linear_backward_params", dw, db, g, x, False, check=[0, 1])
    np.testing.assert_allclose(d[0], g.T @ x, **TOL[dtype])
    np.testing.assert_allclose(d[1], g.sum(0), **TOL[dtype])
    assert_same("linear_backward_input", np.full((k, n), np.nan, dtype), g, w, check=[0])


def test_batch_parts_follow_the_shapes_and_bound_the_scratch():
    # The split is fixed by (k, m, n) alone; a dW with enough output tiles to fill a GPU is not
    # split, and a split one never has more than SPLIT_BLOCKS tiles in all its parts.
    bt = gpu.BT
    assert gpu._batch_parts(gpu.SPLIT_ROWS, 10, 10) == (1, gpu.SPLIT_ROWS)
    assert gpu._batch_parts(100_000, 64 * bt, 64 * bt) == (1, 100_000)  # 4096 tiles
    for m, n in [(10, 10), (3 * bt, 12 * bt + 1), (20 * bt, 20 * bt), (22 * bt, 23 * bt)]:
        tiles = -(-m // bt) * -(-n // bt)
        for k in (gpu.SPLIT_ROWS + 1, 10_000, 1_000_000):
            parts, rows = gpu._batch_parts(k, m, n)
            assert (parts - 1) * rows < k <= parts * rows and parts <= gpu.MAX_PARTS
            assert parts == 1 or parts * tiles <= gpu.SPLIT_BLOCKS
            assert parts == 1 or rows >= gpu.PART_ROWS  # no parts shorter than that


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,split_rows,part_rows", [(37, 8, 8), (33, 16, 8), (9, 8, 8), (16, 16, 4), (70, 4, 4)])
def test_linear_backward_params_in_batch_parts(k, split_rows, part_rows, dtype, monkeypatch):
    # A batch longer than SPLIT_ROWS is summed in parts (at most MAX_PARTS) and the parts added in
    # order: against the CPU kernel and the formula, accumulating and writing, with a short last
    # part and, at k=70 with 4 rows a part, more rows a part than PART_ROWS because of MAX_PARTS.
    monkeypatch.setattr(gpu, "SPLIT_ROWS", split_rows)
    monkeypatch.setattr(gpu, "PART_ROWS", part_rows)
    n, m = 21, 6
    parts, rows = gpu._batch_parts(k, m, n)
    assert parts == (1 if k <= split_rows else -(-k // rows)) and parts <= gpu.MAX_PARTS
    assert parts == 1 or (rows % gpu.TILE == 0 and (parts - 1) * rows < k <= parts * rows)
    rng = np.random.default_rng(k)
    x, g = rand(rng, (k, n), dtype), rand(rng, (k, m), dtype)
    dw, db = rand(rng, (m, n), dtype), rand(rng, (m,), dtype)
    d = assert_same("linear_backward_params", dw, db, g, x, True, check=[0, 1])
    np.testing.assert_allclose(d[0], dw + g.T @ x, **TOL[dtype])
    np.testing.assert_allclose(d[1], db + g.sum(0), **TOL[dtype])
    d = assert_same("linear_backward_params", dw, db, g, x, False, check=[0, 1])
    np.testing.assert_allclose(d[0], g.T @ x, **TOL[dtype])
    np.testing.assert_allclose(d[1], g.sum(0), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_linear_relu_kernels(dtype):
    """The fused epilogues equal the CPU's unfused kernels run one after the other."""
    k, n, m = LINEAR_SHAPES[0]
    rng = np.random.default_rng(11)
    x, w, b, g = rand(rng, (k, n), dtype), rand(rng, (m, n), dtype), rand(rng, (m,), dtype), rand(rng, (k, m), dtype)
    y, a = np.empty((k, m), dtype), np.empty((k, m), dtype)
    cpu.linear_forward(y, x, w, b)
    cpu.relu_forward(a, y)
    dy, da = gpu.empty((k, m), dtype), gpu.empty((k, m), dtype)
    gpu.linear_relu_forward(dy, da, gpu.to_device(x), gpu.to_device(w), gpu.to_device(b))
    np.testing.assert_allclose(to_host(dy), y, **TOL[dtype])
    np.testing.assert_allclose(to_host(da), a, **TOL[dtype])

    preact = rand(rng, (k, n), dtype)
    preact[0, 0] = 0  # ReLU'(0) = 1
    dx, want = np.empty((k, n), dtype), np.empty((k, n), dtype)
    cpu.linear_backward_input(dx, g, w)
    cpu.relu_backward(want, dx, preact)
    d_dx = gpu.empty((k, n), dtype)
    gpu.linear_relu_backward_input(d_dx, gpu.to_device(g), gpu.to_device(w), gpu.to_device(preact))
    np.testing.assert_allclose(to_host(d_dx), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_passes_through_relu_and_fused_linear_relu_as_on_the_cpu(dtype):
    """A diverged layer must not hide on the GPU: ReLU(NaN) is NaN on both devices."""
    x = np.array([[np.nan, -1.0, 2.0], [0.0, np.nan, -np.inf]], dtype)
    out = np.empty_like(x)
    cpu.relu_forward(out, x)
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1])
    assert_same("relu_forward", np.empty_like(x), x)
    # fused: a NaN weight makes its column of Y NaN, and the ReLU after it keeps the NaN
    w = np.array([[1.0, 0.0, 0.0], [np.nan, 0.0, 0.0]], dtype)
    xf = np.ones((2, 3), dtype)
    dy, da = gpu.empty((2, 2), dtype), gpu.empty((2, 2), dtype)
    gpu.linear_relu_forward(dy, da, gpu.to_device(xf), gpu.to_device(w), gpu.to_device(np.zeros(2, dtype)))
    y, a = np.empty((2, 2), dtype), np.empty((2, 2), dtype)
    cpu.linear_relu_forward(y, a, xf, w, np.zeros(2, dtype))
    assert np.isnan(a[:, 1]).all()
    np.testing.assert_array_equal(to_host(da), a)


def test_model_output_on_the_device_belongs_to_the_caller():
    model = tiny_model().to("cuda")
    rng = np.random.default_rng(3)
    a, b = rand(rng, (4, 3), np.float32), rand(rng, (4, 3), np.float32)
    p1 = model(a)
    want = to_host(p1).copy()
    model(b)
    np.testing.assert_array_equal(to_host(p1), want)


def test_a_device_batch_in_a_layers_own_memory_is_copied_first():
    """model(v) on the GPU where v is (a view of) a device array the layers write: the forward
    overwrote it (model[-1].out is the first layer's input there) and dW = Gᵀ X read the result.
    Copied first, as on the host (found by where it lies: a device view has no .base); a batch of
    its own is not copied."""
    x = rand(np.random.default_rng(4), (3, 4), np.float32)
    g = gpu.to_device(np.ones((3, 4), np.float32))
    picks = [lambda m: m[-1].out[1:], lambda m: m[0].grad_weight[:3]]
    for pick in picks:
        m, twin = ([nb.Sequential(nb.Linear(4, 4, seed=0), nb.ReLU(), nb.Linear(4, 4, seed=1)).to("cuda")
                    for _ in range(2)])
        for model in (m, twin):
            model.forward_reusing(gpu.to_device(x))
        batch = pick(m)
        same = gpu.to_device(to_host(batch))
        np.testing.assert_array_equal(to_host(m(batch)), to_host(twin(same)))
        m.backward(g[: batch.shape[0]])
        twin.backward(g[: batch.shape[0]])
        for p, q in zip(m.parameters(), twin.parameters()):
            np.testing.assert_array_equal(to_host(p.grad), to_host(q.grad))
    own = gpu.to_device(x)
    assert m._device_unaliased(own) is own


def test_the_device_batch_check_keeps_no_buffer_the_layers_dropped():
    """The spans the device batch check keeps (Sequential._device_spans) held the arrays they were
    taken of: a forward at another batch size replaced the layers' buffers, and the old ones stayed
    on the GPU (after nb.evaluate's batch, for good). Weak references now: the old ones go."""
    import gc  # noqa: PLC0415
    import weakref  # noqa: PLC0415

    m = nb.Sequential(nb.Linear(4, 3, seed=0), nb.ReLU(), nb.Linear(3, 2, seed=1)).to("cuda")
    rng = np.random.default_rng(5)
    m(gpu.to_device(rand(rng, (4, 4), np.float32)))
    m(gpu.to_device(rand(rng, (4, 4), np.float32)))  # spans taken of the 4-row buffers
    old = weakref.ref(m[-1].out)
    m(gpu.to_device(rand(rng, (9, 4), np.float32)))  # more rows: new buffers
    gc.collect()
    assert old() is None


def test_a_linear_fed_a_device_view_of_its_own_output_writes_a_new_one():
    """lin(lin.out[:]) on the GPU: Linear's forward found its own output only by identity or .base
    (host views), so the kernel wrote the new output over its input, and dW = Gᵀ X read that. The
    host run makes a new output; so does the device run, found by where the view lies."""
    x = rand(np.random.default_rng(7), (3, 4), np.float32)
    g = np.ones((3, 4), np.float32)
    grads = []
    for device in ("cpu", "cuda"):
        lin = nb.Sequential(nb.Linear(4, 4, seed=0)).to(device)[0]
        move = gpu.to_device if device == "cuda" else np.asarray
        lin.forward(move(x))
        first = lin.out
        lin.forward(first[:])
        assert lin.out is not first
        lin.backward(move(g))
        grads.append(to_host(lin.grad_weight))
    np.testing.assert_allclose(grads[1], grads[0], **TOL[np.float32])
    out = lin.out
    lin.forward(gpu.to_device(x))  # a batch of its own keeps the buffer
    assert lin.out is out


def test_an_epochs_short_batch_on_the_device_reuses_the_buffers(monkeypatch):
    """Layer._buffer gave a short batch the first rows of the full batch's buffers on the host
    only: on the GPU an epoch's last batch reallocated every buffer of the model and the loss, and
    the next full batch all of them again (a cudaMalloc and a free each, twice an epoch). Now no
    allocation after the first epoch, with the host's results; a view of the kept buffer fed to
    the layer still gets a new output, as on the host."""
    rng = np.random.default_rng(9)
    x, y = rand(rng, (10, 3), np.float32), rng.integers(0, 4, size=10)
    real, made = gpu.empty, []
    monkeypatch.setattr(gpu, "empty", lambda *a: made.append(a) or real(*a))
    losses = []
    for device in ("cpu", "cuda"):
        model, loss_fn = tiny_model().to(device), nb.SoftmaxCrossEntropy()
        opt = nb.SGD(model.parameters(), lr=0.1)
        for epoch in range(2):
            made.clear()
            losses.append(train(model, opt, loss_fn, x, y, 3))  # batches of 4, 4, 2
    assert not made  # the GPU's second epoch
    np.testing.assert_allclose(losses[3], losses[1], **TOL[np.float32])
    grads, a, b = [], rand(rng, (10, 4), np.float32), rand(rng, (2, 4), np.float32)
    for device in ("cpu", "cuda"):  # x a view of the kept output, apart from its short view
        lin = nb.Sequential(nb.Linear(4, 4, seed=0)).to(device)[0]
        move = gpu.to_device if device == "cuda" else np.asarray
        lin.forward(move(a))
        lin.forward(move(b))
        lin.forward(lin._kept_out[3:7])
        lin.backward(move(np.ones((4, 4), np.float32)))
        grads.append(to_host(lin.grad_weight))
    np.testing.assert_allclose(grads[1], grads[0], **TOL[np.float32])


def test_a_host_array_assigned_to_a_layer_on_the_device_is_the_one_named():
    """The device was read from the weight alone: a host weight assigned blamed the untouched bias."""
    model = nb.Sequential([nb.Linear(3, 4, seed=0)]).to("cuda")
    model[0].weight = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"weight must be a C-contiguous float32 \(4, 3\) GPU array .* host array"):
        model(np.ones((2, 3), np.float32))
    model = nb.Sequential([nb.Linear(3, 4, seed=0)])
    model[0].bias = gpu.to_device(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"bias must be a C-contiguous float32 \(4,\) host array .* GPU array"):
        model(np.ones((2, 3), np.float32))
    # bias=False: one array on each device is a tie, which the gradient's device breaks
    model = nb.Sequential([nb.Linear(3, 4, seed=0, bias=False)]).to("cuda")
    model[0].weight = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"weight must be a C-contiguous float32 \(4, 3\) GPU array .* host array"):
        model(np.ones((2, 3), np.float32))


def test_a_linear_fed_its_own_output_on_the_device_writes_a_new_one():
    """lin(lin(x)) on the GPU: the kernel wrote its output into the array it read as its input
    (wrong values once the output spans two blocks of columns, which the simulator takes seconds to
    show, so here: the output is another array)."""
    lin = nb.Linear(4, 4, seed=0)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    want = lin(lin(x).copy()).copy()
    nb.Sequential([lin]).to("cuda")  # moves the layer itself
    y = lin(gpu.to_device(x))
    z = lin(y)
    assert z is not y
    np.testing.assert_allclose(to_host(z), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_softmax_crossentropy_kernel(dtype):
    rng = np.random.default_rng(12)
    logits, t = rand(rng, (5, 4), dtype, -5, 5), rng.integers(0, 4, size=5)
    probs, dz = np.empty_like(logits), np.empty_like(logits)
    loss = cpu.softmax_crossentropy_forward(probs, np.empty(5, dtype), logits, t)
    cpu.softmax_crossentropy_backward(dz, probs, t)
    d = [gpu.empty((5, 4), dtype), gpu.empty((5, 4), dtype), gpu.empty(5, dtype)]
    got = gpu.softmax_crossentropy_forward_backward(*d, gpu.to_device(logits), gpu.to_device(t))
    np.testing.assert_allclose(got, loss, **TOL[dtype])
    np.testing.assert_allclose(to_host(d[0]), dz, **TOL[dtype])
    np.testing.assert_allclose(to_host(d[1]), probs, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_crossentropy_keeps_log_sum_at_large_equal_logits(dtype):
    """Equal logits of 1e8 have loss log c: the row max cancels against the target's logit before
    the log is added (added to 1e8 first, it rounded away), as on the CPU."""
    z, t = np.full((2, 3), 1e8, dtype), np.array([0, 2])
    d = [gpu.empty((2, 3), dtype), gpu.empty((2, 3), dtype), gpu.empty(2, dtype)]
    got = gpu.softmax_crossentropy_forward_backward(*d, gpu.to_device(z), gpu.to_device(t))
    np.testing.assert_allclose(got, np.log(3), rtol=1e-6)
    got = gpu.softmax_crossentropy_forward(d[1], d[2], gpu.to_device(z), gpu.to_device(t))
    np.testing.assert_allclose(got, np.log(3), rtol=1e-6)


def test_softmax_subtracts_the_row_max_wherever_it_is(dtype=np.float32):
    """As on the CPU: the row max over every column, the last one too (missed, e^(z - m)
    overflowed to inf and the loss to NaN)."""
    z = np.full((3, 3), -1000.0, dtype)
    z[[0, 1, 2], [0, 1, 2]] = 1000.0  # the large logit first, in the middle, last
    t = np.arange(3)
    d = [gpu.empty((3, 3), dtype), gpu.empty((3, 3), dtype), gpu.empty(3, dtype)]
    assert gpu.softmax_crossentropy_forward_backward(*d, gpu.to_device(z), gpu.to_device(t)) == 0.0
    np.testing.assert_array_equal(to_host(d[1]), np.eye(3, dtype=dtype))
    out = gpu.empty((3, 3), dtype)
    gpu.softmax_forward(out, gpu.to_device(z))
    np.testing.assert_array_equal(to_host(out), np.eye(3, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "softmax"])
def test_activation_kernels(name, dtype):
    rng = np.random.default_rng(1)
    x = rand(rng, (3, 5), dtype, -3, 3)
    x[0, 0] = 0  # ReLU'(0) = 1 on both
    out = np.empty_like(x)
    getattr(cpu, name + "_forward")(out, x)
    assert_same(name + "_forward", np.empty_like(x), x)
    saved = x if name == "relu" else out
    assert_same(name + "_backward", np.empty_like(x), rand(rng, x.shape, dtype), saved)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 3, 5])  # the mean's tree reduction with 1, 4 and 8 threads
def test_loss_kernels(k, dtype):
    rng = np.random.default_rng(k)
    c = 4
    logits = rand(rng, (k, c), dtype, -5, 5)
    logits[0, 1] = 500  # large logits stay finite
    t = rng.integers(0, c, size=k)
    probs = np.empty_like(logits)
    cpu.softmax_forward(probs, logits)
    probs[0, t[0]] = 0  # the log clamp
    assert_same("softmax_crossentropy_forward", np.empty_like(logits), np.empty(k, dtype), logits, t)
    assert_same("softmax_crossentropy_backward", np.empty_like(logits), probs, t)
    assert_same("crossentropy_forward", np.empty(k, dtype), probs, t)
    # a p[i, t_i] outside [0, 1] (logits) is a NaN loss on both, which CrossEntropy names
    losses = assert_same("crossentropy_forward", np.empty(k, dtype), logits, t)[0]
    np.testing.assert_array_equal(np.isnan(losses), (logits[np.arange(k), t] < 0) | (logits[np.arange(k), t] > 1))
    assert_same("crossentropy_backward", np.empty_like(probs), probs, t)
    target = rand(rng, (k, c), dtype)
    assert_same("mse_forward", logits / 100, target)
    assert_same("mse_backward", np.empty_like(logits), logits, target)
    labels = (rng.random((k, c)) < 0.5).astype(dtype)
    assert_same("bce_with_logits_forward", logits, labels)
    assert_same("bce_with_logits_backward", np.empty_like(logits), logits, labels)
    labels[0, 0] = 0.5  # a tie in the target counts as yes
    assert gpu.count_correct_labels(gpu.to_device(logits), gpu.to_device(labels)) == cpu.count_correct_labels(logits, labels)


@pytest.mark.parametrize("dtype, big", [(np.float32, 20.0), (np.float64, 40.0)])
def test_bce_keeps_the_small_loss_of_a_sure_right_answer(dtype, big):
    """As on the CPU: log1p(e^(−|z|)); log(1 + e^(−|z|)) rounds to 0 at |z| = 20 in float32 (40 in
    float64: the simulator evaluates math.log in double), the loss of a right answer that sure."""
    z, t = np.array([[big, -big]], dtype), np.array([[1.0, 0.0]], dtype)
    got = gpu.bce_with_logits_forward(gpu.to_device(z), gpu.to_device(t))
    np.testing.assert_allclose(got, np.log1p(np.exp(-big)), rtol=1e-6)


@pytest.mark.parametrize("dtype, big", [(np.float32, 20.0), (np.float64, 40.0)])
def test_bce_gradient_of_a_sure_right_answer_keeps_its_precision(dtype, big):
    """As on the CPU (test_bce): ∓e^(−|z|) / (1 + e^(−|z|)) / n on both sides, the gradient of the
    loss above; σ(z) − t at z ≥ 0 was 0 there, σ(z) having rounded to 1."""
    z, t = np.array([[-big, big]], dtype), np.array([[0.0, 1.0]], dtype)
    dz = gpu.to_device(np.zeros_like(z))
    gpu.bce_with_logits_backward(dz, gpu.to_device(z), gpu.to_device(t))
    e = np.exp(-big)
    np.testing.assert_allclose(to_host(dz), [[e / (1 + e) / 2, -e / (1 + e) / 2]], rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_at_infinite_logits_is_the_losss_limit(dtype):
    """As on the CPU: max(z, 0) − z t was inf − inf = NaN at z = +inf; now 0 for a sure right answer
    (z = +inf, t = 1; z = −inf, t = 0), inf for a sure wrong one."""
    z = np.array([[np.inf, np.inf, -np.inf, -np.inf]], dtype)
    t = np.array([[1.0, 0.0, 0.0, 1.0]], dtype)
    for cols, want in (([0, 2], 0.0), ([1], np.inf), ([3], np.inf)):
        zz, tt = np.ascontiguousarray(z[:, cols]), np.ascontiguousarray(t[:, cols])
        assert gpu.bce_with_logits_forward(gpu.to_device(zz), gpu.to_device(tt)) == want


def test_loss_sums_over_more_values_than_the_reducing_block_has_threads(dtype=np.float32):
    """Each of the REDUCE threads of a one-block reduction (the losses' sums, the correct counts)
    first sums values t, t + REDUCE, ... in order: with at most REDUCE values, as everywhere else
    here, every thread holds one, and a thread that kept only its first passed."""
    rng = np.random.default_rng(7)
    k, c = gpu.REDUCE + 45, 3
    logits, t = rand(rng, (k, c), dtype, -5, 5), rng.integers(0, c, size=k)
    assert_same("softmax_crossentropy_forward", np.empty_like(logits), np.empty(k, dtype), logits, t)
    assert_same("mse_forward", logits, rand(rng, (k, c), dtype))
    labels = (rng.random((k, c)) < 0.5).astype(dtype)
    assert_same("bce_with_logits_forward", logits, labels)
    z, y, yes = gpu.to_device(logits), gpu.to_device(t), gpu.to_device(labels)
    assert gpu.count_correct(z, y) == cpu.count_correct(logits, t)
    assert gpu.count_correct_labels(z, yes) == cpu.count_correct_labels(logits, labels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_kernels(dtype):
    rng = np.random.default_rng(2)
    size = 7
    dt = dtype
    for momentum, wd, nesterov in [(0.0, 0.0, False), (0.9, 0.01, False), (0.9, 0.0, True)]:
        p, g, buf = rand(rng, size, dtype), rand(rng, size, dtype), rand(rng, size, dtype)
        assert_same("sgd_step", p, g, buf, dt(0.1), dt(momentum), dt(wd), nesterov)
    for l2, decay in [(0.0, 1.0), (0.01, 1.0), (0.0, 0.999)]:
        p, g, m, v = (rand(rng, size, dtype) for _ in range(4))
        v = np.abs(v)
        assert_same("adam_step", p, g, m, v, *(dt(s) for s in (0.1, 0.999, 0.001, 1e-8, l2, decay, 0.01, 0.3)))
    # 1 - β1 ≥ ½ takes torch's other form of the lerp, g - β1 (g - m): m = g exactly for β1 = 0
    for one_beta1 in (0.5, 1.0):
        p, g, v = rand(rng, size, dtype), rand(rng, size, dtype), np.abs(rand(rng, size, dtype))
        m = np.full(size, 1e30, dtype)
        h = assert_same("adam_step", p, g, m, v, *(dt(s) for s in (one_beta1, 0.999, 0.001, 1e-8, 0, 1, 0.01, 0.3)))
        if one_beta1 == 1.0:
            np.testing.assert_array_equal(h[2], g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_kernels_store_a_subnormal_state_as_zero(dtype):
    """As cpu.sgd_step and adam_step: a momentum, m or v below the smallest normal number is stored
    as 0, the smallest normal itself (of either sign) kept. Checked exactly: assert_same's atol
    cannot tell a subnormal from 0. (Each step here writes its input state back unchanged but for
    the flush: b = 0.5·0 + g, m = g - 0·(g - 0), v = 1·v + 0·g².)"""
    dt = dtype
    tiny, sub = np.finfo(dtype).tiny, np.nextafter(dtype(0), dtype(1))
    state = np.array([3 * sub, -3 * sub, tiny / 2, tiny, -tiny, 4 * tiny, 0], dtype)
    want = np.where(np.abs(state) < tiny, 0, state)
    zeros = lambda: np.zeros_like(state)  # noqa: E731
    _, _, h, d = on_both("sgd_step", zeros(), state, zeros(), dt(0), dt(0.5), dt(0), False)
    for buf in (h[2], d[2]):
        np.testing.assert_array_equal(buf, want)
    _, _, h, d = on_both("adam_step", zeros(), state, zeros(), np.abs(state),
                         *(dt(s) for s in (1, 1, 0, 1e-8, 0, 1, 0, 1)))
    for m, v in ((h[2], h[3]), (d[2], d[3])):
        np.testing.assert_array_equal(m, want)
        np.testing.assert_array_equal(v, np.abs(want))


def test_empty_and_fill():
    a = gpu.empty((3, 2), np.float32)
    gpu.fill(a, 1.5)
    np.testing.assert_array_equal(to_host(a), np.full((3, 2), 1.5, np.float32))
    assert a.dtype == np.float32 and tuple(a.shape) == (3, 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_is_equal_and_its_own(dtype):
    rng = np.random.default_rng(4)
    for shape in [(5, 7), (1, 1), (37, 3), (6,)]:
        h = rand(rng, shape, dtype)
        d = gpu.to_device(h)
        c = gpu.copy(d)
        np.testing.assert_array_equal(to_host(c), h)
        gpu.fill(d, 0)
        np.testing.assert_array_equal(to_host(c), h)


def test_parameters_are_packed_on_the_device():
    """On a GPU, model.to("cuda") packs the parameters (and gradients) into one buffer each, so SGD
    and Adam update them in one launch; the simulator's arrays carry no device pointers, so there
    nothing is found packed and each parameter gets its launch (what the other tests run there)."""
    model = tiny_model().to("cuda")
    params = model.parameters()
    flat = one_flat([p.data for p in params])
    if gpu.simulator_enabled():
        assert flat is None
        return
    assert flat is not None and flat.size == sum(p.data.size for p in params)
    assert one_flat([p.grad for p in params]) is not None
    np.testing.assert_array_equal(to_host(flat), np.concatenate([to_host(p.data).ravel() for p in params]))
    gpu.fill(params[1].data, 2.0)  # a write through one layer's array shows in the flat view
    start = params[0].data.size
    assert (to_host(one_flat([p.data for p in params]))[start : start + params[1].data.size] == 2).all()
    assert one_flat([params[1].data, params[0].data]) is None  # out of order: not one run


def test_gather_rows_and_count_correct():
    rng = np.random.default_rng(3)
    x, y = rand(rng, (6, 3), np.float32), rng.integers(0, 4, size=6)
    order = rng.permutation(6)
    xb, yb = gpu.empty((4, 3), np.float32), gpu.empty(4, y.dtype)
    gpu.gather_rows(xb, yb, gpu.to_device(x), gpu.to_device(y), gpu.to_device(order), 2)
    np.testing.assert_array_equal(to_host(xb), x[order[2:6]])
    np.testing.assert_array_equal(to_host(yb), y[order[2:6]])
    logits = rand(rng, (5, 4), np.float32)
    logits[0] = [1, 3, 3, 0]  # a tie: the first maximum counts, as np.argmax
    t = np.array([2, 0, 1, 2, 3])
    expected = int((logits.argmax(1) == t).sum())
    assert gpu.count_correct(gpu.to_device(logits), gpu.to_device(t)) == expected
    # NaN as np.argmax (nb.predict's classes) reads it, the same on both: the first NaN is the pick
    nan = np.nan
    logits = np.array([[0, nan, 5], [nan, 1, 2], [1, nan, nan], [nan, nan, 0], [0, 5, nan], [0, 5, 6]], np.float32)
    for t, right in [([1, 0, 1, 0, 2, 2], 6), ([2, 2, 0, 1, 1, 1], 0)]:
        t = np.array(t)
        assert np.count_nonzero(logits.argmax(1) == t) == right
        assert gpu.count_correct(gpu.to_device(logits), gpu.to_device(t)) == cpu.count_correct(logits, t) == right


def test_predict_and_evaluate_on_the_device_pick_a_rows_class_alike():
    """As on the host (tests/test_api.py): np.argmax of the logits, NaN and inf logits included."""
    model = nb.Sequential(nb.Linear(2, 3, seed=0))
    model[0].weight[...] = [[0, 0], [2, 2], [1, 0]]
    model[0].bias[...] = [0, 1e-8, 0]
    model.to("cuda")
    x = np.array([[0, 0], [3e38, 3e38], [3e38, -3e38], [1, -1]], np.float32)
    classes = nb.predict(model, x)
    np.testing.assert_array_equal(classes, [1, 1, 1, 2])
    for y in ([1, 1, 1, 2], [0, 0, 2, 2]):
        assert nb.evaluate(model, x, y)["accuracy"] == np.mean(classes == y)


@pytest.mark.parametrize("loss", ["cross-entropy", "bce"])
def test_predict_copies_one_batch_result_over_for_what_it_returns(monkeypatch, loss):
    """nb.predict returns the classes or the probabilities: it computed both for each batch and
    copied the logits and the probabilities over, keeping one. One copy a batch now, the same
    results as predict's both (nbnet.train.predict, for `nbnet predict`)."""
    from nbnet.train import predict  # noqa: PLC0415

    model = nb.Sequential(nb.Linear(3, 4, seed=0)).to("cuda")
    x = np.random.default_rng(0).random((7, 3), np.float32)
    labels, scores = predict(model, x, 3, loss=loss)
    copies = []
    kind = type(gpu.to_device(x))
    own = kind.copy_to_host
    monkeypatch.setattr(kind, "copy_to_host", lambda a, *r, **k: copies.append(a.shape) or own(a, *r, **k))
    np.testing.assert_array_equal(nb.predict(model, x, loss=loss, batch_size=3), labels)
    assert copies == [(3, 4), (3, 4), (1, 4)]
    copies.clear()
    np.testing.assert_array_equal(nb.predict(model, x, loss=loss, proba=True, batch_size=3), scores)
    assert copies == [(3, 4), (3, 4), (1, 4)]


# ----------------------------------------------------------------------------------------------
# The model on the device


def tiny_model(dtype=np.float32, activation=nb.ReLU):
    return nb.Sequential([
        nb.Linear(3, 5, seed=0, dtype=dtype), activation(), nb.Linear(5, 4, seed=1, dtype=dtype),
    ])


def train(model, opt, loss_fn, x, y, steps, batch_size=4):
    losses = []
    for step, (xb, yb) in zip(range(steps), nb.batches(x, y, batch_size, shuffle=True, seed=0)):
        opt.zero_grad()
        losses.append(loss_fn.forward(model.forward(xb), yb))
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()
    return losses


@pytest.mark.parametrize("dtype,opt_cls,rtol", [
    # float64: the runs differ only in the last bits of the loss's sum order and of exp/log, so
    # after a few steps they still agree to ~1e-14; 1e-10 leaves room yet catches any real error.
    (np.float64, lambda ps: nb.SGD(ps, lr=0.5, momentum=0.9), 1e-10),
    # float32: the same few-ulp differences, grown through 4 Adam steps (which divides by √v).
    (np.float32, lambda ps: nb.Adam(ps, lr=0.05), 1e-4),
])
def test_training_matches_cpu(dtype, opt_cls, rtol):
    rng = np.random.default_rng(4)
    x, y = rand(rng, (12, 3), dtype, -2, 2), rng.integers(0, 4, size=12)
    runs = []
    for device in ("cpu", "cuda"):
        model = tiny_model(dtype).to(device)
        runs.append((train(model, opt_cls(model.parameters()), nb.SoftmaxCrossEntropy(), x, y, 4), model))
    (cpu_losses, cpu_model), (gpu_losses, gpu_model) = runs
    assert all(isinstance(v, float) for v in gpu_losses)
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=rtol)
    assert gpu_losses[-1] < gpu_losses[0]
    for pc, pg in zip(cpu_model.parameters(), gpu_model.parameters()):
        assert not isinstance(pg.data, np.ndarray)
        np.testing.assert_allclose(to_host(pg.data), pc.data, rtol=rtol * 10, atol=rtol)


def test_zero_grad_on_device_reads_zeros_and_the_next_backward_writes():
    """zero_grad marks a Linear's device gradients as zeros (nbnet.layers.Linear); reads fill them,
    the next backward writes them: as on the host, whose gradients were filled eagerly."""
    rng = np.random.default_rng(9)
    x, y = rand(rng, (5, 3), np.float64), rng.integers(0, 4, size=5)
    loss_fn = nb.SoftmaxCrossEntropy()
    host, dev = tiny_model(np.float64), tiny_model(np.float64).to("cuda")
    for model in (host, dev):
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())  # non-zero gradients
    dev.zero_grad()
    assert not any(to_host(p.grad).any() for p in dev.parameters())
    loss_fn.forward(dev.forward(x), y)
    dev.backward(loss_fn.backward())  # non-zero again, for the next zero_grad to leave alone
    dev.zero_grad()
    for p in host.parameters():
        p.grad[...] = 0
    for model in (host, dev):
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
    for ph, pd in zip(host.parameters(), dev.parameters()):
        assert not isinstance(pd.grad, np.ndarray)
        np.testing.assert_allclose(to_host(pd.grad), ph.grad, rtol=1e-12, atol=1e-14)
    dev.zero_grad()
    dev.to("cpu")  # moved while marked: zeros arrive
    assert all(isinstance(p.grad, np.ndarray) and not p.grad.any() for p in dev.parameters())


def test_mse_and_sigmoid_model_on_device():
    rng = np.random.default_rng(5)
    x, t = rand(rng, (3, 3), np.float64), rand(rng, (3, 4), np.float64)
    losses = []
    for device in ("cpu", "cuda"):
        model, loss_fn = tiny_model(np.float64, nb.Sigmoid).to(device), nb.MSELoss()
        losses.append(loss_fn.forward(model.forward(x), t))  # host targets follow the predictions
        dx = model.backward(loss_fn.backward(), need_input_grad=True)
        losses.append(to_host(dx))
    np.testing.assert_allclose(losses[2], losses[0], rtol=1e-12)
    np.testing.assert_allclose(losses[3], losses[1], rtol=1e-12)


def test_moves_back_and_forth_with_optimizer_state(tmp_path):
    rng = np.random.default_rng(6)
    x, y = rand(rng, (8, 3), np.float32), rng.integers(0, 4, size=8)
    model = tiny_model()
    opt, loss_fn = nb.Adam(model.parameters(), lr=0.01), nb.SoftmaxCrossEntropy()
    train(model, opt, loss_fn, x, y, 1)  # state made on the host
    model.to("cuda")
    train(model, opt, loss_fn, x, y, 1)  # state follows the parameters to the device
    assert all(not isinstance(a, np.ndarray) for st in opt.state for a in st.values())
    assert model.layers[0].out is not None and not isinstance(model.layers[0].out, np.ndarray)
    sd = opt.state_dict()  # host arrays, from the device
    assert all(isinstance(a, np.ndarray) for a in sd["state"].values())
    model.save(tmp_path / "m.npz")  # from the device
    model.to("cpu")
    assert model.layers[0].out is None  # cached device buffers dropped
    assert all(isinstance(p.data, np.ndarray) and isinstance(p.grad, np.ndarray) for p in model.parameters())
    assert one_flat([p.data for p in model.parameters()]) is not None  # packed again
    train(model, opt, loss_fn, x, y, 1)
    assert all(isinstance(a, np.ndarray) for st in opt.state for a in st.values())
    loaded = nb.load(tmp_path / "m.npz").to("cuda")  # to the device
    for p, q in zip(loaded.parameters(), nb.load(tmp_path / "m.npz").parameters()):
        np.testing.assert_array_equal(to_host(p.data), q.data)
    probs = loaded.forward(x)
    assert not isinstance(probs, np.ndarray)


def _device_arrays_in(obj, seen=None):
    """How many device arrays obj reaches through nbnet objects' attributes, dicts, lists, tuples."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if hasattr(obj, "copy_to_host") and not isinstance(obj, np.ndarray):
        return 1
    if isinstance(obj, dict):
        return sum(_device_arrays_in(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_device_arrays_in(v, seen) for v in obj)
    if type(obj).__module__.startswith("nbnet") and hasattr(obj, "__dict__"):
        return sum(_device_arrays_in(v, seen) for v in vars(obj).values())
    return 0


@pytest.mark.parametrize("opt_cls", [nb.Adam, lambda p: nb.SGD(p, lr=0.1, momentum=0.9)])
def test_a_move_takes_the_optimizer_state_along_and_lets_go_of_the_old_arrays(opt_cls):
    """After to("cpu") the optimizer's state (Adam's two arrays a parameter) stayed on the GPU until
    its next step, and its caches, Linear's array check and its overlap check held the old
    parameters and gradients there too: GPU memory a user moving the model off it still held. The
    state moves with the model; nothing keeps a device array; the steps go on as on the host."""
    rng = np.random.default_rng(8)
    x, y = rand(rng, (6, 3), np.float32), rng.integers(0, 4, size=6)
    host, moved = tiny_model(), tiny_model()
    opts, loss_fn = (opt_cls(host.parameters()), opt_cls(moved.parameters())), nb.SoftmaxCrossEntropy()
    for model, opt in zip((host, moved), opts):
        train(model, opt, loss_fn, x, y, 1)  # state made on the host
    for device in ("cuda", "cpu", "cuda"):
        moved.to(device)
        states = [a for st in opts[1].state for a in st.values() if a is not None]
        assert states and all(isinstance(a, np.ndarray) == (device == "cpu") for a in states), device
        for model, opt in zip((host, moved), opts):
            train(model, opt, loss_fn, x, y, 1)
        for p, q in zip(host.parameters(), moved.parameters()):
            np.testing.assert_allclose(to_host(q.data), p.data, **TOL[np.float32])
    moved.to("cpu")
    assert _device_arrays_in(moved) == 0 and _device_arrays_in(opts[1]) == 0


def test_a_tied_weight_moves_as_one_array():
    model = nb.Sequential(nb.Linear(4, 4, seed=0), nb.ReLU(), nb.Linear(4, 4, seed=1))
    model.layers[2].weight = model.layers[0].weight
    model.to("cuda")
    assert model.layers[2].weight is model.layers[0].weight
    model.to("cpu")
    assert model.layers[2].weight is model.layers[0].weight


def test_the_constant_arrays_of_a_users_own_layer_move_with_the_model():
    """to("cuda") and to("cpu") set every array of a layer that was not a parameter to None: a
    user's layer's constant (a fixed mask) was dropped. It moves, a tied one as one array; nbnet's
    buffers are dropped, to be remade on the new device."""

    class Masked(nb.layers.Layer):
        def __init__(self, mask):
            self.mask, self.same = mask, mask

        def forward(self, x):  # (its device kernel is the user's business, not run here)
            return x

        backward = forward

    mask = np.array([1, 0, 1], np.float32)
    model = nb.Sequential(nb.Linear(3, 3, seed=0), Masked(mask))
    model[0].forward(np.ones((2, 3), np.float32))
    model.to("cuda")
    assert not isinstance(model[1].mask, np.ndarray) and model[1].same is model[1].mask
    np.testing.assert_array_equal(to_host(model[1].mask), mask)
    assert model[0].out is None and model[0].inp is None
    model.to("cpu")
    assert isinstance(model[1].mask, np.ndarray) and model[1].same is model[1].mask
    np.testing.assert_array_equal(model[1].mask, mask)


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_a_move_that_fails_part_way_leaves_every_layer_where_it_was(device, monkeypatch):
    """A copy failing at the second Linear (out of GPU memory, say) left the first layer moved and
    the rest not: a model split between the devices. Every copy is made before any layer changes."""
    model = tiny_model().to("cpu" if device == "cuda" else "cuda")
    model.forward(np.ones((2, 3), np.float32))
    before = [(layer, dict(vars(layer))) for layer in model.layers]
    name = "to_device" if device == "cuda" else "_to_host"
    real, calls = getattr(gpu, name), []

    def failing(arr):
        calls.append(arr)
        if len(calls) == 5:  # the second Linear's weight, after the first's four arrays
            raise RuntimeError("out of memory")
        return real(arr)

    monkeypatch.setattr(gpu, name, failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        model.to(device)
    for layer, attrs in before:
        assert all(getattr(layer, k) is v for k, v in attrs.items()), layer


def test_a_deep_copy_of_a_model_on_the_device_is_on_the_device_and_its_own():
    """copy.deepcopy (what Sequential's docstring gives each thread) of a model on the GPU came
    out with host arrays in the simulator, and cannot copy a real device array's memory: the
    device arrays are copied on the device, a tied weight as one array."""
    import copy  # noqa: PLC0415

    model = nb.Sequential(nb.Linear(3, 3, seed=0), nb.ReLU(), nb.Linear(3, 3, seed=1)).to("cuda")
    model[2].weight = model[0].weight
    x = np.ones((2, 3), np.float32)
    want = to_host(model(x))
    twin = copy.deepcopy(model)
    assert all(not isinstance(a, np.ndarray) for p in twin.parameters() for a in (p.data, p.grad))
    assert twin[2].weight is twin[0].weight and twin[0].weight is not model[0].weight
    np.testing.assert_array_equal(to_host(twin(x)), want)
    gpu.fill(twin[0].weight, 0)
    np.testing.assert_array_equal(to_host(model(x)), want)


def test_a_deep_copy_of_a_model_on_the_device_copies_its_arrays_under_the_lock(monkeypatch):
    """deepcopy holds model.lock so that a thread training meanwhile waits (the weights of one step):
    the device arrays were copied before the lock was taken, where a step's kernels could land."""
    import copy  # noqa: PLC0415

    from nbnet import model as model_module  # noqa: PLC0415

    model = nb.Sequential(nb.Linear(3, 3, seed=0), nb.ReLU(), nb.Linear(3, 2, seed=1)).to("cuda")
    held, copy_array = [], model_module.copy_device_array
    monkeypatch.setattr(model_module, "copy_device_array", lambda a: held.append(model.lock._is_owned()) or copy_array(a))
    copy.deepcopy(model)
    assert held and all(held)


def test_a_device_view_of_the_losss_own_buffer_as_its_logits_is_not_overwritten():
    """loss_fn(v, y) on the GPU where v is a view of the loss's own dz or softmax buffer: the fused
    kernel wrote dz over the logits row by row before reading z_i,t_i (a wrong loss). Compared by
    where they lie, as the host compares bases: the loss gets a new buffer."""
    z = rand(np.random.default_rng(12), (3, 4), np.float32)
    y = np.array([0, 2, 3])
    for name in ("dinp", "probs_buf"):
        loss_fn, twin = nb.SoftmaxCrossEntropy(), nb.SoftmaxCrossEntropy()
        loss_fn(gpu.to_device(z), y)
        view = getattr(loss_fn, name)[:]
        same = gpu.to_device(to_host(view))
        assert loss_fn(view, y) == twin(same, y), name
        np.testing.assert_array_equal(to_host(loss_fn.backward()), to_host(twin.backward()))


def test_the_summary_of_a_model_on_the_device_copies_nothing_to_the_host(monkeypatch):
    """summary() counted the parameters' bytes on host copies of them: a model's size in host
    memory and transfers, for a line of text."""
    model = tiny_model().to("cuda")
    want = tiny_model().summary()
    monkeypatch.setattr(type(model[0].weight), "copy_to_host", lambda *a, **k: pytest.fail("copied to the host"))
    assert model.summary() == want


def test_device_labels_and_bad_labels():
    model = tiny_model().to("cuda")
    logits = model.forward(np.zeros((2, 3), np.float32))
    loss_fn = nb.SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="out of range"):
        loss_fn.forward(logits, np.array([0, 4]))  # checked on the host before the copy
    assert loss_fn.forward(logits, gpu.to_device(np.array([0, 3]))) > 0
    with pytest.raises(ValueError, match="float32"):
        model.forward(np.zeros((2, 3), np.float64))


@pytest.mark.parametrize("loss_cls", [nb.SoftmaxCrossEntropy, nb.CrossEntropy])
def test_device_labels_out_of_range_are_an_error_not_an_out_of_bounds_read(loss_cls):
    """Device labels are not checked before a step (a copy to the host each time): a label out of
    range was read out of bounds (the simulator's IndexError; on a GPU, silent garbage). The kernels
    write NaN there, and the NaN loss has the labels checked: the host labels' error."""
    model = tiny_model().to("cuda")
    x = np.zeros((3, 3), np.float32)
    pred = model.forward(x) if loss_cls is nb.SoftmaxCrossEntropy else nb.Softmax()(model.forward(x))
    for bad in ([0, 4, 1], [0, -1, 1]):
        with pytest.raises(ValueError, match="out of range"):
            loss_cls()(pred, gpu.to_device(np.array(bad)))
    loss_fn = loss_cls()
    assert np.isfinite(loss_fn(pred, gpu.to_device(np.array([0, 3, 1]))))
    assert np.isfinite(to_host(loss_fn.backward())).all()


def test_nan_in_device_features_is_the_host_features_error():
    """Features on the GPU went unchecked: predict gave class 0 for every row of NaN, evaluate a NaN
    loss. Checked a block of rows at a time (a small block here, so that the row counts on)."""
    from nbnet.train import _check_device_features  # noqa: PLC0415 - nb.train is the function

    model = tiny_model().to("cuda")
    x = np.zeros((6, 3), np.float32)
    x[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"x: x\[4, 2\] is nan"):
        nb.predict(model, gpu.to_device(x))
    with pytest.raises(ValueError, match=r"x\[4, 2\] is nan"):
        nb.evaluate(model, gpu.to_device(x), gpu.to_device(np.zeros(6, np.int64)))
    with pytest.raises(ValueError, match=r"x: x\[4, 2\] is nan"):
        _check_device_features(gpu.to_device(x), "x", block_bytes=24)  # a row a block
    x[4, 2] = 0
    assert nb.predict(model, gpu.to_device(x)).shape == (6,)


@pytest.mark.parametrize("max_bytes", [None, 3 * (3 * 4 + 8)])  # resident; chunks of 3 rows → 2 rows
def test_device_dataset_gives_the_cpu_batches(max_bytes):
    rng = np.random.default_rng(7)
    x, y = rand(rng, (7, 3), np.float32), rng.integers(0, 4, size=7)
    ds = gpu.DeviceDataset(x, y, classes=4, max_bytes=max_bytes)
    assert ds.resident == (max_bytes is None)
    for shuffle in (True, False):
        got = [(to_host(xb), to_host(yb)) for xb, yb in ds.batches(2, shuffle=shuffle, seed=(1, 2))]
        want = list(nb.batches(x, y, 2, shuffle=shuffle, seed=(1, 2)))
        assert len(got) == len(want) == 4
        for (gx, gy), (wx, wy) in zip(got, want):
            np.testing.assert_array_equal(gx, wx)
            np.testing.assert_array_equal(gy, wy)
    with pytest.raises(ValueError, match="out of range"):
        gpu.DeviceDataset(x, y, classes=3)
    # A batch size above the rows: one batch of them all, in buffers of no more rows than that
    # (they were of the batch size: 10**6 rows of the data's width for 7 rows of data).
    for shuffle in (True, False):
        got = [(to_host(xb), to_host(yb)) for xb, yb in ds.batches(10**6, shuffle=shuffle, seed=(1, 2))]
        want = list(nb.batches(x, y, 10**6, shuffle=shuffle, seed=(1, 2)))
        assert len(got) == len(want) == 1
        np.testing.assert_array_equal(got[0][0], want[0][0])
        np.testing.assert_array_equal(got[0][1], want[0][1])
    assert all(len(xb) <= 7 and len(yb) <= 7 for xb, yb in ds._bufs.values())


def test_a_device_dataset_reads_device_data_where_it_lies(monkeypatch):
    """Data already on the GPU went to the host and back (np.ascontiguousarray, then to_device) at
    each nb.train and nb.evaluate: the data set twice on the GPU, once more on the host. It is read
    where it lies, with the host batches; host labels for it, or device labels for host data in
    chunks, still work."""
    from nbnet.train import batch_source  # noqa: PLC0415

    rng = np.random.default_rng(7)
    x, y = rand(rng, (7, 3), np.float32), rng.integers(0, 4, size=7)
    dx, dy = gpu.to_device(x), gpu.to_device(y)
    monkeypatch.setattr(type(dx), "copy_to_host", lambda *a, **k: pytest.fail("copied to the host"))
    ds = gpu.DeviceDataset(dx, dy)
    assert ds.x is dx and ds.y is dy and ds.resident
    assert batch_source(tiny_model().to("cuda"), dx, dy).__self__.x is dx  # what nb.train and nb.evaluate use
    monkeypatch.undo()
    for ds in (gpu.DeviceDataset(dx, y, classes=4), gpu.DeviceDataset(x, dy, classes=4, max_bytes=32)):
        got = [(to_host(xb), to_host(yb)) for xb, yb in ds.batches(2, shuffle=True, seed=(1, 2))]
        for (gx, gy), (wx, wy) in zip(got, nb.batches(x, y, 2, shuffle=True, seed=(1, 2)), strict=True):
            np.testing.assert_array_equal(gx, wx)
            np.testing.assert_array_equal(gy, wy)
    with pytest.raises(ValueError, match="out of range"):
        gpu.DeviceDataset(dx, dy, classes=3)


@pytest.mark.parametrize("max_bytes", [None, 3 * (3 * 4 + 8)])  # resident; chunks of 3 rows → 2 rows
def test_a_device_dataset_of_strided_device_arrays_gives_the_cpu_batches(max_bytes):
    """Device x or y that are views with steps (every other column or row) have no contiguous
    rows for the gather kernel or the in-order views: they are taken as their values (a contiguous
    copy, under max_bytes as host data is), resident or in chunks, and give nbnet.batches' batches
    of those values, in order and shuffled."""
    rng = np.random.default_rng(9)
    x, y = rand(rng, (14, 6), np.float32), rng.integers(0, 4, size=14)
    cases = [(gpu.to_device(x[:7])[:, ::2], gpu.to_device(y[:7])),  # x's columns with a step
             (gpu.to_device(x)[::2, :3], gpu.to_device(y)[::2]),  # rows with a step, and labels
             (gpu.to_device(x)[1::2, 3:], y[1::2])]
    for dx, dy in cases:
        assert not dx.is_c_contiguous()
        hx, hy = to_host(dx), to_host(dy)
        ds = gpu.DeviceDataset(dx, dy, max_bytes=max_bytes)
        assert ds.resident == (max_bytes is None)
        for shuffle in (False, True):
            got = [(to_host(xb), to_host(yb)) for xb, yb in ds.batches(2, shuffle=shuffle, seed=(3, 4))]
            for (gx, gy), (wx, wy) in zip(got, nb.batches(hx, hy, 2, shuffle=shuffle, seed=(3, 4)), strict=True):
                np.testing.assert_array_equal(gx, wx)
                np.testing.assert_array_equal(gy, wy)


def test_a_device_datasets_memory_budget_counts_the_labels():
    """max_bytes holds the features and the labels: data whose features alone fit stays on the
    host, and a chunk is of as many rows as both fit in (3 of 3 × 4 + 8 bytes: batches of 2)."""
    rng = np.random.default_rng(7)
    x, y = rand(rng, (7, 3), np.float32), rng.integers(0, 4, size=7)
    assert gpu.DeviceDataset(x, y, max_bytes=7 * (3 * 4 + 8)).resident
    ds = gpu.DeviceDataset(x, y, max_bytes=7 * (3 * 4 + 8) - 1)
    assert not ds.resident and ds.chunk_rows == 6
    ds = gpu.DeviceDataset(x, y, max_bytes=3 * (3 * 4 + 8))
    assert not ds.resident and ds.chunk_rows == 3
    assert len(list(ds.batches(2, shuffle=True, seed=0))) == 4
    assert [len(xb) for xb, _ in ds._bufs.values()] == [2]  # a chunk of 4 rows held 32 bytes of labels more


def test_training_on_a_device_dataset_matches_host_batches():
    rng = np.random.default_rng(8)
    x, y = rand(rng, (9, 3), np.float64), rng.integers(0, 4, size=9)
    model = tiny_model(np.float64).to("cuda")
    opt, loss_fn = nb.SGD(model.parameters(), lr=0.3), nb.SoftmaxCrossEntropy()
    ds = gpu.DeviceDataset(x, y, classes=4)
    losses, correct = [], 0
    for xb, yb in ds.batches(4, shuffle=True, seed=0):
        opt.zero_grad()
        logits = model.forward(xb)
        losses.append(loss_fn.forward(logits, yb))
        correct += gpu.count_correct(logits, yb)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()
    host_model = tiny_model(np.float64)
    host_losses = train(host_model, nb.SGD(host_model.parameters(), lr=0.3), nb.SoftmaxCrossEntropy(), x, y, 3)
    np.testing.assert_allclose(losses, host_losses, rtol=1e-10)
    assert 0 <= correct <= 9


def test_train_loop_on_the_device_matches_the_cpu_history():
    """nbnet.train.train with a GPU model: DeviceDataset batches, losses and counts from the device."""
    from nbnet.train import build_model, make_optimizer, train as train_loop

    rng = np.random.default_rng(9)
    x, y = rand(rng, (10, 3), np.float64, -2, 2), rng.integers(0, 3, size=10)
    data = (x, y, x[:5], y[:5])
    histories = []
    for device in ("cpu", "cuda"):
        model = build_model(3, [4], 3, dtype=np.float64, seed=0).to(device)
        opt = make_optimizer("sgd", model, lr=0.2, momentum=0.9)
        histories.append(train_loop(model, opt, data, epochs=2, batch_size=4, seed=1))
    for h_cpu, h_gpu in zip(*histories):
        for key in ("train_loss", "test_loss"):
            assert h_gpu[key] == pytest.approx(h_cpu[key], rel=1e-10)
        for key in ("train_accuracy", "test_accuracy"):
            assert h_gpu[key] == h_cpu[key]


def test_linear_without_bias_on_device_matches_cpu():
    """bias=False: the zero-bias vector and the db scratch are made on the device too."""
    rng = np.random.default_rng(8)
    x, y = rand(rng, (8, 3), np.float64, -2, 2), rng.integers(0, 4, size=8)
    runs = []
    for device in ("cpu", "cuda"):
        model = nb.Sequential(nb.Linear(3, 5, seed=0, dtype=np.float64, bias=False), nb.ReLU(),
                              nb.Linear(5, 4, seed=1, dtype=np.float64, bias=False)).to(device)
        opt = nb.SGD(model.parameters(), lr=0.5, momentum=0.9)
        runs.append((train(model, opt, nb.SoftmaxCrossEntropy(), x, y, 2), model))
    (cl, cm), (gl, gm) = runs
    np.testing.assert_allclose(gl, cl, rtol=1e-10)
    for pc, pg in zip(cm.parameters(), gm.parameters()):
        np.testing.assert_allclose(to_host(pg.data), pc.data, rtol=1e-10)
    gm.to("cpu")
    assert gm.layers[0].bias is None and len(gm.parameters()) == 2


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_train_loop_with_float_targets_on_the_device_matches_the_cpu(loss):
    """nb.train with loss mse / bce on a GPU model: host batches (float targets do not go into a
    DeviceDataset), targets copied per step, R² / label counts from the device kernels."""
    rng = np.random.default_rng(9)
    x = rand(rng, (16, 3), np.float64, -2, 2)
    y = (rng.random((16, 2)) < 0.5).astype(np.float64) if loss == "bce" else rand(rng, (16, 2), np.float64)
    histories = []
    for device in ("cpu", "cuda"):
        model = nb.Sequential(nb.Linear(3, 5, seed=0, dtype=np.float64), nb.Tanh(),
                              nb.Linear(5, 2, seed=1, dtype=np.float64)).to(device)
        opt = nb.SGD(model.parameters(), lr=0.1)
        histories.append(nb.train(model, opt, (x[:12], y[:12], x[12:], y[12:]), epochs=2, batch_size=4, loss=loss))
    for hc, hg in zip(*histories):
        for key in hc:
            if key not in ("seconds", "samples_per_second"):
                np.testing.assert_allclose(hg[key], hc[key], rtol=1e-10, err_msg=key)


def test_train_and_evaluate_check_device_labels_as_host_ones():
    """nb.train / nb.evaluate check labels against the model's classes, device labels too: the
    loss kernels index each row's logits with its label unchecked, so one out of range read past
    the row (on a GPU: a garbage loss, or a crashed context; here, negative ones wrapped around)."""
    rng = np.random.default_rng(10)
    x, y = rand(rng, (6, 3), np.float32), rng.integers(0, 4, size=6)
    model = tiny_model().to("cuda")
    for bad in (y + 4, y - 4):
        with pytest.raises(ValueError, match="out of range"):
            nb.evaluate(model, gpu.to_device(x), gpu.to_device(bad))
        with pytest.raises(ValueError, match="out of range"):
            nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, gpu.to_device(bad)), epochs=1, batch_size=4)
    assert 0 <= nb.evaluate(model, gpu.to_device(x), gpu.to_device(y))["accuracy"] <= 1


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_logits_into_the_cross_entropy_on_probabilities_are_named(device):
    logits = np.array([[0.5, 2.0, 0.1], [0.3, -0.2, 0.4]], np.float32)
    move = gpu.to_device if device == "cuda" else np.asarray
    with pytest.raises(ValueError, match=r"p\[0, 1\] = 2\.0 is not a probability"):
        nb.CrossEntropy()(move(logits), move(np.array([1, 1])))
    assert nb.CrossEntropy()(move(logits), move(np.array([0, 2]))) == pytest.approx(-np.log([0.5, 0.4]).mean())


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_optimizer_state_loaded_after_steps_is_the_state_used(device):
    """opt.load_state_dict on an optimizer that has already stepped (e.g. on the GPU, restoring a
    saved run into a live model and optimizer): the next steps continue the loaded run exactly as
    an optimizer that loaded it before any step (that is, on the CPU: the same bits)."""
    rng = np.random.default_rng(11)
    x, y = rand(rng, (8, 3), np.float64), rng.integers(0, 4, size=8)
    loss_fn = nb.SoftmaxCrossEntropy()
    for opt_cls in (lambda ps: nb.Adam(ps, lr=0.05), lambda ps: nb.SGD(ps, lr=0.1, momentum=0.9)):
        ref = tiny_model(np.float64)
        ref_opt = opt_cls(ref.parameters())
        train(ref, ref_opt, loss_fn, x, y, 2)
        weights, state = ref.state_dict(), ref_opt.state_dict()
        model = tiny_model(np.float64).to(device)
        opt = opt_cls(model.parameters())
        train(model, opt, loss_fn, x[::-1].copy(), y[::-1].copy(), 1)  # state of its own first
        model.load_state_dict(weights)
        opt.load_state_dict(state)
        fresh = tiny_model(np.float64)
        fresh.load_state_dict(weights)
        fresh_opt = opt_cls(fresh.parameters())
        fresh_opt.load_state_dict(state)
        train(fresh, fresh_opt, loss_fn, x[:4], y[:4], 1)
        train(model, opt, loss_fn, x[:4], y[:4], 1)
        for p, q in zip(model.parameters(), fresh.parameters()):
            np.testing.assert_allclose(to_host(p.data), q.data, rtol=1e-12, atol=1e-14)


def test_device_targets_of_shape_n_are_read_as_n_by_1_as_host_ones():
    """MSELoss / BCEWithLogits and nb.train / nb.evaluate read (N,) targets of a one-output model
    as (N, 1): device targets as well as host ones (they were refused as of the wrong shape)."""
    rng = np.random.default_rng(12)
    x, t = rand(rng, (6, 3), np.float64), rand(rng, (6,), np.float64)
    b = (t > 0).astype(np.float64)
    model = nb.Sequential(nb.Linear(3, 1, seed=0, dtype=np.float64)).to("cuda")
    for loss_fn, target in ((nb.MSELoss(), t), (nb.BCEWithLogits(), b)):
        want = loss_fn(model(x), target)
        assert loss_fn(model(x), gpu.to_device(target)) == pytest.approx(want, rel=1e-12)
    want = nb.evaluate(model, x, t, loss="mse")
    got = nb.evaluate(model, gpu.to_device(x), gpu.to_device(t), loss="mse")
    assert got == pytest.approx(want, rel=1e-12)
    history = nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, gpu.to_device(t)), epochs=1, batch_size=3,
                       loss="mse")
    assert np.isfinite(history[0]["train_loss"])


def test_backward_takes_a_host_gradient_on_a_device_model():
    """backward(grad) with a host gradient on a model on the GPU copies it over, as forward does
    with a host batch (it went to the CPU kernels with device arrays: a TypeError from Numba)."""
    rng = np.random.default_rng(13)
    x, g = rand(rng, (6, 3), np.float64), rand(rng, (6, 4), np.float64)
    runs = []
    for device in ("cpu", "cuda"):
        model = tiny_model(np.float64, nb.Tanh).to(device)
        model.forward(x)
        dx = model.backward(g, need_input_grad=True)
        model.forward(x)
        dx_f = model.backward(np.asfortranarray(g), need_input_grad=True)  # strided too
        runs.append((to_host(dx), to_host(dx_f), [to_host(p.grad) for p in model.parameters()]))
    (dx_c, dxf_c, grads_c), (dx_g, dxf_g, grads_g) = runs
    np.testing.assert_allclose(dx_g, dx_c, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dxf_g, dxf_c, rtol=1e-12, atol=1e-14)
    for a, b in zip(grads_g, grads_c):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    host = tiny_model(np.float64, nb.Tanh)  # and a device gradient for a host model comes back
    host.forward(x)
    np.testing.assert_allclose(to_host(host.backward(gpu.to_device(g), need_input_grad=True)), dx_c, rtol=1e-15)


@pytest.mark.parametrize("loss_cls", [nb.SoftmaxCrossEntropy, nb.CrossEntropy])
def test_device_labels_for_host_predictions_come_over_and_are_checked(loss_cls):
    """A cross-entropy on host predictions with labels on the GPU copies the labels over, as
    MSELoss does with its targets (the CPU kernel got the device array: a TypeError from Numba)."""
    rng = np.random.default_rng(14)
    probs = nb.Softmax()(rand(rng, (4, 3), np.float64))
    y = np.array([0, 1, 2, 0])
    want = loss_cls()(probs, y)
    assert loss_cls()(probs, gpu.to_device(y)) == want
    with pytest.raises(ValueError, match="out of range"):
        loss_cls()(probs, gpu.to_device(y + 1))


@pytest.mark.parametrize("loss", ["cross-entropy", "bce"])
def test_host_model_on_device_data_scores_as_on_host_data(loss):
    """nb.evaluate / nb.train's test scores of a model on the host, given data on the GPU: the
    data comes over once, and the results are the host data's (the in-order batches were views of
    the device arrays, and the accuracy's CPU kernel got them: a TypeError from Numba)."""
    rng = np.random.default_rng(15)
    x = rand(rng, (7, 3), np.float64)
    y = rng.integers(0, 4, size=7) if loss == "cross-entropy" else rng.integers(0, 2, size=(7, 4)).astype(np.float64)
    model = tiny_model(np.float64)
    assert nb.evaluate(model, gpu.to_device(x), gpu.to_device(y), loss=loss) == nb.evaluate(model, x, y, loss=loss)
    runs = []
    for data in ((x, y, x, y), (gpu.to_device(x), gpu.to_device(y), gpu.to_device(x), gpu.to_device(y))):
        m = tiny_model(np.float64)
        history = nb.train(m, nb.SGD(m.parameters(), lr=0.1), data, epochs=1, batch_size=3, loss=loss)
        runs.append({k: v for k, v in history[0].items() if k not in ("seconds", "samples_per_second")})
    assert runs[0] == runs[1]


def test_device_targets_are_checked_as_host_ones():
    """mse / bce targets on the GPU went unchecked: NaN gave nb.evaluate a NaN loss (and R² 0),
    nb.train a 'diverged' run, and bce targets outside [0, 1] scored silently. Host targets'
    errors, from a host copy (a block of rows at a time)."""
    from nbnet.train import as_targets  # noqa: PLC0415 - nb.train is the function

    model = nb.Sequential(nb.Linear(3, 2, seed=0)).to("cuda")
    x = np.zeros((6, 3), np.float32)
    t = np.zeros((6, 2), np.float32)
    t[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"y: targets hold NaN or Inf"):
        nb.evaluate(model, x, gpu.to_device(t), loss="mse")
    with pytest.raises(ValueError, match=r"y_train: targets hold NaN or Inf"):
        nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, gpu.to_device(t)), epochs=1, batch_size=3, loss="mse")
    with pytest.raises(ValueError, match=r"y: targets hold NaN or Inf"):
        as_targets(model, gpu.to_device(t), "mse", "y", block_bytes=8)  # a row a block
    t[4, 1] = 2
    with pytest.raises(ValueError, match=r"bce targets must lie in \[0, 1\]"):
        nb.evaluate(model, x, gpu.to_device(t), loss="bce")
    t[4, 1] = 1
    assert nb.evaluate(model, x, gpu.to_device(t), loss="bce")["accuracy"] >= 0


def test_threads_reduce_and_split_into_scratch_of_their_own(monkeypatch):
    """Each thread may train or evaluate a model of its own, but the device scratch that losses
    reduce into and that a long batch's dW parts go to was one per process: a thread whose kernels
    ran between another's launch and its read-back handed that one its own sums (wrong losses,
    accuracies and gradients). Here the second thread runs whole inside the first's launch."""
    import threading  # noqa: PLC0415

    monkeypatch.setattr(gpu, "SPLIT_ROWS", 4)
    monkeypatch.setattr(gpu, "PART_ROWS", 4)
    rng = np.random.default_rng(9)
    runs = {who: (gpu.to_device(rand(rng, (9, 2), np.float32)), gpu.to_device(rand(rng, (9, 3), np.float32)))
            for who in ("first", "second")}
    got, real = {}, gpu._launcher

    def work(who):
        g, x = runs[who]
        dw, db = gpu.empty((2, 3), np.float32), gpu.empty(2, np.float32)
        gpu.linear_backward_params(dw, db, g, x, False)
        got[who] = (gpu._reduce_to_host(gpu._sum_kernel, 9, np.float32, g[:, 0]), to_host(dw), to_host(db))

    def launcher(kernel, grid, block):
        launch = real(kernel, grid, block)

        def run(*args):
            launch(*args)
            if kernel in (gpu._sum_kernel, gpu._linear_backward_params_part_kernel) and not got.get("busy"):
                got["busy"] = True
                thread = threading.Thread(target=work, args=("second",))
                thread.start()
                thread.join()
                got["busy"] = False
        return run

    monkeypatch.setattr(gpu, "_launcher", launcher)
    work("first")  # the second thread runs inside its dW's parts, then inside its sum
    for who in ("first", "second"):
        g, x = (to_host(a) for a in runs[who])
        total, dw, db = got[who]
        np.testing.assert_allclose(dw, g.T @ x, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(db, g.sum(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(total, g[:, 0].sum(), rtol=1e-5)


def test_compiling_is_said_once_a_process_for_each_dtype(monkeypatch, capsys):
    """nb.train warms the CUDA kernels up and said "compiling CUDA kernels" before each warm-up:
    every call of a process again (one epoch a call, say), where numba-cuda had compiled them at
    the first. Said once for each dtype, whose kernels are compiled apart."""
    from nbnet import check  # noqa: PLC0415

    monkeypatch.setattr(check._SayCompiling, "said_gpu", set(), raising=False)
    with check.not_saying_compiling():  # `nbnet train --quiet`; say=False: MPI ranks other than 0
        check.compile_kernels(tiny_model().to("cuda"), train_rows=(), eval_rows=())
    check.compile_kernels(tiny_model().to("cuda"), train_rows=(), eval_rows=(), say=False)
    assert capsys.readouterr().err == ""
    for dtype in (np.float32, np.float32, np.float64, np.float64):
        check.compile_kernels(tiny_model(dtype).to("cuda"), train_rows=(), eval_rows=())
    assert capsys.readouterr().err.count(check.COMPILING_GPU) == 2


def test_launches_over_no_elements_do_nothing():
    """A launch over no elements is skipped: a grid of one thread per element has no block size
    (min(BLOCK, 0) threads) for none."""
    for shape in [(0, 3), (0,)]:
        a = gpu.empty(shape, np.float32)
        gpu.fill(a, 1.5)
        c = gpu.copy(a)
        assert tuple(c.shape) == shape and c.dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_of_a_row_far_below_zero_subtracts_its_own_max(dtype):
    """The row max starts at the row's first logit, not at 0: a row of logits all far below 0 gave
    e^(z - 0) = 0 for every class, a sum of 0, and NaN probabilities and loss."""
    z = np.array([[-1000.0, -1000.0, -1001.0], [-2000.0, -1000.0, -1000.0]], dtype)
    t = np.array([0, 1])
    want = np.empty_like(z)
    cpu.softmax_forward(want, z)
    out = gpu.empty(z.shape, dtype)
    gpu.softmax_forward(out, gpu.to_device(z))
    np.testing.assert_allclose(to_host(out), want, **TOL[dtype])
    d = [gpu.empty(z.shape, dtype), gpu.empty(z.shape, dtype), gpu.empty(2, dtype)]
    got = gpu.softmax_crossentropy_forward_backward(*d, gpu.to_device(z), gpu.to_device(t))
    np.testing.assert_allclose(got, cpu.softmax_crossentropy_forward(np.empty_like(z), np.empty(2, dtype), z, t),
                               **TOL[dtype])


def test_byte_span_covers_the_elements_of_any_view():
    """byte_span, what says that two device arrays share memory (Layer._device_overlap,
    Sequential's batch check): a view's first and one-past-last bytes whatever its strides
    (negative ones start below the view's pointer), and (0, 0) for a view of no elements."""
    a = gpu.to_device(np.arange(12, dtype=np.float32).reshape(3, 4))
    lo, hi = gpu.byte_span(a)
    assert hi - lo == 48
    assert gpu.byte_span(a[1:2]) == (lo + 16, lo + 32)  # C-contiguous rows
    assert gpu.byte_span(a[:, 1]) == (lo + 4, lo + 40)  # a strided column: through its last element
    assert gpu.byte_span(a[:, 3]) == (lo + 12, hi)
    assert gpu.byte_span(a[1:, ::-1]) == (lo + 16, hi)  # negative strides
    assert gpu.byte_span(a[::-1, 2]) == (lo + 8, lo + 44)
    assert gpu.byte_span(a[:0]) == gpu.byte_span(a[2:2, 1:]) == (0, 0)


def test_pack_copies_each_array_into_its_own_part_of_one_buffer():
    """gpu.pack (model.to("cuda") on a real GPU; the simulator skips the packing): each array's
    values in its own run of the flat buffer, in order, the last one too, and the views are of it."""
    rng = np.random.default_rng(5)
    hosts = [rand(rng, (3, 2), np.float32), rand(rng, (4,), np.float32), rand(rng, (2, 3), np.float32)]
    flat, views = gpu.pack([gpu.to_device(h) for h in hosts])
    np.testing.assert_array_equal(to_host(flat), np.concatenate([h.ravel() for h in hosts]))
    for v, h in zip(views, hosts):
        assert tuple(v.shape) == h.shape
        np.testing.assert_array_equal(to_host(v), h)
    gpu.fill(views[1], 2.0)
    np.testing.assert_array_equal(to_host(flat)[6:10], 2.0)


def test_gather_rows_of_one_column_gathers_the_labels_too():
    """The labels are gathered by the threads of column 0: data of a single feature has no other."""
    x, y, order = np.arange(5, dtype=np.float32)[:, None], np.array([3, 1, 4, 1, 5]), np.array([4, 2, 0, 3, 1])
    xb, yb = gpu.empty((3, 1), np.float32), gpu.empty(3, y.dtype)
    gpu.gather_rows(xb, yb, gpu.to_device(x), gpu.to_device(y), gpu.to_device(order), 1)
    np.testing.assert_array_equal(to_host(xb), x[order[1:4]])
    np.testing.assert_array_equal(to_host(yb), y[order[1:4]])


def test_a_logit_of_zero_is_a_yes_and_an_empty_device_dataset_is_refused():
    """count_correct_labels reads z ≥ 0 as yes, as on the CPU (z = 0 exactly too); DeviceDataset
    refuses an empty data set by name."""
    z, t = np.array([[0.0, -1.0, 0.0]], np.float32), np.array([[1.0, 0.0, 1.0]], np.float32)
    assert gpu.count_correct_labels(gpu.to_device(z), gpu.to_device(t)) == cpu.count_correct_labels(z, t) == 3
    with pytest.raises(ValueError, match="empty"):
        gpu.DeviceDataset(np.zeros((0, 3), np.float32), np.zeros(0, np.int64))


def test_a_training_step_launches_the_kernels_the_docs_count(monkeypatch):
    """gpu._launcher, the README and FINDINGS.md count a step of the MLP loop (bench_vs_torch's: a
    DeviceDataset batch, model.forward, the fused loss, backward without dX of the first layer, SGD)
    as 13 launches: the gather, 3 forwards, model.forward's copy of its output, the fused
    softmax-cross-entropy and its one-block mean, 3 dW with db, 2 dX, one SGD over the packed
    parameters (one per parameter in the simulator, whose arrays have no pointers to pack by)."""
    rng = np.random.default_rng(4)
    x, y = rand(rng, (12, 5), np.float32), rng.integers(0, 3, size=12)
    model = nb.Sequential([nb.Linear(5, 6, seed=0), nb.ReLU(), nb.Linear(6, 4, seed=1), nb.ReLU(),
                           nb.Linear(4, 3, seed=2)]).to("cuda")
    loss_fn, opt = nb.SoftmaxCrossEntropy(), nb.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = gpu.DeviceDataset(x, y).batches(4, shuffle=True, seed=0)
    launched, real = [], gpu._launcher

    def step():
        xb, yb = next(batches)
        opt.zero_grad()
        loss_fn.forward(model.forward(xb), yb)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()

    step()  # the first step makes the buffers and the optimizer state
    monkeypatch.setattr(gpu, "_launcher", lambda kernel, *grid: launched.append(kernel) or real(kernel, *grid))
    step()
    packed = one_flat([p.data for p in model.parameters()]) is not None
    sgd = 1 if packed else len(model.parameters())
    assert sorted(k.__name__ for k in launched) == sorted(
        ["_gather_rows_kernel"] + ["_linear_forward_kernel"] * 3 + ["_copy_kernel",
         "_softmax_crossentropy_forward_backward_kernel", "_sum_kernel"]
        + ["_linear_backward_params_kernel"] * 3 + ["_linear_backward_input_kernel"] * 2 + ["_sgd_step_kernel"] * sgd)
    assert len(launched) - sgd + 1 == 13


def test_the_gpu_failing_in_training_is_one_error_line(tmp_path, monkeypatch):
    """`nbnet train --device cuda` whose batch outgrew the GPU's memory: numba-cuda's CudaAPIError
    (no ValueError nor MemoryError, which the CLI reports) came out as a traceback. One Error:
    line, which names the cause, and exit code 1. (Simulated: the simulator's memory never fills.)"""
    from click.testing import CliRunner  # noqa: PLC0415
    from numba.cuda.cudadrv.driver import CudaAPIError  # noqa: PLC0415 - the simulator's, here

    from nbnet.cli import cli  # noqa: PLC0415

    x, y = nb.datasets.spiral(10, classes=2, seed=0)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    real = gpu.cuda.device_array

    def full(shape, *args, **kwargs):  # room for the model, not for a batch's buffers
        if np.prod(shape) >= 30:
            raise CudaAPIError(2, "Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")
        return real(shape, *args, **kwargs)

    monkeypatch.setattr(gpu.cuda, "device_array", full)
    result = CliRunner().invoke(cli, ["train", "--dataset", str(tmp_path / "d.npz"), "--device", "cuda",
                                      "--hidden", "3", "--batch-size", "16", "--epochs", "1"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "OUT_OF_MEMORY" in errors[0] and "smaller --batch-size" in errors[0], result.stderr
    assert "Traceback" not in result.output + result.stderr


def in_pieces(monkeypatch, fn, *host_args, check=None):
    """gpu.<fn> with MAX_GRID_Y lowered to 1 row tile: every tile launch's grid within it, every
    array bitwise as one launch of the real limit leaves it, and as the CPU's (assert_same).
    Returns how many tile launches it made."""
    whole = on_both(fn, *host_args)[3]
    grids, launcher = [], gpu._launcher

    def recording(kernel, grid, block):
        if isinstance(grid, tuple):  # the tiled Linear kernels; 1-D launches give an int
            grids.append(grid)
        return launcher(kernel, grid, block)

    with monkeypatch.context() as patch:
        patch.setattr(gpu, "MAX_GRID_Y", 1)
        patch.setattr(gpu, "_launcher", recording)
        pieces = assert_same(fn, *host_args, check=check)
    assert grids and all(grid[1] <= 1 for grid in grids), grids
    for idx in check if check is not None else range(len(pieces)):
        if isinstance(pieces[idx], np.ndarray):
            assert pieces[idx].tobytes() == whole[idx].tobytes(), f"{fn} argument {idx}: not the same bits"
    return len(grids)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_batch_of_more_row_tiles_than_a_grid_takes_is_launched_in_pieces(dtype, monkeypatch):
    """CUDA takes at most 65535 blocks in a grid's y, along which the Linear kernels lay the batch's
    row tiles: a forward (or dX) of over 65535 x BT rows (4,194,240 at the default tile) was an
    invalid launch on a GPU, and the simulator, which checks no grid, ran it. With the limit
    lowered to 1 tile, 37 rows go in 3 pieces of BT rows, every grid within it, the same bits."""
    rng = np.random.default_rng(5)
    k, n, m = 37, 5, 6
    x, w, b, g = rand(rng, (k, n), dtype), rand(rng, (m, n), dtype), rand(rng, (m,), dtype), rand(rng, (k, m), dtype)
    assert in_pieces(monkeypatch, "linear_forward", np.full((k, m), np.nan, dtype), x, w, b) == 3
    nans = np.full((k, m), np.nan, dtype)
    assert in_pieces(monkeypatch, "linear_relu_forward", nans, nans.copy(), x, w, b) == 3
    assert in_pieces(monkeypatch, "linear_backward_input", np.full((k, n), np.nan, dtype), g, w, check=[0]) == 3
    assert in_pieces(monkeypatch, "linear_relu_backward_input", np.full((k, n), np.nan, dtype), g, w,
                     rand(rng, (k, n), dtype), check=[0]) == 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,split_rows", [(21, 512), (21, 8)])
def test_a_dw_of_more_output_tiles_than_a_grid_takes_is_launched_in_pieces(k, split_rows, dtype, monkeypatch):
    """dW lays its outputs' row tiles along grid y: a layer of over 65535 x BT outputs (4,194,240,
    e.g. Linear(1, 5_000_000)) was an invalid launch, one sum or the batch in parts alike. With the
    limit lowered to 1 tile, 37 outputs go in 3 pieces of BT outputs (G's columns, db, and the
    parts' scratch with them), accumulating and writing: every grid within it, the same bits."""
    monkeypatch.setattr(gpu, "SPLIT_ROWS", split_rows)
    monkeypatch.setattr(gpu, "PART_ROWS", 8)
    n, m = 5, 37
    assert gpu._batch_parts(k, m, n)[0] == (1 if k <= split_rows else 3)
    rng = np.random.default_rng(k + split_rows)
    x, g = rand(rng, (k, n), dtype), rand(rng, (k, m), dtype)
    dw, db = rand(rng, (m, n), dtype), rand(rng, (m,), dtype)
    for accumulate in (True, False):
        assert in_pieces(monkeypatch, "linear_backward_params", dw, db, g, x, accumulate, check=[0, 1]) == 3
