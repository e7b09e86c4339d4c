"""The contract guard in the main job: three runs of the LocalDagRunner pipeline.

Run 1 pushes (no baseline yet). Run 2 retrains the client API with an input
renamed: ModelExporter compares it with the pushed model, fails before Pusher,
and the old model stays the pushed one. Run 3 adds an output instead: compatible,
so it is pushed. Only the export config changes between runs, so the steps up to
the Trainer come from the TFX cache and each later run costs one export.
"""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from export_archive import contract

pytestmark = [pytest.mark.e2e, pytest.mark.tfx]

NAME = "contract-e2e"


def config(factory):
    return {"endpoints": [
        {"name": "serving_default", "kind": "tf_example", "transform": True,
         "exclude_features": ["species"]},
        {"name": "serve_named", "fn": f"helpers.contract_endpoints:{factory}"}]}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One pipeline root and store for the module's pipelines."""
    return str(tmp_path_factory.mktemp("contract_e2e"))


def make_pipeline(root, export_config, name=NAME, **options):
    from tfx import v1 as tfx
    from export_archive.pipelines import pipeline
    return pipeline.create_pipeline(
        pipeline_name=name, pipeline_root=os.path.join(root, "pipeline"),
        serving_model_dir=os.path.join(root, "serving"), export_config=export_config,
        train_steps=5, eval_steps=2, modules_from_package=True,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")), **options)


def run(root, factory):
    from tfx import v1 as tfx
    # The main job's flow, Evaluator included (it must be skipped with Pusher when
    # nothing is published); any accuracy passes: this test is about the contract.
    tfx.orchestration.LocalDagRunner().run(
        make_pipeline(root, config(factory), contract_baseline=True, min_accuracy=0.0))


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
              if spec.PUBLISHED_PROPERTY in a.custom_properties]
    return sorted(models, key=lambda a: a.id)


def latest_report(root, component="ModelExporter"):
    report_dirs = sorted(glob.glob(os.path.join(root, "pipeline", component, "report", "*")),
                         key=lambda p: int(os.path.basename(p)))
    return report_dirs[-1]


def test_breaking_retrain_is_stopped_before_pusher_and_compatible_one_pushed(root):
    from export_archive.components.tfx import spec
    from export_archive.pipelines import local_runner

    run(root, "v1")
    [first] = pushed_versions(root)
    [model1] = exported_models(root)
    assert model1.custom_properties[spec.CONTRACT_PROPERTY].string_value == contract.NO_BASELINE
    assert model1.custom_properties[spec.PUBLISHED_PROPERTY].int_value == 1

    # Like a failed blessing: the run succeeds, nothing is published, and the
    # steps after ModelExporter (under Cond(published)) are skipped.
    run(root, "renamed_input")
    assert pushed_versions(root) == [first]  # the old model is still the pushed one
    assert executions(root, "ModelExporter")[-1] == "COMPLETE"
    assert len(executions(root, "Pusher")) == 1  # Pusher never ran for it
    assert len(executions(root, "Evaluator")) == 1  # nor Evaluator
    stopped = exported_models(root)[-1]
    assert stopped.custom_properties[spec.PUBLISHED_PROPERTY].int_value == 0
    reason = stopped.custom_properties[spec.NOT_PUBLISHED_PROPERTY].string_value
    assert reason.startswith("contract guard: contract breaking"), reason
    assert not os.path.exists(os.path.join(stopped.uri, "Format-Serving"))
    with open(os.path.join(latest_report(root), "report.md")) as f:
        stopped_report = f.read()
    assert "Not published" in stopped_report
    assert "`serve_named/inputs/island`" in stopped_report  # the diff, row by row

    run(root, "added_output")
    versions = pushed_versions(root)
    assert len(versions) == 2 and versions[0] == first
    summary = exported_models(root)[-1].custom_properties[spec.CONTRACT_PROPERTY].string_value
    assert summary.startswith("contract compatible with baseline"), summary
    # The baseline was the PushedModel of run 1 (run 2 pushed nothing), and its
    # warmup requests (written by run 1's serving check) were replayed.
    assert "Pusher/pushed_model" in summary and "warmup request(s) replayed" in summary
    assert local_runner.contract_summary(os.path.join(root, "metadata.sqlite")) == summary
    with open(os.path.join(latest_report(root), "report.md")) as f:
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


