"""InfraValidator executor extended with the local-process platform and failure reasons.

TFX's executor (tfx/components/infra_validator/executor.py) does the work:
parsing the specs, the SIGTERM handler, building requests from `examples`,
laying the model out as `<model_name>/<version>`, retries, the blessing and the
warmup model. This subclass changes three things and nothing else:

1. `_ValidateOnce`: with `local_process_config`, the model server is a child
   process (`LocalProcessRunner`) instead of a container. TFX 1.16 picks the
   runner in a module-level function (`_create_model_server_runner`, which
   dispatches on ServingSpec.serving_platform and knows only local_docker and
   kubernetes), so the override is the method that calls it; it keeps TFX's
   steps (Start, WaitUntilRunning, the serving binary's client,
   WaitUntilModelLoaded, requests, Stop in `finally`). Without
   `local_process_config`, TFX's own `_ValidateOnce` runs.
2. `_Do`: before any server starts, TFX's own request builder is called on the
   model (`request_check`); a model it cannot build requests for is NOT blessed,
   with the refused signatures and the fix, where TFX's component would fail.
3. A failed validation leaves its reason on the blessing (custom property
   `infra_validation_failure` and a file), with the model server log's tail;
   full local model server logs are kept under `<blessing>/model_server_logs/`.
"""

import os
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional

import grpc
from absl import logging
from tfx import types
from tfx.components.infra_validator import error_types
from tfx.components.infra_validator import executor as tfx_executor
from tfx.dsl.io import fileio
from tfx.proto import infra_validator_pb2
from tfx.types import artifact_utils
from tfx.utils import io_utils

from export_archive.components.infra_validator import request_check, spec
from export_archive.constants import DEFAULT_SIGNATURE
from export_archive.components.infra_validator.local_process import (
    SERVER_REPORTED, LocalProcessConfig, LocalProcessRunner, tail)

_POLLING_INTERVAL_SEC = 1
NO_TAGS = ("ServingSpec.tensorflow_serving names no image tag or digest: TFX validates once "
           "per tag/digest, so it would validate nothing and bless the model. Set tags, e.g. "
           "TensorFlowServing(tags=['2.16.1']), the TF Serving version you deploy.")
# MLMD stores the property in the execution's output artifact; keep it readable.
_MAX_FAILURE_CHARS = 6000


