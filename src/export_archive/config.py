"""The export config: one JSON format for the TFX component, KFP, the CLI and Python.

This module imports no TensorFlow, so a config can be validated where a pipeline
is *defined* (a TFX component constructor, a KFP compile step, a CLI argument
check) without paying TensorFlow's start-up cost.

Example:

>>> cfg = ExportConfig.parse('''{"endpoints": [
...     {"name": "serve", "input_signature": ["float32[?,3]"]},
...     {"name": "call_training", "training": true,
...      "input_signature": ["float32[?,3]"]}]}''')
>>> cfg.serving_default_name
'serve'
>>> ExportConfig.parse(cfg.to_json()) == cfg
True

Every problem raises `ConfigError`, whose message names the field path
(``endpoints[1].input_signature[0]``), what was received, what is allowed and
how to fix it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple, Union

from export_archive.constants import BREAKING_KINDS, COMPATIBLE_KINDS
from export_archive.errors import _MISSING, ConfigError, InputError  # noqa: F401 (re-exported)

# Dtype names a signature leaf may use: the names `tf.as_dtype` accepts that TF
# Serving's TensorProto can carry as an endpoint input.
DTYPES = (
    "bfloat16", "bool", "complex64", "complex128", "float16", "float32",
    "float64", "int8", "int16", "int32", "int64", "string", "uint8",
    "uint16", "uint32", "uint64",
)

KIND_FEATURES = "features"
KIND_TF_EXAMPLE = "tf_example"
# Named raw features in (as REST / Vertex clients send JSON `instances`), the
# Transform graph applied in-graph, then the model.
KIND_RAW_FEATURES = "raw_features"
KINDS = (KIND_FEATURES, KIND_TF_EXAMPLE, KIND_RAW_FEATURES)
# Kinds whose input is parsed or built from a Schema / Transform graph.
SPEC_KINDS = (KIND_TF_EXAMPLE, KIND_RAW_FEATURES)

FN_CALL = "call"
FN_SIGNATURE_PREFIX = "signature:"

METHODS = ("predict", "classify", "regress")
# What a classify endpoint applies to the model's output before it becomes `scores`.
SCORE_ACTIVATIONS = ("none", "softmax", "sigmoid")

VARIABLE_SOURCES = ("optimizer", "trainable", "non_trainable", "all")
VARIABLE_SOURCE_LAYER_PREFIX = "layer:"
# `track` entries: a layer of the model by name, or a `module:attr` (an object to
# track, or a builder called with the model that returns the objects).
TRACK_LAYER_PREFIX = "layer:"

# Attribute names the saved trackable already uses: an endpoint or variable
# collection with one of these names would silently shadow it on reload.
RESERVED_NAMES = frozenset({
    "variables", "trainable_variables", "non_trainable_variables",
    "signatures", "tensorflow_version", "tensorflow_git_version",
    "graph_debug_info",
    # tf_keras's ExportArchive is itself the saved object: an endpoint named like
    # one of its methods replaces the method (and breaks the export).
    "add_endpoint", "add_variable_collection", "concrete_endpoint", "track", "write_out",
})

# `tf.saved_model.SaveOptions` arguments that have a JSON representation,
# with the Python type each must have.
SAVE_OPTIONS = {
    "namespace_whitelist": list,
    "save_debug_info": bool,
    "experimental_io_device": str,
    "experimental_variable_policy": str,
    "experimental_custom_gradients": bool,
    "experimental_image_format": bool,
    "experimental_skip_saver": bool,
}
VARIABLE_POLICIES = ("save_variable_devices", "expand_distributed_variables")

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\Z")
_LEAF_RE = re.compile(r"^\s*([a-z0-9]+)\s*\[([^\]]*)\]\s*$")
_MODULE_ATTR_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*\Z")

# Limits on what a config may ask for. Each one keeps a hostile or mistaken
# config from running for minutes or writing a huge SavedModel before failing:
# every endpoint is a traced function, and every name is written into the graph
# several times (signature key, function names, object graph).
MAX_NAME_LENGTH = 128            # endpoint, variable collection, input/output key names
MAX_ENDPOINTS = 256
MAX_VARIABLE_COLLECTIONS = 256
MAX_TRACKED = 256                # entries of `track`
MAX_SPEC_LEAVES = 1024           # tensors in one endpoint's input_signature
MAX_RANK = 32                    # dimensions of one tensor spec
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            int: "integer", float: "number", type(None): "null"}.get(
                type(value), type(value).__name__)


# --------------------------------------------------------------------------
# Tensor spec leaves: "dtype[dims]".


@dataclasses.dataclass(frozen=True)
class SpecLeaf:
    """One tensor spec of an input signature, written ``"float32[?,3]"``."""
    dtype: str
    shape: Tuple[Optional[int], ...]

    @classmethod
    def parse(cls, text: Any, path: str) -> "SpecLeaf":
        example = 'e.g. "float32[?,3]" (? = unknown size, "string[]" = scalar)'
        if not isinstance(text, str):
            raise ConfigError(path, f"a tensor spec must be a string, not {_type_name(text)}",
                              text, 'a "dtype[dims]" string, a list or an object of them',
                              f"write the spec as a string, {example}")
        match = _LEAF_RE.match(text)
        if not match:
            raise ConfigError(path, "a tensor spec must look like dtype[dims]", text,
                              '"dtype[dims]" with dims a comma-separated list of sizes or ?',
                              f"write it {example}")
        dtype, dims_text = match.group(1), match.group(2).strip()
        if dtype not in DTYPES:
            raise ConfigError(path, f"unknown dtype {dtype!r}", text, ", ".join(DTYPES),
                              "use one of the allowed dtype names")
        shape: List[Optional[int]] = []
        if dims_text:
            for dim in (d.strip() for d in dims_text.split(",")):
                if dim in ("?", "None"):
                    shape.append(None)
                elif dim.isascii() and dim.isdigit() and len(dim) <= 18:
                    shape.append(int(dim))
                else:
                    raise ConfigError(path, f"bad dimension {dim!r}", text,
                                      "non-negative integers or ?",
                                      f"write unknown sizes as ?, {example}")
            if len(shape) > MAX_RANK:
                raise ConfigError(path, f"rank {len(shape)} is over the limit of {MAX_RANK}",
                                  text, f"at most {MAX_RANK} dimensions",
                                  "reshape the input to fewer dimensions")
        return cls(dtype, tuple(shape))

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


Signature = Union[SpecLeaf, List["Signature"], Dict[str, "Signature"]]


def _parse_structure(value: Any, path: str) -> Signature:
    if isinstance(value, list):
        if not value:
            raise ConfigError(path, "a nested list of specs must not be empty", value,
                              "a non-empty list of specs", "remove the empty list or add its specs")
        return [_parse_structure(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not value:
            raise ConfigError(path, "a dict of specs must not be empty", value,
                              "an object mapping input names to specs",
                              "remove the empty object or add its specs")
        out = {}
        for key, v in value.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(path, "dict keys must be non-empty strings", key,
                                  "input names", "name each input")
            out[key] = _parse_structure(v, f"{path}.{key}")
        return out
    return SpecLeaf.parse(value, path)


def _dump_structure(value: Signature) -> Any:
    if isinstance(value, list):
        return [_dump_structure(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump_structure(v) for k, v in value.items()}
    return str(value)


def parse_signature(value: Any, path: str = "input_signature") -> List[Signature]:
    """Parses an input signature: a list with one entry per positional argument."""
    if not isinstance(value, list):
        raise ConfigError(path, "input_signature must be a list with one entry per "
                          "positional argument", value, 'an array, e.g. ["float32[?,3]"]',
                          "wrap the spec in a list")
    if not value:
        raise ConfigError(path, "input_signature must not be empty", value,
                          "at least one positional argument",
                          "list the inputs, or omit input_signature to infer it from the model")
    leaves = _count_leaves(value)
    if leaves > MAX_SPEC_LEAVES:
        raise ConfigError(path, f"input_signature has {leaves} tensor specs, over the limit "
                          f"of {MAX_SPEC_LEAVES}", f"{leaves} specs",
                          f"at most {MAX_SPEC_LEAVES} tensors per endpoint",
                          "group inputs into fewer, larger tensors")
    return [_parse_structure(v, f"{path}[{i}]") for i, v in enumerate(value)]


def _count_leaves(value: Any) -> int:
    # Iterative: a deeply nested value must not hit the recursion limit here.
    count, stack = 0, [value]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
        else:
            count += 1
    return count


# --------------------------------------------------------------------------
# Small typed readers for the JSON objects.


class _Reader:
    """Reads the fields of one JSON object, tracking which ones were used."""

    def __init__(self, obj: Any, path: str, what: str, allowed: Tuple[str, ...]):
        if not isinstance(obj, dict):
            raise ConfigError(path or "<root>", f"{what} must be a JSON object, not "
                              f"{_type_name(obj)}", obj, "an object", f"write {what} as {{...}}")
        unknown = [k for k in obj if k not in allowed]
        if unknown:
            raise ConfigError(_join(path, str(unknown[0]) or '""'), f"unknown field in {what}",
                              unknown[0], ", ".join(allowed),
                              "remove it or correct its spelling")
        self.obj, self.path = obj, path

    def get(self, key: str, kind: type, default: Any = _MISSING, required: bool = False):
        path = _join(self.path, key)
        if key not in self.obj:
            if required:
                raise ConfigError(path, "required field is missing", fix=f"add `{key}`")
            return default
        value = self.obj[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise ConfigError(path, f"must be {_kind_name(kind)}, not {_type_name(value)}",
                              value, _kind_name(kind), f"write `{key}` as {_kind_name(kind)}")
        return value

    def name(self, key: str, required: bool = True, default=None) -> Optional[str]:
        value = self.get(key, str, default=default, required=required)
        if value is None:
            return None
        _check_length(_join(self.path, key), value)
        if not _NAME_RE.match(value):
            raise ConfigError(_join(self.path, key), "not a valid name", value,
                              "a letter followed by letters, digits or _ (it becomes a "
                              "signature key and a Python attribute)", "rename it, e.g. "
                              f"{_suggest_name(value)!r}")
        return value

    def strings(self, key: str) -> Tuple[str, ...]:
        values = self.get(key, list, default=[])
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{_join(self.path, key)}[{i}]", "must be a non-empty string",
                                  v, "strings", "write each entry as a string")
        return tuple(values)


def _check_length(path: str, name: str) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(path, f"name is {len(name)} characters long, over the limit of "
                          f"{MAX_NAME_LENGTH}", name, f"at most {MAX_NAME_LENGTH} characters",
                          "use a shorter name (it becomes a signature key that clients "
                          "type, and is written into the graph several times)")


def _kind_name(kind: type) -> str:
    return {str: "a string", bool: "a boolean (true/false)", list: "an array",
            dict: "an object", int: "an integer"}[kind]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _suggest_name(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", value).lstrip("_0123456789")
    return cleaned or "serve"


def _one_of(path: str, value: str, allowed: Tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ConfigError(path, f"unknown {what}", value, ", ".join(allowed),
                          f"use one of the allowed values")
    return value


# --------------------------------------------------------------------------
# The config objects.


@dataclasses.dataclass(frozen=True)
class EndpointConfig:
    """One serving endpoint (one SavedModel signature and one reloadable method)."""
    name: str
    fn: str = FN_CALL
    kind: str = KIND_FEATURES
    training: bool = False
    input_signature: Optional[Tuple[Signature, ...]] = None
    output_keys: Optional[Tuple[str, ...]] = None
    transform: bool = False
    exclude_features: Tuple[str, ...] = ()
    method: str = "predict"
    input_keys: Optional[Tuple[str, ...]] = None
    # classify only: class labels (a list), or {"vocabulary": NAME} of the Transform graph.
    classes: Optional[Any] = None
    score_activation: str = "none"

    FIELDS = ("name", "fn", "kind", "training", "input_signature", "output_keys",
              "input_keys", "transform", "exclude_features", "method", "classes",
              "score_activation")

    @property
    def classes_vocabulary(self) -> Optional[str]:
        """For ``classes: {"vocabulary": NAME}``, the Transform vocabulary's NAME."""
        return self.classes.get("vocabulary") if isinstance(self.classes, dict) else None

    @property
    def is_call(self) -> bool:
        return self.fn == FN_CALL

    @property
    def signature_name(self) -> Optional[str]:
        """For ``fn: "signature:NAME"``, the source signature's NAME."""
        if self.fn.startswith(FN_SIGNATURE_PREFIX):
            return self.fn[len(FN_SIGNATURE_PREFIX):]
        return None

    @property
    def factory(self) -> Optional[Tuple[str, str]]:
        """For ``fn: "module:attr"``, the (module, attribute) pair."""
        if self.is_call or self.signature_name is not None:
            return None
        module, attr = self.fn.split(":")
        return module, attr

    @classmethod
    def from_json(cls, obj: Any, path: str) -> "EndpointConfig":
        r = _Reader(obj, path, "an endpoint", cls.FIELDS)
        name = r.name("name")
        fn = r.get("fn", str, default=FN_CALL)
        if fn != FN_CALL:
            if fn.startswith(FN_SIGNATURE_PREFIX):
                if not fn[len(FN_SIGNATURE_PREFIX):]:
                    raise ConfigError(_join(path, "fn"), "signature name is empty", fn,
                                      '"signature:NAME"', 'write e.g. "signature:serving_default"')
            elif not _MODULE_ATTR_RE.match(fn):
                raise ConfigError(_join(path, "fn"), "unknown endpoint function", fn,
                                  '"call", "signature:NAME" or "module.path:factory"',
                                  'use "call" for the model itself, or name a factory '
                                  'as "my_module:make_serving_fn"')
        kind = _one_of(_join(path, "kind"), r.get("kind", str, default=KIND_FEATURES),
                       KINDS, "endpoint kind")
        training = r.get("training", bool, default=False)
        if training and fn != FN_CALL:
            raise ConfigError(_join(path, "training"), "training applies only to "
                              '`fn: "call"`', training, 'true only with fn "call"',
                              "remove `training`, or set fn to \"call\"")
        signature = None
        if "input_signature" in r.obj:
            if kind in SPEC_KINDS:
                raise ConfigError(_join(path, "input_signature"), f"a {kind} endpoint's "
                                  "inputs come from the Schema / Transform graph (tf_example: "
                                  "one string[?] of serialized tf.Examples; raw_features: one "
                                  "named input per raw feature)", r.obj["input_signature"],
                                  f"no input_signature with kind {kind}",
                                  "remove input_signature")
            signature = tuple(parse_signature(r.obj["input_signature"],
                                              _join(path, "input_signature")))
        output_keys = None
        if "output_keys" in r.obj:
            output_keys = r.strings("output_keys")
            if not output_keys:
                raise ConfigError(_join(path, "output_keys"), "must not be empty", [],
                                  "one key per output", "list the keys, or omit the field")
            for i, key in enumerate(output_keys):
                _check_length(f"{_join(path, 'output_keys')}[{i}]", key)
            dup = _first_duplicate(output_keys)
            if dup is not None:
                raise ConfigError(_join(path, "output_keys"), "duplicate output key", dup,
                                  "distinct keys", "rename one of them")
        input_keys = None
        if "input_keys" in r.obj:
            if kind != KIND_FEATURES:
                raise ConfigError(_join(path, "input_keys"), f"a {kind} endpoint's input "
                                  "names are fixed (tf_example: examples / inputs; "
                                  "raw_features: the feature names)", r.obj["input_keys"],
                                  "input_keys on features endpoints only",
                                  "remove input_keys")
            input_keys = r.strings("input_keys")
            dup = _first_duplicate(input_keys)
            if not input_keys or dup is not None:
                raise ConfigError(_join(path, "input_keys"), "must list distinct names",
                                  list(input_keys), "one distinct name per input tensor",
                                  "list the names, or omit the field")
            for i, key in enumerate(input_keys):
                _check_length(f"{_join(path, 'input_keys')}[{i}]", key)
                if not _NAME_RE.match(key):
                    raise ConfigError(f"{_join(path, 'input_keys')}[{i}]", "not a valid "
                                      "input name", key, "a letter followed by letters, "
                                      "digits or _ (TF Serving's REST API keys instances "
                                      "by it)", f"rename it, e.g. {_suggest_name(key)!r}")
        spec_only = {"transform": r.get("transform", bool, default=False),
                     "exclude_features": r.strings("exclude_features")}
        if kind not in SPEC_KINDS:
            for key in spec_only:
                if key in r.obj:
                    raise ConfigError(_join(path, key), f"`{key}` applies only to "
                                      "tf_example and raw_features endpoints", r.obj[key],
                                      '`"kind": "tf_example"` or `"raw_features"` endpoints',
                                      f'add "kind": "tf_example", or remove `{key}`')
        method = _one_of(_join(path, "method"), r.get("method", str, default="predict"),
                         METHODS, "method")
        if "method" in r.obj and kind != KIND_TF_EXAMPLE:
            raise ConfigError(_join(path, "method"), "`method` applies only to tf_example "
                              "endpoints (TF Serving's Classify and Regress APIs take "
                              "tf.Examples)", r.obj["method"], '`"kind": "tf_example"` '
                              "endpoints", 'add "kind": "tf_example", or remove `method`')
        classes = _classes(r, path)
        score_activation = _one_of(
            _join(path, "score_activation"), r.get("score_activation", str, default="none"),
            SCORE_ACTIVATIONS, "score activation")
        for key in ("classes", "score_activation"):
            if key in r.obj and method != "classify":
                raise ConfigError(_join(path, key), f"`{key}` applies only to classify "
                                  "endpoints", r.obj[key], '`"method": "classify"` on a '
                                  "tf_example endpoint", f'set "method": "classify", or '
                                  f"remove `{key}`")
        return cls(name=name, fn=fn, kind=kind, training=training,
                   input_signature=signature, output_keys=output_keys, method=method,
                   input_keys=input_keys, classes=classes, score_activation=score_activation,
                   **spec_only)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name}
        if self.fn != FN_CALL:
            out["fn"] = self.fn
        if self.kind != KIND_FEATURES:
            out["kind"] = self.kind
        if self.training:
            out["training"] = True
        if self.input_signature is not None:
            out["input_signature"] = [_dump_structure(s) for s in self.input_signature]
        if self.output_keys is not None:
            out["output_keys"] = list(self.output_keys)
        if self.input_keys is not None:
            out["input_keys"] = list(self.input_keys)
        if self.kind in SPEC_KINDS:
            if self.transform:
                out["transform"] = True
            if self.exclude_features:
                out["exclude_features"] = list(self.exclude_features)
            if self.method != "predict":
                out["method"] = self.method
        if self.classes is not None:
            out["classes"] = (dict(self.classes) if isinstance(self.classes, dict)
                              else list(self.classes))
        if self.score_activation != "none":
            out["score_activation"] = self.score_activation
        return out


