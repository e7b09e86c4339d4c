"""The user's own requests for the serving check (`check.requests`, `--requests`), and
outputs TF Serving cannot return (refused where the archive is built).

The model decodes JPEG bytes (`helpers.request_models.make_jpeg_serve`): synthesized
strings cannot exercise it, real JPEGs (tf.io.encode_jpeg) sent as a TF Serving warmup
file or as REST bodies can. Every export is reloaded and called at another batch size.
"""

import base64
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import export_archive
from export_archive import (check, cli, report, saved_model_io, servable_outputs,
                            user_requests)
from helpers import request_models as rm

pytestmark = pytest.mark.integration

JPEG_CONFIG = {"endpoints": [{"name": "serve", "fn": "helpers.request_models:make_jpeg_serve"}]}


@pytest.fixture(scope="module")
def model():
    """The JPEG model, in memory (the Python API's input)."""
    return rm.make_model()


@pytest.fixture(scope="module")
def keras_file(model, tmp_path_factory):
    """The same model as a .keras file (the CLI's --model)."""
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(str(path))
    return str(path)


def rows(results, name):
    return {r["endpoint"]: r for r in results if r["check"] == name}


def warmup_file(path, jpegs, signature="serve"):
    """A TF Serving warmup file, as tensorflow_serving.apis builds one."""
    with tf.io.TFRecordWriter(path) as writer:
        log = prediction_log_pb2.PredictionLog()
        request = log.predict_log.request
        request.model_spec.name = "jpeg"
        request.model_spec.signature_name = signature
        request.inputs["image_bytes"].CopyFrom(
            tf.make_tensor_proto(np.array(jpegs, dtype=object)))
        writer.write(log.SerializeToString())
    return path


def assert_round_trip(model, out):
    """Reload the export; `serve` gives the model's scores on the decoded JPEGs, at
    batch sizes other than the check's."""
    loaded = tf.saved_model.load(out)
    for count in (3, 5):
        jpegs = rm.jpegs(count, seed=count)
        served = loaded.signatures["serve"](image_bytes=tf.constant(jpegs))["scores"].numpy()
        np.testing.assert_allclose(served, model(rm.decoded(jpegs)).numpy(),
                                   rtol=1e-5, atol=1e-5)
        assert served.shape == (count, 2)


def read_warmup(out):
    return check.read_prediction_logs(os.path.join(out, check.WARMUP_FILE))


