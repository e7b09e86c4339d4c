"""The TFX path to Vertex AI: TFX's Vertex Pusher taking ModelExporter's output.

Compiled with KubeflowV2DagRunner (through kubeflow_v2_runner's flags), and TFX's
Vertex Pusher executor run on a real exported model with the Vertex AI service
replaced in-process: aiplatform's own SDK code builds the requests (endpoint
lookup and creation, model upload, deploy), and the fake GAPIC client below
records them. No network, no credentials.
(The standalone KFP component's ModelUploadOp path is tested in test_kfp_component.py.)
"""

import json
import os

import pytest

pytest.importorskip("tfx")

from export_archive.components.kfp import vertex as vertex_image  # noqa: E402
from export_archive.pipelines import kubeflow_v2_runner as runner  # noqa: E402
from export_archive.pipelines import vertex  # noqa: E402

pytestmark = pytest.mark.integration

IMAGE = "europe-docker.pkg.dev/my-project/tfx/tfx-export-archive:0.1.0"
PIPELINE_ROOT = "gs://my-bucket/tfx-export-archive"
PROJECT, REGION, ENDPOINT = "my-project", "europe-west4", "penguin"
VERTEX_EXECUTOR = "tfx.extensions.google_cloud_ai_platform.pusher.executor.Executor"


# --- the serving image ------------------------------------------------------------

def test_prebuilt_image_for_a_published_version():
    assert vertex_image.prebuilt_tf_image("2.15.1") == \
        "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
    assert vertex_image.prebuilt_tf_image("2.15", region="europe", accelerator="gpu") == \
        "europe-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-15:latest"


def test_prebuilt_image_for_an_unpublished_version_is_the_newest_older_one():
    published = vertex_image.published_tf_images()
    newest = published[0][0]
    newer = f"{newest[0]}.{newest[1] + 1}.0"
    assert vertex_image.prebuilt_tf_image(newer) == published[0][1]


@pytest.mark.parametrize("kwargs, message", [
    ({"tf_version": "1.15"}, "no prebuilt cpu prediction image for TensorFlow 1.15"),
    ({"tf_version": "two"}, "tf_version: expected 'MAJOR.MINOR"),
    ({"tf_version": "2.15", "region": "us-central1"}, "region: expected one of"),
])
def test_prebuilt_image_errors_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vertex_image.prebuilt_tf_image(**kwargs)


def test_pusher_config_refuses_missing_or_clashing_arguments():
    with pytest.raises(ValueError, match="endpoint_name is required"):
        vertex.vertex_push_config(PROJECT, REGION, "", serving_image="i")
    with pytest.raises(ValueError, match=r"must not set \['project_id'\]"):
        vertex.vertex_push_config(PROJECT, REGION, ENDPOINT, serving_image="i",
                                  serving_args={"project_id": "other"})


# --- compiled with KubeflowV2DagRunner ----------------------------------------------

@pytest.fixture(scope="module")
def pipeline_spec(tmp_path_factory):
    out = tmp_path_factory.mktemp("vertex_compiled")
    path = runner.compile_from_flags([
        "--image", IMAGE, "--pipeline-root", PIPELINE_ROOT, "--output-dir", str(out),
        "--vertex-endpoint", ENDPOINT, "--vertex-project", PROJECT,
        "--vertex-region", REGION])
    with open(path) as f:
        return json.load(f)["pipelineSpec"]


def pusher_custom_config(pipeline_spec):
    value = pipeline_spec["root"]["dag"]["tasks"]["Pusher"]["inputs"]["parameters"][
        "custom_config"]["runtimeValue"]["constantValue"]["stringValue"]
    return json.loads(value)


def test_compiled_pusher_is_tfx_vertex_pusher(pipeline_spec):
    executors = pipeline_spec["deploymentSpec"]["executors"]
    container = executors["Pusher_executor"]["container"]
    args = container["args"]
    assert args[args.index("--executor_class_path") + 1] == VERTEX_EXECUTOR
    # Every container step (the Resolvers are not containers) runs in the image.
    assert {e["container"]["image"] for e in executors.values() if "container" in e} == {
        IMAGE}


