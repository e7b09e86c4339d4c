"""SavedModel protos, signatures and PredictionLogs, read and written as TF Serving does.

The bottom TensorFlow layer of the package: everything that reads `saved_model.pb`
(describe, sources, runtimes, the serving check, the InfraValidator) or a TF
Serving warmup file (`assets.extra/tf_serving_warmup_requests`) does it here. It
imports TensorFlow, the TF Serving API protos and, of this package, only the
standard-library `constants` and `errors`, so that `serving_contract.py` (which
must stay free of Keras and of the exporter) can use it too.

Two readers of `saved_model.pb`, for two kinds of caller:

* `check_saved_model_proto(path)`, for a directory a user gave: it says what is
  wrong with it (missing, a file, empty, truncated, not a SavedModel proto, no
  MetaGraph) as a `SourceError` naming the file and how to get a good copy;
* `read_saved_model_proto(export_dir)`, for a SavedModel this program wrote.

The warmup file is a TFRecord file of `PredictionLog`s (TF Serving's
`saved_model_warmup_util`); `read_prediction_logs` / `write_prediction_logs`
read and write it with `tf.data.TFRecordDataset` / `tf.io.TFRecordWriter`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Set

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
# TensorFlow's own writer of fingerprint.pb (what tf.saved_model.save calls); not public.
from tensorflow.python.saved_model import fingerprinting_utils
from tensorflow_serving.apis import prediction_log_pb2

from export_archive.constants import DEFAULT_SIGNATURE, SERVE_TAG
from export_archive.errors import InputError

# What reading a TFRecord file of PredictionLogs raises for a damaged file: TensorFlow's
# (unreadable, truncated, a bad CRC) or protobuf's (a record that is no PredictionLog).
RECORD_ERRORS = (tf.errors.OpError, DecodeError)
# How to get a good copy of a SavedModel, for the `fix` of a damaged one.
RESAVE_SAVED_MODEL = ("re-export the SavedModel (tf.saved_model.save / model.export), or "
                      "copy the whole directory again if a transfer was cut short")


class SourceError(InputError):
    """The model (or what it was asked for) cannot be used as configured.

    `.where` is the model's path (or ``<in-memory>``); the message says what is
    wrong with it, what was found, what a loader accepts and how to fix it.
    """

    subject = "model"


def error_summary(error: Any) -> str:
    """The informative first line of an error message, without Keras's and
    autograph's wrapping ("Exception encountered when calling ...", "in user
    code:", stack lines) or terminal colour codes, at most 300 characters."""
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    if lines and lines[0].startswith("in user code"):
        lines = lines[-1:]   # autograph: the stack first, the error last
    lines = [l for l in lines if not l.startswith(("Exception encountered", "File ",
                                                   "Arguments received", "•"))] or lines
    text = lines[0] if lines else type(error).__name__
    text = text.replace("\x1b[1m", "").replace("\x1b[0m", "")
    return text if len(text) <= 300 else text[:297] + "..."


def unreadable(path: str, error: BaseException) -> SourceError:
    """The `SourceError` for a file or directory that exists but cannot be read."""
    reason = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    return SourceError(path, f"cannot be read ({error_summary(reason)})",
                       fix="make it readable by the user running the export (e.g. chmod "
                           "a+r, or run as its owner)")


def listdir(path: str) -> List[str]:
    """`tf.io.gfile.listdir`, or a `SourceError` naming `path` when it cannot be read."""
    try:
        return tf.io.gfile.listdir(path)
    except (tf.errors.OpError, OSError) as e:
        raise unreadable(path, e) from None


# ---- saved_model.pb


