"""Describe a SavedModel's signatures as TF Serving sees them (from `saved_model.pb`).

Reads the MetaGraphDef tagged ``serve`` directly from the proto (`saved_model_io`),
so it needs no model code, loads no variables and works on any SavedModel.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

from export_archive.constants import DEFAULT_SIGNATURE
# The readers live in saved_model_io; these names stay importable from here (callers
# and tests read a signature with `describe.signature_def`).
from export_archive.saved_model_io import (  # noqa: F401  (re-exported)
    read_saved_model_proto, read_serve_meta_graph, serve_meta_graph, signature_def,
    signature_defs, tensor_info_text)


@dataclasses.dataclass
class SignatureInfo:
    name: str
    method_name: str
    inputs: Dict[str, str]     # key -> "dtype[dims]"
    outputs: Dict[str, str]

    def to_json(self):
        return dataclasses.asdict(self)


def describe(export_dir: str) -> List[SignatureInfo]:
    """Lists the SavedModel's signatures (name, method, inputs, outputs), sorted by name."""
    signatures = signature_defs(read_serve_meta_graph(export_dir))
    return [SignatureInfo(
        name=name, method_name=sig.method_name,
        inputs={k: tensor_info_text(v) for k, v in sorted(sig.inputs.items())},
        outputs={k: tensor_info_text(v) for k, v in sorted(sig.outputs.items())})
        for name, sig in sorted(signatures.items())]


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
    meta_graph = read_serve_meta_graph(export_dir)
    signatures = signature_defs(meta_graph)
    if DEFAULT_SIGNATURE not in signatures:
        return None
    target = _called_functions(meta_graph, signatures[DEFAULT_SIGNATURE])
    if target is None:
        return None
    for name in sorted(signatures):
        if name != DEFAULT_SIGNATURE and \
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
