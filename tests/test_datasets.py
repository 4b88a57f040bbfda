"""Dataset loading: IDX (gz or not), --download from a local mirror, npz/csv, and every validation."""

import functools
import gzip
import hashlib
import math
import http.server
import os
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_posix

from nbnet import datasets

REPO = Path(__file__).resolve().parent.parent


def real_data_dir(name):
    root = os.environ.get("NBNET_DATA_DIR") or str(REPO.parent / "shared" / "data")
    folder = os.path.join(root, name)
    if not os.path.isfile(os.path.join(folder, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"no {name} data in {root}")
    return folder


def idx_bytes(arr):
    arr = np.asarray(arr, np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path, arr, gz=True):
    raw = idx_bytes(arr)
    Path(path).write_bytes(gzip.compress(raw) if gz else raw)


def make_mnist(folder, n_train=20, n_test=10, gz=True, seed=0):
    """A tiny MNIST-layout dataset (4x4 images); returns the arrays it wrote."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 4, 4)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 4, 4)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for base, arr in arrays.items():
        write_idx(folder / (base + (".gz" if gz else "")), arr, gz)
    return arrays


# --------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_loads_scaled_and_flattened(tmp_path, gz):
    arrays = make_mnist(tmp_path, gz=gz)
    x_tr, y_tr, x_te, y_te = datasets.load("mnist", data_dir=tmp_path)
    assert x_tr.shape == (20, 16) and x_te.shape == (10, 16)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    np.testing.assert_array_equal(x_tr, arrays["train-images-idx3-ubyte"].reshape(20, 16).astype(np.float32) / 255)
    np.testing.assert_array_equal(y_te, arrays["t10k-labels-idx1-ubyte"])
    assert 0 <= x_tr.min() and x_tr.max() <= 1


def _corrupt(tmp_path, fname, raw):
    make_mnist(tmp_path, gz=False)
    (tmp_path / fname).write_bytes(raw)


@pytest.mark.parametrize(
    "fname, make, match",
    [
        ("train-images-idx3-ubyte", lambda: b"\x50\x4b\x03\x04" + bytes(100), "not an IDX file"),
        ("train-images-idx3-ubyte", lambda: idx_bytes(np.zeros((20, 4, 4)))[:-5], "truncated"),
        ("train-images-idx3-ubyte", lambda: idx_bytes(np.zeros((20, 4, 4))) + b"xx", "trailing bytes"),
        ("train-images-idx3-ubyte", lambda: bytes([0, 0, 8, 3, 0]), "truncated IDX header"),
        ("train-images-idx3-ubyte", lambda: b"", "too short"),
        ("train-images-idx3-ubyte", lambda: idx_bytes(np.zeros(20)), "3 dimensions"),
        ("train-labels-idx1-ubyte", lambda: idx_bytes(np.zeros(19)), "20 images but .* 19 labels"),
        ("t10k-labels-idx1-ubyte", lambda: idx_bytes(np.zeros(0)), "no labels"),
        ("t10k-images-idx3-ubyte", lambda: idx_bytes(np.zeros((0, 4, 4))), "t10k-images-idx3-ubyte: holds no images"),
        # (N, 0) features: `nbnet train` then failed in Linear, naming no file
        ("train-images-idx3-ubyte", lambda: idx_bytes(np.zeros((20, 0, 0))), r"idx3-ubyte: holds images of no pixels"),
        ("t10k-images-idx3-ubyte", lambda: idx_bytes(np.zeros((10, 4, 0))), r"idx3-ubyte: holds images of no pixels"),
        ("train-images-idx3-ubyte", lambda: gzip.compress(idx_bytes(np.zeros((20, 4, 4))))[:-10], "gzip"),
    ],
)
def test_bad_idx_files_are_named_errors(tmp_path, fname, make, match):
    _corrupt(tmp_path, fname, make())
    with pytest.raises(ValueError, match=match) as e:
        datasets.load("mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(e.value) or "mnist" in str(e.value)


def test_missing_idx_file_suggests_download(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\[.gz\] not found .*data_dir= in Python.*--download, download=True"):
        datasets.load("fashion-mnist", data_dir=tmp_path)


def test_the_test_set_alone_needs_only_its_two_files(tmp_path):
    """`nbnet evaluate` scores the test set, yet read (and required) the training images too: a
    folder of the two t10k files was "train-images-idx3-ubyte[.gz] not found"."""
    arrays = make_mnist(tmp_path / "full")
    both = datasets.load_idx_dataset("mnist", tmp_path / "full")
    alone = datasets.load_idx_dataset("mnist", tmp_path / "full", test_only=True)
    assert alone[:2] == (None, None)
    np.testing.assert_array_equal(alone[2], both[2])
    np.testing.assert_array_equal(alone[3], arrays["t10k-labels-idx1-ubyte"])
    for base in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / "full" / base).unlink()
    np.testing.assert_array_equal(datasets.load_idx_dataset("mnist", tmp_path / "full", test_only=True)[2], both[2])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\[.gz\] not found"):
        datasets.load_idx_dataset("mnist", tmp_path / "full")
    (tmp_path / "full" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\[.gz\] not found"):
        datasets.load_idx_dataset("mnist", tmp_path / "full", test_only=True)


def test_a_data_dir_one_level_up_says_where_the_files_are(tmp_path):
    """data_dir="data" for data/mnist/ (the default is $NBNET_DATA_DIR/<name>, a level down) was
    "not found in data" with no word of the folder that has them."""
    make_mnist(tmp_path / "mnist")
    with pytest.raises(ValueError, match=rf"not found in {tmp_path}; {tmp_path / 'mnist'} has them \(point --data-dir"):
        datasets.load("mnist", data_dir=tmp_path)
    with pytest.raises(ValueError, match=rf"not found in {tmp_path} \(point --data-dir"):
        datasets.load("fashion-mnist", data_dir=tmp_path)  # no fashion-mnist/ there: no such hint


# --------------------------------------------------------------------------------------------- download


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server (127.0.0.1) serving a generated dataset; yields (url, md5 dict, arrays)."""
    served = tmp_path / "served"
    arrays = make_mnist(served, gz=True, seed=1)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", md5, arrays
    finally:
        server.shutdown()
        server.server_close()


def test_download_falls_back_to_the_next_mirror_and_checks_md5(tmp_path, mirror, monkeypatch):
    url, md5, arrays = mirror
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [url + "missing/", url])  # first mirror: 404s
    monkeypatch.setitem(datasets.MD5, "mnist", md5)
    dest = tmp_path / "dl"
    x_tr, y_tr, _, _ = datasets.load("mnist", data_dir=dest, download=True)
    np.testing.assert_array_equal(y_tr, arrays["train-labels-idx1-ubyte"])
    assert sorted(p.name for p in dest.iterdir()) == sorted(md5)  # no temporary files left


