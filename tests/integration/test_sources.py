"""Model sources: every format a Trainer can leave behind, exported from its path."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import export_archive
from export_archive.config import ConfigError
from export_archive.sources import KERAS3, SAVED_MODEL, TF_KERAS, SourceError
from helpers import models
from helpers.models import sample
from helpers.outputs import single

pytestmark = pytest.mark.integration

SERVE = {"endpoints": [{"name": "serve"}]}


def roundtrip(path, expected_fn, endpoint="serve"):
    revived = tf.saved_model.load(str(path))
    for batch in (5, 2):
        x = sample(batch, seed=batch)
        np.testing.assert_allclose(getattr(revived, endpoint)(x), expected_fn(x), atol=1e-5)
    return revived


def test_keras3_file(tmp_path):
    model = models.single_input("keras3", "functional")
    model.save(tmp_path / "model.keras")
    result = export_archive.export(str(tmp_path / "model.keras"), SERVE, tmp_path / "out")
    assert result.flavor == KERAS3
    roundtrip(tmp_path / "out", lambda x: model(x, training=False))


def test_directory_holding_one_keras_file(tmp_path):
    model = models.single_input("keras3", "sequential")
    os.makedirs(tmp_path / "artifact")
    model.save(tmp_path / "artifact" / "trained.keras")
    result = export_archive.export(str(tmp_path / "artifact"), SERVE, tmp_path / "out")
    assert result.flavor == KERAS3


def test_tf_keras_h5(tmp_path):
    model = models.single_input("tf_keras", "functional")
    model.save(str(tmp_path / "model.h5"))
    cfg = {"endpoints": [{"name": "serve"}, {"name": "train", "training": True}],
           "variable_collections": [{"name": "optimizer_variables", "source": "optimizer"}]}
    result = export_archive.export(str(tmp_path / "model.h5"), cfg, tmp_path / "out")
    assert result.flavor == TF_KERAS
    assert result.variable_collections["optimizer_variables"] > 0
    roundtrip(tmp_path / "out", lambda x: model(x, training=False))


def test_tf_keras_saved_model(tmp_path):
    model = models.single_input("tf_keras", "sequential")
    model.save(str(tmp_path / "sm"), save_format="tf")
    assert os.path.exists(tmp_path / "sm" / "keras_metadata.pb")
    result = export_archive.export(str(tmp_path / "sm"), SERVE, tmp_path / "out")
    assert result.flavor == TF_KERAS
    roundtrip(tmp_path / "out", lambda x: model(x, training=False))


class Affine(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(np.arange(6, dtype="float32").reshape(3, 2))

    @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32)])
    def __call__(self, x):
        return tf.matmul(x, self.w)


def save_module(path):
    module = Affine()
    tf.saved_model.save(module, str(path), signatures={
        "predict_affine": module.__call__.get_concrete_function()})
    return module


def test_plain_saved_model_call_and_signature(tmp_path):
    module = save_module(tmp_path / "sm")
    cfg = {"endpoints": [{"name": "serve"},
                         {"name": "by_signature", "fn": "signature:predict_affine"}]}
    result = export_archive.export(str(tmp_path / "sm"), cfg, tmp_path / "out")
    assert result.flavor == SAVED_MODEL
    assert result.endpoints[1].outputs == {"output_0": "float32[?,2]"}
    revived = roundtrip(tmp_path / "out", lambda x: module(x).numpy())
    x = sample(4)
    out = revived.by_signature({"x": tf.constant(x)})
    np.testing.assert_allclose(single(out), module(x), atol=1e-6)


def test_plain_saved_model_refuses_training(tmp_path):
    save_module(tmp_path / "sm")
    cfg = {"endpoints": [{"name": "serve", "training": True}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(str(tmp_path / "sm"), cfg, tmp_path / "out")
    assert err.value.path == "endpoints[0].training"
    assert "never traced with training=True" in str(err.value)
    assert not os.path.exists(tmp_path / "out")


def test_unknown_signature_lists_existing_ones(tmp_path):
    save_module(tmp_path / "sm")
    cfg = {"endpoints": [{"name": "serve", "fn": "signature:nope"}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(str(tmp_path / "sm"), cfg, tmp_path / "out")
    assert err.value.path == "endpoints[0].fn"
    assert "predict_affine" in str(err.value)


def test_trainer_style_tf_saved_model_of_tf_keras(tmp_path):
    """TFX's Keras examples save with tf.saved_model.save: no Keras metadata."""
    model = models.single_input("tf_keras", "functional")
    tf.saved_model.save(model, str(tmp_path / "sm"))
    assert not os.path.exists(tmp_path / "sm" / "keras_metadata.pb")
    cfg = {"endpoints": [{"name": "serve"}, {"name": "train", "training": True}]}
    result = export_archive.export(str(tmp_path / "sm"), cfg, tmp_path / "out")
    assert result.flavor == SAVED_MODEL
    xs = [sample(b, seed=b) for b in (5, 2)]
    inference = [model(x, training=False) for x in xs]
    training = [model(x, training=True) for x in xs]
    revived = tf.saved_model.load(str(tmp_path / "out"))
    for x, want in zip(xs, inference):
        np.testing.assert_allclose(revived.serve(x), want, atol=1e-5)
    for x, want in zip(xs, training):
        np.testing.assert_allclose(revived.train(x), want, atol=1e-5)


