"""The export report: one export rendered as report.json, report.md and report.html.

The report leads with a verdict (exported or not, the serving check, the serving
contract), then says what was exported from what (source model URI, config,
library versions, endpoints, variable collections, checks, contract diff), and
for every endpoint how to call it: a TF Serving REST ``curl`` command and a Python
gRPC snippet with ``tensorflow_serving.apis``. The example values come from the
model's own warmup requests (real or schema-synthesized records the serving check
ran), so the examples are requests the exported model has already answered.

Markdown and HTML are rendered from the Jinja templates in ``templates/``.
The HTML is self-contained (inline CSS, no scripts): the KFP and Vertex AI UIs
show it as the ``system.HTML`` artifact (see docs/report.md).

    from export_archive import report
    report.write_report(result, "report_dir/", config=config, source_uri="trainer/7")
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import platform
import shlex
import warnings
from typing import Any, Dict, List, Mapping, Optional

import jinja2
import numpy as np
import tensorflow as tf

from export_archive import contract, describe, rest
from export_archive.saved_model_io import read_prediction_logs, request_of, signature_name
from export_archive.constants import WARMUP_FILE
from export_archive.rows import failures
from export_archive.writer import ExportResult

# The name the examples call the model by; TF Serving's --model_name.
DEFAULT_MODEL_NAME = "MODEL"
REST_URL = "http://localhost:8501/v1/models/{model}:{verb}"
GRPC_TARGET = "localhost:8500"
PREDICT, CLASSIFY, REGRESS = "predict", "classify", "regress"
# Distributions whose versions the report lists (when installed), in this order.
VERSIONED_DISTRIBUTIONS = ("tfx-export-archive", "tensorflow", "keras", "tf-keras", "tfx",
                           "tensorflow-serving-api", "kfp")
# Example float values are rounded so the commands stay readable; the rounded
# values are what both examples send.
FLOAT_DECIMALS = 4

STATUS_OK, STATUS_WARNING, STATUS_STOPPED = "ok", "warning", "stopped"


# ---- rendering


def _change_verdict(change: Mapping[str, Any], markdown: bool = False) -> str:
    if not change["breaking"]:
        return "compatible"
    if change["allowed"]:
        return "breaking (allowed)"
    return "**BREAKING**" if markdown else "BREAKING"


def _md_cell(text: Any) -> str:
    # A pipe would end the Markdown table cell; a newline the row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_code(text: Any) -> str:
    return f"`{_md_cell(text)}`" if text else ""


def _md_specs(specs: Mapping[str, str]) -> str:
    return "<br>".join(f"`{k}`: {v}" for k, v in specs.items())


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("export_archive", "templates"),
        autoescape=autoescape, undefined=jinja2.StrictUndefined,
        trim_blocks=False, keep_trailing_newline=True)
    env.filters.update(change_verdict=_change_verdict, cell=_md_cell, code=_md_code,
                       specs=_md_specs)
    return env


def _render(template: str, context: Mapping[str, Any]) -> str:
    return _environment(template.endswith(".html.j2")).get_template(template).render(
        **context)


def to_markdown(result: ExportResult, config: Any = None, source_uri: Optional[str] = None,
                model_name: str = DEFAULT_MODEL_NAME) -> str:
    return _render("report.md.j2", report_context(result, config, source_uri, model_name))


def to_html(result: ExportResult, config: Any = None, source_uri: Optional[str] = None,
            model_name: str = DEFAULT_MODEL_NAME) -> str:
    return _render("report.html.j2", report_context(result, config, source_uri, model_name))


def to_json(result: ExportResult, config: Any = None, source_uri: Optional[str] = None,
            model_name: str = DEFAULT_MODEL_NAME) -> Dict[str, Any]:
    """report.json: `ExportResult.to_json()` plus the verdict, versions, config,
    source and call examples (the same facts as the Markdown and HTML)."""
    return _json_payload(result, report_context(result, config, source_uri, model_name))


def _json_payload(result: ExportResult, context: Mapping[str, Any]) -> Dict[str, Any]:
    return {**result.to_json(), "published": True, **_common_json(context),
            "call_examples": context["calls"]}


def _common_json(context: Mapping[str, Any]) -> Dict[str, Any]:
    return {"verdict": context["verdict"], "versions": context["versions"],
            "config": json.loads(context["config_json"]) if context["config_json"] else None,
            "source_uri": context["source_uri"]}


# ---- what the templates get


def report_context(result: Optional[ExportResult], config: Any = None,
                   source_uri: Optional[str] = None, model_name: str = DEFAULT_MODEL_NAME,
                   not_published: Optional[str] = None,
                   contract_json: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    contract_json = contract_json or (result.contract if result is not None else None) \
        or contract.not_compared()
    calls = call_examples(result, model_name) if result is not None else []
    return {
        "result": result, "source_uri": source_uri, "model_name": model_name,
        "verdict": verdict(result, contract_json, not_published),
        "contract": contract_json, "versions": library_versions(),
        "config_json": _config_json(config), "calls": calls,
        "any_warmup": any(c["from_warmup"] for c in calls),
    }


def verdict(result: Optional[ExportResult], contract_json: Mapping[str, Any],
            not_published: Optional[str] = None) -> Dict[str, str]:
    """The headline and its three parts: export, serving check, contract."""
    contract_text = contract_json.get("summary") or contract.NO_BASELINE
    if result is None or not_published:
        return {"status": STATUS_STOPPED, "headline": "Not published",
                "export": f"not published: {not_published}",
                "check": "skipped: nothing was exported", "contract": contract_text}
    if result.check_passed is None:
        check_word = "skipped"
        check = ("skipped: the serving check did not run (the config's check section "
                 "turns it off, or the API was called without check=True)")
    elif result.check_passed:
        check_word = check = "passed"
    else:
        check_word = "FAILED"
        failed = len(failures(result.checks))
        check = f"FAILED ({failed} failed, mode warn: exported anyway)"
    breaking = bool(contract_json.get("breaking"))
    status = STATUS_WARNING if result.check_passed is False or breaking else STATUS_OK
    parts = ["Exported", f"serving check {check_word}"]
    if contract_json.get("status") != contract.STATUS_NOT_COMPARED:
        parts.append("contract " + ("BREAKING" if breaking else "compatible"))
    else:
        parts.append("contract not compared")
    return {"status": status, "headline": " · ".join(parts),
            "export": f"published to {result.output_dir}", "check": check,
            "contract": contract_text}


def library_versions() -> Dict[str, str]:
    """Installed versions of the stack (distribution metadata: nothing is imported)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue   # e.g. tf_keras or tfx not installed: not part of this stack
    return versions


