"""Sequential's planned steps (nbnet.model._Plan): after two forwards at one batch shape, forward_reusing
and backward replay the layers' kernel calls without the layers' Python. Same bits as layer by layer,
and back to the layers whenever an array, a layer or the batch is not the planned one."""

import numpy as np
import pytest

import nbnet as nb
from nbnet import layers as nb_layers
from nbnet import simd


def model(act=nb.ReLU, bias=True, dtype=np.float32, n=20):
    return nb.Sequential([nb.Linear(n, 33, seed=0, bias=bias, dtype=dtype), act(),
                          nb.Linear(33, 17, seed=1, dtype=dtype), nb.ReLU(),
                          nb.Linear(17, 5, seed=2, bias=bias, dtype=dtype), nb.Sigmoid()])


def train(m, xs, ys, accumulate_at=(), opt="sgd"):
    loss_fn = nb.SoftmaxCrossEntropy()
    opt = nb.SGD(m.parameters(), lr=0.1, momentum=0.9) if opt == "sgd" else nb.Adam(m.parameters(), lr=0.01)
    losses = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        if i not in accumulate_at:
            opt.zero_grad()
        losses.append(loss_fn.forward(m.forward(x), y))
        assert m.backward(loss_fn.backward()) is None
        opt.step()
    return losses, [p.data.copy() for p in m.parameters()], [p.grad.copy() for p in m.parameters()]


def layer_by_layer(m):
    m._plan_after = float("inf")  # never plans
    return m


# batch 1, 2, 3 take dW's row kernel (cpu.SHORT_SUM), 4 and 7 its blocks, 64 and 65 with 20 inputs the
# forward's broadcast form over Wᵀ (cpu.FORWARD_T_ROWS); Tanh/Sigmoid/Softmax are unfused activations.
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 7, 64, 65])
@pytest.mark.parametrize("act,bias,dtype,opt", [(nb.ReLU, True, np.float32, "sgd"), (nb.Tanh, False, np.float32, "sgd"),
                                                (nb.Softmax, True, np.float64, "adam")])
def test_planned_steps_give_the_same_bits_as_layer_by_layer(batch, act, bias, dtype, opt):
    rng = np.random.default_rng(batch)
    xs = [rng.standard_normal((batch, 20)).astype(dtype) for _ in range(6)]
    ys = [rng.integers(0, 5, batch) for _ in range(6)]
    planned = model(act, bias, dtype)
    got = train(planned, xs, ys, accumulate_at=(3,), opt=opt)  # step 3 adds to the gradients
    want = train(layer_by_layer(model(act, bias, dtype)), xs, ys, accumulate_at=(3,), opt=opt)
    assert planned._plan is not None, "the test must run the planned steps"
    assert got[0] == want[0]
    for a, b in zip(got[1] + got[2], want[1] + want[2]):
        np.testing.assert_array_equal(a, b)


def test_planned_steps_run_no_layer_code(monkeypatch):
    m, x = model(), np.ones((2, 20), np.float32)
    m.forward(x), m.forward(x)
    assert m._plan is not None

    def fail(*args, **kwargs):
        raise AssertionError("a layer's own forward or backward ran")

    for name in ("forward", "forward_relu", "backward"):
        monkeypatch.setattr(nb.Linear, name, fail)
    monkeypatch.setattr(nb_layers._Activation, "forward", fail)
    monkeypatch.setattr(nb_layers._Activation, "backward", fail)
    m.backward(m.forward(x))


def test_a_replaced_weight_is_used_at_once():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 20)).astype(np.float32)
    m, ref = model(), model()
    for _ in range(3):
        m.forward(x)
    assert m._plan is not None
    w = rng.standard_normal((33, 20)).astype(np.float32)
    m.layers[0].weight = w
    ref.layers[0].weight = w.copy()
    np.testing.assert_array_equal(m.forward(x), layer_by_layer(ref).forward(x))


