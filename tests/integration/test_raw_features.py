"""`kind: raw_features` endpoints and classify outputs, called the way clients call them.

A REST or Vertex AI client sends raw feature values as JSON `instances`; TF Serving
turns them into one tensor per named input (`export_archive.rest` implements its
documented rules); the endpoint applies the Transform graph in-graph, then the
model. The same animal sent as a tf.Example to `serving_default` must get the same
answer.
"""

import base64
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import export_archive
from export_archive import check, describe, rest
from export_archive.config import ConfigError
from export_archive.examples import ExampleEndpointBuilder
from helpers import fake_tf_serving
from helpers import tfx_fixtures as fx
from helpers.outputs import single

pytestmark = pytest.mark.integration

LABEL = "label"
EVAL_SIZE = 40
CONFIG = {"endpoints": [
    {"name": "serving_default", "kind": "tf_example", "transform": True,
     "exclude_features": [LABEL]},
    {"name": "serve_raw", "kind": "raw_features", "transform": True,
     "exclude_features": [LABEL]},
    {"name": "classify", "kind": "tf_example", "transform": True, "method": "classify",
     "exclude_features": [LABEL], "classes": ["no", "yes"], "score_activation": "softmax"}],
    "check": {"enabled": True}}


@pytest.fixture(scope="module")
def transform_graph(tmp_path_factory):
    return fx.build_transform_graph(tmp_path_factory.mktemp("tft") / "transform_graph")


