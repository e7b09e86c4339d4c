"""Artifacts and executor runs for the InfraValidator tests, laid out as TFX leaves them.

- `export_model`: a ModelExporter-style Model artifact (`<uri>/Format-Serving`)
  with tf.Example endpoints for TF Serving's three APIs (Predict, Classify,
  Regress), a features endpoint, and the exporter's warmup file;
- `write_examples`: an ExampleGen-style Examples artifact (gzipped TFRecords of
  tf.Examples under `Split-eval/`);
- `run_infra_validator` / `run_pusher`: one executor run over real directories.
"""

import json
import os
from typing import Any, Dict, List, Optional

from export_archive.check import read_prediction_logs  # noqa: F401  (re-exported for tests)

from helpers import tfx_fixtures as fx

MODEL_NAME = "scalar"
SIGNATURES = ["serving_default", "classify_examples", "regress_examples"]
EXPORT_CONFIG = {
    "endpoints": [
        {"name": "serving_default", "kind": "tf_example", "exclude_features": ["label"]},
        {"name": "classify_examples", "kind": "tf_example", "method": "classify",
         "exclude_features": ["label"]},
        {"name": "regress_examples", "kind": "tf_example", "method": "regress",
         "exclude_features": ["label"]},
        {"name": "serve_features"},
        # What REST / Vertex clients call: the server replays its warmup request at
        # load, and the tests send it raw JSON converted as TF Serving's REST API does.
        {"name": "serve_raw", "kind": "raw_features", "exclude_features": ["label"]},
    ],
}


def artifact(cls, uri):
    a = cls()
    a.uri = os.fspath(uri)
    os.makedirs(a.uri, exist_ok=True)   # the launcher creates output dirs before Do()
    return a


def scalar_model():
    """f1, f2 -> one sigmoid unit: valid as Predict, Classify (1 class) and Regress output."""
    import keras
    inputs = [keras.Input((1,), name=name) for name in fx.SCALAR_FEATURES]
    h = keras.layers.Dense(4, activation="relu")(keras.layers.Concatenate()(inputs))
    out = keras.layers.Dense(1, activation="sigmoid")(h)
    return keras.Model(dict(zip(fx.SCALAR_FEATURES, inputs)), out)


def write_examples(root, rows: List[Dict[str, List]], split: str = "eval"):
    """An Examples artifact as CsvExampleGen writes it: Split-<split>/*.gz, TF_EXAMPLE."""
    from tfx.types import artifact_utils, standard_artifacts
    examples = artifact(standard_artifacts.Examples, root)
    examples.split_names = artifact_utils.encode_split_names([split])
    examples.set_string_custom_property("payload_format", "FORMAT_TF_EXAMPLE")
    split_dir = os.path.join(examples.uri, f"Split-{split}")
    os.makedirs(split_dir, exist_ok=True)
    import tensorflow as tf
    with tf.io.TFRecordWriter(os.path.join(split_dir, "data_tfrecord-00000-of-00001.gz"),
                              options="GZIP") as writer:
        for record in fx.serialize(rows):
            writer.write(record)
    return examples


def export_model(root, schema_dir, config: Optional[Dict[str, Any]] = None):
    """A Model artifact as ModelExporter emits it (serving check on: warmup file written)."""
    import export_archive
    from export_archive.examples import ExampleEndpointBuilder
    from tfx.types import standard_artifacts
    model = artifact(standard_artifacts.Model, root)
    keras_model = scalar_model()
    export_archive.export(keras_model, config or EXPORT_CONFIG,
                          os.path.join(model.uri, "Format-Serving"),
                          example_builder=ExampleEndpointBuilder(schema_path=schema_dir),
                          check=True)
    return model, keras_model


def request_spec(signature_names=None, num_examples=2, make_warmup=False):
    from tfx.proto import infra_validator_pb2 as iv
    return iv.RequestSpec(
        tensorflow_serving=iv.TensorFlowServingRequestSpec(
            signature_names=signature_names or SIGNATURES),
        split_name="eval", num_examples=num_examples, make_warmup=make_warmup)


def serving_spec(local=True, **fields):
    from tfx.proto import infra_validator_pb2 as iv
    spec = iv.ServingSpec(model_name=MODEL_NAME, **fields)
    if local and not spec.HasField("tensorflow_serving"):
        spec.tensorflow_serving.SetInParent()
    return spec


def run_infra_validator(root, model, examples=None, request=None, serving=None,
                        local_process_config: Optional[Dict[str, Any]] = None,
                        num_tries: int = 1, max_loading_time_seconds: int = 300):
    """Runs our InfraValidator executor once; returns the blessing artifact."""
    from tfx.proto import infra_validator_pb2 as iv
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils
    from export_archive.components.infra_validator import spec
    from export_archive.components.infra_validator.executor import Executor

    blessing = artifact(standard_artifacts.InfraBlessing, os.path.join(root, "blessing"))
    exec_properties = {
        spec.SERVING_SPEC_KEY: proto_utils.proto_to_json(serving or serving_spec()),
        spec.VALIDATION_SPEC_KEY: proto_utils.proto_to_json(iv.ValidationSpec(
            num_tries=num_tries, max_loading_time_seconds=max_loading_time_seconds)),
        spec.REQUEST_SPEC_KEY: proto_utils.proto_to_json(request) if request else None,
        spec.LOCAL_PROCESS_CONFIG_KEY: (json.dumps(local_process_config)
                                        if local_process_config is not None else None),
    }
    input_dict = {spec.MODEL_KEY: [model]}
    if examples is not None:
        input_dict[spec.EXAMPLES_KEY] = [examples]
    context = Executor.Context(tmp_dir=os.path.join(root, "tmp"), unique_id="1")
    Executor(context).Do(input_dict, {spec.BLESSING_KEY: [blessing]}, exec_properties)
    return blessing


def run_pusher(root, base_directory, model=None, infra_blessing=None):
    """Runs TFX's Pusher executor once; returns the pushed_model artifact."""
    from tfx.components.pusher import executor as pusher_executor
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts, standard_component_specs as keys
    from tfx.utils import proto_utils
    pushed = artifact(standard_artifacts.PushedModel, os.path.join(root, "pushed_model"))
    input_dict = {}
    if model is not None:
        input_dict[keys.MODEL_KEY] = [model]
    if infra_blessing is not None:
        input_dict[keys.INFRA_BLESSING_KEY] = [infra_blessing]
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base_directory))
    pusher_executor.Executor().Do(
        input_dict, {keys.PUSHED_MODEL_KEY: [pushed]},
        {keys.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination),
         keys.CUSTOM_CONFIG_KEY: None})
    return pushed