def test_unsafe_lambda_needs_opt_in(tmp_path):
    inp = keras.Input((3,))
    out = keras.layers.Lambda(lambda t: t * 3.0)(inp)
    model = keras.Model(inp, out)
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(SourceError, match="allow_unsafe_deserialization"):
        export_archive.export(str(tmp_path / "lambda.keras"), SERVE, tmp_path / "out")
    cfg = {**SERVE, "allow_unsafe_deserialization": True}
    export_archive.export(str(tmp_path / "lambda.keras"), cfg, tmp_path / "out")
    roundtrip(tmp_path / "out", lambda x: 3.0 * x)


def test_import_modules_registers_custom_layers(tmp_path):
    from helpers import custom_layers
    inp = keras.Input((3,))
    model = keras.Model(inp, custom_layers.Scale(4.0)(inp))
    model.save(tmp_path / "custom.keras")
    # Forget the registration, as a fresh process would not have it.
    registered = keras.saving.get_custom_objects()
    key = "export_archive_tests>Scale"
    saved = registered.pop(key)
    sys.modules.pop("helpers.custom_layers")
    try:
        with pytest.raises(SourceError, match="import_modules"):
            export_archive.export(str(tmp_path / "custom.keras"), SERVE, tmp_path / "out")
        cfg = {**SERVE, "import_modules": ["helpers.custom_layers"]}
        export_archive.export(str(tmp_path / "custom.keras"), cfg, tmp_path / "out")
    finally:
        registered.setdefault(key, saved)
    roundtrip(tmp_path / "out", lambda x: 4.0 * x)


def test_import_modules_missing_module(tmp_path):
    model = models.single_input("keras3", "functional")
    model.save(tmp_path / "m.keras")
    cfg = {**SERVE, "import_modules": ["no_such_module_here"]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(str(tmp_path / "m.keras"), cfg, tmp_path / "out")
    assert err.value.path == "import_modules[0]"


def test_directory_without_model_says_what_it_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SourceError) as err:
        export_archive.export(str(tmp_path / "empty"), SERVE, tmp_path / "out")
    assert "saved_model.pb" in str(err.value) and "notes.txt" in str(err.value)


