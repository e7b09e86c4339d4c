"""Everything a serving function touches is tracked, and nothing asked for is lost.

The three patterns of issue 22 (a factory's threshold table, a vocabulary-file
table, preprocessing layers applied outside the model) each export through the
config's `track`, reload in the serving check's clean TF1-loader process (the
way TF Serving loads them) and answer as the in-memory function does, at two
batch sizes. Untracked resources are input errors naming the endpoint, the
resource and the fix. Optimizer collections of restored models hold every
variable, equal in value.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import export_archive
from export_archive import check
from export_archive.config import ConfigError, InputError
from export_archive.tracking import UntrackedResourceError
from helpers import models, track_factories

pytestmark = pytest.mark.integration

FACTORIES = "helpers.track_factories"
FLAVORS = ["keras3", "tf_keras"]


@pytest.fixture(scope="module", params=FLAVORS)
def model(request):
    return models.single_input(request.param, "functional")


@pytest.fixture
def vocabulary(tmp_path, monkeypatch):
    path = tmp_path / "source" / "vocab.txt"
    path.parent.mkdir()
    path.write_text("\n".join(track_factories.WORDS) + "\n")
    monkeypatch.setattr(track_factories, "VOCABULARY_PATH", str(path))
    return path


def served(export_dir, signature, inputs):
    """The signature's outputs as the serving check's TF-only process computes them:
    the TF1 SavedModel loader, tag `serve`, run by tensor names in a session."""
    from tensorflow_serving.apis import prediction_log_pb2
    logs = []
    for batch in inputs:
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.model_spec.signature_name = signature
        for key, value in batch.items():
            log.predict_log.request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(log)
    data = check.run_contract(str(export_dir), logs)
    failed = [r for r in data["results"] if not r["passed"]]
    assert not failed, failed
    return [{k: tf.make_ndarray(v) for k, v in log.predict_log.response.outputs.items()}
            for log in data["responses"]]


def assert_same(served_outputs, expected_outputs):
    for got, want in zip(served_outputs, expected_outputs):
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_allclose(got[key], np.asarray(want[key]), rtol=1e-5, atol=1e-5)


def parity_passed(result, name):
    rows = [r for r in result.checks if r["check"] == "parity" and r["endpoint"] == name]
    assert rows and all(r["passed"] for r in rows), result.checks


# ---- (a) a factory's threshold table, tracked through `track`


def test_threshold_table_tracked_by_config(model, tmp_path):
    config = {"endpoints": [{"name": "serve", "fn": f"{FACTORIES}:serve_with_thresholds"}],
              "track": [f"{FACTORIES}:thresholds_table"]}
    result = export_archive.export(model, config, tmp_path / "out", check=True)
    assert result.check_passed
    parity_passed(result, "serve")
    fn = track_factories.serve_with_thresholds(model)
    batches = [models.sample(1, seed=1), models.sample(7, seed=2)]
    assert_same(served(tmp_path / "out", "serve", [{"x": x} for x in batches]),
                [fn(tf.constant(x)) for x in batches])


def test_untracked_threshold_table_is_an_input_error(model, tmp_path):
    config = {"endpoints": [{"name": "serve",
                             "fn": f"{FACTORIES}:serve_with_untracked_thresholds"}]}
    with pytest.raises(UntrackedResourceError) as excinfo:
        export_archive.export(model, config, tmp_path / "out")
    error = excinfo.value
    assert isinstance(error, ConfigError) and isinstance(error, InputError)
    assert error.path == "endpoints[0].fn"
    assert "endpoint 'serve'" in str(error) and "StaticHashTable" in str(error)
    assert '"track"' in error.fix and "build it in the model" in error.fix
    assert not os.path.exists(tmp_path / "out")


# ---- (b) a vocabulary-file table, returned by the factory beside its function


def test_vocabulary_table_travels_as_an_asset(model, tmp_path, vocabulary):
    config = {"endpoints": [{"name": "serve", "fn": f"{FACTORIES}:serve_with_vocabulary"}]}
    out = tmp_path / "out"
    result = export_archive.export(model, config, out, check=True)
    assert result.check_passed
    parity_passed(result, "serve")
    assert (out / "assets" / "vocab.txt").read_text() == vocabulary.read_text()
    made = track_factories.serve_with_vocabulary(model)
    fn = made["fn"]
    shutil.rmtree(vocabulary.parent)   # the served model must not need the original file
    batches = [(models.sample(2, seed=3), np.array([b"blue", b"nope"], dtype=object)),
               (models.sample(5, seed=4), np.array([b"red", b"green", b"blue", b"red", b""],
                                                   dtype=object))]
    outputs = served(out, "serve", [{"x": x, "word": w} for x, w in batches])
    assert_same(outputs, [fn(tf.constant(x), tf.constant(w)) for x, w in batches])
    np.testing.assert_array_equal(outputs[0]["word_id"], [2, -1])


def test_written_export_is_checked_for_assets_and_signatures(model, tmp_path, vocabulary):
    """What `export` checks on the staging directory before publishing, shown on a
    damaged copy: an asset the graph reads that is missing from assets/, and an
    endpoint that is not a signature."""
    from export_archive import tracking
    config = {"endpoints": [{"name": "serve", "fn": f"{FACTORIES}:serve_with_vocabulary"}]}
    export_archive.export(model, config, tmp_path / "out")
    tracking.verify_assets(str(tmp_path / "out"))
    tracking.verify_signatures(str(tmp_path / "out"), ["serve"])
    with pytest.raises(ConfigError) as excinfo:
        tracking.verify_signatures(str(tmp_path / "out"), ["serve", "extra"])
    assert excinfo.value.path == "endpoints[1].name"
    os.remove(tmp_path / "out" / "assets" / "vocab.txt")
    with pytest.raises(UntrackedResourceError) as excinfo:
        tracking.verify_assets(str(tmp_path / "out"))
    assert "'vocab.txt'" in str(excinfo.value)


def test_untracked_vocabulary_table_names_the_file(model, tmp_path, vocabulary):
    config = {"endpoints": [{"name": "lookup",
                             "fn": f"{FACTORIES}:serve_with_untracked_vocabulary"}]}
    with pytest.raises(UntrackedResourceError) as excinfo:
        export_archive.export(model, config, tmp_path / "out")
    assert f"vocabulary file {vocabulary}" in str(excinfo.value)
    assert "endpoint 'lookup'" in str(excinfo.value)


def test_file_read_by_path_is_refused_where_stock_keras_exports_it(model, tmp_path,
                                                                  vocabulary):
    fn, signature = track_factories.serve_reading_vocabulary_by_path(model)
    # Stock Keras writes it: the served graph then reads an absolute path.
    stock = _stock_archive(model)
    stock.track(model)
    stock.add_endpoint("serve", fn, signature)
    stock.write_out(str(tmp_path / "stock"))
    assert not os.path.exists(tmp_path / "stock" / "assets" / "vocab.txt")
    config = {"endpoints": [{"name": "serve",
                             "fn": f"{FACTORIES}:serve_reading_vocabulary_by_path"}]}
    with pytest.raises(UntrackedResourceError) as excinfo:
        export_archive.export(model, config, tmp_path / "out")
    assert f"reads the file {str(vocabulary)!r} by its path" in str(excinfo.value)


def _stock_archive(model):
    import tf_keras
    if isinstance(model, tf_keras.Model):
        return tf_keras.export.ExportArchive()
    import keras
    return keras.export.ExportArchive()


# ---- (c) preprocessing layers adapted separately, applied before the model


def test_preprocessing_layers_outside_the_model(model, tmp_path):
    config = {"endpoints": [{"name": "serve_raw", "fn": f"{FACTORIES}:serve_preprocessed"}],
              "track": [f"{FACTORIES}:preprocessing"]}
    out = tmp_path / "out"
    result = export_archive.export(model, config, out, check=True)
    assert result.check_passed
    parity_passed(result, "serve_raw")
    fn, _ = track_factories.serve_preprocessed(model)
    rng = np.random.default_rng(5)
    batches = [(rng.normal(size=(n, 2)).astype("float32"),
                np.array([b"red", b"blue", b"purple"][:n], dtype=object)) for n in (1, 3)]
    outputs = served(out, "serve_raw", [{"numbers": x, "color": c} for x, c in batches])
    expected = [fn(tf.constant(x), tf.constant(c)) for x, c in batches]
    assert_same([{"out": next(iter(o.values()))} for o in outputs],
                [{"out": e} for e in expected])


def test_preprocessing_layers_untracked_name_the_layer(model, tmp_path):
    config = {"endpoints": [{"name": "serve_raw", "fn": f"{FACTORIES}:serve_preprocessed"}]}
    with pytest.raises(UntrackedResourceError) as excinfo:
        export_archive.export(model, config, tmp_path / "out")
    assert "StringLookup layer" in str(excinfo.value)


# ---- track entries


def test_track_layer_by_name_and_unknown_names(model, tmp_path):
    result = export_archive.export(
        model, {"endpoints": [{"name": "serve"}], "track": [f"layer:{models.OUTPUT_NAME}"]},
        tmp_path / "out")
    assert result.endpoint_names == ["serve"]
    with pytest.raises(ConfigError) as excinfo:
        export_archive.export(model, {"endpoints": [{"name": "serve"}],
                                      "track": ["layer:nope"]}, tmp_path / "out2")
    assert excinfo.value.path == "track[0]"
    assert f"layer:{models.OUTPUT_NAME}" in excinfo.value.allowed
    with pytest.raises(ConfigError) as excinfo:
        export_archive.export(model, {"endpoints": [{"name": "serve"}],
                                      "track": [f"{FACTORIES}:WORDS"]}, tmp_path / "out3")
    assert excinfo.value.path == "track[0]" and "not a TensorFlow trackable" in str(
        excinfo.value)


def test_the_python_archive_tracks_as_stock(model, tmp_path):
    """`archive.archive_class(...)().track()` does what the stock `track()` does: a
    tracked table is saved and serves, in our archive as in the stock one."""
    from export_archive import archive
    flavor = "tf_keras" if "tf_keras" in type(model).__module__ else "keras3"
    fn = track_factories.serve_with_thresholds(model)
    table = track_factories.thresholds_table(model)
    x = models.sample(4, seed=6)
    for name, made in (("ours", archive.archive_class(flavor)()), ("stock", _stock_archive(model))):
        made.track(model)
        made.track(table)
        made.add_endpoint("serve", fn)
        made.write_out(str(tmp_path / name))
        revived = tf.saved_model.load(str(tmp_path / name))
        np.testing.assert_allclose(revived.serve(x)["threshold"], fn(x)["threshold"])


# ---- optimizer collections: every variable, equal in value


@pytest.mark.parametrize("saved_as", ["saved_model", "h5", "in_memory"])
def test_tf_keras_optimizer_collection_holds_every_variable(saved_as, tmp_path):
    import tf_keras
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(4),
                                 tf_keras.layers.Dense(2)])
    model.compile(optimizer=tf_keras.optimizers.Adam(0.01), loss="mse")
    model.fit(models.sample(8), np.ones((8, 2), "float32"), epochs=2, batch_size=4, verbose=0)
    trained = [v.numpy() for v in model.optimizer.variables]
    assert len(trained) == 9   # iterations + m and v of 4 weights
    source = {"saved_model": str(tmp_path / "k2sm"), "h5": str(tmp_path / "m.h5"),
              "in_memory": model}[saved_as]
    if saved_as != "in_memory":
        model.save(source)
    config = {"endpoints": [{"name": "serve"}],
              "variable_collections": [{"name": "optimizer_variables", "source": "optimizer"}]}
    result = export_archive.export(source, config, tmp_path / "out")
    assert result.variable_collections == {"optimizer_variables": 9}
    revived = tf.saved_model.load(str(tmp_path / "out"))
    restored = [v.numpy() for v in revived.optimizer_variables]
    assert len(restored) == 9
    for got, want in zip(restored, trained):
        np.testing.assert_array_equal(got, want)
    assert restored[0] == 4   # two epochs of two steps: iterations was restored too


def test_untrained_optimizer_is_built_before_collecting(tmp_path):
    import tf_keras
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    config = {"endpoints": [{"name": "serve"}],
              "variable_collections": [{"name": "opt", "source": "optimizer"}]}
    result = export_archive.export(model, config, tmp_path / "out")
    assert result.variable_collections == {"opt": 5}


def test_lost_collection_variables_are_an_error(tmp_path, monkeypatch):
    """The written collection is read back and compared with its source."""
    from export_archive import tracking, writer
    model = models.single_input("keras3", "sequential")
    config = {"endpoints": [{"name": "serve"}],
              "variable_collections": [{"name": "weights", "source": "trainable"}]}
    real = writer.build_archive

    def dropping_one(*args, **kwargs):
        built = real(*args, **kwargs)
        where, variables = built.collection_sources["weights"]
        built.collection_sources["weights"] = (where, variables + variables[:1])
        return built
    monkeypatch.setattr(writer, "build_archive", dropping_one)
    with pytest.raises(tracking.LostVariablesError) as excinfo:
        export_archive.export(model, config, tmp_path / "out")
    assert excinfo.value.path == "variable_collections[0].source"
    assert "where the source holds" in str(excinfo.value)
    assert not os.path.exists(tmp_path / "out")


def test_keras3_file_optimizer_collection_equals_the_trained_one(tmp_path):
    model = models.single_input("keras3", "functional")
    model.save(tmp_path / "m.keras")
    trained = [np.asarray(v) for v in model.optimizer.variables]
    config = {"endpoints": [{"name": "serve"}],
              "variable_collections": [{"name": "optimizer_variables", "source": "optimizer"}]}
    result = export_archive.export(str(tmp_path / "m.keras"), config, tmp_path / "out")
    assert result.variable_collections == {"optimizer_variables": len(trained)}
    revived = tf.saved_model.load(str(tmp_path / "out"))
    for got, want in zip(revived.optimizer_variables, trained):
        np.testing.assert_array_equal(got.numpy(), want)
