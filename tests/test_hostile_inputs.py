"""Hostile inputs, one checked path each (issue #10): IDX streams and budgets, CSV rows, labels,
regular files only, downloads under a size cap and a deadline, and files written by nbnet (umask,
stale temporary files, outputs that would overwrite inputs)."""

import contextlib
import gzip
import io
import http.server
import os
import signal
import stat
import struct
import sys
import threading
import time
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
from conftest import needs_posix

import nbnet as nb
from nbnet import datasets, files


def idx_bytes(arr, type_byte=0x08):
    arr = np.asarray(arr, np.uint8)
    return bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@contextlib.contextmanager
def no_hang(seconds=20):
    """Fail (instead of hanging the suite) when the block blocks longer than `seconds`."""

    def alarm(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x01", b"\x00\x01\x08\x01", b"\x00\x00\x07\x01"])
def test_idx_magic_needs_two_zero_bytes_and_a_known_type(magic):
    raw = magic + struct.pack(">I", 3) + bytes(3)
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.parse_idx(raw)
    assert datasets.parse_idx(b"\x00\x00\x08\x01" + raw[4:]).tolist() == [0, 0, 0]


def test_gzip_bomb_is_read_only_as_far_as_the_header_declares(tmp_path):
    # 10 small images declared, 256 MiB of zeros following (about 250 KB compressed)
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    parts = [comp.compress(idx_bytes(np.zeros((10, 4, 4))))]
    parts += [comp.compress(zeros) for _ in range(256)]
    (tmp_path / "bomb.gz").write_bytes(b"".join(parts) + comp.flush())
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="trailing bytes"):
            datasets.read_idx(tmp_path / "bomb.gz", 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_reads_allocate_what_arrives_not_what_a_limit_or_header_says(tmp_path):
    # f.read(n) allocates n bytes before reading: a 1 KB CSV read with f.read(limit + 1) asked for
    # the whole budget, and a gzip whose header declares 100 MB (holding 10 bytes) for 100 MB.
    (tmp_path / "small.csv").write_text("1,2\n" * 256)
    raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", 1000, 1000, 100) + bytes(10)
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw))
    tracemalloc.start()
    try:
        assert len(files.read_input_bytes(tmp_path / "small.csv", limit=1 << 30)) == 1024
        assert tracemalloc.get_traced_memory()[1] < 4 << 20
        with pytest.raises(ValueError, match=r"short\.gz: truncated: .* found 10 bytes"):
            datasets.read_idx(tmp_path / "short.gz")
        assert tracemalloc.get_traced_memory()[1] < 4 << 20
    finally:
        tracemalloc.stop()