def test_a_layer_run_alone_at_another_batch_size_does_not_fool_the_plan():
    rng = np.random.default_rng(1)
    x, other = rng.standard_normal((3, 20)).astype(np.float32), rng.standard_normal((5, 20)).astype(np.float32)
    m, ref = model(), layer_by_layer(model())
    for _ in range(3):
        m.forward(x)
    m.layers[0].forward(other)  # reallocates layer 0's output buffer
    np.testing.assert_array_equal(m.forward(x), ref.forward(x))
    g, same_shape = np.ones((3, 5), np.float32), other[:3].copy()
    m.layers[0].forward_relu(same_shape, m.layers[1])  # between forward and backward: the caches now
    ref.layers[0].forward_relu(same_shape, ref.layers[1])  # hold another batch, and backward reads it
    m.backward(g), ref.backward(g)
    for p, q in zip(m.parameters(), ref.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


def test_replacing_a_layer_drops_the_plan():
    x = np.ones((2, 20), np.float32)
    m = model()
    m.forward(x), m.forward(x)
    m.layers[5] = nb.Tanh()
    np.testing.assert_allclose(m.forward(x), np.tanh(m.layers[4].out), rtol=1e-6)


def test_input_gradient_still_comes_layer_by_layer():
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((4, 20)), rng.standard_normal((4, 5))
    m, ref = model(dtype=np.float64), layer_by_layer(model(dtype=np.float64))
    for net in (m, ref):
        net.forward(x), net.forward(x)
    assert m._plan is not None
    np.testing.assert_array_equal(m.backward(g, need_input_grad=True), ref.backward(g, need_input_grad=True))


def test_bad_inputs_still_get_the_layers_errors():
    m = model()
    x = np.ones((2, 20), np.float32)
    m.forward(x), m.forward(x)
    with pytest.raises(ValueError, match="expected dtype float32"):
        m.forward(np.ones((2, 20)))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 20\)"):
        m.forward(np.ones((2, 21), np.float32))
    m.forward(x)
    with pytest.raises(ValueError, match="expected gradient of shape"):
        m.backward(np.ones((2, 6), np.float32))


def test_weights_replaced_every_step_do_not_rebuild_a_plan_every_step(monkeypatch):
    """A hand-written update `layer.weight = layer.weight - lr * grad` replaces the array each step;
    planning backs off instead of paying for a plan that is dropped at the next call."""
    builds = []
    real = nb.model._Plan.build
    monkeypatch.setattr(nb.model._Plan, "build", classmethod(lambda cls, m, x: builds.append(1) or real(m, x)))
    m, x = model(), np.ones((2, 20), np.float32)
    for _ in range(200):
        m.forward(x)
        m.layers[0].weight = m.layers[0].weight - np.float32(0.01)
    assert 2 <= len(builds) <= 10


def test_an_epochs_short_last_batch_keeps_planning():
    m = model()
    full, short = np.ones((8, 20), np.float32), np.ones((3, 20), np.float32)
    for _ in range(3):
        for _ in range(4):
            m.forward(full)
        m.forward(short)
    m.forward(full), m.forward(full)
    assert m._plan is not None and m._plan.shape == (8, 20)


def test_an_epochs_short_last_batch_takes_the_same_plan_up_again(monkeypatch):
    """The short batch runs in the first rows of the planned buffers, and the next full batch gets
    those buffers back: the plan was dropped there and rebuilt (13 KB) at every epoch. Still the
    bits of layer by layer, including the full batch's backward right after the short one."""
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((8 if i % 5 < 4 else 3, 20)).astype(np.float32) for i in range(15)]
    ys = [rng.integers(0, 5, len(x)) for x in xs]
    m, plans, step = model(), [], nb.SGD.step
    monkeypatch.setattr(nb.SGD, "step", lambda opt: plans.append(m._plan) or step(opt))
    got = train(m, xs, ys)
    monkeypatch.undo()
    want = train(layer_by_layer(model()), xs, ys)
    for a, b in zip(got[1] + got[2], want[1] + want[2]):
        np.testing.assert_array_equal(a, b)
    first = plans[1]  # built at the second forward of 8 rows
    assert first is not None
    assert all(p is (None if i % 5 == 4 else first) for i, p in enumerate(plans[1:], 1)), plans


