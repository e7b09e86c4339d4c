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
from tensorflow_serving.apis import prediction_log_pb2

from export_archive import contract_process, describe, runtimes, user_requests
from export_archive.constants import DEFAULT_SIGNATURE, WARMUP_FILE
from export_archive.examples import read_records
from export_archive.rows import CheckRow, TimedRun, failure_line, failures, from_contract_json
from export_archive.saved_model_io import (copy_prediction_log, read_prediction_logs,
                                           request_of, signature_name, write_prediction_logs)
from export_archive.specs import TensorSpec

DEFAULT_RTOL, DEFAULT_ATOL = 1e-5, 1e-5
SMALL_BATCH, LARGE_BATCH = 1, 64


class CheckFailed(RuntimeError):
    """The export breaks TF Serving's contract or drifts from the model."""

    def __init__(self, report: "CheckReport"):
        self.report = report
        super().__init__("The serving check failed:\n" + report.format_failures())


@dataclasses.dataclass
class CheckReport:
    results: List[CheckRow]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failures(self) -> List[CheckRow]:
        return failures(self.results)

    def format_failures(self) -> str:
        return "\n".join(f"  - {failure_line(r)}" for r in self.failures())

    def format(self) -> str:
        """The verdict first, then one line per check (as in the export report)."""
        failed = len(self.failures())
        lines = [f"serving check: {'PASSED' if self.passed else 'FAILED'} "
                 f"({len(self.results)} checks, {failed} failed)"]
        lines += [f"{'PASS' if r.passed else 'FAIL'} {r.check:<16} "
                  f"{r.endpoint or '-':<20} {r.detail}" for r in self.results]
        lines.append("serving check " + ("passed" if self.passed else "FAILED"))
        return "\n".join(lines)

    def to_json(self) -> Dict[str, Any]:
        return {"passed": self.passed, "results": [r.to_json() for r in self.results]}


# ---- requests: one per endpoint, synthesized or from examples


def _synthesize(info_text: str, batch: int, rng) -> np.ndarray:
    spec = TensorSpec.from_text(info_text)
    dtype = spec.dtype
    # An unknown rank gets a batch of scalars; an unknown size is the batch (first
    # dim) or 1.
    shape = [batch] if spec.shape is None else [
        (batch if i == 0 else 1) if d is None else d for i, d in enumerate(spec.shape)]
    if dtype == "string":
        return np.full(shape, b"", dtype=object)
    if dtype == "bool":
        return np.zeros(shape, dtype=bool)
    np_dtype = tf.as_dtype(dtype).as_numpy_dtype
    if np.issubdtype(np_dtype, np.floating):
        return rng.normal(size=shape).astype(np_dtype)
    return np.zeros(shape, dtype=np_dtype)  # ids/indices: 0 is always in range


def build_requests(export_dir: str,
                   example_source: Optional[Callable[[int], List[bytes]]],
                   batch: int, seed: int = 0):
    """One PredictionLog per signature: Predict, or Classify/Regress for signatures
    with those method names (their input is tf.Examples from `example_source`)."""
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
    dtypes, spec = {}, {}
    for key, text in inputs.items():
        tensor = TensorSpec.from_text(text)
        dtype, dims = tensor.dtype, (tensor.shape or ())[1:]
        dtypes[key] = dtype
        # tf.Example holds only float, int64 and bytes: parse as those, then cast.
        parse_dtype = (tf.string if dtype == "string" else
                       tf.float32 if tf.as_dtype(dtype).is_floating else tf.int64)
        if dtype not in ("string", "bool") and not (tf.as_dtype(dtype).is_floating
                                                     or tf.as_dtype(dtype).is_integer):
            return None
        if any(d is None for d in dims):
            spec[key] = tf.io.VarLenFeature(parse_dtype)
        else:
            spec[key] = tf.io.FixedLenFeature(list(dims), parse_dtype)
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
        dtype = dtypes[key]
        out[key] = np_value.astype(object if dtype == "string" else tf.as_dtype(dtype)
                                   .as_numpy_dtype)
    return out


# ---- the separate process


