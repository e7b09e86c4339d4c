"""`kind: tf_example` endpoints in the core, without TFX orchestration.

Serialized tf.Examples in, the model's outputs out: feature specs from a Schema
(as SchemaGen writes it) or a real Transform graph (tft_beam), method
classify/regress, and the errors a wrong config or model gives.
"""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import export_archive
from export_archive.config import ConfigError
from export_archive.describe import describe
from export_archive.examples import ExampleEndpointBuilder
from helpers import tfx_fixtures as fx
from helpers.outputs import single

pytestmark = pytest.mark.integration

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def signatures(export_dir):
    return {s.name: s for s in describe(str(export_dir))}


def examples_tensor(rows):
    return tf.constant(fx.serialize(rows))


@pytest.fixture()
def mixed_schema(tmp_path):
    return fx.write_schema(tmp_path / "schema_gen" / "schema", fx.MIXED_SCHEMA)


@pytest.fixture()
def scalar_schema(tmp_path):
    return fx.write_schema(tmp_path / "schema_gen" / "schema", fx.SCALAR_SCHEMA)


@pytest.fixture(scope="module")
def transform_graph(tmp_path_factory):
    """One real Transform graph for the module (tft_beam takes ~20 s)."""
    return fx.build_transform_graph(tmp_path_factory.mktemp("transform") / "transform_graph")


def mixed_model():
    inputs = {name: keras.Input((1,), name=name) for name in fx.MIXED_FEATURES}
    h = keras.layers.Concatenate()([inputs[n] for n in fx.MIXED_FEATURES])
    h = keras.layers.Dense(8, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h))


def scalar_model(keras_module, units=2, activation=None, as_dict=True):
    inputs = [keras_module.Input((1,), name=name) for name in fx.SCALAR_FEATURES]
    h = keras_module.layers.Concatenate()(inputs)
    h = keras_module.layers.Dense(8, activation="relu")(h)
    out = keras_module.layers.Dense(units, activation=activation)(h)
    if as_dict:
        return keras_module.Model(dict(zip(fx.SCALAR_FEATURES, inputs)), out)
    return keras_module.Model(inputs, out)


# ---- feature spec from a Schema


def test_schema_endpoint_matches_model(tmp_path, mixed_schema):
    model = mixed_model()
    cfg = {"endpoints": [{"name": "serving_default", "kind": "tf_example",
                          "exclude_features": ["label"]},
                         {"name": "serve_features"}]}
    result = export_archive.export(model, cfg, tmp_path / "out",
                                   example_builder=ExampleEndpointBuilder(schema_path=mixed_schema))
    assert result.endpoints[0].kind == "tf_example"
    sigs = signatures(tmp_path / "out")
    assert sigs["serving_default"].inputs == {"examples": "string[?]"}
    assert sigs["serving_default"].method_name == PREDICT
    assert sigs["serve_features"].inputs == {n: "float32[?,1]" for n in fx.MIXED_FEATURES}

    revived = tf.saved_model.load(str(tmp_path / "out"))
    for batch, with_label in ((5, True), (2, False)):   # the label is not needed to serve
        rows = fx.mixed_rows(batch, seed=batch, with_label=with_label)
        want = np.asarray(model(fx.columns(rows, fx.MIXED_FEATURES)))
        got = revived.signatures["serving_default"](examples=examples_tensor(rows))
        np.testing.assert_allclose(single(got), want, atol=1e-5)
        np.testing.assert_allclose(
            revived.serve_features(fx.columns(rows, fx.MIXED_FEATURES)), want, atol=1e-5)


