"""The serving check: TF Serving's contract, endpoint parity and warmup.

`run_check` (used by `export`) and `check_saved_model` (the `check` CLI) drive
`serving_contract.py` in a separate process that imports only TensorFlow and
the TF Serving protos (started ahead by `contract_process`), and feed it one
request per endpoint. The same requests are written as the SavedModel's warmup
file, so TF Serving warms every endpoint at load time. The responses, computed
through the TF1 session path, are compared with the in-memory model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from export_archive import contract_process, describe, runtimes
from export_archive.constants import WARMUP_FILE

DEFAULT_RTOL, DEFAULT_ATOL = 1e-5, 1e-5
SMALL_BATCH, LARGE_BATCH = 1, 64


class CheckFailed(RuntimeError):
    """The export breaks TF Serving's contract or drifts from the model."""

    def __init__(self, report: "CheckReport"):
        self.report = report
        super().__init__("The serving check failed:\n" + report.format_failures())


def failure_line(row: Dict[str, Any]) -> str:
    """One check row as the report, the CLI and the components' property show it."""
    return f"{row['endpoint'] or '(model)'}: {row['check']}: {row['detail']}"


@dataclasses.dataclass
class CheckReport:
    results: List[Dict[str, Any]]

    @property
    def passed(self) -> bool:
        return all(r["passed"] for r in self.results)

    def failures(self) -> List[Dict[str, Any]]:
        return [r for r in self.results if not r["passed"]]

    def format_failures(self) -> str:
        return "\n".join(f"  - {failure_line(r)}" for r in self.failures())

    def format(self) -> str:
        """The verdict first, then one line per check (as in the export report)."""
        failed = len(self.failures())
        lines = [f"serving check: {'PASSED' if self.passed else 'FAILED'} "
                 f"({len(self.results)} checks, {failed} failed)"]
        lines += [f"{'PASS' if r['passed'] else 'FAIL'} {r['check']:<16} "
                  f"{r['endpoint'] or '-':<20} {r['detail']}" for r in self.results]
        lines.append("serving check " + ("passed" if self.passed else "FAILED"))
        return "\n".join(lines)

    def to_json(self) -> Dict[str, Any]:
        return {"passed": self.passed, "results": self.results}


# ---- requests: one per endpoint, synthesized or from examples


def _synthesize(info_text: str, batch: int, rng) -> np.ndarray:
    dtype, dims = info_text.split("[", 1)
    dims = dims.rstrip("]")
    shape = [] if not dims else [
        (batch if i == 0 else 1) if d in ("?", "*") else int(d)
        for i, d in enumerate(dims.split(","))]
    if dtype == "string":
        return np.full(shape, b"", dtype=object)
    if dtype == "bool":
        return np.zeros(shape, dtype=bool)
    np_dtype = tf.as_dtype(dtype).as_numpy_dtype
    if np.issubdtype(np_dtype, np.floating):
        return rng.normal(size=shape).astype(np_dtype)
    return np.zeros(shape, dtype=np_dtype)  # ids/indices: 0 is always in range


def synthesize_examples(feature_spec: Dict[str, Any], batch: int, rng) -> List[bytes]:
    """Serialized tf.Examples with a value of the right type for every feature."""
    out = []
    for _ in range(batch):
        feature = {}
        for name, spec in feature_spec.items():
            size = int(np.prod(spec.shape)) if getattr(spec, "shape", None) else 1
            if spec.dtype == tf.string:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a"] * size))
            elif spec.dtype.is_floating:
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(
                    value=rng.normal(size=size).tolist()))
            else:
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[0] * size))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature))
                   .SerializeToString())
    return out


def build_requests(export_dir: str,
                   example_source: Optional[Callable[[int], List[bytes]]],
                   batch: int, seed: int = 0):
    """One PredictionLog per signature: Predict, or Classify/Regress for signatures
    with those method names (their input is tf.Examples from `example_source`)."""
    from tensorflow_serving.apis import prediction_log_pb2
    rng = np.random.default_rng(seed)
    logs = []
    for sig in describe.describe(export_dir):
        log = prediction_log_pb2.PredictionLog()
        method = sig.method_name.rsplit("/", 1)[-1]
        if method in ("classify", "regress"):
            request = (log.classify_log if method == "classify" else log.regress_log).request
            request.model_spec.signature_name = sig.name
            # Without an example source (the `check` CLI), empty tf.Examples, as for
            # string inputs of Predict signatures.
            serialized_batch = example_source(batch) if example_source else [b""] * batch
            for serialized in serialized_batch:
                request.input.example_list.examples.add().ParseFromString(serialized)
        else:
            request = log.predict_log.request
            request.model_spec.signature_name = sig.name
            named = (features_from_examples(sig.inputs, example_source(batch))
                     if example_source is not None and not _takes_examples(sig) else None)
            for key, text in sig.inputs.items():
                if named is not None:
                    value = named[key]
                elif text.startswith("string[") and example_source is not None:
                    value = np.array(example_source(batch), dtype=object)
                else:
                    value = _synthesize(text, batch, rng)
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(log)
    return logs


