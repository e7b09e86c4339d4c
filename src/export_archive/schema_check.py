"""JSON Schema validation whose errors read like the project's own: where, problem, fix.

A shipped JSON Schema (``schema/*.schema.json``) is the one source of truth of a
config format; `SchemaCheck` validates a document with `jsonschema` and turns the
first error into the caller's `InputError` class. The texts live in the schema,
beside the rule they explain, in keywords other validators ignore:

* ``"x-errors": {KEYWORD: {"problem": ..., "received": ..., "allowed": ..., "fix": ...}}``
  (or ``KEYWORD: "problem"``): the texts of that keyword's error in this subschema.
  ``"find": REGEX`` puts the first match (its group 1) of the value in ``$found``;
  ``"at_item": true`` (uniqueItems) points the error at the repeated item.
* ``"x-what"``: what the object or value is (``"an endpoint"``, ``"check mode"``),
  used by the default texts (``unknown field in $what``, ``unknown $what``).

Texts are `string.Template`s: ``$got`` (the value's JSON type), ``$expected`` (the
type asked for), ``$value``, ``$found``, ``$key`` (the field: the missing or unknown
key, else the last name of the path), ``$limit``, ``$count`` (the value's length),
``$values`` (the allowed values), ``$first`` (where a repeated item first appears),
``$where`` (the path), ``$suggested`` (a valid name close to the value), ``$what``,
and any the caller passes for data a schema cannot hold (``$runtimes``).

Which error is reported: the first one `jsonschema` finds, so the schema's keyword
order is the order of the checks (``maxItems`` before ``items``: a 10,000-endpoint
config is refused before any endpoint is read). Inside ``anyOf`` / ``oneOf`` the
first alternative whose type fits the value speaks (a string leaf gets the leaf's
message, not "matches none of the alternatives").
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import re
import string
import sys
from typing import Any, Dict, Iterator, Optional, Tuple, Type

from export_archive.errors import _MISSING, InputError

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema")

# The texts of a keyword without x-errors: (problem, received, allowed, fix). A
# received of None is the value itself.
_DEFAULTS = {
    "type": ("must be $expected, not $got", None, "$expected", "write `$key` as $expected"),
    "required": ("required field is missing", _MISSING, None, "add `$key`"),
    "additionalProperties": ("unknown field in $what", "$key", "$properties",
                             "remove it or correct its spelling"),
    "enum": ("unknown $what", None, "$values", "use one of the allowed values"),
    "maxItems": ("$count $what, over the limit of $limit", "$count $what", "at most $limit $what",
                 None),
    "minItems": ("must not be empty", None, "at least $limit entries", "add the entries"),
    "minLength": ("must be a non-empty string", None, "a non-empty string", "fill it in"),
    "maxLength": ("$count characters long, over the limit of $limit", None,
                  "at most $limit characters", "shorten it"),
    "uniqueItems": ("lists an entry twice", None, "each entry once", "remove the repeated entry"),
    "minimum": ("must be >= $limit", None, ">= $limit", "use a larger value"),
    "maximum": ("must be <= $limit", None, "<= $limit", "use a smaller value"),
}
_TYPE_PHRASES = {"string": "a string", "boolean": "a boolean (true/false)", "array": "an array",
                 "object": "an object", "integer": "an integer", "number": "a number",
                 "null": "null"}


def type_name(value: Any) -> str:
    """The JSON type of a parsed value ("object", "array", ..., "null")."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def suggest_name(value: Any) -> str:
    """A name made of the letters, digits and _ of `value`, starting with a letter."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", str(value)).lstrip("_0123456789")
    return cleaned or "serve"


def join(path: str, key: Any) -> str:
    """``path.key`` / ``path[i]``, the field paths of the messages."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def load_schema(name: str) -> Dict[str, Any]:
    with open(os.path.join(SCHEMA_DIR, name), encoding="utf-8") as f:
        return json.load(f)


