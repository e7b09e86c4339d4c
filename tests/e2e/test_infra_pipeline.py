"""ModelExporter → InfraValidator (local process) → Pusher under LocalDagRunner.

`tensorflow_model_server` on PATH is the TF Serving test double
(tests/helpers/fake_tf_serving.py), started by InfraValidator as a child process.
One pipeline, two runs sharing the TFX cache (ExampleGen … Trainer run once):
1. the project's export config: blessed, and Pusher pushes InfraValidator's
   stamped model, with our endpoints and a warmup file;
2. a broken export whose serving_default is the features endpoint while the
   RequestSpec asks for serving_default: NOT blessed, with a reason that says
   what to change, and nothing is pushed.
"""

import os

import pytest

from export_archive import describe
from helpers import fake_tf_serving

pytestmark = [pytest.mark.e2e, pytest.mark.tfx]

NAME = "export-archive-infra"
ENDPOINTS = ["serve_raw", "serving_default"]   # the main job's default export config
WARMUP = os.path.join("assets.extra", "tf_serving_warmup_requests")
BROKEN_CONFIG = {
    "endpoints": [
        {"name": "serve_features"},
        {"name": "serve_examples", "kind": "tf_example", "transform": True,
         "exclude_features": ["species"]},
    ],
    # The mistake: clients (and InfraValidator's request_spec) call serving_default
    # with serialized tf.Examples, but it is the features endpoint.
    "serving_default": "serve_features",
}


def latest(directory):
    entries = sorted((e for e in os.listdir(directory) if e.isdigit()), key=int)
    return os.path.join(directory, entries[-1]) if entries else None


def blessings(metadata_path):
    """InfraBlessing artifacts in MLMD, oldest first, with their custom properties."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = mlmd.MetadataStore(config)
    out = []
    for a in sorted(store.get_artifacts_by_type("InfraBlessing"), key=lambda a: a.id):
        props = {k: (v.int_value if v.HasField("int_value") else v.string_value)
                 for k, v in a.custom_properties.items()}
        out.append((a.uri, props))
    return out


def test_infra_validated_pipeline_blesses_pushes_and_rejects_a_broken_export(
        tmp_path, monkeypatch):
    from tfx import v1 as tfx
    from helpers import infra_pipeline
    from helpers.infra_fixtures import read_prediction_logs

    bin_dir = tmp_path / "bin"
    fake_tf_serving.install_wrapper(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "runs"
    serving_model_dir = str(root / "serving_model")
    metadata_path = str(root / "metadata.sqlite")

    def run(**kwargs):
        tfx.orchestration.LocalDagRunner().run(infra_pipeline.create_pipeline(
            NAME, str(root / "pipeline"), serving_model_dir, train_steps=20, eval_steps=5,
            metadata_connection_config=(
                tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)),
            **kwargs))

    # 1. The project's export: blessed and pushed.
    run()
    [(uri, props)] = blessings(metadata_path)
    assert props["blessed"] == 1 and props["has_model"] == 1, props
    assert "Successfully loaded servable" in open(
        os.path.join(uri, "model_server_logs", "attempt-1.log")).read()
    pushed = latest(serving_model_dir)
    assert pushed is not None
    assert sorted(s.name for s in describe.describe(pushed)) == ENDPOINTS
    warmup = read_prediction_logs(os.path.join(pushed, WARMUP))
    assert [log.predict_log.request.model_spec.signature_name for log in warmup] == [
        "serving_default"] * 2

    # 2. The broken export: not blessed, with the reason; nothing pushed.
    run(export_config=BROKEN_CONFIG)
    (_, _), (uri, props) = blessings(metadata_path)
    assert props["blessed"] == 0, props
    reason = props["infra_validation_failure"]
    assert "signature 'serving_default' cannot take InfraValidator's requests" in reason
    assert '"kind": "tf_example"' in reason and "signature_names" in reason
    assert os.path.exists(os.path.join(uri, "INFRA_NOT_BLESSED"))
    assert latest(serving_model_dir) == pushed, "the broken export was pushed"
