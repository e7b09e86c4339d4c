"""The writer's output contract (atomic, no clobbering, result) and the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import export_archive
from export_archive import cli
from export_archive.config import ConfigError
from helpers import models
from helpers.models import sample

pytestmark = pytest.mark.integration

SERVE = {"endpoints": [{"name": "serve"}]}


@pytest.fixture(scope="module")
def model():
    return models.single_input("keras3", "functional")


def siblings(path):
    return sorted(os.listdir(os.path.dirname(path)))


def test_result_lists_endpoints_and_specs(model, tmp_path):
    cfg = {"endpoints": [{"name": "serve", "input_signature": ["float32[?,3]"]},
                         {"name": "train", "training": True}]}
    result = export_archive.export(model, cfg, tmp_path / "m")
    assert result.endpoint_names == ["serve", "train"]
    assert result.endpoints[0].method_name == "tensorflow/serving/predict"
    # Inputs and outputs keyed by the model's own names (its Input, its output layer).
    assert result.endpoints[0].inputs == {"features": "float32[?,3]"}
    assert result.endpoints[0].outputs == {models.OUTPUT_NAME: "float32[?,2]"}
    assert result.endpoints[1].training is True
    assert result.size_bytes == sum(
        os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp_path / "m") for f in fs)
    assert json.loads(json.dumps(result.to_json()))["serving_default"] == "serve"


def test_refuses_non_empty_output(model, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_archive.export(model, SERVE, out)
    assert (out / "keep.txt").read_text() == "precious"


def test_empty_output_dir_is_fine(model, tmp_path):
    (tmp_path / "m").mkdir()
    export_archive.export(model, SERVE, tmp_path / "m")
    assert (tmp_path / "m" / "saved_model.pb").exists()


def test_overwrite_replaces_whole_export(model, tmp_path):
    out = tmp_path / "m"
    export_archive.export(model, SERVE, out)
    (out / "stale.txt").write_text("old")
    export_archive.export(model, {"endpoints": [{"name": "fresh"}]}, out, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert set(tf.saved_model.load(str(out)).signatures.keys()) == {"fresh", "serving_default"}
    assert siblings(out) == ["m"]


def test_failure_leaves_nothing_behind(model, tmp_path):
    out = tmp_path / "m"
    cfg = {"endpoints": [{"name": "serve"},
                         {"name": "boom", "fn": "helpers.factories:failing_factory"}]}
    # The user's factory failing is their input's error: a ConfigError naming it.
    with pytest.raises(ConfigError, match="exploded"):
        export_archive.export(model, cfg, out)
    assert siblings(out) == []


def test_failure_during_write_keeps_previous_export(model, tmp_path, monkeypatch):
    out = tmp_path / "m"
    export_archive.export(model, SERVE, out)
    before = sorted(os.listdir(out))

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(tf.saved_model, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        export_archive.export(model, SERVE, out, overwrite=True)
    assert sorted(os.listdir(out)) == before
    assert siblings(out) == ["m"]


def test_untraced_factory_without_signature_is_a_config_error(model, tmp_path):
    cfg = {"endpoints": [{"name": "serve", "fn": "helpers.factories:make_untraced"}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(model, cfg, tmp_path / "m")
    assert err.value.path == "endpoints[0].input_signature"


@pytest.mark.parametrize("fn,needle", [
    ("helpers.no_such_module:f", "cannot import module"),
    ("helpers.factories:nope", "has no callable"),
    ("helpers.factories:NOT_CALLABLE", "has no callable"),
])
def test_bad_factories(model, tmp_path, fn, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        export_archive.export(model, {"endpoints": [{"name": "s", "fn": fn}]}, tmp_path / "m")
    assert err.value.path == "endpoints[0].fn"


def test_output_keys_count_mismatch(model, tmp_path):
    cfg = {"endpoints": [{"name": "s", "output_keys": ["a", "b"]}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(model, cfg, tmp_path / "m")
    assert err.value.path == "endpoints[0].output_keys"
    assert "1 output(s) but 2 key(s)" in str(err.value)


def test_save_options_are_applied(model, tmp_path):
    cfg = {**SERVE, "save_options": {"save_debug_info": True}}
    export_archive.export(model, cfg, tmp_path / "m")
    assert (tmp_path / "m" / "debug" / "saved_model_debug_info.pb").exists()


def test_tf_example_without_feature_spec_is_explained(model, tmp_path):
    cfg = {"endpoints": [{"name": "serving_default", "kind": "tf_example"}]}
    with pytest.raises(ConfigError) as err:
        export_archive.export(model, cfg, tmp_path / "m")
    assert err.value.path == "endpoints[0].kind"
    assert "Schema" in str(err.value)


# ---- CLI


def test_cli_export_and_describe(model, tmp_path, capsys):
    model.save(tmp_path / "model.keras")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"endpoints": [{"name": "serve"},
                                             {"name": "call_training", "training": True}]}))
    out = tmp_path / "out"
    code = cli.main(["export", "--model", str(tmp_path / "model.keras"),
                     "--config", str(cfg), "--output", str(out)])
    assert code == 0
    assert (out / "saved_model.pb").exists()
    printed = capsys.readouterr().out
    # Each endpoint on one line, in describe's notation (not as Python dict reprs).
    serve = f"serve(features: float32[?,3]) -> {models.OUTPUT_NAME}: float32[?,2]"
    assert "serving_default -> serve" in printed
    train = (f"call_training(features: float32[?,3]) -> {models.OUTPUT_NAME}: "
             "float32[?,2] (training mode)")
    assert f"\n  {serve}\n" in printed and f"\n  {train}\n" in printed
    assert "{" not in printed

    assert cli.main(["describe", str(out), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in described] == ["call_training", "serve", "serving_default"]
    assert described[1]["inputs"] == {"features": "float32[?,3]"}
    assert described[1]["outputs"] == {models.OUTPUT_NAME: "float32[?,2]"}
    assert described[2]["serving_default_of"] == "serve"

    assert cli.main(["describe", str(out)]) == 0
    text = capsys.readouterr().out
    assert "signature 'serve' (tensorflow/serving/predict)" in text
    assert "signature 'serving_default' (tensorflow/serving/predict) = 'serve'" in text


def test_cli_accepts_tfx_model_artifact_dir(model, tmp_path, capsys):
    # A Keras 3 Trainer writes Format-Serving with model.export(); its `serve`
    # function then plays the model's call.
    model.export(str(tmp_path / "artifact" / "Format-Serving"), verbose=False)
    code = cli.main(["export", "--model", str(tmp_path / "artifact"),
                     "--config", json.dumps(SERVE), "--output", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    revived = tf.saved_model.load(str(tmp_path / "out"))
    x = sample(3)
    np.testing.assert_allclose(revived.serve(x), model(x, training=False), atol=1e-5)


@pytest.mark.parametrize("args,needle", [
    (["--config", '{"endpoints": []}'], "endpoints"),
    (["--config", '{"endpoints": [{"name": "a", "fn": "nope"}]}'], "endpoints[0].fn"),
    (["--config", "/no/such/config.json"], "cannot read config file"),
])
def test_cli_user_errors_are_one_paragraph(model, tmp_path, capsys, args, needle):
    model.save(tmp_path / "model.keras")
    code = cli.main(["export", "--model", str(tmp_path / "model.keras"),
                     "--output", str(tmp_path / "out")] + args)
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR
    assert needle in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_cli_missing_model_and_existing_output(model, tmp_path, capsys):
    code = cli.main(["export", "--model", str(tmp_path / "none.keras"), "--config",
                     json.dumps(SERVE), "--output", str(tmp_path / "out")])
    assert code == cli.EXIT_USER_ERROR and "does not exist" in capsys.readouterr().err
    model.save(tmp_path / "model.keras")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    code = cli.main(["export", "--model", str(tmp_path / "model.keras"), "--config",
                     json.dumps(SERVE), "--output", str(tmp_path / "out")])
    assert code == cli.EXIT_USER_ERROR and "--overwrite" in capsys.readouterr().err


def test_cli_describe_not_a_saved_model(tmp_path, capsys):
    assert cli.main(["describe", str(tmp_path)]) == cli.EXIT_USER_ERROR
    assert "not a SavedModel directory" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path):
    """The installed `export-archive` entry point runs (a user's first command)."""
    exe = os.path.join(os.path.dirname(sys.executable), "export-archive")
    proc = subprocess.run([exe, "describe", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == cli.EXIT_USER_ERROR
    assert "not a SavedModel directory" in proc.stderr and "Traceback" not in proc.stderr


def test_console_script_is_quiet_unless_verbose(model, tmp_path):
    """No TensorFlow C++ start-up lines and no third-party FutureWarnings on a
    successful run from a shell that set no TF_CPP_MIN_LOG_LEVEL; --verbose keeps them."""
    exe = os.path.join(os.path.dirname(sys.executable), "export-archive")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    model.save(tmp_path / "model.keras")

    def run(*args):
        return subprocess.run([exe, *args], capture_output=True, text=True, env=env,
                              timeout=600)
    export = run("export", "--model", str(tmp_path / "model.keras"), "--config",
                 json.dumps(SERVE), "--output", str(tmp_path / "out"), "--check")
    assert export.returncode == 0, export.stderr
    assert export.stderr == ""
    assert "serve(features: float32[?,3]) -> " in export.stdout
    verbose = run("--verbose", "describe", str(tmp_path / "out"))
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stderr != ""   # TensorFlow's own start-up lines, at least
    assert "signature 'serve' (tensorflow/serving/predict)" in verbose.stdout


def test_signature_line_is_describe_notation(tmp_path):
    from export_archive import describe
    sig = describe.SignatureInfo(
        name="classify_examples", method_name="tensorflow/serving/classify",
        inputs={"examples": "string[?]"},
        outputs={"classes": "string[?,2]", "scores": "float32[?,2]"})
    assert describe.signature_line(sig) == (
        "classify_examples(examples: string[?]) -> classes: string[?,2], "
        "scores: float32[?,2] (classify)")


@pytest.mark.parametrize("flavor", ["keras3", "tf_keras"])
def test_saved_root_holds_only_endpoints_and_variables(flavor, tmp_path):
    """Nothing of the exporter's own bookkeeping is saved with the model (a tf_keras
    archive is itself the saved root, so any attribute set on it would be)."""
    from export_archive import describe
    model = models.single_input(flavor, "functional")
    export_archive.export(model, {"endpoints": [{"name": "serve"}]}, tmp_path / "m")
    graph = describe.serve_meta_graph(
        describe.read_saved_model_proto(str(tmp_path / "m"))).object_graph_def
    root_children = {c.local_name for c in graph.nodes[0].children}
    public = {n for n in root_children if not n.startswith("_")}
    assert public == {"serve", "variables", "trainable_variables", "non_trainable_variables"} \
        | ({"signatures"} & public)
