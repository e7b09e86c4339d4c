"""The pipeline compiled by KubeflowV2DagRunner: Vertex PipelineJob JSON and KFP v2 YAML.

Compiles without submitting (no cluster or cloud here), then reads the files back
the way KFP / Vertex do, and runs the ModelExporter step through TFX's own KFP v2
container entrypoint with the executor arguments from the compiled file.
"""

import json
import os
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("tfx")

from export_archive.components.tfx import spec  # noqa: E402
from export_archive.config import ExportConfig  # noqa: E402
from export_archive.pipelines import kubeflow_v2_runner as runner  # noqa: E402
from export_archive.pipelines import pipeline as pipeline_module  # noqa: E402

pytestmark = pytest.mark.integration

IMAGE = "us-docker.pkg.dev/my-project/tfx/tfx-export-archive:0.1.0"
PIPELINE_ROOT = "gs://my-bucket/tfx-export-archive"
EXECUTOR_CLASS = "export_archive.components.tfx.executor.Executor"
BEAM_ARGS = ["--runner=DirectRunner", "--direct_num_workers=2"]
CONFIG = {"endpoints": [{"name": "serve"},
                        {"name": "call_training", "training": True}],
          "serving_default": "serve",
          "variable_collections": [{"name": "optimizer_variables", "source": "optimizer"}]}
KFP_V2_ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"


