"""The test suite's own guard (conftest.py): a hung test ends the run, saying where it hung."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_a_hung_test_ends_the_run_with_its_traceback(tmp_path):
    """Without the guard, a test waiting for ever (a child process that never exits) ran into
    CI's time limit, and CI said nothing of which test it was."""
    (tmp_path / "test_hang.py").write_text(
        "import time\n\ndef test_quick():\n    pass\n\ndef test_waits_for_ever():\n    time.sleep(60)\n")
    env = dict(os.environ, NBNET_TEST_TIMEOUT="1", PYTHONPATH=str(TESTS))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                        "-p", "no:randomly", "--rootdir", str(tmp_path), "-c", os.devnull, "test_hang.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Timeout (0:00:01)!" in r.stderr, r.stderr
    assert 'test_hang.py", line 7 in test_waits_for_ever' in r.stderr, r.stderr


def test_a_timeout_that_is_not_a_number_is_one_usage_error(tmp_path):
    """NBNET_TEST_TIMEOUT=5m raised float()'s ValueError while conftest loaded: a traceback
    instead of the test run, naming neither the variable nor what it takes."""
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    for bad in ("5m", "-1", "inf", "nan"):
        env = dict(os.environ, NBNET_TEST_TIMEOUT=bad, PYTHONPATH=str(TESTS))
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                            "-p", "no:randomly", "--rootdir", str(tmp_path), "-c", os.devnull, "test_one.py"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50)
        assert r.returncode == 4, (bad, r.stdout + r.stderr)
        assert f"NBNET_TEST_TIMEOUT='{bad}': give the seconds" in r.stderr, r.stderr
        assert "Traceback" not in r.stdout + r.stderr
