"""A Keras 3 `.keras` file loads with its big weights streamed into the variables.

`keras_weights.lean_weights()` (used by `sources.load`) must give exactly the model a
stock `keras.saving.load_model` gives, every weight and optimizer slot equal, and must
hold the biggest table about once while loading, where stock Keras holds it four or
five times (bench/bench_scale.py).
"""

import os
import struct
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
if not keras.__version__.startswith("3."):
    pytest.skip("Keras 3 `.keras` loading", allow_module_level=True)

from export_archive import keras_weights  # noqa: E402
from export_archive import sources  # noqa: E402
from export_archive.config import ExportConfig  # noqa: E402
from export_archive.saved_model_io import SourceError  # noqa: E402
from helpers.load_peak import TABLE_BYTES, TABLE_ROWS, half_filled_table, peak_growth  # noqa: E402

pytestmark = pytest.mark.integration


def mixed_model():
    """Variables of rank 1 to 4, an int table, a BatchNorm's non-trainable stats, and
    optimizer slots after one step: every way Keras assigns a weight on load."""
    rng = np.random.default_rng(0)
    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    image = keras.Input(shape=(8, 8, 2), name="image")
    embedded = keras.layers.Embedding(1000, 16, name="table")(ids)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)
    conv = keras.layers.Conv2D(4, 3, name="conv")(image)
    conv = keras.layers.BatchNormalization(name="norm")(conv)
    flat = keras.layers.Flatten()(conv)
    out = keras.layers.Dense(1, name="score")(keras.layers.Concatenate()([pooled, flat]))
    model = keras.Model([ids, image], out)
    model.compile(optimizer="adam", loss="mse")
    x = [rng.integers(0, 1000, (16, 3)), rng.normal(size=(16, 8, 8, 2)).astype("float32")]
    model.fit(x, rng.normal(size=(16, 1)), epochs=1, verbose=0)
    for weight in model.weights:   # random values everywhere: zeros would hide a mix-up
        weight.assign(rng.normal(size=weight.shape).astype(weight.dtype))
    return model, x


