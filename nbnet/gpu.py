"""GPU kernels: the CUDA twin of nbnet/cpu.py, compiled with numba-cuda (`pip install 'nbnet[cuda]'`).

Every function that layers, losses and optimizers call through nbnet.layers.kernels has a launcher
here of the same name and arguments; it picks the grid and launches `_<name>_kernel`, or a kernel it
shares (the Linear+ReLU forms run the Linear kernels with a flag; a loss's forward runs a per-row or
a one-block sum kernel and takes the mean on the host). A launcher's docstring gives the formula and
shapes in a line and names its kernel, whose docstring says how it is computed. Conventions as in
cpu.py (outputs first, gradients d<name>, generic over float32/float64, constants as
`x.dtype.type(c)`), plus:
- Each output element has one owner thread and every sum runs in a fixed order, with no atomics:
  the same inputs give bitwise the same outputs on every run.
- Linear is a shared-memory tiled matmul: a block of TILE x TILE threads computes a BT x BT
  output tile (BT = REG TILE), each thread REG x REG outputs in registers; its sums run in the
  order of the CPU's formula kernels (`linear_*_ref`: Y from b_j over l = 0, 1, ..., dW onto its
  old value over i, dX over j), not of its fast ones, which sum in vector lanes and in KC-step
  chunks: the two devices agree to rounding, not bit for bit. A batch longer than SPLIT_ROWS sums
  dW in parts of rows side by side, then adds the parts in order: still a fixed order, fixed by the
  shapes alone (the batch and the layer's), never by the GPU.
- A loss's mean is reduced by one block in a fixed tree order, and only that scalar is copied back.
- Scalars a CPU kernel gets from np.finfo (the log clamp, the optimizers' subnormal bound `tiny`)
  arrive as arguments: device code has no np.finfo.

Without numba-cuda installed this module still imports (nbnet.layers imports it lazily); whatever
would create a device array raises RuntimeError saying "install 'nbnet[cuda]'".

Testing without a GPU: NUMBA_ENABLE_CUDASIM=1 (set before numba.cuda is imported) runs these same
kernels in Numba's CUDA simulator, one Python thread per GPU thread. `to("cuda")` accepts the
simulator (it is an explicit opt-in, not a fall-back); `gpu_status()` reports that no real GPU is in
use. NBNET_CUDA_TILE (default 16) sets TILE, so tests can cover partial tiles at tiny shapes.
"""

import functools
import importlib.util
import math
import os
import threading
import warnings

import numpy as np

_INSTALL_HINT = "numba-cuda is not installed (pip install 'nbnet[cuda]')"
cuda = None
if importlib.util.find_spec("numba_cuda") is not None:
    try:
        from numba import cuda
        from numba.cuda.core import config as _cuda_config
    except ImportError as e:  # e.g. numba-cuda without its CUDA bindings
        cuda, _INSTALL_HINT = None, f"numba-cuda does not import ({e}); pip install 'nbnet[cuda]'"

if cuda is not None:
    _jit = cuda.jit
    _SIMULATOR = bool(_cuda_config.ENABLE_CUDASIM)
else:  # keep the module importable: kernels stay plain functions that nothing can launch
    _SIMULATOR = False

    def _jit(fn=None, **_options):
        return fn if fn is not None else (lambda f: f)


TILE = int(os.environ.get("NBNET_CUDA_TILE", "16"))  # Linear's blocks: TILE x TILE threads
REG = 4  # each thread computes REG x REG outputs of a Linear kernel, held in registers
BT = REG * TILE  # the output tile edge of one block
BT_PAD = BT + 1  # a staged tile's row length: +1 keeps a column's writes off one memory bank
BLOCK = 128  # threads per block for element-wise and per-row kernels
REDUCE = 256  # most threads of the one block that reduces a loss (a power of two)
SPLIT_ROWS = 512  # dW sums a batch longer than this in parts (measured on an H100: below, the ...
PART_ROWS = 256  # ... extra launch costs more than it saves) of at least PART_ROWS rows ...
MAX_PARTS = 16  # ... and at most MAX_PARTS parts, ...
SPLIT_BLOCKS = 512  # ... and at most this many 64x64 output tiles in all the parts (see _batch_parts)
MAX_GRID_Y = 65535  # CUDA's largest grid y (and z: dW's ≤ MAX_PARTS parts): the most row tiles a launch covers


# ----------------------------------------------------------------------------------------------
# Which GPU, and moving arrays


def simulator_enabled():
    """True when numba.cuda was imported with NUMBA_ENABLE_CUDASIM=1."""
    return _SIMULATOR


def _one_line(err):
    lines = [s.strip(" :") for s in str(err).splitlines() if s.strip(" :")]
    return "; ".join(lines[:2]) or type(err).__name__


@functools.cache  # a failure is not cached: the next call asks again
def _real_gpu():
    """A one-line description of the current real GPU; RuntimeError saying why there is none."""
    if cuda is None:
        raise RuntimeError(_INSTALL_HINT)
    if simulator_enabled():
        raise RuntimeError("no real GPU in use: the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1)")
    import numba_cuda  # noqa: PLC0415

    try:  # numba-cuda's array typing, which the first kernel compilation loads anyway
        import numba.cuda.np.arrayobj  # noqa: F401, PLC0415
    except AttributeError as e:  # numba-cuda 0.30.4 overloads np.row_stack, gone in numpy 2.5
        raise RuntimeError(f"numba-cuda {numba_cuda.__version__} cannot compile kernels with numpy "
                           f"{np.__version__} ({e}): pip install 'numpy<2.5'") from None
    try:
        dev = cuda.get_current_device()
    except Exception as e:  # CudaSupportError (no driver), CudaDriverError (no device), ...
        raise RuntimeError(f"no usable CUDA GPU: {_one_line(e)}") from None
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    cc = ".".join(map(str, dev.compute_capability))
    return f"{name} (compute capability {cc}), numba-cuda {numba_cuda.__version__}"


def gpu_status():
    """One line naming the usable GPU; raises RuntimeError with the reason when there is none
    (numba-cuda not installed, no driver, no device, or only the simulator)."""
    return _real_gpu()


def device_errors():
    """The exception classes numba-cuda raises when the GPU itself fails (out of memory, a launch
    or the device lost, a compiler library missing), real or simulated; () without numba-cuda.
    What `nbnet train --device cuda` reports as one line: few derive from the ValueError,
    OSError or MemoryError its host twins raise (CudaAPIError from Exception)."""
    if cuda is None:
        return ()
    from numba.cuda.cudadrv import driver, error  # noqa: PLC0415 - the simulator's where it is on

    names = ("CudaAPIError", "CudaDriverError", "CudaRuntimeError", "CudaSupportError", "LinkerError",
             "NvvmError", "NvrtcError")
    return tuple(dict.fromkeys(getattr(m, n) for m in (driver, error) for n in names if hasattr(m, n)))


def use_device_of(local_rank):
    """Data-parallel (nbnet.dist): make GPU `local_rank` mod (GPUs on this machine) this process's
    device, before anything else touches a GPU: one GPU per process where there are enough."""
    if cuda is None or simulator_enabled():
        return
    count = len(cuda.gpus)
    if count:
        cuda.select_device(local_rank % count)


def _require_device():
    """Raise RuntimeError unless kernels here can run: a real GPU, or the simulator on purpose."""
    if cuda is None:
        raise RuntimeError(_INSTALL_HINT)
    if not simulator_enabled():
        _real_gpu()


def to_device(arr):
    """A device copy of a host array (a device array is returned as it is)."""
    if not isinstance(arr, np.ndarray):
        return arr
    _require_device()
    return cuda.to_device(np.ascontiguousarray(arr))


def _to_host(arr):
    return arr if isinstance(arr, np.ndarray) else arr.copy_to_host()


def to_device_like(arr, like):
    """`arr` on the device where `like` lives (host or GPU), copied only if it is elsewhere."""
    return _to_host(arr) if isinstance(like, np.ndarray) else to_device(arr)


