"""Every example of the ExportArchive reference, through our config and through direct use.

Each export is round-tripped: written, reloaded with `tf.saved_model.load`,
every endpoint called at two batch sizes and compared with the in-memory model.
"""

import numpy as np
import pytest
import tensorflow as tf

import export_archive
from export_archive import archive
from helpers import models
from helpers.models import IN2_DIM, IN_DIM, OUT_DIM, sample
from helpers.outputs import single

pytestmark = pytest.mark.integration

FLAVORS = ["keras3", "tf_keras"]
STYLES = ["sequential", "functional", "subclassed"]
BATCHES = (5, 2)
SPEC = tf.TensorSpec(shape=(None, IN_DIM), dtype=tf.float32)
SPEC2 = tf.TensorSpec(shape=(None, IN2_DIM), dtype=tf.float32)


def stock_archive(flavor):
    """The upstream class, used exactly as the reference shows."""
    return models.keras_module(flavor).export.ExportArchive()


def assert_close(actual, expected, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), atol=atol, rtol=1e-5)


def write_direct(flavor, path, build):
    ea = stock_archive(flavor)
    build(ea)
    if flavor == "keras3":
        ea.write_out(str(path), verbose=False)
    else:
        ea.write_out(str(path))
    return tf.saved_model.load(str(path))


# ---- "export a model for inference"


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("flavor", FLAVORS)
def test_inference_endpoint(flavor, style, tmp_path):
    model = models.single_input(flavor, style)
    cfg = {"endpoints": [{"name": "serve", "input_signature": ["float32[?,3]"]}]}
    result = export_archive.export(model, cfg, tmp_path / "ours")
    assert result.endpoint_names == ["serve"]
    assert result.serving_default == "serve"
    # Keyed by the model's Input name where it has one (test_names.py), else args_0.
    assert list(result.endpoints[0].inputs.values()) == ["float32[?,3]"]

    def build(ea):
        ea.track(model)
        ea.add_endpoint(name="serve", fn=model.call, input_signature=[SPEC])
    direct = write_direct(flavor, tmp_path / "direct", build)
    ours = tf.saved_model.load(str(tmp_path / "ours"))
    for batch in BATCHES:
        x = sample(batch, seed=batch)
        expected = model(x, training=False)
        assert_close(ours.serve(x), expected)
        assert_close(direct.serve(x), expected)
        assert_close(single(ours.signatures["serving_default"](tf.constant(x))), expected)


# ---- "one endpoint for inference and one for a training-mode forward pass"


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("flavor", FLAVORS)
def test_inference_and_training_endpoints(flavor, style, tmp_path):
    model = models.single_input(flavor, style)
    cfg = {"endpoints": [
        {"name": "call_inference", "input_signature": ["float32[?,3]"]},
        {"name": "call_training", "training": True, "input_signature": ["float32[?,3]"]}]}
    export_archive.export(model, cfg, tmp_path / "ours")

    # The reference calls `model.call`; tf_keras's Model.call bypasses the call
    # context, so its BatchNormalization mixes in moving statistics in training
    # mode. There the direct path goes through model(...) as our endpoints do.
    call = model.call if flavor == "keras3" else model

    def build(ea):
        ea.track(model)
        ea.add_endpoint(name="call_inference", fn=lambda x: call(x, training=False),
                        input_signature=[SPEC])
        ea.add_endpoint(name="call_training", fn=lambda x: call(x, training=True),
                        input_signature=[SPEC])
    direct = write_direct(flavor, tmp_path / "direct", build)
    ours = tf.saved_model.load(str(tmp_path / "ours"))
    xs = [sample(batch, seed=batch) for batch in BATCHES]
    # Inference expectations first: an eager training-mode call updates the
    # BatchNormalization moving statistics that inference reads.
    inference = [model(x, training=False) for x in xs]
    training = [model(x, training=True) for x in xs]
    # Same order on the revived side: a training-mode endpoint updates the moving
    # statistics of the served model too (upstream behaviour, see docs/config.md).
    for i, x in enumerate(xs):
        # Batch statistics make the two modes differ; the test would be vacuous otherwise.
        assert np.abs(np.asarray(inference[i]) - np.asarray(training[i])).max() > 1e-3
        assert_close(ours.call_inference(x), inference[i])
        assert_close(direct.call_inference(x), inference[i])
    for i, x in enumerate(xs):
        assert_close(ours.call_training(x), training[i])
        assert_close(direct.call_training(x), training[i])
    # The seed's rule: the first endpoint is serving_default (checked on a fresh load,
    # since the training calls above moved the revived statistics).
    fresh = tf.saved_model.load(str(tmp_path / "ours"))
    assert_close(single(fresh.signatures["serving_default"](tf.constant(xs[0]))),
                 inference[0])


