"""InfraValidator with a local-process serving platform (TFX's component, extended).

A drop-in for `tfx.components.InfraValidator`: same inputs, outputs, specs and
behaviour, plus `local_process_config`, which runs `tensorflow_model_server` as
a child process of the component instead of a Docker container or a Kubernetes
pod. That is the platform available inside a KFP v2 / Vertex AI container that
carries the TF Serving binary (TFX's `kubernetes` platform needs KFP v1,
`kube_utils.is_inside_kfp()`; `local_docker` needs a Docker daemon).

Example::

    infra_validator = InfraValidator(
        model=exporter.outputs["model"],
        examples=example_gen.outputs["examples"],
        serving_spec=tfx.proto.ServingSpec(
            tensorflow_serving=tfx.proto.TensorFlowServing(),  # no platform field
            model_name="penguin"),
        request_spec=tfx.proto.RequestSpec(
            tensorflow_serving=tfx.proto.TensorFlowServingRequestSpec(
                signature_names=["serving_default"]),
            num_examples=2, make_warmup=True),
        local_process_config={"binary": "tensorflow_model_server"})
    pusher = tfx.components.Pusher(infra_blessing=infra_validator.outputs["blessing"], ...)
"""

from typing import Any, Dict, Optional, Union

from tfx import types
from tfx.dsl.components.base import base_component, base_driver, executor_spec
from tfx.proto import infra_validator_pb2
from tfx.types import standard_artifacts

from export_archive.components.infra_validator import executor, spec
from export_archive.components.infra_validator.local_process import LocalProcessConfig


class InfraValidator(base_component.BaseComponent):
    """TFX's InfraValidator, plus the local-process platform (`local_process_config`).

    Its spec extends TFX's InfraValidatorSpec and its executor extends TFX's
    executor. The class itself derives from BaseComponent, as TFX's
    InfraValidator does, not from TFX's class: TFX 1.16's KFP v2 / Vertex
    compiler refuses every instance of `tfx.components.InfraValidator`
    (tfx/orchestration/kubeflow/v2/step_builder.py: "The component type ... is
    not supported", since Docker and KFP v1 pods are unavailable there), which
    is the very place the local-process platform is for. TFX's constructor
    would add nothing either: it only builds TFX's own spec class.

    With `local_process_config`, the ServingSpec names the binary
    (`tensorflow_serving`, at most one tag or digest: it only labels the run)
    and `model_name`, and sets no platform field (`local_docker`,
    `kubernetes`): the platform is the local process. Without it, the
    component behaves exactly as TFX's, on TFX's platforms.

    Either way, a model that fails validation gets the reason on its blessing
    (custom property `infra_validation_failure`, and a file of the same name
    in the blessing directory); see `spec`.
    """

    SPEC_CLASS = spec.InfraValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
    DRIVER_CLASS = base_driver.BaseDriver

    def __init__(self,
                 model: types.BaseChannel,
                 serving_spec: infra_validator_pb2.ServingSpec,
                 examples: Optional[types.BaseChannel] = None,
                 request_spec: Optional[infra_validator_pb2.RequestSpec] = None,
                 validation_spec: Optional[infra_validator_pb2.ValidationSpec] = None,
                 local_process_config: Optional[
                     Union[LocalProcessConfig, Dict[str, Any], str]] = None):
        """Like TFX's InfraValidator; `local_process_config` is a LocalProcessConfig,
        a dict or JSON (``{}`` for all defaults: `tensorflow_model_server` from PATH)."""
        config_json = None
        if local_process_config is not None:
            config_json = LocalProcessConfig.parse(local_process_config).to_json()
        check_serving_spec(serving_spec, local=config_json is not None)
        component_spec = spec.InfraValidatorSpec(
            model=model,
            examples=examples,
            blessing=types.Channel(type=standard_artifacts.InfraBlessing),
            serving_spec=serving_spec,
            validation_spec=validation_spec,
            request_spec=request_spec,
            **{spec.LOCAL_PROCESS_CONFIG_KEY: config_json})
        super().__init__(spec=component_spec)


def check_serving_spec(serving_spec: infra_validator_pb2.ServingSpec, local: bool) -> None:
    """Constructor-time checks, so a wrong spec fails when the pipeline is defined."""
    platform = serving_spec.WhichOneof("serving_platform")
    binary = serving_spec.WhichOneof("serving_binary")
    if local:
        if platform is not None:
            raise ValueError(
                f"InfraValidator: local_process_config and ServingSpec.{platform} both choose "
                f"a serving platform; remove ServingSpec.{platform} to run the model server "
                "as a local process, or drop local_process_config to use "
                f"{platform}.")
        if binary != "tensorflow_serving":
            raise ValueError("InfraValidator: the local-process platform runs TF Serving; "
                             "set serving_spec.tensorflow_serving (e.g. "
                             "TensorFlowServing()).")
        labels = (list(serving_spec.tensorflow_serving.tags)
                  + list(serving_spec.tensorflow_serving.digests))
        if len(labels) > 1:
            raise ValueError(
                f"InfraValidator: ServingSpec.tensorflow_serving names {labels}, but a local "
                "process runs one binary (local_process_config.binary), and TFX would "
                "validate it once per tag/digest; give at most one tag.")
    elif platform is None:
        raise ValueError("InfraValidator: no serving platform; set ServingSpec.local_docker "
                         "or ServingSpec.kubernetes, or pass local_process_config to run "
                         "tensorflow_model_server as a child process of the component.")
    elif binary == "tensorflow_serving" and not (serving_spec.tensorflow_serving.tags or
                                                 serving_spec.tensorflow_serving.digests):
        raise ValueError("InfraValidator: " + executor.NO_TAGS)
