"""InfraValidator (TFX's, extended with the local-process platform) over our exports.

TF Serving cannot be installed here, so `tensorflow_model_server` on PATH is a
wrapper around the test double tests/helpers/fake_tf_serving.py (see its
docstring for what it does and does not guarantee). Everything between the
component and that process is TFX's own: the request builder, the
TensorFlowServingClient (GetModelStatus, Predict/Classify/Regress), retries,
the blessing, the warmup model and Pusher. The `serving` test runs the same
flow against a real `tensorflow_model_server` or Docker where one is present.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("tfx")

from tfx.proto import infra_validator_pb2 as iv_pb2  # noqa: E402
from tfx.types import standard_artifacts  # noqa: E402

from export_archive import describe, rest  # noqa: E402
from export_archive.components.infra_validator import request_check, spec  # noqa: E402
from helpers import fake_tf_serving  # noqa: E402
from helpers import infra_fixtures as ifx  # noqa: E402
from helpers import tfx_fixtures as fx  # noqa: E402
from helpers.outputs import single

pytestmark = pytest.mark.integration

WARMUP = os.path.join("assets.extra", "tf_serving_warmup_requests")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One exported model (Predict/Classify/Regress tf.Example endpoints) + examples."""
    root = tmp_path_factory.mktemp("artifacts")
    schema = fx.write_schema(root / "SchemaGen" / "schema" / "1", fx.SCALAR_SCHEMA)
    model, keras_model = ifx.export_model(root / "ModelExporter" / "model" / "2", schema)
    rows = fx.scalar_rows(4, seed=3)
    examples = ifx.write_examples(root / "CsvExampleGen" / "examples" / "1", rows)
    return {"root": root, "model": model, "keras_model": keras_model, "rows": rows,
            "examples": examples}


