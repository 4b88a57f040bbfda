"""Compile time: cold (empty Numba cache) vs cached, for `import nbnet` and the first training step.

Runs the same short program twice in fresh Python processes that share one new, empty
NUMBA_CACHE_DIR: the first compiles every kernel a training step needs (Linear, ReLU, fused
softmax + cross-entropy, SGD) and writes them to the cache; the second loads them from it. Each
prints how long importing numba, importing nbnet, the first step (compile or cache load) and a
second step (steady state, for scale) took. nbnet's kernels use @njit(cache=True), so what users
pay once per machine is the "cold" column and on every later start the "cached" one.

    python profiling/compile.py              # ~30 s (the cold compile dominates)
    python profiling/compile.py --batch 512 --dtype float64
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from argtypes import PROCESS, STEP_ROW, ShowDefaults, check_memory, positive_int
from common import child_env, load_warning, table

from nbnet import simd

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numba
t1 = time.perf_counter()
import nbnet
t2 = time.perf_counter()
sys.path.insert(0, {profiling!r})
from common import training_step
step = training_step({batch}, {dtype!r})
t3 = time.perf_counter()
step()
t4 = time.perf_counter()
step()
t5 = time.perf_counter()
from nbnet.check import compile_kernels
from nbnet.train import build_model, make_optimizer
model = build_model(784, [256, 128], 10, dtype={dtype!r})
compile_kernels(model, make_optimizer("sgd", model, 0.01, 0.9), train_rows=({batch},), eval_rows=(1000,), say=False)
t6 = time.perf_counter()
print(json.dumps({{"import numba": t1 - t0, "import nbnet": t2 - t1,
                  "first training step": t4 - t3, "second training step": t5 - t4,
                  "nb.train's warm-up, + eval batch 1000": t6 - t5}}))
"""


def run_child(code, cache_dir):
    env = child_env(NUMBA_CACHE_DIR=cache_dir)
    # cwd outside any checkout: `python -c` puts the working directory ahead of PYTHONPATH, and
    # started from a checkout the child would load that checkout's nbnet, not this script's.
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=cache_dir)
    if done.returncode != 0:
        sys.exit(f"the timed child process failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description="cold vs cached compile time", formatter_class=ShowDefaults)
    parser.add_argument("--batch", type=positive_int, default=128, help="batch size of the first training step")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="the model's dtype")
    args = parser.parse_args()
    # The child's training step and nb.train's warm-up each hold a step at --batch (float64: twice).
    size = 2 if args.dtype == "float64" else 1
    check_memory(parser, {"--batch": 2 * STEP_ROW * size * args.batch}, fixed=PROCESS + 1000 * STEP_ROW * size)
    code = CHILD.format(profiling=str(Path(__file__).resolve().parent), batch=args.batch,
                        dtype=args.dtype)

    print(simd.describe())
    if load_warning():
        print(load_warning())
    with tempfile.TemporaryDirectory(prefix="nbnet-numba-cache-") as cache_dir:
        print(f"fresh NUMBA_CACHE_DIR={cache_dir}; 784-256-128-10 MLP, batch {args.batch}, {args.dtype}")
        cold = run_child(code, cache_dir)
        cached = run_child(code, cache_dir)
        files = sum(len(f) for _, _, f in os.walk(cache_dir))

    rows = [[phase, f"{cold[phase]:.3f}", f"{cached[phase]:.3f}", f"{cold[phase] / cached[phase]:.1f}x"]
            for phase in cold]
    for label, phases in (("import nbnet + first step", ("import nbnet", "first training step")),
                          ("... + all nb.train compiles", ("import nbnet", "first training step",
                                                           "nb.train's warm-up, + eval batch 1000"))):
        total_cold, total_cached = sum(cold[p] for p in phases), sum(cached[p] for p in phases)
        rows.append([label, f"{total_cold:.3f}", f"{total_cached:.3f}", f"{total_cold / total_cached:.1f}x"])
    print(table(["phase", "cold s", "cached s", "cold/cached"], rows))
    print(f"\n{files} files in the Numba cache after the cold run")


if __name__ == "__main__":
    main()
