"""A SavedModel's big variables are restored from its checkpoint slice by slice.

`checkpoint_weights.lean_restore()` (used by `sources.load` for a tf_keras SavedModel, the
TFX Trainer's output, and for a plain TF2 SavedModel) must give exactly the model a stock
load gives, every weight and optimizer slot equal; must refuse a damaged shard as
TensorFlow does; and must hold the biggest table about once while loading, where stock
TensorFlow holds it about three times (bench/bench_scale.py).
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

tf_keras = pytest.importorskip("tf_keras")

from export_archive import checkpoint_weights, keras_weights, sources  # noqa: E402
from export_archive.config import ExportConfig  # noqa: E402
from helpers.load_peak import TABLE_BYTES, TABLE_ROWS, half_filled_table, peak_growth  # noqa: E402
from export_archive.saved_model_io import SourceError  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def small_stream(monkeypatch):
    """Everything over 1 KiB streams, in slices of 1000 bytes (rows never align)."""
    monkeypatch.setattr(keras_weights, "STREAM_BYTES", 1024)
    monkeypatch.setattr(keras_weights, "SLICE_BYTES", 1000)
    streamed = []
    stream_into = checkpoint_weights.UnreadTensor.stream_into

    def recording(self, variable):
        streamed.append(self.name)
        return stream_into(self, variable)
    monkeypatch.setattr(checkpoint_weights.UnreadTensor, "stream_into", recording)
    return streamed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An Embedding, a Conv2D, BatchNorm stats and Adam slots after one step, saved as a
    SavedModel the way a TFX Trainer saves it; random values everywhere. (path, inputs)"""
    path = str(tmp_path_factory.mktemp("trained") / "model")
    rng = np.random.default_rng(0)
    ids = tf_keras.Input(shape=(3,), dtype="int64", name="ids")
    image = tf_keras.Input(shape=(6, 6, 2), name="image")
    pooled = tf_keras.layers.GlobalAveragePooling1D()(
        tf_keras.layers.Embedding(700, 9, name="table")(ids))
    conv = tf_keras.layers.BatchNormalization(name="norm")(
        tf_keras.layers.Conv2D(5, 3, name="conv")(image))
    out = tf_keras.layers.Dense(3, name="score")(
        tf_keras.layers.Concatenate()([pooled, tf_keras.layers.Flatten()(conv)]))
    model = tf_keras.Model([ids, image], out)
    model.compile(optimizer="adam", loss="mse")
    x = [rng.integers(0, 700, (8, 3)), rng.normal(size=(8, 6, 6, 2)).astype("float32")]
    model.fit(x, rng.normal(size=(8, 3)), epochs=1, verbose=0)
    for weight in model.weights:
        weight.assign(rng.normal(size=weight.shape).astype(weight.dtype.as_numpy_dtype))
    model.save(path, save_format="tf")
    return path, x


def copy_of(trained, tmp_path):
    return shutil.copytree(trained[0], str(tmp_path / "model"))