def test_baseline_and_blessing_channels_are_routed_and_checked():
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

    blessing = channel.Channel(type=standard_artifacts.ModelBlessing)
    gated = component.ModelExporter(model=trained, export_config=serve,
                                    model_blessing=blessing)
    assert gated.inputs[spec.MODEL_BLESSING_KEY] is blessing
    with pytest.raises(TypeError, match=r"model_blessing=\.\.\.\) takes a ModelBlessing"):
        component.ModelExporter(model=trained, export_config=serve,
                                model_blessing=channel.Channel(type=standard_artifacts.Model))

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


def blessing_gated_pipeline(root, min_accuracy):
    """The main job's flow (ModelExporter -> Evaluator -> Pusher) plus a second
    ModelExporter that takes the Trainer's model and the Evaluator's blessing:
    the pattern of a pipeline whose Evaluator decides whether to export at all."""
    from tfx import v1 as tfx
    from export_archive.components import ModelExporter
    # A pipeline of its own: the extra node changes the upstream nodes' cache keys
    # anyway (TFX hashes their downstream wiring), and a retrained model must not
    # meet the contract runs' blessed models in Evaluator's change threshold.
    candidate = make_pipeline(root, config("v1"), name=f"{NAME}-blessing",
                              min_accuracy=min_accuracy)
    nodes = {c.id: c for c in candidate.components}
    gated = ModelExporter(
        model=nodes["Trainer"].outputs["model"],
        transform_graph=nodes["Transform"].outputs["transform_graph"],
        export_config={"endpoints": [{"name": "serving_default", "kind": "tf_example",
                                      "transform": True, "exclude_features": ["species"]}]},
        model_blessing=nodes["Evaluator"].outputs["blessing"]).with_id("GatedExporter")
    return tfx.dsl.Pipeline(
        pipeline_name=candidate.pipeline_info.pipeline_name,
        pipeline_root=candidate.pipeline_info.pipeline_root,
        components=candidate.components + [gated], enable_cache=True,
        metadata_connection_config=candidate.metadata_connection_config,
        beam_pipeline_args=candidate.beam_pipeline_args)


# The gated pipeline re-uses the nodes create_pipeline built (already registered
# with its Pipeline); TFX warns, and compiles them as given.
@pytest.mark.filterwarnings("ignore:Component .* is not found from the registry")
def test_model_blessing_gates_the_export_both_ways(root):
    """Evaluator (real TFMA thresholds) blesses, then does not: the gated export is
    published, then not, with the reason in ML Metadata and the report."""
    from tfx import v1 as tfx
    from export_archive.components.tfx import spec

    def gated_models():
        metadata = store(root)
        [context] = [c for c in metadata.get_contexts_by_type("node")
                     if c.name.endswith(".GatedExporter")]
        models = [a for a in metadata.get_artifacts_by_context(context.id)
                  if a.type == "Model" and spec.PUBLISHED_PROPERTY in a.custom_properties]
        return sorted(models, key=lambda a: a.id)

    def blessings():
        return sorted(store(root).get_artifacts_by_type("ModelBlessing"), key=lambda a: a.id)

    tfx.orchestration.LocalDagRunner().run(blessing_gated_pipeline(root, min_accuracy=0.0))
    assert blessings()[-1].custom_properties["blessed"].int_value == 1
    [published] = gated_models()
    assert published.custom_properties[spec.PUBLISHED_PROPERTY].int_value == 1
    revived = tf.saved_model.load(os.path.join(published.uri, "Format-Serving"))
    assert set(revived.signatures) == {"serving_default"}

    # No model is that accurate: Evaluator does not bless, so nothing is exported.
    tfx.orchestration.LocalDagRunner().run(blessing_gated_pipeline(root, min_accuracy=1.01))
    assert blessings()[-1].custom_properties["blessed"].int_value == 0
    stopped = gated_models()[-1]
    assert stopped.id != published.id
    assert stopped.custom_properties[spec.PUBLISHED_PROPERTY].int_value == 0
    reason = stopped.custom_properties[spec.NOT_PUBLISHED_PROPERTY].string_value
    assert reason.startswith("model_blessing: ModelBlessing") and "not blessed" in reason
    assert not os.path.exists(os.path.join(stopped.uri, "Format-Serving"))
    with open(os.path.join(latest_report(root, "GatedExporter"), "report.json")) as f:
        assert json.load(f)["published"] is False
