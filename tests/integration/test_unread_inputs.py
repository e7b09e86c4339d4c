"""A model input the model never reads: the case a TFX user hit with a real Trainer.

The raw column `note` was empty, so SchemaGen inferred BYTES and Transform passes it
through as the string output `note_xf`. The Trainer's model declares `note_xf` as an
int32 Input and never reads it. TFX's hand-written `serve_tf_examples_fn` (parse ->
`tft_layer` -> `model(...)`) serves it: Keras adds a string->int32 Cast that TF prunes,
because no output depends on it. A `tf_example` endpoint must serve the same model with
the same answers; a model that *does* read such an input must fail at export time,
naming the feature, both dtypes and the Transform output to change.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import export_archive
from export_archive import describe, examples
from export_archive.config import ConfigError
from export_archive.examples import ExampleEndpointBuilder
from helpers import tfx_fixtures as fx
from helpers.outputs import single

pytestmark = pytest.mark.integration

LABEL = "label"
SPLIT_SIZE = 300
CONFIG = {"endpoints": [{"name": "serving_default", "kind": "tf_example", "transform": True,
                         "exclude_features": [LABEL]}],
          "check": {"enabled": True}}


def preprocessing_fn(inputs):
    import tensorflow_transform as tft
    note = inputs["note"]
    # TFX's `_fill_in_missing`: a VarLen string column to a dense [batch] string.
    dense = tf.sparse.to_dense(tf.SparseTensor(note.indices, note.values,
                                               [note.dense_shape[0], 1]), default_value="")
    return {"x_xf": tft.scale_to_z_score(inputs["x"]),
            "note_xf": tf.squeeze(dense, axis=1),
            LABEL: inputs[LABEL]}


@pytest.fixture(scope="module")
def transform_graph(tmp_path_factory):
    raw_spec = {"x": tf.io.FixedLenFeature([], tf.float32),
                "note": tf.io.VarLenFeature(tf.string),
                LABEL: tf.io.FixedLenFeature([], tf.int64)}
    data = [{"x": float(i), "note": [], LABEL: i % 2} for i in range(20)]  # note: empty
    return fx.build_transform_graph(tmp_path_factory.mktemp("tft") / "transform_graph",
                                    preprocessing_fn, raw_spec, data)


def split_records(count=SPLIT_SIZE, seed=3):
    """An eval split as ExampleGen writes it: `note` absent, as in the analysis data."""
    rng = np.random.default_rng(seed)
    return fx.serialize([{"x": [float(rng.normal(10, 5))], LABEL: [int(i % 2)]}
                         for i in range(count)])


class _IgnoreSecond(keras.layers.Layer):
    """Takes both inputs and returns the first: the second is declared, never read."""

    def call(self, a, b):
        return a


def keras3_model(reads_note=False):
    x = keras.Input((1,), name="x_xf")
    note = keras.Input((1,), name="note_xf", dtype="int32")
    if reads_note:
        h = keras.layers.Concatenate()([x, keras.ops.cast(note, "float32")])
    else:
        h = _IgnoreSecond()(x, note)
    return keras.Model({"x_xf": x, "note_xf": note}, keras.layers.Dense(2)(h))


def tf_keras_model():
    x = tf_keras.Input((1,), name="x_xf")
    note = tf_keras.Input((1,), name="note_xf", dtype="int32")
    hidden = tf_keras.layers.Dense(4, activation="relu")(x)
    return tf_keras.Model({"x_xf": x, "note_xf": note}, tf_keras.layers.Dense(2)(hidden))


def hand_written_serve_fn(model, transform_graph):
    """TFX's own pattern (penguin_utils_keras / taxi_utils_native_keras `run_fn`)."""
    import tensorflow_transform as tft
    tft_output = tft.TFTransformOutput(transform_graph)
    tft_layer = tft_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_tf_examples_fn(serialized):
        feature_spec = tft_output.raw_feature_spec()
        feature_spec.pop(LABEL)
        parsed = tf.io.parse_example(serialized, feature_spec)
        return model(tft_layer(parsed))
    return serve_tf_examples_fn