def test_download_fetches_only_the_missing_files(tmp_path, mirror, monkeypatch):
    """A file already there (here the test labels, uncompressed, as a user unpacked them) is
    neither fetched again nor replaced."""
    url, md5, arrays = mirror
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [url])
    monkeypatch.setitem(datasets.MD5, "mnist", md5)
    dest = tmp_path / "dl"
    dest.mkdir()
    raw = gzip.decompress((tmp_path / "served" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (dest / "t10k-labels-idx1-ubyte").write_bytes(raw)
    *_, y_te = datasets.load("mnist", data_dir=dest, download=True)
    np.testing.assert_array_equal(y_te, arrays["t10k-labels-idx1-ubyte"])
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [name for name in md5 if name != "t10k-labels-idx1-ubyte.gz"] + ["t10k-labels-idx1-ubyte"])


def test_a_download_with_no_time_left_says_so(tmp_path, mirror):
    """The deadline is the whole fetch's: a file whose turn comes after it is not tried (a timeout
    of 0 or less is no socket timeout)."""
    url, md5, _ = mirror
    with pytest.raises(ValueError, match=r"no time left \(the download must finish within 0 s\)"):
        datasets.fetch("mnist", tmp_path / "dl", mirrors=[url], md5=md5, deadline=0)


def test_download_rejects_a_bad_checksum_and_keeps_nothing(tmp_path, mirror, monkeypatch):
    url, md5, _ = mirror
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [url])
    monkeypatch.setitem(datasets.MD5, "mnist", {**md5, "train-labels-idx1-ubyte.gz": "0" * 32})
    dest = tmp_path / "dl"
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz: .*md5 .* does not match"):
        datasets.load("mnist", data_dir=dest, download=True)
    assert not (dest / "train-labels-idx1-ubyte.gz").exists()
    assert not any(p.name.endswith(".part") for p in dest.iterdir())