@pytest.mark.parametrize("flavor", FLAVORS)
def test_training_endpoint_with_dropout_is_stochastic(flavor, tmp_path):
    model = models.single_input(flavor, "functional", dropout=True)
    cfg = {"endpoints": [{"name": "serve"}, {"name": "call_training", "training": True}]}
    export_archive.export(model, cfg, tmp_path / "m")
    revived = tf.saved_model.load(str(tmp_path / "m"))
    x = sample(64)
    assert_close(revived.serve(x), model(x, training=False))
    first, second = revived.call_training(x).numpy(), revived.call_training(x).numpy()
    assert first.shape == (64, OUT_DIM)
    assert not np.allclose(first, second), "dropout must be active in the training endpoint"


# ---- "two positional input arguments"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_two_positional_inputs(flavor, tmp_path):
    model = models.two_positional(flavor)
    cfg = {"endpoints": [{"name": "serve", "input_signature": ["float32[?,3]", "float32[?,4]"]}]}
    export_archive.export(model, cfg, tmp_path / "ours")

    def build(ea):
        ea.track(model)
        ea.add_endpoint(name="serve", fn=model.call, input_signature=[SPEC, SPEC2])
    direct = write_direct(flavor, tmp_path / "direct", build)
    ours = tf.saved_model.load(str(tmp_path / "ours"))
    for batch in BATCHES:
        x1, x2 = sample(batch), sample(batch, IN2_DIM, seed=1)
        expected = model(x1, x2)
        assert_close(ours.serve(x1, x2), expected)
        assert_close(direct.serve(x1, x2), expected)


# ---- "one input argument that is a list of 2 tensors" / "dictionary inputs"


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
@pytest.mark.parametrize("flavor", FLAVORS)
def test_nested_inputs(flavor, as_dict, tmp_path):
    model = models.two_inputs(flavor, as_dict)
    leaf = ({"x1": "float32[?,3]", "x2": "float32[?,4]"} if as_dict
            else ["float32[?,3]", "float32[?,4]"])
    cfg = {"endpoints": [{"name": "serve", "input_signature": [leaf]}]}
    result = export_archive.export(model, cfg, tmp_path / "ours")
    if as_dict:
        # Dict keys become the signature's input keys, which TF Serving clients use.
        assert result.endpoints[0].inputs == {"x1": "float32[?,3]", "x2": "float32[?,4]"}

    specs = {"x1": SPEC, "x2": SPEC2} if as_dict else [SPEC, SPEC2]

    def build(ea):
        ea.track(model)
        ea.add_endpoint(name="serve", fn=model.call, input_signature=[specs])
    direct = write_direct(flavor, tmp_path / "direct", build)
    ours = tf.saved_model.load(str(tmp_path / "ours"))
    for batch in BATCHES:
        x = models.two_input_sample(batch, as_dict)
        expected = model(x)
        assert_close(ours.serve(x), expected)
        assert_close(direct.serve(x), expected)


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_nested_inputs_inferred(as_dict, tmp_path):
    model = models.two_inputs("keras3", as_dict)
    export_archive.export(model, {"endpoints": [{"name": "serve"}]}, tmp_path / "m")
    revived = tf.saved_model.load(str(tmp_path / "m"))
    for batch in BATCHES:
        x = models.two_input_sample(batch, as_dict)
        assert_close(revived.serve(x), model(x))


# ---- "an endpoint that is a tf.function"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_tf_function_endpoint(flavor, tmp_path):
    from helpers import factories
    model = models.single_input(flavor, "functional")
    cfg = {"endpoints": [{"name": "serve", "fn": "helpers.factories:make_serving_fn"}]}
    export_archive.export(model, cfg, tmp_path / "ours")

    serving_fn = factories.make_serving_fn(model)

    def build(ea):
        ea.track(model)
        ea.add_endpoint(name="serve", fn=serving_fn)
    direct = write_direct(flavor, tmp_path / "direct", build)
    ours = tf.saved_model.load(str(tmp_path / "ours"))
    for batch in BATCHES:
        x = sample(batch)
        assert_close(ours.serve(x), model(x, training=False))
    # Upstream keeps the traced shape, (2, 3) in the reference; ours relaxes the
    # batch dimension so the endpoint serves any batch size.
    x = sample(2)
    assert_close(direct.serve(x), model(x, training=False))
    with pytest.raises((TypeError, ValueError)):
        direct.serve(sample(5))


def test_factory_with_signature_and_output_keys(tmp_path):
    model = models.single_input("keras3", "functional")
    cfg = {"endpoints": [
        {"name": "doubled", "fn": "helpers.factories:make_doubled_with_signature"},
        {"name": "pair", "fn": "helpers.factories:make_two_outputs",
         "output_keys": ["prediction", "row_sum"]}]}
    result = export_archive.export(model, cfg, tmp_path / "m")
    assert set(result.endpoints[1].outputs) == {"prediction", "row_sum"}
    revived = tf.saved_model.load(str(tmp_path / "m"))
    x = sample(4)
    assert_close(revived.doubled(x)["doubled"], 2 * model(x, training=False))
    out = revived.signatures["pair"](args_0=tf.constant(x))
    assert_close(out["prediction"], model(x, training=False))
    assert_close(out["row_sum"], x.sum(axis=1))


