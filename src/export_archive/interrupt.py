"""SIGINT/SIGTERM for the command line: unwind cleanly, then say what happened.

Docker, Kubernetes and KFP stop a step with SIGTERM, whose default action kills
the process on the spot, skipping every `finally`; Ctrl-C raises a bare
KeyboardInterrupt with a traceback. `raising_on_signals` turns both into
`Interrupted`, an exception that library code does not catch (it is a
BaseException, like KeyboardInterrupt), so its try/finally blocks remove the
staging directory on the way out. The library itself installs no handlers.

    with raising_on_signals():
        run()            # SIGTERM here raises Interrupted(SIGTERM) inside run()
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator, Optional, Sequence

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised in the main thread when one of `SIGNALS` arrives."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        # The shell's convention, which Kubernetes and KFP report: 130, 143.
        self.exit_code = 128 + signum


# The signal received inside the current `raising_on_signals` block, if any.
_received: Optional[int] = None


def raise_if_received() -> None:
    """Raises `Interrupted` if a signal arrived in the current block.

    For a caller that caught some other error: when a signal interrupts C code
    that calls back into Python (Keras, h5py, TensorFlow), the exception can come
    out as an unrelated one (e.g. "SystemError: bad argument to internal
    function"), and it is the interruption, not that error, that happened.
    """
    if _received is not None:
        raise Interrupted(_received)


# How long an Interrupted may take to reach `raising_on_signals` before it counts
# as swallowed and the signal is delivered again. Unwinding (removing a staging
# directory) takes milliseconds; a swallowed interrupt would let the export go on.
REDELIVER_AFTER = 0.5


@contextlib.contextmanager
def raising_on_signals(signums: Sequence[int] = SIGNALS) -> Iterator[None]:
    """Raises `Interrupted` on the first of `signums`; ignores repeats while the
    stack unwinds, so a second Ctrl-C cannot cut a cleanup short.

    Third-party code can swallow the exception: Keras reads weights under a bare
    `except:`, and Python ignores exceptions raised in `__del__` (TensorFlow's
    function garbage collector). So the signal is delivered again if the exception
    has not come out of the block within `REDELIVER_AFTER` seconds, and if the
    block ends normally after a swallowed signal, `Interrupted` is raised then.
    """
    global _received
    state = {"signum": None, "caught": False, "redelivered": False}
    _received = None

    def handler(signum, frame):
        global _received
        if state["signum"] is not None and not state["redelivered"]:
            return   # a repeat while unwinding: ignored
        state["signum"], state["redelivered"] = state["signum"] or signum, False
        _received = state["signum"]
        silence_stderr()
        timer = threading.Timer(REDELIVER_AFTER, redeliver)
        timer.daemon = True
        timer.start()
        raise Interrupted(state["signum"])

    def redeliver():
        # From the timer thread: only the main thread may change handlers, so the
        # handler itself tells this delivery from a user's repeat by the flag.
        if not state["caught"]:
            state["redelivered"] = True
            os.kill(os.getpid(), state["signum"])

    previous_hook = sys.unraisablehook

    def unraisable(hook_args):
        # Raised inside a __del__ or a weakref callback: Python would print
        # "Exception ignored ..." with a traceback and carry on. Stay quiet; the
        # timer delivers the signal again.
        if not isinstance(hook_args.exc_value, Interrupted):
            previous_hook(hook_args)

    # What C code prints while the stack unwinds after a signal is noise: TF's
    # pybind code prints the traceback of the SystemError an interrupted callback
    # becomes ("<built-in function __import__> returned a result with an exception
    # set"), seen with TF 2.21 on Python 3.12. So from the signal on, fd 2 goes to
    # /dev/null until the block ends; the caller then says in one line what happened.
    saved = {"fd": None}

    def silence_stderr():
        if saved["fd"] is None:
            sys.stderr.flush()
            saved["fd"] = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)

    def restore_stderr():
        if saved["fd"] is not None:
            sys.stderr.flush()
            os.dup2(saved["fd"], 2)
            os.close(saved["fd"])
            saved["fd"] = None

    previous = {s: signal.signal(s, handler) for s in signums}
    sys.unraisablehook = unraisable
    try:
        yield
    except Interrupted:
        state["caught"] = True
        raise
    finally:
        restore_stderr()
        _received = None
        sys.unraisablehook = previous_hook
        for s, action in previous.items():
            signal.signal(s, action)
    if state["signum"] is not None:   # swallowed, and the block then finished
        state["caught"] = True
        raise Interrupted(state["signum"])
