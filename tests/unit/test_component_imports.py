"""`from export_archive.components import ModelExporter` (TFX style), and lazily."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_importing_the_package_imports_no_tfx_kfp_or_tensorflow():
    code = ("import sys, export_archive.components as c; "
            "print(sorted(m for m in ('tfx', 'kfp', 'tensorflow') if m in sys.modules)); "
            "print(sorted(c.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1] == str(sorted(["ExportReport", "InfraValidator", "LocalProcessConfig",
                                 "ModelExporter", "latest_pushed_model", "model_exporter",
                                 "published"]))


def test_unknown_name_is_an_attribute_error():
    import export_archive.components as components
    with pytest.raises(AttributeError, match="has no attribute 'Exporter'"):
        components.Exporter  # noqa: B018