def test_optimizer_sees_replaced_arrays_and_zero_marks():
    """The optimizer's cached groups (Optimizer._fast_check): a step right after zero_grad (no
    backward) uses zero gradients, and a replaced parameter array is the one updated."""
    m = nb.Sequential([nb.Linear(3, 2, seed=0)])
    opt = nb.SGD(m.parameters(), lr=0.5)
    x = np.ones((1, 3), np.float32)
    for _ in range(2):
        opt.zero_grad()
        m.backward(m.forward(x))
        opt.step()
    before = m.layers[0].weight.copy()
    opt.zero_grad()
    opt.step()  # gradients read as zeros: nothing moves
    np.testing.assert_array_equal(m.layers[0].weight, before)
    m.layers[0].weight = np.zeros((2, 3), np.float32)
    m.layers[0].grad_weight = np.ones((2, 3), np.float32)
    opt.step()
    np.testing.assert_array_equal(m.layers[0].weight, np.full((2, 3), -0.5, np.float32))


def test_building_a_plan_leaves_zero_grads_marks_alone():
    """The step whose forward builds the plan writes its gradients as the layers do: building it
    once read every `.grad`, which fills the gradients zero_grad marked (nbnet.layers.Linear), so
    that step's backward added to zeros, and dW = g · 0 with g < 0 came out +0.0, not -0.0."""
    rng = np.random.default_rng(3)
    xs, ys = rng.standard_normal((2, 1, 20)).astype(np.float32), rng.integers(0, 5, (2, 1))
    grads = []
    for m in (model(), layer_by_layer(model())):
        loss_fn, opt = nb.SoftmaxCrossEntropy(), nb.SGD(m.parameters(), lr=0.1)
        for x, y in zip(xs, ys):
            opt.zero_grad()
            loss_fn.forward(m.forward(x), y)  # the second forward builds the plan
            m.backward(loss_fn.backward())
        grads.append([p.grad.copy().view(np.uint32) for p in m.parameters()])
    assert any((np.signbit(p.grad) & (p.grad == 0)).any() for p in m.parameters()), "needs a -0.0 gradient"
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_training_and_a_larger_evaluation_batch_do_not_rebuild_plans_every_epoch(monkeypatch):
    """nb.train scores validation and test data in batches of eval_batch_size, here larger than the
    training batch: the layers' buffers grow to the evaluation batch, and training's batch then
    ran in a new view of their first rows at each epoch, so the plans of both shapes were dropped
    and rebuilt every epoch. Now each shape keeps its plan: the builds do not grow with the
    epochs, and the weights are those of layer by layer."""
    builds = []
    real = nb.model._Plan.build.__func__
    monkeypatch.setattr(nb.model._Plan, "build",
                        classmethod(lambda cls, m, x: builds.append(x.shape) or real(cls, m, x)))
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((300, 20)).astype(np.float32), rng.integers(0, 5, 300)
    kwargs = dict(batch_size=16, val_split=0.4, eval_batch_size=40)  # 180 train rows: a short last batch

    def run(epochs, m):
        nb.train(m, nb.SGD(m.parameters(), lr=0.1, momentum=0.9), (x, y, x, y), epochs=epochs, **kwargs)
        return m

    counts = []
    for epochs in (2, 6):
        builds.clear()
        run(epochs, model(act=nb.ReLU)[:5])  # logits out: cross-entropy refuses a Sigmoid head
        counts.append(len(builds))
    assert counts[0] == counts[1], (counts, builds)
    monkeypatch.undo()
    got, want = run(6, model(act=nb.ReLU)[:5]), run(6, layer_by_layer(model(act=nb.ReLU)[:5]))
    for p, q in zip(got.parameters(), want.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_pickles_and_copies_carry_no_plans():
    """A pickle of a trained model carried its plans (up to nb.model.KEPT_PLANS: the layers'
    arrays again and the kernels), though they name the original layers by id and a copy never
    runs one. The copy plans afresh and trains to the same bits as the original."""
    import copy
    import pickle

    m = model()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((8, 20)).astype(np.float32) for _ in range(4)]
    ys = [rng.integers(0, 5, 8) for _ in range(4)]
    train(m, xs, ys)
    assert m._plan is not None and m._plans
    data = pickle.dumps(m)
    assert b"_Plan" not in data
    for twin in (pickle.loads(data), copy.deepcopy(m)):
        assert twin._plan is None and twin._plans == {}
        got, want = train(twin, xs, ys)[1], train(copy.deepcopy(m), xs, ys)[1]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        assert twin._plan is not None  # it planned its own steps


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "layers copied"])
def test_a_copied_model_fed_its_own_buffer_copies_that_batch(how):
    """A forward copies a batch that is (a view of) one of the layers' arrays before writing them,
    but looked for it only among the arrays nbnet's empty() made: a pickle or deepcopy gives every
    array memory of its own, and a copied model fed its own layer's output wrote over that batch
    in the forward, so dW = Gᵀ X read another layer's output (silently wrong gradients)."""
    import copy
    import pickle

    rng = np.random.default_rng(5)
    x, g = rng.standard_normal((4, 20)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)

    def grads(feed_copy):
        m = layer_by_layer(nb.Sequential([nb.Linear(20, 20, seed=0), nb.ReLU(), nb.Linear(20, 20, seed=1),
                                          nb.Linear(20, 5, seed=2)]))
        m.forward(x)
        m = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)),
             "layers copied": lambda m: layer_by_layer(nb.Sequential(copy.deepcopy(m.layers)))}[how](m)
        m.forward(x)  # a copy carries no buffers (Layer.__getstate__): its forward makes them
        own = m.layers[2].out  # width 20: a batch the model takes
        m.forward(own.copy() if feed_copy else own)
        m.zero_grad()
        m.backward(g)
        return [p.grad.copy() for p in m.parameters()]

    for a, b in zip(grads(False), grads(True)):
        np.testing.assert_array_equal(a, b)


