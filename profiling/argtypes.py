"""argparse types the profiling scripts share: a bad count is a usage error before any work, not a
traceback (or a ZeroDivisionError) after the CPU line. Standard library only: the scripts that set
thread counts before importing Numba import this first. Not a script."""

import argparse
import math


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
