"""Each optimizer against its published update rule (torch.optim's documentation), written out in
NumPy for several steps, on float64 so the comparison is tight."""

import importlib.util
import json
import math
import re
import types
import warnings

import numpy as np
import pytest

import nbnet as nb
from nbnet import cpu
from nbnet.layers import Parameter
from nbnet.model import pack_parameters

STEPS = 5


def make_params(rng):
    layer = nb.Linear(4, 3, dtype=np.float64, seed=0)
    layer.bias[...] = rng.normal(size=3)
    return layer, layer.parameters()


def feed_grads(params, rng):
    """Fresh gradients each step (as zero_grad + backward would leave them)."""
    grads = [rng.normal(size=p.shape) for p in params]
    for p, g in zip(params, grads):
        p.grad[...] = g
    return grads


def ref_sgd(theta, grads_per_step, lr, momentum, weight_decay, nesterov):
    theta = [t.copy() for t in theta]
    bufs = [None] * len(theta)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            g = g + weight_decay * theta[i]
            if momentum:
                bufs[i] = g.copy() if bufs[i] is None else momentum * bufs[i] + g
                g = g + momentum * bufs[i] if nesterov else bufs[i]
            theta[i] = theta[i] - lr * g
    return theta


def ref_adam(theta, grads_per_step, lr, betas, eps, weight_decay, decoupled):
    b1, b2 = betas
    theta = [t.copy() for t in theta]
    m = [np.zeros_like(t) for t in theta]
    v = [np.zeros_like(t) for t in theta]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            if decoupled:
                theta[i] = theta[i] * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * theta[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            theta[i] = theta[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def run(opt_factory, rng):
    layer, params = make_params(rng)
    start = [p.data.copy() for p in params]
    opt = opt_factory(params)
    grads_per_step = []
    for _ in range(STEPS):
        grads_per_step.append(feed_grads(params, rng))
        opt.step()
    return start, grads_per_step, [p.data for p in params]


@pytest.mark.parametrize(
    "lr, momentum, weight_decay, nesterov",
    [(0.1, 0.0, 0.0, False), (0.1, 0.9, 0.0, False), (0.05, 0.9, 0.01, True), (0.1, 0.5, 0.1, False)],
)
def test_sgd_update_rule(lr, momentum, weight_decay, nesterov, rng):
    start, grads, got = run(
        lambda ps: nb.SGD(ps, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov), rng
    )
    want = ref_sgd(start, grads, lr, momentum, weight_decay, nesterov)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("cls, weight_decay", [(nb.Adam, 0.0), (nb.Adam, 0.1), (nb.AdamW, 0.1), (nb.AdamW, 0.0)])
def test_adam_and_adamw_update_rules(cls, weight_decay, rng):
    lr, betas, eps = 0.01, (0.8, 0.95), 1e-6
    start, grads, got = run(lambda ps: cls(ps, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay), rng)
    want = ref_adam(start, grads, lr, betas, eps, weight_decay, decoupled=cls is nb.AdamW)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)


def test_adam_first_step_is_lr_times_sign():
    """Bias correction makes step 1 exactly lr·g/(|g| + eps'): a sign step of size lr."""
    layer = nb.Linear(3, 2, dtype=np.float64, seed=0)
    start = layer.weight.copy()
    layer.grad_weight[...] = np.array([[1.0, -2.0, 3.0], [-0.5, 0.25, 4.0]])
    nb.Adam(layer.parameters()[:1], lr=0.1, eps=0.0).step()
    np.testing.assert_allclose(start - layer.weight, 0.1 * np.sign(layer.grad_weight), rtol=1e-12)


@pytest.mark.parametrize("cls", [nb.Adam, nb.AdamW])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.99, 0.99999)])
def test_float32_adam_follows_the_float64_rule_to_float32_rounding(cls, betas, rng):
    """1 − β is made in double, as torch makes it: 1 − float32(0.999) is 1.3e-5 off 0.001, and
    1 − float32(0.99999) 1.4e-3 off 1e-5, a bias in v (and in every step) far above float32's
    rounding, which the bias correction (in double) does not cancel."""
    layer = nb.Linear(50, 40, seed=0)
    start = [p.data.astype(np.float64) for p in layer.parameters()]
    opt = cls(layer.parameters(), lr=0.01, betas=betas, weight_decay=0.0 if cls is nb.Adam else 0.1)
    grads, v = [], [0.0 for _ in start]
    for _ in range(STEPS):
        grads.append([g.astype(np.float32).astype(np.float64) for g in feed_grads(layer.parameters(), rng)])
        v = [betas[1] * vi + (1 - betas[1]) * g * g for vi, g in zip(v, grads[-1])]
        opt.step()
    want = ref_adam(start, grads, 0.01, betas, 1e-8, opt.weight_decay, decoupled=cls is nb.AdamW)
    for p, w, st, vi in zip(layer.parameters(), want, opt.state, v):
        np.testing.assert_allclose(st["exp_avg_sq"], vi.ravel(), rtol=1e-6)
        # each step is lr = 0.01 long, and float32 leaves ~1e-8 of it (and of θ) per step
        np.testing.assert_allclose(p.data, w, rtol=0, atol=2e-7)


def test_sgd_without_momentum_keeps_no_buffer():
    """As torch (momentum_buffer None): a step with momentum 0 never reads one, so none is made or saved."""
    layer, params = make_params(np.random.default_rng(0))
    opt = nb.SGD(params, lr=0.1)
    opt.step()
    assert opt.state_dict()["state"] == {}


