"""The low-level machinery that nbnet.cpu's fast Linear kernels read through, in one place.

1. The host's vector ISA, read once at import: vector width and register count, from the CPU name
   and features LLVM (llvmlite) reports, honouring NUMBA_CPU_NAME / NUMBA_CPU_FEATURES so that
   `NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=` compiles AVX2 code on an AVX-512 machine (and
   `skylake-avx512` compiles AVX-512 code anywhere, for inspection). The register blocks below
   follow from it.
2. Two register-blocked micro-kernels, LLVM IR emitted by `numba.extending.intrinsic`s, whose
   block sizes are compile-time parameters:
     bcast_block   C[r, :] (+)= Σ_s a_rs B[s, :]   one element of A broadcast, times contiguous
                   rows of B: MR rows × NV vectors of accumulators (dW = GᵀX, dX = GW, Y = X·Wᵀ
                   from a copy of Wᵀ)
     dot_block     C[r, c] = Σ_l A[r, l] B[c, l]   vectors along the shared contiguous index l:
                   MR × NR accumulators, each summed across its lanes at the end (Y = XWᵀ)
   Accumulators are LLVM vector SSA values (phi nodes), never a stack array, so nothing relies on
   LLVM's SROA or loop vectoriser; a block that fits the register file does not spill
   (tests/test_fast_kernels.py checks the host's assembly).
3. `claim`: an atomic counter that threads take work units from, so a thread slowed by another
   process does fewer units (the static split of prange would make everyone wait for it). Which
   thread computes a unit never changes what it computes: results are bitwise the same for any
   thread count.

Summation order, fixed by the shapes only: bcast_block sums s = 0, 1, ... in order with one FMA per
step; dot_block keeps W lane partial sums, then adds them in a fixed tree (halves, then quarters...).
"""

import os

import llvmlite.binding as llb
from llvmlite import ir
from numba import config, types
from numba.core import cgutils
from numba.extending import intrinsic

# ----------------------------------------------------------------------------------------------
# 1. The ISA and the register blocks

# CPUs whose own features include AVX-512 (for NUMBA_CPU_NAME with NUMBA_CPU_FEATURES empty).
_AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake", "tigerlake",
                "rocketlake", "sapphirerapids", "graniterapids", "emeraldrapids", "znver4", "znver5",
                "x86-64-v4", "knl", "knm")
_AVX2_CPUS = ("haswell", "broadwell", "skylake", "kabylake", "coffeelake", "alderlake", "raptorlake",
              "meteorlake", "arrowlake", "lunarlake", "gracemont", "znver1", "znver2", "znver3",
              "x86-64-v3", "bdver4")


def cpu_name():
    return config.CPU_NAME or llb.get_host_cpu_name()


def cpu_features():
    """The set of enabled features Numba compiles for ('avx2', 'fma', ...); None when
    NUMBA_CPU_FEATURES is set empty (the named CPU's own features apply: see isa())."""
    feats = config.CPU_FEATURES
    if feats is None:
        feats = llb.get_host_cpu_features().flatten()
    elif feats == "":
        return None
    return {f[1:] for f in feats.split(",") if f.startswith("+")}


def isa():
    """(name, vector bytes, vector registers, has FMA) for the code Numba generates here."""
    machine = llb.get_process_triple().split("-")[0]
    if machine in ("aarch64", "arm64"):
        return "neon", 16, 32, True  # Advanced SIMD is part of ARMv8-A
    feats = cpu_features()
    if feats is None:  # the named CPU's own features
        name = cpu_name().lower()
        if name.startswith(_AVX512_CPUS):
            feats = {"avx512f", "avx2", "fma"}
        elif name.startswith(_AVX2_CPUS):
            feats = {"avx2", "fma"}
        else:
            feats = set()
    if machine in ("x86_64", "amd64", "i686", "i386"):
        if "avx512f" in feats:
            return "avx512", 64, 32, True
        if "avx2" in feats or "avx" in feats:
            return ("avx2" if "avx2" in feats else "avx"), 32, 16, "fma" in feats
        return "sse2", 16, 16, False
    return "generic", 16, 16, False  # unknown: 128-bit vectors LLVM may split; correct anyway


ISA, VECTOR_BYTES, REGISTERS, HAS_FMA = isa()

# Register blocks, in vectors. Rule (Low et al., "Analytical modeling is enough for
# high-performance BLIS"): enough accumulators to cover FMA latency × ports (~8-10), and
# accumulators + B vectors + 1 broadcast below the register file, with headroom (a block that
# exactly fills it spills under LLVM).
# - 16 registers (AVX2, AVX, SSE): broadcast 5 rows × 2 vectors (10 accumulators + 2 + 1); BLIS's
#   6×2 spilled under LLVM (measured: 30 stack accesses in the hot loop), 5×2 did not. Dot 3×4
#   (12 accumulators + 3 + 1).
# - 32 registers (AVX-512, NEON): broadcast 8 × 3 (24 + 3 + 1, OpenBLAS's skylakex sgemm keeps 24
#   zmm accumulators, BLIS's ARMv8 8×12 floats is 8 × 3 NEON vectors); dot 4 × 5 (20 + 4 + 1).
if REGISTERS >= 32:
    BCAST_MR, BCAST_NV, DOT_MR, DOT_NR = 8, 3, 4, 5
else:
    BCAST_MR, BCAST_NV, DOT_MR, DOT_NR = 5, 2, 3, 4
# Cache blocks (measured on Zen 3 with the 5×2 block: batch 512 fell from ~80 to 20-26 GFLOP/s
# without them): KC steps of s per pass, so a KC × (NV vectors) panel of B stays in L1 while MC
# rows of A (MC × KC, in L2) stream past it; the dot kernel takes DOT_NB rows of W at a time.
KC, MC, DOT_NB = 256, 120, 64


def lanes(dtype):
    """Elements per vector register for `dtype` (float32: 8 on AVX2, 16 on AVX-512)."""
    return VECTOR_BYTES // dtype.itemsize if hasattr(dtype, "itemsize") else VECTOR_BYTES // dtype


def describe():
    """One line for benchmarks, `nbnet check` and bug reports."""
    return (f"CPU {cpu_name()}, ISA {ISA} ({VECTOR_BYTES * 8}-bit vectors × {REGISTERS}, "
            f"{'FMA' if HAS_FMA else 'no FMA'}), blocks: broadcast {BCAST_MR}×{BCAST_NV} vectors, "
            f"dot {DOT_MR}×{DOT_NR}, KC {KC}, MC {MC}")
