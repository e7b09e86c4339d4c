"""The publish primitives (export_archive.publish) and what --overwrite may replace.

The primitives are tested on real directories, through renameat2 and through the
rename(2)-only fallback used where renameat2 is missing; --overwrite refusals run
the command line (forked, see helpers/fault_models) and check nothing was moved,
hidden or left behind.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from export_archive import publish
from helpers import fault_models as fm

pytestmark = pytest.mark.faults

@pytest.fixture(params=["renameat2", "rename-fallback"])
def primitives(request, monkeypatch):
    if request.param == "rename-fallback":
        monkeypatch.setattr(publish, "_renameat2_fn", None)
    elif publish._renameat2_fn is None:
        pytest.skip("no renameat2 in this C library")
    return request.param


def staged(path, marker, files=3):
    os.makedirs(path)
    for i in range(files):
        (path / f"f{i}").write_text(marker)
    return str(path)


def content(path):
    return {p.name: p.read_text() for p in path.iterdir()}


def test_publish_new_to_absent_and_empty_paths(tmp_path, primitives):
    publish.publish_new(staged(tmp_path / "a", "new"), str(tmp_path / "out"))
    assert content(tmp_path / "out") == {"f0": "new", "f1": "new", "f2": "new"}
    (tmp_path / "empty").mkdir()
    publish.publish_new(staged(tmp_path / "b", "new"), str(tmp_path / "empty"))
    assert content(tmp_path / "empty")["f0"] == "new"
    assert sorted(os.listdir(tmp_path)) == ["empty", "out"]


@pytest.mark.parametrize("occupant", ["directory", "file"])
def test_publish_new_never_replaces(tmp_path, primitives, occupant):
    out = tmp_path / "out"
    if occupant == "directory":
        staged(out, "theirs", files=1)
    else:
        out.write_text("theirs")
    src = staged(tmp_path / "a", "mine")
    with pytest.raises(FileExistsError):
        publish.publish_new(src, str(out))
    assert (content(out) == {"f0": "theirs"}) if occupant == "directory" \
        else out.read_text() == "theirs"
    assert content(tmp_path / "a")["f0"] == "mine"   # the caller cleans it up


def test_exchange_swaps_whole_directories(tmp_path, primitives):
    out = staged(tmp_path / "out", "old", files=2)
    src = staged(tmp_path / "new", "new", files=3)
    publish.exchange(src, out)
    assert content(tmp_path / "out") == {"f0": "new", "f1": "new", "f2": "new"}
    assert content(tmp_path / "new") == {"f0": "old", "f1": "old"}
    assert sorted(os.listdir(tmp_path)) == ["new", "out"]


def test_publish_overwrite_refused_by_the_check_changes_nothing(tmp_path, primitives):
    out = staged(tmp_path / "out", "old", files=1)
    src = staged(tmp_path / "new", "new", files=1)

    def refuse(path):
        raise ValueError(f"not replaceable: {path}")
    with pytest.raises(ValueError, match="not replaceable"):
        publish.publish(src, out, overwrite=True, check_replaceable=refuse)
    assert content(tmp_path / "out") == {"f0": "old"}
    assert publish.publish(src, out, overwrite=True) is True
    assert content(tmp_path / "out") == {"f0": "new"}


def test_fsync_tree_syncs_every_file_and_directory(tmp_path, monkeypatch):
    root = staged(tmp_path / "m", "x", files=2)
    staged(tmp_path / "m" / "variables", "v", files=2)
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    publish.fsync_tree(root)
    publish.fsync_dir(str(tmp_path))
    expected = [os.path.join(d, n) for d, dirs, files in os.walk(root)
                for n in files] + [root, os.path.join(root, "variables"), str(tmp_path)]
    assert sorted(synced) == sorted(expected)
    # Children before their directory, and the parent (after the rename) last.
    assert synced.index(root) > synced.index(os.path.join(root, "variables", "f0"))


HOLDER = textwrap.dedent("""
    import sys, time
    from export_archive import publish
    with publish.Staging(sys.argv[1]) as staging:
        print(staging.path, flush=True)
        sys.stdin.read()   # until the test closes stdin
