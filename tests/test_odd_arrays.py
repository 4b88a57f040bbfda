"""The odd arrays NumPy users hand to the Python API: other byte orders, views, arrays that alias a
layer's own buffers. Each gives the bits a plain C-contiguous array gives, or a clear error."""

import re
import warnings

import numpy as np
import pytest

import nbnet as nb
from nbnet import cpu


LOGITS = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
LABELS = np.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("loss", [nb.SoftmaxCrossEntropy, nb.CrossEntropy])
@pytest.mark.parametrize("dtype", [">i8", ">i4", ">u2"])
def test_big_endian_labels_give_the_native_labels_bits(loss, dtype):
    pred = LOGITS if loss is nb.SoftmaxCrossEntropy else nb.Softmax()(LOGITS).copy()
    want = loss()
    value = want(pred, LABELS)
    grad = want.backward().copy()
    got, swapped = loss(), LABELS.astype(dtype)
    # The first call takes the checked path, the later ones SoftmaxCrossEntropy's fast path.
    for _ in range(3):
        assert got(pred, swapped) == value
        np.testing.assert_array_equal(got.backward(), grad)
    with pytest.raises(ValueError, match="label 3 is out of range"):
        got(pred, (LABELS + 1).astype(dtype))


@pytest.mark.parametrize("loss", [nb.SoftmaxCrossEntropy, nb.CrossEntropy])
def test_strided_labels_give_the_contiguous_labels_bits(loss, monkeypatch):
    # Every other row's label (y[::2], or a column of a table): the checked path copies it, the
    # fast path hands it on; either way the kernels read the labels the rows have.
    pred = LOGITS if loss is nb.SoftmaxCrossEntropy else nb.Softmax()(LOGITS).copy()
    table = np.stack([LABELS[::-1], LABELS], axis=1)  # (6, 2): column 1 is LABELS, strided
    want = loss()
    value = want(pred, LABELS)
    grad = want.backward().copy()
    # The kernels get C-contiguous copies, not the strided arrays: each would compile again for
    # them (a second or more on a cold cache). Seen by wrapping them, whatever ran before.
    strided = []
    for name in ("label_bounds", "softmax_crossentropy_forward_backward", "crossentropy_forward",
                 "crossentropy_backward"):
        def seen(*args, _kernel=getattr(cpu, name), _name=name):
            strided.extend(_name for a in args if isinstance(a, np.ndarray) and not a.flags.c_contiguous)
            return _kernel(*args)
        monkeypatch.setattr(cpu, name, seen)
    got = loss()
    for _ in range(3):
        assert got(pred, table[:, 1]) == value
        np.testing.assert_array_equal(got.backward(), grad)
        assert got(pred, np.repeat(LABELS, 2)[::2]) == value
        assert got(np.repeat(pred, 2, axis=1)[:, ::2], LABELS) == value  # strided predictions
        np.testing.assert_array_equal(got.backward(), grad)
    assert strided == []


def _twins(*sizes):
    """Two identical float64 models: Linear layers of `sizes` with a ReLU between them."""
    def one():
        layers = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers += [nb.ReLU()] if i else []
            layers.append(nb.Linear(a, b, seed=i, dtype=np.float64))
        return nb.Sequential(layers)
    return one(), one()


@pytest.mark.parametrize("planned", [False, True])
@pytest.mark.parametrize("which", ["last Linear's output", "ReLU's output", "first Linear's output",
                                   "a gradient"])
