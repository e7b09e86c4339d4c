"""Compiles the pipeline for Kubeflow Pipelines v2 and Vertex AI Pipelines (no submission).

    python -m export_archive.pipelines.kubeflow_v2_runner \\
        --image us-docker.pkg.dev/PROJECT/REPO/tfx-export-archive:0.1.0 \\
        --pipeline-root gs://BUCKET/tfx-export-archive \\
        --output-dir build/ --format json            # Vertex PipelineJob JSON
        # --format yaml                              # KFP v2 PipelineSpec YAML
        # --vertex-endpoint penguin --vertex-project P --vertex-region us-central1
        #                     # push with TFX's Vertex AI Pusher instead (pipelines/vertex.py)

`--image` is required: every step runs in it, and only an image pushed to a
registry the cluster can pull works (README: "The component image").

`json` is what `KubeflowV2DagRunner` writes by default: a PipelineJob (display name,
labels, runtimeConfig with gcsOutputDirectory = pipeline root, and the PipelineSpec
under `pipelineSpec`) — the template `aiplatform.PipelineJob` submits. `yaml` is the
same PipelineSpec on its own, the file KFP v2 (`kfp.Client().create_run_from_pipeline_package`,
the KFP UI upload, `kfp.components.load_component_from_file`) reads; TFX's runner writes
it when the output file name ends in `.yaml`.

Nothing here runs the pipeline or touches the pipeline root: the user modules
(Transform, Trainer) are referenced by their import path in the installed package
(the component image has it), so TFX does not build and upload module wheels at
compile time.
"""

import argparse
import os
import shlex
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

# Light (absl and the config, no TFX, no TensorFlow). TFX, KFP and the pipeline are
# imported in the functions that need them: after --keras 2 has set
# TF_USE_LEGACY_KERAS, which must precede the first TensorFlow import.
from export_archive.components.kfp.vertex import default_serving_runtime
from export_archive.components.tfx import kfp_v2_entrypoint
from export_archive.config import ExportConfig
from export_archive.pipelines import vertex
from export_archive.pipelines.vertex import DEFAULT_MACHINE_TYPE

# The penguin CSV ships in the component image here (deploy/Dockerfile copies it):
# CsvExampleGen's driver reads `input_base` inside the container, so the default
# data root must be a container path, not a path on the machine that compiles.
IMAGE_DATA_ROOT = "/opt/tfx-export-archive/data/penguins"
DEFAULT_PIPELINE_NAME = "export-archive-penguin"
# Pusher's destination under the pipeline root (deploy/k8s serves from there).
SERVING_MODEL_SUBDIR = "serving_model"
FORMATS = {"json": "pipeline.json", "yaml": "pipeline.yaml"}
EXPORTER_ID = "ModelExporter"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubeflow_v2_runner",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--image", required=True,
                        help="component image every step runs in: deploy/Dockerfile "
                             "built and pushed to your registry, e.g. REGION-docker.pkg.dev/"
                             "PROJECT/REPO/tfx-export-archive:0.1.0")
    parser.add_argument("--pipeline-root", required=True,
                        help="where the pipeline writes artifacts, e.g. gs://BUCKET/root")
    parser.add_argument("--serving-model-dir",
                        help=f"Pusher destination (default: <pipeline-root>/"
                             f"{SERVING_MODEL_SUBDIR})")
    parser.add_argument("--data-root", default=IMAGE_DATA_ROOT,
                        help="CSV directory as the container sees it (default: the "
                             "penguin data baked into the image)")
    parser.add_argument("--output-dir", default=".", help="where to write the compiled file")
    parser.add_argument("--format", choices=sorted(FORMATS), default="json",
                        help="json: Vertex PipelineJob; yaml: KFP v2 PipelineSpec")
    parser.add_argument("--pipeline-name", default=DEFAULT_PIPELINE_NAME)
    parser.add_argument("--keras", choices=["3", "2"], default="3")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--export-config",
                        help="ModelExporter's export config, JSON text or a JSON file "
                             "(default: the pipeline's DEFAULT_EXPORT_CONFIG)")
    parser.add_argument("--beam-pipeline-args", action="append", default=[],
                        metavar="ARGS",
                        help="Beam flags for every Beam step, as one quoted string "
                             "(repeatable): --beam-pipeline-args='--runner=DataflowRunner "
                             "--project=P --region=R --temp_location=gs://B/tmp'")
    parser.add_argument("--exporter-cpu", type=float,
                        help="ModelExporter vCPU limit (KFP v2 ResourceSpec.cpu_limit)")
    parser.add_argument("--exporter-memory", type=float,
                        help="ModelExporter memory limit in GB (ResourceSpec.memory_limit)")
    parser.add_argument("--no-cache", action="store_true")
    vertex = parser.add_argument_group(
        "Vertex AI push", "push with TFX's Vertex AI Pusher (Model Registry upload and "
        "Endpoint deploy) instead of to --serving-model-dir")
    vertex.add_argument("--vertex-endpoint", metavar="NAME",
                        help="Endpoint display name; created if missing")
    vertex.add_argument("--vertex-project", help="Google Cloud project of the Endpoint")
    vertex.add_argument("--vertex-region", help="Vertex AI region, e.g. us-central1")
    vertex.add_argument("--serving-image",
                        help="serving image of the uploaded Model (default: Vertex's "
                             "prebuilt TensorFlow prediction image for this TF)")
    vertex.add_argument("--machine-type", default=DEFAULT_MACHINE_TYPE,
                        help="Endpoint machine type (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.vertex_endpoint and not (args.vertex_project and args.vertex_region):
        parser.error("--vertex-endpoint needs --vertex-project and --vertex-region")
    if not args.vertex_endpoint and (args.vertex_project or args.vertex_region
                                     or args.serving_image):
        parser.error("--vertex-project/--vertex-region/--serving-image only apply with "
                     "--vertex-endpoint NAME")
    return args


def split_beam_args(values: Sequence[str]) -> Optional[List[str]]:
    args = [a for v in values for a in shlex.split(v)]
    return args or None


def load_export_config(text_or_path: Optional[str]) -> Optional[Dict[str, Any]]:
    """The --export-config value, validated now (a bad config fails the compile)."""
    if not text_or_path:
        return None
    return ExportConfig.parse(text_or_path).to_dict()


def resource_spec(cpu: Optional[float] = None, memory_gb: Optional[float] = None):
    """A KFP v2 container ResourceSpec (what KubeflowV2DagRunner reads from
    `component.with_platform_config`), or None if neither limit is set."""
    if cpu is None and memory_gb is None:
        return None
    from kfp.pipeline_spec import pipeline_spec_pb2   # KFP: see the imports at the top
    spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
    if cpu is not None:
        spec.cpu_limit = cpu
    if memory_gb is not None:
        spec.memory_limit = memory_gb
    return spec


def build_pipeline(pipeline_root: str, serving_model_dir: Optional[str] = None,
                   data_root: str = IMAGE_DATA_ROOT,
                   pipeline_name: str = DEFAULT_PIPELINE_NAME, keras_version: str = "3",
                   train_steps: int = 100, beam_pipeline_args: Optional[List[str]] = None,
                   exporter_resources=None, enable_cache: bool = True,
                   export_config: Optional[Dict[str, Any]] = None,
                   pusher: Optional[Callable[..., Any]] = None):
    """create_pipeline for a container: modules from the installed package.
    `pusher`: create_pipeline's push-step factory (vertex.vertex_pusher for Vertex AI)."""
    from export_archive.pipelines import pipeline as pipeline_module   # TFX: see the top
    serving_model_dir = (serving_model_dir
                         or pipeline_root.rstrip("/") + "/" + SERVING_MODEL_SUBDIR)
    tfx_pipeline = pipeline_module.create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root,
        serving_model_dir=serving_model_dir, data_root=data_root,
        keras_version=keras_version, export_config=export_config,
        train_steps=train_steps, beam_pipeline_args=beam_pipeline_args,
        enable_cache=enable_cache, modules_from_package=True, pusher=pusher)
    if exporter_resources is not None:
        exporter = next(c for c in tfx_pipeline.components if c.id == EXPORTER_ID)
        exporter.with_platform_config(exporter_resources)
    return tfx_pipeline


