"""The standalone KFP v2 component: its compiled YAML, and real runs through kfp.local.

On kfp 2.7 and later (the current lane: 2.17), `run_local` runs the committed YAML in
a real kfp.local pipeline: `dsl.importer` brings the trained model in, as a user's
pipeline does. kfp 2.5.0 (the version tfx[kfp]==1.16 pins, the pinned lane) runs
single Lightweight Python components locally, but refuses input artifacts ("Input
artifacts are not supported") and pipelines ("Local pipeline execution is not
currently supported"); there `run_local` runs the YAML through kfp.local's own task
dispatcher (placeholder resolution, SubprocessRunner(use_venv=False) -> this
interpreter, executor_main, executor output parsing) and only adds the input
artifact to the ExecutorInput that kfp.local builds, the way a KFP backend would.
"""

import inspect
import json
import os
import re
import typing
import warnings

import pytest

kfp = pytest.importorskip("kfp")

from kfp import dsl, local  # noqa: E402
from kfp.local import executor_input_utils, task_dispatcher  # noqa: E402
from kfp.pipeline_spec import pipeline_spec_pb2  # noqa: E402

from google_cloud_pipeline_components.types.artifact_types import (  # noqa: E402
    UnmanagedContainerModel)

from export_archive.components.kfp import component as kfp_component  # noqa: E402

# kfp.local runs pipelines, importers included, from kfp 2.7 on.
LOCAL_PIPELINES = tuple(int(p) for p in kfp.__version__.split(".")[:2]) >= (2, 7)

pytestmark = pytest.mark.integration

CONFIG = {"endpoints": [{"name": "serve", "input_signature": ["float32[?,3]"]},
                        {"name": "call_training", "fn": "call", "training": True}]}


def loaded_component():
    return kfp.components.load_component_from_file(kfp_component.COMPONENT_YAML)


_construct_executor_input = executor_input_utils.construct_executor_input


def executor_input_with_artifacts(component_spec, arguments, task_root, input_artifacts):
    """kfp.local's ExecutorInput (parameter defaults, output paths) plus input
    artifacts {name: (uri, metadata)}, as a KFP backend sends them."""
    stripped = pipeline_spec_pb2.ComponentSpec()
    stripped.CopyFrom(component_spec)
    stripped.input_definitions.ClearField("artifacts")
    # kfp 2.7+ takes whether to refuse input artifacts (they are added below).
    extra = ({"block_input_artifact": False} if "block_input_artifact"
             in inspect.signature(_construct_executor_input).parameters else {})
    executor_input = _construct_executor_input(stripped, arguments, task_root, **extra)
    for name, (uri, metadata) in input_artifacts.items():
        artifact = pipeline_spec_pb2.RuntimeArtifact(
            name=name, uri=uri,
            type=component_spec.input_definitions.artifacts[name].artifact_type)
        artifact.metadata.update(metadata)
        executor_input.inputs.artifacts[name].artifacts.append(artifact)
    return executor_input


def run_local(parameters, trained_model_uri, pipeline_root, monkeypatch):
    """Runs the committed component YAML with kfp.local, fed the Model at
    `trained_model_uri`; returns its outputs {name: artifact}."""
    if LOCAL_PIPELINES:
        return _run_in_local_pipeline(parameters, trained_model_uri, pipeline_root)
    pipeline_spec = loaded_component().pipeline_spec

    def with_inputs(component_spec, arguments, task_root):
        return executor_input_with_artifacts(component_spec, arguments, task_root,
                                             {"trained_model": (trained_model_uri, {})})

    monkeypatch.setattr(executor_input_utils, "construct_executor_input", with_inputs)
    with warnings.catch_warnings():
        # "custom or non-Python base image": we run in this interpreter on purpose.
        warnings.filterwarnings("ignore", "You may be attemping", RuntimeWarning)
        return task_dispatcher._run_single_component_implementation(
            pipeline_spec=pipeline_spec, arguments=parameters,
            pipeline_root=str(pipeline_root), runner=local.SubprocessRunner(use_venv=False),
            raise_on_error=True)


