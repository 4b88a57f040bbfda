"""Sequential, parameters, save/load, initialisation, and the errors users get for bad input."""

import errno
import os

import numpy as np
import pytest
from conftest import needs_posix

import nbnet as nb


def mlp(dtype=np.float32):
    return nb.Sequential(
        [nb.Linear(4, 8, dtype=dtype, seed=0), nb.ReLU(), nb.Linear(8, 6, dtype=dtype, seed=1), nb.Tanh(),
         nb.Linear(6, 3, dtype=dtype, seed=2), nb.Softmax()]
    )


def test_parameters_in_layer_order_weight_before_bias():
    model = mlp()
    names = [(model.layers.index(p.layer), p.name) for p in model.parameters()]
    assert names == [(0, "weight"), (0, "bias"), (2, "weight"), (2, "bias"), (4, "weight"), (4, "bias")]
    p = model.parameters()[0]
    assert p.data is model.layers[0].weight and p.grad is model.layers[0].grad_weight


def test_a_parameter_is_itself_in_every_list_of_parameters():
    """PyTorch's way to freeze a layer, `[p for p in model.parameters() if p not in
    model[0].parameters()]`, kept every parameter: each parameters() call makes new handles, which
    compared by identity, so the "frozen" layer was trained on."""
    model = mlp()
    rest = [p for p in model.parameters() if p not in model[0].parameters()]
    assert [(model.layers.index(p.layer), p.name) for p in rest] == [(2, "weight"), (2, "bias"), (4, "weight"), (4, "bias")]
    assert set(model.parameters()) - set(model[0].parameters()) == set(rest)
    assert model.parameters()[0] == model.parameters()[0] != model.parameters()[1]
    assert model.parameters()[0] != nb.Linear(4, 8, seed=0).parameters()[0]  # another layer, equal arrays
    frozen = model[0].weight.copy()
    x, y = np.ones((2, 4), np.float32), np.array([0, 1])
    opt, loss_fn = nb.SGD(rest, lr=0.5), nb.CrossEntropy()
    loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    opt.step()
    np.testing.assert_array_equal(model[0].weight, frozen)


def test_parameters_are_writable_in_place():
    model = mlp(np.float64)
    model.layers[0].weight[...] = 0.5
    model.parameters()[1].data[...] = 2.0
    x = np.ones((1, 4))
    np.testing.assert_allclose(model.layers[0].forward(x), np.full((1, 8), 4 * 0.5 + 2.0))


@pytest.mark.parametrize("name, value, match", [
    ("weight", np.ones((8, 5), np.float32), r"got a C-contiguous float32 \(8, 5\) host array"),
    ("weight", np.ones((8, 4)), "got a C-contiguous float64"),
    ("weight", np.ones((4, 8), np.float32).T, "got a strided float32 \\(8, 4\\)"),
    ("weight", [[0.0] * 4] * 8, r"weight must be a C-contiguous float32 \(8, 4\) host array .* got list"),
    ("bias", np.ones(7, np.float32), r"bias must be a C-contiguous float32 \(8,\) host array"),
    ("grad_weight", np.ones((8, 3), np.float32), "grad_weight must be"),
])
def test_an_assigned_parameter_that_does_not_fit_is_a_value_error(name, value, match):
    """`layer.weight = w` is supported (the plan notices it), but the kernels check no bounds,
    dtypes or strides: a wrong shape was read past its end (forward and optimizer step, silently),
    float64 or strided ones failed inside Numba's typing, a list as "no usable CUDA GPU"."""
    model, x, y = mlp(), np.ones((5, 4), np.float32), np.zeros(5, np.int64)
    opt, loss_fn = nb.SGD(model.parameters(), lr=0.1), nb.CrossEntropy()
    for _ in range(3):  # planned: the plan sees the new array and hands the call to the layer
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
    setattr(model.layers[0], name, value)
    with pytest.raises(ValueError, match=match):
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
    with pytest.raises(ValueError, match=r"SGD: parameter [01] "):
        opt.step()  # a step right after the assignment, without a forward


def test_a_weight_tied_to_two_layers_stays_tied():
    """`l2.weight = l1.weight` (one array in two layers: two parameters, stepped with a gradient
    each, see nbnet.optim): Sequential() and model.to() packed the parameters into one buffer,
    copying that array into two places, and the layers trained on untied, silently."""
    x, y = np.random.default_rng(0).normal(size=(4, 5)), np.array([0, 1, 2, 3])
    l1, l2 = nb.Linear(5, 5, dtype=np.float64, seed=0), nb.Linear(5, 5, dtype=np.float64, seed=1)
    l2.weight = l1.weight
    model = nb.Sequential(l1, nb.Tanh(), l2)
    assert model[2].weight is model[0].weight
    assert model.to("cpu")[2].weight is model[0].weight and model[::2][1].weight is model[0].weight
    other = nb.Sequential(nb.Linear(5, 5, dtype=np.float64, seed=0), nb.Tanh(), nb.Linear(5, 5, dtype=np.float64))
    other[2].weight = other[0].weight  # tied after packing, then moved
    assert other.to("cpu")[2].weight is other[0].weight

    opt, loss_fn = nb.SGD(model.parameters(), lr=0.1), nb.SoftmaxCrossEntropy()
    w = model[0].weight.copy()
    loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    grads = model[0].grad_weight + model[2].grad_weight
    opt.step()
    assert model[2].weight is model[0].weight
    np.testing.assert_allclose(model[0].weight, w - 0.1 * grads, rtol=1e-12)


