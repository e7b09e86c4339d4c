"""The adapters, imported the TFX way::

    from export_archive.components import ModelExporter, InfraValidator, published
    from export_archive.components import model_exporter   # the standalone KFP component

Lazy, like `export_archive` itself: `import export_archive.components` imports
neither TFX nor KFP, so validating an export config stays cheap.
"""

__all__ = ["ModelExporter", "ExportReport", "InfraValidator", "LocalProcessConfig",
           "model_exporter", "published", "latest_pushed_model"]

_WHERE = {
    "ModelExporter": "export_archive.components.tfx.component",
    "published": "export_archive.components.tfx.component",
    "latest_pushed_model": "export_archive.components.tfx.baseline",
    "ExportReport": "export_archive.components.tfx.spec",
    "InfraValidator": "export_archive.components.infra_validator.component",
    "LocalProcessConfig": "export_archive.components.infra_validator.local_process",
    "model_exporter": "export_archive.components.kfp.component",
}


def __getattr__(name):
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
