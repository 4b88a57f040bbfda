"""nbnet as a user installs it: from a wheel, into a place that may be read-only, without the
optional extras."""

import ast
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pyproject():
    try:
        import tomllib  # noqa: PLC0415
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # noqa: PLC0415
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def run_python(code, **env):
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)


def test_imports_where_numbas_cache_has_no_folder():
    """A wheel installed in a read-only place (a system site-packages, a read-only container) and run
    by a user whose home is not writable (a service account, HOME=/nonexistent): Numba finds no
    folder for its on-disk cache, and njit(cache=True) raised "cannot cache function ...: no
    locator available" while nbnet was being imported. The kernels compile in each process instead
    (compiling one here would double the test's time), and the compiling note does not promise a
    cache."""
    code = (
        "import numba.core.caching as caching\n"
        "caching.CacheImpl._locator_classes = []  # as Numba finds it: no folder it can write\n"
        "import nbnet\n"
        "from nbnet import check\n"
        "print(check.compiling_note())\n"
    )
    p = run_python(code)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    note = p.stdout.strip()
    assert "NUMBA_CACHE_DIR" in note and "cached for later runs" not in note


PASSED_OVER = (
    "import numba.core.caching as caching\n"
    "caching.CacheImpl._locator_classes = [c for c in caching.CacheImpl._locator_classes\n"
    "                                      if 'UserProvided' in c.__name__ or {fallback} and 'UserWide' in c.__name__]\n"
    "from nbnet import check, simd\n"
    "print(check.compiling_note())\n"
    "print(simd.CACHE_PATH)\n"
)


def test_a_numba_cache_dir_numba_passes_over_is_named_with_where_the_kernels_go(tmp_path):
    """A NUMBA_CACHE_DIR that cannot be written (read-only to its user, a read-only mount even of a
    warmed cache: Numba loads only from a folder it can write; here a path under a file, which stops
    root too): Numba went on in silence to the package's __pycache__ or ~/.cache/numba, and the note
    said "cached for later runs" as if in the folder the user named. It now says where, and why;
    where Numba has no other folder, the note no longer asks for a NUMBA_CACHE_DIR that is set."""
    blocked = tmp_path / "a file"
    blocked.write_text("")
    asked = blocked / "cache"
    env = {"NUMBA_CACHE_DIR": str(asked), "XDG_CACHE_HOME": str(tmp_path / "home cache")}
    p = run_python(PASSED_OVER.format(fallback=True), **env)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    note, path = p.stdout.splitlines()
    assert path.startswith(str(tmp_path / "home cache" / "numba"))
    assert note == (f"compiling kernels for this CPU (cached for later runs in {path}, as NUMBA_CACHE_DIR {asked} "
                    "cannot be written: [Errno 20] Not a directory)")
    p = run_python(PASSED_OVER.format(fallback=False), **env)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.splitlines() == [f"compiling kernels for this CPU (not cached: NUMBA_CACHE_DIR {asked} cannot be "
                                     "written: [Errno 20] Not a directory, nor any folder Numba falls back to)", "None"]


def test_a_numba_cache_dir_passed_over_for_a_folder_its_name_begins_is_still_named(tmp_path):
    """NUMBA_CACHE_DIR=.../cache, unwritable, and Numba's fallback in .../cache2 (here its user-wide
    folder, XDG_CACHE_HOME): the fallback's path begins with the text of the one named, and a plain
    prefix test took it for inside it, the note promising the named folder's cache."""
    asked = tmp_path / "cache"
    asked.write_text("")  # a file: no folder can be made there
    env = {"NUMBA_CACHE_DIR": str(asked), "XDG_CACHE_HOME": str(tmp_path / "cache2")}
    p = run_python(PASSED_OVER.format(fallback=True), **env)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    note, path = p.stdout.splitlines()
    assert path.startswith(str(tmp_path / "cache2" / "numba"))
    assert note.startswith(f"compiling kernels for this CPU (cached for later runs in {path}, as NUMBA_CACHE_DIR "
                           f"{asked} cannot be written"), note


def test_nbnet_sklearn_without_scikit_learn_names_the_extra(monkeypatch):
    """`from nbnet.sklearn import MLPClassifier` in an install without scikit-learn ended in
    Python's "No module named 'sklearn'", which does not say that nbnet has an extra for it, as
    --plot, --device cuda and mpiexec do."""
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn: ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "nbnet.sklearn", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'nbnet\[sklearn\]'") as e:
        importlib.import_module("nbnet.sklearn")
    assert e.value.name == "sklearn"


