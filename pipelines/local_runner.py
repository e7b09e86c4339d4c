"""The main job: the pipeline under LocalDagRunner with an embedded SQLite ML Metadata store.

    python -m export_archive.pipelines.local_runner [--keras 3|2] [--root runs]

Re-running reuses unchanged steps from the TFX cache. ModelExporter compares each
new model's serving contract with the last pushed one and stops a breaking change
before Pusher (docs/contract.md). Prints where the pushed model is, which
endpoints it has, and what the contract comparison found.
"""

import argparse
import os
import sys
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="local_runner", description=__doc__.split("\n")[0])
    parser.add_argument("--keras", choices=["3", "2"], default="3",
                        help="Trainer module: Keras 3 (.keras file) or Keras 2 "
                             "(tf.keras with TF_USE_LEGACY_KERAS=1, tf.saved_model.save)")
    parser.add_argument("--root", default="runs",
                        help="directory for pipeline outputs, metadata and pushed models")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--no-cache", action="store_true", help="disable the TFX cache")
    parser.add_argument("--infra-validate", action="store_true",
                        help="validate with InfraValidator against a tensorflow_model_server "
                             "on PATH (local process) before pushing")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not compare the serving contract with the last pushed model")
    return parser.parse_args(argv)


def latest_push(serving_model_dir: str) -> Optional[str]:
    """Pusher writes <base>/<version>/; the highest version is the latest push."""
    import tensorflow as tf
    if not tf.io.gfile.isdir(serving_model_dir):
        return None
    versions = [v.rstrip("/") for v in tf.io.gfile.listdir(serving_model_dir)
                if v.rstrip("/").isdigit()]
    return os.path.join(serving_model_dir, max(versions, key=int)) if versions else None


def contract_summary(metadata_path: str) -> Optional[str]:
    """The newest exported model's `contract` property: what its comparison found."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    from export_archive.components.tfx import spec
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    models = [a for a in mlmd.MetadataStore(config).get_artifacts_by_type("Model")
              if spec.CONTRACT_PROPERTY in a.custom_properties]
    if not models:
        return None
    newest = max(models, key=lambda a: a.id)
    return newest.custom_properties[spec.CONTRACT_PROPERTY].string_value


def run(keras_version: str = "3", root: str = "runs", train_steps: int = 100,
        enable_cache: bool = True, infra_validate: bool = False,
        contract_baseline: bool = True) -> str:
    """Runs the pipeline; returns the pushed model directory."""
    if keras_version == "2":
        # Must precede the first TensorFlow import: it decides what tf.keras is.
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    from tfx import v1 as tfx
    from export_archive.pipelines import pipeline

    name = f"export-archive-penguin-keras{keras_version}"
    root = os.path.abspath(root)
    pipeline_root = os.path.join(root, name, "pipeline")
    serving_model_dir = os.path.join(root, name, "serving_model")
    metadata_path = os.path.join(root, name, "metadata.sqlite")
    tfx.orchestration.LocalDagRunner().run(pipeline.create_pipeline(
        pipeline_name=name, pipeline_root=pipeline_root, serving_model_dir=serving_model_dir,
        keras_version=keras_version, train_steps=train_steps, enable_cache=enable_cache,
        infra_validation={} if infra_validate else None,
        contract_baseline=contract_baseline,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            metadata_path)))
    pushed = latest_push(serving_model_dir)
    if pushed is None:
        raise RuntimeError(f"The pipeline finished but nothing was pushed to {serving_model_dir}.")
    return pushed


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    pushed = run(args.keras, args.root, args.train_steps, not args.no_cache, args.infra_validate,
                 not args.no_baseline)
    from export_archive import describe
    print(f"\nPushed model: {pushed}")
    print(describe.format_signatures(describe.describe(pushed)))
    name = f"export-archive-penguin-keras{args.keras}"
    summary = None if args.no_baseline else contract_summary(
        os.path.join(os.path.abspath(args.root), name, "metadata.sqlite"))
    print(f"Serving contract: {summary or 'not compared (--no-baseline)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