def test_idx_header_declaring_more_than_the_budget_is_refused_before_reading(tmp_path):
    raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**16, 2**16)
    (tmp_path / "huge.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match="more than the .* nbnet allows an input"):
        datasets.read_idx(tmp_path / "huge.gz")


def test_budget_counts_the_features_a_file_becomes_not_its_bytes(tmp_path, monkeypatch):
    # Pixels become 4 (float32) or 8 (float64) bytes each, and the conversion holds a copy more:
    # checked against the bytes stored, a 10 MB gzip declaring 10 GB of pixels passed the check
    # and then needed some 50 GB (the kernel's OOM killer, not an error).
    images = np.zeros((1000, 28, 28), np.uint8)
    (tmp_path / "img.gz").write_bytes(gzip.compress(idx_bytes(images)))
    np.savez(tmp_path / "xy.npz", x=images.reshape(1000, -1), y=np.zeros(1000, np.uint8))
    np.save(tmp_path / "x.npy", images)
    budget = 10 * images.nbytes  # uint8 as float32 needs 1 + 2*4 bytes a pixel, as float64 1 + 2*8
    monkeypatch.setattr(files, "memory_budget", lambda: budget)
    monkeypatch.setattr(datasets, "memory_budget", lambda: budget)
    assert datasets.load_inputs(tmp_path / "img.gz").shape == (1000, 784)
    assert datasets.load(str(tmp_path / "xy.npz"))[0].dtype == np.float32
    assert datasets.load_inputs(tmp_path / "x.npy").shape == (1000, 784)
    with pytest.raises(ValueError, match=r"img\.gz: header declares \(1000, 28, 28\) uint8 as float64: needs .* of memory"):
        datasets.load_inputs(tmp_path / "img.gz", np.float64)
    with pytest.raises(ValueError, match=r"xy\.npz: .*x \(1000, 784\) uint8 as float64: needs .* of memory"):
        datasets.load(str(tmp_path / "xy.npz"), dtype=np.float64)
    with pytest.raises(ValueError, match=r"x\.npy: .*\(1000, 28, 28\) uint8 as float64: needs .* of memory"):
        datasets.load_inputs(tmp_path / "x.npy", np.float64)


def test_every_flipped_byte_of_a_gz_is_an_error_or_harmless(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (6, 5, 5))
    good = gzip.compress(idx_bytes(arr), mtime=0)
    for pos in range(len(good)):
        bad = bytearray(good)
        bad[pos] ^= 0x55
        (tmp_path / "f.gz").write_bytes(bytes(bad))
        try:
            got = datasets.read_idx(tmp_path / "f.gz", 3)
        except ValueError:
            continue  # one line, naming the file; never zlib.error or EOFError
        assert np.array_equal(got, arr), pos  # a flip in the header's mtime/flags/OS bytes


# --------------------------------------------------------------------------------------------- CSV


def test_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeff1,0.5,0.5\n0,0.25,0.75\n2,1,1\n".encode())
    x, y, _, _ = datasets.load(str(tmp_path / "bom.csv"), val_split=0.34, seed=0)
    assert sorted(np.r_[y, _].tolist()) == [0, 1, 2]
    (tmp_path / "in.csv").write_bytes("\ufeff0.5,0.5\n0.25,0.75\n1,1\n".encode())
    np.testing.assert_array_equal(datasets.load_inputs(tmp_path / "in.csv"), [[0.5, 0.5], [0.25, 0.75], [1, 1]])


def test_csv_header_only_when_no_field_is_a_number(tmp_path):
    (tmp_path / "h.csv").write_text("label,x1,x2\n1,2,3\n")
    assert datasets.read_csv(tmp_path / "h.csv").tolist() == [[1, 2, 3]]
    (tmp_path / "n.csv").write_text("1,2,3\n4,5,6\n")
    assert datasets.read_csv(tmp_path / "n.csv").shape == (2, 3)
    (tmp_path / "m.csv").write_text("label,2,x\n1,2,3\n")  # half a header: a mistake, said where
    with pytest.raises(ValueError, match="row 1, column 1: 'label' is not a number"):
        datasets.read_csv(tmp_path / "m.csv")


def test_csv_rows_end_only_at_newlines(tmp_path):
    """A form feed or U+2028 inside a row split it into two rows, silently (str.splitlines)."""
    for sep in ("\x0c", "\x0b", "\x1e", "\x85", "\u2028"):
        (tmp_path / "ff.csv").write_bytes(f"1,2{sep}3,4\n5,6,7\n".encode())
        with pytest.raises(ValueError, match=r"row 1, column 2: .* is not a number"):
            datasets.read_csv(tmp_path / "ff.csv")
    for end in ("\n", "\r\n", "\r"):  # Unix, Windows and old Mac files read the same
        (tmp_path / "e.csv").write_bytes(end.join(["1,2", "3,4", ""]).encode())
        assert datasets.read_csv(tmp_path / "e.csv").tolist() == [[1, 2], [3, 4]]


# --------------------------------------------------------------------------------------------- labels, dtype


@pytest.mark.parametrize("label", [1e9, 1e300, 2**63 + 5, 65536])
def test_a_huge_label_is_an_error_not_a_huge_output_layer(tmp_path, label):
    y = np.array([0, 1, label, 0], dtype=np.float64 if isinstance(label, float) else np.uint64)
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=y)
    with np.errstate(all="raise"):  # no RuntimeWarning on the way (a cast of 1e300 would give one)
        with pytest.raises(ValueError, match="too large"):
            datasets.load(str(tmp_path / "d.npz"))


