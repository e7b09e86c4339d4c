"""ModelExporter as a standalone KFP v2 component: plain KFP, no TFX runtime.

Use it in any KFP v2 / Vertex AI pipeline, from Python or from the compiled YAML::

    from kfp import dsl
    from export_archive.components.kfp.component import model_exporter
    # or: model_exporter = kfp.components.load_component_from_file(
    #         "components/kfp/model_exporter_component.yaml")

    @dsl.pipeline(name="export")
    def export_pipeline(model_uri: str):
        trained = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        model_exporter(trained_model=trained.output,
                       export_config='{"endpoints": [{"name": "serve"}]}')

The component runs `export_archive.export` (the API behind `export-archive
export`) in the component image (deploy/Dockerfile). Inputs and outputs:

- `trained_model` (Model): a `.keras` / `.h5` file, a SavedModel directory, or a
  TFX Model artifact directory (its `Format-Serving/` is used, as the CLI does).
- `export_config` (str): the export config as JSON text, the same format as the
  TFX component's parameter and the CLI's `--config`.
- `schema`, `transform_graph`, `examples` (optional): as the TFX component's
  inputs, for `kind: tf_example` endpoints and the serving check.
- `model` (Model): the SavedModel, directly in the artifact's directory
  (`model.path/saved_model.pb`: what Vertex AI Model upload and TF Serving
  expect). Metadata: `endpoints`, `serving_default`, `source_flavor`,
  `serving_check`, `framework`.
- `report_markdown` (Markdown), `report_html` (HTML): the export report, which the
  KFP and Vertex UIs render.

As in the TFX component, the serving check runs unless the config says
`"check": {"enabled": false}`; a failing check (mode "fail") fails the task
before anything is written to `model`.

The image defaults to `DEFAULT_IMAGE`; `build_component(image)` makes the same
component for another image. `model_exporter_component.yaml` is the compiled
`model_exporter` (tests/integration/test_kfp_component.py keeps it in sync:
regenerate with `python -m export_archive.components.kfp.component`).
"""

import os
import sys
from typing import Optional

from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Model, Output

# The image deploy/Dockerfile builds (`docker build -t tfx-export-archive:0.1.0 -f
# deploy/Dockerfile .`); push it to a registry your cluster can pull from and pass
# that name to build_component().
DEFAULT_IMAGE = "tfx-export-archive:0.1.0"
COMPONENT_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "model_exporter_component.yaml")

# Metadata keys on the output Model, named as the TFX component's custom properties.
ENDPOINTS_METADATA = "endpoints"
SERVING_DEFAULT_METADATA = "serving_default"
FLAVOR_METADATA = "source_flavor"
SERVING_CHECK_METADATA = "serving_check"


def model_exporter(
    trained_model: Input[Model],
    export_config: str,
    model: Output[Model],
    report_markdown: Output[Markdown],
    report_html: Output[HTML],
    schema: Optional[Input[Artifact]] = None,
    transform_graph: Optional[Input[Artifact]] = None,
    examples: Optional[Input[Artifact]] = None,
):
    """Exports `trained_model` with the endpoints of `export_config` into `model`."""
    # KFP compiles this body into the component: it must be self-contained, and
    # only the component image's packages (export_archive, TF, KFP) are available.
    import os

    import export_archive
    from export_archive import report
    from export_archive.examples import find_example_files
    from export_archive.sources import resolve_model_path

    config = export_archive.ExportConfig.parse(export_config)
    example_builder = None
    if schema is not None or transform_graph is not None:
        from export_archive import examples as examples_module
        example_builder = examples_module.ExampleEndpointBuilder(
            schema_path=schema.path if schema is not None else None,
            transform_graph_path=transform_graph.path if transform_graph is not None else None,
            example_files=find_example_files(examples.path) if examples is not None else None)
    # As the TFX component: the check runs unless the config turns it off, and a
    # failing check (mode "fail") raises before model.path exists.
    run_check = config.check_dict.get("enabled", True)
    result = export_archive.export(resolve_model_path(trained_model.path), config, model.path,
                                   overwrite=True, example_builder=example_builder,
                                   check=run_check)

    model.metadata["endpoints"] = result.endpoint_names
    model.metadata["serving_default"] = result.serving_default
    model.metadata["source_flavor"] = result.flavor
    model.metadata["framework"] = "tensorflow"
    if result.check_passed is not None:
        failures = [f"{c['endpoint'] or '(model)'}: {c['check']}: {c['detail']}"
                    for c in result.checks if not c["passed"]]
        model.metadata["serving_check"] = (
            "passed" if result.check_passed else "failed: " + " | ".join(failures))
    with open(report_markdown.path, "w", encoding="utf-8") as f:
        f.write(report.to_markdown(result))
    with open(report_html.path, "w", encoding="utf-8") as f:
        f.write(report.to_html(result))


def build_component(image: str = DEFAULT_IMAGE):
    """The KFP component running in `image`, which must have this package installed.

    `install_kfp_package=False`: the image already has the pinned kfp (a runtime
    `pip install kfp` would need network access and could change versions).
    """
    return dsl.component(_EXPORT_FN, base_image=image, install_kfp_package=False)


# The plain function (for build_component); the name `model_exporter` becomes the
# component, so the compiled component is named `model-exporter`.
_EXPORT_FN = model_exporter
model_exporter = build_component()


def compile_component(path: str = COMPONENT_YAML, image: str = DEFAULT_IMAGE) -> str:
    compiler.Compiler().compile(build_component(image), path)
    return path


if __name__ == "__main__":
    print(compile_component(*sys.argv[1:2]))
