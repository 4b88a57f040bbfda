"""The low-level machinery that nbnet.cpu's fast Linear kernels read through, in one place.

1. The host's vector ISA, read once at import: vector width and register count, from the CPU name
   and features LLVM (llvmlite) reports, honouring NUMBA_CPU_NAME / NUMBA_CPU_FEATURES so that
   `NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=` compiles AVX2 code on an AVX-512 machine (and
   `skylake-avx512` compiles AVX-512 code anywhere, for inspection). The register blocks below
   follow from it.
2. Two register-blocked micro-kernels, LLVM IR emitted by `numba.extending.intrinsic`s, whose
   block sizes are compile-time parameters:
     bcast_block   C[r, :] (+)= Σ_s A[r, s] B[s, :]   one element of A broadcast, times contiguous
                   rows of B: MR rows × NV vectors of accumulators (dW = GᵀX, dX = GW, Y = X·Wᵀ
                   from a copy of Wᵀ)
     dot_block     C[r, c] = Σ_l A[r, l] B[c, l]   vectors along the shared contiguous index l:
                   MR × NR accumulators, each summed across its lanes at the end (Y = XWᵀ)
   Accumulators are LLVM vector SSA values (phi nodes), never a stack array, so nothing relies on
   LLVM's SROA or loop vectoriser; a block that fits the register file does not spill
   (tests/test_fast_kernels.py checks the host's assembly).
   Helpers feed them: `pack_rows` copies a strided panel of B to contiguous rows, `pack_cols` a
   transposed block of A to MR-row panels, and `stack_array` gives each thread scratch arrays on
   its own stack to hold them (no allocation); `transpose_block` turns a W × W block in registers.
   `empty` / `zeros` give host arrays that start on a cache line, as the kernels' vectors want.
3. `claim`: an atomic counter that threads take work units from, so a thread slowed by another
   process does fewer units (the static split of prange would make everyone wait for it);
   `claim_near`: each thread its static share first, then row blocks nobody started, so a thread
   keeps the same rows from step to step. Which thread computes a unit never changes what it
   computes: results are bitwise the same for any thread count.

Editing this module: nbnet.cpu's kernels compile these functions into themselves, and Numba's
on-disk cache would key them on cpu.py alone; cpu.jit adds a hash of both files to their key, so
an edit here makes them compile again.

Summation order, fixed by the shapes only: bcast_block sums s = 0, 1, ... in order with one FMA per
step; dot_block keeps W lane partial sums, then adds them in a fixed tree (halves, then quarters...).
"""

import contextlib
import hashlib
import math
import os
import pickle
import re
import tempfile
import weakref

import llvmlite.binding as llb
import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.core import caching, cgutils
from numba.extending import intrinsic

from ._startup import NO_JIT, SIMD_LAYOUTS, numba_cpu_features_fault, numba_cpu_name_fault, simd_layout

if config.DISABLE_JIT:
    raise ValueError(NO_JIT)
_BAD_FEATURES = numba_cpu_features_fault()
if _BAD_FEATURES is not None:  # LLVM would stop the process at the first kernel below
    raise ValueError(_BAD_FEATURES)

# ----------------------------------------------------------------------------------------------
# 1. The ISA and the register blocks

# Each x86 CPU name this LLVM (22) knows with 256-bit vectors or wider, by its own features (for
# NUMBA_CPU_NAME with NUMBA_CPU_FEATURES empty); exact names, not prefixes: skylake_avx512 is
# skylake-avx512, not skylake. Any other name has SSE2's. tests/test_fast_kernels.py asks this
# LLVM for each of its CPUs' vectors and FMA, and fails on a name missing here.
_AVX512_CPUS = frozenset((
    "skylake-avx512", "skylake_avx512", "skx", "cascadelake", "cooperlake", "cannonlake", "icelake-client",
    "icelake_client", "icelake-server", "icelake_server", "tigerlake", "rocketlake", "sapphirerapids",
    "emeraldrapids", "graniterapids", "graniterapids-d", "graniterapids_d", "diamondrapids", "novalake", "knl",
    "knm", "mic_avx512", "znver4", "znver5", "x86-64-v4"))
_AVX2_CPUS = frozenset((
    "haswell", "core-avx2", "core_4th_gen_avx", "core_4th_gen_avx_tsx", "broadwell", "core_5th_gen_avx",
    "core_5th_gen_avx_tsx", "skylake", "alderlake", "raptorlake", "meteorlake", "arrowlake", "arrowlake-s",
    "arrowlake_s", "lunarlake", "pantherlake", "wildcatlake", "gracemont", "sierraforest", "grandridge",
    "clearwaterforest", "znver1", "znver2", "znver3", "bdver4", "x86-64-v3"))
_AVX_FMA_CPUS = frozenset(("bdver2", "bdver3"))  # AVX and FMA3, no AVX2
_AVX_CPUS = frozenset((  # AVX alone (bdver1's FMA4 is not the fma feature isa() reads)
    "sandybridge", "corei7-avx", "core_2nd_gen_avx", "ivybridge", "core-avx-i", "core_3rd_gen_avx", "bdver1",
    "btver2"))
# CPUs with APX (Intel's 16 more general registers, egpr, and new integer instructions): LLVM uses
# them in any code it compiles for such a CPU, the kernels' loop counters and pointers included, so
# that code stops at an illegal instruction on every CPU without APX (diamondrapids' `nbnet check`
# did, with SIGILL, on a Zen 5). tests/test_fast_kernels.py asks this LLVM which of its CPUs use them.
_APX_CPUS = frozenset(("diamondrapids", "novalake"))
_APX = frozenset(("egpr", "push2pop2", "ppx", "ndd", "ccmp", "nf", "cf", "zu"))
# LLVM's implications among the features nbnet reads (X86.td): one turned on turns on those it
# implies, one turned off turns off those that imply it (-avx2 leaves no AVX-512).
_IMPLIES = {"avx512f": {"avx2", "fma", "avx"}, "avx2": {"avx"}, "fma": {"avx"}}


def cpu_name():
    return config.CPU_NAME or llb.get_host_cpu_name()


def own_features(name):
    """The features nbnet reads (vector ISA, FMA, APX) that CPU `name` has of its own, by the tables
    above: what LLVM compiles for when NUMBA_CPU_FEATURES is set empty, and the base that the
    features it lists change. Exact names, as LLVM reads them (one it does not know is refused:
    foreign_code)."""
    if name in _AVX512_CPUS:
        feats = {"avx512f", "avx2", "avx", "fma"}
    elif name in _AVX2_CPUS:
        feats = {"avx2", "avx", "fma"}
    elif name in _AVX_FMA_CPUS:
        feats = {"avx", "fma"}
    elif name in _AVX_CPUS:
        feats = {"avx"}
    else:
        feats = set()
    return feats | (_APX if name in _APX_CPUS else set())


def cpu_features():
    """The set of enabled features Numba compiles for ('avx2', 'fma', ...). Unset, NUMBA_CPU_FEATURES
    is the host's full list (Numba passes it to LLVM). Set, LLVM applies its features in order, each
    + or - with what it implies, to the CPU's own (own_features): NUMBA_CPU_FEATURES=-avx512f on a
    Zen 5 is AVX2 code with FMA, and NUMBA_CPU_NAME=skylake-avx512 NUMBA_CPU_FEATURES=+avx2 is
    AVX-512 code; read as the whole list, these were SSE2 without FMA and AVX2 (128-bit blocks for
    AVX2 code, and AVX-512 code run on an AVX2 CPU that foreign_code let through, to SIGILL)."""
    text = config.CPU_FEATURES
    if text is None:
        return {f[1:] for f in llb.get_host_cpu_features().flatten().split(",") if f.startswith("+")}
    feats = own_features(cpu_name())
    for f in text.split(","):
        f = f.strip()
        if f.startswith("+"):
            feats |= {f[1:]} | _IMPLIES.get(f[1:], set())
        elif f.startswith("-"):
            feats -= {f[1:]} | {g for g, implied in _IMPLIES.items() if f[1:] in implied}
    return feats


def isa():
    """(name, vector bytes, vector registers, has FMA) for the code Numba generates here."""
    machine = llb.get_process_triple().split("-")[0]
    if machine in ("aarch64", "arm64"):
        return "neon", 16, 32, True  # Advanced SIMD is part of ARMv8-A
    feats = cpu_features()
    if machine in ("x86_64", "amd64", "i686", "i386"):
        if "avx512f" in feats:
            return "avx512", 64, 32, True
        if "avx2" in feats or "avx" in feats:
            return ("avx2" if "avx2" in feats else "avx"), 32, 16, "fma" in feats
        return "sse2", 16, 16, False
    return "generic", 16, 16, False  # unknown: 128-bit vectors LLVM may split; correct anyway


# Another ISA's layout, run on this one, for tests: NBNET_SIMD_LAYOUT=avx512 gives the kernels
# AVX-512's 16-lane float32 vectors and 32-register blocks on an AVX2 machine, where LLVM splits
# each vector in two and spills the accumulators. Slow, but the same operations in the same order
# per lane as on the real ISA, so the same bits: tests run the AVX-512 and NEON (ARM) block
# layouts on any x86 machine (tests/test_fast_kernels.py::test_other_isa_layouts_run_here).
LAYOUTS = dict(zip(SIMD_LAYOUTS, [("avx512", 64, 32, True), ("neon", 16, 32, True), ("avx2", 32, 16, True),
                                  ("sse2", 16, 16, False)]))


