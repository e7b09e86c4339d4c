"""A model the export loaded itself is freed before the serving check loads its copy.

Without it, the exporting process holds the model while the check's process loads the
served SavedModel: the machine needs both copies at once (bench/bench_scale.py). The
writer computes the in-memory answers the parity compares with first, then frees the big
variables of a model it loaded from a path (`writer._release_weights`); the CLI and the
KFP step run TensorFlow with an allocator that gives freed memory back
(`memory.give_freed_memory_back`). A model passed in memory is the user's: never freed.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
if not keras.__version__.startswith("3."):
    pytest.skip("a Keras 3 `.keras` file", allow_module_level=True)

import export_archive  # noqa: E402
from helpers.load_peak import SRC, TABLE_BYTES, TABLE_ROWS, half_filled_table  # noqa: E402

pytestmark = pytest.mark.integration

CONFIG = {"endpoints": [{"name": "serve"}]}

SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[3])
import warnings; warnings.filterwarnings("ignore")
from export_archive import memory
chose = memory.give_freed_memory_back()     # as the CLI does, before TensorFlow loads
import psutil
import export_archive
from export_archive import writer

rss = lambda: psutil.Process().memory_info().rss
seen = {}
release = writer._release_weights

def measured(built):
    seen["before"] = rss()
    release(built)
    seen["after"] = rss()
writer._release_weights = measured
result = export_archive.export(sys.argv[1], json.loads(sys.argv[4]), sys.argv[2], check=True)
print(json.dumps({**seen, "chose": chose, "passed": result.check_passed,
                  "parity": [r.passed for r in result.checks if r.check == "parity"]}))
"""


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    model = half_filled_table(keras)
    path = str(tmp_path_factory.mktemp("release") / "table.keras")
    model.save(path)
    return path


def test_the_loaded_model_is_freed_before_the_check_loads_its_copy(table_file, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    out = subprocess.run([sys.executable, "-c", SCRIPT, table_file, str(tmp_path / "out"), SRC,
                          json.dumps(CONFIG)], env=env, capture_output=True, text=True,
                         check=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["chose"] is True
    # The parity was computed before the release, against the loaded weights.
    assert seen["passed"] is True and seen["parity"] == [True], seen
    assert seen["before"] - seen["after"] > 0.8 * TABLE_BYTES, seen


def test_a_model_passed_in_memory_is_left_whole(tmp_path):
    model = half_filled_table(keras)
    result = export_archive.export(model, CONFIG, str(tmp_path / "out"), check=True)
    assert result.check_passed
    table = model.get_layer("table").embeddings
    assert tuple(table.shape) == (TABLE_ROWS, 64)
    assert float(np.sum(table.numpy()[:, 0])) == TABLE_ROWS * 0.5


def test_the_cli_gives_freed_memory_back_unless_the_user_chose():
    probe = ("import os, sys; sys.path.insert(0, sys.argv[1]); from export_archive import memory; "
             "print(memory.give_freed_memory_back(), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    run = lambda e: subprocess.run([sys.executable, "-c", probe, SRC], env=e, text=True,
                                   capture_output=True, check=True).stdout.split()
    assert run(env) == ["True", "0"]
    assert run({**env, "TF_ENABLE_ONEDNN_OPTS": "1"}) == ["False", "1"]
