"""The TensorFlow an export is served by (`serving_runtime`), and whether it can.

A SavedModel loads in TF Serving only if the server's TensorFlow registers every op
of its graphs. An export made with TF 2.21 and served by Vertex AI's newest
prebuilt image (TF 2.15) would pass a check that asks the exporting TF, and fail
at deploy time with "Op type not registered". So the serving check also checks
the export against the op registry of the `serving_runtime` (a config field, the
CLI's `--serving-runtime`): every op of the `serve` MetaGraph's graph and of every
function of its library must be registered there, and every attr of those nodes
must be one that runtime's op declares, unless its value is the default the
exporting TF's op def declares (see `_attr_problem`).

The registries ship as data files, `op_registries/tf-MAJOR.MINOR.json`, dumped
from the real TF wheels by `scripts/make_op_registry.py` (docs/runtimes.md):

    >>> available()
    ('2.14', '2.15', '2.16', '2.21')
    >>> parse_serving_runtime("2.15.1")
    '2.15'

Without `serving_runtime` the check asks the exporting TF only, as the contract
process's `ops` row always has. This module imports no TensorFlow at module level,
so the config can validate the field where a pipeline is defined.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, Dict, List, Optional, Set, Tuple

from export_archive.errors import ConfigError
from export_archive.rows import CheckRow

FIELD = "serving_runtime"
FLAG_PATH = "serving_runtime (--serving-runtime)"
REGISTRY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "op_registries")
CHECK_NAME = "runtime"
# Where an op that no signature reaches runs: TF1's loader imports the whole graph
# (the variables, the restore ops) before any signature is called.
LOAD_GRAPH = "(the graph loaded with the model: variables, restore)"

# Attrs that only name or annotate a node, whose value changes no result. TF drops
# an attr its op def lacks when the graph's producer is newer than the runtime (it
# logs "NodeDef mentions attribute X which is not in the op definition ... This may
# be expected if your graph generating binary is newer than this binary. Unknown
# attributes will be ignored."): for these that is harmless, for any other a
# non-default value would be silently lost, so it is refused. `debug_name` is the
# real case: TF 2.15 added it to VarHandleOp and writes the variable's name into it
# ("dense/kernel/"), so every TF >= 2.15 export of a Keras model carries it; TF 2.14
# logs the line above and serves the model with the same answers (measured:
# tests/integration/test_serving_runtimes.py, docs/runtimes.md).
INFORMATIONAL_ATTRS = {("VarHandleOp", "debug_name"), ("_XlaAotOnlyVarHandleOp", "debug_name")}

_VERSION_RE = re.compile(r"^(?:tf-?)?(\d+)\.(\d+)(?:\.\d+)?\Z")


def available() -> Tuple[str, ...]:
    """The runtimes with a shipped registry, oldest first ("2.14", ...)."""
    found = []
    for name in os.listdir(REGISTRY_DIR):
        match = re.fullmatch(r"tf-(\d+)\.(\d+)\.json", name)
        if match:
            found.append((int(match[1]), int(match[2])))
    return tuple(f"{a}.{b}" for a, b in sorted(found))


def major_minor(version: str) -> Optional[str]:
    """'2.15' for '2.15.1', 'tf-2.15' or '2.15'; None for anything else."""
    match = _VERSION_RE.match(version) if isinstance(version, str) else None
    return f"{match[1]}.{match[2]}" if match else None


def parse_serving_runtime(value: Any, path: str = FIELD) -> str:
    """The config's `serving_runtime` as MAJOR.MINOR; a `ConfigError` naming `path`
    when it is not the version of a shipped registry."""
    allowed = available()
    allowed_text = "a TensorFlow version with a shipped op registry: " + ", ".join(allowed)
    if not isinstance(value, str) or isinstance(value, bool):
        raise ConfigError(path, "wrong type", value, allowed_text,
                          'write the TF of the server as a string, e.g. "2.15", or omit '
                          "the field to check against the exporting TensorFlow")
    version = major_minor(value)
    if version not in allowed:
        older = [v for v in allowed if version and _key(v) < _key(version)]
        hint = (f'use "{older[-1]}" (the newest older runtime with a registry: an export '
                "that serves there serves in newer TF Serving too), or " if older else "")
        raise ConfigError(path, "no op registry for this TensorFlow" if version else
                          "not a TensorFlow version", value, allowed_text,
                          f"{hint}add one with `python scripts/make_op_registry.py X.Y` "
                          "(docs/runtimes.md)")
    return version


def with_serving_runtime(config, value: Any):
    """`config` (an `ExportConfig`) with `serving_runtime` replaced by the CLI flag's."""
    return dataclasses.replace(config, serving_runtime=parse_serving_runtime(value, FLAG_PATH))