def test_compiled_pusher_takes_the_exported_model_and_blessing(pipeline_spec):
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    artifacts = tasks["Pusher"]["inputs"]["artifacts"]
    sources = {k: (v["taskOutputArtifact"]["producerTask"],
                   v["taskOutputArtifact"]["outputArtifactKey"]) for k, v in artifacts.items()}
    assert sources["model"] == (runner.EXPORTER_ID, "model")
    assert sources["model_blessing"] == ("Evaluator", "blessing")
    assert "push_destination" not in tasks["Pusher"]["inputs"].get("parameters", {})


def test_compiled_pusher_config(pipeline_spec):
    from tfx import v1 as tfx
    keys = tfx.extensions.google_cloud_ai_platform
    config = pusher_custom_config(pipeline_spec)
    assert config[keys.ENABLE_VERTEX_KEY] is True
    assert config[keys.VERTEX_REGION_KEY] == REGION
    assert config[keys.SERVING_ARGS_KEY] == {"project_id": PROJECT, "endpoint_name": ENDPOINT,
                                             "machine_type": vertex.DEFAULT_MACHINE_TYPE}
    # The prebuilt image nearest to the region, for this TF.
    assert config[keys.VERTEX_CONTAINER_IMAGE_URI_KEY] == vertex_image.prebuilt_tf_image(
        region="europe")


