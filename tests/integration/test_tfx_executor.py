"""ModelExporter's executor over real artifact directories, laid out as Trainer leaves them."""

import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

pytest.importorskip("tfx")

from tfx.dsl.components.base import base_beam_executor  # noqa: E402
from tfx.types import standard_artifacts  # noqa: E402
from tfx.utils import path_utils  # noqa: E402

from export_archive.components.tfx import spec  # noqa: E402
from export_archive.components.tfx.executor import Executor  # noqa: E402
from export_archive.config import ConfigError  # noqa: E402
from export_archive.describe import describe  # noqa: E402
from export_archive.sources import SourceError  # noqa: E402
from helpers import models  # noqa: E402
from helpers import tfx_fixtures as fx  # noqa: E402
from helpers.tfx_run import Run  # noqa: E402
from helpers.models import sample  # noqa: E402
from helpers.outputs import single

pytestmark = pytest.mark.integration

SERVE = {"endpoints": [{"name": "serve"}]}


def save_trainer_style(layout, serving_dir):
    """Saves a model the way a Trainer run_fn does; returns the in-memory model."""
    if layout == "tf_saved_model_of_tf_keras":      # the TFX examples' way
        model = models.single_input("tf_keras", "functional")
        tf.saved_model.save(model, serving_dir)
    elif layout == "keras3_file":
        model = models.single_input("keras3", "functional")
        os.makedirs(serving_dir, exist_ok=True)
        model.save(os.path.join(serving_dir, "model.keras"))
    elif layout == "tf_keras_save_format_tf":
        model = models.single_input("tf_keras", "functional")
        model.save(serving_dir, save_format="tf")
    else:
        raise ValueError(layout)
    return model


FLAVORS = {"tf_saved_model_of_tf_keras": "saved_model", "keras3_file": "keras3",
           "tf_keras_save_format_tf": "tf_keras"}


@pytest.mark.parametrize("layout", sorted(FLAVORS))
def test_trainer_layouts(tmp_path, layout):
    run = Run(tmp_path)
    model = save_trainer_style(layout, run.trainer_serving_dir)
    config = {"endpoints": [{"name": "serve"}, {"name": "serve_keyed", "output_keys": ["y"]}]}
    run.do(config)   # the component's default: the serving check runs

    assert os.path.isfile(os.path.join(run.serving_dir, "saved_model.pb"))
    # Pusher, InfraValidator and Evaluator find the model where they find Trainer's.
    assert path_utils.serving_model_path(run.model.uri) == run.serving_dir
    assert not os.path.exists(os.path.join(run.serving_dir, "export"))
    assert sorted(os.listdir(run.model.uri)) == ["Format-Serving"]

    assert json.loads(run.model.get_string_custom_property(spec.ENDPOINTS_PROPERTY)) == [
        "serve", "serve_keyed"]
    assert run.model.get_string_custom_property(spec.SERVING_DEFAULT_PROPERTY) == "serve"
    assert run.model.get_string_custom_property(spec.FLAVOR_PROPERTY) == FLAVORS[layout]
    assert run.model.get_string_custom_property(spec.SERVING_CHECK_PROPERTY) == "passed"

    for name in (spec.REPORT_JSON, spec.REPORT_MARKDOWN, spec.REPORT_HTML):
        assert os.path.getsize(os.path.join(run.report.uri, name)) > 0
    with open(os.path.join(run.report.uri, spec.REPORT_JSON)) as f:
        report = json.load(f)
    assert [e["name"] for e in report["endpoints"]] == ["serve", "serve_keyed"]
    assert report["serving_default"] == "serve"
    assert report["output_dir"] == run.serving_dir
    with open(os.path.join(run.report.uri, spec.REPORT_MARKDOWN)) as f:
        assert "`serve_keyed`" in f.read()

    assert {s.name for s in describe(run.serving_dir)} == {
        "serve", "serve_keyed", "serving_default"}
    revived = tf.saved_model.load(run.serving_dir)
    for batch in (5, 2):
        x = sample(batch, seed=batch)
        np.testing.assert_allclose(revived.serve(x), model(x, training=False), atol=1e-5)
        np.testing.assert_allclose(single(revived.signatures["serving_default"](
            tf.constant(x))), model(x, training=False), atol=1e-5)
        np.testing.assert_allclose(revived.serve_keyed(x)["y"], model(x, training=False),
                                   atol=1e-5)