def _takes_examples(sig) -> bool:
    return len(sig.inputs) == 1 and next(iter(sig.inputs.values())) == "string[?]"


def features_from_examples(inputs: Dict[str, str], records: List[bytes]
                           ) -> Optional[Dict[str, np.ndarray]]:
    """Named inputs (a raw_features signature's) filled from real tf.Examples, when
    every input is a feature of the records; None otherwise (then synthesized)."""
    if not records:
        return None
    spec = {}
    for key, text in inputs.items():
        dtype, dims = text.split("[", 1)
        dims = [d for d in dims.rstrip("]").split(",") if d][1:]
        # tf.Example holds only float, int64 and bytes: parse as those, then cast.
        parse_dtype = (tf.string if dtype == "string" else
                       tf.float32 if tf.as_dtype(dtype).is_floating else tf.int64)
        if dtype not in ("string", "bool") and not (tf.as_dtype(dtype).is_floating
                                                     or tf.as_dtype(dtype).is_integer):
            return None
        if any(d in ("?", "*") for d in dims):
            spec[key] = tf.io.VarLenFeature(parse_dtype)
        else:
            spec[key] = tf.io.FixedLenFeature([int(d) for d in dims], parse_dtype)
    try:
        parsed = tf.io.parse_example(tf.constant(records), spec)
    except (tf.errors.InvalidArgumentError, ValueError):
        return None   # some input is not a feature of these records
    out = {}
    for key, value in parsed.items():
        if isinstance(value, tf.SparseTensor):
            value = tf.sparse.to_dense(value)
            if value.shape[-1] == 0:
                return None   # no record has this feature: not an example feature
        np_value = value.numpy()
        dtype = inputs[key].split("[", 1)[0]
        out[key] = np_value.astype(object if dtype == "string" else tf.as_dtype(dtype)
                                   .as_numpy_dtype)
    return out


def write_prediction_logs(path: str, logs) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def read_prediction_logs(path: str):
    """The PredictionLogs of a warmup file; a `SourceError` naming it when it is not
    one (a corrupt or truncated record, another file under that name)."""
    from tensorflow_serving.apis import prediction_log_pb2
    logs = []
    try:
        for record in tf.data.TFRecordDataset(path):
            log = prediction_log_pb2.PredictionLog()
            log.ParseFromString(record.numpy())
            logs.append(log)
    except (tf.errors.OpError, DecodeError) as e:
        from export_archive.sources import SourceError, error_summary
        raise SourceError(path, "the warmup file does not read as TFRecords of TF Serving "
                          f"PredictionLogs ({type(e).__name__}: {error_summary(e)})",
                          allowed="the tf_serving_warmup_requests file an export writes",
                          fix="export the model again with the serving check on (it writes "
                              "the file), or remove the damaged file") from None
    return logs


# ---- the separate process


def run_contract(export_dir: str, requests=None, latency_runs: int = 0,
                 timeout: int = 900) -> Dict[str, Any]:
    """Runs serving_contract.py on `export_dir`; returns its results and responses.

    In the process `contract_process` started ahead (by the CLI or `writer.export`),
    whose TensorFlow import then overlapped the export; else in a new one."""
    process = contract_process.acquire()
    try:
        args = {"requests": None, "responses": None}
        if requests:
            args = {"requests": process.path("requests.tfrecord"),
                    "responses": process.path("responses.tfrecord")}
            write_prediction_logs(args["requests"], requests)
        failure = process.run(export_dir, latency_runs=latency_runs, timeout=timeout, **args)
        if failure:
            return {"results": [{"check": "load", "endpoint": "", "passed": False,
                                 "detail": failure}], "responses": []}
        with open(process.path("result.json")) as f:
            data = json.load(f)
        responses = args["responses"]
        data["responses"] = (read_prediction_logs(responses)
                             if responses and os.path.exists(responses) else [])
        return data
    finally:
        process.close()


