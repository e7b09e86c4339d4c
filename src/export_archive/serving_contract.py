"""TF Serving's contract, checked the way the server loads and calls a SavedModel.

Run as a *script* in its own process (`python serving_contract.py ...`), never
imported by the exporter: it imports nothing but the standard library,
TensorFlow, the TF Serving API protos and the package's bottom layer
(`saved_model_io` with the standard-library `constants` and `errors`; the package's
`__init__` imports nothing), so an op that only a Python package
registers (a custom op library, a layer package's kernels) is missing here
exactly as it is missing in `tensorflow_model_server`. But the server links some
op libraries itself (SUPPORTED_TENSORFLOW_OPS in its BUILD: TF Text, TF-DF
inference); those, in MODEL_SERVER_OP_LIBRARIES, are loaded here too.

    python serving_contract.py EXPORT_DIR --requests REQ.tfrecord --out RESULT.json
        [--responses RESP.tfrecord] [--latency-runs N]
    python serving_contract.py --job-from-stdin

With `--job-from-stdin` the process is started before the export exists
(`contract_process.py`): it imports TensorFlow and loads the op libraries while
the exporter loads, traces and writes the model, then reads one JSON line
{"export_dir", "requests", "responses", "out", "latency_runs"} from stdin. Stdin
is its lifeline: end of file before a job means no check is wanted (it exits 0);
end of file during the job means the exporter died, and it exits at once rather
than run on as an orphan. The CLI may instead fork this module's process from
its own, right after importing TensorFlow with Keras blocked and before
anything else (`serve_one_job` on a pipe): the same modules, without a second
TensorFlow import.

What it does, in TF Serving's order:
1. every op in the `serve` MetaGraph (and its function library) is registered;
2. a `serving_default` signature exists;
3. signature dtypes can be carried by Predict (no resource/variant tensors) and
   Classify/Regress signatures have the keys and dtypes those APIs require;
4. the TF1 SavedModel loader loads tag `serve` into a session;
5. `assets.extra/tf_serving_warmup_requests`, if present, parses as PredictionLogs;
6. each request in REQ (a PredictionLog per endpoint) runs by tensor names, twice
   (determinism), is timed, and its outputs are written to RESP as PredictionLogs.
"""

import argparse
import glob
import importlib.util
import json
import os
import sys
import threading
import time

# `import tensorflow` imports Keras eagerly when it is installed (tensorflow/__init__.py,
# guarded by `except ImportError`); tensorflow_model_server has no Keras, so block it.
for _name in ("keras", "tf_keras"):
    sys.modules.setdefault(_name, None)
# pylint: disable=wrong-import-position

import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import op_def_registry
from tensorflow_serving.apis import prediction_log_pb2

from export_archive import saved_model_io
from export_archive.constants import DEFAULT_SIGNATURE, METHOD_NAMES, SERVE_TAG, WARMUP_FILE

PREDICT, CLASSIFY, REGRESS = (METHOD_NAMES[m] for m in ("predict", "classify", "regress"))
# The package's modules this process may hold: the bottom layer it reads through.
OWN_MODULES = frozenset({"export_archive", "export_archive.constants",
                         "export_archive.errors", "export_archive.saved_model_io"})
# TensorProto cannot carry these in a PredictResponse.
UNSERVABLE_DTYPES = {types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT, types_pb2.DT_INVALID}
# Set in a process forked from the CLI (contract_process): the modules it inherited.
INHERITED_MODULES = frozenset()


# The rows are JSON (this process's result file); the exporter reads them into its
# `rows.CheckRow` type, which this script cannot import.
def result(check, passed, detail="", endpoint=""):
    return {"check": check, "endpoint": endpoint, "passed": bool(passed), "detail": detail}


# Op libraries that the stock tensorflow_model_server links besides core TensorFlow
# (SUPPORTED_TENSORFLOW_OPS in tensorflow_serving/model_servers/BUILD). A model using
# their ops serves there, so it must pass here: when the package is installed, its
# kernels are loaded from its shared objects with tf.load_op_library, without
# importing the package (both packages' __init__ pull in Keras, which this process
# blocks). Each entry is (package, glob of the .so files relative to the package).
# * TF-DF, since TF Serving 2.11 (@org_tensorflow_decision_forests//
#   tensorflow_decision_forests/tensorflow/ops/inference:kernel_and_op): only the
#   inference ops; TF-DF's training ops are not linked.
# * TF Text (@org_tensorflow_text//tensorflow_text:ops_lib): every op kernel the
#   package ships, i.e. python/ops/_*.so (tokenizers, normalizers, ngrams, ...) and
#   python/metrics/_*.so (text similarity). Its core/pybinds/*.so are Python
#   extensions for building models and configs, not op libraries, so not loaded.
MODEL_SERVER_OP_LIBRARIES = (
    ("tensorflow_decision_forests", ("tensorflow", "ops", "inference", "inference.so")),
    ("tensorflow_text", ("python", "ops", "_*.so")),
    ("tensorflow_text", ("python", "metrics", "_*.so")),
)