def test_a_batch_that_is_a_models_own_array_gives_the_copys_bits(planned, which):
    # The forward writes the layers' outputs (and the backward their gradients) while the first
    # Linear still reads the batch, and reads it again for dW = Gᵀ X.
    n = 64
    x = np.random.default_rng(1).standard_normal((n, n))
    model, twin = _twins(n, n, n) if which != "last Linear's output" else _twins(n, n)
    for m in (model, twin):
        for _ in range(3 if planned else 1):  # the second forward at a shape builds a plan
            m(x)
        m.backward(np.ones((n, n)))
    pick = {"last Linear's output": lambda m: m[-1].out, "ReLU's output": lambda m: m[1].out,
            "first Linear's output": lambda m: m[0].out, "a gradient": lambda m: m[0].grad_weight}[which]
    batch, copy = pick(model), pick(twin).copy()
    got, want = model(batch), twin(copy)
    np.testing.assert_array_equal(got, want)
    model.backward(np.ones((n, n)))
    twin.backward(np.ones((n, n)))
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


def test_a_batch_the_model_only_read_before_is_not_copied():
    # The first layer keeps the last batch as its input, but never writes it: counting it as held
    # copied a reused batch buffer, or the next view of the data set, at every such step.
    x = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    for batches in ([x] * 4, [x[:32], x[32:]] * 3):  # the data set, or views of it
        model = nb.Sequential(nb.Linear(8, 8, seed=0), nb.ReLU(), nb.Linear(8, 3, seed=1))
        for step, batch in enumerate(batches):  # the second forward builds a plan, the later ones run it
            model.forward_reusing(batch)
            assert model[0].inp is batch, f"step {step}: a {batch.shape} batch was copied"
        assert model._plan is not None


@pytest.mark.parametrize("loss, buffer", [(nb.SoftmaxCrossEntropy, "dinp"), (nb.SoftmaxCrossEntropy, "probs_buf"),
                                          (nb.CrossEntropy, "dinp")])
def test_a_classification_loss_on_its_own_buffer_gives_the_copys_bits(loss, buffer):
    # Its kernels write the softmax and the gradient while reading the predictions.
    pred = nb.Softmax()(LOGITS).copy()
    fn, twin = loss(), loss()
    for f in (fn, twin):
        for _ in range(3):  # the later calls take SoftmaxCrossEntropy's fast path
            f(pred, LABELS)
        f.backward()
        getattr(f, buffer)[...] = pred[::-1]  # probabilities again, in a buffer
    mine = getattr(fn, buffer)
    assert fn(mine, LABELS) == twin(getattr(twin, buffer).copy(), LABELS)
    np.testing.assert_array_equal(fn.backward(), twin.backward())


class _DeviceBuffer:
    """What the alias check meets in a loss that last ran on the GPU: numba-cuda's DeviceNDArray has
    no .base (the simulator's forwards it to a host array, so tests/gpu_cases.py cannot show this)."""

    def __init__(self, like):
        self.shape, self.dtype = like.shape, like.dtype


@pytest.mark.parametrize("loss", [nb.SoftmaxCrossEntropy, nb.CrossEntropy])
def test_a_loss_whose_buffers_are_on_the_gpu_takes_a_host_view(loss):
    # The alias check read buf.base of the device buffer: AttributeError for any host view.
    pred = nb.Softmax()(LOGITS).copy()
    rows = np.concatenate([pred, pred])[:len(pred)]  # a view, with a .base
    fn, want = loss(), loss()
    for name in ("dinp", "probs_buf"):
        if hasattr(fn, name):
            setattr(fn, name, _DeviceBuffer(pred))
    assert fn(rows, LABELS) == want(pred, LABELS)
    np.testing.assert_array_equal(fn.backward(), want.backward())


@pytest.mark.parametrize("labels, shown", [(np.full(8, 2**63, np.uint64), "9223372036854775808"),
                                           (np.full(8, 1e30), "1e+30"), (np.full(8, -1e30), "-1e+30")])
def test_labels_beyond_int64_are_named_as_they_are(labels, shown):
    # As int64 they wrapped (with a RuntimeWarning for the floats), and the error named another label.
    model = nb.Sequential(nb.Linear(2, 3, seed=0))
    x = np.zeros((8, 2), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=re.escape(f"label {shown} is out of range")):
            nb.evaluate(model, x, labels)