def test_adamw_default_weight_decay_is_decoupled_001():
    opt = nb.AdamW(make_params(np.random.default_rng(0))[1])
    assert opt.weight_decay == 0.01 and opt.decoupled and not nb.Adam.decoupled


def apply_grads(params, opt, steps):
    """One opt.step() per entry of `steps`, each a list of gradients for `params`."""
    for gs in steps:
        for p, g in zip(params, gs):
            p.grad[...] = g
        opt.step()


@pytest.mark.parametrize("make", [lambda ps: nb.Adam(ps, lr=0.01, weight_decay=0.01),
                                  lambda ps: nb.SGD(ps, lr=0.1, momentum=0.9)])
@pytest.mark.parametrize("stepped", [False, True])
def test_state_dict_round_trip_continues_identically(make, stepped, rng):
    """Two steps, state_dict(), load_state_dict() into a new optimizer, two more steps: the bits of
    four steps in one go. stepped: the new optimizer has moments of its own first (restoring a
    saved run into a live optimizer), which its cached step groups once kept using."""
    grads = [[rng.normal(size=s) for s in ((3, 4), (3,))] for _ in range(4)]
    _, params_a = make_params(np.random.default_rng(7))
    apply_grads(params_a, make(params_a), grads)
    _, params_b = make_params(np.random.default_rng(7))
    opt_b = make(params_b)
    apply_grads(params_b, opt_b, grads[:2])
    _, params_c = make_params(np.random.default_rng(7))
    opt_c = make(params_c)
    if stepped:
        apply_grads(params_c, opt_c, grads[::-1])
    for pc, pb in zip(params_c, params_b):
        pc.data[...] = pb.data
    opt_c.load_state_dict(opt_b.state_dict())
    apply_grads(params_c, opt_c, grads[2:])
    for a, c in zip(params_a, params_c):
        np.testing.assert_array_equal(a.data, c.data)


def test_load_state_dict_rejects_mismatched_shapes(rng):
    _, params = make_params(rng)
    opt = nb.SGD(params, lr=0.1, momentum=0.9)
    bad = {"type": "SGD", "state": {"momentum_buffer.0": np.zeros(5)}}
    with pytest.raises(ValueError, match="momentum_buffer.0"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="^SGD: cannot load the state_dict of Adam, another optimizer$"):  # "a Adam"
        opt.load_state_dict({"type": "Adam"})
    with pytest.raises(ValueError, match="^Adam: cannot load the state_dict of SGD, another optimizer$"):
        nb.Adam(params).load_state_dict({"type": "SGD"})
    with pytest.raises(ValueError, match="^SGD: cannot load the state_dict of A{40}, another optimizer$"):
        opt.load_state_dict({"type": "A" * 5000})  # a damaged file's: cut to 40 characters


@pytest.mark.parametrize("index", ["\u00b2", "\u0663", "00", "01", "+1", " 1", "1_0", "-0", "2", "9" * 5000, ""])
def test_load_state_dict_takes_only_the_keys_state_dict_writes(rng, index):
    # "momentum_buffer.²" passed str.isdigit() and failed in int() (a message naming no key);
    # "momentum_buffer.00" (or "٣", that int() reads as 3) was a second entry for a parameter,
    # the last one replacing the other silently.
    _, params = make_params(rng)
    opt = nb.SGD(params, lr=0.1, momentum=0.9)
    assert len(params) == 2
    sd = {"type": "SGD", "state": {f"momentum_buffer.{i}": np.zeros(p.data.size, p.data.dtype)
                                   for i, p in enumerate(params)}}
    opt.load_state_dict(sd)
    sd["state"][f"momentum_buffer.{index}"] = np.ones(params[0].data.size, params[0].data.dtype)
    with pytest.raises(ValueError, match=r"unexpected optimizer state entry 'momentum_buffer\."):
        opt.load_state_dict(sd)


def test_float32_parameters_stay_float32(rng):
    layer = nb.Linear(4, 3, seed=0)
    for cls in (nb.SGD, nb.Adam, nb.AdamW):
        opt = cls(layer.parameters(), lr=0.01) if cls is not nb.SGD else cls(layer.parameters(), lr=0.01, momentum=0.9)
        layer.grad_weight[...] = 1
        opt.step()
        assert layer.weight.dtype == np.float32 and all(
            a.dtype == np.float32 for st in opt.state for a in st.values()
        )


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: nb.SGD(ps, lr=-1),
        lambda ps: nb.SGD(ps, lr=math.nan),
        lambda ps: nb.SGD(ps, lr=0.1, nesterov=True),
        lambda ps: nb.SGD(ps, lr=0.1, momentum=0.9, nesterov="no"),  # truthy: it was nesterov on, silently
        lambda ps: nb.Adam(ps, betas=(0.9, 1.0)),
        lambda ps: nb.SGD([], lr=0.1),
    ],
)
def test_bad_hyperparameters_are_rejected(make, rng):
    with pytest.raises(ValueError):
        make(make_params(rng)[1])


@pytest.mark.parametrize("cls", [nb.SGD, nb.Adam, nb.AdamW])
def test_an_optimizer_given_the_model_instead_of_its_parameters_says_so(cls):
    """SGD(model, ...) iterated over the layers and failed at step() with an AttributeError."""
    model = nb.Sequential(nb.Linear(3, 2), nb.ReLU())
    with pytest.raises(ValueError, match=r"expected parameters, e\.g\. model\.parameters\(\), got Linear"):
        cls(model, lr=0.1)