@pytest.fixture(scope="module")
def eval_records(tmp_path_factory):
    """An eval split file as ExampleGen writes it (gzip TFRecords of tf.Examples)."""
    records = fx.serialize(fx.transform_rows(EVAL_SIZE, seed=5))
    path = str(tmp_path_factory.mktemp("examples") / "eval.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for record in records:
            writer.write(record)
    return records, path


@pytest.fixture(scope="module")
def exported(transform_graph, eval_records, tmp_path_factory):
    model = fx.transform_model(keras)
    out = str(tmp_path_factory.mktemp("export") / "m")
    builder = ExampleEndpointBuilder(transform_graph_path=transform_graph,
                                     example_files=[eval_records[1]])
    result = export_archive.export(model, CONFIG, out, example_builder=builder)
    return result, out, model


def raw_rows(records):
    """The records' raw feature values, as a client holds them (no label)."""
    rows = []
    for record in records:
        example = tf.train.Example.FromString(record)
        feature = example.features.feature
        rows.append({"x": feature["x"].float_list.value[0],
                     "color": feature["color"].bytes_list.value[0]})
    return rows


def run_in_session(export_dir, name, feeds):
    """TF Serving's path: the TF1 loader, tag serve, the signature run by tensor names."""
    served = fake_tf_serving.LoadedModel("m", 1, export_dir)
    sig = served.signatures[name]
    keys = sorted(sig.outputs)
    values = served.run({sig.inputs[k].name: v for k, v in feeds.items()},
                        [sig.outputs[k].name for k in keys])
    return dict(zip(keys, values))


def test_raw_features_signature_is_named_raw_inputs(exported):
    result, out, _ = exported
    assert result.check_passed is True, result.checks
    sig = {s.name: s for s in describe.describe(out)}["serve_raw"]
    # Named after the raw features, typed by the Transform graph's raw spec; no label.
    assert sig.inputs == {"color": "string[?]", "x": "float32[?]"}
    assert sig.method_name == "tensorflow/serving/predict"


def test_rest_instances_match_tf_examples(exported, eval_records):
    _, out, _ = exported
    records = eval_records[0]
    body = json.loads(json.dumps(rest.instances_from_features(raw_rows(records))))
    # Bytes travel as {"b64": ...}, as the REST API requires for binary values.
    assert body["instances"][0]["color"] == {
        "b64": base64.b64encode(raw_rows(records)[0]["color"]).decode()}
    tensors = rest.request_to_tensors(body, describe.signature_def(out, "serve_raw"))
    assert tensors["x"].shape == (EVAL_SIZE,) and tensors["color"].dtype == object
    raw = run_in_session(out, "serve_raw", tensors)
    examples = run_in_session(out, "serving_default",
                              {"examples": np.array(records, dtype=object)})
    assert sorted(raw) == sorted(examples)
    for key in raw:
        np.testing.assert_allclose(raw[key], examples[key], rtol=1e-6, atol=1e-6)
    # Another batch size, and plain UTF-8 strings instead of b64 (both are valid JSON).
    plain = {"instances": [{"x": r["x"], "color": r["color"].decode()}
                           for r in raw_rows(records[:3])]}
    again = run_in_session(out, "serve_raw",
                           rest.request_to_tensors(plain,
                                                   describe.signature_def(out, "serve_raw")))
    np.testing.assert_allclose(next(iter(again.values())),
                               next(iter(examples.values()))[:3], rtol=1e-6, atol=1e-6)
    predictions = rest.outputs_to_predictions(raw)["predictions"]
    assert len(predictions) == EVAL_SIZE and len(predictions[0]) == 2


def test_check_and_warmup_send_real_records_to_raw_inputs(exported, eval_records):
    result, out, _ = exported
    rows = {(r["check"], r["endpoint"]): r for r in result.checks}
    assert rows[("parity", "serve_raw")]["passed"], rows[("parity", "serve_raw")]
    assert rows[("run", "serve_raw")]["passed"]
    logs = check.read_prediction_logs(os.path.join(out, check.WARMUP_FILE))
    (raw_log,) = [log for log in logs
                  if log.predict_log.request.model_spec.signature_name == "serve_raw"]
    sent = tf.make_ndarray(raw_log.predict_log.request.inputs["x"])
    assert sent.tolist() == pytest.approx([r["x"] for r in raw_rows(eval_records[0])[:1]])


def test_classify_returns_classes_and_probabilities(exported, eval_records):
    """Through TF Serving's Classify API shape (ClassificationResponse)."""
    from tensorflow_serving.apis import classification_pb2
    _, out, _ = exported
    records = eval_records[0][:5]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "m"
    request.model_spec.signature_name = "classify"
    for record in records:
        request.input.example_list.examples.add().ParseFromString(record)
    response = fake_tf_serving.LoadedModel("m", 1, out).classify(request)
    assert isinstance(response, classification_pb2.ClassificationResponse)
    examples = single(run_in_session(out, "serving_default",
                              {"examples": np.array(records, dtype=object)}))
    probabilities = tf.nn.softmax(examples, axis=-1).numpy()
    assert len(response.result.classifications) == len(records)
    for i, classification in enumerate(response.result.classifications):
        assert [c.label for c in classification.classes] == ["no", "yes"]
        scores = [c.score for c in classification.classes]
        np.testing.assert_allclose(scores, probabilities[i], rtol=1e-5, atol=1e-6)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_classes_from_a_transform_vocabulary(transform_graph, tmp_path):
    """`classes: {"vocabulary": NAME}` reads the Transform graph's vocabulary file."""
    x = keras.Input((1,), name="x_scaled")
    color = keras.Input((1,), name="color_id", dtype="int64")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(8, 2)(color))
    h = keras.layers.Concatenate()([x, embedded])
    scores = keras.layers.Dense(len(fx.TRANSFORM_COLORS), activation="softmax")(h)
    model = keras.Model({"x_scaled": x, "color_id": color}, scores)
    cfg = {"endpoints": [{"name": "serving_default", "kind": "tf_example", "transform": True,
                          "method": "classify", "exclude_features": [LABEL],
                          "classes": {"vocabulary": fx.VOCAB_FILENAME}}]}
    out = str(tmp_path / "m")
    export_archive.export(model, cfg, out,
                          example_builder=ExampleEndpointBuilder(transform_graph_path=transform_graph))
    served = tf.saved_model.load(out).signatures["serving_default"]
    got = served(inputs=tf.constant(fx.serialize(fx.transform_rows(3))))
    labels = got["classes"].numpy()
    assert labels.shape == (3, 3)
    # The vocabulary is ordered by frequency in the analysis data: all three colors.
    assert sorted(v.decode() for v in labels[0]) == sorted(fx.TRANSFORM_COLORS)
    with pytest.raises(ConfigError) as err:
        bad = {"endpoints": [{**cfg["endpoints"][0], "classes": {"vocabulary": "nope"}}]}
        export_archive.export(model, bad, str(tmp_path / "bad"),
                              example_builder=ExampleEndpointBuilder(
                                  transform_graph_path=transform_graph))
    assert "endpoints[0].classes.vocabulary" in str(err.value)
    assert fx.VOCAB_FILENAME in str(err.value)      # names the vocabularies it has
    with pytest.raises(ConfigError) as err:
        wrong = {"endpoints": [{**cfg["endpoints"][0], "classes": ["a", "b"]}]}
        export_archive.export(model, wrong, str(tmp_path / "wrong"),
                              example_builder=ExampleEndpointBuilder(
                                  transform_graph_path=transform_graph))
    assert "gives 3 score(s) per example but 2 class(es)" in str(err.value)


