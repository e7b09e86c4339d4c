"""The standalone KFP v2 component: its compiled YAML, and real runs through kfp.local.

kfp 2.5.0 (the version tfx[kfp]==1.16 pins) runs single Lightweight Python
components locally, but refuses input artifacts ("Input artifacts are not
supported") and pipelines ("Local pipeline execution is not currently
supported"), so neither a direct call with a Model nor a pipeline with an
`importer` can feed our component a model. `run_local` below runs the committed
YAML through kfp.local's own task dispatcher (placeholder resolution,
SubprocessRunner(use_venv=False) -> this interpreter, executor_main, executor
output parsing) and only adds the input artifact to the ExecutorInput that
kfp.local builds, the way a KFP backend would.
"""

import json
import os
import warnings

import pytest

kfp = pytest.importorskip("kfp")

from kfp import dsl, local  # noqa: E402
from kfp.local import executor_input_utils, task_dispatcher  # noqa: E402
from kfp.pipeline_spec import pipeline_spec_pb2  # noqa: E402

from export_archive.components.kfp import component as kfp_component  # noqa: E402

pytestmark = pytest.mark.integration

CONFIG = {"endpoints": [{"name": "serve", "input_signature": ["float32[?,3]"]},
                        {"name": "call_training", "fn": "call", "training": True}]}


def loaded_component():
    return kfp.components.load_component_from_file(kfp_component.COMPONENT_YAML)


def run_local(pipeline_spec, parameters, input_artifacts, pipeline_root, monkeypatch):
    """Runs a compiled component with kfp.local, input artifacts included."""
    construct = executor_input_utils.construct_executor_input

    def with_inputs(component_spec, arguments, task_root):
        stripped = pipeline_spec_pb2.ComponentSpec()
        stripped.CopyFrom(component_spec)
        stripped.input_definitions.ClearField("artifacts")
        executor_input = construct(stripped, arguments, task_root)
        for name, uri in input_artifacts.items():
            executor_input.inputs.artifacts[name].artifacts.append(
                pipeline_spec_pb2.RuntimeArtifact(
                    name=name, uri=uri,
                    type=component_spec.input_definitions.artifacts[name].artifact_type))
        return executor_input

    monkeypatch.setattr(executor_input_utils, "construct_executor_input", with_inputs)
    with warnings.catch_warnings():
        # "custom or non-Python base image": we run in this interpreter on purpose.
        warnings.filterwarnings("ignore", "You may be attemping", RuntimeWarning)
        return task_dispatcher._run_single_component_implementation(
            pipeline_spec=pipeline_spec, arguments=parameters,
            pipeline_root=str(pipeline_root), runner=local.SubprocessRunner(use_venv=False),
            raise_on_error=True)


# --- the compiled YAML -------------------------------------------------------------

def test_committed_yaml_is_in_sync(tmp_path):
    fresh = kfp_component.compile_component(str(tmp_path / "component.yaml"))
    with open(fresh) as f, open(kfp_component.COMPONENT_YAML) as committed:
        assert committed.read() == f.read(), (
            "components/kfp/model_exporter_component.yaml is stale: regenerate it with "
            "`python -m export_archive.components.kfp.component`")


def test_yaml_interface():
    comp = loaded_component()
    assert comp.name == "model-exporter"
    spec = comp.pipeline_spec.components["comp-model-exporter"]
    inputs = spec.input_definitions
    assert inputs.artifacts["trained_model"].artifact_type.schema_title == "system.Model"
    assert not inputs.artifacts["trained_model"].is_optional
    for name in ("schema", "transform_graph", "examples"):
        assert inputs.artifacts[name].is_optional
    assert set(inputs.parameters) == {"export_config"}
    outputs = {k: v.artifact_type.schema_title
               for k, v in spec.output_definitions.artifacts.items()}
    assert outputs == {"model": "system.Model", "report_markdown": "system.Markdown",
                       "report_html": "system.HTML"}
    container = comp.pipeline_spec.deployment_spec["executors"]["exec-model-exporter"][
        "container"]
    assert container["image"] == kfp_component.DEFAULT_IMAGE
    # No runtime `pip install kfp`: the image has the pinned kfp.
    assert "pip install" not in " ".join(container["command"])