def test_a_download_stopped_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    """Ctrl-C (or a full disk) between writing a downloaded file and renaming it left
    train-images-idx3-ubyte.gz.part in the data folder for good: it was written with a plain open,
    not write_atomic (whose temporary files are removed on failure, or by the next save there)."""
    body = b"downloaded"
    monkeypatch.setattr(datasets, "_download", lambda *args: body)
    md5 = {base + ".gz": hashlib.md5(body).hexdigest() for _, base in datasets.IDX_FILES}

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    dest = tmp_path / "dl"
    with pytest.raises(KeyboardInterrupt):
        datasets.fetch("mnist", dest, mirrors=["http://127.0.0.1:9/"], md5=md5)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("where", ["a file", "under a file",
                                   pytest.param("read-only", marks=needs_posix("Unix folder modes and os.geteuid"))])
def test_a_data_folder_that_cannot_be_written_is_named_before_anything_downloads(tmp_path, monkeypatch, where):
    """--download into a --data-dir (or ~/.cache/nbnet/...) that is a file, is under one, or is
    read-only: makedirs' "[Errno 17] File exists: '...'" or "[Errno 20] Not a directory", naming
    neither the data folder nor a way out; a read-only folder failed only after the first file
    had downloaded."""
    def no_download(*args):
        raise AssertionError("downloaded into a folder it cannot write")

    monkeypatch.setattr(datasets, "_download", no_download)
    (tmp_path / "f").write_text("")
    dest = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "mnist", "read-only": tmp_path / "ro"}[where]
    why = f"{tmp_path / 'f'} is a file"
    if where == "read-only":
        dest.mkdir()
        dest.chmod(0o555)
        why = "Permission denied"
        if os.geteuid() == 0:  # root writes anyway: as the file system would refuse a user
            def refused(*args, dir=None, **kwargs):
                raise PermissionError(13, "Permission denied", str(dir))

            monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(OSError) as e:
        datasets.load("mnist", data_dir=dest, download=True)
    assert str(e.value) == (f"mnist: cannot download into the data folder {dest}: {why} "
                            "(choose a folder you can write with --data-dir, data_dir= in Python, or NBNET_DATA_DIR)")


def test_shipped_checksums_match_the_shared_data():
    for name in ("mnist", "fashion-mnist"):
        folder = real_data_dir(name)
        for fname, digest in datasets.MD5[name].items():
            assert hashlib.md5(Path(folder, fname).read_bytes()).hexdigest() == digest


# --------------------------------------------------------------------------------------------- npz / csv


def test_npz_and_csv_load_and_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    y = rng.integers(0, 4, 50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    (tmp_path / "d.csv").write_text("label,a,b,c\n" + "".join(
        f"{yi},{a!r},{b!r},{c!r}\n" for yi, (a, b, c) in zip(y, x.tolist())))
    for name in ("d.npz", "d.csv"):
        x_tr, y_tr, x_te, y_te = datasets.load(str(tmp_path / name), val_split=0.2, seed=3)
        assert x_tr.shape == (40, 3) and x_te.shape == (10, 3) and x_tr.dtype == np.float32
        assert y_tr.dtype == np.int64
        np.testing.assert_array_equal(np.sort(np.concatenate([y_tr, y_te])), np.sort(y))
    a = datasets.load(str(tmp_path / "d.npz"), seed=3)
    b = datasets.load(str(tmp_path / "d.csv"), seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x": np.zeros((4, 2))}, "no array 'y'"),
        ({"x": np.array([[0.0, np.nan]] * 4), "y": np.zeros(4, int)}, "NaN/Inf"),
        ({"x": np.array([[0.0, np.inf]] * 4), "y": np.zeros(4, int)}, "NaN/Inf"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 0])}, r"d\.npz: y\[2\]: label -1 is negative"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1.5, 1, 0])}, r"d\.npz: y\[1\]: label 1.5 is not a whole number"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 70000, 0])}, r"d\.npz: y\[2\]: label 70000 is too large"),
        # the first bad label, not the smallest or the largest
        ({"x": np.zeros((4, 2)), "y": np.array([0, -1, -5, 0])}, r"d\.npz: y\[1\]: label -1 is negative"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 65536, 70000, 0])}, r"d\.npz: y\[1\]: label 65536 is too large"),
        ({"x": np.zeros((4, 2)), "y": np.array(["a", "b", "c", "d"])}, "integers"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3, int)}, "4 rows but y has 3"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0, int)}, "no data"),
        ({"x": np.zeros(4), "y": np.zeros(4, int)}, "2-D"),
    ],
)
def test_bad_npz_contents(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        datasets.load(str(tmp_path / "d.npz"))


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "no data rows"),
        ("label,a\n", "no data rows"),
        ("0,1.0,2.0\n1,1.0\n", "row 2 has 2 columns"),
        ("0,1.0,2.0\n1,x,2\n", "row 2, column 2: 'x' is not a number"),
        ("0,1.0,nan\n1,1.0,2.0\n", "row 1, column 3: nan .NaN and Inf"),
        ("\n0,1.0,2.0\n\n1,1.0,1e999\n", "row 4, column 3: inf"),  # rows count blank lines, as an editor does
        ("1,0.5,0.5,O.5\n0,1,1,1\n", "row 1, column 4: 'O.5' is not a number"),  # a typo is no header
        ("0,1_000\n", "row 1, column 2: '1_000' is not a number"),
        ("label,a\n0,x\n", "row 2, column 2"),
        ("0\n1\n", "label column and at least one feature"),
    ],
)
def test_bad_csv_contents(tmp_path, text, match):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        datasets.load(str(tmp_path / "d.csv"))