def _run_in_local_pipeline(parameters, trained_model_uri, pipeline_root):
    comp = loaded_component()
    outputs = {"model": dsl.Model, "report_markdown": dsl.Markdown,
               "report_html": dsl.HTML, "vertex_model": UnmanagedContainerModel,
               "Output": bool}
    assert set(outputs) == set(comp.component_spec.outputs)
    returned = typing.NamedTuple("Outputs", list(outputs.items()))

    @dsl.pipeline(name="model-exporter-local")
    def exporter_pipeline(model_uri: str, export_config: str) -> returned:
        trained = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        task = comp(trained_model=trained.output, export_config=export_config)
        return returned(**{name: task.outputs[name] for name in outputs})

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(pipeline_root), raise_on_error=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You may be attemping", RuntimeWarning)
        return exporter_pipeline(model_uri=trained_model_uri, **parameters).outputs


# --- the compiled YAML -------------------------------------------------------------

def _without_compiler_stamp(text):
    """The YAML without its last line, `# ...: kfp-X.Y.Z`: the committed file is
    compiled with the pinned lane's kfp, and the current lane's kfp must compile
    the same component."""
    lines = text.rstrip("\n").split("\n")
    assert re.fullmatch(r"sdkVersion: kfp-[0-9.]+", lines[-1].strip()), lines[-1]
    return "\n".join(lines[:-1])


def test_committed_yaml_is_in_sync(tmp_path):
    fresh = kfp_component.compile_component(str(tmp_path / "component.yaml"))
    with open(fresh) as f, open(kfp_component.COMPONENT_YAML) as committed:
        assert _without_compiler_stamp(committed.read()) == _without_compiler_stamp(f.read()), (
            "components/kfp/model_exporter_component.yaml is stale: regenerate it with "
            "`python -m export_archive.components.kfp.component`")


def test_yaml_interface():
    comp = loaded_component()
    assert comp.name == "model-exporter"
    spec = comp.pipeline_spec.components["comp-model-exporter"]
    inputs = spec.input_definitions
    assert inputs.artifacts["trained_model"].artifact_type.schema_title == "system.Model"
    assert not inputs.artifacts["trained_model"].is_optional
    for name in ("schema", "transform_graph", "examples", "model_blessing",
                 "baseline_model"):
        assert inputs.artifacts[name].is_optional
    assert inputs.artifacts["baseline_model"].artifact_type.schema_title == "system.Model"
    assert set(inputs.parameters) == {"export_config", "serving_image", "beam_pipeline_args"}
    assert inputs.parameters["serving_image"].is_optional
    assert inputs.parameters["beam_pipeline_args"].is_optional
    # The outcome as output parameters, for dsl.If.
    parameters = spec.output_definitions.parameters
    assert {k: pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(v.parameter_type)
            for k, v in parameters.items()} == {"Output": "BOOLEAN"}
    outputs = {k: v.artifact_type.schema_title
               for k, v in spec.output_definitions.artifacts.items()}
    assert outputs == {"model": "system.Model", "report_markdown": "system.Markdown",
                       "report_html": "system.HTML",
                       "vertex_model": UnmanagedContainerModel.schema_title}
    container = comp.pipeline_spec.deployment_spec["executors"]["exec-model-exporter"][
        "container"]
    assert container["image"] == kfp_component.DEFAULT_IMAGE
    # The placeholder image is unpullable: the description a user reads says so.
    assert kfp_component.DEFAULT_IMAGE in comp.description
    assert "must be replaced" in comp.description
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


@pytest.mark.skipif(LOCAL_PIPELINES, reason=f"kfp {kfp.__version__} runs pipelines with "
                    "importers locally: run_local uses one")