def string_casts(export_dir):
    """Cast nodes from DT_STRING anywhere in the served graph (TF Serving would fail them)."""
    meta_graph = describe.serve_meta_graph(describe.read_saved_model_proto(export_dir))
    nodes = list(meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
        nodes.extend(function.node_def)
    return [n.name for n in nodes
            if n.op == "Cast" and n.attr["SrcT"].type == tf.string.as_datatype_enum]


def model_source(kind, tmp_path):
    """The model as the exporter gets it, and the in-memory model the Trainer had."""
    if kind == "keras3":
        model = keras3_model()
        return model, model
    model = tf_keras_model()
    if kind == "tf_keras":
        return model, model
    # A Keras 2 Trainer that saves with tf.saved_model.save (no Keras metadata): the
    # exporter gets the restored __call__, whose note_xf argument is an int32 tensor.
    path = str(tmp_path / "trainer_saved_model")
    model({"x_xf": tf.zeros([1, 1]), "note_xf": tf.zeros([1, 1], tf.int32)})
    tf.saved_model.save(model, path)
    return path, model


@pytest.mark.parametrize("kind", ["keras3", "tf_keras", "restored_saved_model"])
def test_unread_string_input_serves_like_the_hand_written_signature(
        kind, transform_graph, tmp_path):
    exported, in_memory = model_source(kind, tmp_path)
    out = str(tmp_path / "export")
    result = export_archive.export(
        exported, CONFIG, out,
        example_builder=ExampleEndpointBuilder(transform_graph_path=transform_graph))
    assert result.check_passed is True, result.checks
    assert string_casts(out) == []

    records = split_records()
    hand_written = hand_written_serve_fn(in_memory, transform_graph)
    served = tf.saved_model.load(out).signatures["serving_default"]
    # The whole split at once, then again in batches of another size.
    for batch in (SPLIT_SIZE, 7):
        ours, theirs = [], []
        for start in range(0, SPLIT_SIZE, batch):
            chunk = tf.constant(records[start:start + batch])
            ours.append(single(served(examples=chunk)).numpy())
            theirs.append(hand_written(chunk).numpy())
        np.testing.assert_allclose(np.concatenate(ours), np.concatenate(theirs),
                                   rtol=1e-5, atol=1e-5)


def test_a_read_input_that_cannot_be_converted_fails_at_export(transform_graph, tmp_path):
    out = tmp_path / "export"
    with pytest.raises(ConfigError) as err:
        export_archive.export(
            keras3_model(reads_note=True), CONFIG, str(out),
            example_builder=ExampleEndpointBuilder(transform_graph_path=transform_graph))
    message = str(err.value)
    assert "endpoints[0]" in message
    assert "model reads input 'note_xf' as int32" in message
    assert "Transform output 'note_xf' is string" in message
    assert "tft.compute_and_apply_vocabulary" in message   # how to fix it
    assert not out.exists() and os.listdir(tmp_path) == []


def test_inputs_read_follows_restored_function_calls(tmp_path):
    """Through a restored SavedModel's call op, only arguments its body reads count."""
    model = tf_keras_model()
    model({"x_xf": tf.zeros([1, 1]), "note_xf": tf.zeros([1, 1], tf.int32)})
    tf.saved_model.save(model, str(tmp_path / "m"))
    restored = tf.saved_model.load(str(tmp_path / "m"))
    signature = [{"x_xf": tf.TensorSpec([None, 1], tf.float32),
                  "note_xf": tf.TensorSpec([None, 1], tf.int32)}]
    # tf.nest's flat order: note_xf, x_xf.
    assert examples.inputs_read(lambda d: restored(d), signature) == [False, True]
    assert examples.inputs_read(lambda d: model(d), signature) == [False, True]
    assert examples.inputs_read(
        lambda d: model(d) + tf.reduce_sum(tf.cast(d["note_xf"], tf.float32)),
        signature) == [True, True]