@pytest.mark.parametrize("cls", [nb.SGD, nb.Adam, nb.AdamW])
def test_a_parameter_given_twice_is_refused(cls):
    """SGD(body.parameters() + model.parameters()), with body inside model: each step updated the
    parameters given twice twice over, silently (torch warns, and will refuse)."""
    body = nb.Sequential(nb.Linear(3, 4), nb.ReLU())
    model = nb.Sequential(body, nb.Linear(4, 2))
    with pytest.raises(ValueError, match=r"parameter 2 is parameter 0 again"):
        cls(body.parameters() + model.parameters(), lr=0.1)

def test_numpy_scalars_are_numbers_for_hyperparameters(rng):
    """np.float32(0.01) was refused as a rate, and nbnet.sklearn, which accepts NumPy scalars as
    scikit-learn does, passed them on: MLPClassifier(learning_rate_init=np.float32(...)).fit failed."""
    for make in (lambda ps, f: nb.SGD(ps, lr=f(0.1), momentum=f(0.9), weight_decay=f(0.01), nesterov=True),
                 lambda ps, f: nb.Adam(ps, lr=f(0.01), betas=(f(0.9), f(0.99)), eps=f(1e-6), weight_decay=f(0.1))):
        runs = []
        for f in (lambda v: float(np.float32(v)), np.float32):  # the same numbers, as float and np.float32
            params = make_params(np.random.default_rng(0))[1]
            opt = make(params, f)
            for _ in range(3):
                for p in params:
                    p.grad[...] = 0.5
                opt.step()
            runs.append([p.data.copy() for p in params])
        for a, b in zip(*runs):
            np.testing.assert_array_equal(a, b)
    assert nb.SGD(make_params(rng)[1], lr=np.int64(1)).lr == 1.0


@pytest.mark.parametrize(
    "make", [lambda ps: nb.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
             lambda ps: nb.Adam(ps, lr=0.01, weight_decay=0.1), lambda ps: nb.AdamW(ps, lr=0.01)],
    ids=["sgd", "adam", "adamw"],
)
def test_one_pass_over_packed_parameters_equals_one_call_per_parameter(make, rng):
    """A Sequential packs its parameters into one buffer and the optimizer updates them in one
    kernel call; standalone layers take one call each. Same element-wise rule: bitwise equal."""
    layers = [nb.Linear(4, 5, dtype=np.float64, seed=0), nb.Linear(5, 3, dtype=np.float64, seed=1)]
    loose = [p for layer in layers for p in layer.parameters()]
    packed = nb.Sequential([nb.Linear(4, 5, dtype=np.float64, seed=0), nb.Linear(5, 3, dtype=np.float64, seed=1)])
    opt_loose, opt_packed = make(loose), make(packed.parameters())
    assert opt_packed._flat() is not None and opt_loose._flat() is None
    for _ in range(3):
        for p, q in zip(loose, packed.parameters()):
            p.grad[...] = q.grad[...] = rng.normal(size=p.shape)
        opt_loose.step()
        opt_packed.step()
    for p, q in zip(loose, packed.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    for key, arr in opt_loose.state_dict()["state"].items():
        np.testing.assert_array_equal(arr, opt_packed.state_dict()["state"][key])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", [lambda ps: nb.SGD(ps, lr=0.1, momentum=0.9), lambda ps: nb.Adam(ps, lr=0.1)],
                         ids=["sgd", "adam"])
def test_subnormal_optimizer_state_is_stored_as_zero(dtype, make):
    """A dead unit's momentum decays into the subnormal range and sticks there (0.9 · 3·2⁻¹⁴⁹ rounds
    back to 3·2⁻¹⁴⁹), where x86 cores compute slowly; the kernels store it as 0 instead. A normal
    value next to it is left alone, and the weights are the same as without the flush."""
    layer = nb.Linear(4, 1, bias=False, dtype=dtype, seed=0)
    opt = make(layer.parameters())
    opt.step()  # creates the state (zero gradient: the state stays 0)
    smallest = np.nextafter(dtype(0), dtype(1))
    tiny = np.finfo(dtype).tiny
    for st in opt.state:
        for arr in st.values():
            arr[...] = [3 * smallest, tiny / 2, 4 * tiny, 0]  # two subnormals, a normal, a zero
    before = layer.weight.copy()
    opt.step()
    for st in opt.state:
        for name, arr in st.items():
            assert arr[0] == 0 and arr[1] == 0, (name, arr)  # without the flush: still subnormal
            assert arr[2] != 0 and abs(arr[2]) >= tiny / 2, (name, arr)  # a normal value decays as usual
    np.testing.assert_array_equal(layer.weight[0, :2], before[0, :2])  # the tiny state moved no weight


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("twin", ["serial", "parallel"])
def test_the_flush_keeps_the_smallest_normal_state_of_either_sign(dtype, twin):
    """Only |x| < tiny (a subnormal) is stored as 0: tiny itself, -tiny and the rest are kept. Each
    kernel call here writes its state back unchanged but for the flush: b = 0.5·0 + g;
    m = 0 + 1·(g - 0), v = 1·v + 0·g²."""
    dt = dtype
    tiny, sub = np.finfo(dtype).tiny, np.nextafter(dtype(0), dtype(1))
    state = np.array([3 * sub, -3 * sub, tiny / 2, tiny, -tiny, 4 * tiny, 0], dtype)
    want = np.array([0, 0, 0, tiny, -tiny, 4 * tiny, 0], dtype)
    buf = np.zeros_like(state)
    getattr(cpu.sgd_step, twin)(np.zeros_like(state), state, buf, dt(0), dt(0.5), dt(0), False)
    np.testing.assert_array_equal(buf, want)
    m, v = np.zeros_like(state), np.abs(state)
    getattr(cpu.adam_step, twin)(np.zeros_like(state), state, m, v, *(dt(s) for s in (1, 1, 0, 1e-8, 0, 1, 0, 1)))
    np.testing.assert_array_equal(m, want)
    np.testing.assert_array_equal(v, np.abs(want))


