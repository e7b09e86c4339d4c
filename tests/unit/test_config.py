"""The export config parser: round trips, the serving_default rule, and a corpus of bad configs.

Every bad config must fail with a `ConfigError` whose `.path` is the field path
of the problem, whose message repeats that path, and which says what is allowed
or how to fix it.
"""

import copy
import json
import math
import pathlib
import re
import subprocess
import sys

import pytest

from export_archive.config import (
    ConfigError, EndpointConfig, ExportConfig, SpecLeaf, VariableCollectionConfig)

pytestmark = pytest.mark.unit


# The example of DESIGN.md ("The export config"), with one change: DESIGN.md also
# sets `"serving_default": "serve"` while an endpoint is *named* serving_default.
# The parser rejects that contradiction (see test_design_md_example_verbatim).
DESIGN_MD_EXAMPLE = {
    "endpoints": [
        {"name": "serve", "input_signature": ["float32[?,3]"]},
        {"name": "call_training", "fn": "call", "training": True,
         "input_signature": ["float32[?,3]"]},
        {"name": "serve_two", "input_signature": ["float32[?,3]", "float32[?,4]"]},
        {"name": "serve_list", "input_signature": [["float32[?,3]", "float32[?,4]"]]},
        {"name": "serve_dict",
         "input_signature": [{"x1": "float32[?,3]", "x2": "float32[?,4]"}]},
        {"name": "serving_default", "kind": "tf_example", "transform": True,
         "exclude_features": ["label"]},
        {"name": "custom", "fn": "my_module:make_serving_fn"},
    ],
    "variable_collections": [{"name": "optimizer_variables", "source": "optimizer"}],
    "save_options": {"save_debug_info": False},
}

# The Keras ExportArchive reference examples, as configs (docs/config.md shows them).
REFERENCE_CONFIGS = {
    "single_input": {"endpoints": [{"name": "serve", "input_signature": ["float32[?,3]"]}]},
    "inference_and_training": {"endpoints": [
        {"name": "call_inference", "input_signature": ["float32[?,3]"]},
        {"name": "call_training", "training": True, "input_signature": ["float32[?,3]"]}]},
    "two_positional_inputs": {"endpoints": [
        {"name": "serve", "input_signature": ["float32[?,3]", "float32[?,4]"]}]},
    "list_input": {"endpoints": [
        {"name": "serve", "input_signature": [["float32[?,3]", "float32[?,4]"]]}]},
    "dict_input": {"endpoints": [
        {"name": "serve", "input_signature": [{"x1": "float32[?,3]", "x2": "float32[?,4]"}]}]},
    "tf_function": {"endpoints": [{"name": "serve", "fn": "helpers.factories:make_serving_fn"}]},
    "variable_collection": {
        "endpoints": [{"name": "serve", "input_signature": ["float32[?,3]"]}],
        "variable_collections": [{"name": "optimizer_variables", "source": "optimizer"}]},
}

EVERYTHING = {
    "endpoints": [
        {"name": "serve", "fn": "call", "kind": "features", "training": False,
         "input_signature": ["float32[ ?, 3 ]", "string[]", "int64[None]",
                             [{"a": ["uint8[2,2]", {"b": "bool[?]"}]}, "bfloat16[1,?,0]"]],
         "output_keys": ["logits", "probabilities"]},
        {"name": "from_signature", "fn": "signature:serving_default"},
        {"name": "factory", "fn": "pkg.sub_module:make_fn", "input_signature": ["complex128[?]"]},
        {"name": "classify_examples", "kind": "tf_example", "transform": True,
         "exclude_features": ["label", "weight"], "method": "classify"},
        {"name": "regress_examples", "kind": "tf_example", "method": "regress",
         "output_keys": ["value"]},
        {"name": "raw", "kind": "raw_features", "transform": True,
         "exclude_features": ["label"]},
        {"name": "renamed", "input_keys": ["pixels"], "output_keys": ["logits"]},
        {"name": "classify_labels", "kind": "tf_example", "method": "classify",
         "classes": ["cat", "dog"], "score_activation": "sigmoid"},
        {"name": "classify_vocab", "kind": "tf_example", "method": "classify",
         "classes": {"vocabulary": "species_vocab"}, "score_activation": "softmax"},
    ],
    "serving_default": "classify_examples",
    "variable_collections": [
        {"name": "optimizer_variables", "source": "optimizer"},
        {"name": "trainables", "source": "trainable"},
        {"name": "stats", "source": "non_trainable"},
        {"name": "every_variable", "source": "all"},
        {"name": "dense_weights", "source": "layer:dense_1"},
    ],
    "save_options": {
        "namespace_whitelist": ["Addons", "Text"],
        "save_debug_info": True,
        "experimental_io_device": "/job:localhost",
        "experimental_variable_policy": "expand_distributed_variables",
        "experimental_custom_gradients": False,
        "experimental_image_format": False,
        "experimental_skip_saver": False,
    },
    "import_modules": ["my_pkg.layers", "other"],
    "allow_unsafe_deserialization": True,
    "track": ["layer:string_lookup", "my_pkg.serving:vocab_table", "my_pkg.serving:make_tables"],
    "serving_runtime": "2.15",
    "check": {"enabled": True, "mode": "warn", "rtol": 1e-4, "atol": 0, "warmup": True},
    "contract": {"on_breaking": "warn",
                 "allow": ["input_renamed:serve/inputs/x", "*:serve_features/*"]},
}

