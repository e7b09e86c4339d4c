"""A custom layer registered with Keras serialization, for `import_modules` tests."""

import keras


@keras.saving.register_keras_serializable(package="export_archive_tests")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