def load_model_server_op_libraries():
    """Loads the installed ones of MODEL_SERVER_OP_LIBRARIES; returns their packages
    (each once) of which at least one shared object loaded."""
    loaded = []
    for package, relative in MODEL_SERVER_OP_LIBRARIES:
        spec = importlib.util.find_spec(package)   # a top-level spec imports nothing
        if spec is None or not spec.origin:
            continue
        # sorted: a fixed load order, so a run is reproducible.
        for path in sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), *relative))):
            try:
                tf.load_op_library(path)
            except (tf.errors.NotFoundError, OSError):
                # Built for another TensorFlow: its ops stay unregistered, so a model
                # that uses them fails the ops check below, and any other model is
                # unaffected.
                continue
            if package not in loaded:
                loaded.append(package)
    return loaded


def check_ops(meta_graph, op_libraries=()):
    ops = saved_model_io.graph_ops(meta_graph)
    functions = {f.signature.name for f in meta_graph.graph_def.library.function}
    missing = sorted(op for op in ops if op not in functions and op_def_registry.get(op) is None)
    if missing:
        return result("ops", False, "ops not registered in core TensorFlow"
                      + "".join(f" or {p}" for p in op_libraries)
                      + " (TF Serving will fail to load the model): " + ", ".join(missing))
    return result("ops", True, f"{len(ops)} op types, all in core TensorFlow"
                  + "".join(f" or {p}" for p in op_libraries))


def check_signatures(meta_graph):
    out = []
    sigs = saved_model_io.signature_defs(meta_graph)
    out.append(result("serving_default", DEFAULT_SIGNATURE in sigs,
                      "present" if DEFAULT_SIGNATURE in sigs else
                      f"no '{DEFAULT_SIGNATURE}' signature: requests that name no signature "
                      f"fail; signatures: {sorted(sigs)}"))
    for name, sig in sorted(sigs.items()):
        problems = []
        for side, infos in (("input", sig.inputs), ("output", sig.outputs)):
            for key, info in infos.items():
                if info.dtype in UNSERVABLE_DTYPES:
                    problems.append(f"{side} {key!r} has dtype "
                                    f"{types_pb2.DataType.Name(info.dtype)}, which a "
                                    "TensorProto cannot carry")
        if sig.method_name == CLASSIFY:
            problems += _classify_problems(sig)
        elif sig.method_name == REGRESS:
            problems += _regress_problems(sig)
        elif sig.method_name != PREDICT:
            problems.append(f"unknown method name {sig.method_name!r}")
        out.append(result("dtypes", not problems, "; ".join(problems) or sig.method_name, name))
    return out


def _single_string_input(sig):
    if list(sig.inputs) != ["inputs"] or sig.inputs["inputs"].dtype != types_pb2.DT_STRING:
        return ["needs exactly one DT_STRING input named 'inputs' (serialized tf.Examples)"]
    return []


def _classify_problems(sig):
    problems = _single_string_input(sig)
    keys = set(sig.outputs)
    if not keys & {"classes", "scores"} or keys - {"classes", "scores"}:
        problems.append(f"outputs must be 'classes' and/or 'scores', got {sorted(keys)}")
    if "scores" in sig.outputs and sig.outputs["scores"].dtype != types_pb2.DT_FLOAT:
        problems.append("'scores' must be DT_FLOAT")
    if "classes" in sig.outputs and sig.outputs["classes"].dtype != types_pb2.DT_STRING:
        problems.append("'classes' must be DT_STRING")
    return problems


def _regress_problems(sig):
    problems = _single_string_input(sig)
    if list(sig.outputs) != ["outputs"] or sig.outputs["outputs"].dtype != types_pb2.DT_FLOAT:
        problems.append("needs exactly one DT_FLOAT output named 'outputs'")
    return problems


