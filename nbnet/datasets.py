"""Datasets: load(name_or_path) -> (x_train, y_train, x_test, y_test).

x is float32 (N, D), y is int64 (N,). Images are scaled to [0, 1] and flattened.

Everything read from disk is validated before it reaches a kernel: IDX magic numbers and declared
sizes against the bytes present, label type and range, NaN/Inf, x/y lengths, empty files. Every
problem is a ValueError with a one-line message naming the file. Files are opened through
nbnet.files (regular files only, within a size budget); IDX data is decompressed as a stream and
never past the size its header declares.
"""

import bisect
import gzip
import hashlib
import io
import math
import os
import re
import struct
import time
import zlib
from array import array

import numpy as np

from .files import (
    check_creatable, check_memory, described, file_in_the_way, load_bytes, memory_budget, open_input, read_bounded,
    read_input_bytes, read_npy, read_npz, write_atomic,
)

# Labels are class indices 0 .. MAX_CLASSES-1: a larger one is a mistake, not a class (it would
# size the output layer).
MAX_CLASSES = 1 << 16

# The four files of an MNIST-layout dataset, as (role, file name without .gz).
IDX_FILES = (
    ("train_images", "train-images-idx3-ubyte"),
    ("train_labels", "train-labels-idx1-ubyte"),
    ("test_images", "t10k-images-idx3-ubyte"),
    ("test_labels", "t10k-labels-idx1-ubyte"),
)

# Mirrors tried in order by `download`; md5 sums of the publishers' .gz files (as torchvision has them).
MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
}
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
# Sizes of the publishers' .gz files: a download is cut off past them.
SIZES = {
    "mnist": {
        "train-images-idx3-ubyte.gz": 9912422,
        "train-labels-idx1-ubyte.gz": 28881,
        "t10k-images-idx3-ubyte.gz": 1648877,
        "t10k-labels-idx1-ubyte.gz": 4542,
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": 26421880,
        "train-labels-idx1-ubyte.gz": 29515,
        "t10k-images-idx3-ubyte.gz": 4422102,
        "t10k-labels-idx1-ubyte.gz": 5148,
    },
}
IMAGE_DATASETS = tuple(MIRRORS)

# IDX type byte -> big-endian dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def spiral(points_per_class=1000, classes=3, noise=0.2, seed=0, dtype=np.float32):
    """The classic 2-D spiral: `classes` interleaved arms, not linearly separable (CS231n's)."""
    rng = np.random.default_rng(seed)
    n = points_per_class * classes
    x = np.empty((n, 2), dtype)
    y = np.empty(n, np.int64)
    r = np.linspace(0.0, 1.0, points_per_class)
    for c in range(classes):
        t = np.linspace(c * 4.0, (c + 1) * 4.0, points_per_class) + rng.normal(0, noise, points_per_class)
        rows = slice(c * points_per_class, (c + 1) * points_per_class)
        x[rows, 0] = r * np.sin(t)
        x[rows, 1] = r * np.cos(t)
        y[rows] = c
    return x, y