class Executor(tfx_executor.Executor):
    """TFX's InfraValidator executor plus the local-process platform."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        raw = exec_properties.get(spec.LOCAL_PROCESS_CONFIG_KEY)
        self._local_process: Optional[LocalProcessConfig] = (
            LocalProcessConfig.parse(raw) if raw else None)
        if self._local_process is not None:
            # Fails the component (not the model) when the binary is missing.
            self._local_process.resolve_binary()
        self._blessing = artifact_utils.get_single_instance(output_dict[spec.BLESSING_KEY])
        self._failures: List[str] = []
        self._attempt = 0
        self._last_log: Optional[str] = None
        self._local_log_dir: Optional[str] = None
        super().Do(input_dict, output_dict, exec_properties)

    def _Do(self, model: types.Artifact, examples: Optional[types.Artifact],
            blessing: types.Artifact, serving_spec: infra_validator_pb2.ServingSpec,
            validation_spec: infra_validator_pb2.ValidationSpec,
            request_spec: Optional[infra_validator_pb2.RequestSpec]):
        labelled = (serving_spec.tensorflow_serving.tags
                    or serving_spec.tensorflow_serving.digests)
        if self._local_process is not None:
            _check_local_serving_spec(serving_spec)
            _warn_if_retries_outlast_deadline(self._local_process, validation_spec)
            if not labelled:
                # TFX validates once per tag/digest; the local binary is one binary.
                serving_spec.tensorflow_serving.tags.append(spec.LOCAL_PROCESS_TAG)
        elif serving_spec.WhichOneof("serving_binary") == "tensorflow_serving" and not labelled:
            # TFX 1.16 would run zero validations and bless the model.
            raise ValueError(NO_TAGS)
        if examples and request_spec:
            # TFX's _Do builds the requests again (num_examples records): it has no hook.
            problems = request_check.request_problems(serving_spec.model_name, model,
                                                      examples, request_spec)
            if problems:
                self._failures.extend(f"requests: {p}" for p in problems)
                _mark_not_blessed(blessing)
                self._record_failure(blessing)
                return
        super()._Do(model=model, examples=examples, blessing=blessing,
                    serving_spec=serving_spec, validation_spec=validation_spec,
                    request_spec=request_spec)
        if blessing.get_int_custom_property(spec.BLESSED_PROPERTY) != 1:
            self._record_failure(blessing)

    def _ValidateOnce(self, model_path: str, serving_binary,
                      serving_spec: infra_validator_pb2.ServingSpec,
                      validation_spec: infra_validator_pb2.ValidationSpec,
                      requests: List[Any]):
        self._attempt += 1
        try:
            if self._local_process is None:
                return super()._ValidateOnce(
                    model_path=model_path, serving_binary=serving_binary,
                    serving_spec=serving_spec, validation_spec=validation_spec,
                    requests=requests)
            return self._ValidateOnceInLocalProcess(
                model_path, serving_binary, serving_spec, validation_spec, requests)
        except error_types.GracefulShutdown:
            raise
        except Exception as e:  # pylint: disable=broad-except  # recorded, then re-raised
            self._failures.append(f"attempt {self._attempt}: {_describe(e)}")
            raise

    def _ValidateOnceInLocalProcess(self, model_path, serving_binary, serving_spec,
                                    validation_spec, requests):
        deadline = time.time() + validation_spec.max_loading_time_seconds
        if self._local_log_dir is None:
            # Local: the process writes its log here, even when the pipeline root is gs://.
            self._local_log_dir = tempfile.mkdtemp(prefix="infra-validator-logs-")
            self._AddCleanup(shutil.rmtree, self._local_log_dir, ignore_errors=True)
        runner = LocalProcessRunner(
            model_path=model_path, model_name=serving_spec.model_name,
            config=self._local_process,
            log_path=os.path.join(self._local_log_dir, f"attempt-{self._attempt}.log"))
        try:
            logging.info("Starting %r: %s", runner, " ".join(runner.command))
            runner.Start()
            runner.WaitUntilRunning(deadline)
            client = serving_binary.MakeClient(runner.GetEndpoint())
            client.WaitUntilModelLoaded(deadline, polling_interval_sec=_POLLING_INTERVAL_SEC)
            for i, request in enumerate(requests):
                # One at a time, so that a failure names its request.
                try:
                    client.SendRequests([request])
                except error_types.ValidationFailed as e:
                    raise error_types.ValidationFailed(
                        _describe_request_failure(request, i, len(requests), e)) from e
        except Exception:  # pylint: disable=broad-except  # logged, then re-raised
            logging.exception("Error occurred during infra validation.")
            logging.error("Fetching model server logs:\nBEGIN_MODEL_SERVER_LOG\n%s\n"
                          "END_MODEL_SERVER_LOG", runner.GetLogs())
            raise
        finally:
            logging.info("Stopping %r.", runner)
            runner.Stop()
            self._last_log = runner.GetLogs()
            self._keep_log(runner)

    def _keep_log(self, runner: LocalProcessRunner) -> None:
        """Copies the attempt's log next to the blessing (works for gs:// too)."""
        try:
            logs_dir = os.path.join(self._blessing.uri, spec.LOGS_DIR)
            fileio.makedirs(logs_dir)
            fileio.copy(runner.log_path,
                        os.path.join(logs_dir, os.path.basename(runner.log_path)),
                        overwrite=True)
        except Exception:  # pylint: disable=broad-except  # a log copy must not fail validation
            logging.warning("Could not keep the model server log %s", runner.log_path,
                            exc_info=True)

    def _record_failure(self, blessing: types.Artifact) -> None:
        lines = [f"InfraValidator did not bless the model at {blessing.uri}:"]
        lines += [f"- {f}" for f in self._failures] or ["- (no error was recorded)"]
        if self._last_log:
            lines.append(f"Model server log, attempt {self._attempt} (tail; full logs in "
                         f"{os.path.join(blessing.uri, spec.LOGS_DIR)}):")
            lines.append(tail(self._last_log, 2500))
        message = "\n".join(lines)
        logging.error("%s", message)
        io_utils.write_string_file(os.path.join(blessing.uri, spec.FAILURE_FILE), message)
        if len(message) > _MAX_FAILURE_CHARS:
            message = message[:_MAX_FAILURE_CHARS - 40] + f"\n... (see {spec.FAILURE_FILE})"
        blessing.set_string_custom_property(spec.FAILURE_PROPERTY, message)