# Where `export-archive check DIR` takes each signature's requests from, in order.
SOURCE_WARMUP = "the model's own warmup requests (assets.extra)"
SOURCE_EXAMPLES = "the --examples records"
SOURCE_SYNTHESIZED = ("synthesized inputs (no warmup request for it and no --examples): "
                      "a parser with required features may reject them")


def check_saved_model(export_dir: str, example_files: Optional[List[str]] = None,
                      latency_runs: int = 20, requests=(),
                      serving_runtime: Optional[str] = None) -> CheckReport:
    """The `export-archive check DIR` command: TF Serving's contract, no parity.

    Each signature is called at batch 1 and 64, as `export` does, with requests
    taken from, in order: the model's own warmup file (the requests its export
    checked, replayed the way TF Serving replays them at load); the records of
    `example_files`; synthesized values. A `requests` row per signature says which.
    Parity needs the source model: run `export` with the check on for that.
    `requests` (entries as in the config's `check.requests`) come before all of them.
    `serving_runtime` ("2.15"): also check the ops against that TF (`runtimes`).
    """
    from export_archive import user_requests
    if not tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{export_dir} is not a SavedModel directory: "
                                "saved_model.pb is missing.")
    source = None
    if example_files:
        from export_archive.examples import read_records
        source = lambda count: read_records(example_files, count)  # noqa: E731
    warmup_path = os.path.join(export_dir, WARMUP_FILE)
    warmup = {}
    if tf.io.gfile.exists(warmup_path):
        try:
            for log in read_prediction_logs(warmup_path):
                warmup.setdefault(_signature_name(log), log)
        except (tf.errors.OpError, ValueError, DecodeError):
            warmup = {}   # the contract's own `warmup` row reports the broken file
    origins, examples_origin = {}, SOURCE_EXAMPLES
    if requests:
        supplied = user_requests.load(requests, export_dir)
        for name, logs in supplied.logs.items():
            warmup[name], origins[name] = logs[0]
        if supplied.examples:
            examples_origin, source, _ = supplied.examples[0]
    built = {size: build_requests(export_dir, source, size, seed=size)
             for size in (SMALL_BATCH, LARGE_BATCH)}
    requests, rows = {SMALL_BATCH: [], LARGE_BATCH: []}, []
    for i, log in enumerate(built[SMALL_BATCH]):
        name = _signature_name(log)
        if name in warmup:
            origin = origins.get(name, SOURCE_WARMUP)
            for size in requests:
                requests[size].append(_resized(warmup[name], size))
        else:
            origin = examples_origin if source is not None else SOURCE_SYNTHESIZED
            for size in requests:
                requests[size].append(built[size][i])
        rows.append({"check": "requests", "endpoint": name, "passed": True,
                     "detail": f"from {origin}"})
    contract = run_contract(export_dir, requests[SMALL_BATCH] + requests[LARGE_BATCH],
                            latency_runs=latency_runs)
    results = [r for r in contract["results"] if r["check"] != "run"]
    results += runtimes.check_rows(export_dir, serving_runtime)
    synthesized = {r["endpoint"]: user_requests.ORIGIN_SYNTHESIZED for r in rows
                   if r["detail"] == f"from {SOURCE_SYNTHESIZED}"}
    runs = [r for r in contract["results"] if r["check"] == "run"]
    runs = user_requests.apply_not_exercised(
        results, runs, user_requests.not_exercised(runs, synthesized, export_dir))
    results += rows + _latency_rows(runs)
    return CheckReport(results)