@pytest.mark.parametrize(
    "row, targets, message",
    [
        ("0.5,2", "labels", "label 0.5 is not a whole number: labels are class numbers 0 .. classes-1; "
                            "real-valued targets train with --loss mse (in Python: loss='mse', and "
                            "nb.datasets.load(..., targets='values') to read them)"),
        ("-2,2", "labels", "label -2 is negative (labels are 0 .. classes-1)"),
        ("70000,1", "labels", "label 70000 is too large: labels are class numbers 0 .. classes-1, at most 65535"),
        ("1,1e39", "labels", "1e+39 is too large for float32"),
        ("1,nan", "labels", "nan (NaN and Inf are not allowed)"),
        ("1e39,2", "values", "target 1e+39 is too large for float32"),
        ("2,2", "binary", "binary targets must lie in [0, 1], found 2.0"),
    ],
)
def test_csv_value_errors_name_the_files_row_and_column(tmp_path, row, targets, message):
    """A bad value of a .csv is named as read_csv names one it cannot read: the file's row (its
    line, blank lines and the header counted) and column, both from 1. A fractional label was
    'row 3' (its index in the table), 1e39 'x[3, 0]' (column 2 of the file as 0 of x) and a
    negative or too large label had no row at all, all of them line 5, after a header."""
    import re

    path = tmp_path / "d.csv"
    for text, line in ((f"label,a\n1,0\n0,1\n1,1\n{row}\n1,1\n", 5),
                       (f"\nlabel,a\n\n1,0\n0,1\n\n\n1,1\n{row}\n\n1,1\n", 9),  # blank lines count
                       (f"1,0\n0,1\n{row}\n", 3)):  # no header
        path.write_text(text)
        col = 2 if row.startswith("1,") else 1
        with pytest.raises(ValueError, match="^" + re.escape(f"{path}: row {line}, column {col}: {message}") + "$"):
            datasets.load(str(path), targets=targets)


def test_csv_inputs_name_the_files_row_and_column(tmp_path):
    """Prediction's .csv (features only) names a value too large for the model's dtype by its row
    and column in the file, not as x[1, 1] (counted from 0, its blank line not counted)."""
    (tmp_path / "p.csv").write_text("1,2\n\n3,1e39\n")
    with pytest.raises(ValueError, match=r"p\.csv: row 3, column 2: 1e\+39 is too large for float32$"):
        datasets.load_inputs(str(tmp_path / "p.csv"))


def test_a_feature_csvs_first_column_is_not_called_a_label(tmp_path):
    """Prediction's .csv holds features alone: a word in its first column is not a number, and no
    label ('the first column, the label, must be a number' is a training file's hint)."""
    (tmp_path / "p.csv").write_text("0.5,1\ncat,2\n")
    with pytest.raises(ValueError, match=r"p\.csv: row 2, column 1: 'cat' is not a number$"):
        datasets.load_inputs(str(tmp_path / "p.csv"))


