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
# TFX's kubeflow_v2_run_executor, behind one that maps the report's system.HTML title
# to its class (components/tfx/kfp_v2_entrypoint.py).
KFP_V2_ENTRYPOINT = "export_archive.components.tfx.kfp_v2_entrypoint"


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


def test_report_is_an_artifact_the_kfp_and_vertex_uis_render(pipeline_spec):
    # The UIs render system.HTML / system.Markdown artifacts, and TFX's compiler
    # makes a custom type's TYPE_NAME its schema title.
    report_type = pipeline_spec["components"][runner.EXPORTER_ID]["outputDefinitions"][
        "artifacts"][spec.REPORT_KEY]["artifactType"]
    assert _title({"artifactType": report_type}) == "system.HTML"
    from tfx.orchestration.kubeflow.v2 import compiler_utils
    assert compiler_utils._SCHEMA_TITLE_RE.fullmatch(spec.ExportReport.TYPE_NAME)


def test_the_container_rebuilds_the_report_artifact_from_its_title(pipeline_spec):
    """What the KFP v2 container does with the output it is handed: TFX's own
    entrypoint imports a custom title as `module.Class` and fails on system.HTML;
    ours maps the title to ExportReport first."""
    from tfx.orchestration.kubeflow.v2 import compiler_utils
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as utils

    from export_archive.components.tfx import kfp_v2_entrypoint
    report_type = pipeline_spec["components"][runner.EXPORTER_ID]["outputDefinitions"][
        "artifacts"][spec.REPORT_KEY]["artifactType"]
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    raw = {"report": json_format.ParseDict(
        {"artifacts": [{"name": "artifacts/report", "uri": "gs://b/r/report",
                        "type": report_type}]}, pipeline_spec_pb2.ArtifactList())}
    # Importing this module registers nothing: main() does, in the container.
    assert spec.ExportReport.TYPE_NAME not in compiler_utils.TITLE_TO_CLASS_PATH
    with pytest.raises(ImportError, match="system.HTML"):
        utils.parse_raw_artifact_dict(raw, {})
    try:
        kfp_v2_entrypoint.register_artifact_types()
        [artifact] = utils.parse_raw_artifact_dict(raw, {})["report"]
    finally:
        compiler_utils.TITLE_TO_CLASS_PATH.pop(spec.ExportReport.TYPE_NAME, None)
    assert type(artifact) is spec.ExportReport and artifact.uri == "gs://b/r/report"
    assert kfp_v2_entrypoint.COMMAND == ["python", "-m", KFP_V2_ENTRYPOINT]


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
             runner.EXPORTER_ID, "Evaluator", "Pusher"}
    assert {f"{s}_executor" for s in steps} <= set(executors)
    # Resolvers run in the KFP/Vertex backend, not in a container.
    containers = {k: e["container"] for k, e in executors.items() if "container" in e}
    assert {f"{s}_executor" for s in steps} <= set(containers)
    assert {c["image"] for c in containers.values()} == {IMAGE}


def test_no_step_waits_on_a_condition_the_runner_cannot_meet(pipeline_spec):
    """Without the contract guard (which KFP v2 cannot compile) ModelExporter always
    publishes, so nothing is gated; TFX 1.16 miscompiles Evaluator's gate anyway."""
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    assert [name for name, task in tasks.items() if "triggerPolicy" in task] == []

def test_beam_pipeline_args_reach_the_exporter(pipeline_spec):
    args = exporter_container(pipeline_spec)["args"]
    assert args[-len(BEAM_ARGS):] == BEAM_ARGS


def test_exporter_resources(pipeline_spec):
    # ModelExporter.with_platform_config(ResourceSpec) -> the container's resources.
    assert exporter_container(pipeline_spec)["resources"] == {"cpuLimit": 4.0,
                                                             "memoryLimit": 16.0}
    others = [e["container"] for k, e in pipeline_spec["deploymentSpec"]["executors"].items()
              if k != "ModelExporter_executor" and "container" in e]
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
    """Without optional flags: the default export config, no resources."""
    tfx_pipeline = runner.build_pipeline(pipeline_root=PIPELINE_ROOT)
    with open(runner.compile_pipeline(tfx_pipeline, IMAGE, str(tmp_path))) as f:
        default_spec = json.load(f)["pipelineSpec"]
    container = exporter_container(default_spec)
    assert container["image"] == IMAGE
    assert "resources" not in container
    assert container["args"][-1] == "--direct_num_workers=1"   # create_pipeline's default
    value = default_spec["root"]["dag"]["tasks"][runner.EXPORTER_ID]["inputs"]["parameters"][
        spec.EXPORT_CONFIG_KEY]["runtimeValue"]["constantValue"]["stringValue"]
    assert ExportConfig.parse(value) == ExportConfig.parse(pipeline_module.DEFAULT_EXPORT_CONFIG)


def test_bad_export_config_fails_the_compile(tmp_path):
    from export_archive.config import ConfigError
    with pytest.raises(ConfigError, match=r"endpoints\[0\]"):
        runner.main(["--image", IMAGE, "--pipeline-root", PIPELINE_ROOT,
                     "--output-dir", str(tmp_path),
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
    with open(os.path.join(report_uri, spec.REPORT_JSON)) as f:
        assert json.load(f)["verdict"]["headline"].startswith("Exported")
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
                  "--export-config", json.dumps(CONFIG), "--exporter-memory", "8",
                  "--vertex-endpoint", "penguin", "--serving-image", "eu.gcr.io/p/serve:1")
    assert job["template_path"] == str(tmp_path / "pipeline.json")
    with open(job["template_path"]) as f:
        template = json.load(f)
    assert exporter_container(template["pipelineSpec"])["resources"] == {"memoryLimit": 8.0}
    # --vertex-endpoint: TFX's Vertex Pusher, in the job's project and region.
    pusher = template["pipelineSpec"]["deploymentSpec"]["executors"]["Pusher_executor"]
    args = pusher["container"]["args"]
    assert args[args.index("--executor_class_path") + 1] == \
        "tfx.extensions.google_cloud_ai_platform.pusher.executor.Executor"
    custom_config = json.loads(template["pipelineSpec"]["root"]["dag"]["tasks"]["Pusher"][
        "inputs"]["parameters"]["custom_config"]["runtimeValue"]["constantValue"]["stringValue"])
    assert (custom_config["ai_platform_vertex_region"],
            custom_config["ai_platform_serving_args"]["project_id"],
            custom_config["ai_platform_serving_args"]["endpoint_name"],
            custom_config["ai_platform_vertex_container_image_uri"]) == (
        "us-central1", "my-project", "penguin", "eu.gcr.io/p/serve:1")
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

