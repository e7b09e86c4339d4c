"""The model zoo as data: Keras / TF models nobody here wrote, one `Entry` each.

An entry says how to build the model (tiny random data, one or two fit/adapt
steps), which source form a Trainer would leave behind (`SOURCE_KINDS`), the
export config a user would write for it, sample inputs, and the stock export it
is compared with (`REFERENCES`). `test_model_zoo.py` runs every entry through
one harness; nothing here knows about the harness.

Shapes are small on purpose: the zoo is about what exports, not about speed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
import tf_keras

from helpers.custom_layers import Scale

KERAS3, TF_KERAS, TF_MODULE = "keras3", "tf_keras", "tf_module"

# Source kinds: what a Trainer leaves in Format-Serving/ (the file name is the one
# the sources loader looks for).
KERAS_FILE = "keras3 .keras file"
TF_KERAS_SAVED_MODEL = "tf_keras SavedModel dir"
TF_KERAS_H5 = "tf_keras .h5 file"
TF_MODULE_SAVED_MODEL = "tf.Module SavedModel"

MODEL_EXPORT = "model.export()"
HAND_WRITTEN = "hand-written ExportArchive"
TF_SAVED_MODEL = "tf.saved_model.save"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One zoo model.

    `sample(batch, seed)` gives the inputs of the model's `call` (one positional
    argument, nested as the model takes it). `endpoints` is the config a user would
    write. Each endpoint is compared with `expected[name](model, inputs)`, by
    default the model in inference mode.
    """
    id: str
    group: str
    source: str
    build: Callable[[], Any]
    sample: Callable[[int, int], Any]
    endpoints: Tuple[Dict[str, Any], ...] = ({"name": "serve"},)
    reference: str = MODEL_EXPORT
    import_modules: Tuple[str, ...] = ()
    # Endpoints whose outputs depend on a Dropout seed (training mode): the harness
    # sets every seed state to the same value before each call it compares.
    seeded: Tuple[str, ...] = ()
    # The model computes in float16 (mixed precision): outputs are compared to
    # float16 precision, even those cast to float32 at the end.
    float16: bool = False
    note: str = ""

    @property
    def config(self) -> Dict[str, Any]:
        config = {"endpoints": [dict(e) for e in self.endpoints]}
        if self.import_modules:
            config["import_modules"] = list(self.import_modules)
        return config


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _fit(model, x, y, epochs=1):
    """One epoch on a few rows: the optimizer gets its variables, BN its statistics."""
    # No XLA: compiling a train step would cost more than the whole export.
    model.compile(optimizer="adam", loss="mse", jit_compile=False)
    # Keras 3 fit() refuses numpy object (string) arrays; tensors are what a
    # tf.data pipeline would feed anyway.
    model.fit(tf.nest.map_structure(tf.constant, x), y, epochs=epochs, batch_size=8, verbose=0)
    return model


# ---- keras.applications


def mobilenet_v3():
    # Built, not trained: a training step of this graph costs more than its export,
    # and random weights exercise the same ops (hard-swish, squeeze-excite, rescaling).
    return keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=4, alpha=0.75)


def image_sample(batch, seed):
    return (rng(seed).random((batch, 32, 32, 3)) * 255).astype("float32")


# ---- preprocessing layers taking raw values

COLORS = ["red", "green", "blue", "cyan"]
WORDS = "the quick brown fox jumps over a lazy dog".split()


def lookup_sample(batch, seed):
    r = rng(seed)
    # "violet", zip 99999 and unseen hashes are out of vocabulary: the OOV paths run too.
    return {
        "color": r.choice(COLORS + ["violet"], (batch, 1)).astype(object),
        "zip": r.choice([10115, 20095, 80331, 99999], (batch, 1)).astype("int64"),
        "user": np.array([[f"user{i}"] for i in r.integers(0, 50, batch)], dtype=object),
        "bucket": r.integers(0, 6, (batch, 1)).astype("int64"),
    }


