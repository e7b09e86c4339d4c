"""Models and endpoint factories for the serving-check tests (test_serving_check.py).

Each one breaks (or keeps) one clause of TF Serving's contract:
* `dropout_model`: Dense + Dropout, no state touched by training: passes;
* `drift_model`: a layer that answers differently eagerly and in a graph;
* `make_tokenizer_fn`: an op that only `tensorflow_text` registers;
* `make_variant_fn`: a DT_VARIANT output a TensorProto cannot carry.
"""

import keras
import numpy as np
import tensorflow as tf

IN_DIM, OUT_DIM = 3, 2


@keras.saving.register_keras_serializable(package="export_archive_check_tests")
class EagerDrift(keras.layers.Layer):
    """Adds `delta` when run eagerly, nothing in a traced graph: eager != served."""

    def __init__(self, delta=1.0, **kwargs):
        super().__init__(**kwargs)
        self.delta = delta

    def call(self, x):
        return x + self.delta if tf.executing_eagerly() else x

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


def dropout_model():
    x = inp = keras.Input((IN_DIM,), name="features")
    x = keras.layers.Dense(8, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    out = keras.layers.Dense(OUT_DIM)(x)
    return keras.Model(inp, out)


def drift_model(delta=1.0):
    x = inp = keras.Input((IN_DIM,), name="features")
    x = keras.layers.Dense(OUT_DIM)(x)
    out = EagerDrift(delta)(x)
    return keras.Model(inp, out)


def make_tokenizer_fn(model):
    """Counts whitespace tokens per string with tensorflow_text (not a core TF op)."""
    import tensorflow_text as text
    tokenizer = text.WhitespaceTokenizer()

    def count_tokens(strings):
        tokens = tokenizer.tokenize(strings)
        return {"num_tokens": tf.cast(tokens.row_lengths(), tf.float32)}
    return count_tokens, [tf.TensorSpec([None], tf.string, name="text")]


def make_variant_fn(model):
    """Returns the model's output plus a tf.data dataset as a DT_VARIANT tensor."""
    def with_dataset(x):
        dataset = tf.data.Dataset.from_tensor_slices(x)
        return {"scores": model(x, training=False),
                "dataset": tf.data.experimental.to_variant(dataset)}
    return with_dataset, [tf.TensorSpec([None, IN_DIM], tf.float32, name="features")]


def sample(batch, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, IN_DIM)).astype("float32")
