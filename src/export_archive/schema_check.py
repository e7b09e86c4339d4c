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
type asked for), ``$value``, ``$found``, ``$key`` (the field named by a missing or
unknown key), ``$limit``, ``$count`` (the value's length), ``$values`` (the allowed
values), ``$first`` (where a repeated item first appears), ``$where`` (the path),
``$suggested`` (a valid name close to the value) and ``$what``.

Which error is reported: the first one `jsonschema` finds, so the schema's keyword
order is the order of the checks (``maxItems`` before ``items``: a 10,000-endpoint
config is refused before any endpoint is read). Inside ``anyOf`` / ``oneOf`` the
first alternative whose type fits the value speaks (a string leaf gets the leaf's
message, not "matches none of the alternatives").
"""

from __future__ import annotations

import functools
import json
import os
import re
import string
from typing import Any, Dict, Optional, Type

from export_archive.errors import _MISSING, InputError

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema")

# The texts of a keyword without x-errors: (problem, received, allowed, fix). A
# received of None is the value itself.
_DEFAULTS = {
    "type": ("must be $expected, not $got", None, "$expected", "write it as $expected"),
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

    def __init__(self, schema: Dict[str, Any], error: Type[InputError], root: str = "<root>"):
        self.schema, self.error, self.root = schema, error, root

    @functools.lru_cache(maxsize=None)
    def _validator(self, definition: Optional[str]):
        # jsonschema is imported on first use, not with this module: where
        # rfc3987-syntax is installed (the pinned lane) its import builds a grammar
        # and takes seconds, and `import export_archive` must stay cheap.
        import jsonschema
        schema = self.schema if definition is None else {
            "$defs": self.schema["$defs"], "$ref": f"#/$defs/{definition}"}
        return jsonschema.Draft202012Validator(schema)

    def validate(self, value: Any, path: str = "", definition: Optional[str] = None) -> None:
        """Raises the first error of `value` (at `path`), built from the schema's texts."""
        error = next(iter(self._validator(definition).iter_errors(value)), None)
        if error is not None:
            raise self.to_error(_speaker(error), path)

    def to_error(self, error, base: str = "") -> InputError:
        """The `InputError` a jsonschema `ValidationError` means, with the schema's texts."""
        keyword, schema, value = error.validator, error.schema, error.instance
        where = base
        for key in error.absolute_path:
            where = join(where, key)
        fields: Dict[str, Any] = {
            "got": type_name(value), "what": schema.get("x-what", "value") if isinstance(
                schema, dict) else "value", "limit": error.validator_value, "where": where,
            "value": value if isinstance(value, str) else json.dumps(value)}
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
                first = seen.setdefault(json.dumps(item, sort_keys=True), i)
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
