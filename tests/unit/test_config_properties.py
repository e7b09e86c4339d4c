"""Property tests of the export config parser (hypothesis).

(a) Any JSON-like value or text either parses or raises `ConfigError`.
(b) Generated valid configs round-trip through `to_json` and satisfy the schema.
(c) Any string used as a tensor spec leaf either parses to a `SpecLeaf` whose
    text re-parses equal, or raises `ConfigError` at that leaf's path; and the
    schema's leaf pattern accepts exactly the leaves the parser accepts.
"""

import importlib.resources
import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export_archive.config import (
    CHECK_MODES, DTYPES, KINDS, METHODS, RESERVED_NAMES, SCORE_ACTIVATIONS, VARIABLE_POLICIES,
    VARIABLE_SOURCES, ConfigError, EndpointConfig, ExportConfig, SpecLeaf)

pytestmark = pytest.mark.unit

# database=None: no .hypothesis/ directory in the checkout.
SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

SCHEMA = json.loads((importlib.resources.files("export_archive") / "schema"
                     / "export_config.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _accepts_leaf(text: str) -> bool:
    try:
        SpecLeaf.parse(text, "p")
    except ConfigError:
        return False
    return True


# ---- (a) anything in, ConfigError or a config out


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


def _shaped(keys, values):
    """Objects using the real field names, so fuzzing reaches past the unknown-field check."""
    return st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))


leaf_like = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\s?[a-z0-9]{1,9}\s?\[[ 0-9?,Noe\-x]{0,8}\]\s?", fullmatch=True),
    st.builds("{}[{}]".format, st.sampled_from(DTYPES), st.text("0123456789?, ", max_size=6)))
signature_like = st.recursive(
    leaf_like | json_scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8)
endpoint_values = st.one_of(
    json_values,
    st.sampled_from(["call", "signature:", "signature:x", "m:f", "a.b:c", "tf_example",
                     "features", "predict", "classify", "serve", "serving_default"]),
    st.lists(signature_like, max_size=3))
endpoint_like = _shaped(EndpointConfig.FIELDS, endpoint_values) | json_values
config_like = st.fixed_dictionaries(
    {"endpoints": st.lists(endpoint_like, max_size=3)},
    optional={
        "serving_default": st.sampled_from(["serve", "serving_default", "x"]) | json_values,
        "variable_collections": st.lists(
            _shaped(("name", "source"),
                    st.sampled_from(["v", "serve", "optimizer", "layer:", "layer:d", "all"])
                    | json_values), max_size=3) | json_values,
        "save_options": _shaped(
            ("namespace_whitelist", "save_debug_info", "experimental_variable_policy",
             "experimental_io_device", "bogus"),
            st.sampled_from(list(VARIABLE_POLICIES)) | json_values) | json_values,
        "import_modules": st.lists(st.text(max_size=10), max_size=3) | json_values,
        "track": st.lists(st.sampled_from(["layer:", "layer:d", "m:t", "a.b:c", "t"])
                          | json_values, max_size=3) | json_values,
        "allow_unsafe_deserialization": json_values,
        "check": _shaped(("mode", "rtol", "atol", "warmup", "enabled", "requests", "other"),
                         st.sampled_from(list(CHECK_MODES)) | json_values
                         | st.lists(_shaped(("format", "path", "endpoint", "method"),
                                            st.sampled_from(["warmup", "rest", "examples",
                                                             "predict", "b.json", ""])
                                            | json_values), max_size=2)) | json_values,
    })


def _parses_or_config_error(value):
    try:
        config = ExportConfig.parse(value)
    except ConfigError as e:
        assert isinstance(e.path, str) and e.path
        assert f"`{e.path}`" in str(e)
        return None
    assert isinstance(config, ExportConfig)
    return config


@SETTINGS
@given(json_values)
def test_any_json_value_parses_or_raises_config_error(value):
    _parses_or_config_error(value)


@SETTINGS
@given(config_like)
def test_any_config_shaped_value_parses_or_raises_config_error(value):
    config = _parses_or_config_error(value)
    if config is not None:
        assert ExportConfig.parse(config.to_json()) == config


