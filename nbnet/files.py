"""Every file nbnet reads or writes goes through here.

Inputs: `open_input` opens only regular files, without blocking (a FIFO, a folder or /dev/zero is
an error, never a hang or an endless read), and `read_npz` checks each array's declared size
before reading it. Nothing is read past `memory_budget()`.

Outputs: `write_atomic` writes a temporary file in the target's folder and renames it over the
target, so a crash leaves the old file or the new one, never a torn one; the file gets the mode
the umask gives (as `open` would), and temporary files left by a killed save are removed by the
next save in that folder from the same machine and PID namespace (another's process ids say nothing
here). A rename refused (on Windows: the target open in another program) leaves what was written
beside the target, as model.unsaved.npz, and the error says so. `append_whole` appends to a log
(--metrics-out) whole lines or nothing.
`check_outputs` refuses an output path that is one of the run's inputs.
"""

import errno
import functools
import hashlib
import math
import os
import platform
import re
import stat
import struct
import sys
import tempfile
import time
import zipfile

import numpy as np

TMP_PREFIX = ".tmp-nbnet-"  # + "<pid>.<pid space>-<random>" + suffix (before the pid space: "<pid>-<random>")


def memory_budget():
    """Bytes one input file or one model may take: half this machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not POSIX: a fixed 8 GiB
        return 8 << 30


def gib(nbytes):
    """nbytes in GiB: an int of bytes beyond a float64 (a width of 10**400, Linear's or the scikit-learn
    wrapper's hidden_layer_sizes) made the division an OverflowError, not the memory check's message."""
    try:
        return f"{nbytes / (1 << 30):.1f} GiB"
    except OverflowError:
        return "over 1e308 GiB"


def load_bytes(shape, dtype, into=None):
    """Peak memory of loading an array of `shape` and `dtype` that its loader converts to `into`
    (None: kept as stored): the values as read, plus twice their converted copy (the copy and the
    conversion's temporaries, or the copy and its train/test split). Measured with ru_maxrss:
    uint8 images as float32 peak at 5 bytes a pixel, as float64 at 9; an .npz's uint8 x loaded and
    split at 8 bytes a value as float32, 16 as float64. The bytes stored are no measure: a 10 MB
    gzip of zeros declares gigabytes of pixels, and each becomes 4 or 8 bytes."""
    count = math.prod(shape)
    return count * (np.dtype(dtype).itemsize + (0 if into is None else 2 * np.dtype(into).itemsize))


def check_memory(need, what):
    """A one-line ValueError, `what` and the memory it needs, when `need` bytes (load_bytes's) is
    more than memory_budget(): checked before anything is read."""
    budget = memory_budget()
    if need > budget:
        raise ValueError(f"{what}: needs {gib(need)} of memory to load, more than the {gib(budget)} nbnet allows an input")


def described(shape, dtype, into=None):
    """"(60000, 28, 28) uint8 as float32": an array, and what its loader converts it to."""
    return f"{tuple(shape)} {np.dtype(dtype).name}" + ("" if into is None else f" as {np.dtype(into).name}")


# ---------------------------------------------------------------------------------------------
# Inputs


def _kind(mode):
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_input(path, what=None):
    """`path` opened for binary reading; ValueError (one line, naming the file) unless it is an
    existing regular file. Opened with O_NONBLOCK so that a FIFO without a writer cannot hang."""
    path = os.fspath(path)
    name = f"{what} {path}" if what else path
    if path == "":
        raise ValueError(f"{what or 'input'}: empty path")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ENOENT:  # "-" is many tools' standard input; nbnet reads files only
            stdin = " ('-' is not standard input here: give a file)" if path == "-" else ""
            raise ValueError(f"{name}: no such file{stdin}") from None
        raise ValueError(f"{name}: cannot read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{name}: not a regular file ({_kind(st.st_mode)})")
        if hasattr(os, "O_NONBLOCK"):  # not on Windows, whose os.set_blocking is from Python 3.12
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


READ_CHUNK = 1 << 20


def read_bounded(f, limit, first=READ_CHUNK):
    """What the stream `f` holds, up to its end or limit + 1 bytes (the caller tells a longer one
    by the length). f.read(n) allocates n bytes before it reads any, whatever the stream holds, so
    this asks for `first` bytes (what should be there: a regular file's size) and then READ_CHUNK
    at a time: memory follows what arrives, not a limit or what a header declares."""
    chunks, got, ask = [], 0, first
    while got <= limit:
        chunk = f.read(min(ask, limit + 1 - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        ask = READ_CHUNK
    return b"".join(chunks)  # one chunk (a regular file read whole) is returned as it is, not copied


def read_input_bytes(path, what=None, limit=None):
    """The whole content of a regular file, refused (before reading) above `limit` bytes."""
    limit = memory_budget() if limit is None else limit
    with open_input(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValueError(f"{path}: {size} bytes is more than nbnet reads ({limit} bytes)")
        data = read_bounded(f, limit, size + 1)  # + 1: a file that grew since fstat
    if len(data) > limit:
        raise ValueError(f"{path}: more than {limit} bytes")
    return data


def read_npz(path, what=None, into=None):
    """All arrays of an .npz file, read without pickle. Each array's header (shape, dtype) is read
    and checked against the bytes stored for it, and the total against `memory_budget()`, before
    any array is allocated; into: {name: dtype} of the arrays the caller converts (load_bytes).
    Raises ValueError with a one-line reason for a missing, truncated, corrupt or oversized file."""
    path = os.fspath(path)
    into = into or {}
    with open_input(path, what) as f:
        try:
            declared = _members_declared(f)
            with zipfile.ZipFile(f) as z:
                # zipfile lists what the central directory holds up to the size the end record
                # gives: a flipped bit in one member's comment length read the members after it as
                # its comment, silently (a checkpoint lost its training entries and loaded as a
                # plain model). The end record also counts the members.
                if declared is not None and declared != len(z.infolist()):
                    raise ValueError(f"its end record declares {declared} members, its directory lists "
                                     f"{len(z.infolist())}")
                total, keys = 0, set()
                for info in z.infolist():
                    # np.load names the arrays of "y.npy" and of "y" both y, and keeps one of
                    # them silently (the last "y.npy", or "y" over "y.npy")
                    key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                    if key in keys:
                        raise ValueError(f"array {key!r} is stored twice ({info.filename})")
                    keys.add(key)
                    with z.open(info) as member:
                        shape, dtype = _npy_header(member, info.filename)
                    nbytes = math.prod(shape) * dtype.itemsize
                    if nbytes > info.file_size:
                        raise ValueError(f"{info.filename} declares {shape} {dtype} but holds {info.file_size} bytes")
                    total += load_bytes(shape, dtype, into.get(key))
                    before = " with the arrays before it" if len(keys) > 1 else ""
                    check_memory(total, f"{key} {described(shape, dtype, into.get(key))}{before}")
            f.seek(0)
            with np.load(f, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except ValueError as e:
            raise ValueError(f"{path}: not a readable .npz file ({' '.join(str(e).split())})") from None
        except Exception as e:  # zipfile.BadZipFile, EOFError, OSError, zlib.error, ...
            raise ValueError(f"{path}: corrupt or truncated .npz file ({type(e).__name__}: {e})") from None


_END_RECORD = struct.Struct("<4s4H2LH")  # a zip's end of central directory record


def _members_declared(f):
    """How many members the end record of the zip file `f` counts, or None where it gives no count
    (zip64's 0xFFFF) or none is found (zipfile then says why); `f` is left at its start."""
    size = f.seek(0, os.SEEK_END)
    tail_start = max(0, size - _END_RECORD.size - 0xFFFF)  # the record, and a comment of at most 64 KiB
    f.seek(tail_start)
    tail = f.read()
    f.seek(0)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END_RECORD.size:
        return None
    *_, count, _, _, comment = _END_RECORD.unpack_from(tail, at)
    if tail_start + at + _END_RECORD.size + comment != size or count == 0xFFFF:  # a match inside a comment; zip64
        return None
    return count


def read_npy(path, what=None, into=None):
    """The array of an .npy file (np.save's), read without pickle, its header (shape, dtype)
    checked against the file's size and `memory_budget()` before the array is allocated (into:
    the dtype the caller converts it to, as load_bytes's); a ValueError with a one-line reason
    otherwise."""
    path = os.fspath(path)
    with open_input(path, what) as f:
        try:
            shape, dtype = _npy_header(f, "its array")
            nbytes = math.prod(shape) * dtype.itemsize
            size = os.fstat(f.fileno()).st_size - f.tell()
            if nbytes > size:
                raise ValueError(f"declares {shape} {dtype} but holds {size} bytes")
            check_memory(load_bytes(shape, dtype, into), f"its array {described(shape, dtype, into)}")
            f.seek(0)
            return np.load(f, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a readable .npy file ({' '.join(str(e).split())})") from None
        except Exception as e:  # EOFError, OSError, ...
            raise ValueError(f"{path}: corrupt or truncated .npy file ({type(e).__name__}: {e})") from None


def _npy_header(member, name):
    fmt = np.lib.format
    version = fmt.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(member)
    else:
        raise ValueError(f"{name}: unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError(f"{name} holds Python objects (not loaded: no pickle)")
    return shape, dtype


# ---------------------------------------------------------------------------------------------
# Outputs


def _resolved(path):
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def same_file(a, b):
    """Whether paths a and b name the same file (symlinks and hard links included)."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs, inputs, allowed=()):
    """outputs, inputs: {label: path or None}. ValueError when an output is one of the inputs (an
    (output label, input label) pair in `allowed` excepted), or two outputs are one file."""
    outputs = {k: v for k, v in outputs.items() if v is not None}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    for label, path in outputs.items():
        if os.fspath(path) == "":
            raise ValueError(f"{label}: empty path")
        for in_label, in_path in inputs.items():
            if (label, in_label) not in allowed and same_file(path, in_path):
                raise ValueError(f"{label} {path} is the {in_label} of this run: it would be overwritten")
    labels = list(outputs)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if same_file(outputs[a], outputs[b]):
                raise ValueError(f"{a} and {b} are the same file ({outputs[a]})")


def _umask():
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


@functools.lru_cache(maxsize=1)
def _pid_space():
    """Where this process's id means something: this machine and its PID namespace (a container's
    own), as 8 hex digits. A temporary file's process id is looked up only by a process of the
    same space: from another (a container, or another machine sharing the folder), it names a
    process there, which may be no process here while it is still writing."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError):  # not Linux: the machine alone
        namespace = ""
    return hashlib.blake2s(f"{platform.node()}\0{namespace}".encode(), digest_size=4).hexdigest()


def _temp_prefix():
    return f"{TMP_PREFIX}{os.getpid()}.{_pid_space()}-"


def _pid_alive(pid):
    """Whether process `pid` is running; True where that cannot be told (its file is then kept)."""
    if sys.platform == "win32":
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _pid_alive_windows(pid):
    """os.kill(pid, 0) is no probe on Windows: any signal but its two console events ends the process
    (TerminateProcess), so a save ended whatever process had the id in a temporary file's name, a
    save under way in another nbnet included. The process is opened and its exit code asked instead."""
    try:
        import ctypes  # noqa: PLC0415 - Windows only
        from ctypes import wintypes  # noqa: PLC0415

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # its own: argtypes set here only
        kernel32.OpenProcess.restype = wintypes.HANDLE
        kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
        kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
        kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() != 87  # ERROR_INVALID_PARAMETER: no such process (5: not ours, alive)
        try:
            code = wintypes.DWORD()
            return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    except Exception:  # noqa: BLE001 - cannot tell: keep the file
        return True


# Temporary files of nbnet before they carried a process id: removed once an hour old.
_LEGACY_TMP = re.compile(r"\.tmp-[a-z0-9_]{8}\.npz\Z")
LEGACY_TMP_AGE = 3600


def remove_stale_temps(folder):
    """Remove the temporary files of saves whose process is gone (killed half-way through)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        if name.startswith(TMP_PREFIX):
            pid, _, space = name[len(TMP_PREFIX):].split("-", 1)[0].partition(".")
            # no space: an nbnet from before it, judged as it judged them
            stale = pid.isdigit() and space in ("", _pid_space()) and int(pid) != os.getpid() \
                and not _pid_alive(int(pid))
        elif _LEGACY_TMP.match(name):
            try:
                stale = time.time() - os.stat(path).st_mtime > LEGACY_TMP_AGE
            except OSError:
                stale = False
        else:
            continue
        if stale:
            try:
                os.unlink(path)
            except OSError:
                pass


def check_replaceable(path, label=None):
    """An output that is renamed over `path` may only replace a regular file (or nothing): never a
    device such as /dev/null, a FIFO or a folder."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        name = f"{label} {path}" if label else path
        raise ValueError(f"{name}: is {_kind(st.st_mode)}, not a regular file: nbnet will not replace it")


def names_a_folder(path):
    """Whether `path` ends in a separator ("out/"): a folder's name even while none exists, so a file
    cannot be written there, and open or rename say so only once the work is done."""
    return os.fspath(path).endswith(tuple(sep for sep in (os.sep, os.altsep) if sep))


def file_in_the_way(path):
    """The part of `path`'s folder that exists and is not a folder ("f" of "f/x.npz" where f is a
    file), or None: os.makedirs says only "File exists" (or "Not a directory") of it."""
    part = os.path.dirname(os.fspath(path))
    while part and not os.path.exists(part):
        part = os.path.dirname(part)
    return part if part and not os.path.isdir(part) else None


def check_creatable(path):
    """OSError unless a file can be made beside `path` (write_atomic's temp file) and under its
    name: a folder that os.access calls writable can still be refused by its file system (/proc, a
    name too long, NFS's root squash), and the write would fail only once the work is done. A new
    name is created and removed; an existing file is left untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(), dir=folder)
    os.close(fd)
    os.unlink(tmp)
    if not os.path.lexists(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:  # made meanwhile by another process: creatable, and not ours to remove
            return
        ours = os.fstat(fd)
        os.close(fd)
        now = os.lstat(path)
        # Another run's rename over the name since (its first save) is its file, not ours to remove.
        if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
            os.unlink(path)


def write_atomic(path, write, suffix=""):
    """Call write(f) on a temporary binary file in path's folder, fsync it and rename it over
    `path`: a crash leaves either the old file or the new one. The new file's mode follows the
    umask. Only a regular file is replaced (see check_replaceable). A symbolic link is written
    through, as `>` and cp do: renamed over, the link itself became the new file and what it
    pointed to (latest.npz -> run3.npz) kept the old contents."""
    path = os.fspath(path)
    if path == "":
        raise ValueError("empty output path")
    if names_a_folder(path):
        raise ValueError(f"{path}: names a folder (it ends in a separator), not a file")
    in_the_way = file_in_the_way(path)
    if in_the_way is not None:
        raise ValueError(f"{path}: {in_the_way} is a file, not a folder")
    if os.path.islink(path):
        path = os.path.realpath(path)
    check_replaceable(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(), suffix=suffix, dir=folder)
    except OSError as e:
        raise _naming(e, path) from None
    written = False
    try:
        with os.fdopen(fd, "wb") as f:  # closed before the except's unlink, which Windows refuses on an open file
            if hasattr(os, "fchmod"):  # Windows has it from Python 3.13, and a mode there is only read-only or not
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        written = True
        _replace(tmp, path)
    except BaseException as e:
        kept = _keep(tmp, path) if written and isinstance(e, PermissionError) else None
        if kept is not None:
            raise _not_replaced(e, path, kept) from None
        try:
            if os.path.exists(tmp):
                os.unlink(tmp)
        except OSError:  # Windows: a virus scanner still has it open; the next save there removes it
            pass
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        raise


# Windows refuses to rename over a file that another process has open (an editor; a virus scanner or
# the search indexer, for a moment, often just after the file was written), and to rename the
# temporary file while a scanner reads it (just closed): PermissionError. Tried again over about a
# second, as pip and git do there; elsewhere that error is lasting (a folder's sticky bit), not retried.
REPLACE_RETRIES = (0.05, 0.1, 0.2, 0.25, 0.4)  # seconds slept after each failed try


def _replace(tmp, path):
    for delay in REPLACE_RETRIES if sys.platform == "win32" else ():
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            time.sleep(delay)
    os.replace(tmp, path)


def _keep(tmp, path):
    """The name the finished temporary file `tmp` is given beside `path` when it cannot be renamed
    over `path`, or None where that fails too: what was written (a checkpoint after hours of
    training) is not lost, and its name is no temporary file's, which the next save there would
    remove. model.npz's is model.unsaved.npz (then model.unsaved-2.npz, ...): still an .npz."""
    root, ext = os.path.splitext(path)
    for n in range(1, 100):
        kept = f"{root}.unsaved{'' if n == 1 else f'-{n}'}{ext}"
        if os.path.lexists(kept):
            continue
        try:
            os.rename(tmp, kept)
        except FileExistsError:  # Windows' rename refuses an existing name: made meanwhile
            continue
        except OSError:
            return None
        return kept
    return None


def _not_replaced(error, path, kept):
    """The error of a write whose rename over `path` was refused, saying where its content is."""
    why = error.strerror or str(error)
    if sys.platform == "win32":
        why = f"another program has it open, or it is read-only: {why}"
    refused = PermissionError(f"{path}: cannot replace it ({why}); what was to be written to it is in {kept}")
    refused.errno = error.errno
    return refused


def append_whole(fd, data, path):
    """Write the bytes `data` where the file open at `fd` ends (a log: --metrics-out's lines), all of
    them or none: a write that a full disk (or a file size limit) cuts short is taken back by
    truncating the file to its size before, so that it never ends in a torn line. Errors name
    `path`, as write_atomic's do. (A FIFO's reader may get part of `data`: a pipe cannot be cut.)"""
    try:
        start = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:  # a FIFO
        start = None
    done = 0
    try:
        while done < len(data):  # write(2) may write less than asked, then fail at the next call
            done += os.write(fd, data[done:])
    except BaseException as e:  # a second Ctrl-C between two writes tears the line as well
        if done and start is not None:
            try:
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        raise


def _naming(error, path):
    """`error` (an OSError of writing `path` through its temporary file) naming `path`: a full
    disk's write names no file, and mkstemp's or rename's errors name the temporary one, which the
    user never gave and which is gone."""
    if error.errno is None:
        return OSError(f"{path}: {error}")
    return OSError(error.errno, error.strerror or str(error), path)


def write_npz_atomic(path, arrays):
    """np.savez(path, **arrays), atomically (see write_atomic)."""
    write_atomic(path, lambda f: np.savez(f, **arrays), suffix=".npz")
