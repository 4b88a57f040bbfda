"""scikit-learn estimators: `MLPClassifier` and `MLPRegressor` (extra `nbnet[sklearn]`).

    from nbnet.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(256,), random_state=0).fit(x, y)   # labels of any type
    clf.predict(x), clf.predict_proba(x), clf.score(x, y)

The parameters of sklearn.neural_network's estimators of the same names, with their meanings, plus
`dtype` (float32 default, as every nbnet model). They are thin: `fit` builds the model with
nbnet.train.build_model and runs nbnet.train.train, the loop `nbnet train` runs; `partial_fit` runs
that loop for one more epoch, continuing its state. An integer `random_state` is the loop's seed
(layer i drawn from (seed, i), epoch e shuffled with (seed, e)), so a fit is bitwise reproducible
at any thread count.

Where they differ from scikit-learn (on purpose, or because nbnet works that way):
- alpha: scikit-learn adds alpha/(2·n_batch)·Σ‖W‖² to each batch's loss, so its gradient adds
  (alpha/n_batch)·W. Here that is the optimizer's weight_decay = alpha / batch_size (the nominal
  batch size), which gives the same step, except that nbnet decays the intercepts too (scikit-learn
  only coefs_). With solver="adamw" the same weight_decay is applied decoupled (AdamW's rule).
- loss_curve_ / loss_ / best_loss_ are the data loss the loop reports, without the L2 term. The
  regressor's loss is the mean squared error (PyTorch's MSELoss), twice scikit-learn's half squared
  error: with solver="sgd" the same learning_rate_init takes steps twice as long. A multi-label
  classifier's loss is the binary cross-entropy averaged over the L labels too (PyTorch's
  BCEWithLogitsLoss), where scikit-learn sums the labels: loss_ is 1/L of scikit-learn's, the
  data's gradient too (solver="sgd": steps L times shorter), and the same alpha weighs L times
  more against it (the regressor's alpha: half as much). tol, compared with that loss when there
  is no early stopping, is in its units: L times coarser for L labels, twice as fine for regression.
- Weights start Glorot-uniform as scikit-learn's (nbnet.Linear's He-uniform draws, rescaled: see
  glorot_like_sklearn); intercepts start at zero (scikit-learn: uniform too).
- No solver="lbfgs", and none of the parameters learning_rate (the step is constant), power_t,
  warm_start (partial_fit goes on from the weights), max_fun or the regressor's loss (it is squared
  error): passing one is a TypeError that says so and what to do instead (see SKLEARN_ONLY).
  So both estimators take hidden_layer_sizes, activation positionally, as MLPClassifier and
  scikit-learn < 1.7's MLPRegressor do (scikit-learn >= 1.7's MLPRegressor puts loss first: there
  MLPRegressor((64,)) is an error, here MLPRegressor("squared_error", ...) is one that says so).
  No sample_weight (fit's is a TypeError; partial_fit has the argument where scikit-learn 1.9 has
  it, third, and it must be None; classes go by keyword), and X is dense (scikit-learn's also take scipy.sparse: here a TypeError that
  says to use .toarray()); a sparse y is taken, as a dense copy.
- X is converted to `dtype` at fit and predict (scikit-learn's estimators convert to float64): a
  float64 X is rounded to float32 unless dtype=np.float64, and a value too large for float32 is
  an error. Predictions and probabilities are in `dtype` too.
- Early stopping's validation rows are drawn stratified by class where each class can have rows on
  both sides (scikit-learn stratifies two classes only), else at random. It scores them with the
  loop's val_accuracy / val_r2; for several outputs that R² is variance-weighted (scikit-learn's
  r2_score averages the outputs' R²), and for multi-label targets the accuracy counts labels, not
  whole rows (scikit-learn: subset accuracy).
- y with a single class is a ValueError (scikit-learn 1.9's MLPClassifier fits it and predicts that
  class): a classifier's softmax or logistic output has nothing to learn from one class.
- X of numeric strings (x.astype(str)) is parsed as numbers, as NumPy's astype(float32) does
  (scikit-learn refuses strings in X); a string that is not a number is a ValueError.
- n_iter_ counts every epoch run, partial_fit's included, as t_ counts their rows: it is how
  partial_fit knows which epoch comes next. scikit-learn's partial_fit sets n_iter_ to 1 each time
  (it counts only the last call's epochs).
"""

