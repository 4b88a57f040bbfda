"""CPU kernels: one `<layer>_forward` / `<layer>_backward` pair per layer, compiled with Numba.
Linear's backward is two kernels, `linear_backward_params` (dW, db) and `linear_backward_input`
(dX), as a first layer needs no dX; fused forms (Linear+ReLU, softmax+cross-entropy) sit beside the
plain ones, which are their tested references.

Conventions (the same in nbnet/gpu.py):
- Batch in rows: inp is (k, n), weight is (m, n), out is (k, m); out = inp @ weight.T + bias.
- Outputs first, then inputs; gradients are named d<name>. Parameter gradients accumulate (+=),
  or with accumulate=False are written (=) over what is there; input gradients are overwritten.
- Every kernel is generic over float32/float64. Constants are made with `x.dtype.type(c)` so that a
  float32 kernel never computes in float64 (tests/test_dtypes.py greps the LLVM IR for `double`).
- Each output element has exactly one owner: prange runs over an output index, and every sum is a
  serial loop in a fixed order. So the result is bitwise the same whatever NUMBA_NUM_THREADS is.
- Losses take the mean over the batch here, once; Linear's backward never divides by k again.
"""

import functools
import hashlib
import types as pytypes

import numpy as np
from numba import njit, prange
from numba.core import caching

from . import simd, threads

# Numba's on-disk cache keys a function on its own file's stamp (numba/numba#1833), but the
# kernels here compile simd.py's micro-kernels into themselves: after a change to simd.py alone
# (a git pull) they would go on loading the old code. So their key holds a hash of both files.
with open(__file__, "rb") as _own, open(simd.__file__, "rb") as _simd:
    SOURCES_HASH = hashlib.sha256(_own.read() + _simd.read()).hexdigest()


class _SourcesKeyedCache(simd.DiskCache):
    sources = SOURCES_HASH


# _index_key is Numba's internal (as of 0.68): a Numba that renamed it gets its plain cache, not an
# error at import (tests/test_fast_kernels.py then fails on the stale kernels, where it can be fixed).
_KEYED = hasattr(caching.FunctionCache, "_index_key")


def jit(func, **options):
    """njit(cache=True, **options): a second process loads the compiled kernel from __pycache__
    instead of compiling it, unless cpu.py or simd.py changed since (or Numba has no folder for its
    cache: simd.CACHE)."""
    kernel = njit(cache=simd.CACHE, **options)(func)
    if simd.CACHE:
        kernel._cache = (_SourcesKeyedCache if _KEYED else simd.DiskCache)(kernel.py_func)
    return simd.said_without_cwd(kernel)


pjit = functools.partial(jit, parallel=True)


# ----------------------------------------------------------------------------------------------
# Linear


def _linear_forward_ref(out, inp, weight, bias):
    """y_ij = Σ_l x_il w_jl + b_j   (the plain formula; reference for linear_forward)

    out (k, m), inp (k, n), weight (m, n), bias (m,). Parallel over rows i.
    """
    k, n = inp.shape
    m = weight.shape[0]
    for i in prange(k):
        for j in range(m):
            acc = bias[j]
            for l in range(n):
                acc += inp[i, l] * weight[j, l]
            out[i, j] = acc


def _linear_backward_params_ref(dweight, dbias, dout, inp):
    """dw_jl += Σ_i g_ij x_il,   db_j += Σ_i g_ij   (the plain formula)

    dweight (m, n), dbias (m,), dout (k, m) = G, inp (k, n). Parallel over output rows j, so each
    dw_jl has one owner and its sum over i runs in a fixed order.
    """
    k, n = inp.shape
    m = dout.shape[1]
    for j in prange(m):
        db = dbias.dtype.type(0)
        for i in range(k):
            g = dout[i, j]
            db += g
            for l in range(n):
                dweight[j, l] += g * inp[i, l]
        dbias[j] += db


def _linear_backward_input_ref(dinp, dout, weight):
    """dx_il = Σ_j g_ij w_jl   (the plain formula)

    dinp (k, n), dout (k, m), weight (m, n). Parallel over rows i.
    """
    k, m = dout.shape
    n = weight.shape[1]
    for i in prange(k):
        for l in range(n):
            dinp[i, l] = 0
        for j in range(m):
            g = dout[i, j]
            for l in range(n):
                dinp[i, l] += g * weight[j, l]


linear_forward_ref = pjit(_linear_forward_ref)
linear_backward_params_ref = pjit(_linear_backward_params_ref)
linear_backward_input_ref = pjit(_linear_backward_input_ref)


# The fast kernels compute the same sums through nbnet.simd's register-blocked micro-kernels, sized
# for this CPU when nbnet is imported (simd.describe() says which). Two shapes of product:
# - broadcast (simd.bcast_unit): C[r, :] += A[r, s] · B[s, :], one element of A times a contiguous row
#   of B. dW = GᵀX (A = Gᵀ, B = X), dX = GW (A = G, B = W), and the forward from a copy of Wᵀ at
#   the shapes forward_over_weight_t picks (A = X, B = Wᵀ). Each output sums s in plain order, one
#   FMA per step, in chunks of at most simd.KC steps, each chunk's sum added to C.
# - dot (simd.dot_unit): y_ij = Σ_l x_il w_jl with both rows read along l: the forward at the other
#   shapes (small batches, where copying W to Wᵀ would cost as much as the product, and long
#   sums). Each output keeps W lane partial sums, added in a fixed tree at the end, plus the sum
#   of its last n mod W terms (simd.dot_unit).
# Each kernel splits its output into work units (blocks of rows × columns) that the threads take
# with simd.claim_near: up to NEAR_ROWS rows a batch, each thread its own share first, so that at
# every step it writes and reads the same rows of each weight as the optimizer's step that updates
# them (dw_shares, sgd_lanes); above that in order, one at a time. Either way a thread slowed by
# another process does fewer units. Each unit, and so
# each output element, has one owner, and its sums do not depend on which thread runs it: results
# are bitwise the same whatever the thread count. The epilogue (bias, ReLU) runs on a unit's block
# right after it is computed, while it is in cache.


def _renamed(func, suffix, **constants):
    """func under another name, seeing `constants` as its globals of those names if it reads any.
    Numba's on-disk cache files a compilation under the function's name and line, not under
    `parallel`, so serial and parallel twins of one function would load each other's code; a
    renamed copy gets its own cache entry. (Numba reads globals as compile-time constants; a copy
    with constants has the module's globals as they stand when the Kernel is made, so what such a
    kernel calls must be defined above its Kernel; the others share the module's.)"""
    constants = {name: value for name, value in constants.items() if name in func.__code__.co_names}
    glob = dict(func.__globals__, **constants) if constants else func.__globals__
    copy = pytypes.FunctionType(func.__code__, glob, func.__name__ + suffix, func.__defaults__)
    copy.__qualname__ = func.__qualname__ + suffix
    copy.__doc__ = func.__doc__
    return copy


def _named_code(code, func):
    """code under func's name and qualified name."""
    names = {"co_name": func.__name__}
    if hasattr(code, "co_qualname"):  # Python 3.11+
        names["co_qualname"] = func.__qualname__
    return code.replace(**names)


