"""Factories whose serving functions use resources outside the model (issue 22).

The three reported patterns, each in the form the config's `track` reaches:

* a factory whose function looks up per-class thresholds in a `StaticHashTable`
  (`thresholds_table`, tracked as ``"track": ["helpers.track_factories:thresholds_table"]``);
* a vocabulary-file lookup table returned by the factory beside its function
  (`serve_with_vocabulary`: ``{"fn": ..., "input_signature": ..., "track": [table]}``);
* preprocessing layers adapted separately and applied before the model, the Keras
  preprocessing guide's pattern (`preprocessing`, a builder that returns them).

Builders cache what they build per model: the factory and the `track` entry must
name the same objects.
"""

import numpy as np
import tensorflow as tf

# Set by the test that writes the vocabulary file.
VOCABULARY_PATH = None
WORDS = ["red", "green", "blue"]
_CACHE = {}


def _cached(key, model, build):
    entry = _CACHE.get(key)
    if entry is None or entry[0] is not model:
        entry = _CACHE[key] = (model, build())
    return entry[1]


def thresholds_table(model):
    """A per-class threshold table, built once per model."""
    return _cached("thresholds", model, lambda: tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant([0, 1], tf.int64),
                                            tf.constant([0.25, 0.75])), -1.0))


def serve_with_thresholds(model):
    table = thresholds_table(model)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def serve(x):
        y = model(x, training=False)
        return {"prediction": y, "threshold": table.lookup(tf.argmax(y, axis=1))}
    return serve


def serve_with_untracked_thresholds(model):
    """The reported failure: a table nothing tracks."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant([0, 1], tf.int64),
                                            tf.constant([0.25, 0.75])), -1.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def serve(x):
        return table.lookup(tf.argmax(model(x, training=False), axis=1))
    return serve


def _vocabulary_table():
    return tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        VOCABULARY_PATH, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), -1)


VOCABULARY_SIGNATURE = [tf.TensorSpec([None, 3], tf.float32, name="x"),
                        tf.TensorSpec([None], tf.string, name="word")]


def _vocabulary_fn(model, table):
    def serve(x, word):
        return {"prediction": model(x, training=False), "word_id": table.lookup(word)}
    return serve


def serve_with_vocabulary(model):
    """Returns the table it uses beside the function, so the archive tracks it."""
    table = _vocabulary_table()
    return {"fn": _vocabulary_fn(model, table), "input_signature": VOCABULARY_SIGNATURE,
            "track": [table]}


def serve_with_untracked_vocabulary(model):
    return _vocabulary_fn(model, _vocabulary_table()), VOCABULARY_SIGNATURE


def serve_reading_vocabulary_by_path(model):
    """Reads the file by its path in the graph: stock Keras exports this, and the
    served model then fails wherever that path does not exist."""
    def serve(x):
        words = tf.strings.split(tf.io.read_file(VOCABULARY_PATH), "\n")
        return {"prediction": model(x, training=False), "words": tf.size(words)}
    return serve, [tf.TensorSpec([None, 3], tf.float32)]


def preprocessing(model):
    """A StringLookup and a Normalization adapted outside the model, built once."""
    def build():
        keras = _keras_of(model)
        lookup = keras.layers.StringLookup(vocabulary=WORDS, num_oov_indices=1)
        normalize = keras.layers.Normalization()
        normalize.adapt(np.random.default_rng(0).normal(3.0, 2.0, (64, 2)).astype("float32"))
        lookup(tf.constant(WORDS))   # Keras 3 builds a lookup layer on its first call
        return {"lookup": lookup, "normalize": normalize}
    return _cached("preprocessing", model, build)


PREPROCESSED_SIGNATURE = [tf.TensorSpec([None, 2], tf.float32, name="numbers"),
                          tf.TensorSpec([None], tf.string, name="color")]


def serve_preprocessed(model):
    """Raw features in; the separately adapted layers turn them into the model's
    float32[?,3] input, as the Keras preprocessing guide applies them."""
    layers = preprocessing(model)

    def serve(numbers, color):
        ids = tf.cast(layers["lookup"](color), tf.float32)[:, None]
        return model(tf.concat([layers["normalize"](numbers), ids], axis=1), training=False)
    return serve, PREPROCESSED_SIGNATURE


def _keras_of(model):
    import tf_keras
    if isinstance(model, tf_keras.layers.Layer):
        return tf_keras
    import keras
    return keras
