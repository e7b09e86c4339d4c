"""Endpoint outputs TF Serving can return, checked where the archive is built.

TF Serving answers Predict with one ``TensorProto`` per signature output
(``servables/tensorflow/predict_util.cc`` fetches each output's tensor name and
serializes the dense tensor). So an output must be one dense tensor:

* a composite tensor (``tf.RaggedTensor``, ``tf.SparseTensor``, any
  ``ExtensionType``) becomes a signature output whose TensorInfo has no tensor
  name, only a ``composite_tensor`` encoding (dtype ``DT_INVALID``): the server
  cannot fetch it, and a REST client cannot be answered;
* ``DT_RESOURCE`` and ``DT_VARIANT`` tensors are handles to in-process objects
  (a variable, a dataset, a list): no client can use them (the serving check's
  ``UNSERVABLE_DTYPES``).

REST answers are narrower still: `rest.py`'s writer (TF Serving's json_tensor.cc)
writes float, double, int8/16/32/64, uint8/32/64, bool and string tensors only
(not half, bfloat16, complex or uint16, which gRPC can carry). Those stay
exportable, since gRPC clients can use them.

`refuse_unservable` runs on each endpoint's traced function in
`writer.build_archive`, so it holds with the serving check off too.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import tensorflow as tf

from export_archive.config import ConfigError

UNSERVABLE_DTYPES = (tf.resource, tf.variant)
SUPPORTED = ("dense tensors (tf.Tensor) of a dtype a TensorProto can carry: float, "
             "double, half, bfloat16, int8/16/32/64, uint8/16/32/64, bool, string, "
             "complex (REST answers: not half, bfloat16, complex or uint16)")


class UnservableOutputError(ConfigError):
    """An endpoint returns something TF Serving cannot send back."""


def _outputs(concrete) -> List[Tuple[str, Any]]:
    """(signature output key, value) pairs, keyed as the saved signature keys them."""
    structure = concrete.structured_outputs
    if isinstance(structure, dict):
        out = []
        for key, value in structure.items():
            flat = tf.nest.flatten(value)
            out += [(str(key), v) for v in flat] if len(flat) == 1 else [
                (f"{key}[{i}]", v) for i, v in enumerate(flat)]
        return out
    return [(f"output_{i}", v) for i, v in enumerate(tf.nest.flatten(structure))]


def _fix(value: Any, key: str) -> str:
    if isinstance(value, tf.RaggedTensor):
        return (f"return `{key}.to_tensor()` (padded to a dense tensor, with a "
                "default_value if 0 is a real value), or split it into two dense outputs, "
                f"e.g. {{'{key}_values': x.flat_values, '{key}_row_lengths': "
                "x.row_lengths()}, that a client rebuilds with tf.RaggedTensor."
                "from_row_lengths")
    if isinstance(value, tf.SparseTensor):
        return (f"return `tf.sparse.to_dense({key})`, or split it into dense outputs "
                f"'{key}_indices', '{key}_values' and '{key}_dense_shape' (x.indices, "
                "x.values, x.dense_shape)")
    if isinstance(value, tf.Tensor):
        return ("return the value behind the handle (read the variable, decode or "
                "materialize the dataset/list into a dense tensor), not the handle")
    return "return the composite's components as separate dense tensors"


def refuse_unservable(concrete, name: str, where: str) -> None:
    """Raises `UnservableOutputError` naming `where` (``endpoints[i]``) when the
    traced endpoint `name` returns an output TF Serving cannot return."""
    for key, value in _outputs(concrete):
        if isinstance(value, tf.Tensor):
            if value.dtype not in UNSERVABLE_DTYPES:
                continue
            what = f"a {value.dtype.name} tensor (DT_{value.dtype.name.upper()})"
            received = f"{value.dtype.name}{value.shape}"
        elif isinstance(value, (tf.RaggedTensor, tf.SparseTensor)) or hasattr(value,
                                                                               "_type_spec"):
            kind = type(value).__name__
            what = (f"a {kind} (a composite tensor: its signature output has no tensor, "
                    "dtype DT_INVALID)")
            dtype = getattr(value, "dtype", None)
            received = f"{kind} {getattr(dtype, 'name', '')}{getattr(value, 'shape', '')}"
        else:
            continue   # a Python constant: Keras' own trace refuses it
        raise UnservableOutputError(
            where, f"endpoint {name!r} returns output {key!r} as {what}, which TF Serving "
            "cannot return (Predict and REST answer with one dense TensorProto per "
            "output)", received, SUPPORTED, _fix(value, key))
