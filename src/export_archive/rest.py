"""TF Serving's REST Predict API, as JSON <-> tensors, for checks, tests and docs.

A REST or Vertex AI client sends ``{"instances": [...]}`` (row format) or
``{"inputs": ...}`` (columnar format); TF Serving turns that JSON into one tensor per
signature input, runs the signature, and turns the outputs back into
``{"predictions": [...]}`` / ``{"outputs": ...}``. The rules implemented here are
those of TF Serving's REST API documentation (tensorflow/serving,
``g3doc/api_rest.md``, "Request format" / "Response format" / "Encoding binary
values"), implemented by ``tensorflow_serving/util/json_tensor.cc``:

* Row format: ``instances`` is a list, one entry per example. With several named
  inputs each entry is an object holding every input by name; with one input an
  entry may be the bare value. Every instance must give each input the same shape;
  the input tensor is the instances stacked on a new 0-th (batch) dimension.
* Columnar format: ``inputs`` is an object of whole tensors by input name (or the
  bare tensor when the signature has one input); no batch stacking is done.
* Values: JSON numbers for numeric inputs (an integer input rejects a fraction),
  ``true``/``false`` for bool, strings for string inputs (UTF-8 bytes), and
  ``{"b64": "..."}`` for binary string values, decoded from base64.
* Responses: row format gives ``predictions``, a list per example: the bare value
  when the signature has one output, else an object of outputs by name. A string
  output whose name ends in ``_bytes`` is returned as ``{"b64": ...}``.

Only what TF Serving itself does is accepted; anything else raises `RestError`,
whose message names the instance and input at fault.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, List, Mapping, Union

import numpy as np

B64_KEY = "b64"
BYTES_SUFFIX = "_bytes"


class RestError(ValueError):
    """The JSON body is not a request TF Serving's REST API would accept."""


def _input_specs(signature_def) -> Dict[str, Any]:
    """input name -> (numpy dtype, is_string) from a SignatureDef proto."""
    import tensorflow as tf
    specs = {}
    for key, info in signature_def.inputs.items():
        dtype = tf.as_dtype(info.dtype)
        specs[key] = (dtype.as_numpy_dtype if dtype != tf.string else object,
                      dtype == tf.string, dtype.name)
    return specs


def _decode(value: Any, is_string: bool, where: str) -> Any:
    """One JSON value (nested lists allowed) -> Python scalars ready for numpy."""
    if isinstance(value, list):
        return [_decode(v, is_string, where) for v in value]
    if isinstance(value, dict):
        if set(value) == {B64_KEY} and isinstance(value[B64_KEY], str):
            if not is_string:
                raise RestError(f"{where}: a {{\"b64\": ...}} value is only valid for a "
                                "string input")
            try:
                return base64.b64decode(value[B64_KEY], validate=True)
            except ValueError as e:
                raise RestError(f"{where}: invalid base64 in {{\"b64\": ...}} ({e})") from None
        raise RestError(f"{where}: an object is not a tensor value (only {{\"b64\": "
                        f"\"...\"}} is); got keys {sorted(value)}")
    if is_string:
        if not isinstance(value, str):
            raise RestError(f"{where}: the input is a string tensor; got "
                            f"{type(value).__name__} {value!r}")
        return value.encode("utf-8")
    if isinstance(value, str):
        raise RestError(f"{where}: the input is numeric; got the string {value!r}")
    return value


def _to_array(value: Any, spec, where: str) -> np.ndarray:
    np_dtype, is_string, dtype_name = spec
    decoded = _decode(value, is_string, where)
    if is_string:
        array = np.array(decoded, dtype=object)
        if any(isinstance(v, list) for v in array.flat):
            raise RestError(f"{where}: ragged values: every list at one level must have "
                            "the same length")
    else:
        try:
            raw = np.array(decoded)
        except ValueError:   # numpy refuses inhomogeneous nesting outright
            raw = np.array(None, dtype=object)
        if raw.dtype == object:
            raise RestError(f"{where}: ragged values: every list at one level must have "
                            "the same length")
        if np.issubdtype(np.dtype(np_dtype), np.integer) and raw.dtype.kind == "f":
            if not np.all(np.mod(raw, 1) == 0):
                raise RestError(f"{where}: the input is {dtype_name}; got a fraction")
        if np.dtype(np_dtype) == np.bool_ and raw.dtype != np.bool_ and raw.size:
            raise RestError(f"{where}: the input is bool; use true/false")
        array = raw.astype(np_dtype)
    return array


