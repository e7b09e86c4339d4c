"""The error every user-facing problem raises: where, what, received, allowed, fix.

The bottom of the package: it imports only the standard library, so every module
(config, sources, runtimes, the checks) can raise these without importing another.
"""

from __future__ import annotations

import json
from typing import Any, Optional

_MISSING = object()


class InputError(ValueError):
    """Something a user gave (a config field, a model file, a path, a flag) cannot be used.

    The message is one paragraph: where (`where`, e.g. a config field path or a
    file), what is wrong (`problem`), what was received, what is allowed and how
    to fix it. The CLI prints it as is and exits 2; the fields stay available to
    callers (`.where`, `.problem`, `.received`, `.allowed`, `.fix`).
    """

    subject = "input"
    # TensorFlow's autograph rewrites an exception raised while it traces user code
    # into a `StagingError` holding a stack dump, unless it carries this marker. An
    # InputError raised while an endpoint is traced (the model refusing the config's
    # input_signature) must reach the caller as itself, one paragraph.
    ag_pass_through = True

    def __init__(self, where: str, problem: str, received: Any = _MISSING,
                 allowed: Optional[str] = None, fix: Optional[str] = None):
        self.where = where
        self.problem = problem
        self.received, self.allowed, self.fix = received, allowed, fix
        parts = [f"{self.subject} `{where}`: {problem}"]
        if received is not _MISSING:
            parts.append(f"received {_show(received)}")
        if allowed:
            parts.append(f"allowed: {allowed}")
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__(". ".join(parts) + ".")


class ConfigError(InputError):
    """A problem in an export config, located by its field path (`.path`)."""

    subject = "export config field"

    @property
    def path(self) -> str:
        return self.where


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