@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.uint8])
def test_labels_of_a_narrow_dtype_load_without_a_warning(tmp_path, dtype):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 2, 1], dtype))
    with np.errstate(all="raise"):
        x, y, x_te, y_te = datasets.load(str(tmp_path / "d.npz"), val_split=0.25)
    assert sorted(np.r_[y, y_te].tolist()) == [0, 1, 1, 2]


def test_float64_features_never_pass_through_float32(tmp_path):
    x = np.array([[0.1, 1 + 2**-40], [0.3, 0.7], [1e-50, 2.0], [4.0, 5.0]])
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1]))
    assert np.array_equal(datasets.load_inputs(tmp_path / "d.npz", np.float64), x)
    xs = np.concatenate(datasets.load(str(tmp_path / "d.npz"), val_split=0.25, dtype=np.float64)[::2])
    assert sorted(map(tuple, xs.tolist())) == sorted(map(tuple, x.tolist()))
    (tmp_path / "d.csv").write_text("0.1,1.0000000000009095\n")
    assert datasets.load_inputs(tmp_path / "d.csv", np.float64)[0, 1] == 1 + 2**-40


# --------------------------------------------------------------------------------------------- regular files only


@needs_posix("os.mkfifo, /dev/zero and SIGALRM")
@pytest.mark.parametrize("suffix", [".csv", ".npz", "-idx3-ubyte"])
def test_a_fifo_or_a_device_is_an_error_not_a_hang(tmp_path, suffix):
    fifo = tmp_path / ("pipe" + suffix)
    os.mkfifo(fifo)
    with no_hang():
        with pytest.raises(ValueError, match="not a regular file .a FIFO"):
            datasets.load_inputs(fifo)
        if suffix != "-idx3-ubyte":
            with pytest.raises(ValueError, match="not a regular file"):
                datasets.load(str(fifo))
        with pytest.raises(ValueError, match="not a regular file .a device"):
            datasets.read_idx("/dev/zero")
        with pytest.raises(ValueError, match="not a regular file .a folder"):
            nb.load(tmp_path)


@pytest.mark.parametrize("shape", [(10**6, 10**6), (100,)])
def test_npz_whose_array_header_declares_more_than_it_holds(tmp_path, shape):
    """8 TB, or 800 bytes, declared and 32 held: refused from the header, before any array is made."""
    import io  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(tmp_path / "e.npz", "w") as z:
        z.writestr("x.npy", buf.getvalue() + bytes(32))  # a valid zip
    with pytest.raises(ValueError, match="declares .* but holds"):
        datasets.load_inputs(tmp_path / "e.npz")


# --------------------------------------------------------------------------------------------- download


@contextlib.contextmanager
def server(handler):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()


class Drip(http.server.BaseHTTPRequestHandler):
    """Sends a byte every 0.2 s for 30 s (each read is quick; the file takes longer than any
    deadline a test sets, and ends, so that a deadline not kept fails the test, not hangs it)."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(150):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


class Flood(Drip):
    """Sends more than any expected size, without a Content-Length."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(bytes(1 << 16))
        except OSError:
            pass


def test_a_slow_download_ends_at_one_overall_deadline(tmp_path):
    with server(Drip) as url:
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="not complete within 2 s"):
            datasets.fetch("mnist", tmp_path / "dl", mirrors=[url], timeout=1, deadline=2)
        assert time.monotonic() - t0 < 10
    assert not any(p.name.endswith(".part") for p in (tmp_path / "dl").iterdir())


def test_a_download_is_cut_off_past_its_expected_size(tmp_path):
    with server(Flood) as url:
        sizes = {f + ".gz": 1000 for _, f in datasets.IDX_FILES}
        with pytest.raises(ValueError, match="more than the expected 1000 bytes"):
            datasets.fetch("mnist", tmp_path / "dl", mirrors=[url], sizes=sizes, deadline=30)