@pytest.mark.parametrize("make, change, match", [
    (lambda ps: nb.SGD(ps, lr=0.1, momentum=0.9), {"lr": float("nan")}, "lr"),  # NaN weights at the next step
    (lambda ps: nb.SGD(ps, lr=0.1, momentum=0.9), {"lr": -1.0}, "lr"),  # a step uphill
    (lambda ps: nb.SGD(ps, lr=0.1, momentum=0.9), {"momentum": 0.0, "nesterov": True}, "nesterov"),
    (lambda ps: nb.SGD(ps, lr=0.1), {"step_count": -3}, "step_count"),
    (lambda ps: nb.SGD(ps, lr=0.1), {"step_count": -1}, "step_count"),  # the edge: 0 loads
    (lambda ps: nb.SGD(ps, lr=0.1), {"step_count": 2.5}, "step_count"),
    (lambda ps: nb.Adam(ps), {"betas": (1.0, 0.999)}, "betas"),  # a ZeroDivisionError at the next step
    (lambda ps: nb.Adam(ps), {"betas": (0.9,)}, "betas"),
    (lambda ps: nb.AdamW(ps), {"eps": -1.0}, "eps"),
    (lambda ps: nb.Adam(ps), {"state": "exp_avg"}, "state"),
])
def test_load_state_dict_checks_hyper_parameters_as_the_constructor_does(make, change, match, rng):
    _, params = make_params(rng)
    opt = make(params)
    feed_grads(params, rng)
    opt.step()
    before = opt.state_dict()
    with pytest.raises((ValueError, TypeError), match=match):
        opt.load_state_dict({**opt.state_dict(), **change})
    after = opt.state_dict()  # nothing loaded
    assert {k: v for k, v in after.items() if k != "state"} == {k: v for k, v in before.items() if k != "state"}
    with pytest.raises(TypeError, match="state_dict"):
        opt.load_state_dict([("lr", 0.1)])


def _momentum_later(params, how, grads):
    """An SGD made without momentum that gets momentum 0.9 afterwards (after a first step: it
    has no buffer yet), `how`: as an attribute, or from a state_dict, fresh or after 2 steps."""
    opt = nb.SGD(params, lr=0.1)
    if how == "attribute":
        apply_grads(params, opt, grads[:1])  # a plain step, then momentum from here on
        opt.momentum = 0.9
        return opt, grads[1:]
    source_params = make_params(np.random.default_rng(7))[1]
    source = nb.SGD(source_params, lr=0.1, momentum=0.9)
    done = 2 if how == "stepped state_dict" else 0
    apply_grads(source_params, source, grads[:done])
    for p, q in zip(params, source_params):
        p.data[...] = q.data
    opt.load_state_dict(source.state_dict())
    return opt, grads[done:]


@pytest.mark.parametrize("how", ["attribute", "fresh state_dict", "stepped state_dict"])
def test_sgd_given_momentum_after_construction_keeps_a_buffer(how, rng):
    # it stepped with the weights as its momentum buffer (b = 0.9 θ + g), or refused the buffers
    grads = [[rng.normal(size=s) for s in ((3, 4), (3,))] for _ in range(4)]
    _, params_a = make_params(np.random.default_rng(7))
    opt_a = nb.SGD(params_a, lr=0.1, momentum=0.9)
    if how == "attribute":
        opt_a.momentum = 0.0
        apply_grads(params_a, opt_a, grads[:1])
        opt_a.momentum = 0.9
        apply_grads(params_a, opt_a, grads[1:])
    else:
        apply_grads(params_a, opt_a, grads)
    _, params_b = make_params(np.random.default_rng(7))
    opt_b, rest = _momentum_later(params_b, how, grads)
    apply_grads(params_b, opt_b, rest)
    for a, b in zip(params_a, params_b):
        np.testing.assert_array_equal(a.data, b.data)
    # momentum taken away again: its state_dict loads into an SGD without momentum
    opt_b.momentum = 0.0
    nb.SGD(make_params(np.random.default_rng(7))[1], lr=0.1).load_state_dict(opt_b.state_dict())


@pytest.mark.parametrize("momentum", [-0.5, math.nan, "0.9"])
def test_momentum_set_after_construction_is_checked_as_the_constructors(momentum, rng):
    """A negative momentum set on opt.momentum kept no buffer, and the kernel then used the weights
    as one (b = μθ + g written into θ)."""
    opt = nb.SGD(make_params(rng)[1], lr=0.1)
    with pytest.raises(ValueError, match="SGD: momentum must be a finite number"):
        opt.momentum = momentum


