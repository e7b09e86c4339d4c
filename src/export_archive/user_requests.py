"""Requests the user supplies to the serving check (config `check.requests`).

The check sends each endpoint (signature) one request at batch 1 and one at batch
64, and writes the batch-1 requests as the SavedModel's warmup file. Where those
requests come from, first match wins:

1. `check.requests`, in order (CLI: ``--requests FORMAT:PATH``), each entry one of::

       {"format": "warmup",   "path": "gs://b/tf_serving_warmup_requests"}
       {"format": "rest",     "path": "bodies/*.json", "endpoint": "serve",
        "method": "predict"}
       {"format": "examples", "path": "data/Split-eval", "endpoint": "serving_default"}

   ``warmup``: TFRecords of TF Serving ``PredictionLog``s (predict, classify or
   regress logs, as `tensorflow_serving.apis.prediction_log_pb2` builds them);
   each names its signature (empty: ``serving_default``). ``rest``: TF Serving
   REST bodies, one per ``.json`` file or one per line of a ``.jsonl`` file,
   converted exactly as TF Serving converts them (`export_archive.rest`);
   ``method`` is the URL's verb (``predict``, the default, ``classify``,
   ``regress``), ``endpoint`` the signature of bodies without ``signature_name``
   (default: ``serving_default``, as TF Serving). ``examples``: tf.Example
   TFRecords (gzip by the ``.gz`` suffix) sent to the endpoints that take
   tf.Examples or whose inputs are features of them (``endpoint``: only that one).
   ``path`` is a file, a glob or a directory (local or any `tf.io.gfile` URI; for
   examples also an Examples artifact directory: its Split-eval, else Split-train).
2. the exporter's examples input (TFX ``examples``, CLI ``--examples``);
3. synthesized values. They cannot exercise an endpoint that decodes its string
   input (an image, CSV, a serialized tensor): when such an op fails on them, the
   endpoint is reported "not exercised: give sample requests", and the model is
   not refused for it; its synthesized request is left out of the warmup file
   (TF Serving refuses to load a model whose warmup request fails).

The first supplied request of an endpoint is sent as it is (and is its warmup
request), and again resized to batch 64 (inputs repeated along the batch
dimension). A `requests` check row per endpoint names the source.

Parsing the config entries (`parse_entries`, `parse_flags`, `with_flag_requests`)
imports no TensorFlow: the CLI does it before the check's process is forked from
its own (`contract_process`), so TensorFlow is imported inside the functions that
read the sources. Which request each signature gets is `check.choose`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from export_archive import rest
from export_archive.config import ExportConfig
from export_archive.constants import DEFAULT_SIGNATURE
from export_archive.errors import ConfigError
from export_archive.rows import CheckRow

FORMATS = ("warmup", "rest", "examples")
REST_METHODS = ("predict", "classify", "regress")
ENTRY_FIELDS = ("format", "path", "endpoint", "method")
MAX_ENTRIES = 64
# TF Serving reads at most this many warmup records (kMaxNumRecords in
# servables/tensorflow/saved_model_warmup_util.cc); more would be a wrong file.
MAX_RECORDS = 1000
FIELD = "check.requests"

ORIGIN_EXAMPLES_INPUT = "the exporter's examples input (--examples / examples)"
ORIGIN_SYNTHESIZED = "synthesized inputs (no check.requests entry for it)"
NOT_EXERCISED = "not exercised: give sample requests"
# Ops that decode bytes into values. Synthesized strings are empty, which every one
# of them rejects; a failure in one of them on synthesized inputs says nothing about
# the model. (ParseExample is not here: an empty tf.Example is a valid one.)
DECODE_OPS = frozenset({
    "DecodeJpeg", "DecodeAndCropJpeg", "DecodePng", "DecodeGif", "DecodeBmp",
    "DecodeImage", "DecodeWebP", "ExtractJpegShape", "DecodeWav", "DecodeRaw",
    "DecodePaddedRaw", "DecodeCSV", "DecodeBase64", "DecodeCompressed", "DecodeJSONExample",
    "DecodeProtoV2", "ParseTensor", "StringToNumber", "DeserializeSparse",
    "DeserializeManySparse"})


def _show_formats() -> str:
    return ", ".join(f'"{f}"' for f in FORMATS)


def parse_entries(value: Any, path: str = FIELD) -> Tuple[Tuple[Tuple[str, str], ...], ...]:
    """Validates `check.requests`; returns each entry as (key, value) pairs."""
    if not isinstance(value, list):
        raise ConfigError(path, "must be an array of request sources", value,
                          'objects like {"format": "warmup", "path": "FILE"}',
                          "write it as an array, e.g. "
                          '[{"format": "rest", "path": "body.json"}]')
    if len(value) > MAX_ENTRIES:
        raise ConfigError(path, f"{len(value)} request sources, over the limit of "
                          f"{MAX_ENTRIES}", f"{len(value)} entries",
                          f"at most {MAX_ENTRIES}", "use globs or directories in `path`")
    return tuple(_parse_entry(entry, f"{path}[{i}]") for i, entry in enumerate(value))


def _parse_entry(entry: Any, path: str) -> Tuple[Tuple[str, str], ...]:
    example = '{"format": "warmup", "path": "requests.tfrecord"}'
    if not isinstance(entry, dict):
        raise ConfigError(path, "must be an object", entry,
                          f"an object with `format` ({_show_formats()}) and `path`",
                          f"write e.g. {example}")
    for key in entry:
        if key not in ENTRY_FIELDS:
            raise ConfigError(f"{path}.{key}", "unknown request source field", key,
                              ", ".join(ENTRY_FIELDS), "remove it or correct its spelling")
    for key in ("format", "path"):
        if key not in entry:
            raise ConfigError(f"{path}.{key}", "is required", entry,
                              f"an object with `format` ({_show_formats()}) and `path`",
                              f"add `{key}`, e.g. {example}")
    for key, value in entry.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}.{key}", "must be a non-empty string", value,
                              "a string", f"correct `{key}`")
    kind = entry["format"]
    if kind not in FORMATS:
        raise ConfigError(f"{path}.format", "unknown request format", kind, _show_formats(),
                          "use warmup (PredictionLog TFRecords), rest (TF Serving REST "
                          "JSON bodies) or examples (tf.Example TFRecords)")
    if "method" in entry:
        if kind != "rest":
            raise ConfigError(f"{path}.method", "only a rest source has a method (the "
                              f"REST verb); a {kind} source's records need none",
                              entry["method"], "omit it, or use format rest",
                              "remove `method`")
        if entry["method"] not in REST_METHODS:
            raise ConfigError(f"{path}.method", "unknown REST method", entry["method"],
                              ", ".join(REST_METHODS), "use the verb of the REST URL "
                              "(/v1/models/M:predict -> predict)")
    if "endpoint" in entry and kind == "warmup":
        raise ConfigError(f"{path}.endpoint", "a warmup record names its own signature",
                          entry["endpoint"], "omit it for format warmup",
                          "remove `endpoint`, or set model_spec.signature_name in the records")
    return tuple((key, entry[key]) for key in ENTRY_FIELDS if key in entry)


def entries_to_json(entries) -> List[Dict[str, str]]:
    return [dict(entry) for entry in entries]


def parse_flags(values: List[str], flag: str = "--requests") -> List[Dict[str, str]]:
    """``FORMAT:PATH`` command-line values -> config entries (validated)."""
    out = []
    for i, text in enumerate(values):
        kind, sep, path = text.partition(":")
        if not sep or kind not in FORMATS or not path:
            raise ConfigError(f"{flag}[{i}]", "a request source is FORMAT:PATH", text,
                              f"FORMAT one of {', '.join(FORMATS)}; PATH a file, glob or "
                              "directory", f"write e.g. {flag} warmup:requests.tfrecord or "
                              f"{flag} rest:body.json")
        out.append({"format": kind, "path": path})
    parse_entries(out, flag)
    return out


def with_flag_requests(config, values: List[str]):
    """`config` (an ExportConfig) with the ``--requests`` sources before its own
    `check.requests` entries (so that they win)."""
    document = config.to_dict()
    check = document.setdefault("check", {})
    check["requests"] = parse_flags(values) + check.get("requests", [])
    return ExportConfig.parse(document)


class RequestsError(ConfigError):
    """A `check.requests` source cannot be read or does not fit the export."""

    subject = "serving check requests"


# ---- loading (TensorFlow from here on)


@dataclasses.dataclass
class Supplied:
    """The requests of the `check.requests` sources, per signature."""
    # signature name -> [(PredictionLog, origin text)], in source order
    logs: Dict[str, List[Tuple[Any, str]]]
    # (origin text, record reader(count) -> serialized tf.Examples, endpoint or None)
    examples: List[Tuple[str, Any, Optional[str]]]


def _files(pattern: str, where: str) -> List[str]:
    import tensorflow as tf   # not at the top: see the module docstring
    try:
        if tf.io.gfile.isdir(pattern):
            # An ExampleGen Examples artifact: its eval split, else its train split.
            pattern = next((os.path.join(pattern, split) for split in ("Split-eval",
                                                                       "Split-train")
                            if tf.io.gfile.isdir(os.path.join(pattern, split))), pattern)
            found = [os.path.join(pattern, f) for f in tf.io.gfile.listdir(pattern)
                     if not tf.io.gfile.isdir(os.path.join(pattern, f))]
        else:
            found = tf.io.gfile.glob(pattern)
    except tf.errors.OpError as e:
        raise RequestsError(f"{where}.path", f"cannot be listed ({type(e).__name__})",
                            pattern, "a readable file, glob or directory",
                            "check the path and its permissions") from None
    if not found:
        raise RequestsError(f"{where}.path", "no file found", pattern,
                            "a file, a glob or a directory holding request files",
                            "check the path (relative paths are relative to the "
                            "directory the export runs in)")
    return sorted(found)


def load(entries, export_dir: str) -> Supplied:
    """Reads every `check.requests` source against the export at `export_dir`."""
    from export_archive import saved_model_io   # imports TensorFlow: see the module docstring
    signatures = saved_model_io.signature_defs(saved_model_io.read_serve_meta_graph(export_dir))
    supplied = Supplied({}, [])
    for i, entry in enumerate(entries):
        entry = dict(entry)
        where = f"{FIELD}[{i}]"
        files = _files(entry["path"], where)
        if entry["format"] == "examples":
            supplied.examples.append((f"the tf.Examples of {entry['path']} ({where})",
                                      _record_reader(files, where), entry.get("endpoint")))
            continue
        reader = _read_warmup if entry["format"] == "warmup" else _read_rest
        for log, origin in reader(files, entry, where, signatures):
            name = _signature_of(log)
            if name not in signatures:
                raise RequestsError(where, f"{origin} calls signature {name!r}, which the "
                                    "export does not have", name, ", ".join(sorted(signatures)),
                                    "name one of the export's signatures (an empty name "
                                    "calls serving_default)")
            supplied.logs.setdefault(name, []).append((log, origin))
    return supplied


def _signature_of(log) -> str:
    request = getattr(log, log.WhichOneof("log_type")).request
    if not request.model_spec.signature_name:
        request.model_spec.signature_name = DEFAULT_SIGNATURE
    return request.model_spec.signature_name


def _read_warmup(files, entry, where, signatures):
    from export_archive import saved_model_io   # imports TensorFlow: see the module docstring
    count = 0
    for path in files:
        compression = "GZIP" if path.endswith(".gz") else None
        try:
            for j, log in enumerate(saved_model_io.iter_prediction_logs(path, compression)):
                kind = log.WhichOneof("log_type")
                if kind not in ("predict_log", "classify_log", "regress_log"):
                    raise RequestsError(where, f"record {j} of {path} is "
                                        f"{'an empty PredictionLog' if not kind else kind}",
                                        kind or "", "predict_log, classify_log or regress_log "
                                        "PredictionLogs", "write those logs (the check runs "
                                        "Predict, Classify and Regress requests)")
                count += 1
                if count > MAX_RECORDS:
                    raise RequestsError(where, f"more than {MAX_RECORDS} warmup records",
                                        entry["path"], f"at most {MAX_RECORDS} (TF Serving "
                                        "reads no more)", "keep a few requests per signature")
                yield log, f"the warmup file {path} ({where})"
        except saved_model_io.RECORD_ERRORS as e:
            raise RequestsError(where, f"{path} does not read as TFRecords of TF Serving "
                                f"PredictionLogs ({type(e).__name__})", entry["path"],
                                "a TFRecord file of tensorflow_serving.apis PredictionLog "
                                "records", "write it with tf.io.TFRecordWriter and "
                                "PredictionLog.SerializeToString()") from None


def _bodies(path: str):
    import tensorflow as tf   # not at the top: see the module docstring
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    if path.endswith(".jsonl"):
        for line_number, line in enumerate(data.splitlines(), 1):
            if line.strip():
                yield f"{path} line {line_number}", line
    else:
        yield path, data


def _read_rest(files, entry, where, signatures):
    # imports TensorFlow: not at the top, see the module docstring
    from tensorflow_serving.apis import prediction_log_pb2
    method = entry.get("method", "predict")
    endpoint = entry.get("endpoint")
    if endpoint is not None and endpoint not in signatures:
        raise RequestsError(f"{where}.endpoint", "names no signature of the export", endpoint,
                            ", ".join(sorted(signatures)), "name one of them")
    default = endpoint or rest.DEFAULT_SIGNATURE
    for path in files:
        for label, body in _bodies(path):
            log = prediction_log_pb2.PredictionLog()
            try:
                if method == "predict":
                    named = rest.parse_json(body).get(rest.SIGNATURE_KEY) \
                        if body.lstrip()[:1] == b"{" else None
                    # A body naming no signature calls `endpoint` (TF Serving: the default).
                    source = signatures if named is not None or default not in signatures \
                        else signatures[default]
                    request = rest.parse_predict_request(body, source)
                    log.predict_log.request.CopyFrom(request.to_proto())
                    request_proto = log.predict_log.request
                else:
                    parse = (rest.parse_classify_request if method == "classify"
                             else rest.parse_regress_request)
                    request_proto = (log.classify_log if method == "classify"
                                     else log.regress_log).request
                    request_proto.CopyFrom(parse(body))
            except rest.RestError as e:
                raise RequestsError(where, f"{label} is not a body TF Serving's REST "
                                    f":{method} accepts (it answers HTTP {e.http_status}: "
                                    f"{e})", body[:200].decode("utf-8", "replace"),
                                    f"a :{method} body in TF Serving's JSON format "
                                    "(docs/requests.md)", "correct the body; TF Serving "
                                    "would refuse it the same way") from None
            if not request_proto.model_spec.signature_name:
                request_proto.model_spec.signature_name = default
            request_proto.model_spec.name = ""
            yield log, f"the REST body {label} ({where})"


def _record_reader(files: List[str], where: str):
    def read(count: int) -> List[bytes]:
        import tensorflow as tf   # not at the top: see the module docstring
        compression = "GZIP" if files[0].endswith(".gz") else None
        try:
            records = [r.numpy() for r in tf.data.TFRecordDataset(
                files, compression_type=compression).take(count)]
        except tf.errors.OpError as e:
            raise RequestsError(where, f"the files do not read as TFRecords ({type(e).__name__})",
                                files[0], "TFRecord files of serialized tf.Examples (gzip "
                                "when named *.gz)", "give ExampleGen's record files") from None
        if not records:
            raise RequestsError(where, "the files hold no records", files[0],
                                "TFRecord files of serialized tf.Examples",
                                "give non-empty record files")
        return (records * (count // len(records) + 1))[:count]
    return read


# ---- what the check made of synthesized requests


def decode_ops(export_dir: str) -> List[str]:
    """The byte-decoding ops (DECODE_OPS) in the export's serve graph."""
    from export_archive import saved_model_io   # imports TensorFlow: see the module docstring
    ops = saved_model_io.graph_ops(saved_model_io.read_serve_meta_graph(export_dir))
    return sorted(ops & DECODE_OPS)


