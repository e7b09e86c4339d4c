"""TEST DOUBLE of `tensorflow_model_server`: TF Serving's gRPC API over the TF pip package.

No TF Serving binary can be installed on the machines this project is tested
on, so the InfraValidator tests run this program in its place, through a
wrapper named `tensorflow_model_server` on PATH (`install_wrapper`). It is not
a model server to deploy; it exists so that TFX's own request builder, client,
retries and blessing logic, and our local-process platform, run end to end.

    python fake_tf_serving.py --port=8500 --model_name=NAME --model_base_path=DIR

What it does, as TF Serving does it:
- takes the flags `--port`, `--model_name`, `--model_base_path` (and refuses
  unknown flags, as the real binary does);
- retries a failed load as TF Serving's retrier does (util/retrier.cc):
  `--max_num_load_retries` more tries (default 5), `--load_retry_interval_micros`
  apart (default 60 s), logging "Loading servable: {name: N version: V}
  failed: ERROR" for each try and "Retrying of ... retry: K" before each retry;
  then prints "Failed to start server. Error: ..." and exits with 255 (main.cc
  returns -1);
- polls for a version every `--file_system_poll_wait_seconds` (default 1);
- serves the highest numeric version directory under `--model_base_path`
  (TF Serving's default "latest" policy); with none, it logs TF Serving's
  "No versions of servable ... found" and keeps polling, without listening;
- loads it with the TF1 SavedModel loader, tag `serve`, into a session, in a
  process that imports nothing but TensorFlow and the TF Serving API protos
  (Keras is blocked), so an op only a Python package registers is missing
  here as it is in the real server;
- replays `assets.extra/tf_serving_warmup_requests` (PredictionLogs, at most
  1000) at load; a failing warmup request fails the load;
- opens the gRPC port only after the model loaded, and exits with
  "Failed to start server" when it cannot load it, as TF Serving's ServerCore
  waits for the initial models before the server starts;
- ModelService.GetModelStatus (AVAILABLE); PredictionService Predict (inputs
  fed and outputs fetched by the signature's tensor names, output_filter),
  Classify and Regress (`inputs` of serialized tf.Examples, the output keys
  and shapes TF Serving requires, example_list_with_context), GetModelMetadata
  (signature_def); gRPC status codes and the real server's error texts for
  unknown models, versions and signatures and for mismatched inputs.

What it does NOT do or guarantee (needs the real binary; see the `serving`
tests and docs/infra_validation.md):
- its ops are the TF pip package's, not the binary's build: a model can load
  here and fail in a TF Serving build without some op (or the reverse), and
  version skew between TF and TF Serving is not tested;
- no request batching (--enable_batching is accepted and ignored), no
  --model_config_file / --monitoring_config_file / --platform_config_file, no
  REST API (--rest_api_port must be 0), no version policy or labels (one
  version, the latest; no reloading when new versions appear), no
  MultiInference, no SessionRun warmup logs, no GPU, no resource estimation;
- the C++ server's exact validation (tensor shape checks before running,
  error texts beyond those listed above) and its performance.
"""

import argparse
import os
import signal
import stat
import sys
import threading
import time

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000   # TF Serving's kMaxNumRecords
SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"

# Flags of the real binary this double accepts and ignores (with a log line).
IGNORED_FLAGS = ("enable_batching", "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
                 "enable_model_warmup", "grpc_channel_arguments")
# Flags of the real binary this double cannot honour: it refuses them loudly.
UNSUPPORTED_FLAGS = ("model_config_file", "monitoring_config_file", "platform_config_file",
                     "batching_parameters_file", "ssl_config_file", "model_config_file_poll_"
                     "wait_seconds")


def install_wrapper(bin_dir) -> str:
    """Writes `<bin_dir>/tensorflow_model_server`, a script that runs this double.

    Put `bin_dir` first on PATH and anything that runs `tensorflow_model_server`
    (the local-process platform) runs this program with the same flags.
    """
    bin_dir = os.fspath(bin_dir)
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "tensorflow_model_server")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n# Test double of TF Serving (tests/helpers/fake_tf_serving.py).\n"
                # Python warnings of the pip stack are not part of TF Serving's log.
                "export PYTHONWARNINGS=ignore\n"
                f'exec "{sys.executable}" "{os.path.abspath(__file__)}" "$@"\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def log(message: str) -> None:
    # TF Serving logs to stderr; the platform keeps it in the model server log.
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: fake_tf_serving: {message}",
          file=sys.stderr, flush=True)


