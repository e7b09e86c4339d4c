"""Trainer module, Keras 2 (tf.keras with TF_USE_LEGACY_KERAS=1), saved the way TFX's
own examples do: `tf.saved_model.save` of the model with no Keras metadata.

ModelExporter then serves the restored call functions as the model.
"""

import os

import tensorflow as tf

from export_archive.pipelines.modules import penguin_model


def run_fn(fn_args):
    if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() not in ("1", "true"):
        raise RuntimeError("This module needs Keras 2 as tf.keras: set TF_USE_LEGACY_KERAS=1 "
                           "before TensorFlow is imported (local_runner --keras 2 does).")
    model = penguin_model.train(tf.keras, fn_args)
    tf.saved_model.save(model, fn_args.serving_model_dir)
