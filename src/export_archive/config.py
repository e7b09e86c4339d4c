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

The format's one source of truth is its JSON Schema,
``schema/export_config.schema.json``: every config is validated with it, and its
errors carry the texts written beside each rule there (`schema_check`). This
module keeps what a schema cannot say: duplicate keys, the size of the text, the
limits it cannot count (tensors per signature, rank), finite tolerances, which
serving runtimes ship an op registry, and the rules that span the document
(unique names, `serving_default`).

Every problem raises `ConfigError`, whose message names the field path
(``endpoints[1].input_signature[0]``), what was received, what is allowed and
how to fix it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple, Union

from export_archive import runtimes
from export_archive.errors import _MISSING, ConfigError, InputError  # noqa: F401 (re-exported)
from export_archive.schema_check import SchemaCheck, join as _join, load_schema

SCHEMA = load_schema("export_config.schema.json")
_CHECK = SchemaCheck(SCHEMA, ConfigError)
_DEFS, _TOP = SCHEMA["$defs"], SCHEMA["properties"]
_ENDPOINT = _DEFS["endpoint"]["properties"]


def _enum(schema: Dict[str, Any]) -> Tuple[str, ...]:
    return tuple(schema["enum"])


def _alternatives(pattern: str) -> Tuple[str, ...]:
    """The literal words of a schema pattern's first group, ``^(a|b|c...)``."""
    return tuple(w for w in re.search(r"\((.*?)[)]", pattern).group(1).split("|")
                 if re.fullmatch(r"\w+", w))


# The schema's value lists, named for the code that uses them.
# Dtype names a signature leaf may use: the names `tf.as_dtype` accepts that TF
# Serving's TensorProto can carry as an endpoint input.
DTYPES = _alternatives(_DEFS["spec_leaf"]["allOf"][1]["pattern"])
KIND_FEATURES = "features"
KIND_TF_EXAMPLE = "tf_example"
# Named raw features in (as REST / Vertex clients send JSON `instances`), the
# Transform graph applied in-graph, then the model.
KIND_RAW_FEATURES = "raw_features"
KINDS = _enum(_ENDPOINT["kind"])
# Kinds whose input is parsed or built from a Schema / Transform graph.
SPEC_KINDS = (KIND_TF_EXAMPLE, KIND_RAW_FEATURES)
FN_CALL = "call"
FN_SIGNATURE_PREFIX = "signature:"
METHODS = _enum(_ENDPOINT["method"])
# What a classify endpoint applies to the model's output before it becomes `scores`.
SCORE_ACTIVATIONS = _enum(_ENDPOINT["score_activation"])
VARIABLE_SOURCES = _alternatives(
    _DEFS["variable_collection"]["properties"]["source"]["pattern"])
VARIABLE_SOURCE_LAYER_PREFIX = "layer:"
# `track` entries: a layer of the model by name, or a `module:attr` (an object to
# track, or a builder called with the model that returns the objects).
TRACK_LAYER_PREFIX = "layer:"
# Attribute names the saved trackable already uses (and tf_keras's ExportArchive's
# own methods): an endpoint or variable collection with one of these names would
# shadow it on reload.
RESERVED_NAMES = frozenset(_DEFS["name"]["not"]["enum"])
# `tf.saved_model.SaveOptions` arguments that have a JSON representation.
SAVE_OPTIONS = tuple(_TOP["save_options"]["properties"])
VARIABLE_POLICIES = _enum(_TOP["save_options"]["properties"]["experimental_variable_policy"])
# The serving-check options (see the `check` module) and the contract guard's
# (see the `contract` module; used only when a baseline is given).
CHECK_OPTIONS = tuple(_TOP["check"]["properties"])
CHECK_MODES = _enum(_TOP["check"]["properties"]["mode"])
CONTRACT_OPTIONS = tuple(_TOP["contract"]["properties"])
ON_BREAKING = _enum(_TOP["contract"]["properties"]["on_breaking"])
REQUEST_FIELDS = tuple(_DEFS["request_source"]["properties"])

# Limits on what a config may ask for. Each one keeps a hostile or mistaken
# config from running for minutes or writing a huge SavedModel before failing:
# every endpoint is a traced function, and every name is written into the graph
# several times (signature key, function names, object graph). The schema holds
# those it can state; the others are checked here.
MAX_NAME_LENGTH = _DEFS["name"]["maxLength"]   # endpoint, collection, input/output key names
MAX_ENDPOINTS = _TOP["endpoints"]["maxItems"]
MAX_VARIABLE_COLLECTIONS = _TOP["variable_collections"]["maxItems"]
MAX_TRACKED = _TOP["track"]["maxItems"]        # entries of `track`
MAX_SPEC_LEAVES = 1024           # tensors in one endpoint's input_signature
MAX_RANK = 32                    # dimensions of one tensor spec
MAX_CONFIG_BYTES = 4 * 1024 * 1024


# --------------------------------------------------------------------------
# Tensor spec leaves: "dtype[dims]".


@dataclasses.dataclass(frozen=True)
class SpecLeaf:
    """One tensor spec of an input signature, written ``"float32[?,3]"``."""
    dtype: str
    shape: Tuple[Optional[int], ...]

    @classmethod
    def parse(cls, text: Any, path: str) -> "SpecLeaf":
        _CHECK.validate(text, path, "spec_leaf")
        return cls._read(text, path)

    @classmethod
    def _read(cls, text: str, path: str) -> "SpecLeaf":
        """A leaf the schema accepted; only the rank is left to check."""
        dtype, dims = text.strip()[:-1].split("[", 1)
        shape = tuple(None if d.strip() in ("?", "None") else int(d)
                      for d in dims.split(",")) if dims.strip() else ()
        if len(shape) > MAX_RANK:
            raise ConfigError(path, f"rank {len(shape)} is over the limit of {MAX_RANK}",
                              text, f"at most {MAX_RANK} dimensions",
                              "reshape the input to fewer dimensions")
        return cls(dtype.strip(), shape)

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


