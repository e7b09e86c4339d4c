"""Shared fixtures of the fault suite: one warm process that forks the runs."""

import pytest

from helpers.fault_models import Zygote


@pytest.fixture(scope="session")
def zygote():
    """Forks `export-archive` runs from a process that imported TensorFlow once
    (helpers/fault_models.py explains why that is faithful)."""
    process = Zygote()
    yield process
    process.close()


def pytest_terminal_summary(terminalreporter):
    """Figures per fault module (tried / held / failed), then each group's details."""
    from helpers.fault_models import FIGURES
    counts = {}
    for outcome in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            path = report.nodeid.split("::")[0]
            if "tests/faults/" in path and report.when in ("call", "setup"):
                if report.when == "setup" and outcome == "passed":
                    continue
                tried_held = counts.setdefault(path, [0, 0])
                tried_held[0] += 1
                tried_held[1] += outcome == "passed"
    for path, (tried, held) in sorted(counts.items()):
        terminalreporter.write_line(
            f"{path}: tried {tried} held {held} failed {tried - held}")
    for line in FIGURES:
        terminalreporter.write_line(line)
