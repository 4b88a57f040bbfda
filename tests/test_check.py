"""`nbnet check` and the warm-up compile the training loop runs before timing epoch 1."""

import numpy as np
from click.testing import CliRunner

import nbnet as nb
from nbnet import check, cpu, simd
from nbnet.cli import cli


def test_check_passes_and_says_what_it_compiled_for():
    r = CliRunner().invoke(cli, ["check"])
    assert r.exit_code == 0, r.output
    assert simd.describe() in r.output and "threading layer" in r.output
    assert "all checks passed" in r.output and "FAIL" not in r.output


def test_check_fails_on_a_wrong_kernel(monkeypatch):
    def wrong(dweight, dbias, dout, inp):
        cpu.linear_backward_params_ref(dweight, dbias, dout, inp)
        dweight[-1, -1] += 1e-3  # one element off

    monkeypatch.setattr(cpu, "linear_backward_params", wrong)
    r = CliRunner().invoke(cli, ["check"])
    assert r.exit_code == 1
    assert "FAIL Linear kernels vs formula, float32" in r.output and "linear_backward_params" in r.output


def test_compile_kernels_leaves_model_and_optimizer_alone(monkeypatch, capsys):
    model = nb.Sequential([nb.Linear(30, 20, seed=0), nb.ReLU(), nb.Linear(20, 3, seed=1)])
    opt = nb.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.data.copy() for p in model.parameters()] + [p.grad.copy() for p in model.parameters()]
    monkeypatch.setattr(check, "cold_cache", lambda: True)
    check.compile_kernels(model, opt, train_rows=(1, 70), eval_rows=(300,))
    assert check.COMPILING in capsys.readouterr().err
    after = [p.data for p in model.parameters()] + [p.grad for p in model.parameters()]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert opt.step_count == 0 and all(v is None for st in opt.state for v in st.values())
