"""The serving check's rows, typed: one `CheckRow` per check and endpoint.

Standard library only, so every layer can build and read rows (config and the CLI
without TensorFlow). Rows are JSON only where they leave the process: the
contract process's result file (`from_contract_json`), the split parity's Beam
output, `ExportResult.to_json`, the CLI's ``--json`` and the report. Their JSON is
``{"check", "endpoint", "passed", "detail"}``, plus the split parity's counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, Mapping, Optional

MODEL_WIDE = "(model)"   # how a failure line names a row about no single endpoint


@dataclasses.dataclass(frozen=True)
class CheckRow:
    """One check's verdict: `endpoint` is a signature name, several joined by ", ",
    or "" for the model as a whole."""
    check: str
    endpoint: str
    passed: bool
    detail: str

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CheckRow":
        """A row from its JSON; the split parity's rows keep their counts."""
        if "count" in data:
            return SplitParityRow(**data)
        return cls(data["check"], data["endpoint"], bool(data["passed"]), data["detail"])

    def __getitem__(self, key: str) -> Any:
        # `ExportResult.checks` held these rows' JSON dicts, and callers of the Python
        # API (docs/requests.md) read them by key: that still reads the same values.
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


@dataclasses.dataclass(frozen=True)
class Latency:
    """One request's timing in the contract process (its `latency_runs` calls)."""
    batch: int
    deterministic: bool            # two calls on the same request gave the same outputs
    p50_ms: Optional[float] = None   # None: no timed calls (latency_runs 0)
    p99_ms: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class TimedRun(CheckRow):
    """A `run` row of the contract process: one request, and its timing when it ran.
    Only `check._latency_rows` reads it; the rows it makes of them carry text."""
    latency: Optional[Latency] = None

    def without_timing(self) -> CheckRow:
        """The row as the results show it (a failed run is reported as it is)."""
        return CheckRow(self.check, self.endpoint, self.passed, self.detail)


@dataclasses.dataclass(frozen=True)
class SplitParityRow(CheckRow):
    """The split parity of one endpoint over a whole examples split (`parity_beam`)."""
    count: int
    mismatches: int
    max_abs_diff: float
    max_rel_diff: float
    # The first mismatching records: {"file", "index", "output", "max_abs_diff"}.
    mismatch_examples: List[Dict[str, Any]]


def from_contract_json(results: Iterable[Mapping[str, Any]]) -> List[CheckRow]:
    """The rows of `serving_contract.py`'s result file (a process boundary: it imports
    nothing of this package). A passing `run` row carries its timing as "latency"."""
    out: List[CheckRow] = []
    for data in results:
        row = CheckRow.from_json(data)
        if data["check"] == "run":
            latency = data.get("latency")
            row = TimedRun(row.check, row.endpoint, row.passed, row.detail,
                           Latency(**latency) if latency is not None else None)
        out.append(row)
    return out


def failure_line(row: CheckRow) -> str:
    """One failed row as the report, the CLI, the logs and the components' property
    show it."""
    return f"{row.endpoint or MODEL_WIDE}: {row.check}: {row.detail}"


def failures(rows: Iterable[CheckRow]) -> List[CheckRow]:
    return [row for row in rows if not row.passed]


def failure_lines(rows: Iterable[CheckRow]) -> List[str]:
    """The failure line of each failed row, in order."""
    return [failure_line(row) for row in failures(rows)]