def test_a_tf_keras_savedmodel_loads_as_stock(trained, small_stream):
    path, x = trained
    stock = tf_keras.models.load_model(path)
    lean = sources.load(path, ExportConfig.parse({"endpoints": [{"name": "serve"}]})).obj
    assert any("/embeddings/" in n for n in small_stream), small_stream
    assert any(n.startswith("optimizer/") for n in small_stream), small_stream
    assert [w.name for w in lean.weights] == [w.name for w in stock.weights]
    for a, b in zip(stock.weights, lean.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    for a, b in zip(stock.optimizer.variables(), lean.optimizer.variables()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    np.testing.assert_array_equal(stock(x), lean(x))


@pytest.mark.parametrize("shard_bytes", [None, 5000])
def test_a_plain_savedmodel_loads_as_stock(tmp_path, small_stream, shard_bytes):
    """Variables tf.saved_model.load creates uninitialised, of several dtypes and ranks,
    in one shard file or split over several (some tensors then in pieces: TF reads those)."""
    rng = np.random.default_rng(1)
    module = tf.Module()
    module.values = [tf.Variable(rng.normal(size=(300, 7)).astype("float32")),
                     tf.Variable(rng.integers(-9, 9, size=(40, 5, 3), dtype="int64")),
                     tf.Variable(rng.normal(size=(900,)).astype("float64")),
                     tf.Variable(rng.normal(size=(3,)).astype("float32")),
                     tf.Variable(rng.random(size=(1500, 2)) > 0.5)]
    if shard_bytes is None:     # TF restores no float16 tensor split over shards
        module.values.append(tf.Variable(rng.normal(size=(2000,)).astype("float16")))
    module.call = tf.function(lambda: [tf.reduce_sum(tf.cast(v, tf.float32)) for v in module.values],
                              input_signature=[])
    path = str(tmp_path / "plain")
    options = shard_bytes and tf.saved_model.SaveOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(shard_bytes))
    tf.saved_model.save(module, path, options=options)
    shards = [f for f in os.listdir(os.path.join(path, "variables")) if ".data-" in f]
    assert (len(shards) > 1) == bool(shard_bytes), shards
    lean = sources.load(path, ExportConfig.parse({"endpoints": [{"name": "serve"}]})).obj
    assert len(small_stream) >= (1 if shard_bytes else 3), small_stream
    if shard_bytes:   # a whole tensor streamed from a shard file other than the first
        entries = checkpoint_weights.read_bundle_index(os.path.join(path, "variables", "variables"))
        assert any(entries[name].shard_id > 0 for name in small_stream), small_stream
    stock = tf.saved_model.load(path)
    for a, b in zip(stock.values, lean.values):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_damaged_shard_is_refused_as_tensorflow_refuses_it(trained, tmp_path, small_stream):
    path = copy_of(trained, tmp_path)
    entries = checkpoint_weights.read_bundle_index(os.path.join(path, "variables", "variables"))
    table = next(e for k, e in entries.items() if "/embeddings/" in k)
    data = os.path.join(path, "variables", "variables.data-00000-of-00001")
    with open(data, "r+b") as f:          # one byte flipped in the middle of the table
        f.seek(table.offset + table.size // 2)
        byte = f.read(1)
        f.seek(table.offset + table.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SourceError, match="(?i)checksum"):
        sources.load(path, ExportConfig.parse({"endpoints": [{"name": "serve"}]}))
    assert small_stream, "the damaged table was not on the streamed path"
    with pytest.raises(tf.errors.DataLossError):     # and TF refuses it too
        tf_keras.models.load_model(path)


def test_a_truncated_shard_is_refused(trained, tmp_path, small_stream):
    path = copy_of(trained, tmp_path)
    data = os.path.join(path, "variables", "variables.data-00000-of-00001")
    os.truncate(data, os.path.getsize(data) // 2)
    with pytest.raises(SourceError, match="variables"):
        sources.load(path, ExportConfig.parse({"endpoints": [{"name": "serve"}]}))


def test_a_big_layer_variable_no_checkpoint_fills_gets_its_initializer(small_stream):
    with checkpoint_weights.lean_restore(tf_keras_layers=True) as on:
        assert on
        layer = tf_keras.layers.Dense(40, kernel_initializer=tf_keras.initializers.Constant(3.0))
        layer.build((None, 30))
    np.testing.assert_array_equal(layer.kernel.numpy(), np.full((30, 40), 3.0, "float32"))
    assert small_stream == []


def test_an_unread_tensor_read_elsewhere_is_the_tensor(tmp_path):
    variable = tf.Variable(np.arange(24, dtype="float32").reshape(8, 3))
    prefix = tf.train.Checkpoint(v=variable).write(str(tmp_path / "ckpt"))
    entries = checkpoint_weights.read_bundle_index(prefix)
    name, entry = next((k, e) for k, e in entries.items() if k.startswith("v/"))
    unread = checkpoint_weights.UnreadTensor(name, prefix + ".data-00000-of-00001", entry)
    np.testing.assert_array_equal(tf.convert_to_tensor(unread).numpy(), variable.numpy())


PEAK_SCRIPT = r"""
import tensorflow as tf, tf_keras
from export_archive import checkpoint_weights

before = status("VmRSS")
if sys.argv[2] == "lean":
    with checkpoint_weights.lean_restore(tf_keras_layers=True) as on:
        assert on
        model = tf_keras.models.load_model(sys.argv[1])
else:
    model = tf_keras.models.load_model(sys.argv[1])
print(json.dumps({"peak_growth": status("VmHWM") - before,
                  "sum": float(tf.reduce_sum(model.get_layer("table").embeddings[:, 0]))}))
"""


def test_the_table_is_held_once_while_restoring(tmp_path):
    model = half_filled_table(tf_keras)
    path = str(tmp_path / "table")
    model.save(path, save_format="tf")
    del model

    lean, stock = peak_growth(PEAK_SCRIPT, path, "lean"), peak_growth(PEAK_SCRIPT, path, "stock")
    assert lean["sum"] == stock["sum"] == TABLE_ROWS * 0.5
    assert lean["peak_growth"] < 1.5 * TABLE_BYTES, lean
    # Stock: the initializer's values, the restored tensor and the variable.
    assert stock["peak_growth"] > 2.5 * TABLE_BYTES, stock


def test_a_sharded_float16_tensor_is_not_called_corrupt(tmp_path):
    """TF's reader cannot read a float16 tensor a sharded save split in pieces ("Dtype
    half not supported"): the variables check must not report that sound file as damaged."""
    module = tf.Module()
    module.half = tf.Variable(np.arange(3000, dtype="float16"))
    path = str(tmp_path / "half")
    tf.saved_model.save(module, path, options=tf.saved_model.SaveOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(2000)))
    sources.check_saved_model_variables(path)   # raises SourceError on a damaged shard