class Announced(Drip):
    """Announces a terabyte (Content-Length), then sends more than any expected size."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(10**12))
        self.end_headers()
        try:
            self.wfile.write(bytes(1 << 16))
        except OSError:
            pass


def test_a_download_announcing_more_than_its_expected_size_is_refused_before_reading(tmp_path):
    with server(Announced) as url:
        sizes = {f + ".gz": 1000 for _, f in datasets.IDX_FILES}
        with pytest.raises(ValueError, match=f"{10**12} bytes announced, expected at most 1000"):
            datasets.fetch("mnist", tmp_path / "dl", mirrors=[url], sizes=sizes, deadline=30)


def test_shipped_sizes_match_the_shared_data():
    root = os.environ.get("NBNET_DATA_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
    for name, sizes in datasets.SIZES.items():
        for fname, size in sizes.items():
            path = os.path.join(root, name, fname)
            if not os.path.isfile(path):
                pytest.skip(f"no {name} data in {root}")
            assert os.path.getsize(path) == size


# --------------------------------------------------------------------------------------------- written files


@needs_posix("Unix file modes")
def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        nb.Sequential([nb.Linear(2, 2, seed=0)]).save(tmp_path / "a.npz")
        assert stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode) == 0o644
        os.umask(0o077)
        nb.Sequential([nb.Linear(2, 2, seed=0)]).save(tmp_path / "b.npz")
        assert stat.S_IMODE(os.stat(tmp_path / "b.npz").st_mode) == 0o600
    finally:
        os.umask(old)


def test_files_are_read_and_written_without_posix_only_calls(tmp_path, monkeypatch):
    """Windows has no os.O_NONBLOCK, os.set_blocking before Python 3.12 nor os.fchmod before 3.13
    (nbnet supports 3.10): every input file (a CSV, a checkpoint) and every save ended there in an
    AttributeError traceback."""
    for name in ("O_NONBLOCK", "set_blocking", "fchmod"):
        monkeypatch.delattr(os, name, raising=False)
    model = nb.Sequential([nb.Linear(2, 2, seed=0)])
    model.save(tmp_path / "m.npz")
    assert nb.load(tmp_path / "m.npz").state_dict().keys() == model.state_dict().keys()
    with files.open_input(tmp_path / "m.npz") as f:
        assert f.read(2) == b"PK"
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_the_next_save_removes_temporary_files_of_a_killed_save(tmp_path):
    import subprocess  # noqa: PLC0415

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    stale = tmp_path / f"{files.TMP_PREFIX}{pid}-abc123.npz"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f"{files.TMP_PREFIX}{os.getppid()}-def456.npz"  # a save in progress elsewhere
    live.write_bytes(b"being written")
    old = tmp_path / ".tmp-k3j2h1g0.npz"  # named as before the process id was in the name
    old.write_bytes(b"an hour-old half checkpoint")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    recent = tmp_path / ".tmp-a1b2c3d4.npz"
    recent.write_bytes(b"maybe being written by an older nbnet")
    nb.Sequential([nb.Linear(2, 2, seed=0)]).save(tmp_path / "m.npz")
    assert not stale.exists() and live.exists() and not old.exists() and recent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.npz", live.name, recent.name])


def test_a_save_on_windows_sends_no_signal_to_the_process_of_a_temporary_file(tmp_path, monkeypatch):
    """os.kill(pid, 0), the POSIX probe, ends the process on Windows (TerminateProcess): a save
    killed whatever process had the id in a temporary file's name, here this one's parent. Its file
    is kept (here, where Windows' own probe cannot run, as one cannot tell)."""
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(sys, "platform", "win32")
    other = tmp_path / f"{files.TMP_PREFIX}{os.getppid()}.{files._pid_space()}-abc123.npz"
    other.write_bytes(b"being written, or half a checkpoint")
    nb.Sequential([nb.Linear(2, 2, seed=0)]).save(tmp_path / "m.npz")
    assert sent == [] and other.exists()


def _refusing_replace(monkeypatch, times):
    """os.replace refusing the first `times` calls as Windows does while another program has the
    target open (ERROR_SHARING_VIOLATION: a PermissionError); returns the list of its calls."""
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) <= times:
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_a_save_on_windows_tries_again_while_another_program_holds_the_target(tmp_path, monkeypatch):
    """A virus scanner or the search indexer opens a file for a moment just after it is written, and
    Windows refuses a rename over an open file: the next epoch's --save failed with "Permission
    denied" and ended hours of training. The rename is tried again over about a second."""
    slept = []
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(time, "sleep", slept.append)
    target = tmp_path / "m.npz"
    target.write_bytes(b"the epoch before")
    calls = _refusing_replace(monkeypatch, 3)
    files.write_atomic(target, lambda f: f.write(b"this epoch"), suffix=".npz")
    assert target.read_bytes() == b"this epoch" and len(calls) == 4 and len(slept) == 3
    assert 0.5 <= sum(files.REPLACE_RETRIES) <= 2  # bounded: a lasting refusal is said in about a second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


