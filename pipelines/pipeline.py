"""The pipeline factory: penguins CSV -> ... -> Trainer -> ModelExporter -> Pusher.

One factory for every target; the runners (local_runner, kubeflow_v2_runner)
only choose the orchestrator and its settings.
"""

import os
from typing import Any, Dict, List, Optional

from tfx import v1 as tfx

from export_archive.components.tfx.baseline import latest_pushed_model
from export_archive.components.tfx.component import ModelExporter

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DATA_ROOT = os.path.join(PACKAGE_DIR, "data", "penguins")
MODULES_DIR = os.path.join(PACKAGE_DIR, "modules")
TRANSFORM_MODULE = os.path.join(MODULES_DIR, "penguin_transform.py")
TRAINER_MODULES = {"3": os.path.join(MODULES_DIR, "penguin_trainer_keras3.py"),
                   "2": os.path.join(MODULES_DIR, "penguin_trainer_keras2.py")}
# The same functions as import paths into the installed package (see create_pipeline).
MODULES_PACKAGE = "export_archive.pipelines.modules"
PREPROCESSING_FN = f"{MODULES_PACKAGE}.penguin_transform.preprocessing_fn"
RUN_FNS = {"3": f"{MODULES_PACKAGE}.penguin_trainer_keras3.run_fn",
           "2": f"{MODULES_PACKAGE}.penguin_trainer_keras2.run_fn"}
LABEL_KEY = "species"

# The endpoints the main job exports are the ones a client should call: tf.Example
# with Transform as serving_default (gRPC clients, InfraValidator, Classify-style
# callers) and the raw features with Transform as serve_raw (REST / Vertex AI JSON
# `instances`). Training-mode endpoints and optimizer state are documented options
# (docs/config.md), not part of a serving export.
DEFAULT_EXPORT_CONFIG: Dict[str, Any] = {
    "endpoints": [
        {"name": "serving_default", "kind": "tf_example", "transform": True,
         "exclude_features": [LABEL_KEY]},
        {"name": "serve_raw", "kind": "raw_features", "transform": True,
         "exclude_features": [LABEL_KEY]},
    ],
}


def create_pipeline(pipeline_name: str,
                    pipeline_root: str,
                    serving_model_dir: str,
                    data_root: str = DATA_ROOT,
                    keras_version: str = "3",
                    export_config: Optional[Dict[str, Any]] = None,
                    train_steps: int = 100,
                    eval_steps: int = 10,
                    metadata_connection_config=None,
                    beam_pipeline_args: Optional[List[str]] = None,
                    enable_cache: bool = True,
                    infra_validation: Optional[Dict[str, Any]] = None,
                    infra_signature_names: Optional[List[str]] = None,
                    infra_max_loading_seconds: int = 300,
                    modules_from_package: bool = False,
                    contract_baseline: bool = False) -> tfx.dsl.Pipeline:
    """Builds the pipeline; `keras_version` picks the Trainer module ("3" or "2").

    Transform and Trainer get their module as a file (TFX packages it into a wheel,
    the usual local setup) or, with `modules_from_package`, as import paths into
    the installed package: what a KFP v2 / Vertex container runs, with no wheel to
    build and upload to the pipeline root at compile time.

    `infra_validation`, when given, is the local-process serving config of our
    InfraValidator (see docs/infra_validation.md): the exported model is then
    validated against TF Serving with requests built from the eval split for
    `infra_signature_names` (default: serving_default), and, as TFX documents
    for `make_warmup`, Pusher takes only the blessing and pushes InfraValidator's
    stamped model (our export plus a warmup file of the requests it sent).

    `contract_baseline`: ModelExporter compares the new serving contract with the
    model Pusher last pushed (a Resolver over earlier runs' PushedModels) and stops
    before Pusher when a change would break that model's clients (docs/contract.md).
    ModelExporter then re-runs whenever a new model was pushed, since its baseline
    input changed; the steps before it still come from the cache.
    """
    if keras_version not in TRAINER_MODULES:
        raise ValueError(f"keras_version must be one of {sorted(TRAINER_MODULES)}, "
                         f"got {keras_version!r}")
    example_gen = tfx.components.CsvExampleGen(input_base=data_root)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                          infer_feature_shape=True)
    if modules_from_package:
        transform_module = {"preprocessing_fn": PREPROCESSING_FN}
        trainer_module = {"run_fn": RUN_FNS[keras_version]}
    else:
        transform_module = {"module_file": TRANSFORM_MODULE}
        trainer_module = {"module_file": TRAINER_MODULES[keras_version]}
    transform = tfx.components.Transform(examples=example_gen.outputs["examples"],
                                         schema=schema_gen.outputs["schema"],
                                         **transform_module)
    trainer = tfx.components.Trainer(
        **trainer_module,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=eval_steps))
    baseline = latest_pushed_model() if contract_baseline else None
    exporter = ModelExporter(
        model=trainer.outputs["model"],
        schema=schema_gen.outputs["schema"],
        transform_graph=transform.outputs["transform_graph"],
        examples=example_gen.outputs["examples"],
        export_config=export_config or DEFAULT_EXPORT_CONFIG,
        baseline_model=baseline.outputs["model"] if baseline else None)
    components = [example_gen, statistics_gen, schema_gen, transform, trainer, exporter]
    if baseline:
        components.append(baseline)
    push_inputs = {"model": exporter.outputs["model"]}
    if infra_validation is not None:
        from export_archive.components.infra_validator import InfraValidator
        infra_validator = InfraValidator(
            model=exporter.outputs["model"], examples=example_gen.outputs["examples"],
            serving_spec=tfx.proto.ServingSpec(
                tensorflow_serving=tfx.proto.TensorFlowServing(), model_name="penguin"),
            validation_spec=tfx.proto.ValidationSpec(
                max_loading_time_seconds=infra_max_loading_seconds, num_tries=1),
            request_spec=tfx.proto.RequestSpec(
                tensorflow_serving=tfx.proto.TensorFlowServingRequestSpec(
                    signature_names=infra_signature_names or ["serving_default"]),
                split_name="eval", num_examples=2, make_warmup=True),
            local_process_config=infra_validation)
        components.append(infra_validator)
        push_inputs = {"infra_blessing": infra_validator.outputs["blessing"]}
    components.append(tfx.components.Pusher(
        **push_inputs,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=serving_model_dir))))
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or ["--direct_num_workers=1"])