def _config_json(config: Any) -> Optional[str]:
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif isinstance(config, str):
        config = json.loads(config)
    return json.dumps(config, indent=2, sort_keys=True)


# ---- call examples


def call_examples(result: ExportResult, model_name: str = DEFAULT_MODEL_NAME
                  ) -> List[Dict[str, Any]]:
    """One REST and one gRPC example per endpoint, with the same single instance."""
    meta_graph = describe.serve_meta_graph(describe.read_saved_model_proto(result.output_dir))
    warmup = _warmup_instances(result.output_dir)
    calls = []
    for endpoint in result.endpoints:
        sig = meta_graph.signature_def[endpoint.name]
        api = sig.method_name.rsplit("/", 1)[-1]
        if api not in (CLASSIFY, REGRESS):
            api = PREDICT
        instance = warmup.get(endpoint.name)
        origin = "the first of the model's warmup requests for this signature"
        if instance is None:
            instance = _synthesized_instance(sig, api)
            origin = ("synthesized (the model has no warmup request for this signature): "
                      "replace them with real values")
        if api == PREDICT:
            body = {"signature_name": endpoint.name,
                    "instances": [_rest_instance(instance, endpoint.kind == "tf_example")]}
            grpc = _grpc_predict(endpoint.name, instance, sig, model_name)
        else:
            body = {"signature_name": endpoint.name,
                    "examples": [_rest_example(instance)]}
            grpc = _grpc_classify_regress(endpoint.name, instance, api, model_name)
        url = REST_URL.format(model=model_name, verb=api)
        curl = (f"curl -s -X POST {url} \\\n  -H 'Content-Type: application/json' \\\n"
                f"  -d {shlex.quote(json.dumps(body))}")
        calls.append({"endpoint": endpoint.name, "api": api, "url": url, "body": body,
                      "curl": curl, "grpc": grpc, "origin": origin,
                      "from_warmup": endpoint.name in warmup})
    return calls


