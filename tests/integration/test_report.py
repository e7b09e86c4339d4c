"""The export report: verdict first, what was exported from what, and call examples
that are executed here against the exported signatures.

No server runs: the REST example's JSON body is taken from the rendered page's
curl command and turned into tensors by `export_archive.rest` (TF Serving's REST
rules); the gRPC snippet is exec'd with a stub that answers its PredictRequest
(or ClassificationRequest). Both run the signature as TF Serving does: the
SavedModel loaded by the TF1 loader under tag `serve`, fed by tensor names.
"""

import base64
import html.parser
import json
import os
import shlex
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc)

import export_archive
from export_archive import check, contract, describe, report, rest
from export_archive.examples import ExampleEndpointBuilder
from helpers import tfx_fixtures as fx

pytestmark = pytest.mark.integration

LABEL = "label"
CONFIG = {
    "endpoints": [
        {"name": "serving_default", "kind": "tf_example", "exclude_features": [LABEL]},
        {"name": "serve_raw", "kind": "raw_features", "exclude_features": [LABEL]},
        # The multi-input model called with its four named inputs.
        {"name": "serve_features"},
        {"name": "classify", "kind": "tf_example", "method": "classify",
         "exclude_features": [LABEL], "classes": ["no", "yes"],
         "score_activation": "softmax"}],
    "variable_collections": [{"name": "weights", "source": "trainable"}],
}
SOURCE_URI = "gs://bucket/Trainer/model/7"


def mixed_model():
    inputs = {name: keras.Input((1,), name=name) for name in fx.MIXED_FEATURES}
    h = keras.layers.Concatenate()([inputs[n] for n in fx.MIXED_FEATURES])
    # Named: outputs are keyed by the output layer's name, which Keras would
    # otherwise number by how many Dense layers the test process made before.
    return keras.Model(inputs, keras.layers.Dense(2, name="scores")(keras.layers.Dense(4)(h)))


class CodeBlocks(html.parser.HTMLParser):
    """The page's <code data-endpoint=... data-call=...> texts, and its first element."""

    def __init__(self, page):
        super().__init__(convert_charrefs=True)
        self.blocks, self.first_in_body, self._open, self._in_body = {}, None, None, False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self._in_body = True
        elif self._in_body and self.first_in_body is None:
            self.first_in_body = (tag, attrs.get("id"), [])
            self._open = self.first_in_body[2]
        if tag == "code" and "data-call" in attrs:
            self._open = self.blocks.setdefault(
                (attrs["data-endpoint"], attrs["data-call"]), [])

    def handle_endtag(self, tag):
        if tag in ("code", "h1"):
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open.append(data)

    def text(self, endpoint, call):
        return "".join(self.blocks[(endpoint, call)])


class RecordingStub:
    """What the gRPC snippet talks to: it keeps each request (validated below by
    running it) and answers with an empty response of the right type."""

    def __init__(self, requests):
        self.requests = requests

    def Predict(self, request, timeout=None):  # noqa: N802  (the gRPC method name)
        assert isinstance(request, predict_pb2.PredictRequest) and timeout
        self.requests.append(request)
        return predict_pb2.PredictResponse()

    def Classify(self, request, timeout=None):  # noqa: N802
        assert isinstance(request, classification_pb2.ClassificationRequest) and timeout
        self.requests.append(request)
        return classification_pb2.ClassificationResponse()


def as_log(request) -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    if isinstance(request, predict_pb2.PredictRequest):
        log.predict_log.request.CopyFrom(request)
    else:
        log.classify_log.request.CopyFrom(request)
    return log


def rest_log(name, tensors) -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.signature_name = name
    for key, value in tensors.items():
        log.predict_log.request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return log