class Kernel:
    """One kernel compiled twice from the same Python function, serial and parallel; a call runs
    the parallel one only when the work (multiply-adds for a Linear kernel, weighted elements for the
    others) reaches `threshold`, below which waking the thread pool costs more than it saves
    (measured: see PARALLEL_WORK and STEP_PARALLEL_WORK), and when more than one thread is in use
    (nbnet.threads: fewer while other processes keep the cores busy). On one thread the serial twin
    runs, as a parallel region on one thread still costs 2-5 µs a call (784->256 at batch 1, one
    core: forward 18.5 vs 14.0 µs, dW 22.2 vs 19.7).
    The twins are one function, so results never depend on which runs, or on the thread count. The
    global SHARED_UNITS (whether several threads share the work units: simd.bcast_grid gives one
    thread the widest) is False in the serial twin. Asked of Numba inside the kernel instead
    (numba.get_num_threads), it kept the kernel out of the on-disk cache; as a default argument
    (shared=True), the parallel twin ran 3x slower when called without it (dW 784->256 batch 8:
    140 vs 42 µs, Numba 0.68)."""

    def __init__(self, func, work, threshold, **options):
        self.serial = jit(_renamed(func, "_serial", SHARED_UNITS=False), **options)
        self.parallel = jit(func, parallel=True, **options)
        # Profilers (cProfile) name a Numba call by its dispatcher's __code__: file, line and co_name.
        # The twins share one code object, so both ran as one row. The serial dispatcher reports a
        # copy named as its function; what Numba compiles and caches is py_func's code, unchanged
        # (NUMBA_DEBUGINFO finds a function's source lines by its co_name).
        self.serial.__code__ = _named_code(self.serial.__code__, self.serial.py_func)
        self.work, self.threshold, self.__doc__ = work, threshold, func.__doc__

    @property
    def py_func(self):
        """The function as written here, run as plain Python (slowly), as a Numba dispatcher's
        py_func is: to step through a kernel with pdb or print, since nbnet refuses
        NUMBA_DISABLE_JIT. The Linear kernels' micro-kernels (nbnet.simd) run only compiled."""
        return self.parallel.py_func

    def __repr__(self):
        return f"<Kernel {self.parallel.py_func.__name__}: Numba dispatchers .serial and .parallel>"

    def __getattr__(self, name):
        """Numba's dispatcher API (inspect_asm, signatures, parallel_diagnostics, ...) is the twins':
        an AttributeError that names them, rather than answering for one twin, which may not be the
        one that ran (on one thread the parallel twin has no signatures)."""
        parallel, serial = vars(self).get("parallel"), vars(self).get("serial")
        if name.startswith("_") or parallel is None or serial is None or not hasattr(parallel, name):
            raise AttributeError(f"'Kernel' object has no attribute {name!r}")
        raise AttributeError(
            f"a Kernel is two Numba dispatchers of {parallel.py_func.__name__}: use .parallel.{name} (the "
            f"prange twin, which a call runs from a work threshold while more than one thread is in use) or "
            f".serial.{name} (the other calls); compiled so far: .parallel {len(parallel.signatures)} "
            f"signature(s), .serial {len(serial.signatures)}")

    def __call__(self, *args):
        if self.work(*args) >= self.threshold and threads.parallel():
            if threads.exclusive:
                return threads.alone(lambda: self.parallel(*args), lambda: self.serial(*args))
            return self.parallel(*args)
        return self.serial(*args)


# Up to this batch the Linear kernels' threads each take their own share of the units first
# (simd.claim_near), above it the next unit in order: on 2 threads (Zen 5 VM, 784-256-128-10,
# training step) shares first ran batch 1 132 -> 61 µs, 8 176 -> 87, 32 229 -> 194, but 128 508
# -> 562 (in order again: 513).
NEAR_ROWS = 32

# The kernels' work units are shared by the threads (simd.bcast_grid); False in serial twins (Kernel).
SHARED_UNITS = True

# Below this many multiply-adds a Linear kernel runs serially (see Kernel). Measured on 2 cores
# (Zen 3, serial / parallel twin time, forward, dW, dX+ReLU, interleaved, quiet): waking the sleeping
# second thread costs 10-15 µs a call (OMP_WAIT_POLICY=passive), so parallel loses up to about 650K
# (784->256 at batch 1, 200K: 0.56-0.80; 256->128 at 8, 262K: 0.46-0.57; 100->100 at 64, 640K:
# 0.87-1.14), is even around 1M (256->128 at 32: 0.99-1.14; 64->64 at 256: 0.92-1.24; 128->10 at
# 768: 0.91-1.13) and wins from 2M (256->128 at 64: 1.17-1.19). (784->256 at batch 8, 1.6M, still
# 0.93-1.09: four work units for two threads.)
PARALLEL_WORK = 1_000_000

# ... except a kernel that streams a weight larger than a core's L2 cache (STREAM_BYTES): its time is
# reading (forward, dX) or writing (dW) that weight from L3, and two cores stream it faster than one,
# once the waiting thread is quick to wake (nbnet.threads' short spin). Measured in a training loop
# (2 cores, Zen 3, 784-256-128-10, weight 784x256 float32 = 784 KB), all Linear kernels from 200K
# multiply-adds / from 1M: batch 1 0.92, batch 2 0.88; but where only small weights cross 200K it
# lost (256->128 at batch 8: 1.10; 64->64 at 64: 1.09). dX of one row is a single row loop: no split.
STREAM_BYTES = 512 * 1024


def _linear_work(rows, weight, split=True):
    """Multiply-adds of a Linear kernel over `rows` rows; at least PARALLEL_WORK when it streams a
    weight larger than STREAM_BYTES (and its work can be split)."""
    work = rows * weight.size
    return max(work, PARALLEL_WORK) if split and weight.nbytes >= STREAM_BYTES else work


@njit(inline="always")
def bias_relu_block(out, act, bias, i0, i1, j0, j1, relu):
    """The forward's epilogue on one block: y_ij += b_j, and with relu a_ij = max(0, y_ij)
    out (k, m) = Y, act (k, m) (written only with relu), bias (m,); rows i0 ≤ i < i1, columns j0 ≤ j < j1.

    Row slices indexed from 0, and a select for the ReLU: LLVM vectorises both loops (with
    range(j0, j1) over 2-D indices it kept scalar code, and a branch on the sign is mispredicted
    for half the elements)."""
    zero = out.dtype.type(0)
    b = bias[j0:j1]
    for i in range(i0, i1):
        y = out[i, j0:j1]
        for j in range(y.shape[0]):
            y[j] += b[j]
        if relu:
            a = act[i, j0:j1]
            for j in range(y.shape[0]):
                a[j] = zero if y[j] < zero else y[j]  # NaN passes through, as in torch


def _linear_forward(out, act, inp, weight, bias, relu):
    """y_ij = Σ_l x_il w_jl + b_j, and with relu also a_ij = max(0, y_ij) (the next layer's input)

    out (k, m) = Y, act (k, m) (written only with relu), inp (k, n), weight (m, n), bias (m,).
    Dot-form units (simd.dot_unit), each thread its own share first (simd.claim_near).
    """
    units = simd.dot_units(out)
    group = 1 if inp.shape[0] <= NEAR_ROWS else 0  # (see NEAR_ROWS)
    shared = units >= 0 and SHARED_UNITS  # a run-time bool, as in _linear_blocks (one compile of claim_near)
    counter, flags = simd.unit_counter(), simd.unit_flags()
    for first in prange(units):  # each thread takes all it can in its first iteration
        u = simd.claim_near(flags, counter, first, units, group, shared)
        while u < units:
            i0, i1, j0, j1 = simd.dot_unit(out, inp, weight, u)
            bias_relu_block(out, act, bias, i0, i1, j0, j1, relu)
            u = simd.claim_near(flags, counter, u + 1, units, group, shared)


linear_forward_act = Kernel(
    _linear_forward, lambda out, act, x, w, b, relu: _linear_work(x.shape[0], w), PARALLEL_WORK
)