def _check_local_serving_spec(serving_spec: infra_validator_pb2.ServingSpec) -> None:
    """The component checks this at construction; the executor trusts nothing it is given."""
    platform = serving_spec.WhichOneof("serving_platform")
    if platform is not None:
        raise ValueError(f"local_process_config is set and ServingSpec.{platform} too: "
                         f"choose one platform (remove ServingSpec.{platform} to run the "
                         "model server as a local process)")
    if serving_spec.WhichOneof("serving_binary") != "tensorflow_serving":
        raise ValueError("the local-process platform runs TF Serving: set "
                         "ServingSpec.tensorflow_serving")


def _warn_if_retries_outlast_deadline(config: LocalProcessConfig,
                                      validation_spec: infra_validator_pb2.ValidationSpec
                                      ) -> None:
    """Retries that outlast the loading deadline turn a load error into a deadline."""
    retrying = config.max_num_load_retries * config.load_retry_interval_micros / 1e6
    if retrying and retrying >= validation_spec.max_loading_time_seconds:
        logging.warning(
            "local_process_config: max_num_load_retries=%d x load_retry_interval_micros=%d "
            "is %.0f s of retrying, not less than ValidationSpec.max_loading_time_seconds="
            "%d: a model that cannot load will be reported as a deadline. Lower the retries "
            "(0 fails at the first load error) or raise the deadline.",
            config.max_num_load_retries, config.load_retry_interval_micros, retrying,
            validation_spec.max_loading_time_seconds)


def _mark_not_blessed(blessing: types.Artifact) -> None:
    """What TFX's executor writes for a model that failed (INFRA_NOT_BLESSED, blessed=0)."""
    io_utils.write_string_file(os.path.join(blessing.uri, spec.NOT_BLESSED_FILE), "")
    blessing.set_int_custom_property(spec.BLESSED_PROPERTY, 0)


def _rpc_error(e: BaseException):
    while e is not None:
        if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
            return e
        e = e.__cause__
    return None


def _describe(e: BaseException) -> str:
    rpc = _rpc_error(e)
    text = f"{type(e).__name__}: {e}"
    if rpc is not None and rpc is not e and str(rpc.details()) not in text:
        text += f" ({rpc.code().name}: {rpc.details()})"
    if isinstance(e, error_types.DeadlineExceeded):
        if SERVER_REPORTED in text:
            # More time would only buy more retries of a load that already failed.
            text += (" The server was still retrying a model it could not load: fix the "
                     "model, or set local_process_config max_num_load_retries=0 to fail "
                     "at the first error.")
        else:
            text += " Consider increasing ValidationSpec.max_loading_time_seconds."
    return text if len(text) <= 2000 else text[:2000] + "..."


def _describe_request_failure(request, index: int, total: int, error: Exception) -> str:
    kind = type(request).__name__.replace("Request", "")
    signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
    rpc = _rpc_error(error)
    reason = f"{rpc.code().name}: {rpc.details()}" if rpc is not None else str(error.__cause__
                                                                                 or error)
    return (f"the model server loaded the model but failed {kind} request {index + 1}/{total} "
            f"to signature {signature!r}: {reason}")
