"""ModelExporter under SIGKILL: the main pipeline killed mid-export, then re-run.

The pipeline (pipelines/pipeline.py under LocalDagRunner, SQLite ML Metadata,
TFX cache on) runs in a child process, which the test SIGKILLs while
ModelExporter writes its SavedModel (its staging directory exists). Then the
same pipeline, with the same pipeline root and metadata, runs again in this
process. What a user relies on:

- the killed execution published nothing: it never completed in ML Metadata,
  and its output holds no `Format-Serving` (or only a complete one);
- the re-run reuses the steps before ModelExporter from the cache (same root
  and metadata), re-runs ModelExporter, and publishes and pushes a correct
  model: it loads, its signatures are the export config's, and the published
  and pushed directories hold no staging leftovers;
- the killed process leaves no child process behind.
"""

import glob
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

# Not pytest.importorskip("tfx"): that imports TFX (up to 50 s) at collection, even
# when this test is deselected; the test imports it after the killed run.
if importlib.util.find_spec("tfx") is None:
    pytest.skip("needs TFX", allow_module_level=True)
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.faults

NAME = "kill-exporter"
STAGING = ".Format-Serving.tmp-*"
# ModelExporter's default export config in the pipeline.
ENDPOINTS = {"serving_default", "serve_raw"}

# One pipeline definition for the killed run and the re-run: the same name, root
# and metadata are what lets the re-run take the finished steps from the cache.
RUN = r"""
import json, sys
from tfx import v1 as tfx
from export_archive.pipelines import pipeline
kwargs, metadata = json.loads(sys.argv[1]), sys.argv[2]
tfx.orchestration.LocalDagRunner().run(pipeline.create_pipeline(
    **kwargs,
    metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
        metadata)))
"""


def _layout(root):
    return {"pipeline_root": os.path.join(root, "pipeline"),
            "serving_model_dir": os.path.join(root, "serving_model"),
            "metadata": os.path.join(root, "metadata.sqlite")}


def _pipeline_kwargs(layout):
    return dict(pipeline_name=NAME, pipeline_root=layout["pipeline_root"],
                serving_model_dir=layout["serving_model_dir"],
                # The fewest steps that still train; import paths, not module files:
                # no wheel to build on either run.
                train_steps=2, eval_steps=1, enable_cache=True, modules_from_package=True,
                # Evaluator judges accuracy, which 2 steps cannot reach, and costs a
                # TFMA run; what is under test here is ModelExporter's publish.
                evaluate=False)


def _executions(metadata_path, type_name):
    """{execution id: state name} of the component `type_name` (its class name)."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = mlmd.MetadataStore(config)
    return {e.id: metadata_store_pb2.Execution.State.Name(e.last_known_state)
            for e in store.get_executions() if e.type.endswith(type_name)}


def _staging_with_files(pattern):
    """A staging directory that already holds part of the SavedModel, or None."""
    for path in glob.glob(pattern):
        try:
            if os.listdir(path):
                return path
        except FileNotFoundError:
            pass   # published (renamed) or removed between glob and listdir
    return None


def _run_killed(layout, log_path, timeout=420):
    """Starts the pipeline and SIGKILLs it in the middle of ModelExporter's write (its
    staging directory holds files, none published yet); returns the child processes
    it had and that staging directory."""
    pattern = os.path.join(layout["pipeline_root"], "ModelExporter", "model", "*", STAGING)
    published = os.path.join(layout["pipeline_root"], "ModelExporter", "model", "*",
                             "Format-Serving")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", RUN, json.dumps(_pipeline_kwargs(layout)),
             layout["metadata"]], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        staging = None
        while staging is None:
            if process.poll() is not None:
                pytest.fail(f"the pipeline exited ({process.returncode}) before ModelExporter "
                            f"wrote; its log:\n{open(log_path).read()[-4000:]}")
            if glob.glob(published):
                pytest.fail("ModelExporter published before the test saw its staging "
                            "directory with files: nothing to kill mid-write")
            if time.time() > deadline:
                pytest.fail(f"ModelExporter did not start writing within {timeout} s")
            time.sleep(0.02)
            staging = _staging_with_files(pattern)
        children = psutil.Process(process.pid).children(recursive=True)
        process.kill()
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    return children, staging


def _complete_saved_model(path):
    """Its saved_model.pb parses and has the endpoints (the variables: see the load
    of the pushed copy below)."""
    from export_archive import describe
    return {s.name for s in describe.describe(path)} >= ENDPOINTS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The killed run and the re-run, once; what each test checks is recorded here."""
    root = tmp_path_factory.mktemp("kill")
    layout = _layout(str(root))
    facts = {"layout": layout}
    start = time.time()
    children, staging = _run_killed(layout, str(root / "killed_run.log"))
    print(f"\nkilled after {time.time() - start:.0f} s, while {staging} held "
          f"{sorted(os.listdir(staging))}")
    facts["killed_dir"] = os.path.dirname(staging)
    # E.g. the serving check's TF process, which exits when its stdin (held by the
    # killed exporter) closes.
    _, alive = psutil.wait_procs(children, timeout=30)
    facts["outlived"] = [(p.pid, p.name()) for p in alive if p.is_running()]
    for process in alive:
        process.kill()
    facts["exporter_after_kill"] = _executions(layout["metadata"], "ModelExporter")
    facts["trainer_after_kill"] = _executions(layout["metadata"], "Trainer")
    facts["pushed_after_kill"] = os.path.exists(layout["serving_model_dir"])

    # The same pipeline again, as a user re-runs it.
    from tfx import v1 as tfx
    from export_archive.pipelines import pipeline
    tfx.orchestration.LocalDagRunner().run(pipeline.create_pipeline(
        **_pipeline_kwargs(layout),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            layout["metadata"])))
    print(f"re-run done at {time.time() - start:.0f} s")
    facts["exporter_after_rerun"] = _executions(layout["metadata"], "ModelExporter")
    facts["trainer_after_rerun"] = _executions(layout["metadata"], "Trainer")
    return facts