def test_kfp_local_refuses_input_artifacts_in_this_kfp(tmp_path):
    """Why run_local's dispatcher path exists: kfp 2.5's kfp.local refuses input
    artifacts (kfp >= 2.7 runs pipelines with importers)."""
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


@pytest.fixture(scope="module")
def exported(keras_model_dir, tmp_path_factory):
    """The outputs of one local run of the committed YAML (serving_image left empty)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return run_local({"export_config": json.dumps(CONFIG)}, keras_model_dir,
                         tmp_path_factory.mktemp("kfp_local"), monkeypatch)


def test_local_run_exports_the_model(exported):
    import numpy as np
    import tensorflow as tf

    outputs = exported
    model = outputs["model"]
    assert isinstance(model, dsl.Model)
    # The SavedModel is the artifact directory itself.
    assert os.path.isfile(os.path.join(model.path, "saved_model.pb"))
    assert model.metadata["endpoints"] == ["serve", "call_training"]
    assert model.metadata["serving_default"] == "serve"
    assert model.metadata["source_flavor"] == "keras3"
    assert model.metadata["serving_check"] == "passed"
    assert model.metadata["published"] == 1 and outputs["Output"] is True
    assert "not_published_reason" not in model.metadata
    assert model.metadata["contract"] == "no baseline: contract not compared"

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
        run_local({"export_config": json.dumps(bad)}, keras_model_dir, tmp_path, monkeypatch)
    written = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
    assert not any(f.endswith("saved_model.pb") for f in written)


# --- the gates, in a pipeline: dsl.If on the outcome ------------------------------

def _gated_pipeline(blessed_metadata):
    """importer(s) -> model-exporter -> (only if published) a step that records it ran,
    standing for ModelUploadOp/Pusher. The blessing's metadata is a constant of the
    pipeline: kfp.local's importer takes no metadata from a pipeline parameter."""
    comp = loaded_component()

    @dsl.component(base_image="python:3.12")
    def deploy(model: dsl.Input[dsl.Model], marker: str):
        with open(marker, "w") as f:
            f.write(model.uri)

    @dsl.pipeline(name="gated-export")
    def gated(model_uri: str, blessing_uri: str, baseline_uri: str, export_config: str,
              marker: str) -> typing.NamedTuple(
                  "Outputs", [("published", bool), ("model", dsl.Model)]):
        trained = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        blessing = dsl.importer(artifact_uri=blessing_uri, artifact_class=dsl.Artifact,
                                metadata=blessed_metadata)
        baseline = dsl.importer(artifact_uri=baseline_uri, artifact_class=dsl.Model)
        exporter = comp(trained_model=trained.output, export_config=export_config,
                        model_blessing=blessing.output, baseline_model=baseline.output)
        with dsl.If(exporter.outputs["Output"] == True):  # noqa: E712 (KFP DSL)
            deploy(model=exporter.outputs["model"], marker=marker)
        outputs = typing.NamedTuple("Outputs", [("published", bool), ("model", dsl.Model)])
        return outputs(exporter.outputs["Output"], exporter.outputs["model"])
    return gated


@pytest.mark.skipif(not LOCAL_PIPELINES, reason=f"kfp {kfp.__version__}'s kfp.local runs no "
                    "pipelines (kfp >= 2.7 does): runs in the current lane")
