"""The contract guard: every change kind, on small exported SavedModels.

The table exports a base model and one variant per change kind once (module
fixture, plain `tf.saved_model.save` of a `tf.Module`, so each variant differs
from the base in exactly one way), then checks that `contract.compare` sorts
each change as the rules in docs/contract.md say. The writer and CLI tests
export real Keras models with `export(..., baseline=...)`; the replay test shows
the behavioural half catching breaks that the signatures cannot show.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import export_archive
from export_archive import archive, cli, contract, report

pytestmark = pytest.mark.integration

F32, I64 = tf.float32, tf.int64
# signature -> (inputs {key: (dtype, shape)}, outputs {key: (dtype, shape)})
BASE = {
    "serve": ({"x": (F32, [None, 3]), "n": (I64, [None, 1])},
              {"scores": (F32, [None, 2]), "ids": (I64, [None, 1])}),
    "serve_raw": ({"x": (F32, [None, 3])}, {"scores": (F32, [None, 2])}),
}
ALIAS = {"serving_default": "serve"}  # serving_default: the same function as `serve`


def _fn(inputs, outputs):
    """A concrete function with exactly these input and output specs."""
    specs = {k: tf.TensorSpec(shape, dtype, name=k) for k, (dtype, shape) in inputs.items()}

    @tf.function(input_signature=[specs])
    def fn(features):
        first = features[sorted(features)[0]]
        rows = tf.shape(first)[0]
        total = tf.add_n([tf.reduce_sum(tf.reshape(tf.cast(v, tf.float32), [rows, -1]), axis=1)
                          for v in features.values()])
        out = {}
        # A size computed from values is unknown to shape inference: width None
        # gives a [?, ?] output.
        unknown = tf.cast(tf.reduce_sum(tf.zeros_like(first)), tf.int32)  # 0, not folded
        for key, (dtype, shape) in outputs.items():
            width = 2 + unknown if shape[1] is None else shape[1]
            value = tf.tile(total[:, None], tf.stack([1, width]))
            if shape[0] is not None:
                value = tf.ensure_shape(value, shape)
            out[key] = tf.cast(value, dtype)
        return out
    return fn.get_concrete_function()


def save(path, sigs, alias=None, methods=None):
    module = tf.Module()
    concrete = {name: _fn(*spec) for name, spec in sigs.items()}
    for name, target in (alias or {}).items():
        concrete[name] = concrete[target]
    module.fns = list(concrete.values())  # tracked, so every function is saved
    tf.saved_model.save(module, path, signatures=concrete)
    if methods:
        archive.set_method_names(path, methods)
    return path


def changed(sig, side, key, value):
    """BASE with one input/output of one signature replaced (value None: removed)."""
    sigs = {name: (dict(ins), dict(outs)) for name, (ins, outs) in BASE.items()}
    part = sigs[sig][0 if side == "inputs" else 1]
    if isinstance(key, tuple):  # (old, new): a rename with the same spec
        part[key[1]] = part.pop(key[0])
    elif value is None:
        part.pop(key)
    else:
        part[key] = value
    return sigs


def renamed_signature(old, new):
    return {(new if name == old else name): spec for name, spec in BASE.items()}


# variant -> (signatures, alias, methods, {expected change id: breaking?})
VARIANTS = {
    "unchanged": (BASE, ALIAS, None, {}),
    "signature_added": ({**BASE, "extra": BASE["serve_raw"]}, ALIAS, None,
                        {"signature_added:extra": False}),
    "signature_removed": ({"serve": BASE["serve"]}, ALIAS, None,
                          {"signature_removed:serve_raw": True}),
    "signature_renamed": (renamed_signature("serve_raw", "serve_raw_v2"), ALIAS, None,
                          {"signature_renamed:serve_raw": True}),
    "output_added": (changed("serve", "outputs", "probs", (F32, [None, 2])), ALIAS, None,
                     {"output_added:serve/outputs/probs": False}),
    # ... but a second output reshapes the REST answers of a single-output signature
    "single_output_widened": (changed("serve_raw", "outputs", "probs", (F32, [None, 2])),
                              ALIAS, None, {"output_added:serve_raw/outputs/probs": False,
                                            "single_output_widened:serve_raw/outputs": True}),
    "input_shape_relaxed": (changed("serve_raw", "inputs", "x", (F32, [None, None])), ALIAS,
                            None, {"input_shape_relaxed:serve_raw/inputs/x": False}),
    "output_shape_relaxed": (changed("serve_raw", "outputs", "scores", (F32, [None, None])),
                             ALIAS, None,
                             {"output_shape_relaxed:serve_raw/outputs/scores": False}),
    "input_renamed": (changed("serve_raw", "inputs", ("x", "features"), None), ALIAS, None,
                      {"input_renamed:serve_raw/inputs/x": True}),
    "input_removed": (changed("serve", "inputs", "n", None), {}, None,
                      {"input_removed:serve/inputs/n": True}),
    "input_added": (changed("serve_raw", "inputs", "m", (F32, [None, 1])), ALIAS, None,
                    {"input_added:serve_raw/inputs/m": True}),
    "input_dtype_changed": (changed("serve", "inputs", "n", (F32, [None, 1])), {}, None,
                            {"input_dtype_changed:serve/inputs/n": True}),
    "input_shape_narrowed": (changed("serve_raw", "inputs", "x", (F32, [8, 3])), ALIAS, None,
                             # a fixed batch flows to the output's shape as well
                             {"input_shape_narrowed:serve_raw/inputs/x": True,
                              "output_shape_narrowed:serve_raw/outputs/scores": True}),
    "input_shape_changed": (changed("serve_raw", "inputs", "x", (F32, [None, 4])), ALIAS, None,
                            {"input_shape_changed:serve_raw/inputs/x": True}),
    "output_renamed": (changed("serve_raw", "outputs", ("scores", "logits"), None), ALIAS,
                       None, {"output_renamed:serve_raw/outputs/scores": True}),
    "output_removed": (changed("serve", "outputs", "scores", None), {}, None,
                       {"output_removed:serve/outputs/scores": True}),
    "output_dtype_changed": (changed("serve_raw", "outputs", "scores", (tf.float64, [None, 2])),
                             ALIAS, None,
                             {"output_dtype_changed:serve_raw/outputs/scores": True}),
    "output_shape_narrowed": (changed("serve_raw", "outputs", "scores", (F32, [4, 2])), ALIAS,
                              None, {"output_shape_narrowed:serve_raw/outputs/scores": True}),
    "method_changed": (BASE, ALIAS, {"serve_raw": "tensorflow/serving/regress"},
                       {"method_changed:serve_raw": True}),
    "default_changed": (BASE, {"serving_default": "serve_raw"}, None,
                        {"default_changed:serving_default": True,
                         "input_removed:serving_default/inputs/n": True,
                         "output_removed:serving_default/outputs/ids": True}),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    base = save(str(root / "base"), BASE, ALIAS)
    variants = {name: save(str(root / name), sigs, alias, methods)
                for name, (sigs, alias, methods, _) in VARIANTS.items()}
    return base, variants


def test_the_base_export_round_trips(exported):
    base, _ = exported
    revived = tf.saved_model.load(base)
    for batch in (1, 5):
        x = np.arange(batch * 3, dtype=np.float32).reshape(batch, 3)
        out = revived.signatures["serve_raw"](x=tf.constant(x))["scores"].numpy()
        np.testing.assert_allclose(out, np.tile(x.sum(axis=1, keepdims=True), [1, 2]))
    assert set(contract.read_contract(base)) == {"serve", "serve_raw", "serving_default"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_change_kind_is_sorted(exported, variant):
    base, variants = exported
    expected = VARIANTS[variant][3]
    diff = contract.compare(base, variants[variant])
    # An input or output change of `serve` shows on its alias serving_default too.
    got = {c.id: c.breaking for c in diff.changes if not c.path.startswith("serving_default")
           or variant == "default_changed"}
    assert got == expected, diff.format()
    assert diff.breaking == any(expected.values())
    assert diff.replayed is None  # these baselines carry no warmup requests


def test_the_diff_reads_like_a_review_and_allows_named_breaks(exported):
    base, variants = exported
    diff = contract.compare(base, variants["input_renamed"])
    text = diff.format()
    assert "~ serve_raw/inputs/x: x: float32[?,3] -> features: float32[?,3]" in text
    assert "[input_renamed, BREAKING]" in text
    assert diff.summary().startswith("contract breaking")
    allowed = contract.compare(base, variants["input_renamed"],
                               allow=["input_renamed:serve_raw/*", "output_removed:nothing"])
    assert not allowed.breaking and allowed.changes[0].allowed
    assert allowed.unused_allow == ["output_removed:nothing"]
    assert "breaking (allowed)" in allowed.format()


# ---- the behavioural half: old clients' requests replayed


def _parser_model(required, width):
    """serving_default parses tf.Examples with `required` float features; serve_y
    answers `y` with `width` columns (the signature says [?,?] either way)."""
    spec = {name: tf.io.FixedLenFeature([1], tf.float32) for name in required}
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def parse(examples):
        parsed = tf.io.parse_example(examples, spec)
        return {"y": tf.add_n(list(parsed.values())) * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve_y(x):
        unknown = tf.cast(tf.reduce_sum(tf.zeros_like(x)), tf.int32)  # 0, not folded
        return {"y": tf.tile(x, tf.stack([1, width + unknown]))}
    module.fns = [parse, serve_y]
    return module, {"serving_default": parse.get_concrete_function(),
                    "serve_y": serve_y.get_concrete_function()}


def _warmup(path):
    from tensorflow_serving.apis import prediction_log_pb2
    from export_archive import check
    example = tf.train.Example(features=tf.train.Features(feature={
        "a": tf.train.Feature(float_list=tf.train.FloatList(value=[1.5]))}))
    logs = [prediction_log_pb2.PredictionLog(), prediction_log_pb2.PredictionLog()]
    request = logs[0].predict_log.request
    request.model_spec.signature_name = "serving_default"
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto([example.SerializeToString()] * 2))
    request = logs[1].predict_log.request
    request.model_spec.signature_name = "serve_y"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((3, 1), np.float32)))
    check.write_prediction_logs(os.path.join(path, check.WARMUP_FILE), logs)


@pytest.fixture(scope="module")
def replay_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    paths = {}
    for name, required, width in (("old", ["a"], 1), ("new", ["a", "b"], 2)):
        module, signatures = _parser_model(required, width)
        paths[name] = str(root / name)
        tf.saved_model.save(module, paths[name], signatures=signatures)
    _warmup(paths["old"])
    return paths


def test_warmup_replay_catches_what_the_signatures_cannot_show(replay_models):
    old, new = replay_models["old"], replay_models["new"]
    assert contract.diff_contracts(contract.read_contract(old),
                                   contract.read_contract(new)) == []
    diff = contract.compare(old, new)
    by_id = {c.id: c for c in diff.changes}
    assert diff.replayed == 2 and diff.breaking, diff.format()
    # The new parser requires feature `b`, which old clients' tf.Examples lack.
    failed = by_id["request_failed:serving_default/warmup"]
    assert "b" in failed.detail and "warmup request(s) 0" in failed.detail
    # serve_y still says float32[?,?], but answers 2 columns where it answered 1.
    assert (by_id["response_changed:serve_y/outputs/y"].old,
            by_id["response_changed:serve_y/outputs/y"].new) == ("float32[3,1]", "float32[3,2]")


# ---- export(..., baseline=...) and the CLI, with real Keras models


def _keras_model(input_name):
    import keras
    inputs = keras.Input((3,), name=input_name)
    # A fixed layer name: output keys may follow layer names, and an auto-numbered
    # name (dense_3 in a second model) would itself be a renamed output.
    dense = keras.layers.Dense(2, kernel_initializer="ones", name="scores")
    return keras.Model(inputs, dense(inputs))


SERVE = {"endpoints": [{"name": "serve"}]}


@pytest.fixture(scope="module")
def keras_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("keras")
    old = _keras_model("x")
    export_archive.export(old, SERVE, root / "old")
    return root, old


def _round_trip(path, model):
    revived = tf.saved_model.load(str(path))
    key = list(revived.signatures["serve"].structured_input_signature[1])[0]
    for batch in (2, 5):
        x = np.random.default_rng(batch).normal(size=(batch, 3)).astype(np.float32)
        [out] = revived.signatures["serve"](**{key: tf.constant(x)}).values()
        np.testing.assert_allclose(out.numpy(), np.asarray(model(x)), atol=1e-5)


def test_a_breaking_export_is_never_published(keras_exports, tmp_path):
    root, _ = keras_exports
    out = tmp_path / "pub" / "new"
    with pytest.raises(contract.BreakingChange) as err:
        export_archive.export(_keras_model("features"), SERVE, out, baseline=root / "old")
    assert "input_renamed:serve/inputs/x" in str(err.value)
    assert not out.exists() and os.listdir(tmp_path / "pub") == []


def test_warn_mode_publishes_and_reports_the_diff(keras_exports, tmp_path):
    root, _ = keras_exports
    model = _keras_model("features")
    cfg = {**SERVE, "contract": {"on_breaking": "warn"}}
    result = export_archive.export(model, cfg, tmp_path / "m", baseline=root / "old")
    assert result.contract["status"] == "breaking"
    assert [c["id"] for c in result.contract["changes"]] == [
        "input_renamed:serve/inputs/x", "input_renamed:serving_default/inputs/x"]
    _round_trip(tmp_path / "m", model)
    markdown = report.to_markdown(result)
    assert "## Serving contract" in markdown
    assert "| input_renamed | `serve/inputs/x` | `x: float32[?,3]` | " \
           "`features: float32[?,3]` | **BREAKING** |" in markdown
    assert "input_renamed" in report.to_html(result)


def test_allowed_breaks_and_compatible_exports_are_published(keras_exports, tmp_path):
    root, old = keras_exports
    cfg = {**SERVE, "contract": {"allow": ["input_renamed:*/inputs/x"]}}
    allowed = export_archive.export(_keras_model("features"), cfg, tmp_path / "a",
                                    baseline=root / "old")
    assert allowed.contract["status"] == "compatible"
    assert all(c["allowed"] for c in allowed.contract["changes"])
    same = export_archive.export(old, SERVE, tmp_path / "s", baseline=root / "old")
    assert same.contract["status"] == "compatible" and same.contract["changes"] == []
    _round_trip(tmp_path / "s", old)
    first = export_archive.export(old, SERVE, tmp_path / "f")
    assert first.contract["summary"] == contract.NO_BASELINE
    assert contract.NO_BASELINE in report.to_markdown(first)


def test_cli_diff_and_export_baseline(keras_exports, exported, tmp_path, capsys):
    root, old = keras_exports
    base, variants = exported
    assert cli.main(["diff", base, variants["input_removed"], "--no-replay"]) == \
        cli.EXIT_CHECK_FAILED
    assert "- serve/inputs/n: int64[?,1]  [input_removed, BREAKING]" in capsys.readouterr().out
    assert cli.main(["diff", base, variants["output_added"], "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "compatible"
    assert {c["kind"] for c in data["changes"]} == {"output_added"}
    assert cli.main(["diff", base, variants["input_removed"], "--allow",
                     "input_removed:serve/inputs/n", "--allow", "*:serving_default*"]) == 0
    capsys.readouterr()
    assert cli.main(["diff", base, str(tmp_path / "missing")]) == cli.EXIT_USER_ERROR
    assert "missing" in capsys.readouterr().err
    assert cli.main(["diff", base, base, "--allow", "bogus"]) == cli.EXIT_USER_ERROR
    assert "--allow[0]" in capsys.readouterr().err

    model_path = tmp_path / "new.keras"
    _keras_model("features").save(model_path)
    out = tmp_path / "cli_out"
    code = cli.main(["export", "--model", str(model_path), "--config", json.dumps(SERVE),
                     "--output", str(out), "--baseline", str(root / "old")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_CHECK_FAILED, err
    assert "input_renamed:serve/inputs/x" in err and "Nothing was written" in err
    assert not out.exists()
    old_path = tmp_path / "old.keras"
    old.save(old_path)
    assert cli.main(["export", "--model", str(old_path), "--config", json.dumps(SERVE),
                     "--output", str(out), "--baseline", str(root / "old")]) == 0
    assert "contract compatible with baseline" in capsys.readouterr().out
