"""Transform module: z-score the measurements, turn `island` into a vocabulary id.

The vocabulary is a lookup table backed by an asset file: the exported model
must carry both for its tf.Example endpoint to work after Pusher copies it.
"""

import tensorflow_transform as tft

LABEL_KEY = "species"
NUMERIC_FEATURES = ["culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g"]
CATEGORICAL_FEATURES = ["island"]


def preprocessing_fn(inputs):
    outputs = {name: tft.scale_to_z_score(inputs[name]) for name in NUMERIC_FEATURES}
    for name in CATEGORICAL_FEATURES:
        outputs[name] = tft.compute_and_apply_vocabulary(
            inputs[name], num_oov_buckets=1, vocab_filename=f"{name}_vocab")
    outputs[LABEL_KEY] = inputs[LABEL_KEY]
    return outputs