def test_he_uniform_init_is_seeded_and_bounded():
    a, b, c = nb.Linear(100, 50, seed=3), nb.Linear(100, 50, seed=3), nb.Linear(100, 50, seed=4)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.array_equal(a.weight, c.weight)
    bound = np.sqrt(6 / 100)
    assert a.weight.shape == (50, 100) and a.bias.shape == (50,)
    assert np.abs(a.weight).max() <= bound and np.abs(a.weight).max() > 0.9 * bound
    assert a.weight.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    assert not a.bias.any() and a.weight.dtype == np.float32



@pytest.mark.parametrize("seed", [-1, 1.5, "0", (0, -2)])
def test_a_bad_linear_seed_is_an_error_naming_it(seed):
    """NumPy's SeedSequence refused these in its own words ('expected non-negative integer',
    'SeedSequence expects int or sequence of ints for entropy not 1.5'), naming neither the layer
    nor the argument."""
    with pytest.raises(ValueError, match=r"Linear\(4, 3\): seed must be None, a non-negative integer"):
        nb.Linear(4, 3, seed=seed)
    nb.Linear(4, 3, seed=np.int64(2)), nb.Linear(4, 3, seed=(2, 0)), nb.Linear(4, 3, seed=np.random.default_rng(0))

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_he_uniform_drawn_in_blocks_is_one_draw_of_the_whole(dtype):
    """The init draws a block of rows at a time (no float64 copy of the layer): the same weights as
    one draw of all of them, here over three blocks."""
    layer = nb.Linear(3, 700_000, seed=11, dtype=dtype)
    bound = np.sqrt(6 / 3)
    np.testing.assert_array_equal(layer.weight, np.random.default_rng(11).uniform(-bound, bound, (700_000, 3)).astype(dtype))


def test_a_layer_too_big_for_this_machine_is_an_error_before_allocating():
    with pytest.raises(ValueError, match=r"Linear\(1000000, 1000000\): its weight and gradient need 7450.6 GiB, more than .* half"):
        nb.Linear(10**6, 10**6)  # 7.3 TiB: would be a MemoryError, or swapping, after a float64 draw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_bit_for_bit(tmp_path, dtype):
    model = mlp(dtype)
    for p in model.parameters():
        p.data[...] += np.random.default_rng(0).normal(size=p.shape).astype(dtype)
    path = tmp_path / "model.npz"
    model.save(path)
    same = nb.load(path)
    assert [type(layer) for layer in same.layers] == [type(layer) for layer in model.layers]
    for p, q in zip(model.parameters(), same.parameters()):
        assert q.data.dtype == dtype
        np.testing.assert_array_equal(p.data, q.data)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(dtype)
    np.testing.assert_array_equal(model.forward(x), same.forward(x))
    with np.load(path, allow_pickle=False) as f:  # readable without pickle
        assert "nbnet/architecture" in f.files
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temp file left behind


def test_save_replaces_atomically(tmp_path):
    path = tmp_path / "m.npz"
    mlp().save(path)
    model = mlp()
    model.layers[0].weight[...] = 7
    model.save(path)
    assert (nb.load(path).layers[0].weight == 7).all()


def test_a_save_that_fails_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    """A full disk's write error names no file ('[Errno 28] No space left on device', all that
    `nbnet train` printed, whichever of --save, --save-best or --plot it was), and one in making
    the temporary file named nbnet's temporary file (a read-only folder)."""
    import tempfile  # noqa: PLC0415

    path = tmp_path / "m.npz"
    mlp().save(path)
    before = path.read_bytes()
    real_savez = np.savez

    def full_disk(f, **arrays):
        real_savez(f, **arrays)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="No space left on device") as err:
        mlp().save(path)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    monkeypatch.undo()

    def read_only(prefix, suffix, dir):
        name = os.path.join(dir, prefix + "abc" + suffix)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as err:
        mlp().save(path)
    assert err.value.errno == errno.EROFS and err.value.filename == str(path) and ".tmp-" not in str(err.value)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.npz"]


@pytest.mark.parametrize("bad", [np.zeros((8, 3), np.float32), np.zeros((8, 4), np.float64), [[0.0] * 4] * 8])
def test_an_assigned_parameter_that_does_not_fit_is_not_saved(tmp_path, bad):
    """`layer.weight = w` of another shape or dtype: save wrote it, and nb.load refused the file
    (a checkpoint of a run then lost at the end of it; a list was an AttributeError)."""
    from nbnet.checkpoint import save_checkpoint
    from nbnet.train import TrainState

    path = tmp_path / "m.npz"
    model = mlp()
    model.save(path)
    model.layers[0].weight = bad
    with pytest.raises(ValueError, match=r"Linear\(4, 8\): weight must be a C-contiguous float32 \(8, 4\)"):
        model.save(path)
    with pytest.raises(ValueError, match="weight must be"):
        save_checkpoint(tmp_path / "c.npz", model, nb.SGD(mlp().parameters(), lr=0.1), TrainState(), {})
    assert nb.load(path).layers[0].weight.shape == (8, 4) and not (tmp_path / "c.npz").exists()


