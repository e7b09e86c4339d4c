"""The Vertex AI image follows the runtime the export was checked against.

Vertex's newest prebuilt TF prediction images are TF 2.15 and 2.14; our lanes
export with 2.16 and 2.21. The image is the one of the export's `serving_runtime`
(exactly: that is the TF whose op registry the check verified), and where the
config sets none, `resolve_serving` sets it to the newest image for the exporting
TF, so that the check verifies what Vertex will run.
"""

import pytest

from export_archive.components.kfp import vertex
from export_archive.config import ExportConfig

pytestmark = pytest.mark.integration

CONFIG = {"endpoints": [{"name": "serve"}]}


def test_the_image_is_that_of_the_serving_runtime():
    assert vertex.prebuilt_tf_image(serving_runtime="2.14") == \
        "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-14:latest"
    assert vertex.prebuilt_tf_image(serving_runtime="2.15", region="europe") == \
        "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"


def test_a_runtime_vertex_has_no_image_for_is_refused_with_the_fix():
    published = [f"{v[0]}.{v[1]}" for v, _ in vertex.published_tf_images()]
    assert "2.16" not in published   # if Vertex adds one, this file's premise changed
    with pytest.raises(ValueError) as failed:
        vertex.prebuilt_tf_image(serving_runtime="2.16")
    message = str(failed.value)
    assert message.startswith("serving_runtime: Vertex AI publishes no prebuilt cpu "
                              "prediction image for TensorFlow 2.16"), message
    assert "Fix: set serving_runtime to one of those" in message


def test_the_default_runtime_is_the_newest_image_not_newer_than_the_exporter():
    assert vertex.default_serving_runtime("2.16.2") == "2.15"
    assert vertex.default_serving_runtime("2.21.0") == "2.15"
    assert vertex.default_serving_runtime("2.14.1") == "2.14"
    with pytest.raises(ValueError, match="serving_runtime: no Vertex AI prebuilt cpu image"):
        vertex.default_serving_runtime("2.13")


def test_resolve_serving_checks_against_the_image_it_names():
    config, image = vertex.resolve_serving(ExportConfig.parse(CONFIG))
    assert config.serving_runtime == vertex.default_serving_runtime()
    assert image == vertex.prebuilt_tf_image(serving_runtime=config.serving_runtime)
    chosen = ExportConfig.parse({**CONFIG, "serving_runtime": "2.14"})
    assert vertex.resolve_serving(chosen) == (
        chosen, "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-14:latest")
    # An image of the user's own: nothing is assumed about its TF.
    assert vertex.resolve_serving(ExportConfig.parse(CONFIG), "my/image:1") == (
        ExportConfig.parse(CONFIG), "my/image:1")