@pytest.fixture()
def fake_on_path(tmp_path, monkeypatch):
    """`tensorflow_model_server` on PATH runs the test double."""
    bin_dir = tmp_path / "bin"
    wrapper = fake_tf_serving.install_wrapper(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return wrapper


def serving_dir(model):
    return os.path.join(model.uri, "Format-Serving")


def wait_for_port(process, port, log_path, timeout=300):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, open(log_path).read()[-3000:]
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the test double did not listen:\n" + open(log_path).read()[-3000:])


# ---- the test double itself, spoken to by TFX's request builder and client


def test_test_double_speaks_tf_serving_grpc(exported, tmp_path, fake_on_path):
    import grpc
    from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                         prediction_service_pb2_grpc)
    from tfx.components.infra_validator import request_builder
    from tfx.components.infra_validator.model_server_clients import tensorflow_serving_client

    from export_archive.components.infra_validator.local_process import _free_port

    # TF Serving's layout: <base>/<version>/; the highest numeric version is served.
    base = tmp_path / "models" / "scalar"
    for version in ("3", "12"):
        shutil.copytree(serving_dir(exported["model"]), base / version)
    (base / "99-not-a-version").mkdir()
    port = _free_port()
    log_path = str(tmp_path / "server.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [fake_on_path, f"--port={port}", "--model_name=scalar",
             f"--model_base_path={base}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(process, port, log_path)
        client = tensorflow_serving_client.TensorFlowServingClient(f"localhost:{port}",
                                                                   "scalar")
        client.WaitUntilModelLoaded(time.time() + 60, polling_interval_sec=1)
        status = client._GetModelStatus()   # pylint: disable=protected-access
        assert [s.version for s in status.model_version_status] == [12]

        requests = request_builder.build_requests(
            model_name="scalar", model=exported["model"], examples=exported["examples"],
            request_spec=ifx.request_spec(num_examples=3))
        assert sorted(type(r).__name__ for r in requests) == sorted(
            ["PredictRequest"] * 3 + ["ClassificationRequest"] * 3 + ["RegressionRequest"] * 3)
        client.SendRequests(requests)   # TFX's client: raises ValidationFailed on any error

        # The answers are the model's.
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"localhost:{port}"))
        want = np.asarray(exported["keras_model"](fx.columns(exported["rows"],
                                                             fx.SCALAR_FEATURES)))
        predict = next(r for r in requests if isinstance(r, predict_pb2.PredictRequest))
        predict.inputs["examples"].CopyFrom(tf.make_tensor_proto(fx.serialize(exported["rows"])))
        got = tf.make_ndarray(single(stub.Predict(predict).outputs))
        np.testing.assert_allclose(got, want, atol=1e-5)
        classify = next(r for r in requests if type(r).__name__ == "ClassificationRequest")
        scores = [c.classes[0].score for c in stub.Classify(classify).result.classifications]
        regress = next(r for r in requests if type(r).__name__ == "RegressionRequest")
        values = [r.value for r in stub.Regress(regress).result.regressions]
        np.testing.assert_allclose(scores, values, atol=1e-6)   # same unit, two APIs
        # A REST client's raw JSON for the same rows, converted by TF Serving's REST
        # rules, through the server's Predict on the raw_features signature.
        body = rest.instances_from_features([{k: r[k][0] for k in fx.SCALAR_FEATURES}
                                             for r in exported["rows"]])
        raw = predict_pb2.PredictRequest()
        raw.model_spec.name, raw.model_spec.signature_name = "scalar", "serve_raw"
        served_dir = os.path.join(exported["model"].uri, "Format-Serving")
        for key, value in rest.request_to_tensors(
                body, describe.signature_def(served_dir, "serve_raw")).items():
            raw.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        np.testing.assert_allclose(tf.make_ndarray(single(stub.Predict(raw).outputs)), want,
                                   atol=1e-5)

        metadata = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=predict.model_spec, metadata_field=["signature_def"]))
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        metadata.metadata["signature_def"].Unpack(signature_map)
        assert set(ifx.SIGNATURES + ["serve_features"]) <= set(signature_map.signature_def)

        # The real server's status codes for what a client gets wrong.
        def code_of(call, request):
            with pytest.raises(grpc.RpcError) as info:
                call(request)
            return info.value.code(), info.value.details()

        wrong = predict_pb2.PredictRequest()
        wrong.CopyFrom(predict)
        wrong.model_spec.name = "other"
        assert code_of(stub.Predict, wrong) == (
            grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(other)")
        wrong.CopyFrom(predict)
        wrong.model_spec.signature_name = "nope"
        assert code_of(stub.Predict, wrong)[0] == grpc.StatusCode.FAILED_PRECONDITION
        wrong.CopyFrom(predict)
        wrong.model_spec.signature_name = "serve_features"
        code, details = code_of(stub.Predict, wrong)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "input size does not match signature" in details
    finally:
        process.terminate()
        process.wait(30)
    log_text = open(log_path).read()
    assert "Successfully loaded servable version {name: scalar version: 12}" in log_text
    # The exporter's warmup file was replayed at load, as TF Serving does.
    # One request per signature (serving_default is one of the endpoints).
    assert f"Number of warmup records read: {len(ifx.EXPORT_CONFIG['endpoints'])}." in log_text
    # Nothing but TensorFlow in the server process: Keras is blocked.
    assert "keras" not in log_text.lower()


# ---- the component's executor on the local-process platform


def test_local_process_blesses_makes_warmup_and_pusher_pushes(exported, tmp_path, fake_on_path):
    copy_to = tmp_path / "served_from"
    blessing = ifx.run_infra_validator(
        tmp_path / "iv", exported["model"], exported["examples"],
        request=ifx.request_spec(make_warmup=True),
        local_process_config={"extra_flags": ["--enable_batching=true"],
                              "model_base_path": str(copy_to)})
    assert blessing.get_int_custom_property(spec.BLESSED_PROPERTY) == 1
    assert os.path.exists(os.path.join(blessing.uri, spec.BLESSED_FILE))
    assert not blessing.has_custom_property(spec.FAILURE_PROPERTY)
    # The log is kept, and shows the flags and the server being stopped.
    log_text = open(os.path.join(blessing.uri, spec.LOGS_DIR, "attempt-1.log")).read()
    assert "--model_name=scalar" in log_text and f"--model_base_path={copy_to}" in log_text
    # A model that cannot load fails at once (docs/infra_validation.md).
    assert "--max_num_load_retries=0" in log_text
    assert "--enable_batching=true accepted and ignored" in log_text
    assert "Stopped (SIGTERM)." in log_text
    assert not os.listdir(copy_to), "the copy served from model_base_path was not removed"

    # make_warmup: InfraValidator's stamped model, its warmup = the requests it sent.
    assert blessing.get_int_custom_property(spec.HAS_MODEL_PROPERTY) == 1
    stamped = os.path.join(blessing.uri, "stamped_model")
    kinds = [log.WhichOneof("log_type")
             for log in ifx.read_prediction_logs(os.path.join(stamped, WARMUP))]
    assert sorted(kinds) == sorted(["predict_log", "classify_log", "regress_log"] * 2)

    # Pusher with infra_blessing and no model pushes the stamped model ...
    pushed = ifx.run_pusher(tmp_path / "push1", str(tmp_path / "serving1"),
                            infra_blessing=blessing)
    assert pushed.get_int_custom_property("pushed") == 1
    pushed_dir = pushed.get_string_custom_property("pushed_destination")
    assert len(ifx.read_prediction_logs(os.path.join(pushed_dir, WARMUP))) == 6
    revived = tf.saved_model.load(pushed_dir)
    assert set(ifx.SIGNATURES + ["serve_features"]) <= set(revived.signatures)
    # ... and with model and infra_blessing, our model with the exporter's warmup.
    pushed = ifx.run_pusher(tmp_path / "push2", str(tmp_path / "serving2"),
                            model=exported["model"], infra_blessing=blessing)
    pushed_dir = pushed.get_string_custom_property("pushed_destination")
    assert len(ifx.read_prediction_logs(os.path.join(pushed_dir, WARMUP))) == len(
        ifx.EXPORT_CONFIG["endpoints"])


def _corrupt_warmup(exported, tmp_path):
    from tfx.types import standard_artifacts as sa
    model = ifx.artifact(sa.Model, tmp_path / "broken_model")
    shutil.copytree(serving_dir(exported["model"]), serving_dir(model))
    with open(os.path.join(serving_dir(model), WARMUP), "wb") as f:
        f.write(b"this is not a TFRecord file")
    return model, exported["examples"], None


def _examples_missing_a_feature(exported, tmp_path):
    rows = [{"f1": [1.0], "label": [0]}]   # f2 is required by the schema
    return exported["model"], ifx.write_examples(tmp_path / "bad_examples", rows), None


def _features_endpoint_requested(exported, tmp_path):
    return exported["model"], exported["examples"], ["serve_features"]


def _raw_features_endpoint_requested(exported, tmp_path):
    return exported["model"], exported["examples"], ["serving_default", "serve_raw"]


@pytest.mark.parametrize("case, expected", [
    (_corrupt_warmup, ["exited with code 255", "the model server reported: Loading servable",
                       "Failed to start server", "warmup"]),
    (_examples_missing_a_feature, [
        "failed Predict request 1/3 to signature 'serving_default'", "INVALID_ARGUMENT",
        "f2"]),
    (_features_endpoint_requested, [
        "signature 'serve_features' cannot take InfraValidator's requests",
        "f1 (DT_FLOAT [?,1])", '"kind": "tf_example"']),
    (_raw_features_endpoint_requested, [
        "signature 'serve_raw' cannot take InfraValidator's requests",
        "2 input(s): f1 (DT_FLOAT [?]), f2 (DT_FLOAT [?])", request_check.CANNOT_BUILD,
        "Unable to find valid input key", request_check.FIX]),
], ids=["load_fails", "request_fails", "not_a_tf_example_endpoint", "raw_features_endpoint"])
def test_not_blessed_with_the_reason(exported, tmp_path, fake_on_path, case, expected):
    model, examples, signatures = case(exported, tmp_path)
    blessing = ifx.run_infra_validator(
        tmp_path / "iv", model, examples,
        request=ifx.request_spec(signatures, num_examples=1, make_warmup=True),
        local_process_config={"stop_timeout_seconds": 5})
    assert blessing.get_int_custom_property(spec.BLESSED_PROPERTY) == 0
    assert os.path.exists(os.path.join(blessing.uri, spec.NOT_BLESSED_FILE))
    assert not blessing.has_custom_property(spec.HAS_MODEL_PROPERTY)
    reason = blessing.get_string_custom_property(spec.FAILURE_PROPERTY)
    for text in expected:
        assert text in reason, reason
    with open(os.path.join(blessing.uri, spec.FAILURE_FILE)) as f:
        assert f.read().startswith(reason.split("\n")[0])
    started = case not in (_features_endpoint_requested, _raw_features_endpoint_requested)
    assert os.path.isdir(os.path.join(blessing.uri, spec.LOGS_DIR)) == started
    # Pusher pushes nothing.
    pushed = ifx.run_pusher(tmp_path / "push", str(tmp_path / "serving"),
                            infra_blessing=blessing)
    assert pushed.get_int_custom_property("pushed") == 0
    assert not os.path.exists(tmp_path / "serving")


def test_examples_the_builder_cannot_read_fail_the_component(exported, tmp_path,
                                                            fake_on_path):
    """The Examples artifact's problem is the pipeline's, not the model's: TFX's error."""
    request = ifx.request_spec(["serving_default"])
    request.split_name = "train"   # the artifact has only `eval`
    with pytest.raises(ValueError, match="No split_name train; available split names: eval"):
        ifx.run_infra_validator(tmp_path / "iv", exported["model"], exported["examples"],
                                request=request, local_process_config={})


# ---- the runner's process handling and the component's checks (no TensorFlow server)


def _script(path, body):
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


STUBBORN_SERVER = """
import signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a server that ignores SIGTERM
port = int(next(a for a in sys.argv if a.startswith("--port=")).split("=")[1])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port)); s.listen()
print("listening", flush=True)
time.sleep(600)
"""


def test_runner_kills_what_sigterm_does_not_stop_and_reports_early_exit(tmp_path):
    from tfx.components.infra_validator import error_types
    from export_archive.components.infra_validator.local_process import (
        LocalProcessConfig, LocalProcessRunner)

    stubborn = _script(tmp_path / "stubborn", STUBBORN_SERVER)
    runner = LocalProcessRunner(str(tmp_path / "m" / "1"), "m",
                                LocalProcessConfig(binary=stubborn, stop_timeout_seconds=1),
                                str(tmp_path / "stubborn.log"))
    runner.Start()
    try:
        runner.WaitUntilRunning(time.time() + 60)
        assert runner.GetEndpoint().startswith("localhost:")
    finally:
        start = time.time()
        runner.Stop()
    assert runner.process.returncode == -9 and time.time() - start < 10
    assert "listening" in runner.GetLogs()
    runner.Stop()   # idempotent

    crash = _script(tmp_path / "crash", "import sys\nprint('boom', flush=True)\nsys.exit(3)\n")
    runner = LocalProcessRunner(str(tmp_path / "m" / "1"), "m",
                                LocalProcessConfig(binary=crash), str(tmp_path / "crash.log"))
    runner.Start()
    with pytest.raises(error_types.JobAborted, match="exited with code 3"):
        runner.WaitUntilRunning(time.time() + 60)
    runner.Stop()
    assert "boom" in runner.GetLogs()


def test_config_and_component_checks(exported, tmp_path, monkeypatch):
    from tfx.types import channel_utils
    from export_archive.components.infra_validator import InfraValidator, LocalProcessConfig
    from export_archive.components.infra_validator.local_process import (
        LocalProcessConfigError)

    config = LocalProcessConfig.parse('{"port": 8600, "extra_flags": ["--enable_batching"]}')
    assert LocalProcessConfig.parse(config.to_json()) == config
    for bad, field in [({"extra_flags": ["--port=1"]}, "extra_flags[0]"),
                       ({"port": -1}, "port"), ({"binry": "x"}, "binry"),
                       ({"extra_flags": ["enable_batching"]}, "extra_flags[0]"),
                       ({"max_num_load_retries": -1}, "max_num_load_retries"),
                       ({"load_retry_interval_micros": 0.5}, "load_retry_interval_micros"),
                       ({"extra_flags": ["--x=1", "--max_num_load_retries=5"]},
                        "extra_flags[1]")]:
        with pytest.raises(LocalProcessConfigError, match=rf"`{re.escape(field)}`.*fix:"):
            LocalProcessConfig.parse(bad)

    model = channel_utils.as_channel([standard_artifacts.Model()])
    local = ifx.serving_spec()
    component = InfraValidator(model=model, serving_spec=local, local_process_config={})
    assert json.loads(component.exec_properties[spec.LOCAL_PROCESS_CONFIG_KEY])[
        "binary"] == "tensorflow_model_server"
    with pytest.raises(ValueError, match="remove ServingSpec.local_docker"):
        InfraValidator(model=model, local_process_config={}, serving_spec=ifx.serving_spec(
            local_docker=iv_pb2.LocalDockerConfig()))
    with pytest.raises(ValueError, match="at most one tag"):
        InfraValidator(model=model, local_process_config={}, serving_spec=ifx.serving_spec(
            tensorflow_serving=iv_pb2.TensorFlowServing(tags=["a", "b"])))
    with pytest.raises(ValueError, match="no serving platform"):
        InfraValidator(model=model, serving_spec=local)

    # A missing binary fails the component, not the model.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="was not found on PATH.*Install TF Serving"):
        ifx.run_infra_validator(tmp_path / "iv", exported["model"], exported["examples"],
                                request=ifx.request_spec(), local_process_config={})


def test_compiles_for_kfp_v2_and_vertex(tmp_path):
    """TFX's KFP v2 compiler refuses tfx.components.InfraValidator; ours compiles."""
    from tfx import v1 as tfx
    from export_archive.components.infra_validator import InfraValidator

    importer = tfx.dsl.Importer(source_uri="gs://bucket/model",
                                artifact_type=standard_artifacts.Model).with_id("model")
    validator = InfraValidator(model=importer.outputs["result"],
                               serving_spec=ifx.serving_spec(),
                               local_process_config={"extra_flags": ["--enable_batching"]})
    output = str(tmp_path / "pipeline.json")
    tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image="img"),
        output_filename=output).run(tfx.dsl.Pipeline(
            pipeline_name="iv", pipeline_root=str(tmp_path / "root"),
            components=[importer, validator]))
    with open(output) as f:
        pipeline_spec = json.load(f)["pipelineSpec"]
    args = pipeline_spec["deploymentSpec"]["executors"]["InfraValidator_executor"][
        "container"]["args"]
    assert args[args.index("--executor_class_path") + 1] == (
        "export_archive.components.infra_validator.executor.Executor")
    parameters = pipeline_spec["root"]["dag"]["tasks"]["InfraValidator"]["inputs"]["parameters"]
    config = json.loads(parameters[spec.LOCAL_PROCESS_CONFIG_KEY]["runtimeValue"][
        "constantValue"]["stringValue"])
    assert config["extra_flags"] == ["--enable_batching"]


