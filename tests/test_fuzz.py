"""Fuzz tests (hypothesis) for the three parsers of hostile files: IDX, CSV and checkpoints.

The property is the same for each: any input either parses into something valid or raises a
ValueError (the one-line `Error:` of the command line): never another exception, a hang or a
huge allocation. CI runs a few seconds of examples (profile "ci"); a long run, for minutes:

    NBNET_FUZZ=long NBNET_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_fuzz.py -s

which prints the number of cases each test ran.
"""

import gzip
import io
import json
import os
import struct
import zipfile

import click
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import nbnet as nb  # noqa: E402
from nbnet import cli as cli_module  # noqa: E402
from nbnet import datasets  # noqa: E402
from nbnet.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from nbnet.train import TrainState, build_model, make_optimizer  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None, database=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=int(os.environ.get("NBNET_FUZZ_EXAMPLES", "5000")), deadline=None,
                          database=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("NBNET_FUZZ", "ci"))

COUNTS = {}


def counted(name):
    COUNTS[name] = COUNTS.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    if os.environ.get("NBNET_FUZZ") == "long":
        print("\nfuzz cases run:", json.dumps(COUNTS))


# --------------------------------------------------------------------------------------------- IDX


def idx(type_byte, shape, payload):
    return bytes([0, 0, type_byte, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


idx_like = st.one_of(
    st.binary(max_size=64),
    st.builds(
        idx,
        st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x07, 0xFF]),
        st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), max_size=4),
        st.binary(max_size=200),
    ),
)


@given(raw=idx_like, flips=st.lists(st.tuples(st.integers(0, 300), st.integers(1, 255)), max_size=3))
def test_fuzz_idx_parser(raw, flips):
    counted("idx")
    raw = bytearray(raw)
    for pos, mask in flips:
        if pos < len(raw):
            raw[pos] ^= mask
    try:
        arr = datasets.parse_idx(bytes(raw))
    except ValueError:
        return
    assert arr.ndim == raw[3] and arr.nbytes == len(raw) - 4 - 4 * raw[3]


@given(raw=idx_like, cut=st.integers(0, 400), flip=st.integers(0, 400))
def test_fuzz_idx_gzip_stream(tmp_path_factory, raw, cut, flip):
    counted("idx.gz")
    gz = bytearray(gzip.compress(raw, mtime=0))
    if flip < len(gz):
        gz[flip] ^= 0xA5
    path = tmp_path_factory.getbasetemp() / "fuzz-idx.gz"
    path.write_bytes(bytes(gz[: max(cut, 2)] if cut < len(gz) else gz))
    try:
        datasets.read_idx(path)
    except ValueError:
        pass


# --------------------------------------------------------------------------------------------- CSV

csv_field = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["", " ", "x", "label", "1_0", "O.5", "nan", "-inf", "1e999", "\ufeff1", '"1"', "１", "0x10"]),
    st.text(max_size=5),
)
csv_text = st.lists(st.lists(csv_field, min_size=1, max_size=4).map(",".join), max_size=6).map("\n".join)


@given(text=csv_text, bom=st.booleans(), crlf=st.booleans())
def test_fuzz_csv_reader(tmp_path_factory, text, bom, crlf):
    counted("csv")
    path = tmp_path_factory.getbasetemp() / "fuzz.csv"
    if crlf:
        text = text.replace("\n", "\r\n")
    try:
        path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8", "surrogatepass"))
    except UnicodeEncodeError:
        return
    try:
        table = datasets.read_csv(path)
    except ValueError:
        return
    assert table.ndim == 2 and np.isfinite(table).all()
    lines = [line for line in datasets.csv_lines(text.lstrip("\ufeff")) if line.strip()]
    assert len(table) in (len(lines), len(lines) - 1)  # every data row, once; at most one header


