"""Models and endpoint factories for the serving-check tests (test_serving_check.py).

Each one breaks (or keeps) one clause of TF Serving's contract:
* `dropout_model`: Dense + Dropout, no state touched by training: passes;
* `drift_model`: a served model that differs from the in-memory one (stale vocabulary);
* `eager_only_model`: a layer that answers differently eagerly and in a graph;
* `make_tokenizer_fn`: a TF Text op: not in core TensorFlow, but linked into the
  stock model server (SUPPORTED_TENSORFLOW_OPS), so it must pass;
* `make_test_only_op_fn`: an op no server has (`ExportArchiveTestOnly`, compiled
  here by `load_test_only_op`), so it must fail;
* `make_variant_fn`: a DT_VARIANT output a TensorProto cannot carry.
"""

import atexit
import functools
import os
import shutil
import subprocess
import tempfile

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
    """Counts whitespace tokens per string with tensorflow_text: its op
    (TFText>WhitespaceTokenizeWithOffsetsV2) is not core TensorFlow, but the stock
    tensorflow_model_server links TF Text's kernels."""
    import tensorflow_text as text
    tokenizer = text.WhitespaceTokenizer()

    def count_tokens(strings):
        tokens = tokenizer.tokenize(strings)
        return {"num_tokens": tf.cast(tokens.row_lengths(), tf.float32)}
    return count_tokens, [tf.TensorSpec([None], tf.string, name="text")]


CUSTOM_OP_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "custom_op", "test_only_op.cc")
TEST_ONLY_OP = "ExportArchiveTestOnly"


@functools.lru_cache(maxsize=None)
def load_test_only_op():
    """Compiles custom_op/test_only_op.cc and loads it into this process only.

    Built once per test session (cached here, not in a fixture, because the exporter
    calls the endpoint factory by its dotted path). The serving-contract process
    never loads it, as tensorflow_model_server would not, which is what makes the
    op a truly missing one there. -O0: the op forwards a tensor, so compile time is
    all that matters. A failed build raises with g++'s output: the tests that need
    the op must fail, not skip, when they cannot build it.
    """
    compiler = shutil.which("g++")
    if compiler is None:
        raise RuntimeError("g++ not found on PATH: cannot build the test-only op "
                           f"{TEST_ONLY_OP} from {CUSTOM_OP_SOURCE}")
    build_dir = tempfile.mkdtemp(prefix="export_archive_test_only_op_")
    atexit.register(shutil.rmtree, build_dir, ignore_errors=True)
    library = os.path.join(build_dir, "test_only_op.so")
    # The flags of the installed TensorFlow (headers, C++ ABI, libtensorflow_framework):
    # a library built otherwise fails to load, or crashes, in this TensorFlow.
    cmd = [compiler, "-shared", "-fPIC", "-O0", CUSTOM_OP_SOURCE, "-o", library,
           *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building {TEST_ONLY_OP} failed (exit {proc.returncode}): "
                           f"{' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return tf.load_op_library(library)


def make_test_only_op_fn(model):
    """The model's inference output passed through ExportArchiveTestOnly (an identity
    op that only this test process registers)."""
    ops = load_test_only_op()

    def through_test_only_op(x):
        return {"scores": ops.export_archive_test_only(model(x, training=False))}
    return through_test_only_op, [tf.TensorSpec([None, IN_DIM], tf.float32, name="features")]


def make_variant_fn(model):
    """Returns the model's output plus a tf.data dataset as a DT_VARIANT tensor."""
    def with_dataset(x):
        dataset = tf.data.Dataset.from_tensor_slices(x)
        return {"scores": model(x, training=False),
                "dataset": tf.data.experimental.to_variant(dataset)}
    return with_dataset, [tf.TensorSpec([None, IN_DIM], tf.float32, name="features")]


def sample(batch, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, IN_DIM)).astype("float32")
