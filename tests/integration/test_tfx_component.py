"""ModelExporter construction (no pipeline run): channels, parameters, early validation."""

import json

import pytest

pytest.importorskip("tfx")

from tfx.types import channel, standard_artifacts  # noqa: E402

from export_archive.components.tfx import spec  # noqa: E402
from export_archive.components.tfx.component import ModelExporter  # noqa: E402
from export_archive.components.tfx.executor import Executor  # noqa: E402
from export_archive.config import ConfigError, ExportConfig  # noqa: E402

pytestmark = pytest.mark.integration

CONFIG = {"endpoints": [{"name": "serving_default", "kind": "tf_example",
                         "exclude_features": ["species"]},
                        {"name": "serve_features"}],
          "serving_default": "serving_default"}
SERVE = {"endpoints": [{"name": "serve"}]}


def model_channel():
    return channel.Channel(type=standard_artifacts.Model)


def schema_channel():
    return channel.Channel(type=standard_artifacts.Schema)


def transform_channel():
    return channel.Channel(type=standard_artifacts.TransformGraph)


def test_channels_and_types():
    exporter = ModelExporter(model=model_channel(), export_config=SERVE)
    assert set(exporter.inputs) == {spec.TRAINED_MODEL_KEY}
    assert exporter.inputs["trained_model"].type is standard_artifacts.Model
    assert set(exporter.outputs) == {"model", "report"}
    assert exporter.outputs["model"].type is standard_artifacts.Model
    assert exporter.outputs["report"].type is spec.ExportReport
    # The KFP and Vertex UIs render a system.HTML artifact (docs/report.md).
    assert spec.ExportReport.TYPE_NAME == "system.HTML"
    assert exporter.outputs["model"].type_name == "Model"
    assert exporter.executor_spec.executor_class is Executor


def test_optional_inputs_are_wired():
    examples = channel.Channel(type=standard_artifacts.Examples)
    exporter = ModelExporter(model=model_channel(), export_config=CONFIG,
                             schema=schema_channel(), transform_graph=transform_channel(),
                             examples=examples)
    assert set(exporter.inputs) == {"trained_model", "schema", "transform_graph", "examples"}
    assert exporter.inputs["schema"].type is standard_artifacts.Schema
    assert exporter.inputs["transform_graph"].type is standard_artifacts.TransformGraph
    assert exporter.inputs["examples"].type is standard_artifacts.Examples


def test_wrong_channel_type_is_refused():
    # The error names the argument users pass (`model=`), not the spec key.
    with pytest.raises(TypeError, match=r"ModelExporter\(model=\.\.\.\) takes a Model "
                                        r"channel.*got Schema") as err:
        ModelExporter(model=schema_channel(), export_config=SERVE)
    assert "trained_model" not in str(err.value)


@pytest.mark.parametrize("form", ["config", "dict", "json"])
def test_export_config_forms_store_canonical_json(form):
    parsed = ExportConfig.parse(CONFIG)
    given = {"config": parsed, "dict": CONFIG,
             "json": json.dumps(CONFIG, indent=4, sort_keys=True)}[form]
    exporter = ModelExporter(model=model_channel(), export_config=given,
                             schema=schema_channel())
    stored = exporter.exec_properties[spec.EXPORT_CONFIG_KEY]
    assert isinstance(stored, str)
    assert stored == parsed.to_json()
    assert ExportConfig.parse(stored) == parsed
    assert exporter.exec_properties[spec.MODULE_FILE_KEY] is None
    assert exporter.exec_properties[spec.MODULE_PATH_KEY] is None


@pytest.mark.parametrize("config, path", [
    ({"endpoints": [{"name": "serve", "kind": "tf_exampel"}]}, "endpoints[0].kind"),
    ({"endpoints": [{"name": "serve"}, {"name": "serve"}]}, "endpoints[1].name"),
    ({"endpoints": [{"name": "serve", "transfrom": True}]}, "endpoints[0].transfrom"),
    ({"endpoints": []}, "endpoints"),
    ('{"endpoints": [', "<root>"),
])
def test_bad_config_fails_at_construction(config, path):
    with pytest.raises(ConfigError) as err:
        ModelExporter(model=model_channel(), export_config=config)
    assert err.value.path == path
    assert path in str(err.value)


def test_tf_example_needs_schema_or_transform_graph():
    cfg = {"endpoints": [{"name": "serve"},
                         {"name": "examples", "kind": "tf_example"}]}
    with pytest.raises(ConfigError) as err:
        ModelExporter(model=model_channel(), export_config=cfg)
    assert err.value.path == "endpoints[1].kind"
    assert "schema" in str(err.value) and "transform_graph" in str(err.value)
    ModelExporter(model=model_channel(), export_config=cfg, schema=schema_channel())
    ModelExporter(model=model_channel(), export_config=cfg, transform_graph=transform_channel())


def test_transform_needs_transform_graph():
    cfg = {"endpoints": [{"name": "serve", "kind": "tf_example", "transform": True}]}
    with pytest.raises(ConfigError) as err:
        ModelExporter(model=model_channel(), export_config=cfg, schema=schema_channel())
    assert err.value.path == "endpoints[0].transform"
    assert "transform_graph" in str(err.value)
    ModelExporter(model=model_channel(), export_config=cfg, transform_graph=transform_channel())


def test_user_module_factory_needs_module_file(tmp_path, monkeypatch):
    cfg = {"endpoints": [{"name": "serve", "fn": "user_module:make_fn"}]}
    with pytest.raises(ConfigError) as err:
        ModelExporter(model=model_channel(), export_config=cfg)
    assert err.value.path == "endpoints[0].fn"
    assert "module_file" in str(err.value)

    module_file = tmp_path / "exporter_module.py"
    module_file.write_text("def make_fn(model):\n    return model\n")
    # Packaging the module into a wheel happens at pipeline compile time; not here.
    monkeypatch.setenv("UNSUPPORTED_DO_NOT_PACKAGE_USER_MODULES", "1")
    exporter = ModelExporter(model=model_channel(), export_config=cfg,
                             module_file=str(module_file))
    assert exporter.exec_properties[spec.MODULE_FILE_KEY] == str(module_file)
    exporter = ModelExporter(model=model_channel(), export_config=cfg,
                             module_path="my_pkg.exporter_module")
    assert exporter.exec_properties[spec.MODULE_PATH_KEY] == "my_pkg.exporter_module"


def test_module_file_registers_packaging_dependency(tmp_path):
    module_file = tmp_path / "exporter_module.py"
    module_file.write_text("def make_fn(model):\n    return model\n")
    cfg = {"endpoints": [{"name": "serve", "fn": "user_module:make_fn"}]}
    exporter = ModelExporter(model=model_channel(), export_config=cfg,
                             module_file=str(module_file))
    # As for Trainer: TFX packages the module file when the pipeline is compiled.
    assert exporter._pip_dependencies  # pylint: disable=protected-access


def test_module_file_and_module_path_both():
    with pytest.raises(ValueError, match="module_file or module_path, not both"):
        ModelExporter(model=model_channel(), export_config=SERVE,
                      module_file="/tmp/m.py", module_path="m")