def parse_flags(argv):
    parser = argparse.ArgumentParser(prog="tensorflow_model_server (test double)",
                                     allow_abbrev=False)
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--rest_api_port", type=int, default=0)
    parser.add_argument("--model_name", default="default")
    parser.add_argument("--model_base_path", default="")
    parser.add_argument("--version", action="store_true")
    # TF Serving's defaults (model_servers/main.cc, server.h).
    parser.add_argument("--max_num_load_retries", type=int, default=5)
    parser.add_argument("--load_retry_interval_micros", type=int, default=60_000_000)
    parser.add_argument("--file_system_poll_wait_seconds", type=int, default=1)
    for name in IGNORED_FLAGS + UNSUPPORTED_FLAGS:
        parser.add_argument(f"--{name}", default=None)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # The real binary: "ERROR: unknown command line flag 'foo'" and exit 1.
        for flag in unknown:
            print(f"ERROR: unknown command line flag '{flag.lstrip('-').split('=')[0]}'",
                  file=sys.stderr)
        sys.exit(1)
    for name in UNSUPPORTED_FLAGS:
        if getattr(args, name) is not None:
            print(f"ERROR: --{name} is not supported by the TF Serving test double",
                  file=sys.stderr)
            sys.exit(1)
    if args.rest_api_port:
        print("ERROR: the TF Serving test double has no REST API (--rest_api_port must be 0)",
              file=sys.stderr)
        sys.exit(1)
    for name in IGNORED_FLAGS:
        if getattr(args, name) is not None:
            log(f"--{name}={getattr(args, name)} accepted and ignored (test double)")
    return args


def latest_version(base_path):
    """The highest numeric child of `base_path` (None if none), as TF Serving picks it."""
    import tensorflow as tf
    if not tf.io.gfile.isdir(base_path):
        log(f"Could not find base path {base_path} for servable")
        return None
    versions = []
    for child in tf.io.gfile.listdir(base_path):
        name = child.rstrip("/")
        if name.isdigit() and tf.io.gfile.isdir(os.path.join(base_path, name)):
            versions.append(int(name))
    return max(versions) if versions else None


class ServingError(Exception):
    """An error with a gRPC status code, as TF Serving returns it."""

    def __init__(self, code_name: str, message: str):
        super().__init__(message)
        self.code_name = code_name


