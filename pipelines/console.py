"""What the main job prints: one line per component as it starts and ends, and a summary.

Everything here is formatting and bookkeeping, without TensorFlow, TFX or ML Metadata
imports, so it is unit-tested in milliseconds (tests/unit/test_console.py); the runner
(local_runner) gathers the facts and hands them over.

    >>> import io
    >>> out = io.StringIO()
    >>> progress = ComponentProgress(out, clock=iter([0.0, 2.5]).__next__)
    >>> progress.started("Trainer"); progress.finished("Trainer")
    >>> print(out.getvalue(), end="")
      Trainer                running
      Trainer                done      2.5s
"""

import dataclasses
import logging
import os
import sys
import time
import warnings
from typing import Callable, Dict, IO, List, Optional, Sequence, Tuple

# The third-party noise the quiet main job hides is what the CLI hides (see there).
from export_archive.cli import NOISY_WARNING_CATEGORIES, NOISY_WARNING_MODULES

NAME_WIDTH = 22

# The messages TFX's LocalDagRunner and its Launcher log (absl logging) around each
# node: tfx/orchestration/local/local_dag_runner.py and portable/launcher.py (TFX
# 1.16). Matching the format string, not the rendered text, keeps node ids with any
# characters working. If a TFX upgrade rewords them, tests/unit/test_console.py
# (which reads TFX's source) and the e2e test of the main job fail.
RUNNING_MSG = "Component %s is running."
FINISHED_MSG = "Component %s is finished."
CACHED_MSG = "A cached execution %d is used."
SKIPPED_MSGS = ("Skipping execution for %s", "Skipping component %s.")

def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m{rest:02d}s"


@dataclasses.dataclass
class ComponentRun:
    node_id: str
    status: str = "running"      # running | done | cached | skipped | FAILED
    seconds: float = 0.0