def read_saved_model_proto(export_dir: str) -> saved_model_pb2.SavedModel:
    """The SavedModel proto of a SavedModel this program wrote (or checked with
    `check_saved_model_proto` before)."""
    path = os.path.join(export_dir, "saved_model.pb")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{export_dir} is not a SavedModel directory: "
                                f"{path} does not exist.")
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def check_saved_model_proto(path: str) -> Optional[saved_model_pb2.SavedModel]:
    """Reads `path`/saved_model.pb, or raises `SourceError` saying what is wrong
    with it. Used by `describe`, `check` and `diff` before they read it too.
    None for a SavedModel in text format (saved_model.pbtxt: rare, and the loader
    reads it)."""
    if not tf.io.gfile.exists(path):
        raise SourceError(path, "does not exist", allowed="a SavedModel directory (or a TFX "
                          "Model artifact directory)", fix="check the path")
    if not tf.io.gfile.isdir(path):
        raise SourceError(path, "is a file, not a SavedModel directory",
                          allowed="a directory holding saved_model.pb and variables/",
                          fix="give the directory that holds saved_model.pb")
    pb = os.path.join(path, "saved_model.pb")
    if not tf.io.gfile.exists(pb):
        if tf.io.gfile.exists(os.path.join(path, "saved_model.pbtxt")):
            return None
        raise SourceError(path, "is not a SavedModel directory: saved_model.pb is missing",
                          ", ".join(sorted(listdir(path))[:20]) or "(empty directory)",
                          "a directory holding saved_model.pb and variables/",
                          "give the SavedModel directory itself (for a TFX Model "
                          "artifact, its root or Format-Serving/)")
    try:
        with tf.io.gfile.GFile(pb, "rb") as f:
            data = f.read()
    except (tf.errors.OpError, OSError) as e:
        raise unreadable(pb, e) from None
    if not data:
        raise SourceError(pb, "is empty (0 bytes)", allowed="a SavedModel proto",
                          fix=RESAVE_SAVED_MODEL)
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise SourceError(pb, f"is corrupt or truncated: it does not parse as a SavedModel "
                          f"proto ({error_summary(e)})", f"{len(data)} bytes",
                          "a complete saved_model.pb", RESAVE_SAVED_MODEL) from None
    if not proto.meta_graphs:
        raise SourceError(pb, "holds no MetaGraph (it parses, but is not a SavedModel "
                          "written by TensorFlow, or is truncated)", f"{len(data)} bytes",
                          "a SavedModel with a MetaGraph tagged `serve`", RESAVE_SAVED_MODEL)
    return proto


