"""The pipeline factory: the canonical TFX flow with ModelExporter after the Trainer.

    CsvExampleGen -> StatisticsGen -> SchemaGen -> Transform -> Trainer
      -> ModelExporter -> Evaluator -> (InfraValidator) -> Pusher

One factory for every target; the runners (local_runner, kubeflow_v2_runner)
only choose the orchestrator and its settings.
"""

import contextlib
import os
from typing import Any, Callable, Dict, List, Optional

from tfx import v1 as tfx

from export_archive.components import (InfraValidator, ModelExporter, latest_pushed_model,
                                       published)
from export_archive.constants import DEFAULT_SIGNATURE

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


# Evaluator's thresholds on the exported serving_default (see eval_config).
MIN_ACCURACY = 0.5          # three species: chance is 1/3
MAX_ACCURACY_DROP = 0.02    # against the last blessed model; a retrain's noise


def eval_config(min_accuracy: float = MIN_ACCURACY,
                max_accuracy_drop: float = MAX_ACCURACY_DROP):
    """TFMA on ModelExporter's `serving_default`: serialized tf.Examples in, logits out.

    The same config serves Keras 3 and Keras 2 Trainers, since TFMA evaluates the
    exported SavedModel's signature, not the Trainer's Keras file (TFMA cannot
    load a Keras 3 `.keras` model). The raw label stays in the examples: the
    endpoint excludes it from parsing, and TFMA reads it by `label_key`.
    """
    import tensorflow_model_analysis as tfma   # heavy: only for a pipeline with an Evaluator
    accuracy = tfma.MetricConfig(
        class_name="SparseCategoricalAccuracy",
        threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_accuracy}),
            # Ignored while there is no blessed baseline (the first run).
            change_threshold=tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -max_accuracy_drop})))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=DEFAULT_SIGNATURE, label_key=LABEL_KEY,
                                    preprocessing_function_names=[])],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[accuracy])])


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
                    contract_baseline: bool = False,
                    evaluate: bool = True,
                    min_accuracy: float = MIN_ACCURACY,
                    pusher: Optional[Callable[..., Any]] = None) -> tfx.dsl.Pipeline:
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
    input changed; the steps before it still come from the cache. LocalDagRunner
    and other IR-based runners only: KubeflowV2DagRunner compiles no custom
    Resolver strategy (docs/contract.md, Limits).

    `evaluate`: Evaluator (TFMA) scores ModelExporter's `serving_default` on the
    eval split against the latest blessed model (a LatestBlessedModelStrategy
    Resolver) with the thresholds of `eval_config`; Pusher needs its blessing.

    With `contract_baseline`, everything downstream of ModelExporter runs under
    `Cond(published(exporter))`: when the contract guard stops an export,
    ModelExporter succeeds with `published` = 0 and those steps are skipped, as
    a failed blessing stops Pusher.

    `pusher(**push_inputs)` builds the push step (default: a filesystem Pusher to
    `serving_model_dir`); `push_inputs` holds `model=` and, when present,
    `model_blessing=` and `infra_blessing=`. The Vertex AI Pusher plugs in here.
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
    # Not under the Cond below: a Resolver reads ML Metadata, not the exporter.
    blessed_baseline = latest_blessed_model("latest_blessed_model_resolver") if evaluate else None
    baseline = latest_pushed_model() if contract_baseline else None
    exporter = ModelExporter(
        model=trainer.outputs["model"],
        schema=schema_gen.outputs["schema"],
        transform_graph=transform.outputs["transform_graph"],
        examples=example_gen.outputs["examples"],
        export_config=export_config or DEFAULT_EXPORT_CONFIG,
        baseline_model=baseline.outputs["model"] if baseline else None)
    components = [example_gen, statistics_gen, schema_gen, transform, trainer, exporter]
    components += [node for node in (blessed_baseline, baseline) if node is not None]
    # Only the contract guard can make this exporter decline to publish. Without
    # it there is nothing to gate, and the KFP v2 runner (which cannot compile
    # the guard's Resolver) needs no Cond: TFX 1.16's KFP v2 compiler writes
    # Evaluator's trigger condition against an input key the Evaluator task does
    # not have once Evaluator also reads a LatestBlessedModelStrategy Resolver.
    gate = tfx.dsl.Cond(published(exporter)) if contract_baseline else contextlib.nullcontext()
    with gate:
        push_inputs = {"model": exporter.outputs["model"]}
        if evaluate:
            evaluator = tfx.components.Evaluator(
                examples=example_gen.outputs["examples"], model=exporter.outputs["model"],
                baseline_model=blessed_baseline.outputs["model"],
                eval_config=eval_config(min_accuracy))
            components.append(evaluator)
            push_inputs["model_blessing"] = evaluator.outputs["blessing"]
        if infra_validation is not None:
            infra_validator = InfraValidator(
                model=exporter.outputs["model"], examples=example_gen.outputs["examples"],
                serving_spec=tfx.proto.ServingSpec(
                    tensorflow_serving=tfx.proto.TensorFlowServing(), model_name="penguin"),
                validation_spec=tfx.proto.ValidationSpec(
                    max_loading_time_seconds=infra_max_loading_seconds, num_tries=1),
                request_spec=tfx.proto.RequestSpec(
                    tensorflow_serving=tfx.proto.TensorFlowServingRequestSpec(
                        signature_names=infra_signature_names or [DEFAULT_SIGNATURE]),
                    split_name="eval", num_examples=2, make_warmup=True),
                local_process_config=infra_validation)
            components.append(infra_validator)
            # As TFX documents for make_warmup: Pusher pushes InfraValidator's
            # stamped model (our export plus the warmup requests it sent).
            push_inputs["infra_blessing"] = infra_validator.outputs["blessing"]
            del push_inputs["model"]
        components.append((pusher or _filesystem_pusher(serving_model_dir))(**push_inputs))
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or ["--direct_num_workers=1"])


def latest_blessed_model(resolver_id: str):
    """A Resolver whose ``outputs["model"]`` is the newest model an Evaluator blessed."""
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(resolver_id)


def _filesystem_pusher(serving_model_dir: str) -> Callable[..., Any]:
    def make(**push_inputs):
        return tfx.components.Pusher(
            **push_inputs,
            push_destination=tfx.proto.PushDestination(
                filesystem=tfx.proto.PushDestination.Filesystem(
                    base_directory=serving_model_dir)))
    return make
