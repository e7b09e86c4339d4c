"""The JSON Schema of the export config is the parser's source of truth.

`config.py` validates with the schema; here it is used alone, as an editor or a
validator outside Python would. Every valid config of the round-trip tests
validates; every structurally bad config of the corpus is rejected. The configs
only the parser rejects (names unique across the document, serving_default naming
an endpoint, which serving runtimes ship an op registry) are listed in
SCHEMA_CANNOT_CHECK, and the schema is shown to accept them, so the list stays
exactly the schema's documented limits.
"""

import importlib.resources
import json

import jsonschema
import pytest

from export_archive import config as config_module
from unit.test_config import BAD_CONFIGS, VALID_CONFIGS

pytestmark = pytest.mark.unit

SCHEMA_CANNOT_CHECK = {
    "duplicate_endpoint",
    "endpoint_vs_collection",
    "duplicate_collection",
    "serving_default_unknown",
    "serving_default_conflict",
    # the op registries shipped in the package (runtimes.available()), not a pattern
    "serving_runtime_unregistered",
    "serving_runtime_between",
}

# Bad configs that are not JSON values (JSON text, file paths): nothing to validate.
NOT_A_DOCUMENT = {"invalid_json", "invalid_json_trailing_comma", "empty_text",
                  "missing_file", "missing_file_path"}


def load_schema():
    resource = importlib.resources.files("export_archive") / "schema" / "export_config.schema.json"
    return json.loads(resource.read_text(encoding="utf-8"))


SCHEMA = load_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def document(config):
    return json.loads(config) if isinstance(config, str) else config


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert "cannot express" in SCHEMA["description"]


@pytest.mark.parametrize("name", sorted(VALID_CONFIGS))
def test_valid_configs_validate(name):
    VALIDATOR.validate(VALID_CONFIGS[name])


@pytest.mark.parametrize("name", sorted(VALID_CONFIGS))
def test_serialized_configs_validate(name):
    written = config_module.ExportConfig.parse(VALID_CONFIGS[name]).to_json()
    VALIDATOR.validate(json.loads(written))


STRUCTURAL = [c for c in BAD_CONFIGS
              if c[0] not in SCHEMA_CANNOT_CHECK and c[0] not in NOT_A_DOCUMENT]


@pytest.mark.parametrize("config,path", [(c[1], c[2]) for c in STRUCTURAL],
                         ids=[c[0] for c in STRUCTURAL])
def test_structural_errors_are_rejected(config, path):
    errors = list(VALIDATOR.iter_errors(document(config)))
    assert errors, f"the schema accepts a config the parser rejects at {path}"


@pytest.mark.parametrize("name", sorted(SCHEMA_CANNOT_CHECK))
def test_cross_field_rules_are_the_parsers_alone(name):
    config = next(c[1] for c in BAD_CONFIGS if c[0] == name)
    VALIDATOR.validate(config)
    with pytest.raises(config_module.ConfigError):
        config_module.ExportConfig.parse(config)


def test_most_of_the_corpus_is_structural():
    assert len(STRUCTURAL) >= 60


def test_schema_error_points_at_the_field():
    error = jsonschema.exceptions.best_match(VALIDATOR.iter_errors(
        {"endpoints": [{"name": "serve", "input_signature": ["float32[?,x]"]}]}))
    assert list(error.absolute_path) == ["endpoints", 0, "input_signature", 0]


# ---- the parser's lists are the schema's


def _defs(name):
    return SCHEMA["$defs"][name]


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_dtypes_are_the_schemas():
    pattern = _defs("spec_leaf")["allOf"][1]["pattern"]
    listed = pattern.split("(", 1)[1].split(")", 1)[0].split("|")
    assert listed == list(config_module.DTYPES)
    assert {"float32", "string", "bfloat16", "uint64"} <= set(listed)


def test_enums_are_the_schemas():
    endpoint = _defs("endpoint")["properties"]
    assert endpoint["kind"]["enum"] == list(config_module.KINDS)
    assert list(config_module.KINDS) == ["features", "tf_example", "raw_features"]
    assert endpoint["method"]["enum"] == list(config_module.METHODS)
    check = SCHEMA["properties"]["check"]["properties"]
    assert check["mode"]["enum"] == list(config_module.CHECK_MODES)
    assert set(check) == set(config_module.CHECK_OPTIONS)
    save = SCHEMA["properties"]["save_options"]["properties"]
    assert set(save) == set(config_module.SAVE_OPTIONS)
    assert save["experimental_variable_policy"]["enum"] == list(config_module.VARIABLE_POLICIES)
    assert set(SCHEMA["properties"]) == set(config_module.ExportConfig.FIELDS)
    assert set(endpoint) == set(config_module.EndpointConfig.FIELDS)
    assert config_module.VARIABLE_SOURCES == ("optimizer", "trainable", "non_trainable", "all")
    assert config_module.MAX_ENDPOINTS == 256 and config_module.MAX_NAME_LENGTH == 128


def test_reserved_names_include_the_archive_methods():
    assert {"variables", "signatures", "add_endpoint", "write_out"} <= config_module.RESERVED_NAMES


@pytest.mark.parametrize("name", ["export_config", "local_process_config"])
def test_every_error_text_belongs_to_a_rule_beside_it(name):
    """An x-errors entry for a keyword its subschema lacks would never be shown. (The
    InfraValidator's local_process_config uses the same mechanism.)"""
    schema = json.loads((importlib.resources.files("export_archive") / "schema"
                         / f"{name}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    texts = 0
    for node in _walk(schema):
        for keyword, text in node.get("x-errors", {}).items():
            assert keyword in node, (keyword, node)
            text = {"problem": text} if isinstance(text, str) else text
            assert set(text) <= {"problem", "received", "allowed", "fix", "find", "at_item"}
            texts += 1
    assert texts >= (50 if name == "export_config" else 10)


def test_schema_order_checks_limits_before_items():
    """The first error found is the one reported: a list's length comes before its items."""
    for node in _walk(SCHEMA):
        if "maxItems" in node and "items" in node:
            keys = list(node)
            assert keys.index("maxItems") < keys.index("items"), node