def test_save_to_a_name_ending_in_a_separator_is_a_one_line_error(tmp_path):
    """os.replace(temp, "m/") failed with NotADirectoryError naming nbnet's temp file."""
    path = f"{tmp_path / 'm'}{os.sep}"
    with pytest.raises(ValueError, match="names a folder") as err:
        mlp().save(path)
    assert path in str(err.value) and ".tmp-" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_save_to_an_empty_path_is_a_one_line_error(tmp_path, monkeypatch):
    """"" is a mistake, not a name: written through, the temporary file went to the folder above
    the working one and the rename failed with FileNotFoundError."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(ValueError, match="^empty output path$"):
        mlp().save("")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cwd"]


@pytest.mark.parametrize("inside", ["m.npz", os.path.join("sub", "m.npz")])
def test_save_into_a_file_as_if_it_were_a_folder_names_that_file(tmp_path, inside):
    """os.makedirs said '[Errno 17] File exists: .../f' (or 'Not a directory: .../f/sub')."""
    (tmp_path / "f").write_text("")
    path = tmp_path / "f" / inside
    with pytest.raises(ValueError, match="is a file, not a folder") as err:
        mlp().save(path)
    assert str(err.value) == f"{path}: {tmp_path / 'f'} is a file, not a folder"


def test_a_model_without_linear_layers_is_not_saved_where_load_would_refuse_it(tmp_path):
    """save wrote the file and nb.load then refused it ("the model has no Linear layer"); nb.evaluate
    ended in a bare StopIteration."""
    path = tmp_path / "m.npz"
    with pytest.raises(ValueError, match="no Linear layer"):
        nb.Sequential(nb.ReLU()).save(path)
    assert not path.exists()
    with pytest.raises(ValueError, match="no Linear layer"):
        nb.evaluate(nb.Sequential(nb.ReLU()), np.zeros((2, 3), np.float32), np.zeros(2, np.int64))


class _Double(nb.layers.Layer):
    """A user's own layer, as Sequential takes them: forward and backward."""

    def forward(self, x):
        return x * 2

    def backward(self, grad, **kwargs):
        return grad * 2


class _Masked(nb.layers.Layer):
    """A user's own layer with a constant array: a fixed mask over its input's columns."""

    def __init__(self, mask):
        self.mask = mask

    def forward(self, x):
        self.out = x * self.mask
        return self.out

    def backward(self, grad, **kwargs):
        return grad * self.mask


def test_to_keeps_the_constant_arrays_of_a_users_own_layer():
    """model.to() set every array of a layer that was not a parameter to None, to be remade: a
    user's layer's constant (a fixed mask) was dropped too, even by to("cpu") on the host, and the
    next forward failed (or a layer that skips a missing mask ran unmasked). It stays; nbnet's own
    buffers are still dropped."""
    mask = np.array([1, 0], np.float32)
    model = nb.Sequential(nb.Linear(3, 2, seed=0), _Masked(mask))
    x = np.ones((4, 3), np.float32)
    want = model(x)
    assert model.to("cpu")[1].mask is mask
    assert model[0].out is None and model[0].inp is None  # nbnet's buffers and caches: remade
    np.testing.assert_array_equal(model(x), want)


class _NoConfig:
    """Not a nbnet.layers.Layer: no config()."""

    def forward(self, x):
        return x

    def backward(self, grad, **kwargs):
        return grad

    def parameters(self):
        return []

    def zero_grad(self):
        pass


class _Scaled(nb.Linear):
    def forward(self, x):
        return super().forward(x) * 2


_Scaled.__name__ = "Linear"  # a user's subclass under a built-in layer's name


@pytest.mark.parametrize("own", [_Double, _NoConfig, type("ReLU2", (nb.ReLU,), {}), _Scaled])
def test_a_model_with_a_layer_of_the_users_own_is_not_saved_where_load_would_refuse_it(tmp_path, own):
    """Sequential takes any object with forward and backward, but save wrote its type's name and
    nb.load refused the file ("unknown layer type 'ReLU2'"), or, for a subclass named as a built-in
    layer, loaded the built-in without a word; a layer with no config() was an AttributeError."""
    path = tmp_path / "m.npz"
    layer = own(3, 3, seed=0) if own is _Scaled else own()
    model = nb.Sequential(nb.Linear(4, 3, seed=0), layer, nb.Linear(3, 2, seed=1))
    with pytest.raises(ValueError, match=f"layer 1 is a {own.__name__}, not one of nbnet's layers") as err:
        model.save(path)
    assert "\n" not in str(err.value)
    assert not path.exists()
    # astype rebuilds the layers the same way: the subclass came back a plain Linear, silently
    with pytest.raises(ValueError, match=f"astype: layer 1 is a {own.__name__}, not one of nbnet's layers"):
        model.astype(np.float64)


@pytest.mark.parametrize(
    "content, match",
    [(b"", "corrupt|not a readable"), (b"PK\x03\x04garbage", "corrupt|not a readable"), (None, "no such file")],
)
def test_load_bad_files_gives_one_line_errors(tmp_path, content, match):
    path = tmp_path / "bad.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        nb.load(path)
    assert "\n" not in str(err.value)


def test_load_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "m.npz"
    mlp().save(path)
    data = path.read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        nb.load(tmp_path / "t.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not an nbnet model"):
        nb.load(tmp_path / "other.npz")
    arrays = dict(np.load(path))
    arrays["layer0.weight"] = np.zeros((3, 3), np.float32)
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(ValueError, match="layer0.weight has shape"):
        nb.load(tmp_path / "shape.npz")