def not_exercised(runs: List[CheckRow], origins: Dict[str, str],
                  export_dir: str) -> Dict[str, str]:
    """signature -> why it was not exercised: its requests were synthesized, it takes
    a string input, and its run failed with InvalidArgumentError in a graph that
    decodes bytes (the synthesized empty strings are no image, CSV, ...)."""
    failed = {r.endpoint for r in runs if not r.passed
              and origins.get(r.endpoint) == ORIGIN_SYNTHESIZED
              and r.detail.startswith("InvalidArgumentError")}
    if not failed:
        return {}
    from export_archive import describe   # imports TensorFlow: see the module docstring
    takes_strings = {s.name for s in describe.describe(export_dir)
                     if any(t.startswith("string[") for t in s.inputs.values())}
    failed &= takes_strings
    if not failed:
        return {}
    ops = decode_ops(export_dir)
    if not ops:
        return {}
    out = {}
    for name in sorted(failed):
        detail = next(r.detail for r in runs if r.endpoint == name and not r.passed)
        out[name] = (f"{NOT_EXERCISED}: the synthesized string inputs (empty bytes) cannot "
                     f"feed its {', '.join(ops)} ({_summary(detail)}); add a "
                     f"`{FIELD}` entry (a warmup file or REST bodies, docs/requests.md) or "
                     "the --requests flag to check it")
    return out


def _summary(detail: str) -> str:
    """A session error in one line: 'Input is empty. (node map/while/DecodeJpeg)'."""
    nodes = re.findall(r"\{\{node ([^}]+)\}\}", detail)
    lines = [line.strip() for line in detail.splitlines()[1:]
             if line.strip() and not line.strip().startswith("[[")]
    text = " ".join(lines)[:160] or detail.splitlines()[0][:160]
    return text + (f" at node {nodes[0]}" if nodes else "")


def apply_not_exercised(results: List[CheckRow], runs: List[CheckRow],
                        skipped: Dict[str, str]) -> List[CheckRow]:
    """`runs` without the failures of the `skipped` signatures, whose passing
    "not exercised" rows go to `results`."""
    results.extend(CheckRow("run", name, True, why) for name, why in skipped.items())
    return [r for r in runs if r.endpoint not in skipped]
