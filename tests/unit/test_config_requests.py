"""`check.requests` (the user's own requests for the serving check): the parser, the
JSON Schema and the `--requests FORMAT:PATH` flag agree, without TensorFlow."""

import json
import subprocess
import sys

import pytest

from export_archive.config import ConfigError, ExportConfig
from export_archive.user_requests import parse_flags, with_flag_requests
from unit.test_config_schema import VALIDATOR

pytestmark = pytest.mark.unit

VALID = [
    [],
    [{"format": "warmup", "path": "gs://bucket/tf_serving_warmup_requests"}],
    [{"format": "rest", "path": "bodies/*.json"}],
    [{"format": "rest", "path": "b.jsonl", "endpoint": "serve", "method": "classify"}],
    [{"format": "examples", "path": "data/Split-eval", "endpoint": "serve"},
     {"format": "rest", "path": "b.json", "method": "predict"}],
]

# entry -> (field path, words of the message)
INVALID = [
    ("x", ("check.requests", "wrong type")),
    (["warmup:x"], ("check.requests[0]", "must be an object")),
    ([{"path": "p"}], ("check.requests[0].format", "is required")),
    ([{"format": "rest"}], ("check.requests[0].path", "is required")),
    ([{"format": "grpc", "path": "p"}], ("check.requests[0].format", "unknown request format")),
    ([{"format": "rest", "path": " "}], ("check.requests[0].path", "non-empty string")),
    ([{"format": "rest", "path": 3}], ("check.requests[0].path", "non-empty string")),
    ([{"format": "rest", "path": "p", "verb": "x"}], ("check.requests[0].verb", "unknown")),
    ([{"format": "rest", "path": "p", "method": "explain"}],
     ("check.requests[0].method", "unknown REST method")),
    ([{"format": "warmup", "path": "p", "method": "predict"}],
     ("check.requests[0].method", "only a rest source")),
    ([{"format": "warmup", "path": "p", "endpoint": "serve"}],
     ("check.requests[0].endpoint", "names its own signature")),
    ([{"format": "rest", "path": "p"}] * 65, ("check.requests", "over the limit")),
]


def config(requests):
    return {"endpoints": [{"name": "serve"}], "check": {"requests": requests}}


@pytest.mark.parametrize("requests", VALID)
def test_valid_request_sources_round_trip_and_satisfy_the_schema(requests):
    parsed = ExportConfig.parse(config(requests))
    assert parsed.check_dict["requests"] == requests
    assert ExportConfig.parse(parsed.to_json()) == parsed
    VALIDATOR.validate(config(requests))
    VALIDATOR.validate(json.loads(parsed.to_json()))


@pytest.mark.parametrize("requests, expected", INVALID)
def test_invalid_request_sources_name_the_field_and_the_schema_agrees(requests, expected):
    where, words = expected
    with pytest.raises(ConfigError) as info:
        ExportConfig.parse(config(requests))
    assert info.value.path == where
    assert words in str(info.value) and "fix:" in str(info.value)
    assert not VALIDATOR.is_valid(config(requests))


def test_flags_come_before_the_configs_entries():
    parsed = ExportConfig.parse(config([{"format": "rest", "path": "b.json"}]))
    merged = with_flag_requests(parsed, ["warmup:gs://b/w", "examples:d/*.gz"])
    assert merged.check_dict["requests"] == [
        {"format": "warmup", "path": "gs://b/w"}, {"format": "examples", "path": "d/*.gz"},
        {"format": "rest", "path": "b.json"}]
    assert parse_flags(["rest:/a:b.json"]) == [{"format": "rest", "path": "/a:b.json"}]


@pytest.mark.parametrize("flag", ["warmup", "grpc:x", "rest:", ":x"])
def test_bad_flags_name_the_flag(flag):
    with pytest.raises(ConfigError) as info:
        parse_flags([flag])
    assert info.value.path == "--requests[0]" and "FORMAT:PATH" in str(info.value)


def test_parsing_request_sources_imports_no_tensorflow():
    code = ("import sys; from export_archive.config import ExportConfig; "
            "ExportConfig.parse({'endpoints': [{'name': 's'}], 'check': {'requests': "
            "[{'format': 'rest', 'path': 'b.json'}]}}); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