# --------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint_arrays(tmp_path_factory):
    x, y = datasets.spiral(points_per_class=10)
    model = build_model(2, [4], 3, seed=0)
    opt = make_optimizer("adam", model, lr=0.01)
    nb.train(model, opt, (x, y), epochs=1, batch_size=8) if hasattr(nb, "train") else None
    path = tmp_path_factory.getbasetemp() / "fuzz-base.npz"
    config = {"dataset": "spiral", "hidden": [4], "epochs": 3, "lr": 0.01, "optimizer": "adam", "batch_size": 8,
              "seed": 0, "dtype": "float32", "test_split": 0.2, "val_split": 0.0}
    save_checkpoint(path, model, opt, TrainState(epoch=1, step=4, history=[{"epoch": 1, "train_loss": 1.0}]), config)
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
JSON_KEYS = ["nbnet/architecture", "train/state", "optim/meta", "train/config"]
FIELDS = {
    "nbnet/architecture": ["format", "version", "layers"],
    "train/state": ["epoch", "step", "loss_sum", "correct", "seen", "seconds", "history_keys", "best_val_loss"],
    "optim/meta": ["type", "lr", "betas", "eps", "weight_decay", "step_count"],
    "train/config": ["dataset", "hidden", "epochs", "lr", "optimizer", "batch_size", "seed", "dtype", "quiet"],
}


@st.composite
def damaged(draw, arrays):
    arrays = dict(arrays)
    key = draw(st.sampled_from(JSON_KEYS + ["layer0.weight", "layer0.bias", "checkpoint/version", "optim/state/exp_avg.0",
                                             "train/history"]))
    how = draw(st.sampled_from(["field", "whole", "array", "drop"]))
    if how == "drop":
        arrays.pop(key, None)
    elif key in JSON_KEYS and how == "field":
        obj = json.loads(str(arrays[key]))
        if key == "nbnet/architecture" and draw(st.booleans()):
            layer = obj["layers"][draw(st.integers(0, len(obj["layers"]) - 1))]
            layer[draw(st.sampled_from(["type", "in_features", "out_features", "dtype", "bias", "x"]))] = draw(json_values)
        else:
            obj[draw(st.sampled_from(FIELDS[key]))] = draw(json_values)
        arrays[key] = np.array(json.dumps(obj))
    elif key in JSON_KEYS:
        arrays[key] = np.array(json.dumps(draw(json_values)))
    else:
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        dtype = draw(st.sampled_from(["<f4", "<f8", "<i8", "<U3", "|b1"]))
        fill = draw(st.sampled_from([0.0, np.nan, np.inf, 1.0]))
        arrays[key] = np.full(shape, fill if dtype[1] == "f" else 1, dtype)
    return arrays


def _check_loads_or_value_error(path):
    try:
        ck = load_checkpoint(path)
    except ValueError:
        return
    if ck.config:  # the command line checks the stored options once more
        ctx = click.Context(cli_module.train_cmd)
        try:
            cli_module._checked_config(ctx, cli_module.upgrade_config(ck.config), path)
        except cli_module.CliError:
            return
    for p in ck.model.parameters():
        assert np.isfinite(p.data).all()


@given(data=st.data())
def test_fuzz_checkpoint_metadata(checkpoint_arrays, tmp_path_factory, data):
    counted("checkpoint")
    arrays = data.draw(damaged(checkpoint_arrays))
    path = tmp_path_factory.getbasetemp() / "fuzz-ck.npz"
    np.savez(path, **arrays)
    _check_loads_or_value_error(path)


@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_fuzz_checkpoint_bytes(checkpoint_arrays, tmp_path_factory, flips, cut):
    counted("checkpoint bytes")
    buf = io.BytesIO()
    np.savez(buf, **checkpoint_arrays)
    raw = bytearray(buf.getvalue())
    for pos, mask in flips:
        raw[pos % len(raw)] ^= mask
    if cut is not None:
        raw = raw[: cut % len(raw)]
    path = tmp_path_factory.getbasetemp() / "fuzz-bytes.npz"
    path.write_bytes(bytes(raw))
    try:
        _check_loads_or_value_error(path)
    except zipfile.BadZipFile as e:  # pragma: no cover - must have been turned into a ValueError
        raise AssertionError(f"BadZipFile escaped: {e}") from None