@SETTINGS
@given(st.one_of(
    st.text(),
    json_values.map(json.dumps),
    config_like.map(json.dumps),
    config_like.map(json.dumps).flatmap(
        lambda text: st.integers(0, len(text)).map(lambda n: text[:n])),
))
def test_any_text_parses_or_raises_config_error(text):
    _parses_or_config_error(text)


# ---- (b) valid configs round-trip

TAKEN = RESERVED_NAMES | {"add_endpoint", "add_variable_collection", "concrete_endpoint",
                          "track", "write_out"}
names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: n not in TAKEN)
module_paths = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}(\.[A-Za-z_][A-Za-z0-9_]{0,6}){0,2}",
                             fullmatch=True)
dims = st.one_of(st.just("?"), st.just("None"), st.integers(0, 4096).map(str))


@st.composite
def leaves(draw):
    dtype = draw(st.sampled_from(DTYPES))
    sep = draw(st.sampled_from([",", ", ", " , "]))
    pad = draw(st.sampled_from(["", " "]))
    return f"{pad}{dtype}{pad}[{pad}{sep.join(draw(st.lists(dims, max_size=4)))}{pad}]{pad}"


structures = st.recursive(
    leaves(),
    lambda children: st.lists(children, min_size=1, max_size=3)
    | st.dictionaries(st.text(min_size=1, max_size=6), children, min_size=1, max_size=3),
    max_leaves=8)
unique_keys = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3, unique=True)


@st.composite
def endpoints(draw, name):
    out = {"name": name}
    kind = draw(st.sampled_from(KINDS + (None,)))
    if kind is not None:
        out["kind"] = kind
    fn = draw(st.one_of(st.none(), st.just("call"),
                        names.map("signature:{}".format),
                        st.builds("{}:{}".format, module_paths, names)))
    if fn is not None:
        out["fn"] = fn
    if fn in (None, "call") and draw(st.booleans()):
        out["training"] = draw(st.booleans())
    if kind not in ("tf_example", "raw_features") and draw(st.booleans()):
        out["input_signature"] = draw(st.lists(structures, min_size=1, max_size=3))
    if draw(st.booleans()):
        out["output_keys"] = draw(unique_keys)
    if kind in (None, "features") and draw(st.booleans()):
        out["input_keys"] = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    if kind in ("tf_example", "raw_features"):
        if draw(st.booleans()):
            out["transform"] = draw(st.booleans())
        if draw(st.booleans()):
            out["exclude_features"] = draw(st.lists(st.text(min_size=1, max_size=8), max_size=3))
    if kind == "tf_example" and draw(st.booleans()):
        out["method"] = draw(st.sampled_from(METHODS))
        if out["method"] == "classify":
            if draw(st.booleans()):
                out["classes"] = draw(st.one_of(
                    st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4,
                             unique=True),
                    names.map(lambda n: {"vocabulary": n})))
            if draw(st.booleans()):
                out["score_activation"] = draw(st.sampled_from(SCORE_ACTIVATIONS))
    return out


