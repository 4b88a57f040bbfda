"""nbnet.sklearn's estimators: scikit-learn's own estimator checks, plus what users do with them
(Pipeline, GridSearchCV, pickle, clone, partial_fit, early stopping, labels of any type)."""

import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", minversion="1.6")  # parametrize_with_checks' expected_failed_checks

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_regressor_multioutput, parametrize_with_checks  # noqa: E402

from nbnet.sklearn import MLPClassifier, MLPRegressor, glorot_like_sklearn  # noqa: E402


@pytest.fixture(autouse=True)
def one_numba_thread():
    """These tests check behaviour, not speed: one thread keeps them quick on a loaded machine
    (results are bitwise the same at any thread count; threading is tested with the kernels)."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def expected_failed_checks(estimator):
    """Checks these estimators fail on purpose, each with the reason."""
    if isinstance(estimator, MLPRegressor):
        return {
            "check_regressor_multioutput": (
                "asks for float64 predictions; nbnet predicts in the estimator's dtype (float32 by "
                "default, as every nbnet model: no silent upcast). With dtype=np.float64 it passes: "
                "test_multioutput_check_passes_in_float64."
            ),
        }
    return {}


@parametrize_with_checks([MLPClassifier(random_state=0), MLPRegressor(random_state=0)],
                         expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_multioutput_check_passes_in_float64():
    check_regressor_multioutput("MLPRegressor", MLPRegressor(random_state=0, dtype=np.float64))


def blobs(n=300, classes=3, seed=0):
    return make_classification(n, 8, n_informative=5, n_redundant=0, n_classes=classes,
                               n_clusters_per_class=1, class_sep=2.0, random_state=seed)


def test_thin_the_same_run_as_the_loop_nbnet_train_runs():
    from nbnet.train import build_model, make_optimizer, train

    x, y = blobs()
    clf = MLPClassifier((16, 8), solver="sgd", learning_rate_init=0.05, momentum=0.9,
                        nesterovs_momentum=False, alpha=0.0, batch_size=32, max_iter=3, random_state=7)
    with pytest.warns(ConvergenceWarning):
        clf.fit(x, y)
    model = build_model(8, [16, 8], 3, "relu", np.float32, seed=7)
    glorot_like_sklearn(model, "relu")  # scikit-learn's starting scale, from the same draws
    opt = make_optimizer("sgd", model, lr=0.05, momentum=0.9, weight_decay=0.0)
    history = train(model, opt, (x.astype(np.float32), y, None, None), epochs=3, batch_size=32, seed=7)
    linears = [layer for layer in model.layers if layer.parameters()]
    for coef, intercept, layer in zip(clf.coefs_, clf.intercepts_, linears, strict=True):
        np.testing.assert_array_equal(coef, layer.weight.T)  # bitwise: the same loop, seeds and batches
        np.testing.assert_array_equal(intercept, layer.bias)
    assert clf.loss_curve_ == [h["train_loss"] for h in history]


def test_starts_from_sklearns_glorot_uniform_bound():
    x, y = blobs()
    for activation, factor in (("relu", 6), ("logistic", 2)):
        clf = MLPClassifier((400,), activation=activation, random_state=0, max_iter=1, learning_rate_init=1e-12)
        with pytest.warns(ConvergenceWarning):
            clf.fit(x, y)
        w = clf.coefs_[0]  # (8, 400): bound sqrt(factor / 408), nearly reached by 3,200 draws
        bound = np.sqrt(factor / (8 + 400))
        assert bound * 0.99 < np.abs(w).max() <= bound * (1 + 1e-6)


def test_fitted_attributes_as_sklearn_users_read_them():
    x, y = blobs()
    labels = np.array(["cat", "dog", "eel"])[y]
    with pytest.warns(ConvergenceWarning):
        clf = MLPClassifier((16, 8), random_state=0, max_iter=20).fit(x, labels)
    assert list(clf.classes_) == ["cat", "dog", "eel"]
    assert set(clf.predict(x)) <= set(clf.classes_)
    assert clf.n_features_in_ == 8 and clf.n_layers_ == 4 and clf.n_outputs_ == 3
    assert [c.shape for c in clf.coefs_] == [(8, 16), (16, 8), (8, 3)]  # (in, out) like sklearn
    assert [b.shape for b in clf.intercepts_] == [(16,), (8,), (3,)]
    assert clf.n_iter_ == len(clf.loss_curve_) == 20 and clf.t_ == 20 * len(x)
    assert clf.best_loss_ == min(clf.loss_curve_) and clf.loss_ == clf.loss_curve_[-1]
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    assert clf.out_activation_ == "softmax" and clf.predict_proba(x).dtype == np.float32
    # coefs_ are views of the model's (out, in) weights: X·coefs + intercepts is the forward.
    h = np.maximum(x.astype(np.float32) @ clf.coefs_[0] + clf.intercepts_[0], 0)
    h = np.maximum(h @ clf.coefs_[1] + clf.intercepts_[1], 0)
    z = h @ clf.coefs_[2] + clf.intercepts_[2]
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), clf.predict_proba(x), atol=1e-5)


@pytest.mark.parametrize("labels", [np.array([-1, 1]), np.array([3, 7]), np.array(["no", "yes"]),
                                    np.array([False, True]), np.array([1.0, 2.0])])
def test_binary_labels_of_any_type(labels):
    x, y = blobs(classes=2)
    clf = MLPClassifier((16,), random_state=0, max_iter=30).fit(x, labels[y])
    assert clf.classes_.dtype == labels.dtype and list(clf.classes_) == sorted(labels)
    assert clf.predict(x).dtype == labels.dtype and clf.score(x, labels[y]) > 0.9
    proba = clf.predict_proba(x)
    assert proba.shape == (len(x), 2) and np.allclose(proba.sum(1), 1)
    # As scikit-learn: one logistic output trained with binary cross-entropy.
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 1 and clf.coefs_[-1].shape == (16, 1)
    z = np.maximum(x.astype(np.float32) @ clf.coefs_[0] + clf.intercepts_[0], 0) @ clf.coefs_[1] + clf.intercepts_[1]
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-z[:, 0])), atol=1e-5)


def test_labels_as_a_list_and_one_class_refused():
    x, y = blobs()
    clf = MLPClassifier((8,), random_state=0, max_iter=5).fit(x.tolist(), [f"c{v}" for v in y])
    assert list(clf.classes_) == ["c0", "c1", "c2"]
    one = MLPClassifier()
    with pytest.raises(ValueError, match="at least 2 classes"):
        one.fit(x, np.zeros(len(x)))
    assert not hasattr(one, "classes_")  # still unfitted
    with pytest.raises(sklearn.exceptions.NotFittedError):
        one.predict(x)


def test_multilabel_indicator_targets():
    x, y3 = blobs(n=400)
    Y = np.stack([y3 == 0, y3 != 1, x[:, 0] > 0], axis=1).astype(int)  # 3 labels, some rows with 2
    clf = MLPClassifier((32,), random_state=0, max_iter=100, learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, Y)
    assert list(clf.classes_) == [0, 1, 2] and clf.n_outputs_ == 3 and clf.out_activation_ == "logistic"
    pred, proba = clf.predict(x), clf.predict_proba(x)
    assert pred.shape == proba.shape == (400, 3) and set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(int))
    assert clf.score(x, Y) > 0.8  # subset accuracy, as scikit-learn
    with pytest.raises(ValueError, match="indicator"):
        clf.partial_fit(x, y3)
    with pytest.raises(ValueError, match="multi-label indicator"):
        MLPClassifier().fit(x, np.stack([y3, y3], axis=1))  # 2-D but not 0/1: multiclass-multioutput


def test_regressor_one_and_several_outputs():
    x, y = make_regression(200, 6, n_targets=3, noise=0.1, random_state=0)
    y = y / y.std()
    reg = MLPRegressor((32,), random_state=0, max_iter=300, learning_rate_init=0.01).fit(x, y)
    assert reg.predict(x).shape == (200, 3) and reg.score(x, y) > 0.95
    assert reg.out_activation_ == "identity" and reg.n_outputs_ == 3
    one = MLPRegressor((32,), random_state=0, max_iter=300, learning_rate_init=0.01).fit(x, y[:, 0])
    assert one.predict(x).shape == (200,) and one.score(x, y[:, 0]) > 0.95
    # float64 on request, end to end
    reg64 = MLPRegressor((32,), random_state=0, max_iter=5, dtype=np.float64).fit(x, y)
    assert reg64.predict(x).dtype == np.float64 and reg64.coefs_[0].dtype == np.float64


@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh", "identity"])
@pytest.mark.parametrize("solver", ["sgd", "adam", "adamw"])
def test_activations_and_solvers_learn(activation, solver):
    x, y = blobs()
    x = StandardScaler().fit_transform(x)
    clf = MLPClassifier((16,), activation=activation, solver=solver,
                        learning_rate_init=0.1 if solver == "sgd" else 0.01,
                        max_iter=40, random_state=0, n_iter_no_change=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    assert clf.score(x, y) > 0.9
    assert len(clf._model.layers) == (2 if activation == "identity" else 3)


def test_stops_like_sklearn_without_early_stopping():
    """Training loss not better than best_loss_ - tol for n_iter_no_change + 1 epochs in a row
    stops (scikit-learn's rule); reaching max_iter instead warns ConvergenceWarning."""
    x, y = blobs()
    clf = MLPClassifier((8,), random_state=0, tol=10.0, n_iter_no_change=3, max_iter=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf.fit(x, y)
    # Epoch 1 beats best_loss_ = inf; epochs 2..5 do not beat it by 10: the 4th such is > 3.
    assert clf.n_iter_ == 5
    with pytest.warns(ConvergenceWarning):  # n_iter_no_change=inf: only max_iter stops it
        assert clf.set_params(n_iter_no_change=np.inf, max_iter=8).fit(x, y).n_iter_ == 8
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(5\) reached"):
        MLPClassifier((8,), random_state=0, max_iter=5).fit(x, y)


def test_early_stopping_keeps_the_best_validation_epoch():
    x, y = blobs(n=400)
    clf = MLPClassifier((32,), random_state=0, early_stopping=True, validation_fraction=0.25,
                        n_iter_no_change=5, max_iter=200, learning_rate_init=0.01).fit(x, y)
    assert clf.best_loss_ is None and len(clf.validation_scores_) == clf.n_iter_ < 200
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    # The weights are those of the best epoch: rescoring the same validation rows gives its score.
    from sklearn.model_selection import train_test_split

    _, x_val, _, y_val = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    assert clf.score(x_val, y_val) == pytest.approx(clf.best_validation_score_)
    x2, y2 = blobs(classes=2)
    binary = MLPClassifier((16,), random_state=0, early_stopping=True, max_iter=200).fit(x2, np.array(["n", "y"])[y2])
    assert binary.best_validation_score_ > 0.9 and len(binary.validation_scores_) == binary.n_iter_ < 200
    reg = MLPRegressor((16,), random_state=0, early_stopping=True, max_iter=50).fit(x, y.astype(float))
    assert len(reg.validation_scores_) == reg.n_iter_


def test_partial_fit_one_epoch_at_a_time_continues_the_state():
    x, y = blobs()
    a = MLPClassifier((16,), solver="sgd", random_state=3, batch_size=50, max_iter=4, tol=0.0)
    with pytest.warns(ConvergenceWarning):
        a.fit(x, y)
    b = MLPClassifier((16,), solver="sgd", random_state=3, batch_size=50)
    for _ in range(4):
        b.partial_fit(x, y, classes=np.unique(y))
    assert b.n_iter_ == 4 and b.loss_curve_ == a.loss_curve_
    for ca, cb in zip(a.coefs_, b.coefs_, strict=True):
        np.testing.assert_array_equal(ca, cb)  # epoch i shuffles with (seed, i) either way
    with pytest.warns(UserWarning, match="clipped"):  # as scikit-learn: batch_size > rows
        b.partial_fit(x[:40], y[:40])
    assert b.n_iter_ == 5
    with pytest.raises(ValueError, match="classes must be passed"):
        MLPClassifier().partial_fit(x, y)
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        b.partial_fit(x, y + 5)
    with pytest.raises(ValueError, match="not the same as on the first call"):
        b.partial_fit(x, y, classes=[0, 1, 2, 3])
    b.partial_fit(x, y, classes=[2, 1, 0])  # the same classes: fine
    reg = MLPRegressor((8,), random_state=0)
    reg.partial_fit(x, y.astype(float)).partial_fit(x, y.astype(float))
    assert reg.n_iter_ == 2


@pytest.mark.parametrize("make", [MLPClassifier, MLPRegressor])
def test_partial_fit_with_early_stopping_is_refused_as_in_sklearn(make):
    """scikit-learn raises this ValueError; after a fit with early stopping, partial_fit was a
    TypeError (best_loss_ is None), and on a new estimator it ignored early_stopping."""
    x, y = blobs()
    y = y if make is MLPClassifier else y.astype(float)
    est = make((8,), random_state=0, early_stopping=True, max_iter=3)
    extra = {"classes": np.unique(y)} if make is MLPClassifier else {}
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        est.partial_fit(x, y, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(x, y)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        est.partial_fit(x, y)


def test_numpy_scalar_parameters_reach_the_optimizer():
    """Accepted by _check_params (numbers.Real, as scikit-learn), then refused by nbnet's optimizers."""
    x, y = blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier((8,), learning_rate_init=np.float32(0.01), beta_1=np.float32(0.8), max_iter=2).fit(x, y)
        MLPClassifier((8,), solver="sgd", momentum=np.float32(0.5), max_iter=2).fit(x, y)


def test_alpha_is_weight_decay_alpha_over_batch_size():
    x, y = blobs()
    clf = MLPClassifier((8,), alpha=0.5, batch_size=25, max_iter=1, random_state=0)
    with pytest.warns(ConvergenceWarning):
        clf.fit(x, y)
    assert clf._optimizer.weight_decay == 0.5 / 25
    big = MLPClassifier((8,), alpha=50.0, max_iter=30, random_state=0, solver="sgd", learning_rate_init=0.01)
    small = clone(big).set_params(alpha=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        big.fit(x, y), small.fit(x, y)
    assert np.linalg.norm(big.coefs_[0]) < 0.5 * np.linalg.norm(small.coefs_[0])


def test_bad_parameters_refused_at_fit_with_a_reason():
    x, y = blobs()
    for params, match in [({"solver": "lbfgs"}, "solver"), ({"activation": "gelu"}, "activation"),
                          ({"hidden_layer_sizes": (10, 0)}, "hidden_layer_sizes"),
                          ({"batch_size": 0}, "batch_size"), ({"learning_rate_init": 0}, "learning_rate_init"),
                          ({"max_iter": 0}, "max_iter"), ({"momentum": 1.5}, "momentum"),
                          ({"dtype": np.int32}, "dtype"), ({"dtype": None}, "dtype"),
                          ({"n_iter_no_change": 0}, "n_iter_no_change"), ({"alpha": -1.0}, "alpha"), ({"validation_fraction": 1.0}, "validation_fraction"),
                          # ints beyond a float64: np.isfinite's TypeError, or an OverflowError, naming nothing
                          ({"max_iter": 10**400}, "max_iter"), ({"learning_rate_init": 10**400}, "learning_rate_init"),
                          ({"hidden_layer_sizes": (10**400,)}, "needs about over 1e308 GiB")]:
        with pytest.raises(ValueError, match=match):
            MLPClassifier(**params).fit(x, y)


def test_pipeline_and_gridsearchcv():
    x, y = blobs()
    pipe = make_pipeline(StandardScaler(), MLPClassifier(random_state=0, max_iter=50, learning_rate_init=0.01))
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(8,), (32,)],
                               "mlpclassifier__alpha": [1e-4, 1e-2]}, cv=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(x, y)
    assert len(grid.cv_results_["params"]) == 4 and grid.best_score_ > 0.9
    assert grid.predict(x).shape == (len(x),) and grid.score(x, y) > 0.9
    reg = GridSearchCV(make_pipeline(StandardScaler(), MLPRegressor(random_state=0, max_iter=20)),
                       {"mlpregressor__solver": ["sgd", "adam"]}, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(x, y.astype(float))
    assert reg.best_params_["mlpregressor__solver"] in ("sgd", "adam")


def test_pickle_holds_numpy_arrays_and_round_trips():
    x, y = blobs()
    clf = MLPClassifier((16,), random_state=0, max_iter=5)
    with pytest.warns(ConvergenceWarning):
        clf.fit(x, y)
    state = clf.__getstate__()
    assert "_model" not in state and "_optimizer" not in state  # no layers, buffers or kernels
    blob = pickle.dumps(clf)
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))
    # ... and training continues exactly: the optimizer state came along.
    clf.partial_fit(x, y), again.partial_fit(x, y)
    np.testing.assert_array_equal(again.coefs_[0], clf.coefs_[0])
    assert len(blob) < 4 * (8 * 16 + 16 + 16 * 3 + 3) * 3 + 20_000  # weights, Adam's two moments, small change


@pytest.mark.parametrize("fitted, changed", [({"solver": "sgd"}, {"solver": "adam"}),
                                             ({"solver": "sgd"}, {"momentum": 0.0}),
                                             ({"solver": "adam"}, {"solver": "adamw", "beta_1": 0.5})])
def test_pickle_after_set_params_keeps_the_optimizer_it_trained_with(fitted, changed):
    """set_params on a fitted estimator changes the next fit, not the optimizer partial_fit goes on
    with (as scikit-learn); the pickle was rebuilt with an optimizer made from the new parameters,
    which refused the old one's state: the pickle was written but could not be loaded."""
    x, y = blobs()
    clf = MLPClassifier((8,), random_state=0, max_iter=3, **fitted)
    with pytest.warns(ConvergenceWarning):
        clf.fit(x, y)
    clf.set_params(**changed)
    again = pickle.loads(pickle.dumps(clf))
    assert again.get_params() == clf.get_params()
    assert again._optimizer.state_dict().keys() == clf._optimizer.state_dict().keys()
    clf.partial_fit(x, y), again.partial_fit(x, y)
    np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))