def test_csv_values_are_checked_for_nan_a_block_of_rows_at_a_time(tmp_path):
    """read_csv took np.isfinite of the whole table: bools of an eighth of it (47 MB for MNIST's
    60000 x 785 as float64) beside the text and the table. The field named is still the first
    bad one, whatever block it lies in."""
    import tracemalloc

    text = (",".join(["0"] * 500) + "\n") * 1000  # 4 MB as float64, in 4 blocks
    (tmp_path / "d.csv").write_text(text)
    tracemalloc.start()
    try:
        table = datasets.read_csv(tmp_path / "d.csv")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - table.nbytes - len(text) < 300_000, peak  # was 0.5 MB more, the bools of the table
    row = text[:1000]
    (tmp_path / "d.csv").write_text(text + "0,inf" + row[3:] + "nan" + row[1:] + row[:-2] + "nan\n")
    with pytest.raises(ValueError, match=r"d\.csv: row 1001, column 2: inf \(NaN and Inf are not allowed\)"):
        datasets.read_csv(tmp_path / "d.csv")


def test_labels_already_native_int64_are_not_copied():
    """check_labels copies only labels it converts (another integer or float type, the other byte
    order, a strided view): int64 labels were copied whole on every load."""
    y = np.array([0, 2, 1, 2], np.int64)
    assert datasets.check_labels(y, "f") is y
    for other in (y.astype(np.int32), y.astype(np.float64), y.astype(">i8"), np.repeat(y, 2)[::2]):
        got = datasets.check_labels(other, "f")
        assert got.dtype == np.int64 and got.dtype.isnative and got.flags.c_contiguous
        assert not np.shares_memory(got, other) and got.tolist() == [0, 2, 1, 2]


def test_corrupt_npz_and_unknown_names(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        datasets.load(str(tmp_path / "d.npz"))
    with pytest.raises(ValueError, match="no such file"):
        datasets.load(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load("cifar")


@pytest.mark.parametrize("dtype", [None, np.int32, np.uint8, np.float16, "bogus"])
def test_load_takes_float32_or_float64_only(tmp_path, dtype):
    """dtype was not checked: np.int32 truncated spiral's features to 0 and an .npz's to 0 or 1,
    float16 and None (NumPy's float64) came back as such, and "bogus" read as a corrupt file."""
    make_mnist(tmp_path / "mnist")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((10, 3)), y=np.arange(10) % 2)
    for name in ("spiral", "mnist", str(tmp_path / "d.npz")):
        with pytest.raises(ValueError, match="dtype must be float32 or float64"):
            datasets.load(name, data_dir=tmp_path / "mnist", dtype=dtype)


def test_load_inputs_for_prediction(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.ones((3, 2)))
    (tmp_path / "x.csv").write_text("1,2\n3,4\n")
    write_idx(tmp_path / "imgs.gz", np.full((2, 4, 4), 255))
    assert datasets.load_inputs(tmp_path / "x.npz").shape == (3, 2)
    np.testing.assert_array_equal(datasets.load_inputs(tmp_path / "x.csv"), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(datasets.load_inputs(tmp_path / "imgs.gz"), np.ones((2, 16), np.float32))


# --------------------------------------------------------------------------------------------- real data


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_dataset_shapes_dtypes_ranges(name):
    x_tr, y_tr, x_te, y_te = datasets.load(name, data_dir=real_data_dir(name))
    assert x_tr.shape == (60000, 784) and x_te.shape == (10000, 784)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert x_tr.min() == 0 and x_tr.max() == 1
    assert set(np.unique(y_tr)) == set(range(10)) and set(np.unique(y_te)) == set(range(10))


# --------------------------------------------------------------------------------------------- mutation-found gaps


def test_split_sizes_at_the_edges():
    x, y = np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10)
    # a fraction that rounds to no test row still holds one out (never a test set of every row)
    x_tr, y_tr, x_te, y_te = datasets.split(x, y, 0.01, seed=0)
    assert (len(x_tr), len(x_te)) == (9, 1)
    np.testing.assert_array_equal(np.sort(np.concatenate([y_tr, y_te])), y)
    # a fraction that takes every row leaves no training rows: refused, not an empty training set
    with pytest.raises(ValueError, match="leaves no training rows"):
        datasets.split(x[:2], y[:2], 0.9, seed=0)
    for bad in (0, 0.0, 1, -0.1):
        with pytest.raises(ValueError, match=r"test_split must be in \(0, 1\)"):
            datasets.load("spiral", test_split=bad)


def test_idx_of_other_element_types_is_refused(tmp_path):
    """Images and labels are unsigned bytes; an IDX file of int16 (type 0x0B) is refused by name,
    and read_idx gives its values in native byte order (the file's are big-endian)."""
    make_mnist(tmp_path, gz=False)
    values = np.array([[[1, 258], [-3, 1000]]] * 20, ">i2")
    raw = bytes([0, 0, 0x0B, 3]) + struct.pack(">3I", *values.shape) + values.tobytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw)
    got = datasets.read_idx(tmp_path / "train-images-idx3-ubyte")
    assert got.dtype == np.dtype("=i2")
    np.testing.assert_array_equal(got, values.astype(np.int16))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: expected unsigned-byte images, got int16"):
        datasets.load("mnist", data_dir=tmp_path)
    make_mnist(tmp_path, gz=False)
    labels = np.arange(20, dtype=">i2")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 0x0B, 1]) + struct.pack(">I", 20) + labels.tobytes())
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: expected unsigned-byte labels, got int16"):
        datasets.load("mnist", data_dir=tmp_path)