def _transpose(out, inp):
    """out_ji = x_ij   out (n, k) = Xᵀ, inp (k, n) = X

    In 32×32 blocks so both sides stay in cache, each by W × W register blocks
    (simd.transpose_block) and its edges element by element. Parallel over row blocks of out."""
    k, n = inp.shape
    w = simd.vector_lanes(out)
    for jb in prange((n + 31) // 32):
        j0, j1 = jb * 32, min(jb * 32 + 32, n)
        for i0 in range(0, k, 32):
            i1 = min(i0 + 32, k)
            j = j0
            while j + w <= j1:
                i = i0
                while i + w <= i1:
                    simd.transpose_block(out, j * k + i, k, inp, i * n + j, n)
                    i += w
                for jj in range(j, j + w):
                    for ii in range(i, i1):
                        out[jj, ii] = inp[ii, jj]
                j += w
            for jj in range(j, j1):
                for ii in range(i0, i1):
                    out[jj, ii] = inp[ii, jj]


# A Kernel with no threshold (parallel whenever more than one thread is in use, as it always was), so
# that it too runs serially where nbnet.threads says so: a forked child (see there) or one thread.
transpose = Kernel(_transpose, lambda out, inp: inp.size, 0)


# The forward copies W to Wᵀ (transpose) and runs the broadcast form for whole vectors of outputs
# (m a multiple of the vector width, at least one full tile: no scalar columns) when
# - the sum is short (inputs narrower than FORWARD_T_MAX_IN) at a batch of at least FORWARD_T_ROWS
#   rows to pay for the copy: measured on one core (Zen 3, AVX2, interleaved, copy included), dot /
#   broadcast time 20->100 float32 batch 64 1.64, 512 2.08 (float64 ~1.0): a 20-long sum is mostly
#   the dot form's scalar tail;
# - or, in float32, the sum is at most FORWARD_T_WIDE_IN long at a batch of FORWARD_T_WIDE_ROWS:
#   there the dot form's lane sums (one per output, every few FMAs) cost more than the copy.
#   Broadcast / dot time, copy included (Zen 3, interleaved; 1 thread | 2 threads): 256->128 at
#   batch 256 0.89 | 0.97, at 512 0.83 | 0.89; 128->64 0.93 | 1.05, 0.83 | 0.88; 64->64 0.80 |
#   1.20, 0.73 | 0.93. Not at batch 128 (256->128 0.92 | 1.07), nor for longer sums (784->256 at
#   512 1.02 | 1.03, 512->512 1.01), nor in float64 (256->128 at 256 1.02, 128->64 1.00);
# - or, in float32, the sum has a scalar tail (n not a multiple of the vector width), is at most
#   FORWARD_T_TAIL_IN long, and the batch has FORWARD_T_ROWS rows: the dot form adds each output's
#   last n mod W terms in a scalar loop. Broadcast / dot at batch 64, 128, 256 (1 thread | 2):
#   50->256 0.46 0.40 0.40 | 0.49 0.47 0.53; 100->64 0.56 0.48 0.45 | 0.61 0.50 0.63; 250->64 0.87
#   0.78 0.75 | 0.62 0.55 0.85; 300->256 0.81 0.73 0.72 | 0.93 0.80 0.77; but 785->256 1.07 0.99
#   0.96 | 1.25 1.10 0.99. (float64 gains less and not everywhere: 50->256 0.57-0.74, 130->128 at
#   64 0.89 | 1.01, 250->64 0.76-1.04, 302->256 0.95-1.23.)
# Else the dot form (with scalar columns, as 128->10, the broadcast form was 4-6x slower).
FORWARD_T_ROWS = 64  # the fewest rows either case takes it at (Linear._weight_t's quick test)
FORWARD_T_MAX_IN = 32
FORWARD_T_WIDE_ROWS = 256
FORWARD_T_WIDE_IN = 256
FORWARD_T_TAIL_IN = 320


def forward_over_weight_t(k, n, m, dtype):
    """Whether the forward of k rows, n inputs, m outputs in `dtype` takes the broadcast form over
    a copy of Wᵀ (see FORWARD_T_ROWS): shapes and dtype only."""
    if k < FORWARD_T_ROWS:  # the common small-batch case, in one test (this runs at every forward)
        return False
    w = simd.lanes(np.dtype(dtype))
    short = n < FORWARD_T_MAX_IN
    single = np.dtype(dtype) == np.float32
    wide = single and k >= FORWARD_T_WIDE_ROWS and n <= FORWARD_T_WIDE_IN
    tail = single and n % w != 0 and n <= FORWARD_T_TAIL_IN
    return (short or wide or tail) and m >= simd.BCAST_NV * w and m % w == 0


def forward_route(out, act, inp, weight, bias, weight_t, relu):
    """The forward's kernel calls for these shapes, as [(kernel, its arguments)]: broadcast units
    over Wᵀ where forward_over_weight_t (and weight_t is given), dot units otherwise. For _forward,
    tests, and Sequential's planned steps."""
    if weight_t is not None and forward_over_weight_t(inp.shape[0], inp.shape[1], weight.shape[0], weight.dtype):
        how = FORWARD | RELU if relu else FORWARD
        return [(transpose, (weight_t, weight)), (linear_blocks, (out, inp, weight_t, bias, act, how))]
    return [(linear_forward_act, (out, act, inp, weight, bias, relu))]


def _forward(out, act, inp, weight, bias, weight_t, relu):
    if weight_t is None or inp.shape[0] < FORWARD_T_ROWS:  # the dot form: no route to build
        linear_forward_act(out, act, inp, weight, bias, relu)  # (128->10 at batch 32, Zen 3: 3.5 -> 3.2 µs)
        return
    for kernel, args in forward_route(out, act, inp, weight, bias, weight_t, relu):
        kernel(*args)


def linear_forward(out, inp, weight, bias, weight_t=None):
    """y_ij = Σ_l x_il w_jl + b_j   out (k, m), inp (k, n), weight (m, n), bias (m,);
    weight_t (n, m) optional scratch for Wᵀ: without it the forward always uses the dot form.
    The plain formula: linear_forward_ref (to step through in Python: linear_forward_ref.py_func)."""
    _forward(out, out, inp, weight, bias, weight_t, False)


def linear_relu_forward(out, act, inp, weight, bias, weight_t=None):
    """y_ij = Σ_l x_il w_jl + b_j,  a_ij = max(0, y_ij)   (Linear then ReLU in one pass; Y is kept
    as the ReLU's input for its backward)
    out (k, m) = Y, act (k, m) = A, inp (k, n), weight (m, n), bias (m,), weight_t as linear_forward's.
    The plain formula: linear_forward_ref, then relu_forward."""
    _forward(out, act, inp, weight, bias, weight_t, True)


# dW += GᵀX with a batch (the sum over i) up to SHORT_SUM rows, and dX = GW of a single row, run
# row by row (the formula's own loop order, vectorised over l): there a register block would
# compute rows that are not kept, or update its block of C for too few FMAs. Measured on one core
# (Zen 3, AVX2, rows vs blocks, interleaved): dW 784->256 float32 k = 1: 20 vs 36 µs, 2: 31 vs
# 39, 3: 43 vs 42 (a tie, float64 1.2x for blocks), 4: 45 vs 40, 6: 83 vs 52; dX at k = 1: 20 vs
# 33 µs (784->256), 0.5 vs 1.0 (128->10); at k = 2 the blocks win or tie at every shape but m = 10
# (≤ 0.4 µs), and from k = 32 they win 1.4-2.6x even at m = 10.
SHORT_SUM = 3


def _linear_backward_input_rows(dinp, dout, weight, preact, relu):
    """dx_il = Σ_j g_ij w_jl, and with relu dx_il = 0 where the previous ReLU's input x'_il < 0

    dinp (k, n), dout (k, m) = G, weight (m, n), preact (k, n) (read only with relu). The formula's
    own loop order, row by row, vectorised over l: for a single row (see SHORT_SUM).
    """
    k, m = dout.shape
    zero = dinp.dtype.type(0)
    for i in prange(k):
        dx = dinp[i]  # row views: LLVM vectorises the l loops as contiguous runs
        for l in range(dx.shape[0]):
            dx[l] = zero
        for j in range(m):
            g = dout[i, j]
            w = weight[j]
            for l in range(dx.shape[0]):
                dx[l] += g * w[l]
        if relu:
            p = preact[i]
            for l in range(dx.shape[0]):
                dx[l] = zero if p[l] < zero else dx[l]


linear_backward_input_rows = Kernel(
    _linear_backward_input_rows, lambda dx, g, w, p, relu: _linear_work(g.shape[0], w, False), PARALLEL_WORK
)


def _linear_backward_params_rows(dweight, dbias, dout, inp, accumulate):
    """dw_jl (+)= Σ_i g_ij x_il,   db_j (+)= Σ_i g_ij   (accumulate: +=, else =)

    dweight (m, n), dbias (m,), dout (k, m) = G, inp (k, n) = X. accumulate=False writes the sums
    over what is there (the first backward after zero_grad, see nbnet.layers.Linear): the values
    of adding them to zeros (up to the sign of a zero sum), without reading dW. The plain row
    loop, parallel over j: for up to SHORT_SUM rows, where each dW row is read and written once
    and no register block pays for itself.
    """
    m, n = dweight.shape
    k = dout.shape[0]
    for j in prange(m):
        dw = dweight[j]  # row views: LLVM vectorises the l loop as one contiguous run
        db = dbias.dtype.type(0)
        for i in range(k):
            g = dout[i, j]
            db += g
            x = inp[i]
            if accumulate or i > 0:
                for l in range(n):
                    dw[l] += g * x[l]
            else:
                for l in range(n):
                    dw[l] = g * x[l]
        dbias[j] = dbias[j] + db if accumulate else db


linear_backward_params_rows = Kernel(
    _linear_backward_params_rows, lambda dw, db, g, x, accumulate: _linear_work(x.shape[0], dw), PARALLEL_WORK
)


# What a call of linear_blocks computes, as bits of its `how` (one integer argument, not three
# flags: each argument costs the dispatch ~50 ns, 3% of the smallest layer's dX).
DW, ACCUMULATE, RELU, FORWARD = 1, 2, 4, 8


def _linear_blocks(c, a, b, vec, other, how):
    """c_rl (+)= Σ_s A_rs b_sl in broadcast-form units (simd.bcast_unit: A_rs = a.flat[r a_rs +
    s a_ss]), each thread its own share first (simd.claim_near): a Linear's dW, dX, or forward
    from Wᵀ.

    how & DW (dW, db):  c = dW (m, n), A = Gᵀ (a = G (k, m); a_rs = 1, a_ss = m), b = X (k, n), s < k:
                        dw_jl (+)= Σ_i g_ij x_il (how & ACCUMULATE: +=, else =), and the units of
                        the first column group also sum db_j (+)= Σ_i g_ij (vec = db) for their
                        rows, so each db_j has one owner too.
    how & FORWARD:      c = Y (k, m), A = X (a = X (k, n); a_rs = n, a_ss = 1), b = Wᵀ (n, m), s < n:
                        y_ij = Σ_l x_il w_jl + b_j (vec = b), and with how & RELU also
                        a_ij = max(0, y_ij) (other = act, the next layer's input).
    else (dX):          c = dX (k, n), A = G (a = G (k, m); a_rs = m, a_ss = 1), b = W (m, n), s < m:
                        dx_il = Σ_j g_ij w_jl, and with how & RELU dx_il = 0 where x'_il =
                        other_il < 0 (other = preact).

    One kernel for all three, not one each: the parallel twin of a kernel around bcast_unit takes
    ~3-5 s to compile and the serial ~1 s, which a cold start paid for each (profiling/FINDINGS.md, Start-up). The
    unused arguments (vec for dX, other for dW or a forward without relu) are never read.
    """
    zero = c.dtype.type(0)
    params, accumulate, relu, forward = how & DW != 0, how & ACCUMULATE != 0, how & RELU != 0, how & FORWARD != 0
    k, m = a.shape
    a_rs, a_ss, steps = (1, m, k) if params else (m, 1, m)
    # SHARED_UNITS as a run-time bool (`how` is never negative): passed as the compile-time constant
    # itself, it made bcast_unit a different function for each twin, compiled twice on a cold start
    # (cold import + first step at batch 128, Zen 3, three interleaved runs: 14.1-16.1 -> 12.7-14.2 s)
    shared = how >= 0 and SHARED_UNITS
    units = simd.bcast_units(c, steps, shared)
    # units per row block; 0 (in order) for a batch over NEAR_ROWS (k for dW, else C's rows)
    group = units // simd.row_blocks(c.shape[0]) if (k if params else c.shape[0]) <= NEAR_ROWS else 0
    counter, flags = simd.unit_counter(), simd.unit_flags()
    for first in prange(units):  # each thread takes all it can in its first iteration
        u = simd.claim_near(flags, counter, first, units, group, shared)
        while u < units:
            r0, r1, l0, l1 = simd.bcast_unit(c, a, a_rs, a_ss, b, steps, u, accumulate, shared)
            if params and l0 == 0:
                _bias_rows(vec, a, r0, r1, accumulate)
            if forward:
                bias_relu_block(c, other, vec, r0, r1, l0, l1, relu)
            elif relu:
                # A select, not `if p < 0: dx = 0`: with about half the inputs negative that branch
                # is mispredicted half the time (measured: 829 vs 378 µs without the ReLU for
                # 256->128 at batch 512); a select vectorises.
                for i in range(r0, r1):
                    # Slices indexed from 0: LLVM then knows no index is negative (no wraparound)
                    # and vectorises the loop as one contiguous run.
                    d, p = c[i, l0:l1], other[i, l0:l1]
                    for l in range(d.shape[0]):
                        d[l] = zero if p[l] < zero else d[l]
            u = simd.claim_near(flags, counter, u + 1, units, group, shared)


@jit
def _bias_rows(dbias, dout, j0, j1, accumulate):
    """db_j (+)= Σ_i g_ij for j0 ≤ j < j1   dbias (m,), dout (k, m) = G

    i in order, along G's rows (down its columns, a cache line a step at stride m, measured 5%
    slower for dW 784->256). A function of its own: written inline, its loop cost the dX calls
    of the same kernel 0.2 µs (4.2 -> 4.4 µs at 32x10 -> 128), which never run it."""
    for i in range(dout.shape[0]):
        g = dout[i]
        if accumulate or i > 0:
            for j in range(j0, j1):
                dbias[j] += g[j]
        else:
            for j in range(j0, j1):
                dbias[j] = g[j]


def _blocks_work(c, a, b, vec, other, how):
    """Multiply-adds, at least PARALLEL_WORK when the call streams a weight larger than STREAM_BYTES
    (as _linear_work, written out: this runs at every call)."""
    if how & DW:  # dW (m, n) summed over k rows; it streams dW itself
        work, streamed = a.shape[0] * c.size, c
    else:  # dX (k, n) summed over m, or Y (k, m) over n: k rows of the weight's size; it streams W or Wᵀ
        work, streamed = c.shape[0] * b.size, b
    return max(work, PARALLEL_WORK) if streamed.nbytes >= STREAM_BYTES else work


linear_blocks = Kernel(_linear_blocks, _blocks_work, PARALLEL_WORK)

_UNUSED = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}


