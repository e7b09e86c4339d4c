"""Vertex AI's prebuilt TensorFlow prediction image for the TensorFlow that exported a model.

Shared by the standalone KFP component (its `vertex_model` output's
`containerSpec.imageUri`, read by google-cloud-pipeline-components' ModelUploadOp)
and the TFX Vertex Pusher factory (pipelines/vertex.py). Imports neither kfp nor
TensorFlow at module level; the list of published images comes from
google-cloud-aiplatform (a TFX dependency), imported only when it is needed.

    >>> prebuilt_tf_image("2.15.1")
    'us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest'
"""

import re
from typing import List, Optional, Tuple

from absl import logging

# Vertex AI's multi-region Artifact Registry prefixes for its prebuilt images;
# the same image is in each, the nearest one pulls faster.
IMAGE_REGIONS = ("us", "europe", "asia")
ACCELERATORS = ("cpu", "gpu")


def _tf_major_minor(tf_version: Optional[str]) -> Tuple[int, int]:
    if tf_version is None:
        import tensorflow as tf   # the TF that exports is the TF the image must serve
        tf_version = tf.__version__
    match = re.match(r"(\d+)\.(\d+)", tf_version)
    if not match:
        raise ValueError(f"tf_version: expected 'MAJOR.MINOR[.PATCH]', got {tf_version!r}")
    return int(match.group(1)), int(match.group(2))


def published_tf_images(region: str = "us",
                        accelerator: str = "cpu") -> List[Tuple[Tuple[int, int], str]]:
    """[((major, minor), uri)] of Vertex's prebuilt TF2 prediction images, newest first,
    as listed by the installed google-cloud-aiplatform."""
    if region not in IMAGE_REGIONS:
        raise ValueError(f"region: expected one of {list(IMAGE_REGIONS)}, got {region!r}")
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator: expected one of {list(ACCELERATORS)}, "
                         f"got {accelerator!r}")
    from google.cloud.aiplatform.constants import prediction
    found = []
    for uri in prediction.TF_CONTAINER_URIS:
        match = prediction.CONTAINER_URI_PATTERN.fullmatch(uri)
        if (match and match["region"] == region and match["framework"] == "tf2"
                and match["accelerator"] == accelerator):
            major, minor = match["version"].split("-")[:2]
            found.append(((int(major), int(minor)), uri))
    return sorted(found, reverse=True)


def prebuilt_tf_image(tf_version: Optional[str] = None, region: str = "us",
                      accelerator: str = "cpu") -> str:
    """The prebuilt Vertex prediction image for `tf_version` (default: the installed TF).

    A SavedModel loads in a TF Serving of its own version or newer, so the image
    must match the exporting TF. When Vertex publishes no image for that version
    (none for TF 2.16 in google-cloud-aiplatform 1.165's list), this returns the
    newest older one and logs a warning: a model that uses no op added since that
    version serves there, but that is not checked here. Pass an image explicitly
    (the component's `serving_image`, the Pusher factory's `serving_image`) to decide.
    """
    wanted = _tf_major_minor(tf_version)
    images = published_tf_images(region, accelerator)
    for version, uri in images:
        if version == wanted:
            return uri
    older = [(version, uri) for version, uri in images if version < wanted]
    if not older:
        raise ValueError(
            f"tf_version: Vertex AI publishes no prebuilt {accelerator} prediction image for "
            f"TensorFlow {wanted[0]}.{wanted[1]} or older (published: "
            f"{[f'{v[0]}.{v[1]}' for v, _ in images]}); pass serving_image= with an image "
            "that has a TF Serving able to load the model")
    version, uri = older[0]
    logging.warning(
        "Vertex AI publishes no prebuilt prediction image for TensorFlow %d.%d (the "
        "exporting version); using the newest older one, %s (TF %d.%d). Models using ops "
        "newer than that fail to load there: pass serving_image= to choose the image.",
        wanted[0], wanted[1], uri, version[0], version[1])
    return uri