def test_shape_errors_name_layer_expected_and_received():
    layer = nb.Linear(784, 256)
    with pytest.raises(ValueError, match=r"Linear\(784, 256\).*\(N, 784\).*\(32, 100\)"):
        layer.forward(np.zeros((32, 100), np.float32))
    with pytest.raises(ValueError, match=r"Linear\(784, 256\).*\(N, 784\).*\(784,\)"):
        layer.forward(np.zeros(784, np.float32))
    layer.forward(np.zeros((2, 784), np.float32))
    with pytest.raises(ValueError, match=r"Linear\(784, 256\).*gradient of shape \(2, 256\).*\(2, 10\)"):
        layer.backward(np.zeros((2, 10), np.float32))


def test_dtype_errors_are_not_silently_converted():
    with pytest.raises(ValueError, match=r"Linear\(3, 2\): expected dtype float32, got float64 \(x.astype\(np.float32\), "
                                         r"or model.astype\(np.float64\) for a float64 model; nb.predict and nb.train "
                                         r"convert their input\)$"):
        nb.Linear(3, 2).forward(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="float32 or float64, got int64"):
        nb.ReLU().forward(np.zeros((1, 3), np.int64))
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        nb.Linear(3, 2, dtype=np.float16)
    with pytest.raises(ValueError, match="positive integer"):
        nb.Linear(0, 2)


def test_linear_dtype_none_is_an_error_not_float64():
    """np.dtype(None) is float64: Linear(..., dtype=None) made a float64 layer where a PyTorch or
    Keras user means "the default" (float32 here)."""
    with pytest.raises(ValueError, match="dtype must be float32 or float64, got None"):
        nb.Linear(3, 2, dtype=None)


def test_label_errors():
    loss = nb.SoftmaxCrossEntropy()
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="label 4 is out of range \\[0, 4\\)"):
        loss.forward(logits, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="label -1"):
        loss.forward(logits, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="integer"):
        loss.forward(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"labels of shape \(3,\)"):
        loss.forward(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="before forward"):
        nb.CrossEntropy().backward()


def test_label_errors_after_a_good_call():
    """SoftmaxCrossEntropy's fast path (a batch shaped as the last one) still checks every label."""
    loss = nb.SoftmaxCrossEntropy()
    logits = np.zeros((3, 4), np.float32)
    assert loss.forward(logits, np.array([0, 1, 3])) == pytest.approx(np.log(4))
    for bad, match in (([0, 1, 4], "label 4 is out of range"), ([0, -1, 2], "label -1"),
                       (np.array([0.0, 1.0, 2.0]), "integer"), (np.array([True, False, True]), "integer")):
        with pytest.raises(ValueError, match=match):
            loss.forward(logits, np.asarray(bad))
    assert loss.forward(np.zeros((3, 4)), np.array([0, 1, 3])) == pytest.approx(np.log(4))  # float64: its own buffers
    assert loss.backward().dtype == np.float64
    strided = np.zeros((3, 8), np.float32)[:, ::2]  # not C-contiguous: copied, same answer
    assert loss.forward(strided, np.array([0, 1, 3])) == pytest.approx(np.log(4))
    np.testing.assert_allclose(loss.backward(), (np.full((3, 4), 0.25) - np.eye(4)[[0, 1, 3]]) / 3, rtol=1e-6)


def test_labels_in_big_endian_byte_order_are_labels():
    """Integer labels from a file in big-endian order ('>i8': np.load keeps a file's order) are
    read as their values: the label kernels, compiled for native order, failed with Numba's
    TypingError (non-precise type pyobject), on the fast path too."""
    probs, labels = np.full((3, 4), 0.25, np.float32), np.array([0, 1, 3])
    for loss in (nb.SoftmaxCrossEntropy(), nb.CrossEntropy()):
        for dtype in (">i8", "<i8"):
            for _ in range(2):  # the first call and the fast path of a second one
                assert loss.forward(probs, labels.astype(dtype)) == pytest.approx(np.log(4))
                assert loss.backward().dtype == np.float32
        with pytest.raises(ValueError, match="label 4 is out of range"):
            loss.forward(probs, np.array([0, 1, 4], ">i8"))


def test_batches_cover_everything_once_and_are_seeded():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10)
    got = list(nb.batches(x, y, batch_size=4, seed=0))
    assert [len(b[0]) for b in got] == [4, 4, 2]
    assert sorted(np.concatenate([b[1] for b in got])) == list(range(10))
    assert all((xb[:, 0] == yb).all() for xb, yb in got)
    again = list(nb.batches(x, y, batch_size=4, seed=0))
    assert all((a[1] == b[1]).all() for a, b in zip(got, again))
    plain = list(nb.batches(x, y, batch_size=4, shuffle=False))
    assert list(plain[0][1]) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        list(nb.batches(x, y[:5], batch_size=4))
    # bool is an int: batches(x, y, True) (shuffle's place in some APIs) was batches of one row.
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got True"):
        list(nb.batches(x, y, True))
    # 0 was range()'s "arg 3 must not be zero"; shuffle=1 (an int, not a flag) shuffled silently.
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        list(nb.batches(x, y, 0))
    with pytest.raises(ValueError, match="shuffle must be True or False, got 1"):
        list(nb.batches(x, y, 4, shuffle=1))


