"""The same numbers whichever way they are asked for (README, "Same bits, whichever way you ask"):
what is bitwise equal, and the one thing that is not, a Linear's sum order by batch size."""

import numpy as np

import nbnet as nb
from nbnet import cpu


def small_model():
    # 20 inputs: a short sum, so from FORWARD_T_ROWS rows the first Linear takes the broadcast form.
    return nb.Sequential(nb.Linear(20, 64, seed=0), nb.ReLU(), nb.Linear(64, 32, seed=1), nb.Tanh(),
                         nb.Linear(32, 3, seed=2))


def data(rows=300):
    rng = np.random.default_rng(0)
    return rng.standard_normal((rows, 20)).astype(np.float32), rng.integers(0, 3, rows)


def test_a_rows_output_is_the_same_bits_wherever_it_sits_in_a_batch_of_either_form():
    model, (x, _) = small_model(), data()
    small, large = cpu.FORWARD_T_ROWS - 1, 203  # 203: rows left over after the kernels' row blocks
    assert not cpu.forward_over_weight_t(small, 20, 64, np.float32)
    assert cpu.forward_over_weight_t(large, 20, 64, np.float32)
    one_by_one = np.concatenate([model(x[i : i + 1]) for i in range(small)])
    np.testing.assert_array_equal(model(x[:small]), one_by_one)
    np.testing.assert_array_equal(model(x[::-1][-small:])[::-1], one_by_one)
    whole, order = model(x[:large]), np.random.default_rng(1).permutation(large)
    np.testing.assert_array_equal(model(x[:large][order]), whole[order])
    np.testing.assert_array_equal(model(x[:large + 50])[:large], whole)  # more rows, same form


def test_predict_and_evaluate_agree_at_every_batch_size_to_the_last_bits_of_the_loss():
    model, (x, y) = small_model(), data()
    for size in (1, 7, 64, 300):
        classes, scores = nb.predict(model, x, batch_size=size), nb.predict(model, x, proba=True, batch_size=size)
        score = nb.evaluate(model, x, y, batch_size=size)
        assert score["accuracy"] == np.mean(classes == y)  # the same classes, counted exactly
        np.testing.assert_array_equal(classes, scores.argmax(axis=1))
        z = np.concatenate([model(x[s : s + size]) for s in range(0, len(x), size)]).astype(np.float64)
        top = z.max(axis=1)
        exact = np.mean(np.log(np.exp(z - top[:, None]).sum(axis=1)) + top - z[np.arange(len(y)), y])
        assert abs(score["loss"] - exact) <= 1e-6 * exact  # a float32 mean per batch


def test_train_is_bit_for_bit_the_hand_written_loop_over_batches_seeded_seed_epoch():
    x, y = data(250)  # 250 rows: each epoch ends on a short batch
    trained, by_hand = small_model(), small_model()
    nb.train(trained, nb.Adam(trained.parameters(), lr=1e-2), (x, y), epochs=2, batch_size=64, seed=5)
    opt, loss_fn = nb.Adam(by_hand.parameters(), lr=1e-2), nb.SoftmaxCrossEntropy()
    for epoch in range(2):
        for xb, yb in nb.batches(x, y, batch_size=64, shuffle=True, seed=(5, epoch)):
            opt.zero_grad()
            loss_fn.forward(by_hand.forward(xb), yb)
            by_hand.backward(loss_fn.backward())
            opt.step()
    for a, b in zip(trained.parameters(), by_hand.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_planned_unplanned_and_layer_by_layer_forwards_are_the_same_bits():
    model, (x, _) = small_model(), data()
    unplanned = small_model()
    unplanned._plan_after = float("inf")
    for _ in range(3):
        planned_out, unplanned_out = model(x), unplanned(x)
    assert model._plan is not None and unplanned._plan is None
    np.testing.assert_array_equal(planned_out, unplanned_out)
    h = x
    for layer in model:  # Linear and ReLU apart: not the fused kernel
        h = layer.forward(h)
    np.testing.assert_array_equal(h, planned_out)
    np.testing.assert_array_equal(model.forward_reusing(x), planned_out)
    np.testing.assert_allclose(model.astype(np.float64)(x.astype(np.float64)), planned_out, rtol=0, atol=1e-5)
