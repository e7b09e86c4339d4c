"""Subprocesses that tests wait for, started in the background as soon as the
session's tests are collected.

A few tests spend minutes waiting for one subprocess that needs nothing from the
pytest process (the main job run as a user runs it, the TFX trainer zoo's
runner). Queued when collection ends (a `pytest_collection_finish` hook in the
directory's conftest.py), such a subprocess runs while the tests before its
consumer run, on the CI machine's second core (the pytest process mostly keeps
one busy), instead of adding its minutes to the lane. One runs at a time, in the
order their consumers come. The consumer gets the same exit code and output it
got from `subprocess.run` before and checks them the same way; a consumer whose
job has not started yet starts it itself.
"""

import os
import signal
import subprocess
from typing import Callable, Dict, List, Optional, Tuple

import pytest

_JOBS = pytest.StashKey[Dict[str, "Job"]]()
_PENDING = pytest.StashKey[List[Tuple[int, str, Callable[[], "Job"]]]]()


class Job:
    """One subprocess, its stdout and stderr going to files under `directory`."""

    def __init__(self, argv: List[str], directory, env=None, name="job"):
        self.argv = list(argv)
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        # A new pair of files per job, also for another job in the same directory.
        number = 0
        while os.path.exists(os.path.join(self.directory, f"{name}{number}.stdout")):
            number += 1
        self.stdout_path = os.path.join(self.directory, f"{name}{number}.stdout")
        self.stderr_path = os.path.join(self.directory, f"{name}{number}.stderr")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # Its own process group, so that an interrupted session stops it whole.
            self.process = subprocess.Popen(
                self.argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True)

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Its exit code, stdout and stderr once it ends; like `subprocess.run`, it is
        killed and TimeoutExpired raised if it runs `timeout` s more from now."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            self.process.wait()
            raise
        return subprocess.CompletedProcess(self.argv, code, self._read(self.stdout_path),
                                           self._read(self.stderr_path))

    @staticmethod
    def _read(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        """Ends its process group if it still runs."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def should_start(config) -> bool:
    """False when the session runs no test (--collect-only, --setup-plan, ...)."""
    option = config.option
    return not (option.collectonly or option.setuponly or option.setupplan)


def will_run(item) -> bool:
    """Not skipped by a marker (the current lane marks the tfx tests skipped)."""
    return not any(m.name == "skip" for m in item.iter_markers())


def first_index(items, predicate) -> Optional[int]:
    """The position of the first collected test that `predicate` accepts and that
    will run, or None if there is none."""
    for index, item in enumerate(items):
        if predicate(item) and will_run(item):
            return index
    return None


def submit(config, key: str, order: int, start: Callable[[], Job]) -> None:
    """Queues a job: `start()` starts it. One background job runs at a time (the
    pytest process keeps a core), queued jobs in `order` (the position of their
    first consumer in the session), each from the first test or fixture setup
    after the one before it has ended (the first from the session's first test)."""
    pending = config.stash.setdefault(_PENDING, [])
    pending.append((order, key, start))
    pending.sort(key=lambda p: p[0])


def advance(config) -> None:
    """Starts the next queued job if no background job is running (called before
    every test and fixture setup: no thread, so nothing forks a multi-threaded
    pytest process)."""
    pending = config.stash.get(_PENDING, [])
    if not pending:
        return
    jobs = config.stash.setdefault(_JOBS, {})
    if any(job.process.poll() is None for job in jobs.values()):
        return
    _, key, start = pending.pop(0)
    jobs[key] = start()


def take(config, key: str, start: Callable[[], Job]) -> Job:
    """The job under key for its consumer: the one already started, or else started
    now (still queued, or never submitted: the hook did not select it)."""
    jobs = config.stash.setdefault(_JOBS, {})
    if key not in jobs:
        pending = config.stash.get(_PENDING, [])
        for i, (_, queued_key, queued_start) in enumerate(pending):
            if queued_key == key:
                start = queued_start
                del pending[i]
                break
        jobs[key] = start()
    return jobs[key]


def stop_all(config):
    """At the session's end: a job whose consumer never ran (interrupted, -x) stops,
    and what was still queued never starts."""
    config.stash.get(_PENDING, []).clear()
    for job in config.stash.get(_JOBS, {}).values():
        job.stop()