def layout():
    """isa(), or the layout NBNET_SIMD_LAYOUT names. Its kernels must not enter Numba's cache of
    this machine's own kernels (the cache files them under the CPU, not the layout: a later plain
    run would load them), so it asks for NUMBA_CACHE_DIR (the `nbnet` command says so in one line
    before it imports this) and puts them in a subdirectory of it named for the layout."""
    name, why = simd_layout()
    if why is not None:
        raise ValueError(why)
    if not name:
        return isa()
    own = "nbnet-layout-" + name
    if os.path.basename(os.path.normpath(config.CACHE_DIR)) != own:
        # Numba reads CACHE_DIR when a cached function is defined (nbnet's kernels: below and in
        # nbnet.cpu, after this), and reloads it from the environment when a NUMBA_ variable
        # changes: both are set.
        config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"] = os.path.join(config.CACHE_DIR, own)
    return LAYOUTS[name]


EMULATED = bool(simd_layout()[0])
ISA, VECTOR_BYTES, REGISTERS, HAS_FMA = layout()

# Register blocks, in vectors. Rule (Low et al., "Analytical modeling is enough for
# high-performance BLIS"): enough accumulators to cover FMA latency × ports (~8-10), and
# accumulators + B vectors + 1 broadcast below the register file, with headroom (a block that
# exactly fills it spills under LLVM).
# - 16 registers (AVX2, AVX, SSE): broadcast 5 rows × 2 vectors (10 accumulators + 2 + 1); BLIS's
#   6×2 spilled under LLVM (measured: 30 stack accesses in the hot loop), 5×2 did not. Since the
#   broadcast block is its own function (bcast_block), 6×2 compiles without spills too, but it was
#   no faster on Zen 3 (784->256 dW batch 512 86 vs 85% of BLAS, dX equal) and lost where 6 does
#   not divide the rows (128->10 dW 152 -> 139%): 5×2 kept. Dot 3×4 (12 accumulators + 3 + 1).
# - 32 registers (AVX-512, NEON): broadcast 8 × 3 (24 + 3 + 1, OpenBLAS's skylakex sgemm keeps 24
#   zmm accumulators, BLIS's ARMv8 8×12 floats is 8 × 3 NEON vectors); dot 4 × 5 (20 + 4 + 1).
if REGISTERS >= 32:
    BCAST_MR, BCAST_NV, DOT_MR, DOT_NR = 8, 3, 4, 5
else:
    BCAST_MR, BCAST_NV, DOT_MR, DOT_NR = 5, 2, 3, 4
