"""Keras habits with nb.train / nb.evaluate / nb.predict: each either works, or is refused with
the nbnet way named, before any training (never after an epoch, never a silent wrong answer)."""

from types import SimpleNamespace

import numpy as np
import pytest

import nbnet as nb


def setup():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    model = nb.Sequential(nb.Linear(4, 8, seed=0), nb.ReLU(), nb.Linear(8, 3, seed=1))
    return model, nb.SGD(model.parameters(), lr=0.1), x, y


def test_history_history_is_the_metrics_by_name_and_a_keras_name_says_nbnets():
    model, opt, x, y = setup()
    history = nb.train(model, opt, (x, y), epochs=3, batch_size=16, val_split=0.25)
    columns = history.history
    assert columns["train_loss"] == [h["train_loss"] for h in history]
    assert columns["val_accuracy"] == [h["val_accuracy"] for h in history]
    assert columns["epoch"] == [1, 2, 3]
    with pytest.raises(KeyError, match="nbnet's name for it is 'train_loss'"):
        columns["loss"]
    with pytest.raises(KeyError, match="no metric 'val_r2' in this history: it has epoch, train_loss"):
        columns["val_r2"]
    assert nb.History().history == {}


class _KerasCallback:
    def on_epoch_end(self, epoch, logs=None):
        pass


@pytest.mark.parametrize("name", ["on_step", "on_epoch", "on_best", "should_stop"])
@pytest.mark.parametrize("callback", [_KerasCallback(), [_KerasCallback()]])
def test_a_callback_that_is_not_a_function_is_refused_before_any_step(name, callback):
    """A Keras callback object (or a list of them) failed with "'X' object is not callable" only
    when first called: after a whole epoch had trained, for on_epoch and on_best."""
    model, opt, x, y = setup()
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(TypeError, match=f"{name} must be a function or None, got {type(callback).__name__}"):
        nb.train(model, opt, (x, y), epochs=2, val_split=0.25, **{name: callback})
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))


def test_keras_dataset_pairs_are_refused_naming_the_flat_tuple():
    """keras.datasets' ((x_train, y_train), (x_test, y_test)) failed in NumPy: "setting an array
    element with a sequence ... inhomogeneous shape"."""
    model, opt, x, y = setup()
    with pytest.raises(ValueError, match=r"pass \(x_train, y_train, x_test, y_test\)"):
        nb.train(model, opt, ((x, y), (x, y)), epochs=1)
    nb.train(model, opt, (x, y, x, y), epochs=1)  # the flat tuple trains
    # Two rows of a list x and their labels are data, not pairs: still trained.
    nb.train(model, opt, (((0.0, 1.0, 2.0, 3.0), (1.0, 0.0, 1.0, 0.0)), (0, 2)), epochs=1)


@pytest.mark.parametrize("function, keyword, hint", [
    ("train", "validation_split", "nbnet's is val_split="),
    ("train", "validation_data", r"nbnet's is val_data=\(x_val, y_val\)"),
    ("train", "callbacks", "on_epoch"),
    ("train", "initial_epoch", "state="),
    ("train", "verbose", "print from on_epoch"),
    ("train", "class_weight", "no class or sample weights"),
    ("evaluate", "verbose", "nbnet prints no progress"),
    ("evaluate", "return_dict", "returns a dict"),
    ("predict", "verbose", "nbnet prints no progress"),
])
def test_a_keras_keyword_names_the_nbnet_way(function, keyword, hint):
    model, opt, x, y = setup()
    call = {"train": lambda **kw: nb.train(model, opt, (x, y), epochs=1, **kw),
            "evaluate": lambda **kw: nb.evaluate(model, x, y, **kw),
            "predict": lambda **kw: nb.predict(model, x, **kw)}[function]
    with pytest.raises(TypeError, match=rf"{function}\(\) got an unexpected keyword argument '{keyword}' \(.*{hint}"):
        call(**{keyword: 0})
    with pytest.raises(TypeError, match=rf"{function}\(\) got an unexpected keyword argument 'colour'$"):
        call(colour=0)
    if function != "train":  # evaluate and predict take no on_epoch: their hint sent users to one
        with pytest.raises(TypeError) as e:
            call(verbose=0)
        assert "on_epoch" not in str(e.value)