def test_features_adapted_to_input_ranks(tmp_path, mixed_schema):
    """Parsed [?,1] feeds a rank-1 input (squeeze); parsed [?] feeds a [?,1] input."""
    b = keras.Input((), name="b")          # schema shape [1] -> parsed [?,1]
    c = keras.Input((1,), name="c")        # schema shape []  -> parsed [?]
    n = keras.Input((), name="n", dtype="int32")   # int64 feature, cast
    h = keras.layers.Concatenate()([keras.layers.Reshape((1,))(b), c,
                                    keras.layers.Reshape((1,))(keras.ops.cast(n, "float32"))])
    model = keras.Model({"b": b, "c": c, "n": n}, keras.layers.Dense(3)(h))
    cfg = {"endpoints": [{"name": "serve", "kind": "tf_example",
                          "exclude_features": ["label"]}]}
    export_archive.export(model, cfg, tmp_path / "out",
                          example_builder=ExampleEndpointBuilder(schema_path=mixed_schema))
    revived = tf.saved_model.load(str(tmp_path / "out"))
    rows = fx.mixed_rows(4, seed=3)
    want = model({"b": np.array([r["b"][0] for r in rows], "float32"),
                  "c": fx.columns(rows, ["c"])["c"],
                  "n": np.array([r["n"][0] for r in rows], "int32")})
    got = revived.signatures["serving_default"](examples=examples_tensor(rows))
    np.testing.assert_allclose(single(got), want, atol=1e-5)


def test_optional_feature_absent_from_the_whole_request(tmp_path, mixed_schema):
    """`a` has no shape in the schema (VarLen): a request in which no example has it
    (e.g. any single-example request without it) must densify to width 1, not 0."""
    a_vec = keras.Input((1,), name="a")
    b = keras.Input((1,), name="b")
    model = keras.Model({"a": a_vec, "b": b},
                        keras.layers.Dense(2)(keras.layers.Concatenate()([a_vec, b])))
    a_scalar = keras.Input((), name="a")       # the same VarLen feature into a rank-1 input
    b2 = keras.Input((1,), name="b")
    scalar_model_ = keras.Model({"a": a_scalar, "b": b2}, keras.layers.Dense(2)(
        keras.layers.Concatenate()([keras.layers.Reshape((1,))(a_scalar), b2])))
    cfg = {"endpoints": [{"name": "serve", "kind": "tf_example",
                          "exclude_features": ["label"]}]}
    builder = ExampleEndpointBuilder(schema_path=mixed_schema)
    export_archive.export(model, cfg, tmp_path / "vec", example_builder=builder)
    export_archive.export(scalar_model_, cfg, tmp_path / "scalar", example_builder=builder)
    revived = {"vec": tf.saved_model.load(str(tmp_path / "vec")),
               "scalar": tf.saved_model.load(str(tmp_path / "scalar"))}
    for batch, missing in ((1, [0]), (3, [0, 1, 2]), (3, [1])):
        rows = fx.mixed_rows(batch, seed=20 + batch, with_label=False)
        for i in missing:
            rows[i].pop("a")
        a = np.array([r.get("a", [0.0])[0] for r in rows], "float32")   # parse default: 0
        bcol = fx.columns(rows, ["b"])["b"]
        for kind, keras_model, a_in in (("vec", model, a.reshape(-1, 1)),
                                        ("scalar", scalar_model_, a)):
            got = revived[kind].signatures["serve"](examples=examples_tensor(rows))
            np.testing.assert_allclose(single(got), keras_model({"a": a_in, "b": bcol}),
                                       atol=1e-5, err_msg=f"{kind} batch={batch}")


def test_schema_file_path_is_accepted(tmp_path, scalar_schema):
    model = scalar_model(keras)
    cfg = {"endpoints": [{"name": "serve", "kind": "tf_example",
                          "exclude_features": ["label"]}]}
    builder = ExampleEndpointBuilder(schema_path=os.path.join(scalar_schema, fx.SCHEMA_FILE))
    export_archive.export(model, cfg, tmp_path / "out", example_builder=builder)
    rows = fx.scalar_rows(3)
    revived = tf.saved_model.load(str(tmp_path / "out"))   # held: functions use its variables
    got = revived.signatures["serve"](
        examples=examples_tensor(rows))
    np.testing.assert_allclose(single(got), model(fx.columns(rows, fx.SCALAR_FEATURES)),
                               atol=1e-5)


