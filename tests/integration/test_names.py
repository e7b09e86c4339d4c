"""Signature input and output keys: the model's own names by default, renamable.

What a TF Serving client writes (`inputs[...]`, REST `instances` / `predictions`
keys) must say what it is: not `args_0`, `keras_tensor_7` or `output_0` when the
model has names. The reloaded object's methods keep returning what the model
returns, as the stock ExportArchive's do.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import export_archive
from export_archive import describe
from export_archive.config import ConfigError
from helpers import models
from helpers.models import sample

pytestmark = pytest.mark.integration


def signatures(out):
    return {s.name: s for s in describe.describe(str(out))}


@pytest.mark.parametrize("flavor,style,input_name", [
    ("keras3", "functional", "features"),
    ("keras3", "sequential", "input_layer"),     # an unnamed Input: its InputLayer's name
    ("tf_keras", "functional", "features"),
    ("tf_keras", "sequential", None),            # tf_keras names it after the first layer
])
def test_model_names_by_default(flavor, style, input_name, tmp_path):
    model = models.single_input(flavor, style)
    # An explicit, unnamed input_signature takes the model's Input name too.
    cfg = {"endpoints": [{"name": "serve"},
                         {"name": "typed", "input_signature": ["float32[?,3]"]}]}
    export_archive.export(model, cfg, tmp_path / "m")
    sigs = signatures(tmp_path / "m")
    for name in ("serve", "typed", "serving_default"):
        (key,) = sigs[name].inputs
        assert not key.startswith(("args_", "keras_tensor")), sigs[name]
        if input_name is not None:
            assert key.startswith(input_name), sigs[name]   # input_layer, input_layer_3, ...
        assert sigs[name].outputs == {models.OUTPUT_NAME: "float32[?,2]"}
    revived = tf.saved_model.load(str(tmp_path / "m"))
    for batch in (5, 2):
        x = sample(batch, seed=batch)
        # The endpoint method returns the model's output as it is (a tensor) ...
        np.testing.assert_allclose(revived.serve(x), model(x, training=False), atol=1e-5)
        # ... and the signature keys it by the model's output name.
        (key,) = sigs["serve"].inputs
        got = revived.signatures["serving_default"](**{key: tf.constant(x)})
        np.testing.assert_allclose(got[models.OUTPUT_NAME], model(x, training=False),
                                   atol=1e-5)


def test_dict_outputs_keep_their_keys_and_subclassed_keep_tf_names(tmp_path):
    x = keras.Input((3,), name="features")
    model = keras.Model(x, {"score": keras.layers.Dense(1)(x),
                            "embedding": keras.layers.Dense(2)(x)})
    export_archive.export(model, {"endpoints": [{"name": "serve"}]}, tmp_path / "d")
    assert set(signatures(tmp_path / "d")["serve"].outputs) == {"score", "embedding"}
    sub = models.single_input("keras3", "subclassed")
    export_archive.export(sub, {"endpoints": [{"name": "serve",
                                               "input_signature": ["float32[?,3]"]}]},
                          tmp_path / "s")
    assert signatures(tmp_path / "s")["serve"].outputs == {"output_0": "float32[?,2]"}


def test_input_and_output_keys_rename(tmp_path):
    model = models.single_input("keras3", "functional")
    cfg = {"endpoints": [{"name": "serve", "input_keys": ["pixels"],
                          "output_keys": ["logits"]}]}
    export_archive.export(model, cfg, tmp_path / "m")
    sig = signatures(tmp_path / "m")["serve"]
    assert sig.inputs == {"pixels": "float32[?,3]"} and sig.outputs == {"logits": "float32[?,2]"}
    x = sample(3)
    served = tf.saved_model.load(str(tmp_path / "m")).signatures["serve"](pixels=tf.constant(x))
    np.testing.assert_allclose(served["logits"], model(x, training=False), atol=1e-5)
    with pytest.raises(ConfigError) as err:
        export_archive.export(model, {"endpoints": [{"name": "serve",
                                                     "input_keys": ["a", "b"]}]},
                              tmp_path / "bad")
    assert "endpoints[0].input_keys" in str(err.value)
    assert "takes 1 argument(s)" in str(err.value)


def test_describe_names_the_alias_of_serving_default(tmp_path):
    x = tf_keras.Input((3,), name="features")
    model = tf_keras.Model(x, tf_keras.layers.Dense(2, name="probs")(x))
    cfg = {"endpoints": [{"name": "first"}, {"name": "serve"}], "serving_default": "serve"}
    export_archive.export(model, cfg, tmp_path / "m")
    assert describe.serving_default_alias(str(tmp_path / "m")) == "serve"
    text = describe.format_signatures(describe.describe(str(tmp_path / "m")),
                                      describe.serving_default_alias(str(tmp_path / "m")))
    assert "signature 'serving_default' (tensorflow/serving/predict) = 'serve'" in text