""")


def test_stale_staging_of_dead_writers_removed_live_writers_kept(tmp_path):
    out = str(tmp_path / "model")
    # A live writer: another process inside Staging, holding its flock.
    live = subprocess.Popen([sys.executable, "-c", HOLDER, out], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=fm.child_env())
    try:
        live_path = live.stdout.readline().strip()
        # A dead writer's leftover (pid of a process that has exited), with files.
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True)
        dead_path = staged(tmp_path / f".model.tmp-{dead.stdout.strip()}-0badc0de", "half")
        # A name whose pid is alive but that holds no lock yet (a writer between
        # its mkdir and its flock): kept, since its pid is alive.
        sleeper = subprocess.Popen(["sleep", "60"])
        young = tmp_path / f".model.tmp-{sleeper.pid}-12345678"
        young.mkdir()
        # Someone else's file that merely looks similar is not ours to touch.
        (tmp_path / ".model.tmp-notours").write_text("user")
        with publish.Staging(out) as staging:
            assert not os.path.exists(dead_path)
            assert os.path.isdir(live_path) and young.is_dir()
            assert os.path.isdir(staging.path)
        assert not os.path.exists(staging.path)
        assert sorted(os.listdir(tmp_path)) == sorted(
            [os.path.basename(live_path), young.name, ".model.tmp-notours"])
        sleeper.kill()
        sleeper.wait()
    finally:
        live.stdin.close()
        live.wait(30)
    assert not os.path.exists(live_path)   # its own exit removed it
    assert publish.remove_stale_staging(str(tmp_path), "model") == [str(young)]


def test_publish_record_knows_whether_the_export_was_published(tmp_path):
    out = str(tmp_path / "model")
    staged(tmp_path / "model", "old", files=1)
    record = publish.PublishRecord()
    assert not record.published()
    with publish.Staging(out, record) as staging:
        (tmp_path / os.path.basename(staging.path) / "f0").write_text("new")
        assert not record.published()
        publish.publish(staging.path, out, overwrite=True)
        assert record.published()
    record.clean_up()
    assert content(tmp_path / "model") == {"f0": "new"}
    assert os.listdir(tmp_path) == ["model"]


# ---- --overwrite through the command line


@pytest.fixture(scope="module")
def small_model(zygote, tmp_path_factory):
    return fm.save_models(zygote, str(tmp_path_factory.mktemp("publish")), {"small": 8})["small"]


def _export(zygote, model, out, log):
    return zygote.run(fm.export_argv(model, out, overwrite=True), log=log)


@pytest.mark.parametrize("occupant", ["file", "directory-without-savedmodel", "symlink"])
def test_overwrite_refuses_what_is_not_an_export(zygote, small_model, tmp_path, occupant):
    out = tmp_path / "model"
    if occupant == "file":
        out.write_text("the user's notes")
    elif occupant == "symlink":
        (tmp_path / "target").mkdir()
        (tmp_path / "target" / "saved_model.pb").write_text("x")
        out.symlink_to(tmp_path / "target")
    else:
        out.mkdir()
        (out / "data.csv").write_text("1,2,3")
    before = sorted(os.listdir(tmp_path))
    run = _export(zygote, small_model, str(out), str(tmp_path / "log"))
    assert run.status == 2, run
    assert "Traceback" not in run.stderr
    assert "--overwrite (overwrite=True) refused" in run.stderr and str(out) in run.stderr
    assert "Nothing was changed" in run.stderr
    # Untouched, and nothing moved aside or hidden (no .model.old-XXXX).
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["log.err", "log.out"])
    if occupant == "file":
        assert out.read_text() == "the user's notes"
    elif occupant == "directory-without-savedmodel":
        assert content(out) == {"data.csv": "1,2,3"}


@pytest.mark.parametrize("occupant", ["empty-directory", "savedmodel"])
def test_overwrite_replaces_an_export_or_an_empty_directory(zygote, small_model, tmp_path,
                                                            occupant):
    out = tmp_path / "model"
    out.mkdir()
    if occupant == "savedmodel":
        assert _export(zygote, small_model, str(out), str(tmp_path / "first")).status == 0
    run = _export(zygote, small_model, str(out), str(tmp_path / "log"))
    assert run.status == 0, run
    assert ("replaced the previous export" in run.stdout) == (occupant == "savedmodel")
    assert fm.inspect(zygote, str(out), str(tmp_path))["state"] == "complete"
    assert fm.staging_leftovers(str(tmp_path)) == []