def split(x, y, test_split, seed, source=None):
    """Shuffle with `seed` and cut off the last `test_split` fraction as the test set. source: the
    file the rows came from, named in the error where they are too few."""
    if not 0 < test_split < 1:
        raise ValueError(f"test_split must be in (0, 1), got {test_split}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_split)))
    if n_test >= len(x):
        raise ValueError(f"{source + ': ' if source else ''}test_split {test_split} leaves no training rows out of "
                         f"{len(x)}" + (" (a file needs at least 2 rows: one to train on, one to test)" if source else ""))
    tr, te = order[:-n_test], order[-n_test:]
    return x[tr], y[tr], x[te], y[te]


# ---------------------------------------------------------------------------------------------
# IDX files


def read_idx(path, ndim=None, into=None):
    """The array in an IDX file (gzipped or not: told apart by the gzip magic, not the name).
    into: the dtype the caller converts it to (float32 pixels, int64 labels), counted in the
    memory the header's shape needs (files.load_bytes) before anything is read."""
    path = os.fspath(path)
    with open_input(path) as f:
        gz = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
        try:
            return _read_idx_stream(stream, path, ndim, into)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            what = "corrupt or truncated gzip data" if gz else "cannot read"
            raise ValueError(f"{path}: {what} ({type(e).__name__}: {' '.join(str(e).split())})") from None


def parse_idx(raw, source="IDX data", ndim=None):
    """The array in the (uncompressed) IDX bytes `raw`."""
    return _read_idx_stream(io.BytesIO(raw), source, ndim)


def _read_idx_stream(f, source, ndim, into=None):
    """Read the header, check it, then read exactly the bytes it declares (plus one, to tell a
    file with trailing data): never more, whatever the stream holds (a gzip bomb stops here)."""
    head = f.read(4)
    if len(head) < 4:
        raise ValueError(f"{source}: too short for an IDX file ({len(head)} bytes)")
    if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
        raise ValueError(f"{source}: not an IDX file (magic bytes {head.hex()})")
    dtype = np.dtype(_IDX_TYPES[head[2]])
    nd = head[3]
    if ndim is not None and nd != ndim:
        raise ValueError(f"{source}: expected an IDX file with {ndim} dimensions, found {nd}")
    dims = f.read(4 * nd)
    if len(dims) < 4 * nd:
        raise ValueError(f"{source}: truncated IDX header ({4 + len(dims)} bytes)")
    shape = struct.unpack(f">{nd}I", dims)
    expected = math.prod(shape) * dtype.itemsize
    check_memory(load_bytes(shape, dtype, into), f"{source}: header declares {described(shape, dtype, into)}")
    data = read_bounded(f, expected)  # not f.read(expected + 1): that allocates what a header says
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        found = f"{len(data)} bytes" if len(data) < expected else "more"
        raise ValueError(
            f"{source}: {what}: header declares shape {shape} ({expected} bytes of data), found {found}"
        )
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def images_to_features(images, source, dtype=np.float32):
    """(N, rows, cols) uint8 images -> (N, rows*cols) in [0, 1], float32 (or `dtype`)."""
    if images.ndim < 2:
        raise ValueError(f"{source}: expected images with at least 2 dimensions, got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{source}: holds no images")
    if images[0].size == 0:  # else (N, 0) features, refused only by the first layer, naming no file
        raise ValueError(f"{source}: holds images of no pixels (shape {images.shape})")
    if images.dtype != np.uint8:
        raise ValueError(f"{source}: expected unsigned-byte images, got {images.dtype}")
    dtype = np.dtype(dtype).type
    return images.reshape(images.shape[0], -1).astype(dtype) / dtype(255)


def find_idx(name, data_dir):
    """{role: path} of the four files in data_dir (`.gz` preferred); missing roles are absent."""
    found = {}
    for role, base in IDX_FILES:
        for candidate in (base + ".gz", base):
            p = os.path.join(data_dir, candidate)
            if os.path.isfile(p):
                found[role] = p
                break
    return found


def default_data_dir(name):
    """$NBNET_DATA_DIR/<name> when set, else ~/.cache/nbnet/<name>."""
    root = os.environ.get("NBNET_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nbnet")
    return os.path.join(root, name)


def load_idx_dataset(name, data_dir, download=False, dtype=np.float32, test_only=False):
    """(x_train, y_train, x_test, y_test) from the four IDX files in data_dir. test_only: the test
    set alone, (None, None, x_test, y_test), whose two files are all that must be there (what
    `nbnet evaluate` scores: it read, and required, the 60,000 training images too)."""
    data_dir = os.fspath(data_dir)
    roles = [role for role, _ in IDX_FILES if not test_only or role.startswith("test")]
    found = find_idx(name, data_dir)
    if any(role not in found for role in roles):
        if not download:
            missing = [base for role, base in IDX_FILES if role in roles and role not in found]
            # --data-dir data/ for data/mnist/: the default is $NBNET_DATA_DIR/<name>, a folder a level down
            inner = os.path.join(data_dir, name)
            there = f"; {inner} has them" if all(role in find_idx(name, inner) for role in roles) else ""
            raise ValueError(
                f"{name}: {missing[0]}[.gz] not found in {data_dir}{there} "
                f"(point --data-dir, data_dir= in Python, at the folder with the four IDX files, or pass --download, download=True)"
            )
        fetch(name, data_dir)
        found = find_idx(name, data_dir)
    parts = []
    for split in ("train", "test"):
        if split == "train" and test_only:
            parts += [None, None]
            continue
        xi, yi = f"{split}_images", f"{split}_labels"
        x = images_to_features(read_idx(found[xi], 3, dtype), found[xi], dtype)
        y = _idx_labels(found[yi])
        if len(x) != len(y):
            raise ValueError(f"{name}: {found[xi]} has {len(x)} images but {found[yi]} has {len(y)} labels")
        parts += [x, y]
    x_train, y_train, x_test, y_test = parts
    if x_train is not None and x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"{name}: train images have {x_train.shape[1]} pixels, test images {x_test.shape[1]}")
    return x_train, y_train, x_test, y_test


def _idx_labels(path):
    y = read_idx(path, 1, np.int64)
    if y.dtype != np.uint8:
        raise ValueError(f"{path}: expected unsigned-byte labels, got {y.dtype}")
    if len(y) == 0:
        raise ValueError(f"{path}: holds no labels")
    return y.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Download


