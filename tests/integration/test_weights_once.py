"""Every weight stored once in the checkpoint and created once in the serving graph.

Keras 3's stock ExportArchive saves each weight twice (the keras.Variable
wrapper and the tf.Variable it wraps are two trackables); see archive.py.
"""

import numpy as np
import pytest
import tensorflow as tf

import export_archive
from export_archive import describe
from helpers import models
from helpers.models import sample

pytestmark = pytest.mark.integration

STYLES = ["sequential", "functional", "subclassed"]


def checkpoint_entries(export_dir):
    names = [n for n, _ in tf.train.list_variables(str(export_dir / "variables" / "variables"))]
    return [n for n in names if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]


def serving_var_handles(export_dir):
    meta_graph = describe.serve_meta_graph(describe.read_saved_model_proto(str(export_dir)))
    return [n.name for n in meta_graph.graph_def.node if n.op == "VarHandleOp"]


def optimizer_variables(model):
    variables = model.optimizer.variables
    return list(variables() if callable(variables) else variables)


@pytest.mark.parametrize("with_optimizer", [False, True], ids=["model", "model+optimizer"])
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("flavor", ["keras3", "tf_keras"])
def test_each_weight_once(flavor, style, with_optimizer, tmp_path):
    model = models.single_input(flavor, style)
    cfg = {"endpoints": [{"name": "serve"}, {"name": "call_training", "training": True}]}
    expected = len(model.variables)
    if with_optimizer:
        cfg["variable_collections"] = [{"name": "optimizer_variables", "source": "optimizer"}]
        # The optimizer's slots and counters are legitimately extra weights.
        expected += len(optimizer_variables(model))
    export_archive.export(model, cfg, tmp_path / "m")

    assert len(checkpoint_entries(tmp_path / "m")) == expected
    assert len(serving_var_handles(tmp_path / "m")) == expected

    # The TF2 loader's Python attributes still work, pointing at the same weights.
    revived = tf.saved_model.load(str(tmp_path / "m"))
    assert len(revived.variables) == len(model.variables)
    assert len(revived.trainable_variables) == len(model.trainable_variables)
    for served, weight in zip(revived.variables, model.variables):
        np.testing.assert_array_equal(served.numpy(), np.asarray(weight))
    x = sample(4)
    np.testing.assert_allclose(revived.serve(x), model(x, training=False), atol=1e-5)
    if with_optimizer:
        assert len(revived.optimizer_variables) == len(optimizer_variables(model))


def test_checkpoint_bytes_match_weight_bytes(tmp_path):
    """Size follows from the count, but check the bytes too for a larger model."""
    import keras
    inp = keras.Input((256,))
    model = keras.Model(inp, keras.layers.Dense(512)(keras.layers.Dense(1024)(inp)))
    export_archive.export(model, {"endpoints": [{"name": "serve"}]}, tmp_path / "m")
    weight_bytes = sum(np.asarray(v).nbytes for v in model.weights)
    data = sum(f.stat().st_size for f in (tmp_path / "m" / "variables").iterdir())
    assert weight_bytes <= data <= 1.02 * weight_bytes


def test_counter_detects_duplication_in_stock_keras3(tmp_path):
    """The counters above see the duplication the stock archive produces (TF 2.16, Keras 3.12)."""
    import keras
    model = models.single_input("keras3", "functional")
    stock = keras.export.ExportArchive()
    stock.track(model)
    stock.add_endpoint("serve", model.call, [tf.TensorSpec((None, 3), tf.float32)])
    stock.write_out(str(tmp_path / "stock"), verbose=False)
    assert len(checkpoint_entries(tmp_path / "stock")) > len(model.variables)
    assert len(serving_var_handles(tmp_path / "stock")) > len(model.variables)