def _twin_ops(rng, n=30):
    """A random sequence of what a user does to a model between steps (see test_random_use_...)."""
    sizes, ops = [1, 2, 3, 5, 8, 16, 64, 70, 100], []
    for _ in range(n):
        k = str(rng.choice(["train"] * 6 + ["eval", "bwd_in", "bwd_noin", "slice", "predict", "evaluate", "replace",
                                             "own", "own", "copy", "astype", "alone"]))
        ops.append((k, int(rng.choice(sizes)), int(rng.integers(1, 7)), str(rng.choice(["", "", "acc", "reusing", "strided"])),
                    str(rng.choice(["pickle", "deepcopy"])), str(rng.choice(["weight", "grad", "param", "inplace"])),
                    str(rng.choice(["out0", "out1", "out2", "out3", "w0", "w2", "dinp0", "dinp1", "dinp3"])),
                    int(rng.choice([1, 7, 50, 130])), int(rng.choice([1, 3, 8, 16, 40, 1000]))))
    return ops


@pytest.mark.parametrize("seed", range(40))
def test_random_use_gives_the_bits_of_layer_by_layer(seed):
    """Random sequences of batch sizes (1, short, larger than any before, repeated) through training
    steps (with and without zero_grad), forwards alone, slices, nb.predict / nb.evaluate, backward
    with and without dL/dX, replaced and updated-in-place weights, a layer run alone, the model's
    own arrays as its batch, pickles, deep copies and astype: every output, gradient and weight is
    bit for bit that of a twin that never plans. The twin is fed a copy where the model gets its
    own array (a batch is what the caller passed, at the time of the call)."""
    import copy
    import pickle

    def make(dtype=np.float32):
        return nb.Sequential([nb.Linear(20, 20, seed=0, dtype=dtype), nb.ReLU(), nb.Linear(20, 20, seed=1, dtype=dtype),
                              nb.Tanh(), nb.Linear(20, 17, seed=2, dtype=dtype), nb.ReLU(),
                              nb.Linear(17, 5, seed=3, bias=False, dtype=dtype)])

    rng = np.random.default_rng(seed)
    nets = [make(), layer_by_layer(make())]
    opts = [nb.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in nets]
    loss_fns, dtype = [nb.SoftmaxCrossEntropy(), nb.SoftmaxCrossEntropy()], np.float32
    for step, (kind, n, depth, how, copier, replace, own, rows, eval_batch) in enumerate(_twin_ops(rng)):
        x = rng.standard_normal((n, 20)).astype(dtype)
        xs = [np.repeat(x, 2, axis=0)[::2], x.copy()[::1]] if how == "strided" else [x, x.copy()]
        if kind == "own":
            L0, L1 = nets[0].layers, nets[1].layers
            index, name = int(own[-1]), {"out": "out", "w": "weight", "dinp": "dinp"}[own[:-1]]
            xs = [getattr(L0[index], name), getattr(L1[index], name)]
            if xs[0] is None or xs[0].shape != xs[1].shape or xs[0].shape[1] != 20:
                continue
            np.testing.assert_array_equal(xs[0], xs[1])
            xs[1], n, kind = xs[1].copy(), len(xs[0]), "train"
        results = []
        for i, m in enumerate(nets):
            r = []
            if kind == "train":
                if how != "acc":
                    opts[i].zero_grad()
                r.append(loss_fns[i].forward((m.forward_reusing if how == "reusing" else m.forward)(xs[i]), np.arange(n) % 5))
                m.backward(loss_fns[i].backward())
                opts[i].step()
            elif kind == "eval":
                r.append(m.forward(xs[i]))
            elif kind == "slice":
                r.append(m[:depth].forward(xs[i]))
            elif kind in ("bwd_in", "bwd_noin"):
                r.append(m.forward(xs[i]))
                r.append(m.backward(np.cos(3 * r[0]).astype(dtype), need_input_grad=kind == "bwd_in"))
            elif kind in ("predict", "evaluate"):
                data = np.random.default_rng(rows).standard_normal((rows, 20))
                r.append(nb.predict(m, data, batch_size=eval_batch, proba=True) if kind == "predict" else
                         nb.evaluate(m, data, np.arange(rows) % 5, batch_size=eval_batch)["loss"])
            elif kind == "replace":
                layer = m.layers[2 * (depth % 4)]
                if replace == "weight":
                    layer.weight = layer.weight * np.asarray(0.5, dtype)
                elif replace == "grad":
                    layer.grad_weight = np.ones_like(layer.weight)
                elif replace == "param":
                    m.parameters()[0].data = m.layers[0].weight + np.asarray(1, dtype)
                else:
                    layer.weight *= np.asarray(0.5, dtype)
            elif kind == "copy":
                nets[i], opts[i] = (copy.deepcopy if copier == "deepcopy" else lambda o: pickle.loads(pickle.dumps(o)))((m, opts[i]))
            elif kind == "astype":
                nets[i] = m.astype(np.float64 if depth % 2 else np.float32)
                nets[i]._plan_after = m._plan_after
                opts[i] = nb.SGD(nets[i].parameters(), lr=0.05, momentum=0.9)
            else:  # a layer alone at another batch size: its buffer and cache change under the plan
                m.layers[0].forward(np.ones((rows, 20), dtype))
            results.append(r)
        dtype = nets[0].dtype.type
        for a, b in zip(*results):
            np.testing.assert_array_equal(a, b, err_msg=f"step {step} {kind}")
        for p, q in zip(*[[v for layer in m.layers for k, v in sorted(vars(layer).items())
                           if k in ("weight", "bias", "_grad_weight", "_grad_bias", "_zero_weight", "_zero_bias")]
                          for m in nets]):
            np.testing.assert_array_equal(p, q, err_msg=f"step {step} {kind}")