class ComponentProgress:
    """Prints a line when a component starts and one when it ends, with its time.

    On a terminal (`rewrite=True`) the end line replaces the start line, so the
    screen holds one line per component; elsewhere (a pipe, CI logs, --verbose
    where TFX's own log lines interleave) both lines stay.

    `quiet_start`: node ids that get no start line (TFX Resolver nodes: they
    query ML Metadata and are done within a second).
    """

    def __init__(self, out: IO[str], rewrite: bool = False,
                 quiet_start: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic):
        self._out, self._rewrite = out, rewrite
        self.quiet_start = set(quiet_start)
        self.name_width = NAME_WIDTH     # the runner widens it to its longest node id
        self._clock = clock
        self.runs: List[ComponentRun] = []
        self._started_at = 0.0
        self._open_line = False

    @property
    def current(self) -> Optional[ComponentRun]:
        """The component running now (the one that failed, when the run raised)."""
        return self.runs[-1] if self.runs and self.runs[-1].status == "running" else None

    def started(self, node_id: str) -> None:
        self.runs.append(ComponentRun(node_id))
        self._started_at = self._clock()
        if node_id in self.quiet_start:
            return
        self._write(f"  {node_id:<{self.name_width}} running", end="" if self._rewrite else "\n")
        self._open_line = self._rewrite

    def cached(self) -> None:
        if self.current:
            self.current.status = "cached"

    def skipped(self) -> None:
        if self.current:
            self.current.status = "skipped"

    def finished(self, node_id: str, status: Optional[str] = None) -> None:
        run = self.runs[-1] if self.runs and self.runs[-1].node_id == node_id else None
        if run is None:
            run = ComponentRun(node_id)
            self.runs.append(run)
        run.seconds = self._clock() - self._started_at
        if status:
            run.status = status
        elif run.status == "running":
            run.status = "done"
        # "\r" + erase-line: the end line takes the place of the start line.
        prefix = "\r\x1b[K" if self._open_line else ""
        self._open_line = False
        self._write(f"{prefix}  {node_id:<{self.name_width}} {run.status:<8}"
                    f"{format_seconds(run.seconds):>6}")

    def failed(self) -> Optional[ComponentRun]:
        """Marks the running component failed and prints its end line; returns it."""
        run = self.current
        if run is not None:
            self.finished(run.node_id, status="FAILED")
        return run

    def counts(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for run in self.runs:
            out[run.status] = out.get(run.status, 0) + 1
        return out

    def _write(self, text: str, end: str = "\n") -> None:
        self._out.write(text + end)
        self._out.flush()


class LauncherLogHook(logging.Handler):
    """Feeds ComponentProgress from the log records LocalDagRunner emits per node.

    Attached to the `absl` logger (TFX logs through absl), at INFO: it sees the
    records whatever the root handlers do with them (a log file, or stderr).
    """

    def __init__(self, progress: ComponentProgress):
        super().__init__(level=logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == RUNNING_MSG:
            self.progress.started(str(record.args[0]))
        elif record.msg == FINISHED_MSG:
            self.progress.finished(str(record.args[0]))
        elif record.msg == CACHED_MSG:
            self.progress.cached()
        elif record.msg in SKIPPED_MSGS:
            if self.progress.current is None:   # skipped before it started ("Skipping component")
                self.progress.started(str(record.args[0]))
                self.progress.finished(str(record.args[0]), status="skipped")
            else:
                self.progress.skipped()


def install_warning_filters() -> None:
    """Hides the known third-party warnings (see NOISY_WARNING_*). Entry points only."""
    for category in NOISY_WARNING_CATEGORIES:
        warnings.filterwarnings("ignore", category=category, module=NOISY_WARNING_MODULES)
    # TensorFlow's C++ INFO and WARNING lines (oneDNN, CUDA probing, XLA) go
    # straight to file descriptor 2; the variable must be set before TF loads.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class RedirectedOutput:
    """Sends file descriptors 1 and 2 to a log file; `console` writes to the real stdout.

    At the descriptor level, not sys.stdout: TensorFlow's C++ logs, Beam workers,
    Keras progress bars and subprocesses (pip) write there directly. Restored on
    exit, also after an exception.
    """

    def __init__(self, log_path: str):
        self.log_path = log_path
        self.console: IO[str] = sys.stdout
        self._saved: List[Tuple[int, int]] = []
        self._saved_streams = (sys.stdout, sys.stderr)
        self._log: Optional[IO[str]] = None

    def __enter__(self) -> "RedirectedOutput":
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self.console = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        # O_APPEND: the descriptors and the Python stream below share the file
        # without overwriting each other's lines.
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
                         0o644)
        for fd in (1, 2):
            self._saved.append((fd, os.dup(fd)))
            os.dup2(log_fd, fd)
        # sys.stdout/sys.stderr too: where a host replaced them (a notebook, pytest),
        # print() and Python's logging would otherwise bypass descriptors 1 and 2.
        self._saved_streams = (sys.stdout, sys.stderr)
        self._log = os.fdopen(log_fd, "w", buffering=1, encoding="utf-8")
        sys.stdout = sys.stderr = self._log
        return self

    def __exit__(self, *exc) -> None:
        sys.stdout, sys.stderr = self._saved_streams
        if self._log is not None:
            self._log.close()
            self._log = None
        for fd, saved in self._saved:
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()
        self.console.flush()


@dataclasses.dataclass
class Summary:
    """The facts the closing summary shows; the runner reads them from ML Metadata."""
    pushed: Optional[str] = None
    not_pushed_reason: Optional[str] = None
    # describe.SignatureInfo (or anything with name, method_name, inputs, outputs).
    signatures: Sequence = ()
    serving_check: Optional[str] = None
    evaluator: Optional[str] = None        # None: no Evaluator in the pipeline
    infra_validator: Optional[str] = None  # None: no InfraValidator in the pipeline
    infra_validator_absent_reason: str = "not in this pipeline"
    contract: Optional[str] = None
    report: Optional[str] = None
    metadata: Optional[str] = None
    log_file: Optional[str] = None
    seconds: float = 0.0
    counts: Dict[str, int] = dataclasses.field(default_factory=dict)


def _short_method(method_name: str) -> str:
    return method_name.rsplit("/", 1)[-1] or "?"


def _tensors(tensors: Dict[str, str], limit: int = 60) -> str:
    """`key dtype[dims]` for a few tensors; just the keys (up to 80 characters, e.g. a
    raw-features endpoint's columns), or only their number, when that is too long."""
    full = ", ".join(f"{k} {v}" for k, v in tensors.items())
    if len(full) <= limit:
        return full
    keys = ", ".join(tensors)
    return keys if len(keys) <= 80 else f"{len(tensors)} tensors"


def signature_lines(signatures: Sequence) -> List[str]:
    """One line per signature: name (method): inputs -> outputs."""
    return [f"  {s.name} ({_short_method(s.method_name)}): "
            f"{_tensors(s.inputs)} -> {_tensors(s.outputs)}" for s in signatures]


def render_summary(summary: Summary) -> List[str]:
    """The closing lines, in the order a user reads them: where, what, verdicts, files."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    lines = [f"Finished in {format_seconds(summary.seconds)}" + (f" ({counts})" if counts else "")]
    if summary.pushed:
        lines.append(f"Pushed model: {summary.pushed}")
        lines.extend(signature_lines(summary.signatures))
    else:
        lines.append(f"Not pushed: {summary.not_pushed_reason or 'no Pusher output'}")
    lines.append(f"Serving check: {summary.serving_check or 'not recorded'}")
    lines.append(f"Evaluator: {summary.evaluator or 'not in this pipeline'}")
    lines.append(f"InfraValidator: "
                 f"{summary.infra_validator or summary.infra_validator_absent_reason}")
    lines.append(f"Serving contract: {summary.contract or 'not compared (--no-baseline)'}")
    if summary.report:
        lines.append(f"Report: {summary.report}")
    if summary.metadata:
        lines.append(f"ML Metadata: {summary.metadata}")
    if summary.log_file:
        lines.append(f"Log of TFX, Beam and TensorFlow: {summary.log_file}")
    return lines


def render_failure(component: Optional[str], error: BaseException,
                   log_file: Optional[str], any_ran: bool = False) -> List[str]:
    """Why the run stopped: the component, the error's first line, where the rest is.

    `component` None: nothing was running; `any_ran` tells before the first
    component (building the pipeline) from after the last (reading its results).
    """
    message = (str(error).strip().splitlines() or [""])[0]
    if len(message) > 300:
        message = message[:297] + "..."
    if component:
        where = f"component {component} failed"
    elif any_ran:
        where = "reading the run's results from ML Metadata failed"
    else:
        where = "the pipeline failed before any component ran"
    lines = [f"FAILED: {where}: {type(error).__name__}: {message}"]
    if log_file:
        lines.append(f"Full log (traceback, TFX, Beam and TensorFlow output): {log_file}")
    return lines


def blessing_verdict(blessed: Optional[int]) -> Optional[str]:
    if blessed is None:
        return None
    return "blessed" if blessed == 1 else "NOT blessed"