def fetch(name, data_dir, mirrors=None, md5=None, sizes=None, timeout=30, deadline=900):
    """Fetch the missing .gz files of `name` into data_dir, trying each mirror in turn and keeping
    a file only if its md5 matches. Each body is cut off past its known size (`SIZES`), and the
    whole fetch must finish within `deadline` seconds (a server sending a byte now and then
    cannot keep it going). Written with write_atomic: no torn files, and no temporary one left."""
    # here, not at the top: they load ssl, some 0.1 s of every `import nbnet` that downloads nothing
    import http.client  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415

    mirrors = MIRRORS[name] if mirrors is None else mirrors
    md5 = MD5[name] if md5 is None else md5
    sizes = SIZES.get(name, {}) if sizes is None else sizes
    end = time.monotonic() + deadline
    _check_writable_folder(name, data_dir)
    have = find_idx(name, data_dir)
    for role, base in IDX_FILES:
        if role in have:
            continue
        fname = base + ".gz"
        dest = os.path.join(data_dir, fname)
        problems = []
        for mirror in mirrors:
            url = mirror + fname
            try:
                data = _download(url, sizes.get(fname, DEFAULT_MAX_DOWNLOAD), end, timeout, deadline)
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
                problems.append(f"{url}: {getattr(e, 'reason', None) or e}")
                continue
            digest = hashlib.md5(data).hexdigest()
            if digest != md5[fname]:
                problems.append(f"{url}: md5 {digest} does not match {md5[fname]}")
                continue
            write_atomic(dest, lambda f, data=data: f.write(data), suffix=".gz")
            break
        else:
            raise ValueError(f"{name}: could not download {fname}: " + "; ".join(problems))


def _check_writable_folder(name, data_dir):
    """Make data_dir, and check that files can be written there, before anything is downloaded:
    a read-only folder failed only at the first write, and a file where the folder should be in
    makedirs' words ("[Errno 17] File exists"), naming neither the data folder nor the way out."""
    try:
        os.makedirs(data_dir, exist_ok=True)
        check_creatable(os.path.join(data_dir, IDX_FILES[0][1] + ".gz"))
    except OSError as e:
        in_the_way = file_in_the_way(os.path.join(os.path.abspath(data_dir), IDX_FILES[0][1]))
        why = f"{in_the_way} is a file" if in_the_way is not None else e.strerror or str(e)
        raise OSError(f"{name}: cannot download into the data folder {data_dir}: {why} "
                      "(choose a folder you can write with --data-dir, data_dir= in Python, or NBNET_DATA_DIR)") from None


DEFAULT_MAX_DOWNLOAD = 64 << 20  # a file of unknown size (not in SIZES)