@pytest.mark.parametrize("base", [nb.SGD, nb.Adam, nb.AdamW])
def test_load_state_dict_of_a_subclass_with_its_own_constructor(base, rng):
    """A subclass (a warm-up schedule, ...) whose constructor takes other arguments loads its own
    state_dict: load_state_dict checked the values by calling type(self)(params, lr=..., ...),
    a TypeError there."""
    class Warm(base):
        hyper_names = (*base.hyper_names, "warmup")

        def __init__(self, params, warmup=5):
            super().__init__(params, lr=0.01)
            self.warmup = warmup

    _, params = make_params(rng)
    opt = Warm(params, warmup=3)
    feed_grads(params, rng)
    opt.step()
    again = Warm(params)
    again.load_state_dict(opt.state_dict())
    assert again.warmup == 3 and again.step_count == 1
    assert {k: v for k, v in again.state_dict().items() if k != "state"} == \
        {k: v for k, v in opt.state_dict().items() if k != "state"}


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("make", [lambda p: nb.SGD(p, lr=0.1, momentum=0.9), lambda p: nb.Adam(p, lr=0.01)])
def test_a_copied_model_and_optimizer_train_on_as_the_originals(how, make):
    """copy.deepcopy((model, opt)) / pickle (multiprocessing, a snapshot to go back to): the copy's
    steps ran on the flat views its step cache held, copies of the original's buffers that no
    layer reads, so the copied model never moved and its optimizer state froze."""
    import copy
    import pickle

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8)
    model = nb.Sequential(nb.Linear(4, 5, seed=0), nb.ReLU(), nb.Linear(5, 3, seed=1))
    opt, loss_fn = make(model.parameters()), nb.SoftmaxCrossEntropy()

    def step(m, o):
        o.zero_grad()
        loss_fn(m(x), y)
        m.backward(loss_fn.backward())
        o.step()

    for _ in range(3):
        step(model, opt)
    model2, opt2 = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    for _ in range(2):
        step(model, opt)
        step(model2, opt2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert not np.shares_memory(a.data, b.data)
        np.testing.assert_array_equal(a.data, b.data)
    for key, value in opt.state_dict()["state"].items():
        np.testing.assert_array_equal(opt2.state_dict()["state"][key], value)


@pytest.mark.parametrize("make", [lambda p: nb.SGD(p, lr=0.1, momentum=0.9), lambda p: nb.Adam(p, lr=0.01)])
def test_state_dict_is_a_snapshot(make, rng):
    """A state_dict kept to go back to (the best epoch so far, say) held the live state arrays of a
    model on the host (on the GPU, copies): the steps after it changed it, and loading it gave the
    moments of now with the step count of then."""
    grads = [[rng.normal(size=s) for s in ((3, 4), (3,))] for _ in range(4)]
    _, params_a = make_params(np.random.default_rng(7))
    opt_a = make(params_a)
    apply_grads(params_a, opt_a, grads[:2])
    sd = opt_a.state_dict()
    kept = {k: v.copy() for k, v in sd["state"].items()}
    apply_grads(params_a, opt_a, grads[2:])
    for key, value in kept.items():
        np.testing.assert_array_equal(sd["state"][key], value)
    again = opt_a.state_dict()
    for value in again["state"].values():
        value[...] = 7.0
    assert not any((st == 7.0).all() for s in opt_a.state for st in s.values())


@pytest.mark.parametrize("change", ["resized", "reversed", "fewer", "more"])
def test_state_made_for_other_parameters_is_an_error_not_an_overrun(change):
    """State is per parameter number: a layer resized after a step (weight, gradient and
    out_features assigned) or opt.params reassigned stepped the kernels past the ends of the old
    state arrays (a segfault or heap corruption), or indexed past the state list."""
    layer = nb.Linear(4, 3, seed=0)
    opt = nb.Adam(layer.parameters(), lr=0.1)
    layer.grad_weight[...] = 1
    opt.step()
    if change == "resized":
        layer.out_features = 300
        layer.weight, layer.grad_weight = np.zeros((300, 4), np.float32), np.ones((300, 4), np.float32)
        layer.bias, layer.grad_bias = np.zeros(300, np.float32), np.ones(300, np.float32)
    else:
        params = layer.parameters()
        opt.params = {"reversed": params[::-1], "fewer": params[:1], "more": params + nb.Linear(2, 2).parameters()}[change]
    with pytest.raises(ValueError, match="make a new optimizer"):
        opt.step()


@pytest.mark.parametrize("make", [lambda p: nb.SGD(p, lr=0.1, momentum=0.9), lambda p: nb.Adam(p, lr=0.1)])
def test_a_refused_step_leaves_the_step_count(make):
    """step() counted the step before checking it could take it: after a refused step (a gradient
    assigned in float64, here) put right, Adam's bias correction ran one step ahead for good, and
    a checkpoint recorded a step never taken."""
    layer, twin = nb.Linear(4, 3, seed=0), nb.Linear(4, 3, seed=0)
    opt, opt_twin = make(layer.parameters()), make(twin.parameters())
    good = layer.grad_weight
    layer.grad_weight = np.ones((3, 4))
    with pytest.raises(ValueError, match="its gradient must be"):
        opt.step()
    assert opt.step_count == 0
    layer.grad_weight = good
    for lay, o in ((layer, opt), (twin, opt_twin)):
        lay.grad_weight[...] = 1
        o.step()
    np.testing.assert_array_equal(layer.weight, twin.weight)


@pytest.mark.parametrize("make, name, value", [
    (lambda p: nb.SGD(p, lr=0.1), "lr", None),
    (lambda p: nb.SGD(p, lr=0.1), "lr", -0.1),
    (lambda p: nb.SGD(p, lr=0.1, momentum=0.9), "weight_decay", float("nan")),
    (lambda p: nb.SGD(p, lr=0.1, momentum=0.9), "nesterov", "no"),
    (lambda p: nb.Adam(p, lr=0.01), "lr", float("inf")),
    (lambda p: nb.Adam(p, lr=0.01), "betas", 0.9),
    (lambda p: nb.Adam(p, lr=0.01), "betas", (0.9, 1.0)),
    (lambda p: nb.AdamW(p, lr=0.01), "eps", -1e-8),
])
def test_hyper_parameters_set_after_construction_are_checked_at_the_step(make, name, value, rng):
    """The constructors check their hyper-parameters; set afterwards (opt.lr = None, -0.1; opt.betas =
    0.9) they reached the kernels unchecked: NaN weights or a climbing loss without a word, or
    a TypeError after step_count had moved. Checked when they change; the step then changes nothing."""
    _, params = make_params(rng)
    opt = make(params)
    feed_grads(params, rng)
    opt.step()
    before = [p.data.copy() for p in params], opt.step_count
    setattr(opt, name, value)
    with pytest.raises(ValueError, match=name):
        opt.step()
    assert all(np.array_equal(a, p.data) for a, p in zip(before[0], params)) and opt.step_count == before[1]


@pytest.mark.parametrize("pick", [[0, 1], [0, 1, 4, 5], [2, 3]], ids=["first", "first-and-last", "middle"])
def test_an_optimizer_over_some_of_a_packed_models_layers_steps_only_those(pick):
    """Parameters that are part of a packed buffer (the rest of the model frozen, as with
    SGD(model[0].parameters())), with gaps or stopping short of its end: each steps as it would
    alone, and the others never move (one_flat took them as one run, or ran on to the end)."""
    packed = nb.Sequential(nb.Linear(4, 5, dtype=np.float64, seed=0), nb.ReLU(),
                           nb.Linear(5, 6, dtype=np.float64, seed=1), nb.ReLU(), nb.Linear(6, 3, dtype=np.float64, seed=2))
    rng = np.random.default_rng(0)
    for p in packed.parameters():
        p.grad[...] = rng.normal(size=p.shape)
    chosen = [packed.parameters()[i] for i in pick]
    alone = [types.SimpleNamespace(data=p.data.copy(), grad=p.grad.copy()) for p in chosen]
    before = [p.data.copy() for p in packed.parameters()]
    opt, ref = nb.SGD(chosen, lr=0.1, momentum=0.9), nb.SGD(alone, lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.step()
        ref.step()
    for i, (p, b) in enumerate(zip(packed.parameters(), before)):
        if i in pick:
            np.testing.assert_array_equal(p.data, alone[pick.index(i)].data)
        else:
            np.testing.assert_array_equal(p.data, b)


def test_a_step_after_zero_grad_without_backward_moves_nothing():
    """zero_grad only marks a Linear's gradients: the step after it must read them as zeros, also
    when the step before cached the arrays it reads (the first step of a fresh optimizer did not)."""
    model = nb.Sequential(nb.Linear(4, 3, dtype=np.float64, seed=0), nb.ReLU(),
                          nb.Linear(3, 2, dtype=np.float64, seed=1))
    opt = nb.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad[...] = 1
    opt.step()
    before = [p.data.copy() for p in model.parameters()]
    opt.zero_grad()
    opt.step()
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, b)


class Weighted:
    """A layer-like object with a parameter nbnet did not make (its gradient is filled, not marked)."""

    def __init__(self, n):
        self.weight, self.grad_weight = np.ones(n), np.ones(n)


def test_zero_grad_fills_packed_gradients_of_other_layers():
    layers = [Weighted(3), Weighted(5)]
    params = [Parameter(layer, "weight") for layer in layers]
    pack_parameters(params)
    opt = nb.SGD(params, lr=0.1)
    assert opt._flat() is not None  # one buffer: zero_grad fills it in one pass
    opt.zero_grad()
    assert not any(layer.grad_weight.any() for layer in layers)


@pytest.mark.parametrize("handles", ["parameters", "other"])
def test_a_state_array_assigned_between_steps_is_the_one_stepped_on(handles):
    """opt.state[i][name] = array (a momentum reset, say) in a packed model: the next step
    goes on from that array, not from the flat buffer its cached step groups held."""
    model = nb.Sequential(nb.Linear(4, 3, dtype=np.float64, seed=0))
    params = model.parameters()
    if handles == "other":
        params = [types.SimpleNamespace(data=p.data, grad=p.grad) for p in params]
    opt = nb.SGD(params, lr=0.1, momentum=0.9)
    assert opt._flat() is not None
    for p in params:
        p.grad[...] = 1
    opt.step()
    opt.step()
    fresh = [np.zeros(p.data.size) for p in params]
    for st, buf in zip(opt.state, fresh):
        st["momentum_buffer"] = buf
    before = params[0].data.copy()
    opt.step()  # from zero momentum: b = g, a step of lr·g
    np.testing.assert_allclose(before - params[0].data, 0.1, rtol=1e-12)
    np.testing.assert_array_equal(opt.state_dict()["state"]["momentum_buffer.0"], 1)


def retype(layer, dtype):
    for name in ("weight", "grad_weight", "bias", "grad_bias"):
        setattr(layer, name, getattr(layer, name).astype(dtype))


def test_state_made_for_other_dtype_is_an_error():
    """As for another size: float32 moments for float64 parameters were stepped in mixed precision."""
    layer = nb.Linear(4, 3, seed=0)
    opt = nb.Adam(layer.parameters(), lr=0.1)
    layer.grad_weight[...] = 1
    opt.step()
    retype(layer, np.float64)
    with pytest.raises(ValueError, match="make a new optimizer"):
        opt.step()


def test_a_stateless_step_after_a_change_of_dtype_casts_its_rates_anew():
    """SGD without momentum keeps no state, so it steps on after the parameters change dtype: in
    the new dtype's rate (float32(0.1) is 1.5e-9 off 0.1), as a new optimizer would."""
    layer, twin = nb.Linear(4, 3, seed=0), nb.Linear(4, 3, seed=0)
    opt = nb.SGD(layer.parameters(), lr=0.1)
    layer.grad_weight[...] = 1
    opt.step()
    retype(layer, np.float64)
    retype(twin, np.float64)
    twin.weight[...] = layer.weight
    for lay, o in ((layer, opt), (twin, nb.SGD(twin.parameters(), lr=0.1))):
        lay.grad_weight[...] = 1
        o.step()
    np.testing.assert_array_equal(layer.weight, twin.weight)


def test_load_state_dict_checks_state_dtype_and_step_count_and_copies(rng):
    """Refused at the load, not at the next step: state of the other float dtype and a step_count of
    True (a bool is not a count). Loaded state is copied: steps leave the dict loaded from as it was."""
    _, params = make_params(rng)
    opt = nb.SGD(params, lr=0.1, momentum=0.9)
    sd = {"type": "SGD", "state": {f"momentum_buffer.{i}": np.zeros(p.data.size, np.float32)
                                   for i, p in enumerate(params)}}
    with pytest.raises(ValueError, match=r"state 'momentum_buffer.0' has shape \(12,\) float32, expected \(12,\) float64"):
        opt.load_state_dict(sd)
    with pytest.raises(ValueError, match="step_count must be a whole number"):
        opt.load_state_dict({"type": "SGD", "step_count": True})
    sd = {"type": "SGD", "state": {f"momentum_buffer.{i}": np.zeros(p.data.size) for i, p in enumerate(params)}}
    opt.load_state_dict(sd)
    for p in params:
        p.grad[...] = 1
    opt.step()  # the optimizer's own copies: the dict loaded from is left as it was
    assert not any(arr.any() for arr in sd["state"].values())
    assert opt.state_dict()["state"]["momentum_buffer.0"].all()


@pytest.mark.parametrize("cls", [nb.Adam, nb.AdamW])
def test_defaults_are_torchs(cls):
    """The defaults of torch.optim.Adam / AdamW (and of the interface): lr 1e-3, betas (0.9, 0.999), eps 1e-8."""
    opt = cls(make_params(np.random.default_rng(0))[1])
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0.01 if cls is nb.AdamW else 0.0)