def test_training_endpoint_with_check_disabled(tmp_path):
    """A BatchNormalization model's training endpoint fails the default check's state
    probe; with the check off it is exported and trains-mode outputs match."""
    run = Run(tmp_path)
    model = save_trainer_style("tf_saved_model_of_tf_keras", run.trainer_serving_dir)
    config = {"endpoints": [{"name": "serve"}, {"name": "serve_training", "training": True}],
              "check": {"enabled": False}}
    run.do(config)
    assert run.model.get_string_custom_property(spec.SERVING_CHECK_PROPERTY) == ""
    revived = tf.saved_model.load(run.serving_dir)
    x = sample(5)
    np.testing.assert_allclose(revived.serve_training(x), model(x, training=True), atol=1e-5)


def test_executor_with_context_and_rerun_overwrites(tmp_path):
    run = Run(tmp_path)
    model = save_trainer_style("keras3_file", run.trainer_serving_dir)
    context = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=None, tmp_dir=str(tmp_path / "exec_tmp"), unique_id="x")
    no_check = {"check": {"enabled": False}}   # this test is about the output dir only
    run.do({**SERVE, **no_check}, executor=Executor(context))
    # A retried execution writes into the same output URI: it replaces, not refuses.
    run.do({"endpoints": [{"name": "serve_again"}], **no_check}, executor=Executor(context))
    assert {s.name for s in describe(run.serving_dir)} == {"serve_again", "serving_default"}
    assert json.loads(run.model.get_string_custom_property(spec.ENDPOINTS_PROPERTY)) == [
        "serve_again"]
    x = sample(3)
    revived = tf.saved_model.load(run.serving_dir)   # held: its functions use its variables
    np.testing.assert_allclose(revived.serve_again(x),
                               model(x, training=False), atol=1e-5)


def test_trainer_artifact_without_a_model(tmp_path):
    run = Run(tmp_path)
    os.makedirs(run.trainer_serving_dir)
    with open(os.path.join(run.trainer_serving_dir, "notes.txt"), "w") as f:
        f.write("no model here")
    with pytest.raises(SourceError) as err:
        run.do(SERVE)
    message = str(err.value)
    assert "saved_model.pb" in message and ".keras" in message and "notes.txt" in message
    assert run.trainer_serving_dir in message
    assert not os.path.exists(os.path.join(run.serving_dir, "saved_model.pb"))


def test_trainer_artifact_without_format_serving(tmp_path):
    run = Run(tmp_path)
    with pytest.raises(SourceError) as err:
        run.do(SERVE)
    assert os.path.join(run.trainer_serving_dir) in str(err.value)
    assert "does not exist" in str(err.value)


FACTORY_MODULE = '''
import tensorflow as tf


def make_fn(model):
    def doubled(x):
        return {"doubled": 2.0 * model(x, training=False)}
    return doubled, [tf.TensorSpec((None, 3), tf.float32)]
'''


@pytest.fixture()
def forget_user_module():
    yield
    sys.modules.pop(spec.USER_MODULE, None)


def test_module_file_factory(tmp_path, forget_user_module):
    run = Run(tmp_path)
    model = save_trainer_style("keras3_file", run.trainer_serving_dir)
    module_file = tmp_path / "exporter_module.py"
    module_file.write_text(FACTORY_MODULE)
    config = {"endpoints": [{"name": "serve"}, {"name": "doubled", "fn": "user_module:make_fn"}]}
    run.do(config, module_file=str(module_file))
    sigs = {s.name: s for s in describe(run.serving_dir)}
    assert sigs["doubled"].outputs == {"doubled": "float32[?,2]"}
    x = sample(4)
    revived = tf.saved_model.load(run.serving_dir)
    np.testing.assert_allclose(revived.doubled(x)["doubled"],
                               2.0 * model(x, training=False), atol=1e-5)


def test_module_path_factory(tmp_path, forget_user_module):
    """module_path is what TFX passes once it has packaged the module file."""
    run = Run(tmp_path)
    model = save_trainer_style("keras3_file", run.trainer_serving_dir)
    config = {"endpoints": [{"name": "serve"},
                            {"name": "doubled", "fn": "user_module:make_doubled_with_signature"}],
              "check": {"enabled": False}}   # checked with module_file above
    run.do(config, module_path="helpers.factories")
    x = sample(2)
    revived = tf.saved_model.load(run.serving_dir)
    np.testing.assert_allclose(revived.doubled(x)["doubled"],
                               2.0 * model(x, training=False), atol=1e-5)


