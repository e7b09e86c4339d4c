"""Compiles the pipeline with the KFP v2 runner and submits it to Vertex AI Pipelines.

    python deploy/vertex_submit.py --project P --region us-central1 \\
        --pipeline-root gs://BUCKET/tfx-export-archive \\
        --image us-docker.pkg.dev/P/REPO/tfx-export-archive:0.1.0 \\
        [--service-account SA@P.iam.gserviceaccount.com] [--dry-run] \\
        [--vertex-endpoint penguin [--serving-image IMAGE]]

`--image` names the component image every step runs in (deploy/Dockerfile built
and pushed to a registry Vertex AI can pull; README: "The component image").
`--vertex-endpoint NAME` replaces the filesystem Pusher with TFX's Vertex AI Pusher
(export_archive.pipelines.vertex): the exported model is uploaded to the Model
Registry of --project/--region and deployed to the Endpoint NAME, in
`--serving-image` (default: Vertex's prebuilt TensorFlow prediction image).

`--dry-run` compiles, reads the template back the way `aiplatform.PipelineJob`
does (its template loader and runtime-config builder, which make no network
calls) and prints the job as JSON without creating it. Without `--dry-run`,
`aiplatform.PipelineJob(...).submit()` creates the run (needs credentials:
`gcloud auth application-default login` or a service account key).
`--template FILE` submits an already compiled PipelineJob JSON instead of compiling.
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vertex_submit", description=__doc__.split("\n")[0])
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument("--region", required=True, help="Vertex AI region, e.g. us-central1")
    parser.add_argument("--pipeline-root", required=True,
                        help="gs:// directory for the pipeline's artifacts")
    parser.add_argument("--image",
                        help="component image (deploy/Dockerfile, pushed to Artifact "
                             "Registry); required unless --template is given")
    parser.add_argument("--service-account", help="service account the run executes as")
    parser.add_argument("--display-name", help="run display name (default: pipeline name)")
    parser.add_argument("--template", help="a compiled PipelineJob JSON: skip compiling")
    parser.add_argument("--output-dir", default="build/vertex",
                        help="where the compiled template is written")
    parser.add_argument("--export-config", help="ModelExporter's export config (JSON or file)")
    parser.add_argument("--keras", choices=["3", "2"], default="3")
    parser.add_argument("--beam-pipeline-args", action="append", default=[], metavar="ARGS",
                        help="Beam flags as one quoted string (repeatable)")
    parser.add_argument("--exporter-cpu", type=float, help="ModelExporter vCPU limit")
    parser.add_argument("--exporter-memory", type=float, help="ModelExporter memory limit, GB")
    parser.add_argument("--no-cache", action="store_true", help="disable Vertex caching")
    parser.add_argument("--vertex-endpoint", metavar="NAME",
                        help="push with TFX's Vertex AI Pusher to this Endpoint (created "
                             "if missing) in --project/--region")
    parser.add_argument("--serving-image",
                        help="serving image of the uploaded Model (default: Vertex's "
                             "prebuilt TensorFlow prediction image); needs --vertex-endpoint")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the job instead of submitting it")
    args = parser.parse_args(argv)
    if not args.pipeline_root.startswith("gs://"):
        parser.error(f"--pipeline-root must be a gs:// path (Vertex AI writes artifacts "
                     f"to Cloud Storage), got {args.pipeline_root!r}")
    if not args.template and not args.image:
        parser.error("--image is required unless --template is given")
    if args.serving_image and not args.vertex_endpoint:
        parser.error("--serving-image applies only with --vertex-endpoint NAME")
    if args.template and args.vertex_endpoint:
        parser.error("--vertex-endpoint is compiled into the template: drop --template "
                     "to compile with it")
    return args


def compile_template(args: argparse.Namespace) -> str:
    """The KFP v2 runner's compile (export_archive.pipelines.kubeflow_v2_runner)."""
    from export_archive.pipelines import kubeflow_v2_runner as runner
    argv = ["--image", args.image, "--pipeline-root", args.pipeline_root,
            "--output-dir", args.output_dir, "--format", "json", "--keras", args.keras]
    if args.export_config:
        argv += ["--export-config", args.export_config]
    for value in args.beam_pipeline_args:
        argv.append("--beam-pipeline-args=" + value)
    if args.exporter_cpu is not None:
        argv += ["--exporter-cpu", str(args.exporter_cpu)]
    if args.exporter_memory is not None:
        argv += ["--exporter-memory", str(args.exporter_memory)]
    if args.no_cache:
        argv.append("--no-cache")
    if args.vertex_endpoint:
        argv += ["--vertex-endpoint", args.vertex_endpoint, "--vertex-project", args.project,
                 "--vertex-region", args.region]
        if args.serving_image:
            argv += ["--serving-image", args.serving_image]
    return runner.compile_from_flags(argv)


def images(template: Dict[str, Any]) -> List[str]:
    spec = template.get("pipelineSpec", template)
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    return sorted({e["container"]["image"] for e in executors.values() if "container" in e})


def describe_job(args: argparse.Namespace, template_path: str,
                 parameter_values: Dict[str, Any]) -> Dict[str, Any]:
    """The job as aiplatform.PipelineJob would create it, built offline."""
    with open(template_path) as f:
        template = json.load(f)
    spec = template.get("pipelineSpec", template)
    job = {
        "project": args.project,
        "location": args.region,
        "display_name": args.display_name or spec["pipelineInfo"]["name"],
        "template_path": os.path.abspath(template_path),
        "pipeline_root": args.pipeline_root,
        "parameter_values": parameter_values,
        "enable_caching": False if args.no_cache else None,
        "service_account": args.service_account,
        "images": images(template),
    }
    job["image"] = job["images"][0] if len(job["images"]) == 1 else None
    try:
        # The same loader and runtime-config builder PipelineJob.__init__ uses; both
        # work on a local file without credentials or network.
        from google.cloud.aiplatform.utils import pipeline_utils, yaml_utils
    except ImportError:
        job["runtime_config"] = None   # google-cloud-aiplatform not installed
        return job
    loaded = yaml_utils.load_yaml(template_path)
    if loaded.get("pipelineSpec") is None:
        loaded = {"pipelineSpec": loaded, "runtimeConfig": {}}
    builder = pipeline_utils.PipelineRuntimeConfigBuilder.from_job_spec_json(loaded)
    builder.update_pipeline_root(args.pipeline_root)
    builder.update_runtime_parameters(parameter_values)
    job["runtime_config"] = builder.build()
    return job


def submit(job: Dict[str, Any]) -> str:
    from google.cloud import aiplatform   # only here: the dry run never needs it
    aiplatform.init(project=job["project"], location=job["location"])
    pipeline_job = aiplatform.PipelineJob(
        display_name=job["display_name"], template_path=job["template_path"],
        pipeline_root=job["pipeline_root"], parameter_values=job["parameter_values"],
        enable_caching=job["enable_caching"])
    pipeline_job.submit(service_account=job["service_account"])
    return pipeline_job.resource_name


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    template_path = args.template or compile_template(args)
    # The TFX pipeline has no runtime parameters: everything is compiled in.
    job = describe_job(args, template_path, parameter_values={})
    if args.dry_run:
        print(json.dumps(job, indent=2, sort_keys=True))
        return 0
    print(f"Submitted {submit(job)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
