"""Vertex AI's prebuilt TensorFlow prediction image for the TensorFlow that exported a model.

Shared by the standalone KFP component (its `vertex_model` output's
`containerSpec.imageUri`, read by google-cloud-pipeline-components' ModelUploadOp)
and the TFX Vertex Pusher factory (pipelines/vertex.py). Imports neither kfp nor
TensorFlow at module level; the list of published images comes from
google-cloud-aiplatform (a TFX dependency), imported only when it is needed.

    >>> prebuilt_tf_image("2.15.1")
    'us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest'
"""

import dataclasses
import re
from typing import List, Optional, Tuple

from absl import logging

from export_archive.runtimes import FIELD, available, major_minor

# Vertex AI's multi-region Artifact Registry prefixes for its prebuilt images;
# the same image is in each, the nearest one pulls faster.
IMAGE_REGIONS = ("us", "europe", "asia")
ACCELERATORS = ("cpu", "gpu")


def _tf_major_minor(tf_version: Optional[str]) -> Tuple[int, int]:
    if tf_version is None:
        # The TF that exports is the TF the image must serve (imported here: this
        # module imports no TensorFlow at module level, see its docstring).
        import tensorflow as tf
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
    from google.cloud.aiplatform.constants import prediction   # heavy: see the module docstring
    found = []
    for uri in prediction.TF_CONTAINER_URIS:
        match = prediction.CONTAINER_URI_PATTERN.fullmatch(uri)
        if (match and match["region"] == region and match["framework"] == "tf2"
                and match["accelerator"] == accelerator):
            major, minor = match["version"].split("-")[:2]
            found.append(((int(major), int(minor)), uri))
    return sorted(found, reverse=True)


def prebuilt_tf_image(tf_version: Optional[str] = None, region: str = "us",
                      accelerator: str = "cpu", serving_runtime: Optional[str] = None) -> str:
    """The prebuilt Vertex prediction image an export was checked for.

    `serving_runtime` ("2.15", the config's field: the TF the serving check verified
    the export's ops against, see export_archive.runtimes): the image of exactly that
    TF, or a ValueError naming the images Vertex publishes. Without it, the image of
    `tf_version` (default: the installed TF, the exporting one) if Vertex publishes
    one; else the newest older one, with a warning, since nothing verified that the
    export serves there: set `serving_runtime` (`default_serving_runtime`) so that the
    check does.
    """
    images = published_tf_images(region, accelerator)
    if serving_runtime is not None:
        wanted_text = major_minor(serving_runtime)
        for version, uri in images:
            if f"{version[0]}.{version[1]}" == wanted_text:
                return uri
        raise ValueError(
            f"{FIELD}: Vertex AI publishes no prebuilt {accelerator} prediction image for "
            f"TensorFlow {serving_runtime}, the runtime the export was checked against; "
            f"published: {[f'{v[0]}.{v[1]}' for v, _ in images]}. Fix: set {FIELD} to one "
            "of those (the check then verifies the export serves there), or pass "
            "serving_image= with an image whose TF Serving is that version")
    wanted = _tf_major_minor(tf_version)
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
        "exporting version); using the newest older one, %s (TF %d.%d), which nothing "
        "checked the export against: set the export config's serving_runtime to "
        "\"%d.%d\" so that the serving check verifies it, or pass serving_image=.",
        wanted[0], wanted[1], uri, version[0], version[1], version[0], version[1])
    return uri


def default_serving_runtime(tf_version: Optional[str] = None, region: str = "us",
                            accelerator: str = "cpu") -> str:
    """The `serving_runtime` to check an export against when Vertex's prebuilt image
    serves it: the newest published image's TF that is no newer than `tf_version`
    (default: the exporting TF) and has a shipped op registry.

        >>> default_serving_runtime("2.16.2")
        '2.15'
    """
    wanted = _tf_major_minor(tf_version)
    known = set(available())
    for version, _ in published_tf_images(region, accelerator):
        text = f"{version[0]}.{version[1]}"
        if version <= wanted and text in known:
            return text
    raise ValueError(
        f"serving_runtime: no Vertex AI prebuilt {accelerator} image for TensorFlow "
        f"{wanted[0]}.{wanted[1]} or older has an op registry (registries: "
        f"{sorted(known)}). Fix: pass serving_image=, or add a registry with "
        "scripts/make_op_registry.py (docs/runtimes.md)")


def resolve_serving(config, serving_image: str = "", region: str = "us",
                    accelerator: str = "cpu"):
    """(config, image) for an export Vertex serves: with `serving_image` given, both as
    they are; else `config` (an ExportConfig) with its `serving_runtime` defaulted to
    `default_serving_runtime()`, and the prebuilt image of that runtime, so that the
    serving check verifies the export against the TF of the image it is deployed with.
    """
    if serving_image:
        return config, serving_image
    if config.serving_runtime is None:
        config = dataclasses.replace(
            config, serving_runtime=default_serving_runtime(None, region, accelerator))
        logging.info("serving_runtime: checking the export against TF %s, the newest "
                     "Vertex AI prebuilt image for the exporting TF", config.serving_runtime)
    return config, prebuilt_tf_image(region=region, accelerator=accelerator,
                                     serving_runtime=config.serving_runtime)