def serve(export_dir, logs):
    """Runs the requests as TF Serving does (check.run_contract: a TensorFlow-only
    process, the TF1 loader, tag `serve`, feeds by tensor names); their outputs."""
    data = check.run_contract(export_dir, logs)
    runs = [r for r in data["results"] if r["check"] == "run"]
    assert len(runs) == len(logs) and all(r["passed"] for r in runs), data["results"]
    return [{k: tf.make_ndarray(v) for k, v in log.predict_log.response.outputs.items()}
            for log in data["responses"]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The model exported with the serving check (so with warmup requests) and its
    rendered report."""
    root = tmp_path_factory.mktemp("report")
    schema = fx.write_schema(root / "schema", fx.MIXED_SCHEMA)
    model = mixed_model()
    result = export_archive.export(model, CONFIG, root / "model", check=True,
                                   example_builder=ExampleEndpointBuilder(schema_path=schema))
    report.write_report(result, str(root / "report"), config=CONFIG, source_uri=SOURCE_URI)
    pages = {name: (root / "report" / name).read_text()
             for name in ("report.json", "report.md", "report.html")}
    return model, result, pages


PREDICT_ENDPOINTS = ("serving_default", "serve_raw", "serve_features")


@pytest.fixture(scope="module")
def executed(exported):
    """Every call example of the page, executed: {(endpoint, "rest"|"grpc"):
    (request, outputs)}. One serving process answers them all."""
    import grpc
    _, result, pages = exported
    blocks = CodeBlocks(pages["report.html"])
    keys, logs, requests, targets, printed = [], [], [], [], []
    for name in PREDICT_ENDPOINTS:
        url, body = rest_call(blocks, name)
        tensors = rest.request_to_tensors(body, describe.signature_def(result.output_dir, name))
        keys.append((name, "rest"))
        logs.append(rest_log(name, tensors))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prediction_service_pb2_grpc, "PredictionServiceStub",
                      lambda channel: RecordingStub(requests))
        patch.setattr(grpc, "insecure_channel", targets.append)
        patch.setattr("builtins.print", lambda *a, **k: printed.append(a))
        for name in PREDICT_ENDPOINTS + ("classify",):
            snippet = blocks.text(name, "grpc")
            exec(compile(snippet, f"<report: {name} gRPC>", "exec"), {})  # noqa: S102
            keys.append((name, "grpc"))
            logs.append(as_log(requests[-1]))
    assert targets == [report.GRPC_TARGET] * 4 and len(printed) == 4
    outputs = serve(result.output_dir, logs)
    return blocks, {key: (log, out) for key, log, out in zip(keys, logs, outputs)}


def expected(model, features) -> np.ndarray:
    """The Keras model's answer for one instance given as {feature: values}."""
    return np.asarray(model({n: np.array(features[n], "float32").reshape(1, 1)
                             for n in fx.MIXED_FEATURES}))


def example_features(serialized: bytes) -> dict:
    example = tf.train.Example.FromString(serialized)
    return {name: list(getattr(f, f.WhichOneof("kind")).value)
            for name, f in example.features.feature.items()}


def rest_call(blocks, endpoint, parse=json.loads):
    """(URL, body) of the endpoint's curl command, as a shell would split it; the
    body text given to `parse`."""
    argv = shlex.split(blocks.text(endpoint, "rest").replace("\\\n", " "))
    assert argv[:4] == ["curl", "-s", "-X", "POST"]
    return argv[4], parse(argv[argv.index("-d") + 1])


def test_verdict_comes_first(exported):
    _, result, pages = exported
    blocks = CodeBlocks(pages["report.html"])
    tag, element_id, text = blocks.first_in_body
    assert (tag, element_id) == ("h1", "verdict")
    assert "".join(text) == "Exported · serving check passed · contract not compared"
    assert pages["report.md"].startswith(
        "# Export report: Exported · serving check passed · contract not compared\n")
    data = json.loads(pages["report.json"])
    assert data["verdict"]["status"] == "ok" and data["verdict"]["check"] == "passed"
    assert data["verdict"]["contract"] == contract.NO_BASELINE
    assert data["published"] is True


def test_versions_config_source_and_collections(exported):
    model, result, pages = exported
    count = len(model.trainable_variables)
    data = json.loads(pages["report.json"])
    assert data["versions"]["tensorflow"] == tf.__version__
    assert data["versions"]["keras"] == keras.__version__
    assert data["versions"]["tfx-export-archive"] == export_archive.__version__
    assert data["config"] == CONFIG and data["source_uri"] == SOURCE_URI
    # The existing fields stay, for readers of report.json.
    assert data["output_dir"] == result.output_dir
    assert [e["name"] for e in data["endpoints"]] == [e["name"] for e in CONFIG["endpoints"]]
    assert data["variable_collections"] == {"weights": count}
    page = pages["report.html"]
    assert f"<code>{SOURCE_URI}</code>" in page
    assert "<tr><td>tensorflow</td><td>%s</td></tr>" % tf.__version__ in page
    assert f"<tr><td><code>weights</code></td><td>{count}</td></tr>" in page
    assert f"| `weights` | {count} |" in pages["report.md"]
    assert '&#34;score_activation&#34;: &#34;softmax&#34;' in page   # the config, escaped


def test_rest_examples_answer_like_the_model(exported, executed):
    model, result, pages = exported
    blocks, runs = executed
    for name in PREDICT_ENDPOINTS:
        url, body = rest_call(blocks, name)
        assert url == "http://localhost:8501/v1/models/MODEL:predict"
        assert body["signature_name"] == name and len(body["instances"]) == 1
        # The same command is in report.md and report.json.
        assert blocks.text(name, "rest") in pages["report.md"]
        assert {c["endpoint"]: c["body"] for c in json.loads(
            pages["report.json"])["call_examples"]}[name] == body
        _, outputs = runs[(name, "rest")]
        assert set(outputs) == {"scores"}
        if name == "serving_default":
            # A serialized tf.Example, sent as {"b64": ...}.
            serialized = base64.b64decode(body["instances"][0]["examples"]["b64"])
            features = example_features(serialized)
        else:
            features = {k: np.asarray(v).reshape(-1).tolist()
                        for k, v in body["instances"][0].items()}
        np.testing.assert_allclose(outputs["scores"], expected(model, features), atol=1e-5)
        # The answer a REST client reads back, written as TF Serving writes it.
        [row] = rest.outputs_to_predictions(outputs)["predictions"]
        np.testing.assert_allclose(row, outputs["scores"][0], rtol=1e-6)


def test_grpc_examples_send_requests_the_signatures_answer(exported, executed):
    model, _, pages = exported
    blocks, runs = executed
    for name in PREDICT_ENDPOINTS:
        assert blocks.text(name, "grpc") in pages["report.md"]
        log, outputs = runs[(name, "grpc")]
        request = log.predict_log.request
        assert request.model_spec.signature_name == name
        assert request.model_spec.name == report.DEFAULT_MODEL_NAME
        # The same instance as the REST example: the same answer.
        np.testing.assert_array_equal(outputs["scores"], runs[(name, "rest")][1]["scores"])
    request = runs[("serving_default", "grpc")][0].predict_log.request
    serialized = tf.make_ndarray(request.inputs["examples"])[0]
    assert set(example_features(serialized)) >= set(fx.MIXED_FEATURES)

    # Classify: a ClassificationRequest holding one tf.Example; the REST :classify
    # body holds the same features.
    log, outputs = runs[("classify", "grpc")]
    [example] = log.classify_log.request.input.example_list.examples
    features = {k: list(getattr(f, f.WhichOneof("kind")).value)
                for k, f in example.features.feature.items()}
    assert [c.decode() for c in outputs["classes"][0]] == ["no", "yes"]
    np.testing.assert_allclose(outputs["scores"],
                               tf.nn.softmax(expected(model, features)).numpy(), atol=1e-5)
    url, body = rest_call(blocks, "classify")
    assert url == "http://localhost:8501/v1/models/MODEL:classify"
    assert body["signature_name"] == "classify"
    np.testing.assert_allclose([body["examples"][0][k] for k in sorted(features)],
                               [features[k][0] for k in sorted(features)], atol=1e-6)
    # The :classify body, converted by TF Serving's rules, is the gRPC snippet's
    # ClassificationRequest: the same tf.Example, feature for feature.
    _, rest_request = rest_call(blocks, "classify", parse=rest.parse_classify_request)
    assert rest_request.model_spec.signature_name == "classify"
    assert list(rest_request.input.example_list.examples) == [example]


def test_skipped_check_breaking_contract_and_synthesized_examples(exported, tmp_path):
    """No check ran: the verdict says skipped; no warmup: the examples are
    synthesized and say so, and still run. A baseline whose serving_default and
    other signatures are gone: the verdict says BREAKING and the diff is shown."""
    model, previous, _ = exported
    config = {"endpoints": [{"name": "serve_features"}]}
    result = export_archive.export(model, config, tmp_path / "m")
    # What `export(..., baseline=)` records with on_breaking "warn", minus the
    # warmup replay (a serving process of its own; test_contract covers it).
    result.contract = contract.compare(previous.output_dir, result.output_dir,
                                       replay=False).to_json()
    verdict = report.verdict(result, result.contract)
    assert verdict["status"] == "warning"
    assert verdict["headline"] == "Exported · serving check skipped · contract BREAKING"
    assert verdict["check"].startswith("skipped: the serving check did not run")
    page = report.to_html(result, config, SOURCE_URI)
    assert page.count('class="breaking"') == len(
        [c for c in result.contract["changes"] if c["breaking"]]) > 0
    assert "signature_removed" in page and "<code>classify</code>" in page
    markdown = report.to_markdown(result, config)
    assert "| signature_removed | `classify` |" in markdown and "**BREAKING**" in markdown

    [call] = report.call_examples(result)
    assert call["origin"].startswith("synthesized") and not call["from_warmup"]
    tensors = rest.request_to_tensors(call["body"], describe.signature_def(
        result.output_dir, "serve_features"))
    [outputs] = serve(result.output_dir, [rest_log("serve_features", tensors)])
    np.testing.assert_allclose(outputs["scores"],
                               expected(model, {n: [0.0] for n in fx.MIXED_FEATURES}),
                               atol=1e-5)


def test_not_published_report(tmp_path):
    diff = {**contract.not_compared(), "summary": "contract breaking: 1 change",
            "status": "breaking", "breaking": True,
            "changes": [{"id": "input_renamed:serve/inputs/x", "kind": "input_renamed",
                         "path": "serve/inputs/x", "old": "x: float32[?,3]",
                         "new": "features: float32[?,3]", "detail": "", "breaking": True,
                         "allowed": False}]}
    report.write_not_published("contract guard: contract breaking: 1 change", diff,
                               str(tmp_path), config=CONFIG, source_uri=SOURCE_URI)
    page = (tmp_path / "report.html").read_text()
    tag, element_id, text = CodeBlocks(page).first_in_body
    assert (tag, element_id, "".join(text)) == ("h1", "verdict", "Not published")
    assert "skipped: nothing was exported" in page
    assert "<td>input_renamed</td><td><code>serve/inputs/x</code></td>" in page
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["published"] is False and data["verdict"]["status"] == "stopped"
    assert data["config"] == CONFIG and data["source_uri"] == SOURCE_URI
    assert data["contract"]["changes"][0]["kind"] == "input_renamed"
    assert "| input_renamed | `serve/inputs/x` | `x: float32[?,3]` | " \
           "`features: float32[?,3]` | **BREAKING** |" in (tmp_path / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "report.html", "report.json", "report.md"]   # no staging file left


CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "scripts", "screenshot_report.py")


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"no headless Chromium at {CHROMIUM} (Debian: apt-get install -y "
                           "chromium); scripts/screenshot_report.py needs it")
def test_screenshot_shows_the_verdict(exported, tmp_path):
    _, result, pages = exported
    page = tmp_path / "report.html"
    page.write_text(pages["report.html"])
    shot = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, SCREENSHOT_SCRIPT, "--html", str(page),
                           "--output", str(shot), "--chromium", CHROMIUM],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verdict shown first: 'Exported · serving check passed" in proc.stdout
    assert shot.stat().st_size > 10_000

    # The checks can fail: a page whose verdict is not first is refused.
    page.write_text(pages["report.html"].replace('<h1 id="verdict"', '<p>intro</p><h1 id="verdict"'))
    proc = subprocess.run([sys.executable, SCREENSHOT_SCRIPT, "--html", str(page),
                           "--output", str(tmp_path / "bad.png"), "--chromium", CHROMIUM],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "first element of <body> is <p" in proc.stderr
    assert not (tmp_path / "bad.png").exists()
