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

The component runs the export step (`export_archive.step`, the one the TFX
component, the CLI and `export_archive.export` run) in the component image
(deploy/Dockerfile), so it has the TFX component's gates. Inputs and outputs:

- `trained_model` (Model): a `.keras` / `.h5` file, a SavedModel directory, or a
  TFX Model artifact directory (its `Format-Serving/` is used, as the CLI does).
- `export_config` (str): the export config as JSON text, the same format as the
  TFX component's parameter and the CLI's `--config`.
- `schema`, `transform_graph`, `examples` (optional): as the TFX component's
  inputs, for `kind: tf_example` endpoints and the serving check. With `examples`
  and the check on, parity runs over the whole split as a Beam pipeline
  (`beam_pipeline_args`, e.g. Dataflow's; DirectRunner by default).
- `model_blessing` (optional): an Evaluator's (or InfraValidator's) blessing. Not
  blessed: nothing is exported, `published` is False, `not_published_reason` says
  why, and the task succeeds, as Pusher does.
- `baseline_model` (optional): the model clients are served today. A new model that
  breaks its serving contract (`contract.on_breaking: fail`, the default) is not
  published, the same way.
- `serving_image` (str, optional): the serving image Vertex AI should run the
  model in; empty: Vertex's prebuilt TensorFlow prediction image of the config's
  `serving_runtime`, which defaults to the newest image for the exporting TF
  (`vertex.resolve_serving`): the serving check verifies the export's ops against
  the TF of the image it names.
- `model` (Model): the SavedModel, directly in the artifact's directory
  (`model.path/saved_model.pb`: what TF Serving and Vertex's prebuilt TF images
  load). Metadata: `published`, `not_published_reason`, `contract`, `endpoints`,
  `serving_default`, `source_flavor`, `serving_check`, `framework`.
- `vertex_model` (`google.UnmanagedContainerModel`): the same directory (its URI
  is `model`'s), typed and described for google-cloud-pipeline-components'
  `ModelUploadOp(unmanaged_container_model=...)`, which uploads it to the Vertex
  AI Model Registry: metadata `containerSpec.imageUri` is the serving image.
  This component uploads nothing itself.
- `report_markdown` (Markdown), `report_html` (HTML): the export report, which the
  KFP and Vertex UIs render.
- The return value (`Output`, bool): `published`, to gate later steps:
  `with dsl.If(exporter.outputs["Output"] == True): ModelUploadOp(...)`; why not is
  `model`'s `not_published_reason` metadata (and the report).

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
from typing import List, Optional

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
    model_blessing: Optional[Input[Artifact]] = None,
    baseline_model: Optional[Input[Model]] = None,
    serving_image: str = "",
    beam_pipeline_args: Optional[List[str]] = None,
) -> bool:
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
    import export_archive
    from export_archive import memory
    # Before TensorFlow loads: memory the export frees goes back to the system (memory.py).
    memory.give_freed_memory_back()
    from export_archive import step
    from export_archive.examples import find_example_files
    from export_archive.sources import resolve_model_path

    config = export_archive.ExportConfig.parse(export_config)
    # Resolved first: a TF with no image to serve it fails before anything is written.
    from export_archive.components.kfp import vertex
    # The image of the TF the check verifies the export against (serving_runtime,
    # defaulted to the newest prebuilt image for the exporting TF).
    config, image = vertex.resolve_serving(config, serving_image)
    blessing = None
    if model_blessing is not None:
        blessing = step.blessing_of_artifact(model_blessing.uri, model_blessing.metadata,
                                             model_blessing.path)
    # As the TFX component: the check runs unless the config turns it off, and a
    # failing check (mode "fail") raises before model.path exists.
    outcome = step.run(step.ExportStep(
        model=resolve_model_path(trained_model.path), config=config,
        output_dir=model.path,
        schema_path=schema.path if schema is not None else None,
        transform_graph_path=transform_graph.path if transform_graph is not None else None,
        example_files=find_example_files(examples.path) if examples is not None else (),
        blessing=blessing,
        baseline_dir=resolve_model_path(baseline_model.path) if baseline_model else None,
        check=config.check_dict.get("enabled", True),
        beam_pipeline_args=beam_pipeline_args or (), source_uri=trained_model.uri))

    model.metadata.update(outcome.properties())
    model.metadata["framework"] = "tensorflow"
    if outcome.published:
        result = outcome.result
        model.metadata["endpoints"] = result.endpoint_names
        model.metadata["serving_default"] = result.serving_default
        model.metadata["source_flavor"] = result.flavor
        # Vertex uploads `artifact_uri` as is: point it at the SavedModel written above
        # rather than copying it. KFP and Vertex keep an output URI the executor sets
        # (GCPC's own components rely on that for their outputs).
        vertex_model.uri = model.uri
        vertex_model.metadata["containerSpec"] = {"imageUri": image}
    texts = outcome.report_texts()
    with open(report_markdown.path, "w", encoding="utf-8") as f:
        f.write(texts["md"])
    with open(report_html.path, "w", encoding="utf-8") as f:
        f.write(texts["html"])
    # The one return value (KFP's `Output`) gates later steps; a single value, not a
    # NamedTuple, because kfp.local resolves only `Output` in dsl.If conditions.
    return outcome.published


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