@pytest.mark.parametrize("make", [lambda ps: nb.Adam(ps, betas=(-0.1, 0.999)), lambda ps: nb.AdamW(ps, betas=(0.9, -0.5))])
def test_negative_betas_are_rejected(make):
    with pytest.raises(ValueError, match=r"betas must be two numbers in \[0, 1\)"):
        make(make_params(np.random.default_rng(0))[1])


def test_hyper_parameters_given_as_numpy_scalars_are_saved_as_python_numbers(rng):
    """The constructor takes np.float32 rates as numbers and keeps them as floats: its state_dict
    is what a checkpoint writes as JSON, which a NumPy float32 is not."""
    sd = nb.SGD(make_params(rng)[1], lr=np.float32(0.1), momentum=np.float32(0.5), weight_decay=np.int64(0)).state_dict()
    assert all(type(sd[k]) is float for k in ("lr", "momentum", "weight_decay"))
    json.dumps({k: v for k, v in sd.items() if k != "state"})


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.5, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.999, 0.999), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
])
def test_optimizers_follow_torch_optim(name, kwargs, dtype):
    """Against torch.optim itself, state included: parameters and state of every step within a
    few roundings of torch's (the NumPy rules above are written from its documentation; this is
    its code). β1 = 0.999: in float32, 1 − float32(β1) is 1.3e-5 off 1 − β1, far above the
    tolerance."""
    import torch  # noqa: PLC0415

    rng = np.random.default_rng(5)
    layer = nb.Linear(6, 4, dtype=dtype, seed=0)
    layer.bias[...] = rng.normal(size=4)
    params = layer.parameters()
    tparams = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]
    opt, topt = getattr(nb, name)(params, **kwargs), getattr(torch.optim, name)(tparams, **kwargs)
    tol = 1e-13 if dtype == np.float64 else 1e-6
    for _ in range(5):
        for p, t in zip(params, tparams):
            p.grad[...] = rng.normal(size=p.shape)
            t.grad = torch.from_numpy(p.grad.copy())
        opt.step()
        topt.step()
        for p, t, st in zip(params, tparams, opt.state):
            assert p.data.dtype == dtype
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=tol, atol=tol)
            for key, arr in st.items():
                want = topt.state[t][key].numpy().ravel()
                np.testing.assert_allclose(arr, want, rtol=0, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", [nb.Adam, nb.AdamW])
def test_adam_with_beta1_0_keeps_the_gradient_as_its_first_moment(cls, dtype):
    """torch's lerp writes m = g − β1 (g − m) where 1 − β1 ≥ ½: with β1 = 0, m is the gradient,
    exactly. m + 1·(g − m) cancelled: after a gradient of 1e30 the next one, 1, gave m = 0."""
    layer = nb.Linear(2, 1, dtype=dtype, seed=0, bias=False)
    opt = cls(layer.parameters(), lr=0.01, betas=(0.0, 0.999))
    for g in (1e30, 1.0, -3.0, 1e-30):
        layer.grad_weight[...] = g
        opt.step()
        np.testing.assert_array_equal(opt.state[0]["exp_avg"], dtype(g))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kwargs", [
    ("Adam", dict(lr=0.01, betas=(0.0, 0.999))),
    ("Adam", dict(lr=0.01, betas=(0.25, 0.5), eps=1e-3, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.1)),
])
def test_adam_with_beta1_at_most_half_follows_torch_after_a_huge_gradient(name, kwargs, dtype):
    import torch  # noqa: PLC0415

    w0 = np.array([[0.5, -0.25, 0.0, 2.0]], dtype)
    layer = nb.Linear(4, 1, dtype=dtype, seed=0, bias=False)
    layer.weight[...] = w0
    tparam = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt, topt = getattr(nb, name)(layer.parameters(), **kwargs), getattr(torch.optim, name)([tparam], **kwargs)
    tol = 1e-13 if dtype == np.float64 else 1e-6
    for s in (1e30, 1.0, -3.0):
        layer.grad_weight[...] = np.array([[s, -s, 0.5, 0.5 * s]], dtype)
        tparam.grad = torch.from_numpy(layer.grad_weight.copy())
        opt.step()
        topt.step()
        np.testing.assert_allclose(layer.weight, tparam.detach().numpy(), rtol=tol, atol=tol)
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(opt.state[0][key], topt.state[tparam][key].numpy().ravel(), rtol=tol)