def backward_input_route(dinp, dout, weight, preact, relu):
    """(kernel, its arguments) that linear_backward_input_act runs: rows for one row, else blocks
    (for tests and `nbnet check`, which run both twins; linear_backward_input_act inlines it)."""
    if dout.shape[0] == 1:
        return linear_backward_input_rows, (dinp, dout, weight, preact, relu)
    return linear_blocks, (dinp, dout, weight, _UNUSED[dinp.dtype], preact, RELU if relu else 0)


def linear_backward_input_act(dinp, dout, weight, preact, relu):
    """dx_il = Σ_j g_ij w_jl, and with relu dx_il = 0 where x'_il = preact_il < 0
    dinp (k, n), dout (k, m) = G, weight (m, n), preact (k, n) (read only with relu)"""
    if dout.shape[0] == 1:  # one row: a block of BCAST_MR rows would compute rows that are not kept
        linear_backward_input_rows(dinp, dout, weight, preact, relu)
    else:
        linear_blocks(dinp, dout, weight, _UNUSED[dinp.dtype], preact, RELU if relu else 0)


def linear_backward_input(dinp, dout, weight):
    """dx_il = Σ_j g_ij w_jl   dinp (k, n), dout (k, m), weight (m, n)
    The plain formula: linear_backward_input_ref (in Python: linear_backward_input_ref.py_func)."""
    linear_backward_input_act(dinp, dout, weight, dinp, False)