def _resized(log, batch: int):
    """A copy of a warmup request with `batch` examples: its inputs repeated along the
    batch dimension (TF Serving's warmup requests are usually of batch 1)."""
    from tensorflow_serving.apis import prediction_log_pb2
    out = prediction_log_pb2.PredictionLog()
    out.CopyFrom(log)
    kind = out.WhichOneof("log_type")
    if kind == "predict_log":
        inputs = out.predict_log.request.inputs
        for key in list(inputs):
            value = tf.make_ndarray(inputs[key])
            if value.ndim == 0 or value.shape[0] == 0:
                continue
            reps = -(-batch // value.shape[0])
            value = np.concatenate([value] * reps)[:batch]
            inputs[key].CopyFrom(tf.make_tensor_proto(value))
    elif kind in ("classify_log", "regress_log"):
        examples = getattr(out, kind).request.input.example_list.examples
        originals = list(examples)
        if originals:
            del examples[:]
            for j in range(batch):
                examples.add().CopyFrom(originals[j % len(originals)])
    return out


# ---- parity with the in-memory model


def in_memory_outputs(concrete, request_inputs: Dict[str, np.ndarray]):
    """Runs the endpoint's traced graph over the in-memory model on a request's
    inputs (keyed like the signature), as the server would run it."""
    args_structure = concrete.structured_input_signature[0]
    flat = tf.nest.flatten(args_structure)
    # Placeholder names are the signature's input keys; their order is the call's.
    keys = [t.name.split(":")[0] for t in concrete.inputs[:len(flat)]]
    values = [tf.constant(request_inputs[k]) for k in keys]
    outputs = concrete(*tf.nest.pack_sequence_as(args_structure, values))
    if isinstance(outputs, dict):
        return {k: np.asarray(v) for k, v in outputs.items()}
    flat_out = tf.nest.flatten(outputs)
    return {f"output_{i}": np.asarray(v) for i, v in enumerate(flat_out)}


def compare(name: str, expected: Dict[str, np.ndarray], served: Dict[str, np.ndarray],
            rtol: float, atol: float) -> Dict[str, Any]:
    """Inference parity: same keys, dtypes and shapes, values within tolerance."""
    if sorted(expected) != sorted(served):
        return {"check": "parity", "endpoint": name, "passed": False,
                "detail": f"output keys differ: model {sorted(expected)}, served {sorted(served)}"}
    worst_abs = worst_rel = 0.0
    for key in expected:
        a, b = expected[key], served[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            return {"check": "parity", "endpoint": name, "passed": False,
                    "detail": f"{key}: model gives {a.dtype}{list(a.shape)}, served "
                              f"{b.dtype}{list(b.shape)}"}
        if a.dtype.kind in "OSUb":
            if not np.array_equal(a, b):
                return {"check": "parity", "endpoint": name, "passed": False,
                        "detail": f"{key} differs from the model"}
            continue
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        worst_abs = max(worst_abs, float(diff.max(initial=0.0)))
        worst_rel = max(worst_rel, float((diff / (np.abs(a) + 1e-12)).max(initial=0.0)))
        if not np.allclose(b, a, rtol=rtol, atol=atol):
            return {"check": "parity", "endpoint": name, "passed": False,
                    "detail": f"{key} drifts from the model: max abs diff {worst_abs:.3g}, "
                              f"max rel diff {worst_rel:.3g} (rtol {rtol}, atol {atol})"}
    return {"check": "parity", "endpoint": name, "passed": True,
            "detail": f"max abs diff {worst_abs:.3g}, max rel diff {worst_rel:.3g}"}


def _request_inputs(log) -> Dict[str, np.ndarray]:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        return {k: tf.make_ndarray(v) for k, v in log.predict_log.request.inputs.items()}
    request = getattr(log, kind).request
    return {"inputs": np.array([e.SerializeToString()
                                for e in request.input.example_list.examples], dtype=object)}


def run_check(export_dir: str, endpoint_fns: Dict[str, Any], training: Dict[str, bool],
              example_source: Optional[Callable[[int], List[bytes]]],
              rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
              warmup: bool = True, latency_runs: int = 20,
              supplied=None, serving_runtime: Optional[str] = None) -> CheckReport:
    """Warmup + contract + parity + latency for a freshly written export.

    `endpoint_fns` maps endpoint name -> its traced ConcreteFunction from the archive
    (over the in-memory model: see `writer.BuiltArchive.traced_endpoint`);
    `training` maps signature name -> whether it runs the model in training mode.
    Training-mode signatures run last, then the first inference request again:
    a training pass that changes what inference returns (BatchNormalization
    moving statistics) would change a served model's answers the same way.
    `supplied` (`user_requests.Supplied`): the user's requests, used before
    `example_source` and synthesized ones (see `user_requests`).
    `serving_runtime` ("2.15"): also check the ops against that TF (`runtimes`).
    """
    from export_archive import user_requests
    small, large, origins = user_requests.choose(export_dir, supplied, example_source,
                                                 SMALL_BATCH, LARGE_BATCH)
    if warmup:
        write_prediction_logs(os.path.join(export_dir, WARMUP_FILE), small)
    is_training = lambda log: training.get(_signature_name(log), False)
    inference = [log for log in small + large if not is_training(log)]
    trainers = [log for log in small + large if is_training(log)]
    probe = [next(log for log in large if not is_training(log))] if trainers and inference else []
    contract = run_contract(export_dir, inference + trainers + probe, latency_runs=latency_runs)
    results = [r for r in contract["results"] if r["check"] != "run"]
    results += runtimes.check_rows(export_dir, serving_runtime)
    runs = [r for r in contract["results"] if r["check"] == "run"]
    if probe and len(runs) == len(inference + trainers + probe):
        runs = runs[:-1]  # the probe re-runs a request; its timing is not a new figure
    skipped = user_requests.not_exercised(runs, origins, export_dir)
    runs = user_requests.apply_not_exercised(results, runs, skipped)
    if warmup and skipped:
        # TF Serving refuses a model whose warmup request fails: leave those out.
        small = [log for log in small if _signature_name(log) not in skipped]
        if small:
            write_prediction_logs(os.path.join(export_dir, WARMUP_FILE), small)
        else:
            tf.io.gfile.remove(os.path.join(export_dir, WARMUP_FILE))
    results += user_requests.request_rows(origins) + _latency_rows(runs)
    responses: Dict[str, List[Dict[str, np.ndarray]]] = {}
    for log in contract["responses"]:
        outputs = {k: tf.make_ndarray(v) for k, v in log.predict_log.response.outputs.items()}
        responses.setdefault(_signature_name(log), []).append(outputs)
    if probe and contract["responses"]:
        name = _signature_name(probe[0])
        before, after = responses[name][1], responses[name][-1]
        changed = any(not np.array_equal(before[k], after[k]) for k in before)
        culprits = sorted(n for n, t in training.items() if t)
        results.append({"check": "state", "endpoint": ", ".join(culprits), "passed": not changed,
                        "detail": (f"calling the training-mode endpoint(s) changed what {name!r} "
                                   "returns (e.g. BatchNormalization moving statistics): in TF "
                                   "Serving every training call would shift inference results; "
                                   "drop the training endpoint or freeze those layers")
                        if changed else "training-mode calls leave inference unchanged"})
        responses[name] = responses[name][:-1]
    large_inputs = {_signature_name(log): _request_inputs(log) for log in large}
    for name, concrete in endpoint_fns.items():
        if len(responses.get(name, [])) < 2:
            continue  # its run failed; that row already says why
        served = responses[name][1]
        if training.get(name, False):
            # Never call a training function in memory: it would update the user's model.
            results.append(compare_specs(name, concrete, served))
        else:
            expected = in_memory_outputs(concrete, large_inputs[name])
            results.append(compare(name, expected, served, rtol, atol))
    if warmup:
        results.append({"check": "warmup_written", "endpoint": "", "passed": True,
                        "detail": f"{len(small)} requests in {WARMUP_FILE}" if small else
                        "no warmup file: no endpoint was exercised"})
    return CheckReport(results)


def _signature_name(log) -> str:
    return getattr(log, log.WhichOneof("log_type")).request.model_spec.signature_name


def compare_specs(name: str, concrete, served: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """Training-mode parity: the served outputs have the traced outputs' dtypes and shapes."""
    structure = concrete.structured_outputs
    specs = (dict(structure) if isinstance(structure, dict) else
             {f"output_{i}": t for i, t in enumerate(tf.nest.flatten(structure))})
    for key, tensor in specs.items():
        value = served.get(key)
        if value is None:
            return {"check": "parity", "endpoint": name, "passed": False,
                    "detail": f"output {key!r} missing; served {sorted(served)}"}
        if (tf.as_dtype(value.dtype) != tensor.dtype
                or not tensor.shape.is_compatible_with(value.shape)):
            return {"check": "parity", "endpoint": name, "passed": False,
                    "detail": f"{key}: traced {tensor.dtype.name}{tensor.shape}, served "
                              f"{value.dtype}{list(value.shape)}"}
    return {"check": "parity", "endpoint": name, "passed": True,
            "detail": "training mode: output dtypes and shapes match"}


def _latency_rows(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows, by_endpoint, failed = [], {}, set()
    for run in runs:
        if not run["passed"]:
            # One row per failing endpoint: batch 64 fails as batch 1 did.
            if run["endpoint"] not in failed:
                failed.add(run["endpoint"])
                rows.append(run)
            continue
        by_endpoint.setdefault(run["endpoint"], []).append(json.loads(run["detail"]))
    for name, details in by_endpoint.items():
        parts = [f"batch {d['batch']}: p50 {d.get('p50_ms', 0):.2f} ms, p99 "
                 f"{d.get('p99_ms', 0):.2f} ms" for d in details]
        deterministic = all(d["deterministic"] for d in details)
        rows.append({"check": "run", "endpoint": name, "passed": True,
                     "detail": "; ".join(parts) + ("" if deterministic else
                                                   "; not deterministic (dropout?)")})
    return rows
