"""User factories for `"fn": "module:attr"` endpoints (the reference's tf.function endpoint)."""

import numpy as np
import tensorflow as tf


def make_serving_fn(model):
    """Returns a traced tf.function (the reference's example: called once, no signature)."""
    @tf.function()
    def serving_fn(x):
        return model(x, training=False)
    serving_fn(tf.random.normal(shape=(2, 3)))
    return serving_fn


def make_doubled_with_signature(model):
    """Returns (callable, input_signature): a plain function plus its specs."""
    def doubled(x):
        return {"doubled": 2.0 * model(x, training=False)}
    return doubled, [tf.TensorSpec((None, 3), tf.float32)]


def make_untraced(model):
    """A tf.function never called and without input_signature: unusable without config."""
    return tf.function(lambda x: model(x))


def make_two_outputs(model):
    return (lambda x: (model(x, training=False), tf.reduce_sum(x, axis=1))), [
        tf.TensorSpec((None, 3), tf.float32)]


NOT_CALLABLE = np.zeros(3)


def failing_factory(model):
    raise RuntimeError("factory exploded on purpose")