class LoadedModel:
    """One servable version: a TF1 session with its MetaGraph, run by tensor names."""

    def __init__(self, name, version, path):
        import tensorflow as tf
        self.name, self.version, self.path = name, version, path
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, [SERVE_TAG], path)
        self.signatures = dict(self.meta_graph.signature_def)

    # ---- requests

    def check_spec(self, model_spec, warmup=False):
        if warmup:
            return
        if model_spec.name != self.name:
            raise ServingError("NOT_FOUND",
                               f"Servable not found for request: Latest({model_spec.name})")
        if model_spec.HasField("version") and model_spec.version.value != self.version:
            raise ServingError("NOT_FOUND", f"Servable not found for request: "
                               f"Specific({model_spec.name}, {model_spec.version.value})")
        if model_spec.version_label:
            raise ServingError("INVALID_ARGUMENT", "version labels need a model config file, "
                               "which the TF Serving test double does not support")

    def signature(self, model_spec):
        name = model_spec.signature_name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise ServingError("FAILED_PRECONDITION",
                               f'Serving signature key "{name}" not found.')
        return name, self.signatures[name]

    def run(self, feeds, fetch_names):
        import tensorflow as tf
        fetches = [self.graph.get_tensor_by_name(n) for n in fetch_names]
        try:
            return self.session.run(
                fetches, {self.graph.get_tensor_by_name(k): v for k, v in feeds.items()})
        except tf.errors.OpError as e:
            raise ServingError(_code_name(e.error_code), e.message) from None

    def predict(self, request, warmup=False):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2
        self.check_spec(request.model_spec, warmup)
        name, sig = self.signature(request.model_spec)
        if sig.method_name not in (PREDICT, CLASSIFY, REGRESS):
            raise ServingError("INVALID_ARGUMENT", "Expected prediction signature method_name "
                               f"to be one of {{{PREDICT}, {CLASSIFY}, {REGRESS}}}. Was: "
                               f"{sig.method_name}")
        sent, expected = set(request.inputs), set(sig.inputs)
        if sent != expected:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. Missing but required: "
                f"{{{','.join(sorted(expected - sent))}}}.")
        feeds = {}
        for key, proto in request.inputs.items():
            if proto.dtype != sig.inputs[key].dtype:
                raise ServingError(
                    "INVALID_ARGUMENT", f"Expects arg[{key}] to be "
                    f"{tf.dtypes.as_dtype(sig.inputs[key].dtype).name} but "
                    f"{tf.dtypes.as_dtype(proto.dtype).name} is provided")
            feeds[sig.inputs[key].name] = tf.make_ndarray(proto)
        keys = sorted(request.output_filter) or sorted(sig.outputs)
        for key in keys:
            if key not in sig.outputs:
                raise ServingError("INVALID_ARGUMENT", f"output tensor alias not found in "
                                   f"signature: {key} Outputs expected to be in the set "
                                   f"{{{','.join(sorted(sig.outputs))}}}.")
        values = self.run(feeds, [sig.outputs[k].name for k in keys])
        response = predict_pb2.PredictResponse()
        self._fill_spec(response.model_spec, name)
        for key, value in zip(keys, values):
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def _examples_input(self, request, sig, kind):
        if sig.method_name != {"classification": CLASSIFY, "regression": REGRESS}[kind]:
            method = CLASSIFY if kind == "classification" else REGRESS
            raise ServingError("INVALID_ARGUMENT", f"Expected {kind} signature method_name to "
                               f"be {method}. Was: {sig.method_name}")
        if "inputs" not in sig.inputs:
            raise ServingError("INVALID_ARGUMENT", f"No {kind} inputs found in SignatureDef: "
                               f"{sig}")
        which = request.input.WhichOneof("kind")
        if which == "example_list":
            examples = list(request.input.example_list.examples)
        elif which == "example_list_with_context":
            # As TF Serving does: the serialized context, then the serialized example
            # (parsing the concatenation merges them; the example's features win).
            context = request.input.example_list_with_context.context.SerializeToString()
            examples = [context + e.SerializeToString()
                        for e in request.input.example_list_with_context.examples]
        else:
            examples = []
        if not examples:
            raise ServingError("INVALID_ARGUMENT", "Input is empty.")
        serialized = [e if isinstance(e, bytes) else e.SerializeToString() for e in examples]
        return {sig.inputs["inputs"].name: serialized}, len(serialized)

    def classify(self, request, warmup=False):
        import numpy as np
        from tensorflow_serving.apis import classification_pb2
        self.check_spec(request.model_spec, warmup)
        name, sig = self.signature(request.model_spec)
        feeds, batch = self._examples_input(request, sig, "classification")
        keys = [k for k in ("classes", "scores") if k in sig.outputs]
        if not keys:
            raise ServingError("INVALID_ARGUMENT", "Expected classification signature outputs "
                               "to contain classes and/or scores")
        values = dict(zip(keys, self.run(feeds, [sig.outputs[k].name for k in keys])))
        classes, scores = values.get("classes"), values.get("scores")
        for key, value in values.items():
            if value.ndim != 2 or value.shape[0] != batch:
                raise ServingError("INVALID_ARGUMENT", f"Expected Tensor shape: [{batch} "
                                   f"num_classes] but got {list(value.shape)}")
        if scores is not None and scores.dtype != np.float32:
            raise ServingError("INVALID_ARGUMENT", "Expected scores Tensor of DT_FLOAT. Got: "
                               f"{scores.dtype}")
        response = classification_pb2.ClassificationResponse()
        self._fill_spec(response.model_spec, name)
        for i in range(batch):
            result = response.result.classifications.add()
            width = (classes if classes is not None else scores).shape[1]
            for j in range(width):
                cls = result.classes.add()
                if classes is not None:
                    cls.label = classes[i, j].decode() if isinstance(
                        classes[i, j], bytes) else str(classes[i, j])
                if scores is not None:
                    cls.score = float(scores[i, j])
        return response

    def regress(self, request, warmup=False):
        import numpy as np
        from tensorflow_serving.apis import regression_pb2
        self.check_spec(request.model_spec, warmup)
        name, sig = self.signature(request.model_spec)
        feeds, batch = self._examples_input(request, sig, "regression")
        if "outputs" not in sig.outputs:
            raise ServingError("INVALID_ARGUMENT", "No regression outputs found in "
                               "SignatureDef")
        (value,) = self.run(feeds, [sig.outputs["outputs"].name])
        if not (value.shape == (batch,) or value.shape == (batch, 1)):
            raise ServingError("INVALID_ARGUMENT", "Expected output Tensor shape to be either "
                               f"[batch_size] or [batch_size, 1] but got {list(value.shape)}")
        if value.dtype != np.float32:
            raise ServingError("INVALID_ARGUMENT", "Expected output Tensor of DT_FLOAT. Got: "
                               f"{value.dtype}")
        response = regression_pb2.RegressionResponse()
        self._fill_spec(response.model_spec, name)
        for v in value.reshape(batch):
            response.result.regressions.add().value = float(v)
        return response

    def metadata(self, request):
        from tensorflow_serving.apis import get_model_metadata_pb2
        self.check_spec(request.model_spec)
        fields = list(request.metadata_field)
        if not fields:
            raise ServingError("INVALID_ARGUMENT",
                               "GetModelMetadataRequest must specify at least one metadata_field")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._fill_spec(response.model_spec, "")
        for field in fields:
            if field != "signature_def":
                raise ServingError("INVALID_ARGUMENT", f"Metadata field {field} is not "
                                   "supported")
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, sig in self.signatures.items():
                signature_map.signature_def[key].CopyFrom(sig)
            response.metadata["signature_def"].Pack(signature_map)
        return response

    def _fill_spec(self, spec, signature_name):
        spec.name = self.name
        spec.version.value = self.version
        if signature_name:
            spec.signature_name = signature_name

    # ---- warmup

    def warm_up(self):
        """Replays the SavedModel's warmup file, as TF Serving does before serving."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2
        path = os.path.join(self.path, WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            log(f"No warmup data file found at {path}")
            return 0
        try:
            records = list(tf.compat.v1.io.tf_record_iterator(path))
        except tf.errors.OpError as e:
            raise RuntimeError(f"Failed to read warmup data file {path}: {e.message}") from None
        count = 0
        for record in records:
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise RuntimeError(f"Number of warmup records exceeds the maximum "
                                   f"({MAX_WARMUP_RECORDS}) at {path}")
            prediction_log = prediction_log_pb2.PredictionLog()
            prediction_log.ParseFromString(record)
            kind = prediction_log.WhichOneof("log_type")
            handler = {"predict_log": self.predict, "classify_log": self.classify,
                       "regress_log": self.regress}.get(kind)
            if handler is None:
                raise RuntimeError(f"Unsupported log_type for warmup: {kind}")
            try:
                handler(getattr(prediction_log, kind).request, warmup=True)
            except ServingError as e:
                raise RuntimeError(f"warmup request {count} ({kind}) failed: "
                                   f"{e.code_name}: {e}") from None
        log(f"Finished reading warmup data for model at {path}. Number of warmup records "
            f"read: {count}.")
        return count


def _code_name(error_code: int) -> str:
    import grpc
    for code in grpc.StatusCode:
        if code.value[0] == error_code:
            return code.name
    return "UNKNOWN"


class Services:
    """ModelService and PredictionService over one LoadedModel."""

    def __init__(self, model: LoadedModel):
        self.model = model

    def _call(self, context, fn, *args):
        import grpc
        try:
            return fn(*args)
        except ServingError as e:
            context.abort(getattr(grpc.StatusCode, e.code_name), str(e))

    # ModelService
    def GetModelStatus(self, request, context):  # noqa: N802 (gRPC method names)
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2
        spec = request.model_spec
        if spec.name != self.model.name:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Could not find any versions of model {spec.name}")
        if spec.HasField("version") and spec.version.value != self.model.version:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find version "
                          f"{spec.version.value} of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = self.model.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response

    # PredictionService
    def Predict(self, request, context):  # noqa: N802
        return self._call(context, self.model.predict, request)

    def Classify(self, request, context):  # noqa: N802
        return self._call(context, self.model.classify, request)

    def Regress(self, request, context):  # noqa: N802
        return self._call(context, self.model.regress, request)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return self._call(context, self.model.metadata, request)

    def MultiInference(self, request, context):  # noqa: N802
        import grpc
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "MultiInference is not implemented by the TF Serving test double")

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        import grpc
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "model config reloads are not implemented by the TF Serving test double")


def load_with_retries(name, version, path, max_num_retries, interval_micros):
    """(model, None) or (None, last error), as TF Serving's Retry() around a load."""
    description = f"Loading servable: {{name: {name} version: {version}}}"
    error = None
    for attempt in range(max_num_retries + 1):
        if attempt:
            if interval_micros > 0:
                time.sleep(interval_micros / 1e6)
            log(f"Retrying of {description} retry: {attempt}")
        try:
            model = LoadedModel(name, version, path)
            model.warm_up()
            return model, None
        except Exception as e:  # pylint: disable=broad-except  # the real server's log
            error = f"{type(e).__name__}: {e}"
            log(f"{description} failed: {error}")
    log(f"Retrying of {description} exhausted max_num_retries: {max_num_retries}")
    return None, error