def flags(fmt, output_dir):
    return ["--image", IMAGE, "--pipeline-root", PIPELINE_ROOT, "--output-dir", str(output_dir),
            "--format", fmt, "--export-config", json.dumps(CONFIG),
            "--beam-pipeline-args=" + " ".join(BEAM_ARGS),
            "--exporter-cpu", "4", "--exporter-memory", "16"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{format: path}, both compiled through the runner's command line."""
    out = tmp_path_factory.mktemp("compiled")
    assert runner.main(flags("json", out)) == 0
    assert runner.main(flags("yaml", out)) == 0
    return {"json": str(out / "pipeline.json"), "yaml": str(out / "pipeline.yaml")}


@pytest.fixture(scope="module")
def job(compiled):
    with open(compiled["json"]) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def pipeline_spec(job):
    return job["pipelineSpec"]


def exporter_container(pipeline_spec):
    label = pipeline_spec["components"][runner.EXPORTER_ID]["executorLabel"]
    return pipeline_spec["deploymentSpec"]["executors"][label]["container"]


def test_report_type_is_a_kfp_v2_schema_title():
    # KubeflowV2DagRunner refuses other custom type names, and the KFP v2
    # container imports the type back from this title.
    from tfx.orchestration.kubeflow.v2 import compiler_utils
    assert compiler_utils._SCHEMA_TITLE_RE.fullmatch(spec.ExportReport.TYPE_NAME), (
        f"ExportReport.TYPE_NAME {spec.ExportReport.TYPE_NAME!r} is not a KFP v2 schema "
        "title (`namespace.TypeName`): KubeflowV2DagRunner refuses it. Use "
        "'export_archive.ExportReport'.")
    # The KFP v2 entrypoint recovers a custom type with import_class_by_path(title).
    import export_archive
    assert getattr(export_archive, "ExportReport", None) is spec.ExportReport, (
        "export_archive.ExportReport must resolve to the artifact class (lazily)")


def test_files_written(compiled):
    assert os.path.isfile(compiled["json"]) and os.path.isfile(compiled["yaml"])


def test_exporter_executor_and_image(pipeline_spec):
    container = exporter_container(pipeline_spec)
    assert container["image"] == IMAGE
    assert container["command"] == ["python", "-m", KFP_V2_ENTRYPOINT]
    args = container["args"]
    assert args[args.index("--executor_class_path") + 1] == EXECUTOR_CLASS
    assert args[args.index("--json_serialized_invocation_args") + 1] == "{{$}}"


def test_every_step_runs_in_the_image(pipeline_spec):
    executors = pipeline_spec["deploymentSpec"]["executors"]
    steps = {"CsvExampleGen", "StatisticsGen", "SchemaGen", "Transform", "Trainer",
             runner.EXPORTER_ID, "Pusher"}
    assert {f"{s}_executor" for s in steps} <= set(executors)
    assert {e["container"]["image"] for e in executors.values()} == {IMAGE}


def test_beam_pipeline_args_reach_the_exporter(pipeline_spec):
    args = exporter_container(pipeline_spec)["args"]
    assert args[-len(BEAM_ARGS):] == BEAM_ARGS


def test_exporter_resources(pipeline_spec):
    # ModelExporter.with_platform_config(ResourceSpec) -> the container's resources.
    assert exporter_container(pipeline_spec)["resources"] == {"cpuLimit": 4.0,
                                                             "memoryLimit": 16.0}
    others = [e["container"] for k, e in pipeline_spec["deploymentSpec"]["executors"].items()
              if k != "ModelExporter_executor"]
    assert not any("resources" in c for c in others)


def test_export_config_arrives_intact(pipeline_spec):
    task = pipeline_spec["root"]["dag"]["tasks"][runner.EXPORTER_ID]
    value = task["inputs"]["parameters"][spec.EXPORT_CONFIG_KEY]["runtimeValue"][
        "constantValue"]["stringValue"]
    assert ExportConfig.parse(value) == ExportConfig.parse(CONFIG)
    component = pipeline_spec["components"][runner.EXPORTER_ID]
    assert component["inputDefinitions"]["parameters"] == {
        spec.EXPORT_CONFIG_KEY: {"type": "STRING"}}


def _title(artifact_spec):
    return yaml.safe_load(artifact_spec["artifactType"]["instanceSchema"])["title"]


def test_exporter_inputs_and_outputs(pipeline_spec):
    component = pipeline_spec["components"][runner.EXPORTER_ID]
    inputs = {k: _title(v) for k, v in component["inputDefinitions"]["artifacts"].items()}
    assert inputs == {spec.TRAINED_MODEL_KEY: "tfx.Model", spec.SCHEMA_KEY: "tfx.Schema",
                      spec.TRANSFORM_GRAPH_KEY: "tfx.TransformGraph",
                      spec.EXAMPLES_KEY: "tfx.Examples"}
    outputs = {k: _title(v) for k, v in component["outputDefinitions"]["artifacts"].items()}
    assert outputs == {spec.MODEL_KEY: "tfx.Model",
                       spec.REPORT_KEY: spec.ExportReport.TYPE_NAME}

    tasks = pipeline_spec["root"]["dag"]["tasks"]
    wiring = {k: (v["taskOutputArtifact"]["producerTask"],
                  v["taskOutputArtifact"]["outputArtifactKey"])
              for k, v in tasks[runner.EXPORTER_ID]["inputs"]["artifacts"].items()}
    assert wiring == {"trained_model": ("Trainer", "model"),
                      "schema": ("SchemaGen", "schema"),
                      "transform_graph": ("Transform", "transform_graph"),
                      "examples": ("CsvExampleGen", "examples")}
    pusher_model = tasks["Pusher"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
    assert pusher_model == {"producerTask": runner.EXPORTER_ID, "outputArtifactKey": "model"}


def test_pipeline_root_and_push_destination(job, pipeline_spec):
    assert job["runtimeConfig"]["gcsOutputDirectory"] == PIPELINE_ROOT
    push = pipeline_spec["root"]["dag"]["tasks"]["Pusher"]["inputs"]["parameters"][
        "push_destination"]["runtimeValue"]["constantValue"]["stringValue"]
    assert json.loads(push)["filesystem"]["base_directory"] == PIPELINE_ROOT + "/serving_model"
    input_base = pipeline_spec["root"]["dag"]["tasks"]["CsvExampleGen"]["inputs"][
        "parameters"]["input_base"]["runtimeValue"]["constantValue"]["stringValue"]
    assert input_base == runner.IMAGE_DATA_ROOT


def test_user_modules_come_from_the_installed_package(pipeline_spec):
    import importlib
    import importlib.util
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    paths = {}
    for name, key in (("Transform", "preprocessing_fn"), ("Trainer", "run_fn")):
        params = tasks[name]["inputs"]["parameters"]
        # No local path and no user-module wheel in the pipeline root.
        assert "module_file" not in params and "module_path" not in params
        paths[name] = params[key]["runtimeValue"]["constantValue"]["stringValue"]
    assert paths == {
        "Transform": "export_archive.pipelines.modules.penguin_transform.preprocessing_fn",
        "Trainer": "export_archive.pipelines.modules.penguin_trainer_keras3.run_fn"}
    for path in paths.values():
        module, attr = path.rsplit(".", 1)
        assert importlib.util.find_spec(module) is not None
        assert callable(getattr(importlib.import_module(module), attr))


def test_yaml_is_the_same_pipeline_spec(compiled, pipeline_spec):
    with open(compiled["yaml"]) as f:
        from_yaml = yaml.safe_load(f)
    assert from_yaml == pipeline_spec


def test_yaml_is_a_kfp_v2_pipeline(compiled):
    """What KFP 2.5 does with a pipeline package: parse it into a PipelineSpec."""
    import kfp
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    with open(compiled["yaml"]) as f:
        proto = json_format.ParseDict(yaml.safe_load(f), pipeline_spec_pb2.PipelineSpec())
    assert proto.pipeline_info.name == runner.DEFAULT_PIPELINE_NAME
    assert proto.schema_version == "2.0.0"
    comp = kfp.components.load_component_from_file(compiled["yaml"])
    assert comp.name == runner.DEFAULT_PIPELINE_NAME
    assert runner.EXPORTER_ID in comp.pipeline_spec.root.dag.tasks


def test_defaults(tmp_path):
    """Without flags: the default image, the default export config, no resources."""
    tfx_pipeline = runner.build_pipeline(pipeline_root=PIPELINE_ROOT)
    with open(runner.compile_pipeline(tfx_pipeline, runner.DEFAULT_IMAGE, str(tmp_path))) as f:
        default_spec = json.load(f)["pipelineSpec"]
    container = exporter_container(default_spec)
    assert container["image"] == runner.DEFAULT_IMAGE
    assert "resources" not in container
    assert container["args"][-1] == "--direct_num_workers=1"   # create_pipeline's default
    value = default_spec["root"]["dag"]["tasks"][runner.EXPORTER_ID]["inputs"]["parameters"][
        spec.EXPORT_CONFIG_KEY]["runtimeValue"]["constantValue"]["stringValue"]
    assert ExportConfig.parse(value) == ExportConfig.parse(pipeline_module.DEFAULT_EXPORT_CONFIG)


def test_bad_export_config_fails_the_compile(tmp_path):
    from export_archive.config import ConfigError
    with pytest.raises(ConfigError, match=r"endpoints\[0\]"):
        runner.main(["--pipeline-root", PIPELINE_ROOT, "--output-dir", str(tmp_path),
                     "--export-config", '{"endpoints": [{"name": "x", "kind": "nope"}]}'])
    assert not os.listdir(tmp_path)


# --- the executor in a KFP v2 container, minus the container ---------------------------

def _clean_env():
    # Not the repo (cwd elsewhere, -I: no PYTHONPATH, no user site): the executor
    # must import from the installed package, as in the component image.
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def test_executor_class_imports_outside_the_repo(tmp_path):
    code = ("import importlib; m = importlib.import_module('export_archive.components.tfx."
            "executor'); from tfx.dsl.components.base import base_beam_executor; "
            "assert issubclass(m.Executor, base_beam_executor.BaseBeamExecutor); "
            "print(m.Executor.__module__ + '.' + m.Executor.__name__)")
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=str(tmp_path),
                          env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == EXECUTOR_CLASS


@pytest.fixture(scope="module")
def trainer_output(tmp_path_factory):
    """A Trainer's Model artifact: <uri>/Format-Serving/ holding a .keras model."""
    import keras
    import numpy as np
    inputs = keras.Input((3,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4)(inputs)))
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.ones((4, 2), "float32"), verbose=0)
    uri = tmp_path_factory.mktemp("Trainer") / "model" / "7"
    (uri / "Format-Serving").mkdir(parents=True)
    model.save(str(uri / "Format-Serving" / "model.keras"))
    return str(uri)


