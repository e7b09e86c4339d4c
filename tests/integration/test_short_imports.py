"""The short imports resolve to the real adapters."""

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.tfx]


def test_short_imports_are_the_adapters():
    from export_archive.components import ExportReport, InfraValidator, ModelExporter
    from export_archive.components import model_exporter
    from export_archive.components.infra_validator.component import (
        InfraValidator as long_infra)
    from export_archive.components.tfx.component import ModelExporter as long_exporter
    from export_archive.components.tfx.spec import ExportReport as long_report
    assert ModelExporter is long_exporter
    assert InfraValidator is long_infra
    assert ExportReport is long_report
    assert callable(model_exporter) and hasattr(model_exporter, "component_spec")
