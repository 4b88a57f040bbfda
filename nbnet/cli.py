"""`nbnet train | evaluate | predict | info`: the command line of ../shared/interface.md.

Every error a user can cause ends as one line `Error: ...` on stderr and a non-zero exit, in one
place: `Group.main` below. It catches click's usage errors, ValueError and OSError (what nbnet
raises for bad input and what the OS raises for bad paths) and CliError; anything else is a bug
and keeps its traceback. Set NBNET_DEBUG=1 to see the traceback of an `Error:` too.

One checked path per input kind: an option value is checked by its click type and range, whether
it comes from the command line, a --config TOML file or a checkpoint's stored config
(`_option_value`); files are read through nbnet.files (regular files only); every output path is
compared with every input of the run (`_check_paths`). Signals: Ctrl-C (exit 130), SIGTERM
(exit 143) and SIGHUP (a closed terminal, exit 129) stop training after the current step and save
with --save; at any other moment they end the command with one line. One ignored at start stays
ignored (nohup; `nbnet train &` in a script). A closed stdout (`nbnet train | head -1`) ends it
quietly.
"""

import contextlib
import errno
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings

import click
from click.core import ParameterSource
import numpy as np

from . import __version__, _startup, datasets, dist, threads
from .check import not_saying_compiling
from .checkpoint import load_checkpoint, save_checkpoint
from .files import (
    append_whole, check_creatable, check_outputs, check_replaceable, file_in_the_way, names_a_folder, write_atomic,
    write_npz_atomic,
)
from .train import (
    ACTIVATIONS, SCHEDULES, NothingToTrain, TrainingDiverged, TrainingInterrupted, build_model, check_data,
    check_memory, evaluate,
    make_optimizer, predict, split_validation, train,
)
from .losses import LOSSES
from .train import METRIC

DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3}
# Options that fix the model, the data or the order of the batches: a resumed run must keep them.
MUST_MATCH_ON_RESUME = (
    "dataset", "hidden", "activation", "dtype", "optimizer", "batch_size", "seed", "val_split", "test_split",
    "loss",
)
# What each --loss reads from a dataset file's y (see nbnet.datasets.check_xy).
TARGETS = {"cross-entropy": "labels", "mse": "values", "bce": "binary"}
# Options that are not part of the resolved config stored in a checkpoint.
NOT_CONFIG = ("config", "resume", "save", "save_best", "metrics_out", "quiet", "plot", "threads", "download")
# Under MPI only process 0 writes these (the others train the same weights and stay silent).
WRITTEN_BY_PROCESS_0 = ("save", "save_best", "metrics_out", "plot")
EXIT_INTERRUPTED = 130
# Signals that take Ctrl-C's path as SIGTERM's does, each ending the command with 128 + its number
# (143, 129), what a shell reports for a process it killed. SIGHUP (the terminal closed) where it
# exists (not on Windows).
TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: `nbnet train | head -1`, as any Unix tool ends there
# Outputs of `nbnet train`, checked against its inputs before anything runs.
OUTPUT_OPTIONS = ("save", "save_best", "metrics_out", "plot")
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class CliError(Exception):
    """A user error with a ready one-line message."""

    exit_code = 1

    def __init__(self, message, exit_code=None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Interrupted(CliError):
    exit_code = EXIT_INTERRUPTED


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C would raise KeyboardInterrupt, so all take one path."""

    def __init__(self, signum=signal.SIGTERM):
        super().__init__()
        self.exit_code = 128 + signum


def _catch_signals(handler):
    """Handle Ctrl-C and TERMINATING with `handler`, less a signal ignored at start, which stays
    ignored (`nohup nbnet train ...`, `nbnet train &` in a script: _startup.caught_signals);
    returns the handlers replaced."""
    return {sig: signal.signal(sig, handler) for sig in _startup.caught_signals()}


def _one_line(msg):
    return " ".join(str(msg).split())


_signalled = []  # the Ctrl-C, SIGTERM or SIGHUP that _on_signal turned into an exception, if any


def _raised_for(signum):
    """The exception a signal ends the command with: SIGTERM and SIGHUP take Ctrl-C's path, as Terminated."""
    return Terminated(signum) if signum in TERMINATING else KeyboardInterrupt()


def _on_signal(signum, frame):
    _signalled.append(signum)
    _leave_a_closed_terminal(signum)
    raise _raised_for(signum)


def _leave_a_closed_terminal(signum):
    """After SIGHUP, stdout and stderr on the terminal that closed (every write there fails with
    EIO, even an empty one) are pointed at /dev/null: else the progress bar's next write ended the
    run with an OSError before it could stop after its step and save."""
    if signum != getattr(signal, "SIGHUP", None):
        return
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError as e:
            if e.errno == errno.EIO:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)


def _raise_if_signalled():
    """Raise again a signal's exception that something swallowed: one raised inside a ctypes
    callback (llvmlite's, while Numba loads a kernel) is printed as 'Exception ignored' and the
    command went on, a Ctrl-C lost."""
    if _signalled:
        raise _raised_for(_signalled[0])


def _quiet_broken_pipe():
    """stdout's reader is gone: point stdout at /dev/null so that nothing more (not even Python's
    flush at exit) complains, and end as a process killed by SIGPIPE would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    sys.exit(EXIT_BROKEN_PIPE)


def _replacing_unencodable():
    """The standard streams that were strict, now writing "?" for a character their encoding lacks:
    on Windows a redirected or piped stdout is in the ANSI code page (cp1252), which has no π, σ,
    ≥ or ᵀ, and `nbnet train --help > help.txt` (or `| more`) ended in "Error: 'charmap' codec
    can't encode character" instead of the help. (The console itself takes any character.)"""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError):  # closed, or a stream that refuses
                continue
            changed.append(stream)
    return changed