@needs_posix("symbolic links without privileges")
def test_save_writes_through_a_symbolic_link(tmp_path):
    """The atomic rename replaced the link itself with the new file; the file it named kept the
    old model."""
    mlp().save(tmp_path / "run3.npz")
    os.symlink("run3.npz", tmp_path / "latest.npz")
    model = mlp()
    model.layers[0].weight[...] = 7
    model.save(tmp_path / "latest.npz")
    assert os.path.islink(tmp_path / "latest.npz")
    assert (nb.load(tmp_path / "run3.npz").layers[0].weight == 7).all()
    assert sorted(os.listdir(tmp_path)) == ["latest.npz", "run3.npz"]


def test_linear_backward_with_another_relu_is_refused():
    """Linear.backward(relu=r) reads r.inp as this layer's input: the ReLU after the layer (another
    shape) read past the end of its array, different garbage each run; one that never ran forward
    was a Numba TypingError. Sequential passes the right one; a hand-written loop may not."""
    lin, before, after = nb.Linear(40, 5, seed=0), nb.ReLU(), nb.ReLU()
    h = before.forward(np.ones((2, 40), np.float32))
    after.forward(lin.forward(h))
    g = np.ones((2, 5), np.float32)
    for wrong in (after, nb.ReLU(), nb.Sigmoid()):
        with pytest.raises(ValueError, match="relu= must be the ReLU layer"):
            lin.backward(g, relu=wrong)
    dx = lin.backward(g, relu=before)
    np.testing.assert_array_equal(dx, before.backward(g @ lin.weight))


def _edited(tmp_path, edit):
    """A saved mlp() whose arrays (the architecture as a dict) `edit` changes, written back."""
    import json

    path = tmp_path / "m.npz"
    mlp().save(path)
    arrays = dict(np.load(path))
    arch = json.loads(str(arrays["nbnet/architecture"]))
    edit(arrays, arch)
    if "nbnet/architecture" in arrays and arrays["nbnet/architecture"].dtype.kind == "U":
        arrays["nbnet/architecture"] = np.array(json.dumps(arch))
    np.savez(tmp_path / "e.npz", **arrays)
    return tmp_path / "e.npz"


def _set(key, value, layer=None):
    def edit(arrays, arch):
        (arch if layer is None else arch["layers"][layer])[key] = value
    return edit


def _nan_weight(arrays, arch):
    arrays["layer2.bias"] = np.array([0, np.nan, 0, 0, 0, 0], np.float32)


def _arch_bytes(arrays, arch):
    arrays["nbnet/architecture"] = np.frombuffer(str(arrays["nbnet/architecture"]).encode(), np.uint8)


@pytest.mark.parametrize("edit, match", [
    (_set("version", 2), r"written by a newer nbnet \(format version 2\)"),
    (_set("layers", []), r"0 layers \(expected 1 to 10000\)"),
    (_set("in_features", 7, layer=2), "layer 2 takes 7 inputs but the Linear before it gives 8"),
    (_set("bias", 1, layer=0), r"layer 0: bias = 1 \(expected true or false\)"),
    (_set("in_features", 0, layer=0), "layer 0: Linear sizes 0, 8 are not positive integers"),
    (_set("in_features", 2**31, layer=0), "layer 0: Linear sizes 2147483648, 8 are not positive integers"),  # past int32
    (_set("layers", [{"type": "ReLU"}] * 10_001), r"10001 layers \(expected 1 to 10000\)"),
    (_set("seed", float("nan"), layer=0), "layer 0: seed = nan is not a plain value"),
    (_nan_weight, "weights layer2.bias hold NaN or Inf"),
    (_arch_bytes, "nbnet/architecture is not a JSON string"),
])
def test_load_checks_the_architecture_before_building(tmp_path, edit, match):
    with pytest.raises(ValueError, match=match):
        nb.load(_edited(tmp_path, edit))


def test_a_weight_tied_through_a_view_stays_tied():
    """A view of another layer's weight (not the same object) is tied too: packing copied it apart."""
    l1, l2 = nb.Linear(5, 5, dtype=np.float64, seed=0), nb.Linear(5, 5, dtype=np.float64, seed=1)
    l2.weight = l1.weight[:]
    model = nb.Sequential(l1, nb.Tanh(), l2)
    model[0].weight[0, 0] = 42.0
    assert model[2].weight[0, 0] == 42.0


def test_save_refuses_non_finite_weights(tmp_path):
    model = mlp()
    model.layers[4].weight[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"cannot save .*m\.npz: weights layer4\.weight hold NaN or Inf"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_astype_takes_float32_or_float64_only():
    for bad in (np.float16, None, np.int32):
        with pytest.raises(ValueError, match="astype: dtype must be float32 or float64"):
            mlp().astype(bad)


def test_astype_to_float32_names_a_weight_too_large_for_it():
    """A float64 weight past float32's range became Inf in the cast, with NumPy's 'overflow
    encountered in cast' RuntimeWarning, and the error then said the weights 'hold NaN or Inf',
    which the model's do not."""
    import warnings

    f64 = np.float64
    model = nb.Sequential(nb.Linear(3, 4, seed=0, dtype=f64), nb.ReLU(), nb.Linear(4, 2, seed=1, dtype=f64))
    model[2].bias[1] = -1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"astype: layer2\.bias holds -1e\+300, too large for float32"):
            model.astype(np.float32)
        model[2].bias[1] = 1e-300  # underflows to 0, as any float64 -> float32 rounding: no error
        assert model.astype(np.float32)[2].bias[1] == 0