def test_tf_keras_functional_with_named_inputs(tmp_path, scalar_schema):
    model = scalar_model(tf_keras, as_dict=False)
    cfg = {"endpoints": [{"name": "serving_default", "kind": "tf_example",
                          "exclude_features": ["label"]}, {"name": "serve_features"}]}
    result = export_archive.export(model, cfg, tmp_path / "out",
                                   example_builder=ExampleEndpointBuilder(schema_path=scalar_schema))
    assert result.flavor == "tf_keras"
    assert signatures(tmp_path / "out")["serving_default"].inputs == {"examples": "string[?]"}
    revived = tf.saved_model.load(str(tmp_path / "out"))
    for batch in (5, 2):
        rows = fx.scalar_rows(batch, seed=batch)
        cols = fx.columns(rows, fx.SCALAR_FEATURES)
        want = model([cols[n] for n in fx.SCALAR_FEATURES], training=False)
        got = revived.signatures["serving_default"](examples=examples_tensor(rows))
        np.testing.assert_allclose(single(got), want, atol=1e-5)


def test_tf_saved_model_of_tf_keras_with_rank2_inputs(tmp_path, scalar_schema):
    """The issue's case: TFX examples' tf.saved_model.save of a tf_keras model whose
    inputs are [?,1], while the schema's scalar features parse to [?]."""
    model = scalar_model(tf_keras, as_dict=False)
    tf.saved_model.save(model, str(tmp_path / "trainer"))
    assert not os.path.exists(tmp_path / "trainer" / "keras_metadata.pb")
    cfg = {"endpoints": [{"name": "serving_default", "kind": "tf_example",
                          "exclude_features": ["label"]}]}
    result = export_archive.export(str(tmp_path / "trainer"), cfg, tmp_path / "out",
                                   example_builder=ExampleEndpointBuilder(schema_path=scalar_schema))
    assert result.flavor == "saved_model"
    revived = tf.saved_model.load(str(tmp_path / "out"))
    for batch in (5, 2):
        rows = fx.scalar_rows(batch, seed=10 + batch, with_label=batch == 5)
        cols = fx.columns(rows, fx.SCALAR_FEATURES)
        want = model([cols[n] for n in fx.SCALAR_FEATURES], training=False)
        got = revived.signatures["serving_default"](examples=examples_tensor(rows))
        np.testing.assert_allclose(single(got), want, atol=1e-5)


# ---- Transform graph


def export_with_transform(model, transform_graph, out, endpoints=None):
    cfg = {"endpoints": endpoints or [{"name": "serving_default", "kind": "tf_example",
                                       "transform": True, "exclude_features": ["label"]}]}
    builder = ExampleEndpointBuilder(transform_graph_path=str(transform_graph))
    return export_archive.export(model, cfg, out, example_builder=builder)


def test_transform_endpoint_matches_layer_then_model(tmp_path, transform_graph):
    model = fx.transform_model(keras)
    export_with_transform(model, transform_graph, tmp_path / "out", endpoints=[
        {"name": "serving_default", "kind": "tf_example", "transform": True,
         "exclude_features": ["label"]},
        {"name": "classify", "kind": "tf_example", "transform": True,
         "exclude_features": ["label"], "method": "classify"},
        {"name": "serve_transformed"}])
    # The vocabulary is an asset of the export itself, saved once for both endpoints.
    assert os.listdir(tmp_path / "out" / "assets") == [fx.VOCAB_FILENAME]
    sigs = signatures(tmp_path / "out")
    assert sigs["serving_default"].inputs == {"examples": "string[?]"}
    assert sigs["classify"].method_name == CLASSIFY
    assert sigs["serve_transformed"].inputs == {"color_id": "int64[?,1]",
                                                "x_scaled": "float32[?,1]"}

    revived = tf.saved_model.load(str(tmp_path / "out"))
    assert hasattr(revived, "transform_features_layer")
    for batch in (5, 2):
        rows = fx.transform_rows(batch, seed=batch, with_label=batch == 5)
        want = fx.expected_with_transform(str(transform_graph), model, rows)
        got = revived.signatures["serving_default"](examples=examples_tensor(rows))
        np.testing.assert_allclose(single(got), want, atol=1e-5)
        scores = revived.signatures["classify"](inputs=examples_tensor(rows))
        np.testing.assert_allclose(scores["scores"], want, atol=1e-5)