# ---- add_variable_collection


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("flavor", FLAVORS)
def test_optimizer_variable_collection(flavor, style, tmp_path):
    model = models.single_input(flavor, style)
    cfg = {"endpoints": [{"name": "serve", "input_signature": ["float32[?,3]"]}],
           "variable_collections": [{"name": "optimizer_variables", "source": "optimizer"}]}
    result = export_archive.export(model, cfg, tmp_path / "ours")
    optimizer_vars = model.optimizer.variables
    optimizer_vars = optimizer_vars() if callable(optimizer_vars) else optimizer_vars
    assert result.variable_collections == {"optimizer_variables": len(optimizer_vars)}

    def build(ea):
        ea.track(model)
        ea.add_endpoint(name="serve", fn=model.call, input_signature=[SPEC])
        ea.add_variable_collection(name="optimizer_variables", variables=optimizer_vars)
    direct = write_direct(flavor, tmp_path / "direct", build)
    ours = tf.saved_model.load(str(tmp_path / "ours"))
    for revived in (ours, direct):
        restored = [v.numpy() for v in revived.optimizer_variables]
        assert len(restored) == len(optimizer_vars)
        for got, want in zip(restored, optimizer_vars):
            np.testing.assert_array_equal(got, np.asarray(want))


@pytest.mark.parametrize("source,expected", [
    ("trainable", "trainable_variables"), ("non_trainable", "non_trainable_variables"),
    ("all", "variables")])
def test_weight_collections(source, expected, tmp_path):
    model = models.single_input("keras3", "functional")
    cfg = {"endpoints": [{"name": "serve"}],
           "variable_collections": [{"name": "picked", "source": source}]}
    export_archive.export(model, cfg, tmp_path / "m")
    revived = tf.saved_model.load(str(tmp_path / "m"))
    want = getattr(model, expected)
    assert [v.shape for v in revived.picked] == [tuple(v.shape) for v in want]
    for got, w in zip(revived.picked, want):
        np.testing.assert_array_equal(got.numpy(), np.asarray(w))


def test_layer_collection(tmp_path):
    model = models.single_input("keras3", "functional")
    layer = model.layers[1]
    cfg = {"endpoints": [{"name": "serve"}],
           "variable_collections": [{"name": "first_dense", "source": f"layer:{layer.name}"}]}
    export_archive.export(model, cfg, tmp_path / "m")
    revived = tf.saved_model.load(str(tmp_path / "m"))
    assert len(revived.first_dense) == len(layer.variables) == 2


# ---- serving_default chosen by config


@pytest.mark.parametrize("flavor", FLAVORS)
def test_serving_default_names_another_endpoint(flavor, tmp_path):
    model = models.single_input(flavor, "functional")
    cfg = {"endpoints": [{"name": "serve"}, {"name": "call_training", "training": True}],
           "serving_default": "call_training"}
    result = export_archive.export(model, cfg, tmp_path / "m")
    assert result.serving_default == "call_training"
    assert [e.is_serving_default for e in result.endpoints] == [False, True]
    revived = tf.saved_model.load(str(tmp_path / "m"))
    x = sample(6)
    key = next(iter(revived.signatures["call_training"].structured_input_signature[1]))
    out = revived.signatures["serving_default"](**{key: tf.constant(x)})
    assert_close(list(out.values())[0], model(x, training=True))


def test_endpoint_named_serving_default(tmp_path):
    model = models.single_input("keras3", "functional")
    cfg = {"endpoints": [{"name": "serve"},
                         {"name": "serving_default", "training": True}]}
    export_archive.export(model, cfg, tmp_path / "m")
    revived = tf.saved_model.load(str(tmp_path / "m"))
    assert sorted(revived.signatures.keys()) == ["serve", "serving_default"]
    x = sample(4)
    assert_close(revived.serving_default(x), model(x, training=True))


# ---- the archives used directly keep the reference's behaviour


@pytest.mark.parametrize("flavor", FLAVORS)
def test_our_archive_classes_follow_the_reference(flavor, tmp_path):
    model = models.single_input(flavor, "sequential")
    ea = archive.archive_class(flavor)()
    ea.track(model)
    ea.add_endpoint(name="serve", fn=model.call, input_signature=[SPEC])
    ea.write_out(str(tmp_path / "m"))
    revived = tf.saved_model.load(str(tmp_path / "m"))
    x = sample(3)
    assert_close(revived.serve(x), model(x, training=False))
    assert sorted(revived.signatures.keys()) == ["serve", "serving_default"]
    assert len(revived.variables) == len(model.variables)