def test_building_a_model_of_copied_layers_looks_through_no_layer():
    """Sequential.__init__ and unpickling looked through copied layers' attributes (vars(layer)) to
    put their carried buffers back into nbnet's own arrays; on CPython 3.11 vars() leaves a layer's
    attributes in a dict of their own, and a layer-by-layer step at batch 1 took 2.6 µs longer for
    good. A copy carries no buffers now (Layer.__getstate__): its next forward makes them."""
    import copy
    import pickle

    m = model()
    m.forward(np.ones((4, 20), np.float32))
    for layers in (copy.deepcopy(m.layers), pickle.loads(pickle.dumps(m)).layers):
        assert all(getattr(layer, "out", None) is None for layer in layers)
        twin = nb.Sequential(layers)
        y = twin.forward(np.ones((4, 20), np.float32))
        np.testing.assert_array_equal(y, m.forward(np.ones((4, 20), np.float32)))
        assert simd.made_here(layers[0].out)


def test_a_kept_plan_keeps_no_array_the_layers_replaced():
    """A plan built at an evaluation batch held every array the layers had then: a
    backward(need_input_grad=True) at that batch, which replaced the first layers' older (larger)
    dinp arrays, left them alive in the plan for as long as it was kept."""
    import gc  # noqa: PLC0415
    import weakref  # noqa: PLC0415

    m = nb.Sequential(nb.Linear(20, 8), nb.ReLU(), nb.Linear(8, 3))
    x, g = np.ones((4, 20), np.float32), np.ones((4, 3), np.float32)
    for rows in (5000, 6000):
        if rows == 6000:
            refs = [weakref.ref(a) for layer in m.layers for a in vars(layer).values()
                    if type(a) is np.ndarray and a.shape[0] == 5000]
        for _ in range(3):
            m(np.ones((rows, 20), np.float32))
        m.backward(np.ones((rows, 3), np.float32), need_input_grad=True)
        for _ in range(3):
            m(x)
            m.backward(g)
    assert (6000, 20) in m._plans and refs
    gc.collect()
    assert [r().shape for r in refs if r() is not None] == []