def test_missing_path(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        export_archive.export(str(tmp_path / "nope.keras"), SERVE, tmp_path / "out")


def test_unbuilt_model_is_refused(tmp_path):
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(SourceError, match="has not been built"):
        export_archive.export(model, SERVE, tmp_path / "out")


def test_optimizer_collection_without_optimizer(tmp_path):
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(2)(inp))
    cfg = {**SERVE, "variable_collections": [{"name": "opt", "source": "optimizer"}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(model, cfg, tmp_path / "out")
    assert err.value.path == "variable_collections[0].source"
    assert "compile the model" in str(err.value)


def test_unknown_layer_collection_lists_layers(tmp_path):
    model = models.single_input("keras3", "functional")
    cfg = {**SERVE, "variable_collections": [{"name": "x", "source": "layer:missing"}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(model, cfg, tmp_path / "out")
    assert err.value.path == "variable_collections[0].source"
    assert f"layer:{model.layers[1].name}" in str(err.value)


def test_not_a_model(tmp_path):
    with pytest.raises(SourceError, match="expected a Keras 3 model"):
        export_archive.export(object(), SERVE, tmp_path / "out")


def test_tf_keras_sequential_without_input_needs_signature(tmp_path):
    model = tf_keras.Sequential([tf_keras.layers.Dense(2)])
    model.build((None, 3))
    cfg = {"endpoints": [{"name": "serve", "input_signature": ["float32[?,3]"]}]}
    export_archive.export(model, cfg, tmp_path / "out")
    roundtrip(tmp_path / "out", lambda x: model(x))


class _FailingReader:
    """A checkpoint reader whose tensors fail to read back with `error`."""

    def __init__(self, reader, error):
        self.reader, self.error = reader, error

    def __getattr__(self, name):
        return getattr(self.reader, name)

    def get_tensor(self, name):
        raise self.error


def _corrupt_data(export_dir):
    (data,) = [n for n in os.listdir(export_dir / "variables") if n.startswith("variables.data")]
    path = export_dir / "variables" / data
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF   # in the last weight (the object graph sorts first); same length,
    # so only the checksum can tell
    path.write_bytes(bytes(raw))


def test_variables_that_fail_for_want_of_memory_are_not_called_corrupt(tmp_path, monkeypatch):
    from export_archive import sources
    save_module(tmp_path / "m")
    load = tf.train.load_checkpoint
    out_of_memory = tf.errors.InternalError(
        None, None, "variables.data-00000-of-00001; Bad address")
    monkeypatch.setattr(tf.train, "load_checkpoint",
                        lambda prefix: _FailingReader(load(prefix), out_of_memory))
    with pytest.raises(SourceError) as excinfo:
        sources.check_saved_model_variables(str(tmp_path / "m"))
    message = str(excinfo.value)
    assert "ran out of memory" in message and "more free memory" in message
    assert "corrupt" not in message

    # A real checksum failure is still corruption.
    monkeypatch.setattr(tf.train, "load_checkpoint", load)
    _corrupt_data(tmp_path / "m")
    with pytest.raises(SourceError, match="variables are corrupt"):
        sources.check_saved_model_variables(str(tmp_path / "m"))


def test_variables_bigger_than_half_the_free_memory_are_not_read_back(tmp_path, monkeypatch):
    """Reading one back needs its size again: with too little free, it is left to the
    loader's own checksum check instead of failing (or being killed) here."""
    from export_archive import memory, sources
    save_module(tmp_path / "m")
    load = tf.train.load_checkpoint
    corrupt = tf.errors.DataLossError(None, None, "Checksum does not match")
    monkeypatch.setattr(tf.train, "load_checkpoint",
                        lambda prefix: _FailingReader(load(prefix), corrupt))
    monkeypatch.setattr(memory, "available_bytes", lambda: 8)   # less than any weight
    with pytest.raises(SourceError, match="_CHECKPOINTABLE_OBJECT_GRAPH"):
        sources.check_saved_model_variables(str(tmp_path / "m"))   # only that is read
    monkeypatch.setattr(memory, "available_bytes", lambda: None)   # unknown: all are read
    with pytest.raises(SourceError, match="variables are corrupt: the variable '(?!_CHECK)"):
        sources.check_saved_model_variables(str(tmp_path / "m"))