# A C of a few rows more than BCAST_MR, up to TALL_MR, takes one block of all its rows, TALL_NV
# vectors wide: a 10-class output layer's dW (10 × n) on 32 registers is 10 × 2 (20 accumulators
# + 2 + 1), where 8 + 2 rows in 8×3 and half-height 4×3 blocks computed 12 rows' FMAs for 10 and
# read X twice. Measured on an Emerald Rapids Xeon (AVX-512), 128->10 dW, float32, one thread, %
# of BLAS before -> after in three interleaved pairs: batch 32 45-47 -> 48-49, 128 51-59 -> 60-63,
# 512 54-65 -> 62-70. The same FMAs in the same order for each element: the same bits. With 16
# registers 5×2 already divides 10 rows (that dW at 150-176% of BLAS on Zen 3): no tall block.
TALL_MR, TALL_NV = (10, 2) if REGISTERS >= 32 else (BCAST_MR, BCAST_NV)
TALL = TALL_MR > BCAST_MR  # a constant: where False, Numba prunes the tall path from the kernels
# Cache blocks (measured on Zen 3 with the 5×2 block: batch 512 fell from ~80 to 20-26 GFLOP/s
# without them): KC steps of s per pass, so a KC × (NV vectors) panel of B stays in L1 while MC
# rows of A (MC × KC, in L2) stream past it; the dot kernel takes DOT_NB rows of W at a time.
KC, MC, DOT_NB = 256, 120, 64
# The broadcast form reads B's rows at stride ldb (784 floats for X or W of a 784-wide layer):
# each step touches new cache lines, and strides of 1 KB map a panel onto a few L1 sets that it
# thrashes. bcast_unit copies a tile's KC × NV vectors of B once to a contiguous panel that then
# serves all of the unit's row blocks from L1, as BLIS and OpenBLAS do. Measured on Zen 3 (float32,
# one thread, % of BLAS before -> after): dW 784->256 batch 128 61 -> 73, 256->128 batch 512
# 56 -> 80; dX 784->256 batch 512 73 -> 85; forward from Wᵀ 784->256 batch 512 62 -> 78.
# The copy pays for itself from about 4 row blocks (128->10's dW, 2 blocks: 200% -> 157% of BLAS
# with it; 20 rows: even); below PACK_MIN_ROWS rows B is read in place.
PACK_MIN_ROWS = 4 * BCAST_MR
PANEL = KC * BCAST_NV * (VECTOR_BYTES // 4)  # panel elements: enough for float32, the most lanes
# dW = GᵀX reads A = Gᵀ down G's columns: the MR elements of a step share a cache line, but each
# step is a new line at stride m (1 KB for m = 256 in float32, 2 KB in float64: a few L1 sets,
# thrashed). bcast_unit then copies the unit's MC × KC block of A once per KC chunk into MR-row
# panels read contiguously (apanel: (MC + PACK_MIN_ROWS)·KC elements on the stack, 140 KB float32,
# 280 KB float64),
# for units of at least PACK_A_TILES tiles so the copy is spread over their FMAs. Units group
# tiles (bcast_grid) into as few as give MIN_UNITS units, enough for the threads to share (a
# trade-off: 784->256's dW has 8 units, 2 row blocks × 4 groups of 13 tiles (9 when measured here,
# before row_blocks joined a short last row block), which caps its speed-up at 8 threads; with 16
# units, 9 tiles each, its float32 batch 512 reached 81% of BLAS instead of 88%).
# Measured on Zen 3 (dW alone, one thread, % of BLAS, MC-row blocks × 1 tile -> × all tiles):
# float32 784->256 batch 512 81 -> 96, batch 128 90 -> 102; float64 784->256 batch 512 70 -> 94,
# 256->128 batch 512 76 -> 95; at 8 tiles a unit 784->256 float32 batch 512 gave 86. As landed
# (cpu.linear_backward_params, one thread, interleaved against the kernels before): float32
# 784->256 batch 512 78 -> 88, 128 86 -> 91, 32 98 -> 114; float64 784->256 batch 512 72 -> 90,
# 128 76 -> 93; 256->128 (16 tiles: 4 a unit then, 2 now; no A copy) unchanged. Tried, no better: the A copy
# from 4 tiles a unit (256->128 float32 batch 128 83 -> 72%), by whole vectors instead of element
# by element (±3), row blocks evened out (128 rows as 65 + 63: ±3), prefetching A 8 steps ahead
# in bcast_block (±4).
PACK_A_TILES = 8
MIN_UNITS = 8
# ... but no smaller than UNIT_WORK multiply-adds, unless a row block is one group already: each
# unit pays its set-up (its A panel, the drain of its last tiles), ~0.7 µs on Zen 3 (784->256's dW
# at batch 8, 1.6M multiply-adds: 8 units on one thread 58.8 µs, 2 units 54.4; on two threads
# 45.0 vs 38.5). At the MLP's shapes this changes only small products (batch 8 to 15: dW 784->256
# then has 4 units up to batch 11 and 6 from 12, not 8; 256->128's dX at batch 32 has 2, on AVX2): a 2-thread training step at batch 8 took
# 151 µs instead of 157, and 150 instead of 154 (two interleaved sets of three runs); batch 16 to
# 512 within noise (-0.6% to +0.5%). A machine with
# many threads uses fewer of them for such a product, where waking them costs more than its FMAs.
UNIT_WORK = 400_000
APANEL = (MC + PACK_MIN_ROWS) * KC  # a joined last row block (row_blocks)
DOT_NR1 = 2 * DOT_NR  # columns of the one-row dot block (a constant: block sizes must be literals)


def lanes(dtype):
    """Elements per vector register for `dtype` (float32: 8 on AVX2, 16 on AVX-512)."""
    return VECTOR_BYTES // dtype.itemsize if hasattr(dtype, "itemsize") else VECTOR_BYTES // dtype


def processor():
    """The processor's own name ('AMD EPYC 7763 64-Core Processor'), as Linux's /proc/cpuinfo gives it
    (x86: "model name"; ARM: "Model" or "Hardware"), else what Python's platform module knows; ""
    when nothing says. Descriptive only: the kernels follow cpu_name() and isa()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    import platform  # noqa: PLC0415 - only here

    return platform.processor() or ""


def describe():
    """One line for benchmarks, `nbnet check` and bug reports: the processor, the CPU LLVM compiles
    for, the cores, the ISA and register blocks the kernels use."""
    emulated = " (NBNET_SIMD_LAYOUT, emulated)" if EMULATED else ""
    name = processor()
    cpu = f"{name} ({cpu_name()}, {os.cpu_count()} cores)" if name else f"{cpu_name()} ({os.cpu_count()} cores)"
    return (f"CPU {cpu}, ISA {ISA}{emulated} ({VECTOR_BYTES * 8}-bit vectors × {REGISTERS}, "
            f"{'FMA' if HAS_FMA else 'no FMA'}), blocks: broadcast {BCAST_MR}×{BCAST_NV} vectors"
            f"{f' (tall {TALL_MR}×{TALL_NV})' if TALL else ''}, "
            f"dot {DOT_MR}×{DOT_NR}, KC {KC}, MC {MC}")


# ----------------------------------------------------------------------------------------------
# 2. Micro-kernels (LLVM IR). Arrays are C-contiguous; offsets and strides are in elements.

def _float_array(t):
    return isinstance(t, types.Array) and t.layout == "C" and t.dtype in (types.float32, types.float64)


def _lit(t):
    return t.literal_value if isinstance(t, types.IntegerLiteral) else None


class _IR:
    """Small helpers over llvmlite's IRBuilder for one element type: vector type, load, store,
    splat, fma. What an intrinsic below emits reads as the operations it names."""

    def __init__(self, context, builder, dtype):
        self.b, self.context = builder, context
        self.elty = context.get_value_type(dtype)
        self.w = VECTOR_BYTES // (dtype.bitwidth // 8)
        self.align = dtype.bitwidth // 8
        self.vty = ir.VectorType(self.elty, self.w)
        self.i64 = context.get_value_type(types.intp)

    def int(self, v):
        return ir.Constant(self.i64, v)

    def ints(self, args, argtys):
        """The integer arguments as intp values (None in the arrays' places). Arrays must not go
        through context.cast: Numba casts an array to a number as arr.take(0), a real call with an
        exception check per micro-kernel call (measured: 70-100 ns each, more than a short block)."""
        return [None if isinstance(t, types.Array) else self.context.cast(self.b, v, t, types.intp)
                for v, t in zip(args, argtys)]

    def at(self, ptr, offset):
        return self.b.gep(ptr, [offset], inbounds=True)

    def load(self, ptr):
        return self.b.load(self.b.bitcast(ptr, self.vty.as_pointer()), align=self.align)

    def store(self, value, ptr):
        self.b.store(value, self.b.bitcast(ptr, self.vty.as_pointer()), align=self.align)

    def zero(self):
        return ir.Constant(self.vty, None)

    def splat(self, x):
        i32 = ir.IntType(32)
        one = self.b.insert_element(ir.Constant(self.vty, ir.Undefined), x, ir.Constant(i32, 0))
        return self.b.shuffle_vector(one, ir.Constant(self.vty, ir.Undefined),
                                     ir.Constant(ir.VectorType(i32, self.w), [0] * self.w))

    def fma(self, a, b, c):
        """a·b + c: one rounding where the ISA has FMA; without it a multiply then an add (the
        llvm.fma intrinsic would become a slow libm call there)."""
        if HAS_FMA:
            name = f"llvm.fma.v{self.w}f{self.align * 8}"
            fn = cgutils.get_or_insert_function(self.b.module, ir.FunctionType(self.vty, [self.vty] * 3), name)
            return self.b.call(fn, [a, b, c])
        return self.b.fadd(self.b.fmul(a, b), c)

    def hsum(self, v):
        """Σ of v's lanes in a fixed tree: (lanes 0..h-1) + (h..2h-1), halving to one lane. (One
        shuffle tree for a dot row's 4 accumulators together, 12 operations instead of 28, measured
        no faster on Zen 3: 128->10 forward 107 -> 100% of BLAS.)"""
        i32, w = ir.IntType(32), self.w
        while w > 1:
            h = w // 2
            lo = self.b.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, h), list(range(h))))
            hi = self.b.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, h), list(range(h, w))))
            v, w = self.b.fadd(lo, hi), h
        return self.b.extract_element(v, ir.Constant(i32, 0))

    def min(self, a, b):
        return self.b.select(self.b.icmp_signed("<", a, b), a, b)

    def data(self, arrty, arr):
        return self.context.make_array(arrty)(self.context, self.b, arr).data

    def loop(self, count, init):
        """A counted loop whose carried values (a flat list of vectors) are phi nodes: yields
        (i, values) in the body, which must send back the new values; returns the final ones."""
        b = self.b
        pre = b.block
        head = b.append_basic_block("mk.head")
        body = b.append_basic_block("mk.body")
        done = b.append_basic_block("mk.done")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(self.i64)
        i.add_incoming(self.int(0), pre)
        phis = []
        for v in init:
            p = b.phi(v.type)
            p.add_incoming(v, pre)
            phis.append(p)
        b.cbranch(b.icmp_signed("<", i, count), body, done)
        b.position_at_end(body)
        return i, phis, head, done

    def end_loop(self, i, phis, new, head, done, unroll=False):
        b = self.b
        i.add_incoming(b.add(i, self.int(1)), b.block)
        for p, v in zip(phis, new):
            p.add_incoming(v, b.block)
        br = b.branch(head)
        if unroll:  # LLVM's choice (a copy loop: no accumulators, few pointers)
            b.position_at_end(done)
            return
        # One step per iteration: unrolled copies each want their own A pointers, more than x86's
        # 16 general registers (measured: pointers reloaded from the stack in the hot loop).
        mod = b.module
        loop_id = mod.add_metadata([])
        loop_id.operands = (loop_id, mod.add_metadata([ir.MetaDataString(mod, "llvm.loop.unroll.disable")]))
        br.set_metadata("llvm.loop", loop_id)
        b.position_at_end(done)


def _bcast_block_body(builder, context, dtype, mr, nv, args):
    """The block's function: one tile, or with two more arguments (tiles, tile_b) a loop over tiles
    around it (a function of its own: with the loop around every call, the one-tile calls of the
    long sums measured 1-2% slower)."""
    x = _IR(context, builder, dtype)
    cdata, c_off_, ldc_, adata, a_off_, a_rs_, a_ss_, bdata, b_off_, ldb_, steps_, nrows_, acc_flag = args[:13]
    last = builder.sub(nrows_, x.int(1))
    arows = [x.at(adata, builder.add(a_off_, builder.mul(x.min(x.int(r), last), a_rs_))) for r in range(mr)]
    multi = len(args) > 13
    if multi:
        t, _, head_t, done_t = x.loop(args[13], [])
        c_off_t = builder.add(c_off_, builder.mul(t, x.int(nv * x.w)))
        b_off_t = builder.add(b_off_, builder.mul(t, args[14]))
    else:
        c_off_t, b_off_t = c_off_, b_off_
    s, acc, head, done = x.loop(steps_, [x.zero()] * (mr * nv))
    brow = x.at(bdata, builder.add(b_off_t, builder.mul(s, ldb_)))
    bv = [x.load(x.at(brow, x.int(v * x.w))) for v in range(nv)]
    a_s = builder.mul(s, a_ss_)
    new = []
    for r in range(mr):
        ar = x.splat(builder.load(x.at(arows[r], a_s)))
        new += [x.fma(ar, bv[v], acc[r * nv + v]) for v in range(nv)]
    x.end_loop(s, acc, new, head, done)
    for r in range(mr):
        with builder.if_then(builder.icmp_signed("<", x.int(r), nrows_)):
            crow = x.at(cdata, builder.add(c_off_t, builder.mul(x.int(r), ldc_)))
            with builder.if_else(acc_flag) as (add, put):
                with add:
                    for v in range(nv):
                        p = x.at(crow, x.int(v * x.w))
                        x.store(builder.fadd(x.load(p), acc[r * nv + v]), p)
                with put:
                    for v in range(nv):
                        x.store(acc[r * nv + v], x.at(crow, x.int(v * x.w)))
    if multi:
        x.end_loop(t, [], [], head_t, done_t)
    builder.ret_void()


@intrinsic
def bcast_block(typingctx, c, c_off, ldc, a, a_off, a_rs, a_ss, b, b_off, ldb, steps, nrows, accumulate, tiles,
                tile_b, MR, NV):
    """C[c_off + t·NV·W + r·ldc + j] (+)= Σ_{s < steps} A[a_off + r·a_rs + s·a_ss] · B[b_off + t·tile_b + s·ldb + j]

    for r < nrows (≤ MR), j < NV vectors, and each of `tiles` tiles t side by side in C (their B
    panels tile_b apart; a literal 1 compiles the one-tile block). MR × NV vector accumulators a
    tile; rows r ≥ nrows read row nrows-1 (same code for edge blocks) and are not stored. C's last
    rows (nrows ≤ MR // 2) take a block of half the height instead, so they pay half the FMAs.
    accumulate: C += the sum, else C =. Several tiles a call pay the call and the A row pointers
    once: with a short sum (dW at batch 8: 8 steps) they cost as much as the FMAs.
    """
    mr, nv = _lit(MR), _lit(NV)
    if mr is None or nv is None or not all(map(_float_array, (c, a, b))) or not (c.dtype == a.dtype == b.dtype):
        return None
    sig = types.void(c, c_off, ldc, a, a_off, a_rs, a_ss, b, b_off, ldb, steps, nrows, accumulate, tiles, tile_b,
                     MR, NV)

    def codegen(context, builder, sig, args):
        outer = _IR(context, builder, c.dtype)
        ints = outer.ints(args, sig.args)
        flag = context.cast(builder, args[12], sig.args[12], types.boolean)
        data = [outer.data(sig.args[i], args[i]) for i in (0, 3, 7)]
        # The block is its own LLVM function, never inlined: its hot loop gets the whole register
        # file whatever the driver around it keeps live (inlined into the driver with A packing,
        # LLVM reloaded two of the A row pointers from the stack at every step).
        multi = _lit(tiles) != 1
        i64, ptr = outer.i64, outer.elty.as_pointer()

        def block_function(height):
            name = f"nbnet.bcast_block.{c.dtype}.{height}x{nv}" + (".tiles" if multi else "")
            fn = builder.module.globals.get(name)
            if fn is None:
                argtys = [ptr, i64, i64, ptr, i64, i64, i64, ptr, i64, i64, i64, i64, flag.type] + [i64, i64] * multi
                fn = ir.Function(builder.module, ir.FunctionType(ir.VoidType(), argtys), name)
                fn.linkage = "internal"
                fn.attributes.add("noinline")
                _bcast_block_body(ir.IRBuilder(fn.append_basic_block("entry")), context, c.dtype, height, nv, fn.args)
            return fn

        call = [data[0], ints[1], ints[2], data[1], ints[4], ints[5], ints[6], data[2], ints[8], ints[9], ints[10],
                ints[11], flag] + [ints[13], ints[14]] * multi
        if mr < 2 or mr != BCAST_MR:  # the tall block gets more than BCAST_MR rows: no half of it
            builder.call(block_function(mr), call)
            return context.get_dummy_value()
        # C's last rows: 128->10's dW on AVX-512 has 10 rows, 8 + 2, and a full 8-row block for the
        # last 2 computed 4 rows' FMAs for each one kept. With the half-height block (and the 8x2
        # column edge in bcast_unit) that dW took 22.8 instead of 32.4 µs at batch 512, float32,
        # one thread (Emerald Rapids Xeon: 46 -> 68% of BLAS); AVX2's 5x2 blocks within noise.
        with builder.if_else(builder.icmp_signed("<=", ints[11], outer.int(mr // 2))) as (short, full):
            with short:
                builder.call(block_function(mr // 2), call)
            with full:
                builder.call(block_function(mr), call)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def dot_block(typingctx, c, c_off, ldc, a, a_off, lda, b, b_off, ldb, nvec, nrows, ncols, MR, NR):
    """C[c_off + r·ldc + q] = Σ_{l < nvec·W} A[a_off + r·lda + l] · B[b_off + q·ldb + l]

    for r < nrows (≤ MR), q < ncols (≤ NR): W-lane partial sums in MR × NR vector accumulators,
    then each summed across its lanes (hsum). Rows past nrows / ncols repeat the last one and are
    not stored. The caller adds the last n mod W terms (see dot_tail)."""
    mr, nr = _lit(MR), _lit(NR)
    if mr is None or nr is None or not all(map(_float_array, (c, a, b))) or not (c.dtype == a.dtype == b.dtype):
        return None
    sig = types.void(c, c_off, ldc, a, a_off, lda, b, b_off, ldb, nvec, nrows, ncols, MR, NR)

    def codegen(context, builder, sig, args):
        x = _IR(context, builder, c.dtype)
        ints = x.ints(args, sig.args)
        _, c_off_, ldc_, _, a_off_, lda_, _, b_off_, ldb_, nvec_, nrows_, ncols_ = ints[:12]
        cdata, adata, bdata = x.data(sig.args[0], args[0]), x.data(sig.args[3], args[3]), x.data(sig.args[6], args[6])
        lastr, lastc = builder.sub(nrows_, x.int(1)), builder.sub(ncols_, x.int(1))
        arows = [x.at(adata, builder.add(a_off_, builder.mul(x.min(x.int(r), lastr), lda_))) for r in range(mr)]
        brows = [x.at(bdata, builder.add(b_off_, builder.mul(x.min(x.int(q), lastc), ldb_))) for q in range(nr)]
        t, acc, head, done = x.loop(nvec_, [x.zero()] * (mr * nr))
        lo = builder.mul(t, x.int(x.w))
        av = [x.load(x.at(arows[r], lo)) for r in range(mr)]
        new = [None] * (mr * nr)
        for q in range(nr):
            bq = x.load(x.at(brows[q], lo))
            for r in range(mr):
                new[r * nr + q] = x.fma(av[r], bq, acc[r * nr + q])
        x.end_loop(t, acc, new, head, done)
        for r in range(mr):
            with builder.if_then(builder.icmp_signed("<", x.int(r), nrows_)):
                crow = x.at(cdata, builder.add(c_off_, builder.mul(x.int(r), ldc_)))
                for q in range(nr):
                    with builder.if_then(builder.icmp_signed("<", x.int(q), ncols_)):
                        builder.store(x.hsum(acc[r * nr + q]), x.at(crow, x.int(q)))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vector_lanes(typingctx, arr):
    """Elements per vector register for arr's dtype, a compile-time constant."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, VECTOR_BYTES // (arr.dtype.bitwidth // 8))

    return types.intp(arr), codegen


@intrinsic
def pack_rows(typingctx, dst, src, s_off, lds, rows, NV):
    """dst[s·NV·W + j] = src[s_off + s·lds + j]  for s < rows, j < NV·W: NV vectors from each of
    `rows` rows of src, strided, to consecutive rows of dst (a panel), by vector loads and stores."""
    nv = _lit(NV)
    if nv is None or not (_float_array(dst) and _float_array(src)) or dst.dtype != src.dtype:
        return None
    sig = types.void(dst, src, s_off, lds, rows, NV)

    def codegen(context, builder, sig, args):
        x = _IR(context, builder, dst.dtype)
        s_off_, lds_, rows_ = [context.cast(builder, v, t, types.intp) for v, t in zip(args[2:5], sig.args[2:5])]
        ddata, sdata = x.data(sig.args[0], args[0]), x.data(sig.args[1], args[1])
        s, _, head, done = x.loop(rows_, [])
        srow = x.at(sdata, builder.add(s_off_, builder.mul(s, lds_)))
        drow = x.at(ddata, builder.mul(s, x.int(nv * x.w)))
        for v in range(nv):
            x.store(x.load(x.at(srow, x.int(v * x.w))), x.at(drow, x.int(v * x.w)))
        x.end_loop(s, [], [], head, done)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def pack_cols(typingctx, dst, src, s_off, lds, steps, nrows, MR):
    """dst[(r // MR)·steps·MR + s·MR + r % MR] = src[s_off + s·lds + min(r, nrows-1)]
    for r < nrows rounded up to MR, s < steps: columns of src (the rows of a transposed A) to
    MR-row panels, each MR × steps block contiguous in the order bcast_block reads it (a_rs = 1,
    a_ss = MR); the rows of the last block past nrows repeat the last row, as bcast_block's do.

    Step by step (src's rows, contiguous, outer; blocks inner): a whole block copies its MR
    elements with ceil(MR / W) vector loads and stores, whose overrun lands in the block's next
    step, written after (and reads from src's next row); the last step and an edge block go element by element. Element by
    element, block by block, the copy cost a cycle an element, each step reading a new line of src
    at stride lds (Zen 3, a 120 × 512 block of dW 784->256 at batch 512: 20.6 µs of the unit's
    388); so 11.2 µs."""
    mr = _lit(MR)
    if mr is None or not (_float_array(dst) and _float_array(src)) or dst.dtype != src.dtype:
        return None
    sig = types.void(dst, src, s_off, lds, steps, nrows, MR)

    def codegen(context, builder, sig, args):
        x = _IR(context, builder, dst.dtype)
        _, _, s_off_, lds_, steps_, nrows_ = x.ints(args, sig.args)[:6]
        ddata, sdata = x.data(sig.args[0], args[0]), x.data(sig.args[1], args[1])
        nvs = -(-mr // x.w)
        last = builder.sub(nrows_, x.int(1))
        whole = builder.sdiv(nrows_, x.int(mr))
        blocks = builder.sdiv(builder.add(nrows_, x.int(mr - 1)), x.int(mr))
        dstep = builder.mul(steps_, x.int(mr))  # a block's panel

        def copy(s, rb, vector):
            src = x.at(sdata, builder.add(builder.add(s_off_, builder.mul(s, lds_)), builder.mul(rb, x.int(mr))))
            dst_ = x.at(ddata, builder.add(builder.mul(rb, dstep), builder.mul(s, x.int(mr))))
            if vector:
                for v in range(nvs):
                    x.store(x.load(x.at(src, x.int(v * x.w))), x.at(dst_, x.int(v * x.w)))
            else:  # rows past nrows repeat the last one
                r0 = builder.mul(rb, x.int(mr))
                for i in range(mr):
                    r = builder.sub(x.min(builder.add(r0, x.int(i)), last), r0)
                    builder.store(builder.load(x.at(src, r)), x.at(dst_, x.int(i)))

        s, _, head_s, done_s = x.loop(builder.sub(steps_, x.int(1)), [])  # all steps but the last
        rb, _, head_b, done_b = x.loop(whole, [])
        copy(s, rb, True)
        x.end_loop(rb, [], [], head_b, done_b, unroll=True)
        x.end_loop(s, [], [], head_s, done_s)
        with builder.if_then(builder.icmp_signed(">", steps_, x.int(0))):
            rb, _, head_b, done_b = x.loop(whole, [])
            copy(builder.sub(steps_, x.int(1)), rb, False)
            x.end_loop(rb, [], [], head_b, done_b)
        with builder.if_then(builder.icmp_signed(">", blocks, whole)):  # the edge block
            s, _, head_s, done_s = x.loop(steps_, [])
            copy(s, whole, False)
            x.end_loop(s, [], [], head_s, done_s)
        return context.get_dummy_value()

    return sig, codegen


def transpose_rounds(w):
    """[(q, lo, hi)] for q = w/2, w/4, ..., 1: rows i and i + q (i & q == 0) of a w × w block
    become shuffle(row i, row i + q, lo) and (…, hi), where lane p of the pair's new rows takes,
    within each 2q-lane group, its low q lanes from row i and its high q from row i + q (indices
    ≥ w name the second row's lanes). Plain lists, so a test can run them for every width."""
    rounds, q = [], w // 2
    while q >= 1:
        lo = [p + (w - q if p % (2 * q) >= q else 0) for p in range(w)]
        hi = [p + (w if p % (2 * q) >= q else q) for p in range(w)]
        rounds.append((q, lo, hi))
        q //= 2
    return rounds


@intrinsic
def transpose_block(typingctx, dst, d_off, ldd, src, s_off, lds):
    """dst[d_off + j·ldd + i] = src[s_off + i·lds + j]  for i, j < W: one W × W block, its W rows
    loaded as vectors and transposed in registers by log2 W rounds of two-source shuffles (round
    q swaps the off-diagonal q × q sub-blocks of each 2q × 2q block). Element by element, the
    784 × 256 float32 Wᵀ copy took 203 µs on Zen 3; by these blocks 36 µs."""
    if not (_float_array(dst) and _float_array(src)) or dst.dtype != src.dtype:
        return None
    sig = types.void(dst, d_off, ldd, src, s_off, lds)

    def codegen(context, builder, sig, args):
        x = _IR(context, builder, dst.dtype)
        _, d_off_, ldd_, _, s_off_, lds_ = x.ints(args, sig.args)
        ddata, sdata = x.data(sig.args[0], args[0]), x.data(sig.args[3], args[3])
        w, i32 = x.w, ir.IntType(32)
        rows = [x.load(x.at(sdata, builder.add(s_off_, builder.mul(x.int(i), lds_)))) for i in range(w)]
        for q, lo, hi in transpose_rounds(w):
            for i in range(w):
                if not i & q:
                    a, b = rows[i], rows[i + q]
                    rows[i] = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, w), lo))
                    rows[i + q] = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, w), hi))
        for j in range(w):
            x.store(rows[j], x.at(ddata, builder.add(d_off_, builder.mul(x.int(j), ldd_))))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def stack_array(typingctx, like, SIZE):
    """A 1-D array of SIZE elements of like's dtype on the calling function's stack frame (an alloca
    in its entry block, 64-byte aligned, so each panel row of one cache line starts one): scratch that
    costs no allocation and is private to the thread running the function. It must not outlive the
    function; SIZE is a compile-time constant, small against a thread's stack (megabytes)."""
    size = _lit(SIZE)
    if size is None or not isinstance(like, types.Array):
        return None
    arrty = types.Array(like.dtype, 1, "C")

    def codegen(context, builder, sig, args):
        elty = context.get_value_type(like.dtype)
        with builder.goto_entry_block():
            data = builder.alloca(elty, size=ir.Constant(context.get_value_type(types.intp), size))
            data.align = 64
        arr = context.make_array(arrty)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(elty))
        context.populate_array(arr, data=data, shape=[context.get_constant(types.intp, size)],
                               strides=[itemsize], itemsize=itemsize, meminfo=None)  # no owner to count
        return arr._getvalue()

    return arrty(like, SIZE), codegen