def test_a_batch_that_is_the_first_layers_dinp_survives_a_backward_with_input_gradient():
    """A planned forward copied a batch that is (a view of) an array it does not run on only until a
    plan's alias map was cut to its own arrays: model(model[0].dinp), backward(need_input_grad=True)
    (layer by layer: it writes the first layer's dinp, that very batch, after dW read it), then a
    second backward of that forward read dX as its batch, and the first layer's dW differed from
    a model that never plans (by up to 4.1). The map holds the layers' other arrays weakly."""
    import copy

    rng = np.random.default_rng(0)
    m = model()
    twin = layer_by_layer(copy.deepcopy(m))
    x = rng.standard_normal((8, 20)).astype(np.float32)
    g = rng.standard_normal((8, 5)).astype(np.float32)
    grads = []
    for mm in (m, twin):
        for _ in range(3):
            mm.zero_grad()
            mm.forward(x)
            mm.backward(g, need_input_grad=True)
        mm.zero_grad()
        mm.forward(mm.layers[0].dinp)
        mm.backward(g, need_input_grad=True)
        mm.backward(g)
        grads.append([p.grad.copy() for p in mm.parameters()])
    assert m._plan is not None
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_views_of_a_buffer_are_kept_least_recently_used_first_out():
    """Layer._first_rows dropped its oldest row count, not its least recently used: with a fifth
    row count in an epoch (the batch, its short last one, evaluation's two, one more), the training
    batch's view could go, and its plan with it, rebuilt every epoch."""
    lin = nb.Linear(4, 3, seed=0)
    x = np.ones((10, 4), np.float32)
    lin.forward(x)  # a 10-row buffer
    lin.forward(x[:8])
    first = lin.out
    for rows in (3, 2, 5):
        lin.forward(x[:rows])
    lin.forward(x[:8])
    assert lin.out is first  # a hit: now the most recently used
    lin.forward(x[:6])  # a fifth row count: the least recently used (3 rows) goes
    lin.forward(x[:8])
    assert lin.out is first