class SchemaCheck:
    """Validates documents against `schema` (or one of its ``$defs``), raising `error`.

    >>> from export_archive.errors import ConfigError
    >>> check = SchemaCheck({"type": "object", "x-what": "the section",
    ...                      "additionalProperties": False,
    ...                      "properties": {"mode": {"enum": ["fail", "warn"],
    ...                                              "x-what": "mode"}}}, ConfigError)
    >>> check.validate({"mode": "loud"}, "check")
    Traceback (most recent call last):
    ...
    export_archive.errors.ConfigError: export config field `check.mode`: unknown mode. \
received "loud". allowed: fail, warn. fix: use one of the allowed values.
    """

    def __init__(self, schema: Dict[str, Any], error: Type[InputError], root: str = "<root>",
                 values: Optional[Dict[str, str]] = None):
        # `values`: more $names for the texts, from data the schema cannot hold.
        self.schema, self.error, self.root, self.values = schema, error, root, values or {}

    @functools.lru_cache(maxsize=None)
    def _validator(self, definition: Optional[str]):
        jsonschema = _import_jsonschema()
        schema = self.schema if definition is None else {
            "$defs": self.schema["$defs"], "$ref": f"#/$defs/{definition}"}
        return jsonschema.Draft202012Validator(schema)

    def validate(self, value: Any, path: str = "", definition: Optional[str] = None) -> None:
        """Raises the first error of `value` (at `path`), built from the schema's texts."""
        try:
            error = next(iter(self._validator(definition).iter_errors(value)), None)
        except RecursionError:
            raise self.too_deep() from None
        if error is not None:
            raise self.to_error(_speaker(error), path)

    def read(self, source: Any, max_chars: int) -> Tuple[Any, Optional[str]]:
        """A document from JSON text, UTF-8 bytes, a file path (a str not starting like
        JSON, or an os.PathLike) or an already parsed value; and the file it came from."""
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
            return self._read_file(source, max_chars), source
        if isinstance(source, bytes):
            try:
                source = source.decode("utf-8")
            except UnicodeDecodeError as e:
                raise self.error(self.root, f"not UTF-8 text ({e.reason})", source[:50],
                                 "UTF-8 JSON text", "save the config as UTF-8") from None
        if isinstance(source, str):
            stripped = source.lstrip()
            if stripped and not stripped.startswith(("{", "[")):
                return self._read_file(source, max_chars), source
            return self.loads(source, max_chars), None
        return source, None

    def _read_file(self, path: str, max_chars: int) -> Any:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(max_chars + 1)  # one more than the limit is enough to refuse it
        except (OSError, ValueError) as e:  # ValueError: NUL in the path, or not UTF-8
            raise self.error("<file>", "cannot read config file "
                             f"({getattr(e, 'strerror', None) or e})", path,
                             "a readable UTF-8 JSON file, JSON text or a dict",
                             "check the path") from None
        with self.in_file(path):
            return self.loads(text if text.strip() else "{}", max_chars)

    @contextlib.contextmanager
    def in_file(self, path: Optional[str]) -> Iterator[None]:
        """Errors raised inside also name the file the document came from (if any)."""
        try:
            yield
        except self.error as e:
            if path is None:
                raise
            raise self.error(e.where, f"{e.problem} (in {path})", e.received, e.allowed,
                             e.fix) from None

    def loads(self, text: str, max_chars: int) -> Any:
        """JSON text -> its value. Refuses text over `max_chars`, invalid JSON, and a key
        repeated in one object: `json.loads` keeps the last value, so a document where
        `"name"` appears twice would silently mean something else than its first
        reader saw (JSON parsers disagree on which one wins)."""
        if len(text) > max_chars:
            raise self.error(self.root, f"the config is {len(text)} characters long, over "
                             f"the limit of {max_chars}", f"{len(text)} characters",
                             f"at most {max_chars} characters",
                             "check that the right file was given")
        try:
            value = json.loads(text, object_pairs_hook=_KeyedObject.from_pairs)
        except json.JSONDecodeError as e:
            raise self.error(self.root, f"not valid JSON ({e.msg} at line {e.lineno} column "
                             f"{e.colno})", text, "a JSON object", "fix the JSON syntax") from None
        except RecursionError:
            raise self.too_deep() from None
        # Breadth first, so the reported path is the shallowest repeat.
        queue = collections.deque([("", value)])
        while queue:
            path, node = queue.popleft()
            key = getattr(node, "duplicate", None)
            if key is not None:
                raise self.error(join(path, key), f"key {key!r} appears more than once in the "
                                 f"same object{'' if path else ' (the root)'}", key,
                                 "each key once per object", "remove the repeated key, "
                                 "keeping the value you mean (JSON parsers disagree on which "
                                 "one wins)")
            items = node.items() if isinstance(node, dict) else enumerate(
                node if isinstance(node, list) else ())
            queue.extend((join(path, k) if path or isinstance(k, str) else f"[{k}]", v)
                         for k, v in items)
        return value

    def too_deep(self) -> InputError:
        return self.error(self.root, "nested too deeply", allowed="a document of ordinary depth",
                          fix="flatten the nested lists and objects")

    def to_error(self, error, base: str = "") -> InputError:
        """The `InputError` a jsonschema `ValidationError` means, with the schema's texts."""
        keyword, schema, value = error.validator, error.schema, error.instance
        where = base
        for key in error.absolute_path:
            where = join(where, key)
        path = list(error.absolute_path)
        fields: Dict[str, Any] = {
            **self.values, "key": path[-1] if path and isinstance(path[-1], str) else where,
            "got": type_name(value), "what": schema.get("x-what", "value") if isinstance(
                schema, dict) else "value", "limit": error.validator_value, "where": where,
            "value": value if isinstance(value, str) else json.dumps(value, default=repr)}
        if isinstance(value, (str, list, dict)):
            fields["count"] = len(value)
        texts = schema.get("x-errors", {}).get(keyword, {}) if isinstance(schema, dict) else {}
        texts = {"problem": texts} if isinstance(texts, str) else texts
        if keyword == "type":
            types = error.validator_value
            types = [types] if isinstance(types, str) else types
            fields["expected"] = " or ".join(_TYPE_PHRASES.get(t, t) for t in types)
        elif keyword == "required":
            fields["key"] = next(k for k in error.validator_value if k not in value)
            where = join(where, fields["key"])
        elif keyword == "additionalProperties":
            known = schema.get("properties", {})
            fields["key"] = next(k for k in value if k not in known)
            fields["properties"] = ", ".join(known)
            where = join(where, fields["key"] or '""')
        elif keyword == "uniqueItems":
            seen: Dict[str, int] = {}
            for i, item in enumerate(value):
                first = seen.setdefault(json.dumps(item, sort_keys=True, default=repr), i)
                if first != i:
                    fields.update(first=first, dup=item)
                    if texts.get("at_item"):
                        where, value = join(where, i), item
                    break
        elif keyword in ("enum", "not"):
            allowed = error.validator_value
            allowed = allowed.get("enum", ()) if isinstance(allowed, dict) else allowed
            fields["values"] = ", ".join(str(v) for v in allowed)
        if "find" in texts and isinstance(value, str):
            match = re.search(texts["find"], value)
            fields["found"] = repr(match.group(1) if match and match.groups() else
                                   match.group(0) if match else value)
        if isinstance(value, str):
            fields["suggested"] = repr(suggest_name(value))
        problem, received, allowed, fix = _DEFAULTS.get(
            keyword, (error.message, None, None, "see the config's documentation"))
        received = texts.get("received", received)
        if received is None:
            received = value
        elif isinstance(received, str):
            received = _fill(received, fields)
        return self.error(where or self.root, _fill(texts.get("problem", problem), fields),
                          received, _fill(texts.get("allowed", allowed), fields),
                          _fill(texts.get("fix", fix), fields))