def lookups():
    """StringLookup, IntegerLookup, Hashing and CategoryEncoding on raw values."""
    inputs = {"color": keras.Input((1,), dtype="string", name="color"),
              "zip": keras.Input((1,), dtype="int64", name="zip"),
              "user": keras.Input((1,), dtype="string", name="user"),
              "bucket": keras.Input((1,), dtype="int64", name="bucket")}
    data = lookup_sample(32, 0)
    color = keras.layers.StringLookup(output_mode="one_hot")
    color.adapt(data["color"])
    zips = keras.layers.IntegerLookup(output_mode="multi_hot")
    zips.adapt(data["zip"][data["zip"] != 99999])
    features = keras.layers.Concatenate()([
        color(inputs["color"]),
        zips(inputs["zip"]),
        keras.layers.Hashing(num_bins=8, output_mode="one_hot")(inputs["user"]),
        keras.layers.CategoryEncoding(num_tokens=6, output_mode="one_hot")(inputs["bucket"]),
    ])
    out = keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(features))
    model = keras.Model(inputs, out)
    return _fit(model, data, rng(2).random((32, 2)).astype("float32"))


def text_sample(batch, seed):
    r = rng(seed)
    lines = [" ".join(r.choice(WORDS + ["zebra"], int(r.integers(1, 8)))) for _ in range(batch)]
    return np.array(lines, dtype=object).reshape(batch, 1)


def text_vectorization():
    """TextVectorization (adapted) -> Embedding -> pooling, on raw strings."""
    vectorize = keras.layers.TextVectorization(max_tokens=16, output_sequence_length=6)
    vectorize.adapt(text_sample(32, 0))
    inp = keras.Input((1,), dtype="string", name="text")
    h = keras.layers.Embedding(16, 4)(vectorize(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(h)))
    return _fit(model, text_sample(32, 0), rng(3).random((32, 2)).astype("float32"))


def numeric_sample(batch, seed):
    r = rng(seed)
    return {"income": r.lognormal(10, 1, (batch, 1)).astype("float32"),
            "age": r.uniform(15, 90, (batch, 1)).astype("float32")}


def numeric():
    """An adapted Normalization and an adapted Discretization on raw floats."""
    data = numeric_sample(64, 0)
    norm = keras.layers.Normalization()
    norm.adapt(data["income"])
    # Discretization's own output_mode="one_hot" gives a wrong symbolic shape
    # ((None, 1)) in a functional model, so ids go through CategoryEncoding.
    bins = keras.layers.Discretization(num_bins=4)
    bins.adapt(data["age"])
    inputs = {k: keras.Input((1,), name=k) for k in data}
    one_hot = keras.layers.CategoryEncoding(num_tokens=4, output_mode="one_hot")
    h = keras.layers.Concatenate()([norm(inputs["income"]), one_hot(bins(inputs["age"]))])
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    return _fit(model, data, rng(4).random((64, 1)).astype("float32"))


# ---- sequences and attention


def token_sample(batch, seed):
    return rng(seed).integers(0, 20, (batch, 7)).astype("int32")


def embedding_rnn():
    inp = keras.Input((7,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(20, 6, mask_zero=True)(inp)
    h = keras.layers.LSTM(5, return_sequences=True)(h)
    h = keras.layers.GRU(4)(h)
    model = keras.Model(inp, keras.layers.Dense(2)(h))
    return _fit(model, token_sample(16, 0), rng(5).random((16, 2)).astype("float32"))


def sequence_sample(batch, seed):
    return rng(seed).normal(size=(batch, 5, 8)).astype("float32")


def attention_block():
    """A transformer encoder block: MultiHeadAttention, residuals, LayerNormalization."""
    inp = keras.Input((5, 8), name="sequence")
    att = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(inp, inp)
    h = keras.layers.LayerNormalization()(inp + att)
    ff = keras.layers.Dense(8)(keras.layers.Dense(16, activation="relu")(h))
    h = keras.layers.LayerNormalization()(h + ff)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(h)))
    return _fit(model, sequence_sample(16, 0), rng(6).random((16, 3)).astype("float32"))


# ---- multi-input / multi-output dicts


def two_dict_sample(batch, seed):
    r = rng(seed)
    return {"numeric": r.normal(size=(batch, 3)).astype("float32"),
            "tokens": r.integers(0, 10, (batch, 4)).astype("int64")}