def copy(arr):
    """y_ij = x_ij into a new device array (2-D, a model's output: _copy_kernel; else a plain copy). The
    copy is a kernel launch: copy_to_device's device-to-device copy cost ~200 µs a step more on an
    H100 (model.forward copies its output each step)."""
    out = cuda.device_array(arr.shape, arr.dtype)
    if arr.ndim == 2:
        _launch_1d(_copy_kernel, arr.size, out, arr)
    else:
        out.copy_to_device(arr)
    return out


@_jit
def _copy_kernel(out, inp):
    """y_ij = x_ij   one thread per element p = i n + j"""
    p = cuda.grid(1)
    if p < out.size:
        n = out.shape[1]
        i = p // n
        j = p - i * n
        out[i, j] = inp[i, j]


def pack(arrays):
    """(flat, views): one new device buffer holding the device `arrays` back to back, and a view of
    it shaped as each, so an optimizer updates them all in one launch (nbnet.model.pack_parameters)."""
    flat = cuda.device_array(sum(a.size for a in arrays), arrays[0].dtype)
    views, start = [], 0
    for a in arrays:
        part = flat[start : start + a.size]
        part.copy_to_device(a.reshape(a.size))
        views.append(part.reshape(a.shape))
        start += a.size
    return flat, views


def one_flat(arrays):
    """A 1-D device view covering all of the device `arrays` when they lie back to back in one
    allocation, in order (as after `pack`), else None (always None in the simulator, whose arrays
    carry no device pointers: there each parameter gets its own launch)."""
    first = arrays[0]
    if getattr(first, "gpu_data", None) is None:
        return None
    try:
        owner, itemsize = first.gpu_data.owner, first.dtype.itemsize
        start = pos = first.device_ctypes_pointer.value
        for a in arrays:
            if (getattr(a, "gpu_data", None) is None or a.gpu_data.owner is not owner or a.dtype != first.dtype
                    or not a.is_c_contiguous() or a.device_ctypes_pointer.value != pos):
                return None
            pos += a.size * itemsize
        base = owner.device_pointer_value
        return type(first)(shape=((pos - start) // itemsize,), strides=(itemsize,), dtype=first.dtype,
                           gpu_data=owner.view(start - base, pos - base))
    except (AttributeError, TypeError):  # a numba-cuda whose device arrays lack these internals
        return None  # one launch per parameter: slower, still right


def byte_span(arr):
    """(first byte, one past the last byte) of the memory device array `arr`'s elements lie in,
    from its __cuda_array_interface__ (pointer, shape, strides); (0, 0) for no elements. A device
    view has no .base to compare, as a host one has: where two arrays lie is what says they share
    memory. The simulator's arrays have no such interface: their NumPy array's says the same."""
    face = getattr(arr, "__cuda_array_interface__", None)
    if face is None:
        face = arr.__array_interface__  # the simulator: a FakeCUDAArray passes it on from its ndarray
    shape, itemsize = tuple(face["shape"]), np.dtype(face["typestr"]).itemsize
    if 0 in shape:
        return 0, 0
    strides = face.get("strides")
    if strides is None:  # C-contiguous
        strides, step = [], itemsize
        for n in reversed(shape):
            strides.insert(0, step)
            step *= n
    lo = hi = face["data"][0]
    for n, s in zip(shape, strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + itemsize


def empty(shape, dtype):
    _require_device()
    return cuda.device_array(shape, dtype)


def move_model(model, device, state, forward_state):
    """Move every layer's parameters and gradients to "cuda" or "cpu", and drop the arrays layers
    cached from earlier steps (the forward's input `inp` and the buffers Layer._buffer made): they
    are remade on the new device. Any other array a layer holds (a fixed mask in a layer of the
    user's own, say) moves as the parameters do: dropped, it read None after the move, even after
    to("cpu") of a model on the host. (Back on the host, Sequential.to packs the parameters again.)
    `state`: (dict, key) of optimizer state arrays to move with them, in the same all-or-nothing
    move (state it misses follows at the optimizer's next step: nbnet.optim calls to_device_like).
    `forward_state(name, attrs)`: whether a layer's attribute is what its next forward makes again
    (nbnet.layers.forward_state, passed in: this module is below the layers, which import it)."""
    if device not in ("cuda", "cpu"):
        # torch's "cuda:1": nbnet runs on the current CUDA device, which the environment picks
        which = " (nbnet uses the current GPU: pick it with CUDA_VISIBLE_DEVICES)" if str(device).startswith("cuda:") else ""
        # torch's model.to(torch.float64): a dtype, which nbnet changes in a copy
        if str(getattr(device, "__name__", device)).removeprefix("torch.") in ("float32", "float64", "float", "double"):
            which = " (for a dtype: model.astype(np.float32 or np.float64), a copy)"
        raise ValueError(f"unknown device {device!r}: expected 'cuda' or 'cpu'{which}")
    move = to_device if device == "cuda" else _to_host
    if device == "cuda":
        _require_device()  # before touching anything: a failed move leaves the model as it was
    moved = {}  # id -> (array, its copy): an array in two layers (a tied weight) stays one array

    def once(arr):
        if id(arr) not in moved:
            moved[id(arr)] = (arr, move(arr))
        return moved[id(arr)][1]

    # Every copy is made before any layer changes: a copy that fails (out of GPU memory at the
    # second layer, say) left the layers before it on the new device and the rest on the old.
    changes = []  # (layer, attribute, new value)
    for layer in model.layers:
        keep = set()
        for p in layer.parameters():
            # "_grad_<name>": the array behind a Linear's grad_<name> property. p.grad reads a
            # gradient that zero_grad marked as zeros (and fills it): the move copies zeros.
            keep.update((p.name, "grad_" + p.name, "_grad_" + p.name))
            changes += [(layer, p.name, once(p.data)), (layer, "grad_" + p.name, once(p.grad))]
        attrs = vars(layer)
        for name, value in list(attrs.items()):
            if name in keep:
                pass
            elif forward_state(name, attrs):
                # the forward's cache, buffers, and what the checks keep (Linear's array check,
                # Layer._device_overlap and Layer._first_rows): the old arrays, whose memory they
                # held after the move until the next forward
                changes.append((layer, name, None))
            elif not (isinstance(value, np.ndarray) or hasattr(value, "copy_to_host")):
                pass
            else:
                changes.append((layer, name, once(value)))
    changes += [(st, name, once(st[name])) for st, name in state]
    for owner, name, value in changes:
        if type(owner) is dict:
            owner[name] = value
        else:
            setattr(owner, name, value)


# ----------------------------------------------------------------------------------------------
# Launch helpers: the grid for one thread per element (1-D) or per output of a tiled matmul.


_launchers = {}  # (kernel, grid, block) -> kernel[grid, block], built once


def _launcher(kernel, grid, block):
    """kernel[grid, block], kept: numba-cuda builds a launch configuration in ~30 µs, as long as
    the launch itself, and a training step launches 13 kernels. Its low-occupancy warning is
    silenced: nbnet's grids follow the batch, and a small batch gives a small grid by design."""
    if _SIMULATOR:  # the simulator's kernel[grid, block] sets the grid on the kernel itself
        return kernel[grid, block]
    key = (kernel, grid, block)
    launch = _launchers.get(key)
    if launch is None:
        if len(_launchers) > 4096:  # many shapes (e.g. predict on every batch size): start over
            _launchers.clear()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*under-utilization due to low occupancy")
            launch = _launchers[key] = kernel[grid, block]
    return launch


def _launch_1d(kernel, size, *args):
    # No pieces: grid x takes 2^31 - 1 blocks, 2.7e11 elements, more than any GPU's memory holds.
    if size == 0:
        return
    threads = min(BLOCK, size)
    _launcher(kernel, (size + threads - 1) // threads, threads)(*args)


def _launch_tiles(kernel, out, *args, rows):
    """One block of TILE x TILE threads per BT x BT tile of out's last two axes (rows, cols), x
    along columns, and z over a leading axis if out has one (dW's batch parts). `rows`: (position in
    (out, *args), axis) of every array laid along out's rows, out included. CUDA takes at most
    MAX_GRID_Y (65535) blocks in y, out's row tiles: a forward of over 4,194,240 rows, or a dW of
    that many outputs, failed as an invalid launch (the simulator, which checks no grid, ran it).
    More rows are launched in pieces, views of those arrays: each output keeps its owner and its
    sum's order, so the pieces give the same bits."""
    *depth, height, cols = out.shape
    step = MAX_GRID_Y * BT
    if height > step:
        for r0 in range(0, height, step):
            piece = [out, *args]
            for i, axis in rows:
                piece[i] = piece[i][(slice(None),) * axis + (slice(r0, r0 + step),)]
            _launch_tiles(kernel, *piece, rows=rows)
        return
    grid = ((cols + BT - 1) // BT, (height + BT - 1) // BT, *depth)
    _launcher(kernel, grid, (TILE, TILE))(out, *args)


# rows= of the Linear launches: (position, axis) of the arrays along the output's rows
_FORWARD_ROWS = ((0, 0), (1, 0), (2, 0))  # Y, A, X: the batch
_INPUT_ROWS = ((0, 0), (1, 0), (3, 0))  # dX, G, X': the batch
_PARAMS_ROWS = ((0, 0), (1, 0), (2, 1))  # dW, db, G's columns: the outputs
_PARTS_ROWS = ((0, 1), (1, 1), (2, 1))  # the parts' dW and db, G's columns: the outputs


# ----------------------------------------------------------------------------------------------
# Linear


@_jit(device=True, inline="always")
def _stage_rows(tile, src, r0, k0):
    """tile[c, r] = src[r0 + r, k0 + c] for the block's BT rows r and TILE steps c, zeros past src's
    edges. Consecutive threads (tx) read consecutive c: along src's rows, coalesced."""
    ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
    zero = src.dtype.type(0)
    inside = k0 + tx < src.shape[1]
    for q in range(REG):
        r = ty + q * TILE
        tile[tx, r] = src[r0 + r, k0 + tx] if inside and r0 + r < src.shape[0] else zero


@_jit(device=True, inline="always")
def _stage_cols(tile, src, k0, r0):
    """tile[c, r] = src[k0 + c, r0 + r] for TILE steps c and the block's BT columns r, zeros past
    src's edges. Consecutive threads (tx) read consecutive r: along src's rows, coalesced."""
    ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
    zero = src.dtype.type(0)
    inside = k0 + ty < src.shape[0]
    for q in range(REG):
        r = tx + q * TILE
        tile[ty, r] = src[k0 + ty, r0 + r] if inside and r0 + r < src.shape[1] else zero


@_jit(device=True, inline="always")
def _tile_products(acc, a, b, steps):
    """acc[p, q] += Σ_c a[c, ty + p T] b[c, tx + q T] over c = 0 .. steps-1, in that order: the
    thread's REG x REG outputs, each from REG + REG shared-memory reads per step, not 2 per product."""
    ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
    av = cuda.local.array(REG, dtype=a.dtype)
    bv = cuda.local.array(REG, dtype=b.dtype)
    for c in range(steps):
        for p in range(REG):
            av[p] = a[c, ty + p * TILE]
        for q in range(REG):
            bv[q] = b[c, tx + q * TILE]
        for p in range(REG):
            for q in range(REG):
                acc[p, q] += av[p] * bv[q]


@_jit
def _linear_forward_kernel(out, act, inp, weight, bias, relu):
    """y_ij = Σ_l x_il w_jl + b_j, and with relu also a_ij = max(0, y_ij)   (Linear, or Linear+ReLU)

    out (k, m) = Y, act (k, m) written only with relu, inp (k, n), weight (m, n), bias (m,).

    Block (by, bx) computes out[by BT:(by+1) BT, bx BT:(bx+1) BT] (BT = REG TILE); thread (ty, tx)
    owns y_ij for i = by BT + ty + p T, j = bx BT + tx + q T (p, q < REG), starts from b_j and adds
    the products l = 0, 1, ... in order. Per step over l it stages X and W tiles in shared memory.
    """
    k, n = inp.shape
    m = weight.shape[0]
    xs = cuda.shared.array((TILE, BT_PAD), dtype=inp.dtype)  # xs[c, r] = x[i0 + r, l0 + c]
    ws = cuda.shared.array((TILE, BT_PAD), dtype=inp.dtype)  # ws[c, r] = w[j0 + r, l0 + c]
    acc = cuda.local.array((REG, REG), dtype=inp.dtype)
    ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
    i0, j0 = cuda.blockIdx.y * BT, cuda.blockIdx.x * BT
    zero = inp.dtype.type(0)
    for q in range(REG):
        j = j0 + tx + q * TILE
        bj = bias[j] if j < m else zero
        for p in range(REG):
            acc[p, q] = bj
    for l0 in range(0, n, TILE):
        _stage_rows(xs, inp, i0, l0)
        _stage_rows(ws, weight, j0, l0)
        cuda.syncthreads()
        _tile_products(acc, xs, ws, min(TILE, n - l0))
        cuda.syncthreads()
    for p in range(REG):
        i = i0 + ty + p * TILE
        for q in range(REG):
            j = j0 + tx + q * TILE
            if i < k and j < m:
                y = acc[p, q]
                out[i, j] = y
                if relu:
                    act[i, j] = zero if y < zero else y  # NaN passes through, as on the CPU


def linear_forward(out, inp, weight, bias, weight_t=None):
    """y_ij = Σ_l x_il w_jl + b_j   out (k, m), inp (k, n), weight (m, n), bias (m,)   (_linear_forward_kernel)"""
    # weight_t: the CPU forward's Wᵀ scratch (nbnet.cpu); the GPU tiles read W as it is.
    _launch_tiles(_linear_forward_kernel, out, out, inp, weight, bias, False, rows=_FORWARD_ROWS)


def linear_relu_forward(out, act, inp, weight, bias, weight_t=None):
    """y_ij = Σ_l x_il w_jl + b_j, a_ij = max(0, y_ij)   out (k, m) = Y (kept for the ReLU's backward),
    act (k, m), inp (k, n), weight (m, n), bias (m,)   (_linear_forward_kernel with relu)"""
    _launch_tiles(_linear_forward_kernel, out, act, inp, weight, bias, True, rows=_FORWARD_ROWS)


@_jit(device=True, inline="always")
def _params_sums(acc, db, gs, xs, dout, inp, j0, l0, i_begin, i_end):
    """acc[p, q] += Σ_i g_ij x_il for the thread's dW outputs, and in the first column of blocks
    db[p] += Σ_i g_ij, over rows i = i_begin .. i_end-1 in order (gs, xs: the staging tiles)."""
    ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
    owns_db = cuda.blockIdx.x == 0 and tx == 0
    for i0 in range(i_begin, i_end, TILE):
        _stage_cols(gs, dout, i0, j0)
        _stage_cols(xs, inp, i0, l0)
        cuda.syncthreads()
        steps = min(TILE, i_end - i0)
        _tile_products(acc, gs, xs, steps)
        if owns_db:
            for p in range(REG):
                for c in range(steps):
                    db[p] += gs[c, ty + p * TILE]
        cuda.syncthreads()


@_jit
def _linear_backward_params_kernel(dweight, dbias, dout, inp, accumulate):
    """dw_jl (+)= Σ_i g_ij x_il,  db_j (+)= Σ_i g_ij   dweight (m, n), dbias (m,), dout (k, m) = G,
    inp (k, n); accumulate: +=, else =

    A tiled GᵀX: thread (ty, tx) owns dw_jl for j = by BT + ty + p T, l = bx BT + tx + q T and sums
    over i in order. The first column of blocks (bx = 0) also owns db: its threads tx = 0 sum the
    G tile they already have in shared memory, i in order, so the bias costs no launch of its own.
    """
    k, n = inp.shape
    m = dout.shape[1]
    gs = cuda.shared.array((TILE, BT_PAD), dtype=inp.dtype)  # gs[c, r] = g[i0 + c, j0 + r]
    xs = cuda.shared.array((TILE, BT_PAD), dtype=inp.dtype)  # xs[c, r] = x[i0 + c, l0 + r]
    acc = cuda.local.array((REG, REG), dtype=inp.dtype)
    db = cuda.local.array(REG, dtype=inp.dtype)
    ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
    j0, l0 = cuda.blockIdx.y * BT, cuda.blockIdx.x * BT
    owns_db = cuda.blockIdx.x == 0 and tx == 0
    zero = inp.dtype.type(0)
    for p in range(REG):
        db[p] = zero
        j = j0 + ty + p * TILE
        for q in range(REG):
            l = l0 + tx + q * TILE
            acc[p, q] = dweight[j, l] if accumulate and j < m and l < n else zero
    _params_sums(acc, db, gs, xs, dout, inp, j0, l0, 0, k)
    for p in range(REG):
        j = j0 + ty + p * TILE
        for q in range(REG):
            l = l0 + tx + q * TILE
            if j < m and l < n:
                dweight[j, l] = acc[p, q]
        if owns_db and j < m:
            dbias[j] = dbias[j] + db[p] if accumulate else db[p]


@_jit
def _linear_backward_params_part_kernel(dweight_parts, dbias_parts, dout, inp, rows):
    """P_zjl = Σ_i g_ij x_il,  Pb_zj = Σ_i g_ij over part z's rows i = z rows .. (z+1) rows - 1
    dweight_parts (parts, m, n), dbias_parts (parts, m), dout (k, m), inp (k, n)

    _linear_backward_params_kernel over one part of the batch, part z = blockIdx.z, written (not
    added) to its own slice; _linear_backward_params_sum_kernel then adds the parts in order.
    """
    k, n = inp.shape
    m = dout.shape[1]
    gs = cuda.shared.array((TILE, BT_PAD), dtype=inp.dtype)
    xs = cuda.shared.array((TILE, BT_PAD), dtype=inp.dtype)
    acc = cuda.local.array((REG, REG), dtype=inp.dtype)
    db = cuda.local.array(REG, dtype=inp.dtype)
    ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
    j0, l0, z = cuda.blockIdx.y * BT, cuda.blockIdx.x * BT, cuda.blockIdx.z
    zero = inp.dtype.type(0)
    for p in range(REG):
        db[p] = zero
        for q in range(REG):
            acc[p, q] = zero
    _params_sums(acc, db, gs, xs, dout, inp, j0, l0, z * rows, min(k, (z + 1) * rows))
    for p in range(REG):
        j = j0 + ty + p * TILE
        for q in range(REG):
            l = l0 + tx + q * TILE
            if j < m and l < n:
                dweight_parts[z, j, l] = acc[p, q]
        if cuda.blockIdx.x == 0 and tx == 0 and j < m:
            dbias_parts[z, j] = db[p]


@_jit
def _linear_backward_params_sum_kernel(dweight, dbias, dweight_parts, dbias_parts, accumulate):
    """dw_jl (+)= Σ_z P_zjl,  db_j (+)= Σ_z Pb_zj, z = 0, 1, ... in order   one thread per dW
    element p = j n + l, then one per db element"""
    m, n = dweight.shape
    p = cuda.grid(1)
    zero = dweight.dtype.type(0)
    if p < m * n:
        j = p // n
        l = p - j * n
        s = dweight[j, l] if accumulate else zero
        for z in range(dweight_parts.shape[0]):
            s += dweight_parts[z, j, l]
        dweight[j, l] = s
    elif p < m * n + m:
        j = p - m * n
        s = dbias[j] if accumulate else zero
        for z in range(dbias_parts.shape[0]):
            s += dbias_parts[z, j]
        dbias[j] = s


# Device scratch is per thread: threads may each train or evaluate a model of their own, and
# another thread's kernels between a launch and its read-back overwrote one shared scratch.
_scratch = threading.local()


def _thread_scratch(name):
    """This thread's dict `name` of reused device scratch arrays."""
    kept = getattr(_scratch, name, None)
    if kept is None:
        kept = {}
        setattr(_scratch, name, kept)
    return kept


def _batch_parts(k, m, n):
    """How dW (m, n) splits a batch of k rows: (parts, rows per part). One part up to SPLIT_ROWS
    rows; above, parts of ≥ PART_ROWS rows (a multiple of TILE), at most MAX_PARTS of them, and
    no more than fit SPLIT_BLOCKS output tiles in all: so a dW of over SPLIT_BLOCKS / 2 tiles (enough
    blocks to fill a GPU) is not split, and the parts' scratch stays under SPLIT_BLOCKS tiles (16 MB
    in float64) whatever the layer. Fixed by the shapes alone, never by the GPU, so a batch sums in
    the same order on every device."""
    tiles = ((m + BT - 1) // BT) * ((n + BT - 1) // BT)
    most = min(MAX_PARTS, SPLIT_BLOCKS // tiles)
    if k <= SPLIT_ROWS or most < 2:
        return 1, k
    rows = max(PART_ROWS, -(-k // most))
    rows = -(-rows // TILE) * TILE
    return -(-k // rows), rows


def linear_backward_params(dweight, dbias, dout, inp, accumulate):
    """dw_jl (+)= Σ_i g_ij x_il,  db_j (+)= Σ_i g_ij   dweight (m, n), dbias (m,), dout (k, m), inp (k, n);
    accumulate: +=, else =   (_linear_backward_params_kernel; a long batch: its part and sum kernels)

    A long batch is summed in parts, side by side, then the parts are added in order: one block
    per output tile walking all k rows leaves most of the GPU idle (at batch 2048 the 784→256 dW
    has 52 blocks for 132 multiprocessors, each walking 128 tile steps: 455 µs on an H100)."""
    m, n = dweight.shape
    parts, per_part = _batch_parts(inp.shape[0], m, n)
    if parts == 1:
        _launch_tiles(_linear_backward_params_kernel, dweight, dbias, dout, inp, accumulate, rows=_PARAMS_ROWS)
        return
    key = (parts, m, n, dweight.dtype)
    kept = _thread_scratch("parts")  # (parts, m, n, dtype) -> (dweight_parts, dbias_parts), made once per shape
    scratch = kept.get(key)
    if scratch is None:
        if len(kept) >= 16:  # each ≤ 16 MB (_batch_parts): ≤ 256 MB a thread holds however many shapes
            kept.clear()
        scratch = kept[key] = (empty((parts, m, n), dweight.dtype), empty((parts, m), dweight.dtype))
    _launch_tiles(_linear_backward_params_part_kernel, *scratch, dout, inp, per_part, rows=_PARTS_ROWS)
    _launch_1d(_linear_backward_params_sum_kernel, m * n + m, dweight, dbias, *scratch, accumulate)


@_jit
def _linear_backward_input_kernel(dinp, dout, weight, preact, relu):
    """dx_il = Σ_j g_ij w_jl, and with relu dx_il = 0 where the previous ReLU's input x'_il < 0

    dinp (k, n), dout (k, m), weight (m, n), preact (k, n) = x' read only with relu.

    A tiled G W: thread (ty, tx) owns dx_il for i = by BT + ty + p T, l = bx BT + tx + q T, summing
    j in order.
    """
    k, m = dout.shape
    n = weight.shape[1]
    gs = cuda.shared.array((TILE, BT_PAD), dtype=dout.dtype)  # gs[c, r] = g[i0 + r, j0 + c]
    ws = cuda.shared.array((TILE, BT_PAD), dtype=dout.dtype)  # ws[c, r] = w[j0 + c, l0 + r]
    acc = cuda.local.array((REG, REG), dtype=dout.dtype)
    ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
    i0, l0 = cuda.blockIdx.y * BT, cuda.blockIdx.x * BT
    zero = dout.dtype.type(0)
    for p in range(REG):
        for q in range(REG):
            acc[p, q] = zero
    for j0 in range(0, m, TILE):
        _stage_rows(gs, dout, i0, j0)
        _stage_cols(ws, weight, j0, l0)
        cuda.syncthreads()
        _tile_products(acc, gs, ws, min(TILE, m - j0))
        cuda.syncthreads()
    for p in range(REG):
        i = i0 + ty + p * TILE
        for q in range(REG):
            l = l0 + tx + q * TILE
            if i < k and l < n:
                dinp[i, l] = zero if relu and preact[i, l] < zero else acc[p, q]


def linear_backward_input(dinp, dout, weight):
    """dx_il = Σ_j g_ij w_jl   dinp (k, n), dout (k, m), weight (m, n)   (_linear_backward_input_kernel)"""
    _launch_tiles(_linear_backward_input_kernel, dinp, dout, weight, dinp, False, rows=_INPUT_ROWS)


def linear_relu_backward_input(dinp, dout, weight, preact):
    """dx_il = [x'_il ≥ 0] Σ_j g_ij w_jl, through the ReLU before this Linear   dinp (k, n), dout (k, m),
    weight (m, n), preact (k, n) = x'   (_linear_backward_input_kernel with relu)"""
    _launch_tiles(_linear_backward_input_kernel, dinp, dout, weight, preact, True, rows=_INPUT_ROWS)


# ----------------------------------------------------------------------------------------------
# Activations: (k, n) -> (k, n), one thread per element p = i n + j.


@_jit
def _relu_forward_kernel(out, inp):
    """y_ij = max(0, x_ij)"""
    p = cuda.grid(1)
    if p < inp.size:
        i = p // inp.shape[1]
        j = p - i * inp.shape[1]
        zero = inp.dtype.type(0)
        x = inp[i, j]
        out[i, j] = zero if x < zero else x  # NaN passes through, as on the CPU


@_jit
def _relu_backward_kernel(dinp, dout, inp):
    """dx_ij = g_ij if x_ij >= 0 else 0   (ReLU'(0) = 1; at NaN the gradient passes: as on the CPU)"""
    p = cuda.grid(1)
    if p < inp.size:
        i = p // inp.shape[1]
        j = p - i * inp.shape[1]
        zero = inp.dtype.type(0)
        dinp[i, j] = zero if inp[i, j] < zero else dout[i, j]


@_jit
def _sigmoid_forward_kernel(out, inp):
    """y_ij = 1 / (1 + e^(-x_ij))"""
    p = cuda.grid(1)
    if p < inp.size:
        i = p // inp.shape[1]
        j = p - i * inp.shape[1]
        one = inp.dtype.type(1)
        out[i, j] = one / (one + math.exp(-inp[i, j]))


@_jit
def _sigmoid_backward_kernel(dinp, dout, out):
    """dx_ij = g_ij y_ij (1 - y_ij)"""
    p = cuda.grid(1)
    if p < out.size:
        i = p // out.shape[1]
        j = p - i * out.shape[1]
        y = out[i, j]
        dinp[i, j] = dout[i, j] * y * (out.dtype.type(1) - y)


@_jit
def _tanh_forward_kernel(out, inp):
    """y_ij = tanh(x_ij)"""
    p = cuda.grid(1)
    if p < inp.size:
        i = p // inp.shape[1]
        j = p - i * inp.shape[1]
        out[i, j] = math.tanh(inp[i, j])


@_jit
def _tanh_backward_kernel(dinp, dout, out):
    """dx_ij = g_ij (1 - y_ij²)"""
    p = cuda.grid(1)
    if p < out.size:
        i = p // out.shape[1]
        j = p - i * out.shape[1]
        y = out[i, j]
        dinp[i, j] = dout[i, j] * (out.dtype.type(1) - y * y)


# Softmax is per row: one thread owns row i (classes are few; the row's sums stay in order).


@_jit(device=True)
def _softmax_row(out, inp, i):
    """out_ij = e^(x_ij - m_i) / s_i  with  m_i = max_j x_ij,  s_i = Σ_j e^(x_ij - m_i);  returns (m_i, s_i)
    (cpu.softmax_row's twin: one thread does row i)"""
    n = inp.shape[1]
    mx = inp[i, 0]
    for j in range(1, n):
        mx = max(mx, inp[i, j])
    s = inp.dtype.type(0)
    for j in range(n):
        e = math.exp(inp[i, j] - mx)
        out[i, j] = e
        s += e
    inv = inp.dtype.type(1) / s
    for j in range(n):
        out[i, j] *= inv
    return mx, s


@_jit
def _softmax_forward_kernel(out, inp):
    """y_ij = e^(x_ij - m_i) / Σ_l e^(x_il - m_i),  m_i = max_l x_il   one thread per row i"""
    i = cuda.grid(1)
    if i < inp.shape[0]:
        _softmax_row(out, inp, i)


@_jit
def _softmax_backward_kernel(dinp, dout, out):
    """dx_ij = y_ij (g_ij - Σ_l g_il y_il)   one thread per row i"""
    i = cuda.grid(1)
    if i < out.shape[0]:
        n = out.shape[1]
        gy = out.dtype.type(0)
        for j in range(n):
            gy += dout[i, j] * out[i, j]
        for j in range(n):
            dinp[i, j] = out[i, j] * (dout[i, j] - gy)


def relu_forward(out, inp):
    """y_ij = max(0, x_ij)   out (k, n), inp (k, n)   (_relu_forward_kernel)"""
    _launch_1d(_relu_forward_kernel, inp.size, out, inp)


def relu_backward(dinp, dout, inp):
    """dx_ij = g_ij if x_ij ≥ 0 else 0   dinp (k, n), dout (k, n), inp (k, n) = X   (_relu_backward_kernel)"""
    _launch_1d(_relu_backward_kernel, inp.size, dinp, dout, inp)


def sigmoid_forward(out, inp):
    """y_ij = 1 / (1 + e^(-x_ij))   out (k, n), inp (k, n)   (_sigmoid_forward_kernel)"""
    _launch_1d(_sigmoid_forward_kernel, inp.size, out, inp)


def sigmoid_backward(dinp, dout, out):
    """dx_ij = g_ij y_ij (1 - y_ij)   dinp (k, n), dout (k, n), out (k, n) = Y   (_sigmoid_backward_kernel)"""
    _launch_1d(_sigmoid_backward_kernel, out.size, dinp, dout, out)


def tanh_forward(out, inp):
    """y_ij = tanh(x_ij)   out (k, n), inp (k, n)   (_tanh_forward_kernel)"""
    _launch_1d(_tanh_forward_kernel, inp.size, out, inp)


def tanh_backward(dinp, dout, out):
    """dx_ij = g_ij (1 - y_ij²)   dinp (k, n), dout (k, n), out (k, n) = Y   (_tanh_backward_kernel)"""
    _launch_1d(_tanh_backward_kernel, out.size, dinp, dout, out)


def softmax_forward(out, inp):
    """y_ij = e^(x_ij - m_i) / Σ_l e^(x_il - m_i), m_i = max_l x_il   out (k, n), inp (k, n)
    (_softmax_forward_kernel)"""
    _launch_1d(_softmax_forward_kernel, inp.shape[0], out, inp)


def softmax_backward(dinp, dout, out):
    """dx_ij = y_ij (g_ij - Σ_l g_il y_il)   dinp (k, n), dout (k, n), out (k, n) = Y   (_softmax_backward_kernel)"""
    _launch_1d(_softmax_backward_kernel, out.shape[0], dinp, dout, out)


# ----------------------------------------------------------------------------------------------
# Reductions: one block, fixed tree order, so a sum is the same on every run.


@_jit(device=True)
def _block_sum(partial):
    """partial[0] = Σ_t partial[t] over the block's threads (blockDim.x, a power of two), pairwise
    in a fixed order."""
    t = cuda.threadIdx.x
    stride = cuda.blockDim.x // 2
    while stride > 0:
        cuda.syncthreads()
        if t < stride:
            partial[t] += partial[t + stride]
        stride //= 2
    cuda.syncthreads()


@_jit
def _sum_kernel(total, values):
    """total[0] = Σ_i v_i   thread t first sums v_t, v_(t+R), ... in order, then the block's tree"""
    partial = cuda.shared.array(REDUCE, dtype=values.dtype)
    t = cuda.threadIdx.x
    acc = values.dtype.type(0)
    for i in range(t, values.shape[0], cuda.blockDim.x):
        acc += values[i]
    partial[t] = acc
    _block_sum(partial)
    if t == 0:
        total[0] = partial[0]


@_jit
def _squared_error_sum_kernel(total, pred, target):
    """total[0] = Σ_ij (p_ij - t_ij)²   one block, as _sum_kernel over the flat index p = i d + j"""
    partial = cuda.shared.array(REDUCE, dtype=pred.dtype)
    t = cuda.threadIdx.x
    d = pred.shape[1]
    acc = pred.dtype.type(0)
    for p in range(t, pred.size, cuda.blockDim.x):
        i = p // d
        j = p - i * d
        r = pred[i, j] - target[i, j]
        acc += r * r
    partial[t] = acc
    _block_sum(partial)
    if t == 0:
        total[0] = partial[0]


def _reduce_to_host(kernel, size, dtype, *args):
    """Run a one-block reduction kernel(total, *args) and return total[0] as a host scalar."""
    scalars = _thread_scratch("scalars")  # dtype -> a reused one-element device array
    total = scalars.get(np.dtype(dtype))
    if total is None:
        total = scalars[np.dtype(dtype)] = cuda.device_array(1, dtype)
    threads = min(REDUCE, 1 << max(0, size - 1).bit_length())  # a power of two ≥ size
    _launcher(kernel, 1, threads)(total, *args)
    return total.copy_to_host()[0]


# ----------------------------------------------------------------------------------------------
# Losses: per-row losses on the device, then their mean; the 1/k is applied here, once.


# Labels on the device are not checked before a step (that would copy them to the host each time):
# a kernel that meets one out of range writes NaN where it would have read out of bounds, and the
# loss, NaN then, has the host check them (nbnet.losses).


@_jit
def _crossentropy_rows_kernel(losses, probs, targets, tiny):
    """ℓ_i = -log max(p[i, t_i], tiny); NaN for a p[i, t_i] outside [0, 1], as on the CPU"""
    i = cuda.grid(1)
    if i < probs.shape[0]:
        t = targets[i]
        p = probs[i, t] if 0 <= t < probs.shape[1] else probs.dtype.type(math.nan)
        ok = probs.dtype.type(0) <= p <= probs.dtype.type(1)
        losses[i] = -math.log(max(p, tiny)) if ok else probs.dtype.type(math.nan)


def crossentropy_forward(losses, probs, targets):
    """L = -(1/k) Σ_i log p[i, t_i], a host scalar   losses (k,) scratch, probs (k, c), targets (k,) int
    (_crossentropy_rows_kernel, then _sum_kernel)"""
    k = probs.shape[0]
    dt = probs.dtype.type
    _launch_1d(_crossentropy_rows_kernel, k, losses, probs, targets, dt(np.finfo(probs.dtype).tiny))
    return _reduce_to_host(_sum_kernel, k, probs.dtype, losses) / dt(k)


@_jit
def _crossentropy_backward_kernel(dprobs, probs, targets, tiny):
    """dp_ij = -1 / (k max(p_ij, tiny)) if j = t_i else 0   (the forward's clamp)"""
    i = cuda.grid(1)
    k, c = probs.shape
    if i < k:
        t = targets[i]
        for j in range(c):
            dprobs[i, j] = 0 if 0 <= t < c else probs.dtype.type(math.nan)
        if 0 <= t < c:
            dprobs[i, t] = -probs.dtype.type(1) / (probs.dtype.type(k) * max(probs[i, t], tiny))


def crossentropy_backward(dprobs, probs, targets):
    """dp_ij = -1 / (k max(p_ij, tiny)) if j = t_i else 0   dprobs (k, c), probs (k, c), targets (k,) int
    (_crossentropy_backward_kernel)"""
    tiny = probs.dtype.type(np.finfo(probs.dtype).tiny)
    _launch_1d(_crossentropy_backward_kernel, probs.shape[0], dprobs, probs, targets, tiny)


@_jit
def _softmax_crossentropy_rows_kernel(probs, losses, logits, targets):
    """p_ij = softmax(z_i)_j;  ℓ_i = (m_i - z_i,t_i) + log Σ_j e^(z_ij - m_i),  m_i = max_j z_ij
    (in that order, as on the CPU: see cpu._softmax_crossentropy_forward)"""
    i = cuda.grid(1)
    if i < logits.shape[0]:
        mx, s = _softmax_row(probs, logits, i)
        t = targets[i]
        losses[i] = (mx - logits[i, t]) + math.log(s) if 0 <= t < logits.shape[1] else logits.dtype.type(math.nan)


def softmax_crossentropy_forward(probs, losses, logits, targets):
    """L = (1/k) Σ_i (log Σ_j e^(z_ij) - z_i,t_i), a host scalar   probs (k, c) (kept for the backward),
    losses (k,) scratch, logits (k, c), targets (k,) int   (_softmax_crossentropy_rows_kernel, _sum_kernel)"""
    k = logits.shape[0]
    _launch_1d(_softmax_crossentropy_rows_kernel, k, probs, losses, logits, targets)
    return _reduce_to_host(_sum_kernel, k, logits.dtype, losses) / logits.dtype.type(k)


@_jit
def _softmax_crossentropy_backward_kernel(dlogits, probs, targets):
    """dz_ij = (p_ij - [j = t_i]) / k"""
    i = cuda.grid(1)
    k, c = probs.shape
    if i < k:
        inv_k = probs.dtype.type(1) / probs.dtype.type(k)
        t = targets[i]
        for j in range(c):
            dlogits[i, j] = probs[i, j] * inv_k if 0 <= t < c else probs.dtype.type(math.nan)
        if 0 <= t < c:
            dlogits[i, t] -= inv_k


def softmax_crossentropy_backward(dlogits, probs, targets):
    """dz_ij = (p_ij - [j = t_i]) / k   dlogits (k, c), probs (k, c), targets (k,) int
    (_softmax_crossentropy_backward_kernel)"""
    _launch_1d(_softmax_crossentropy_backward_kernel, probs.shape[0], dlogits, probs, targets)


@_jit
def _softmax_crossentropy_forward_backward_kernel(dlogits, probs, losses, logits, targets):
    """p_ij = softmax(z_i)_j,  ℓ_i = (m_i - z_i,t_i) + log Σ_j e^(z_ij - m_i),  dz_ij = (p_ij - [j = t_i]) / k"""
    i = cuda.grid(1)
    k, c = logits.shape
    if i < k:
        mx, s = _softmax_row(probs, logits, i)
        inv_k = logits.dtype.type(1) / logits.dtype.type(k)
        t = targets[i]
        for j in range(c):
            dlogits[i, j] = probs[i, j] * inv_k if 0 <= t < c else probs.dtype.type(math.nan)
        if 0 <= t < c:
            dlogits[i, t] -= inv_k
        losses[i] = (mx - logits[i, t]) + math.log(s) if 0 <= t < c else logits.dtype.type(math.nan)


def softmax_crossentropy_forward_backward(dlogits, probs, losses, logits, targets):
    """L as softmax_crossentropy_forward's, and dz_ij = (p_ij - [j = t_i]) / k   dlogits (k, c), probs (k, c),
    losses (k,) scratch, logits (k, c), targets (k,) int   (_softmax_crossentropy_forward_backward_kernel)"""
    k = logits.shape[0]
    _launch_1d(_softmax_crossentropy_forward_backward_kernel, k, dlogits, probs, losses, logits, targets)
    return _reduce_to_host(_sum_kernel, k, logits.dtype, losses) / logits.dtype.type(k)


def mse_forward(pred, target):
    """L = (1/(k d)) Σ_ij (p_ij - t_ij)², a host scalar   pred (k, d), target (k, d)
    (_squared_error_sum_kernel)"""
    k, d = pred.shape
    total = _reduce_to_host(_squared_error_sum_kernel, pred.size, pred.dtype, pred, target)
    return total / pred.dtype.type(k * d)


@_jit
def _mse_backward_kernel(dpred, pred, target):
    """dp_ij = 2 (p_ij - t_ij) / (k d)"""
    p = cuda.grid(1)
    if p < pred.size:
        k, d = pred.shape
        i = p // d
        j = p - i * d
        scale = pred.dtype.type(2) / pred.dtype.type(k * d)
        dpred[i, j] = scale * (pred[i, j] - target[i, j])


def mse_backward(dpred, pred, target):
    """dp_ij = 2 (p_ij - t_ij) / (k d)   dpred (k, d), pred (k, d), target (k, d)   (_mse_backward_kernel)"""
    _launch_1d(_mse_backward_kernel, pred.size, dpred, pred, target)


@_jit
def _bce_with_logits_sum_kernel(total, logits, targets):
    """total[0] = Σ_ij max(z_ij, 0) − z_ij t_ij + log(1 + e^(−|z_ij|))   one block, flat index p = i c + j
    (max(z, 0) − z t as z w, w = 1 − t for z ≥ 0, −t below, and 0 where w = 0: see cpu.bce_with_logits_forward)"""
    partial = cuda.shared.array(REDUCE, dtype=logits.dtype)
    t = cuda.threadIdx.x
    c = logits.shape[1]
    zero, one = logits.dtype.type(0), logits.dtype.type(1)
    acc = zero
    for p in range(t, logits.size, cuda.blockDim.x):
        i = p // c
        j = p - i * c
        z = logits[i, j]
        w = one - targets[i, j] if z >= zero else -targets[i, j]
        acc += (zero if w == zero else z * w) + math.log1p(math.exp(-abs(z)))
    partial[t] = acc
    _block_sum(partial)
    if t == 0:
        total[0] = partial[0]


def bce_with_logits_forward(logits, targets):
    """L = (1/(k c)) Σ_ij max(z_ij, 0) − z_ij t_ij + log(1 + e^(−|z_ij|)), a host scalar   logits (k, c),
    targets (k, c)   (_bce_with_logits_sum_kernel)"""
    k, c = logits.shape
    total = _reduce_to_host(_bce_with_logits_sum_kernel, logits.size, logits.dtype, logits, targets)
    return total / logits.dtype.type(k * c)


@_jit
def _bce_with_logits_backward_kernel(dlogits, logits, targets):
    """dz_ij = (σ(z_ij) − t_ij) / (k c), from e = e^(−|z|) on both sides as cpu.bce_with_logits_backward"""
    p = cuda.grid(1)
    if p < logits.size:
        k, c = logits.shape
        i = p // c
        j = p - i * c
        one = logits.dtype.type(1)
        z = logits[i, j]
        e = math.exp(-abs(z))
        t = targets[i, j]
        d = (one - t) - e / (one + e) if z >= logits.dtype.type(0) else e / (one + e) - t
        dlogits[i, j] = d * (one / logits.dtype.type(k * c))


def bce_with_logits_backward(dlogits, logits, targets):
    """dz_ij = (σ(z_ij) − t_ij) / (k c)   dlogits (k, c), logits (k, c), targets (k, c)
    (_bce_with_logits_backward_kernel)"""
    _launch_1d(_bce_with_logits_backward_kernel, logits.size, dlogits, logits, targets)


# ----------------------------------------------------------------------------------------------
# Optimizers: one thread per parameter element, the update rules of cpu.sgd_step / cpu.adam_step.


@_jit
def _sgd_step_kernel(param, grad, buf, lr, momentum, weight_decay, nesterov, tiny):
    """g = ∇ + λθ;  b = μb + g;  θ -= lr (g + μb if nesterov else b)   (torch.optim.SGD, dampening 0;
    μ = momentum, λ = weight_decay; a subnormal b, |b| < tiny, stored as 0 as in cpu.sgd_step)"""
    p = cuda.grid(1)
    if p < param.shape[0]:
        zero = param.dtype.type(0)
        g = grad[p]
        if weight_decay != zero:
            g += weight_decay * param[p]
        if momentum != zero:
            b = momentum * buf[p] + g
            if abs(b) < tiny:
                b = zero
            buf[p] = b
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        param[p] -= lr * g


def sgd_step(param, grad, buf, lr, momentum, weight_decay, nesterov):
    """g = ∇ + λθ;  b = μb + g;  θ -= lr (g + μb if nesterov else b)   param, grad, buf (P,) flat
    (_sgd_step_kernel)"""
    tiny = param.dtype.type(np.finfo(param.dtype).tiny)
    _launch_1d(_sgd_step_kernel, param.shape[0], param, grad, buf, lr, momentum, weight_decay, nesterov, tiny)


@_jit
def _adam_step_kernel(param, grad, m, v, one_beta1, beta2, one_beta2, eps, l2, decay, step_size, bc2_sqrt, tiny):
    """g = ∇ + l2 θ;  θ *= decay;  m = m + (1-β1)(g - m) (1-β1 < ½; else g - β1 (g - m));
    v = β2 v + (1-β2) g²;
    θ -= step_size m / (√v / bc2_sqrt + ε)   (torch.optim.Adam / AdamW; see cpu.adam_step: 1-β
    made in double by the caller, and a subnormal m or v, below tiny, stored as 0)"""
    p = cuda.grid(1)
    if p < param.shape[0]:
        one = param.dtype.type(1)
        zero = param.dtype.type(0)
        g = grad[p]
        if l2 != zero:
            g += l2 * param[p]
        if decay != one:
            param[p] *= decay
        if one_beta1 < param.dtype.type(0.5):  # torch's lerp, as cpu.adam_step
            mp = m[p] + one_beta1 * (g - m[p])
        else:
            mp = g + (one_beta1 - one) * (g - m[p])
        vp = beta2 * v[p] + one_beta2 * g * g
        if abs(mp) < tiny:
            mp = zero
        if abs(vp) < tiny:
            vp = zero
        m[p] = mp
        v[p] = vp
        param[p] -= step_size * mp / (math.sqrt(vp) / bc2_sqrt + eps)


def adam_step(param, grad, m, v, one_beta1, beta2, one_beta2, eps, l2, decay, step_size, bc2_sqrt):
    """θ -= step_size m / (√v / bc2_sqrt + ε) after m, v as cpu.adam_step's   param, grad, m, v (P,) flat
    (_adam_step_kernel)"""
    _launch_1d(
        _adam_step_kernel, param.shape[0],
        param, grad, m, v, one_beta1, beta2, one_beta2, eps, l2, decay, step_size, bc2_sqrt,
        param.dtype.type(np.finfo(param.dtype).tiny),
    )


# ----------------------------------------------------------------------------------------------
# Array helpers (the twins of simd.empty, which nbnet.layers.empty_like_shape calls for the host, and cpu.fill)


@_jit
def _fill_kernel(flat, value):
    """f_p = value   one thread per element of the flat view"""
    p = cuda.grid(1)
    if p < flat.shape[0]:
        flat[p] = value


def fill(arr, value):
    """a_p = value for every element of arr, any shape   (_fill_kernel)"""
    _launch_1d(_fill_kernel, arr.size, arr.reshape(arr.size), arr.dtype.type(value))


# ----------------------------------------------------------------------------------------------
# A data set on the device: copied over once, batches gathered there, only scalars come back.


@_jit
def _gather_rows_kernel(xb, yb, x, y, order, start):
    """xb_rc = x[o_(start+r), c],  yb_r = y[o_(start+r)]   one thread per element of xb"""
    p = cuda.grid(1)
    if p < xb.size:
        d = xb.shape[1]
        r = p // d
        c = p - r * d
        src = order[start + r]
        xb[r, c] = x[src, c]
        if c == 0:
            yb[r] = y[src]


def gather_rows(xb, yb, x, y, order, start):
    """xb_rc = x[o_(start+r), c],  yb_r = y[o_(start+r)]   xb (b, d), yb (b,), x (N, d), y (N,), order (N,) = o,
    all on the device   (_gather_rows_kernel)"""
    _launch_1d(_gather_rows_kernel, xb.size, xb, yb, x, y, order, start)


@_jit
def _count_correct_kernel(total, logits, targets):
    """total[0] = Σ_i [argmax_j z_ij = t_i]   one block; argmax as cpu.count_correct's and
    np.argmax's: the first maximum, a NaN counting as the largest (row [0, NaN, 5] picks 1)"""
    partial = cuda.shared.array(REDUCE, dtype=total.dtype)
    t = cuda.threadIdx.x
    acc = total.dtype.type(0)
    for i in range(t, logits.shape[0], cuda.blockDim.x):
        best = 0
        top = logits[i, 0]
        if top == top:  # else the first NaN is at 0
            for j in range(1, logits.shape[1]):
                v = logits[i, j]
                if not v <= top:  # larger, or NaN (as cpu.count_correct)
                    best = j
                    top = v
                    if v != v:
                        break
        if best == targets[i]:
            acc += 1
    partial[t] = acc
    _block_sum(partial)
    if t == 0:
        total[0] = partial[0]


def count_correct(logits, targets):
    """Σ_i [argmax_j z_ij = t_i], a host int (what accuracy needs, nothing more)   logits (k, c), targets (k,) int
    (_count_correct_kernel)"""
    return int(_reduce_to_host(_count_correct_kernel, logits.shape[0], np.int64, logits, targets))


@_jit
def _count_correct_labels_kernel(total, logits, targets):
    """total[0] = Σ_ij [(z_ij ≥ 0) = (t_ij ≥ ½)]   one block"""
    partial = cuda.shared.array(REDUCE, dtype=total.dtype)
    t = cuda.threadIdx.x
    c = logits.shape[1]
    acc = total.dtype.type(0)
    for p in range(t, logits.size, cuda.blockDim.x):
        i = p // c
        j = p - i * c
        if (logits[i, j] >= logits.dtype.type(0)) == (targets[i, j] >= targets.dtype.type(0.5)):
            acc += 1
    partial[t] = acc
    _block_sum(partial)
    if t == 0:
        total[0] = partial[0]


def count_correct_labels(logits, targets):
    """Σ_ij [(z_ij ≥ 0) = (t_ij ≥ ½)], the labels predicted right, a host int   logits (k, c), targets (k, c)
    (_count_correct_labels_kernel)"""
    return int(_reduce_to_host(_count_correct_labels_kernel, logits.size, np.int64, logits, targets))


class DeviceDataset:
    """(x, y) copied to the GPU once; `batches` gathers each batch there with a kernel.

        train = DeviceDataset(x_train, y_train, classes=10)
        for xb, yb in train.batches(128, shuffle=True, seed=(seed, epoch)):   # device arrays
            ...

    The batches are exactly those of `nbnet.batches(x, y, batch_size, shuffle, seed)` (same
    permutation), so a GPU run sees the data in the CPU run's order. Per step nothing is copied:
    once per epoch the permutation goes over (N int64s). When the data set does not fit in
    `max_bytes` (default: half the free GPU memory) it stays on the host and goes over one chunk of
    whole batches at a time, each chunk gathered in permutation order on the host: still the same
    batches, at the cost of one host-to-device copy of the data set per epoch.

    The yielded arrays are reused buffers (views of them): the next batch overwrites them.
    """

    def __init__(self, x, y, *, classes=None, max_bytes=None):
        _require_device()
        # Arrays already on the GPU are read where they lie (nothing here writes them):
        # np.ascontiguousarray copied them to the host and to_device back, each call of nb.train
        # or nb.evaluate, with the data set's memory twice on the GPU and once on the host.
        on_device = [not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host") and a.is_c_contiguous()
                     for a in (x, y)]
        x, y = (a if dev else np.ascontiguousarray(a) for a, dev in zip((x, y), on_device))
        if x.ndim != 2 or x.dtype not in (np.float32, np.float64):
            raise ValueError(f"DeviceDataset: x must be a float32/float64 (N, D) array, got {x.dtype} {x.shape}")
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"DeviceDataset: y must be {len(x)} integer labels, got {y.dtype} {y.shape}")
        if len(x) == 0:
            raise ValueError("DeviceDataset: the data set is empty")
        labels = _to_host(y) if classes is not None else None
        if classes is not None and (labels.min() < 0 or labels.max() >= classes):
            bad = labels.min() if labels.min() < 0 else labels.max()
            raise ValueError(f"DeviceDataset: label {bad} is out of range [0, {classes})")
        if max_bytes is None:
            free = cuda.current_context().get_memory_info()[0]
            max_bytes = min(free, 2**62) // 2  # the simulator reports infinite memory
        self.n = len(x)
        self.row_bytes = x.dtype.itemsize * x.shape[1] + y.dtype.itemsize
        self.resident = on_device[0] or self.n * self.row_bytes <= max_bytes  # there already: takes nothing
        self.chunk_rows = max(1, int(max_bytes // self.row_bytes))
        if self.resident:
            self.x, self.y = to_device(x), to_device(y)
            self.host = None
        else:
            self.x = self.y = None
            self.host = (x, _to_host(y))  # labels on the GPU for host features: gathered on the host
        self.dtype, self.width, self.label_dtype = x.dtype, x.shape[1], y.dtype
        self._bufs = {}

    def __len__(self):
        return self.n

    def _buffers(self, rows):
        """Reused device arrays of `rows` rows for x and y (made once per size)."""
        if rows not in self._bufs:
            self._bufs[rows] = (empty((rows, self.width), self.dtype), empty(rows, self.label_dtype))
        return self._bufs[rows]

    def batches(self, batch_size, shuffle=True, seed=None):
        from .data import batch_order  # noqa: PLC0415 - the one source of the epoch's order

        n = self.n
        order = batch_order(n, batch_size, shuffle, seed)
        if self.resident:
            if order is None:  # in order: plain views of the resident arrays
                for start in range(0, n, batch_size):
                    yield self.x[start : start + batch_size], self.y[start : start + batch_size]
                return
            d_order = to_device(order)
            # No more rows than the data has: a batch size above them is one batch of them all.
            xb, yb = self._buffers(min(batch_size, n))
            for start in range(0, n, batch_size):
                rows = min(batch_size, n - start)
                # Whole batches pass the buffers themselves: a new view per step would cost its
                # typing at every launch (~50 µs each in numba-cuda 0.30).
                bx, by = (xb, yb) if rows == len(xb) else (xb[:rows], yb[:rows])
                gather_rows(bx, by, self.x, self.y, d_order, start)
                yield bx, by
            return
        x, y = self.host
        chunk = min(n, max(batch_size, self.chunk_rows // batch_size * batch_size))  # n: one chunk
        cx, cy = self._buffers(chunk)
        for c0 in range(0, n, chunk):
            rows_c = min(chunk, n - c0)
            idx = slice(c0, c0 + rows_c) if order is None else order[c0 : c0 + rows_c]
            cx[:rows_c].copy_to_device(np.ascontiguousarray(x[idx]))
            cy[:rows_c].copy_to_device(np.ascontiguousarray(y[idx]))
            for start in range(0, rows_c, batch_size):
                end = min(start + batch_size, rows_c)
                yield cx[start:end], cy[start:end]