def test_build_component_for_another_image(tmp_path):
    image = "us-docker.pkg.dev/p/r/tfx-export-archive:1"
    path = kfp_component.compile_component(str(tmp_path / "c.yaml"), image=image)
    comp = kfp.components.load_component_from_file(path)
    assert comp.pipeline_spec.deployment_spec["executors"]["exec-model-exporter"][
        "container"]["image"] == image


def test_component_composes_in_a_pipeline(tmp_path):
    comp = loaded_component()

    @dsl.pipeline(name="export-with-importer")
    def export_pipeline(model_uri: str, export_config: str):
        trained = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        comp(trained_model=trained.output, export_config=export_config)

    path = str(tmp_path / "pipeline.yaml")
    kfp.compiler.Compiler().compile(export_pipeline, path)
    tasks = kfp.components.load_component_from_file(path).pipeline_spec.root.dag.tasks
    assert set(tasks) == {"importer", "model-exporter"}


def test_kfp_local_refuses_input_artifacts_in_this_kfp(tmp_path):
    """Why run_local exists: if this starts failing, kfp.local has learned input
    artifacts (kfp >= 2.7 runs pipelines with importers) and run_local can go."""
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    with pytest.raises(ValueError, match="Input artifacts are not supported"):
        kfp_component.model_exporter(trained_model=dsl.Model(uri=str(tmp_path)),
                                     export_config=json.dumps(CONFIG))


# --- real runs ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras_model_dir(tmp_path_factory):
    import keras
    import numpy as np
    inputs = keras.Input((3,), name="features")
    # No BatchNormalization: the serving check rightly refuses a training endpoint
    # that shifts the moving statistics `serve` uses.
    x = keras.layers.Dense(4, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.ones((4, 2), "float32"), verbose=0)
    # A Model artifact is a directory; the exporter accepts one holding a .keras file.
    directory = tmp_path_factory.mktemp("trained_model")
    model.save(str(directory / "model.keras"))
    return str(directory)


def test_local_run_exports_the_model(keras_model_dir, tmp_path, monkeypatch):
    import numpy as np
    import tensorflow as tf

    outputs = run_local(loaded_component().pipeline_spec,
                        {"export_config": json.dumps(CONFIG)},
                        {"trained_model": keras_model_dir}, tmp_path, monkeypatch)

    model = outputs["model"]
    assert isinstance(model, dsl.Model)
    # The SavedModel is the artifact directory itself.
    assert os.path.isfile(os.path.join(model.path, "saved_model.pb"))
    assert model.metadata["endpoints"] == ["serve", "call_training"]
    assert model.metadata["serving_default"] == "serve"
    assert model.metadata["source_flavor"] == "keras3"
    assert model.metadata["serving_check"] == "passed"

    loaded = tf.saved_model.load(model.path)
    assert set(loaded.signatures) == {"serve", "call_training", "serving_default"}
    out = loaded.signatures["serving_default"](tf.constant(np.ones((5, 3), "float32")))
    assert next(iter(out.values())).shape == (5, 2)

    with open(outputs["report_markdown"].path) as f:
        markdown = f.read()
    assert markdown.startswith("# Export report") and "`serve`" in markdown
    with open(outputs["report_html"].path) as f:
        assert "<table>" in f.read()


def test_local_run_bad_config_fails_without_output(keras_model_dir, tmp_path, monkeypatch):
    bad = {"endpoints": [{"name": "serve", "input_signature": ["float23[?,3]"]}]}
    with pytest.raises(RuntimeError, match="FAILURE"):
        run_local(loaded_component().pipeline_spec, {"export_config": json.dumps(bad)},
                  {"trained_model": keras_model_dir}, tmp_path, monkeypatch)
    written = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
    assert not any(f.endswith("saved_model.pb") for f in written)