RELOAD_SCRIPT = """
import json, sys
import tensorflow as tf
revived = tf.saved_model.load(sys.argv[1])
examples = tf.constant([bytes.fromhex(h) for h in json.loads(sys.argv[2])])
(out,) = revived.signatures["serving_default"](examples=examples).values()
print("RESULT=" + json.dumps(out.numpy().tolist()))
"""


def test_transform_export_survives_deleting_the_transform_graph(tmp_path, transform_graph):
    graph = shutil.copytree(transform_graph, tmp_path / "transform_graph")
    model = fx.transform_model(keras)
    export_with_transform(model, graph, tmp_path / "out")
    rows = fx.transform_rows(6, seed=7, with_label=False)
    want = fx.expected_with_transform(str(graph), model, rows)
    shutil.rmtree(graph)

    vocab = (tmp_path / "out" / "assets" / fx.VOCAB_FILENAME).read_text().split()
    assert sorted(vocab) == sorted(fx.TRANSFORM_COLORS)

    revived = tf.saved_model.load(str(tmp_path / "out"))
    got = revived.signatures["serving_default"](examples=examples_tensor(rows))
    np.testing.assert_allclose(single(got), want, atol=1e-5)

    # A fresh process has no cached table or Transform state: only the export's files.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(tmp_path / "out"),
         json.dumps([e.hex() for e in fx.serialize(rows)])],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT=")][-1]
    np.testing.assert_allclose(np.array(json.loads(line[len("RESULT="):])), want, atol=1e-5)