def test_killed_run_published_nothing_and_left_no_process(run):
    assert not run["outlived"], f"processes of the killed run outlived it: {run['outlived']}"
    # ModelExporter never completed, so nothing downstream took its output ...
    assert list(run["exporter_after_kill"].values()) == ["RUNNING"], run["exporter_after_kill"]
    assert not run["pushed_after_kill"]
    # ... and its output holds no Format-Serving, unless a complete one.
    killed_serving = os.path.join(run["killed_dir"], "Format-Serving")
    assert not os.path.exists(killed_serving) or _complete_saved_model(killed_serving)


def _published_dir(run):
    states = run["exporter_after_rerun"]
    (complete_id,) = [i for i, s in states.items() if s == "COMPLETE"]
    return os.path.join(run["layout"]["pipeline_root"], "ModelExporter", "model",
                        str(complete_id))


def test_rerun_reuses_the_cache_and_publishes_a_complete_model(run):
    # The steps before ModelExporter came from the cache: Trainer did not run again.
    new = [s for i, s in run["trainer_after_rerun"].items()
           if i not in run["trainer_after_kill"]]
    assert new == ["CACHED"], run["trainer_after_rerun"]
    # ModelExporter ran again, in a new execution, and completed.
    assert sorted(run["exporter_after_rerun"].values()) == ["COMPLETE", "RUNNING"]
    published_dir = _published_dir(run)
    assert _complete_saved_model(os.path.join(published_dir, "Format-Serving"))
    assert not glob.glob(os.path.join(published_dir, STAGING))


def test_rerun_pushes_the_published_model_and_it_answers(run):
    import tensorflow as tf
    serving_model_dir = run["layout"]["serving_model_dir"]
    versions = os.listdir(serving_model_dir)
    assert len(versions) == 1 and versions[0].isdigit(), versions
    pushed = os.path.join(serving_model_dir, versions[0])
    with open(os.path.join(pushed, "saved_model.pb"), "rb") as a, open(
            os.path.join(_published_dir(run), "Format-Serving", "saved_model.pb"), "rb") as b:
        assert a.read() == b.read()
    revived = tf.saved_model.load(pushed)
    assert set(revived.signatures) >= ENDPOINTS
    # Two eval examples, as ExampleGen wrote them: one score per species each.
    split = glob.glob(os.path.join(run["layout"]["pipeline_root"], "CsvExampleGen",
                                   "examples", "*", "Split-eval", "*"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(
        split, compression_type="GZIP").take(2)]
    outputs = revived.signatures["serving_default"](examples=tf.constant(records))
    assert [tuple(v.shape) for v in outputs.values()] == [(2, 3)]


# TFX gives every execution a new output directory and never revisits a killed
# one's: ModelExporter's executor removes dead writers' staging there.
def test_no_staging_left_in_any_exporter_output(run):
    pattern = os.path.join(run["layout"]["pipeline_root"], "ModelExporter", "*", "*", STAGING)
    assert not glob.glob(pattern)
