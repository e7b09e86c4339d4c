"""The main job end to end, run the way a user runs it: `python -m
export_archive.pipelines.local_runner` in a subprocess, twice (module-scoped: the
pipeline is the expensive part; both run in the background from when the
session's tests are collected, one after the other), the second time from the TFX cache up to what a
resolver feeds (the Evaluator's baseline).

Asserts what a user sees (one screen: a start and an end line per component, then a
summary naming the pushed model, its signatures, the verdicts and where the report,
ML Metadata and the log are) and what a user relies on: the pushed model loads,
every endpoint answers, the tf.Example `serving_default` matches the Trainer's own
model on the same examples, and REST JSON gets the same answers.
"""

import os

import numpy as np
import pytest

from helpers.local_pipeline import (check_pushed_model, component_lines, artifact_dir,
                                    main_job_result, summary_value)

pytestmark = [pytest.mark.e2e, pytest.mark.tfx]

NAME = "export-archive-penguin-keras3"
# Without the contract baseline, so that the second identical run is entirely cached
# (with it, ModelExporter re-runs against the new push; test_contract_pipeline).
# Both runs are queued to run in the background when the session's tests are
# collected, the second after the first (conftest.py: `main_job`, `main_job_rerun`).
MAIN_JOB_ARGS = ["--train-steps", "30", "--no-baseline"]


@pytest.fixture(scope="module")
def root(main_job):
    return main_job.root


@pytest.fixture(scope="module")
def first(main_job):
    return main_job_result(main_job).stdout


@pytest.fixture(scope="module")
def second(first, main_job_rerun):
    return main_job_result(main_job_rerun).stdout


@pytest.fixture(scope="module")
def nodes(root):
    """(components, resolvers, nodes downstream of a resolver) of the main job's pipeline."""
    from export_archive.pipelines import local_runner
    tfx_pipeline = local_runner.build_pipeline(local_runner.RunPaths.create(root, "3"),
                                               contract_baseline=False)
    resolvers = local_runner.pipeline_roles(tfx_pipeline).resolvers
    downstream = set()
    for component in tfx_pipeline.components:   # topological order
        if any(up.id in resolvers or up.id in downstream for up in component.upstream_nodes):
            downstream.add(component.id)
    components = [c.id for c in tfx_pipeline.components if c.id not in resolvers]
    return components, list(resolvers), downstream


def test_first_run_prints_one_screen(first, nodes, root):
    components, resolvers, _ = nodes
    lines = first.splitlines()
    assert len(lines) <= 30, first
    assert "Traceback" not in first and "Warning" not in first and "WARNING" not in first
    states = component_lines(first)
    for node in components:
        assert [s for n, s in states if n == node] == ["running", "done"], (node, first)
    for node in resolvers:   # a query of ML Metadata: one line when it is done
        assert [s for n, s in states if n == node] == ["done"], (node, first)
    assert {n for n, _ in states} == set(components) | set(resolvers)

    base = os.path.join(root, NAME)
    assert summary_value(first, "Pushed model").startswith(os.path.join(base, "serving_model"))
    assert "  serving_default (predict): examples string[?] -> logits float32[?,3]" in lines
    assert any(line.startswith("  serve_raw (predict): body_mass_g,") for line in lines)
    assert summary_value(first, "Serving check") == "passed"
    evaluator = summary_value(first, "Evaluator")
    assert evaluator == ("blessed" if "Evaluator" in components else "not in this pipeline")
    assert summary_value(first, "InfraValidator").startswith("not in this pipeline")
    assert summary_value(first, "Serving contract") == "no baseline: contract not compared"
    report = summary_value(first, "Report")
    assert report.startswith(os.path.join(base, "pipeline", "ModelExporter", "report"))
    assert os.path.isfile(report) and report.endswith("report.html")
    assert summary_value(first, "ML Metadata") == os.path.join(base, "metadata.sqlite")

    # What the console leaves out is in the log: TFX's own lines, no pip wheel build.
    log = summary_value(first, "Log of TFX, Beam and TensorFlow")
    assert log.startswith(os.path.join(base, "logs")) and log in lines[0]
    with open(log) as f:
        text = f.read()
    assert "Component Trainer is running." in text
    assert "tfx_user_code" not in text
    assert not os.path.exists(os.path.join(base, "pipeline", "_wheels"))


def test_pushed_model_serves_like_the_trainer(first, root):
    import keras
    pushed = summary_value(first, "Pushed model")
    trainer_dir = artifact_dir(root, NAME, "Trainer", "model")
    trainer_model = keras.saving.load_model(
        os.path.join(trainer_dir, "Format-Serving", "model.keras"))
    check_pushed_model(pushed, root, NAME,
                       lambda f: np.asarray(trainer_model(f, training=False)))


def test_second_run_is_cached(first, second, nodes, root):
    """Everything is reused from the TFX cache except what a resolver feeds: the
    Evaluator's baseline is now the model the first run blessed, so it (and Pusher
    after it) runs again, and pushes the same export again."""
    components, _, downstream = nodes
    states = component_lines(second)
    for node in components:
        expected = ["running", "done" if node in downstream else "cached"]
        assert [s for n, s in states if n == node] == expected, (node, second)
    assert len(second.splitlines()) <= 30, second
    pushed = [summary_value(out, "Pushed model") for out in (first, second)]
    with open(os.path.join(pushed[0], "saved_model.pb"), "rb") as a, \
            open(os.path.join(pushed[1], "saved_model.pb"), "rb") as b:
        assert a.read() == b.read()

    # ML Metadata agrees: the components shown as cached are its cached executions.
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    from export_archive.pipelines import local_runner
    store = mlmd.MetadataStore(local_runner.connection_config(
        os.path.join(root, NAME, "metadata.sqlite")))
    by_state = {}
    for execution in store.get_executions():
        state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        by_state[state] = by_state.get(state, 0) + 1
    cached = [n for n in components if n not in downstream]
    assert by_state.get("CACHED") == len(cached), by_state