@pytest.mark.parametrize("platform", ["win32", "linux"])
def test_a_save_whose_rename_is_refused_keeps_what_it_wrote_and_says_where(tmp_path, monkeypatch, platform):
    """A target held open for good (an editor, Excel on a predictions .csv) or a folder's sticky bit:
    the temporary file, a whole checkpoint, was removed and the error named only the target. It is
    kept beside it under a name no save removes; the error names both. Elsewhere than on Windows a
    refusal is not tried again."""
    slept = []
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(time, "sleep", slept.append)
    target = tmp_path / "m.npz"
    target.write_bytes(b"the epoch before")
    (tmp_path / "m.unsaved.npz").write_bytes(b"an earlier refused save")
    calls = _refusing_replace(monkeypatch, 1000)
    with pytest.raises(PermissionError) as e:
        files.write_atomic(target, lambda f: f.write(b"this epoch"), suffix=".npz")
    kept = tmp_path / "m.unsaved-2.npz"
    assert str(e.value) == (f"{target}: cannot replace it ("
                            + ("another program has it open, or it is read-only: " if platform == "win32" else "")
                            + f"The process cannot access the file because it is being used by another process); "
                            f"what was to be written to it is in {kept}")
    assert e.value.errno == 13
    assert len(calls) == (len(files.REPLACE_RETRIES) + 1 if platform == "win32" else 1)
    assert kept.read_bytes() == b"this epoch" and target.read_bytes() == b"the epoch before"
    assert (tmp_path / "m.unsaved.npz").read_bytes() == b"an earlier refused save"
    monkeypatch.undo()
    nb.Sequential([nb.Linear(2, 2, seed=0)]).save(tmp_path / "other.npz")  # the next save there keeps it
    assert kept.read_bytes() == b"this epoch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "m.unsaved-2.npz", "m.unsaved.npz", "other.npz"]


def test_a_failed_save_whose_temporary_file_cannot_be_removed_still_names_the_target(tmp_path, monkeypatch):
    """Windows refuses to remove a file a virus scanner has open: the clean-up's own error, naming
    nbnet's temporary file, replaced the save's (a full disk here). The next save there removes it."""
    def full(f):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "unlink", lambda p: (_ for _ in ()).throw(PermissionError(13, "Access is denied", p)))
    with pytest.raises(OSError, match=r"^\[Errno 28\] No space left on device: '.*m\.npz'$"):
        files.write_atomic(tmp_path / "m.npz", full, suffix=".npz")


