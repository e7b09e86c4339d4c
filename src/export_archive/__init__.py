"""tfx-export-archive: Keras models to servable SavedModels, configured by one JSON config.

`ExportConfig` is importable without TensorFlow; `export` and the rest load it on
first use, so validating a config (e.g. in a pipeline definition) stays cheap.
Nothing is imported with the package itself: `import export_archive.saved_model_io`
(the serving check's process) runs that module and its two standard-library ones
only.
"""

__version__ = "0.1.0"

# `export_archive.describe` is the submodule (describe.describe(dir) lists signatures).
__all__ = ["ConfigError", "ExportConfig", "ExportResult", "export", "__version__"]


def __getattr__(name):
    # Each name on first use: the config needs no TensorFlow, `export` and
    # `ExportResult` import it, and `import export_archive.X` must not import any.
    if name in ("ConfigError", "ExportConfig"):
        from export_archive import config  # no TensorFlow, but not with the package
        return getattr(config, name)
    if name == "export":   # the export step every front door runs (step.py)
        from export_archive import step  # TensorFlow: on first use (see above)
        return step.export
    if name == "ExportResult":
        from export_archive import writer  # TensorFlow: on first use (see above)
        return writer.ExportResult
    raise AttributeError(f"module 'export_archive' has no attribute {name!r}")
