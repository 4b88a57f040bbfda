"""Sequential model, and saving/loading it as a plain .npz (no pickle anywhere).

File layout (also the model part of `nbnet train --save` checkpoints):
    "nbnet/architecture"   JSON string: {"format": "nbnet", "version": 1, "layers": [{"type": ..., ...}]}
    "layer<i>.<name>"      parameter <name> (weight, bias) of layer i
Other keys (optimizer state, config, ...) may sit beside these; `load` ignores them.
"""

import json
import os
import tempfile

import numpy as np

from .layers import LAYERS, Linear, ReLU

ARCH_KEY = "nbnet/architecture"
FORMAT_VERSION = 1


class Sequential:
    """Layers applied in order. `backward(grad)` runs them in reverse and fills the gradients;
    `backward(grad, need_input_grad=True)` also returns dL/dX."""

    def __init__(self, layers):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("Sequential: needs at least one layer")
        for layer in self.layers:
            if not (hasattr(layer, "forward") and hasattr(layer, "backward")):
                raise ValueError(f"Sequential: {layer!r} is not a layer")
        pack_parameters(self.parameters())

    def __repr__(self):
        inner = ",\n    ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n    {inner},\n])"

    def forward(self, x):
        layers, i = self.layers, 0
        while i < len(layers):
            if self._fuses_relu(i, x):
                x = layers[i].forward_relu(x, layers[i + 1])
                i += 2
            else:
                x = layers[i].forward(x)
                i += 1
        return x

    __call__ = forward

    def _fuses_relu(self, i, x):
        """Layer i is a Linear followed by a ReLU: one kernel does both (cpu and gpu alike)."""
        layers = self.layers
        return i + 1 < len(layers) and type(layers[i]) is Linear and type(layers[i + 1]) is ReLU

    def backward(self, grad, need_input_grad=False):
        """Fills every layer's gradients. Returns dL/dX only with need_input_grad=True; by default
        None, and the first Linear's input gradient is not computed at all (a third of that
        layer's backward, which a training loop never reads), as PyTorch skips the gradient of an
        input that does not require one. Layers' own backward always returns their dX."""
        # Layers before the first one with parameters need no gradient at all when the caller
        # does not want dL/dX, and that first layer needs only its parameters' gradients.
        stop = 0 if need_input_grad else self._first_with_parameters()
        i = len(self.layers) - 1
        while i >= stop:
            layer = self.layers[i]
            if i - 1 >= stop and self._after_relu(i, grad):
                # Linear after a ReLU: its dX and the ReLU's backward in one pass.
                grad = layer.backward(grad, relu=self.layers[i - 1])
                i -= 2
            else:
                grad = layer.backward(grad, need_input_grad=need_input_grad or i > stop)
                i -= 1
        return grad if need_input_grad else None

    def _after_relu(self, i, grad):
        layers = self.layers
        return (
            i >= 1
            and type(layers[i]) is Linear
            and type(layers[i - 1]) is ReLU
            and layers[i - 1].inp is not None
        )

    def _first_with_parameters(self):
        return next((i for i, layer in enumerate(self.layers) if layer.parameters()), 0)

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def zero_grad(self):
        for layer in self.layers:
            layer.zero_grad()

    @property
    def dtype(self):
        for layer in self.layers:
            if isinstance(layer, Linear):
                return np.dtype(layer.dtype)
        return np.dtype(np.float32)

    def to(self, device):
        """Move parameters and gradients to "cuda" or "cpu" (see nbnet.gpu)."""
        from .gpu import move_model  # noqa: PLC0415 - optional, needs numba-cuda for "cuda"

        move_model(self, device)
        return self

    def state_arrays(self):
        """The arrays `save` writes: the architecture and every parameter, on the host."""
        arch = {
            "format": "nbnet",
            "version": FORMAT_VERSION,
            "layers": [{"type": type(layer).__name__, **layer.config()} for layer in self.layers],
        }
        arrays = {ARCH_KEY: np.array(json.dumps(arr_safe(arch)))}
        for i, layer in enumerate(self.layers):
            for p in layer.parameters():
                arrays[f"layer{i}.{p.name}"] = to_host(p.data)
        return arrays

    def save(self, path):
        write_npz_atomic(path, self.state_arrays())


def pack_parameters(params):
    """Move the parameters (and their gradients) into one flat buffer each, leaving every layer's
    arrays as views of it, so an optimizer updates them all in one pass (see nbnet.optim). Values
    are kept; `layer.weight[...] = w` still writes through. Host arrays of one dtype only."""
    if not params or not all(isinstance(p.data, np.ndarray) for p in params):
        return
    dtype = params[0].data.dtype
    if any(p.data.dtype != dtype for p in params):
        return
    total = sum(p.data.size for p in params)
    data, grad = np.empty(total, dtype), np.empty(total, dtype)
    start = 0
    for p in params:
        end = start + p.data.size
        data[start:end] = p.data.ravel()
        grad[start:end] = p.grad.ravel()
        setattr(p.layer, p.name, data[start:end].reshape(p.data.shape))
        setattr(p.layer, "grad_" + p.name, grad[start:end].reshape(p.grad.shape))
        start = end


def to_host(arr):
    return arr if isinstance(arr, np.ndarray) else arr.copy_to_host()


def arr_safe(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def write_npz_atomic(path, arrays):
    """Write `arrays` to `path` so that a crash leaves either the old file or the new one, never a
    torn one: write a temporary file in the same folder, fsync it, then rename it over `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_npz(path):
    """All arrays of an .npz file, read without pickle. Raises ValueError with a one-line reason
    for a missing, truncated or corrupt file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {key: f[key] for key in f.files}
    except ValueError as e:
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError, zlib.error, ...
        raise ValueError(f"{path}: corrupt or truncated .npz file ({type(e).__name__}: {e})") from None


def model_from_arrays(arrays, source="checkpoint"):
    """Rebuild a Sequential from the arrays `Sequential.state_arrays` wrote."""
    if ARCH_KEY not in arrays:
        raise ValueError(f"{source}: not an nbnet model (no {ARCH_KEY!r} entry)")
    try:
        arch = json.loads(str(arrays[ARCH_KEY]))
        specs = arch["layers"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{source}: unreadable architecture ({e})") from None
    if arch.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{source}: written by a newer nbnet (format version {arch['version']})")
    layers = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        cls = LAYERS.get(spec.pop("type", None))
        if cls is None:
            raise ValueError(f"{source}: unknown layer type in layer {i}")
        try:
            layer = cls(**spec)
        except TypeError as e:
            raise ValueError(f"{source}: bad settings for layer {i} ({e})") from None
        for p in layer.parameters():
            key = f"layer{i}.{p.name}"
            if key not in arrays:
                raise ValueError(f"{source}: missing array {key!r}")
            value = arrays[key]
            if value.shape != p.data.shape or value.dtype != p.data.dtype:
                raise ValueError(
                    f"{source}: {key} has shape {value.shape} {value.dtype}, "
                    f"expected {p.data.shape} {p.data.dtype}"
                )
            p.data[...] = value
        layers.append(layer)
    return Sequential(layers)


def load(path):
    """Load a model saved by `Sequential.save` or a checkpoint from `nbnet train --save`."""
    return model_from_arrays(read_npz(path), source=os.fspath(path))