@pytest.mark.parametrize("make, name, why", [
    (lambda ps: nb.SGD(ps, lr=1e39), "lr", "is too large for float32"),
    (lambda ps: nb.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e39), "weight_decay", "is too large for float32"),
    (lambda ps: nb.Adam(ps, eps=1e39), "eps", "is too large for float32"),
    (lambda ps: nb.Adam(ps, lr=1e38), "lr / (1 - betas[0]**t)", "is too large for float32"),
    (lambda ps: nb.AdamW(ps, lr=1e20, weight_decay=1e20), "1 - lr * weight_decay", "is too large for float32"),
    (lambda ps: nb.SGD(ps, lr=1e-50), "lr", "is 0 in float32 (too small)"),
    (lambda ps: nb.SGD(ps, lr=0.1, weight_decay=1e-50), "weight_decay", "is 0 in float32 (too small)"),
    (lambda ps: nb.Adam(ps, eps=1e-50), "eps", "is 0 in float32 (too small)"),
    (lambda ps: nb.Adam(ps, lr=1e-50), "lr / (1 - betas[0]**t)", "is 0 in float32 (too small)"),
])
def test_a_hyper_parameter_the_parameters_dtype_cannot_hold_is_refused_before_the_step(make, name, why):
    """Each step casts its scalars to the parameters' dtype: past float32's range they became Inf,
    with NumPy's RuntimeWarning, and the weights Inf or NaN ('training diverged', about a rate the
    dtype cannot hold), or, for Adam's eps, no step at all, silently; below it (lr=1e-50) 0, steps
    that changed nothing (Adam's eps 0: 0/0 = NaN where a gradient stays 0). `nbnet train` and a
    checkpoint's optim/meta refuse such values already; a float64 model takes them."""
    layer = nb.Linear(3, 2, seed=0)
    layer.grad_weight[...], layer.grad_bias[...] = 1, 1
    before = [p.data.copy() for p in layer.parameters()]
    opt = make(layer.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=re.escape(name) + r" = \S+ " + re.escape(why)):
            opt.step()
        assert opt.step_count == 0
        for p, b in zip(layer.parameters(), before):
            np.testing.assert_array_equal(p.data, b)
        wide = nb.Linear(3, 2, seed=0, dtype=np.float64)
        wide.grad_weight[...], wide.grad_bias[...] = 1, 1
        make(wide.parameters()).step()
        opt = nb.SGD(wide.parameters(), lr=0.1)
        opt.lr = np.float32(0.1)  # within float64's range, and compared without a cast to float32
        opt.step()