import functools
import inspect
import math
import numbers
import sys
import warnings

import numpy as np

try:
    import sklearn  # noqa: F401
except ModuleNotFoundError as e:
    if e.name != "sklearn":  # scikit-learn is there but broken: its own error says why
        raise
    # as --plot, --device cuda and mpiexec say it: Python's "No module named 'sklearn'" names no extra
    raise ModuleNotFoundError("nbnet.sklearn needs scikit-learn: pip install 'nbnet[sklearn]'",
                              name="sklearn") from None
from scipy.sparse import issparse  # scikit-learn's own dependency
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d

try:
    from sklearn.utils.validation import validate_data  # scikit-learn >= 1.6
except ImportError:  # older: the estimator's own method
    def validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

from .model import model_from_arrays
from .optim import SGD, Adam, AdamW
from .train import METRIC, TrainState, build_model, predict, train

ACTIVATIONS = {"relu": "relu", "logistic": "sigmoid", "tanh": "tanh", "identity": None}
SOLVERS = ("sgd", "adam", "adamw")


def glorot_like_sklearn(model, activation):
    """Scale each Linear's He-uniform weights, U(±√(6/fan_in)), to scikit-learn's start,
    U(±√(factor/(fan_in + fan_out))) with factor 2 for logistic, else 6: the same draws, so the
    start is still a function of (seed, layer). Measured: 10 epochs on 20,000 × 100 synthetic data,
    test accuracy 0.81 from He-uniform, 0.83 from this (profiling/bench_sklearn.py's work)."""
    factor = 2.0 if activation == "logistic" else 6.0
    for layer in model.layers:
        if layer.parameters():
            fan_in, fan_out = layer.in_features, layer.out_features
            layer.weight *= layer.weight.dtype.type(np.sqrt(factor / 6.0 * fan_in / (fan_in + fan_out)))



def _finite(v):
    """Whether a number is finite as a float64: an int beyond it (max_iter=10**400) made
    np.isfinite raise a TypeError naming no parameter, and learning_rate_init=10**400 an
    OverflowError later."""
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError, OverflowError):
        return False


def _comparable(a, b):
    """Label arrays NumPy compares element by element: not strings against numbers, which NumPy
    1.x answered with a FutureWarning ("elementwise comparison failed") and a single False, so
    partial_fit's refusal of mismatched labels came after a warning."""
    return (np.asarray(a).dtype.kind in "US") == (np.asarray(b).dtype.kind in "US")


def _same_labels(a, b):
    return _comparable(a, b) and np.array_equal(a, b)


def _no_sample_weight(sample_weight):
    """partial_fit's third argument is sample_weight in scikit-learn 1.9 (classes before 1.7):
    weights read as classes (or the reverse) were refused as labels, naming neither."""
    if sample_weight is not None:
        raise ValueError("nbnet.sklearn has no sample_weight (it must be None); classes go by keyword: "
                         "partial_fit(X, y, classes=...)")


def _quiet_cast():
    """X converted to float32: a value beyond it is inf, which validate_data's ValueError names
    (too large for dtype('float32')), after NumPy's RuntimeWarnings (overflow in the cast, invalid
    value summing +inf and -inf) had said the same from inside scikit-learn."""
    return np.errstate(over="ignore", invalid="ignore")


