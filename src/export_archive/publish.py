"""Crash-safe publishing of a staged directory at its final path (local filesystems).

An export is written to a staging directory beside its destination, made durable
(`fsync_tree`), and then published by one rename, so a reader (TF Serving, Pusher)
never sees a half-written SavedModel:

- `publish_new` renames with RENAME_NOREPLACE: if another writer published there
  first, this one fails instead of silently replacing it.
- `exchange` swaps the staged directory with the existing export in one
  RENAME_EXCHANGE: the path always holds the complete old or the complete new
  export, never nothing, and the old one ends up at the staging path for removal.
- `Staging` names a staging directory after its owner's pid and holds an flock on
  it while it is in use, so `remove_stale_staging` can clean what killed writers
  left behind without touching a live writer's directory.
- `check_output_path` refuses an unusable output path before any work, and the
  `Output*Error` classes are what the writer raises about its output.

No TensorFlow here: the CLI checks an output path before importing it.

Example::

    with Staging("/models/m") as staging:
        write_savedmodel(staging.path)
        fsync_tree(staging.path)
        publish_new(staging.path, "/models/m")
        fsync_dir("/models")
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import uuid
from typing import Callable, Iterator, List, Optional

from absl import logging

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
# renameat2 answers these when the kernel (< 3.15) or the filesystem lacks the
# flag; the callers then fall back to plain rename(2) sequences.
_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP)
_STAGING_RE = r"\.{base}\.tmp-(?P<pid>\d+)-[0-9a-f]{{8}}"


def _load_renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2   # glibc >= 2.28; absent on macOS and older C libraries
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2_fn = _load_renameat2()


def _renameat2(src: str, dst: str, flags: int) -> bool:
    """True when done, False when this system cannot do it; OSError on failure."""
    if _renameat2_fn is None:
        return False
    if _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), src, None, dst)


def publish_new(src: str, dst: str) -> None:
    """Renames directory `src` to `dst` unless something non-empty is at `dst`.

    Raises FileExistsError when `dst` is a file or a non-empty directory, even if it
    appeared a moment ago: the check and the rename are one system call, so two
    concurrent writers can never both succeed.
    """
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        _replace_empty(src, dst)
        return
    with _parent_lock(dst):
        # No RENAME_NOREPLACE here: claim the name with mkdir, which is atomic
        # everywhere; the rename then replaces that empty directory.
        try:
            os.mkdir(dst)
        except FileExistsError:
            _replace_empty(src, dst)
            return
        try:
            _replace_empty(src, dst)
        except BaseException:
            _rmdir_quietly(dst)
            raise


def _replace_empty(src: str, dst: str) -> None:
    # rename(2) itself replaces only an empty directory and refuses a non-empty one
    # or a file in the same step, so an empty output directory (the user's, or the
    # name claimed above) is taken over without a window for another writer.
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, f"{dst} exists and is not empty", dst) from e
        raise


@contextlib.contextmanager
def _parent_lock(dst: str) -> Iterator[None]:
    """Serialises the rename(2)-only fallbacks of writers to one parent directory:
    without renameat2 an exchange takes two renames, and another writer's publish
    must not land in between. An flock on the parent directory itself, so no lock
    file is left behind."""
    fd = os.open(os.path.dirname(os.path.abspath(dst)),
                 os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def publish(src: str, dst: str, overwrite: bool,
            check_replaceable: Optional[Callable[[str], None]] = None) -> bool:
    """Publishes directory `src` at `dst`; True when it replaced an existing export.

    An empty directory at `dst` is simply taken over. Without `overwrite`,
    FileExistsError if anything else is (or appears) at `dst`. With it,
    `check_replaceable(dst)` may refuse what is there by raising; otherwise the two
    are exchanged atomically.
    """
    # Publication is one rename(2)-family call, so readers (TF Serving, Pusher) see
    # the old export or the new one, and two writers cannot both win:
    # - new path: RENAME_NOREPLACE, which fails if another writer published first
    #   (a check-then-rename would let the slower writer silently replace it);
    # - overwrite: RENAME_EXCHANGE, which swaps in one step; renaming the old export
    #   aside first would leave the path empty in between, and a kill there would
    #   leave no model where the server looks.
    for _ in range(3):   # again only when the path appears or vanishes meanwhile
        if overwrite and os.path.lexists(dst) and not _is_empty_dir(dst):
            if check_replaceable is not None:
                check_replaceable(dst)
            try:
                exchange(src, dst)
                return True
            except FileNotFoundError:
                continue
        try:
            publish_new(src, dst)
            return False
        except FileExistsError:
            if not overwrite:
                raise
    raise FileExistsError(errno.EEXIST, f"{dst} kept changing while publishing", dst)


def exchange(src: str, dst: str) -> None:
    """Atomically swaps directories `src` and `dst` (both must exist).

    Afterwards `dst` holds what was staged and `src` holds the previous export,
    which the caller removes. FileNotFoundError when `dst` vanished meanwhile.
    """
    if _renameat2(src, dst, _RENAME_EXCHANGE):
        return
    # Fallback (no RENAME_EXCHANGE: macOS, kernels < 3.15, some network and FUSE
    # filesystems): two renames. Between them `dst` is briefly absent; a kill in
    # that window leaves the previous export whole at `aside`, which is a staging
    # name and so is cleaned by the next run. This is the best POSIX rename allows.
    with _parent_lock(dst):
        aside = f"{src}.old"
        os.rename(dst, aside)
        try:
            os.rename(src, dst)
        except BaseException:   # also an interrupt: put the previous export back
            os.rename(aside, dst)
            raise
        os.rename(aside, src)


def fsync_tree(root: str) -> None:
    """fsyncs every file and directory under `root`, bottom-up, then `root`.

    Without it a power loss after the publishing rename can leave the renamed
    directory holding empty or truncated files: the rename may reach the disk
    before the data it points to.
    """
    for dirname, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(os.path.join(dirname, name), os.O_RDONLY)
        fsync_dir(dirname)


def fsync_dir(path: str) -> None:
    """Makes the entries of directory `path` (a rename into it) durable."""
    _fsync_path(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some filesystems (and directories on some platforms) do not support
        # fsync; durability is then theirs to give, and that is not an error.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class Staging:
    """A staging directory `.NAME.tmp-PID-XXXXXXXX` beside `output_dir`.

    Entering removes stale staging directories of dead writers, creates a new one
    and holds an exclusive flock on it until exit; exit removes whatever is still at
    the staging path (a failed export, or the previous export after `exchange`).
    The flock, not the pid, is what tells a live writer: the kernel drops it when
    its owner dies, however it dies, and a recycled pid cannot fake it.
    """

    def __init__(self, output_dir: str, record: Optional["PublishRecord"] = None):
        self.output_dir = output_dir
        self.record = record
        self.parent = os.path.dirname(os.path.abspath(output_dir))
        self.base = os.path.basename(os.path.abspath(output_dir))
        self.path = os.path.join(
            self.parent, f".{self.base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self._fd: Optional[int] = None

    def __enter__(self) -> "Staging":
        remove_stale_staging(self.parent, self.base)
        if self.record is not None:
            # Before mkdir: an interrupt right after it must still find the path.
            self.record.output_dir, self.record.staging = self.output_dir, self.path
        try:
            os.mkdir(self.path)
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self.record is not None:
                self.record.staged()
        except BaseException:
            self._release()
            _rmtree_quietly(self.path)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            _rmtree_quietly(self.path)
        finally:
            self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # also drops the flock
            self._fd = None


class OutputError(Exception):
    """The output path cannot take the export; the message says why and how to fix it."""


class OutputExistsError(OutputError, FileExistsError):
    """Something is at the output path that this export must not replace."""


class OutputPathError(OutputError, ValueError):
    """The output path is unusable (empty, under a file, read-only): found before any work."""


class OutputWriteError(OutputError, OSError):
    """The environment failed the write (disk full, file size limit, read-only
    filesystem). Nothing was published; the message names the path and the bytes
    needed. `errno` is the system's error number."""

    def __str__(self) -> str:
        return self.strerror   # the paragraph, without OSError's "[Errno N]" prefix


