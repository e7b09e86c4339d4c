"""The contract guard in the main job: three runs of the LocalDagRunner pipeline.

Run 1 pushes (no baseline yet). Run 2 retrains the client API with an input
renamed: ModelExporter compares it with the pushed model, fails before Pusher,
and the old model stays the pushed one. Run 3 adds an output instead: compatible,
so it is pushed. Only the export config changes between runs, so the steps up to
the Trainer come from the TFX cache and each later run costs one export.
"""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from export_archive import contract

pytestmark = pytest.mark.e2e

NAME = "contract-e2e"


def config(factory):
    return {"endpoints": [
        {"name": "serving_default", "kind": "tf_example", "transform": True,
         "exclude_features": ["species"]},
        {"name": "serve_named", "fn": f"helpers.contract_endpoints:{factory}"}]}


def run(root, factory):
    from tfx import v1 as tfx
    from export_archive.pipelines import pipeline
    tfx.orchestration.LocalDagRunner().run(pipeline.create_pipeline(
        pipeline_name=NAME, pipeline_root=os.path.join(root, "pipeline"),
        serving_model_dir=os.path.join(root, "serving"), export_config=config(factory),
        train_steps=5, eval_steps=2, contract_baseline=True,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite"))))


def pushed_versions(root):
    return sorted(glob.glob(os.path.join(root, "serving", "*")))


def store(root):
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    config_ = metadata_store_pb2.ConnectionConfig()
    config_.sqlite.filename_uri = os.path.join(root, "metadata.sqlite")
    config_.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return mlmd.MetadataStore(config_)


def executions(root, component):
    """States of the executions of one component class, oldest first."""
    from ml_metadata.proto import metadata_store_pb2
    metadata = store(root)
    types = {t.id: t.name for t in metadata.get_execution_types()}
    return [metadata_store_pb2.Execution.State.Name(e.last_known_state)
            for e in sorted(metadata.get_executions(), key=lambda e: e.id)
            if types[e.type_id].rsplit(".", 1)[-1] == component]


def exported_models(root):
    from export_archive.components.tfx import spec
    models = [a for a in store(root).get_artifacts_by_type("Model")
              if spec.CONTRACT_PROPERTY in a.custom_properties]
    return sorted(models, key=lambda a: a.id)


def test_breaking_retrain_is_stopped_before_pusher_and_compatible_one_pushed(tmp_path):
    from export_archive.components.tfx import spec
    from export_archive.pipelines import local_runner
    root = str(tmp_path)

    run(root, "v1")
    [first] = pushed_versions(root)
    [model1] = exported_models(root)
    assert model1.custom_properties[spec.CONTRACT_PROPERTY].string_value == contract.NO_BASELINE

    with pytest.raises(contract.BreakingChange) as err:
        run(root, "renamed_input")
    assert "input_renamed:serve_named/inputs/island" in str(err.value)
    assert pushed_versions(root) == [first]  # the old model is still the pushed one
    assert executions(root, "ModelExporter")[-1] == "FAILED"
    assert len(executions(root, "Pusher")) == 1  # Pusher never ran for it

    run(root, "added_output")
    versions = pushed_versions(root)
    assert len(versions) == 2 and versions[0] == first
    summary = exported_models(root)[-1].custom_properties[spec.CONTRACT_PROPERTY].string_value
    assert summary.startswith("contract compatible with baseline"), summary
    # The baseline was the PushedModel of run 1 (run 2 pushed nothing), and its
    # warmup requests (written by run 1's serving check) were replayed.
    assert "Pusher/pushed_model" in summary and "warmup request(s) replayed" in summary
    assert local_runner.contract_summary(os.path.join(root, "metadata.sqlite")) == summary
    report_dir = sorted(glob.glob(os.path.join(root, "pipeline", "ModelExporter", "report",
                                                "*")), key=lambda p: int(os.path.basename(p)))
    with open(os.path.join(report_dir[-1], "report.md")) as f:
        assert "| output_added | `serve_named/outputs/probabilities` |" in f.read()

    # The pushed model answers old clients (v1's keys) and new ones.
    new = tf.saved_model.load(versions[1])
    old = tf.saved_model.load(first)
    serve_new, serve_old = new.signatures["serve_named"], old.signatures["serve_named"]
    assert set(serve_old.structured_input_signature[1]) == \
        set(serve_new.structured_input_signature[1])
    for batch in (1, 4):
        features = {k: tf.zeros([batch, 1], s.dtype)
                    for k, s in serve_new.structured_input_signature[1].items()}
        out = serve_new(**features)
        assert out["logits"].shape == (batch, 3) and out["probabilities"].shape == (batch, 3)
        np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_baseline_model_takes_a_model_or_a_pushed_model_channel():
    """The constructor routes the channel by type; the executor reads each kind."""
    from tfx.types import channel, standard_artifacts
    from export_archive.components.tfx import component, executor, spec
    trained = channel.Channel(type=standard_artifacts.Model)
    serve = {"endpoints": [{"name": "serve"}]}
    cases = {standard_artifacts.Model: spec.BASELINE_MODEL_KEY,
             standard_artifacts.PushedModel: spec.BASELINE_PUSHED_MODEL_KEY}
    for artifact_type, key in cases.items():
        baseline = channel.Channel(type=artifact_type)
        exporter = component.ModelExporter(model=trained, export_config=serve,
                                           baseline_model=baseline)
        assert exporter.inputs[key] is baseline
        [other] = set(cases.values()) - {key}
        assert other not in exporter.inputs
    with pytest.raises(TypeError, match="Model or PushedModel"):
        component.ModelExporter(model=trained, export_config=serve,
                                baseline_model=channel.Channel(type=standard_artifacts.Examples))

    model = standard_artifacts.Model()
    model.uri = "/models/7"
    assert executor._baseline_dir({spec.BASELINE_MODEL_KEY: [model]}) == (
        "/models/7/Format-Serving", None)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = "/pushed/8"
    pushed.set_int_custom_property("pushed", 1)
    assert executor._baseline_dir({spec.BASELINE_PUSHED_MODEL_KEY: [pushed]}) == (
        "/pushed/8", None)
    pushed.set_int_custom_property("pushed", 0)  # Pusher found no blessing: no model inside
    directory, why = executor._baseline_dir({spec.BASELINE_PUSHED_MODEL_KEY: [pushed]})
    assert directory is None and why.startswith(contract.NO_BASELINE)
    assert executor._baseline_dir({}) == (None, contract.NO_BASELINE)
