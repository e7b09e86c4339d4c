"""The TFX trainer zoo's runner (tfx_trainer_runner.py) as a background job.

The runner is the suite's slowest single item (several minutes: a TFX pipeline per
Trainer module) and needs nothing from the pytest process but the list of modules,
so tests/zoo/conftest.py queues it as soon as the session's tests are collected
(helpers/background.py), and test_tfx_trainers.py waits for its results when its
tests run (the zoo comes last in the session). The results are the same JSON the
tests asserted on before, from the same subprocess.
"""

import json
import os
import sys
from typing import Dict, List, Optional

from helpers import background
from zoo import tfx_trainers

KEY = "tfx_trainer_runner"
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_NAME = "test_export_serves_what_the_trainer_serves"


def reasons() -> Dict[str, Optional[str]]:
    """{module id: why it cannot run here, or None}."""
    return {m.id: tfx_trainers.not_runnable_reason(m) for m in tfx_trainers.MODULES}


def is_trainer_test(item) -> bool:
    return getattr(item, "originalname", None) == TEST_NAME


def selected_modules(items, reasons_by_id) -> List[str]:
    """The runnable modules whose test is selected and not skipped by a marker
    (`-k bert` runs only the BERT modules), in the table's order."""
    ids = {item.callspec.params["module"].id for item in items
           if is_trainer_test(item) and background.will_run(item)}
    return [m.id for m in tfx_trainers.MODULES if reasons_by_id[m.id] is None and m.id in ids]


def start(root, modules: List[str]) -> background.Job:
    """`python -m zoo.tfx_trainer_runner` over the modules, writing under root."""
    root = str(root)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [TESTS_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return background.Job(
        [sys.executable, "-m", "zoo.tfx_trainer_runner", "--root", root,
         "--out", os.path.join(root, "results.json"), *modules],
        root, env=env, name="runner")


def results(job: background.Job, timeout: float):
    """(the finished runner, {module id: result} or None if it wrote none)."""
    proc = job.wait(timeout)
    out = os.path.join(job.directory, "results.json")
    if not os.path.exists(out):
        return proc, None
    with open(out, encoding="utf-8") as f:
        return proc, json.load(f)
