"""scripts/setup.sh skips the install while its stamp matches, and reinstalls after a change.

Runs the real script in a scratch copy of the repo layout, with a stand-in `uv` and
`.venv/bin/python` that record how they were called: the logic under test is the
script's, and the real .venv is never touched.
"""

import os
import shutil
import stat
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Answers the two things setup.sh asks the venv's Python (its version, a hash) for
# real, through the Python running this test; every other call (find_spec, the
# post-install import check) is logged and succeeds.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $*" >> "$CALLS"
case "$*" in
  *hashlib*|*"print(sys.version)"*) exec "$REAL_PYTHON" "$@" ;;
  --version) echo "Python 3.10.99" ;;
  *"-m pip install"*) exit "${PIP_EXIT:-0}" ;;
esac
exit 0
"""
FAKE_UV = """#!/usr/bin/env bash
echo "uv $*" >> "$CALLS"
exit "${UV_EXIT:-0}"
"""


def write_executable(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


@pytest.fixture
def scratch(tmp_path):
    os.makedirs(tmp_path / "scripts")
    shutil.copy(os.path.join(REPO, "scripts", "setup.sh"), tmp_path / "scripts" / "setup.sh")
    (tmp_path / "setup.py").write_text("# setup.py v1\n")
    (tmp_path / "constraints.txt").write_text("tfx==1.16.0\n")
    write_executable(str(tmp_path / ".venv" / "bin" / "python"), FAKE_PYTHON)
    write_executable(str(tmp_path / "bin" / "uv"), FAKE_UV)
    return tmp_path


def setup_run(root, *lane, **env):
    calls = root / "calls.log"
    calls.write_text("")
    proc = subprocess.run(
        ["bash", str(root / "scripts" / "setup.sh"), *lane], capture_output=True, text=True,
        timeout=60, env={**os.environ, "PATH": f"{root / 'bin'}:{os.environ['PATH']}",
                         "CALLS": str(calls), "REAL_PYTHON": sys.executable,
                         "PYTHON310": sys.executable, **env})
    installs = [line for line in calls.read_text().splitlines() if "pip install" in line]
    return proc, installs


def test_second_run_skips_the_install_and_a_change_reinstalls(scratch):
    proc, installs = setup_run(scratch)
    assert proc.returncode == 0, proc.stderr
    assert len(installs) == 1 and "-c constraints.txt -e .[tfx,test,test-tfx]" in installs[0]
    assert "setup: .venv ready" in proc.stdout
    stamp = (scratch / ".venv" / ".setup-stamp").read_text()

    proc, installs = setup_run(scratch)
    assert proc.returncode == 0, proc.stderr
    assert installs == [] and "up to date" in proc.stdout

    for changed in ("constraints.txt", "setup.py"):
        with open(scratch / changed, "a") as f:
            f.write("# changed\n")
        proc, installs = setup_run(scratch)
        assert proc.returncode == 0 and len(installs) == 1, (changed, proc.stdout, proc.stderr)
        assert (scratch / ".venv" / ".setup-stamp").read_text() != stamp
        stamp = (scratch / ".venv" / ".setup-stamp").read_text()


def test_a_failed_install_leaves_no_stamp(scratch):
    assert setup_run(scratch)[0].returncode == 0
    (scratch / "constraints.txt").write_text("tfx==1.16.1\n")
    # uv fails, then the pip fallback fails too.
    proc, installs = setup_run(scratch, UV_EXIT="1", PIP_EXIT="1")
    assert len(installs) == 2, installs
    assert proc.returncode != 0
    assert not (scratch / ".venv" / ".setup-stamp").exists()


def test_the_current_lane_has_its_own_venv_constraints_and_stamp(scratch):
    """`setup.sh current`: .venv-current under constraints-current.txt, its own stamp;
    the pinned lane's .venv is not touched."""
    (scratch / "constraints-current.txt").write_text("tensorflow==2.21.0\n")
    write_executable(str(scratch / ".venv-current" / "bin" / "python"), FAKE_PYTHON)
    proc, installs = setup_run(scratch, "current", PYTHON_FOR_LANE=sys.executable)
    assert proc.returncode == 0, proc.stderr
    assert len(installs) == 1, installs
    assert "-p .venv-current/bin/python -c constraints-current.txt " \
           "-e .[serving,transform,kfp,test]" in installs[0]
    assert "setup: .venv-current ready" in proc.stdout
    assert (scratch / ".venv-current" / ".setup-stamp").exists()
    assert not (scratch / ".venv" / ".setup-stamp").exists()
    proc, installs = setup_run(scratch, "current", PYTHON_FOR_LANE=sys.executable)
    assert installs == [] and "up to date" in proc.stdout
    (scratch / "constraints-current.txt").write_text("tensorflow==2.21.1\n")
    proc, installs = setup_run(scratch, "current", PYTHON_FOR_LANE=sys.executable)
    assert proc.returncode == 0 and len(installs) == 1, (proc.stdout, proc.stderr)


def test_an_unknown_lane_is_refused(scratch):
    proc, installs = setup_run(scratch, "newest")
    assert proc.returncode == 2 and installs == []
    assert "unknown lane 'newest'. allowed: pinned, current" in proc.stderr