def test_pyproject_license_is_an_spdx_expression():
    """`license = { text = "MIT" }` made every build print setuptools' deprecation box, three
    times, saying such projects stop building after 2027-02-18; an SPDX string is the form
    setuptools >= 77 reads (PEP 639), so the build system asks for that setuptools."""
    assert pyproject()["project"]["license"] == "MIT"
    assert "setuptools>=77" in pyproject()["build-system"]["requires"]


def source_version():
    """nbnet.__version__ as written in nbnet/__init__.py (read as setuptools reads it, unimported)."""
    tree = ast.parse((ROOT / "nbnet" / "__init__.py").read_text(encoding="utf-8"))
    [value] = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
               and [getattr(t, "id", None) for t in node.targets] == ["__version__"]]
    return value


def test_the_version_is_written_in_one_place():
    """The version was written twice, in pyproject.toml and as nbnet.__version__ (which `nbnet
    --version`, `info` and `check` print): a release that bumped one would install under one
    number and call itself another. pyproject.toml takes nbnet.__version__ (the sdist test below
    checks that a build does)."""
    project = pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "nbnet.__version__"}
    assert source_version().count(".") >= 2


def test_the_test_extra_asks_for_the_click_the_tests_need():
    """The tests read CliRunner's result.stderr, which click keeps apart from stdout from 8.2 on
    (before, `result.stderr` raises "stderr not separately captured"): `pip install -e '.[test]'`
    into an environment that had click 8.1 kept it, and 9 tests of test_cli.py failed."""
    assert "click>=8.2" in pyproject()["project"]["optional-dependencies"]["test"]


def test_sdist_holds_the_whole_test_suite(tmp_path):
    """setuptools' default sdist takes tests/test*.py alone: without tests/conftest.py and
    gpu_cases.py, profiling/ (test_gradients and test_profiling import profiling/common.py) and
    examples/ (test_examples runs them), the unpacked sdist's suite stopped at collection."""
    pytest.importorskip("setuptools", minversion="77")
    src = tmp_path / "src"
    junk = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.nbi", "*.nbc", "*.egg-info", ".*")
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    for folder in ("nbnet", "tests", "examples", "profiling"):
        shutil.copytree(ROOT / folder, src / folder, ignore=junk)
    (src / "nbnet" / "__pycache__").mkdir()
    (src / "nbnet" / "__pycache__" / "cpu.relu_forward-1.py311.nbi").write_bytes(b"")  # a kernel cache
    build = "from setuptools import build_meta; build_meta.build_sdist('dist'); build_meta.build_wheel('dist')"
    p = subprocess.run([sys.executable, "-c", build], cwd=src, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    [wheel], [sdist] = (list((src / "dist").glob(pattern)) for pattern in ("*.whl", "*.tar.gz"))
    with zipfile.ZipFile(wheel) as wheel:  # pyproject says MIT: its text comes along
        assert [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")], wheel.namelist()
    with tarfile.open(sdist) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
        [pkg_info] = [m for m in sdist.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")]
        metadata = sdist.extractfile(pkg_info).read().decode()
    assert f"\nVersion: {source_version()}\n" in metadata  # the one version, nbnet.__version__
    for needed in ("tests/conftest.py", "tests/gpu_cases.py", "tests/test_install.py", "profiling/common.py",
                   "examples/mnist.py", "nbnet/cpu.py", "README.md", "LICENSE"):
        assert needed in names
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".nbi", ".nbc"))]