def test_idx_train_and_test_images_of_other_sizes_are_refused(tmp_path):
    make_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 5, 5)), gz=False)
    with pytest.raises(ValueError, match="train images have 16 pixels, test images 25"):
        datasets.load("mnist", data_dir=tmp_path)


@pytest.mark.parametrize(
    "arrays, targets, match",
    [
        ({"x": np.zeros((4, 2)), "y": np.array([True, False, True, False])}, "labels", "labels must be integers, got bool"),
        ({"x": np.zeros((4, 0)), "y": np.zeros(4, int)}, "labels", r"holds no data \(x has shape \(4, 0\)\)"),
        ({"x": np.zeros((4, 2)), "y": np.zeros((4, 0))}, "values", r"y must be \(N,\) or \(N, D\)"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 1.2, 0])}, "binary", r"must lie in \[0, 1\], found 1.2"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -0.5, 0])}, "binary", r"must lie in \[0, 1\], found -0.5"),
    ],
)
def test_bad_npz_targets(tmp_path, arrays, targets, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        datasets.load(str(tmp_path / "d.npz"), targets=targets)


@pytest.mark.parametrize("name", ["spiral", "mnist"])
@pytest.mark.parametrize("targets", ["values", "binary"])
def test_built_in_sets_have_class_labels_only(tmp_path, name, targets):
    make_mnist(tmp_path)
    with pytest.raises(ValueError, match=f"{name} has class labels"):
        datasets.load(name, data_dir=tmp_path, targets=targets)


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_load_inputs_refuses_no_rows(tmp_path, suffix):
    path = tmp_path / ("x" + suffix)
    (np.savez(path, x=np.zeros((0, 3))) if suffix == ".npz" else np.save(path, np.zeros((0, 3))))
    with pytest.raises(ValueError, match=r"non-empty 2-D array \(N, D\), got shape \(0, 3\)"):
        datasets.load_inputs(path)


# --------------------------------------------------------------------------------------------- files users export


def xy_rows(n=6):
    return [(i % 3, 0.5 * i, 1.0 - i) for i in range(n)]


def test_an_index_column_of_pandas_or_r_is_an_error_not_the_label(tmp_path):
    """pandas' to_csv writes its index first under an empty name (R's write.csv its row names under
    ""): that index 0 .. N-1 was trained on as the label, N classes, the real label a feature."""
    body = "".join(f"{i},{y},{a},{b}\n" for i, (y, a, b) in enumerate(xy_rows()))
    for header in (",label,a,b\n", '"","label","a","b"\n', "Unnamed: 0,label,a,b\n"):
        (tmp_path / "d.csv").write_text(header + body)
        with pytest.raises(ValueError, match=r"d\.csv: the header's first column has no name: an index column"):
            datasets.load(str(tmp_path / "d.csv"))
        with pytest.raises(ValueError, match="first column of a .csv is a feature"):
            datasets.load_inputs(tmp_path / "d.csv")


@pytest.mark.parametrize("header", ["a,b,label", "a,b,Class", 'x,"Labels"', "a,Target,b"])
def test_a_header_naming_the_label_past_the_first_column_is_an_error(tmp_path, header):
    """The label is a .csv's first column: a file with it last trained on its first feature as the
    label, silently where that feature holds whole numbers (counts, pixels, years)."""
    width = header.count(",") + 1
    (tmp_path / "d.csv").write_text(header + "\n" + "".join(",".join([str(i % 3)] * width) + "\n" for i in range(6)))
    with pytest.raises(ValueError, match=r"d\.csv: column \d of the header is .*, but the label .* is its first column"):
        datasets.load(str(tmp_path / "d.csv"))
    datasets.load_inputs(tmp_path / "d.csv")  # prediction inputs have no label column to misplace


@pytest.mark.parametrize("header", ["label,a,b", "Y,a,b", "price,a,b", "a,b,c", "cluster,x,y", "#,a,b"])
def test_a_header_with_the_label_first_or_named_otherwise_loads(tmp_path, header):
    (tmp_path / "d.csv").write_text(header + "\n" + "".join(f"{y},{a},{b}\n" for y, a, b in xy_rows()))
    x, y, x_te, y_te = datasets.load(str(tmp_path / "d.csv"), val_split=0.5)
    assert sorted(np.r_[y, y_te].tolist()) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "text, match",
    [
        ("label;a;b\n0;0,5;1\n1;1,5;2\n", r"row 2, column 1: '0;0' is not a number \(the columns seem separated by ';'"),
        ("0\t0.5\t1\n1\t1.5\t2\n", r"row 2, column 1: .* \(the columns seem separated by a tab"),
        ("0,0.5,NA\n1,1.5,2\n", r"row 1, column 3: 'NA' is not a number \(empty, or a missing value"),
        ("0,0.5,1\n1,,2\n", r"row 2, column 2: '' is not a number \(empty, or a missing value"),
        ('"label","a"\n"0","0.5"\n', r"row 2, column 1: '\"0\"' is not a number \(quoted fields are not read"),
        ('0,0.5\n1,"1,5"\n', r"row 2 has 3 columns, the first row has 2 \(quoted fields are not read"),
        ("cat,0.5\ndog,1.5\n", r"row 1, column 1: 'cat' .*header only when none .*; the first column, the label, must be a number"),
        ("label,a\ncat,0.5\n", r"row 2, column 1: 'cat' is not a number \(the first column, the label, must be a number"),
        # np.savetxt's default: no hint was given, where ';' and a tab got one
        ("1 -0.535669 0.361595\n0 1.2 0.5\n", r"row 2, column 1: '0 1\.2 0\.5' is not a number \(the columns seem "
         r"separated by spaces: nbnet reads comma-separated values with '\.' as the decimal point; row 1 was read as "
         r"a header, as none of its fields is a number\)$"),
        # the first row, as mangled, was taken as a header, silently: why the error is about row 2
        ("0;0,5;1\n1;1,5;2\n", r"row 2, column 1: '1;1' is not a number \(the columns seem separated by ';': .*; "
         r"row 1 was read as a header, as none of its fields is a number\)$"),
        ('"0","0.5"\n"1","1.5"\n', r"row 2, column 1: '\"1\"' is not a number \(quoted fields are not read: save the "
         r"numbers without quotes; row 1 was read as a header, as none of its fields is a number\)$"),
        ("label,a\n0,\n", r"row 2, column 2: '' is not a number \(empty, or a missing value: nbnet fills in none; "
         r"drop or fill such rows, or the empty column\)$"),  # a header of its own: no word of it
        # a word in a header file's data is not a number, and nothing more is said of it
        ("label,a\n0,x\n", r"row 2, column 2: 'x' is not a number$"),
        # no header was read: no word of one
        ('0,0.5\n1,"1.5"\n', r"row 2, column 2: '\"1\.5\"' is not a number \(quoted fields are not read: save the "
         r"numbers without quotes\)$"),
        # a label of words and a number is no space-separated row; two columns between spaces are
        ("label,a\nclass 1,0.5\n", r"row 2, column 1: 'class 1' is not a number \(the first column, the label, must "),
        ("0 0.5\n1 1.5\n", r"row 2, column 1: '1 1\.5' is not a number \(the columns seem separated by spaces"),
        # a comment line was a one-column header, silently, the rows below it trained on
        ("# exported from R\n0,0.5\n1,1.5\n", r"d\.csv: row 1 was read as a header \(none of its fields is a number\) "
         r"of 1 column\(s\), the rows below it have 2: '# exported from R' looks like a comment line, which nbnet "
         r"does not skip: remove it$"),
        ("  # exported from R\n0,0.5\n1,1.5\n", r"d\.csv: row 1 was read as a header .* '# exported from R' looks "
         r"like a comment line"),  # indented
    ],
)
def test_csv_export_habits_are_named_in_the_error(tmp_path, text, match):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        datasets.load(str(tmp_path / "d.csv"))


