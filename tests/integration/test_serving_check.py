"""The serving check: TF Serving's contract in a separate process, parity, warmup, state.

Every failure case asserts the failing row's check name, endpoint and a detail a
user can act on; exports in mode "fail" must raise CheckFailed and publish nothing.
Each check starts a TensorFlow process (~10-20 s), so exports are shared where possible.
"""

import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

import export_archive
from export_archive import archive, check, cli
from export_archive.check import CheckFailed
from helpers import check_models, models
from helpers.outputs import single

pytestmark = pytest.mark.integration

WARMUP = os.path.join("assets.extra", "tf_serving_warmup_requests")
SERVE = {"endpoints": [{"name": "serve"}]}


def failing(rows, name, endpoint=None):
    """The failing rows for check `name` (and `endpoint`); asserts there is one."""
    found = [r for r in rows if not r["passed"] and r["check"] == name
             and (endpoint is None or r["endpoint"] == endpoint)]
    assert found, f"no failing {name!r} row for {endpoint!r} in {rows}"
    return found


def max_abs_diff(detail):
    return float(re.search(r"max abs diff ([-+.e\d]+),", detail).group(1))


def rows_of(rows, name):
    return {r["endpoint"]: r for r in rows if r["check"] == name}


def export_must_fail(model, config, out):
    """Exports in mode fail; returns the report after asserting nothing was published."""
    with pytest.raises(CheckFailed) as err:
        export_archive.export(model, config, out, check=True)
    assert not os.path.exists(out)
    assert os.listdir(os.path.dirname(out)) == [], "temporary siblings left behind"
    return err.value.report


# ---- passing path


@pytest.fixture(scope="module")
def dropout_model():
    return check_models.dropout_model()


@pytest.fixture(scope="module")
def passing(dropout_model, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("passing") / "m")
    cfg = {"endpoints": [
        {"name": "serve"},
        {"name": "call_training", "training": True},
        {"name": "doubled", "fn": "helpers.factories:make_doubled_with_signature",
         "output_keys": ["twice"]}]}
    return export_archive.export(dropout_model, cfg, out, check=True), out


def test_passing_export_writes_warmup_and_reports_every_check(dropout_model, passing):
    result, out = passing
    assert result.check_passed is True, result.checks
    assert all(r["passed"] for r in result.checks)
    present = {r["check"] for r in result.checks}
    assert {"ops", "serving_default", "dtypes", "load", "run", "parity", "state",
            "warmup_written"} <= present
    signatures = {"serve", "call_training", "doubled", "serving_default"}
    assert set(rows_of(result.checks, "dtypes")) == signatures
    assert set(rows_of(result.checks, "parity")) == {"serve", "call_training", "doubled"}
    assert rows_of(result.checks, "state")["call_training"]["passed"]

    runs = rows_of(result.checks, "run")
    assert set(runs) == signatures
    for row in runs.values():
        assert re.search(r"batch 1: p50 [\d.]+ ms, p99 [\d.]+ ms", row["detail"]), row
        assert re.search(r"batch 64: p50 [\d.]+ ms, p99 [\d.]+ ms", row["detail"]), row
    assert "not deterministic" in runs["call_training"]["detail"]  # Dropout in training

    from tensorflow_serving.apis import prediction_log_pb2
    warmup = os.path.join(out, WARMUP)
    assert os.path.exists(warmup)
    logs = []
    for record in tf.compat.v1.io.tf_record_iterator(warmup):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        assert log.WhichOneof("log_type") == "predict_log"
        logs.append(log)
    names = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert sorted(names) == sorted(signatures)

    revived = tf.saved_model.load(out)
    x = check_models.sample(5)
    np.testing.assert_allclose(single(revived.signatures["serve"](features=x)),
                               dropout_model(x, training=False), atol=1e-5)
    np.testing.assert_allclose(revived.signatures["doubled"](args_0=x)["twice"],
                               2 * dropout_model(x, training=False), atol=1e-5)


def test_contract_process_imports_nothing_but_tensorflow(passing):
    _, out = passing
    requests = check.build_requests(out, None, check.SMALL_BATCH)
    data = check.run_contract(out, requests)
    assert data["foreign_modules"] == []
    assert all(r["passed"] for r in data["results"]), data["results"]
    assert {r["check"] for r in data["results"]} >= {"ops", "load", "run", "warmup"}