def multi_io():
    numeric = keras.Input((3,), name="numeric")
    tokens = keras.Input((4,), dtype="int64", name="tokens")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(10, 2)(tokens))
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([numeric, embedded]))
    outputs = {"score": keras.layers.Dense(1, activation="sigmoid", name="score")(h),
               "logits": keras.layers.Dense(3, name="logits")(h)}
    model = keras.Model({"numeric": numeric, "tokens": tokens}, outputs)
    model.compile(optimizer="adam", loss={"score": "mse", "logits": "mse"}, jit_compile=False)
    r = rng(7)
    model.fit(two_dict_sample(16, 0), {"score": r.random((16, 1)), "logits": r.random((16, 3))},
              epochs=1, batch_size=8, verbose=0)
    return model


# ---- subclassed, with a registered custom layer, Dropout and BatchNormalization


@keras.saving.register_keras_serializable(package="export_archive_zoo")
class McDropoutNet(keras.Model):
    """A subclassed model served with a `training: true` endpoint for MC-dropout.

    BatchNormalization is frozen after training (`trainable = False`): a frozen
    Keras BN normalizes with its moving statistics even in training mode, so a
    served training call leaves inference unchanged, which the serving check's
    state probe requires (it fails a training endpoint that moves BN statistics).
    The flag is part of the config: a sub-layer attribute set after construction
    is not saved in a `.keras` file, and the reloaded model's BN would train again.
    """

    def __init__(self, units=8, rate=0.3, freeze_norm=False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.rate = units, rate
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.norm = keras.layers.BatchNormalization(trainable=not freeze_norm)
        self.scale = Scale(0.5)
        self.dropout = keras.layers.Dropout(rate, seed=11)
        self.head = keras.layers.Dense(2)

    def call(self, x, training=None):
        h = self.norm(self.hidden(x), training=training)
        return self.head(self.dropout(self.scale(h), training=training))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "rate": self.rate,
                "freeze_norm": not self.norm.trainable}


def features_sample(batch, seed):
    return rng(seed).normal(size=(batch, 3)).astype("float32")


def subclassed_mc_dropout():
    model = McDropoutNet()
    model(features_sample(2, 0))
    _fit(model, features_sample(16, 0), rng(8).random((16, 2)).astype("float32"))
    model.norm.trainable = False
    return model


# ---- mixed precision


def mixed_float16():
    """A mixed_float16 model: float16 compute, a float32 head (the Keras guide's
    advice) and a float16 output left as it is."""
    inp = keras.Input((3,), name="features")
    h = keras.layers.Dense(16, activation="relu", dtype="mixed_float16")(inp)
    h = keras.layers.Dense(8, activation="relu", dtype="mixed_float16")(h)
    outputs = {"probs": keras.layers.Dense(2, activation="softmax", dtype="float32",
                                           name="probs")(h),
               "embedding": keras.layers.Dense(4, dtype="mixed_float16", name="embedding")(h)}
    model = keras.Model(inp, outputs)
    model.compile(optimizer="adam", loss={"probs": "mse", "embedding": "mse"},
                  jit_compile=False)
    r = rng(9)
    model.fit(features_sample(16, 0), {"probs": r.random((16, 2)), "embedding": r.random((16, 4))},
              epochs=1, batch_size=8, verbose=0)
    return model


# ---- tf_keras (Keras 2)


def tf_keras_lookup_sample(batch, seed):
    r = rng(seed)
    return {"color": r.choice(COLORS + ["violet"], (batch, 1)).astype(object),
            "x": r.normal(size=(batch, 3)).astype("float32")}


def tf_keras_lookup():
    """A tf_keras functional model with an adapted StringLookup and Normalization:
    its vocabulary table travels in the Keras 2 SavedModel."""
    data = tf_keras_lookup_sample(32, 0)
    color = tf_keras.layers.StringLookup(output_mode="one_hot")
    color.adapt(data["color"])
    norm = tf_keras.layers.Normalization()
    norm.adapt(data["x"])
    inputs = {"color": tf_keras.Input((1,), dtype="string", name="color"),
              "x": tf_keras.Input((3,), name="x")}
    h = tf_keras.layers.Concatenate()([color(inputs["color"]), norm(inputs["x"])])
    # Adapted, not fitted: tf_keras's first training step in a process costs ~40 s
    # (more than every tf_keras export here together), and fitting changes no op.
    return tf_keras.Model(inputs, tf_keras.layers.Dense(2)(
        tf_keras.layers.Dense(8, activation="relu")(h)))


