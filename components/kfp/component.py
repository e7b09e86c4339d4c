"""ModelExporter as a standalone KFP v2 component: plain KFP, no TFX runtime.

Use it in any KFP v2 / Vertex AI pipeline, from Python or from the compiled YAML::

    from kfp import dsl
    from google_cloud_pipeline_components.v1.model import ModelUploadOp
    from export_archive.components.kfp.component import build_component

    model_exporter = build_component("REGION-docker.pkg.dev/PROJECT/REPO/tfx-export-archive:0.1.0")

    @dsl.pipeline(name="export")
    def export_pipeline(model_uri: str):
        trained = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        exported = model_exporter(trained_model=trained.output,
                                  export_config='{"endpoints": [{"name": "serve"}]}')
        ModelUploadOp(display_name="penguin",
                      unmanaged_container_model=exported.outputs["vertex_model"])

The component runs `export_archive.export` (the API behind `export-archive
export`) in the component image (deploy/Dockerfile). Inputs and outputs:

- `trained_model` (Model): a `.keras` / `.h5` file, a SavedModel directory, or a
  TFX Model artifact directory (its `Format-Serving/` is used, as the CLI does).
- `export_config` (str): the export config as JSON text, the same format as the
  TFX component's parameter and the CLI's `--config`.
- `schema`, `transform_graph`, `examples` (optional): as the TFX component's
  inputs, for `kind: tf_example` endpoints and the serving check.
- `serving_image` (str, optional): the serving image Vertex AI should run the
  model in; empty: Vertex's prebuilt TensorFlow prediction image for the TF that
  exported the model (`vertex.prebuilt_tf_image`).
- `model` (Model): the SavedModel, directly in the artifact's directory
  (`model.path/saved_model.pb`: what TF Serving and Vertex's prebuilt TF images
  load). Metadata: `endpoints`, `serving_default`, `source_flavor`,
  `serving_check`, `framework`.
- `vertex_model` (`google.UnmanagedContainerModel`): the same directory (its URI
  is `model`'s), typed and described for google-cloud-pipeline-components'
  `ModelUploadOp(unmanaged_container_model=...)`, which uploads it to the Vertex
  AI Model Registry: metadata `containerSpec.imageUri` is the serving image.
  This component uploads nothing itself.
- `report_markdown` (Markdown), `report_html` (HTML): the export report, which the
  KFP and Vertex UIs render.

As in the TFX component, the serving check runs unless the config says
`"check": {"enabled": false}`; a failing check (mode "fail") fails the task
before anything is written to `model`.

`DEFAULT_IMAGE` is a placeholder no cluster can pull: build deploy/Dockerfile,
push it to your registry and pass its name to `build_component(image)` (or
`python -m export_archive.components.kfp.component OUT.yaml IMAGE`).
`model_exporter_component.yaml` is the compiled `model_exporter` for the
placeholder (tests/integration/test_kfp_component.py keeps it in sync:
regenerate with `python -m export_archive.components.kfp.component`).
"""

import os
import sys
from typing import Optional

# The artifact type ModelUploadOp's `unmanaged_container_model` input declares; KFP
# checks it by schema title when a pipeline connects the two. kfp adds this import
# to the compiled component, so the image needs the package (the `tfx` extra).
from google_cloud_pipeline_components.types.artifact_types import UnmanagedContainerModel
from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Model, Output

# A placeholder: the local tag `docker build -f deploy/Dockerfile` gives in the
# README's recipe, which no cluster can pull. Push the image to your registry and
# pass that name to build_component(); the committed YAML's description says so.
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
    vertex_model: Output[UnmanagedContainerModel],
    schema: Optional[Input[Artifact]] = None,
    transform_graph: Optional[Input[Artifact]] = None,
    examples: Optional[Input[Artifact]] = None,
    serving_image: str = "",
):
    """Exports `trained_model` with the endpoints of `export_config` into `model`.

    `vertex_model` is the same SavedModel typed for google-cloud-pipeline-components'
    ModelUploadOp (Vertex AI Model Registry), its containerSpec.imageUri being
    `serving_image` or, if empty, Vertex's prebuilt TensorFlow prediction image
    for the exporting TF. IMAGE: the placeholder image tfx-export-archive:0.1.0
    must be replaced with one built from deploy/Dockerfile and pushed to a
    registry your cluster can pull (build_component(image), or edit
    deploymentSpec.executors.*.container.image).
    """
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
    # Resolved first: a TF with no image to serve it fails before anything is written.
    from export_archive.components.kfp import vertex
    image = serving_image or vertex.prebuilt_tf_image()
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
    # Vertex uploads `artifact_uri` as is: point it at the SavedModel written above
    # rather than copying it. KFP and Vertex keep an output URI the executor sets
    # (GCPC's own components rely on that for their outputs).
    vertex_model.uri = model.uri
    vertex_model.metadata["containerSpec"] = {"imageUri": image}
    with open(report_markdown.path, "w", encoding="utf-8") as f:
        f.write(report.to_markdown(result, config, trained_model.uri))
    with open(report_html.path, "w", encoding="utf-8") as f:
        f.write(report.to_html(result, config, trained_model.uri))


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
    # python -m export_archive.components.kfp.component [OUT.yaml [IMAGE]]
    print(compile_component(*sys.argv[1:3]))