def linear_relu_backward_input(dinp, dout, weight, preact):
    """dx_il = [x'_il ≥ 0] Σ_j g_ij w_jl: this Linear's input gradient, passed back through the
    ReLU before it (whose input was x' = preact), in one pass. ReLU'(0) = 1 as in relu_backward.
    dinp (k, n), dout (k, m) = G, weight (m, n), preact (k, n) = x'
    The plain formula: linear_backward_input_ref, then relu_backward."""
    linear_backward_input_act(dinp, dout, weight, preact, True)


def backward_params_route(dweight, dbias, dout, inp, accumulate):
    """(kernel, its arguments) that linear_backward_params runs: rows up to SHORT_SUM, else blocks
    (for tests and `nbnet check`; linear_backward_params inlines it)."""
    if dout.shape[0] <= SHORT_SUM:
        return linear_backward_params_rows, (dweight, dbias, dout, inp, accumulate)
    return linear_blocks, (dweight, dout, inp, dbias, dweight, DW | ACCUMULATE if accumulate else DW)


def linear_backward_params(dweight, dbias, dout, inp, accumulate):
    """dw_jl (+)= Σ_i g_ij x_il,   db_j (+)= Σ_i g_ij   (accumulate: +=, else =)
    dweight (m, n), dbias (m,), dout (k, m) = G, inp (k, n) = X
    The plain formula (+=): linear_backward_params_ref (in Python: linear_backward_params_ref.py_func)."""
    if dout.shape[0] <= SHORT_SUM:
        linear_backward_params_rows(dweight, dbias, dout, inp, accumulate)
    else:
        linear_blocks(dweight, dout, inp, dbias, dweight, DW | ACCUMULATE if accumulate else DW)


# Below this much work an optimizer step or an element-wise kernel runs serially (see Kernel). The
# work is the element count for a pass that memory bounds (ReLU, the backward passes; sgd_step twice
# its count, below), times EXP_COST for one with an exp per element (sigmoid, BCE's backward), half
# that for adam_step (a square root and a division). Measured on 2 cores (Zen 3, serial /
# parallel twin time, interleaved, quiet; waking the sleeping thread costs 10-15 µs): sgd_step 0.70
# at 131K elements, 1.20 at 262K, 2.0 at 524K; relu forward/backward 0.62-0.73 at 131K, 0.97-1.02 at
# 262K; but sigmoid forward 1.75 at 32K and adam_step 0.75 at 32K, 1.30 at 131K. sgd_step counts
# twice its elements: with waiting threads that spin briefly (nbnet.threads), the SGD step of a
# training loop (784-h-h/2-10 MLPs, SGD momentum, batch 1 and 32, 2 threads) ran parallel / serial
# at 53K parameters 0.95-1.03, 109K 0.99-1.07, 235K 1.05-1.07, 536K 1.08-1.19.
STEP_PARALLEL_WORK = 262_144
EXP_COST = 8


def _costly_elements(out, *rest):
    return out.size * EXP_COST


# ----------------------------------------------------------------------------------------------
# Activations. All are (k, n) -> (k, n), parallel over rows: serial below STEP_PARALLEL_WORK
# elements (an element-wise pass is as cheap as an optimizer's per parameter).


def _elements(out, *rest):
    return out.size


def _relu_forward(out, inp):
    """y_ij = max(0, x_ij)   out (k, n) = Y, inp (k, n) = X"""
    zero = inp.dtype.type(0)
    for i in prange(inp.shape[0]):
        for j in range(inp.shape[1]):
            x = inp[i, j]
            out[i, j] = zero if x < zero else x  # NaN passes through (to the loss), as in torch


relu_forward = Kernel(_relu_forward, _elements, STEP_PARALLEL_WORK)


def _relu_backward(dinp, dout, inp):
    """dx_ij = g_ij if x_ij >= 0 else 0   dinp (k, n), dout (k, n) = G, inp (k, n) = X (the forward's input)

    ReLU'(0) = 1 is nbnet's convention (README, "Each kernel and the equation it implements");
    PyTorch takes ReLU'(0) = 0. The two differ only when an input is exactly 0. Written as "0 where
    x < 0", as the fused linear_relu_backward_input and torch do, so that at a NaN input the
    gradient passes in every form (the forward passes NaN).
    """
    zero = inp.dtype.type(0)
    for i in prange(inp.shape[0]):
        for j in range(inp.shape[1]):
            dinp[i, j] = zero if inp[i, j] < zero else dout[i, j]


relu_backward = Kernel(_relu_backward, _elements, STEP_PARALLEL_WORK)


def _sigmoid_forward(out, inp):
    """y_ij = 1 / (1 + e^(-x_ij))   out (k, n) = Y, inp (k, n) = X

    e^(-x) = inf for very negative x gives exactly 0, no NaN."""
    one = inp.dtype.type(1)
    for i in prange(inp.shape[0]):
        for j in range(inp.shape[1]):
            out[i, j] = one / (one + np.exp(-inp[i, j]))


sigmoid_forward = Kernel(_sigmoid_forward, _costly_elements, STEP_PARALLEL_WORK)


def _sigmoid_backward(dinp, dout, out):
    """dx_ij = g_ij y_ij (1 - y_ij)   dinp (k, n), dout (k, n) = G, out (k, n) = Y (the forward's output)"""
    one = out.dtype.type(1)
    for i in prange(out.shape[0]):
        for j in range(out.shape[1]):
            y = out[i, j]
            dinp[i, j] = dout[i, j] * y * (one - y)


sigmoid_backward = Kernel(_sigmoid_backward, _elements, STEP_PARALLEL_WORK)


def _tanh_forward(out, inp):
    """y_ij = tanh(x_ij)   out (k, n) = Y, inp (k, n) = X

    float64: libm's tanh. float32: tanh(x) ≈ x p(x²) / q(x²) on |x| ≤ 7.9053, where the
    approximation reaches ±1, so x is clamped there (tanh itself is then within 5 ulp of ±1, and
    rounds to ±1 from |x| ≈ 9.01), Eigen's rational approximation: within 6 ulp of the
    true tanh, absolute error < 4e-7 (tests/test_fast_kernels.py), NaN passes through, and the loop vectorises
    (libm's tanhf is one call per element, ~50× slower). error_model="numpy": no ZeroDivisionError
    branch (q ≥ q(0) ≈ 0.00489), which would keep LLVM from vectorising the division.
    """
    T = inp.dtype.type
    if inp.itemsize == 8:
        for i in prange(inp.shape[0]):
            for j in range(inp.shape[1]):
                out[i, j] = np.tanh(inp[i, j])
    else:
        a1, a3, a5 = T(4.89352455891786e-03), T(6.37261928875436e-04), T(1.48572235717979e-05)
        a7, a9, a11 = T(5.12229709037114e-08), T(-8.60467152213735e-11), T(2.00018790482477e-13)
        a13 = T(-2.76076847742355e-16)
        b0, b2, b4, b6 = T(4.89352518554385e-03), T(2.26843463243900e-03), T(1.18534705686654e-04), T(1.19825839466702e-06)
        c, small = T(7.90531110763549805), T(4e-4)
        for i in prange(inp.shape[0]):
            x, y = inp[i], out[i]  # row views: plain contiguous loops for the vectoriser
            for j in range(inp.shape[1]):
                v = min(max(x[j], -c), c)  # NaN stays NaN
                v2 = v * v
                p = ((((((a13 * v2 + a11) * v2 + a9) * v2 + a7) * v2 + a5) * v2 + a3) * v2 + a1) * v
                q = ((b6 * v2 + b4) * v2 + b2) * v2 + b0
                # tanh x = x (1 - x²/3 ...): x is within an ulp of it below 4e-4 (its rounding below 3.5e-4)
                y[j] = v if abs(v) < small else p / q