def test_excel_csv_with_bom_crlf_and_a_blank_last_line_loads(tmp_path):
    rows = "\r\n".join(f"{y},{a},{b}" for y, a, b in xy_rows())
    (tmp_path / "d.csv").write_bytes(("\ufefflabel,a,b\r\n" + rows + "\r\n\r\n").encode())
    x, y, x_te, y_te = datasets.load(str(tmp_path / "d.csv"), val_split=0.5)
    assert x.shape == (3, 2) and sorted(np.r_[y, y_te].tolist()) == [0, 0, 1, 1, 2, 2]


def test_npz_image_stacks_train_as_they_predict(tmp_path):
    """load_inputs flattened an (N, H, W) x for predict, while load refused it for training."""
    x = np.random.default_rng(0).random((6, 4, 4, 3)).astype(np.float32)
    for shape in ((6, 4, 4), (6, 4, 4, 3)):
        np.savez(tmp_path / "d.npz", x=x[..., 0] if len(shape) == 3 else x, y=np.arange(6) % 2)
        x_tr, _, x_te, _ = datasets.load(str(tmp_path / "d.npz"), val_split=0.5)
        assert x_tr.shape == (3, math.prod(shape[1:])) == x_te.shape
        assert datasets.load_inputs(tmp_path / "d.npz").shape == (6, math.prod(shape[1:]))