VALID_CONFIGS = {
    "minimal": {"endpoints": [{"name": "serve"}]},
    "design_md": DESIGN_MD_EXAMPLE,
    **{f"reference_{k}": v for k, v in REFERENCE_CONFIGS.items()},
    "everything": EVERYTHING,
    "explicit_serving_default": {
        "endpoints": [{"name": "a"}, {"name": "b"}], "serving_default": "b"},
    "serving_default_endpoint_and_field": {
        "endpoints": [{"name": "a"}, {"name": "serving_default"}],
        "serving_default": "serving_default"},
    "empty_optional_sections": {
        "endpoints": [{"name": "serve"}], "variable_collections": [], "save_options": {},
        "import_modules": [], "check": {}, "allow_unsafe_deserialization": False},
}


@pytest.fixture(params=sorted(VALID_CONFIGS), ids=str)
def valid(request):
    return VALID_CONFIGS[request.param]


def test_round_trip_through_to_json(valid):
    config = ExportConfig.parse(valid)
    again = ExportConfig.parse(config.to_json())
    assert again == config
    assert again.to_dict() == config.to_dict()
    assert ExportConfig.parse(config.to_json(indent=2)) == config
    assert ExportConfig.parse(config.to_dict()) == config


def test_every_source_form_parses_equal(valid, tmp_path):
    text = json.dumps(valid, indent=1)
    path = tmp_path / "export_config.json"
    path.write_text(text, encoding="utf-8")
    expected = ExportConfig.parse(copy.deepcopy(valid))
    assert ExportConfig.parse(text) == expected
    assert ExportConfig.parse("\n  " + text) == expected
    assert ExportConfig.parse(text.encode("utf-8")) == expected
    assert ExportConfig.parse(str(path)) == expected
    assert ExportConfig.parse(path) == expected
    assert ExportConfig.parse(expected) is expected


def test_parse_does_not_modify_the_dict(valid):
    before = copy.deepcopy(valid)
    ExportConfig.parse(valid)
    assert valid == before


def test_canonical_configs_serialize_to_themselves():
    for name in ("minimal", "explicit_serving_default", *(f"reference_{k}" for k in REFERENCE_CONFIGS)):
        assert ExportConfig.parse(VALID_CONFIGS[name]).to_dict() == VALID_CONFIGS[name], name


def test_defaults_are_left_out_of_to_dict():
    config = ExportConfig.parse(VALID_CONFIGS["empty_optional_sections"])
    assert config.to_dict() == {"endpoints": [{"name": "serve"}]}
    written = ExportConfig.parse(DESIGN_MD_EXAMPLE).to_dict()
    assert "fn" not in written["endpoints"][1]  # "fn": "call" is the default


def test_parsed_values():
    config = ExportConfig.parse(EVERYTHING)
    serve = config.endpoint("serve")
    assert serve.is_call and serve.factory is None and serve.signature_name is None
    assert serve.input_signature[0] == SpecLeaf("float32", (None, 3))
    assert serve.input_signature[1] == SpecLeaf("string", ())
    assert serve.input_signature[2] == SpecLeaf("int64", (None,))
    assert serve.input_signature[3] == [{"a": [SpecLeaf("uint8", (2, 2)),
                                               {"b": SpecLeaf("bool", (None,))}]},
                                        SpecLeaf("bfloat16", (1, None, 0))]
    assert serve.output_keys == ("logits", "probabilities")
    assert config.endpoint("from_signature").signature_name == "serving_default"
    assert config.endpoint("factory").factory == ("pkg.sub_module", "make_fn")
    classify = config.endpoint("classify_examples")
    assert (classify.kind, classify.transform, classify.method) == ("tf_example", True, "classify")
    assert classify.exclude_features == ("label", "weight")
    assert [c.layer_name for c in config.variable_collections] == [None] * 4 + ["dense_1"]
    assert config.save_options_dict["namespace_whitelist"] == ["Addons", "Text"]
    assert config.check_dict == EVERYTHING["check"]
    assert config.contract_dict == EVERYTHING["contract"]
    assert config.import_modules == ("my_pkg.layers", "other")
    assert config.allow_unsafe_deserialization is True
    with pytest.raises(KeyError):
        config.endpoint("missing")