@pytest.mark.parametrize("cls", [nb.Adam, nb.AdamW])
@pytest.mark.parametrize("name", ["lr", "betas", "weight_decay"])
def test_adams_scalars_are_made_in_double_from_numpy_scalars_set_after_construction(cls, name):
    """The constructor keeps Python floats, but opt.lr = np.float32(0.01) (or betas, weight_decay)
    set afterwards made lr / (1 - β1^t), 1 - β and 1 - lr λ in float32 arithmetic: a float64 model
    stepped otherwise than with the same numbers as floats (1 - β in float32 is the bias the
    docstring of cpu.adam_step warns of)."""
    value = {"lr": 0.01, "betas": (0.9, 0.999), "weight_decay": 0.1}[name]
    runs = []
    for f in (lambda v: float(np.float32(v)), np.float32):  # the same numbers, as float and np.float32
        layer = nb.Linear(5, 4, dtype=np.float64, seed=0)
        opt = cls(layer.parameters())
        setattr(opt, name, tuple(map(f, value)) if name == "betas" else f(value))
        rng = np.random.default_rng(0)
        for _ in range(3):
            layer.grad_weight[...], layer.grad_bias[...] = rng.normal(size=(4, 5)), 1
            opt.step()
        runs.append([p.data.copy() for p in layer.parameters()] + [a.copy() for st in opt.state for a in st.values()])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_a_pickled_model_of_a_realistic_size_trains_as_the_original():
    """A model sent to another process (multiprocessing's spawn or forkserver, a Pool's argument,
    joblib) is pickled: NumPy gives an unpickled array of 1 KiB or more the pickle's bytes object as
    its .base, and nb.train of the copy failed with "'bytes' object has no attribute 'ndim'" where
    it looked for the parameters' flat buffer (the 4-feature models of the test above are too small)."""
    import pickle

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(32, 64)).astype(np.float32), rng.integers(0, 3, 32)
    model = nb.Sequential(nb.Linear(64, 16, seed=0), nb.ReLU(), nb.Linear(16, 3, seed=1))
    copy = pickle.loads(pickle.dumps(model))
    for m in (model, copy):
        nb.train(m, nb.SGD(m.parameters(), lr=0.1, momentum=0.9), (x, y), epochs=2, batch_size=8, seed=0)
    for a, b in zip(model.parameters(), copy.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
