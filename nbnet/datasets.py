"""Datasets: load(name_or_path) -> (x_train, y_train, x_test, y_test).

x is float32 (N, D), y is int64 (N,). Images are scaled to [0, 1] and flattened.

Everything read from disk is validated before it reaches a kernel: IDX magic numbers and declared
sizes against the bytes present, label type and range, NaN/Inf, x/y lengths, empty files. Every
problem is a ValueError with a one-line message naming the file.
"""

import gzip
import hashlib
import os
import urllib.error
import urllib.request

import numpy as np

from .model import read_npz

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


def split(x, y, test_split, seed):
    """Shuffle with `seed` and cut off the last `test_split` fraction as the test set."""
    if not 0 < test_split < 1:
        raise ValueError(f"test_split must be in (0, 1), got {test_split}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_split)))
    if n_test >= len(x):
        raise ValueError(f"test_split {test_split} leaves no training rows out of {len(x)}")
    tr, te = order[:-n_test], order[-n_test:]
    return x[tr], y[tr], x[te], y[te]


# ---------------------------------------------------------------------------------------------
# IDX files


def read_idx(path, ndim=None):
    """The array in an IDX file (gzipped or not: told apart by the gzip magic, not the name)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return parse_idx(raw, path, ndim)


def parse_idx(raw, source="IDX data", ndim=None):
    if len(raw) < 4:
        raise ValueError(f"{source}: too short for an IDX file ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{source}: not an IDX file (magic bytes {raw[:4].hex()})")
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    nd = raw[3]
    if ndim is not None and nd != ndim:
        raise ValueError(f"{source}: expected an IDX file with {ndim} dimensions, found {nd}")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise ValueError(f"{source}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", nd, 4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    present = len(raw) - header
    if present != expected:
        what = "truncated" if present < expected else "has trailing bytes"
        raise ValueError(
            f"{source}: {what}: header declares shape {shape} ({expected} bytes of data), "
            f"found {present} bytes"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def images_to_features(images, source):
    """(N, rows, cols) uint8 images -> (N, rows*cols) float32 in [0, 1]."""
    if images.ndim < 2:
        raise ValueError(f"{source}: expected images with at least 2 dimensions, got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{source}: holds no images")
    if images.dtype != np.uint8:
        raise ValueError(f"{source}: expected unsigned-byte images, got {images.dtype}")
    return (images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255)).astype(np.float32)


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


def load_idx_dataset(name, data_dir, download=False):
    data_dir = os.fspath(data_dir)
    found = find_idx(name, data_dir)
    if len(found) < len(IDX_FILES):
        if not download:
            missing = [base for role, base in IDX_FILES if role not in found]
            raise ValueError(
                f"{name}: {missing[0]}[.gz] not found in {data_dir} "
                f"(point --data-dir at the folder with the four IDX files, or pass --download)"
            )
        fetch(name, data_dir)
        found = find_idx(name, data_dir)
    x_train = images_to_features(read_idx(found["train_images"], 3), found["train_images"])
    y_train = _idx_labels(found["train_labels"])
    x_test = images_to_features(read_idx(found["test_images"], 3), found["test_images"])
    y_test = _idx_labels(found["test_labels"])
    for x, y, xi, yi in ((x_train, y_train, "train_images", "train_labels"), (x_test, y_test, "test_images", "test_labels")):
        if len(x) != len(y):
            raise ValueError(f"{name}: {found[xi]} has {len(x)} images but {found[yi]} has {len(y)} labels")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"{name}: train images have {x_train.shape[1]} pixels, test images {x_test.shape[1]}")
    return x_train, y_train, x_test, y_test


def _idx_labels(path):
    y = read_idx(path, 1)
    if y.dtype != np.uint8:
        raise ValueError(f"{path}: expected unsigned-byte labels, got {y.dtype}")
    if len(y) == 0:
        raise ValueError(f"{path}: holds no labels")
    return y.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Download


def fetch(name, data_dir, mirrors=None, md5=None, timeout=30):
    """Fetch the missing .gz files of `name` into data_dir, trying each mirror in turn and keeping
    a file only if its md5 matches. Written to a temporary name, then renamed: no torn files."""
    mirrors = MIRRORS[name] if mirrors is None else mirrors
    md5 = MD5[name] if md5 is None else md5
    os.makedirs(data_dir, exist_ok=True)
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
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    data = r.read()
            except (urllib.error.URLError, OSError, ValueError) as e:
                problems.append(f"{url}: {getattr(e, 'reason', e)}")
                continue
            digest = hashlib.md5(data).hexdigest()
            if digest != md5[fname]:
                problems.append(f"{url}: md5 {digest} does not match {md5[fname]}")
                continue
            tmp = dest + ".part"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
            break
        else:
            raise ValueError(f"{name}: could not download {fname}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# User files: .npz (x, y) and .csv (label first)


TARGETS = ("labels", "values", "binary")


def check_xy(x, y, source, targets="labels"):
    """Validate features and targets; returns (float32 x, y). targets: "labels" (class labels,
    (N,) int64 out), "values" (regression: finite reals, (N,) or (N, D), float64 out), "binary"
    (yes/no labels or probabilities in [0, 1], (N,) or (N, L), float64 out)."""
    if targets != "labels":
        return _check_x_values(x, y, source, targets)
    if x.ndim != 2:
        raise ValueError(f"{source}: x must be 2-D (N, D), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{source}: holds no data (x has shape {x.shape})")
    if y.ndim != 1:
        raise ValueError(f"{source}: y must be 1-D (N,), got shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{source}: x has {len(x)} rows but y has {len(y)} labels")
    x = check_features(x, source)
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{source}: labels must be whole numbers")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{source}: labels must be integers, got {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"{source}: label {y.min()} is negative (labels are 0 .. classes-1)")
    return x, y.astype(np.int64)


def _check_x_values(x, y, source, targets):
    if x.ndim != 2:
        raise ValueError(f"{source}: x must be 2-D (N, D), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{source}: holds no data (x has shape {x.shape})")
    if y.ndim not in (1, 2) or len(y) != len(x) or (y.ndim == 2 and y.shape[1] == 0):
        raise ValueError(f"{source}: y must be (N,) or (N, D) with N = {len(x)} rows, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_) or np.iscomplexobj(y):
        raise ValueError(f"{source}: targets must be real numbers, got {y.dtype}")
    x = check_features(x, source)
    y = y.astype(np.float64)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{source}: targets hold NaN or Inf")
    if targets == "binary" and (y.min() < 0 or y.max() > 1):
        raise ValueError(f"{source}: binary targets must lie in [0, 1], found {y.min() if y.min() < 0 else y.max()}")
    return x, y


def check_features(x, source):
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise ValueError(f"{source}: x must be real numbers, got {x.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x32)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{source}: x has {x[row, col]} at row {row}, column {col} "
            "(NaN/Inf, or too large for float32, are not allowed)"
        )
    return x32


def read_npz_xy(path, need_y=True):
    arrays = read_npz(path)
    for key in ("x", "y") if need_y else ("x",):
        if key not in arrays:
            raise ValueError(f"{path}: no array {key!r} (found {sorted(arrays) or 'none'})")
    return arrays["x"], arrays.get("y")


def read_csv(path):
    """A numeric CSV as a 2-D float64 array; one header line of non-numbers is skipped."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    if lines:
        try:
            [float(v) for v in lines[0].split(",")]
        except ValueError:
            lines = lines[1:]  # a header
    if not lines:
        raise ValueError(f"{path}: holds no data rows")
    width = lines[0].count(",") + 1
    out = np.empty((len(lines), width), np.float64)
    for i, line in enumerate(lines):
        fields = line.split(",")
        if len(fields) != width:
            raise ValueError(f"{path}: row {i + 1} has {len(fields)} columns, the first has {width}")
        try:
            out[i] = [float(v) for v in fields]
        except ValueError:
            raise ValueError(f"{path}: row {i + 1} holds a value that is not a number") from None
    return out


def load_file(path, targets="labels"):
    """(x, y) from a user's .npz (arrays x, y) or .csv (label in the first column); targets as
    check_xy's (a .csv holds one target column: multi-output targets need a .npz)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    if path.endswith(".npz"):
        x, y = read_npz_xy(path)
    elif path.endswith(".csv"):
        table = read_csv(path)
        if table.shape[1] < 2:
            raise ValueError(f"{path}: needs a label column and at least one feature column")
        x, y = table[:, 1:], table[:, 0]
    else:
        raise ValueError(f"{path}: unknown file type (use .npz with x and y, or .csv with the label first)")
    return check_xy(np.asarray(x), np.asarray(y), path, targets)


def load_inputs(path):
    """Features without labels, for prediction: .npz (x), .csv (all columns), or IDX images."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    if path.endswith(".npz"):
        x, _ = read_npz_xy(path, need_y=False)
        x = np.asarray(x)
        if x.ndim == 3:  # a stack of images
            x = x.reshape(x.shape[0], -1)
    elif path.endswith(".csv"):
        x = read_csv(path)
    else:
        images = read_idx(path)
        return images_to_features(images, path)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{path}: x must be a non-empty 2-D array (N, D), got shape {x.shape}")
    return check_features(x, path)


def load(name, data_dir=None, test_split=0.2, seed=0, download=False, *, val_split=None, targets="labels"):
    """`spiral` (embedded, generated), `mnist`, `fashion-mnist` (four IDX files in data_dir), or a
    path to a .npz (x, y) / .csv (label first) file, split into train and test by test_split
    (shuffled with seed). `val_split` is test_split's old name, still accepted here; a validation
    set is carved from the training rows by nbnet.train.split_validation. targets: what y holds,
    as check_xy's; "values" and "binary" only for files (the built-in sets are class labels)."""
    if val_split is not None:
        test_split = val_split
    if targets not in TARGETS:
        raise ValueError(f"unknown targets {targets!r} (use {', '.join(TARGETS)})")
    name = os.fspath(name)
    if targets != "labels" and (name == "spiral" or name in IMAGE_DATASETS):
        raise ValueError(f"{name} has class labels: regression or binary targets need your own .npz or .csv file")
    if name == "spiral":
        x, y = spiral()
        return split(x, y, test_split, seed)
    if name in IMAGE_DATASETS:
        return load_idx_dataset(name, data_dir or default_data_dir(name), download=download)
    if name.endswith((".npz", ".csv")):
        x, y = load_file(name, targets)
        return split(x, y, test_split, seed)
    raise ValueError(
        f"unknown dataset {name!r} (use spiral, mnist, fashion-mnist, or a .npz/.csv file)"
    )