def _download(url, max_bytes, end, timeout, deadline):
    """The body at `url`: at most `max_bytes` (more is an error), all of it before `end`."""
    import urllib.request  # noqa: PLC0415

    left = end - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"no time left (the download must finish within {deadline:g} s)")
    with urllib.request.urlopen(url, timeout=min(timeout, left)) as r:
        length = r.headers.get("Content-Length") if hasattr(r, "headers") else None
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise ValueError(f"{length} bytes announced, expected at most {max_bytes}")
        read = getattr(r, "read1", r.read)  # read1: what has arrived, so the deadline is checked often
        chunks, got = [], 0
        while True:
            if time.monotonic() > end:
                raise TimeoutError(f"not complete within {deadline:g} s ({got} bytes arrived)")
            chunk = read(min(1 << 16, max_bytes + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            if got > max_bytes:
                raise ValueError(f"more than the expected {max_bytes} bytes")
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
# User files: .npz (x, y) and .csv (label first)


TARGETS = ("labels", "values", "binary")


def is_real(dtype):
    """Booleans, integers or floats. np.issubdtype(timedelta64, np.integer) is True, but its values
    count a unit (s, ms, ...) that the file chooses: not a number to train on."""
    return dtype.kind in "biuf"


class CsvCells:
    """Names an element of a CSV's x or y in an error as the file's row (its line, from 1) and
    column (from 1), as read_csv's own errors do: not as the 0-based indices of the arrays cut
    from its table (a CSV has no x[3, 0]; that was its line 5, column 2 after a header).
    line_of(i): the line of the table's row i; first_x: the column of x[:, 0] in the file."""

    def __init__(self, line_of, first_x):
        self.line_of, self.first_x = line_of, first_x

    def x(self, i, j):
        return f"row {self.line_of(i)}, column {j + self.first_x}"

    def y(self, at):
        return f"row {self.line_of(at[0])}, column 1"  # a CSV's one target column, its first


def _y_at(where, at):
    """An element of y, at index tuple `at`, as an error names it: NumPy's y[i] (counted from 0),
    or where.y's (a CSV's row and column)."""
    return f"y[{', '.join(map(str, at))}]" if where is None else where.y(at)


def check_xy(x, y, source, targets="labels", dtype=np.float32, where=None):
    """Validate features and targets; returns (x as `dtype`, y). targets: "labels" (class labels,
    (N,) int64 out), "values" (regression: finite reals, (N,) or (N, D), float64 out), "binary"
    (yes/no labels or probabilities in [0, 1], (N,) or (N, L), float64 out). Arrays already in
    their dtype and C order come back as they are, not copied. where: None (errors name a value
    x[i, j] or y[i], counted from 0) or a CsvCells (its file's row and column)."""
    if targets != "labels":
        return _check_x_values(x, y, source, targets, dtype, where)
    if x.ndim != 2:
        raise ValueError(f"{source}: x must be 2-D (N, D), got shape {x.shape}{ONE_FEATURE if x.ndim == 1 else ''}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{source}: holds no data (x has shape {x.shape})")
    if y.ndim == 2 and y.shape[1] == 1:  # a column of labels (Keras' and sklearn's habit): the labels of (N,)
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{source}: class labels y must be 1-D (N,), got shape {y.shape}"
            + (" (one-hot rows? save y.argmax(axis=1); several 0/1 labels a row train with --loss bce, "
               "real-valued targets with --loss mse)" if y.ndim == 2 else "")
        )
    if len(x) != len(y):
        raise ValueError(f"{source}: x has {len(x)} rows but y has {len(y)} labels")
    x = check_features(x, source, dtype, where)
    return x, check_labels(y, source, where)


def check_labels(y, source, where=None):
    """Class labels 0 .. MAX_CLASSES-1 (whole numbers, integer or float) as int64: checked before
    the cast, so a huge or fractional label is an error, not a wrapped or truncated class. An
    error names the first bad label's place (where: as check_xy's)."""
    if np.issubdtype(y.dtype, np.floating):
        at = first_where(y, not_whole)  # a block at a time: np.round of all of y and its bools held more than y
        if at is not None:
            raise ValueError(f"{source}: {_y_at(where, at)}: label {y[at]} is not a whole number: labels are class "
                             "numbers 0 .. classes-1; real-valued targets train with --loss mse (in Python: "
                             "loss='mse', and nb.datasets.load(..., targets='values') to read them)")
    elif y.dtype.kind not in "iu":
        names = " (class names must be numbered 0 .. classes-1 first)" if y.dtype.kind in "USO" else ""
        raise ValueError(f"{source}: labels must be integers, got {y.dtype}{names}")
    lo, hi = y.min().item(), y.max().item()  # Python numbers: MAX_CLASSES cast to float16 overflows
    # Which label, only once one is bad: the first in file order (a dtype that holds MAX_CLASSES,
    # as one with a label that large does)
    if lo < 0:
        at = first_where(y, lambda block: block < 0)
        raise ValueError(f"{source}: {_y_at(where, at)}: label {y[at].item():g} is negative "
                         "(labels are 0 .. classes-1)")
    if hi >= MAX_CLASSES:
        at = first_where(y, lambda block: block >= MAX_CLASSES)
        raise ValueError(
            f"{source}: {_y_at(where, at)}: label {y[at].item():g} is too large: labels are class numbers "
            f"0 .. classes-1, at most {MAX_CLASSES - 1}"
        )
    # Native int64 labels (a .npz's) as they are: astype copied them every time (0.48 MB for 60000
    # labels); check_features keeps x so. The one caller, load(), splits them into copies.
    return np.ascontiguousarray(y, dtype=np.int64)


def _check_x_values(x, y, source, targets, dtype, where=None):
    if x.ndim != 2:
        raise ValueError(f"{source}: x must be 2-D (N, D), got shape {x.shape}{ONE_FEATURE if x.ndim == 1 else ''}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{source}: holds no data (x has shape {x.shape})")
    if y.ndim not in (1, 2) or len(y) != len(x) or (y.ndim == 2 and y.shape[1] == 0):
        raise ValueError(f"{source}: y must be (N,) or (N, D) with N = {len(x)} rows, got shape {y.shape}")
    if not is_real(y.dtype):
        raise ValueError(f"{source}: targets must be real numbers, got {y.dtype}")
    x = check_features(x, source, dtype, where)
    y = y.astype(np.float64)
    # Both checks look at a block of rows at a time: a `dtype` copy of all of y and its bools held
    # 3 MB beside 60000 rows of 10 targets (4.8 MB in float64), 5.4 MB as float64.
    at = first_nonfinite(y)
    if at is not None:
        raise ValueError(f"{source}: targets hold NaN or Inf: {_y_at(where, at)} is {y[at]}"
                         + (" (counted from 0)" if where is None else ""))
    # The targets are trained on in `dtype` (the command converts them): one too large for it
    # became Inf there, with NumPy's overflow warning and then an error that named no file.
    with np.errstate(over="ignore"):
        at = first_where(y, lambda block: nonfinite(block.astype(dtype)))
    if at is not None:
        if where is None:
            raise ValueError(f"{source}: target y[{', '.join(map(str, at))}] is {y[at]:g} (counted from 0), "
                             f"too large for {np.dtype(dtype)}")
        raise ValueError(f"{source}: {where.y(at)}: target {y[at]:g} is too large for {np.dtype(dtype)}")
    if targets == "binary" and (y.min() < 0 or y.max() > 1):
        at = first_where(y, lambda block: (block < 0) | (block > 1))
        raise ValueError(f"{source}: {_y_at(where, at)}: binary targets must lie in [0, 1], found {y[at]}")
    return x, y


ONE_FEATURE = " (one feature a row: save x.reshape(-1, 1))"

FINITE_BLOCK = 1 << 20  # bytes of an array np.isfinite looks at at a time


def first_nonfinite(a, block_bytes=FINITE_BLOCK):
    """The index (a tuple) of the first NaN or Inf of `a` in C order, or None. Looked for a block of
    rows at a time: ~np.isfinite of the whole is a bool array of its size (47 MB for MNIST's
    60000 x 784 features, beside the features themselves)."""
    return first_where(a, nonfinite, block_bytes)


def first_where(a, bad, block_bytes=FINITE_BLOCK):
    """The index (a tuple) of the first element of `a` in C order where bad(block), a bool array
    of the block's shape, is True, or None: called on a block of rows at a time, so that its
    temporaries are a block's, not those of all of `a`."""
    if a.ndim == 0:
        return () if bad(a) else None
    row_bytes = a.itemsize * math.prod(a.shape[1:])
    rows = max(1, block_bytes // max(1, row_bytes))
    for lo in range(0, len(a), rows):
        block = a[lo:lo + rows]
        if bad(block).any():  # not kept: the next block's flags would be made beside them
            at = np.argwhere(bad(block))[0]
            return (lo + int(at[0]), *map(int, at[1:]))
    return None


def nonfinite(y):
    """Where `y` is NaN or Inf, for first_where: ~np.isfinite(y) in one bool array."""
    flags = np.isfinite(y)
    return np.logical_not(flags, out=flags)


def not_whole(y):
    """Where float `y` is not a whole number, for first_where: ~np.isfinite(y) | (y != np.round(y)),
    with fewer temporaries (NaN != its round already; Inf == its round)."""
    flags = y != np.round(y)
    flags |= np.isinf(y)
    return flags


def check_features(x, source, dtype=np.float32, where=None):
    """x as a C-contiguous array of `dtype`; NaN, Inf, or a value too large for `dtype`, is an
    error naming the first such value (where: as check_xy's)."""
    dtype = np.dtype(dtype)
    if not is_real(x.dtype):
        raise ValueError(f"{source}: x must be real numbers, got {x.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        xd = np.ascontiguousarray(x, dtype=dtype)
    at = first_nonfinite(xd)
    if at is not None:
        row, col = at
        if where is not None:  # as read_csv's own error for NaN: 'row 5, column 2: nan (...)'
            v = x[row, col]
            raise ValueError(f"{source}: {where.x(row, col)}: "
                             + (f"{v} is too large for {dtype}" if np.isfinite(v) else f"{v} (NaN and Inf are not allowed)"))
        raise ValueError(
            f"{source}: x[{row}, {col}] is {x[row, col]} (counted from 0; NaN/Inf, or too large for {dtype}, "
            "are not allowed)"
        )
    return xd


def read_npz_xy(path, need_y=True, dtype=np.float32):
    # x becomes `dtype`; y int64 labels or float64 targets, 8 bytes a value either way
    arrays = read_npz(path, into={"x": dtype, "y": np.int64} if need_y else {"x": dtype})
    for key in ("x", "y") if need_y else ("x",):
        if key not in arrays:
            raise ValueError(f"{path}: no array {key!r} (found {sorted(arrays) or 'none'}; "
                             f"save them as np.savez(path, {'x=features, y=labels' if need_y else 'x=features'}))")
    return arrays["x"], arrays.get("y")


def _is_number(field):
    try:
        float(field)
    except ValueError:
        return False
    return "_" not in field  # float() takes "1_000"; a CSV number does not


_LINE_END = re.compile(r"\r\n|\r|\n")
_PIECE = 1 << 16  # characters of a row split into fields at a time


def _lines(text, block=1 << 14):
    """(line number from 1, line) of a CSV's text, lines ended by \\n, \\r\\n or \\r (Python's
    universal newlines), split a block of about `block` characters at a time (a list of every
    line would take some 50 bytes per line)."""
    n, start = 0, 0
    while True:
        end = _LINE_END.search(text, start + block)
        part = text[start:] if end is None else text[start:end.end()]
        lines = part.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if end is not None:
            lines.pop()  # the "" after the block's last line end: the next block starts there
        for line in lines:
            n += 1
            yield n, line
        if end is None:
            return
        start = end.end()


def csv_lines(text):
    """The lines of a CSV's text, ended by \\n, \\r\\n or \\r (Python's universal newlines)."""
    return [line for _, line in _lines(text)]


def _pieces(line):
    """`line` cut at commas into pieces of about _PIECE characters: ",".join(pieces) == line, and
    a piece's split(",") gives the next fields of the row."""
    return (line,) if len(line) <= _PIECE else _long_pieces(line)


def _long_pieces(line):
    start = 0
    while len(line) - start > _PIECE:
        cut = line.rfind(",", start, start + _PIECE)
        if cut < 0:
            cut = line.find(",", start + _PIECE)
            if cut < 0:
                break
        yield line[start:cut]
        start = cut + 1
    yield line[start:]


# Header names that say "the label" (case and quotes aside): in a column other than the first, the
# file's label is not where nbnet takes it from, and the first column (a feature) would be trained
# on as the label, silently where its values are whole numbers.
# Not "y": files of points name their coordinates x, y (cluster,x,y trains, the label first).
LABEL_NAMES = frozenset({"label", "labels", "target", "targets", "class"})
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


def _header_name(field):
    return field.strip().strip('"').strip()


def _check_header(path, line, label_first):
    """A header's first column with no name is an index column (pandas' to_csv writes one unless
    index=False; R's write.csv writes its row names so): it was read as the label, or a feature.
    With label_first, a column named like the label, past the first, is an error too."""
    fields = (f for piece in _pieces(line) for f in piece.split(","))  # not a list: a header may be wide
    first = _header_name(next(fields))
    if first in ("", "Unnamed: 0"):
        raise ValueError(
            f"{path}: the header's first column has no name: an index column (pandas' to_csv(index=False) "
            f"and R's write.csv(row.names=FALSE) write none)? Remove it: the first column of a .csv is "
            + ("its label" if label_first else "a feature")
        )
    if label_first and first.lower() not in LABEL_NAMES:
        for col, field in enumerate(fields, 2):
            name = _header_name(field)
            if name.lower() in LABEL_NAMES:
                raise ValueError(
                    f"{path}: column {col} of the header is {name[:40]!r}, but the label (the target) of a .csv "
                    f"is its first column, here {first[:40]!r}: move that column first (a feature of that name: rename it)"
                )


def _not_a_number(path, n, col, field, first_row, label_first, header=False):
    """The error for a field of row n (column col, both from 1) that is not a number, saying why
    where a common export habit explains it. first_row: the line of the file's first row; header:
    whether that row was read as a header (said where the habit mangled it too, so that its row
    is not a number either: the error is then about row 2)."""
    shown = field.strip()
    why, mangled = [], True  # mangled: a habit that makes a whole row, the first too, no number
    if shown.lower() in MISSING:
        why.append("empty, or a missing value: nbnet fills in none; drop or fill such rows, or the empty column")
        mangled = False
    elif ";" in shown or "\t" in shown or _space_separated(shown):
        sep = "';'" if ";" in shown else "a tab" if "\t" in shown else "spaces"
        why.append(f"the columns seem separated by {sep}: nbnet reads comma-separated values with '.' as the "
                   "decimal point")
    elif shown.startswith('"'):
        why.append("quoted fields are not read: save the numbers without quotes")
    else:
        mangled = False
        if n == first_row:
            why.append("a first row is a header only when none of its fields is a number")
        if label_first and col == 1:
            why.append("the first column, the label, must be a number: number class names 0 .. classes-1 first")
    if mangled and header and n != first_row:
        why.append(f"row {first_row} was read as a header, as none of its fields is a number")
    why = f" ({'; '.join(why)})" if why else ""
    return ValueError(f"{path}: row {n}, column {col}: {shown[:40]!r} is not a number{why}")


def _space_separated(field):
    """Whether a field that is not a number is numbers between spaces: a row of a file whose
    columns are separated by spaces (np.savetxt's default, many .txt and .dat files)."""
    parts = field.split()
    return len(parts) > 1 and all(_is_number(p) for p in parts)


def read_csv(path, label_first=False):
    """A numeric CSV as a 2-D float64 array. UTF-8, with or without a byte-order mark. The first
    row is a header when none of its fields is a number; every other field must be a finite
    number: anything else is an error naming its row and column (counted from 1, as a
    spreadsheet shows them). label_first: the file's first column is its label (the header is
    checked for a label column elsewhere; _check_header).

    The text is parsed a line, and a piece of a line, at a time: a list of all its lines (or of
    all the fields of a long line) takes some 50 bytes per string, 10 to 50 times the text. What
    is held is the text and the table (at most 4 times the text: a field takes 2 bytes or more)."""
    return _read_csv(path, label_first)[0]


def _read_csv(path, label_first=False):
    """read_csv's (table, line_of): line_of(i) is the file's line (from 1) of the table's row i,
    for errors found in the table later (CsvCells): blank lines are skipped, a header may lead."""
    path = os.fspath(path)
    raw = read_input_bytes(path, limit=memory_budget() // 4)  # parsing takes a few times the text
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        # what a file named .csv that is no text at all most often is, by its magic bytes
        kind = ("gzip-compressed: decompress it first" if raw[:2] == b"\x1f\x8b" else
                "a zip file (an Excel workbook?): save it as CSV UTF-8" if raw[:4] == b"PK\x03\x04" else
                f"not UTF-8 text (byte {e.start}); save it as UTF-8 (Excel: CSV UTF-8)")
        raise ValueError(f"{path}: {kind}") from None
    del raw

    # Lines end at \n, \r\n or \r, as Python's text files read them: str.splitlines() also ends
    # one at \x0b, \x0c, \x1c-\x1e, \x85 and U+2028, so such a character inside a row made two
    # rows of it, silently (now the row's field is not a number: an error naming it).
    def nonblank():
        return ((n, line) for n, line in _lines(text) if line and not line.isspace())

    first = next(nonblank(), None)
    header = first is not None and not any(_is_number(v) for piece in _pieces(first[1]) for v in piece.split(","))
    if header:
        _check_header(path, first[1], label_first)

    def data_rows():
        rows = nonblank()
        if header:
            next(rows)
        yield from rows

    # Where a row's line is not the line after the previous row's (the first row; after blank
    # lines): row i's line is that of the last such row at or before it, plus the rows between.
    # Two int arrays, not a line number per row (a Python int each).
    gap_rows, gap_lines, last = array("q"), array("q"), -1
    count, width, uneven = 0, None, None
    for n, line in data_rows():  # the table's size, before it is allocated
        if n != last + 1:
            gap_rows.append(count)
            gap_lines.append(n)
        last = n
        columns = line.count(",") + 1
        if width is None:
            width = columns
            if header and first[1].lstrip().startswith("#") and first[1].count(",") + 1 != columns:
                raise ValueError(
                    f"{path}: row {first[0]} was read as a header (none of its fields is a number) of "
                    f"{first[1].count(',') + 1} column(s), the rows below it have {columns}: "
                    f"{first[1].strip()[:40]!r} looks like a comment line, which nbnet does not skip: remove it"
                )
        elif columns != width:
            uneven = f"{path}: row {n} has {columns} columns, the first row has {width}"
            if '"' in line:
                uneven += " (quoted fields are not read: save the numbers without quotes)"
            break  # said once the rows above it are read: the first problem in the file is the one said
        count += 1
    if not count:
        raise ValueError(f"{path}: holds no data rows")
    out = np.empty((count, width), np.float64)
    for i, (n, line) in zip(range(count), data_rows()):
        col = 0
        for piece in _pieces(line):
            fields = piece.split(",")
            try:
                if "_" in piece:
                    raise ValueError
                out[i, col:col + len(fields)] = [float(v) for v in fields]
            except ValueError:
                bad = next(c for c, v in enumerate(fields) if not _is_number(v))
                raise _not_a_number(path, n, col + bad + 1, fields[bad], first[0], label_first, header) from None
            col += len(fields)
    if uneven:
        raise ValueError(uneven)

    def line_of(i):
        k = bisect.bisect_right(gap_rows, i) - 1
        return gap_lines[k] + i - gap_rows[k]

    at = first_nonfinite(out)  # a block at a time: bools of the whole table were an eighth of it
    if at is not None:
        i, col = at
        raise ValueError(f"{path}: row {line_of(i)}, column {col + 1}: {out[i, col]} (NaN and Inf are not allowed)")
    return out, line_of


def flat_samples(x):
    """A stack of images (N, H, W) or (N, H, W, C) as (N, features), as IDX images are read: for
    training and prediction alike (prediction flattened (N, H, W) while training refused it)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:])) if x.ndim >= 3 else x  # not -1: N may be 0


def load_file(path, targets="labels", dtype=np.float32):
    """(x, y) from a user's .npz (arrays x, y) or .csv (label in the first column); targets as
    check_xy's (a .csv holds one target column: multi-output targets need a .npz)."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        x, y = read_npz_xy(path, dtype=dtype)
        x = flat_samples(x)
    elif path.endswith(".csv"):
        table, line_of = _read_csv(path, label_first=True)
        if table.shape[1] < 2:
            raise ValueError(f"{path}: needs a label column and at least one feature column")
        # errors name the file's row and column, as read_csv's do, not x[i, j] of this cut
        return check_xy(table[:, 1:], table[:, 0], path, targets, dtype, CsvCells(line_of, 2))
    else:
        raise ValueError(f"{path}: unknown file type (use .npz with x and y, or .csv with the label first)")
    return check_xy(np.asarray(x), np.asarray(y), path, targets, dtype)


def load_inputs(path, dtype=np.float32):
    """Features without labels, for prediction, as `dtype`: .npz (x), .npy (the array np.save
    wrote), .csv (all columns), or IDX images. One row of the result per row (or image) of the
    file, in order."""
    path = os.fspath(path)
    if path.endswith((".npz", ".npy")):
        x = read_npy(path, into=dtype) if path.endswith(".npy") else read_npz_xy(path, False, dtype)[0]
        x = flat_samples(np.asarray(x))
    elif path.endswith(".csv"):
        x, line_of = _read_csv(path)
        return check_features(x, path, dtype, CsvCells(line_of, 1))  # read_csv's table: 2-D, rows > 0
    else:
        images = read_idx(path, into=dtype)
        return images_to_features(images, path, dtype)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{path}: x must be a non-empty 2-D array (N, D), got shape {x.shape}")
    return check_features(x, path, dtype)


def load(name, data_dir=None, test_split=0.2, seed=0, download=False, *, val_split=None, targets="labels",
         dtype=np.float32):
    """`spiral` (embedded, generated), `mnist`, `fashion-mnist` (four IDX files in data_dir), or a
    path to a .npz (x, y) / .csv (label first) file, split into train and test by test_split
    (shuffled with seed). `val_split` is test_split's old name, still accepted here; a validation
    set is carved from the training rows by nbnet.train.split_validation. targets: what y holds,
    as check_xy's; "values" and "binary" only for files (the built-in sets are class labels).
    Features come as `dtype` (float32 or float64), converted once from what the file holds."""
    # As Linear checks its dtype: np.dtype(None) is float64, and an integer dtype truncated every
    # feature (spiral's all to 0) without a word.
    try:
        kind = None if dtype is None else np.dtype(dtype).type
    except TypeError:
        kind = None
    if kind not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    dtype = kind
    if val_split is not None:
        test_split = val_split
    if targets not in TARGETS:
        raise ValueError(f"unknown targets {targets!r} (use {', '.join(TARGETS)})")
    name = os.fspath(name)
    if targets != "labels" and (name == "spiral" or name in IMAGE_DATASETS):
        raise ValueError(f"{name} has class labels: regression or binary targets need your own .npz or .csv file")
    if name == "spiral":
        x, y = spiral(dtype=dtype)
        return split(x, y, test_split, seed)
    if name in IMAGE_DATASETS:
        return load_idx_dataset(name, data_dir or default_data_dir(name), download=download, dtype=dtype)
    if name.endswith((".npz", ".csv")):
        x, y = load_file(name, targets, dtype)
        return split(x, y, test_split, seed, source=name)
    raise ValueError(f"unknown dataset {name!r} (use spiral, mnist, fashion-mnist, or a .npz/.csv file"
                     f"{_other_file_hint(name)})")


def _other_file_hint(name):
    """What to do with a file of a kind `load` does not read, by its name's ending."""
    lower = name.lower()
    if lower.endswith((".npz", ".csv")):
        return f"; the ending is case-sensitive: rename it to end in {lower[-4:]}"
    if lower.endswith((".gz", ".zip", ".bz2", ".xz")):
        return "; decompress it first"
    if lower.endswith(".npy"):
        return "; a .npy holds one array: save features and labels together, np.savez(path, x=features, y=labels)"
    if lower.endswith((".tsv", ".txt", ".xls", ".xlsx", ".ods")):
        return "; save it as comma-separated values in a .csv, label first"
    return ""
