"""Schemas, tf.Examples and a real Transform graph for tf_example endpoint tests.

Imports no TFX orchestration (only tensorflow_metadata / tensorflow_transform,
which the core's tf_example support uses anyway), so the core tests stay cheap.
"""

import os
import shutil
import tempfile
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf

SCHEMA_FILE = "schema.pbtxt"

# What SchemaGen writes, in the shapes a Trainer meets:
#   a: a float with no shape           -> VarLenFeature, parsed sparse, densified
#   b: a float with shape [1]          -> FixedLenFeature([1]), parsed [?,1]
#   c: a float with shape []           -> FixedLenFeature([]),  parsed [?]
#   n: an int64 with shape [1]         -> cast to the model's float input
#   label: an int64 label              -> excluded from serving endpoints
MIXED_SCHEMA = """
feature { name: "a" type: FLOAT }
feature { name: "b" type: FLOAT presence { min_fraction: 1 } shape { dim { size: 1 } } }
feature { name: "c" type: FLOAT presence { min_fraction: 1 } shape { } }
feature { name: "n" type: INT presence { min_fraction: 1 } shape { dim { size: 1 } } }
feature { name: "label" type: INT presence { min_fraction: 1 } shape { dim { size: 1 } } }
"""
MIXED_FEATURES = ("a", "b", "c", "n")

# The TFX examples' style: every feature a scalar (shape []), parsed to [?].
SCALAR_SCHEMA = """
feature { name: "f1" type: FLOAT presence { min_fraction: 1 } shape { } }
feature { name: "f2" type: FLOAT presence { min_fraction: 1 } shape { } }
feature { name: "label" type: INT presence { min_fraction: 1 } shape { } }
"""
SCALAR_FEATURES = ("f1", "f2")


def write_schema(directory, text: str) -> str:
    """Writes `text` as <directory>/schema.pbtxt, as SchemaGen lays out its artifact."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    schema = text_format.Parse(text, schema_pb2.Schema())
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, SCHEMA_FILE), "w") as f:
        f.write(text_format.MessageToString(schema))
    return directory


# ---- tf.Example rows


def _feature(values):
    values = list(values)
    if values and isinstance(values[0], (bytes, str)):
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[v.encode() if isinstance(v, str) else v for v in values]))
    if values and isinstance(values[0], (int, np.integer)):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def serialize(rows: Sequence[Dict[str, List]]) -> List[bytes]:
    """Rows of {feature: list of values} -> serialized tf.Example protos."""
    return [tf.train.Example(features=tf.train.Features(
        feature={k: _feature(v) for k, v in row.items()})).SerializeToString()
        for row in rows]


def mixed_rows(batch: int, seed: int = 0, with_label: bool = True) -> List[Dict[str, List]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(batch):
        row = {"a": [float(rng.normal())], "b": [float(rng.normal())],
               "c": [float(rng.normal())], "n": [int(rng.integers(0, 10))]}
        if with_label:
            row["label"] = [i % 2]
        rows.append(row)
    return rows


def scalar_rows(batch: int, seed: int = 0, with_label: bool = True) -> List[Dict[str, List]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(batch):
        row = {"f1": [float(rng.normal())], "f2": [float(rng.normal())]}
        if with_label:
            row["label"] = [i % 2]
        rows.append(row)
    return rows


def columns(rows, names, dtype="float32") -> Dict[str, np.ndarray]:
    """The rows as model inputs: {name: array[batch, 1]} (single-valued features)."""
    return {n: np.array([r[n] for r in rows], dtype=dtype).reshape(len(rows), 1)
            for n in names}


# ---- a real Transform graph (tft_beam), laid out like the Transform component's artifact

TRANSFORM_COLORS = ("red", "green", "blue")
VOCAB_FILENAME = "colors"


def transform_rows(batch: int, seed: int = 0, with_label: bool = True):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(batch):
        # "violet" never occurs in the analysis data: it exercises the OOV bucket.
        color = (TRANSFORM_COLORS + ("violet",))[int(rng.integers(0, 4))]
        row = {"x": [float(rng.normal(3.0, 2.0))], "color": [color]}
        if with_label:
            row["label"] = [i % 2]
        rows.append(row)
    return rows


def preprocessing_fn(inputs):
    import tensorflow_transform as tft
    return {
        "x_scaled": tft.scale_to_z_score(inputs["x"]),
        "color_id": tft.compute_and_apply_vocabulary(
            inputs["color"], num_oov_buckets=1, vocab_filename=VOCAB_FILENAME),
        "label": inputs["label"],
    }


def build_transform_graph(directory, fn=None, raw_spec=None, data=None) -> str:
    """Analyzes a tiny in-memory dataset and writes the transform graph to `directory`.

    Writes ``transform_fn/`` and ``transformed_metadata/`` (WriteTransformFn) and the
    raw ``metadata/`` the Transform component also writes, so that
    `TFTransformOutput(directory).raw_feature_spec()` works as on a TFX artifact.
    Defaults: `preprocessing_fn` over x / color / label; pass `fn`, `raw_spec` and
    `data` (a list of instance dicts) for another Transform.
    """
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    directory = os.fspath(directory)
    raw_spec = raw_spec or {"x": tf.io.FixedLenFeature([], tf.float32),
                            "color": tf.io.FixedLenFeature([], tf.string),
                            "label": tf.io.FixedLenFeature([], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(raw_spec))
    if data is None:
        data = [{"x": float(i), "color": TRANSFORM_COLORS[i % 3], "label": i % 2}
                for i in range(12)]
    temp_dir = tempfile.mkdtemp(prefix="tft-")
    try:
        with tft_beam.Context(temp_dir=temp_dir, force_tf_compat_v1=False):
            (_, _), transform_fn = ((data, metadata)
                                    | tft_beam.AnalyzeAndTransformDataset(
                                        fn or preprocessing_fn))
            _ = transform_fn | tft_beam.WriteTransformFn(directory)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    metadata_io.write_metadata(
        metadata, os.path.join(directory, tft.TFTransformOutput.RAW_METADATA_DIR))
    return directory


def transform_model(keras):
    """A model over the transformed features (x_scaled float, color_id int64)."""
    x = keras.Input((1,), name="x_scaled")
    color = keras.Input((1,), name="color_id", dtype="int64")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(len(TRANSFORM_COLORS) + 1, 2)(color))
    h = keras.layers.Concatenate()([x, embedded])
    return keras.Model({"x_scaled": x, "color_id": color}, keras.layers.Dense(2)(h))


def expected_with_transform(transform_graph: str, model, rows):
    """Applies the Transform layer and then the model eagerly, outside any export."""
    import tensorflow_transform as tft
    tft_output = tft.TFTransformOutput(transform_graph)
    spec = tft_output.raw_feature_spec()
    spec.pop("label")
    raw = tf.io.parse_example(tf.constant(serialize(rows)), spec)
    transformed = tft_output.transform_features_layer()(raw)
    inputs = {"x_scaled": tf.reshape(transformed["x_scaled"], [-1, 1]),
              "color_id": tf.reshape(tf.cast(transformed["color_id"], tf.int64), [-1, 1])}
    return np.asarray(model(inputs, training=False))
