"""The fault suite's figures: tried / held / failed per group, for docs/reliability.md.

    .venv/bin/python scripts/reliability_report.py                 # run tests/faults, print
    .venv/bin/python scripts/reliability_report.py --write         # ... and update the doc
    .venv/bin/python scripts/reliability_report.py --junitxml X.xml [--write]   # no run

A group is one module of tests/faults (bad inputs, safe mode, kill, ...) and every
test item of it is one thing tried: a hostile input, a kill at one point, one race.
"Held" means the item passed (the guarantee held), "failed" that it failed or
errored. Skipped and xfail items are counted apart ("skipped") and are not
"held". Exit status 1 when any item failed, so the script can gate a CI step.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "reliability.md")
START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"

# Module -> what its items try, in the order the table lists them.
GROUPS = {
    "test_bad_inputs": "bad inputs",
    "test_safe_mode": "safe mode",
    "test_kill": "kill",
    "test_component_kill": "component kill",
    "test_concurrency": "concurrency",
    "test_disk_full": "disk full",
    "test_signals": "signals",
    "test_publish": "publish",
    "test_server": "server",
}


def run_suite(xml_path: str) -> int:
    """Runs the fault suite into `xml_path`; its own failures are counted, not raised."""
    cmd = [sys.executable, "-m", "pytest", "tests/faults", "-m", "faults", "-q",
           f"--junitxml={xml_path}"]
    print("running:", " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd, cwd=REPO)


def _module(case: ET.Element) -> str:
    # pytest writes classname "tests.faults.test_kill" (or "...test_kill.TestClass").
    parts = (case.get("classname") or "").split(".")
    modules = [p for p in parts if p.startswith("test_")]
    return modules[0] if modules else (parts[-1] if parts[-1] else "?")


def count(xml_path: str) -> Dict[str, Dict[str, int]]:
    """{module: {"tried", "held", "failed", "skipped"}} from a pytest junit xml."""
    counts: Dict[str, Dict[str, int]] = collections.defaultdict(
        lambda: {"tried": 0, "held": 0, "failed": 0, "skipped": 0})
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        # A junit xml of the whole `make test` holds the other suites too.
        if not (case.get("classname") or "").startswith("tests.faults."):
            continue
        row = counts[_module(case)]
        if case.find("skipped") is not None:
            row["skipped"] += 1
            continue
        row["tried"] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            row["failed"] += 1
        else:
            row["held"] += 1
    return dict(counts)


def run_info(xml_path: str) -> str:
    """When the suite ran and how long it took, from the junit xml's testsuite."""
    suite = ET.parse(xml_path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    if suite is None:
        return ""
    stamp = (suite.get("timestamp") or "").split(".")[0].replace("T", " ")
    seconds = float(suite.get("time") or 0)
    return (f"Run of {stamp} (UTC): {seconds / 60:.1f} min wall for the pytest session "
            "the xml records.")


def table(counts: Dict[str, Dict[str, int]]) -> str:
    order = [m for m in GROUPS if m in counts] + sorted(m for m in counts if m not in GROUPS)
    lines = ["| group | module | tried | held | failed | skipped |",
             "|---|---|---:|---:|---:|---:|"]
    total = collections.Counter()
    for module in order:
        row = counts[module]
        total.update(row)
        lines.append(f"| {GROUPS.get(module, module)} | `tests/faults/{module}.py` | "
                     f"{row['tried']} | {row['held']} | {row['failed']} | {row['skipped']} |")
    lines.append(f"| **all** | | **{total['tried']}** | **{total['held']}** | "
                 f"**{total['failed']}** | **{total['skipped']}** |")
    missing = [GROUPS[m] for m in GROUPS if m not in counts]
    if missing:
        lines.append("")
        lines.append(f"Not in this run: {', '.join(missing)}.")
    return "\n".join(lines)


def write_doc(text: str, doc: str = DOC) -> None:
    """Replaces the table between the markers of `doc` (written atomically)."""
    with open(doc, encoding="utf-8") as f:
        content = f.read()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{doc} has no {START} ... {END} markers to fill.")
    updated = pattern.sub(lambda _: f"{START}\n{text}\n{END}", content)
    tmp = doc + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(updated)
    os.replace(tmp, doc)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--junitxml", help="read this pytest junit xml instead of running "
                                           "the suite")
    parser.add_argument("--write", action="store_true",
                        help=f"put the table into {os.path.relpath(DOC, REPO)}")
    args = parser.parse_args(argv)
    if args.junitxml:
        xml_path = args.junitxml
    else:
        xml_path = os.path.join(tempfile.mkdtemp(prefix="faults-"), "faults.xml")
        run_suite(xml_path)
        if not os.path.exists(xml_path):
            print(f"pytest wrote no {xml_path}: the suite did not run.", file=sys.stderr)
            return 1
    counts = count(xml_path)
    text = table(counts) + "\n\n" + run_info(xml_path)
    print(text)
    if args.write:
        write_doc(text)
        print(f"wrote {os.path.relpath(DOC, REPO)}", file=sys.stderr)
    return 1 if any(row["failed"] for row in counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