def check_output_path(output_dir: str) -> None:
    """Refuses an output path that cannot work, before any model is loaded."""
    if not output_dir.strip():
        raise OutputPathError(
            f"output path {output_dir!r} is empty. allowed: a directory path for the "
            "SavedModel, e.g. exported/model. fix: pass --output DIR (API: output_dir).")
    if "://" in output_dir:   # object stores: nothing to check locally
        return
    # The nearest existing ancestor must be a writable directory: the staging
    # directory is created beside the output, so that is where writing starts.
    ancestor = os.path.dirname(os.path.abspath(output_dir))
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise OutputPathError(
            f"output path {output_dir}: {ancestor} is a file, not a directory, so nothing "
            "can be created under it. fix: choose an --output whose parent is a directory.")
    # effective_ids: the writes run as the effective user (what a setuid/seteuid
    # process, or the fault suite's `nobody` cases, actually has), not the real one.
    if not os.access(ancestor, os.W_OK | os.X_OK,
                     effective_ids=os.access in os.supports_effective_ids):
        why = ("is on a read-only filesystem" if _read_only(ancestor)
               else "is not writable by this user")
        raise OutputPathError(
            f"output path {output_dir}: the directory {ancestor} {why}. The export is "
            "staged beside its output, so that directory must be writable. fix: choose "
            "another --output, or make it writable.")


