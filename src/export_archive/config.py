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
``schema/export_config.schema.json``: every config is validated with it, and every
problem raises `ConfigError` with the texts written beside the rule there
(`schema_check`): the field path (``endpoints[1].input_signature[0]``), what was
received, what is allowed and how to fix it. This module keeps what a schema
cannot say: duplicate keys, the text's size, the limits it cannot count (tensors
per signature, rank), finite tolerances, which serving runtimes ship an op
registry, and the rules that span the document (unique names, `serving_default`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple, Union

from export_archive import runtimes, specs
from export_archive.constants import DEFAULT_SIGNATURE
from export_archive.errors import _MISSING, ConfigError, InputError  # noqa: F401 (re-exported)
from export_archive.schema_check import SchemaCheck, join as _join, load_schema

SCHEMA = load_schema("export_config.schema.json")
_CHECK = SchemaCheck(SCHEMA, ConfigError,
                     values={"runtimes": ", ".join(runtimes.available())})
_DEFS, _TOP = SCHEMA["$defs"], SCHEMA["properties"]
_ENDPOINT = _DEFS["endpoint"]["properties"]


def _alternatives(pattern: str) -> Tuple[str, ...]:
    """The words of a schema pattern's first group, ``^(a|b|layer:...)``."""
    return tuple(w for w in re.search(r"\((.*?)[)]", pattern).group(1).split("|")
                 if re.fullmatch(r"\w+", w))


# The schema's value lists, named for the code that uses them.
# Dtypes of a signature leaf: those `tf.as_dtype` accepts that TF Serving's
# TensorProto can carry as an endpoint input.
DTYPES = _alternatives(_DEFS["spec_leaf"]["allOf"][1]["pattern"])
# features: the model's inputs; tf_example: serialized tf.Examples; raw_features: named
# raw features in (as REST / Vertex clients send `instances`), the Transform graph
# applied in-graph, then the model.
KIND_FEATURES, KIND_TF_EXAMPLE, KIND_RAW_FEATURES = KINDS = tuple(_ENDPOINT["kind"]["enum"])
SPEC_KINDS = (KIND_TF_EXAMPLE, KIND_RAW_FEATURES)  # inputs from a Schema / Transform graph
FN_CALL, FN_SIGNATURE_PREFIX = "call", "signature:"
METHODS = tuple(_ENDPOINT["method"]["enum"])
# What a classify endpoint applies to the model's output before it becomes `scores`.
SCORE_ACTIVATIONS = tuple(_ENDPOINT["score_activation"]["enum"])
VARIABLE_SOURCES = _alternatives(_DEFS["variable_collection"]["properties"]["source"]["pattern"])
# "layer:NAME": a layer of the model, by name (other `track` entries: `module:attr`).
VARIABLE_SOURCE_LAYER_PREFIX = TRACK_LAYER_PREFIX = "layer:"
# Attribute names the saved object already uses (and tf_keras's ExportArchive's
# methods): an endpoint or collection named so would shadow it on reload.
RESERVED_NAMES = frozenset(_DEFS["name"]["not"]["enum"])
SAVE_OPTIONS = tuple(_TOP["save_options"]["properties"])  # tf.saved_model.SaveOptions args
VARIABLE_POLICIES = tuple(
    _TOP["save_options"]["properties"]["experimental_variable_policy"]["enum"])
# The serving check's options (the `check` module) and the contract guard's (the
# `contract` module; used only when a baseline is given).
CHECK_OPTIONS = tuple(_TOP["check"]["properties"])
CHECK_MODES = tuple(_TOP["check"]["properties"]["mode"]["enum"])
CONTRACT_OPTIONS = tuple(_TOP["contract"]["properties"])
ON_BREAKING = tuple(_TOP["contract"]["properties"]["on_breaking"]["enum"])
REQUEST_FIELDS = tuple(_DEFS["request_source"]["properties"])

# Limits: each keeps a hostile or mistaken config from running for minutes or
# writing a huge SavedModel before it fails (every endpoint is a traced function,
# every name is written into the graph several times). The schema states those it
# can; the others are checked here.
MAX_NAME_LENGTH = _DEFS["name"]["maxLength"]   # endpoint, collection, input/output key names
MAX_ENDPOINTS = _TOP["endpoints"]["maxItems"]
MAX_VARIABLE_COLLECTIONS = _TOP["variable_collections"]["maxItems"]
MAX_TRACKED = _TOP["track"]["maxItems"]        # entries of `track`
MAX_SPEC_LEAVES = 1024                         # tensors in one endpoint's input_signature
MAX_RANK = 32                                  # dimensions of one tensor spec
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def _after_prefix(text: str, prefix: str) -> Optional[str]:
    """What follows `prefix` in `text`, or None when `text` does not start with it."""
    return text[len(prefix):] if text.startswith(prefix) else None


class SpecLeaf(specs.TensorSpec):
    """One tensor spec of an input signature, written ``"float32[?,3]"``: the package's
    one tensor-spec type (`specs.TensorSpec`), dense and of known rank, as the schema
    allows."""

    @classmethod
    def parse(cls, text: Any, path: str) -> "SpecLeaf":
        _CHECK.validate(text, path, "spec_leaf")
        return cls._read(text, path)

    @classmethod
    def _read(cls, text: str, path: str) -> "SpecLeaf":
        """A leaf the schema accepted; only the rank is left to check."""
        leaf = cls.from_text(text)
        if len(leaf.shape) > MAX_RANK:
            raise ConfigError(path, f"rank {len(leaf.shape)} is over the limit of {MAX_RANK}",
                              text, f"at most {MAX_RANK} dimensions",
                              "reshape the input to fewer dimensions")
        return leaf


Signature = Union[SpecLeaf, List["Signature"], Dict[str, "Signature"]]


def _map_leaves(fn, value: Any, path: str = "") -> Any:
    """`value` (lists and dicts nested as in an input_signature) with fn(leaf, path) for
    each leaf."""
    if isinstance(value, list):
        return [_map_leaves(fn, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _map_leaves(fn, v, f"{path}.{k}") for k, v in value.items()}
    return fn(value, path)


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
    return _map_leaves(SpecLeaf._read, value, path)


def _count_leaves(value: Any) -> int:
    if isinstance(value, (list, dict)):
        return sum(map(_count_leaves, value.values() if isinstance(value, dict) else value))
    return 1


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
        return _after_prefix(self.fn, FN_SIGNATURE_PREFIX)

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
        fields = {k: dict(v) if isinstance(v, dict) else _tuple(v) for k, v in obj.items()}
        if "input_signature" in obj:
            fields["input_signature"] = tuple(_read_signature(
                obj["input_signature"], _join(path, "input_signature")))
        return cls(**fields)

    def to_json(self) -> Dict[str, Any]:
        return _to_json(self, self.FIELDS, lambda name, value: (
            _map_leaves(lambda leaf, _: str(leaf), list(value)) if name == "input_signature"
            else value))


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _pairs(obj: Dict[str, Any]) -> Tuple[Tuple[str, Any], ...]:
    return tuple((k, _tuple(v)) for k, v in obj.items())


def _plain(pairs: Tuple[Tuple[str, Any], ...]) -> Dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in pairs}


def _to_json(obj: Any, names: Tuple[str, ...], dump) -> Dict[str, Any]:
    """The fields of a config object that differ from their defaults, as JSON values."""
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    out = {}
    for name in names:
        value = getattr(obj, name)
        if value != defaults[name]:
            value = dump(name, value)
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


@dataclasses.dataclass(frozen=True)
class VariableCollectionConfig:
    """Variables saved under ``name`` on the reloaded object (e.g. optimizer state)."""
    name: str
    source: str

    @property
    def layer_name(self) -> Optional[str]:
        return _after_prefix(self.source, VARIABLE_SOURCE_LAYER_PREFIX)

    @classmethod
    def from_json(cls, obj: Dict[str, Any], path: str = "") -> "VariableCollectionConfig":
        """The collection of a config the schema accepted."""
        return cls(**obj)

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


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
    # What endpoint functions use beyond the model ("layer:NAME", "module.path:attr").
    track: Tuple[str, ...] = ()
    # The TF of the server ("2.15"; runtimes.py). None: the exporting TF.
    serving_runtime: Optional[str] = None

    FIELDS = tuple(_TOP)  # in the schema's order

    @classmethod
    def parse(cls, source: Union["ExportConfig", Dict[str, Any], str, bytes, os.PathLike]
              ) -> "ExportConfig":
        """Parses JSON text, UTF-8 bytes, a dict, a JSON file path or an `ExportConfig`."""
        if isinstance(source, ExportConfig):
            return source
        document, path = _CHECK.read(source, MAX_CONFIG_BYTES)
        with _CHECK.in_file(path):
            return cls.from_json(document)

    @classmethod
    def from_json(cls, obj: Any) -> "ExportConfig":
        """A config from its parsed JSON (validated against the schema first)."""
        _CHECK.validate(obj)
        endpoints = tuple(EndpointConfig.from_json(e, f"endpoints[{i}]")
                          for i, e in enumerate(obj["endpoints"]))
        collections = tuple(VariableCollectionConfig.from_json(c)
                            for c in obj.get("variable_collections", ()))
        _check_names(endpoints, collections, obj.get("serving_default"))
        fields = {k: _tuple(v) for k, v in obj.items()}
        fields.update(endpoints=endpoints, variable_collections=collections,
                      save_options=_pairs(obj.get("save_options", {})),
                      check=_read_check(obj.get("check", {})),
                      contract=_pairs(obj.get("contract", {})))
        if obj.get("serving_runtime") is not None:
            fields["serving_runtime"] = runtimes.parse_serving_runtime(obj["serving_runtime"])
        return cls(**fields)

    def to_dict(self) -> Dict[str, Any]:
        dumps = {"endpoints": lambda: [e.to_json() for e in self.endpoints],
                 "variable_collections": lambda: [c.to_json() for c in self.variable_collections],
                 "save_options": lambda: self.save_options_dict,
                 "check": lambda: self.check_dict, "contract": lambda: self.contract_dict}
        return _to_json(self, self.FIELDS,
                        lambda name, value: dumps[name]() if name in dumps else value)

    def to_json(self, indent: Optional[int] = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @property
    def serving_default_name(self) -> str:
        """The endpoint TF Serving calls by default (the seed's rule when unset).

        An endpoint named ``serving_default`` is the default; otherwise the
        `serving_default` field; otherwise the first endpoint.
        """
        names = [e.name for e in self.endpoints]
        if DEFAULT_SIGNATURE in names:
            return DEFAULT_SIGNATURE
        return self.serving_default or names[0]

    def endpoint(self, name: str) -> EndpointConfig:
        for e in self.endpoints:
            if e.name == name:
                return e
        raise KeyError(name)

    @property
    def save_options_dict(self) -> Dict[str, Any]:
        return _plain(self.save_options)

    @property
    def check_dict(self) -> Dict[str, Any]:
        return {k: ([dict(e) for e in v] if k == "requests" else v) for k, v in self.check}

    @property
    def contract_dict(self) -> Dict[str, Any]:
        return _plain(self.contract)


def _check_names(endpoints, collections, serving_default: Optional[str]) -> None:
    """Names unique across endpoints and collections; `serving_default` naming one."""
    seen: Dict[str, str] = {}
    entries = [(f"endpoints[{i}].name", e.name) for i, e in enumerate(endpoints)]
    entries += [(f"variable_collections[{i}].name", c.name) for i, c in enumerate(collections)]
    for path, name in entries:
        if name in seen:
            raise ConfigError(path, f"name already used by `{seen[name]}`", name,
                              "names unique across endpoints and variable collections",
                              "rename one of them")
        seen[name] = path
    names, name = [e.name for e in endpoints], serving_default
    if name is not None and name not in names:
        raise ConfigError("serving_default", "names no endpoint", name, ", ".join(names),
                          "name one of the endpoints")
    if name is not None and DEFAULT_SIGNATURE in names and name != DEFAULT_SIGNATURE:
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