@st.composite
def valid_configs(draw):
    all_names = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    split = draw(st.integers(1, len(all_names)))
    endpoint_names, collection_names = all_names[:split], all_names[split:]
    if draw(st.booleans()) and "serving_default" not in all_names:
        endpoint_names[draw(st.integers(0, len(endpoint_names) - 1))] = "serving_default"
    config = {"endpoints": [draw(endpoints(n)) for n in endpoint_names]}
    if "serving_default" in endpoint_names:
        if draw(st.booleans()):
            config["serving_default"] = "serving_default"
    elif draw(st.booleans()):
        config["serving_default"] = draw(st.sampled_from(endpoint_names))
    if collection_names or draw(st.booleans()):
        sources = st.sampled_from(VARIABLE_SOURCES) | st.text(min_size=1, max_size=8).map(
            "layer:{}".format)
        config["variable_collections"] = [{"name": n, "source": draw(sources)}
                                          for n in collection_names]
    if draw(st.booleans()):
        config["save_options"] = draw(st.fixed_dictionaries({}, optional={
            "namespace_whitelist": st.lists(st.text(min_size=1, max_size=8), max_size=3),
            "save_debug_info": st.booleans(),
            "experimental_io_device": st.text(max_size=12),
            "experimental_variable_policy": st.sampled_from(
                [p for p in VARIABLE_POLICIES if p != "none"]),
            "experimental_custom_gradients": st.booleans(),
            "experimental_image_format": st.booleans(),
            "experimental_skip_saver": st.booleans(),
        }))
    if draw(st.booleans()):
        config["import_modules"] = draw(st.lists(module_paths, max_size=3))
    if draw(st.booleans()):
        config["allow_unsafe_deserialization"] = draw(st.booleans())
    if draw(st.booleans()):
        config["track"] = draw(st.lists(
            st.builds("{}:{}".format, module_paths, names)
            | st.text(min_size=1, max_size=8).map("layer:{}".format), max_size=3, unique=True))
    if draw(st.booleans()):
        tolerance = st.floats(0, 1, allow_nan=False) | st.integers(0, 10)
        config["check"] = draw(st.fixed_dictionaries({}, optional={
            "mode": st.sampled_from(CHECK_MODES), "rtol": tolerance, "atol": tolerance,
            "warmup": st.booleans(), "enabled": st.booleans(),
            "requests": st.lists(st.fixed_dictionaries(
                {"format": st.just("rest"), "path": st.sampled_from(["b.json", "gs://b/*"])},
                optional={"endpoint": st.sampled_from(["serve", "e"]),
                          "method": st.sampled_from(["predict", "classify", "regress"])})
                | st.fixed_dictionaries({"format": st.just("warmup"),
                                         "path": st.sampled_from(["w", "gs://b/w"])}),
                max_size=2)}))
    return config


@SETTINGS
@given(valid_configs())
def test_valid_configs_round_trip(document):
    config = ExportConfig.parse(document)
    text = config.to_json()
    again = ExportConfig.parse(text)
    assert again == config
    assert again.to_json() == text
    assert ExportConfig.parse(json.dumps(document)) == config
    assert config.serving_default_name in [e.name for e in config.endpoints]


@SETTINGS
@given(valid_configs())
def test_valid_configs_satisfy_the_schema(document):
    VALIDATOR.validate(document)
    VALIDATOR.validate(json.loads(ExportConfig.parse(document).to_json()))


# ---- (c) fuzzing leaves

any_leaf_text = st.one_of(
    st.text(max_size=16),
    leaves(),
    st.from_regex(r"\s?[a-z0-9]{1,9}\s?\[[ \d?,Noe\-x]{0,10}\]\s?", fullmatch=True),
    st.builds("{}[{}]".format, st.sampled_from(DTYPES), st.text(max_size=8)),
)


@SETTINGS
@given(any_leaf_text)
def test_any_leaf_parses_and_reprints_or_raises_at_the_leaf(text):
    try:
        config = ExportConfig.parse({"endpoints": [{"name": "serve", "input_signature": [text]}]})
    except ConfigError as e:
        assert e.path.endswith("input_signature[0]")
        assert e.path == "endpoints[0].input_signature[0]"
        return
    leaf = config.endpoints[0].input_signature[0]
    assert isinstance(leaf, SpecLeaf)
    assert leaf.dtype in DTYPES
    assert all(d is None or (isinstance(d, int) and d >= 0) for d in leaf.shape)
    reparsed = SpecLeaf.parse(str(leaf), "p")
    assert reparsed == leaf
    assert str(reparsed) == str(leaf)


@SETTINGS
@given(any_leaf_text)
def test_schema_leaf_pattern_agrees_with_the_parser(text):
    leaf_schema = {"$ref": "#/$defs/spec_leaf", "$defs": SCHEMA["$defs"]}
    schema_ok = jsonschema.Draft202012Validator(leaf_schema).is_valid(text)
    assert schema_ok == _accepts_leaf(text), text