class Double:
    """A parameter-free layer of a user's, with __slots__ (no instance dict)."""

    __slots__ = ()

    def forward(self, x):
        return 2 * x

    def backward(self, g, need_input_grad=True):
        return 2 * g

    def parameters(self):
        return []

    def zero_grad(self):
        pass


def test_a_model_with_a_slots_layer_of_the_users_pickles():
    """A Sequential's unpickling looked through its layers' attributes; a layer of the user's with
    __slots__ has none, and pickle.loads raised AttributeError."""
    import pickle

    m = nb.Sequential([nb.Linear(3, 2, seed=0), Double()])
    y = m.forward(np.ones((4, 3), np.float32))
    back = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(back.forward(np.ones((4, 3), np.float32)), y)


def test_a_slice_of_a_model_of_slots_layers_shares_its_lock():
    """Models that share layers share a lock through a table of weak references to the layers; a
    layer with __slots__ has none, so a slice is given its model's lock (and forward-thread record)
    itself: else a slice's forward in one thread and the model's in another wrote the same buffers."""
    m = nb.Sequential([Double(), Double()])
    part = m[:1]
    assert part.lock is m.lock and part._forward_thread is m._forward_thread


def test_a_model_that_only_predicts_holds_no_backward_buffers():
    """A plan planned the backward along with the forward, with the buffers it writes: model(x)
    twice at 400,000 rows (784-64-64-10) held ~200 MB more from the second call on, for a backward
    that never came. The backward is planned at its first call, and gives layer by layer's bits."""
    m, ref = model(), layer_by_layer(model())
    x = np.random.default_rng(0).normal(size=(9, 20)).astype(np.float32)
    for _ in range(3):
        out = m(x)
    assert m._plan is not None
    assert [name for layer in m.layers for name in vars(layer) if name.startswith("dinp")
            and getattr(layer, name) is not None] == []
    g = np.ones_like(out)
    for _ in range(2):
        for net in (m, ref):
            net.zero_grad()
            net(x)
            net.backward(g)
    assert m._plan.bwd is not None  # planned, and run (the second time)
    for p, q in zip(m.parameters(), ref.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


def test_a_layer_swapped_in_between_forward_and_backward_is_not_run_over_by_the_plan():
    """model.layers[2] replaced after the forward: the plan ran the old layers, so the backward is
    the layers' own, and the new layer refuses (no forward yet). The plan's backward wrote the old
    layer's gradients and left the new one's untouched, silently."""
    model = nb.Sequential(nb.Linear(4, 8, seed=0), nb.ReLU(), nb.Linear(8, 3, seed=1))
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    g = np.ones((5, 3), np.float32)
    model(x)
    model.backward(g)  # forward and backward both planned
    model(x)
    old = model.layers[2]
    before = old.grad_weight.copy()
    model.layers[2] = nb.Linear(8, 3, seed=2)
    with pytest.raises(ValueError, match="before forward"):
        model.backward(g)
    np.testing.assert_array_equal(old.grad_weight, before)


def test_a_gradient_that_is_not_c_contiguous_gives_the_same_bits():
    """A Fortran-order or strided dL/dY (a slice of a wider array): the plan's compiled steps take
    C-contiguous arrays only, so such a gradient goes the layers' way (fed to the plan it was a
    Numba typing error)."""
    model = nb.Sequential(nb.Linear(4, 8, seed=0), nb.ReLU(), nb.Linear(8, 3, seed=1))
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    g = np.random.default_rng(1).random((5, 3), dtype=np.float32)
    model(x)
    model.zero_grad()
    model.backward(g)
    want = [p.grad.copy() for p in model.parameters()]
    for odd in (np.asfortranarray(g), np.repeat(g, 2, axis=1)[:, ::2]):
        assert not odd.flags.c_contiguous
        model(x)
        model.zero_grad()
        model.backward(odd)
        for p, w in zip(model.parameters(), want):
            np.testing.assert_array_equal(p.grad, w)