def test_a_view_of_a_layers_own_output_as_the_batch_is_copied_first():
    """model(v) where v is a view of an array the layers write (here the last layer's output, which
    the forward overwrites while dW = Gᵀ X still needs the batch): the batch is copied first, as it
    is when it is that array itself."""
    import copy

    m = nb.Sequential(nb.Linear(4, 4, seed=0), nb.ReLU(), nb.Linear(4, 4, seed=1))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    out = m.forward_reusing(x)
    twin = copy.deepcopy(m)
    batch = out.copy()
    g = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(m(out[:]), twin(batch))
    m.backward(g)
    twin.backward(g)
    np.testing.assert_array_equal(m[0].grad_weight, twin[0].grad_weight)


@pytest.mark.parametrize("loss", ["cross-entropy", "mse", "bce"])
def test_a_short_last_batch_runs_in_the_full_batchs_buffers(loss):
    """An epoch's last, short batch runs in the first rows of the layers' and the loss's buffers,
    and the next full batch in those buffers again: each reallocated every buffer, twice an epoch
    (every other step where an epoch has two). Read from where each buffer's data starts (a count
    of allocations also counted the kernels' first calls, compiling or loading, as threads adapt)."""
    model = nb.Sequential([nb.Linear(16, 512, seed=0), nb.ReLU(), nb.Linear(512, 512, seed=1), nb.Tanh(),
                           nb.Linear(512, 512, seed=2)])
    loss_fn = {"cross-entropy": nb.SoftmaxCrossEntropy, "mse": nb.MSELoss, "bce": nb.BCEWithLogits}[loss]()
    opt = nb.Adam(model.parameters())
    rng = np.random.default_rng(0)
    x = rng.random((64, 16), np.float32)
    y = rng.integers(0, 512, 64) if loss == "cross-entropy" else rng.integers(0, 2, (64, 512)).astype(np.float32)

    def step(rows):
        opt.zero_grad()
        loss_fn(model.forward_reusing(x[:rows]), y[:rows])
        model.backward(loss_fn.backward())
        opt.step()
        return {(i, name): (a.__array_interface__["data"][0], len(a))
                for i, part in enumerate([*model.layers, loss_fn]) for name, a in vars(part).items()
                if type(a) is np.ndarray and a.ndim == 2 and len(a) == rows and name != "inp"
                and not name.startswith("_kept_")}

    full = step(64)
    assert len(full) >= 10  # outputs, activations, dX, the loss's own
    for rows in (40, 64, 40, 64):  # never two in a row: no plan (nbnet.model._Plan) is built
        assert step(rows) == {key: (start, rows) for key, (start, _) in full.items()}, rows


def test_a_big_forwards_buffers_are_let_go_at_the_next_much_smaller_batch():
    """The first rows of a layer's buffer serve a smaller batch only while that buffer is not far
    larger (layers.KEPT_BYTES): one model(x) of 100,000 rows left a 784-256-128-10 MLP holding
    313 MB for the rest of its life, whatever its batches after. A batch of a quarter of the rows
    or more still runs in the first rows, as does any batch in a buffer of at most KEPT_BYTES."""
    from nbnet import layers

    model = nb.Sequential([nb.Linear(8, 600, seed=0), nb.ReLU(), nb.Linear(600, 3, seed=1)])
    loss_fn, opt = nb.SoftmaxCrossEntropy(), nb.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    x, y = rng.random((8000, 8), np.float32), rng.integers(0, 3, 8000)
    twin = nb.Sequential([nb.Linear(8, 600, seed=0), nb.ReLU(), nb.Linear(600, 3, seed=1)])

    def held():  # each distinct array a layer keeps, by its base, the batch itself left out
        bases = {id(a if a.base is None else a.base): (a if a.base is None else a.base)
                 for layer in model for name, a in vars(layer).items() if type(a) is np.ndarray and name != "inp"}
        return {i: a.nbytes for i, a in bases.items()}

    model(x)
    big = model[0]._kept_out
    assert big.nbytes > layers.KEPT_BYTES  # 19.2 MB: a test of the limit, not below it
    model(x[:2000])  # a quarter: the first rows
    assert np.shares_memory(model[0].out, big)
    for rows in (32, 32):  # a training step at 32 rows: the big buffers are let go
        opt.zero_grad()
        loss_fn(model(x[:rows]), y[:rows])
        model.backward(loss_fn.backward())
        opt.step()
    assert not np.shares_memory(model[0].out, big)
    assert sum(held().values()) < 1_000_000  # 38.5 MB held before: two of 19.2 MB
    twin_opt = nb.SGD(twin.parameters(), lr=0.1)
    for _ in range(2):  # the same steps on a model that never ran the big batch: the same bits
        twin_opt.zero_grad()
        loss_fn(twin(x[:32]), y[:32])
        twin.backward(loss_fn.backward())
        twin_opt.step()
    np.testing.assert_array_equal(model(x), twin(x))