def test_transform_without_graph_is_a_config_error(tmp_path, scalar_schema):
    cfg = {"endpoints": [{"name": "serve", "kind": "tf_example", "transform": True,
                          "exclude_features": ["label"]}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(scalar_model(keras), cfg, tmp_path / "out",
                              example_builder=ExampleEndpointBuilder(schema_path=scalar_schema))
    assert err.value.path == "endpoints[0].transform"
    assert not os.path.exists(tmp_path / "out")


# ---- classify / regress


def singleprints(export_dir):
    from tensorflow.python.saved_model import fingerprinting_utils
    return (fingerprinting_utils.singleprint_from_saved_model_proto(export_dir),
            fingerprinting_utils.singleprint_from_fingerprint_proto(export_dir))


def test_classify_signature_and_serving_default_alias(tmp_path, scalar_schema):
    model = scalar_model(keras, units=3, activation="softmax")
    cfg = {"endpoints": [
        {"name": "classify_examples", "kind": "tf_example", "method": "classify",
         "exclude_features": ["label"]},
        {"name": "predict_examples", "kind": "tf_example", "exclude_features": ["label"]},
        {"name": "serve_features"}]}
    out = str(tmp_path / "out")
    result = export_archive.export(model, cfg, out,
                                   example_builder=ExampleEndpointBuilder(schema_path=scalar_schema))
    assert result.serving_default == "classify_examples"
    assert result.endpoints[0].method_name == CLASSIFY
    sigs = signatures(out)
    for name in ("classify_examples", "serving_default"):
        assert sigs[name].method_name == CLASSIFY
        assert sigs[name].inputs == {"inputs": "string[?]"}
        assert sigs[name].outputs == {"scores": "float32[?,3]"}
    assert sigs["predict_examples"].method_name == PREDICT
    assert sigs["predict_examples"].inputs == {"examples": "string[?]"}
    assert sigs["serve_features"].method_name == PREDICT

    tf.saved_model.experimental.read_fingerprint(out)
    from_proto, from_file = singleprints(out)
    assert from_proto == from_file, "fingerprint.pb is stale after setting method names"

    revived = tf.saved_model.load(out)
    rows = fx.scalar_rows(5, seed=1)
    want = model(fx.columns(rows, fx.SCALAR_FEATURES))
    np.testing.assert_allclose(
        revived.signatures["serving_default"](inputs=examples_tensor(rows))["scores"], want,
        atol=1e-5)


def test_regress_signature_chosen_as_serving_default(tmp_path, scalar_schema):
    model = scalar_model(keras, units=1)
    cfg = {"endpoints": [
        {"name": "serve_features"},
        {"name": "regress_examples", "kind": "tf_example", "method": "regress",
         "exclude_features": ["label"]}],
        "serving_default": "regress_examples"}
    out = str(tmp_path / "out")
    export_archive.export(model, cfg, out,
                          example_builder=ExampleEndpointBuilder(schema_path=scalar_schema))
    sigs = signatures(out)
    for name in ("regress_examples", "serving_default"):
        assert sigs[name].method_name == REGRESS
        assert sigs[name].inputs == {"inputs": "string[?]"}
        assert sigs[name].outputs == {"outputs": "float32[?,1]"}
    assert sigs["serve_features"].method_name == PREDICT
    tf.saved_model.experimental.read_fingerprint(out)
    assert len(set(singleprints(out))) == 1

    rows = fx.scalar_rows(2, seed=4)
    revived = tf.saved_model.load(out)
    got = revived.signatures["regress_examples"](inputs=examples_tensor(rows))
    np.testing.assert_allclose(got["outputs"], model(fx.columns(rows, fx.SCALAR_FEATURES)),
                               atol=1e-5)


def test_predict_serving_default_beside_a_classify_endpoint(tmp_path, scalar_schema):
    model = scalar_model(keras, units=3, activation="softmax")
    cfg = {"endpoints": [
        {"name": "classify_examples", "kind": "tf_example", "method": "classify",
         "exclude_features": ["label"]},
        {"name": "predict_examples", "kind": "tf_example", "exclude_features": ["label"]}],
        "serving_default": "predict_examples"}
    out = str(tmp_path / "out")
    export_archive.export(model, cfg, out,
                          example_builder=ExampleEndpointBuilder(schema_path=scalar_schema))
    sigs = signatures(out)
    assert sigs["serving_default"].method_name == PREDICT
    assert sigs["serving_default"].inputs == {"examples": "string[?]"}
    assert sigs["classify_examples"].method_name == CLASSIFY


# ---- errors


def test_model_input_not_among_features(tmp_path, scalar_schema):
    inputs = {"f1": keras.Input((1,), name="f1"), "zz": keras.Input((1,), name="zz")}
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Concatenate()(
        list(inputs.values()))))
    cfg = {"endpoints": [{"name": "serve_features"},
                         {"name": "serve_examples", "kind": "tf_example",
                          "exclude_features": ["label"]}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(model, cfg, tmp_path / "out",
                              example_builder=ExampleEndpointBuilder(schema_path=scalar_schema))
    assert err.value.path.startswith("endpoints[1]")
    message = str(err.value)
    assert "'zz'" in message and "f1, f2" in message
    assert not os.path.exists(tmp_path / "out")


def test_exclude_features_names_unknown_feature(tmp_path, scalar_schema):
    cfg = {"endpoints": [{"name": "serve", "kind": "tf_example",
                          "exclude_features": ["label", "no_such_feature"]}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(scalar_model(keras), cfg, tmp_path / "out",
                              example_builder=ExampleEndpointBuilder(schema_path=scalar_schema))
    assert err.value.path == "endpoints[0].exclude_features"
    assert "no_such_feature" in str(err.value) and "f1, f2, label" in str(err.value)


def test_classify_needs_a_single_output(tmp_path, scalar_schema):
    inputs = {n: keras.Input((1,), name=n) for n in fx.SCALAR_FEATURES}
    h = keras.layers.Concatenate()(list(inputs.values()))
    model = keras.Model(inputs, [keras.layers.Dense(2)(h), keras.layers.Dense(1)(h)])
    cfg = {"endpoints": [{"name": "serve", "kind": "tf_example", "method": "classify",
                          "exclude_features": ["label"]}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(model, cfg, tmp_path / "out",
                              example_builder=ExampleEndpointBuilder(schema_path=scalar_schema))
    assert err.value.path == "endpoints[0].method"
    assert "it has 2" in str(err.value)


def test_tf_example_without_feature_spec(tmp_path):
    cfg = {"endpoints": [{"name": "serve", "kind": "tf_example"}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(scalar_model(keras), cfg, tmp_path / "out")
    assert err.value.path == "endpoints[0].kind"
    with pytest.raises(ValueError, match="schema or a transform graph"):
        ExampleEndpointBuilder()


# ---- the CLI takes the same optional inputs


def test_cli_schema_transform_and_examples(tmp_path, transform_graph, capsys):
    """`export --transform-graph --examples --check`: tf.Example endpoint from the CLI,
    checked on real records, equal to Transform + model applied eagerly."""
    from export_archive import cli
    model = fx.transform_model(keras)
    model.save(tmp_path / "model.keras")
    rows = fx.transform_rows(8, seed=4)
    records = tmp_path / "examples" / "Split-eval"
    records.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(records / "data.tfrecord")) as writer:
        for serialized in fx.serialize(rows):
            writer.write(serialized)
    cfg = {"endpoints": [{"name": "serving_default", "kind": "tf_example", "transform": True,
                          "exclude_features": ["label"]}]}
    code = cli.main(["export", "--model", str(tmp_path / "model.keras"),
                     "--config", json.dumps(cfg), "--output", str(tmp_path / "out"),
                     "--transform-graph", transform_graph,
                     "--examples", str(tmp_path / "examples"), "--check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "serving check: passed" in out
    revived = tf.saved_model.load(str(tmp_path / "out"))
    got = single(revived.signatures["serving_default"](examples=examples_tensor(rows)))
    np.testing.assert_allclose(got, fx.expected_with_transform(transform_graph, model, rows),
                               atol=1e-5)
    # The warmup requests are the real records the check ran on.
    from export_archive.check import WARMUP_FILE, read_prediction_logs
    warmup = read_prediction_logs(str(tmp_path / "out" / WARMUP_FILE))
    sent = tf.make_ndarray(warmup[0].predict_log.request.inputs["examples"])
    # (map fields serialize in no fixed order: compare the parsed protos)
    assert (tf.train.Example.FromString(sent[0])
            == tf.train.Example.FromString(fx.serialize(rows)[0]))


def test_cli_schema_input(tmp_path, mixed_schema, capsys):
    from export_archive import cli
    model = mixed_model()
    model.save(tmp_path / "model.keras")
    cfg = {"endpoints": [{"name": "serving_default", "kind": "tf_example",
                          "exclude_features": ["label"]}]}
    code = cli.main(["export", "--model", str(tmp_path / "model.keras"), "--config",
                     json.dumps(cfg), "--output", str(tmp_path / "out"),
                     "--schema", mixed_schema])
    assert code == 0, capsys.readouterr().err
    rows = fx.mixed_rows(3, seed=9)
    revived = tf.saved_model.load(str(tmp_path / "out"))
    got = single(revived.signatures["serving_default"](examples=examples_tensor(rows)))
    np.testing.assert_allclose(got, model(fx.columns(rows, fx.MIXED_FEATURES)), atol=1e-5)
    # `check` without records sends empty tf.Examples, which the parser (required
    # features) rejects; with --examples it sends real ones and passes.
    records = tmp_path / "records"
    records.mkdir()
    with tf.io.TFRecordWriter(str(records / "part-0.tfrecord")) as writer:
        for serialized in fx.serialize(rows):
            writer.write(serialized)
    capsys.readouterr()
    assert cli.main(["check", str(tmp_path / "out")]) == cli.EXIT_CHECK_FAILED
    assert "FAIL run" in capsys.readouterr().out
    assert cli.main(["check", str(tmp_path / "out"), "--examples", str(records)]) == 0
    assert "serving check passed" in capsys.readouterr().out
    assert cli.main(["check", str(tmp_path / "out"), "--examples",
                     str(tmp_path / "none*")]) == cli.EXIT_USER_ERROR
