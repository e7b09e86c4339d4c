"""tfx-export-archive: Keras models to servable SavedModels, configured by one JSON config.

`ExportConfig` is importable without TensorFlow; `export` and the rest load it on
first use, so validating a config (e.g. in a pipeline definition) stays cheap.
"""

from export_archive.config import ConfigError, ExportConfig

__version__ = "0.1.0"

# `export_archive.describe` is the submodule (describe.describe(dir) lists signatures).
__all__ = ["ConfigError", "ExportConfig", "ExportResult", "export", "__version__"]


def __getattr__(name):
    # On first use: both import TensorFlow, which `import export_archive` must not.
    if name == "export":   # the export step every front door runs (step.py)
        from export_archive import step
        return step.export
    if name == "ExportResult":
        from export_archive import writer  # TensorFlow: on first use (see above)
        return writer.ExportResult
    raise AttributeError(f"module 'export_archive' has no attribute {name!r}")