def run_contract(export_dir: str, requests=None, latency_runs: int = 0,
                 timeout: int = 900) -> Dict[str, Any]:
    """Runs serving_contract.py on `export_dir`; returns its result file's JSON, with
    its "results" as `CheckRow`s, and its "responses" (PredictionLogs).

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
            return {"results": [CheckRow("load", "", False, failure)], "responses": []}
        with open(process.path("result.json")) as f:
            data = json.load(f)
        data["results"] = from_contract_json(data["results"])
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
    if not tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{export_dir} is not a SavedModel directory: "
                                "saved_model.pb is missing.")
    source = None
    if example_files:
        source = lambda count: read_records(example_files, count)  # noqa: E731
    warmup_path = os.path.join(export_dir, WARMUP_FILE)
    warmup = {}
    if tf.io.gfile.exists(warmup_path):
        try:
            for log in read_prediction_logs(warmup_path):
                warmup.setdefault(signature_name(log), log)
        except ValueError:   # read_prediction_logs' SourceError
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
    requests, request_origins = {SMALL_BATCH: [], LARGE_BATCH: []}, {}
    for i, log in enumerate(built[SMALL_BATCH]):
        name = signature_name(log)
        if name in warmup:
            origin = origins.get(name, SOURCE_WARMUP)
            for size in requests:
                requests[size].append(_resized(warmup[name], size))
        else:
            origin = examples_origin if source is not None else SOURCE_SYNTHESIZED
            for size in requests:
                requests[size].append(built[size][i])
        request_origins[name] = origin
    contract = run_contract(export_dir, requests[SMALL_BATCH] + requests[LARGE_BATCH],
                            latency_runs=latency_runs)
    results, runs = _split_runs(contract["results"])
    results += runtimes.check_rows(export_dir, serving_runtime)
    synthesized = {name: user_requests.ORIGIN_SYNTHESIZED
                   for name, origin in request_origins.items() if origin == SOURCE_SYNTHESIZED}
    runs = user_requests.apply_not_exercised(
        results, runs, user_requests.not_exercised(runs, synthesized, export_dir))
    results += request_rows(request_origins) + _latency_rows(runs)
    return CheckReport(results)


def _split_runs(contract_rows: List[CheckRow]):
    """(the contract's rows but its `run` rows, the `run` rows: one per request)."""
    return ([r for r in contract_rows if r.check != "run"],
            [r for r in contract_rows if r.check == "run"])


def request_rows(origins: Dict[str, str]) -> List[CheckRow]:
    """A passing `requests` row per signature, naming where its requests came from."""
    return [CheckRow("requests", name, True, f"from {origin}") for name, origin in origins.items()]


def _resized(log, batch: int):
    """A copy of a warmup request with `batch` examples: its inputs repeated along the
    batch dimension (TF Serving's warmup requests are usually of batch 1)."""
    out = copy_prediction_log(log)
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


# ---- choosing each signature's requests (the sources: `user_requests`)


def choose(export_dir: str, supplied: Optional[user_requests.Supplied], example_source,
           small_batch: int, large_batch: int, seeds=(1, 2)):
    """(small, large, origins): one request per signature at each batch size, taken
    from `supplied`, else the exporter's `example_source`, else synthesized."""
    supplied = supplied or user_requests.Supplied({}, [])
    candidates = [(read, o, e) for o, read, e in supplied.examples] + (
        [(example_source, user_requests.ORIGIN_EXAMPLES_INPUT, None)]
        if example_source is not None else [])
    plain = {size: build_requests(export_dir, None, size, seed=seed)
             for size, seed in zip((small_batch, large_batch), seeds)}
    small, large = list(plain[small_batch]), list(plain[large_batch])
    names = [signature_name(log) for log in small]
    origins = {name: user_requests.ORIGIN_SYNTHESIZED for name in names}
    taken = set()
    aliases = _aliases(export_dir)
    for i, name in enumerate(names):
        found = [(name, entry) for entry in supplied.logs.get(name, [])[:1]] or [
            (alias, supplied.logs[alias][0]) for alias in aliases.get(name, ())
            if alias in supplied.logs][:1]
        if found:
            (alias, (log, origin)), = found
            if alias != name:   # serving_default and its endpoint take the same requests
                log = _renamed(log, name)
                origin = f"{origin}, as for {alias!r}, which it aliases"
            small[i], large[i] = log, _resized(log, large_batch)
            origins[name] = origin
            taken.add(name)
    for source, origin, endpoint in candidates:
        with_examples = {size: build_requests(export_dir, source, size, seed=seed)
                         for size, seed in zip((small_batch, large_batch), seeds)}
        for i, name in enumerate(names):
            if name in taken or (endpoint is not None and endpoint != name):
                continue
            built = with_examples[small_batch][i]
            # Same seed: a request that differs from the synthesized one used the records.
            if built.SerializeToString() != plain[small_batch][i].SerializeToString():
                small[i], large[i] = built, with_examples[large_batch][i]
                origins[name] = origin
                taken.add(name)
    return small, large, origins


def _aliases(export_dir: str) -> Dict[str, List[str]]:
    """serving_default <-> the signatures it aliases (same method, inputs, outputs)."""
    sigs = {sig.name: sig for sig in describe.describe(export_dir)}
    default = sigs.get(DEFAULT_SIGNATURE)
    if default is None:
        return {}
    key = lambda sig: (sig.method_name, sig.inputs, sig.outputs)  # noqa: E731
    same = [n for n, sig in sigs.items() if n != DEFAULT_SIGNATURE and key(sig) == key(default)]
    out = {n: [DEFAULT_SIGNATURE] for n in same}
    out[DEFAULT_SIGNATURE] = same
    return out


def _renamed(log, name: str):
    out = copy_prediction_log(log)
    request_of(out).model_spec.signature_name = name
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
            rtol: float, atol: float) -> CheckRow:
    """Inference parity: same keys, dtypes and shapes, values within tolerance."""
    if sorted(expected) != sorted(served):
        return CheckRow("parity", name, False,
                        f"output keys differ: model {sorted(expected)}, served {sorted(served)}")
    worst_abs = worst_rel = 0.0
    for key in expected:
        a, b = expected[key], served[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            return CheckRow("parity", name, False, f"{key}: model gives {a.dtype}"
                            f"{list(a.shape)}, served {b.dtype}{list(b.shape)}")
        if a.dtype.kind in "OSUb":
            if not np.array_equal(a, b):
                return CheckRow("parity", name, False, f"{key} differs from the model")
            continue
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        worst_abs = max(worst_abs, float(diff.max(initial=0.0)))
        worst_rel = max(worst_rel, float((diff / (np.abs(a) + 1e-12)).max(initial=0.0)))
        if not np.allclose(b, a, rtol=rtol, atol=atol):
            return CheckRow("parity", name, False,
                            f"{key} drifts from the model: max abs diff {worst_abs:.3g}, "
                            f"max rel diff {worst_rel:.3g} (rtol {rtol}, atol {atol})")
    return CheckRow("parity", name, True,
                    f"max abs diff {worst_abs:.3g}, max rel diff {worst_rel:.3g}")


def _request_inputs(log) -> Dict[str, np.ndarray]:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        return {k: tf.make_ndarray(v) for k, v in log.predict_log.request.inputs.items()}
    request = request_of(log)
    return {"inputs": np.array([e.SerializeToString()
                                for e in request.input.example_list.examples], dtype=object)}


def run_check(export_dir: str, endpoint_fns: Dict[str, Any], training: Dict[str, bool],
              example_source: Optional[Callable[[int], List[bytes]]],
              rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
              warmup: bool = True, latency_runs: int = 20,
              supplied=None, serving_runtime: Optional[str] = None,
              release_model: Optional[Callable[[], None]] = None) -> CheckReport:
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
    `release_model`: called once the in-memory model's answers are computed and before
    the check process loads the served copy (the writer frees a model it loaded itself:
    the two copies are then never resident together).
    """
    small, large, origins = choose(export_dir, supplied, example_source,
                                   SMALL_BATCH, LARGE_BATCH)
    if warmup:
        write_prediction_logs(os.path.join(export_dir, WARMUP_FILE), small)
    is_training = lambda log: training.get(signature_name(log), False)
    inference = [log for log in small + large if not is_training(log)]
    trainers = [log for log in small + large if is_training(log)]
    probe = [next(log for log in large if not is_training(log))] if trainers and inference else []
    large_inputs = {signature_name(log): _request_inputs(log) for log in large}
    expected = _in_memory_answers(endpoint_fns, training, large_inputs)
    if release_model is not None:
        release_model()
    contract = run_contract(export_dir, inference + trainers + probe, latency_runs=latency_runs)
    results, runs = _split_runs(contract["results"])
    results += runtimes.check_rows(export_dir, serving_runtime)
    if probe and len(runs) == len(inference + trainers + probe):
        runs = runs[:-1]  # the probe re-runs a request; its timing is not a new figure
    skipped = user_requests.not_exercised(runs, origins, export_dir)
    runs = user_requests.apply_not_exercised(results, runs, skipped)
    if warmup and skipped:
        # TF Serving refuses a model whose warmup request fails: leave those out.
        small = [log for log in small if signature_name(log) not in skipped]
        if small:
            write_prediction_logs(os.path.join(export_dir, WARMUP_FILE), small)
        else:
            tf.io.gfile.remove(os.path.join(export_dir, WARMUP_FILE))
    results += request_rows(origins) + _latency_rows(runs)
    responses: Dict[str, List[Dict[str, np.ndarray]]] = {}
    for log in contract["responses"]:
        outputs = {k: tf.make_ndarray(v) for k, v in log.predict_log.response.outputs.items()}
        responses.setdefault(signature_name(log), []).append(outputs)
    if probe and contract["responses"]:
        name = signature_name(probe[0])
        before, after = responses[name][1], responses[name][-1]
        changed = any(not np.array_equal(before[k], after[k]) for k in before)
        culprits = sorted(n for n, t in training.items() if t)
        results.append(CheckRow(
            "state", ", ".join(culprits), not changed,
            (f"calling the training-mode endpoint(s) changed what {name!r} returns (e.g. "
             "BatchNormalization moving statistics): in TF Serving every training call "
             "would shift inference results; drop the training endpoint or freeze those "
             "layers") if changed else "training-mode calls leave inference unchanged"))
        responses[name] = responses[name][:-1]
    for name, concrete in endpoint_fns.items():
        if len(responses.get(name, [])) < 2:
            continue  # its run failed; that row already says why
        served = responses[name][1]
        if training.get(name, False):
            # Never call a training function in memory: it would update the user's model.
            results.append(compare_specs(name, concrete, served))
        else:
            if isinstance(expected[name], Exception):
                raise expected[name]   # the model failed where the server did not
            results.append(compare(name, expected[name], served, rtol, atol))
    if warmup:
        results.append(CheckRow("warmup_written", "", True,
                                f"{len(small)} requests in {WARMUP_FILE}" if small else
                                "no warmup file: no endpoint was exercised"))
    return CheckReport(results)


def _in_memory_answers(endpoint_fns: Dict[str, Any], training: Dict[str, bool],
                       large_inputs: Dict[str, Dict[str, np.ndarray]]) -> Dict[str, Any]:
    """Each inference endpoint's in-memory outputs on its large request, or the error
    computing them raised: it matters only if the served model answers that request
    (otherwise the failing run's row says why), so it is raised then, not now."""
    answers: Dict[str, Any] = {}
    for name, concrete in endpoint_fns.items():
        if training.get(name, False) or name not in large_inputs:
            continue
        try:
            answers[name] = in_memory_outputs(concrete, large_inputs[name])
        except (tf.errors.OpError, ValueError, TypeError) as e:
            answers[name] = e
    return answers


def compare_specs(name: str, concrete, served: Dict[str, np.ndarray]) -> CheckRow:
    """Training-mode parity: the served outputs have the traced outputs' dtypes and shapes."""
    structure = concrete.structured_outputs
    specs = (dict(structure) if isinstance(structure, dict) else
             {f"output_{i}": t for i, t in enumerate(tf.nest.flatten(structure))})
    for key, tensor in specs.items():
        value = served.get(key)
        if value is None:
            return CheckRow("parity", name, False,
                            f"output {key!r} missing; served {sorted(served)}")
        if (tf.as_dtype(value.dtype) != tensor.dtype
                or not tensor.shape.is_compatible_with(value.shape)):
            return CheckRow("parity", name, False,
                            f"{key}: traced {tensor.dtype.name}{tensor.shape}, served "
                            f"{value.dtype}{list(value.shape)}")
    return CheckRow("parity", name, True, "training mode: output dtypes and shapes match")


def _latency_rows(runs: List[TimedRun]) -> List[CheckRow]:
    rows, by_endpoint, failed = [], {}, set()
    for run in runs:
        if not run.passed:
            # One row per failing endpoint: batch 64 fails as batch 1 did.
            if run.endpoint not in failed:
                failed.add(run.endpoint)
                rows.append(run.without_timing())
            continue
        by_endpoint.setdefault(run.endpoint, []).append(run.latency)
    for name, timings in by_endpoint.items():
        parts = [f"batch {t.batch}: p50 {t.p50_ms or 0:.2f} ms, p99 {t.p99_ms or 0:.2f} ms"
                 for t in timings]
        deterministic = all(t.deterministic for t in timings)
        rows.append(CheckRow("run", name, True, "; ".join(parts) + (
            "" if deterministic else "; not deterministic (dropout?)")))
    return rows