def _fill(text: Optional[str], fields: Dict[str, Any]) -> Optional[str]:
    if text is None:
        return None
    return string.Template(text).safe_substitute({k: str(v) for k, v in fields.items()})

class _KeyedObject(dict):
    """A parsed JSON object that remembers the first key it saw twice."""

    duplicate: Optional[str] = None

    @classmethod
    def from_pairs(cls, pairs) -> "_KeyedObject":
        obj = cls()
        for key, value in pairs:
            if key in obj and obj.duplicate is None:
                obj.duplicate = key
            obj[key] = value
        return obj


def _speaker(error):
    """The error that says what is wrong: inside anyOf / oneOf, the first alternative
    whose type fits the value (else the first alternative's own type error)."""
    while error.validator in ("anyOf", "oneOf") and error.context:
        branches: Dict[Any, list] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        ordered = [branches[k] for k in sorted(branches)]
        fitting = [b for b in ordered
                   if not any(e.validator == "type" and not e.relative_path for e in b)]
        error = (fitting or ordered)[0][0]
    return error


def _import_jsonschema():
    """jsonschema, imported without rfc3987-syntax.

    jsonschema imports rfc3987-syntax, where installed (it is in the pinned lane), to
    check the "iri" formats, which no schema of ours uses; that import builds 38 Lark
    grammars and takes 3-9 s, in every CLI process and check. jsonschema treats the
    module as optional, so it is hidden for this import and put back afterwards.
    Imported here, not with this module, so `import export_archive` stays cheap.
    """
    if "jsonschema" in sys.modules:
        return sys.modules["jsonschema"]
    hide = "rfc3987_syntax" not in sys.modules
    if hide:
        sys.modules["rfc3987_syntax"] = None   # `import` raises ImportError
    try:
        import jsonschema   # on first use: keeps `import export_archive` cheap (above)
    finally:
        if hide:
            del sys.modules["rfc3987_syntax"]
    return jsonschema
