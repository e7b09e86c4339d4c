"""TFX's KFP v2 container entrypoint, able to rebuild the report's artifact type.

KubeflowV2DagRunner gives every step the command
``python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor``.
That entrypoint rebuilds each artifact's Python class from its schema title: a
TFX standard type through `compiler_utils.TITLE_TO_CLASS_PATH`, any other title by
importing it as ``module.Class``. ModelExporter's report has the title
``system.HTML`` (the type the KFP and Vertex AI UIs render), which is no importable
class path. This module adds that title to TFX's own table, then runs TFX's
entrypoint unchanged, with the same flags:

    KubeflowV2DagRunnerConfig(default_image=IMAGE, default_commands=COMMAND)

Steps other than ModelExporter are unaffected: the table only gains entries.
"""

import sys

from absl import app

COMMAND = ["python", "-m", "export_archive.components.tfx.kfp_v2_entrypoint"]


def register_artifact_types() -> None:
    """Maps the report's schema title to its class in TFX's title table."""
    # TFX, imported here: a pipeline definition reads COMMAND without importing it.
    from tfx.orchestration.kubeflow.v2 import compiler_utils

    from export_archive.components.tfx import spec   # imports TFX, as above
    for title, class_path in spec.REPORT_TITLE_TO_CLASS_PATH.items():
        compiler_utils.TITLE_TO_CLASS_PATH.setdefault(title, class_path)


def main(argv=None) -> None:
    # TFX, imported here as in register_artifact_types.
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor
    register_artifact_types()
    # As TFX's own `__main__` block: absl parses its flags, then TFX's parser the rest.
    app.run(kubeflow_v2_run_executor.main, argv=argv or sys.argv,
            flags_parser=kubeflow_v2_run_executor._parse_flags)  # pylint: disable=protected-access


if __name__ == "__main__":
    main()