# ---- the same flow against the real thing, wherever it exists


def _real_serving():
    binary = shutil.which("tensorflow_model_server")
    if binary:
        return "binary", binary
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return "docker", docker
    return None, None


@pytest.mark.serving
def test_real_tf_serving_blesses_our_export(exported, tmp_path):
    kind, path = _real_serving()
    if kind is None:
        pytest.skip("needs a real TF Serving: no `tensorflow_model_server` on PATH and no "
                    "working Docker daemon (`docker info` fails)")
    if kind == "binary":
        serving = ifx.serving_spec()
        local_process_config = {"binary": path}
    else:
        from importlib.metadata import version
        # The image of the TF Serving release whose API protos are installed.
        tag = version("tensorflow-serving-api")
        serving = ifx.serving_spec(
            tensorflow_serving=iv_pb2.TensorFlowServing(tags=[tag]),
            local_docker=iv_pb2.LocalDockerConfig())
        local_process_config = None
    blessing = ifx.run_infra_validator(
        tmp_path / "iv", exported["model"], exported["examples"],
        request=ifx.request_spec(make_warmup=True), serving=serving,
        local_process_config=local_process_config)
    assert blessing.get_int_custom_property(spec.BLESSED_PROPERTY) == 1, (
        blessing.get_string_custom_property(spec.FAILURE_PROPERTY))