def tf_keras_gru():
    """A tf_keras functional Embedding + GRU + BatchNormalization + Dropout model (.h5)."""
    inp = tf_keras.Input((7,), dtype="int32", name="tokens")
    h = tf_keras.layers.Embedding(20, 6)(inp)
    h = tf_keras.layers.GRU(5)(h)
    h = tf_keras.layers.Dropout(0.2)(tf_keras.layers.BatchNormalization()(h))
    return tf_keras.Model(inp, tf_keras.layers.Dense(2)(h))   # not fitted: see above


# ---- a plain tf.Module


class Scorer(tf.Module):
    """What a hand-rolled TF2 model looks like: variables plus a traced __call__."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(rng(12).normal(size=(3, 2)).astype("float32"))
        self.b = tf.Variable(np.array([0.5, -0.5], "float32"))

    @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32)])
    def __call__(self, x):
        return tf.nn.softmax(tf.matmul(x, self.w) + self.b)

    @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32, name="features")])
    def predict(self, features):
        probs = self(features)
        return {"probs": probs, "label": tf.argmax(probs, axis=1)}


def scorer():
    return Scorer()


def _module_signatures(module):
    return {"predict": module.predict.get_concrete_function()}


# ---- the entries

ENTRIES: List[Entry] = [
    Entry("mobilenet_v3_small", KERAS3, KERAS_FILE, mobilenet_v3, image_sample,
          note="keras.applications, weights=None, 32x32 input"),
    Entry("lookups", KERAS3, KERAS_FILE, lookups, lookup_sample,
          note="StringLookup, IntegerLookup, Hashing, CategoryEncoding"),
    Entry("text_vectorization", KERAS3, KERAS_FILE, text_vectorization, text_sample,
          note="adapted TextVectorization on raw strings"),
    Entry("normalization_discretization", KERAS3, KERAS_FILE, numeric, numeric_sample,
          note="adapted Normalization and Discretization"),
    Entry("embedding_lstm_gru", KERAS3, KERAS_FILE, embedding_rnn, token_sample,
          note="masked Embedding, LSTM, GRU"),
    Entry("multi_head_attention", KERAS3, KERAS_FILE, attention_block, sequence_sample,
          note="MultiHeadAttention encoder block"),
    Entry("multi_io_dict", KERAS3, KERAS_FILE, multi_io, two_dict_sample,
          endpoints=({"name": "serve", "input_signature": [
              {"numeric": "float32[?,3]", "tokens": "int64[?,4]"}]},),
          note="dict inputs and dict outputs, dict signature"),
    Entry("subclassed_mc_dropout", KERAS3, KERAS_FILE, subclassed_mc_dropout, features_sample,
          endpoints=({"name": "serve", "input_signature": ["float32[?,3]"]},
                     {"name": "serve_mc_dropout", "training": True,
                      "input_signature": ["float32[?,3]"]}),
          import_modules=("zoo.models",), seeded=("serve_mc_dropout",),
          note="registered subclass + custom layer, Dropout, frozen BatchNormalization, "
               "training endpoint; input_signature given (a subclassed model loaded from "
               ".keras has no recorded inputs: see the stock-limit row)"),
    Entry("mixed_float16", KERAS3, KERAS_FILE, mixed_float16, features_sample, float16=True,
          note="mixed_float16 policy, float32 and float16 outputs (compared with the eager "
               "model to float16 precision: eager and graph float16 differ by ulps)"),
    Entry("tf_keras_lookup_savedmodel", TF_KERAS, TF_KERAS_SAVED_MODEL, tf_keras_lookup,
          tf_keras_lookup_sample, reference=HAND_WRITTEN,
          note="tf_keras functional, StringLookup + Normalization, model.save(save_format='tf')"),
    Entry("tf_keras_gru_h5", TF_KERAS, TF_KERAS_H5, tf_keras_gru, token_sample,
          reference=HAND_WRITTEN, note="tf_keras functional Embedding + GRU, .h5"),
    Entry("tf_module", TF_MODULE, TF_MODULE_SAVED_MODEL, scorer, features_sample,
          endpoints=({"name": "predict", "fn": "signature:predict"},
                     {"name": "serve", "fn": "call"}),
          reference=TF_SAVED_MODEL, note="plain tf.Module: signature:predict and call"),
]


def entry(entry_id: str) -> Entry:
    return next(e for e in ENTRIES if e.id == entry_id)


# ---- source forms: the model saved as a Trainer's run_fn would leave it


def save_source(e: Entry, model, serving_dir: str) -> None:
    """Writes `model` into `serving_dir` (a Trainer's Format-Serving/) in `e.source` form."""
    os.makedirs(serving_dir, exist_ok=True)
    if e.source == KERAS_FILE:
        model.save(os.path.join(serving_dir, "model.keras"))
    elif e.source == TF_KERAS_SAVED_MODEL:
        model.save(serving_dir, save_format="tf")
    elif e.source == TF_KERAS_H5:
        model.save(os.path.join(serving_dir, "model.h5"))
    elif e.source == TF_MODULE_SAVED_MODEL:
        tf.saved_model.save(model, serving_dir, signatures=_module_signatures(model))
    else:
        raise ValueError(f"unknown source kind {e.source!r}")


# ---- references: the stock way to export the same model


def export_reference(e: Entry, model, path: str) -> None:
    """Writes the stock export of `model` that `e.reference` names."""
    if e.reference == MODEL_EXPORT:
        model.export(path, verbose=False)
    elif e.reference == HAND_WRITTEN:
        archive = tf_keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", lambda x: model(x, training=False),
                             input_signature=[_tf_keras_input_spec(model)])
        archive.write_out(path)
    elif e.reference == TF_SAVED_MODEL:
        tf.saved_model.save(model, path, signatures=_module_signatures(model))
    else:
        raise ValueError(f"unknown reference {e.reference!r}")