# As the CLI runs it: the contract process prestarted before any TensorFlow import
# (forked, sparing it a TensorFlow import), used by the check; then, with
# TensorFlow imported, a new prestarted process, left waiting when this dies.
PRESTART_SCRIPT = r"""
import json, sys, time
from export_archive import contract_process
assert "tensorflow" not in sys.modules
contract_process.prestart_for(None, True)
forked = type(contract_process._waiting.proc).__name__
from export_archive import check
import keras  # the exporter imports Keras after the fork, unhindered
requests = check.build_requests(sys.argv[1], None, check.SMALL_BATCH)
data = check.run_contract(sys.argv[1], requests)
print(json.dumps({"forked": forked, "keras": keras.__version__,
                  "results": [row.to_json() for row in data["results"]],
                  "foreign_modules": data["foreign_modules"]}), flush=True)
contract_process.prestart_for(None, True)
print(json.dumps({"waiting_pid": contract_process._waiting.proc.pid}), flush=True)
time.sleep(600)
"""


def test_prestarted_process_forked_keras_free_and_gone_with_its_parent(passing):
    import signal
    import subprocess
    import sys
    import time
    import psutil

    _, out = passing
    parent = subprocess.Popen([sys.executable, "-c", PRESTART_SCRIPT, out], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        first = json.loads(parent.stdout.readline())
        assert first["forked"] == "_ForkedContract"
        assert first["foreign_modules"] == []
        assert all(r["passed"] for r in first["results"]), first["results"]
        assert {r["check"] for r in first["results"]} >= {"ops", "load", "run"}
        waiting = psutil.Process(json.loads(parent.stdout.readline())["waiting_pid"])
        assert waiting.is_running()
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    # Its stdin pipe's other end died with the parent: it must exit on its own.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if waiting.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    else:
        waiting.kill()
        pytest.fail("the prestarted contract process outlived its killed parent")


def test_contract_process_that_dies_is_reported_with_its_stderr(passing, tmp_path,
                                                                monkeypatch):
    from export_archive import contract_process
    contract_process.discard()   # no process some earlier export started may answer
    broken = tmp_path / "serving_contract.py"
    broken.write_text("import sys\nsys.stderr.write('cannot load libtensorflow_cc.so.2')\n"
                      "sys.exit(7)\n")
    monkeypatch.setattr(contract_process, "CONTRACT_SCRIPT", str(broken))
    _, out = passing
    (row,) = check.run_contract(out, check.build_requests(out, None, 1))["results"]
    assert (row["check"], row["passed"]) == ("load", False)
    assert "exit status 7" in row["detail"] and "libtensorflow_cc.so.2" in row["detail"]


# ---- the contract, on SavedModels that break it


def test_missing_serving_default(tmp_path, capsys):
    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def predict(self, x):
            return {"y": 2.0 * x}

    module = Module()
    out = str(tmp_path / "m")
    tf.saved_model.save(module, out, signatures={"predict_only": module.predict})

    report = check.check_saved_model(out)
    assert not report.passed
    (row,) = failing(report.results, "serving_default")
    assert "no 'serving_default' signature" in row["detail"]
    assert "['predict_only']" in row["detail"]
    assert [r["check"] for r in report.failures()] == ["serving_default"]

    assert cli.main(["check", out]) == cli.EXIT_CHECK_FAILED
    printed = capsys.readouterr().out
    assert re.search(r"FAIL serving_default\s+-\s+no 'serving_default'", printed)
    assert "serving check FAILED" in printed


def test_op_no_model_server_links_is_missing(dropout_model, tmp_path):
    """ExportArchiveTestOnly is registered in this process only (compiled and loaded
    by the helper), as a custom op library is: TF Serving lacks it, so must the check."""
    from tensorflow.python.framework import op_def_registry
    cfg = {"endpoints": [{"name": "serve"},
                         {"name": "through_op",
                          "fn": "helpers.check_models:make_test_only_op_fn"}]}
    report = export_must_fail(dropout_model, cfg, str(tmp_path / "fail" / "m"))
    (row,) = failing(report.results, "ops", "")
    assert "not registered in core TensorFlow" in row["detail"]
    assert "TF Serving will fail to load the model" in row["detail"]
    listed = row["detail"].rsplit(": ", 1)[1].split(", ")
    assert listed == [check_models.TEST_ONLY_OP], row["detail"]
    assert not hasattr(tf.raw_ops, check_models.TEST_ONLY_OP)
    # Registered here (the helper loaded it), not in the serving process.
    assert op_def_registry.get(check_models.TEST_ONLY_OP) is not None

    # The naive check, loading in this process, would pass: that is the point.
    out = str(tmp_path / "ok" / "m")
    export_archive.export(dropout_model, cfg, out, check=False)
    revived = tf.saved_model.load(out)
    x = check_models.sample(5)
    np.testing.assert_allclose(revived.signatures["through_op"](features=x)["scores"],
                               dropout_model(x, training=False), atol=1e-5)


def test_tf_text_op_passes_because_model_server_links_it(dropout_model, tmp_path):
    """tensorflow_model_server links TF Text's kernels (SUPPORTED_TENSORFLOW_OPS:
    @org_tensorflow_text//tensorflow_text:ops_lib), so a tokenizer model serves and
    must pass, its op loaded from TF Text's .so without importing the package."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import prediction_log_pb2
    cfg = {"endpoints": [{"name": "serve"},
                         {"name": "tokens", "fn": "helpers.check_models:make_tokenizer_fn"}]}
    out = str(tmp_path / "m")
    result = export_archive.export(dropout_model, cfg, out, check=True)
    assert result.check_passed is True, result.checks
    ops_row = rows_of(result.checks, "ops")[""]
    assert ops_row["detail"].endswith("or tensorflow_text"), ops_row
    assert rows_of(result.checks, "parity")["tokens"]["passed"]
    assert rows_of(result.checks, "run")["tokens"]["passed"]

    # It passes for the right reason: the served graph does hold a TF Text op,
    # one core TensorFlow lacks.
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(out, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function
                                        for n in f.node_def}
    text_ops = sorted(op for op in ops if op.startswith("TFText>"))
    assert any("WhitespaceTokenize" in op for op in text_ops), sorted(ops)
    assert not any(hasattr(tf.raw_ops, op.split(">")[-1]) for op in text_ops)

    # Served answers on real text (the check's own requests are empty strings), in
    # the Keras-free process, which must not have imported tensorflow_text.
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.signature_name = "tokens"
    log.predict_log.request.inputs["text"].CopyFrom(
        tf.make_tensor_proto(np.array([b"a b c", b"d", b""], dtype=object)))
    data = check.run_contract(out, [log])
    assert all(r["passed"] for r in data["results"]), data["results"]
    assert data["foreign_modules"] == []
    (response,) = data["responses"]
    np.testing.assert_array_equal(
        tf.make_ndarray(response.predict_log.response.outputs["num_tokens"]), [3.0, 1.0, 0.0])


def test_variant_output_cannot_be_served(dropout_model, tmp_path):
    """Refused where the archive is built (check on or off), so the check never sees
    it; `check DIR` still reports such a signature on any SavedModel."""
    from export_archive.servable_outputs import UnservableOutputError
    cfg = {"endpoints": [{"name": "serve"},
                         {"name": "with_dataset", "fn": "helpers.check_models:make_variant_fn"}]}
    with pytest.raises(UnservableOutputError) as info:
        export_archive.export(dropout_model, cfg, str(tmp_path / "m"), check=True)
    assert info.value.where == "endpoints[1]"
    assert "output 'dataset' as a variant tensor (DT_VARIANT)" in str(info.value)
    assert not os.path.exists(tmp_path / "m")


def test_classify_method_without_inputs_key(dropout_model, tmp_path, capsys):
    out = str(tmp_path / "m")
    export_archive.export(dropout_model, SERVE, out, check=False)
    archive.set_method_names(out, {"serve": "tensorflow/serving/classify"})
    report = check.check_saved_model(out)
    (row,) = failing(report.results, "dtypes", "serve")
    assert "needs exactly one DT_STRING input named 'inputs'" in row["detail"]
    assert re.search(r"outputs must be 'classes' and/or 'scores', got \['\w+'\]", row["detail"])
    (run,) = failing(report.results, "run", "serve")
    assert "'inputs'" in run["detail"] and "['features']" in run["detail"]
    # serving_default still aliases the Predict signature and keeps working.
    assert rows_of(report.results, "dtypes")["serving_default"]["passed"]
    assert rows_of(report.results, "run")["serving_default"]["passed"]


@pytest.mark.parametrize("payload", ["garbage_record", "not_a_tfrecord"])
def test_corrupt_warmup_file(passing, tmp_path, payload):
    _, good = passing
    out = str(tmp_path / "m")
    shutil.copytree(good, out)
    path = os.path.join(out, WARMUP)
    if payload == "garbage_record":
        with tf.io.TFRecordWriter(path) as writer:
            writer.write(b"not a proto \xff")
    else:
        with open(path, "wb") as f:
            f.write(np.random.default_rng(0).bytes(256))
    report = check.check_saved_model(out)
    assert [r["check"] for r in report.failures()] == ["warmup"]
    (row,) = failing(report.results, "warmup", "")
    assert "assets.extra/tf_serving_warmup_requests does not parse as PredictionLogs" \
        in row["detail"]
    assert "TF Serving will refuse to load the model" in row["detail"]


# ---- parity, state and tolerances


@pytest.fixture(scope="module")
def drift_model(tmp_path_factory):
    return check_models.drift_model(tmp_path_factory.mktemp("vocab") / "vocab.txt", 1.0)


@pytest.fixture(scope="module")
def tiny_drift_model(tmp_path_factory):
    return check_models.drift_model(tmp_path_factory.mktemp("vocab") / "vocab.txt", 1e-3)


def test_drifting_endpoint_fails_parity(drift_model, tmp_path):
    report = export_must_fail(drift_model, SERVE, str(tmp_path / "m"))
    (row,) = failing(report.results, "parity", "serve")
    assert re.search(r"\w+ drifts from the model", row["detail"]), row["detail"]
    assert max_abs_diff(row["detail"]) == pytest.approx(1.0, abs=1e-3), row["detail"]
    assert [r["check"] for r in report.failures()] == ["parity"]


def test_warn_mode_publishes_and_flags(drift_model, tmp_path):
    out = str(tmp_path / "m")
    result = export_archive.export(drift_model, {**SERVE, "check": {"mode": "warn"}}, out)
    assert result.check_passed is False
    assert os.path.exists(os.path.join(out, "saved_model.pb"))
    assert os.listdir(tmp_path) == ["m"]
    (row,) = failing(result.checks, "parity", "serve")
    assert "drifts" in row["detail"]
    assert os.path.exists(os.path.join(out, WARMUP))


def test_training_endpoint_that_mutates_inference(tmp_path):
    model = models.single_input("keras3", "functional")  # has BatchNormalization
    cfg = {"endpoints": [{"name": "serve"}, {"name": "call_training", "training": True}]}
    report = export_must_fail(model, cfg, str(tmp_path / "m"))
    (row,) = failing(report.results, "state", "call_training")
    assert "BatchNormalization" in row["detail"]
    assert "changed what 'serve' returns" in row["detail"]
    assert [r["check"] for r in report.failures()] == ["state"]


@pytest.mark.parametrize("tolerances,passes", [
    ({"atol": 1e-2, "rtol": 0}, True),
    ({}, False),
])
def test_tolerances_from_config(tiny_drift_model, tmp_path, tolerances, passes):
    cfg = {**SERVE, "check": {"enabled": True, **tolerances}}
    out = str(tmp_path / "m")
    if passes:
        result = export_archive.export(tiny_drift_model, cfg, out)
        assert result.check_passed is True, result.checks
        detail = rows_of(result.checks, "parity")["serve"]["detail"]
        assert max_abs_diff(detail) == pytest.approx(1e-3, rel=1e-2), detail
    else:
        with pytest.raises(CheckFailed) as err:
            export_archive.export(tiny_drift_model, cfg, out)
        assert not os.path.exists(out) and os.listdir(tmp_path) == []
        (row,) = failing(err.value.report.results, "parity", "serve")
        assert "drifts" in row["detail"] and "(rtol 1e-05, atol 1e-05)" in row["detail"]


def test_parity_runs_the_traced_graph_not_eager_python(tmp_path):
    """A layer that adds 1.0 only when executed eagerly: the server runs the graph,
    so the check must agree with the graph and pass (it compared eager output before)."""
    model = check_models.eager_only_model(1.0)
    result = export_archive.export(model, SERVE, str(tmp_path / "m"), check=True)
    assert result.check_passed is True, result.checks
    assert max_abs_diff(rows_of(result.checks, "parity")["serve"]["detail"]) < 1e-5
    x = check_models.sample(4)
    served = tf.saved_model.load(str(tmp_path / "m")).signatures["serve"](features=x)
    np.testing.assert_allclose(single(served), model.predict(x, verbose=0), atol=1e-5)


def test_cli_export_check_refuses_failing_model(tmp_path, capsys):
    model_path = tmp_path / "model.keras"
    check_models.dropout_model().save(model_path)
    cfg = {"endpoints": [{"name": "through_op",
                          "fn": "helpers.check_models:make_test_only_op_fn"}]}
    out = tmp_path / "pub" / "out"
    code = cli.main(["export", "--model", str(model_path), "--config", json.dumps(cfg),
                     "--output", str(out), "--check"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_CHECK_FAILED, err
    assert f"Nothing was written to {out}" in err
    assert "ops not registered in core TensorFlow" in err
    assert check_models.TEST_ONLY_OP in err
    assert "Traceback" not in err
    assert not out.exists()
    assert os.listdir(tmp_path / "pub") == []
