"""`serving_runtime`: its parsing, the shipped op registries and the CLI flag.

No TensorFlow here; the check itself (ops and attrs of real and hand-built
MetaGraphs) is in integration/test_serving_runtimes.py.
"""

import json
import os
import re

import pytest

from export_archive import cli, runtimes
from export_archive.config import ConfigError, ExportConfig
from unit.test_config_schema import SCHEMA

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = ("2.14", "2.15", "2.16", "2.21")
# A one-line text-format AttrValue: one of its fields, then its value.
ATTR_VALUE = re.compile(r"^(s|i|f|b|type|shape|tensor|list|func|placeholder)[ :{][^\n]*\Z")


def test_the_supported_runtimes_ship_a_generated_registry_each():
    assert runtimes.available() == SHIPPED
    for version in SHIPPED:
        registry = runtimes.load_registry(version)
        assert registry["tensorflow"].startswith(version + "."), registry["tensorflow"]
        assert registry["generated_by"].startswith("scripts/make_op_registry.py"), version
        assert len(registry["ops"]) > 1500, version
        # every attr's default is null or a one-line text-format AttrValue
        for op, attrs in registry["ops"].items():
            for attr, default in attrs.items():
                assert default is None or ATTR_VALUE.match(default), (op, attr, default)


def test_the_registries_record_what_tf_added():
    """Facts the check relies on (docs/runtimes.md): TF 2.15 added VarHandleOp's
    debug_name and FFTND; TF 2.16 MatMul's grad_a; neither op list shrank by a
    public op between 2.14 and 2.16."""
    ops = {v: runtimes.load_registry(v)["ops"] for v in SHIPPED}
    assert "debug_name" not in ops["2.14"]["VarHandleOp"]
    assert ops["2.15"]["VarHandleOp"]["debug_name"] == 's: ""'
    assert "FFTND" not in ops["2.14"] and "FFTND" in ops["2.15"]
    assert "grad_a" not in ops["2.15"]["MatMul"] and ops["2.16"]["MatMul"]["grad_a"] == "b: false"
    assert set(ops["2.14"]) <= set(ops["2.15"]) <= set(ops["2.16"])


def test_the_schema_admits_versions_and_the_parser_exactly_the_shipped_runtimes():
    """Which runtimes ship a registry is data (op_registries/), not a schema pattern:
    the schema admits any TF version, config.py asks `runtimes.available()`."""
    pattern = SCHEMA["properties"]["serving_runtime"]["pattern"]
    for version in SHIPPED:
        for text in (version, version + ".1", "tf-" + version):
            assert re.search(pattern, text), text
            assert runtimes.parse_serving_runtime(text) == version
            assert ExportConfig.parse({"endpoints": [{"name": "s"}],
                                       "serving_runtime": text}).serving_runtime == version
    for text in ("2.13", "2.17", "2.210"):
        assert re.search(pattern, text), text
    for text in ("latest", "2", " 2.15", "2.15\n"):
        assert not re.search(pattern, text), text
    for text in ("2.13", "2.17", "2.210", "latest", "2", " 2.15", "2.15\n"):
        with pytest.raises(ConfigError):
            runtimes.parse_serving_runtime(text)
        with pytest.raises(ConfigError) as failed:
            ExportConfig.parse({"endpoints": [{"name": "s"}], "serving_runtime": text})
        assert failed.value.path == "serving_runtime"


def test_an_unshipped_runtime_error_names_the_field_and_the_fix():
    with pytest.raises(ConfigError) as failed:
        ExportConfig.parse({"endpoints": [{"name": "serve"}], "serving_runtime": "2.18"})
    assert str(failed.value) == (
        "export config field `serving_runtime`: no op registry for this TensorFlow. "
        'received "2.18". allowed: a TensorFlow version with a shipped op registry: '
        '2.14, 2.15, 2.16, 2.21. fix: use "2.16" (the newest older runtime with a '
        "registry: an export that serves there serves in newer TF Serving too), or add "
        "one with `python scripts/make_op_registry.py X.Y` (docs/runtimes.md).")


def test_the_field_round_trips_and_defaults_to_the_exporting_tf():
    config = ExportConfig.parse({"endpoints": [{"name": "serve"}], "serving_runtime": "2.15.1"})
    assert config.serving_runtime == "2.15"
    assert json.loads(config.to_json())["serving_runtime"] == "2.15"
    assert ExportConfig.parse(config.to_json()) == config
    default = ExportConfig.parse({"endpoints": [{"name": "serve"}]})
    assert default.serving_runtime is None and "serving_runtime" not in default.to_dict()
    assert ExportConfig.parse({"endpoints": [{"name": "serve"}],
                               "serving_runtime": None}) == default


def test_the_cli_flag_is_checked_before_any_work(tmp_path, capsys):
    code = cli.main(["export", "--model", str(tmp_path / "missing.keras"),
                     "--config", '{"endpoints": [{"name": "serve"}]}',
                     "--output", str(tmp_path / "out"), "--serving-runtime", "2.13"])
    assert code == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "`serving_runtime (--serving-runtime)`: no op registry" in err, err
    assert 'received "2.13"' in err and "2.14, 2.15, 2.16, 2.21" in err, err


def test_the_registries_are_package_data():
    with open(os.path.join(REPO, "setup.py")) as f:
        assert '"op_registries/*.json"' in f.read()