# scikit-learn's MLPClassifier/MLPRegressor take these, nbnet.sklearn does not: (method, name) ->
# what to do instead (see _public_signature).
SKLEARN_ONLY = {
    ("__init__", "warm_start"): "fit always starts anew; partial_fit goes on from the fitted weights",
    ("__init__", "learning_rate"): "the step is always constant, as with scikit-learn's default "
                                   "learning_rate='constant': leave it out; there is no 'invscaling' or 'adaptive'",
    ("__init__", "power_t"): "it is the exponent of learning_rate='invscaling', which nbnet.sklearn does not have: "
                             "the step is constant",
    ("__init__", "max_fun"): "it is for solver='lbfgs', which nbnet does not have",
    ("fit", "sample_weight"): "nbnet has no sample weights",
}


def _public_signature(method):
    """A method of _BaseMLP (__init__, fit) that checks its arguments first, so that a wrong one is
    Python's TypeError under the estimator's name, not the private class's, and a parameter of
    scikit-learn's that nbnet lacks says so and gives the way nbnet has. A wrapper, as **kwargs in
    __init__ is not: scikit-learn's check_estimator passes every name in its signature, and
    functools.wraps keeps the method's signature for get_params, clone and that check."""
    signature = inspect.signature(method)
    positional = [p.name for p in list(signature.parameters.values())[1:] if p.kind == p.POSITIONAL_OR_KEYWORD]

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        cls, name = type(self).__name__, method.__name__
        unknown = next((k for k in kwargs if k not in signature.parameters), None)
        if unknown is not None:
            hint = self._sklearn_only.get((name, unknown))
            where = cls if name == "__init__" else f"{cls}.{name}"
            hint = f": scikit-learn's {where} has it, nbnet.sklearn does not ({hint})" if hint else ""
            raise TypeError(f"{cls}.{name}() got an unexpected keyword argument {unknown!r}{hint}")
        if len(args) > len(positional):
            hint = " (scikit-learn's third is sample_weight: nbnet has no sample weights)" if name == "fit" else ""
            raise TypeError(f"{cls}.{name}() takes {len(positional)} positional arguments ({', '.join(positional)}) "
                            f"but {len(args)} were given{hint}")
        try:
            signature.bind(self, *args, **kwargs)
        except TypeError as e:  # a missing argument
            raise TypeError(f"{cls}.{name}(): {e}") from None
        return method(self, *args, **kwargs)

    return checked


