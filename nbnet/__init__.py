"""nbnet: a small, fast, readable neural-network framework with Numba kernels."""

from ._startup import quiet_signals_while_starting

quiet_signals_while_starting()  # only in the `nbnet` command; first, before NumPy and Numba load

import os

# Threads that wait for work sleep instead of spinning. libgomp (Numba's default "omp" threading
# layer) spins ~300,000 iterations before it sleeps; when another process holds a core, the
# spinning thread steals it from the one doing the work, and 2-thread training ran 3-5x slower
# than on a quiet machine (profiling/load.py measures it). Read once, when the threading layer
# starts (the first parallel kernel call), so it is set here, at import; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from . import datasets
from .api import evaluate, predict, train
from .data import batches
from .layers import Linear, Parameter, ReLU, Sigmoid, Softmax, Tanh
from .losses import BCEWithLogits, CrossEntropy, MSELoss, SoftmaxCrossEntropy
from .model import Sequential, load
from .optim import SGD, Adam, AdamW, clip_grad_norm_

__version__ = "0.1.0"

__all__ = [
    "Adam", "AdamW", "BCEWithLogits", "CrossEntropy", "Linear", "MSELoss", "Parameter", "ReLU", "SGD", "Sequential",
    "Sigmoid", "Softmax", "SoftmaxCrossEntropy", "Tanh", "batches", "clip_grad_norm_", "datasets", "evaluate", "load", "predict", "train",
]