Signature = Union[SpecLeaf, List["Signature"], Dict[str, "Signature"]]


def _read_structure(value: Any, path: str) -> Signature:
    if isinstance(value, list):
        return [_read_structure(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _read_structure(v, f"{path}.{k}") for k, v in value.items()}
    return SpecLeaf._read(value, path)


def _dump_structure(value: Signature) -> Any:
    if isinstance(value, list):
        return [_dump_structure(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump_structure(v) for k, v in value.items()}
    return str(value)


def parse_signature(value: Any, path: str = "input_signature") -> List[Signature]:
    """Parses an input signature: a list with one entry per positional argument."""
    _CHECK.validate(value, path, "input_signature")
    return _read_signature(value, path)


def _read_signature(value: List[Any], path: str) -> List[Signature]:
    leaves = _count_leaves(value)
    if leaves > MAX_SPEC_LEAVES:
        raise ConfigError(path, f"input_signature has {leaves} tensor specs, over the limit "
                          f"of {MAX_SPEC_LEAVES}", f"{leaves} specs",
                          f"at most {MAX_SPEC_LEAVES} tensors per endpoint",
                          "group inputs into fewer, larger tensors")
    return [_read_structure(v, f"{path}[{i}]") for i, v in enumerate(value)]


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
    def from_json(cls, obj: Dict[str, Any], path: str) -> "EndpointConfig":
        """The endpoint of a config the schema accepted (`ExportConfig.parse` validates)."""
        signature, classes = obj.get("input_signature"), obj.get("classes")
        return cls(
            name=obj["name"], fn=obj.get("fn", FN_CALL), kind=obj.get("kind", KIND_FEATURES),
            training=obj.get("training", False),
            input_signature=None if signature is None else tuple(
                _read_signature(signature, _join(path, "input_signature"))),
            output_keys=_tuple(obj.get("output_keys")), input_keys=_tuple(obj.get("input_keys")),
            transform=obj.get("transform", False),
            exclude_features=tuple(obj.get("exclude_features", ())),
            method=obj.get("method", "predict"),
            classes=dict(classes) if isinstance(classes, dict) else _tuple(classes),
            score_activation=obj.get("score_activation", "none"))

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


def _tuple(values: Optional[List[Any]]) -> Optional[Tuple[Any, ...]]:
    return None if values is None else tuple(values)


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
    def from_json(cls, obj: Dict[str, Any], path: str = "") -> "VariableCollectionConfig":
        """The collection of a config the schema accepted."""
        return cls(name=obj["name"], source=obj["source"])

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
        """A config from its parsed JSON (validated against the schema first)."""
        _CHECK.validate(obj)
        endpoints = tuple(EndpointConfig.from_json(e, f"endpoints[{i}]")
                          for i, e in enumerate(obj["endpoints"]))
        collections = tuple(VariableCollectionConfig.from_json(c)
                            for c in obj.get("variable_collections", ()))
        _check_names(endpoints, collections)
        _check_serving_default(obj.get("serving_default"), [e.name for e in endpoints])
        runtime = obj.get("serving_runtime")
        return cls(
            endpoints=endpoints, serving_default=obj.get("serving_default"),
            variable_collections=collections,
            save_options=tuple((k, _tuple(v) if isinstance(v, list) else v)
                               for k, v in obj.get("save_options", {}).items()),
            import_modules=tuple(obj.get("import_modules", ())),
            allow_unsafe_deserialization=obj.get("allow_unsafe_deserialization", False),
            check=_read_check(obj.get("check", {})),
            contract=tuple((k, _tuple(obj["contract"][k]) if k == "allow" else obj["contract"][k])
                           for k in CONTRACT_OPTIONS if k in obj.get("contract", {})),
            track=tuple(obj.get("track", ())),
            serving_runtime=None if runtime is None else runtimes.parse_serving_runtime(runtime))

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


def _too_deep() -> ConfigError:
    return ConfigError("<root>", "nested too deeply", allowed="a config of ordinary depth",
                       fix="flatten the input_signature")


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


def _check_serving_default(name: Optional[str], names: List[str]) -> None:
    if name is None:
        return
    if name not in names:
        raise ConfigError("serving_default", "names no endpoint", name, ", ".join(names),
                          "name one of the endpoints")
    if "serving_default" in names and name != "serving_default":
        raise ConfigError("serving_default", "an endpoint is already named serving_default, "
                          "so it is the default", name, '"serving_default" or omit the field',
                          "rename that endpoint, or drop this field")


def _read_check(obj: Dict[str, Any]) -> Tuple[Tuple[str, Any], ...]:
    """`check`, with the request sources as (key, value) pairs in a fixed order."""
    for key in ("rtol", "atol"):
        if key in obj and not math.isfinite(obj[key]):
            raise ConfigError(f"check.{key}", "tolerance must be finite and >= 0", obj[key],
                              ">= 0", "use a tolerance such as 1e-5")
    return tuple((key, tuple(tuple((f, e[f]) for f in REQUEST_FIELDS if f in e) for e in value)
                  if key == "requests" else value) for key, value in obj.items())


def check_allowed_breaks(entries: List[Any], field: str) -> Tuple[str, ...]:
    """The allowed-break ids (`KIND:PATH`, wildcards allowed) of `contract.allow` or the
    CLI's `diff --allow`, checked; a bad one raises `ConfigError` at `field[i]`."""
    for i, entry in enumerate(entries):
        _CHECK.validate(entry, f"{field}[{i}]", "allowed_break")
    return tuple(entries)