def test_runner_refuses_a_partial_vertex_push(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.parse_args(["--image", IMAGE, "--pipeline-root", PIPELINE_ROOT,
                           "--vertex-endpoint", ENDPOINT])
    assert exit_info.value.code == 2
    assert "--vertex-endpoint needs --vertex-project and --vertex-region" in \
        capsys.readouterr().err


# --- the Vertex Pusher executor, Vertex AI replaced -----------------------------------

class FakeOperation:
    """A google.api_core operation that is already done."""

    def __init__(self, result):
        self._result = result
        self.operation = type("Op", (), {"name": "operations/1"})()

    def result(self, timeout=None):
        return self._result


class FakeVertex:
    """Stands in for every aiplatform GAPIC service client: records the request
    protos aiplatform's SDK builds and answers like the service."""

    def __init__(self):
        from google.cloud.aiplatform.compat.types import endpoint, model
        self.endpoint_types, self.model_types = endpoint, model
        self.requests = []
        self.endpoints, self.models = {}, {}

    def client(self, *args, **kwargs):
        return self

    def _record(self, method, request=None, **kwargs):
        self.requests.append((method, request if request is not None else kwargs))

    def list_endpoints(self, request=None, **kwargs):
        self._record("list_endpoints", request, **kwargs)
        return list(self.endpoints.values())

    def create_endpoint(self, request=None, **kwargs):
        self._record("create_endpoint", request, **kwargs)
        new = self.endpoint_types.Endpoint(kwargs["endpoint"])
        new.name = f"{kwargs['parent']}/endpoints/11"
        self.endpoints[new.name] = new
        return FakeOperation(new)

    def get_endpoint(self, name, **kwargs):
        return self.endpoints[name]

    def upload_model(self, request=None, **kwargs):
        from google.cloud.aiplatform.compat.types import model_service
        self._record("upload_model", request, **kwargs)
        uploaded = self.model_types.Model(request.model)
        uploaded.name = f"{request.parent}/models/7"
        uploaded.version_id = "1"
        # What Vertex answers for a model with a serving container: dedicated
        # resources only (aiplatform then honours machine_type on deploy).
        uploaded.supported_deployment_resources_types = [
            self.model_types.Model.DeploymentResourcesType.DEDICATED_RESOURCES]
        self.models[uploaded.name] = uploaded
        return FakeOperation(model_service.UploadModelResponse(model=uploaded.name,
                                                               model_version_id="1"))

    def get_model(self, name, **kwargs):
        return self.models[name.split("@")[0]]

    def deploy_model(self, request=None, **kwargs):
        self._record("deploy_model", request, **kwargs)
        return FakeOperation(None)

    def sent(self, method):
        return [r for m, r in self.requests if m == method]


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory):
    """ModelExporter's output layout: <uri>/Format-Serving/ holding the SavedModel."""
    import keras
    import export_archive
    inputs = keras.Input((3,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    uri = tmp_path_factory.mktemp("ModelExporter") / "model" / "9"
    export_archive.export(model, {"endpoints": [{"name": "serve"}]},
                          str(uri / "Format-Serving"), check=False)
    return str(uri)


@pytest.fixture()
def fake_vertex(monkeypatch):
    from google.auth import credentials as auth_credentials
    from google.cloud.aiplatform import initializer
    from google.cloud.aiplatform.utils import gcs_utils
    fake = FakeVertex()
    # aiplatform.init is bound to this object: patch its fields (restored after
    # the test) rather than replacing it. The executor's init(project, location)
    # sets those two; anonymous credentials keep google.auth from looking for ADC.
    config = initializer.global_config
    for field, value in (("_project", None), ("_location", None), ("_staging_bucket", None),
                         ("_credentials", auth_credentials.AnonymousCredentials()),
                         ("create_client", fake.client)):
        monkeypatch.setattr(config, field, value)
    fake.staged = []

    def stage(data_path, staging_gcs_dir=None, **kwargs):
        # Model.upload copies a local artifact_uri to a staging bucket first; on
        # Vertex the pushed model is already in gs://, and this is never called.
        fake.staged.append(data_path)
        return "gs://staging-bucket/" + os.path.basename(data_path)

    monkeypatch.setattr(gcs_utils, "stage_local_data_in_gcs", stage)
    return fake


def run_vertex_pusher(exported_model, tmp_path, blessed=True, serving_image=None):
    from tfx.extensions.google_cloud_ai_platform.pusher import executor
    from tfx.types import standard_artifacts
    from tfx.utils import json_utils
    model = standard_artifacts.Model()
    model.uri = exported_model
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", int(blessed))
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed_model")
    config = vertex.vertex_push_config(PROJECT, REGION, ENDPOINT, serving_image=serving_image)
    executor.Executor().Do({"model": [model], "model_blessing": [blessing]},
                           {"pushed_model": [pushed]},
                           {"custom_config": json_utils.dumps(config)})
    return pushed, config


def test_vertex_pusher_uploads_and_deploys_the_export(exported_model, fake_vertex, tmp_path):
    from tfx import v1 as tfx
    pushed, config = run_vertex_pusher(exported_model, tmp_path)
    serving = os.path.join(exported_model, "Format-Serving")

    # The executor pushes a copy of ModelExporter's Format-Serving/ ...
    assert sorted(os.listdir(pushed.uri)) == sorted(os.listdir(serving))
    assert os.path.isfile(os.path.join(pushed.uri, "saved_model.pb"))
    # ... which Model.upload stages (here: a local path) and registers.
    assert fake_vertex.staged == [pushed.uri]
    (upload,) = fake_vertex.sent("upload_model")
    assert upload.parent == f"projects/{PROJECT}/locations/{REGION}"
    assert upload.model.artifact_uri == "gs://staging-bucket/" + os.path.basename(pushed.uri)
    image = config[tfx.extensions.google_cloud_ai_platform.VERTEX_CONTAINER_IMAGE_URI_KEY]
    assert upload.model.container_spec.image_uri == image
    assert image.startswith("europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.")
    assert upload.model.display_name.startswith("v")   # TFX names it v<timestamp>

    # The Endpoint did not exist: created with the name, then the model deployed there.
    (created,) = fake_vertex.sent("create_endpoint")
    assert created["endpoint"].display_name == ENDPOINT
    (deploy,) = fake_vertex.sent("deploy_model")
    assert deploy["endpoint"] == f"projects/{PROJECT}/locations/{REGION}/endpoints/11"
    deployed = deploy["deployed_model"]
    assert deployed.model == f"projects/{PROJECT}/locations/{REGION}/models/7@1"
    assert deployed.dedicated_resources.machine_spec.machine_type == \
        vertex.DEFAULT_MACHINE_TYPE
    assert deploy["traffic_split"] == {"0": 100}

    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_destination") == \
        f"projects/{PROJECT}/locations/{REGION}/models/7"


def test_vertex_pusher_sends_nothing_for_an_unblessed_model(exported_model, fake_vertex,
                                                            tmp_path):
    pushed, _ = run_vertex_pusher(exported_model, tmp_path, blessed=False,
                                  serving_image="europe-docker.pkg.dev/p/r/serving:1")
    assert fake_vertex.requests == [] and fake_vertex.staged == []
    assert pushed.get_int_custom_property("pushed") == 0
    assert not os.path.exists(pushed.uri) or not os.listdir(pushed.uri)