def test_lean_load_gives_the_stock_model(tmp_path, monkeypatch):
    model, x = mixed_model()
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    stock = keras.saving.load_model(path)
    # Small enough that the table (64 KiB) streams, in several slices of 16 KiB.
    monkeypatch.setattr(keras_weights, "STREAM_BYTES", 16 * 1024)
    monkeypatch.setattr(keras_weights, "SLICE_BYTES", 16 * 1024)
    streamed, in_place, extracted = [], [], []
    assign_into = keras_weights.StreamedDataset.assign_into
    monkeypatch.setattr(keras_weights.StreamedDataset, "assign_into",
                        lambda self, v: (streamed.append(self.shape), assign_into(self, v)))
    stored_member = keras_weights.stored_member
    monkeypatch.setattr(keras_weights, "stored_member",
                        lambda *a: in_place.append(a[1]) or stored_member(*a))
    extract = zipfile.ZipFile.extract
    monkeypatch.setattr(zipfile.ZipFile, "extract",
                        lambda self, *a, **k: extracted.append(a) or extract(self, *a, **k))
    lean = sources.load(path, ExportConfig.parse({"endpoints": [{"name": "serve"}]})).obj

    assert (1000, 16) in streamed, "the table was not streamed"
    # Read in place from the archive: not extracted to disk first.
    assert in_place == ["model.weights.h5"] and extracted == [], (in_place, extracted)
    assert len(lean.weights) == len(stock.weights)
    for a, b in zip(stock.weights, lean.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    for a, b in zip(stock.optimizer.variables, lean.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    np.testing.assert_array_equal(stock.predict(x, verbose=0), lean.predict(x, verbose=0))
    # The patches are gone once the load is over.
    from keras.src.saving import saving_lib
    assert saving_lib.is_memory_sufficient.__module__ == saving_lib.__name__


@keras.saving.register_keras_serializable(package="test_lean_load")
class KeepsOneVariable(keras.layers.Layer):
    """Saves both variables but loads back only the first: the second keeps whatever
    its initializer gives when the model is built."""

    def build(self, input_shape):
        self.loaded = self.add_weight(shape=(64, 64), initializer="ones", name="loaded")
        self.kept = self.add_weight(shape=(64, 64), name="kept",
                                    initializer=keras.initializers.RandomNormal(seed=7))

    def call(self, x):
        return x @ self.loaded + x @ self.kept

    def load_own_variables(self, store):
        self.loaded.assign(store["0"])


def test_a_variable_the_file_does_not_fill_gets_its_initializer(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((64,)), KeepsOneVariable(name="keep")])
    model.get_layer("keep").loaded.assign(np.full((64, 64), 3.0, "float32"))
    model.get_layer("keep").kept.assign(np.full((64, 64), 5.0, "float32"))
    path = str(tmp_path / "keep.keras")
    model.save(path)
    stock = keras.saving.load_model(path).get_layer("keep")
    monkeypatch.setattr(keras_weights, "STREAM_BYTES", 1024)   # both variables are "big"
    with keras_weights.lean_weights() as on:
        assert on
        lean = keras.saving.load_model(path).get_layer("keep")
    np.testing.assert_array_equal(np.asarray(lean.loaded), np.full((64, 64), 3.0))
    # Not zeros (the lean path's placeholder): the seeded initializer's values, as stock.
    assert np.asarray(stock.kept).std() > 0.01   # RandomNormal(stddev=0.05)
    np.testing.assert_array_equal(np.asarray(lean.kept), np.asarray(stock.kept))


def test_a_streamed_dataset_read_whole_elsewhere_is_the_array(tmp_path):
    """A consumer that is not `variable.assign` gets the values, read whole."""
    import h5py
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f["x"] = np.arange(12, dtype="float32").reshape(4, 3)
    with h5py.File(tmp_path / "w.h5", "r") as f:
        value = keras_weights.StreamedDataset(f["x"])
        np.testing.assert_array_equal(np.asarray(value), np.arange(12).reshape(4, 3))
        np.testing.assert_array_equal(value[1:3], [[3, 4, 5], [6, 7, 8]])
        assert len(value) == 4


PEAK_SCRIPT = r"""
import keras, tensorflow as tf
from export_archive import keras_weights

before = status("VmRSS")
if sys.argv[2] == "lean":
    with keras_weights.lean_weights() as on:
        assert on
        model = keras.saving.load_model(sys.argv[1])
else:
    model = keras.saving.load_model(sys.argv[1])
print(json.dumps({"peak_growth": status("VmHWM") - before, "start": before,
                  "sum": float(tf.reduce_sum(model.get_layer("table").embeddings[:, 0]))}))
"""


def test_the_table_is_held_once_while_loading(tmp_path):
    """Peak RSS growth of the load: the kernel's high-water mark (VmHWM, exact, not a
    poll) over the RSS once TF and Keras are imported (their import peaks lower)."""
    model = half_filled_table(keras)
    path = str(tmp_path / "table.keras")
    model.save(path)
    del model

    lean, stock = peak_growth(PEAK_SCRIPT, path, "lean"), peak_growth(PEAK_SCRIPT, path, "stock")
    assert lean["sum"] == stock["sum"] == TABLE_ROWS * 0.5
    # The variable itself is one copy; slices and TF's bookkeeping add a little.
    assert lean["peak_growth"] < 1.5 * TABLE_BYTES, lean
    # Stock Keras holds the file buffer, the array and the tensor too: the test can fail.
    assert stock["peak_growth"] > 2.5 * TABLE_BYTES, stock


def test_a_damaged_weights_member_is_refused(tmp_path, monkeypatch):
    """Read in place, the weights file is checked against the archive's CRC-32 first, as
    zipfile checks a member it reads whole: a flipped byte is refused, not loaded."""
    model, _ = mixed_model()
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("model.weights.h5")
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_bytes, extra_bytes = struct.unpack("<HH", f.read(4))
        middle = info.header_offset + 30 + name_bytes + extra_bytes + info.file_size // 2
        f.seek(middle)
        byte = f.read(1)
        f.seek(middle)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(keras_weights, "STREAM_BYTES", 16 * 1024)
    with pytest.raises(SourceError, match="CRC-32"):
        sources.load(path, ExportConfig.parse({"endpoints": [{"name": "serve"}]}))



def test_a_compressed_weights_member_is_extracted_not_read_in_place(tmp_path, monkeypatch):
    """A `.keras` zip re-packed with compression (Keras itself stores) cannot be read in
    place: Keras's extract path loads it, with the same values."""
    model, _ = mixed_model()
    stored, deflated = str(tmp_path / "stored.keras"), str(tmp_path / "deflated.keras")
    model.save(stored)
    with zipfile.ZipFile(stored) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as out:
        for name in src.namelist():
            out.writestr(name, src.read(name))
    monkeypatch.setattr(keras_weights, "STREAM_BYTES", 16 * 1024)
    in_place = []
    stored_member = keras_weights.stored_member
    monkeypatch.setattr(keras_weights, "stored_member",
                        lambda *a: in_place.append(a[1]) or stored_member(*a))
    lean = sources.load(deflated, ExportConfig.parse({"endpoints": [{"name": "serve"}]})).obj
    assert in_place == []
    for a, b in zip(model.weights, lean.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
