"""One results row per zoo entry, for scripts/zoo_report.py (docs/zoo.md).

Both zoo harnesses call `record_row(**fields)`; it appends one JSON object per
line to the file the environment variable ZOO_RESULTS names, and does nothing
when it is unset (an ordinary test run). Fields (shared by both harnesses):
group, model, endpoints, reference, max_abs_diff, records, size_ratio, check,
seconds, status ("pass" | "stock limit" | "not runnable here"), note.
"""

import json
import os

FIELDS = ("group", "model", "endpoints", "reference", "max_abs_diff", "records",
          "size_ratio", "check", "seconds", "status", "note")
STATUSES = ("pass", "stock limit", "not runnable here")


def record_row(**fields) -> None:
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"record_row: unknown field(s) {unknown}; allowed: {', '.join(FIELDS)}")
    if fields.get("status") not in STATUSES:
        raise ValueError(f"record_row: status {fields.get('status')!r}; allowed: {STATUSES}")
    path = os.environ.get("ZOO_RESULTS")
    if not path:
        return
    row = {key: fields.get(key) for key in FIELDS}
    # One write of one line: rows from parallel test processes do not interleave.
    with open(path, "a") as f:
        f.write(json.dumps(row, default=float) + "\n")
