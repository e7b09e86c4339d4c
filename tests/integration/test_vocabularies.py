"""Lookup vocabularies are exported as asset files, not as graph constants.

Keras's StringLookup / IntegerLookup keep an in-memory vocabulary in a tensor,
which a SavedModel would store as a `Const` in saved_model.pb (vocabularies.py).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import export_archive
from export_archive import describe
from helpers.models import keras_module

pytestmark = pytest.mark.integration

N_TOKENS = 20_000
TOKENS = [f"item_{i}" for i in range(N_TOKENS)]
CONFIG = {"endpoints": [{"name": "serve"}]}
CHECKED = {**CONFIG, "check": {"enabled": True}}


def largest_constant(export_dir):
    """Bytes of the largest Const tensor anywhere in the serving graph (functions too)."""
    graph = describe.serve_meta_graph(describe.read_saved_model_proto(str(export_dir))).graph_def
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return max((n.attr["value"].tensor.ByteSize() for n in nodes if n.op == "Const"), default=0)


def vocabulary_bytes(tokens):
    return sum(len(str(t)) for t in tokens)


def string_model(K, **lookup_kwargs):
    item = K.Input(shape=(), dtype="string", name="item")
    lookup = K.layers.StringLookup(vocabulary=TOKENS, name="item_lookup", **lookup_kwargs)
    index = lookup(item)
    vector = K.layers.Embedding(lookup.vocabulary_size(), 4, name="item_embedding")(index)
    return K.Model(item, K.layers.Dense(1, name="score")(vector))


@pytest.fixture(params=["keras3", "tf_keras"])
def K(request):
    return keras_module(request.param)


@pytest.mark.parametrize("lookup_kwargs", [{}, {"num_oov_indices": 3, "mask_token": "[MASK]"}],
                         ids=["default", "oov3+mask"])
def test_string_vocabulary_is_an_asset_and_serves_the_same(K, lookup_kwargs, tmp_path):
    model = string_model(K, **lookup_kwargs)
    table = model.get_layer("item_lookup").lookup_table
    # The serving check (TF Serving's loader, compared with the model) on one variant.
    result = export_archive.export(model, CHECKED if lookup_kwargs else CONFIG, tmp_path / "m")
    assert result.check_passed is not False

    # The tokens are a file under assets/, in index order; the graph holds no copy.
    (asset,) = os.listdir(tmp_path / "m" / "assets")
    lines = (tmp_path / "m" / "assets" / asset).read_text().splitlines()
    assert lines == TOKENS   # the OOV and mask tokens are the layer's, not the table's
    assert largest_constant(tmp_path / "m") < vocabulary_bytes(TOKENS) / 10
    # The caller's model is given back with its own table.
    assert model.get_layer("item_lookup").lookup_table is table

    served = tf.saved_model.load(str(tmp_path / "m")).signatures["serving_default"]
    for batch in (["item_0", "item_19999", "unknown", "[MASK]", "item_7"], ["item_123"]):
        x = tf.constant(batch)
        (out,) = served(item=x).values()
        np.testing.assert_allclose(out, model(x), atol=1e-6)


def test_integer_and_inverted_vocabularies_are_assets(K, tmp_path):
    ids = np.arange(1000, 1000 + N_TOKENS, dtype="int64")
    item = K.Input(shape=(), dtype="int64", name="item_id")
    index = K.layers.IntegerLookup(vocabulary=ids, name="id_lookup")(item)
    back = K.layers.StringLookup(vocabulary=TOKENS, invert=True, name="token_of")(index)
    model = K.Model(item, {"index": index, "token": back})
    export_archive.export(model, CONFIG, tmp_path / "m")

    assert len(os.listdir(tmp_path / "m" / "assets")) == 2
    assert largest_constant(tmp_path / "m") < vocabulary_bytes(TOKENS) / 10
    served = tf.saved_model.load(str(tmp_path / "m")).signatures["serving_default"]
    x = tf.constant([1000, 1000 + N_TOKENS - 1, 5, 1500], tf.int64)
    got, want = served(item_id=x), model(x)
    np.testing.assert_array_equal(got["index"], want["index"])
    np.testing.assert_array_equal(got["token"], want["token"])


def test_a_vocabulary_a_text_file_cannot_hold_stays_a_constant(K, tmp_path):
    tokens = TOKENS[:50] + ["two\nlines"]
    item = K.Input(shape=(), dtype="string", name="item")
    index = K.layers.StringLookup(vocabulary=tokens, name="item_lookup")(item)
    model = K.Model(item, index)
    export_archive.export(model, CONFIG, tmp_path / "m")

    assert not os.path.isdir(tmp_path / "m" / "assets") or not os.listdir(tmp_path / "m" / "assets")
    served = tf.saved_model.load(str(tmp_path / "m")).signatures["serving_default"]
    x = tf.constant(["two\nlines", "item_3", "two"])
    (out,) = served(item=x).values()
    np.testing.assert_array_equal(out, model(x))