def test_a_buffer_of_at_most_kept_bytes_or_of_at_most_kept_rows_times_the_batch_serves_it():
    """The limits of the test above, at their edges (mutation round 23): a buffer of exactly
    KEPT_BYTES, or of exactly KEPT_ROWS times the rows asked for, still serves a smaller batch in its
    first rows; one row more (or less) and it is let go. KEPT_ROWS 5 or 64, or `<` for `<=`, passed."""
    from nbnet import layers

    model = nb.Sequential([nb.Linear(8, 1024, seed=0)])
    x = np.random.default_rng(0).random((8192, 8), np.float32)

    def serves(big, rows):  # whether a batch of `rows` after one of `big` runs in the big one's first rows
        model(x[:big])
        kept = model[0]._kept_out
        model(x[:rows])
        return np.shares_memory(model[0].out, kept)

    assert 4096 * 1024 * 4 == layers.KEPT_BYTES and layers.KEPT_ROWS == 4  # the edges below
    assert serves(4096, 32)  # exactly KEPT_BYTES, 128 times the rows
    assert not serves(4097, 32)
    assert serves(8192, 2048)  # twice KEPT_BYTES, exactly KEPT_ROWS times the rows
    assert not serves(8192, 2047)


# --------------------------------------------------------------------------------------------- mutation-found gaps


@pytest.mark.parametrize("make", [lambda: nb.Linear(4, 3, seed=0), nb.ReLU, nb.Sigmoid], ids=["Linear", "ReLU", "Sigmoid"])
def test_a_layer_refuses_an_empty_batch_and_a_backward_before_its_forward(make):
    """Unchecked, an empty batch gave an empty output (the check's fast path let it through, or
    the full path did not ask), and a backward before any forward failed inside Numba's typing."""
    layer = make()  # a new one each run: made once at import, a rerun found the last run's forward
    with pytest.raises(ValueError, match="backward called before forward"):
        layer.backward(np.ones((2, 3 if isinstance(layer, nb.Linear) else 4), np.float32))
    with pytest.raises(ValueError, match=r"got an empty batch of shape \(0, 4\)"):
        layer(np.zeros((0, 4), np.float32))


@pytest.mark.parametrize("make", [lambda: nb.Linear(4, 3, seed=0), nb.ReLU, nb.Tanh], ids=["Linear", "ReLU", "Tanh"])
def test_a_gradient_of_the_other_dtype_is_refused(make):
    """A float64 dL/dY into a float32 layer: the fast path let it through to the kernels (Numba's
    typing error for Linear, a silent float64 kernel for the activations)."""
    layer = make()
    out = layer(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="expected gradient dtype float32, got float64"):
        layer.backward(np.ones(out.shape, np.float64))


def test_strided_inputs_and_gradients_give_what_their_contiguous_copies_give():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8)).astype(np.float32)[:, ::2]
    g = rng.normal(size=(6, 6)).astype(np.float32)[:, ::2]
    lin = nb.Linear(4, 3, seed=0)
    out = lin(x).copy()
    dx = lin.backward(g).copy()
    dw = lin.grad_weight.copy()
    lin.zero_grad()
    np.testing.assert_array_equal(out, lin(np.ascontiguousarray(x)))
    np.testing.assert_array_equal(dx, lin.backward(np.ascontiguousarray(g)))
    np.testing.assert_array_equal(dw, lin.grad_weight)


@pytest.mark.parametrize("args", [(True, 3), (3, True), (3, False)])
def test_a_boolean_width_is_refused(args):
    with pytest.raises(ValueError, match="must be a positive integer"):
        nb.Linear(*args)


def test_a_linear_fed_its_own_output_writes_a_new_one():
    """lin(lin(x)), and lin of a view of its last output: the kernel would write into its input."""
    lin = nb.Linear(4, 4, seed=0)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    want = lin(lin(x).copy()).copy()
    y = lin(x)
    z = lin(y)
    assert z is not y and not np.shares_memory(z, y)
    np.testing.assert_array_equal(z, want)
    y = lin(x)
    assert not np.shares_memory(lin(y[:2]), y)


def test_the_fast_path_checks_the_shapes_of_logits_and_labels():
    """SoftmaxCrossEntropy's fast path (host arrays as the last call's) takes logits of another width
    and labels of another length to the full checks, not to the kernel with the last call's buffers."""
    loss = nb.SoftmaxCrossEntropy()
    assert loss.forward(np.zeros((3, 4), np.float32), np.array([0, 1, 3])) == pytest.approx(np.log(4))
    assert loss.forward(np.zeros((3, 6), np.float32), np.array([0, 1, 5])) == pytest.approx(np.log(6))
    assert loss.backward().shape == (3, 6)
    with pytest.raises(ValueError, match=r"labels of shape \(3,\)"):
        loss.forward(np.zeros((3, 6), np.float32), np.array([0, 1]))


@pytest.mark.parametrize("loss", [nb.MSELoss, nb.BCEWithLogits])
def test_float_targets_are_checked_for_rows_complex_values_and_a_forward_first(loss):
    """Targets of another number of rows (the kernels read the predictions' rows of them: past the
    end of fewer), complex targets (converted, their imaginary parts dropped with a ComplexWarning),
    and backward before forward are errors."""
    pred = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="before forward"):
        loss().backward()
    for rows in (2, 4):
        with pytest.raises(ValueError, match=r"expected targets of shape \(3, 2\)"):
            loss().forward(pred, np.zeros((rows, 2), np.float32))
    with pytest.raises(ValueError):
        loss().forward(pred, np.full((3, 2), 0.5 + 1j))


@pytest.mark.parametrize("loss", [nb.SoftmaxCrossEntropy, nb.CrossEntropy])
def test_a_view_of_the_losss_own_gradient_as_its_input(loss):
    """loss_fn(g[:], y) with g = loss_fn.backward(): a view of the buffer the kernels write while
    reading it is taken as a new input (the loss's buffers are made anew), as g itself is."""
    x = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    y = np.array([0, 2, 1, 0])
    fn = loss()
    fn(x / x.sum(1, keepdims=True), y)
    g = fn.backward()
    view = g[:]
    if loss is nb.CrossEntropy:
        view[...] = 1 / 3  # probabilities
    want_fn = loss()
    want = want_fn(view.copy(), y)
    assert fn(view, y) == want
    np.testing.assert_array_equal(fn.backward(), want_fn.backward())