def test_npz_labels_as_a_column_load(tmp_path):
    """y of shape (N, 1) (Keras', sklearn's habit) was refused: "y must be 1-D"."""
    y = np.arange(6) % 3
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 2)), y=y[:, None])
    _, y_tr, _, y_te = datasets.load(str(tmp_path / "d.npz"), val_split=0.5)
    assert y_tr.shape == (3,) and sorted(np.r_[y_tr, y_te].tolist()) == sorted(y.tolist())


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"X": np.zeros((4, 2)), "y": np.zeros(4, int)}, r"no array 'x' \(found \['X', 'y'\]; save them as np.savez"),
        ({"x": np.zeros(4), "y": np.zeros(4, int)}, r"got shape \(4,\) \(one feature a row: save x.reshape"),
        ({"x": np.zeros((4, 2)), "y": np.array(list("abab"))}, r"got <U1 \(class names must be numbered"),
        ({"x": np.zeros((4, 2)), "y": np.array([0.5, 1, 2, 3])}, r"not a whole number: .*train with --loss mse"),
        ({"x": np.zeros((3, 2)), "y": np.eye(3)}, r"got shape \(3, 3\) \(one-hot rows\? save y.argmax\(axis=1\)"),
    ],
)
def test_npz_mistakes_say_what_to_do(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        datasets.load(str(tmp_path / "d.npz"))


@pytest.mark.parametrize("name, match", [("d.CSV", "case-sensitive"), ("d.csv.gz", "decompress it first"),
                                         ("d.tsv", "comma-separated values"), ("d.npy", r"np.savez\(path, x=")])
def test_files_of_other_kinds_say_what_is_accepted(tmp_path, name, match):
    (tmp_path / name).write_text("0,1\n1,2\n")
    with pytest.raises(ValueError, match=match):
        datasets.load(str(tmp_path / name))


def test_a_file_of_one_row_is_named(tmp_path):
    (tmp_path / "d.csv").write_text("0,1,2\n")
    with pytest.raises(ValueError, match=r"d\.csv: test_split 0.2 leaves no training rows out of 1 \(a file needs"):
        datasets.load(str(tmp_path / "d.csv"))


def test_a_csv_that_is_compressed_or_a_workbook_says_so(tmp_path):
    """A gzip or an .xlsx named .csv said only "not UTF-8 text (byte 1)"."""
    import zipfile

    (tmp_path / "g.csv").write_bytes(gzip.compress(b"0,1\n1,2\n" * 50))
    with pytest.raises(ValueError, match=r"g\.csv: gzip-compressed: decompress it first"):
        datasets.load(str(tmp_path / "g.csv"))
    with zipfile.ZipFile(tmp_path / "w.csv", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("xl/workbook.xml", "<workbook>" * 100)
    with pytest.raises(ValueError, match=r"w\.csv: a zip file \(an Excel workbook\?\)"):
        datasets.load(str(tmp_path / "w.csv"))
    (tmp_path / "l.csv").write_bytes("caf\xe9,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"l\.csv: not UTF-8 text \(byte 3\); save it as UTF-8"):
        datasets.load(str(tmp_path / "l.csv"))