def test_a_save_leaves_the_temporary_files_of_processes_of_another_pid_namespace(tmp_path, monkeypatch):
    """A save removed every temporary file whose process id is no process here: one written from a
    container (its own PID namespace) or another machine sharing the folder names a process there,
    alive, whose save then failed at its rename ('No such file or directory: big.npz', seen with a
    run under `unshare --pid` beside one outside it). Temporary names carry where their process id
    means something; only those of this machine and namespace are judged by it."""
    import subprocess  # noqa: PLC0415

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)  # no process here
    real_getpid, real_space = os.getpid, getattr(files, "_pid_space", None)

    def meanwhile_a_save_here(f):
        monkeypatch.setattr(os, "getpid", real_getpid)
        monkeypatch.setattr(files, "_pid_space", real_space, raising=False)
        nb.Sequential([nb.Linear(2, 2, seed=0)]).save(tmp_path / "here.npz")  # removes dead processes' temporary files
        f.write(b"a checkpoint written in another PID namespace")

    monkeypatch.setattr(os, "getpid", lambda: dead)  # the other process, as its namespace numbers it
    monkeypatch.setattr(files, "_pid_space", lambda: "0badf00d", raising=False)
    files.write_atomic(tmp_path / "there.npz", meanwhile_a_save_here, suffix=".npz")
    assert (tmp_path / "there.npz").read_bytes() == b"a checkpoint written in another PID namespace"
    # one of this namespace whose process has ended is still removed
    ours = tmp_path / f"{files.TMP_PREFIX}{dead}.{files._pid_space()}-abc123.npz"
    ours.write_bytes(b"half a checkpoint")
    nb.Sequential([nb.Linear(2, 2, seed=0)]).save(tmp_path / "here.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.npz", "there.npz"]


@needs_posix("symbolic links without privileges")
def test_outputs_never_clobber_inputs(tmp_path):
    (tmp_path / "data.csv").write_text("0,1\n")
    os.symlink(tmp_path / "data.csv", tmp_path / "link.csv")
    os.link(tmp_path / "data.csv", tmp_path / "hard.csv")
    inputs = {"--dataset": tmp_path / "data.csv", "--resume": tmp_path / "r.npz"}
    for out in ("data.csv", "link.csv", "hard.csv", "./sub/../data.csv"):
        with pytest.raises(ValueError, match="is the --dataset of this run"):
            files.check_outputs({"--save": tmp_path / out}, inputs)
    with pytest.raises(ValueError, match="--metrics-out .* is the --resume"):
        files.check_outputs({"--metrics-out": tmp_path / "r.npz"}, inputs, allowed={("--save", "--resume")})
    files.check_outputs({"--save": tmp_path / "r.npz"}, inputs, allowed={("--save", "--resume")})
    with pytest.raises(ValueError, match="--save and --plot are the same file"):
        files.check_outputs({"--save": tmp_path / "o", "--plot": tmp_path / "o"}, inputs)
    with pytest.raises(ValueError, match="--save: empty path"):
        files.check_outputs({"--save": ""}, inputs)


@pytest.mark.parametrize("which,targets", [("y", "labels"), ("y", "values"), ("y", "binary"), ("x", "labels")])
def test_timedelta_arrays_are_not_numbers(tmp_path, which, targets):
    # numpy files timedelta64 under np.integer: its values are counts of a unit (s, ms, ...) the
    # file chooses, and .min().item() is a datetime.timedelta (a TypeError against 0)
    arrays = {"x": np.zeros((4, 2)), "y": np.array([0, 1, 1, 0])}
    arrays[which] = arrays[which].astype("m8[s]")
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match="timedelta64"):
        datasets.load(str(tmp_path / "d.npz"), targets=targets)
    model = nb.Sequential([nb.Linear(2, 2, seed=0)])
    opt = nb.SGD(model.parameters(), lr=0.1)
    data = {k: np.asarray(v) for k, v in arrays.items()}
    loss = {"labels": "cross-entropy", "values": "mse", "binary": "bce"}[targets]
    with pytest.raises(ValueError, match="timedelta64"):
        nb.train(model, opt, (data["x"], data["y"], data["x"], data["y"]), epochs=1, batch_size=2, loss=loss)


