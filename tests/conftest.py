"""Shared pytest setup: quiet TensorFlow logs and keep Keras 3 as `keras`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf.keras must stay Keras 3 in the test process; tf_keras models are built with
# `import tf_keras` directly, the way TFX's Keras 2 modules get them.
os.environ.pop("TF_USE_LEGACY_KERAS", None)