def test_one_column_labels_for_one_class_get_no_one_hot_hint():
    """(N, 1) labels for one class are not one-hot rows: the message does not say to take argmax."""
    with pytest.raises(ValueError) as err:
        nb.SoftmaxCrossEntropy()(np.zeros((3, 1), np.float32), np.zeros((3, 1), np.int64))
    assert "one-hot" not in str(err.value) and "expected labels of shape (3,)" in str(err.value)


def test_a_deep_copy_is_packed_as_its_original():
    """deepcopy copied each view of the flat parameter buffer alone: the copy (one per thread, as
    Sequential's docstring advises) stepped one parameter at a time, a launch each on the GPU."""
    import copy  # noqa: PLC0415

    from nbnet.optim import one_flat  # noqa: PLC0415

    model = nb.Sequential([nb.Linear(4, 8, seed=0), nb.ReLU(), nb.Linear(8, 3, seed=1)])
    assert one_flat([p.data for p in model.parameters()]) is not None
    twin = copy.deepcopy(model)
    assert one_flat([p.data for p in twin.parameters()]) is not None
    assert one_flat([p.grad for p in twin.parameters()]) is not None
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        np.testing.assert_array_equal(a.data, b.data)
        assert not np.shares_memory(a.data, b.data)


def test_a_linear_backward_through_its_own_input_gradient_writes_a_new_one():
    """lin.backward(lin.backward(g)) with in = out features: dX = G W was written into the buffer G
    was read from (the mirror of lin(lin(x)), which _out guards): a silently wrong dX. Also for a
    view of it, at a shorter batch (whose buffer would be the first rows of the same one)."""
    rng = np.random.default_rng(0)
    for rows in (5, 4):
        lin = nb.Linear(6, 6, seed=0)
        lin(rng.normal(size=(5, 6)).astype(np.float32))
        first = lin.backward(rng.normal(size=(5, 6)).astype(np.float32))
        if rows != 5:
            lin(rng.normal(size=(rows, 6)).astype(np.float32))
        g = first[5 - rows:]
        want = g.copy() @ lin.weight
        np.testing.assert_allclose(lin.backward(g), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [nb.ReLU, nb.Tanh, nb.Sigmoid, nb.Softmax])
def test_an_activation_fed_its_own_output_or_input_gradient_writes_new_ones(make):
    """act(act.out[1:]) wrote the new output over its own input (rows shifted: threads raced, one
    writing rows another still read), and act(h) changed the caller's h = act(x) under it; the
    backward alike for its dX. Each gets a new buffer, as Linear's output does (lin(lin(x)))."""
    rng = np.random.default_rng(1)
    act = make()
    h = act(rng.normal(size=(6, 5)).astype(np.float32))
    kept = h.copy()
    for x in (h, h[1:]):
        want = make()(x.copy())
        got = act(x)
        np.testing.assert_array_equal(got, want)
        assert not np.shares_memory(got, x)
    np.testing.assert_array_equal(h, kept)
    d = act.backward(rng.normal(size=act.out.shape).astype(np.float32))
    g = d[1:]
    act(rng.normal(size=g.shape).astype(np.float32))
    assert not np.shares_memory(act.backward(g), g)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "a layer deepcopied"])
def test_a_copy_carries_the_weights_and_gradients_not_the_buffers_of_the_largest_batch(how):
    """A copy (copy.deepcopy, pickle: a snapshot kept per epoch, multiprocessing, joblib) carried
    every layer's outputs and input gradients at the largest batch it ever ran, and the last batch:
    a 38 KB model pickled to 183 MB after one step at 100,000 rows. The copy makes its own buffers
    at its first forward, and computes what the original does."""
    import copy
    import pickle

    m = nb.Sequential(nb.Linear(8, 64, seed=0), nb.ReLU(), nb.Linear(64, 3, seed=1))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20_000, 8)).astype(np.float32), rng.integers(0, 3, 20_000)
    loss_fn = nb.SoftmaxCrossEntropy()
    loss_fn(m(x), y)
    m.backward(loss_fn.backward())
    m(x[:3])  # the buffers stay the first rows of the largest (Layer._buffer)
    twin = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)),
            "a layer deepcopied": lambda m: nb.Sequential([copy.deepcopy(layer) for layer in m])}[how](m)
    weights = sum(p.data.nbytes + p.grad.nbytes for p in m.parameters())
    held = sum(a.nbytes for layer in twin for a in vars(layer).values() if isinstance(a, np.ndarray))
    assert held == weights
    for p, q in zip(m.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    with pytest.raises(ValueError, match="backward called before forward"):
        twin.backward(np.ones((3, 3), np.float32))  # no forward of its own yet: nothing to backpropagate
    np.testing.assert_array_equal(twin(x[:5]), m(x[:5]))
    loss_fn(m(x[:5]), y[:5])
    m.backward(loss_fn.backward())
    twin_loss = nb.SoftmaxCrossEntropy()
    twin_loss(twin(x[:5]), y[:5])
    twin.backward(twin_loss.backward())
    for p, q in zip(m.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