@pytest.mark.parametrize("opt, says", [  # (lr=\.\.\.: a bare ... matched lr=0.1 too)
    ("adam", r"such as nb.Adam\(model.parameters\(\), lr=\.\.\.\), not the string 'adam'$"),
    ("SGD", r"such as nb.SGD\(model.parameters\(\), lr=\.\.\.\), not the string 'SGD'$"),
    (" Adam\n", r"such as nb.Adam\(model.parameters\(\), lr=\.\.\.\), not the string ' Adam\\n'$"),
    ("rmsprop", r"such as nb.SGD\(model.parameters\(\), lr=0\.1\), not the string 'rmsprop'$"),
    ("x" * 100, r"such as nb.SGD\(model.parameters\(\), lr=0\.1\), not the string '" + "x" * 40 + "'$"),  # cut
    (nb.Adam, r"Adam\(model.parameters\(\), \.\.\.\), not the class Adam$"),
    (None, r"such as nb.SGD\(model.parameters\(\), lr=0\.1\), got NoneType$"),
    # torch's optimizer has step() and zero_grad(), and param_groups where nbnet's has params
    (SimpleNamespace(step=lambda: None, zero_grad=lambda: None, param_groups=[]),
     r"such as nb.SGD\(model.parameters\(\), lr=0\.1\), got SimpleNamespace$"),
])
def test_an_optimizer_named_or_given_as_its_class_says_how_to_make_one(opt, says):
    """Keras' compile(optimizer="adam"), or nb.Adam for nb.Adam(...): "'str' object has no attribute
    'params'" (an AttributeError from inside train)."""
    model, _, x, y = setup()
    with pytest.raises(TypeError, match=r"^opt must be an optimizer made for the model's parameters, " + says):
        nb.train(model, opt, (x, y), epochs=1)


def test_x_and_y_as_two_arguments_say_that_data_is_one_tuple():
    """Keras' fit(x, y): nb.train(model, opt, x, y) was Python's "train() takes 3 positional arguments
    but 4 positional arguments (and 1 keyword-only argument) were given", with no word of the tuple."""
    model, opt, x, y = setup()
    with pytest.raises(TypeError, match=r"^train\(\) takes 3 positional arguments \(model, opt, data\) but 4 were "
                                        r"given: data is one tuple, nb.train\(model, opt, \(x_train, y_train\), "):
        nb.train(model, opt, x, y, epochs=1)
    with pytest.raises(TypeError, match=r"but 6 were given"):
        nb.train(model, opt, x, y, x, y, epochs=1)
    with pytest.raises(TypeError, match=r"but 4 were given: epochs and the other options go by keyword, "
                                        r"nb.train\(model, opt, data, epochs=...\)$"):
        nb.train(model, opt, (x, y), 32, epochs=1)  # the tuple given, batch_size positional (Keras' third)


def test_a_loss_object_for_loss_says_its_name():
    """PyTorch's habit, loss=nb.SoftmaxCrossEntropy(): "unknown loss SoftmaxCrossEntropy()", with
    no word of the name that is that loss."""
    model, opt, x, y = setup()
    for obj, name in ((nb.SoftmaxCrossEntropy(), "cross-entropy"), (nb.MSELoss(), "mse"), (nb.BCEWithLogits(), "bce")):
        for call in (lambda: nb.train(model, opt, (x, y), epochs=1, loss=obj), lambda: nb.evaluate(model, x, y, loss=obj)):
            with pytest.raises(ValueError, match=rf"; loss= takes a name: {type(obj).__name__}\(\) is loss='{name}'$"):
                call()
    with pytest.raises(ValueError, match=r"^unknown loss \['mse'\] \(use cross-entropy, mse, bce\)$"):
        nb.evaluate(model, x, y, loss=["mse"])  # unhashable: was "TypeError: unhashable type: 'list'"


def test_one_bce_label_a_row_for_a_model_of_two_outputs_says_what_fits():
    """Keras' binary classifier with a 2-unit head, given (N,) 0/1 labels and loss bce: refused as
    'targets of shape (N, 1)' (not what was passed), without what to change."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    model = nb.Sequential(nb.Linear(4, 8, seed=0), nb.ReLU(), nb.Linear(8, 2, seed=1))
    hint = r"\(one 0/1 label a row, \(N,\) or \(N, 1\): a yes/no model has 1 output; .* take loss cross-entropy\)"
    for labels in (y, y[:, None]):
        with pytest.raises(ValueError, match=hint):
            nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, labels), epochs=1, loss="bce")
        with pytest.raises(ValueError, match=hint):
            nb.evaluate(model, x, labels, loss="bce")
    nb.train(model, nb.SGD(model.parameters(), lr=0.1), (x, y), epochs=1)  # as class labels: trains