@pytest.mark.parametrize("targets,loss", [("values", "mse"), ("binary", "bce")])
def test_a_target_too_large_for_float32_is_one_error_naming_it(tmp_path, targets, loss):
    # finite in float64, Inf in float32: NumPy's overflow warning came first (from the command
    # with its source line), then an error that named no file
    y = np.zeros((6, 2))
    y[4, 1] = 1e39 if targets == "values" else 0.5
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 2)), y=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if targets == "values":
            with pytest.raises(ValueError, match=r"d\.npz: target y\[4, 1\] is 1e\+39 .*too large for float32"):
                datasets.load(str(tmp_path / "d.npz"), targets=targets)
            datasets.load(str(tmp_path / "d.npz"), targets=targets, dtype=np.float64)
        model = nb.Sequential([nb.Linear(2, 2, seed=0)])
        opt = nb.SGD(model.parameters(), lr=0.1)
        y[4, 1] = 1e39  # bce's range check comes after the conversion
        with pytest.raises(ValueError, match="y_train: .*too large for float32"):
            nb.train(model, opt, (np.zeros((6, 2)), y), epochs=1, loss=loss)


def test_npz_with_an_array_stored_twice_is_refused(tmp_path):
    # np.load keeps the last of two members of one name; another reader may take the first
    import io  # noqa: PLC0415
    import warnings  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile: "Duplicate name"
        with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
            z.writestr("x.npy", npy(np.zeros((4, 2))))
            z.writestr("y.npy", npy(np.array([0, 1, 1, 0])))
            z.writestr("y.npy", npy(np.zeros(4, np.int64)))
    with pytest.raises(ValueError, match="array 'y' is stored twice"):
        datasets.load(str(tmp_path / "d.npz"))
    with pytest.raises(ValueError, match="array 'y' is stored twice"):
        nb.load(tmp_path / "d.npz")
    with zipfile.ZipFile(tmp_path / "e.npz", "w") as z:  # "y" and "y.npy" are both np.load's y
        z.writestr("x.npy", npy(np.zeros((4, 2))))
        z.writestr("y.npy", npy(np.array([0, 1, 1, 0])))
        z.writestr("y", npy(np.zeros(4, np.int64)))
    with pytest.raises(ValueError, match="array 'y' is stored twice"):
        datasets.load(str(tmp_path / "e.npz"))


@pytest.mark.parametrize("line, sep, n", [("0,1", "\n", 5_000), ("1", ",", 40_000)], ids=["rows", "columns"])
def test_csv_parsing_holds_a_few_times_the_text_not_a_string_per_field(tmp_path, monkeypatch, line, sep, n):
    # A list of every line (or of every field of a long line) took 30 to 50 times the text:
    # a file well within the CSV size limit (a quarter of the memory budget) could exhaust memory.
    def peak(n):
        text = sep.join([line] * n) + "\n"
        (tmp_path / "d.csv").write_text(text)
        monkeypatch.setattr(datasets, "memory_budget", lambda: 8 * len(text))
        tracemalloc.start()
        try:
            table = datasets.read_csv(tmp_path / "d.csv")
            return len(text), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert np.isin(table, (0, 1)).all() and table.size == n * len(line.split(","))

    peak(10)  # first-use allocations
    (small, small_peak), (big, big_peak) = peak(n), peak(5 * n)
    growth = (big_peak - small_peak) / (big - small)  # bytes of memory per byte of text
    assert growth < 12, growth  # the bytes read, the text and the table (4 times the text of "0,1")


# --------------------------------------------------------------------------------------------- mutation-found gaps