def compile_pipeline(tfx_pipeline, image: str, output_dir: str,
                     fmt: str = "json") -> str:
    """Writes the compiled pipeline and returns its path. Never submits."""
    from tfx import v1 as tfx   # see the imports at the top
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        # TFX's own entrypoint, plus the report's system.HTML type (see the module).
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, default_commands=kfp_v2_entrypoint.COMMAND),
        output_dir=output_dir, output_filename=FORMATS[fmt])
    runner.run(tfx_pipeline, write_out=True)
    return os.path.join(output_dir, FORMATS[fmt])


def compile_from_flags(argv: Optional[Sequence[str]] = None) -> str:
    """Parses the command line, compiles, and returns the written file's path."""
    args = parse_args(argv)
    if args.keras == "2":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"   # before TensorFlow is first imported
    pusher = None
    export_config = load_export_config(args.export_config)
    if args.vertex_endpoint:
        runtime = None
        if not args.serving_image:
            # ModelExporter's check verifies the export against the TF of the prebuilt
            # image the Pusher deploys it with (see vertex.resolve_serving).
            from export_archive.pipelines.pipeline import DEFAULT_EXPORT_CONFIG   # TFX
            export_config = dict(export_config or DEFAULT_EXPORT_CONFIG)
            runtime = export_config.setdefault("serving_runtime", default_serving_runtime(
                region=vertex.image_region(args.vertex_region)))
        pusher = vertex.vertex_pusher(
            project=args.vertex_project, region=args.vertex_region,
            endpoint_name=args.vertex_endpoint, serving_image=args.serving_image,
            machine_type=args.machine_type, serving_runtime=runtime)
    tfx_pipeline = build_pipeline(
        pusher=pusher,
        pipeline_root=args.pipeline_root, serving_model_dir=args.serving_model_dir,
        data_root=args.data_root, pipeline_name=args.pipeline_name,
        keras_version=args.keras, train_steps=args.train_steps,
        beam_pipeline_args=split_beam_args(args.beam_pipeline_args),
        exporter_resources=resource_spec(args.exporter_cpu, args.exporter_memory),
        enable_cache=not args.no_cache, export_config=export_config)
    return compile_pipeline(tfx_pipeline, args.image, args.output_dir, args.format)


def main(argv: Optional[Sequence[str]] = None) -> int:
    print(compile_from_flags(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
