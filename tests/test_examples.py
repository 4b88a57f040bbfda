"""Every example runs, with tiny settings, in a fresh Python, and says what it should.

Each test checks the exit code and the numbers the example prints, so an example that crashes, or
that still runs but no longer learns, fails here. MNIST examples skip when the data are absent.
"""

import importlib.util
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_linux

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NBNET_DATA_DIR") or REPO.parent / "shared" / "data")
HAVE_CLI = importlib.util.find_spec("nbnet.cli") is not None
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
NO_CLI = "nbnet.cli is not there yet (the CLI and the IDX/CSV loaders arrive with it)"


def run_example(name, *args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def percent(pattern, text):
    """The last percentage that `pattern` (with one group) matches, as a fraction."""
    found = re.findall(pattern, text)
    assert found, f"no match for {pattern!r} in:\n{text}"
    return float(found[-1]) / 100


def test_xor(tmp_path):
    out = run_example("xor.py", "--steps", 300, cwd=tmp_path)
    assert re.search(r"one hidden layer: loss \S+, 4/4 correct", out), out
    assert not re.search(r"no hidden layer: loss \S+, 4/4 correct", out), out


def test_spiral(tmp_path):
    png = tmp_path / "regions.png"
    out = run_example("spiral.py", "--epochs", 5, "--out", png, cwd=tmp_path)
    assert percent(r"test accuracy ([\d.]+)%", out) > 0.9
    if HAVE_MATPLOTLIB:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "no picture" in out


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed")
def test_spiral_writes_the_picture_under_the_name_it_was_given(tmp_path):
    """matplotlib appends ".png" to a name without an extension: --out regions wrote regions.png
    and said "saved to regions"."""
    out = run_example("spiral.py", "--epochs", 1, "--out", "regions", cwd=tmp_path)
    assert "saved to regions\n" in out, out
    assert [p.name for p in tmp_path.iterdir()] == ["regions"]
    assert (tmp_path / "regions").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_custom_csv_api(tmp_path):
    out = run_example("custom_csv.py", "--api-only", "--rows", 600, "--epochs", 10,
                      "--workdir", tmp_path, cwd=tmp_path)
    assert (tmp_path / "rings.csv").exists()
    assert percent(r"API: test accuracy ([\d.]+)%", out) > 0.8


@pytest.mark.skipif(not HAVE_CLI, reason=NO_CLI)
def test_custom_csv_cli(tmp_path):
    out = run_example("custom_csv.py", "--rows", 600, "--epochs", 10, "--workdir", tmp_path,
                      cwd=tmp_path)
    assert (tmp_path / "rings_model.npz").exists()
    assert percent(r"CLI: accuracy ([\d.]+)%", out) > 0.8
    assert percent(r"API: test accuracy ([\d.]+)%", out) > 0.8


@pytest.mark.skipif(not HAVE_CLI, reason=NO_CLI)
@pytest.mark.parametrize("script, folder, min_accuracy", [
    ("mnist.py", "mnist", 0.75),
    ("fashion_mnist.py", "fashion-mnist", 0.6),
])
def test_mnist_examples(tmp_path, script, folder, min_accuracy):
    data_dir = DATA / folder
    if not (data_dir / "train-images-idx3-ubyte.gz").exists() and not (
        data_dir / "train-images-idx3-ubyte"
    ).exists():
        pytest.skip(f"no {folder} data in {data_dir} (set NBNET_DATA_DIR)")
    out = run_example(script, "--epochs", 1, "--limit", 2000, "--data-dir", data_dir,
                      "--save", tmp_path / "model.npz", cwd=tmp_path)
    assert percent(r"test accuracy ([\d.]+)%", out) > min_accuracy
    assert "confusion matrix" in out and "most confused" in out
    assert (tmp_path / "model.npz").exists()


def test_mnist_never_saves_over_its_own_data(tmp_path):
    """--save naming one of the IDX files it trains on replaced those images with the model."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    idx = {"train-images-idx3-ubyte": np.zeros((20, 28, 28), np.uint8),
           "train-labels-idx1-ubyte": np.arange(20, dtype=np.uint8) % 10,
           "t10k-images-idx3-ubyte": np.zeros((10, 28, 28), np.uint8),
           "t10k-labels-idx1-ubyte": np.arange(10, dtype=np.uint8)}
    for name, arr in idx.items():
        (data_dir / name).write_bytes(bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
                                      + arr.tobytes())
    images = data_dir / "train-images-idx3-ubyte"
    before = images.read_bytes()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(REPO / "examples" / "mnist.py"), "--epochs", "1",
                           "--data-dir", str(data_dir), "--save", str(images)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "it would be overwritten" in done.stderr, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert images.read_bytes() == before


README_PRELUDE = """
import nbnet as nb
_load = nb.datasets.load
def _tiny_load(name, data_dir=None, **kw):  # the README's code on fewer images, from our data dir
    x, y, xt, yt = _load(name, data_dir={data_dir!r}, **kw)
    return x[:{rows}], y[:{rows}], xt[:{rows}], yt[:{rows}]
nb.datasets.load = _tiny_load
"""


@pytest.mark.skipif(not HAVE_CLI, reason=NO_CLI)
def test_readme_python_example(tmp_path):
    """The README's first Python block runs as written (on fewer images) and learns."""
    if not (DATA / "mnist").is_dir():
        pytest.skip(f"no mnist data in {DATA / 'mnist'} (set NBNET_DATA_DIR)")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    script = tmp_path / "readme_example.py"
    script.write_text(README_PRELUDE.format(data_dir=str(DATA / "mnist"), rows=2000) + code, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert percent(r"test accuracy ([\d.]+)%", done.stdout) > 0.8
    assert (tmp_path / "model.npz").exists()


@pytest.mark.skipif(not HAVE_CLI, reason=NO_CLI)
def test_readme_python_blocks_run_one_after_another(tmp_path):
    """Every ```python block of the README, in order, as one script (each continues the one
    before): a block using a name no block defines (the PyTorch block's `np`) fails here. Only the
    README's placeholders for the user's own arrays, x_new and x, come from outside; the
    scikit-learn block runs where scikit-learn is installed."""
    if not (DATA / "mnist").is_dir():
        pytest.skip(f"no mnist data in {DATA / 'mnist'} (set NBNET_DATA_DIR)")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    # Top-level blocks: one indented in a list item is a fragment of the text around it
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
    assert len(blocks) >= 4, "the README's Python blocks were not found"
    if importlib.util.find_spec("sklearn") is None:
        blocks = [b for b in blocks if "sklearn" not in b]
    # The user's arrays: bound without binding `np`, which the README must import itself.
    placeholders = "import numpy as _numpy\nx_new = x = _numpy.zeros((3, 784), _numpy.float32)\n"
    script = tmp_path / "readme_blocks.py"
    script.write_text(README_PRELUDE.format(data_dir=str(DATA / "mnist"), rows=1000) + placeholders
                      + "\n".join(blocks), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name, args, says", [
    ("xor.py", ["--steps", 0], "--steps must be at least 1"),
    ("xor.py", ["--lr", -1], "--lr must be a finite number"),
    ("xor.py", ["--lr", "1e38", "--steps", 50], "Error: training diverged"),  # printed 'loss nan, 2/4 correct'
    ("spiral.py", ["--epochs", -1], "--epochs must be at least 1"),
    pytest.param("spiral.py", ["--epochs", 1, "--out", "/proc/spiral.png"], "Error: cannot write /proc/spiral.png",
                 marks=needs_linux("/proc")),
    ("spiral.py", ["--epochs", 1, "--out", "regions.foo"], "matplotlib cannot write .foo files"),
    ("custom_csv.py", ["--api-only", "--epochs", 0], "--epochs must be at least 1"),
    ("custom_csv.py", ["--api-only", "--rows", 0], "--rows must be at least 10"),
    pytest.param("custom_csv.py", ["--api-only", "--workdir", "/proc/nbnet-rings"], "Error: cannot create --workdir",
                 marks=needs_linux("/proc")),
    ("mnist.py", ["--epochs", 0], "--epochs must be at least 1"),
    ("mnist.py", ["--limit", -5], "--limit must be at least 1"),
    ("mnist.py", ["--batch-size", 0], "--batch-size must be at least 1"),
    ("mpi_train.py", ["--epochs", -1], "--epochs must be at least 1"),
])
def test_bad_arguments_give_one_error_not_a_traceback(tmp_path, name, args, says):
    """Zero or negative counts crashed after the work (UnboundLocalError on a loss never computed,
    ZeroDivisionError) or, for --limit -5, trained on all but 5 images; an unwritable output was a
    traceback once the training was done."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(REPO / "examples" / name), *map(str, args)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and says in done.stderr, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())  # nothing left in the current directory


@needs_linux("/proc")
def test_mnist_save_to_an_unwritable_path_is_one_error(tmp_path):
    data_dir = DATA / "mnist"
    if not (data_dir / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no mnist data in {data_dir} (set NBNET_DATA_DIR)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(REPO / "examples" / "mnist.py"), "--epochs", "1", "--limit", "256",
                           "--data-dir", str(data_dir), "--save", "/proc/nbnet-model.npz"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Error: cannot save /proc/nbnet-model.npz" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_mnist_without_its_data_says_how_to_get_them_once(tmp_path):
    """The library's error for missing files says to pass --download, which the example did not
    take ('unrecognized arguments: --download'), and the example added a second hint of its own."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    example = [sys.executable, str(REPO / "examples" / "mnist.py")]
    done = subprocess.run([*example, "--epochs", "1", "--data-dir", str(empty)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "--download" in done.stderr, done.stderr
    assert done.stderr.count("point --data-dir") == 1 and "Traceback" not in done.stderr, done.stderr
    # the option it names is taken (checked up to the first error, before any download)
    done = subprocess.run([*example, "--download", "--epochs", "0", "--data-dir", str(empty)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "--epochs must be at least 1" in done.stderr, done.stderr