def test_trailing_bytes_after_more_than_a_read_chunk_are_found():
    """read_bounded reads READ_CHUNK at a time past its first read, and one byte past the limit:
    an IDX of exactly 2 chunks of data plus trailing bytes is refused, not cut to its header's size."""
    raw = idx_bytes(np.zeros((2 * files.READ_CHUNK // 1024, 32, 32)))
    assert datasets.parse_idx(raw).shape == (2048, 32, 32)
    with pytest.raises(ValueError, match="has trailing bytes"):
        datasets.parse_idx(raw + b"x")
    assert files.read_bounded(io.BytesIO(bytes(10)), 4, first=4) == bytes(5)


def test_a_file_of_exactly_the_limit_is_read(tmp_path):
    (tmp_path / "f").write_bytes(bytes(10))
    assert files.read_input_bytes(tmp_path / "f", limit=10) == bytes(10)
    with pytest.raises(ValueError, match="11 bytes is more than nbnet reads"):
        (tmp_path / "f").write_bytes(bytes(11))
        files.read_input_bytes(tmp_path / "f", limit=10)


def test_a_file_that_grows_past_the_limit_as_it_is_read_is_refused(tmp_path, monkeypatch):
    """The size checked is fstat's; a file appended to since (a log, another process's write) is
    read only to limit + 1 bytes, and refused."""
    (tmp_path / "f").write_bytes(bytes(50))
    real = os.fstat

    def fstat_of_before(fd):  # the file as it was when opened: 10 bytes
        st = real(fd)
        return os.stat_result((*st[:6], 10, *st[7:]))

    monkeypatch.setattr(files.os, "fstat", fstat_of_before)
    with pytest.raises(ValueError, match="more than 10 bytes"):
        files.read_input_bytes(tmp_path / "f", limit=10)


def test_an_empty_input_path_says_so(tmp_path, monkeypatch):
    """"" names no file (open said "no such file" of a blank name); the message says which input."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="^input: empty path$"):
        nb.load("")
    with pytest.raises(ValueError, match="^model: empty path$"):
        files.open_input("", "model")


def test_npz_budget_counts_all_arrays_together(tmp_path, monkeypatch):
    np.savez(tmp_path / "xy.npz", x=np.zeros((50, 1)), y=np.zeros(50, np.int64))
    # x: 50 float64 as float32, 50 * (8 + 2*4) = 800 bytes; y: 50 int64 as int64, 50 * 24 = 1200
    monkeypatch.setattr(files, "memory_budget", lambda: 2000)
    assert datasets.load(str(tmp_path / "xy.npz"))[0].shape == (40, 1)
    monkeypatch.setattr(files, "memory_budget", lambda: 1999)
    with pytest.raises(ValueError, match="with the arrays before it: needs"):
        datasets.load(str(tmp_path / "xy.npz"))


def test_npy_checked_before_np_load(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(100))
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[:-80])
    with pytest.raises(ValueError, match=r"x\.npy: not a readable \.npy file \(declares \(100,\) float64 but holds 720 bytes\)"):
        datasets.load_inputs(tmp_path / "x.npy")
    np.save(tmp_path / "o.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"o\.npy: not a readable \.npy file \(its array holds Python objects"):
        datasets.load_inputs(tmp_path / "o.npy")


@needs_posix("os.mkfifo")
def test_write_atomic_replaces_only_a_regular_file_and_syncs_it(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"pipe: is a FIFO \(named pipe\), not a regular file: nbnet will not replace it"):
        files.write_atomic(fifo, lambda f: f.write(b"x"))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_size), real_fsync(fd)))
    files.write_atomic(tmp_path / "out", lambda f: f.write(b"abc"))
    assert synced == [3] and (tmp_path / "out").read_bytes() == b"abc"


def test_check_creatable_leaves_a_file_another_run_renamed_over_the_name(tmp_path, monkeypatch):
    """check_creatable makes the output's name and removes it: another run whose first save renamed
    its checkpoint over that name in between lost it to the removal."""
    target, theirs = tmp_path / "c.npz", tmp_path / "theirs"
    real_close, done = os.close, []

    def close_then_rename(fd):
        real_close(fd)
        if not done and target.exists() and target.stat().st_size == 0:  # our empty probe
            done.append(True)
            theirs.write_bytes(b"their checkpoint")
            os.replace(theirs, target)  # the other run's atomic save

    monkeypatch.setattr(os, "close", close_then_rename)
    files.check_creatable(target)
    monkeypatch.undo()
    assert done and target.read_bytes() == b"their checkpoint"
    files.check_creatable(tmp_path / "new.npz")  # our own probe is still removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]
