"""The penguin model and its training loop, shared by the Keras 3 and Keras 2 Trainers.

`keras` is passed in: Keras 3 (`import keras`) or Keras 2 (`tf.keras` under
TF_USE_LEGACY_KERAS=1). Both build the same architecture on the transformed
features; only how the Trainer saves the result differs.
"""

import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from export_archive.pipelines.modules import penguin_transform as features

BATCH_SIZE = 20
ISLAND_BUCKETS = 4  # 3 islands + 1 OOV bucket (see penguin_transform)
# Initial weights, dropout and the order of the training examples all come from this
# seed: a rerun on the same data trains the same model, so a pipeline's Evaluator
# verdict does not depend on the draw (a 10-step run fell under the accuracy bound
# once in CI).
SEED = 7


def dataset(file_pattern, data_accessor, tf_transform_output):
    return data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=BATCH_SIZE, label_key=features.LABEL_KEY,
                                       shuffle_seed=SEED),
        tf_transform_output.transformed_metadata.schema).repeat()


def build_model(keras):
    inputs = {name: keras.Input((1,), name=name) for name in features.NUMERIC_FEATURES}
    inputs["island"] = keras.Input((1,), name="island", dtype="int64")
    island = keras.layers.CategoryEncoding(num_tokens=ISLAND_BUCKETS,
                                           output_mode="one_hot")(inputs["island"])
    x = keras.layers.Concatenate()([inputs[n] for n in features.NUMERIC_FEATURES] + [island])
    x = keras.layers.Dense(16, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    # Named: the exported signatures key this output by it ("logits"), and a stable
    # name keeps the serving contract stable across retrains (docs/contract.md).
    outputs = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["sparse_categorical_accuracy"])
    return model


def train(keras, fn_args):
    """Builds and fits the model on the Trainer's transformed examples."""
    keras.utils.set_random_seed(SEED)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train_data = dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output)
    eval_data = dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output)
    model = build_model(keras)
    model.fit(train_data, steps_per_epoch=fn_args.train_steps, validation_data=eval_data,
              validation_steps=fn_args.eval_steps, verbose=2)
    return model
