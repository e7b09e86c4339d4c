"""Small models for round-trip tests, built the same way in Keras 3 and tf_keras.

Each model has a BatchNormalization layer, so its training-mode forward pass
(batch statistics) differs from inference mode (moving statistics) yet is
deterministic and can be compared exactly; `dropout=True` adds a Dropout layer
for tests that need a stochastic training pass. Models are compiled and trained
for one step, so their optimizers have variables.
"""

import numpy as np

IN_DIM, IN2_DIM, OUT_DIM = 3, 4, 2


def keras_module(flavor):
    if flavor == "keras3":
        import keras
        return keras
    import tf_keras
    return tf_keras


def _train(model, inputs, keras):
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    y = np.ones((4, OUT_DIM), "float32")
    model.fit(inputs, y, epochs=1, batch_size=4, verbose=0)
    return model


def sample(batch, dim=IN_DIM, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, dim)).astype("float32")


OUTPUT_NAME = "prediction"


def single_input(flavor, style, dropout=False):
    """A one-input model, `style` in sequential / functional / subclassed."""
    keras = keras_module(flavor)
    layers = keras.layers
    body = [layers.Dense(8, activation="relu"), layers.BatchNormalization()]
    if dropout:
        body.append(layers.Dropout(0.5))
    # Named: a functional / Sequential model's signature outputs take this name.
    body.append(layers.Dense(OUT_DIM, name=OUTPUT_NAME))
    if style == "sequential":
        model = keras.Sequential([keras.Input((IN_DIM,))] + body)
    elif style == "functional":
        x = inp = keras.Input((IN_DIM,), name="features")
        for layer in body:
            x = layer(x)
        model = keras.Model(inp, x)
    elif style == "subclassed":
        class Subclassed(keras.Model):
            def __init__(self):
                super().__init__()
                self.body = body

            def call(self, x, training=None):
                for layer in self.body:
                    x = layer(x, training=training)
                return x
        model = Subclassed()
        model(sample(2), training=False)
    else:
        raise ValueError(style)
    return _train(model, sample(4), keras)


def two_positional(flavor):
    """A subclassed model whose call takes two positional tensors."""
    keras = keras_module(flavor)

    class TwoArgs(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = keras.layers.Dense(OUT_DIM)
            self.b = keras.layers.Dense(OUT_DIM)

        def call(self, x1, x2):
            return self.a(x1) + self.b(x2)

    model = TwoArgs()
    model(sample(2), sample(2, IN2_DIM))
    return model


def two_inputs(flavor, as_dict):
    """A functional model with a list (or dict) of two inputs."""
    keras = keras_module(flavor)
    x1 = keras.Input((IN_DIM,), name="x1")
    x2 = keras.Input((IN2_DIM,), name="x2")
    h = keras.layers.Concatenate()([keras.layers.Dense(4)(x1), keras.layers.Dense(4)(x2)])
    out = keras.layers.Dense(OUT_DIM)(h)
    inputs = {"x1": x1, "x2": x2} if as_dict else [x1, x2]
    return keras.Model(inputs, out)


def two_input_sample(batch, as_dict):
    x1, x2 = sample(batch), sample(batch, IN2_DIM, seed=1)
    return {"x1": x1, "x2": x2} if as_dict else [x1, x2]
