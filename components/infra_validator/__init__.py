"""InfraValidator extended with a local-process serving platform (see docs/infra_validation.md).

`InfraValidator` is TFX's component, extended: `local_process_config` runs
`tensorflow_model_server` as a child process of the component, the platform a
KFP v2 / Vertex AI container with the TF Serving binary offers.
"""

__all__ = ["InfraValidator", "LocalProcessConfig"]


def __getattr__(name):
    # Lazy, as export_archive's own exports: these import TFX (and TensorFlow), which
    # importing the package must not.
    if name == "InfraValidator":
        # Imports TFX: on first use (see above).
        from export_archive.components.infra_validator.component import InfraValidator
        return InfraValidator
    if name == "LocalProcessConfig":
        # Imports TFX too: on first use (see above).
        from export_archive.components.infra_validator.local_process import LocalProcessConfig
        return LocalProcessConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