def test_raw_features_from_a_schema_without_transform(tmp_path):
    """Schema only: VarLen, [1], scalar and int features as named raw inputs."""
    schema = fx.write_schema(tmp_path / "schema", fx.MIXED_SCHEMA)
    inputs = {name: keras.Input((1,), name=name) for name in fx.MIXED_FEATURES}
    h = keras.layers.Concatenate()([inputs[n] for n in fx.MIXED_FEATURES])
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    cfg = {"endpoints": [
        {"name": "serving_default", "kind": "tf_example", "exclude_features": [LABEL]},
        {"name": "serve_raw", "kind": "raw_features", "exclude_features": [LABEL]}]}
    out = str(tmp_path / "m")
    export_archive.export(model, cfg, out,
                          example_builder=ExampleEndpointBuilder(schema_path=schema))
    sig = {s.name: s for s in describe.describe(out)}["serve_raw"]
    # One value per example is a scalar per instance; VarLen is a list per instance.
    assert sig.inputs == {"a": "float32[?,?]", "b": "float32[?]", "c": "float32[?]",
                          "n": "int64[?]"}
    rows = fx.mixed_rows(6, seed=2)
    body = {"instances": [{k: (v if k == "a" else v[0]) for k, v in r.items()
                           if k != LABEL} for r in rows]}
    tensors = rest.request_to_tensors(body, describe.signature_def(out, "serve_raw"))
    raw = run_in_session(out, "serve_raw", tensors)
    examples = run_in_session(out, "serving_default",
                              {"examples": np.array(fx.serialize(rows), dtype=object)})
    np.testing.assert_allclose(single(raw), single(examples), rtol=1e-6, atol=1e-6)


def test_rest_conversion_rejects_what_tf_serving_rejects(exported):
    _, out, _ = exported
    sig = describe.signature_def(out, "serve_raw")
    # TF Serving's own messages (json_tensor.cc); `where` says the place in the body.
    with pytest.raises(rest.RestError, match=r"(?s)Failed to process element: 1 of "
                       r"'instances' list\. JSON object: .* keys must be equal to: color,x"):
        rest.request_to_tensors({"instances": [{"x": 1.0, "color": "red"},
                                               {"color": "red"}]}, sig)
    with pytest.raises(rest.RestError, match="expecting only one of 'inputs' or 'instances'"):
        rest.request_to_tensors({"instances": [], "inputs": {}}, sig)
    with pytest.raises(rest.RestError, match=r"element: 0 key: x of 'instances' list\. Error: "
                       r"INVALID_ARGUMENT: JSON Value: \"1\" Type: String is not of "
                       r"expected type: float \[at instances\[0\]\.x\]"):
        rest.request_to_tensors({"instances": [{"x": "1", "color": "red"}]}, sig)
    with pytest.raises(rest.RestError, match="Encountered list at unexpected size: 2 at level: 1 "
                       "expected size: 1"):
        rest.request_to_tensors({"inputs": {"x": [[1.0], [2.0, 3.0]], "color": ["a", "b"]}},
                                sig)
    with pytest.raises(rest.RestError, match="Encountered list at unexpected size: 2 at level: 1 "
                       "expected size: 1"):
        rest.request_to_tensors({"inputs": {"x": [1.0, 2.0], "color": [["a"], ["b", "c"]]}},
                                sig)
    columnar = rest.request_to_tensors({"inputs": {"x": [1.0, 2.0],
                                                   "color": ["red", "blue"]}}, sig)
    assert columnar["x"].tolist() == [1.0, 2.0] and columnar["color"].tolist() == [b"red",
                                                                                  b"blue"]


def test_raw_features_needs_a_feature_spec():
    with pytest.raises(ConfigError) as err:
        export_archive.export(fx.transform_model(keras), {"endpoints": [
            {"name": "serve_raw", "kind": "raw_features"}]}, "/tmp/never-written")
    assert "endpoints[0].kind" in str(err.value) and "raw_features" in str(err.value)


def test_check_cli_replays_the_models_warmup_requests(exported, tmp_path, capsys):
    """`export-archive check DIR` with no flag: the model's own warmup requests, at
    batch 1 and 64; without them (a copy with the file removed), synthesized inputs,
    which the required-feature parser rejects — and the output says so."""
    import shutil
    from export_archive import cli
    _, out, _ = exported
    assert cli.main(["check", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    sources = {r["endpoint"]: r["detail"] for r in report["results"]
               if r["check"] == "requests"}
    assert set(sources) == {"serving_default", "serve_raw", "classify"}
    assert all(check.SOURCE_WARMUP in d for d in sources.values()), sources
    runs = {r["endpoint"]: r["detail"] for r in report["results"] if r["check"] == "run"}
    assert all("batch 1: p50" in d and "batch 64: p50" in d for d in runs.values()), runs

    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    os.remove(bare / check.WARMUP_FILE)
    assert cli.main(["check", str(bare)]) == cli.EXIT_CHECK_FAILED
    printed = capsys.readouterr().out
    assert printed.startswith("serving check: FAILED")
    assert "from synthesized inputs" in printed and "{'" not in printed   # no dict reprs
    assert cli.main(["check", str(tmp_path / "missing"), "--json"]) == cli.EXIT_USER_ERROR
    assert "does not exist" in json.loads(capsys.readouterr().out)["error"]