def _tf_keras_input_spec(model):
    def spec(t):
        return tf.TensorSpec([None] + t.shape.as_list()[1:], t.dtype, name=t.name.split(":")[0])
    inputs = model.input
    if isinstance(inputs, dict):
        return {k: spec(v) for k, v in inputs.items()}
    return spec(inputs)


def reference_call(e: Entry, endpoint: Dict[str, Any]) -> Optional[Callable]:
    """How the reference export answers what `endpoint` does (None: it has no such
    endpoint, e.g. a training-mode call)."""
    if endpoint.get("training"):
        return None
    fn = endpoint.get("fn", "call")
    if e.reference == TF_SAVED_MODEL:
        if fn.startswith("signature:"):
            name = fn.split(":", 1)[1]
            return lambda revived, x: revived.signatures[name](**as_kwargs(e, x))
        return lambda revived, x: revived(x)
    return lambda revived, x: revived.serve(x)


def in_memory_call(e: Entry, endpoint: Dict[str, Any]) -> Callable:
    """The in-memory model's answer for `endpoint`."""
    fn = endpoint.get("fn", "call")
    if fn.startswith("signature:"):
        method = fn.split(":", 1)[1]
        return lambda model, x: getattr(model, method)(x)
    if e.group == TF_MODULE:
        return lambda model, x: model(x)
    training = bool(endpoint.get("training"))
    return lambda model, x: model(x, training=training)


def as_kwargs(e: Entry, x) -> Dict[str, Any]:
    """Inputs of a `signature:` endpoint: a signature takes keyword arguments."""
    return {"features": x} if e.group == TF_MODULE else dict(x)


def endpoint_call(e: Entry, endpoint: Dict[str, Any]) -> Callable:
    """How our reloaded export is called for `endpoint` (an attribute per endpoint)."""
    name = endpoint["name"]
    if endpoint.get("fn", "call").startswith("signature:"):
        return lambda revived, x: getattr(revived, name)(as_kwargs(e, x))
    return lambda revived, x: getattr(revived, name)(x)