def read_prediction_logs(path):
    logs = []
    for log in saved_model_io.iter_prediction_logs(path):
        # TF Serving's warmup refuses a record of no log type ("Unsupported log_type").
        if not log.WhichOneof("log_type"):
            raise ValueError(f"record {len(logs)} is not a PredictionLog")
        logs.append(log)
    return logs


def check_warmup(export_dir):
    path = os.path.join(export_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return None
    try:
        logs = read_prediction_logs(path)
    except Exception as e:  # pylint: disable=broad-except  # reported, not swallowed
        return result("warmup", False, f"{WARMUP_FILE} does not parse as PredictionLogs "
                      f"({type(e).__name__}: {e}); TF Serving will refuse to load the model")
    return result("warmup", bool(logs), f"{len(logs)} warmup requests" if logs
                  else f"{WARMUP_FILE} is empty")


def feeds_for(log, sig, graph):
    """A request's inputs, as TF Serving feeds them: by the signature's tensor names."""
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        inputs = log.predict_log.request.inputs
        feed = {}
        for key, proto in inputs.items():
            if key not in sig.inputs:
                raise KeyError(f"request input {key!r} is not in the signature "
                               f"(inputs: {sorted(sig.inputs)})")
            feed[graph.get_tensor_by_name(sig.inputs[key].name)] = tf.make_ndarray(proto)
        return feed
    request = getattr(log, kind).request
    if "inputs" not in sig.inputs:  # indexing a proto map would add an empty entry
        raise KeyError(f"a {kind.split('_')[0]} request feeds the signature input 'inputs', "
                       f"which it lacks (inputs: {sorted(sig.inputs)})")
    examples = [e.SerializeToString() for e in request.input.example_list.examples]
    return {graph.get_tensor_by_name(sig.inputs["inputs"].name): examples}


def run_requests(sess, meta_graph, logs, latency_runs):
    out, responses = [], []
    graph = sess.graph
    for log in logs:
        name = saved_model_io.signature_name(log)
        sig = meta_graph.signature_def.get(name)
        if sig is None:
            out.append(result("run", False, f"no signature {name!r}", name))
            continue
        keys = sorted(sig.outputs)
        unnamed = [k for k in keys if not sig.outputs[k].name]
        if unnamed:
            # A composite output (ragged, sparse) has no tensor to fetch: TF Serving
            # answers such a request with an error (the `dtypes` row says DT_INVALID).
            out.append(result("run", False, f"output(s) {unnamed} name no tensor (composite "
                              "outputs, e.g. ragged or sparse): TF Serving cannot fetch "
                              "them", name))
            continue
        try:
            fetches = [graph.get_tensor_by_name(sig.outputs[k].name) for k in keys]
            feed = feeds_for(log, sig, graph)
            first = sess.run(fetches, feed)
            second = sess.run(fetches, feed)
            times = []
            for _ in range(latency_runs):
                start = time.perf_counter()
                sess.run(fetches, feed)
                times.append(time.perf_counter() - start)
        except Exception as e:  # pylint: disable=broad-except  # reported per endpoint
            out.append(result("run", False, f"{type(e).__name__}: {str(e)[:500]}", name))
            continue
        batch = len(next(iter(feed.values())))
        deterministic = all(
            (a == b).all() if a.dtype.kind in "OSUb" else
            bool(((a == b) | ((a != a) & (b != b))).all()) for a, b in zip(first, second))
        times.sort()
        # The fields of `rows.Latency`.
        latency = {"batch": batch, "deterministic": deterministic}
        if times:
            latency.update({"p50_ms": 1000 * times[len(times) // 2],
                            "p99_ms": 1000 * times[min(len(times) - 1,
                                                       int(0.99 * len(times)))]})
        out.append({**result("run", True, endpoint=name), "latency": latency})
        response_log = prediction_log_pb2.PredictionLog()
        response_log.predict_log.request.model_spec.signature_name = name
        for key, value in zip(keys, first):
            response_log.predict_log.response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        responses.append(response_log)
    return out, responses


def memory_status():
    """This process's resident memory now (VmRSS) and its peak (VmHWM), in bytes,
    from /proc/self/status; {} where there is no /proc (not Linux)."""
    found = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) * 1024   # given in kB
    except (OSError, ValueError, IndexError):
        return {}
    return found


def reset_peak_memory():
    """Restarts VmHWM from the current resident set (Linux >= 4.0); whether it did.
    Then the peak measures what the check holds, not what came before (a TensorFlow
    import's transient pages, or the pages a process forked from the CLI inherited)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def check(export_dir, out, requests=None, responses_path=None, latency_runs=0,
          op_libraries=()):
    """Every contract check on `export_dir`; the results JSON goes to `out`.

    Besides the results, the JSON holds `memory`: this process's resident bytes
    before it read the SavedModel (`rss_before_load`), once the TF1 loader loaded it
    (`rss_loaded`), and the peak since `rss_before_load` (`peak_rss`; since the
    process started where `peak_reset` is false). What loading and serving the
    model cost is `peak_rss - rss_before_load`."""
    results = []
    peak_reset = reset_peak_memory()
    before = memory_status()
    loaded_rss = None
    meta_graph = saved_model_io.read_serve_meta_graph(export_dir)
    ops = check_ops(meta_graph, op_libraries)
    results.append(ops)
    results += check_signatures(meta_graph)
    warmup = check_warmup(export_dir)
    if warmup:
        results.append(warmup)
    responses = []
    # Read before the session: inside it the graph is the default and tf.data, which
    # saved_model_io reads TFRecords with, iterates only eagerly.
    request_logs = read_prediction_logs(requests) if requests and ops["passed"] else []
    if ops["passed"]:
        graph = tf.Graph()
        with tf.compat.v1.Session(graph=graph) as sess:
            try:
                loaded = tf.compat.v1.saved_model.loader.load(sess, [SERVE_TAG], export_dir)
                results.append(result("load", True, "TF1 loader, tag 'serve'"))
                loaded_rss = memory_status().get("VmRSS")
            except Exception as e:  # pylint: disable=broad-except  # reported as a failure
                loaded = None
                results.append(result("load", False, f"{type(e).__name__}: {str(e)[:500]}"))
            if loaded is not None and requests:
                run_results, responses = run_requests(sess, loaded, request_logs, latency_runs)
                results += run_results
    if responses_path:
        saved_model_io.write_prediction_logs(responses_path, responses)
    # Keras or TF Text anywhere, or the exporter's own modules (but for the pure-Python
    # ones a forked process inherited from the CLI: argument and config parsing).
    foreign = sorted(m for m, module in sys.modules.items()
                     if module is not None and m not in INHERITED_MODULES
                     and m not in OWN_MODULES
                     and m.split(".")[0] in ("keras", "tf_keras", "tensorflow_text",
                                             "export_archive"))
    # Written whole, then renamed: the exporter never reads a half-written result.
    with open(out + ".part", "w") as f:
        json.dump({"results": results, "foreign_modules": foreign,
                   "memory": {"rss_before_load": before.get("VmRSS"),
                              "rss_loaded": loaded_rss,
                              "peak_rss": memory_status().get("VmHWM"),
                              "peak_reset": peak_reset}}, f)
    os.replace(out + ".part", out)


def serve_one_job(pipe, op_libraries):
    """Reads one job line from `pipe` (the exporter holds its other end) and runs it.
    End of file before a job: nothing to do. End of file during it: the exporter
    is gone, and so is this process."""
    line = pipe.readline()
    if not line.strip():
        return 0
    job = json.loads(line)
    threading.Thread(target=_exit_when_closed, args=(pipe,), daemon=True).start()
    check(job["export_dir"], job["out"], job.get("requests"), job.get("responses"),
          job.get("latency_runs", 0), op_libraries)
    # Exit here: the watchdog thread is blocked reading `pipe`, and closing it at
    # interpreter shutdown would wait for that read (or abort) until the exporter
    # closes its end, which it does only once this process has exited.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # pylint: disable=protected-access


def _exit_when_closed(pipe):
    pipe.read()
    os._exit(3)  # pylint: disable=protected-access  # no cleanup owed to a dead parent


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("export_dir", nargs="?")
    parser.add_argument("--requests")
    parser.add_argument("--responses")
    parser.add_argument("--out")
    parser.add_argument("--latency-runs", type=int, default=0)
    parser.add_argument("--job-from-stdin", action="store_true")
    args = parser.parse_args(argv)
    op_libraries = load_model_server_op_libraries()
    if not args.job_from_stdin:
        if not args.export_dir or not args.out:
            parser.error("EXPORT_DIR and --out are required without --job-from-stdin")
        check(args.export_dir, args.out, args.requests, args.responses, args.latency_runs,
              op_libraries)
        return 0
    return serve_one_job(sys.stdin, op_libraries)


if __name__ == "__main__":
    sys.exit(main())