def test_exporter_runs_through_the_kfp_v2_entrypoint(pipeline_spec, trainer_output, tmp_path):
    """The compiled container command and args, with the ExecutorInput a KFP v2
    backend would send (local URIs instead of gs://), in a clean process."""
    component = pipeline_spec["components"][runner.EXPORTER_ID]
    task = pipeline_spec["root"]["dag"]["tasks"][runner.EXPORTER_ID]
    config_json = task["inputs"]["parameters"][spec.EXPORT_CONFIG_KEY]["runtimeValue"][
        "constantValue"]["stringValue"]

    def artifact_list(definitions, key, uri):
        return {"artifacts": [{"name": f"artifacts/{key}", "uri": uri, "metadata": {},
                               "type": definitions[key]["artifactType"]}]}

    outputs = component["outputDefinitions"]["artifacts"]
    model_uri, report_uri = str(tmp_path / "model"), str(tmp_path / "report")
    executor_input = {
        "inputs": {
            "artifacts": {"trained_model": artifact_list(
                component["inputDefinitions"]["artifacts"], "trained_model", trainer_output)},
            "parameterValues": {spec.EXPORT_CONFIG_KEY: config_json},
            "parameters": {spec.EXPORT_CONFIG_KEY: {"stringValue": config_json}}},
        "outputs": {
            "artifacts": {"model": artifact_list(outputs, "model", model_uri),
                          "report": artifact_list(outputs, "report", report_uri)},
            "outputFile": str(tmp_path / "task" / "executor_output.json")}}
    container = exporter_container(pipeline_spec)
    assert container["command"][0] == "python"
    command = [sys.executable, "-I"] + container["command"][1:] + [
        json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
    proc = subprocess.run(command, cwd=str(tmp_path), env=_clean_env(), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]

    assert os.path.isfile(os.path.join(model_uri, "Format-Serving", "saved_model.pb"))
    assert not os.path.exists(os.path.join(model_uri, "Format-Serving", "export"))
    for name in (spec.REPORT_JSON, spec.REPORT_MARKDOWN, spec.REPORT_HTML):
        assert os.path.isfile(os.path.join(report_uri, name))
    with open(executor_input["outputs"]["outputFile"]) as f:
        executor_output = json.load(f)
    metadata = executor_output["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert json.loads(metadata[spec.ENDPOINTS_PROPERTY]) == ["serve", "call_training"]
    assert metadata[spec.SERVING_DEFAULT_PROPERTY] == "serve"
    assert metadata[spec.SERVING_CHECK_PROPERTY] == "passed"
    assert "report" in executor_output["artifacts"]


# --- deploy/vertex_submit.py --dry-run ------------------------------------------------

SUBMIT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "deploy", "vertex_submit.py")
SERVICE_ACCOUNT = "pipelines@my-project.iam.gserviceaccount.com"


def dry_run(*args):
    proc = subprocess.run([sys.executable, SUBMIT, "--project", "my-project", "--region",
                           "us-central1", "--pipeline-root", PIPELINE_ROOT,
                           "--service-account", SERVICE_ACCOUNT, "--dry-run", *args],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_vertex_dry_run_compiles_and_describes_the_job(tmp_path):
    job = dry_run("--image", IMAGE, "--output-dir", str(tmp_path),
                  "--export-config", json.dumps(CONFIG), "--exporter-memory", "8")
    assert job["template_path"] == str(tmp_path / "pipeline.json")
    with open(job["template_path"]) as f:
        template = json.load(f)
    assert exporter_container(template["pipelineSpec"])["resources"] == {"memoryLimit": 8.0}
    assert job["display_name"] == runner.DEFAULT_PIPELINE_NAME
    assert job["image"] == IMAGE and job["images"] == [IMAGE]
    assert job["pipeline_root"] == PIPELINE_ROOT
    assert job["parameter_values"] == {}
    assert (job["project"], job["location"]) == ("my-project", "us-central1")
    assert job["service_account"] == SERVICE_ACCOUNT
    assert job["enable_caching"] is None   # the compiled per-task caching applies
    # Built by aiplatform's own PipelineRuntimeConfigBuilder, offline.
    assert job["runtime_config"]["gcsOutputDirectory"] == PIPELINE_ROOT


def test_vertex_dry_run_of_a_compiled_template(compiled):
    job = dry_run("--template", compiled["json"], "--display-name", "nightly", "--no-cache")
    assert job["template_path"] == compiled["json"]
    assert (job["display_name"], job["image"], job["enable_caching"]) == (
        "nightly", IMAGE, False)