@pytest.mark.parametrize("make", [MLPClassifier, MLPRegressor])
def test_partial_fit_after_set_params_dtype_reads_x_in_the_models_own_dtype(make):
    """As the optimizer (above), the model partial_fit goes on with keeps its dtype; X was read in
    the new dtype: a float64 model got its rows rounded to float32 first (features 1 + 1e-12 apart
    became one), and a value past float32's range refused, though the model takes it."""
    rng = np.random.default_rng(0)
    x = 1 + rng.normal(size=(40, 3)) * 1e-9
    y = (x[:, 0] > 1).astype(int) if make is MLPClassifier else rng.normal(size=40)
    kept, changed = (make((4,), random_state=0, max_iter=2, dtype=np.float64) for _ in range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        kept.fit(x, y), changed.fit(x, y)
    changed.set_params(dtype=np.float32)
    kept.partial_fit(x, y), changed.partial_fit(x, y)
    for a, b in zip(kept.coefs_ + kept.intercepts_, changed.coefs_ + changed.intercepts_):
        assert a.dtype == b.dtype == np.float64
        np.testing.assert_array_equal(a, b)
    big = x.copy()
    big[0, 0] = 1e39
    changed.partial_fit(big, y)


def test_clone_is_unfitted_with_the_same_parameters():
    x, y = blobs()
    clf = MLPClassifier((16,), solver="sgd", alpha=0.01, random_state=0, max_iter=5, dtype=np.float64)
    with pytest.warns(ConvergenceWarning):
        clf.fit(x, y)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and not hasattr(twin, "classes_")
    with pytest.warns(ConvergenceWarning):
        twin.fit(x, y)
    np.testing.assert_array_equal(twin.predict_proba(x), clf.predict_proba(x))


def test_verbose_prints_sklearn_lines(capsys):
    x, y = blobs()
    with pytest.warns(ConvergenceWarning):
        MLPClassifier((8,), random_state=0, max_iter=2, verbose=True).fit(x, y)
    assert capsys.readouterr().out.startswith("Iteration 1, loss = ")


def test_readme_example_runs_as_written():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## scikit-learn", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    x, y = blobs(n=400)
    env = {"x_train": x[:300], "y_train": y[:300], "x_test": x[300:], "y_test": y[300:]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        exec(compile(code + "\nresult = search.best_params_, search.score(x_test, y_test)", "README", "exec"), env)
    assert env["result"][1] > 0.8


def test_a_refused_fit_leaves_the_estimator_as_it_was():
    """The model was built before some refusals: a new estimator became 'fitted' with untrained
    (or, after a diverged loss, blown-up) weights and predicted silently; a refit kept the old model
    under the new classes_, and predict indexed past them."""
    from sklearn.exceptions import NotFittedError

    from nbnet.train import TrainingDiverged

    xr, yr = make_regression(100, 4, random_state=0)
    reg = MLPRegressor((4,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error alone, no RuntimeWarning of NumPy's cast before it
        with pytest.raises(ValueError, match="too large for float32"):
            reg.fit(xr, yr * 1e39)
    assert not hasattr(reg, "n_features_in_")
    with pytest.raises(NotFittedError):
        reg.predict(xr)
    with pytest.raises(TrainingDiverged):
        reg.set_params(solver="sgd", learning_rate_init=10.0, max_iter=50).fit(xr, yr)
    with pytest.raises(NotFittedError):
        reg.predict(xr)

    x, y = blobs()
    clf = MLPClassifier((4,), max_iter=2, random_state=0)
    with pytest.warns(ConvergenceWarning):
        clf.fit(x, y)
    before = clf.predict_proba(x)
    clf.set_params(random_state="bad")
    with pytest.raises(ValueError, match="cannot be used to seed"):
        clf.fit(x[:, :5], np.array(["a", "b"])[y % 2])
    assert list(clf.classes_) == [0, 1, 2] and clf.n_features_in_ == 8
    np.testing.assert_array_equal(clf.predict_proba(x), before)
    with warnings.catch_warnings():  # a ConvergenceWarning made an error ends a whole fit: kept
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning):
            clf.set_params(random_state=1).fit(x, y % 2)
    assert list(clf.classes_) == [0, 1]


def test_a_warning_made_an_error_ends_a_fit_as_it_was_or_whole():
    """Any Warning raised was taken for the last ConvergenceWarning: the batch_size warning made an
    error left a new estimator 'fitted' with an untrained model; and the ConvergenceWarning came
    before early stopping put its best weights back, so that fit ended on the last epoch's."""
    from sklearn.exceptions import NotFittedError

    x, y = blobs(n=100)
    clf = MLPClassifier((4,), max_iter=2, batch_size=500, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="batch_size"):
            clf.fit(x, y)
    with pytest.raises(NotFittedError):
        clf.predict(x)
    assert not hasattr(clf, "n_features_in_")

    kwargs = dict(hidden_layer_sizes=(8,), max_iter=6, random_state=0, early_stopping=True, learning_rate_init=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        want = MLPClassifier(**kwargs).fit(x, y)
    assert want.validation_scores_[-1] < want.best_validation_score_  # the best epoch is not the last
    got = MLPClassifier(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning):
            got.fit(x, y)
    np.testing.assert_array_equal(got.predict_proba(x), want.predict_proba(x))
    assert not hasattr(got, "_best_params")


def test_warnings_point_at_the_callers_line():
    """The batch_size warning named a line of nbnet/sklearn.py, where a filter by module or a
    reader looking for their own call would not find it."""
    x, y = blobs(n=50)
    calls = [lambda: MLPClassifier((4,), max_iter=1, batch_size=500, random_state=0).fit(x, y),
             lambda: MLPClassifier((4,), batch_size=500, random_state=0).partial_fit(x, y, classes=[0, 1, 2]),
             lambda: MLPRegressor((4,), batch_size=500, random_state=0).partial_fit(x, y)]
    for call in calls:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        # the call's own line, not that of the function that called it (here in this file too)
        assert caught and {(w.filename, w.lineno) for w in caught} == {(__file__, call.__code__.co_firstlineno)}, \
            [(w.filename, w.lineno, str(w.message)) for w in caught]


def test_early_stopping_splits_without_strata_where_a_class_cannot_be_on_both_sides():
    """The validation rows were always drawn stratified by class: data that scikit-learn's
    MLPClassifier fits (it stratifies two classes only) was refused with train_test_split's words,
    'test_size = 10 should be greater or equal to the number of classes = 20' or 'classes with too
    few members are: [3]' (an index, not the label 5)."""
    x, y = make_classification(100, 10, n_informative=8, n_classes=20, n_clusters_per_class=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        many = MLPClassifier((8,), max_iter=3, random_state=0, early_stopping=True).fit(x, y)
        assert len(many.validation_scores_) == 3
        x3, y3 = blobs(n=100)
        y3[0] = 5  # one row of class 5
        assert list(MLPClassifier((8,), max_iter=3, random_state=0, early_stopping=True).fit(x3, y3).classes_) == [0, 1, 2, 5]


def test_partial_fit_after_a_fit_with_early_stopping_set_off():
    """best_loss_ is None after a fit with early stopping; partial_fit with early_stopping set off
    trained an epoch and then failed on it: TypeError, NoneType - float (scikit-learn's too)."""
    x, y = blobs(n=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier((8,), max_iter=3, random_state=0, early_stopping=True).fit(x, y)
    assert clf.best_loss_ is None
    clf.set_params(early_stopping=False).partial_fit(x, y)
    assert clf.n_iter_ == len(clf.loss_curve_) == 4 and clf.best_loss_ == clf.loss_


def test_an_unbounded_range_is_written_open_in_the_refusal():
    """tol=inf was refused with 'tol must be a number in [0, inf], got inf': inf in the range."""
    x, y = blobs(n=50)
    for name in ("tol", "alpha"):
        with pytest.raises(ValueError, match=rf"{name} must be a number in \[0, inf\), got inf"):
            MLPClassifier(**{name: np.inf}).fit(x, y)


# Mutation testing found these rules unchecked.


def test_auto_batch_size_is_the_whole_set_below_200_rows():
    """batch_size="auto" is min(200, n): on 50 rows the same run as batch_size=50 (alpha / 50 its
    decay), and a batch_size of exactly n is no reason to warn."""
    x, y = blobs(n=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "Got `batch_size` larger than sample size"
        warnings.simplefilter("ignore", ConvergenceWarning)
        auto = MLPClassifier((8,), alpha=0.5, max_iter=3, random_state=0).fit(x, y)
        fifty = MLPClassifier((8,), alpha=0.5, max_iter=3, random_state=0, batch_size=50).fit(x, y)
    assert auto._optimizer.weight_decay == fifty._optimizer.weight_decay == 0.5 / 50
    for a, b in zip(auto.coefs_ + auto.intercepts_, fifty.coefs_ + fifty.intercepts_):
        np.testing.assert_array_equal(a, b)


def test_sgd_without_momentum_leaves_nesterov_off():
    """nesterovs_momentum=True is the default; with momentum=0 there is nothing to look ahead with,
    and nbnet's SGD refuses nesterov without momentum: the estimator must not ask for it."""
    x, y = blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier((8,), solver="sgd", momentum=0.0, max_iter=2, random_state=0).fit(x, y)
        assert clf._optimizer.nesterov is False
        assert clf.set_params(momentum=0.5).fit(x, y)._optimizer.nesterov is True


def test_more_bad_parameters_refused():
    x, y = blobs()
    for params, match in [({"epsilon": 0.0}, r"epsilon must be a number in \(0, inf\)"),
                          ({"beta_1": 1.0}, r"beta_1 must be a number in \[0, 1\)"),
                          ({"n_iter_no_change": 1.5}, "n_iter_no_change must be an integer"),
                          # a dict-membership test: TypeError, unhashable type: 'list', naming nothing
                          ({"activation": ["relu"]}, r"activation must be one of .*, got \['relu'\]"),
                          ({"solver": np.array(["sgd", "adam"])}, "solver must be one of")]:
        with pytest.raises(ValueError, match=match):
            MLPClassifier(**params).fit(x, y)


def test_a_validation_set_of_one_row_is_too_small():
    x, y = blobs(n=20, classes=2)
    with pytest.raises(ValueError, match="The validation set is too small"):
        MLPClassifier((4,), early_stopping=True, validation_fraction=0.05, random_state=0).fit(x, y)


def test_an_equal_score_or_loss_is_no_improvement_only_below_tol():
    """scikit-learn's rule with tol=0: an epoch that equals the best validation score (or training
    loss) resets the count (only a worse one counts), and the best weights are the first epoch's
    with that score, not a later equal one's."""
    x, y = blobs(classes=2)
    x = x + 20 * (2 * y[:, None] - 1)  # far apart: every validation row right from the first epoch
    kw = dict(hidden_layer_sizes=(8,), early_stopping=True, tol=0.0, n_iter_no_change=1, random_state=0,
              learning_rate_init=0.01)
    with pytest.warns(ConvergenceWarning):
        clf = MLPClassifier(max_iter=6, **kw).fit(x, y)
    assert clf.validation_scores_ == [1.0] * 6 and clf.n_iter_ == 6
    with pytest.warns(ConvergenceWarning):
        first = MLPClassifier(max_iter=1, **kw).fit(x, y)
    for a, b in zip(clf.coefs_ + clf.intercepts_, first.coefs_ + first.intercepts_):
        np.testing.assert_array_equal(a, b)
    # a step too small to change a float32 weight: every epoch's loss (no shuffling) is the first's
    with pytest.warns(ConvergenceWarning):
        still = MLPClassifier((8,), tol=0.0, n_iter_no_change=1, max_iter=5, shuffle=False, random_state=0,
                              learning_rate_init=1e-30).fit(x, y)
    assert len(set(still.loss_curve_)) == 1 and still.n_iter_ == 5


def test_partial_fit_classes_are_all_the_labels_there_will_be():
    """classes= on the first partial_fit sizes the output layer, whatever labels the first batch has;
    a multi-label matrix must keep its number of columns."""
    x, y = blobs()
    first = y != 2
    clf = MLPClassifier((8,), random_state=0).partial_fit(x[first], y[first], classes=[0, 1, 2])
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    assert clf.out_activation_ == "softmax" and clf.predict_proba(x).shape == (len(x), 3)
    clf.partial_fit(x, y)  # the third class comes later: no error
    labels = (np.random.default_rng(0).random((len(x), 4)) < 0.5).astype(int)
    multi = MLPClassifier((8,), random_state=0).partial_fit(x, labels, classes=np.arange(4))
    with pytest.raises(ValueError, match="y has 3 label columns; the model was fitted on 4"):
        multi.partial_fit(x, labels[:, :3])
    reg = MLPRegressor((8,), random_state=0).partial_fit(x, labels[:, :2].astype(float))
    with pytest.raises(ValueError, match="y has 3 outputs, the model was fitted with 2"):
        reg.partial_fit(x, labels[:, :3].astype(float))


def test_flags_must_be_booleans_as_in_sklearn():
    """shuffle, nesterovs_momentum and early_stopping were read by truth value: early_stopping="False"
    (a config file's string) turned early stopping on, shuffle=0 or "no" was read as given without
    a check; scikit-learn refuses all of them."""
    x, y = blobs(n=50)
    for params in ({"early_stopping": "False"}, {"shuffle": "no"}, {"shuffle": 0},
                   {"nesterovs_momentum": "False"}, {"early_stopping": None}):
        name = next(iter(params))
        est = MLPClassifier((4,), max_iter=1, **params)
        with pytest.raises(ValueError, match=rf"{name} must be True or False, got "):
            est.fit(x, y)
        assert not hasattr(est, "n_iter_")
    with pytest.raises(ValueError, match="verbose must be True, False or an integer >= 0, got 'yes'"):
        MLPRegressor((4,), max_iter=1, verbose="yes").fit(x, y.astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier((4,), max_iter=1, early_stopping=np.bool_(False), shuffle=np.True_, verbose=0).fit(x, y)


def test_sparse_targets_as_sklearn_takes_them():
    """A multi-label indicator matrix as scipy.sparse (what MultiLabelBinarizer(sparse_output=True)
    gives, and scikit-learn's MLPClassifier fits) failed deep in NumPy: 'setting an array element
    with a sequence'; the regressor's sparse y with 'sparse array length is ambiguous'."""
    from scipy.sparse import csr_matrix

    x, y = blobs(n=50)
    Y = np.stack([y == 0, y != 1, x[:, 0] > 0], axis=1).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sparse = MLPClassifier((4,), max_iter=2, random_state=0).fit(x, csr_matrix(Y))
        dense = MLPClassifier((4,), max_iter=2, random_state=0).fit(x, Y)
        np.testing.assert_array_equal(sparse.predict_proba(x), dense.predict_proba(x))
        sparse.partial_fit(x, csr_matrix(Y))
        reg = MLPRegressor((4,), max_iter=2, random_state=0).fit(x, csr_matrix(Y.astype(float)))
    assert reg.n_outputs_ == 3 and reg.predict(x).shape == (50, 3)


def test_partial_fit_classes_checked_as_sklearn_checks_them():
    """classes= went through np.unique unchecked: [0, 1, 2, nan] made a fourth output for a class no
    row can have, [[0, 1, 2]] passed, and [0, 1, "c"] became the strings '0', '1', 'c', so that the
    refusal blamed y's labels 0, 1, 2. scikit-learn's unique_labels now says what is wrong."""
    x, y = blobs(n=50)
    for classes, match in [([0, 1, 2, np.nan], "Input contains NaN"), ([[0, 1, 2]], "Unknown label type"),
                           ([0, 1, "c"], "Mix of label input types"), (3, "Expected array-like")]:
        clf = MLPClassifier((4,), random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one error, no RuntimeWarning before it
            with pytest.raises(ValueError, match=match):
                clf.partial_fit(x, y, classes=classes)
        assert not hasattr(clf, "classes_")
    clf.partial_fit(x, y, classes=(2, 0, 1))
    with pytest.raises(ValueError, match="Input contains NaN"):
        clf.partial_fit(x, y, classes=[0, 1, 2, np.nan])


def test_multilabel_partial_fit_classes_are_the_column_indices():
    """For a multi-label y, partial_fit's classes= was never read: classes=["a", "b"] or [0, 1] for 4
    columns passed and classes_ became 0..3 without a word (scikit-learn refuses both)."""
    x, _ = blobs(n=50)
    labels = (np.random.default_rng(0).random((50, 4)) < 0.5).astype(int)
    for classes in (["a", "b", "c", "d"], [0, 1], np.arange(5)):
        clf = MLPClassifier((4,), random_state=0)
        with pytest.raises(ValueError, match=r"a multi-label y's classes are its 4 column indices, np.arange\(4\)"):
            clf.partial_fit(x, labels, classes=classes)
        assert not hasattr(clf, "classes_")
    clf.partial_fit(x, labels, classes=np.arange(4))
    with pytest.raises(ValueError, match="not the same as on the first call"):
        clf.partial_fit(x, labels, classes=[0, 1])
    clf.partial_fit(x, labels, classes=[3, 2, 1, 0])


def test_string_labels_against_numbers_are_refused_without_a_warning():
    """NumPy 1.x compares a string array with a numeric one by a FutureWarning ("elementwise
    comparison failed") and one False: partial_fit refused mismatched labels or classes only after
    that warning (seen with numpy 1.24, nbnet's floor; NumPy 2 gives no warning)."""
    x, y = blobs(n=40)
    names = np.array(["a", "b", "c"])[y]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for first, then, kw in ((y, names, {}), (names, y, {}), (y, y, {"classes": ["a", "b", "c"]}),
                                (names, names, {"classes": [0, 1, 2]})):
            clf = MLPClassifier((4,), random_state=0).partial_fit(x, first, classes=np.unique(first))
            with pytest.raises(ValueError, match="not in `self.classes_`|not the same as on the first call"):
                clf.partial_fit(x, then, **kw)
        labels = (np.random.default_rng(0).random((40, 3)) < 0.5).astype(int)
        with pytest.raises(ValueError, match="column indices"):
            MLPClassifier((4,), random_state=0).partial_fit(x, labels, classes=["a", "b", "c"])


def test_validation_fraction_zero_is_fine_without_early_stopping():
    """scikit-learn takes validation_fraction in [0, 1): 0 with early stopping off was refused,
    stopping unchanged scikit-learn code; with early stopping it leaves no validation set."""
    x, y = blobs()
    MLPClassifier((4,), validation_fraction=0.0, max_iter=2, random_state=0).fit(x, y)
    with pytest.raises(ValueError, match=r"validation_fraction must be a number in \(0, 1\), got 0\.0"):
        MLPClassifier((4,), validation_fraction=0.0, early_stopping=True, max_iter=2).fit(x, y)


def test_partial_fit_takes_sample_weight_where_sklearn_19_has_it():
    """scikit-learn 1.9's partial_fit is (X, y, sample_weight=None, classes=None): weights passed
    third were read as classes and refused as labels, naming neither."""
    x, y = blobs()
    w = np.ones(len(y))
    clf, reg = MLPClassifier((4,), random_state=0), MLPRegressor((4,), random_state=0)
    for call in (lambda: clf.partial_fit(x, y, w, classes=np.unique(y)), lambda: clf.partial_fit(x, y, np.unique(y)),
                 lambda: reg.partial_fit(x, y.astype(float), w)):
        with pytest.raises(ValueError, match=r"^nbnet.sklearn has no sample_weight \(it must be None\)"):
            call()
    clf.partial_fit(x, y, None, np.unique(y))  # positional as in scikit-learn 1.9
    reg.partial_fit(x, y.astype(float), sample_weight=None)
    assert clf.n_iter_ == 1 and reg.n_iter_ == 1


def test_regressor_positional_loss_of_sklearn_17_is_refused_naming_the_order():
    """scikit-learn >= 1.7's MLPRegressor takes loss first: MLPRegressor("squared_error", (64,))
    landed the loss in hidden_layer_sizes, and the error said only that it was no integers."""
    x, y = blobs()
    for loss in ("squared_error", "poisson"):
        with pytest.raises(ValueError, match=r"got '\w+': a loss\? Here the positional arguments are "
                                             r"hidden_layer_sizes, activation"):
            MLPRegressor(loss, (8,)).fit(x, y.astype(float))
    # the order nbnet shares with MLPClassifier (and scikit-learn < 1.7's MLPRegressor)
    reg = MLPRegressor((8,), "tanh", max_iter=1)
    assert reg.get_params()["hidden_layer_sizes"] == (8,) and reg.get_params()["activation"] == "tanh"


def test_x_too_large_for_float32_is_the_error_alone():
    """As for y: an X value beyond float32 gave NumPy's RuntimeWarnings from inside scikit-learn
    (overflow in the cast; invalid value, +inf and -inf summed) before validate_data's ValueError."""
    x, y = blobs()
    big = x * 1e40  # +inf and -inf in float32
    clf = MLPClassifier((4,), max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for call in (lambda: clf.fit(big, y), lambda: clf.partial_fit(big, y, classes=np.unique(y))):
            with pytest.raises(ValueError, match=r"too large for dtype\('float32'\)"):
                call()
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
        with pytest.raises(ValueError, match=r"too large for dtype\('float32'\)"):
            clf.predict(big)


def test_predict_log_proba_is_finite_where_a_float32_probability_rounds_to_0():
    """np.log(predict_proba) was -inf, with NumPy's divide-by-zero warning, wherever a probability
    rounds to 0 in float32 (binary: 1 - σ(z) for z above about 17): the log is finite, from the logits."""
    from scipy.special import log_expit, log_softmax

    from nbnet.train import predict

    x, y = blobs()
    x2, y2 = x[y < 2], y[y < 2]
    multilabel = np.c_[y == 0, y == 1].astype(int)
    for xs, ys in ((x2, y2), (x, y), (x, multilabel)):
        clf = MLPClassifier((8,), max_iter=5, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(xs, ys)
        clf.coefs_[-1][...] *= 1000  # confident: logits in the thousands
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            log_p, p = clf.predict_log_proba(xs), clf.predict_proba(xs)
        z = predict(clf._model, xs.astype(np.float32), loss="mse")[0].astype(np.float64)
        if clf.out_activation_ == "softmax":
            want = log_softmax(z, axis=1)
        elif clf._multilabel:
            want = log_expit(z)
        else:
            want = np.hstack([log_expit(-z), log_expit(z)])
        assert (p == 0).any() and np.isfinite(log_p).all() and log_p.dtype == np.float32
        np.testing.assert_allclose(log_p, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.exp(log_p), p, atol=1e-6)


def test_auto_batch_size_is_200_on_more_rows():
    """Above 200 rows "auto" is 200 batches: 450 rows are 3 steps an epoch (200, 200, 50)."""
    x, y = blobs(n=450)
    clf = MLPClassifier((8,), alpha=0.5, random_state=0).partial_fit(x, y, classes=np.unique(y))
    assert clf._optimizer.step_count == 3
    assert clf._optimizer.weight_decay == 0.5 / 200


def test_best_loss_is_the_lowest_loss_so_far():
    """best_loss_ is the lowest training loss of any epoch (scikit-learn's), not the last one: a
    partial_fit on harder data does not lower the bar the next epochs are measured against."""
    x, y = blobs(n=200)
    noise = np.random.default_rng(5).permutation(y)  # the same rows, labels shuffled: a higher loss
    clf = MLPClassifier((16,), random_state=0)
    for _ in range(3):
        clf.partial_fit(x, y, classes=np.unique(y))
    clf.partial_fit(x, noise)
    assert clf.loss_curve_[-1] > min(clf.loss_curve_)
    assert clf.best_loss_ == min(clf.loss_curve_)


def test_partial_fit_goes_on_however_long_the_loss_has_not_improved():
    """The no-improvement count stops fit, never partial_fit (scikit-learn's rule): here every epoch
    after the first counts as no improvement, and each call still trains its epoch."""
    x, y = blobs(n=60)
    clf = MLPClassifier((8,), tol=1e9, n_iter_no_change=1, random_state=0)
    for _ in range(4):
        clf.partial_fit(x, y, classes=np.unique(y))
    assert clf.n_iter_ == 4 and clf._no_improvement_count == 3  # past n_iter_no_change + 1


@pytest.mark.parametrize("targets", ["binary", "multiclass", "multilabel"])
def test_a_tie_predicts_as_sklearn_does(targets):
    """With every weight zero each output ties: a probability of exactly ½ is not above the
    threshold (a multi-label 0, the binary classes_[0]), and equal softmax outputs pick classes_[0],
    as scikit-learn's MLPClassifier predicts from the same weights."""
    from sklearn.neural_network import MLPClassifier as SkMLP  # noqa: PLC0415

    x, y = blobs(n=60)
    y = {"binary": y % 2, "multiclass": y, "multilabel": np.stack([y % 2, y == 0, y > 0], axis=1).astype(int)}[targets]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier((4,), max_iter=2, random_state=0).fit(x, y)
        theirs = SkMLP((4,), max_iter=2, random_state=0).fit(x, y)
    for est in (ours, theirs):
        for a in est.coefs_ + est.intercepts_:
            a[...] = 0
    np.testing.assert_array_equal(ours.predict(x), theirs.predict(x))
    np.testing.assert_array_equal(ours.predict_proba(x), theirs.predict_proba(x).astype(np.float32))


@pytest.mark.parametrize("make", [MLPClassifier, MLPRegressor])
def test_sklearns_parameters_nbnet_lacks_are_refused_naming_the_estimator_and_the_way(make):
    """MLPClassifier(warm_start=True) was "TypeError: _BaseMLP.__init__() got an unexpected keyword
    argument 'warm_start'", fit(X, y, sample_weight=w) "_BaseMLP.fit() got ..." and fit(X, y, w)
    "_BaseMLP.fit() takes 3 positional arguments but 4 were given": a private class's name, and no
    word that scikit-learn has the parameter and nbnet does not, nor of the way nbnet has
    (partial_fit goes on from the weights). Still a TypeError, as Python's and scikit-learn's own
    for a keyword they do not take; get_params, clone and set_params as before."""
    name = make.__name__
    lacking = [("warm_start", True, "partial_fit"), ("learning_rate", "adaptive", "constant"),
               ("power_t", 0.5, "invscaling"), ("max_fun", 100, "lbfgs")]
    if make is MLPRegressor:
        lacking.append(("loss", "poisson", "squared error"))
    for param, value, way in lacking:
        with pytest.raises(TypeError, match=rf"^{name}\.__init__\(\) got an unexpected keyword argument "
                                            rf"'{param}': scikit-learn's {name} has it, nbnet.sklearn does not .*{way}"):
            make(**{param: value})
    with pytest.raises(TypeError, match=rf"^{name}\.__init__\(\) got an unexpected keyword argument 'epochs'$"):
        make(epochs=3)
    x, y = blobs(n=50)
    est = make((4,), max_iter=1, random_state=0)
    with pytest.raises(TypeError, match=rf"^{name}\.fit\(\) got an unexpected keyword argument 'sample_weight': "
                                        rf"scikit-learn's {name}\.fit has it, nbnet.sklearn does not .*sample weights"):
        est.fit(x, y, sample_weight=np.ones(len(y)))
    with pytest.raises(TypeError, match=rf"^{name}\.fit\(\) got an unexpected keyword argument 'classes'$"):
        est.fit(x, y, classes=[0, 1, 2])
    with pytest.raises(TypeError, match=rf"^{name}\.fit\(\) takes 2 positional arguments \(X, y\) but 3 were given "
                                        r"\(scikit-learn's third is sample_weight"):
        est.fit(x, y, np.ones(len(y)))
    with pytest.raises(TypeError, match=rf"^{name}\.__init__\(\) takes 2 positional arguments \(hidden_layer_sizes, "
                                        r"activation\) but 3 were given$"):  # no word of fit's sample_weight
        make((4,), "relu", "adam")
    with pytest.raises(TypeError, match=rf"^{name}\.fit\(\): missing a required argument: 'y'$"):
        est.fit(x)
    assert not hasattr(est, "n_features_in_")  # refused before anything
    params = est.get_params()
    assert "unknown" not in params and "warm_start" not in params and clone(est).get_params() == params
    with pytest.raises(ValueError, match=rf"Invalid parameter 'warm_start' for estimator {name}"):
        est.set_params(warm_start=True)  # scikit-learn's own words, naming the estimator


def interrupt_at_step(monkeypatch, step, weights=None):
    """nb.train under nbnet.sklearn, with a Ctrl-C after its `step`-th step as nb.train lets one
    land (after the step is counted, before anything else), or, given a list `weights`, the weights
    after that step appended to it and no Ctrl-C."""
    import nbnet.sklearn

    real = nbnet.sklearn.train

    def train(model, *args, **kwargs):
        def on_step(state, batch, n_batches, loss):
            if state.step == step:
                if weights is None:
                    raise KeyboardInterrupt
                weights.append([p.data.copy() for p in model.parameters()])

        return real(model, *args, on_step=on_step, **kwargs)

    monkeypatch.setattr(nbnet.sklearn, "train", train)


def returns(call):
    """call(), as a test failure where it lets a KeyboardInterrupt out (pytest ends the run on one)."""
    try:
        return call()
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt came out")


@pytest.mark.parametrize("make", [MLPClassifier, MLPRegressor])
def test_ctrl_c_ends_fit_with_the_model_so_far_as_sklearn(make, monkeypatch):
    """A Ctrl-C in fit raised KeyboardInterrupt and left the estimator half fitted (classes_ set,
    n_iter_ 14), where scikit-learn's MLP (_fit_stochastic) warns "Training interrupted by user."
    and returns the model trained so far. Now as scikit-learn's: fit returns self, the weights are
    those after the last step taken, and n_iter_, t_ and loss_curve_ count the epochs completed,
    the same as an uninterrupted fit's first ones."""
    x, y = blobs(n=300)
    if make is MLPRegressor:
        y = y.astype(float)
    kwargs = dict(hidden_layer_sizes=(8,), batch_size=100, max_iter=20, random_state=0)  # 3 steps an epoch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        whole = make(**kwargs).fit(x, y)
    after_8 = []
    with monkeypatch.context() as m:
        interrupt_at_step(m, 8, after_8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            make(**kwargs).fit(x, y)

    est = make(**kwargs)
    with monkeypatch.context() as m:
        interrupt_at_step(m, 8)  # in the third epoch, after 2 of its 3 steps
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert returns(lambda: est.fit(x, y)) is est
    assert [(w.category, str(w.message), w.filename) for w in caught] == \
        [(UserWarning, "Training interrupted by user.", __file__)]  # and no ConvergenceWarning
    assert est.n_iter_ == 2 and est.t_ == 600 and est.loss_curve_ == whole.loss_curve_[:2]
    assert est.loss_ == est.loss_curve_[-1] and est.best_loss_ == min(est.loss_curve_)
    for got, want in zip([c.T for c in est.coefs_] + est.intercepts_, after_8[0][0::2] + after_8[0][1::2]):
        np.testing.assert_array_equal(got, want)
    assert est.predict(x).shape == y.shape

    # partial_fit: the same, and the next one goes on from the epochs counted
    with monkeypatch.context() as m:
        interrupt_at_step(m, 7)  # the first step of partial_fit's epoch (the third)
        with pytest.warns(UserWarning, match=r"^Training interrupted by user\.$"):
            assert returns(lambda: est.partial_fit(x, y)) is est
    assert est.n_iter_ == 2 and est.t_ == 600 and len(est.loss_curve_) == 2
    est.partial_fit(x, y)
    assert est.n_iter_ == 3 and est.t_ == 900 and len(est.loss_curve_) == 3


def test_ctrl_c_keeps_each_epochs_bookkeeping_whole_and_the_best_epoch(monkeypatch):
    """With early stopping an interrupted fit ends as one that stopped there: the best epoch's
    weights put back, as scikit-learn's. A Ctrl-C inside an epoch's bookkeeping (here while it
    appends the validation score) undoes that epoch's, so that n_iter_ does not count an epoch
    that loss_curve_ or validation_scores_ do not. One before the first step goes on as a
    KeyboardInterrupt and leaves the estimator as it was: there is no model to return."""
    from sklearn.exceptions import NotFittedError

    x, y = blobs(n=300)
    kwargs = dict(hidden_layer_sizes=(8,), batch_size=100, max_iter=20, random_state=0, early_stopping=True,
                  learning_rate_init=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        want = MLPClassifier(**dict(kwargs, max_iter=4)).fit(x, y)
    assert want.validation_scores_[-1] < want.best_validation_score_, "the test needs a best epoch before the last"

    est = MLPClassifier(**kwargs)
    real = MLPClassifier._update_no_improvement_count

    def fifth(self, score):
        if self.n_iter_ == 5:
            self.validation_scores_.append(score)
            raise KeyboardInterrupt
        return real(self, score)

    monkeypatch.setattr(MLPClassifier, "_update_no_improvement_count", fifth)
    with pytest.warns(UserWarning, match=r"^Training interrupted by user\.$"):
        returns(lambda: est.fit(x, y))
    assert est.n_iter_ == 4 and est.t_ == want.t_ and est.loss_curve_ == want.loss_curve_
    assert est.validation_scores_ == want.validation_scores_
    assert est.best_validation_score_ == want.best_validation_score_ and not hasattr(est, "_best_params")
    np.testing.assert_array_equal(est.predict_proba(x), want.predict_proba(x))

    import nbnet.sklearn

    def no_step(*args, **kwargs):  # a Ctrl-C while nb.train compiles its kernels, say
        raise KeyboardInterrupt

    fresh = MLPClassifier(**kwargs)

    monkeypatch.setattr(nbnet.sklearn, "train", no_step)
    with pytest.raises(KeyboardInterrupt):
        fresh.fit(x, y)
    assert not hasattr(fresh, "classes_") and not hasattr(fresh, "n_iter_")
    with pytest.raises(NotFittedError):
        fresh.predict(x)
    before = want.set_params(early_stopping=False).predict_proba(x)
    with pytest.raises(KeyboardInterrupt):  # a fitted one goes on unchanged
        want.partial_fit(x, y)
    assert want.n_iter_ == 4 and len(want.loss_curve_) == 4
    np.testing.assert_array_equal(want.predict_proba(x), before)