def test_defaults():
    endpoint = ExportConfig.parse({"endpoints": [{"name": "serve"}]}).endpoints[0]
    assert endpoint == EndpointConfig(name="serve")
    assert (endpoint.fn, endpoint.kind, endpoint.training, endpoint.input_signature,
            endpoint.output_keys, endpoint.transform, endpoint.exclude_features,
            endpoint.method) == ("call", "features", False, None, None, False, (), "predict")
    assert VariableCollectionConfig("v", "layer:d").layer_name == "d"


def test_leaf_str_is_canonical():
    assert str(SpecLeaf.parse(" float32 [ ? , 3 ] ", "p")) == "float32[?,3]"
    assert str(SpecLeaf.parse("int64[None,007]", "p")) == "int64[?,7]"
    assert str(SpecLeaf.parse("string[ ]", "p")) == "string[]"


def test_json_examples_in_the_docs_are_valid():
    docs = pathlib.Path(__file__).resolve().parents[2] / "docs" / "config.md"
    blocks = re.findall(r"```json\n(.*?)```", docs.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 8
    for block in blocks:
        config = ExportConfig.parse(block)
        assert ExportConfig.parse(config.to_json()) == config
    assert ExportConfig.parse(blocks[0]) == ExportConfig.parse(DESIGN_MD_EXAMPLE)


# ---- the serving_default rule


def test_serving_default_is_the_first_endpoint_by_default():
    config = ExportConfig.parse({"endpoints": [{"name": "b"}, {"name": "a"}]})
    assert config.serving_default is None
    assert config.serving_default_name == "b"


def test_serving_default_field_picks_an_endpoint():
    config = ExportConfig.parse({"endpoints": [{"name": "a"}, {"name": "b"}],
                                 "serving_default": "b"})
    assert config.serving_default_name == "b"


def test_an_endpoint_named_serving_default_wins():
    config = ExportConfig.parse({"endpoints": [{"name": "a"}, {"name": "serving_default"}]})
    assert config.serving_default_name == "serving_default"
    config = ExportConfig.parse({"endpoints": [{"name": "a"}, {"name": "serving_default"}],
                                 "serving_default": "serving_default"})
    assert config.serving_default_name == "serving_default"


def test_design_md_example_uses_the_named_endpoint():
    assert ExportConfig.parse(DESIGN_MD_EXAMPLE).serving_default_name == "serving_default"


def test_design_md_example_verbatim():
    """DESIGN.md's example sets both; the parser refuses the contradiction."""
    verbatim = dict(DESIGN_MD_EXAMPLE, serving_default="serve")
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(verbatim)
    assert excinfo.value.path == "serving_default"
    assert "already named serving_default" in str(excinfo.value)


# ---- the bad-config corpus


def ep(**fields):
    """A config with one endpoint named `serve` plus `fields`."""
    return {"endpoints": [{"name": "serve", **fields}]}


def sig(*specs):
    return ep(input_signature=list(specs))


def with_top(**fields):
    return {"endpoints": [{"name": "serve"}], **fields}


def coll(**fields):
    return with_top(variable_collections=[fields])


SIG0 = "endpoints[0].input_signature[0]"

BAD_CONFIGS = [
    # tensor spec leaves
    ("bad_dtype", sig("float33[?,3]"), SIG0, "unknown dtype 'float33'"),
    ("dtype_case", sig("Float32[3]"), SIG0, "must look like dtype[dims]"),
    ("dim_letter", sig("float32[?,x]"), SIG0, "bad dimension 'x'"),
    ("dim_negative", sig("float32[-1]"), SIG0, "bad dimension '-1'"),
    ("dim_empty", sig("float32[3,]"), SIG0, "bad dimension ''"),
    ("no_brackets", sig("float32"), SIG0, "must look like dtype[dims]"),
    ("leaf_not_string", sig(3), SIG0, "must be a string, not integer"),
    ("leaf_null_in_list", sig(["float32[3]", None]), SIG0 + "[1]", "must be a string, not null"),
    ("leaf_bool", sig({"x": True}), SIG0 + ".x", "must be a string, not boolean"),
    ("empty_nested_list", sig([]), SIG0, "nested list of specs must not be empty"),
    ("empty_dict", sig({}), SIG0, "dict of specs must not be empty"),
    ("empty_dict_key", sig({"": "float32[3]"}), SIG0, "dict keys must be non-empty strings"),
    ("deep_bad_leaf", sig({"x1": "float32[?,3]", "x2": [["int99[]"]]}),
     SIG0 + ".x2[0][0]", "unknown dtype"),
    ("second_argument", sig("float32[?,3]", "float32[?,?,z]"),
     "endpoints[0].input_signature[1]", "bad dimension 'z'"),
    ("signature_not_list", ep(input_signature="float32[?,3]"),
     "endpoints[0].input_signature", "must be a list"),
    ("signature_empty", ep(input_signature=[]),
     "endpoints[0].input_signature", "must not be empty"),
    # names
    ("duplicate_endpoint", {"endpoints": [{"name": "serve"}, {"name": "serve"}]},
     "endpoints[1].name", "name already used by `endpoints[0].name`"),
    ("endpoint_vs_collection",
     {"endpoints": [{"name": "serve"}, {"name": "state"}],
      "variable_collections": [{"name": "state", "source": "all"}]},
     "variable_collections[0].name", "name already used by `endpoints[1].name`"),
    ("duplicate_collection",
     with_top(variable_collections=[{"name": "v", "source": "all"},
                                    {"name": "v", "source": "optimizer"}]),
     "variable_collections[1].name", "already used"),
    ("reserved_variables", ep(name="variables"), "endpoints[0].name", "reserved"),
    ("reserved_signatures", ep(name="signatures"), "endpoints[0].name", "reserved"),
    ("reserved_tf_version", ep(name="tensorflow_version"), "endpoints[0].name", "reserved"),
    ("reserved_collection", coll(name="trainable_variables", source="trainable"),
     "variable_collections[0].name", "reserved"),
    ("name_dash", ep(name="serve-v2"), "endpoints[0].name", "not a valid name"),
    ("name_digit_first", ep(name="1serve"), "endpoints[0].name", "not a valid name"),
    ("name_underscore_first", ep(name="_serve"), "endpoints[0].name", "not a valid name"),
    ("name_empty", ep(name=""), "endpoints[0].name", "not a valid name"),
    ("collection_bad_name", coll(name="my vars", source="all"),
     "variable_collections[0].name", "not a valid name"),
    # fn / kind / training / tf_example fields
    ("unknown_fn", ep(fn="lambda x: x"), "endpoints[0].fn", "unknown endpoint function"),
    ("fn_module_only", ep(fn="my_module"), "endpoints[0].fn", "unknown endpoint function"),
    ("empty_signature_fn", ep(fn="signature:"), "endpoints[0].fn", "signature name is empty"),
    ("training_with_signature", ep(fn="signature:serving_default", training=True),
     "endpoints[0].training", "training applies only to `fn: \"call\"`"),
    ("training_with_factory", ep(fn="m:f", training=True),
     "endpoints[0].training", "training applies only"),
    ("signature_on_tf_example", ep(kind="tf_example", input_signature=["string[?]"]),
     "endpoints[0].input_signature", "a tf_example endpoint's inputs come from"),
    ("signature_on_raw_features", ep(kind="raw_features", input_signature=["float32[?]"]),
     "endpoints[0].input_signature", "a raw_features endpoint's inputs come from"),
    ("transform_on_features", ep(transform=True),
     "endpoints[0].transform", "`transform` applies only to tf_example and raw_features"),
    ("exclude_on_features", ep(exclude_features=["label"]),
     "endpoints[0].exclude_features", "applies only to tf_example and raw_features"),
    ("method_on_raw_features", ep(kind="raw_features", method="classify"),
     "endpoints[0].method", "TF Serving's Classify and Regress APIs take tf.Examples"),
    ("classes_without_classify", ep(kind="tf_example", classes=["a", "b"]),
     "endpoints[0].classes", "applies only to classify endpoints"),
    ("classes_duplicate", ep(kind="tf_example", method="classify", classes=["a", "a"]),
     "endpoints[0].classes", "must list distinct class labels"),
    ("classes_vocabulary_typo", ep(kind="tf_example", method="classify",
                                   classes={"vocab": "species"}),
     "endpoints[0].classes.vocab", "unknown field in classes"),
    ("score_activation_unknown", ep(kind="tf_example", method="classify",
                                    score_activation="relu"),
     "endpoints[0].score_activation", "unknown score activation"),
    ("score_activation_on_predict", ep(kind="tf_example", score_activation="softmax"),
     "endpoints[0].score_activation", "applies only to classify endpoints"),
    ("input_keys_on_tf_example", ep(kind="tf_example", input_keys=["x"]),
     "endpoints[0].input_keys", "input names are fixed"),
    ("input_keys_duplicate", ep(input_keys=["x", "x"]),
     "endpoints[0].input_keys", "must list distinct names"),
    ("input_keys_bad_name", ep(input_keys=["my input"]),
     "endpoints[0].input_keys[0]", "not a valid input name"),
    ("method_on_features", ep(method="classify"),
     "endpoints[0].method", "applies only to tf_example endpoints"),
    ("unknown_method", ep(kind="tf_example", method="predictt"),
     "endpoints[0].method", "unknown method"),
    ("unknown_kind", ep(kind="examples"), "endpoints[0].kind", "unknown endpoint kind"),
    ("exclude_empty_string", ep(kind="tf_example", exclude_features=[""]),
     "endpoints[0].exclude_features[0]", "must be a non-empty string"),
    # output_keys
    ("output_keys_duplicate", ep(output_keys=["a", "b", "a"]),
     "endpoints[0].output_keys", "duplicate output key"),
    ("output_keys_empty", ep(output_keys=[]), "endpoints[0].output_keys", "must not be empty"),
    ("output_keys_not_string", ep(output_keys=["a", 1]),
     "endpoints[0].output_keys[1]", "must be a non-empty string"),
    # variable collections
    ("unknown_source", coll(name="v", source="optimiser"),
     "variable_collections[0].source", "unknown variable source"),
    ("empty_layer_source", coll(name="v", source="layer:"),
     "variable_collections[0].source", "unknown variable source"),
    ("missing_source", coll(name="v"), "variable_collections[0].source",
     "required field is missing"),
    ("collection_unknown_field", coll(name="v", source="all", layer="d"),
     "variable_collections[0].layer", "unknown field in a variable collection"),
    ("collections_not_list", with_top(variable_collections={"name": "v"}),
     "variable_collections", "must be an array, not object"),
    # serving_default
    ("serving_default_unknown", with_top(serving_default="predict"),
     "serving_default", "names no endpoint"),
    ("serving_default_conflict",
     {"endpoints": [{"name": "serve"}, {"name": "serving_default"}], "serving_default": "serve"},
     "serving_default", "an endpoint is already named serving_default"),
    ("serving_default_not_string", with_top(serving_default=0),
     "serving_default", "must be a string, not integer"),
    ("serving_default_bad_name", with_top(serving_default="serve v2"),
     "serving_default", "not a valid name"),
    # wrong types / structure
    ("endpoints_not_list", {"endpoints": {"name": "serve"}}, "endpoints",
     "must be an array, not object"),
    ("endpoint_not_object", {"endpoints": ["serve"]}, "endpoints[0]",
     "an endpoint must be a JSON object, not string"),
    ("second_endpoint_not_object", {"endpoints": [{"name": "a"}, None]}, "endpoints[1]",
     "must be a JSON object, not null"),
    ("name_not_string", ep(name=7), "endpoints[0].name", "must be a string, not integer"),
    ("fn_not_string", ep(fn=None), "endpoints[0].fn", "must be a string, not null"),
    ("kind_not_string", ep(kind=["tf_example"]), "endpoints[0].kind", "must be a string"),
    ("training_not_bool", ep(training="yes"), "endpoints[0].training",
     "must be a boolean (true/false), not string"),
    ("training_int", ep(training=1), "endpoints[0].training", "must be a boolean"),
    ("transform_not_bool", ep(kind="tf_example", transform="true"),
     "endpoints[0].transform", "must be a boolean"),
    ("save_options_not_object", with_top(save_options=["save_debug_info"]),
     "save_options", "must be an object, not array"),
    ("unknown_save_option", with_top(save_options={"save_debug_information": True}),
     "save_options.save_debug_information", "unknown SaveOptions argument"),
    ("save_option_not_json", with_top(save_options={"function_aliases": {}}),
     "save_options.function_aliases", "unknown SaveOptions argument"),
    ("bad_variable_policy", with_top(save_options={"experimental_variable_policy": "all"}),
     "save_options.experimental_variable_policy", "unknown variable policy"),
    ("whitelist_non_string", with_top(save_options={"namespace_whitelist": ["Addons", 3]}),
     "save_options.namespace_whitelist[1]", "must be a non-empty string"),
    ("whitelist_not_list", with_top(save_options={"namespace_whitelist": "Addons"}),
     "save_options.namespace_whitelist", "must be an array"),
    ("save_debug_info_not_bool", with_top(save_options={"save_debug_info": "false"}),
     "save_options.save_debug_info", "must be a boolean"),
    ("io_device_not_string", with_top(save_options={"experimental_io_device": 0}),
     "save_options.experimental_io_device", "must be a string"),
    ("unknown_top_level", with_top(serving_defaults="serve"), "serving_defaults",
     "unknown field in the export config"),
    ("unknown_endpoint_field", ep(input_signatures=["float32[?,3]"]),
     "endpoints[0].input_signatures", "unknown field in an endpoint"),
    ("missing_endpoints", {}, "endpoints", "required field is missing"),
    ("missing_endpoints_with_others", {"serving_default": "serve"}, "endpoints",
     "required field is missing"),
    ("empty_endpoints", {"endpoints": []}, "endpoints", "at least one endpoint is required"),
    ("missing_name", {"endpoints": [{"input_signature": ["float32[?,3]"]}]},
     "endpoints[0].name", "required field is missing"),
    ("root_list", [{"name": "serve"}], "<root>", "the export config must be a JSON object, not array"),
    ("root_null", None, "<root>", "must be a JSON object, not null"),
    ("invalid_json", '{"endpoints": [}', "<root>", "not valid JSON"),
    ("invalid_json_trailing_comma", '{"endpoints": [{"name": "serve"},]}', "<root>",
     "not valid JSON"),
    ("empty_text", "", "<root>", "not valid JSON"),
    ("json_array_text", '[{"name": "serve"}]', "<root>", "must be a JSON object, not array"),
    ("unsafe_not_bool", with_top(allow_unsafe_deserialization="true"),
     "allow_unsafe_deserialization", "must be a boolean"),
    # import_modules
    ("import_module_dash", with_top(import_modules=["my-pkg.layers"]), "import_modules[0]",
     "not a module name"),
    ("import_module_path", with_top(import_modules=["ok", "my_pkg/layers.py"]),
     "import_modules[1]", "not a module name"),
    ("import_module_empty", with_top(import_modules=[""]), "import_modules[0]",
     "must be a non-empty string"),
    ("import_modules_not_list", with_top(import_modules="my_pkg"), "import_modules",
     "must be an array"),
    # track
    ("track_not_list", with_top(track="layer:lookup"), "track", "must be an array"),
    ("track_entry_not_string", with_top(track=[{"layer": "lookup"}]), "track[0]",
     "must be a non-empty string"),
    ("track_entry_bare_name", with_top(track=["layer:ok", "lookup_table"]), "track[1]",
     "not a layer or an importable object"),
    ("track_entry_path", with_top(track=["my_pkg/serving.py:table"]), "track[0]",
     "not a layer or an importable object"),
    ("track_empty_layer", with_top(track=["layer:"]), "track[0]", "the layer name is empty"),
    ("track_duplicate", with_top(track=["m:t", "layer:x", "m:t"]), "track[2]",
     "already listed as `track[0]`"),
    ("too_many_tracked", with_top(track=[f"m:t{i}" for i in range(257)]), "track",
     "257 tracked objects, over the limit of 256"),
    # serving_runtime: the TF of a shipped op registry
    ("serving_runtime_unregistered", with_top(serving_runtime="2.13"), "serving_runtime",
     "no op registry for this TensorFlow"),
    ("serving_runtime_between", with_top(serving_runtime="2.18"), "serving_runtime",
     "no op registry for this TensorFlow"),
    ("serving_runtime_not_a_version", with_top(serving_runtime="latest"), "serving_runtime",
     "not a TensorFlow version"),
    ("serving_runtime_number", with_top(serving_runtime=2.15), "serving_runtime", "wrong type"),
    # check options
    ("check_bad_mode", with_top(check={"mode": "strict"}), "check.mode", "unknown check mode"),
    ("check_negative_rtol", with_top(check={"rtol": -1e-5}), "check.rtol",
     "tolerance must"),
    ("check_negative_atol", with_top(check={"atol": -1}), "check.atol",
     "tolerance must"),
    ("check_tolerance_string", with_top(check={"atol": "1e-5"}), "check.atol", "wrong type"),
    ("check_tolerance_bool", with_top(check={"rtol": True}), "check.rtol", "wrong type"),
    ("check_enabled_not_bool", with_top(check={"enabled": 1}), "check.enabled", "wrong type"),
    ("check_unknown_option", with_top(check={"tolerance": 0.1}), "check.tolerance",
     "unknown check option"),
    ("check_not_object", with_top(check=True), "check", "must be an object, not boolean"),
    # contract guard options
    ("contract_bad_on_breaking", with_top(contract={"on_breaking": "ignore"}),
     "contract.on_breaking", "unknown on_breaking value"),
    ("contract_unknown_option", with_top(contract={"mode": "fail"}), "contract.mode",
     "unknown field in the contract section"),
    ("contract_allow_not_list", with_top(contract={"allow": "input_renamed:a/inputs/x"}),
     "contract.allow", "must be an array"),
    ("contract_allow_not_string", with_top(contract={"allow": [1]}), "contract.allow[0]",
     "must be a string"),
    ("contract_allow_no_kind", with_top(contract={"allow": ["a", "serve/inputs/x"]}),
     "contract.allow[0]", "named KIND:PATH"),
    ("contract_allow_unknown_kind", with_top(contract={"allow": ["input_gone:serve/x"]}),
     "contract.allow[0]", "unknown change kind 'input_gone'"),
    ("contract_allow_compatible_kind", with_top(contract={"allow": ["output_added:serve"]}),
     "contract.allow[0]", "is a compatible change"),
    # limits (config.MAX_*): stated in the error, checked before any model is loaded
    ("name_too_long", ep(name="n" * 129), "endpoints[0].name", "over the limit of 128"),
    ("output_key_too_long", ep(name="s", output_keys=["k" * 129]),
     "endpoints[0].output_keys[0]", "over the limit of 128"),
    ("too_many_endpoints", {"endpoints": [{"name": f"e{i}"} for i in range(257)]},
     "endpoints", "257 endpoints, over the limit of 256"),
    ("too_many_collections", with_top(variable_collections=[
        {"name": f"c{i}", "source": "all"} for i in range(257)]),
     "variable_collections", "over the limit of 256"),
    # files
    ("missing_file", "/nonexistent/dir/export_config.json", "<file>",
     "cannot read config file"),
    ("missing_file_path", pathlib.Path("/nonexistent/dir/export_config.json"), "<file>",
     "cannot read config file"),
]


@pytest.mark.parametrize("config,path,expected", [c[1:] for c in BAD_CONFIGS],
                         ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config(config, path, expected):
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(config)
    error = excinfo.value
    message = str(error)
    assert error.path == path, message
    assert f"export config field `{path}`:" in message
    assert expected in message
    assert "fix:" in message or "allowed:" in message, message


def test_corpus_is_big_and_distinct():
    assert len(BAD_CONFIGS) >= 35
    assert len({c[0] for c in BAD_CONFIGS}) == len(BAD_CONFIGS)


def test_error_is_a_value_error_with_parts():
    with pytest.raises(ValueError) as excinfo:
        ExportConfig.parse(sig("float32[?,x]"))
    error = excinfo.value
    assert isinstance(error, ConfigError)
    assert error.problem == "bad dimension 'x'"
    assert str(error) == (
        "export config field `endpoints[0].input_signature[0]`: bad dimension 'x'. "
        'received "float32[?,x]". allowed: non-negative integers or ?. '
        'fix: write unknown sizes as ?, e.g. "float32[?,3]" (? = unknown size, '
        '"string[]" = scalar).')


def test_long_values_are_shortened_in_messages():
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(sig("x" * 1000))
    assert len(str(excinfo.value)) < 600
    assert "x" * 300 not in str(excinfo.value) and "x..." in str(excinfo.value)


def test_error_in_a_file_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "export_config.json"
    path.write_text(json.dumps(sig("float32[?,x]")), encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(path)
    assert excinfo.value.path == SIG0
    assert str(path) in str(excinfo.value)
    assert f"`{SIG0}`" in str(excinfo.value)


def test_empty_file_is_a_missing_endpoints_error(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("  \n", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(path)
    assert excinfo.value.path == "endpoints"


def test_importing_the_config_does_not_import_tensorflow():
    code = ("import sys, export_archive, export_archive.config; "
            "export_archive.ExportConfig.parse({'endpoints': [{'name': 'serve'}]}); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; "
            "assert 'keras' not in sys.modules, 'keras was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- regressions: inputs that once escaped as non-ConfigError exceptions or passed wrongly


def test_nul_byte_text_is_a_config_error():
    with pytest.raises(ConfigError):
        ExportConfig.parse("serve\x00.json")


def test_non_ascii_digit_dimension_is_a_config_error():
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(sig("float32[\u00b2]"))
    assert excinfo.value.path == SIG0


def test_huge_dimension_is_a_config_error():
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(sig("float32[" + "9" * 5000 + "]"))
    assert excinfo.value.path == SIG0


@pytest.mark.parametrize("config,path", [
    (ep(name="serve\n"), "endpoints[0].name"),
    (ep(fn="my_module:make_fn\n"), "endpoints[0].fn"),
    (with_top(import_modules=["my_pkg\n"]), "import_modules[0]"),
    (with_top(track=["my_pkg:table\n"]), "track[0]"),
], ids=["name", "fn", "import_modules", "track"])
def test_trailing_newline_is_rejected(config, path):
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(config)
    assert excinfo.value.path == path


def test_nan_tolerance_is_rejected():
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(with_top(check={"rtol": math.nan}))
    assert excinfo.value.path == "check.rtol"


def test_variable_policy_none_is_rejected():
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(with_top(save_options={"experimental_variable_policy": "none"}))
    assert excinfo.value.path == "save_options.experimental_variable_policy"


@pytest.mark.parametrize("name", ["add_endpoint", "add_variable_collection",
                                  "concrete_endpoint", "track", "write_out"])
def test_archive_method_names_are_reserved(name):
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(ep(name=name))
    assert excinfo.value.path == "endpoints[0].name"


def test_non_utf8_bytes_are_a_config_error():
    with pytest.raises(ConfigError):
        ExportConfig.parse(b'{"endpoints": [\xff]}')


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "export_config.json"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(path)
    assert excinfo.value.path == "<file>"


def test_file_holding_a_json_scalar(tmp_path):
    path = tmp_path / "export_config.json"
    path.write_text("42", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(path)
    assert excinfo.value.path == "<root>"
    assert "must be a JSON object, not integer" in str(excinfo.value)


def test_file_holding_its_own_path(tmp_path):
    path = tmp_path / "export_config.json"
    path.write_text(str(path), encoding="utf-8")
    with pytest.raises(ConfigError):
        ExportConfig.parse(path)


def test_error_in_a_file_keeps_its_guidance(tmp_path):
    path = tmp_path / "export_config.json"
    path.write_text(json.dumps(sig("float32[?,x]")), encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse(path)
    assert "fix:" in str(excinfo.value) and "allowed:" in str(excinfo.value)


def test_deeply_nested_json_is_a_config_error():
    with pytest.raises(ConfigError):
        ExportConfig.parse("[" * 100_000)


def test_unknown_empty_field_name_has_a_path():
    with pytest.raises(ConfigError) as excinfo:
        ExportConfig.parse({"endpoints": [{"name": "serve"}], "": 1})
    assert excinfo.value.path
    assert "``" not in str(excinfo.value)


def test_contract_kinds_agree_with_the_schema_and_import_no_tensorflow():
    """The allow-list kinds come from `export_archive.contract`, which the parser
    imports without TensorFlow; the JSON Schema's pattern lists the same kinds."""
    from export_archive import contract
    schema_path = (pathlib.Path(__file__).resolve().parents[2] / "src" / "export_archive"
                   / "schema" / "export_config.schema.json")
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    assert schema["properties"]["contract"]["properties"]["allow"]["items"] == {
        "$ref": "#/$defs/allowed_break"}
    _, compatible, breaking = schema["$defs"]["allowed_break"]["allOf"]
    kinds = re.match(r"\^\((.*)\|\[\^", breaking["pattern"]).group(1).split("|")
    assert kinds == list(contract.BREAKING_KINDS)
    assert breaking["x-errors"]["pattern"]["allowed"].startswith(", ".join(kinds) + " (")
    assert compatible["x-errors"]["not"]["allowed"] == "a breaking kind: " + ", ".join(kinds)
    kinds = re.match(r"\^\((.*)\):", compatible["not"]["pattern"]).group(1).split("|")
    assert kinds == list(contract.COMPATIBLE_KINDS)
    assert not set(contract.BREAKING_KINDS) & set(contract.COMPATIBLE_KINDS)
    code = ("import sys; from export_archive import contract; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_contract_examples_in_the_docs_parse():
    root = pathlib.Path(__file__).resolve().parents[2] / "docs"
    text = (root / "config.md").read_text(encoding="utf-8")
    section = text.split("## `contract`")[1].split("\n## ")[0]
    [block] = re.findall(r"```\n(\{.*?)```", section, re.S)
    assert ExportConfig.parse(block).contract_dict["allow"] == ["input_renamed:serve/inputs/x"]
    [block] = re.findall(r"```json\n(.*?)```", (root / "contract.md").read_text(encoding="utf-8"),
                         re.S)
    assert ExportConfig.parse(block).contract_dict["on_breaking"] == "fail"
