"""Describe a SavedModel's signatures as TF Serving sees them (from `saved_model.pb`).

Reads the MetaGraphDef tagged ``serve`` directly from the proto, so it needs no
model code, loads no variables and works on any SavedModel.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from export_archive.constants import DEFAULT_SIGNATURE, SERVE_TAG


@dataclasses.dataclass
class SignatureInfo:
    name: str
    method_name: str
    inputs: Dict[str, str]     # key -> "dtype[dims]"
    outputs: Dict[str, str]

    def to_json(self):
        return dataclasses.asdict(self)


def _tensor_info_text(info) -> str:
    dtype = tf.as_dtype(info.dtype).name if info.dtype else "unknown"
    if info.tensor_shape.unknown_rank:
        return f"{dtype}[*]"
    dims = ",".join("?" if d.size < 0 else str(d.size) for d in info.tensor_shape.dim)
    return f"{dtype}[{dims}]"


def read_saved_model_proto(export_dir: str) -> saved_model_pb2.SavedModel:
    path = os.path.join(export_dir, "saved_model.pb")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{export_dir} is not a SavedModel directory: "
                                f"{path} does not exist.")
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def serve_meta_graph(proto: saved_model_pb2.SavedModel):
    for meta_graph in proto.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    tags = [list(m.meta_info_def.tags) for m in proto.meta_graphs]
    raise ValueError(f"The SavedModel has no MetaGraph tagged {SERVE_TAG!r} "
                     f"(TF Serving loads that one); it has tag sets {tags}.")


def signature_def(export_dir: str, name: str):
    """The SignatureDef proto `name` of a SavedModel, as TF Serving reads it (e.g. for
    `rest.request_to_tensors`)."""
    signatures = serve_meta_graph(read_saved_model_proto(export_dir)).signature_def
    if name not in signatures:
        raise KeyError(f"{export_dir} has no signature {name!r}; it has "
                       f"{sorted(k for k in signatures if not k.startswith('__'))}")
    return signatures[name]


def describe(export_dir: str) -> List[SignatureInfo]:
    """Lists the SavedModel's signatures (name, method, inputs, outputs), sorted by name."""
    meta_graph = serve_meta_graph(read_saved_model_proto(export_dir))
    out = []
    for name in sorted(meta_graph.signature_def):
        if name.startswith("__"):
            continue  # TF-internal (e.g. __saved_model_init_op); TF Serving hides these too.
        sig = meta_graph.signature_def[name]
        out.append(SignatureInfo(
            name=name, method_name=sig.method_name,
            inputs={k: _tensor_info_text(v) for k, v in sorted(sig.inputs.items())},
            outputs={k: _tensor_info_text(v) for k, v in sorted(sig.outputs.items())}))
    return out



def _called_functions(meta_graph, signature_def) -> Optional[frozenset]:
    """The functions a TF2 signature's wrapper calls: the endpoint it serves."""
    if not signature_def.outputs:
        return None
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    node = nodes.get(next(iter(signature_def.outputs.values())).name.split(":")[0])
    wrapper = library.get(node.attr["f"].func.name) if node is not None else None
    if wrapper is None:
        return None
    called = frozenset(n.attr["f"].func.name for n in wrapper.node_def if "f" in n.attr)
    return called or None


def serving_default_alias(export_dir: str) -> Optional[str]:
    """Which signature `serving_default` serves too (TF2 saves an alias as a second
    wrapper around the same endpoint function); None when it is its own endpoint."""
    meta_graph = serve_meta_graph(read_saved_model_proto(export_dir))
    signatures = meta_graph.signature_def
    if DEFAULT_SIGNATURE not in signatures:
        return None
    target = _called_functions(meta_graph, signatures[DEFAULT_SIGNATURE])
    if target is None:
        return None
    for name in sorted(signatures):
        if name not in (DEFAULT_SIGNATURE,) and not name.startswith("__") and \
                _called_functions(meta_graph, signatures[name]) == target:
            return name
    return None


def signature_line(signature) -> str:
    """One signature on one line, in `format_signatures`' notation (``key: dtype[dims]``):
    ``serve(features: float32[?,3]) -> scores: float32[?,2]``; a classify or regress
    signature ends with its method, ``(classify)``. `signature`: a SignatureInfo or
    anything with the same fields (`export`'s EndpointResult)."""
    def tensors(specs: Dict[str, str]) -> str:
        return ", ".join(f"{key}: {spec}" for key, spec in specs.items())
    method = signature.method_name.rsplit("/", 1)[-1]
    suffix = "" if method == "predict" else f" ({method})"
    return (f"{signature.name}({tensors(signature.inputs)}) -> "
            f"{tensors(signature.outputs)}{suffix}")


def format_signatures(signatures: List[SignatureInfo],
                      serving_default_of: Optional[str] = None) -> str:
    lines = []
    for sig in signatures:
        alias = (f" = {serving_default_of!r}, what TF Serving calls when a request names "
                 "no signature" if sig.name == DEFAULT_SIGNATURE and serving_default_of
                 else "")
        lines.append(f"signature {sig.name!r} ({sig.method_name}){alias}")
        for key, spec in sig.inputs.items():
            lines.append(f"  input  {key}: {spec}")
        for key, spec in sig.outputs.items():
            lines.append(f"  output {key}: {spec}")
    return "\n".join(lines)
