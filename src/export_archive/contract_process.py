"""The serving check's clean TensorFlow process, started before the check needs it.

`serving_contract.py` must run in a process of its own that imports only
TensorFlow and the package's bottom layer (see its docstring). Starting that process costs a TensorFlow import,
seconds that used to come after the SavedModel was written. Here it starts as
soon as a check is known to be wanted: the CLI starts it before its own
TensorFlow import, `writer.export` before loading the model. Its import and op
library loads then overlap with the exporter's load, trace and write, and it
waits on stdin for the one job it runs (`serving_contract.py --job-from-stdin`).

This module imports no TensorFlow, so the CLI can call `prestart_for` first.
Called there, before any TensorFlow import, it does better than overlap: it
imports TensorFlow with Keras blocked, forks the contract process from this
one, and lets Keras in afterwards (`_ForkedContract`). The fork then costs no
second TensorFlow import (~2.4 s of CPU here), which on a busy machine is most
of what the check used to add. Elsewhere (the Python API, the TFX executor:
TensorFlow and Keras are in already) it starts a new process.

At most one started process waits at a time (`prestart_for` is a no-op while
one waits); `acquire` hands it to the next check, or starts one if none waits.
A waiting process that no check takes (the export failed before its check) is
closed at interpreter exit, or picked up by the next check of this process.
Its stdin is the only end of a pipe the exporter holds: when the exporter exits
or is killed, the child reads end of file and exits, so no orphan is left.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Optional

CONTRACT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "serving_contract.py")
# Set to 1 to always start a new process instead of forking the CLI's.
NO_FORK_ENV = "EXPORT_ARCHIVE_CHECK_NO_FORK"


class ContractProcess:
    """One serving-contract process waiting for its job, and its scratch directory.

    Forked (`fork=True`, only before this process imported TensorFlow: see
    `_ForkedContract`) or a new `serving_contract.py --job-from-stdin` process.
    """

    def __init__(self, fork: bool = False):
        self.dir: Optional[str] = None   # made for a job only (see `path`)
        # stderr to a file, not a pipe: TensorFlow's log lines could fill a pipe
        # nobody reads while the exporter works, and block the child. An unnamed
        # one: nothing is left behind when a process that never got a job ends.
        self._stderr = tempfile.TemporaryFile()
        if fork:
            self.proc = _ForkedContract(self._stderr)
            return
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        # The legacy-Keras switch makes `import tensorflow` reach for tf_keras.
        env.pop("TF_USE_LEGACY_KERAS", None)
        self.proc = subprocess.Popen(
            [sys.executable, CONTRACT_SCRIPT, "--job-from-stdin"], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=self._stderr, env=env)

    def path(self, name: str) -> str:
        """A file in the job's scratch directory (removed by `close`)."""
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="serving-check-")
        return os.path.join(self.dir, name)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, export_dir: str, requests: Optional[str], responses: Optional[str],
            latency_runs: int, timeout: float) -> Optional[str]:
        """Runs the contract on `export_dir`; the results JSON is at `path("result.json")`.
        Returns None on success, or why the process failed (its stderr's tail)."""
        out = self.path("result.json")
        job = {"export_dir": os.path.abspath(export_dir) if "://" not in export_dir
               else export_dir, "out": out, "requests": requests, "responses": responses,
               "latency_runs": latency_runs}
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass   # it died before reading the job: its stderr says why (below)
        try:
            # stdin stays open until it has exited: closing it would tell it we died.
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return (f"the serving-contract process did not finish within {timeout:.0f} s "
                    "and was killed; its last output: " + self.stderr()[-1000:])
        if self.proc.returncode != 0 or not os.path.exists(out):
            return (f"the serving-contract process failed (exit status "
                    f"{self.proc.returncode}): " + self.stderr()[-1500:])
        return None

    def stderr(self) -> str:
        """What the process wrote to stderr (read once it has exited)."""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()

    def close(self) -> None:
        """Ends the process (end of file on its stdin; killed if it lingers) and
        removes its scratch directory."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


class _ForkedContract:
    """The contract process as a fork of this one, sparing it a TensorFlow import.

    Only before this process has imported TensorFlow (the CLI, first thing): it
    imports TensorFlow and serving_contract.py with Keras blocked, exactly as the
    script does, forks, and then lets itself import Keras again. The fork holds
    what a fresh `serving_contract.py` holds (TensorFlow, the TF Serving protos,
    no Keras, no op library of a Python package: none was loaded yet) plus the
    CLI's argument and config parsing. It reads its job from a pipe whose other
    end only this process holds. Mimics the part of `subprocess.Popen` that
    `ContractProcess` uses.
    """

    def __init__(self, stderr):
        module = _import_contract_module()
        read_end, write_end = os.pipe()
        sys.stdout.flush()   # else the child would hold, and write, a copy of the buffers
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:   # the child: never returns
            code = 1
            try:
                os.close(write_end)
                os.dup2(stderr.fileno(), 1)
                os.dup2(stderr.fileno(), 2)
                module.INHERITED_MODULES = frozenset(sys.modules)
                code = module.serve_one_job(os.fdopen(read_end),
                                            module.load_model_server_op_libraries())
            except BaseException:  # pylint: disable=broad-except  # reported on stderr
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                # No atexit handlers, no buffers of the parent's flushed twice.
                os._exit(code)  # pylint: disable=protected-access
        os.close(read_end)
        self.stdin = os.fdopen(write_end, "wb")
        self.returncode = None
        _restore_keras_import()

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def kill(self):
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


_BLOCKED = ("keras", "tf_keras")


def _import_contract_module():
    """serving_contract.py as a module, imported with Keras blocked (as the script
    blocks it), under a private name: the exporter itself never uses it."""
    for name in _BLOCKED:
        sys.modules[name] = None
    spec = importlib.util.spec_from_file_location("_export_archive_serving_contract",
                                                  CONTRACT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        _restore_keras_import()
        raise
    return module


def _restore_keras_import():
    for name in _BLOCKED:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]
    # `import tensorflow` imports Keras' optimizers eagerly (so they register for
    # SavedModel loading), and skipped that while Keras was blocked: do it now.
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") in ("true", "True", "1")
    try:
        importlib.import_module("tf_keras.src.optimizers" if legacy else
                                "keras.src.optimizers")
    except (ImportError, AttributeError):
        pass   # as tensorflow/__init__.py: Keras is optional there


def _can_fork() -> bool:
    return hasattr(os, "fork") and "tensorflow" not in sys.modules \
        and os.environ.get(NO_FORK_ENV, "") in ("", "0")


_lock = threading.Lock()
_waiting: Optional[ContractProcess] = None


def check_wanted(config: Any, check: Optional[bool]) -> bool:
    """Whether an export runs the serving check: `check` if given, else the config's
    (an `ExportConfig`) `check` section, when present and not `"enabled": false`."""
    if check is not None:
        return check
    section = config.check_dict
    return section.get("enabled", bool(section))


def prestart_for(config: Any, check: Optional[bool]) -> bool:
    """Starts the check process now if `check`, or else `config`'s check section,
    wants a check; returns whether a check is wanted."""
    global _waiting
    wanted = check_wanted(config, check)
    if wanted:
        with _lock:
            if _waiting is None or not _waiting.alive():
                if _waiting is not None:
                    _waiting.close()
                _waiting = ContractProcess(fork=_can_fork())
    return wanted


def acquire() -> ContractProcess:
    """The waiting process if there is one, else a new one. The caller closes it."""
    global _waiting
    with _lock:
        process, _waiting = _waiting, None
    if process is not None and process.alive():
        return process
    if process is not None:
        process.close()
    return ContractProcess()


def discard() -> None:
    """Closes the waiting process, if any (registered to run at exit)."""
    global _waiting
    with _lock:
        process, _waiting = _waiting, None
    if process is not None:
        process.close()


atexit.register(discard)