def _warmup_instances(export_dir: str) -> Dict[str, Any]:
    """signature name -> its first warmup instance: {input: array of batch 1} for
    Predict, a tf.train.Example for Classify/Regress."""
    path = os.path.join(export_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    instances = {}
    for log in read_prediction_logs(path):
        kind = log.WhichOneof("log_type")
        request = request_of(log)
        name = signature_name(log)
        if name in instances:
            continue
        if kind == "predict_log":
            instances[name] = {key: _rounded(tf.make_ndarray(proto)[:1])
                               for key, proto in sorted(request.inputs.items())}
        elif request.input.example_list.examples:
            instances[name] = _rounded_example(request.input.example_list.examples[0])
    return instances


def _rounded(array: np.ndarray) -> np.ndarray:
    """Floats rounded to FLOAT_DECIMALS (as float64, so they print as rounded);
    serialized tf.Examples with their float features rounded."""
    if array.dtype.kind == "f":
        return np.round(array.astype(np.float64), FLOAT_DECIMALS)
    if array.dtype == object:
        def leaf(value):
            example = _decoded_example(value)
            return value if example is None else \
                _rounded_example(example).SerializeToString(deterministic=True)
        return np.vectorize(leaf, otypes=[object])(array) if array.size else array
    return array


def _rounded_example(example: tf.train.Example) -> tf.train.Example:
    rounded = tf.train.Example()
    rounded.CopyFrom(example)
    for feature in rounded.features.feature.values():
        if feature.WhichOneof("kind") == "float_list":
            values = [round(v, FLOAT_DECIMALS) for v in feature.float_list.value]
            del feature.float_list.value[:]
            feature.float_list.value.extend(values)
    return rounded


def _synthesized_instance(sig, api: str):
    if api != PREDICT:
        return tf.train.Example()
    instance = {}
    for key, info in sig.inputs.items():
        dtype = tf.as_dtype(info.dtype)
        shape = [1 if i == 0 or d.size < 0 else d.size
                 for i, d in enumerate(info.tensor_shape.dim)]
        if dtype == tf.string:
            # A tf_example input: one serialized empty tf.Example; else an empty string.
            instance[key] = np.full(shape, tf.train.Example().SerializeToString(), object)
        else:
            instance[key] = np.zeros(shape, dtype.as_numpy_dtype)
    return instance


def _rest_instance(instance: Mapping[str, np.ndarray], binary: bool) -> Dict[str, Any]:
    """One row-format instance: the batch's first entry of every input."""
    return {key: _json_value(instance[key].tolist()[0], binary) for key in sorted(instance)}


def _json_value(value: Any, binary: bool) -> Any:
    """TF Serving's REST encoding: bytes that are text go as a JSON string (UTF-8),
    others (and every serialized tf.Example) as {"b64": ...}."""
    if isinstance(value, list):
        return [_json_value(v, binary) for v in value]
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if binary or text is None or not text.isprintable():
            return {rest.B64_KEY: base64.b64encode(value).decode("ascii")}
        return text
    return value


def _feature_values(feature: tf.train.Feature) -> tuple:
    kind = feature.WhichOneof("kind")
    return kind, (list(getattr(feature, kind).value) if kind else [])


def _rest_example(example: tf.train.Example) -> Dict[str, Any]:
    """A tf.Example as TF Serving's Classify/Regress REST API takes it."""
    out = {}
    for name, feature in sorted(example.features.feature.items()):
        kind, values = _feature_values(feature)
        if kind == "bytes_list":
            values = [_json_value(v, binary=False) for v in values]
        elif kind == "float_list":
            values = [round(v, FLOAT_DECIMALS) for v in values]
        out[name] = values[0] if len(values) == 1 else values
    return out


_GRPC_HEADER = """\
import grpc
import tensorflow as tf
from tensorflow_serving.apis import {request_module}, prediction_service_pb2_grpc

channel = grpc.insecure_channel("{target}")
stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
"""


def _example_code(example: tf.train.Example, var: str = "example") -> str:
    """Python source building `example` feature by feature."""
    lines = [f"{var} = tf.train.Example(features=tf.train.Features(feature={{"]
    for name, feature in sorted(example.features.feature.items()):
        kind, values = _feature_values(feature)
        if kind is None:
            continue
        cls = {"bytes_list": "BytesList", "float_list": "FloatList",
               "int64_list": "Int64List"}[kind]
        if kind == "float_list":
            values = [round(v, FLOAT_DECIMALS) for v in values]
        lines.append(f"    {name!r}: tf.train.Feature({kind}=tf.train.{cls}("
                     f"value={values!r})),")
    lines.append("}))")
    return "\n".join(lines)


def _decoded_example(value: Any) -> Optional[tf.train.Example]:
    if not isinstance(value, bytes):
        return None
    try:
        # Arbitrary bytes often parse partway; protobuf then warns before raising.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            example = tf.train.Example.FromString(value)
    except Exception:  # pylint: disable=broad-except  # not an Example: sent as bytes
        return None
    return example if example.SerializeToString() == value else None


def _grpc_predict(name: str, instance: Mapping[str, np.ndarray], sig, model_name: str) -> str:
    code = [_GRPC_HEADER.format(request_module="predict_pb2", target=GRPC_TARGET),
            "request = predict_pb2.PredictRequest()",
            f"request.model_spec.name = {model_name!r}",
            f"request.model_spec.signature_name = {name!r}"]
    for key in sorted(instance):
        value = instance[key]
        dtype = tf.as_dtype(sig.inputs[key].dtype).name
        example = (_decoded_example(value.reshape(-1)[0])
                   if value.dtype == object and value.size == 1 else None)
        if example is not None:
            # A tf_example input: build the tf.Example, send it serialized.
            code += ["", _example_code(example),
                     f"request.inputs[{key!r}].CopyFrom(tf.make_tensor_proto("
                     f"[example.SerializeToString()], dtype=tf.string))"]
        else:
            code.append(f"request.inputs[{key!r}].CopyFrom(tf.make_tensor_proto("
                        f"{value.tolist()!r}, dtype=tf.{dtype}))")
    code += ["", "response = stub.Predict(request, timeout=10.0)",
             "print({key: tf.make_ndarray(value) for key, value in response.outputs.items()})"]
    return "\n".join(code)


def _grpc_classify_regress(name: str, example: tf.train.Example, api: str,
                           model_name: str) -> str:
    module, request_cls, method = (
        ("classification_pb2", "ClassificationRequest", "Classify") if api == CLASSIFY
        else ("regression_pb2", "RegressionRequest", "Regress"))
    return "\n".join([
        _GRPC_HEADER.format(request_module=module, target=GRPC_TARGET),
        f"request = {module}.{request_cls}()",
        f"request.model_spec.name = {model_name!r}",
        f"request.model_spec.signature_name = {name!r}", "",
        _example_code(example),
        "request.input.example_list.examples.add().CopyFrom(example)", "",
        f"response = stub.{method}(request, timeout=10.0)",
        "print(response.result)"])


# ---- writing


def _write_files(directory: str, files: Mapping[str, str]) -> None:
    """Each file is written beside its final name and renamed into place, so a
    killed run leaves the previous file or the new one, never half of one."""
    tf.io.gfile.makedirs(directory)
    for name, text in files.items():
        final = os.path.join(directory, name)
        staging = final + ".tmp"
        with tf.io.gfile.GFile(staging, "w") as f:
            f.write(text)
        tf.io.gfile.rename(staging, final, overwrite=True)


def _write_ui_copy(directory: str, html_text: str) -> None:
    """On an object store, the HTML also goes AT the artifact URI.

    The KFP and Vertex AI UIs render a system.HTML artifact by reading the object
    at its URI, while TFX hands the executor that URI as a directory. An object
    store has no directories: `gs://b/run/report` (the page the UI shows) and
    `gs://b/run/report/report.json` are two independent objects, so both fit. A
    local filesystem cannot hold both; no UI reads local runs.
    """
    if "://" not in directory:
        return
    with tf.io.gfile.GFile(directory.rstrip("/"), "w") as f:
        f.write(html_text)


def write_report(result: ExportResult, directory: str, json_name: str = "report.json",
                 markdown_name: str = "report.md", html_name: str = "report.html", *,
                 config: Any = None, source_uri: Optional[str] = None,
                 model_name: str = DEFAULT_MODEL_NAME) -> None:
    """Writes report.json, report.md and report.html into `directory`."""
    # One context for the three files, so they show the same examples.
    context = report_context(result, config, source_uri, model_name)
    html_text = _render("report.html.j2", context)
    _write_files(directory, {
        json_name: json.dumps(_json_payload(result, context), indent=2, default=str),
        markdown_name: _render("report.md.j2", context),
        html_name: html_text})
    _write_ui_copy(directory, html_text)


def write_not_published(reason: str, contract_json, directory: str,
                        json_name: str = "report.json", markdown_name: str = "report.md",
                        html_name: str = "report.html", *, config: Any = None,
                        source_uri: Optional[str] = None) -> None:
    """The report of an export that a blessing or the contract guard stopped.

    It leads with the verdict and keeps the contract diff, the part a reviewer
    needs to decide between fixing the model and allowing the break.
    """
    context = report_context(None, config, source_uri, not_published=reason,
                             contract_json=contract_json)
    payload = {"published": False, "not_published_reason": reason,
               "contract": context["contract"], **_common_json(context)}
    html_text = _render("report.html.j2", context)
    _write_files(directory, {json_name: json.dumps(payload, indent=2, default=str),
                             markdown_name: _render("report.md.j2", context),
                             html_name: html_text})
    _write_ui_copy(directory, html_text)


__all__ = ["to_markdown", "to_html", "to_json", "write_report", "write_not_published",
           "call_examples", "verdict", "library_versions", "report_context"]
