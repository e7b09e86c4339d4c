"""A tiny TF2 SavedModel in the format of TF Hub's BERT modules, made locally.

    PYTHONPATH=tests python -m zoo.tiny_bert_hub DIR

TFX's BERT examples (tfx/examples/bert) load `bert_en_cased_L-12_H-768_A-12/2`
from tfhub.dev; this writes a module with the same interface, so their real
loading code (`hub.KerasLayer(path, trainable=True)`, `BertPreprocessor`) runs
unchanged against a local path:

- `__call__([input_word_ids, input_mask, segment_ids], training=...)`, each int32
  [batch, seq], returning `(pooled_output [batch, HIDDEN], sequence_output
  [batch, seq, HIDDEN])`; traced for `training=True` and `False`, as
  `hub.KerasLayer` passes a Python bool when the function has that argument;
- `variables`, `trainable_variables` (and an empty `regularization_losses`),
  which `hub.KerasLayer(..., trainable=True)` reads to track the weights;
- `vocab_file`, a `tf.saved_model.Asset` of a WordPiece vocabulary, and
  `do_lower_case`, a bool `tf.Variable` (what BertPreprocessor reads through
  `resolved_object`).

The "encoder" is an embedding of tokens and segments, averaged over the mask,
then a dense tanh layer: a few hundred weights, so that fine-tuning a few steps
takes seconds.
"""

import os
import sys
import tempfile
import types
from typing import Sequence

import tensorflow as tf

HIDDEN = 8
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The words of the zoo's generated GLUE-like data (tfx_trainer_runner), lower case
# (do_lower_case is True), plus a few WordPiece continuations.
WORDS = ("the", "a", "cat", "dog", "bird", "man", "woman", "child", "teacher", "car",
         "house", "book", "ball", "tree", "sees", "likes", "chases", "reads", "finds",
         "buys", "is", "was", "big", "small", "red", "old", "new", "happy", "quickly",
         "slowly", "and", "but", "very", "on", "in", "under", "near", "it", "they",
         "he", "she", "run", "walk", "##s", "##ed", "##ing", ".", "?")
VOCAB = SPECIAL_TOKENS + WORDS


class _EstimatorStandIn:
    """What tensorflow_hub/estimator.py reads of `tf.compat.v1.estimator` at
    import time (the base class of its LatestModuleExporter)."""
    class Exporter:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError(
                "tf.estimator is not part of TensorFlow 2.16 (hub.LatestModuleExporter)")

    class ModeKeys:
        TRAIN, EVAL, PREDICT = "train", "eval", "infer"


def import_tensorflow_hub():
    """Imports tensorflow_hub 0.15 (what tfx 1.16 pins, <0.16), whose import fails
    on this stack for two reasons outside hub.KerasLayer:

    - `__init__` checks the TensorFlow version with `pkg_resources.parse_version`,
      and setuptools 81+ (84 here) has no pkg_resources any more;
    - `tensorflow_hub/estimator.py` imports `tf.compat.v1.estimator`, which
      TensorFlow 2.16 no longer has (and tensorflow_estimator 2.15 does not import
      under TF 2.16).

    Only for that one import, stand-ins are put in sys.modules (packaging's
    `parse_version`, which pkg_resources re-exported, and an estimator module
    with what hub's LatestModuleExporter, an Estimator API, subclasses), then
    removed; later `import tensorflow_hub` (the TFX modules') get the imported
    module. hub.KerasLayer and hub.load use neither.
    """
    if "tensorflow_hub" in sys.modules:
        return sys.modules["tensorflow_hub"]
    import tensorflow.compat.v1 as tf_v1
    stand_ins = {}
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from packaging.version import parse
        stand_ins["pkg_resources"] = types.ModuleType("pkg_resources")
        stand_ins["pkg_resources"].parse_version = parse
    had_estimator = True
    try:
        tf_v1.estimator  # noqa: B018
    except AttributeError:
        had_estimator = False
        estimator = types.ModuleType("tensorflow.compat.v1.estimator")
        estimator.Exporter = _EstimatorStandIn.Exporter
        estimator.ModeKeys = _EstimatorStandIn.ModeKeys
        stand_ins["tensorflow.compat.v1.estimator"] = estimator
        stand_ins[tf_v1.__name__ + ".estimator"] = estimator
    for name, module in stand_ins.items():
        assert name not in sys.modules, name
        sys.modules[name] = module
    if not had_estimator:
        setattr(tf_v1, "estimator", stand_ins["tensorflow.compat.v1.estimator"])
    try:
        import tensorflow_hub
    finally:
        for name in stand_ins:
            del sys.modules[name]
        if not had_estimator:
            delattr(tf_v1, "estimator")
    return tensorflow_hub


class TinyBert(tf.__internal__.tracking.AutoTrackable):
    """A plain trackable (not tf.Module, whose `variables` are read-only
    properties that are not saved): hub.KerasLayer reads the `variables` and
    `trainable_variables` the SavedModel holds as attributes."""

    def __init__(self, vocab_path: str, seed: int = 0):
        init = tf.random.stateless_normal
        self.word_embeddings = tf.Variable(
            init([len(VOCAB), HIDDEN], seed=[seed, 1], stddev=0.5), name="word_embeddings")
        self.type_embeddings = tf.Variable(
            init([2, HIDDEN], seed=[seed, 2], stddev=0.5), name="type_embeddings")
        self.pooler_kernel = tf.Variable(
            init([HIDDEN, HIDDEN], seed=[seed, 3], stddev=0.5), name="pooler_kernel")
        self.pooler_bias = tf.Variable(tf.zeros([HIDDEN]), name="pooler_bias")
        self.vocab_file = tf.saved_model.Asset(vocab_path)
        self.do_lower_case = tf.Variable(True, trainable=False, name="do_lower_case")
        self.trainable_variables = [self.word_embeddings, self.type_embeddings,
                                    self.pooler_kernel, self.pooler_bias]
        self.variables = self.trainable_variables + [self.do_lower_case]
        self.regularization_losses = []

    @tf.function
    def __call__(self, inputs, training=False):
        input_word_ids, input_mask, segment_ids = inputs
        sequence_output = (tf.gather(self.word_embeddings, input_word_ids)
                           + tf.gather(self.type_embeddings, segment_ids))
        if training:
            # As BERT's dropout: only in training.
            sequence_output = tf.nn.dropout(sequence_output, rate=0.1)
        mask = tf.cast(input_mask, tf.float32)[:, :, tf.newaxis]
        mean = (tf.reduce_sum(sequence_output * mask, axis=1)
                / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0))
        pooled_output = tf.tanh(tf.matmul(mean, self.pooler_kernel) + self.pooler_bias)
        return pooled_output, sequence_output


def build(export_dir: str, seed: int = 0) -> str:
    """Writes the module to export_dir (created); returns export_dir."""
    os.makedirs(export_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path = os.path.join(tmp, "vocab.txt")
        with open(vocab_path, "w", encoding="utf-8") as f:
            f.write("\n".join(VOCAB) + "\n")
        module = TinyBert(vocab_path, seed)
        spec = [tf.TensorSpec([None, None], tf.int32, name=name)
                for name in ("input_word_ids", "input_mask", "segment_ids")]
        for training in (True, False):
            module.__call__.get_concrete_function(spec, training=training)
        tf.saved_model.save(module, export_dir)
    return export_dir


def main(argv: Sequence[str]) -> int:
    print(build(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