def test_pipeline_stops_an_unblessed_model_and_a_breaking_retrain(keras_model_dir, tmp_path):
    import export_archive
    # The served model has a second signature; the retrain's config drops it: breaking.
    baseline = str(tmp_path / "served")
    served_config = {"endpoints": CONFIG["endpoints"] + [
        {"name": "legacy", "input_signature": ["float32[?,3]"]}]}
    export_archive.export(keras_model_dir, served_config, baseline)
    blessing_dir = tmp_path / "blessing"
    blessing_dir.mkdir()
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    cases = {
        # (config, blessing metadata, BLESSED file?) -> published?
        "unblessed": (served_config, {"blessed": 0}, False),
        "breaking_retrain": (CONFIG, {}, True),      # blessed by the Evaluator's file
        "compatible_retrain": (served_config, {"blessed": 1}, False),
    }
    outcomes = {}
    for case, (config, metadata, blessed_file) in cases.items():
        marker = tmp_path / f"{case}.deployed"
        for name in ("BLESSED", "NOT_BLESSED"):
            (blessing_dir / name).unlink(missing_ok=True)
        if blessed_file:
            (blessing_dir / "BLESSED").write_text("")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "You may be attemping", RuntimeWarning)
            task = _gated_pipeline(metadata)(
                model_uri=keras_model_dir, blessing_uri=str(blessing_dir),
                baseline_uri=baseline, export_config=json.dumps(config), marker=str(marker))
        model = task.outputs["model"]
        assert model.metadata["published"] == int(task.outputs["published"])
        outcomes[case] = (task.outputs["published"],
                          model.metadata.get("not_published_reason", ""), marker.exists())
    assert outcomes["unblessed"][0] is False and not outcomes["unblessed"][2]
    assert outcomes["unblessed"][1].startswith("model_blessing: the artifact at ")
    assert "is not blessed" in outcomes["unblessed"][1]
    assert outcomes["breaking_retrain"][0] is False and not outcomes["breaking_retrain"][2]
    assert outcomes["breaking_retrain"][1].startswith("contract guard: ")
    assert "legacy" in outcomes["breaking_retrain"][1] or "breaking" in \
        outcomes["breaking_retrain"][1]
    assert outcomes["compatible_retrain"] == (True, "", True)


# --- Vertex AI Model Registry: google-cloud-pipeline-components' ModelUploadOp ------------

UPLOAD = {"display_name": "penguin", "project": "my-project", "location": "us-central1"}


def upload_pipeline(exporter_output: str):
    from google_cloud_pipeline_components.v1.model import ModelUploadOp
    comp = loaded_component()

    @dsl.pipeline(name="export-and-upload")
    def export_and_upload(model_uri: str, export_config: str):
        trained = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        exporter = comp(trained_model=trained.output, export_config=export_config)
        ModelUploadOp(unmanaged_container_model=exporter.outputs[exporter_output], **UPLOAD)
    return export_and_upload


@pytest.fixture(scope="module")
def upload_spec(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("upload") / "pipeline.yaml")
    kfp.compiler.Compiler().compile(upload_pipeline("vertex_model"), path)
    return kfp.components.load_component_from_file(path).pipeline_spec


def test_model_upload_op_consumes_vertex_model(upload_spec):
    tasks = upload_spec.root.dag.tasks
    upload = tasks["model-upload"]
    source = upload.inputs.artifacts["unmanaged_container_model"].task_output_artifact
    assert (source.producer_task, source.output_artifact_key) == ("model-exporter",
                                                                   "vertex_model")
    components = upload_spec.components
    produced = components["comp-model-exporter"].output_definitions.artifacts["vertex_model"]
    consumed = components["comp-model-upload"].input_definitions.artifacts[
        "unmanaged_container_model"]
    assert produced.artifact_type == consumed.artifact_type
    assert consumed.artifact_type.schema_title == "google.UnmanagedContainerModel"


def test_model_upload_op_refuses_the_plain_model():
    """Why vertex_model exists: KFP type-checks the connection at compile time."""
    from kfp.dsl.types.type_utils import InconsistentTypeException
    with pytest.raises(InconsistentTypeException, match="google.UnmanagedContainerModel"):
        upload_pipeline("model")