def _warn_at_caller(message, category=UserWarning):
    """warnings.warn at the first frame outside this module, the caller's fit or partial_fit line,
    where a filter by module or a reader looking for their own call finds it. Counted, not a fixed
    stacklevel: fit is one frame deeper than partial_fit (_public_signature's wrapper)."""
    frame, level = sys._getframe(1), 2  # stacklevel 2 is this function's caller
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class _Converged(Exception):
    """Raised from the loop's on_epoch to end training early."""


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, the model, the optimizer, fit."""

    _sklearn_only = SKLEARN_ONLY

    @_public_signature
    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate_init=0.001,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        dtype=np.float32,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype

    # -- parameters -------------------------------------------------------------------------

    def _check_params(self):
        """Checked at fit (scikit-learn's rule: no logic in __init__ or set_params)."""
        def number(name, lo, hi=np.inf, lo_open=False, hi_open=False, integer=False):
            v = getattr(self, name)
            kind = numbers.Integral if integer else numbers.Real
            ok = isinstance(v, kind) and not isinstance(v, bool) and _finite(v)
            ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                what = "an integer" if integer else "a number"
                close = ")" if hi_open or hi == np.inf else "]"
                raise ValueError(f"{type(self).__name__}: {name} must be {what} in "
                                 f"{'(' if lo_open else '['}{lo}, {hi}{close}, got {v!r}")

        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else sizes
        try:
            sizes = list(sizes)
        except TypeError:
            sizes = None
        if sizes is None or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
                                    for s in sizes):
            hint = ""
            if isinstance(self.hidden_layer_sizes, str) and self.hidden_layer_sizes in ("squared_error", "poisson"):
                # MLPRegressor("squared_error", (64,)), scikit-learn >= 1.7's order, named no loss
                hint = (": a loss? Here the positional arguments are hidden_layer_sizes, activation (as in "
                        "MLPClassifier, and MLPRegressor before scikit-learn 1.7, which put loss first); "
                        "nbnet has no loss parameter (the regressor's loss is squared error)")
            raise ValueError(f"{type(self).__name__}: hidden_layer_sizes must be positive integers, "
                             f"got {self.hidden_layer_sizes!r}{hint}")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:  # a list: unhashable
            raise ValueError(f"{type(self).__name__}: activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if not isinstance(self.solver, str) or self.solver not in SOLVERS:  # an array: "ambiguous"
            raise ValueError(f"{type(self).__name__}: solver must be one of {', '.join(SOLVERS)} "
                             f"(nbnet has no lbfgs), got {self.solver!r}")
        if not (self.batch_size == "auto" if isinstance(self.batch_size, str) else
                isinstance(self.batch_size, numbers.Integral) and not isinstance(self.batch_size, bool)
                and self.batch_size >= 1):
            raise ValueError(f"{type(self).__name__}: batch_size must be 'auto' or a positive integer, "
                             f"got {self.batch_size!r}")
        # scikit-learn's "boolean": a truthy string (early_stopping="False") or 0/1 took a meaning
        # here without a word, where scikit-learn refuses it
        for name in ("shuffle", "nesterovs_momentum", "early_stopping"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{type(self).__name__}: {name} must be True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.verbose, (bool, np.bool_))
                or isinstance(self.verbose, numbers.Integral) and self.verbose >= 0):
            raise ValueError(f"{type(self).__name__}: verbose must be True, False or an integer >= 0, "
                             f"got {self.verbose!r}")
        number("alpha", 0)
        number("learning_rate_init", 0, lo_open=True)
        number("max_iter", 1, integer=True)
        number("tol", 0)
        number("momentum", 0, 1)
        # [0, 1), as scikit-learn: 0 is a valid setting while early_stopping is off (nothing reads it)
        number("validation_fraction", 0, 1, lo_open=bool(self.early_stopping), hi_open=True)
        number("beta_1", 0, 1, hi_open=True)
        number("beta_2", 0, 1, hi_open=True)
        number("epsilon", 0, lo_open=True)
        if self.n_iter_no_change != np.inf:  # inf: never stop before max_iter (as scikit-learn)
            number("n_iter_no_change", 1, integer=True)
        try:
            dtype = None if self.dtype is None else np.dtype(self.dtype)  # np.dtype(None) is float64
        except TypeError:
            dtype = None
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"{type(self).__name__}: dtype must be float32 or float64, got {self.dtype!r}")
        return [int(s) for s in sizes], dtype.type

    def _seed(self):
        """nbnet's integer seed: random_state itself when it is an int, else drawn from it."""
        rng = check_random_state(self.random_state)  # also refuses bad values
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state)
        return int(rng.randint(np.iinfo(np.int32).max))

    def _batch_size(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            _warn_at_caller("Got `batch_size` larger than sample size. It is going to be clipped")
        return min(self.batch_size, n)

    # -- model and optimizer ----------------------------------------------------------------

    def _new_model(self, n_in, n_out, sizes, dtype):
        activation = ACTIVATIONS[self.activation]
        model = build_model(n_in, sizes, n_out, activation or "relu", dtype, self._seed_)
        if activation is None:  # identity: the same Linear layers (seeded (seed, i)), nothing between
            from .model import Sequential  # noqa: PLC0415

            model = Sequential([layer for layer in model.layers if layer.parameters()])
        glorot_like_sklearn(model, self.activation)
        return model

    def _new_optimizer(self, model):
        params, lr = model.parameters(), self.learning_rate_init
        if self.solver == "sgd":
            return SGD(params, lr, momentum=self.momentum,
                       nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
        cls = Adam if self.solver == "adam" else AdamW
        return cls(params, lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon, weight_decay=0.0)

    def __sklearn_is_fitted__(self):
        """Fitted once a model exists (a refused fit leaves the estimator as it was: see _fit)."""
        return hasattr(self, "_model")

    def _linears(self):
        check_is_fitted(self)
        return [layer for layer in self._model.layers if layer.parameters()]

    @property
    def coefs_(self):
        """Weight matrices as scikit-learn lays them out, (in, out): views of nbnet's (out, in) W."""
        return [layer.weight.T for layer in self._linears()]

    @property
    def intercepts_(self):
        return [layer.bias for layer in self._linears()]

    # -- fitting --------------------------------------------------------------------------

    @_public_signature
    def fit(self, X, y):
        """Train from scratch for up to max_iter epochs. Returns self. (No sample_weight.) Ctrl-C
        ends training with a warning, "Training interrupted by user.", and returns the model so far,
        as scikit-learn's does; so does partial_fit."""
        return self._fit(X, y, incremental=False)

    def _fit(self, X, y, incremental, classes=None):
        if incremental and hasattr(self, "_model"):  # trains the model in place: nothing to go back to
            ended = self._fit_steps(X, y, incremental, classes)
        else:
            # A fit that builds a new model and then raises (y too large for dtype, a diverged loss, a
            # validation set too small, a bad random_state, a warning made an error) left that
            # half-made model behind: an unfitted estimator became "fitted" and predicted from
            # untrained or blown-up weights without a word, a refit mixed the old model with the new
            # classes_ and n_features_in_. It now leaves the estimator as it was; so does a Ctrl-C
            # before the first step (one after it ends training: see _fit_steps).
            before = dict(self.__dict__)
            try:
                ended = self._fit_steps(X, y, incremental, classes)
            except BaseException:
                self.__dict__.clear()
                self.__dict__.update(before)
                raise
        # After the fit is whole (early stopping's best weights back), so that this warning made an
        # error leaves a fitted estimator, and any other warning made one leaves it as it was
        if ended == "interrupted":
            _warn_at_caller("Training interrupted by user.")  # scikit-learn's words (a UserWarning)
        elif ended == "max_iter":
            _warn_at_caller(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                            "optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def _fit_steps(self, X, y, incremental, classes):
        """The fit; answers what _fit warns of: "max_iter" (fit ran them all), "interrupted"
        (Ctrl-C), or None (stopped early, or partial_fit's epoch)."""
        sizes, dtype = self._check_params()
        if incremental and self.early_stopping:
            # scikit-learn's rule and words; after a fit with early stopping, best_loss_ is None
            # and the training-loss rule that partial_fit follows failed on it with a TypeError.
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not incremental or not hasattr(self, "_model")
        if not first:  # set_params(dtype=...) since is for the next fit: this one goes on with the model
            dtype = self._model.dtype.type
        with _quiet_cast():
            X, y = validate_data(self, X, y, reset=first, dtype=dtype, order="C", multi_output=True,
                                 y_numeric=not self._classifies)
        if issparse(y):  # validate_data passes a sparse y (a multi-label indicator matrix) as it is
            y = y.toarray()
        if self._classifies and y.ndim == 2 and y.shape[1] == 1:  # a column of labels: as scikit-learn
            y = column_or_1d(y, warn=True)
        y = self._encode_targets(y, first, classes, dtype)
        if first:
            self._seed_ = self._seed()
            self._model = self._new_model(X.shape[1], self._n_outputs(y), sizes, dtype)
            self._optimizer = self._new_optimizer(self._model)
            self.n_layers_ = len(sizes) + 2
            self.n_iter_, self.t_, self.loss_curve_ = 0, 0, []
            self._no_improvement_count = 0
            if self.early_stopping and not incremental:
                self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
            else:
                self.validation_scores_, self.best_validation_score_, self.best_loss_ = None, None, np.inf

        val_data = None
        if self.early_stopping and not incremental:
            stratify = None
            if self._classifies and not self._multilabel:
                # Stratified where every class can have a row on both sides; else at random, as
                # scikit-learn splits more than two classes: refusing such data refused what it fits.
                counts = np.bincount(y.ravel().astype(np.intp))
                n_val = int(np.ceil(self.validation_fraction * len(y)))
                if counts.min() >= 2 and min(n_val, len(y) - n_val) >= len(counts):
                    stratify = y.ravel()
            X, X_val, y, y_val = train_test_split(
                X, y, test_size=self.validation_fraction, random_state=self._seed_, stratify=stratify,
            )
            if len(X_val) < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the "
                                 "size of your dataset.")
            X, y = np.ascontiguousarray(X), np.ascontiguousarray(y)
            val_data = (np.ascontiguousarray(X_val), np.ascontiguousarray(y_val))
            self._best_params = None
        batch_size = self._batch_size(len(X))
        self._optimizer.weight_decay = float(self.alpha) / batch_size
        n = len(X)

        def on_epoch(state, metrics):
            # All of an epoch's bookkeeping or none: a Ctrl-C inside it (early stopping copying the
            # best weights, say) left n_iter_ counting an epoch that loss_curve_ did not
            before = {k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()}
            try:
                self.n_iter_ += 1
                self.t_ += n
                self.loss_ = metrics["train_loss"]
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(metrics.get(f"val_{METRIC[self._loss]}"))
            except KeyboardInterrupt:
                self.__dict__.clear()
                self.__dict__.update(before)
                raise
            if not incremental and self._no_improvement_count > self.n_iter_no_change:
                if self.verbose:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    print(f"{what} did not improve more than tol={self.tol:f} for "
                          f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                raise _Converged

        loop = dict(batch_size=batch_size, seed=self._seed_, loss=self._loss, shuffle=bool(self.shuffle),
                    val_data=val_data, on_epoch=on_epoch)
        if incremental:  # one more epoch, continuing the loop's state (epoch i shuffles with (seed, i))
            steps = -(-n // batch_size)
            state, epochs = TrainState(epoch=self.n_iter_, step=self.n_iter_ * steps), self.n_iter_ + 1
        else:
            state, epochs = TrainState(), self.max_iter
        start, ended = state.step, "max_iter"
        try:
            train(self._model, self._optimizer, (X, y), epochs=epochs, state=state, **loop)
        except _Converged:
            ended = None
        except KeyboardInterrupt:
            # Ctrl-C ends training and fit returns the model so far, as scikit-learn's does
            # (_fit_stochastic). nb.train never lets it land between a step's update and its count,
            # so the weights and the optimizer agree. As scikit-learn's, n_iter_, t_, loss_,
            # loss_curve_, best_loss_ and validation_scores_ count the epochs completed (on_epoch:
            # each whole or not at all), and the weights hold the interrupted epoch's steps too
            # (with early stopping the best epoch's weights are put back, below). Putting them back
            # to the last epoch's end instead would take a copy of the weights and the optimizer's
            # state every epoch. A partial_fit after it runs epoch n_iter_ + 1 on these weights.
            # Before this call's first step there is nothing to return (a new estimator would be
            # "fitted" with its untrained start): the KeyboardInterrupt goes on, and a fit leaves
            # the estimator as it was. nbnet compiles its kernels there, seconds the first time.
            if state.step == start:
                raise
            ended = "interrupted"
        if incremental:
            return "interrupted" if ended == "interrupted" else None
        if self.early_stopping:
            for p, best in zip(self._model.parameters(), self._best_params or ()):  # None: no finite score
                p.data[...] = best
            del self._best_params
        return ended

    def _update_no_improvement_count(self, score):
        """scikit-learn's rule: an epoch that does not beat the best by tol counts; n_iter_no_change
        + 1 such epochs in a row stop training. On the validation score (the loop's val_accuracy or
        val_r2) with early_stopping, else on the training loss."""
        if score is not None:
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = [p.data.copy() for p in self._model.parameters()]
        else:
            # None after a fit with early stopping that partial_fit, early_stopping set off, goes on from
            best = np.inf if self.best_loss_ is None else self.best_loss_
            if self.loss_curve_[-1] > best - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(best, self.loss_curve_[-1])

    def _validate_for_predict(self, X):
        check_is_fitted(self)
        with _quiet_cast():
            return validate_data(self, X, reset=False, dtype=self._model.dtype.type, order="C")

    # -- pickling: the model as NumPy arrays (the .npz layout), not its kernels' scratch ---------

    def __getstate__(self):
        state = super().__getstate__()
        if "_model" in state:
            state = dict(state)
            model, opt = state.pop("_model"), state.pop("_optimizer")
            state["_model_arrays"] = model.state_arrays()
            state["_optimizer_state"] = opt.state_dict()
        return state

    def __setstate__(self, state):
        arrays, opt_state = state.pop("_model_arrays", None), state.pop("_optimizer_state", None)
        super().__setstate__(state)
        if arrays is not None:
            self._model = model_from_arrays(arrays, source="pickled estimator")
            # The optimizer it trained with, from its own state: set_params since the fit (solver,
            # momentum, ...) is for the next fit, and an optimizer made from those refused this state.
            cls = {c.__name__: c for c in (SGD, Adam, AdamW)}[opt_state["type"]]
            self._optimizer = cls(self._model.parameters(), **{k: opt_state[k] for k in cls.hyper_names})
            self._optimizer.load_state_dict(opt_state)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier on nbnet: scikit-learn's MLPClassifier parameters (see the
    module docstring for the differences), on the loop `nbnet train` runs. Labels of any type
    (strings, ints, -1/1, ...). As in scikit-learn, two classes are one logistic output trained
    with binary cross-entropy (the loop's "bce", out_activation_ "logistic"), more are softmax
    outputs with cross-entropy (out_activation_ "softmax"), and a multi-label indicator matrix y
    (n, L) of 0/1 is L logistic outputs with bce (classes_ 0..L-1, predict gives (n, L) 0/1)."""

    _classifies = True

    @property
    def _loss(self):
        return "cross-entropy" if self.out_activation_ == "softmax" else "bce"

    def _n_outputs(self, y):
        if y.ndim == 2:
            return y.shape[1]
        return 1 if len(self.classes_) == 2 else len(self.classes_)

    def _encode_targets(self, y, first, classes, dtype):
        check_classification_targets(y)
        if y.ndim == 2:
            return self._encode_multilabel(y, first, classes, dtype)
        if not first and self._multilabel:
            raise ValueError("fitted on multi-label targets (n, L): y must be an indicator matrix again")
        if first:
            found = np.unique(y if classes is None else classes)
            if len(found) < 2:  # refused before setting classes_, so the estimator stays unfitted
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the data, "
                                 f"got 1 class: {found[0]!r}")
            self.classes_ = found
            self.n_outputs_ = self._n_outputs(y)
            self.out_activation_ = "logistic" if len(self.classes_) == 2 else "softmax"
            self._multilabel = False
        idx = np.searchsorted(self.classes_, y)
        idx = np.minimum(idx, len(self.classes_) - 1)
        if not _same_labels(self.classes_[idx], y):
            unknown = np.setdiff1d(y, self.classes_) if _comparable(y, self.classes_) else np.unique(y)
            raise ValueError(f"`y` has classes not in `self.classes_` {self.classes_!r}: {unknown!r}")
        if len(self.classes_) == 2:  # bce's targets: 1.0 for classes_[1], as (N, 1)
            return idx.astype(dtype).reshape(-1, 1)
        return idx.astype(np.int64)

    def _encode_multilabel(self, y, first, classes, dtype):
        if type_of_target(y) != "multilabel-indicator":
            raise ValueError(f"2-D y must be a multi-label indicator matrix of 0 and 1, got {type_of_target(y)}")
        if first:
            # classes_ are the column indices: partial_fit's classes= were ignored, whatever they said
            if classes is not None and not _same_labels(classes, np.arange(y.shape[1])):
                raise ValueError(f"classes={classes!r}: a multi-label y's classes are its {y.shape[1]} column "
                                 f"indices, np.arange({y.shape[1]})")
            self.classes_ = np.arange(y.shape[1])
            self.n_outputs_ = y.shape[1]
            self.out_activation_ = "logistic"
            self._multilabel = True
        elif not self._multilabel or y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} label columns; the model was fitted on "
                             f"{self.n_outputs_ if self._multilabel else 'single labels'}")
        return np.ascontiguousarray(y, dtype=dtype)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), continuing from the state so far. `classes` (all the labels there
        will be) is required on the first call. Returns self. sample_weight is where scikit-learn
        1.9 has it (third; before 1.7 the third was classes), and must be None."""
        _no_sample_weight(sample_weight)
        if classes is not None:
            # scikit-learn's check of classes: np.unique took a NaN as a class (an output no row can
            # have), a 2-D list, or [0, 1, "c"] as the strings '0', '1', 'c'
            with np.errstate(invalid="ignore"):  # its cast of a NaN, before its own error says so
                classes = unique_labels(classes)
        if not hasattr(self, "_model"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            return self._fit(X, y, incremental=True, classes=classes)
        if classes is not None and not _same_labels(classes, self.classes_):
            raise ValueError(f"`classes={classes!r}` is not the same as on the first call to partial_fit, "
                             f"was: {self.classes_!r}")
        return self._fit(X, y, incremental=True)

    def predict_proba(self, X):
        """Class probabilities (n, n_classes), columns in the order of classes_ (multi-label: each
        label's probability)."""
        X = self._validate_for_predict(X)
        probs = predict(self._model, X, loss=self._loss, proba=True)[1]
        if not self._multilabel and len(self.classes_) == 2:  # σ(z) is the probability of classes_[1]
            probs = np.hstack([1 - probs, probs])
        return probs

    def predict(self, X):
        probs = self.predict_proba(X)
        if self._multilabel:  # scikit-learn's threshold: above ½
            return (probs > 0.5).astype(np.int64)
        return self.classes_[probs.argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multilabel": True}

    def predict_log_proba(self, X):
        """The log of predict_proba, from the logits z: a probability that rounds to 0 in float32
        (1 - σ(z) for z above about 17, where float64's holds to about 37; softmax's about 100
        below the top logit) gave log(0) = -inf, with NumPy's divide-by-zero warning, where the log
        is finite (about -z)."""
        X = self._validate_for_predict(X)
        z = predict(self._model, X, loss="mse")[0]  # mse: the outputs as they are, the logits here
        if self._loss == "cross-entropy":
            z = z - z.max(axis=1, keepdims=True)
            return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        log_p = -np.logaddexp(0, -z)  # log σ(z) = -log(1 + e^-z)
        if self._multilabel:
            return log_p
        return np.hstack([-np.logaddexp(0, z), log_p])  # log(1 - σ(z)) = log σ(-z)


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor on nbnet: scikit-learn's MLPRegressor parameters (see the
    module docstring for the differences), mean squared error on the loop `nbnet train` runs.
    One or several outputs; the output layer is linear (out_activation_ "identity")."""

    _classifies = False
    _loss = "mse"
    _sklearn_only = {**SKLEARN_ONLY, ("__init__", "loss"): "the regressor's loss is squared error, scikit-learn's "
                     "default: leave it out; there is no 'poisson'"}

    def _n_outputs(self, y):
        return y.shape[1]

    def _encode_targets(self, y, first, classes, dtype):
        with np.errstate(over="ignore"):  # a target too large for dtype: nbnet.train's error says so
            y = np.ascontiguousarray(y.reshape(len(y), -1), dtype=dtype)
        if first:
            self.n_outputs_ = y.shape[1]
            self.out_activation_ = "identity"
        elif y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} outputs, the model was fitted with {self.n_outputs_}")
        return y

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the state so far. Returns self. sample_weight must
        be None (scikit-learn 1.9's place for it)."""
        _no_sample_weight(sample_weight)
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """Predictions (n,) for one output, else (n, n_outputs), in the estimator's dtype."""
        X = self._validate_for_predict(X)
        out = predict(self._model, X, loss=self._loss)[0]
        return out.ravel() if out.shape[1] == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multioutput": True}
