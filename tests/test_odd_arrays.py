"""The odd arrays NumPy users hand to the Python API: other byte orders, views, arrays that alias a
layer's own buffers. Each gives the bits a plain C-contiguous array gives, or a clear error."""

import numpy as np
import pytest

import nbnet as nb


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