class Group(click.Group):
    def invoke(self, ctx):
        try:
            rv = super().invoke(ctx)
            _raise_if_signalled()
            return rv
        except BrokenPipeError:  # here, before click's own handling (a silent exit 1)
            _quiet_broken_pipe()
        except Terminated as e:
            raise Interrupted("terminated", e.exit_code) from None
        except KeyboardInterrupt:  # outside training (which stops cleanly itself): loading data, ...
            raise Interrupted("interrupted") from None

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:  # `nbnet --help`, `--version`: eager options print while parsing
            _quiet_broken_pipe()

    def main(self, args=None, prog_name=None, **extra):
        old = {}
        if threading.current_thread() is threading.main_thread():
            # SIGTERM and SIGHUP take Ctrl-C's path; the start-up handlers (nbnet/_startup.py) are replaced.
            old = _catch_signals(_on_signal)
        _signalled.clear()
        # Closed by the shell (`2>&-`), sys.stderr is None, and print(..., file=sys.stderr) then
        # writes to stdout: an Error line went into predict's output. Messages go nowhere instead.
        stderr = sys.stderr
        if stderr is None:
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - closed in finally
        replacing = _replacing_unencodable()
        try:
            self._main(args, prog_name, **extra)
        finally:  # called in process (tests, scripts): leave the caller's handlers and streams as they were
            for sig, handler in old.items():
                signal.signal(sig, handler)
            for stream in replacing:
                with contextlib.suppress(ValueError, OSError):
                    stream.reconfigure(errors="strict")
            if stderr is None:
                sys.stderr.close()
                sys.stderr = None

    def _main(self, args=None, prog_name=None, **extra):
        extra.pop("standalone_mode", None)
        debug = bool(os.environ.get("NBNET_DEBUG"))
        try:
            threads.env_fixed()
        except ValueError as e:
            dist.fail(str(e), 2)
        try:
            rv = super().main(args, prog_name or "nbnet", standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as e:  # plain `nbnet` (click >= 8.2)
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except BrokenPipeError:
            _quiet_broken_pipe()
        except click.ClickException as e:
            if debug:
                raise
            dist.fail(_one_line(e.format_message()), e.exit_code)
        except Terminated as e:
            dist.fail("terminated", e.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            dist.fail("interrupted", EXIT_INTERRUPTED)
        except (CliError, ValueError, OSError, RecursionError, MemoryError) as e:
            if debug:
                raise
            # dist.fail: one line per job, not per MPI process; a TrainingDiverged is raised by
            # every process at the same step.
            dist.fail(_one_line(e) or type(e).__name__, getattr(e, "exit_code", 1),
                      agreed=isinstance(e, TrainingDiverged))
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nbnet")
def cli():
    """nbnet: train, evaluate and use small neural networks with Numba kernels.

    Start with `nbnet train` (a few seconds on the built-in spiral data), then
    `nbnet train --dataset mnist --data-dir DIR --hidden 256,128 --save mnist.npz`.
    """


# ---------------------------------------------------------------------------------------------
# train


class FilePath(click.Path):
    """A file path option: never empty (an empty path is a mistake, not "no file")."""

    def __init__(self, **kwargs):
        super().__init__(dir_okay=False, **kwargs)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip() == "":
            self.fail("empty path", param, ctx)
        return super().convert(value, param, ctx)


class Finite(click.FloatRange):
    """A float in a range, and finite: `--lr nan` or `lr = inf` is an error like any other."""

    def convert(self, value, param, ctx):
        try:
            rv = super().convert(value, param, ctx)
        except click.BadParameter:
            # --lr 1e-400 reads as 0.0: "0.0 is not in the range x>0" named a value no one gave
            if isinstance(value, str) and re.search(r"[1-9]", re.split(r"[eE]", value)[0]):
                with contextlib.suppress(ValueError):
                    if float(value) == 0.0:
                        self.fail(f"{value} is too small for a float: it reads as 0.0", param, ctx)
            raise
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


MAX_CONFIG_BYTES = 1 << 20


def _read_config(ctx, param, path):
    """--config FILE.toml: its keys are option names; they become defaults the command line beats.
    Each value is checked as the command line checks it (`_option_value`)."""
    if path is None:
        return None
    try:
        import tomllib  # noqa: PLC0415
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # noqa: PLC0415
    from .files import read_input_bytes  # noqa: PLC0415

    try:
        raw = read_input_bytes(path, "--config", limit=MAX_CONFIG_BYTES)
        table = tomllib.loads(raw.decode("utf-8-sig"))  # a byte-order mark first, as Notepad writes, is no error
    except ValueError as e:  # not a regular file, too big, not UTF-8
        if isinstance(e, tomllib.TOMLDecodeError):
            raise click.BadParameter(f"{path}: not valid TOML ({e})") from None
        if isinstance(e, UnicodeDecodeError):  # its message names neither the file nor TOML
            raise click.BadParameter(f"{path}: not valid TOML (not UTF-8 text: byte {e.start})") from None
        raise click.BadParameter(_one_line(e)) from None
    except RecursionError:
        raise click.BadParameter(f"{path}: not valid TOML (nested too deeply)") from None
    params = {p.name: p for p in ctx.command.params if p.name != "config"}
    defaults, keys = {}, {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in params:
            raise click.BadParameter(f"{path}: unknown option {key!r}")
        if name in keys:  # TOML sees two keys; one of the values would be dropped silently
            raise click.BadParameter(f"{path}: {keys[name]!r} and {key!r} are one option")
        keys[name] = key
        value = _option_value(ctx, params[name], value, f"{path}: {key}")
        # click passes a default through the option's type again: --hidden's is text
        defaults[name] = ",".join(map(str, value)) if name == "hidden" else value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def _option_value(ctx, param, value, where):
    """`value` (from a TOML file or a checkpoint's config) converted and checked by `param`'s
    click type, range and callback, exactly as the same value on the command line would be: no
    truncation of 2.9 to 2, no truthy 5 for a flag, no table or list where a number belongs."""
    def bad(why):
        return click.BadParameter(f"{where} = {_short(value)}: {why}")

    if param.is_flag:
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if value is None:  # a checkpoint's "not set" (TOML has no null)
        if param.default is not None and param.name != "hidden":
            raise bad("expected a value")
        return None
    if isinstance(value, bool):
        raise bad(f"expected {_expected(param)}, not true/false")
    if isinstance(value, list) and param.name == "hidden":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad("expected a list of layer widths (integers)")
        text = ",".join(map(str, value))
    elif isinstance(value, int) and param.name == "hidden":  # hidden = 16: one hidden layer
        text = str(value)
    elif isinstance(value, (int, float)):
        if not isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)):
            raise bad(f"expected {_expected(param)}, not a number")
        if isinstance(value, float) and isinstance(param.type, click.types.IntParamType):
            raise bad(f"expected {_expected(param)}, not a number with a decimal point")  # click: "not a valid integer range"
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise bad(f"expected {_expected(param)}, not a {type(value).__name__}")
    try:
        converted = param.type_cast_value(ctx, text)
        if param.callback is not None and param.name == "hidden":
            converted = param.callback(ctx, param, converted)
    except click.BadParameter as e:
        raise bad(_one_line(e.message)) from None
    return converted


def _expected(param):
    """What a TOML value for `param` must be, in words: click's type names ("integer range",
    "choice", "file") said nothing of the quotes a string needs in TOML."""
    kind = param.type
    if param.name == "hidden":
        return 'layer widths, "256,128", [256, 128] or 256'
    if isinstance(kind, click.types.IntParamType):
        return "a whole number"
    if isinstance(kind, click.types.FloatParamType):
        return "a number"
    if isinstance(kind, click.Choice):
        return f"one of {', '.join(map(str, kind.choices))} (a quoted string)"
    if isinstance(kind, click.Path):
        return "a path (a quoted string)"
    return "a quoted string"


def _short(value):
    text = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_hidden(ctx, param, value):
    if value is None or isinstance(value, list):
        return value
    # "" is a model without hidden layers; else every field is a width in ASCII digits: int() also
    # took "５" and "1_0", and empty fields were skipped, so "256,,128" (a typo) trained silently.
    text = str(value).strip()
    fields = [v.strip() for v in text.split(",")] if text else []
    if len(fields) > 1000:
        raise click.BadParameter(f"{len(fields)} hidden layers: at most 1000")
    if not all(re.fullmatch(r"[0-9]+", v) for v in fields):
        raise click.BadParameter(f"{_short(value)}: expected comma-separated layer widths like 256,128")
    # bounded before int(): Python refuses to parse more than 4300 digits (a ValueError of its own)
    if any(len(v.lstrip("0")) > 18 for v in fields):
        raise click.BadParameter(f"{_short(value)}: a layer width of more than 18 digits is past any machine's memory")
    sizes = [int(v) for v in fields]
    if any(s < 1 for s in sizes):
        raise click.BadParameter(f"{_short(value)}: layer widths must be positive")
    return sizes


def _dataset_key(name):
    """Files are remembered by absolute path, so evaluate/resume work from another folder. Other
    names stay as given (an unknown one is reported as the user wrote it)."""
    if name is None or not name.endswith((".npz", ".csv")):
        return name
    return os.path.abspath(name)


@cli.command(name="train")
@click.option("--config", type=FilePath(), callback=_read_config, is_eager=True, expose_value=True,
              help="TOML file whose keys are option names (e.g. lr = 0.05, hidden = [256, 128]); "
                   "options given on the command line win.")
@click.option("--dataset", default="spiral", show_default=True,
              help="spiral (built in), mnist, fashion-mnist, or FILE.npz (arrays x, y) / FILE.csv (label first).")
@click.option("--data-dir", default=None,
              help="Folder with the four IDX files of mnist/fashion-mnist, gzipped or not "
                   "[default: $NBNET_DATA_DIR/<dataset>, else ~/.cache/nbnet/<dataset>].")
@click.option("--download", is_flag=True, help="Fetch missing mnist/fashion-mnist files into --data-dir (md5-checked).")
@click.option("--val-split", type=Finite(0, 1, max_open=True), default=0.0, show_default=True,
              help="Fraction of the training rows held out as a validation set (every dataset; shuffled with "
                   "--seed): shown beside train and test, and what --early-stopping and --save-best watch. "
                   "(Earlier versions used --val-split for what --test-split is now.)")
@click.option("--test-split", type=Finite(0, 1, min_open=True, max_open=True), default=0.2, show_default=True,
              help="Fraction of a spiral/.npz/.csv dataset held out as the test set (shuffled with --seed); "
                   "mnist and fashion-mnist keep their own test set.")
@click.option("--early-stopping", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop when the validation loss has not improved for N epochs (needs --val-split).")
@click.option("--save-best", type=FilePath(), default=None,
              help="Checkpoint (as --save writes) of the epoch with the lowest validation loss (needs --val-split).")
@click.option("--hidden", default="64,64", show_default=True, callback=_parse_hidden,
              help="Hidden layer widths, comma-separated (empty string: a linear model).")
@click.option("--activation", type=click.Choice(list(ACTIVATIONS)), default="relu", show_default=True)
@click.option("--loss", type=click.Choice(list(LOSSES)), default="cross-entropy", show_default=True,
              help="cross-entropy: classes (integer labels; softmax on the logits). mse: regression on float "
                   "targets, y (N,) or (N, D) of a .npz or a .csv's first column; reports MSE and R². bce: binary or "
                   "multi-label, 0/1 targets, y (N,) or (N, L) of a .npz or a .csv's first column; accuracy = "
                   "fraction of labels right.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Total epochs; with --resume, the run continues up to this many.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default="sgd", show_default=True)
@click.option("--lr", type=Finite(min=0, min_open=True), default=None,
              help="Learning rate [default: 0.1 for sgd, 0.001 for adam/adamw].")
@click.option("--momentum", type=Finite(0, 1, max_open=True), default=0.9, show_default=True,
              help="SGD momentum (ignored by adam/adamw).")
@click.option("--lr-schedule", type=click.Choice(SCHEDULES), default="constant", show_default=True,
              help="constant; cosine: per step from --lr to 0 over all epochs, lr·½(1+cos(π·step/total_steps)); "
                   "step: ×0.1 every max(1, epochs // 3) epochs.")
@click.option("--weight-decay", type=Finite(min=0), default=None,
              help="L2 penalty (sgd, adam) or decoupled decay (adamw) [default: 0, adamw 0.01].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds initialisation, shuffling and the train/test split: same seed, same run, bit for bit.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda needs numba-cuda and an NVIDIA GPU; there is no silent fall-back to the CPU.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for the kernels (1 .. NUMBA_NUM_THREADS), whatever the load "
                   "[default: all, fewer while other processes keep the cores busy].")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--save", type=FilePath(), default=None,
              help="Checkpoint written (atomically) after every epoch and on Ctrl-C; nb.load() reads it too.")
@click.option("--resume", type=FilePath(), default=None,
              help="Continue the run saved in this checkpoint up to --epochs total, bit for bit as if it had "
                   "never stopped; options not given are taken from it. (cosine/step schedules are "
                   "functions of --epochs: raising --epochs after a finished run changes the rates from there on.)")
@click.option("--metrics-out", type=FilePath(), default=None,
              help="JSON Lines file (.jsonl): one object per epoch (epoch, train/test loss and accuracy, seconds, "
                   "samples_per_second, lr); a .csv name gets CSV, one row per epoch under a header of those names "
                   "(a .json name is refused: json.load cannot read JSON Lines).")
@click.option("--plot", type=FilePath(), default=None,
              help="Save loss/accuracy curves to this .png (needs matplotlib: pip install 'nbnet[plot]').")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def train_cmd(ctx, **opts):
    """Train a multi-layer perceptron (Linear layers with an activation between; softmax
    cross-entropy on the logits, or --loss mse / bce) and report train/validation/test loss and
    accuracy (R² for mse) per epoch.

    Prints a progress bar with the running loss when stdout is a terminal, else one line per
    epoch. Ctrl-C stops after the current step and, with --save, writes a checkpoint to resume from.
    """
    try:
        comm = dist.world()  # under `mpiexec -n N` (N > 1): data-parallel, see nbnet/dist.py
    except RuntimeError as e:
        raise CliError(str(e)) from None
    resume = load_checkpoint(opts["resume"]) if opts["resume"] else None
    if resume is not None:
        resume.config = _checked_config(ctx, upgrade_config(resume.config), resume.path)
    if opts["save"] is None and resume is not None:
        opts["save"] = opts["resume"]  # --resume X keeps saving to X
    cfg = _resolve(ctx, opts, resume)
    _check_paths(opts, cfg)
    if comm.rank != 0:  # once the outputs are settled: process 0 alone writes them
        opts.update({key: None for key in WRITTEN_BY_PROCESS_0 if key in opts}, quiet=True)
    if (cfg["early_stopping"] is not None or opts["save_best"]) and not cfg["val_split"]:
        which = "--early-stopping" if cfg["early_stopping"] is not None else "--save-best"
        raise CliError(f"{which} chooses on validation data: give --val-split F (e.g. 0.1) too")
    if opts["plot"] is not None:
        _check_plot_available(opts["plot"])
    if opts["threads"] is not None:
        _set_threads(opts["threads"])
    elif comm.size > 1:  # the processes on one machine share its cores rather than each take all
        _set_threads(max(1, min(os.cpu_count() or 1, _max_threads()) // dist.local_size_rank()[0]), fixed=False)
    # where --resume chose the GPU, an error there should say the CPU can go on with the run
    from_checkpoint = " (the checkpoint's run was on the GPU: --device cpu goes on with it on the CPU)" if (
        resume is not None and _not_given(ctx, "device")) else ""
    if cfg["device"] == "cuda":
        _check_cuda_importable(from_checkpoint)
    for key in OUTPUT_OPTIONS:
        if opts.get(key) is not None:
            _check_writable(opts[key], key)
    out = Output(quiet=opts["quiet"])

    if resume is not None:
        _check_resume_fits(resume, cfg)

    dtype = np.dtype(cfg["dtype"]).type
    for name in ("lr", "momentum", "weight_decay"):
        if cfg[name] is not None and abs(cfg[name]) > float(np.finfo(dtype).max):
            raise CliError(f"--{name.replace('_', '-')} {cfg[name]:g} is too large for {cfg['dtype']}")
        if cfg[name] and dtype(cfg[name]) == 0:  # else a run that silently changes nothing
            raise CliError(f"--{name.replace('_', '-')} {cfg[name]:g} is 0 in {cfg['dtype']} (too small)")
    data = _load_data(cfg["dataset"], cfg["data_dir"], cfg["test_split"], cfg["seed"], opts["download"], dtype,
                      cfg["loss"])
    x_tr, y_tr, x_val, y_val = split_validation(data[0], data[1], cfg["val_split"], cfg["seed"])
    data = (x_tr, y_tr, data[2], data[3])
    val_data = None if x_val is None else (x_val, y_val)
    # What the checkpoints say they were trained on: a file changed since would resume another run
    data_print = None
    if opts["save"] or opts["save_best"] or resume is not None:  # (under MPI only process 0 saves)
        data_print = dist.data_fingerprint((*data, x_val, y_val))
    if resume is not None and resume.data is not None and resume.data != data_print:
        raise CliError(f"{resume.path} does not fit: it was trained on other data than --dataset {cfg['dataset']} "
                       f"holds now (then {resume.data}; now {data_print})")
    if resume is not None:
        model, state = resume.model, resume.state
    else:
        outputs = int(max(data[1].max(), data[3].max())) + 1 if cfg["loss"] == "cross-entropy" else data[1].shape[1]
        if outputs < 2 and cfg["loss"] == "cross-entropy":  # said of the data here, not of the model it built
            raise CliError(f"--dataset {cfg['dataset']}: every label is 0, one class: cross-entropy needs at least 2 "
                           "(a yes/no target takes --loss bce, values --loss mse)")
        check_memory([data[0].shape[1], *cfg["hidden"], outputs], dtype, min(cfg["batch_size"], len(data[0])),
                     cfg["optimizer"])
        if cfg["loss"] == "cross-entropy" and comm.rank == 0:
            _say_unused_classes(cfg["dataset"], outputs, data[1], data[3])
        model = build_model(data[0].shape[1], cfg["hidden"], outputs, cfg["activation"], dtype, cfg["seed"])
        state = None
    check_data(model, data if val_data is None else (*data, *val_data), cfg["loss"])
    if cfg["device"] == "cuda":
        try:
            if comm.size > 1:
                from .gpu import use_device_of  # noqa: PLC0415

                use_device_of(dist.local_size_rank()[1])  # one GPU per process, where there are enough
            model.to("cuda")
        except Exception as e:  # noqa: BLE001 - whatever the GPU stack raises, the user gets one line
            raise CliError(f"--device cuda: {_one_line(e) or type(e).__name__}{from_checkpoint}") from None
    opt = make_optimizer(cfg["optimizer"], model, cfg["lr"], cfg["momentum"], cfg["weight_decay"])
    if resume is not None:
        try:
            opt.load_state_dict(resume.optim_state)
        except ValueError as e:  # the entries the checkpoint holds: its name says which file
            raise CliError(f"{resume.path}: cannot resume its optimizer state ({e})") from None
        # The command line may change these hyper-parameters on resume; the schedule sets lr.
        for name in ("momentum", "weight_decay"):
            if hasattr(opt, name) and cfg[name] is not None:
                setattr(opt, name, float(cfg[name]))

    if comm.size > 1:  # every process got here, with the same options, data and weights (else Error:)
        comm.agree_setup(dist.fingerprint(cfg, data, model.parameters(),
                                          label=lambda key: "--" + key.replace("_", "-")))  # as errors name options
    metrics_fd = _open_metrics(opts["metrics_out"]) if opts["metrics_out"] else None
    # A .csv name gets CSV (as predict's --output does), its columns fixed before the first row
    columns = None
    if metrics_fd is not None and opts["metrics_out"].lower().endswith(".csv"):
        columns = metrics_columns(cfg["loss"], val_data is not None)
        append_whole(metrics_fd, (",".join(columns) + "\n").encode(), opts["metrics_out"])

    def write_metrics(history):
        text = "".join((json_line(m) if columns is None else csv_line(m, columns)) + "\n" for m in history)
        append_whole(metrics_fd, text.encode(), opts["metrics_out"])

    # A finished run resumed with its --epochs trains nothing, and says so: refused, it could not
    # write the --metrics-out, --plot or --save that a finished run's checkpoint holds all of.
    finished = resume is not None and resume.state.epoch == cfg["epochs"]  # (stopped inside it: refused above)
    # --save gets the run as it is (as it would after training), unless it is the very file resumed
    saves = opts["save"] and not (finished and _same_path(opts["save"], opts["resume"]))
    try:
        if metrics_fd is not None and resume is not None:
            write_metrics(resume.state.history)  # the file always holds the whole run
        out.start(cfg, model, data, resume, val_data)
        if finished:
            out.info(f"{resume.path} already has all {cfg['epochs']} epochs of --epochs {cfg['epochs']}: "
                     "nothing to train (raise --epochs to train on)")

        saved, saved_best = [], []  # the epochs this run saved to --save, and to --save-best

        def on_epoch(st, metrics):
            # save first: a closed stdout (`| head -1`) must not lose the epoch
            if opts["save"]:
                save_checkpoint(opts["save"], model, opt, st, cfg, data_print)
                saved.append(st.epoch)
            if metrics_fd is not None:
                write_metrics([metrics])
            out.epoch(metrics, cfg["epochs"])

        def on_best(st, metrics):
            if opts["save_best"]:
                save_checkpoint(opts["save_best"], model, opt, st, cfg, data_print)
                saved_best.append(st.epoch)

        # numba-cuda's own errors (out of GPU memory at a large batch, a lost device) are no
        # ValueError or MemoryError: they came out of training as a traceback
        gpu_errors = ()
        if cfg["device"] == "cuda":
            from .gpu import device_errors  # noqa: PLC0415 - imported above for --device cuda already

            gpu_errors = device_errors()
        with StopOnSignals() as stopper, not_saying_compiling() if opts["quiet"] else contextlib.nullcontext(), \
                warnings.catch_warnings() if finished else contextlib.nullcontext():
            if finished:  # said above, as a line of the run's (the filter only then: the warnings
                warnings.simplefilter("ignore", NothingToTrain)  # module's state is process-wide)
            try:
                history = train(
                    model, opt, data, epochs=cfg["epochs"], batch_size=cfg["batch_size"], seed=cfg["seed"],
                    lr_schedule=cfg["lr_schedule"], lr=cfg["lr"], state=state, val_data=val_data, loss=cfg["loss"],
                    early_stopping=cfg["early_stopping"], on_best=on_best if val_data is not None else None,
                    on_step=out.step if out.bar else None, on_epoch=on_epoch, should_stop=stopper.requested,
                    comm=comm,
                )
            except TrainingDiverged as e:
                # What to change: the rate first; regression targets are taken as they are, and
                # targets in the thousands make gradients a step of --lr 0.1 cannot take.
                scale = " or scale the targets to about unit size" if cfg["loss"] == "mse" else ""
                hint = f"try a lower --lr than {cfg['lr']:g}{scale}"
                if not opts["save"]:
                    raise TrainingDiverged(f"{e}; {hint}") from None
                # Say what --save holds: a file from an earlier run looked like this one's last good epoch.
                if saved:
                    held = f"{opts['save']} holds epoch {saved[-1]} (resume from it with a lower --lr)"
                elif resume is not None and _same_path(opts["save"], opts["resume"]):
                    held = f"{opts['save']} holds the checkpoint this run resumed from (resume with a lower --lr)"
                else:
                    held = f"this run saved nothing to {opts['save']}; {hint}"
                raise TrainingDiverged(f"{e}; {held}") from None
            except TrainingInterrupted as e:
                signum = _agreed_signal(comm, stopper.signum)
                code = 128 + signum if signum in TERMINATING else EXIT_INTERRUPTED
                if comm.rank != 0:  # every process stops at the same step; process 0 reports
                    sys.exit(code)
                out.end_bar()
                what = "Terminated" if signum in TERMINATING else "Interrupted"
                where = f"epoch {e.state.epoch + 1} after step {e.state.step}"
                if opts["save"]:
                    save_checkpoint(opts["save"], model, opt, e.state, cfg, data_print)
                    msg = f"{what} in {where}: checkpoint saved to {opts['save']} (continue with --resume {opts['save']})"
                else:
                    msg = f"{what} in {where}: nothing saved (use --save PATH to keep a resumable checkpoint)"
                if opts["plot"] is not None and e.state.history:  # the epochs done, as --metrics-out has them
                    from .plot import plot_curves  # noqa: PLC0415 - optional (matplotlib), checked before training

                    plot_curves(e.state.history, opts["plot"])
                    msg += f"; curves of the {len(e.state.history)} epoch(s) done saved to {opts['plot']}"
                click.echo(msg, err=True)
                sys.exit(code)
            except gpu_errors as e:
                full = " (its memory is full: a smaller --batch-size or --hidden needs less)" if (
                    "OUT_OF_MEMORY" in str(e)) else ""
                raise CliError(f"--device cuda: the GPU failed in training: {_one_line(e) or type(e).__name__}{full}") from None
            finally:  # whatever ended it (an Error: line comes next)
                out.end_bar()
        if finished and saves:
            save_checkpoint(opts["save"], model, opt, state, cfg, data_print)
    finally:
        if metrics_fd is not None:
            os.close(metrics_fd)
    if history.best_epoch is not None:
        n = cfg["early_stopping"]
        why = f"early stopping: no better validation loss for {n} epoch{'s' * (n != 1)}; " if history.stopped_early else ""
        best = history[history.best_epoch - 1]
        # A best epoch from before --resume is in no file this run wrote: the checkpoint resumed
        # holds a later epoch's weights, and --save-best may be new, or another run's file.
        where = "" if not opts["save_best"] else (
            f", saved to {opts['save_best']}" if saved_best[-1:] == [history.best_epoch]
            else f", before --resume: this run saved nothing to {opts['save_best']}")
        out.info(f"{why}best epoch {history.best_epoch} (validation loss {best['val_loss']:.4f}){where}")
    if saves:
        out.info(f"saved {opts['save']}")
    if opts["plot"] is not None:
        from .plot import plot_curves  # noqa: PLC0415 - optional (matplotlib)

        plot_curves(history, opts["plot"])
        out.info(f"saved {opts['plot']}")


def _agreed_signal(comm, signum):
    """The signal the job stops for, the same on every process (all stop at one step, whichever
    was signalled): SIGTERM or SIGHUP where any process got one, else Ctrl-C. A SIGTERM to a
    process other than 0 (a scheduler's, a `kill` of one) was reported by process 0, which saw only
    the agreed stop, as "Interrupted", exit 130."""
    counts = comm.sums(*(float(signum == sig) for sig in TERMINATING))
    return next((sig for sig, n in zip(TERMINATING, counts) if n), signal.SIGINT)


def _not_given(ctx, name):
    """Whether option `name` was left to its default (neither the command line nor --config gave it)."""
    return ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, None)


def _resolve(ctx, opts, resume):
    """The run's config: options from the command line or --config, then (on --resume) the
    checkpoint's, then the defaults."""
    cfg = {k: v for k, v in opts.items() if k not in NOT_CONFIG}
    cfg["dataset"] = _dataset_key(cfg["dataset"])
    if cfg["data_dir"] is not None:
        cfg["data_dir"] = os.path.abspath(cfg["data_dir"])
    if resume is not None:
        for k, v in resume.config.items():
            if k in cfg and _not_given(ctx, k):
                cfg[k] = v
    if cfg["lr"] is None:
        cfg["lr"] = DEFAULT_LR[cfg["optimizer"]]
    return cfg


def _checked_config(ctx, config, path):
    """A checkpoint's stored options, each checked by its option's click type and range (as on
    the command line); a value that does not pass is a damaged checkpoint."""
    params = {p.name: p for p in ctx.command.params if p.name not in NOT_CONFIG}
    checked = dict(config)
    for key, value in config.items():
        if key in params:
            try:
                checked[key] = _option_value(ctx, params[key], value, f"stored option {key}")
            except click.BadParameter as e:
                raise CliError(f"{path}: damaged checkpoint ({e.message})") from None
    return checked


def _check_paths(opts, cfg):
    """Every output of the run is checked against every input (after resolving links): an output
    that is an input is an error, except --save over the --resume checkpoint (that is the point
    of resuming). Two outputs may not be one file either."""
    inputs = {"--config": opts.get("config"), "--resume": opts.get("resume")}
    if cfg["dataset"] is not None and cfg["dataset"].endswith((".npz", ".csv")):
        inputs["--dataset"] = cfg["dataset"]
    elif cfg["dataset"] in datasets.IMAGE_DATASETS:
        data_dir = cfg["data_dir"] or datasets.default_data_dir(cfg["dataset"])
        found = datasets.find_idx(cfg["dataset"], data_dir)
        for role, base in datasets.IDX_FILES:
            # one not there yet is where --download will write it, before any output is written
            path = found.get(role, os.path.join(data_dir, base + ".gz"))
            inputs[f"{cfg['dataset']} {role.replace('_', ' ')} file"] = path
    outputs = {"--" + k.replace("_", "-"): opts.get(k) for k in OUTPUT_OPTIONS}
    try:
        check_outputs(outputs, inputs, allowed={("--save", "--resume")})
    except ValueError as e:
        raise CliError(str(e)) from None


def json_line(obj):
    """One line of JSON, always valid: a NaN or Inf number (which JSON has not) becomes null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), allow_nan=False)


def metrics_columns(loss, validation):
    """The names of an epoch's metrics, in nb.train's order: --metrics-out's CSV columns."""
    metric = METRIC[loss]
    splits = ("train", "val", "test") if validation else ("train", "test")
    return ["epoch", *(f"{split}_{name}" for split in splits for name in ("loss", metric)),
            "lr", "seconds", "samples_per_second"]


def csv_line(metrics, columns):
    """One epoch's metrics as a CSV row of `columns`: numbers with all their digits, an empty field
    for one the epoch has not (a history from an older nbnet) or that is not finite."""
    def field(v):
        return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else repr(v)

    return ",".join(field(metrics.get(key)) for key in columns)


def _check_resume_fits(resume, cfg):
    if not resume.config:
        raise CliError(f"{resume.path}: a saved model, not a training checkpoint: cannot resume from it")
    for key in MUST_MATCH_ON_RESUME:
        if key in resume.config and resume.config[key] != cfg[key]:
            opt = "--" + key.replace("_", "-")
            raise CliError(
                f"{resume.path} does not fit: it was trained with {opt} {_show(resume.config[key])}, "
                f"this run has {_show(cfg[key])}"
            )
    from .layers import Linear  # noqa: PLC0415

    # The options must describe the stored model, or the run would report (and save as its
    # config) one network while it trains another.
    layers = resume.model.layers
    linears = [layer for layer in layers if isinstance(layer, Linear)]
    for key, have in (("hidden", [layer.out_features for layer in linears[:-1]]), ("dtype", resume.model.dtype.name)):
        if have != cfg[key]:
            raise CliError(f"{resume.path} does not fit: its model has --{key} {_show(have)}, this run has {_show(cfg[key])}")
    activation = ACTIVATIONS[cfg["activation"]]
    if [type(layer) for layer in layers] != [activation if i % 2 else Linear for i in range(2 * len(linears) - 1)]:
        raise CliError(f"{resume.path} does not fit: its model's layers are "
                       f"{', '.join(type(layer).__name__ for layer in layers)}, this run has --activation {cfg['activation']}")
    done = resume.state.epoch
    if cfg["epochs"] < done and resume.state.seen == 0:  # (== done: a finished run, see train_cmd)
        raise CliError(f"{resume.path} already has {done} epochs, more than --epochs {cfg['epochs']}: "
                       f"--epochs is a total, give {done + 1} or more to train on")
    if cfg["epochs"] <= done and resume.state.seen:  # stopped inside epoch done + 1: --epochs is a total, so finish it
        raise CliError(
            f"{resume.path} stopped in epoch {done + 1} (step {resume.state.step}): "
            f"--epochs {cfg['epochs']} would train nothing; give --epochs {done + 1} or more to finish it"
        )


def _show(v):
    return (",".join(map(str, v)) or '""') if isinstance(v, list) else str(v)


def upgrade_config(config):
    """A checkpoint's config in today's option names. Before --test-split existed, `val_split` was
    the fraction held out as the test set and there was no validation set."""
    config = dict(config)
    if config and "test_split" not in config:
        config["test_split"] = config.pop("val_split", 0.2)
        config["val_split"] = 0.0
    if config:
        config.setdefault("loss", "cross-entropy")  # before --loss, every run was a classifier
        config.setdefault("early_stopping", None)
    return config


def _load_data(dataset, data_dir, test_split, seed, download, dtype, loss="cross-entropy"):
    """(x_train, y_train, x_test, y_test) as the loss wants them: features in `dtype`, converted once
    from what the file holds; integer labels for cross-entropy, else float targets of `dtype` made (N, D)."""
    x_tr, y_tr, x_te, y_te = datasets.load(dataset, data_dir=data_dir, test_split=test_split, seed=seed,
                                           download=download, targets=TARGETS[loss], dtype=dtype)
    return x_tr, _targets(y_tr, loss, dtype), x_te, _targets(y_te, loss, dtype)


def _targets(y, loss, dtype):
    """A file's y as the loss wants it: integer labels for cross-entropy, else float targets of
    `dtype` made (N, D)."""
    return y if loss == "cross-entropy" else np.ascontiguousarray(y.reshape(len(y), -1), dtype=dtype)


def _check_writable(path, option):
    """Fail before training, not after the first epoch, when an output cannot be written."""
    name = "--" + option.replace("_", "-")
    in_the_way = file_in_the_way(path)
    if in_the_way is not None:
        raise CliError(f"{name} {path}: {in_the_way} is a file, not a folder")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise CliError(f"{name} {path}: cannot create folder {folder} ({e.strerror or e})") from None
    if not os.access(folder, os.W_OK):
        raise CliError(f"{name} {path}: folder {folder} is not writable")
    if os.path.isdir(path):
        raise CliError(f"{name} {path}: is a folder")
    if names_a_folder(path):
        raise CliError(f"{name} {path}: names a folder (it ends in a separator), not a file")
    if option == "metrics_out" and path.lower().endswith(".json"):  # a file json.load would fail on
        raise CliError(f"{name} {path}: it gets JSON Lines, one object per line, which json.load cannot read: "
                       "name it .jsonl (pandas.read_json(path, lines=True) reads it), or .csv for CSV")
    if option != "metrics_out":  # that one is opened before training (_open_metrics)
        try:  # replaced atomically: only a regular file
            check_replaceable(path, name)
        except ValueError as e:
            raise CliError(str(e)) from None
        try:
            check_creatable(path)
        except OSError as e:
            raise CliError(f"{name} {path}: cannot write it ({e.strerror or e})") from None


def _open_metrics(path):
    """--metrics-out, opened before the first epoch: its file descriptor, which the run appends whole
    lines to (files.append_whole). _check_writable asked the folder; a file system can still refuse
    the file itself (/proc, a read-only or full mount, an ACL), and the error names the option, as
    the others do. Opened without blocking: a FIFO that no process reads is an error, not a wait for
    ever (one that is read gets the lines as they come)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        why = "a FIFO that no process reads" if e.errno == errno.ENXIO else e.strerror or e
        if isinstance(e, PermissionError) and sys.platform == "win32":  # Windows refuses a file open elsewhere
            why = f"another program has it open, or it is read-only: {why}"
        raise CliError(f"--metrics-out {path}: cannot write it ({why})") from None
    if hasattr(os, "O_NONBLOCK"):  # not on Windows, whose os.set_blocking is from Python 3.12
        os.set_blocking(fd, True)
    return fd  # closed after training


def _check_plot_available(path):
    """matplotlib is there and can write path's format: checked before training, not after it."""
    try:
        from nbnet.plot import file_format  # noqa: PLC0415
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install 'nbnet[plot]'") from None
    if importlib.util.find_spec("matplotlib") is None:
        raise CliError("--plot needs matplotlib: pip install 'nbnet[plot]'")
    try:
        file_format(path)
    except ValueError as e:
        raise CliError(f"--plot {e}") from None


def _set_threads(n, fixed=True):
    """n threads: the user's `--threads` (fixed, whatever the load), or with fixed=False a limit
    nbnet.threads may lower while other processes keep cores busy."""
    import numba  # noqa: PLC0415

    top = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= top:
        raise CliError(f"--threads {n}: must be between 1 and {top} (NUMBA_NUM_THREADS)")
    if fixed:
        threads.fix(n)
    else:
        numba.set_num_threads(n)


def _max_threads():
    import numba  # noqa: PLC0415

    return numba.config.NUMBA_NUM_THREADS


def _check_cuda_importable(hint=""):
    try:
        import nbnet.gpu  # noqa: F401, PLC0415
    except Exception as e:  # noqa: BLE001
        raise CliError(f"--device cuda: GPU support is not usable ({_one_line(e) or type(e).__name__}){hint}") from None


class StopOnSignals:
    """While active, the first Ctrl-C, SIGTERM or SIGHUP asks the loop to stop after the current
    step (so the checkpoint holds a completed step); a second one interrupts at once. `.signum` is
    the signal that asked."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def requested(self):
        return self.signum is not None

    def _handler(self, signum, frame):
        _leave_a_closed_terminal(signum)
        if self.signum is not None:
            raise _raised_for(signum)
        self.signum = signum

    def __enter__(self):
        _raise_if_signalled()  # a signal before training (see there) stops it before its first step
        if threading.current_thread() is threading.main_thread():
            self._old = _catch_signals(self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _duration(seconds):
    """An epoch's time as the epoch line shows it: a fast one (the spiral data's take ~1 ms) in
    milliseconds, where "0.00s" said nothing."""
    return f"{seconds:.2f}s" if seconds >= 0.1 else f"{1e3 * seconds:.3g}ms"


def _say_unused_classes(dataset, outputs, *labels):
    """Labels 60000, 60001, 60002 (a year, an id) made a model of 60,003 outputs, 60,000 of them for
    classes no row has, silently: it trains (slowly, and each unused class takes some probability).
    Said when most of the outputs are unused, not for labels that start at 1."""
    used = int(np.unique(np.concatenate([y for y in labels if y is not None and len(y)])).size)
    if outputs - used >= max(10, used + 1):
        click.echo(f"note: --dataset {dataset}: the labels run up to {outputs - 1}, so the model has {outputs:,} "
                   f"outputs, but only {used} different labels occur: numbered 0 .. {used - 1}, they need {used}", err=True)


def _resumed_at(state):
    """Where a resumed run goes on, in the words of the line its interruption printed ("in epoch 4
    after step 5626"): "from epoch 3, step 5626" read as a restart of epoch 3, whose steps were done."""
    if state.seen:  # stopped inside the epoch after those done
        return f" in epoch {state.epoch + 1} after step {state.step}"
    return f" after epoch {state.epoch} (step {state.step})"


def _scores(m, label_accuracy):
    """An epoch's metrics as the epoch line shows them: "train loss 0.1234 acc 96.50%", then val and test."""
    parts = []
    for split in ("train", "val", "test"):
        if f"{split}_loss" not in m:
            continue
        acc = "label acc" if label_accuracy else "acc"
        score = (f" {acc} {100 * m[f'{split}_accuracy']:.2f}%" if f"{split}_accuracy" in m
                 else f" R² {m[f'{split}_r2']:.4f}" if f"{split}_r2" in m
                 else "")  # a checkpoint's history may hold a loss alone (nbnet info reads it)
        parts.append(f"{split} loss {m[f'{split}_loss']:.4f}{score}")
    return parts


class Output:
    """A progress bar with the running loss on a terminal; one line per epoch otherwise."""

    def __init__(self, quiet):
        self.quiet = quiet
        # sys.stdout is None where the shell closed it (`>&-`): then nothing is printed
        self.bar = not quiet and sys.stdout is not None and sys.stdout.isatty()
        self.epochs = "?"
        self._last = 0.0
        self._drawn = 0  # characters of a bar drawn on the current line (0: the cursor is at a line's start)

    def info(self, msg):
        if not self.quiet:
            click.echo(msg)

    def start(self, cfg, model, data, resume, val_data=None):
        self.label_accuracy = cfg.get("loss") == "bce"
        self.scheduled = cfg.get("lr_schedule", "constant") != "constant"
        from .layers import Linear  # noqa: PLC0415

        sizes = [layer.in_features for layer in model.layers if isinstance(layer, Linear)]
        sizes.append([layer for layer in model.layers if isinstance(layer, Linear)][-1].out_features)
        self.epochs = cfg["epochs"]
        what = "resuming" if resume else "training"
        done = "" if not resume else _resumed_at(resume.state)
        self.info(
            f"{what} {'-'.join(map(str, sizes))} {cfg['activation'] if len(sizes) > 2 else 'linear'} on "
            f"{os.path.basename(cfg['dataset'])} "
            f"({len(data[0])} train, {'' if val_data is None else f'{len(val_data[0])} validation, '}"
            f"{len(data[2])} test){done}: {cfg['optimizer']} lr {cfg['lr']:g} "
            f"{cfg['lr_schedule']}, batch {cfg['batch_size']}, {cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''}, {cfg['device']}"
        )

    def step(self, state, batch, n_batches, running_loss):
        now = time.perf_counter()
        if batch < n_batches and now - self._last < 0.1:
            return
        self._last = now
        # Within the terminal's width: a line longer than it wraps, and each \r then redraws only
        # the last row of it, leaving a new line per update (a 30-column terminal, a split pane).
        columns = max(20, shutil.get_terminal_size().columns) - 1  # (asked again: a window can be resized)
        head, tail = f"epoch {state.epoch + 1}/{self.epochs} ", f" {batch}/{n_batches} loss {running_loss:.4f}"
        # the same bar all epoch long: room for the widest count and a loss of two digits
        width = min(30, columns - len(head) - len(f" {n_batches}/{n_batches} loss 00.0000") - 2)
        if width >= 5:
            filled = width * batch // n_batches
            text = f"{head}[{'#' * filled}{'.' * (width - filled)}]{tail}"[:columns]
        else:  # no room for a bar
            text = (head + tail[1:])[:columns]
        sys.stdout.write("\r" + text + " " * (min(self._drawn, columns) - len(text)))
        sys.stdout.flush()
        self._drawn = max(self._drawn, len(text))

    def end_bar(self):
        """End a bar left half-drawn (training stopped inside an epoch), so that what comes next
        (the Interrupted line, an Error: line on stderr, the shell's prompt) starts a line of its own.
        Idempotent; a terminal gone meanwhile is not an error of its own."""
        if self._drawn:
            self._drawn = 0
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.write("\n")
                sys.stdout.flush()

    def epoch(self, m, epochs):
        if self.quiet:
            return
        parts = _scores(m, getattr(self, "label_accuracy", False))
        # The rate the schedule gave the epoch's last step, as --metrics-out has it: a constant one
        # is the first line's.
        if getattr(self, "scheduled", False) and "lr" in m:
            parts.append(f"lr {m['lr']:.3g}")
        line = (
            f"epoch {m['epoch']}/{epochs}  " + "  ".join(parts) +
            f"  {_duration(m['seconds'])}  {m['samples_per_second']:,.0f} samples/s"
        )
        if self._drawn:  # over the bar, all of it
            line = "\r" + line + " " * (self._drawn - len(line))
            self._drawn = 0
        click.echo(line)


# ---------------------------------------------------------------------------------------------
# evaluate, predict, info


@cli.command(name="evaluate")
@click.option("--checkpoint", type=FilePath(), required=True,
              help="A checkpoint from `nbnet train --save` (or a model.save file).")
@click.option("--dataset", default=None,
              help="spiral, mnist, fashion-mnist, FILE.npz or FILE.csv [default: the checkpoint's]. "
                   "Scores the test set (for files: the --test-split part held out in training; "
                   "--all-rows: every row).")
@click.option("--all-rows", is_flag=True,
              help="Score every row of a .npz or .csv file (a test file of its own), not the --test-split part.")
@click.option("--data-dir", default=None, help="Folder with the IDX files [default: the checkpoint's].")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object with loss and accuracy (mse: loss, mse and r2).")
@click.option("--loss", "loss_name", type=click.Choice(list(LOSSES)), default=None,
              help="The loss a model.save file's model was trained with [default: cross-entropy; a checkpoint's own].")
def evaluate_cmd(checkpoint, dataset, all_rows, data_dir, as_json, loss_name):
    """Loss and accuracy of a saved model on a dataset's test set."""
    _check_stdout("the scores")
    ck = load_checkpoint(checkpoint)
    cfg = _stored_config(ck)
    named = dataset
    if dataset is None:
        dataset = cfg.get("dataset")
        if dataset is None:
            raise CliError(f"{checkpoint} stores no dataset: pass --dataset")
        if data_dir is None:
            data_dir = cfg.get("data_dir")
    dtype = ck.model.dtype.type
    loss_name = _checkpoint_loss(cfg, loss_name, checkpoint)
    key = _dataset_key(dataset)
    is_file = os.fspath(key).endswith((".npz", ".csv"))
    if all_rows and not is_file:
        raise CliError(f"--all-rows is for a .npz or .csv file; {dataset}'s test set is already a set of its own")
    if all_rows:
        x_test, y_test = datasets.load_file(key, TARGETS[loss_name], dtype)
        y_test = _targets(y_test, loss_name, dtype)
    elif key in datasets.IMAGE_DATASETS and loss_name == "cross-entropy":  # the test files alone
        _, _, x_test, y_test = datasets.load_idx_dataset(key, data_dir or datasets.default_data_dir(key), dtype=dtype,
                                                         test_only=True)
    else:
        _, _, x_test, y_test = _load_data(key, data_dir, cfg.get("test_split", 0.2), cfg.get("seed", 0), False, dtype,
                                          loss_name)
    # A test file of its own scored as if it were the training file (a fifth of its rows), or the
    # training file scored whole (the rows it trained on among them): both said, after the scores.
    trained_on = is_file and _same_path(key, cfg.get("dataset"))
    check_data(ck.model, (None, None, x_test, y_test), loss_name)
    loss, metric = evaluate(ck.model, x_test, y_test, loss=loss_name)
    _raise_if_signalled()  # before the result is shown: an interrupted command prints none
    if all_rows and trained_on:
        click.echo(f"note: scored every row of {dataset}, the file it was trained on: its training rows among "
                   "them", err=True)
    elif is_file and not all_rows and named is not None and not trained_on:
        # "as held out in training" read as if this file had been: it is another file than the model's
        other = f"the model was trained on {cfg['dataset']}, not on it" if cfg.get("dataset") else \
            "as a run trained on it would hold out"
        click.echo(f"note: scored only the --test-split part of {dataset} ({len(y_test)} rows; {other}); "
                   "--all-rows scores every row", err=True)
    if loss_name == "mse":
        if as_json:
            click.echo(json_line({"loss": loss, "mse": loss, "r2": metric, "samples": len(y_test), "dataset": dataset}))
        else:
            click.echo(f"{dataset}: test MSE {loss:.6g}  R² {metric:.4f}  ({len(y_test)} samples)")
        return
    what = "label accuracy" if loss_name == "bce" else "accuracy"
    if as_json:
        click.echo(json_line({"loss": loss, "accuracy": metric, "samples": len(y_test), "dataset": dataset}))
    else:
        click.echo(f"{dataset}: test loss {loss:.4f}  {what} {100 * metric:.2f}%  ({len(y_test)} samples)")


def _same_path(a, b):
    """Whether two dataset names are one file (b None: a checkpoint that names none)."""
    if b is None:
        return False
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError, TypeError):
        return os.path.abspath(a) == os.path.abspath(b)


def _check_stdout(what, hint=""):
    """A command whose result is its output refuses a closed stdout (`>&-`), where Python makes
    sys.stdout None and click.echo then drops every line: the work would be done, nothing shown,
    and the exit status 0."""
    if sys.stdout is None:
        raise CliError(f"stdout is closed: nowhere to print {what}{hint}")


def _stored_config(ck):
    """A checkpoint's options as evaluate and predict use them (dataset, seed, loss, ...): checked as
    `train --resume` checks them, so a damaged value is one line, not a traceback deep in a loader."""
    return _checked_config(click.Context(train_cmd), upgrade_config(ck.config), ck.path)


def _checkpoint_loss(cfg, given, checkpoint):
    """The loss a checkpoint was trained with; --loss names it for a model.save file, which stores
    none. One that contradicts the stored loss is an error: scored with another loss, a model's
    outputs gave numbers that mean nothing (the MSE of bce logits against 0/1 labels)."""
    stored = cfg.get("loss")
    if given is not None and stored is not None and given != stored:
        raise CliError(f"--loss {given}: the model in {checkpoint} was trained with --loss {stored}")
    return given or stored or "cross-entropy"


@cli.command(name="predict")
@click.option("--checkpoint", type=FilePath(), required=True,
              help="A checkpoint from `nbnet train --save` (or a model.save file).")
@click.option("--output", "-o", type=FilePath(), default=None,
              help="Where to write the predictions: .csv (one row per line), .npy (the array `pred`) or "
                   ".npz (arrays `pred` and `probs`) [default: one row per line on stdout].")
@click.option("--loss", "loss_name", type=click.Choice(list(LOSSES)), default=None,
              help="The loss a model.save file's model was trained with [default: cross-entropy; a checkpoint's own].")
@click.argument("input_path", metavar="INPUT", type=FilePath())
def predict_cmd(checkpoint, output, input_path, loss_name):
    """Predict each row of INPUT: a .npz with array x (N, D), a .npy of x (np.save's), a .csv of
    features (no label column), or an IDX image file (e.g. t10k-images-idx3-ubyte.gz, scaled to [0, 1]).

    Prints, per row: the class (cross-entropy); the values, comma-separated (mse); 0 or 1 for one
    binary output, or the set of labels predicted yes, e.g. {0,3} (bce, multi-label). `pred` in
    .npy/.npz: classes (N,) int64, values (N, D), or 0/1 labels (N, L) int64; `probs`: class
    probabilities, or σ(z) for bce (absent for mse)."""
    if output is None:
        _check_stdout("the predictions", " (or give --output FILE)")
    if output is not None and not output.endswith((".csv", ".npy", ".npz")):
        raise CliError(f"--output {output}: use a .csv, .npy or .npz file name")
    try:
        check_outputs({"--output": output}, {"INPUT": input_path, "--checkpoint": checkpoint})
    except ValueError as e:
        raise CliError(str(e)) from None
    if output is not None:  # before the work, and naming --output, not nbnet's temporary file
        _check_writable(output, "output")
    ck = load_checkpoint(checkpoint)
    model, loss_name = ck.model, _checkpoint_loss(_stored_config(ck), loss_name, checkpoint)
    x = datasets.load_inputs(input_path, model.dtype)  # in the model's dtype, never through another
    in_features = next(layer.in_features for layer in model.layers if hasattr(layer, "in_features"))
    if x.shape[1] != in_features:
        # the training file itself is the usual case of one too many: its label column is read as a feature
        label = (" (predict reads features only: drop the label column)"
                 if x.shape[1] == in_features + 1 and str(input_path).endswith(".csv") else "")
        raise CliError(f"{input_path} has {x.shape[1]} features per row, the model in {checkpoint} expects {in_features}"
                       + label)
    pred, probs = predict(model, x, loss=loss_name)
    _raise_if_signalled()  # before anything is written
    if len(pred) != len(x):  # one output per input row, always
        raise RuntimeError(f"predict: {len(pred)} predictions for {len(x)} rows")
    if loss_name == "cross-entropy":
        pred = pred.astype(np.int64)
    arrays = {"pred": pred} if loss_name == "mse" else {"pred": pred, "probs": probs}
    if output is None:
        for text in _prediction_text(pred, loss_name):
            click.echo(text, nl=False)
    elif output.endswith(".csv"):
        write_atomic(output, lambda f: f.writelines(t.encode() for t in _prediction_text(pred, loss_name, csv=True)))
    elif output.endswith(".npy"):
        write_atomic(output, lambda f: np.save(f, arrays["pred"]))
    else:
        write_npz_atomic(output, arrays)


def _prediction_text(pred, loss_name, rows=1 << 14, csv=False):
    """predict's text, a line per row, a block of `rows` rows at a time: a Python string per row for
    all of them took some 60 bytes a row, 7 times a 2-feature float32 input. Values with the digits
    that give back the model's number: 9 for float32, 17 for float64 (at 9, a float64 model's
    predictions came out rounded to about float32's precision). csv: a multi-label row's set in
    double quotes, one field (a CSV reader split "{0,3}" into "{0" and "3}")."""
    digits = 17 if pred.dtype == np.float64 else 9
    for start in range(0, len(pred), rows):
        block = pred[start:start + rows]
        if loss_name == "mse":
            lines = [",".join(f"{v:.{digits}g}" for v in row) for row in block.tolist()]
        elif loss_name == "bce" and block.shape[1] > 1:
            quote = '"' if csv else ""
            lines = [quote + "{" + ",".join(str(j) for j in np.flatnonzero(row)) + "}" + quote for row in block]
        else:  # classes, or one binary output's 0/1
            lines = [str(v) for v in block.reshape(len(block)).tolist()]
        yield "\n".join(lines) + "\n"


@cli.command(name="info")
@click.argument("checkpoint", type=FilePath(), required=False)
def info_cmd(checkpoint):
    """Versions, the CPU's vector ISA and blocks, CPU threads, Numba's threading layer, whether a GPU is usable,
    and whether MPI is usable (mpi4py and the MPI library's versions).

    With CHECKPOINT (a `nbnet train --save` checkpoint or a model.save file): what it holds instead,
    the epochs done, the last epoch's scores, the options it was trained with and the model's layers."""
    if checkpoint is not None:
        _check_stdout("what it holds")
        _describe_checkpoint(checkpoint)
        return
    import platform  # noqa: PLC0415
    from importlib.metadata import version  # noqa: PLC0415

    import numba  # noqa: PLC0415

    from . import simd  # noqa: PLC0415
    from .check import describe_threads, threading_layer  # noqa: PLC0415

    click.echo(f"nbnet {__version__}, numba {numba.__version__}, numpy {np.__version__}, "
               f"click {version('click')}, python {platform.python_version()}")
    click.echo(simd.describe())  # as `nbnet check` and the benchmarks print it
    click.echo(f"CPU threads: {describe_threads()}; NUMBA_NUM_THREADS {numba.config.NUMBA_NUM_THREADS}")
    click.echo(f"threading layer: {threading_layer()}")
    click.echo(simd.describe_cache())
    try:
        from .gpu import gpu_status  # noqa: PLC0415

        gpu = gpu_status()
    except Exception as e:  # noqa: BLE001 - any failure means "not usable", and says why
        gpu = _one_line(e) or type(e).__name__
        gpu = gpu if gpu.startswith("no usable CUDA GPU") else f"not usable: {gpu}"  # (said once, not twice)
    click.echo(f"GPU: {gpu}")
    click.echo(f"MPI: {dist.mpi_status()}")


def _describe_checkpoint(path):
    """`nbnet info CHECKPOINT`: Keras' model.summary() and the run's state, checked as --resume
    checks them, so a damaged file is one Error: line here too."""
    ck = load_checkpoint(path)
    model = ck.model
    cfg = _stored_config(ck)
    state = ck.state
    if state is None:
        click.echo(f"{path}: a model (model.save), {model.num_parameters():,} parameters: nothing to resume; "
                   "`nbnet evaluate` and `nbnet predict` take it")
        click.echo(model.summary())
        return
    # cfg.get: a hand-made or damaged file may store no options ({}: --resume refuses it)
    epochs, steps = cfg.get("epochs"), f"{state.step:,} step{'s' * (state.step != 1)}"
    click.echo(f"{path}: a checkpoint of `nbnet train`, {model.num_parameters():,} parameters")
    n = cfg.get("early_stopping")
    if epochs is None:
        where = f"{state.epoch} epochs done ({steps}); it stores no --epochs"
    elif state.seen:  # stopped inside the epoch after those done: as the Interrupted line said
        where = (f"{state.epoch} of {epochs} epochs done, then stopped in epoch {state.epoch + 1} after step "
                 f"{state.step}: `nbnet train --resume {_quoted(path)}` finishes the run")
    elif n is not None and state.bad_epochs >= n and state.epoch < epochs:
        where = (f"{state.epoch} of {epochs} epochs done ({steps}): stopped early, no better validation loss "
                 f"for {n} epoch{'s' * (n != 1)}")
    elif state.epoch >= epochs:
        where = (f"all {epochs} epoch{'s' * (epochs != 1)} done ({steps}), a finished run: `nbnet train --resume "
                 f"{_quoted(path)} --epochs {epochs + 1}` or more trains on")
    else:
        where = (f"{state.epoch} of {epochs} epochs done ({steps}): `nbnet train --resume {_quoted(path)}` "
                 "finishes the run")
    click.echo(where)
    if state.history:
        last = state.history[-1]
        click.echo(f"epoch {state.epoch}: "
                   + "  ".join(_scores(last, cfg.get("loss") == "bce")))
    if state.best_epoch is not None and state.best_val_loss is not None:
        click.echo(f"best epoch {state.best_epoch} (validation loss {state.best_val_loss:.4f})")
    if cfg:
        click.echo("trained with: nbnet train " + " ".join(_as_options(cfg)))
    click.echo(model.summary())


def _quoted(text):
    import shlex  # noqa: PLC0415

    return shlex.quote(os.fspath(text))


def _as_options(cfg):
    """A checkpoint's stored options as the command line that gives them (a list given as 64,64;
    one left unset, such as --weight-decay, left out)."""
    order = [p.name for p in train_cmd.params if p.name not in NOT_CONFIG]  # as `nbnet train --help` has them
    out = []
    for key, value in sorted(cfg.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        if key not in order or value is None:
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value))
        out += ["--" + key.replace("_", "-"), _quoted(str(value))]
    return out


@cli.command(name="check")
def check_cmd():
    """Compile the kernels for this CPU and check each against its formula (run it on a new machine)."""
    from .check import main as run_checks  # noqa: PLC0415

    sys.exit(run_checks(click.echo))


def main(args=None):
    if dist.launched_size() == 1:
        cli.main(args=args, prog_name="nbnet")
        return
    argv = sys.argv[1:] if args is None else list(args)
    if dist.training_job(argv):
        # MPICH leaves every process of a job waiting in MPI_Init for ever once one has exited
        # without it: an option given wrong to process 1 alone (a click error, before train_cmd
        # starts MPI) ended that process in silence and hung the others. Each process of a
        # training job joins MPI first, so that whatever stops it meets the others (dist.fail).
        try:
            dist.world()
        except (RuntimeError, ValueError):
            pass  # no mpi4py, or a bad NBNET_MPI_TIMEOUT: train_cmd meets it again, as one Error: line
    elif not dist.run_here(argv):  # any other command runs once, on process 0
        sys.exit(0)
    try:
        cli.main(args=args, prog_name="nbnet")
    except SystemExit:  # after dist.fail, or agreed by every process (help, Ctrl-C)
        raise
    except KeyboardInterrupt:  # a second Ctrl-C in the middle of a step
        dist.fail("interrupted", EXIT_INTERRUPTED)
    except BaseException as e:  # a bug, or MPI telling of a failed process: end them all, no hang
        import traceback  # noqa: PLC0415

        if type(e).__module__.startswith("mpi4py"):  # another process failed; it says why
            dist.fail(f"MPI: {_one_line(e)}", 1)
        # After dist.fail's grace: when a process aborted the job first, this one says nothing.
        dist.fail("unexpected error (traceback above)", 1, before=traceback.format_exc())


if __name__ == "__main__":
    main()
