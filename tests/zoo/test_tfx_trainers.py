"""The zoo of TFX's own example Trainer modules, through real Transform, Trainer and
ModelExporter.

Every Keras Trainer module in the installed tfx wheel's examples (taxi_* held
back) runs its own `preprocessing_fn` and `run_fn` in a small pipeline; the
model the Trainer wrote is exported by ModelExporter (serving check and
whole-split parity on, as by default) and by the CLI, with one `kind:
tf_example` + `transform` endpoint, and both must serve what the Trainer's own
hand-written `serving_default` serves, record for record, over the whole eval
split at two batch sizes.

The modules run in one subprocess (tfx_trainer_runner.py): they need Keras 2,
and this process keeps Keras 3. It runs in the background from when the
session's tests are collected (tfx_trainer_job.py). A module that cannot run here is
skipped with the checked reason, which is also recorded as its zoo row.
"""

import pytest

from helpers import background
from zoo import tfx_trainer_job, tfx_trainers
from zoo.rows import record_row
from zoo.tfx_trainers import MODULES, TOLERANCE

pytestmark = [pytest.mark.integration, pytest.mark.tfx]

# How long the test waits for the runner (from when it starts waiting: the runner
# was queued when the session's tests were collected).
RUNNER_TIMEOUT = 1800


def test_the_table_lists_every_keras_trainer_module_of_the_wheel():
    """A TFX upgrade that adds or removes a Keras Trainer module must show up here."""
    assert sorted(m.path for m in MODULES) == tfx_trainers.discover_keras_trainer_modules()


@pytest.fixture(scope="module")
def reasons():
    return tfx_trainer_job.reasons()


@pytest.fixture(scope="module")
def runner_results(reasons, tmp_path_factory, request):
    """Runs every runnable module whose test is selected (`-k bert` runs only the
    BERT modules) in one Keras 2 subprocess; {module id: result}. conftest.py
    queued it to run in the background when the session's tests were collected
    (it starts here if it has not started yet)."""
    job = background.take(request.config, tfx_trainer_job.KEY, lambda: tfx_trainer_job.start(
        tmp_path_factory.mktemp("tfx_trainers"),
        tfx_trainer_job.selected_modules(request.session.items, reasons)))
    proc, results = tfx_trainer_job.results(job, timeout=RUNNER_TIMEOUT)
    assert proc.returncode == 0 and results is not None, proc.stderr[-5000:]
    return results


def _row(module, **fields):
    record_row(group="tfx_trainer", model=module.id, endpoints=["serving_default"],
               reference="Trainer serving_default", **fields)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.id)
def test_export_serves_what_the_trainer_serves(module, reasons, request):
    reason = reasons[module.id]
    if reason is not None:
        _row(module, max_abs_diff=None, records=0, size_ratio=None,
             check="not run: module not runnable here", seconds=None,
             status="not runnable here", note=reason)
        pytest.skip(f"{module.path}: {reason}")

    result = request.getfixturevalue("runner_results")[module.id]
    assert result["status"] == "ran", f"{module.path}: {result['error']}\n{result['traceback']}"

    diffs = result["diffs"]
    sizes = result["sizes"]
    assert result["records"] > 0
    assert result["output_spread"] > 0, "the Trainer's outputs are the same for every record"
    for name, diff in diffs.items():
        assert diff <= TOLERANCE, f"{module.id}: {name} max abs diff {diff} > {TOLERANCE}"
    # The check ModelExporter runs by default: TF Serving's contract in a
    # TensorFlow-only process, then parity over the whole eval split.
    assert result["serving_check"] == "passed", result["serving_check"]
    parity = [c for c in result["report_checks"] if c["check"] == "parity_split"]
    assert parity and all(c["passed"] for c in parity), parity
    assert f"{result['records']} records" in parity[0]["detail"], parity
    assert result["exported_endpoints"] == ["serving_default"]
    assert result["ours_signatures"] == ["serving_default"]
    assert result["cli_endpoints"] == ["serving_default"]
    # The Trainer's SavedModel holds the same model and Transform graph plus what
    # serving never reads (optimizer slots, Keras metadata, its extra signatures).
    assert sizes["ours"] <= sizes["trainer"], sizes
    assert sizes["cli"] == pytest.approx(sizes["ours"], rel=0.05), sizes

    seconds = result["seconds"]
    cli_vs_exporter = max(v for k, v in diffs.items() if "cli_vs_exporter" in k)
    substitution = tfx_trainers.substitution_note(module)
    _row(module, max_abs_diff=max(v for k, v in diffs.items() if "_vs_trainer" in k),
         records=result["records"], size_ratio=round(sizes["ours"] / sizes["trainer"], 3),
         check=result["serving_check"], seconds=round(seconds["exporter"] + seconds["cli"], 1),
         status="pass",
         note=(f"{substitution}; " if substitution else "")
         + (f"ModelExporter and CLI, batch sizes: whole split and "
            f"{max(tfx_trainers.BATCH_SIZES)}; CLI vs ModelExporter {cli_vs_exporter:.2g}; "
            f"vs in-memory model {diffs['ours_vs_in_memory']:.2g}; ModelExporter run "
            f"{seconds['exporter']:.0f} s, CLI export {seconds['cli']:.0f} s"))