def test_module_path_track_entry(tmp_path, forget_user_module):
    """`track` reaches the component too: `user_module:attr` entries load from the
    component's module, like factories (issue 22's threshold-table pattern)."""
    run = Run(tmp_path)
    model = save_trainer_style("keras3_file", run.trainer_serving_dir)
    config = {"endpoints": [{"name": "serve", "fn": "user_module:serve_with_thresholds"}],
              "track": ["user_module:thresholds_table"], "check": {"enabled": False}}
    run.do(config, module_path="helpers.track_factories")
    x = sample(3)
    revived = tf.saved_model.load(run.serving_dir)
    expected = tf.gather([0.25, 0.75], tf.argmax(model(x, training=False), axis=1))
    np.testing.assert_allclose(revived.serve(x)["threshold"], expected)


def scalar_tf_keras_model():
    inputs = [tf_keras.Input((1,), name=n) for n in fx.SCALAR_FEATURES]
    h = tf_keras.layers.Dense(4, activation="relu")(tf_keras.layers.Concatenate()(inputs))
    return tf_keras.Model(inputs, tf_keras.layers.Dense(2)(h))


def test_schema_input_enables_tf_example_endpoint(tmp_path):
    run = Run(tmp_path)
    model = scalar_tf_keras_model()
    tf.saved_model.save(model, run.trainer_serving_dir)
    schema_uri = run.add_input(spec.SCHEMA_KEY, standard_artifacts.Schema,
                               tmp_path / "SchemaGen" / "schema" / "3")
    fx.write_schema(schema_uri, fx.SCALAR_SCHEMA)
    config = {"endpoints": [{"name": "serving_default", "kind": "tf_example",
                             "exclude_features": ["label"]},
                            {"name": "serve_features"}]}
    run.do(config)
    sigs = {s.name: s for s in describe(run.serving_dir)}
    assert sigs["serving_default"].inputs == {"examples": "string[?]"}
    assert run.model.get_string_custom_property(spec.SERVING_DEFAULT_PROPERTY) == \
        "serving_default"
    with open(os.path.join(run.report.uri, spec.REPORT_JSON)) as f:
        kinds = {e["name"]: e["kind"] for e in json.load(f)["endpoints"]}
    assert kinds == {"serving_default": "tf_example", "serve_features": "features"}

    revived = tf.saved_model.load(run.serving_dir)
    for batch in (5, 2):
        rows = fx.scalar_rows(batch, seed=batch)
        cols = fx.columns(rows, fx.SCALAR_FEATURES)
        want = model([cols[n] for n in fx.SCALAR_FEATURES], training=False)
        got = revived.signatures["serving_default"](examples=tf.constant(fx.serialize(rows)))
        np.testing.assert_allclose(single(got), want, atol=1e-5)


def test_transform_graph_input(tmp_path):
    run = Run(tmp_path)
    model = fx.transform_model(keras)
    os.makedirs(run.trainer_serving_dir)
    model.save(os.path.join(run.trainer_serving_dir, "model.keras"))
    graph_uri = run.add_input(spec.TRANSFORM_GRAPH_KEY, standard_artifacts.TransformGraph,
                              tmp_path / "Transform" / "transform_graph" / "4")
    fx.build_transform_graph(graph_uri)
    config = {"endpoints": [{"name": "serving_default", "kind": "tf_example",
                             "transform": True, "exclude_features": ["label"]}]}
    run.do(config)
    assert os.listdir(os.path.join(run.serving_dir, "assets")) == [fx.VOCAB_FILENAME]
    rows = fx.transform_rows(5, seed=2, with_label=False)
    want = fx.expected_with_transform(graph_uri, model, rows)
    revived = tf.saved_model.load(run.serving_dir)
    got = revived.signatures["serving_default"](
        examples=tf.constant(fx.serialize(rows)))
    np.testing.assert_allclose(single(got), want, atol=1e-5)