def main(argv=None) -> int:
    args = parse_flags(sys.argv[1:] if argv is None else argv)
    if args.version:
        print("TensorFlow ModelServer: 0.0.0-test-double\nTensorFlow Library: (pip)")
        return 0
    # tensorflow_model_server has no Keras; `import tensorflow` would import it eagerly.
    for name in ("keras", "tf_keras"):
        sys.modules.setdefault(name, None)
    from concurrent import futures

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
    tf.get_logger().setLevel("ERROR")   # Python deprecation notices; not TF Serving's log

    if not args.model_base_path:
        print("ERROR: --model_base_path is required (no --model_config_file support)",
              file=sys.stderr)
        return 1
    name = args.model_name
    log(f"Building single TensorFlow model file config: model_name: {name} "
        f"model_base_path: {args.model_base_path}")
    version = latest_version(args.model_base_path)
    # Non-positive: the real server polls once and then waits; the double waits a second.
    poll_seconds = args.file_system_poll_wait_seconds if (
        args.file_system_poll_wait_seconds > 0) else 1
    while version is None:
        # TF Serving keeps polling; the server does not start until a version loads.
        log(f"No versions of servable {name} found under base path {args.model_base_path}. "
            "Did you forget to name your leaf directory as a number (eg. '/1/')?")
        time.sleep(poll_seconds)
        version = latest_version(args.model_base_path)
    path = os.path.join(args.model_base_path, str(version))
    log(f"Approving load for servable version {{name: {name} version: {version}}}")
    model, error = load_with_retries(name, version, path, args.max_num_load_retries,
                                     args.load_retry_interval_micros)
    if model is None:
        # main.cc: std::cout << "Failed to start server. Error: " << status; return -1.
        print(f"Failed to start server. Error: Unknown: 1 servable(s) did not become "
              f"available: {{{{{{name: {name} version: {version}}} due to error: "
              f"{error}}}, }}", flush=True)
        return 255
    log(f"Successfully loaded servable version {{name: {name} version: {version}}}")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    services = Services(model)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, server)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, server)
    try:
        bound = server.add_insecure_port(f"0.0.0.0:{args.port}")
    except RuntimeError:
        bound = 0
    if not bound:
        print(f"Failed to start server. Error: could not bind 0.0.0.0:{args.port}",
              flush=True)
        return 255
    server.start()
    log(f"Running gRPC ModelServer at 0.0.0.0:{args.port} ...")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    server.stop(grace=1)
    log("Stopped (SIGTERM).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
