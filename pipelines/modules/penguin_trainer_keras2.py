"""Trainer module, Keras 2 (tf.keras with TF_USE_LEGACY_KERAS=1), saved the way TFX's
own examples do: `tf.saved_model.save` of the model with no Keras metadata.

ModelExporter then serves the restored call functions as the model.
"""

import os

import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from export_archive.pipelines.modules import penguin_transform as features

BATCH_SIZE = 20


def _dataset(file_pattern, data_accessor, tf_transform_output):
    return data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=BATCH_SIZE, label_key=features.LABEL_KEY),
        tf_transform_output.transformed_metadata.schema).repeat()


def build_model():
    if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() not in ("1", "true"):
        raise RuntimeError("This module needs Keras 2 as tf.keras: set TF_USE_LEGACY_KERAS=1 "
                           "before TensorFlow is imported (local_runner --keras 2 does).")
    keras = tf.keras
    inputs = {name: keras.layers.Input((1,), name=name) for name in features.NUMERIC_FEATURES}
    inputs["island"] = keras.layers.Input((1,), name="island", dtype="int64")
    island = keras.layers.CategoryEncoding(num_tokens=4, output_mode="one_hot")(inputs["island"])
    x = keras.layers.concatenate([inputs[n] for n in features.NUMERIC_FEATURES] + [island])
    x = keras.layers.Dense(16, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["sparse_categorical_accuracy"])
    return model


def run_fn(fn_args):
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train = _dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output)
    evaluation = _dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output)
    model = build_model()
    model.fit(train, steps_per_epoch=fn_args.train_steps, validation_data=evaluation,
              validation_steps=fn_args.eval_steps, verbose=2)
    tf.saved_model.save(model, fn_args.serving_model_dir)
