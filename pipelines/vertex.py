"""TFX's Vertex AI Pusher for ModelExporter's output: Model Registry upload and Endpoint deploy.

    from export_archive.pipelines import pipeline, vertex
    pipeline.create_pipeline(..., pusher=vertex.vertex_pusher(
        project="my-project", region="us-central1", endpoint_name="penguin"))

`create_pipeline` calls the returned factory with ModelExporter's `model` and, when
the pipeline has them, Evaluator's `model_blessing` / InfraValidator's
`infra_blessing`. TFX's Vertex Pusher executor
(tfx.extensions.google_cloud_ai_platform.pusher.executor) then, when blessed,
copies the model's `Format-Serving/` to its PushedModel URI,
`aiplatform.Model.upload(artifact_uri=<that copy>,
serving_container_image_uri=...)`, and deploys the Model to the Endpoint named
`endpoint_name` (created if missing) with the `serving_args`. On Vertex AI
Pipelines the pipeline root is `gs://`, so the copy is too, which is what
`Model.upload` needs.
"""

from typing import Any, Callable, Dict, Optional

# No TFX at the top: the KFP v2 runner reads DEFAULT_MACHINE_TYPE for its flags, and
# may set TF_USE_LEGACY_KERAS before anything imports TensorFlow (TFX does).
from export_archive.components.kfp.vertex import IMAGE_REGIONS, prebuilt_tf_image

DEFAULT_MACHINE_TYPE = "n1-standard-2"


def image_region(vertex_region: str) -> str:
    """The Artifact Registry multi-region of Vertex's prebuilt images nearest to a
    Vertex region ("europe-west4" -> "europe"); "us" for regions outside the three."""
    prefix = vertex_region.split("-", 1)[0]
    return prefix if prefix in IMAGE_REGIONS else "us"


def vertex_push_config(project: str, region: str, endpoint_name: str,
                       serving_image: Optional[str] = None,
                       machine_type: str = DEFAULT_MACHINE_TYPE,
                       serving_args: Optional[Dict[str, Any]] = None,
                       serving_runtime: Optional[str] = None) -> Dict[str, Any]:
    """The Vertex Pusher's `custom_config`.

    `serving_runtime`: the export config's (the TF the serving check verified the
    export against); then the image is the prebuilt one of exactly that TF.

    `serving_image` defaults to Vertex's prebuilt TensorFlow prediction image for
    the TF installed where the pipeline is defined: constraints.txt pins the same
    TF in the component image that exports, so it is the exporting TF too.
    `serving_args` go to `aiplatform.Model.deploy` (e.g. `min_replica_count`,
    `traffic_percentage`, `service_account`).
    """
    from tfx import v1 as tfx   # see the imports at the top
    ai_platform = tfx.extensions.google_cloud_ai_platform
    for name, value in (("project", project), ("region", region),
                        ("endpoint_name", endpoint_name)):
        if not value:
            raise ValueError(f"vertex_pusher: {name} is required (got {value!r}); the "
                             "Vertex Pusher uploads to <project>/<region> and deploys to "
                             "the Endpoint named endpoint_name")
    args = {"project_id": project, "endpoint_name": endpoint_name,
            "machine_type": machine_type}
    clash = sorted(set(args) & set(serving_args or {}))
    if clash:
        raise ValueError(f"vertex_pusher: serving_args must not set {clash}: pass them as "
                         "vertex_pusher's own arguments")
    args.update(serving_args or {})
    return {
        ai_platform.ENABLE_VERTEX_KEY: True,
        ai_platform.VERTEX_REGION_KEY: region,
        ai_platform.VERTEX_CONTAINER_IMAGE_URI_KEY: (
            serving_image or prebuilt_tf_image(region=image_region(region),
                                               serving_runtime=serving_runtime)),
        ai_platform.SERVING_ARGS_KEY: args,
    }


def vertex_pusher(project: str, region: str, endpoint_name: str,
                  serving_image: Optional[str] = None,
                  machine_type: str = DEFAULT_MACHINE_TYPE,
                  serving_args: Optional[Dict[str, Any]] = None,
                  serving_runtime: Optional[str] = None) -> Callable[..., Any]:
    """A `create_pipeline(pusher=...)` factory building TFX's Vertex AI Pusher.

    The config is built (and checked) now, when the pipeline is defined."""
    custom_config = vertex_push_config(project, region, endpoint_name, serving_image,
                                       machine_type, serving_args, serving_runtime)

    def make(**push_inputs):
        from tfx import v1 as tfx   # see the imports at the top
        return tfx.extensions.google_cloud_ai_platform.Pusher(
            **push_inputs, custom_config=custom_config)
    return make