def write_saved_model_proto(export_dir: str, proto: saved_model_pb2.SavedModel) -> None:
    """Writes `proto` as `export_dir`/saved_model.pb, and its fingerprint again:
    fingerprint.pb holds a checksum of saved_model.pb, recomputed the way
    `tf.saved_model.save` does, so loaders that read it see a consistent model."""
    with tf.io.gfile.GFile(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
        f.write(proto.SerializeToString())
    fingerprinting_utils.write_fingerprint(export_dir)


# ---- the `serve` MetaGraph and its signatures


def find_serve_meta_graph(proto: Optional[saved_model_pb2.SavedModel]
                          ) -> Optional[meta_graph_pb2.MetaGraphDef]:
    """The MetaGraph tagged `serve` (the one TF Serving loads), or None (also for
    `proto` None: a text-format SavedModel)."""
    for meta_graph in (proto.meta_graphs if proto is not None else ()):
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    return None


def serve_meta_graph(proto: saved_model_pb2.SavedModel) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraph tagged `serve`; a ValueError listing the tag sets if there is none."""
    meta_graph = find_serve_meta_graph(proto)
    if meta_graph is None:
        tags = [list(m.meta_info_def.tags) for m in proto.meta_graphs]
        raise ValueError(f"The SavedModel has no MetaGraph tagged {SERVE_TAG!r} "
                         f"(TF Serving loads that one); it has tag sets {tags}.")
    return meta_graph


def read_serve_meta_graph(export_dir: str) -> meta_graph_pb2.MetaGraphDef:
    """The `serve` MetaGraph of a SavedModel this program wrote."""
    return serve_meta_graph(read_saved_model_proto(export_dir))


def signature_defs(meta_graph: meta_graph_pb2.MetaGraphDef) -> Dict[str, Any]:
    """The SignatureDefs a client can call, by name: without TF's internal ones
    (``__saved_model_init_op``), which TF Serving hides too."""
    return {k: v for k, v in meta_graph.signature_def.items() if not k.startswith("__")}


def signature_def(export_dir: str, name: str):
    """The SignatureDef proto `name` of a SavedModel, as TF Serving reads it (e.g. for
    `rest.request_to_tensors`)."""
    meta_graph = read_serve_meta_graph(export_dir)
    if name not in meta_graph.signature_def:
        raise KeyError(f"{export_dir} has no signature {name!r}; it has "
                       f"{sorted(signature_defs(meta_graph))}")
    return meta_graph.signature_def[name]


def dims_text(shape) -> Optional[str]:
    """A TensorShapeProto's dims as ``?,3`` (``?``: any size); None for an unknown rank."""
    if shape.unknown_rank:
        return None
    return ",".join("?" if d.size < 0 else str(d.size) for d in shape.dim)


def tensor_info_text(info) -> str:
    """A signature's TensorInfo as ``float32[?,3]`` (``[*]``: unknown rank)."""
    dtype = tf.as_dtype(info.dtype).name if info.dtype else "unknown"
    dims = dims_text(info.tensor_shape)
    return f"{dtype}[*]" if dims is None else f"{dtype}[{dims}]"


def graph_ops(meta_graph: meta_graph_pb2.MetaGraphDef) -> Set[str]:
    """The op types a MetaGraph runs: its graph's and its function library's nodes'
    (a call of a library function counts as the function's name)."""
    ops = {n.op for n in meta_graph.graph_def.node}
    for function in meta_graph.graph_def.library.function:
        ops.update(n.op for n in function.node_def)
    return ops


# ---- PredictionLogs (TF Serving's warmup format)


def request_of(log: prediction_log_pb2.PredictionLog):
    """The request a PredictionLog holds (PredictRequest, ClassificationRequest, ...)."""
    return getattr(log, log.WhichOneof("log_type")).request


def signature_name(log: prediction_log_pb2.PredictionLog) -> str:
    """The signature a PredictionLog's request calls: the one it names, or
    `serving_default` when it names none (as TF Serving reads it)."""
    return request_of(log).model_spec.signature_name or DEFAULT_SIGNATURE


def iter_prediction_logs(path: str, compression: Optional[str] = None
                         ) -> Iterator[prediction_log_pb2.PredictionLog]:
    """Each record of a TFRecord file of PredictionLogs, parsed. A damaged file
    raises one of RECORD_ERRORS, which the caller reports in its own words;
    `compression`: "GZIP" for a gzipped file."""
    for record in tf.data.TFRecordDataset(path, compression_type=compression):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        yield log


def read_prediction_logs(path: str) -> List[prediction_log_pb2.PredictionLog]:
    """The PredictionLogs of a warmup file; a `SourceError` naming it when it is not
    one (a corrupt or truncated record, another file under that name)."""
    try:
        return list(iter_prediction_logs(path))
    except RECORD_ERRORS as e:
        raise SourceError(path, "the warmup file does not read as TFRecords of TF Serving "
                          f"PredictionLogs ({type(e).__name__}: {error_summary(e)})",
                          allowed="the tf_serving_warmup_requests file an export writes",
                          fix="export the model again with the serving check on (it writes "
                              "the file), or remove the damaged file") from None


def write_prediction_logs(path: str, logs) -> None:
    """Writes `logs` as a TFRecord file of PredictionLogs (creating its directory)."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def copy_prediction_log(log: prediction_log_pb2.PredictionLog
                        ) -> prediction_log_pb2.PredictionLog:
    """A copy of `log` to change without changing it."""
    out = prediction_log_pb2.PredictionLog()
    out.CopyFrom(log)
    return out