def _classes(r: "_Reader", path: str) -> Optional[Any]:
    """`classes`: a list of distinct labels, or {"vocabulary": NAME} (Transform's)."""
    if "classes" not in r.obj:
        return None
    value, where = r.obj["classes"], _join(path, "classes")
    if isinstance(value, dict):
        sub = _Reader(value, where, "classes", ("vocabulary",))
        return {"vocabulary": sub.get("vocabulary", str, required=True)}
    labels = r.strings("classes")
    dup = _first_duplicate(labels)
    if not labels or dup is not None:
        raise ConfigError(where, "must list distinct class labels", list(labels),
                          'a list such as ["Adelie", "Chinstrap", "Gentoo"], or '
                          '{"vocabulary": "NAME"} of the Transform graph',
                          "list each class once, in the order of the model's outputs")
    return labels


@dataclasses.dataclass(frozen=True)
class VariableCollectionConfig:
    """Variables saved under ``name`` on the reloaded object (e.g. optimizer state)."""
    name: str
    source: str

    @property
    def layer_name(self) -> Optional[str]:
        if self.source.startswith(VARIABLE_SOURCE_LAYER_PREFIX):
            return self.source[len(VARIABLE_SOURCE_LAYER_PREFIX):]
        return None

    @classmethod
    def from_json(cls, obj: Any, path: str) -> "VariableCollectionConfig":
        r = _Reader(obj, path, "a variable collection", ("name", "source"))
        name = r.name("name")
        source = r.get("source", str, required=True)
        is_layer = source.startswith(VARIABLE_SOURCE_LAYER_PREFIX) and len(source) > len(
            VARIABLE_SOURCE_LAYER_PREFIX)
        if source not in VARIABLE_SOURCES and not is_layer:
            raise ConfigError(_join(path, "source"), "unknown variable source", source,
                              ", ".join(VARIABLE_SOURCES) + ", layer:NAME",
                              'use e.g. "optimizer" or "layer:dense_1"')
        return cls(name=name, source=source)

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "source": self.source}


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """A parsed, validated export config.

    Build one with `ExportConfig.parse` from JSON text, a dict, a path to a JSON
    file, or another `ExportConfig`; `to_json` gives back text that parses to an
    equal config.
    """
    endpoints: Tuple[EndpointConfig, ...]
    serving_default: Optional[str] = None
    variable_collections: Tuple[VariableCollectionConfig, ...] = ()
    save_options: Tuple[Tuple[str, Any], ...] = ()
    import_modules: Tuple[str, ...] = ()
    allow_unsafe_deserialization: bool = False
    check: Tuple[Tuple[str, Any], ...] = ()
    contract: Tuple[Tuple[str, Any], ...] = ()
    # Extra objects the archive tracks (ExportArchive.track): "layer:NAME" or
    # "module.path:attr". Whatever an endpoint's function uses beyond the model
    # (a lookup table, a preprocessing layer applied before it) must be tracked.
    track: Tuple[str, ...] = ()
    # The TF of the server ("2.15"): the check refuses ops and attrs its registry
    # lacks (runtimes.py). None: the exporting TF.
    serving_runtime: Optional[str] = None

    FIELDS = ("endpoints", "serving_default", "variable_collections", "save_options",
              "import_modules", "allow_unsafe_deserialization", "check", "contract",
              "track", "serving_runtime")

    # ---- construction

    @classmethod
    def parse(cls, source: Union["ExportConfig", Dict[str, Any], str, os.PathLike]) -> "ExportConfig":
        """Parses JSON text, a dict, a JSON file path or an `ExportConfig`."""
        if isinstance(source, ExportConfig):
            return source
        if isinstance(source, os.PathLike):
            return cls._from_file(os.fspath(source))
        if isinstance(source, (str, bytes)):
            try:
                text = source.decode("utf-8") if isinstance(source, bytes) else source
            except UnicodeDecodeError as e:
                raise ConfigError("<root>", f"not UTF-8 text ({e.reason})", source[:50],
                                  "UTF-8 JSON text", "save the config as UTF-8") from None
            stripped = text.lstrip()
            if not stripped.startswith(("{", "[")) and stripped:
                return cls._from_file(text)
            return cls._from_text(text)
        return cls._from_json_checked(source)

    @classmethod
    def _from_text(cls, text: str) -> "ExportConfig":
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError("<root>", f"the config is {len(text)} characters long, over "
                              f"the limit of {MAX_CONFIG_BYTES}", f"{len(text)} characters",
                              f"at most {MAX_CONFIG_BYTES} characters",
                              "check that the right file was given")
        try:
            source = json.loads(text, object_pairs_hook=_KeyedObject.from_pairs)
        except json.JSONDecodeError as e:
            raise ConfigError("<root>", f"not valid JSON ({e.msg} at line {e.lineno} "
                              f"column {e.colno})", text,
                              "a JSON object", "fix the JSON syntax") from None
        except RecursionError:
            raise _too_deep() from None
        _refuse_duplicate_keys(source)
        return cls._from_json_checked(source)

    @classmethod
    def _from_json_checked(cls, obj: Any) -> "ExportConfig":
        try:
            return cls.from_json(obj)
        except RecursionError:
            raise _too_deep() from None

    @classmethod
    def _from_file(cls, path: str) -> "ExportConfig":
        try:
            with open(path, encoding="utf-8") as f:
                # One character more than the limit is enough to refuse it.
                text = f.read(MAX_CONFIG_BYTES + 1)
        except (OSError, ValueError) as e:  # ValueError: NUL in the path, or not UTF-8
            raise ConfigError("<file>", "cannot read config file "
                              f"({getattr(e, 'strerror', None) or e})", path,
                              "a readable UTF-8 JSON file, JSON text or a dict",
                              "check the path") from None
        try:
            return cls._from_text(text if text.strip() else "{}")
        except ConfigError as e:
            raise ConfigError(e.path, f"{e.problem} (in {path})", e.received, e.allowed,
                              e.fix) from None

    @classmethod
    def from_json(cls, obj: Any) -> "ExportConfig":
        r = _Reader(obj, "", "the export config", cls.FIELDS)
        raw_endpoints = r.get("endpoints", list, required=True)
        if not raw_endpoints:
            raise ConfigError("endpoints", "at least one endpoint is required", [],
                              "a non-empty array of endpoints",
                              'add e.g. {"name": "serve"}')
        # Checked before any endpoint is read: each endpoint costs a trace at export.
        _check_count("endpoints", raw_endpoints, MAX_ENDPOINTS, "endpoints")
        _check_count("variable_collections", r.obj.get("variable_collections"),
                     MAX_VARIABLE_COLLECTIONS, "variable collections")
        _check_count("track", r.obj.get("track"), MAX_TRACKED, "tracked objects")
        endpoints = tuple(EndpointConfig.from_json(e, f"endpoints[{i}]")
                          for i, e in enumerate(raw_endpoints))
        collections = tuple(
            VariableCollectionConfig.from_json(c, f"variable_collections[{i}]")
            for i, c in enumerate(r.get("variable_collections", list, default=[])))
        _check_names(endpoints, collections)

        serving_default = r.name("serving_default", required=False)
        names = [e.name for e in endpoints]
        if serving_default is not None:
            if serving_default not in names:
                raise ConfigError("serving_default", "names no endpoint", serving_default,
                                  ", ".join(names), "name one of the endpoints")
            if "serving_default" in names and serving_default != "serving_default":
                raise ConfigError("serving_default", "an endpoint is already named "
                                  "serving_default, so it is the default", serving_default,
                                  '"serving_default" or omit the field',
                                  "rename that endpoint, or drop this field")

        save_options = _parse_save_options(r.get("save_options", dict, default={}))
        modules = r.strings("import_modules")
        for i, m in enumerate(modules):
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z", m):
                raise ConfigError(f"import_modules[{i}]", "not a module name", m,
                                  "a dotted Python module path", 'write e.g. "my_pkg.layers"')
        unsafe = r.get("allow_unsafe_deserialization", bool, default=False)
        check = _parse_check(r.get("check", dict, default={}))
        contract = _parse_contract(r.get("contract", dict, default={}))
        track = _parse_track(r)
        from export_archive.runtimes import parse_serving_runtime  # no TensorFlow
        runtime = (parse_serving_runtime(r.obj["serving_runtime"])
                   if r.obj.get("serving_runtime") is not None else None)
        return cls(endpoints=endpoints, serving_default=serving_default,
                   variable_collections=collections, save_options=save_options,
                   import_modules=modules, allow_unsafe_deserialization=unsafe, check=check,
                   contract=contract, track=track, serving_runtime=runtime)

    # ---- serialization

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"endpoints": [e.to_json() for e in self.endpoints]}
        if self.serving_default is not None:
            out["serving_default"] = self.serving_default
        if self.variable_collections:
            out["variable_collections"] = [c.to_json() for c in self.variable_collections]
        if self.save_options:
            out["save_options"] = {k: (list(v) if isinstance(v, tuple) else v)
                                   for k, v in self.save_options}
        if self.import_modules:
            out["import_modules"] = list(self.import_modules)
        if self.allow_unsafe_deserialization:
            out["allow_unsafe_deserialization"] = True
        if self.check:
            out["check"] = self.check_dict
        if self.contract:
            out["contract"] = {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in self.contract}
        if self.track:
            out["track"] = list(self.track)
        if self.serving_runtime is not None:
            out["serving_runtime"] = self.serving_runtime
        return out

    def to_json(self, indent: Optional[int] = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    # ---- derived facts

    @property
    def serving_default_name(self) -> str:
        """The endpoint TF Serving calls by default (the seed's rule when unset).

        An endpoint named ``serving_default`` is the default; otherwise the
        `serving_default` field; otherwise the first endpoint.
        """
        names = [e.name for e in self.endpoints]
        if "serving_default" in names:
            return "serving_default"
        return self.serving_default or names[0]

    def endpoint(self, name: str) -> EndpointConfig:
        for e in self.endpoints:
            if e.name == name:
                return e
        raise KeyError(name)

    @property
    def save_options_dict(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.save_options}

    @property
    def check_dict(self) -> Dict[str, Any]:
        return {k: ([dict(e) for e in v] if k == "requests" else v) for k, v in self.check}

    @property
    def contract_dict(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.contract}


class _KeyedObject(dict):
    """A parsed JSON object that remembers the first key it saw twice.

    `json.loads` keeps the last value of a repeated key; a config where
    `"name"` or `"input_signature"` appears twice would then silently mean
    something other than what its first reader saw.
    """

    duplicate: Optional[str] = None

    @classmethod
    def from_pairs(cls, pairs) -> "_KeyedObject":
        obj = cls()
        for key, value in pairs:
            if key in obj and obj.duplicate is None:
                obj.duplicate = key
            obj[key] = value
        return obj


def _refuse_duplicate_keys(value: Any) -> None:
    # Iterative, outermost first, so the reported path is the shallowest repeat.
    queue = collections.deque([("", value)])
    while queue:
        path, node = queue.popleft()
        if isinstance(node, _KeyedObject) and node.duplicate is not None:
            key = node.duplicate
            raise ConfigError(_join(path, key), f"key {key!r} appears more than once in "
                              f"the same object{' (the root)' if not path else ''}", key,
                              "each key once per object",
                              "remove the repeated key, keeping the value you mean "
                              "(JSON parsers disagree on which one wins)")
        if isinstance(node, dict):
            queue.extend((_join(path, str(k)), v) for k, v in node.items())
        elif isinstance(node, list):
            queue.extend((f"{path}[{i}]" if path else f"[{i}]", v)
                         for i, v in enumerate(node))


def _check_count(path: str, values: Any, limit: int, what: str) -> None:
    if isinstance(values, list) and len(values) > limit:
        raise ConfigError(path, f"{len(values)} {what}, over the limit of {limit}",
                          f"{len(values)} {what}", f"at most {limit} {what}",
                          f"split the export, or serve fewer {what} from one model "
                          "(TF Serving loads every signature of a SavedModel)")


def _too_deep() -> ConfigError:
    return ConfigError("<root>", "nested too deeply", allowed="a config of ordinary depth",
                       fix="flatten the input_signature")


def _first_duplicate(values) -> Optional[str]:
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def _check_names(endpoints, collections) -> None:
    seen: Dict[str, str] = {}
    entries = [(f"endpoints[{i}].name", e.name) for i, e in enumerate(endpoints)]
    entries += [(f"variable_collections[{i}].name", c.name) for i, c in enumerate(collections)]
    for path, name in entries:
        if name in RESERVED_NAMES:
            raise ConfigError(path, "name is reserved by the SavedModel object", name,
                              "any other name; reserved: " + ", ".join(sorted(RESERVED_NAMES)),
                              f"rename it, e.g. {name + '_fn' if path.startswith('endpoints') else 'my_' + name!r}")
        if name in seen:
            raise ConfigError(path, f"name already used by `{seen[name]}`", name,
                              "names unique across endpoints and variable collections",
                              "rename one of them")
        seen[name] = path


def _parse_track(r: "_Reader") -> Tuple[str, ...]:
    """`track`: "layer:NAME" or "module.path:attr" entries, each once."""
    entries = r.strings("track")
    example = '"layer:string_lookup" or "my_pkg.serving:vocab_table"'
    for i, entry in enumerate(entries):
        path = f"track[{i}]"
        if entry.startswith(TRACK_LAYER_PREFIX):
            if len(entry) == len(TRACK_LAYER_PREFIX):
                raise ConfigError(path, "the layer name is empty", entry,
                                  '"layer:NAME" with the name of a layer of the model',
                                  f"write e.g. {example}")
        elif not _MODULE_ATTR_RE.match(entry):
            raise ConfigError(path, "not a layer or an importable object", entry,
                              '"layer:NAME" (a layer of the model) or "module.path:attr" '
                              "(a trackable object such as a lookup table or a Keras "
                              "layer, or a builder called with the model that returns "
                              "them)", f"write e.g. {example}")
        first = entries.index(entry)
        if first != i:
            raise ConfigError(path, f"already listed as `track[{first}]`", entry,
                              "each object once", "remove the repeated entry")
    return entries


def _parse_save_options(obj: Dict[str, Any]) -> Tuple[Tuple[str, Any], ...]:
    out = []
    for key, value in obj.items():
        path = f"save_options.{key}"
        if key not in SAVE_OPTIONS:
            raise ConfigError(path, "unknown SaveOptions argument", key,
                              ", ".join(SAVE_OPTIONS), "remove it or correct its spelling")
        kind = SAVE_OPTIONS[key]
        if not isinstance(value, kind):
            raise ConfigError(path, f"must be {_kind_name(kind)}", value, _kind_name(kind),
                              f"write `{key}` as {_kind_name(kind)}")
        if key == "namespace_whitelist":
            for i, v in enumerate(value):
                if not isinstance(v, str) or not v:
                    raise ConfigError(f"{path}[{i}]", "must be a non-empty string", v,
                                      "op namespace names", 'write e.g. "Addons"')
            value = tuple(value)
        if key == "experimental_variable_policy":
            _one_of(path, value, VARIABLE_POLICIES, "variable policy")
        out.append((key, value))
    return tuple(out)


# The serving-check options (see the `check` module). Parsed here so that a bad
# option fails at pipeline definition like any other field.
CHECK_OPTIONS = {"mode": str, "rtol": (int, float), "atol": (int, float),
                 "warmup": bool, "enabled": bool,
                 # The user's own requests (warmup file, REST bodies, tf.Examples):
                 # parsed by `user_requests.parse_entries`.
                 "requests": list}
CHECK_MODES = ("fail", "warn")


def _parse_check(obj: Dict[str, Any]) -> Tuple[Tuple[str, Any], ...]:
    out = []
    for key, value in obj.items():
        path = f"check.{key}"
        if key not in CHECK_OPTIONS:
            raise ConfigError(path, "unknown check option", key, ", ".join(CHECK_OPTIONS),
                              "remove it or correct its spelling")
        kind = CHECK_OPTIONS[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(path, "wrong type", value,
                              "a number" if isinstance(kind, tuple) else _kind_name(kind),
                              f"correct `{key}`")
        if key == "mode":
            _one_of(path, value, CHECK_MODES, "check mode")
        if key == "requests":
            from export_archive.user_requests import parse_entries  # no TensorFlow
            value = parse_entries(value, path)
        if key in ("rtol", "atol") and not 0 <= value < float("inf"):
            raise ConfigError(path, "tolerance must be finite and >= 0", value, ">= 0",
                              "use a tolerance such as 1e-5")
        out.append((key, value))
    return tuple(out)


# The contract guard's options (see the `contract` module): what happens when the
# new model would break the clients of the baseline model, and which breaks are
# intended. Only used when a baseline is given (first runs have none).
CONTRACT_OPTIONS = ("on_breaking", "allow")
ON_BREAKING = ("fail", "warn")
_ALLOW_RE = re.compile(r"^([^:\s]+):(\S+)\Z")


def _parse_contract(obj: Dict[str, Any]) -> Tuple[Tuple[str, Any], ...]:
    r = _Reader(obj, "contract", "the contract section", tuple(CONTRACT_OPTIONS))
    out = []
    if "on_breaking" in obj:
        out.append(("on_breaking", _one_of("contract.on_breaking", r.get("on_breaking", str),
                                           ON_BREAKING, "on_breaking value")))
    if "allow" in obj:
        out.append(("allow", check_allowed_breaks(r.get("allow", list), "contract.allow")))
    return tuple(out)


def check_allowed_breaks(entries: List[Any], field: str) -> Tuple[str, ...]:
    """The allowed-break ids (`KIND:PATH`, wildcards allowed) of `contract.allow` or the
    CLI's `diff --allow`, checked; a bad one raises `ConfigError` at `field[i]`."""
    for i, entry in enumerate(entries):
        _check_allow_entry(f"{field}[{i}]", entry)
    return tuple(entries)


def _check_allow_entry(path: str, entry: Any) -> None:
    example = '"input_renamed:serve/inputs/x" or "*:serve_features/*"'
    if not isinstance(entry, str):
        raise ConfigError(path, f"must be a string, not {_type_name(entry)}", entry,
                          "a change id KIND:PATH as `export-archive diff` prints it",
                          f"write it as a string, e.g. {example}")
    match = _ALLOW_RE.match(entry)
    if not match:
        raise ConfigError(path, "an allowed break is named KIND:PATH", entry,
                          "a change id as `export-archive diff` prints it (shell-style "
                          "wildcards allowed)", f"write e.g. {example}")
    kind = match.group(1)
    if kind in COMPATIBLE_KINDS:
        raise ConfigError(path, f"{kind!r} is a compatible change, which needs no allowing",
                          entry, "a breaking kind: " + ", ".join(BREAKING_KINDS),
                          "remove the entry")
    if kind not in BREAKING_KINDS and not any(c in kind for c in "*?["):
        raise ConfigError(path, f"unknown change kind {kind!r}", entry,
                          ", ".join(BREAKING_KINDS) + " (or a wildcard)",
                          "copy the id from `export-archive diff OLD NEW`")