tanh_forward = Kernel(_tanh_forward, _costly_elements, STEP_PARALLEL_WORK, error_model="numpy")


def _tanh_backward(dinp, dout, out):
    """dx_ij = g_ij (1 - y_ij²)   dinp (k, n), dout (k, n) = G, out (k, n) = Y (the forward's output)"""
    one = out.dtype.type(1)
    for i in prange(out.shape[0]):
        for j in range(out.shape[1]):
            y = out[i, j]
            dinp[i, j] = dout[i, j] * (one - y * y)


tanh_backward = Kernel(_tanh_backward, _elements, STEP_PARALLEL_WORK)


@njit(inline="always")
def softmax_row(out, inp, i):
    """out_ij = e^(x_ij - m_i) / s_i  with  m_i = max_j x_ij,  s_i = Σ_j e^(x_ij - m_i);  returns (m_i, s_i)

    Subtracting the row maximum keeps every exponent ≤ 0: finite for inputs of any size. And
    log Σ_j e^(x_ij) = m_i + log s_i, which is what the cross-entropy needs (added to m_i - z last).
    """
    n = inp.shape[1]
    mx = inp[i, 0]
    for j in range(1, n):
        mx = max(mx, inp[i, j])
    s = inp.dtype.type(0)
    for j in range(n):
        e = np.exp(inp[i, j] - mx)
        out[i, j] = e
        s += e
    inv = inp.dtype.type(1) / s
    for j in range(n):
        out[i, j] *= inv
    return mx, s


def _softmax_forward(out, inp):
    """y_ij = e^(x_ij - m_i) / Σ_l e^(x_il - m_i),  m_i = max_l x_il   out (k, n) = Y, inp (k, n) = X

    Row by row: softmax_row."""
    for i in prange(inp.shape[0]):
        softmax_row(out, inp, i)


softmax_forward = Kernel(_softmax_forward, _costly_elements, STEP_PARALLEL_WORK)


def _softmax_backward(dinp, dout, out):
    """dx_ij = y_ij (g_ij - Σ_l g_il y_il), the Jacobian-vector product of softmax
    dinp (k, n), dout (k, n) = G, out (k, n) = Y (the forward's output)"""
    k, n = out.shape
    for i in prange(k):
        gy = out.dtype.type(0)
        for j in range(n):
            gy += dout[i, j] * out[i, j]
        for j in range(n):
            dinp[i, j] = out[i, j] * (dout[i, j] - gy)


softmax_backward = Kernel(_softmax_backward, _elements, STEP_PARALLEL_WORK)


# ----------------------------------------------------------------------------------------------
# Losses. Each forward returns the mean over the batch, 1/k (MSE and BCE: 1/(k d), over every
# element), the only place it is divided; each backward writes dL/dpred of that mean into its
# first argument. The final sum over rows is serial, in row order.


# Each loss sums a term per row (cross-entropy: k of them) or per element (MSE, BCE: k·d), in the
# model's dtype (a float32 kernel computes nothing in double). One running sum rounds each term to
# the ulp of a total that grows to k·d terms: float32 MSE of 1000 × 784 outputs came out 3.7e-4 off,
# of 20000 × 784 3% (torch: 6e-9); cross-entropy over 60,000 rows 4.7e-6. So each row's d terms are
# summed, the row sums in blocks of SUM_ROWS, and the blocks into the total: a term meets sums of
# at most max(d, SUM_ROWS) terms (1000 × 784 float32: 1.8e-7 off). Serial, in a fixed order: the
# same bits on any thread count; up to SUM_ROWS rows, the same bits as one running sum. (One flat
# sum in blocks of 256 elements was as accurate and 5-20% slower, Zen 3.)
SUM_ROWS = 256


@jit
def rows_mean(losses):
    """(1/k) Σ_i ℓ_i over losses (k,), summed in blocks of SUM_ROWS rows"""
    k = losses.shape[0]
    zero = losses.dtype.type(0)
    total = block = zero
    for i in range(k):
        block += losses[i]
        if i % SUM_ROWS == SUM_ROWS - 1:
            total += block
            block = zero
    return (total + block) / losses.dtype.type(k)


def _crossentropy_forward(losses, probs, targets):
    """L = -(1/k) Σ_i log p[i, t_i]

    losses (k,) scratch, probs (k, c), targets (k,) int. Probabilities are clamped below at the
    dtype's smallest normal number, so p = 0 gives a large finite loss instead of inf. A p[i, t_i]
    outside [0, 1] is no probability (logits, most likely): ℓ_i is NaN, which CrossEntropy names.
    """
    k = probs.shape[0]
    tiny = np.finfo(probs.dtype).tiny
    zero, one, nan = probs.dtype.type(0), probs.dtype.type(1), probs.dtype.type(np.nan)
    for i in prange(k):
        p = probs[i, targets[i]]
        losses[i] = -np.log(max(p, tiny)) if zero <= p <= one else nan
    return rows_mean(losses)


crossentropy_forward = Kernel(
    _crossentropy_forward, lambda losses, probs, t: losses.size * EXP_COST, STEP_PARALLEL_WORK
)


def _crossentropy_backward(dprobs, probs, targets):
    """dp_ij = -1 / (k max(p_ij, tiny)) if j = t_i else 0   (the forward's clamp)

    dprobs (k, c) out, probs (k, c), targets (k,) int."""
    k, c = probs.shape
    tiny = np.finfo(probs.dtype).tiny
    kk = probs.dtype.type(k)
    for i in prange(k):
        for j in range(c):
            dprobs[i, j] = 0
        dprobs[i, targets[i]] = -probs.dtype.type(1) / (kk * max(probs[i, targets[i]], tiny))


crossentropy_backward = Kernel(_crossentropy_backward, _elements, STEP_PARALLEL_WORK)


def _softmax_crossentropy_forward(probs, losses, logits, targets):
    """L = (1/k) Σ_i (log Σ_j e^(z_ij) - z_i,t_i), computed as (m_i - z_i,t_i) + log Σ_j e^(z_ij - m_i)

    probs (k, c) out: softmax(z), kept for the backward; losses (k,) scratch; logits (k, c) = z;
    targets (k,) int. With m_i = max_j z_ij every exponent is ≤ 0: finite at logits of ±1000.
    m_i - z_i,t_i first: added to a large m_i, the log (≤ log c) would round away (equal logits of
    1e8 in float32 gave a loss of 0, not log c), as in torch's log_softmax.
    """
    k = logits.shape[0]
    for i in prange(k):
        mx, s = softmax_row(probs, logits, i)
        losses[i] = (mx - logits[i, targets[i]]) + np.log(s)
    return rows_mean(losses)


softmax_crossentropy_forward = Kernel(
    _softmax_crossentropy_forward, lambda probs, losses, z, t: z.size * EXP_COST, STEP_PARALLEL_WORK
)


def _softmax_crossentropy_backward(dlogits, probs, targets):
    """dz_ij = (p_ij - [j = t_i]) / k   dlogits (k, c) out, probs (k, c) = softmax(z), targets (k,) int"""
    k, c = probs.shape
    inv_k = probs.dtype.type(1) / probs.dtype.type(k)
    for i in prange(k):
        for j in range(c):
            dlogits[i, j] = probs[i, j] * inv_k
        dlogits[i, targets[i]] -= inv_k


