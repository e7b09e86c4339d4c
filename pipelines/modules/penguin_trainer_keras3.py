"""Trainer module, Keras 3: trains on the transformed features, saves `model.keras`.

A Keras 3 Trainer keeps the model itself (with its optimizer state), not a
hand-written serving signature: ModelExporter builds the endpoints.
"""

import os

import keras

from export_archive.pipelines.modules import penguin_model

MODEL_FILE = "model.keras"


def run_fn(fn_args):
    model = penguin_model.train(keras, fn_args)
    os.makedirs(fn_args.serving_model_dir, exist_ok=True)
    model.save(os.path.join(fn_args.serving_model_dir, MODEL_FILE))