def test_tf_example_without_schema_input_fails(tmp_path):
    run = Run(tmp_path)
    save_trainer_style("keras3_file", run.trainer_serving_dir)
    with pytest.raises(ConfigError) as err:
        run.do({"endpoints": [{"name": "serve", "kind": "tf_example"}]})
    assert err.value.path == "endpoints[0].kind"


@pytest.mark.parametrize("blessed", [0, 1], ids=["not_blessed", "blessed"])
def test_model_blessing_gates_the_export(tmp_path, blessed):
    """As Pusher: an unblessed ModelBlessing publishes nothing (and loads no model),
    says why in MLMD and the report, and the execution succeeds."""
    run = Run(tmp_path)
    model = save_trainer_style("keras3_file", run.trainer_serving_dir)
    blessing_uri = run.add_input(spec.MODEL_BLESSING_KEY, standard_artifacts.ModelBlessing,
                                 tmp_path / "Evaluator" / "blessing" / "3")
    run.extra_inputs[spec.MODEL_BLESSING_KEY][0].set_int_custom_property("blessed", blessed)
    run.do(SERVE)
    published = run.model.get_int_custom_property(spec.PUBLISHED_PROPERTY)
    with open(os.path.join(run.report.uri, spec.REPORT_JSON)) as f:
        report = json.load(f)
    if blessed:
        assert published == 1
        revived = tf.saved_model.load(run.serving_dir)
        for batch in (3, 1):
            x = sample(batch)
            served = single(revived.signatures["serving_default"](tf.constant(x)))
            np.testing.assert_allclose(served, np.asarray(model(x)), atol=1e-5)
        assert run.model.get_string_custom_property(spec.SERVING_CHECK_PROPERTY) == "passed"
    else:
        assert published == 0
        assert not os.path.exists(run.serving_dir)
        reason = run.model.get_string_custom_property(spec.NOT_PUBLISHED_PROPERTY)
        assert reason.startswith("model_blessing: ModelBlessing") and blessing_uri in reason
        assert "is not blessed" in reason
        assert report["published"] is False and report["not_published_reason"] == reason
        # Nothing was compared: no contract verdict is recorded for a blessing stop.
        assert not run.model.has_custom_property(spec.CONTRACT_PROPERTY)


def test_check_requests_reach_the_component(tmp_path):
    """ModelExporter takes the user's requests through its export_config (a path or
    URI in `check.requests`): a JPEG endpoint is checked with REST bodies, and the
    report says where each endpoint's requests came from."""
    import base64
    from helpers import request_models as rm
    run = Run(tmp_path)
    model = rm.make_model()
    os.makedirs(run.trainer_serving_dir)
    model.save(os.path.join(run.trainer_serving_dir, "model.keras"))
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"instances": [
        {"b64": base64.b64encode(j).decode()} for j in rm.jpegs(2)]}))
    run.do({"endpoints": [{"name": "serve", "fn": "helpers.request_models:make_jpeg_serve"}],
            "check": {"requests": [{"format": "rest", "path": str(body)}]}})
    with open(os.path.join(run.report.uri, "report.json")) as f:
        checks = json.load(f)["checks"]
    origins = {c["endpoint"]: c["detail"] for c in checks if c["check"] == "requests"}
    assert origins["serving_default"] == f"from the REST body {body} (check.requests[0])"
    runs = {c["endpoint"]: c for c in checks if c["check"] == "run"}
    assert runs["serve"]["passed"] and runs["serve"]["detail"].startswith("batch 2:")
    jpegs = rm.jpegs(3, seed=3)
    served = tf.saved_model.load(run.serving_dir).signatures["serve"](
        image_bytes=tf.constant(jpegs))["scores"]
    np.testing.assert_allclose(served, model(rm.decoded(jpegs)), rtol=1e-5, atol=1e-5)


def test_the_step_outcome_names_are_the_component_properties():
    """The executor records the step's outcome under its own names: they must be the
    custom property names the spec promises downstream steps."""
    from export_archive import step
    assert (step.PUBLISHED, step.NOT_PUBLISHED_REASON, step.SERVING_CHECK, step.CONTRACT) == (
        spec.PUBLISHED_PROPERTY, spec.NOT_PUBLISHED_PROPERTY, spec.SERVING_CHECK_PROPERTY,
        spec.CONTRACT_PROPERTY)
