"""nbnet: a small, fast, readable neural-network framework with Numba kernels."""

from ._startup import quiet_signals_while_starting, refuse_bad_environment, warn_numba_yaml_unread


def _refused_in_job(why):
    from .dist import refuse_in_job  # noqa: PLC0415 - NumPy loads on this error path only

    refuse_in_job(why)


quiet_signals_while_starting()  # only in the `nbnet` command; first, before NumPy and Numba load
refuse_bad_environment(_refused_in_job)
warn_numba_yaml_unread()  # before Numba loads and warns

from . import threads  # noqa: F401 - first: it sets how Numba's threads wait, before anything starts them

from . import datasets
from .check import gradcheck
from .api import History, NothingToTrain, TrainingDiverged, TrainingInterrupted, evaluate, predict, train
from .data import batches
from .layers import Layer, Linear, Parameter, ReLU, Sigmoid, Softmax, Tanh
from .losses import BCEWithLogits, CrossEntropy, MSELoss, SoftmaxCrossEntropy
from .model import Sequential, load
from .optim import SGD, Adam, AdamW, clip_grad_norm_

__version__ = "0.1.0"

__all__ = [
    "Adam", "AdamW", "BCEWithLogits", "CrossEntropy", "History", "Layer", "Linear", "MSELoss", "NothingToTrain", "Parameter",
    "ReLU", "SGD", "Sequential", "Sigmoid", "Softmax", "SoftmaxCrossEntropy", "Tanh", "TrainingDiverged",
    "TrainingInterrupted",
    "batches", "clip_grad_norm_", "datasets", "evaluate", "gradcheck", "load", "predict", "train",
]