def test_import_loads_no_extra_and_no_network_stack():
    """`import nbnet` (every `nbnet` command) loads what training needs: no optional extra, and not
    urllib.request, http.client and ssl, which only --download uses (some 0.1 s of a 1.2 s import)."""
    code = ("import sys, nbnet\n"
            "print(sorted(m for m in ('matplotlib', 'sklearn', 'mpi4py', 'numba.cuda', 'torch', 'ssl',\n"
            "                         'http.client', 'urllib.request') if m in sys.modules))\n")
    p = run_python(code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_an_emulated_layout_never_caches_beside_the_machines_own_kernels(tmp_path):
    """NBNET_SIMD_LAYOUT's kernels go to their own folder in NUMBA_CACHE_DIR, as the plain cache
    files kernels under the CPU and not the layout. Where NUMBA_CACHE_DIR could not be written,
    Numba went on to the package's __pycache__ and filed them there: the next plain run loaded the
    emulated kernels (a 256-128 spiral epoch then gave the NEON layout's weights, not this CPU's,
    and slowly). They compile in each process instead."""
    blocked = tmp_path / "a file"
    blocked.write_text("")
    code = ("import nbnet\n"
            "from nbnet import cpu, simd\n"
            "print([getattr(k._cache, 'cache_path', None) for k in (simd.row_blocks, cpu.relu_forward.serial)])\n")
    p = run_python(code, NBNET_SIMD_LAYOUT="neon", NUMBA_CACHE_DIR=str(blocked / "cache"))
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.strip() == "[None, None]"


def test_python_with_interpreter_options_dash_m_nbnet_is_the_command(tmp_path):
    """`python -u -m nbnet` (unbuffered, as in containers and CI logs), `python -X dev -m nbnet`:
    the command's start-up checks looked for "-m nbnet" right after the interpreter only, so with
    an option before it NUMBA_NUM_THREADS=0 ended in Numba's traceback, not one Error line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_NUM_THREADS": "0"}
    p = subprocess.run([sys.executable, "-u", "-X", "utf8", "-m", "nbnet", "info"], capture_output=True, text=True,
                       env=env, timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == "Error: NUMBA_NUM_THREADS must be a positive number of threads, got '0'\n"


@pytest.mark.parametrize("argv,module", [
    (["python", "-m", "nbnet", "train"], "nbnet"), (["python", "-mnbnet.cli"], "nbnet.cli"),
    (["python", "-u", "-X", "dev", "-W", "error", "-OO", "-m", "nbnet"], "nbnet"),
    (["python", "-uWerror", "-m", "x"], "x"),
    (["python", "-uW", "error", "-m", "x"], "x"), (["python", "script.py", "-m", "nbnet"], None),
    (["python", "-c", "import nbnet", "-m", "nbnet"], None), (["python", "-uc", "pass", "-m", "nbnet"], None),
    (["python", "--check-hash-based-pycs", "always", "-m", "nbnet"], "nbnet"), (["python"], None),
    (["python", "-", "-m", "nbnet"], None),
    # after "--" comes the script (here one named -m), and a -c's code may be in its group; an -X
    # or -W value in its group is the option's whole value, whatever letters it holds (m, c)
    (["python", "--", "-m", "nbnet"], None), (["python", "-cimport nbnet", "-m", "nbnet"], None),
    (["python", "-Xfrozen_modules=off", "-m", "nbnet"], "nbnet"),
    (["python", "-Wignore::DeprecationWarning", "-m", "nbnet"], "nbnet")])
def test_the_module_python_runs(argv, module):
    from nbnet import _startup

    assert _startup.module_run(argv) == module


@pytest.mark.parametrize("argv,orig,command", [
    (["/usr/local/bin/nbnet", "train"], ["/usr/bin/python3", "/usr/local/bin/nbnet", "train"], True),
    (["nbnet", "train"], ["python", "nbnet", "train"], True),
    (["/home/me/nbnet/run.py"], ["python", "/home/me/nbnet/run.py"], False),
    (["-m", "train"], ["python", "-m", "nbnet", "train"], True), (["-c"], ["python", "-c", "import nbnet"], False),
    # Windows: pip's nbnet.exe runs its own zip with argv[0] the .exe's path until nbnet has loaded
    ([r"C:\venv\Scripts\nbnet.exe", "train"], [r"C:\Python311\python.exe", r"C:\venv\Scripts\nbnet.exe"], True),
    ([r"C:\venv\Scripts\nbnet-script.py"], ["python", r"C:\venv\Scripts\nbnet-script.py"], True),
    ([r"C:\work\nbnet.exe.py"], ["python", r"C:\work\nbnet.exe.py"], False)])
def test_the_command_is_known_by_its_scripts_name_or_module(monkeypatch, argv, orig, command):
    """The console script pip installs runs with sys.argv[0] its full path (/usr/local/bin/nbnet, a
    venv's bin/nbnet): the command is known by the name, not the path (tests elsewhere set argv[0]
    to plain 'nbnet'), else its start-up checks and signal handling were off for every user."""
    import ntpath  # noqa: PLC0415

    from nbnet import _startup

    if argv[0].startswith("C:"):  # read as Windows reads it
        monkeypatch.setattr(_startup.os, "path", ntpath)
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig, raising=False)
    assert _startup._is_the_command() is command