def _read_only(path: str) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


class PublishRecord:
    """What an export has done so far, for a caller interrupted at any point.

    `published()` compares the inode now at the output path with the staging
    directory's: exact whenever the interruption lands (even between the rename
    and any bookkeeping after it), since the rename moves that very inode.
    """

    def __init__(self) -> None:
        self.output_dir: Optional[str] = None
        self.staging: Optional[str] = None
        self._identity = None

    def staged(self) -> None:
        """Records the identity of the staging directory, once it exists."""
        st = os.stat(self.staging)
        self._identity = (st.st_dev, st.st_ino)

    def published(self) -> bool:
        if self._identity is None or self.output_dir is None:
            return False
        try:
            st = os.stat(self.output_dir)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def clean_up(self) -> None:
        """Removes this export's staging directory; restores a previous export that
        an interrupted fallback exchange had moved aside."""
        if self.staging is None:
            return
        aside = f"{self.staging}.old"
        if os.path.isdir(aside) and not os.path.lexists(self.output_dir):
            os.rename(aside, self.output_dir)
        for path in (self.staging, aside):
            _rmtree_quietly(path)


def staging_dirs(parent: str, base: str) -> List[str]:
    """Paths of staging directories for output `base` in `parent`."""
    pattern = re.compile(_STAGING_RE.format(base=re.escape(base)) + r"(\.old)?$")
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    return sorted(os.path.join(parent, n) for n in names if pattern.match(n))


def remove_stale_staging(parent: str, base: str) -> List[str]:
    """Removes staging directories whose writer is gone; returns what it removed.

    A directory is stale when nobody holds its flock and its pid is not alive (or
    is ours: then no export of this process is using it, since that would hold the
    lock). Both must hold: between a writer's mkdir and its flock the lock is still
    free, and its pid, being alive, protects it.
    """
    removed = []
    for path in staging_dirs(parent, base):
        # After ".BASE", so a base name that itself looks like a staging name is safe.
        pid = int(os.path.basename(path)[len(base) + 1:].split("-")[1])
        if pid != os.getpid() and _alive(pid):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            continue   # removed by another cleaner meanwhile, or not a directory
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue   # a live writer (or another cleaner) holds it
        try:
            _rmtree_quietly(path)
        finally:
            os.close(fd)
        if not os.path.lexists(path):
            removed.append(path)
            logging.info("Removed staging directory %s left by a writer (pid %d) that "
                         "is gone", path, pid)
    return removed


def _is_empty_dir(path: str) -> bool:
    try:
        return os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # exists, owned by another user
    return True


def _rmtree_quietly(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass   # not empty (someone published) or already gone: leave it