def test_warmup_file_requests_exercise_a_jpeg_endpoint(model, keras_file, tmp_path, capsys):
    jpegs = rm.jpegs(2)
    requests = warmup_file(str(tmp_path / "warmup.tfrecord"), jpegs)
    out = str(tmp_path / "m")
    code = cli.main(["export", "--model", keras_file, "--config", json.dumps(JPEG_CONFIG),
                     "--output", out, "--check", "--requests", f"warmup:{requests}", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["check_passed"] is True
    origin = rows(result["checks"], "requests")
    assert origin["serve"]["detail"] == f"from the warmup file {requests} (check.requests[0])"
    assert "aliases" in origin["serving_default"]["detail"]
    runs = rows(result["checks"], "run")
    assert "batch 2:" in runs["serve"]["detail"] and "batch 64:" in runs["serve"]["detail"]
    assert rows(result["checks"], "parity")["serve"]["passed"]
    # The warmup file holds the user's request as given, for both signatures.
    logs = read_warmup(out)
    assert sorted(saved_model_io.signature_name(log) for log in logs) == ["serve", "serving_default"]
    sent = tf.make_ndarray(logs[0].predict_log.request.inputs["image_bytes"])
    assert list(sent) == jpegs
    assert_round_trip(model, out)


def test_rest_bodies_exercise_a_jpeg_endpoint(model, tmp_path):
    b64 = [base64.b64encode(j).decode() for j in rm.jpegs(3, seed=7)]
    bodies = tmp_path / "bodies.jsonl"
    # Row format without a signature (-> `endpoint`), then columnar naming one.
    bodies.write_text(json.dumps({"instances": [{"b64": b} for b in b64]}) + "\n\n"
                      + json.dumps({"signature_name": "serving_default",
                                    "inputs": {"image_bytes": [{"b64": b64[0]}]}}) + "\n")
    config = dict(JPEG_CONFIG, check={"requests": [
        {"format": "rest", "path": str(bodies), "endpoint": "serve"}]})
    out = str(tmp_path / "m")
    result = export_archive.export(model, config, out, check=True)
    assert result.check_passed, check.CheckReport(result.checks).format_failures()
    origin = rows(result.checks, "requests")
    assert origin["serve"]["detail"] == (f"from the REST body {bodies} line 1 "
                                         "(check.requests[0])")
    assert origin["serving_default"]["detail"] == (f"from the REST body {bodies} line 3 "
                                                   "(check.requests[0])")
    assert "batch 3:" in rows(result.checks, "run")["serve"]["detail"]
    assert "batch 1:" in rows(result.checks, "run")["serving_default"]["detail"]
    assert rows(result.checks, "parity")["serve"]["detail"].startswith("max abs diff")
    markdown = report.to_markdown(result, export_archive.ExportConfig.parse(config))
    assert f"from the REST body {bodies} line 1" in markdown
    (log,) = [l for l in read_warmup(out) if saved_model_io.signature_name(l) == "serve"]
    assert len(tf.make_ndarray(log.predict_log.request.inputs["image_bytes"])) == 3
    assert_round_trip(model, out)


def test_without_requests_a_jpeg_endpoint_is_not_exercised(model, keras_file, tmp_path,
                                                            capsys):
    out = str(tmp_path / "m")
    code = cli.main(["export", "--model", keras_file, "--config", json.dumps(JPEG_CONFIG),
                     "--output", out, "--check", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["check_passed"] is True
    for name in ("serve", "serving_default"):
        run = rows(result["checks"], "run")[name]
        assert run["passed"]
        assert run["detail"].startswith("not exercised: give sample requests")
        assert "DecodeJpeg" in run["detail"] and "Input is empty" in run["detail"]
        assert rows(result["checks"], "requests")[name]["detail"] == \
            f"from {user_requests.ORIGIN_SYNTHESIZED}"
    assert "parity" not in {r["check"] for r in result["checks"]}
    # A failing warmup request would make TF Serving refuse the model: none is written.
    assert not os.path.exists(os.path.join(out, check.WARMUP_FILE))
    from export_archive.writer import EndpointResult, ExportResult
    exported = ExportResult(**dict(result, endpoints=[EndpointResult(**e)
                                                      for e in result["endpoints"]]))
    assert "not exercised: give sample requests" in report.to_markdown(exported)
    assert_round_trip(model, out)
    # `check DIR` says the same, and passes with the user's requests.
    assert cli.main(["check", out, "--json"]) == 0
    assert "not exercised" in rows(json.loads(capsys.readouterr().out)["results"],
                                   "run")["serve"]["detail"]
    requests = warmup_file(str(tmp_path / "w.tfrecord"), rm.jpegs(1))
    assert cli.main(["check", out, "--json", "--requests", f"warmup:{requests}"]) == 0
    checked = json.loads(capsys.readouterr().out)["results"]
    assert rows(checked, "run")["serve"]["detail"].startswith("batch 1:")


def test_a_decoder_failing_on_the_users_requests_fails_the_check(model, tmp_path):
    """Only synthesized requests are excused: a bad request of the user's fails."""
    requests = warmup_file(str(tmp_path / "w.tfrecord"), [b"not a jpeg"])
    config = dict(JPEG_CONFIG, check={"requests": [{"format": "warmup", "path": requests}]})
    with pytest.raises(check.CheckFailed) as info:
        export_archive.export(model, config, str(tmp_path / "m"), check=True)
    run = rows(info.value.report.results, "run")["serve"]
    assert not run["passed"] and "InvalidArgumentError" in run["detail"]
    assert not os.path.exists(tmp_path / "m")


@pytest.mark.parametrize("entry, where, says", [
    ({"format": "rest", "path": "{tmp}/missing.json"}, "check.requests[0].path",
     "no file found"),
    ({"format": "rest", "path": "{tmp}/bad.json"}, "check.requests[0]",
     "Missing 'inputs' or 'instances' key"),
    ({"format": "rest", "path": "{tmp}/bad.json", "endpoint": "nope"},
     "check.requests[0].endpoint", "names no signature"),
    ({"format": "warmup", "path": "{tmp}/other.tfrecord"}, "check.requests[0]",
     "calls signature 'other'"),
    ({"format": "warmup", "path": "{tmp}/bad.json"}, "check.requests[0]",
     "does not read as TFRecords"),
])
def test_unusable_request_sources_are_user_errors(keras_file, tmp_path, capsys, entry, where,
                                                  says):
    (tmp_path / "bad.json").write_text('{"instance": []}')
    warmup_file(str(tmp_path / "other.tfrecord"), rm.jpegs(1), signature="other")
    entry = {k: v.format(tmp=tmp_path) for k, v in entry.items()}
    config = dict(JPEG_CONFIG, check={"requests": [entry]})
    out = str(tmp_path / "m")
    code = cli.main(["export", "--model", keras_file, "--config", json.dumps(config),
                     "--output", out])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR, err
    assert f"`{where}`" in err and says in err and "fix:" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(out)


def test_bad_requests_flag_is_a_user_error(keras_file, tmp_path, capsys):
    code = cli.main(["export", "--model", keras_file, "--config", json.dumps(JPEG_CONFIG),
                     "--output", str(tmp_path / "m"), "--requests", "grpc:x"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR
    assert "`--requests[0]`" in err and "FORMAT:PATH" in err and "Traceback" not in err


RAGGED_CONFIG = {"endpoints": [
    {"name": "serve", "input_signature": [f"float32[?,{rm.SIZE},{rm.SIZE},3]"]},
    {"name": "serve_ragged", "fn": "helpers.request_models:make_ragged"}]}


@pytest.mark.parametrize("check_flag", ["--check", "--no-check"])
def test_ragged_output_is_refused_with_the_fix(keras_file, tmp_path, capsys, check_flag):
    out = str(tmp_path / "m")
    code = cli.main(["export", "--model", keras_file, "--config", json.dumps(RAGGED_CONFIG),
                     "--output", out, check_flag])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR, err
    assert "`endpoints[1]`" in err and "'serve_ragged'" in err and "'positive'" in err
    assert "RaggedTensor" in err and "DT_INVALID" in err
    assert "positive.to_tensor()" in err and "row_lengths" in err
    assert "allowed: dense tensors" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(out)


@pytest.mark.parametrize("factory, says, fix", [
    ("make_sparse", "SparseTensor", "tf.sparse.to_dense(sparse)"),
    ("helpers.check_models:make_variant_fn", "a variant tensor (DT_VARIANT)",
     "not the handle"),
])
def test_other_unservable_outputs_are_refused(model, tmp_path, factory, says, fix):
    if ":" not in factory:
        factory = f"helpers.request_models:{factory}"
        config = {"endpoints": [{"name": "serve", "fn": factory}]}
        source = model
    else:
        from helpers.check_models import dropout_model
        config = {"endpoints": [{"name": "serve"}, {"name": "bad", "fn": factory}]}
        source = dropout_model()
    with pytest.raises(servable_outputs.UnservableOutputError) as info:
        export_archive.export(source, config, str(tmp_path / "m"), check=False)
    assert says in str(info.value) and fix in str(info.value)
    assert info.value.where == f"endpoints[{len(config['endpoints']) - 1}]"


def test_check_dir_reports_a_ragged_signature_of_any_saved_model(tmp_path, capsys):
    """A SavedModel written elsewhere (plain tf.saved_model.save) with a ragged output:
    `check DIR` fails it (exit 3) with rows, no traceback of the check's process."""
    class Ragged(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"positive": tf.ragged.boolean_mask(x, x > 0), "x": x}
    module = Ragged()
    out = str(tmp_path / "ragged")
    tf.saved_model.save(module, out, signatures={"serving_default": module.serve})
    assert cli.main(["check", out, "--json"]) == cli.EXIT_CHECK_FAILED
    captured = capsys.readouterr()
    results = json.loads(captured.out)["results"]
    assert "'positive' has dtype DT_INVALID" in rows(results, "dtypes")["serving_default"]["detail"]
    run = rows(results, "run")["serving_default"]
    assert not run["passed"] and "['positive'] name no tensor" in run["detail"]
    assert "Traceback" not in captured.out + captured.err


def test_example_records_feed_endpoints_whose_inputs_are_their_features(tmp_path):
    from helpers import check_models
    values = check_models.sample(3, seed=5)
    records = tmp_path / "examples.tfrecord"
    with tf.io.TFRecordWriter(str(records)) as writer:
        for row in values:
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "features": tf.train.Feature(float_list=tf.train.FloatList(value=row))}))
                .SerializeToString())
    model = check_models.dropout_model()
    config = {"endpoints": [{"name": "serve"}],
              "check": {"requests": [{"format": "examples", "path": str(tmp_path / "*.tfrecord"),
                                      "endpoint": "serve"}]}}
    out = str(tmp_path / "m")
    result = export_archive.export(model, config, out)
    assert result.check_passed
    origin = rows(result.checks, "requests")
    assert origin["serve"]["detail"] == (f"from the tf.Examples of {tmp_path}/*.tfrecord "
                                         "(check.requests[0])")
    assert origin["serving_default"]["detail"] == f"from {user_requests.ORIGIN_SYNTHESIZED}"
    (log,) = [l for l in read_warmup(out) if saved_model_io.signature_name(l) == "serve"]
    np.testing.assert_allclose(tf.make_ndarray(log.predict_log.request.inputs["features"]),
                               values[:1])
    served = tf.saved_model.load(out).signatures["serve"](features=tf.constant(values))
    np.testing.assert_allclose(list(served.values())[0], model(values, training=False),
                               rtol=1e-5, atol=1e-5)
