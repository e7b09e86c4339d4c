"""Models and endpoint factories for the serving-check tests (test_serving_check.py).

Each one breaks (or keeps) one clause of TF Serving's contract:
* `dropout_model`: Dense + Dropout, no state touched by training: passes;
* `drift_model`: a served model that differs from the in-memory one (stale vocabulary);
* `eager_only_model`: a layer that answers differently eagerly and in a graph;
* `make_tokenizer_fn`: an op that only `tensorflow_text` registers;
* `make_variant_fn`: a DT_VARIANT output a TensorProto cannot carry.
"""

import keras
import numpy as np
import tensorflow as tf

IN_DIM, OUT_DIM = 3, 2


@keras.saving.register_keras_serializable(package="export_archive_check_tests")
class EagerOnlyOffset(keras.layers.Layer):
    """Adds `delta` only when run eagerly, nothing in a traced graph. TF Serving (and
    `model.predict`) run the graph, so the served answers are the graph's: a check
    that executed the endpoint eagerly would call this a drift, wrongly."""

    def __init__(self, delta=1.0, **kwargs):
        super().__init__(**kwargs)
        self.delta = delta

    def call(self, x):
        return x + self.delta if tf.executing_eagerly() else x

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class StaleVocabularyOffset(keras.layers.Layer):
    """Adds `delta * table["offset"]`, the table read from a vocabulary file.

    The in-memory table holds the file as it was when the layer was built; the
    SavedModel copies the file as it is at export time, and TF Serving initializes
    its table from that copy. `rewrite_vocabulary` changes the file in between: the
    served model then drifts from the in-memory one by `delta`, as a model whose
    vocabulary file was overwritten (say, by a later Transform run) does.
    """

    def __init__(self, vocab_path, delta=1.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_path, self.delta = vocab_path, delta
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(vocab_path, tf.string, 0, tf.int64, 1,
                                          delimiter="\t"), default_value=0)

    def call(self, x):
        offset = tf.cast(self.table.lookup(tf.constant("offset")), x.dtype)
        return x + self.delta * offset


def write_vocabulary(path, offset):
    with open(path, "w") as f:
        f.write(f"offset\t{offset}\n")


def eager_only_model(delta=1.0):
    x = inp = keras.Input((IN_DIM,), name="features")
    x = keras.layers.Dense(OUT_DIM)(x)
    return keras.Model(inp, EagerOnlyOffset(delta)(x))


def dropout_model():
    x = inp = keras.Input((IN_DIM,), name="features")
    x = keras.layers.Dense(8, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    out = keras.layers.Dense(OUT_DIM)(x)
    return keras.Model(inp, out)


def drift_model(vocab_path, delta=1.0):
    """A model whose export drifts from memory by `delta` (see StaleVocabularyOffset)."""
    write_vocabulary(vocab_path, 0)
    x = inp = keras.Input((IN_DIM,), name="features")
    x = keras.layers.Dense(OUT_DIM)(x)
    model = keras.Model(inp, StaleVocabularyOffset(str(vocab_path), delta)(x))
    write_vocabulary(vocab_path, 1)
    return model


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