def _key(version: str) -> Tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


@functools.lru_cache(maxsize=None)
def load_registry(version: str) -> Dict[str, Any]:
    """{"tensorflow": "2.15.1", "ops": {op: {attr: default text or None}}}."""
    with open(os.path.join(REGISTRY_DIR, f"tf-{version}.json"), encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def _parse_default(text: str):
    # TensorFlow's protos: imported on use, this module's import (config's) stays light.
    from google.protobuf import text_format
    from tensorflow.core.framework import attr_value_pb2
    return text_format.Parse(text, attr_value_pb2.AttrValue())


def _exporter_attr_default(op: str, attr: str, exporter_version: Optional[str]):
    """(declared, default AttrValue or None) of `op`'s `attr` in the exporting TF: its
    shipped registry if there is one, else the op def of the TF in this process."""
    if exporter_version in available():
        attrs = load_registry(exporter_version)["ops"].get(op)
        if attrs is not None:
            if attr not in attrs:
                return False, None
            return True, (_parse_default(attrs[attr]) if attrs[attr] is not None else None)
    # Imports TensorFlow: on use only, this module's import (config's) stays light.
    from tensorflow.python.framework import op_def_registry
    op_def = op_def_registry.get(op)
    for a in (op_def.attr if op_def is not None else ()):
        if a.name == attr:
            return True, (a.default_value if a.HasField("default_value") else None)
    return False, None


# ---- which signatures reach which nodes


def _called_functions(node, functions: Set[str]) -> Set[str]:
    """The library functions a node calls: as its op, or through a func attr
    (PartitionedCall's `f`, While's `body`, If's branches, ...)."""
    called = {node.op} & functions
    for value in node.attr.values():
        if value.HasField("func"):
            called.add(value.func.name)
        elif value.HasField("list"):
            called.update(f.name for f in value.list.func)
    return called & functions


def _reach(meta_graph) -> Tuple[Dict[str, Set[str]], Dict[str, Set[str]]]:
    """(main graph node name -> signatures, function name -> signatures)."""
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    functions = set(library)
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    node_sigs: Dict[str, Set[str]] = {}
    fn_sigs: Dict[str, Set[str]] = {}
    for sig_name, sig in meta_graph.signature_def.items():
        if sig_name.startswith("__"):
            continue   # __saved_model_init_op: part of loading, not a signature
        stack = [info.name.split(":")[0] for info in sig.outputs.values()]
        seen: Set[str] = set()
        calls: Set[str] = set()
        while stack:
            name = stack.pop().lstrip("^")
            if name in seen or name not in nodes:
                continue
            seen.add(name)
            node_sigs.setdefault(name, set()).add(sig_name)
            calls |= _called_functions(nodes[name], functions)
            stack.extend(i.split(":")[0] for i in nodes[name].input)
        done: Set[str] = set()
        while calls:
            fn = calls.pop()
            if fn in done:
                continue
            done.add(fn)
            fn_sigs.setdefault(fn, set()).add(sig_name)
            for node in library[fn].node_def:
                calls |= _called_functions(node, functions) - done
    return node_sigs, fn_sigs


# ---- the check


def _attr_problem(op: str, attr: str, value, runtime_attrs: Dict[str, Any],
                  exporter_version: Optional[str]) -> Optional[str]:
    """Why `op`'s `attr` = `value` would not serve in the runtime, or None.

    An attr the runtime's op declares is fine. One it lacks is fine when its value
    is the default the exporting TF's op def declares: TF's SavedModel writer strips
    default-valued attrs (`strip_graph_default_valued_attrs`, which marks the
    MetaGraph `stripped_default_attrs`), and TF's graph import drops attrs unknown
    to an older runtime when the producer is newer: a default value then means the
    old behaviour that the attr was added with. Any other value would be dropped the
    same way, and the op would run as if it were the default: refused, except the
    informational attrs of INFORMATIONAL_ATTRS.
    """
    if attr.startswith("_") or attr in runtime_attrs:
        return None   # "_"-prefixed attrs are TF's own annotations, in no op def
    if (op, attr) in INFORMATIONAL_ATTRS:
        return None
    declared, default = _exporter_attr_default(op, attr, exporter_version)
    if declared and default is not None and not value.placeholder and value == default:
        return None
    return ("has a non-default value" if declared else
            "is not declared by the exporting TF's op either")


def check_rows(export_dir: str, runtime: Optional[str]) -> List[CheckRow]:
    """The serving check's `runtime` rows: none without a `serving_runtime` (the
    contract process already checks the ops against the exporting TF)."""
    return check_export(export_dir, runtime) if runtime else []


def check_export(export_dir: str, runtime: str) -> List[CheckRow]:
    """Check rows for `export_dir` against `runtime`'s registry (`check_meta_graph`)."""
    # Imports TensorFlow: kept out of this module's import, which config makes.
    from export_archive import saved_model_io
    meta_graph = saved_model_io.find_serve_meta_graph(
        saved_model_io.check_saved_model_proto(export_dir))
    if meta_graph is None:
        raise saved_model_io.SourceError(
            export_dir, "has no saved_model.pb MetaGraph tagged `serve` to check against "
            "the serving_runtime", allowed="a SavedModel written by TensorFlow's SavedModel "
            "writer (binary saved_model.pb)", fix="export the model again")
    return check_meta_graph(meta_graph, runtime)


def check_meta_graph(meta_graph, runtime: str) -> List[CheckRow]:
    """Check rows for a `serve` MetaGraph against `runtime`'s registry: one passing
    row, or one failing row per op (or op attr) the runtime lacks, naming the
    signatures that use it, the TF versions that register it and the fix."""
    registry = load_registry(runtime)
    ops = registry["ops"]
    exporter = major_minor(meta_graph.meta_info_def.tensorflow_version or "")
    node_sigs, fn_sigs = _reach(meta_graph)
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    # (op, attr or None) -> signatures using it
    missing: Dict[Tuple[str, Optional[str]], Set[str]] = {}
    reasons: Dict[Tuple[str, Optional[str]], str] = {}
    op_types: Set[str] = set()
    ignored: Set[str] = set()

    def visit(node, sigs: Set[str]) -> None:
        if node.op in library:
            return   # a call of a library function, checked as one
        op_types.add(node.op)
        where = sigs or {LOAD_GRAPH}
        if node.op not in ops:
            missing.setdefault((node.op, None), set()).update(where)
            return
        for attr, value in node.attr.items():
            reason = _attr_problem(node.op, attr, value, ops[node.op], exporter)
            if reason:
                missing.setdefault((node.op, attr), set()).update(where)
                reasons[(node.op, attr)] = reason
            elif not attr.startswith("_") and attr not in ops[node.op]:
                ignored.add(f"{node.op}.{attr}")

    for node in meta_graph.graph_def.node:
        visit(node, node_sigs.get(node.name, set()))
    for name, fn in library.items():
        for node in fn.node_def:
            visit(node, fn_sigs.get(name, set()))
    label = f"TF {runtime} (serving_runtime; registry of TF {registry['tensorflow']})"
    if not missing:
        detail = f"{len(op_types)} op types and their attrs, all registered in {label}"
        if ignored:
            detail += ("; informational attrs it lacks and drops at load: "
                       + ", ".join(sorted(ignored)))
        return [CheckRow(CHECK_NAME, "", True, detail)]
    rows = []
    for (op, attr), sigs in sorted(missing.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        having = _versions_having(op, attr)
        has_text = ("registered in TF " + ", ".join(having) if having else
                    "in none of the shipped registries (" + ", ".join(available()) + ")")
        newer = [v for v in having if _key(v) > _key(runtime)]
        what = f"op {op!r}" if attr is None else f"attr {attr!r} of op {op!r}"
        problem = ("is not registered in" if attr is None else
                   f"{reasons[(op, attr)]} and is not declared by")
        fix = (f"serve it on TF {newer[0]} or newer and set serving_runtime to that "
               "(Vertex AI has prebuilt images for TF 2.15 and older only: pass "
               "serving_image), or " if newer else "")
        fix += (f"build the model without what uses {op!r}, or export it with the TF "
                f"{runtime} the server runs" if attr is None else
                f"export it with the TF {runtime} the server runs, or build the model "
                f"without the setting that sets {attr!r}")
        if not having and attr is None:
            fix = ("load the op library the op comes from into the server, or build the "
                   f"model without what uses {op!r}")
        consequence = (f"TF Serving {runtime} would fail to load the model (\"Op type not "
                       "registered\")" if attr is None else f"TF Serving {runtime} would drop "
                       "the attr and run the op as if it had its default")
        rows.append(CheckRow(CHECK_NAME, ", ".join(sorted(sigs)), False,
                             f"{FIELD}: {what} {problem} {label}; {has_text}. {consequence}. "
                             f"Fix: {fix}."))
    return rows


def _versions_having(op: str, attr: Optional[str]) -> List[str]:
    out = []
    for version in available():
        attrs = load_registry(version)["ops"].get(op)
        if attrs is not None and (attr is None or attr in attrs):
            out.append(version)
    return out
