"""End to end: an MLP learns the spiral, and the same seed gives bitwise the same weights whatever
the number of threads."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nbnet as nb

ROOT = Path(__file__).resolve().parent.parent

TRAIN = """
import hashlib, numpy as np, nbnet as nb
xtr, ytr, _, _ = nb.datasets.load("spiral")
model = nb.Sequential([nb.Linear(2, 96, seed=0), nb.Tanh(), nb.Linear(96, 64, seed=1), nb.ReLU(),
                       nb.Linear(64, 3, seed=2)])
loss_fn = nb.SoftmaxCrossEntropy()
opt = nb.{opt}
for epoch in range(3):
    for xb, yb in nb.batches(xtr, ytr, batch_size=50, seed=(0, epoch)):
        opt.zero_grad()
        loss_fn.forward(model.forward(xb), yb)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()
h = hashlib.sha256()
for p in model.parameters():
    h.update(p.data.tobytes())
print(h.hexdigest())
"""


def train_in_subprocess(threads, opt):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", TRAIN.format(opt=opt)], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_same_seed_same_weights_bitwise_with_1_and_2_threads():
    for opt in ("SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)", "AdamW(model.parameters())"):
        one, two = train_in_subprocess(1, opt), train_in_subprocess(2, opt)
        assert len(one) == 64 and one == two, opt


def test_mlp_learns_spiral():
    xtr, ytr, xte, yte = nb.datasets.load("spiral")
    model = nb.Sequential([nb.Linear(2, 100, seed=0), nb.ReLU(), nb.Linear(100, 3, seed=1)])
    loss_fn = nb.SoftmaxCrossEntropy()
    opt = nb.SGD(model.parameters(), lr=0.5, momentum=0.9)
    first = None
    for epoch in range(25):
        for xb, yb in nb.batches(xtr, ytr, batch_size=64, seed=(0, epoch)):
            opt.zero_grad()
            loss = loss_fn.forward(model.forward(xb), yb)
            first = loss if first is None else first
            model.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
    train_acc = float(np.mean(model.forward(xtr).argmax(1) == ytr))
    test_acc = float(np.mean(model.forward(xte).argmax(1) == yte))
    assert train_acc >= 0.95 and test_acc >= 0.93, (train_acc, test_acc)
    assert loss < first / 5


def test_spiral_dataset_shapes():
    xtr, ytr, xte, yte = nb.datasets.load("spiral")
    assert xtr.dtype == np.float32 and xtr.shape[1] == 2 and ytr.dtype == np.int64
    assert len(xtr) + len(xte) == 3000 and set(np.unique(ytr)) == {0, 1, 2}
    again = nb.datasets.load("spiral")
    assert hashlib.sha256(again[0].tobytes()).digest() == hashlib.sha256(xtr.tobytes()).digest()


def test_count_correct_matches_numpy_argmax():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 7)).astype(np.float32)
    z[0] = 1.0  # a tie: argmax takes the first
    t = rng.integers(0, 7, 50)
    t[0] = 0
    assert nb.cpu.count_correct(z, t) == np.count_nonzero(z.argmax(1) == t) > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_count_correct_is_np_argmax_with_nan_inf_and_ties(dtype):
    """Row by row, each label in turn: count_correct counts exactly the rows whose np.argmax is the
    label, with NaN (the first one wins), ±inf, -0.0 and ties among small integers."""
    rng = np.random.default_rng(1)
    z = rng.integers(-2, 3, size=(400, 6)).astype(dtype)
    spots = rng.random(z.shape)
    z[spots < 0.05] = np.nan
    z[(spots > 0.05) & (spots < 0.1)] = np.inf
    z[(spots > 0.1) & (spots < 0.15)] = -np.inf
    z[(spots > 0.15) & (spots < 0.2)] = -0.0
    want = z.argmax(axis=1)
    for label in range(6):
        t = np.full(len(z), label)
        got = [nb.cpu.count_correct(z[i:i + 1], t[i:i + 1]) for i in range(len(z))]
        np.testing.assert_array_equal(got, want == label)


def test_an_optimizer_state_gone_infinite_stops_training():
    """Features of ~1e25 in float32: Adam's exp_avg_sq overflowed to Inf, m / sqrt(Inf) froze the
    weights, finite, and nb.train went on to the last epoch with a loss of 1e25, silently (only
    --save refused the state)."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(256, 4)) * 1e25).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nb.Sequential(nb.Linear(4, 8, seed=0), nb.ReLU(), nb.Linear(8, 2, seed=1))
    with pytest.raises(nb.TrainingDiverged,
                       match=r"^training diverged in epoch 1: the optimizer's exp_avg_sq of parameter 0 holds NaN or Inf"):
        nb.train(model, nb.Adam(model.parameters(), lr=1e-3), (x, y), epochs=3, batch_size=64)
    small = x / 1e25  # the same run on scaled features trains
    model = nb.Sequential(nb.Linear(4, 8, seed=0), nb.ReLU(), nb.Linear(8, 2, seed=1))
    assert len(nb.train(model, nb.Adam(model.parameters(), lr=1e-3), (small, y), epochs=3, batch_size=64)) == 3