# ----------------------------------------------------------------------------------------------
# Host arrays aligned to a cache line

ALIGN = 64


# The buffers empty() made, by id (the arrays themselves held weakly): whether a batch is (a view
# of) one of nbnet's own arrays, before nbnet.model looks through a model's arrays for it (see
# model._unaliased), is then one look-up, and a user's own array, the common case, costs no more.
_made = weakref.WeakValueDictionary()


def made_here(x):
    """Whether host array x is (a view of) a buffer that empty() made."""
    base = x.base
    return base is not None and _made.get(id(base)) is base


def empty(shape, dtype):
    """np.empty(shape, dtype) whose data starts on an ALIGN-byte boundary (a view of a slightly
    larger buffer). NumPy's large arrays start 16 bytes into a page, so every other vector of a
    256-bit load or store straddles two cache lines; the kernels read and write whole vectors.
    Measured on Zen 3 (one thread, float32, batch 512, 64-byte aligned vs NumPy's 16): forward
    784->256 2382 vs 2513 µs, dW 2395 vs 2446, dX 2208 vs 2274."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    size = math.prod(shape)
    # a flat owner of the same dtype, so that views of the result have it as their .base (as
    # nbnet.optim.one_flat expects of packed parameters); NumPy's data is 16-byte aligned
    buf = np.empty(size + ALIGN // dtype.itemsize, dtype)
    _made[id(buf)] = buf
    start = (-buf.ctypes.data % ALIGN) // dtype.itemsize
    return buf[start : start + size].reshape(shape)


def zeros(shape, dtype):
    """np.zeros(shape, dtype), aligned as `empty`."""
    arr = empty(shape, dtype)
    arr.fill(0)
    return arr


# ----------------------------------------------------------------------------------------------
# 3. Work units for the threads

def _is_counter(counter):
    """Whether `counter` is a unit_counter array (claim / claimed)."""
    return isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1


def _counter_ptr(context, builder, sig, args):
    """A pointer to counter[0] in the codegen of claim / claimed."""
    return context.make_array(sig.args[0])(context, builder, args[0]).data


@intrinsic
def claim(typingctx, counter):
    """counter[0] += 1 atomically; returns the value before: the next work unit to do."""
    if not _is_counter(counter):
        return None

    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", _counter_ptr(context, builder, sig, args), ir.Constant(ir.IntType(64), 1),
                                  "monotonic")

    return types.int64(counter), codegen


@intrinsic
def unit_counter(typingctx):
    """A counter for `claim`, at 0: one int64 on the calling function's stack frame (an alloca in
    its entry block, as stack_array), which the threads of that function's prange share while it
    runs. np.empty(1, np.int64) cost an allocation at every call of a Linear kernel."""
    arrty = types.Array(types.int64, 1, "C")

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        with builder.goto_entry_block():
            data = builder.alloca(i64)
        builder.store(ir.Constant(i64, 0), data)
        arr = context.make_array(arrty)(context, builder)
        one = context.get_constant(types.intp, 1)
        itemsize = context.get_constant(types.intp, 8)
        context.populate_array(arr, data=data, shape=[one], strides=[itemsize], itemsize=itemsize,
                               meminfo=None)  # no owner to count
        return arr._getvalue()

    return arrty(), codegen


# The most units that `claim_near` keeps a flag for (one byte each, on the kernel's stack); a
# kernel with more takes them in order from its counter (`claim`), as all did before.
MAX_FLAGGED = 256


@intrinsic
def unit_flags(typingctx):
    """MAX_FLAGGED zero bytes on the calling function's stack frame (as unit_counter), shared by
    the threads of its prange: flags[u] = 1 once a thread claimed unit u (see claim_near)."""
    arrty = types.Array(types.uint8, 1, "C")

    def codegen(context, builder, sig, args):
        i8 = ir.IntType(8)
        with builder.goto_entry_block():
            data = builder.alloca(i8, size=ir.Constant(ir.IntType(64), MAX_FLAGGED))
        cgutils.memset(builder, data, ir.Constant(ir.IntType(64), MAX_FLAGGED), 0)
        arr = context.make_array(arrty)(context, builder)
        size = context.get_constant(types.intp, MAX_FLAGGED)
        one = context.get_constant(types.intp, 1)
        context.populate_array(arr, data=data, shape=[size], strides=[one], itemsize=one, meminfo=None)
        return arr._getvalue()

    return arrty(), codegen


def _flag_of(flags, u):
    """Whether (flags, u) are a unit_flags array and an integer index (take / is_free)."""
    return isinstance(flags, types.Array) and flags.dtype == types.uint8 and isinstance(u, types.Integer)


def _flag_ptr(context, builder, sig, args):
    """A pointer to flags[u] in the codegen of take / is_free."""
    base = context.make_array(sig.args[0])(context, builder, args[0]).data
    return builder.gep(base, [builder.sext(args[1], ir.IntType(64)) if args[1].type.width < 64 else args[1]])


@intrinsic
def take(typingctx, flags, u):
    """flags[u] = 1 atomically; whether it was 0 before (this thread now owns unit u)."""
    if not _flag_of(flags, u):
        return None

    def codegen(context, builder, sig, args):
        old = builder.atomic_rmw("xchg", _flag_ptr(context, builder, sig, args), ir.Constant(ir.IntType(8), 1), "monotonic")
        return builder.icmp_unsigned("==", old, ir.Constant(ir.IntType(8), 0))

    return types.boolean(flags, u), codegen


@intrinsic
def is_free(typingctx, flags, u):
    """Whether flags[u] reads 0 now (an atomic load: no thread has claimed unit u yet)."""
    if not _flag_of(flags, u):
        return None

    def codegen(context, builder, sig, args):
        val = builder.load_atomic(_flag_ptr(context, builder, sig, args), "monotonic", 1)
        return builder.icmp_unsigned("==", val, ir.Constant(ir.IntType(8), 0))

    return types.boolean(flags, u), codegen


@intrinsic
def claimed(typingctx, counter):
    """counter[0], read atomically (how many units the threads have claimed so far)."""
    if not _is_counter(counter):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_counter_ptr(context, builder, sig, args), "monotonic", 8)

    return types.int64(counter), codegen


# ----------------------------------------------------------------------------------------------
# 4. Drivers: one work unit of a product, cache-blocked, built from the micro-kernels. A kernel
# hands units out to its threads with `claim_near` and applies its own epilogue (bias, ReLU) to the
# block a unit returns, while it is in cache. Units never overlap: each output has one owner.

# Numba's internals as of 0.68 (IndexDataCacheFile, its _dump and _load_index; a cache's _impl and
# _cache_file): a Numba that renamed them gets its own files, unchecked, not an error at import
# (as cpu._KEYED does for _index_key).
_CHECKABLE = hasattr(caching, "IndexDataCacheFile") and all(
    hasattr(caching.IndexDataCacheFile, name) for name in ("_dump", "_load_index", "save", "load", "flush"))


class _CheckedCacheFile(caching.IndexDataCacheFile if _CHECKABLE else object):
    """Numba's index and data files of a kernel, each data file holding a SHA-256 of its key and its
    contents. Numba checks neither: a byte changed on the disk (a flipped bit) in a kernel's
    machine code unpickles as well as ever, and it ran: a segmentation fault, an illegal
    instruction or LLVM's abort in every later run, or a wrong answer with nothing said (a
    constant 2.5 read as 3.5). A file that does not match is a load that fails (see DiskCache)."""

    @staticmethod
    def _digest(key, data):
        return hashlib.sha256(repr(key).encode() + data).digest()

    def save(self, key, data):
        data = self._dump(data)
        super().save(key, (self._digest(key, data), data))

    def load(self, key):
        got = super().load(key)
        if got is None:
            return None
        if not (isinstance(got, tuple) and len(got) == 2 and got[0] == self._digest(key, got[1])):
            raise ValueError("a kernel cache file does not match its checksum")
        return pickle.loads(got[1])


# Numba keys a cached kernel on its own bytecode and on its file's stamp, which is the file's time
# and size before Numba 0.68: an edit that keeps both (a constant such as MC 120 -> 100, copied in
# with its time kept: cp -p, rsync -a, a wheel built with SOURCE_DATE_EPOCH) left the old code in
# use, the constant's and the callees' (bcast_grid runs row_blocks' code as it was compiled). So
# every kernel's key also holds a hash of the sources it is compiled from (cpu's: cpu.jit).
with open(__file__, "rb") as _own:
    SOURCE_HASH = hashlib.sha256(_own.read()).hexdigest()


class DiskCache(caching.FunctionCache):
    """Numba's on-disk cache of a kernel, less the failures that stopped a program, though the
    cache is only a shortcut: a save the disk refuses (full, over quota) raised out of the kernel's
    first call (such a kernel is compiled again in the next process), and so did a cache file that
    cannot be read back (cut short by a crash of the machine before it reached the disk: Numba
    unpickles it unguarded, and an EOFError, UnpicklingError or LLVM's RuntimeError came out of
    every later run). Such a kernel is compiled, and its files written over."""

    sources = SOURCE_HASH  # see SOURCE_HASH

    def __init__(self, py_func):
        super().__init__(py_func)
        with contextlib.suppress(AttributeError):  # see _CHECKABLE
            if _CHECKABLE:
                self._cache_file = _CheckedCacheFile(self._cache_path, self._impl.filename_base,
                                                     self._impl.locator.get_source_stamp())

    def _index_key(self, sig, codegen):
        # Numba keys a kernel on the CPU and its features, not on the settings that change its code
        # for that CPU: one run under NUMBA_OPT=0 filed unoptimised kernels that every later run
        # loaded (a spiral epoch 4x slower, for good; 1 and 2 still would, 0 is no longer cached:
        # CACHE_OFF), and NUMBA_BOUNDSCHECK=1 over a warm cache
        # loaded unchecked kernels, finding no out-of-bounds index where one was sought.
        return super()._index_key(sig, codegen) + ((repr(config.OPT), bool(config.BOUNDSCHECK),
                                                    bool(config.DEBUGINFO_DEFAULT), bool(config.LOOP_VECTORIZE),
                                                    bool(config.SLP_VECTORIZE)), self.sources)

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception:  # noqa: BLE001 - whatever a damaged file raises: the kernel compiles instead
            try:  # the save after the compile reads the index first: a damaged one is emptied
                self._cache_file._load_index()
            except Exception:  # noqa: BLE001
                with contextlib.suppress(Exception):
                    self._cache_file.flush()
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except OSError as e:
            _REFUSED.append(e)  # the compiling note must not promise a cache: see cache_refusal


def _cache_probe():
    pass


# Numba's on-disk cache needs a folder it can write: NUMBA_CACHE_DIR, the package's __pycache__ or
# the user's (~/.cache/numba). A wheel installed in a read-only place and run by a user whose home
# is not writable (a service account, a read-only container) has none, and njit(cache=True) raises
# "no locator available" while the module loads. Then each process compiles the kernels instead
# (check's compiling note says so). Asked once, here: every cached kernel is in this folder (simd, cpu).
try:
    CACHE_PATH = caching.FunctionCache(_cache_probe).cache_path
except RuntimeError:
    CACHE_PATH = None


def _why(e):
    return f"[Errno {e.errno}] {e.strerror}" if e.strerror else str(e)


# Why Numba passed over NUMBA_CACHE_DIR, or None. It takes that folder only where it can write there
# (even to load kernels already in it: a read-only mount of a warmed cache) and otherwise goes on, in
# silence, to the package's __pycache__ or ~/.cache/numba: the compiling note must say where the
# kernels went instead, and why, as the user named another folder. Asked as Numba asks (its folder
# for nbnet's files, made, then a file made in it), and only when it was passed over.
CACHE_DIR_REFUSAL = None
if config.CACHE_DIR and (CACHE_PATH is None or not CACHE_PATH.startswith(os.path.join(config.CACHE_DIR, ""))):
    CACHE_DIR_REFUSAL = f"NUMBA_CACHE_DIR {config.CACHE_DIR} cannot be written"
    try:
        _asked = os.path.join(config.CACHE_DIR, caching._CacheLocator.get_suitable_cache_subpath(__file__))
        os.makedirs(_asked, exist_ok=True)
        tempfile.TemporaryFile(dir=_asked).close()
    except AttributeError:  # a Numba without that internal (as of 0.68): the reason goes unsaid
        pass
    except OSError as e:
        CACHE_DIR_REFUSAL += f": {_why(e)}"
# Why nbnet's kernels are not cached at all, or None. An emulated layout's kernels go to its folder
# (see layout) or nowhere: where that folder cannot be written, Numba would file them in
# __pycache__ under this CPU, and a plain run would load them. Under NUMBA_OPT=0 Numba refuses to
# cache any kernel that calls another (a NumbaWarning each, 11 in `nbnet check`): it lowers the callee
# as a load of its Python object's address, a "dynamic global" that only LLVM's optimiser removes.
# The few it could take save little: at 0 a one-epoch `nbnet train` compiles in about 3 s.
if EMULATED and CACHE_DIR_REFUSAL is not None:
    CACHE_OFF = f"{CACHE_DIR_REFUSAL}, and an emulated layout's kernels go nowhere else"
elif CACHE_PATH is None:
    CACHE_OFF = (f"{CACHE_DIR_REFUSAL}, nor any folder Numba falls back to" if CACHE_DIR_REFUSAL is not None
                 else "no folder Numba can write; set NUMBA_CACHE_DIR to one")
elif config.OPT == 0:
    CACHE_OFF = "NUMBA_OPT=0, whose kernels Numba cannot cache"
else:
    CACHE_OFF = None
CACHE = CACHE_OFF is None
_REFUSED = []  # the OSErrors of saves the disk refused (DiskCache.save_overload), in this process


def describe_cache():
    """Where compiled kernels are kept between runs, for `nbnet info` and `nbnet check`: the folder
    Numba took (and why it is not the NUMBA_CACHE_DIR given, where it passed over it), or why none."""
    if CACHE_OFF is not None:
        return f"kernel cache: none ({CACHE_OFF}): each run compiles"
    return f"kernel cache: {CACHE_PATH}" + (f" ({CACHE_DIR_REFUSAL})" if CACHE_DIR_REFUSAL is not None else "")


def cache_refusal(probe=True):
    """Why kernels compiled from now on will not be in Numba's on-disk cache for later runs, or
    None. Numba checks its folder with an empty file when a kernel is defined; a folder that takes
    that and no data (a full disk, a quota, a file size limit) passed, and the saves then failed
    in silence (DiskCache): each run compiled again while saying the kernels were cached. So a
    page is written to it here (unless not `probe`), as a kernel's file would be, and a save that
    was refused is kept."""
    if CACHE_OFF is not None:
        return CACHE_OFF
    if probe and not _REFUSED:
        try:
            # Numba makes the folder again before each save: one removed since import (the user
            # cleared the cache with a notebook's kernel running) is no refusal
            os.makedirs(CACHE_PATH, exist_ok=True)
            with tempfile.TemporaryFile(dir=CACHE_PATH) as f:
                f.write(bytes(4096))
                f.flush()
        except OSError as e:
            _REFUSED.append(e)
    if not _REFUSED:
        return None
    return f"cannot write to {CACHE_PATH}: {_why(_REFUSED[0])}"


def foreign_code():
    """Why the code Numba compiles here cannot run here, or None: NUMBA_CPU_NAME / NUMBA_CPU_FEATURES
    name features this CPU lacks. Numba compiles for them without a word (inspecting such code is a
    use: test_avx512_micro_kernels_compile_without_spills_on_any_machine), and the first kernel a
    program called stopped it at an illegal instruction, SIGILL with nothing said. The features
    Numba compiles for (cpu_features: those NUMBA_CPU_FEATURES lists, and the named CPU's vector
    ISA, FMA and APX) that this LLVM knows are compared with the host's (a partial guard: llvmlite
    gives no named CPU's other features). A NUMBA_CPU_NAME that LLVM does not know is refused too:
    LLVM ignores it with a warning at every compile, or aborts with NUMBA_CPU_FEATURES set."""
    unknown = numba_cpu_name_fault()  # (NUMBA_CPU_FEATURES is refused at import, above)
    if unknown is not None:
        return unknown
    if config.CPU_NAME is None and config.CPU_FEATURES is None:
        return None  # the host's own
    flags = llb.get_host_cpu_features().flatten().split(",")
    host = {f[1:] for f in flags if f.startswith("+")}
    known = {f[1:] for f in flags if f[:1] in "+-"}
    lacks = sorted((cpu_features() & known) - host)
    if not lacks:
        return None
    told = ", ".join(f"{var}={value!r}" for var, value in (("NUMBA_CPU_NAME", config.CPU_NAME),
                                                            ("NUMBA_CPU_FEATURES", config.CPU_FEATURES))
                     if value is not None)
    return (f"{told} makes Numba compile code for features this CPU ({llb.get_host_cpu_name()}) lacks: "
            f"{', '.join(lacks)}; nbnet's kernels would stop at an illegal instruction: unset them, or "
            "name a CPU this one can run")


FOREIGN_CODE = foreign_code()

NO_CWD = ("the current folder no longer exists (it was deleted), and Numba needs one to compile nbnet's "
          "kernels: os.chdir to one that does")


def said_without_cwd(kernel):
    """A kernel whose compiling, where the current folder was deleted, ends in one clear error: Numba's
    compiler formats source locations with os.path.relpath as it compiles (numba.core.ir.Loc, which
    catches only the ValueError of another Windows drive), so a first call with no cached kernel ended
    in "[Errno 2] No such file or directory" from deep inside Numba, naming nothing. Loading a cached
    kernel needs no current folder and still works. (Only a call that compiles or loads goes here.)"""
    compile_for_args = kernel._compile_for_args

    def compiling(*args, **kws):
        if FOREIGN_CODE is not None:
            raise ValueError(FOREIGN_CODE)
        try:
            return compile_for_args(*args, **kws)
        except Exception:
            try:
                os.getcwd()
            except FileNotFoundError:
                raise FileNotFoundError(NO_CWD) from None
            raise

    kernel._compile_for_args = compiling
    return kernel


def _jit(func):
    kernel = njit(cache=CACHE)(func)
    if CACHE:
        kernel._cache = DiskCache(kernel.py_func)
    return said_without_cwd(kernel)


@_jit
def claim_near(flags, counter, u, units, group, shared):
    """The next work unit of a kernel's prange for the thread asking, claimed for it; `units` when
    none is left. u: the thread's first iteration of the prange (where its static share starts),
    then the unit after the one it last did. group: units per row block of the output (1: any;
    0: every unit in order from the counter, as `claim`).

    A thread takes its own share in order (u, while free), then, from the end, the first unit of
    a row block no thread has started (and goes on through it): each thread keeps the units
    prange's static split gives it, so at every step it writes the same rows of a dW, and reads
    the same rows of a weight, as the optimizer's step that updates them (see
    nbnet.cpu.dw_shares); a thread slowed by another process still does fewer. Measured on 2
    cores (Zen 5 VM, 784-256-128-10): at batch 1 a weight row written on one core and read on the
    other cost a dW of 256->128 18 µs against 2-3 µs (the step on 2 threads 131 µs, on one 67);
    at batch 8, the two threads in one row block of dW 784->256 (other columns) took 15-17 µs a
    unit against 3-4. With more than MAX_FLAGGED units, the next in order from the counter.
    shared: False in a serial twin (cpu.Kernel), whose one thread takes the units in order, counted
    without atomics: their cost made the serial 128->10 forward at batch 32 1.45 µs against 1.11
    (fused ReLU, Zen 5, one thread, interleaved)."""
    if not shared:
        u = counter[0]
        counter[0] = u + 1
        return u
    if units > MAX_FLAGGED or group == 0:
        return claim(counter)
    u = np.int64(u)  # a prange index may come as uint64, which with int64 would unify to float64
    if claimed(counter) >= units:
        return units
    if u < units and take(flags, u):
        claim(counter)
        return u
    for b in range((units + group - 1) // group - 1, -1, -1):
        v0, v1 = b * group, min(b * group + group, units)
        free = True
        for v in range(v0, v1):
            free = free and is_free(flags, v)
        if free and take(flags, v0):
            claim(counter)
            return v0
    return units


@_jit
def row_blocks(rows):
    """MC-row blocks of bcast_unit: a last block of fewer than PACK_MIN_ROWS rows joins the one
    before (up to MC + PACK_MIN_ROWS - 1 rows), as too few rows for the packed panels ran at about
    half speed (Zen 3, dW batch 512: 784->256's rows 240-256 49.5 GFLOP/s against 86, 6% of
    its work; 256->128's rows 120-128 39-42 against 84)."""
    blocks = (rows + MC - 1) // MC
    return blocks - 1 if blocks > 1 and rows - (blocks - 1) * MC < PACK_MIN_ROWS else blocks


@_jit
def bcast_grid(c, steps, shared):
    """(units, tiles per unit) of bcast_unit for C (rows × cols) summed over `steps`: MC-row
    blocks × groups of tiles of NV vectors, as few groups as give MIN_UNITS units of at least
    UNIT_WORK multiply-adds when several threads share them (shared), else one group (all tiles):
    a wide group packs A once for more
    tiles and reads its panel from L2 for all of them (Zen 3, float32 batch 512, one thread, one
    group against MIN_UNITS' four and eight: dW 784->256 2306 vs 2466 µs, 256->128 381 vs 402).
    The grouping changes no sum."""
    nc = BCAST_NV * vector_lanes(c)
    blocks = row_blocks(c.shape[0])
    tiles = (c.shape[1] + nc - 1) // nc
    work = c.shape[0] * c.shape[1] * steps
    groups = min(tiles, (MIN_UNITS + blocks - 1) // blocks, max(1, work // (UNIT_WORK * blocks))) if shared else 1
    per = (tiles + groups - 1) // groups
    return blocks * ((tiles + per - 1) // per), per


@_jit
def bcast_unit_block(rows, cols, nc, per, u):
    """The block (r0, r1, c0, c1) of C (rows × cols) that unit u of bcast_unit covers, its groups
    `per` tiles of nc columns wide (bcast_grid)."""
    groups = ((cols + nc - 1) // nc + per - 1) // per
    r0 = (u // groups) * MC
    r1 = rows if r0 + MC >= rows or u // groups == row_blocks(rows) - 1 else r0 + MC
    g0 = (u % groups) * per * nc
    return r0, r1, g0, min(g0 + per * nc, cols)


@_jit
def bcast_units(c, steps, shared):
    """Work units of bcast_unit for C summed over `steps`, shared by several threads or not (see
    bcast_grid)."""
    return bcast_grid(c, steps, shared)[0]


@_jit
def bcast_unit(c, a, a_rs, a_ss, b, steps, u, accumulate, shared):
    """Unit u of  C[r, j] (+)= Σ_{s < steps} A[r, s] B[s, j],  A[r, s] = a.flat[r·a_rs + s·a_ss]
    (so A may be a transposed view: dW = GᵀX reads G with a_rs = 1, a_ss = m).

    Sums s in order, one FMA per step, in chunks of at most KC steps each added to C: the grouping of rows and
    columns into units changes no sum. A full tile's KC × NV vectors of B are first copied to a
    contiguous panel on this thread's stack (see PACK_MIN_ROWS); a transposed A (a_rs = 1) is
    copied once per KC chunk to MR-row panels for all the unit's tiles (see PACK_A_TILES). When
    the panels of all the unit's whole tiles fit the panel buffer together (a short sum), they are
    all packed first and C is walked row block by row block (in runs of tiles that fit it, for a
    wide group). u < bcast_units(c, steps, shared). A C of BCAST_MR + 1 to TALL_MR rows is walked
    in tall blocks of all its rows (TALL_NV vectors wide). Columns past the last full tile use a
    two-vector block (where BCAST_NV > 2) and one-vector blocks, then plain scalar loops. Returns the block (r0, r1, c0, c1)."""
    rows, cols = c.shape
    w = vector_lanes(c)
    nc = BCAST_NV * w
    _, per = bcast_grid(c, steps, shared)
    r0, r1, g0, g1 = bcast_unit_block(rows, cols, nc, per, u)
    ldb = b.shape[1]
    af, bf = a.reshape(a.size), b.reshape(b.size)
    panel = stack_array(c, PANEL)
    apanel = stack_array(c, APANEL)
    pack_a = a_rs == 1 and r1 - r0 >= PACK_MIN_ROWS and g1 - g0 >= PACK_A_TILES * nc
    # chunks as even as they go (784 steps: 4 × 196, not 3 × 256 + 16): a short last chunk pays a
    # whole pass over C for a few FMAs (forward over Wᵀ 784->256 float32 batch 512: 1.08 -> 1.06x BLAS)
    chunks = max(1, (steps + KC - 1) // KC)
    kc = (steps + chunks - 1) // chunks
    for k0 in range(0, steps, kc):
        ks = min(kc, steps - k0)
        add = accumulate or k0 > 0
        if pack_a:  # A[r0 + r, k0 + s] -> apanel[(r // MR)·ks·MR + s·MR + r % MR]
            pack_cols(apanel, a, r0 + k0 * a_ss, a_ss, ks, r1 - r0, BCAST_MR)
        full = (g1 - g0) // nc  # whole tiles in the group
        fit = PANEL // (ks * nc)  # whole tiles whose panels the panel buffer holds at once
        if fit > 1 and full > 1 and r1 - r0 >= PACK_MIN_ROWS:
            # A short sum: the panels of several whole tiles fit the panel buffer at once, so C is
            # walked along its rows (row block by row block, `fit` tiles at a time) instead of down
            # each tile's column: C's traffic dominates when each element gets few FMAs (dW at
            # batch 8-15). Measured on Zen 3, one thread, dW 784->256 batch 8 as % of BLAS:
            # float32 94 -> 139, float64 89 -> 136; batch 12 104 -> 129, 125 -> 137.
            for t0 in range(0, full, fit):
                nt = min(fit, full - t0)
                for t in range(nt):
                    pack_rows(panel[t * ks * nc:], b, k0 * ldb + g0 + (t0 + t) * nc, ldb, ks, BCAST_NV)
                c0 = g0 + t0 * nc
                for r in range(r0, r1, BCAST_MR):  # one call for the run's tiles
                    if pack_a:
                        bcast_block(c, r * cols + c0, cols, apanel, (r - r0) * ks, 1, BCAST_MR, panel, 0, nc, ks,
                                    min(BCAST_MR, r1 - r), add, nt, ks * nc, BCAST_MR, BCAST_NV)
                    else:
                        bcast_block(c, r * cols + c0, cols, a, r * a_rs + k0 * a_ss, a_rs, a_ss, panel, 0, nc,
                                    ks, min(BCAST_MR, r1 - r), add, nt, ks * nc, BCAST_MR, BCAST_NV)
        else:
            full = 0
        start = g0 + full * nc
        if TALL and BCAST_MR < r1 - r0 <= TALL_MR:  # all of C's few rows in one block (see TALL_MR)
            while start + TALL_NV * w <= g1:
                bcast_block(c, r0 * cols + start, cols, a, r0 * a_rs + k0 * a_ss, a_rs, a_ss, b, k0 * ldb + start,
                            ldb, ks, r1 - r0, add, 1, 0, TALL_MR, TALL_NV)
                start += TALL_NV * w
        for c0 in range(start, g1, nc):
            c1 = min(c0 + nc, g1)  # g1, not cols: after tall tiles c0 is off the tile grid, and the
            # next group's columns are another unit's (784->10's dW at batch 128 added them twice)
            if c1 - c0 == nc and r1 - r0 >= PACK_MIN_ROWS:
                pack_rows(panel, b, k0 * ldb + c0, ldb, ks, BCAST_NV)
                for r in range(r0, r1, BCAST_MR):
                    if pack_a:
                        bcast_block(c, r * cols + c0, cols, apanel, (r - r0) * ks, 1, BCAST_MR, panel, 0, nc, ks,
                                    min(BCAST_MR, r1 - r), add, 1, 0, BCAST_MR, BCAST_NV)
                    else:
                        bcast_block(c, r * cols + c0, cols, a, r * a_rs + k0 * a_ss, a_rs, a_ss, panel, 0, nc, ks,
                                    min(BCAST_MR, r1 - r), add, 1, 0, BCAST_MR, BCAST_NV)
                continue
            for r in range(r0, r1, BCAST_MR):
                nr = min(BCAST_MR, r1 - r)
                ao = r * a_rs + k0 * a_ss
                if c1 - c0 == nc:
                    bcast_block(c, r * cols + c0, cols, a, ao, a_rs, a_ss, b, k0 * ldb + c0, ldb, ks, nr, add, 1, 0,
                                BCAST_MR, BCAST_NV)
                    continue
                j = c0
                if BCAST_NV > 2 and j + 2 * w <= c1:  # two vectors at once where the block is wider
                    bcast_block(c, r * cols + j, cols, a, ao, a_rs, a_ss, b, k0 * ldb + j, ldb, ks, nr, add, 1, 0,
                                BCAST_MR, 2)
                    j += 2 * w
                while j + w <= c1:
                    bcast_block(c, r * cols + j, cols, a, ao, a_rs, a_ss, b, k0 * ldb + j, ldb, ks, nr, add, 1, 0,
                                BCAST_MR, 1)
                    j += w
                for rr in range(r, r + nr):
                    for jj in range(j, c1):
                        t = c.dtype.type(0)
                        for s in range(k0, k0 + ks):
                            t += af[rr * a_rs + s * a_ss] * bf[s * ldb + jj]
                        c[rr, jj] = c[rr, jj] + t if add else t
    return r0, r1, g0, g1


@_jit
def dot_units(c):
    """Work units of dot_unit for C (rows × cols): MC-row blocks × DOT_NB-column blocks."""
    return ((c.shape[0] + MC - 1) // MC) * ((c.shape[1] + DOT_NB - 1) // DOT_NB)


@_jit
def dot_unit(c, a, b, u):
    """Unit u of  C[i, j] = Σ_l A[i, l] B[j, l]  (C = A Bᵀ; A (rows, n), B (cols, n)).

    DOT_MR × DOT_NR blocks (a single row uses 1 × DOT_NR1, so batch 1 wastes nothing), then the
    last n mod W terms of each sum added in order. Returns the block (r0, r1, c0, c1)."""
    rows, cols = c.shape
    n = a.shape[1]
    w = vector_lanes(c)
    nvec = n // w
    tiles = (cols + DOT_NB - 1) // DOT_NB
    r0 = (u // tiles) * MC
    r1 = min(r0 + MC, rows)
    c0 = (u % tiles) * DOT_NB
    c1 = min(c0 + DOT_NB, cols)
    for r in range(r0, r1, DOT_MR):
        nr = min(DOT_MR, r1 - r)
        if nr == 1:
            for q in range(c0, c1, DOT_NR1):
                dot_block(c, r * cols + q, cols, a, r * n, n, b, q * n, n, nvec, 1, min(DOT_NR1, c1 - q), 1, DOT_NR1)
        else:
            for q in range(c0, c1, DOT_NR):
                dot_block(c, r * cols + q, cols, a, r * n, n, b, q * n, n, nvec, nr, min(DOT_NR, c1 - q),
                          DOT_MR, DOT_NR)
    if nvec * w < n:
        for i in range(r0, r1):
            for j in range(c0, c1):
                t = c.dtype.type(0)
                for l in range(nvec * w, n):
                    t += a[i, l] * b[j, l]
                c[i, j] += t
    return r0, r1, c0, c1


# ----------------------------------------------------------------------------------------------
# 5. Inspection: do the micro-kernels' hot loops stay in registers on this ISA?

def hot_loops(asm, min_fmas=4):
    """[(vector FMAs, stack accesses)] for each loop in `asm` (x86 AT&T or AArch64 assembly, as
    Numba's inspect_asm gives) whose body holds at least min_fmas vector FMAs on the widest
    registers of this ISA. A loop is the text from a label to the branch that jumps back to it.
    Accesses to a fixed stack slot there are spills (or reloads of spilled pointers): a block that
    does not fit. A stack array walked with an index register (the packed panel of stack_array,
    `(%rsp,%rax,4)`) is data, not a spill, and is not counted."""
    if ISA == "neon":
        fma, stack = r"\bfmla\s+v\d+\.(4s|2d)", r"\[sp(, #-?\d+)?\]"
    else:
        reg = {"avx512": "zmm", "avx2": "ymm", "avx": "ymm"}.get(ISA, "xmm")
        fma, stack = rf"\bvfmadd\w*\s+[^\n]*%{reg}", r"\(%rsp\)"  # rbp is a plain register here
    loops = []
    for m in re.finditer(r"^([.\w$]+):", asm, re.M):
        label = re.escape(m.group(1))
        back = re.search(rf"^\s+(j\w+|b\.\w+|b|cbnz|cbz|tbnz|tbz)\s+([^\n]*[\s,])?{label}\s*$", asm[m.end():], re.M)
        if back is None:
            continue
        body = asm[m.end(): m.end() + back.end()]
        if re.search(r"^[.\w$]+:", body, re.M):  # another label inside: not a simple loop body
            continue
        n = len(re.findall(fma, body))
        if n >= min_fmas:
            loops.append((n, len(re.findall(stack, body))))
    return loops