softmax_crossentropy_backward = Kernel(_softmax_crossentropy_backward, _elements, STEP_PARALLEL_WORK)


@jit
def softmax_crossentropy_forward_backward(dlogits, probs, losses, logits, targets):
    """L = (1/k) Σ_i ((m_i - z_i,t_i) + log Σ_j e^(z_ij - m_i)),  dz_ij = (p_ij - [j = t_i]) / k

    softmax_crossentropy_forward and _backward in one pass over the logits (k, c): dlogits (k, c)
    out, probs (k, c) out, losses (k,) scratch, targets (k,) int. Serial: k × c is tiny next to
    the matmuls, and waking threads would cost more.
    """
    k, c = logits.shape
    inv_k = logits.dtype.type(1) / logits.dtype.type(k)
    for i in range(k):
        mx, s = softmax_row(probs, logits, i)
        for j in range(c):
            dlogits[i, j] = probs[i, j] * inv_k
        dlogits[i, targets[i]] -= inv_k
        losses[i] = (mx - logits[i, targets[i]]) + np.log(s)  # in this order: see _softmax_crossentropy_forward
    return rows_mean(losses)


@jit
def mse_forward(pred, target):
    """L = (1/(k d)) Σ_i Σ_j (p_ij - t_ij)²   (PyTorch MSELoss: the mean over every element)
    pred (k, d), target (k, d).

    Plain @njit, not parallel: the sum (by rows, in blocks: see SUM_ROWS) has one owner, and the
    loss is cheap next to the matmuls.
    """
    k, d = pred.shape
    zero = pred.dtype.type(0)
    total = block = zero
    for i in range(k):
        row = zero
        for j in range(d):
            r = pred[i, j] - target[i, j]
            row += r * r
        block += row
        if i % SUM_ROWS == SUM_ROWS - 1:
            total += block
            block = zero
    return (total + block) / pred.dtype.type(k * d)


def _mse_backward(dpred, pred, target):
    """dp_ij = 2 (p_ij - t_ij) / (k d)   dpred (k, d) out, pred (k, d), target (k, d)"""
    k, d = pred.shape
    scale = pred.dtype.type(2) / pred.dtype.type(k * d)
    for i in prange(k):
        for j in range(d):
            dpred[i, j] = scale * (pred[i, j] - target[i, j])


mse_backward = Kernel(_mse_backward, _elements, STEP_PARALLEL_WORK)


@jit
def bce_with_logits_forward(logits, targets):
    """L = (1/(k c)) Σ_ij max(z_ij, 0) − z_ij t_ij + log(1 + e^(−|z_ij|))

    Sigmoid and binary cross-entropy on logits z (k, c) with targets t (k, c) in [0, 1], as PyTorch's
    BCEWithLogitsLoss() (the mean over every element). It equals −t log σ(z) − (1−t) log(1−σ(z)),
    rewritten so that no exponent is positive: finite for logits of any size. Serial, summed by
    rows in blocks, like mse_forward.

    max(z, 0) − z t is taken as z w, w = 1 − t for z ≥ 0 (torch's (1 − t) z) and −t below, and
    as 0 where w = 0: its limit at z = ±inf, where max(inf, 0) − inf t was NaN (inf − inf), so
    L(+inf, t) is +inf for t < 1 and 0 for t = 1, L(−inf, t) +inf for t > 0 and 0 for t = 0.
    """
    k, c = logits.shape
    zero, one = logits.dtype.type(0), logits.dtype.type(1)
    total = block = zero
    for i in range(k):
        row = zero
        for j in range(c):
            z = logits[i, j]
            w = one - targets[i, j] if z >= zero else -targets[i, j]
            row += (zero if w == zero else z * w) + np.log1p(np.exp(-abs(z)))
        block += row
        if i % SUM_ROWS == SUM_ROWS - 1:
            total += block
            block = zero
    return (total + block) / logits.dtype.type(k * c)


def _bce_with_logits_backward(dlogits, logits, targets):
    """dz_ij = (σ(z_ij) − t_ij) / (k c),  σ(z) − t = (1 − t) − e^(−z)/(1 + e^(−z)) for z ≥ 0,
    e^z/(1 + e^z) − t below

    dlogits (k, c) out, logits (k, c) = z, targets (k, c) = t. e = e^(−|z|) ≤ 1: no overflow on
    either side. For z ≥ 0, σ(z) = 1/(1 + e) rounds to 1 once e is below the ulp (z = 17 in
    float32), and a sure right answer (t = 1) lost its gradient there, −e/(1 + e): the derivative of
    the loss the forward reports, log1p(e), and what z < 0 keeps for t = 0. (torch: σ(z) − t, 0.)"""
    k, c = logits.shape
    one = logits.dtype.type(1)
    inv_n = one / logits.dtype.type(k * c)
    for i in prange(k):
        for j in range(c):
            z = logits[i, j]
            e = np.exp(-abs(z))
            t = targets[i, j]
            d = (one - t) - e / (one + e) if z >= 0 else e / (one + e) - t
            dlogits[i, j] = d * inv_n


bce_with_logits_backward = Kernel(_bce_with_logits_backward, _costly_elements, STEP_PARALLEL_WORK)


@jit
def label_bounds(targets):
    """(min_i t_i, max_i t_i) of a non-empty integer array, in one pass (the losses' label check)."""
    lo = hi = targets[0]
    for i in range(1, targets.shape[0]):
        lo = min(lo, targets[i])
        hi = max(hi, targets[i])
    return lo, hi


@jit
def count_correct_labels(logits, targets):
    """Σ_ij [(z_ij ≥ 0) = (t_ij ≥ ½)]   logits (k, c) = z, targets (k, c) = t

    The labels (every output one yes/no label) predicted right, σ(z) ≥ ½ read as yes. Plain
    @njit, as count_correct."""
    correct = 0
    zero = logits.dtype.type(0)
    half = targets.dtype.type(0.5)
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            correct += (logits[i, j] >= zero) == (targets[i, j] >= half)
    return correct


@jit
def count_correct(logits, targets):
    """Σ_i [argmax_j z_ij = t_i]   logits (k, c) = z, targets (k,) int = t

    The rows whose class, np.argmax of the logits, is the label: the first largest logit, a NaN
    counting as the largest (row [0, NaN, 5] picks 1, the first NaN), as nb.predict's classes
    (np.argmax) and nbnet.gpu.count_correct pick.

    Plain @njit: one counter, cheap next to the forward pass."""
    correct = 0
    for i in range(logits.shape[0]):
        best = 0
        top = logits[i, 0]
        if top == top:  # else the first NaN is at 0
            for j in range(1, logits.shape[1]):
                v = logits[i, j]
                if not v <= top:  # larger, or NaN: one test on the common path (512 x 10, Zen 3: 5.2 -> 4.3 µs)
                    best, top = j, v
                    if v != v:
                        break
        correct += best == targets[i]
    return correct


# ----------------------------------------------------------------------------------------------
# Optimizers: the update rules of torch.optim, element by element over a flat parameter vector.
# Scalars arrive already cast to the parameter dtype (torch casts Python scalars the same way).
#
# One departure: a state value (momentum, Adam's m and v) smaller in magnitude than the dtype's
# smallest normal number (`tiny`: 1.2e-38 in float32) is stored as 0. A unit that no longer gets a
# gradient (a dead ReLU) has its momentum decay by μ each step down into the subnormal range and
# stay there: 0.9 · k·2⁻¹⁴⁹ rounds back to k·2⁻¹⁴⁹ for k ≤ 4. Such a value changes no weight, but x86
# cores compute on it slowly: the 784-256-128-10 SGD step took 77.6 µs instead of 45.6 with 12% of
# the momentum subnormal (Zen 3, one thread), what 2 MNIST epochs at batch 8 left (28K of 235K).


