"""argparse types the profiling scripts share: a bad count, or sizes whose arrays cannot fit in
memory (check_memory), is a usage error before any work, not a traceback (a ZeroDivisionError, a
MemoryError) after the CPU line. Standard library only: the scripts that set
thread counts before importing Numba import this first. Not a script."""

import argparse
import math
import os


class ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default as "(default: X)", where its text does not say it already;
    not for flags (False), nor options whose default is worked out when the script runs (None: their
    text says how). Every script's parser uses it (tests/test_profiling.py)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def mnist_dirs():
    """Where a script looks for MNIST when given no --data-dir, in order: nbnet's own default
    ($NBNET_DATA_DIR/mnist, else ~/.cache/nbnet/mnist: where `nbnet train --dataset mnist
    --download` puts it), then shared/data/mnist beside the checkout (the project's test data).
    The scripts had three rules: one machine's absolute path, the checkout's, $NBNET_DATA_DIR."""
    root = os.environ.get("NBNET_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nbnet")
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return (os.path.join(root, "mnist"), os.path.join(os.path.dirname(checkout), "shared", "data", "mnist"))


def found_mnist(folders):
    """The first of `folders` that holds MNIST's four IDX files, or None (imports nbnet)."""
    from nbnet.datasets import IDX_FILES, find_idx  # noqa: PLC0415

    return next((d for d in folders if d and os.path.isdir(d) and len(find_idx("mnist", d)) == len(IDX_FILES)), None)


MNIST_HELP = ("folder with MNIST's four IDX files (default: $NBNET_DATA_DIR/mnist or ~/.cache/nbnet/mnist, else "
              "shared/data/mnist beside the checkout")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def seconds(text):
    """A positive, finite number of seconds: the timers loop until it has passed (inf never ends;
    0, a negative or nan timed a single call as if it were the figure asked for)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text!r}")
    return value


def at_least(least):
    """An integer of at least `least`."""
    def count(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"must be an integer of at least {least}, got {text!r}")
        return value
    return count


def positive_ints(text):
    """A comma list of positive integers, returned as the text given: the scripts pass it on to
    their worker processes as it is."""
    for item in text.split(","):
        try:
            positive_int(item)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be positive integers separated by commas, got {text!r}") from None
    return text


def directory(text):
    """A folder that is there: a --data-dir misspelt fell back to random rows, said only in passing."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}")
    return text


def names_from(*allowed):
    """A comma list of some of `allowed`, returned as the text given."""
    def names(text):
        unknown = [n for n in text.split(",") if n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, unknown))}: choose from {','.join(allowed)}")
        return text
    return names


def parse_args(parser, **quick):
    """parser.parse_args(), where --quick gives the options in `quick` new defaults: an option given
    on the command line keeps its value (--quick --steps 5 ran 100 steps, --quick --threads 2 one
    thread, silently)."""
    args = parser.parse_args()
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args()
    return args


# Bytes a training step of the 784-256-128-10 MLP holds per batch row and contender, float32: the
# batch, every activation and gradient (nbnet measured 9.4 KB with tracemalloc; PyTorch's autograd
# keeps about as much), with room. MNIST_ROW: one row of MNIST-shaped data, float32.
STEP_ROW = 12_000
MNIST_ROW = 784 * 4 + 16  # features, a label and its place in a shuffle
# The arrays of common.mnist_groups per batch row (every layer's inputs, outputs and gradients; 38 KB
# measured), float32, with NumPy's reference calls' temporaries.
GROUPS_ROW = 48_000
PROCESS = 100 << 20  # a Python process with nbnet and its compiled kernels loaded


def memory_budget():
    """What one profiling run may allocate: half this machine's physical memory, nbnet's rule for one
    input or model (nbnet/files.py, not imported here: see the module docstring)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not POSIX: a fixed 8 GiB
        return 8 << 30


def check_memory(parser, parts, fixed=0):
    """A usage error when the sizes given would make a run allocate more than memory_budget(): `parts`
    maps each size option to the bytes it brings, `fixed` is the rest; the error names the option
    that brings the most. Checked before any work: it was a MemoryError traceback (or the OOM
    killer) after the CPU line, or, for a step count, hours into the run."""
    budget, need = memory_budget(), fixed + sum(parts.values())
    if need > budget:
        option = max(parts, key=parts.get)
        parser.error(f"argument {option}: needs about {_gib(need)} of memory with the sizes given, more than "
                     f"the {_gib(budget)} (half this machine's) a profiling run may take")


def _gib(nbytes):
    try:
        return f"{nbytes / (1 << 30):.1f} GiB"
    except OverflowError:  # an int beyond a float
        return "over 1e308 GiB"


def largest(text):
    """The largest of a comma list of positive integers (positive_ints's)."""
    return max(int(item) for item in text.split(","))
