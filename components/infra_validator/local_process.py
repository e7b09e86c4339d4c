"""The local-process serving platform: TF Serving as a child process of the component.

TFX's InfraValidator starts the model server in a Docker container
(`local_docker`) or a Kubernetes pod (`kubernetes`). Inside a KFP v2 / Vertex AI
container neither is available, but the container can carry the
`tensorflow_model_server` binary itself. This platform runs that binary as a
child process, with TFX's own client, retries and request builder around it:

    tensorflow_model_server --port=PORT --model_name=NAME \\
        --model_base_path=BASE --max_num_load_retries=0 \\
        --load_retry_interval_micros=1000000 [extra flags...]

`LocalProcessConfig` says how (binary, port, where the model is served from,
extra flags, environment); `LocalProcessRunner` is a TFX `BaseModelServerRunner`
that starts the process, waits until it listens, and always stops it
(SIGTERM to its process group, then SIGKILL after `stop_timeout_seconds`). The
process's stdout and stderr go to a log file the executor keeps; when the
server gives up on a model, its own load error (`server_errors`) is what the
failure says. On Linux the server is also killed when the process that
started it dies (`PR_SET_PDEATHSIG`), so a SIGKILLed executor leaves no
server behind.

Example::

    LocalProcessConfig.parse({"binary": "/usr/bin/tensorflow_model_server",
                              "extra_flags": ["--enable_batching"]})
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Union

from tfx.components.infra_validator import error_types
from tfx.components.infra_validator.model_server_runners import base_runner
from tfx.utils import io_utils

from export_archive.errors import InputError
from export_archive.schema_check import SchemaCheck, load_schema

DEFAULT_BINARY = "tensorflow_model_server"
# The format's one source of truth (as the export config's): field types, ranges and
# the flags the platform sets itself, with the texts of their errors.
SCHEMA = load_schema("local_process_config.schema.json")
MAX_CONFIG_CHARS = 1 << 20
_POLLING_INTERVAL_SEC = 0.5
# What TF Serving logs when it gives up on a model: tensorflow_serving/util/retrier.cc
# logs "<description> failed: <status>" for every try, where the description is
# "Loading servable: {name: N version: V}" (core/loader_harness.cc), and main.cc
# prints "Failed to start server. Error: <status>" before it exits.
SERVER_ERROR_PATTERNS = (re.compile(r"Loading servable: .* failed: "),
                         re.compile(r"Failed to start server"))


class LocalProcessConfigError(InputError):
    """A bad `local_process_config`; the message names the field, what is allowed and
    the fix."""

    subject = "local_process_config field"


_CHECK = SchemaCheck(SCHEMA, LocalProcessConfigError, root="(root)")


@dataclasses.dataclass(frozen=True)
class LocalProcessConfig:
    """How the component runs the model server as a child process.

    Attributes:
      binary: the TF Serving binary, a name looked up on PATH or a path.
      port: gRPC port; 0 picks a free port when the server starts.
      model_base_path: a local directory to serve from. Empty: serve from where
        InfraValidator prepared the model (`<tmp>/<model_name>/<version>`, which
        is on the pipeline root's file system, e.g. gs:// on Vertex, and TF
        Serving reads gs:// itself). Set it when the binary cannot read that file
        system: the model version is copied to `<model_base_path>/<version>`
        before the server starts and removed after it stops.
      extra_flags: more `--flag=value` arguments (e.g. `--enable_batching`,
        `--rest_api_port=0`); --port, --model_name and --model_base_path are
        the platform's own.
      env: extra environment variables for the process.
      stop_timeout_seconds: how long the server gets to exit after SIGTERM
        before it is killed.
      max_num_load_retries: TF Serving's `--max_num_load_retries`. The binary's
        default, 5 retries `--load_retry_interval_micros` (60 s) apart, keeps a
        model that cannot load "loading" for 5 minutes, so InfraValidator would
        report a deadline instead of the server's error. 0 (our default): one
        load; a broken model makes the server exit at once with its own error.
      load_retry_interval_micros: TF Serving's `--load_retry_interval_micros`,
        the wait between load retries (used only when max_num_load_retries > 0).
    """

    binary: str = DEFAULT_BINARY
    port: int = 0
    model_base_path: str = ""
    extra_flags: List[str] = dataclasses.field(default_factory=list)
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    stop_timeout_seconds: float = 10.0
    max_num_load_retries: int = 0
    load_retry_interval_micros: int = 1_000_000

    @classmethod
    def parse(cls, value: Union["LocalProcessConfig", Dict[str, Any], str, None]
              ) -> "LocalProcessConfig":
        """From a config, a dict or JSON text; validates every field (the schema)."""
        if isinstance(value, cls):
            value.validate()
            return value
        if value is None or (isinstance(value, str) and not value.strip()):
            value = {}
        if isinstance(value, str):
            value = _CHECK.loads(value, MAX_CONFIG_CHARS)
        if isinstance(value, dict):
            value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
        _CHECK.validate(value)
        integers = [k for k, v in SCHEMA["properties"].items() if v.get("type") == "integer"]
        return cls(**{k: int(v) if k in integers else v for k, v in value.items()})

    def validate(self) -> None:
        _CHECK.validate(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def resolve_binary(self) -> str:
        """The binary's path; raises FileNotFoundError saying how to provide it.

        Called before any validation attempt: a missing binary is a problem of
        the component's image or configuration, not of the model, so it fails
        the component instead of marking the model not blessed.
        """
        found = shutil.which(self.binary)
        if found is None:
            where = ("is not executable or does not exist" if os.sep in self.binary
                     else f"was not found on PATH ({os.environ.get('PATH', '')})")
            raise FileNotFoundError(
                f"local_process_config.binary {self.binary!r} {where}. Install TF Serving "
                "in the component image (e.g. copy /usr/bin/tensorflow_model_server from the "
                "tensorflow/serving image of the version you deploy) or set "
                "local_process_config={'binary': '/path/to/tensorflow_model_server'}.")
        return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return True
    return False


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("localhost", port), timeout=1):
            return True
    except OSError:
        return False


def last_line(text: Optional[str]) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:1000] if lines else ""


def server_errors(text: Optional[str], max_lines: int = 5) -> List[str]:
    """The model server's own load errors in its log, oldest first, at most `max_lines`.

    With retries, TF Serving logs the same load error once per try; each distinct
    error is kept once, so the list says what went wrong, not how often.
    """
    found: List[str] = []
    for line in (text or "").splitlines():
        for pattern in SERVER_ERROR_PATTERNS:
            match = pattern.search(line)
            if match:
                # From the match on: the log prefix (time, level, file:line) differs
                # between tries of the same error.
                error = line[match.start():].strip()[:1500]
                if error not in found:
                    found.append(error)
                break
    return found[-max_lines:]


SERVER_REPORTED = "the model server reported: "


def _reported(text: Optional[str]) -> str:
    """What the server said: its load errors, or else its last log line."""
    errors = server_errors(text)
    if errors:
        return SERVER_REPORTED + " | ".join(errors)
    return f"its last log line: {last_line(text)!r}"


def _die_with_parent() -> Optional[Callable[[], None]]:
    """A preexec_fn that makes the kernel SIGKILL the child when its parent dies (Linux).

    Why: Stop() runs in `finally`, and TFX turns SIGTERM into an exception, but a
    SIGKILLed executor (OOM killer, a killed pod or LocalDagRunner) runs no code at
    all, and the server, in a session of its own, would keep its port, memory and
    model files for as long as the machine runs. PR_SET_PDEATHSIG asks the kernel
    itself to kill it. The "parent" is the thread that forked the child: the server
    is started and stopped within one `_ValidateOnce` call on one thread, so that
    thread outlives it. The setting survives exec (our wrapper scripts exec the
    server), but not a fork: a wrapper that forks the real server instead of exec-ing
    it must forward the signal itself. Elsewhere than Linux: None (no such call).

    libc and prctl are resolved here, before the fork: the child between fork and
    exec must not load libraries or take locks another thread may have held.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()
    pr_set_pdeathsig, sigkill = 1, int(signal.SIGKILL)

    def preexec() -> None:
        if prctl(pr_set_pdeathsig, sigkill, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died between fork() and prctl(): then the kernel will
        # never send the signal, and the child must not start the server.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def tail(text: Optional[str], max_chars: int = 3000) -> str:
    """The end of a log, cut at a line boundary."""
    if not text:
        return ""
    if len(text) <= max_chars:
        return text
    cut = text[-max_chars:]
    return "..." + cut[cut.find("\n"):] if "\n" in cut else "..." + cut


class LocalProcessRunner(base_runner.BaseModelServerRunner):
    """Runs the model server as a child process (a TFX BaseModelServerRunner).

    States as TFX defines them: `Start()` spawns the process (Scheduled);
    `WaitUntilRunning()` returns once it accepts connections on its port
    (Running) and raises `JobAborted` if it exits first, which is how TF
    Serving reports a model it cannot load ("Failed to start server ...").
    `Stop()` never raises and can be called before or after a failed `Start()`.
    """

    def __init__(self, model_path: str, model_name: str, config: LocalProcessConfig,
                 log_path: str):
        self._model_path = model_path.rstrip("/")
        self._model_name = model_name
        self._config = config
        self._log_path = log_path
        self._process: Optional[subprocess.Popen] = None
        self._log_file = None
        self._port = config.port
        self._copied_to: Optional[str] = None
        self._endpoint: Optional[str] = None

    def __repr__(self) -> str:
        pid = self._process.pid if self._process else None
        return (f"LocalProcessRunner(binary={self._config.binary!r}, port={self._port}, "
                f"model_name={self._model_name!r}, pid={pid})")

    @property
    def command(self) -> List[str]:
        return [self._config.resolve_binary(), f"--port={self._port}",
                f"--model_name={self._model_name}",
                f"--model_base_path={self._model_base_path()}",
                f"--max_num_load_retries={self._config.max_num_load_retries}",
                f"--load_retry_interval_micros={self._config.load_retry_interval_micros}",
                *self._config.extra_flags]

    @property
    def process(self) -> Optional[subprocess.Popen]:
        return self._process

    @property
    def log_path(self) -> str:
        return self._log_path

    def _model_base_path(self) -> str:
        # TF Serving serves `<model_base_path>/<version>/`; InfraValidator has
        # already laid the model out as `<tmp>/<model_name>/<version>`.
        if self._config.model_base_path:
            return self._config.model_base_path
        return os.path.dirname(self._model_path)

    def GetEndpoint(self) -> str:
        assert self._endpoint is not None, "the model server is not running yet"
        return self._endpoint

    def Start(self) -> None:
        assert self._process is None, "Start() called twice"
        if self._port == 0:
            self._port = _free_port()
        elif _port_in_use(self._port):
            # Otherwise another server on that port would answer our requests.
            raise error_types.JobAborted(
                f"port {self._port} is already in use; set local_process_config port=0 "
                "to pick a free port")
        if self._config.model_base_path:
            version = os.path.basename(self._model_path)
            self._copied_to = os.path.join(self._config.model_base_path, version)
            io_utils.copy_dir(src=self._model_path, dst=self._copied_to)
        command = self.command
        os.makedirs(os.path.dirname(self._log_path) or ".", exist_ok=True)
        self._log_file = open(self._log_path, "wb")
        self._log_file.write(("$ " + " ".join(command) + "\n").encode())
        self._log_file.flush()
        # A session of its own: Stop() signals the whole process group, so a
        # wrapper script and the server it starts both go. _die_with_parent covers
        # the case where Stop() never runs.
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, env={**os.environ, **self._config.env},
            start_new_session=True, preexec_fn=_die_with_parent())

    def WaitUntilRunning(self, deadline: float) -> None:
        assert self._process is not None, "the model server has not been started"
        while time.time() < deadline:
            code = self._process.poll()
            if code is not None:
                raise error_types.JobAborted(
                    f"{os.path.basename(self._config.binary)} exited with code {code} before "
                    f"it served the model; {_reported(self.GetLogs())}")
            if _listening(self._port):
                self._endpoint = f"localhost:{self._port}"
                return
            time.sleep(_POLLING_INTERVAL_SEC)
        # With load retries (max_num_load_retries > 0) the server may still be
        # retrying a model it already failed to load: say so, with its error.
        raise error_types.DeadlineExceeded(
            f"the model server did not listen on port {self._port} within the loading "
            f"deadline (ValidationSpec.max_loading_time_seconds); {_reported(self.GetLogs())}")

    def GetLogs(self) -> Optional[str]:
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.flush()
        try:
            with open(self._log_path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return None

    def Stop(self) -> None:
        try:
            self._stop_process()
        finally:
            if self._log_file is not None:
                self._log_file.close()
            if self._copied_to:
                try:
                    io_utils.delete_dir(self._copied_to)
                except Exception:  # pylint: disable=broad-except  # Stop() must not raise
                    pass

    def _stop_process(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                process.wait(timeout=self._config.stop_timeout_seconds)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                process.wait()
        # Children a wrapper left behind in the group, if any.
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum) -> None:
        try:
            os.killpg(self._process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