@njit(inline="always")
def _flushed(x, tiny, zero):
    """x, or zero where |x| < tiny (a subnormal); a select, so the loop still vectorises. NaN passes."""
    return zero if abs(x) < tiny else x


def _sgd_step(param, grad, buf, lr, momentum, weight_decay, nesterov):
    """g = ∇ + λθ;  b = μb + g;  θ -= lr (g + μb if nesterov else b)   (torch.optim.SGD, dampening 0)

    param (P,) = θ, grad (P,) = ∇, buf (P,) = b (read only with momentum), flat; μ = momentum,
    λ = weight_decay.
    With momentum = 0, b is unused and θ -= lr g. On the first step b = 0, so b = g, as in torch.
    A subnormal b is stored as 0 (see above).
    """
    zero = param.dtype.type(0)
    tiny = param.dtype.type(np.finfo(param.dtype).tiny)
    for p in prange(param.shape[0]):
        g = grad[p]
        if weight_decay != zero:
            g += weight_decay * param[p]
        if momentum != zero:
            b = _flushed(momentum * buf[p] + g, tiny, zero)
            buf[p] = b
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        param[p] -= lr * g


sgd_step = Kernel(_sgd_step, lambda param, *rest: 2 * param.shape[0], STEP_PARALLEL_WORK)


def _adam_step(param, grad, m, v, one_beta1, beta2, one_beta2, eps, l2, decay, step_size, bc2_sqrt):
    """torch.optim.Adam and AdamW, one step t   param (P,) = θ, grad (P,) = ∇, m (P,), v (P,), flat

    The caller precomputes the scalars:
    Adam:  g = ∇ + l2 θ        (l2 = weight_decay, decay = 1)
    AdamW: θ *= decay;  g = ∇   (l2 = 0, decay = 1 - lr weight_decay)
    m = β1 m + (1-β1) g   (torch's lerp: m + (1-β1)(g - m) for 1-β1 < ½, else g - β1 (g - m))
    v = β2 v + (1-β2) g²
    θ -= step_size m / (√v / bc2_sqrt + ε),   step_size = lr / (1-β1^t),   bc2_sqrt = √(1-β2^t)
    one_beta1 = 1-β1 and one_beta2 = 1-β2 come made in double, as torch makes them: computed here
    from float32 β, 1 - float32(0.999) is 0.001 (1 - 1.3e-5) (1 - float32(0.99999): 1e-5 (1 + 1.4e-3),
    relative errors of 1.3e-5 and 1.4e-3), a bias in every step that the bias correction, made in
    double, does not cancel.
    A subnormal m or v is stored as 0 (see above).
    torch's lerp takes its form by the weight so that m stays exact where it is all g: with β1 = 0,
    m + 1 (g - m) after a gradient of 1e30 gave m = 0 for the next step's g = 1, cancelled.
    """
    one = param.dtype.type(1)
    zero = param.dtype.type(0)
    tiny = param.dtype.type(np.finfo(param.dtype).tiny)
    from_m = one_beta1 < param.dtype.type(0.5)
    coeff = one_beta1 if from_m else one_beta1 - one  # g + (w - 1)(g - m) = g - (1 - w)(g - m), torch's bits
    for p in prange(param.shape[0]):
        g = grad[p]
        if l2 != zero:
            g += l2 * param[p]
        if decay != one:
            param[p] *= decay
        mp = _flushed((m[p] if from_m else g) + coeff * (g - m[p]), tiny, zero)
        vp = _flushed(beta2 * v[p] + one_beta2 * g * g, tiny, zero)
        m[p] = mp
        v[p] = vp
        param[p] -= step_size * mp / (np.sqrt(vp) / bc2_sqrt + eps)


# error_model="numpy": IEEE division (as torch) instead of a ZeroDivisionError check per element,
# which kept LLVM from vectorizing the loop: 7x faster, the same bits (the divisor is ≥ ε > 0).
adam_step = Kernel(_adam_step, lambda param, *rest: param.shape[0] * EXP_COST // 2, STEP_PARALLEL_WORK, error_model="numpy")


# Optimizer steps in lanes: the same updates (the serial twins above, on slices), each thread on
# the parameter elements it wrote and read in the backward and forward. A weight row that one core
# updated and the other core reads or writes next costs a cache-line transfer between cores; on a
# 2-core VM (Zen 5, the cores far apart) the flat step's even split over the packed parameters made
# the batch-1 step of 784-256-128-10 131 µs on 2 threads against 67 on one (dW 256->128, run
# serially on the calling thread, 18 µs against 2.3); in lanes, with claim_near, 59-62 µs.


def static_shares(units, lanes):
    """Where each of `lanes` threads' share of prange(units) starts, and the end: Numba's static
    split (0.68: as even as it goes, the first units % lanes shares one longer; thread 0 is the
    calling thread), which simd.claim_near keeps while no thread is slowed."""
    base, extra = divmod(units, lanes)
    starts = [0]
    for t in range(lanes):
        starts.append(starts[-1] + base + (1 if t < extra else 0))
    return starts


def dw_shares(dweight, k, lanes):
    """[(lane, r0, r1, c0, c1)]: the blocks of dW (m, n) that each thread writes in a backward of
    batch k on `lanes` threads (linear_backward_params; db_j goes with the block of dw_j0), or
    None where that runs serially (on the calling thread, lane 0)."""
    m, n = dweight.shape
    if _linear_work(k, dweight) < PARALLEL_WORK:  # both routes' work (_blocks_work's for dW)
        return None
    if k <= SHORT_SUM:  # the rows kernel: prange over dW's rows
        starts = static_shares(m, lanes)
        return [(t, starts[t], starts[t + 1], 0, n) for t in range(lanes) if starts[t] < starts[t + 1]]
    units, per = simd.bcast_grid(dweight, k, True)
    nc = simd.BCAST_NV * simd.lanes(dweight.dtype)
    starts = static_shares(units, lanes)
    return [(t, *simd.bcast_unit_block(m, n, nc, per, u)) for t in range(lanes) for u in range(starts[t], starts[t + 1])]


_sgd_elements, _adam_elements = sgd_step.serial, adam_step.serial


def _sgd_lanes(param, grad, buf, lr, momentum, weight_decay, nesterov, spans, first):
    """sgd_step's update, thread t on param[spans[q, 0]:spans[q, 1]] for first[t] ≤ q < first[t+1]
    (spans covering every element once: nbnet.optim's lanes). Elementwise: the same bits as
    sgd_step, whichever thread does which span."""
    for t in prange(first.shape[0] - 1):
        for q in range(first[t], first[t + 1]):
            a, b = spans[q, 0], spans[q, 1]
            _sgd_elements(param[a:b], grad[a:b], buf[a:b], lr, momentum, weight_decay, nesterov)


sgd_lanes = Kernel(_sgd_lanes, lambda param, *rest: 2 * param.shape[0], STEP_PARALLEL_WORK)


def _adam_lanes(param, grad, m, v, one_beta1, beta2, one_beta2, eps, l2, decay, step_size, bc2_sqrt, spans, first):
    """adam_step's update in lanes, as _sgd_lanes."""
    for t in prange(first.shape[0] - 1):
        for q in range(first[t], first[t + 1]):
            a, b = spans[q, 0], spans[q, 1]
            _adam_elements(param[a:b], grad[a:b], m[a:b], v[a:b], one_beta1, beta2, one_beta2, eps, l2, decay,
                           step_size, bc2_sqrt)


adam_lanes = Kernel(_adam_lanes, lambda param, *rest: param.shape[0] * EXP_COST // 2, STEP_PARALLEL_WORK,
                    error_model="numpy")


# ----------------------------------------------------------------------------------------------
# Array helpers that nbnet/gpu.py mirrors for device arrays (a host buffer comes from simd.empty,
# aligned to a cache line: see nbnet.layers.empty_like_shape).


def fill(arr, value):
    """a_p = value for every element of arr (gpu.fill's twin)"""
    arr.fill(value)
