"""The environment refuses the write: disk full, file size limit, read-only parent.

Disk full uses a small tmpfs (root only: mount(2) needs it; skipped otherwise).
The file size limit (`RLIMIT_FSIZE`, `ulimit -f`) is set in the forked run itself
and needs no privilege. Either way: exit 1, one paragraph naming the path and the
bytes needed, no TensorFlow traceback, the previous export intact, no staging
left. Unusable output paths are refused with exit 2 before any work: the model
given there is garbage, so an error about it would show that work had started.
"""

import os
import re
import subprocess

import pytest

from helpers import fault_models as fm

pytestmark = pytest.mark.faults

MEDIUM_VARIABLES = 4 * (1024 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 2 + 2)


@pytest.fixture(scope="module")
def bench(zygote, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("disk"))
    models = fm.save_models(zygote, root, {"small": 16, "medium": 1024})
    garbage = os.path.join(root, "garbage.keras")
    with open(garbage, "wb") as f:
        f.write(b"not a model")
    bench = {"root": root, "models": models, "garbage": garbage, "held": []}
    yield bench
    fm.report("disk full", len(bench["held"]), sum(bench["held"]))


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a tmpfs of the given size (bytes) and options; unmounted afterwards."""
    mounted = []

    def mount(size, options=""):
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        point = str(tmp_path / f"fs{len(mounted)}")
        os.makedirs(point)
        opts = f"size={size}" + (f",{options}" if options else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", point],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point
    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", point], check=True)


def _previous(zygote, bench, out):
    run = zygote.run(fm.export_argv(bench["models"]["small"], out, "previous"), log=out + "-prev")
    assert run.status == 0, run
    return fm.inspect(zygote, out, bench["root"])


def _check_write_refused(run, out, reason, needed_at_least):
    assert run.status == 1, run
    assert "Traceback" not in run.stderr, run
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("export-archive: error: "), run
    assert out in lines[0] and reason in lines[0], run
    needed = int(re.search(r"needs at least (\d+) bytes", lines[0]).group(1))
    assert needed >= needed_at_least, (needed, run)
    assert "Nothing was published" in lines[0]
    return lines[0]


@pytest.mark.parametrize("previous", [True, False], ids=["over-previous", "fresh"])
def test_disk_full_on_tmpfs(zygote, bench, tmpfs, previous):
    bench["held"].append(False)
    fs = tmpfs(3 * 1024 * 1024)
    out = os.path.join(fs, "model")
    before = _previous(zygote, bench, out) if previous else {"state": "absent"}
    run = zygote.run(fm.export_argv(bench["models"]["medium"], out, overwrite=previous),
                     log=os.path.join(bench["root"], f"full-{previous}"))
    line = _check_write_refused(run, out, "No space left on device", MEDIUM_VARIABLES)
    assert "bytes are free on the filesystem of" in line
    assert fm.inspect(zygote, out, bench["root"]) == before
    assert fm.staging_leftovers(fs) == []
    bench["held"][-1] = True


def test_file_size_limit(zygote, bench, tmp_path):
    bench["held"].append(False)
    out = str(tmp_path / "model")
    before = _previous(zygote, bench, out)
    run = zygote.run(fm.export_argv(bench["models"]["medium"], out, overwrite=True),
                     log=str(tmp_path / "fsize"), fsize=1024 * 1024)
    line = _check_write_refused(run, out, "File too large", MEDIUM_VARIABLES)
    assert "ulimit -f" in line and "1048576 bytes" in line
    assert fm.inspect(zygote, out, bench["root"]) == before
    assert fm.staging_leftovers(str(tmp_path)) == []
    bench["held"][-1] = True


def _refused_before_work(zygote, bench, out, log, *needles):
    run = zygote.run(fm.export_argv(bench["garbage"], out), log=log)
    assert run.status == 2, run
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run
    for needle in needles:
        assert needle in lines[0], run
    assert "garbage.keras" not in lines[0], run   # the model was never opened


def test_read_only_parent(zygote, bench, tmp_path, tmpfs):
    bench["held"].append(False)
    if os.geteuid() == 0:   # root writes through mode bits: use a read-only mount
        parent = tmpfs(1024 * 1024, "ro")
        reason = "read-only filesystem"
    else:
        parent = str(tmp_path / "ro")
        os.makedirs(parent)
        os.chmod(parent, 0o555)
        reason = "not writable"
    _refused_before_work(zygote, bench, os.path.join(parent, "model"),
                         str(tmp_path / "ro-log"), reason, parent)
    assert os.listdir(parent) == []
    bench["held"][-1] = True


def test_parent_is_a_file(zygote, bench, tmp_path):
    bench["held"].append(False)
    blocker = tmp_path / "file"
    blocker.write_text("user data")
    _refused_before_work(zygote, bench, str(blocker / "sub" / "model"),
                         str(tmp_path / "log"), f"{blocker} is a file")
    assert blocker.read_text() == "user data"
    assert sorted(os.listdir(tmp_path)) == ["file", "log.err", "log.out"]
    bench["held"][-1] = True


def test_empty_output_path(zygote, bench, tmp_path):
    bench["held"].append(False)
    cwd_before = sorted(os.listdir(tmp_path))
    run = zygote.run(fm.export_argv(bench["garbage"], ""), log=str(tmp_path / "log"),
                     cwd=str(tmp_path))
    assert run.status == 2, run
    assert "output path '' is empty" in run.stderr and "Traceback" not in run.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(cwd_before + ["log.err", "log.out"])
    bench["held"][-1] = True