def upload_request(upload_spec, vertex_model, tmp_path, monkeypatch):
    """Runs GCPC's upload launcher on the compiled model-upload task, with the
    ExecutorInput a backend builds from the exporter's vertex_model, and returns
    (url, request body) it would POST; the Vertex REST client is replaced."""
    from google.protobuf import json_format
    from google_cloud_pipeline_components.container.v1.gcp_launcher import lro_remote_runner
    from google_cloud_pipeline_components.container.v1.model.upload_model import launcher
    from kfp.local import placeholder_utils

    component = upload_spec.components["comp-model-upload"]
    task = upload_spec.root.dag.tasks["model-upload"]
    arguments = {k: v.runtime_value.constant.string_value
                 for k, v in task.inputs.parameters.items()}
    executor_input = executor_input_with_artifacts(
        component, arguments, str(tmp_path),
        {"unmanaged_container_model": (vertex_model.uri, vertex_model.metadata)})
    container = upload_spec.deployment_spec["executors"]["exec-model-upload"]["container"]
    # kfp 2.7+ also takes the run's unique id (for the {{$.pipeline_job_uuid}} family).
    extra = (["export-and-upload-run"] if "unique_pipeline_id"
             in inspect.signature(placeholder_utils.replace_placeholders).parameters else [])
    command = placeholder_utils.replace_placeholders(
        list(container["command"]) + list(container["args"]),
        json_format.MessageToDict(executor_input), "export-and-upload", "model-upload",
        str(tmp_path), *extra)
    assert command[:4] == ["python3", "-u", "-m", launcher.__name__]

    sent = []

    class RecordingLroRunner:
        def __init__(self, location):
            self.location = location

        def create_lro(self, url, request_body, gcp_resources):
            sent.append((url, json.loads(request_body)))
            return {"name": "operations/1"}

        def poll_lro(self, lro):
            # Vertex's REST API answers in camelCase, which GCPC 2.22 reads; GCPC 2.3
            # reads the snake_case key. Both are given: each lane's GCPC takes its own.
            return {"response": {"model": "projects/1/locations/us-central1/models/7",
                                 "modelVersionId": "1", "model_version_id": "1"}}

    monkeypatch.setattr(lro_remote_runner, "LroRemoteRunner", RecordingLroRunner)
    launcher.main(command[4:])
    (request,) = sent
    with open(executor_input.outputs.output_file) as f:
        return request, json.load(f)


def test_upload_request_from_the_exported_artifact(exported, upload_spec, tmp_path,
                                                   monkeypatch):
    from google.cloud.aiplatform.constants import prediction

    vertex_model, model = exported["vertex_model"], exported["model"]
    # The SavedModel is not copied: vertex_model is model's directory.
    assert vertex_model.uri == model.uri
    image = vertex_model.metadata["containerSpec"]["imageUri"]
    # Vertex's prebuilt TF2 CPU image of the newest version not newer than ours.
    import tensorflow as tf
    match = prediction.CONTAINER_URI_PATTERN.fullmatch(image)
    assert match and (match["framework"], match["accelerator"]) == ("tf2", "cpu")
    assert image in prediction.TF_CONTAINER_URIS
    version = tuple(int(v) for v in match["version"].split("-"))
    assert version <= tuple(int(v) for v in tf.__version__.split(".")[:2])
    # ... and exactly the runtime the serving check verified the export against.
    from export_archive.components.kfp import vertex as vertex_image
    assert "%d.%d" % version == vertex_image.default_serving_runtime()

    (url, body), executor_output = upload_request(upload_spec, vertex_model, tmp_path,
                                                  monkeypatch)
    assert url == ("https://us-central1-aiplatform.googleapis.com/v1/projects/my-project/"
                   "locations/us-central1/models:upload")
    sent = body["model"]
    assert sent["display_name"] == "penguin"
    assert sent["artifact_uri"] == model.uri
    assert sent["container_spec"] == {"image_uri": image}
    assert os.path.isfile(os.path.join(model.path, "saved_model.pb"))
    # The launcher's own output: the registered Model, for a ModelDeployOp downstream.
    (registered,) = executor_output["artifacts"]["model"]["artifacts"]
    assert registered["metadata"]["resourceName"] == \
        "projects/1/locations/us-central1/models/7@1"
