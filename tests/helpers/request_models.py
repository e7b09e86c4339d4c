"""Models for the user-supplied requests tests (`check.requests`): an endpoint that
decodes JPEG bytes, and one that returns a RaggedTensor."""

import numpy as np
import tensorflow as tf

SIZE = 8


def make_model():
    """A small Keras model on 8x8 RGB images."""
    import keras
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="scores")(x))


def _decode(jpeg):
    image = tf.io.decode_jpeg(jpeg, channels=3)
    return tf.image.resize(tf.cast(image, tf.float32) / 255.0, [SIZE, SIZE])


def make_jpeg_serve(model):
    """`serve` of string[?]: JPEG bytes -> decode + resize -> the model's scores."""
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes):
        images = tf.map_fn(_decode, image_bytes,
                           fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32))
        return {"scores": model(images, training=False)}
    return serve


def make_ragged(model):
    """Returns, beside the scores, a RaggedTensor (the positive scores per row)."""
    def ragged(x):
        scores = model(x, training=False)
        return {"scores": scores,
                "positive": tf.ragged.boolean_mask(scores, scores > 0)}
    return ragged, [tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="image")]


def make_sparse(model):
    def sparse(x):
        return {"sparse": tf.sparse.from_dense(model(x, training=False))}
    return sparse, [tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="image")]


def jpegs(count, seed=0):
    """`count` real JPEG files (bytes) of random 12x10 images."""
    rng = np.random.default_rng(seed)
    return [tf.io.encode_jpeg(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).numpy()
            for _ in range(count)]


def decoded(jpeg_list):
    """What `serve` feeds the model, for the round-trip comparison."""
    return tf.stack([_decode(j) for j in jpeg_list]).numpy()
