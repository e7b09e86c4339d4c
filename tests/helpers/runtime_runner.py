"""Serves exports in an older TensorFlow, the way TF Serving loads and calls them.

Runs *inside* a side runtime (`serving_runtimes.py`), importing only TensorFlow
and the TF Serving API protos of that version:

    python runtime_runner.py JOBS.json RESULT.json

JOBS is a list of {"id", "export_dir", "calls": {signature: {key: TensorProto
base64}}}. For each job, in a graph and session of its own: the TF1 SavedModel
loader loads tag `serve`; the warmup file, if present, is replayed (each Predict
request run by the signature's tensor names, as TF Serving does at load); then
every call runs by tensor names. A failure is recorded for its job; the runner
goes on with the next one.
"""

import base64
import json
import os
import sys
import traceback

for _name in ("keras", "tf_keras"):   # tensorflow_model_server has no Keras
    sys.modules.setdefault(_name, None)
# pylint: disable=wrong-import-position
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def _tensor(text):
    proto = tensor_pb2.TensorProto()
    proto.ParseFromString(base64.b64decode(text))
    return tf.make_ndarray(proto)


def _text(value):
    return base64.b64encode(tf.make_tensor_proto(value).SerializeToString()).decode()


def _run(sess, sig, inputs):
    graph = sess.graph
    keys = sorted(sig.outputs)
    feed = {graph.get_tensor_by_name(sig.inputs[k].name): v for k, v in inputs.items()}
    values = sess.run([graph.get_tensor_by_name(sig.outputs[k].name) for k in keys], feed)
    return dict(zip(keys, values))


def _replay_warmup(sess, meta_graph, export_dir):
    path = os.path.join(export_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return "no warmup file"
    from tensorflow_serving.apis import prediction_log_pb2
    count = 0
    for record in tf.compat.v1.io.tf_record_iterator(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        kind = log.WhichOneof("log_type")
        request = getattr(log, kind).request
        sig = meta_graph.signature_def[request.model_spec.signature_name or "serving_default"]
        if kind == "predict_log":
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        else:
            inputs = {"inputs": [e.SerializeToString()
                                 for e in request.input.example_list.examples]}
        _run(sess, sig, inputs)
        count += 1
    return count


def run_job(job):
    out = {"load": None}
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        try:
            meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], job["export_dir"])
            out["load"] = "ok"
        except Exception as e:  # pylint: disable=broad-except  # reported to the test
            out["load"] = f"{type(e).__name__}: {str(e)[:1500]}"
            return out
        try:
            out["warmup"] = _replay_warmup(sess, meta_graph, job["export_dir"])
        except Exception as e:  # pylint: disable=broad-except  # reported to the test
            out["warmup"] = f"{type(e).__name__}: {str(e)[:1500]}"
        out["outputs"] = {}
        try:
            for name, inputs in job["calls"].items():
                values = _run(sess, meta_graph.signature_def[name],
                              {k: _tensor(v) for k, v in inputs.items()})
                out["outputs"][name] = {k: _text(v) for k, v in values.items()}
        except Exception as e:  # pylint: disable=broad-except  # reported to the test
            out["error"] = f"{type(e).__name__}: {str(e)[:1500]}\n{traceback.format_exc()[-800:]}"
    return out


def main(jobs_path, result_path):
    with open(jobs_path) as f:
        jobs = json.load(f)
    result = {"tensorflow": tf.__version__, "jobs": {j["id"]: run_job(j) for j in jobs}}
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