def request_to_tensors(body: Union[str, Mapping[str, Any]],
                       signature_def) -> Dict[str, np.ndarray]:
    """A REST Predict body -> {input name: array}, as TF Serving builds its tensors."""
    if isinstance(body, str):
        body = json.loads(body)
    if not isinstance(body, Mapping):
        raise RestError("the request body must be a JSON object")
    specs = _input_specs(signature_def)
    names = sorted(specs)
    if ("instances" in body) == ("inputs" in body):
        raise RestError('the request must hold exactly one of "instances" (row format) '
                        'or "inputs" (columnar format)')
    if "inputs" in body:
        columns = body["inputs"]
        if len(names) == 1 and not (isinstance(columns, Mapping)
                                    and set(columns) == {names[0]}):
            columns = {names[0]: columns}   # one input: the bare tensor
        return _columns(columns, specs, names)
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise RestError('"instances" must be a non-empty list, one entry per example')
    rows: Dict[str, List[Any]] = {name: [] for name in names}
    for i, instance in enumerate(instances):
        if len(names) == 1 and not (isinstance(instance, Mapping)
                                    and set(instance) == {names[0]}):
            rows[names[0]].append(instance)
            continue
        if not isinstance(instance, Mapping):
            raise RestError(f"instances[{i}]: the signature has inputs {names}; each "
                            "instance must be an object with one key per input")
        missing = [n for n in names if n not in instance]
        unknown = sorted(set(instance) - set(names))
        if missing or unknown:
            raise RestError(f"instances[{i}]: missing inputs {missing}, unknown inputs "
                            f"{unknown}; the signature's inputs are {names}")
        for name in names:
            rows[name].append(instance[name])
    tensors = {}
    for name in names:
        arrays = [_to_array(v, specs[name], f"instances[{i}].{name}")
                  for i, v in enumerate(rows[name])]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise RestError(f"input {name!r}: instances have different shapes "
                            f"{sorted(shapes)}; TF Serving stacks instances and needs "
                            "one shape")
        tensors[name] = np.stack(arrays)
    return tensors


def _columns(columns, specs, names) -> Dict[str, np.ndarray]:
    if not isinstance(columns, Mapping) or set(columns) != set(names):
        raise RestError(f'"inputs" must be an object with the signature\'s inputs {names}')
    return {name: _to_array(columns[name], specs[name], f"inputs.{name}") for name in names}


def _encode(array: np.ndarray, name: str) -> Any:
    if array.dtype == object or array.dtype.kind in "SU":
        def leaf(v):
            raw = v if isinstance(v, bytes) else str(v).encode()
            if name.endswith(BYTES_SUFFIX):
                return {B64_KEY: base64.b64encode(raw).decode("ascii")}
            return raw.decode("utf-8", errors="replace")
        return np.vectorize(leaf, otypes=[object])(array).tolist() if array.size else []
    return array.tolist()


def outputs_to_predictions(outputs: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    """Signature outputs -> the row-format REST response ``{"predictions": [...]}``."""
    names = sorted(outputs)
    batch = {len(np.asarray(outputs[n])) for n in names}
    if len(batch) != 1:
        raise RestError(f"outputs have different batch sizes {sorted(batch)}: TF Serving "
                        'cannot answer in row format (use "inputs" / columnar)')
    encoded = {n: _encode(np.asarray(outputs[n]), n) for n in names}
    rows = []
    for i in range(batch.pop()):
        if len(names) == 1:
            rows.append(encoded[names[0]][i])
        else:
            rows.append({n: encoded[n][i] for n in names})
    return {"predictions": rows}


def instances_from_features(rows: List[Mapping[str, Any]]) -> Dict[str, Any]:
    """Build a row-format body from {feature: value} dicts: bytes become {"b64": ...}."""
    def value(v):
        if isinstance(v, bytes):
            return {B64_KEY: base64.b64encode(v).decode("ascii")}
        if isinstance(v, (list, tuple)):
            return [value(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v
    return {"instances": [{k: value(v) for k, v in row.items()} for row in rows]}
