"""TF Serving's REST API bodies, converted exactly as TF Serving converts them.

The spec is TF Serving's own code, not its documentation:
``tensorflow_serving/util/json_tensor.cc`` (JSON <-> tensors and tf.Examples),
``model_servers/http_rest_api_handler.cc`` (which body goes where, how an error is
answered) and ``model_servers/http_server.cc`` (status code -> HTTP status). Its unit
test, ``util/json_tensor_test.cc``, is ported case by case in
``tests/integration/test_rest_tf_serving.py``.

Requests (:predict, :classify, :regress)::

    >>> request = parse_predict_request('{"instances": [[1, 2], [3, 4]]}', signature_def)
    >>> request.format, request.inputs["x"].shape            # doctest: +SKIP
    ('row', (2, 2))
    >>> parse_classify_request('{"examples": [{"age": 20, "name": "a"}]}')  # doctest: +SKIP
    <ClassificationRequest with one tf.Example>

Responses::

    >>> tensors_to_json({"y": np.float32([0.0003, 9e6])}, ROW)   # doctest: +SKIP
    '{\\n    "predictions": [\\n        0.0003,\\n        9e+06\\n    ]\\n}'

What TF Serving does and a reader may not expect (all reproduced here on purpose):

* Float outputs are written with six significant digits (printf ``%g``) when that
  reads back as the same float32 (double for a double tensor), else with 9 (17)
  digits; ``.0`` is added to a whole number without an exponent; NaN and
  +/-Infinity are written as the bare tokens ``NaN``, ``Infinity``, ``-Infinity``.
* int8, int16 and uint8 inputs are range-checked against int32 only (TF Serving
  stores them in the proto's ``int_val``) and then narrowed by TensorFlow with
  wrap-around: 300 for an int8 input becomes 44. int32, int64, uint32 and uint64
  are checked against their own range; a fraction (``2.0``) is refused by every
  integer type; ``true`` is refused by every numeric type.
* Columnar ``inputs`` ignores keys that are not inputs of the signature; top-level
  keys other than the ones TF Serving reads are ignored too.
* Text after the first complete JSON value is ignored (rapidjson's
  kParseStopWhenDoneFlag); NaN, Inf, Infinity, -Inf and -Infinity are numbers.
* half, bfloat16, complex and uint16 tensors cannot be sent or answered over REST.

Known differences (documented rather than emulated): rapidjson 1.1.0 converts long
decimals to double with its "normal precision" routine, which can differ from
correct rounding in the last bit for numbers with more than 15 significant digits;
here they are rounded correctly. Duplicate keys in an object keep the first value
(what TF Serving's lookups see); TF Serving's handling of a key repeated inside one
instance object or tf.Example is not reproduced. Output objects list tensors sorted
by name (TF Serving's order is its protobuf map's and unspecified).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from export_archive.constants import DEFAULT_SIGNATURE

B64_KEY = "b64"
BYTES_SUFFIX = "_bytes"

# The JSON keys TF Serving reads and writes (json_tensor.cc).
SIGNATURE_KEY = "signature_name"
INSTANCES_KEY = "instances"
INPUTS_KEY = "inputs"
CONTEXT_KEY = "context"
EXAMPLES_KEY = "examples"
PREDICTIONS_KEY = "predictions"
OUTPUTS_KEY = "outputs"
RESULTS_KEY = "results"
ERROR_KEY = "error"

# Request formats: `instances` (row) or `inputs` (columnar); the answer mirrors it.
ROW = "row"
COLUMNAR = "columnar"

# absl status code name -> HTTP status, as TF Serving's http_server.cc maps them.
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}

INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNIMPLEMENTED = "UNIMPLEMENTED"
INTERNAL = "INTERNAL"


class RestError(ValueError):
    """A body TF Serving's REST API refuses, or a result it cannot write.

    ``code`` is the absl status code name TF Serving returns (``INVALID_ARGUMENT``,
    ``UNIMPLEMENTED``, ...), ``http_status`` the HTTP status its server answers with,
    ``message`` the text of its ``{"error": ...}`` body, and ``where`` the place in
    the body at fault (``instances[1].x``, ``inputs.x``, ``examples[0].age``) when
    TF Serving's own message does not say it.
    """

    def __init__(self, code: str, message: str, where: Optional[str] = None):
        self.code, self.message, self.where = code, message, where
        self.http_status = HTTP_STATUS.get(code, 500)
        super().__init__(message if where is None else f"{message} [at {where}]")

    def status_string(self) -> str:
        """As absl::Status::ToString() prints it; TF Serving nests these in messages."""
        return f"{self.code}: {self.message}"

    def to_json(self) -> str:
        """The body TF Serving answers with (MakeJsonFromStatus)."""
        return error_to_json(self.message)


def _invalid(message: str, where: Optional[str] = None) -> RestError:
    return RestError(INVALID_ARGUMENT, message, where)


def _format_error(doc: Any, text: str, where: Optional[str] = None) -> RestError:
    """TF Serving's FormatError: the offending JSON quoted, then what is wrong."""
    return _invalid(f"JSON Value: {debug_string(doc)} {text}", where)


# ---------------------------------------------------------------------------
# JSON text -> values, as rapidjson 1.1.0 parses it with TF Serving's flags
# (iterative, NaN/Inf allowed, stop after the root value). Iterative, so a body
# nested 500000 deep parses (TF Serving's DeeplyNested tests) instead of hitting
# Python's recursion limit. Values: dict (first duplicate wins), list, bytes for
# strings (JSON strings carry bytes: a string tensor gets them unchanged), int for
# integers rapidjson stores as integers ([-2**63, 2**64)), float otherwise, bool,
# None.

_PARSE_ERRORS = {
    "empty": "The document is empty.",
    "value": "Invalid value.",
    "miss_name": "Missing a name for object member.",
    "miss_colon": "Missing a colon after a name of object member.",
    "miss_comma_curly": "Missing a comma or '}' after an object member.",
    "miss_comma_square": "Missing a comma or ']' after an array element.",
    "hex": "Incorrect hex digit after \\u escape in string.",
    "surrogate": "The surrogate pair in string is invalid.",
    "escape": "Invalid escape character in string.",
    "quote": "Missing a closing quotation mark in string.",
    "too_big": "Number too big to be stored in double.",
    "fraction": "Miss fraction part in number.",
    "exponent": "Miss exponent in number.",
    "syntax": "Unspecific syntax error.",
}

_WS = re.compile(rb"[ \t\n\r]*")
_PLAIN = re.compile(rb'[^"\\\x00-\x1f]*')
_INT = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_FRAC = re.compile(rb"\.[0-9]*")
_EXP = re.compile(rb"[eE][+-]?([0-9]*)")
_NAN_INF = re.compile(rb"-?(?:NaN|Inf(?:inity)?)")
_ESCAPES = {ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/", ord("b"): b"\b",
            ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}
_INT_MIN, _UINT_MAX = -(1 << 63), (1 << 64) - 1
_NUMBER = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
# A whole array of plain numbers, up to its closing bracket (the bulk of a tensor).
_NUMBER_RUN = re.compile(rb"(?:" + _NUMBER + rb"[ \t\n\r]*,[ \t\n\r]*)*" + _NUMBER
                         + rb"(?=[ \t\n\r]*\])")
_COMMA = re.compile(rb"[ \t\n\r]*,[ \t\n\r]*")


class _ParseError(Exception):
    def __init__(self, kind: str, offset: int):
        super().__init__(kind)
        self.kind, self.offset = kind, offset


def _parse_string(data: bytes, pos: int) -> Tuple[bytes, int]:
    """`data[pos]` is the opening quote; returns (bytes, position after the close)."""
    out, pos = bytearray(), pos + 1
    while True:
        match = _PLAIN.match(data, pos)
        out += match.group()
        pos = match.end()
        if pos >= len(data):
            raise _ParseError("quote", pos)
        c = data[pos]
        if c == 0x22:
            return bytes(out), pos + 1
        if c != 0x5C:                       # a raw control character
            raise _ParseError("escape", pos)
        escape = data[pos + 1] if pos + 1 < len(data) else 0
        if escape in _ESCAPES:
            out += _ESCAPES[escape]
            pos += 2
            continue
        if escape != ord("u"):
            raise _ParseError("escape", pos + 1)
        code, pos = _hex4(data, pos + 2)
        if 0xD800 <= code <= 0xDBFF:
            if data[pos:pos + 2] != b"\\u":
                raise _ParseError("surrogate", pos)
            low, pos = _hex4(data, pos + 2)
            if not 0xDC00 <= low <= 0xDFFF:
                raise _ParseError("surrogate", pos - 4)
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
        # rapidjson encodes what it decoded without validating it: a lone low
        # surrogate becomes its 3-byte UTF-8 form.
        out += chr(code).encode("utf-8", "surrogatepass")


def _hex4(data: bytes, pos: int) -> Tuple[int, int]:
    digits = data[pos:pos + 4]
    if len(digits) < 4 or not re.fullmatch(rb"[0-9A-Fa-f]{4}", digits):
        bad = next((i for i, c in enumerate(digits) if chr(c) not in "0123456789abcdefABCDEF"),
                   len(digits))
        raise _ParseError("hex", pos + bad)
    return int(digits, 16), pos + 4


def _parse_number(data: bytes, pos: int) -> Tuple[Union[int, float], int]:
    special = _NAN_INF.match(data, pos)
    if special:
        token = special.group()
        end = special.end()
        if token.endswith(b"Inf") and data[end:end + 1] == b"i":
            raise _ParseError("value", end)     # "Infi..." that is not "Infinity"
        if b"NaN" in token:
            return math.nan, end
        return (-math.inf if token.startswith(b"-") else math.inf), end
    match = _INT.match(data, pos)
    if not match:
        raise _ParseError("value", pos + (data[pos:pos + 1] == b"-"))
    end, is_double = match.end(), False
    frac = _FRAC.match(data, end)
    if frac:
        if len(frac.group()) == 1:
            raise _ParseError("fraction", frac.end())
        end, is_double = frac.end(), True
    exp = _EXP.match(data, end)
    if exp:
        if not exp.group(1):
            raise _ParseError("exponent", exp.end())
        end, is_double = exp.end(), True
    token = data[pos:end]
    if not is_double:
        value = int(token)
        if _INT_MIN <= value <= _UINT_MAX:
            return value, end
        # Beyond 64 bits rapidjson keeps going in a double, and refuses past DBL_MAX.
    value = float(token)
    if math.isinf(value):
        raise _ParseError("too_big", end)
    return value, end


def _number_run(data: bytes, pos: int) -> Optional[Tuple[list, int]]:
    """Fast path: the rest of an array that holds only numbers, parsed in one go;
    None when it holds anything else (the token-by-token parser then takes it)."""
    match = _NUMBER_RUN.match(data, pos)
    if not match:
        return None
    values = []
    for token in _COMMA.split(match.group()):
        if b"." in token or b"e" in token or b"E" in token:
            value = float(token)
            if math.isinf(value):
                return None                 # let the slow path report the error
        else:
            value = int(token)
            if not _INT_MIN <= value <= _UINT_MAX:
                return None
        values.append(value)
    return values, match.end()


def parse_json(body: Union[str, bytes, bytearray]) -> Any:
    """JSON text -> values, accepting and refusing what TF Serving's parser does.

    Raises `RestError` (INVALID_ARGUMENT) with TF Serving's message for a parse
    error, and for a root that is not an object.
    """
    data = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body)
    if not data:
        raise _invalid("JSON Parse error: The document is empty")
    # rapidjson's memory stream reads a NUL byte as the end of the input.
    data = data.split(b"\0", 1)[0]
    try:
        doc = _parse(data)
    except _ParseError as e:
        raise _invalid(f"JSON Parse error: {_PARSE_ERRORS[e.kind]} at offset: {e.offset}")
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return doc


# Parser states, named as rapidjson's iterative parser names them: the state decides
# which parse error a bad token is reported as.
_START, _OBJ_INIT, _MEMBER_KEY, _KV_DELIM, _MEMBER_VALUE, _MEMBER_DELIM = range(6)
_ARR_INIT, _ELEMENT, _ELEM_DELIM = range(6, 9)
_STATE_ERRORS = {_START: "empty", _OBJ_INIT: "miss_name", _MEMBER_DELIM: "miss_name",
                 _MEMBER_KEY: "miss_colon", _MEMBER_VALUE: "miss_comma_curly",
                 _ELEMENT: "miss_comma_square"}
_LITERALS = {ord("t"): (b"true", True), ord("f"): (b"false", False),
             ord("n"): (b"null", None)}


def _parse(data: bytes) -> Any:
    n = len(data)
    pos = _WS.match(data, 0).end()
    state = _START
    frames: List[list] = []        # [container, pending key]
    while pos < n:
        c = data[pos]
        value, has_value = None, False
        if state == _MEMBER_KEY:
            if c != 0x3A:
                break
            state, pos = _KV_DELIM, pos + 1
        elif state in (_MEMBER_VALUE, _ELEMENT):
            closer = 0x7D if state == _MEMBER_VALUE else 0x5D
            if c == 0x2C:
                state, pos = (_MEMBER_DELIM if state == _MEMBER_VALUE else _ELEM_DELIM), pos + 1
            elif c == closer:
                value, has_value, pos = frames.pop()[0], True, pos + 1
            else:
                break
        elif state in (_OBJ_INIT, _MEMBER_DELIM):
            if c == 0x22:
                key, pos = _parse_string(data, pos)
                frames[-1][1] = key.decode("utf-8", "surrogateescape")
                state = _MEMBER_KEY
            elif c == 0x7D and state == _OBJ_INIT:
                value, has_value, pos = frames.pop()[0], True, pos + 1
            else:
                break
        else:                                   # a value is expected
            if c == 0x7B:
                frames.append([{}, None])
                state, pos = _OBJ_INIT, pos + 1
            elif c == 0x5B:
                frames.append([[], None])
                state, pos = _ARR_INIT, _WS.match(data, pos + 1).end()
                run = _number_run(data, pos)
                if run:
                    frames[-1][0].extend(run[0])
                    state, pos = _ELEMENT, run[1]
            elif c == 0x5D and state == _ARR_INIT:
                value, has_value, pos = frames.pop()[0], True, pos + 1
            elif c in (0x5D, 0x7D, 0x2C, 0x3A):
                break
            elif c == 0x22:
                value, pos = _parse_string(data, pos)
                has_value = True
            elif c in _LITERALS:
                text, literal = _LITERALS[c]
                if data[pos:pos + len(text)] != text:
                    bad = next(i for i, ch in enumerate(data[pos:pos + len(text)] + b"\0")
                               if i >= len(text) or ch != text[i])
                    raise _ParseError("value", pos + bad)
                value, has_value, pos = literal, True, pos + len(text)
            else:
                value, pos = _parse_number(data, pos)
                has_value = True
        if has_value:
            if not frames:
                return value                    # stop when the root value is done
            container, key = frames[-1]
            if isinstance(container, list):
                container.append(value)
                state = _ELEMENT
            else:
                container.setdefault(key, value)
                state = _MEMBER_VALUE
        pos = _WS.match(data, pos).end()
    raise _ParseError(_STATE_ERRORS.get(state, "syntax"), pos)


# ---------------------------------------------------------------------------
# Values -> JSON text, as rapidjson's PrettyWriter writes it (4-space indent;
# "single line" arrays where TF Serving switches that option on), so that the
# answers and the values quoted in error messages read as TF Serving's do.

class _Full(Exception):
    """The debug writer reached its size limit (TF Serving truncates there)."""


_ESCAPE_OUT = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n",
               0x0D: "\\r", 0x09: "\\t"}
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')


def _quote(raw: Union[bytes, str]) -> str:
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    return '"' + _NEEDS_ESCAPE.sub(
        lambda m: _ESCAPE_OUT.get(ord(m.group()), "\\u%04X" % ord(m.group())), text) + '"'


class _Writer:
    def __init__(self, limit: Optional[int] = None):
        self.parts: List[str] = []
        self.size, self.limit = 0, limit
        self.levels: List[list] = []    # [in array, values written]
        self.single_line = False

    def _put(self, text: str):
        self.parts.append(text)
        if self.limit is not None:
            self.size += len(text.encode("utf-8", "surrogateescape"))

    def _prefix(self):
        if self.limit is not None and self.size >= self.limit:
            raise _Full()
        if not self.levels:
            return
        level = self.levels[-1]
        indent = " " * (4 * len(self.levels))
        if level[0]:
            if level[1]:
                self._put(", " if self.single_line else ",")
            if not self.single_line:
                self._put("\n" + indent)
        else:
            if level[1] == 0:
                self._put("\n" + indent)
            elif level[1] % 2 == 0:
                self._put(",\n" + indent)
            else:
                self._put(": ")
        level[1] += 1

    def scalar(self, token: str):
        self._prefix()
        self._put(token)

    def string(self, raw: Union[bytes, str]):
        self.scalar(_quote(raw))

    def start(self, array: bool):
        self._prefix()
        self.levels.append([array, 0])
        self._put("[" if array else "{")

    def end(self):
        if self.limit is not None and self.size >= self.limit:
            raise _Full()
        array, count = self.levels.pop()
        if count and not (array and self.single_line):
            self._put("\n" + " " * (4 * len(self.levels)))
        self._put("]" if array else "}")

    def text(self) -> str:
        return "".join(self.parts)


def _shortest_double(value: float) -> Optional[str]:
    """rapidjson Writer::Double: shortest round-trip digits, laid out as its
    Prettify() does; None for NaN/Inf (which that writer refuses)."""
    if not math.isfinite(value):
        return None
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    _, digit_tuple, k = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    k += len(digit_tuple) - len(digits)          # value = digits * 10**k
    length, kk = len(digits), len(digits) + k
    if 0 <= k and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif length == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return ("-" if value < 0 else "") + text


def _write_value(writer: _Writer, value: Any):
    """Writes a parsed JSON value, iteratively (it may be nested 500000 deep)."""
    stack = [(value, False)]
    while stack:
        item, closing = stack.pop()
        if closing:
            writer.end()
        elif isinstance(item, dict):
            writer.start(array=False)
            stack.append((None, True))
            for key, child in reversed(list(item.items())):
                stack.append((child, False))
                stack.append((_Key(key), False))
        elif isinstance(item, list):
            writer.start(array=True)
            stack.append((None, True))
            stack.extend((child, False) for child in reversed(item))
        elif isinstance(item, _Key):
            writer.string(item.name)
        elif isinstance(item, (bytes, str)):
            writer.string(item)
        elif item is None:
            writer.scalar("null")
        elif isinstance(item, bool):
            writer.scalar("true" if item else "false")
        elif isinstance(item, int):
            writer.scalar(str(item))
        else:
            token = _shortest_double(float(item))
            if token is None:
                writer._prefix()
                raise _Full()
            writer.scalar(token)


@dataclass
class _Key:
    name: str


DEBUG_STRING_BYTES = 256


def debug_string(value: Any) -> str:
    """A JSON value as TF Serving quotes it in an error message: single-line
    arrays, cut after about 256 bytes."""
    writer = _Writer(limit=DEBUG_STRING_BYTES)
    writer.single_line = True
    try:
        _write_value(writer, value)
    except _Full:
        pass
    return writer.text()


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, (bytes, str)):
        return "String"
    return "Number"


# ---------------------------------------------------------------------------
# dtypes. DataType enum values are those of tensorflow/core/framework/types.proto
# (stable across TF versions); the names are TF's DataTypeString().

_DT = {1: "float", 2: "double", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
       7: "string", 8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8",
       13: "qint32", 14: "bfloat16", 15: "qint16", 16: "quint16", 17: "uint16",
       18: "complex128", 19: "half", 20: "resource", 21: "variant", 22: "uint32",
       23: "uint64"}
_NUMPY = {"float": np.float32, "double": np.float64, "int32": np.int32, "uint8": np.uint8,
          "int16": np.int16, "int8": np.int8, "int64": np.int64, "bool": np.bool_,
          "uint32": np.uint32, "uint64": np.uint64}
# JSON integer range each dtype accepts (rapidjson IsInt / IsInt64 / IsUint /
# IsUint64): int8, int16 and uint8 go through the proto's int32 `int_val`.
_INT_RANGE = {"int32": (-(1 << 31), (1 << 31) - 1), "int16": (-(1 << 31), (1 << 31) - 1),
              "int8": (-(1 << 31), (1 << 31) - 1), "uint8": (-(1 << 31), (1 << 31) - 1),
              "int64": (-(1 << 63), (1 << 63) - 1), "uint32": (0, (1 << 32) - 1),
              "uint64": (0, (1 << 64) - 1)}
_NUMPY_NAMES = {"float32": "float", "float64": "double", "float16": "half"}


def dtype_name(dtype: Any) -> str:
    """TF's DataTypeString for a DataType enum value or a numpy dtype."""
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        value = int(dtype)
        if value > 100:                   # reference types: DT_FLOAT_REF = 101, ...
            return _DT.get(value - 100, str(value - 100)) + "_ref"
        return _DT.get(value, f"type{value}")
    np_dtype = np.dtype(dtype)
    if np_dtype.kind in "OSU":
        return "string"
    return _NUMPY_NAMES.get(np_dtype.name, np_dtype.name)


def _type_error(value: Any, dtype: str) -> RestError:
    return _invalid(f"JSON Value: {debug_string(value)} Type: {_json_type(value)} "
                    f"is not of expected type: {dtype}")


def _add_value(value: Any, dtype: str, out: list):
    """One JSON leaf into `out` as TF Serving's AddValueToTensor takes it."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in ("float", "double"):
        if not is_number:
            raise _type_error(value, dtype)
        out.append(float(value))
    elif dtype in _INT_RANGE:
        low, high = _INT_RANGE[dtype]
        if not (isinstance(value, int) and is_number and low <= value <= high):
            raise _type_error(value, dtype)
        out.append(value)
    elif dtype == "string":
        if not isinstance(value, bytes):
            raise _type_error(value, dtype)
        out.append(value)
    elif dtype == "bool":
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        out.append(value)
    else:
        raise RestError(UNIMPLEMENTED, f"Conversion of JSON Value: {debug_string(value)} "
                                       f"to type: {dtype}")


def _is_b64_object(value: Any) -> bool:
    return (isinstance(value, dict) and len(value) == 1
            and isinstance(value.get(B64_KEY), bytes))


_B64_DATA = re.compile(rb"[A-Za-z0-9+/\s]*")
_B64_TAIL = re.compile(rb"[=.\s]*")


def b64decode(text: bytes) -> Optional[bytes]:
    """absl::Base64Unescape: whitespace skipped, padding ('=' or '.') optional but,
    when present, exact; None where absl fails."""
    data = _B64_DATA.match(text)
    tail = text[data.end():]
    if not _B64_TAIL.fullmatch(tail):
        return None
    chars = re.sub(rb"\s", b"", data.group())
    pads = len(re.sub(rb"\s", b"", tail))
    leftover = len(chars) % 4
    if leftover == 1 or pads not in (0, {0: 0, 2: 2, 3: 1}[leftover]):
        return None
    try:
        return binascii.a2b_base64(chars + b"=" * ((4 - leftover) % 4))
    except binascii.Error:
        return None


def _decode_b64_object(value: Any) -> bytes:
    if not _is_b64_object(value):
        raise _invalid(f"JSON Value: {debug_string(value)} not formatted correctly for "
                       "base64 data")
    decoded = b64decode(value[B64_KEY])
    if decoded is None:
        raise _invalid("Unable to base64 decode")
    return decoded


def _dense_shape(value: Any) -> List[int]:
    """The shape the first element at each level implies (GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, dtype: str) -> Tuple[List[int], list]:
    """A JSON tensor -> (shape, flat values), checked as TF Serving's FillTensorProto:
    every leaf at the depth the first elements set, every list as long as the first
    one at its level."""
    shape = _dense_shape(value)
    rank, values = len(shape), []
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, list):
            if level != rank:
                raise _invalid(f"JSON Value: {debug_string(item)} found at incorrect "
                               f"level: {level + 1} in the JSON DOM. Expected at level: "
                               f"{rank}")
            if isinstance(item, dict):
                if dtype != "string":
                    raise _type_error(item, dtype)
                values.append(_decode_b64_object(item))
            else:
                _add_value(item, dtype, values)
            continue
        if level >= rank:
            raise _invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(item) != shape[level]:
            raise _invalid(f"Encountered list at unexpected size: {len(item)} at level: "
                           f"{level} expected size: {shape[level]}")
        if level == rank - 1 and not any(isinstance(v, (list, dict)) for v in item):
            # The common innermost list, without the stack; plain numbers for a
            # float tensor in one step (type() is exact: a bool is not a number here).
            if dtype in ("float", "double") and all(type(v) in (int, float) for v in item):
                values.extend(item)
                continue
            for leaf in item:
                _add_value(leaf, dtype, values)
        else:
            stack.extend((child, level + 1) for child in reversed(item))
    return shape, values


def _to_array(shape: List[int], values: list, dtype: str) -> np.ndarray:
    """Flat values -> the ndarray TensorFlow makes of TF Serving's TensorProto."""
    if dtype == "string":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    np_dtype = _NUMPY[dtype]
    if dtype in ("int8", "int16", "uint8"):
        # TF Serving stores these as int32; TensorFlow narrows with wrap-around.
        return np.array(values, dtype=np.int32).astype(np_dtype).reshape(shape)
    with np.errstate(over="ignore"):            # a double beyond float32 is inf, as in C++
        return np.array(values, dtype=np.float64 if dtype == "float" else np_dtype
                        ).astype(np_dtype).reshape(shape)


# ---------------------------------------------------------------------------
# Predict requests.

@dataclass
class PredictRequest:
    """What TF Serving's FillPredictRequestFromJson fills in: the signature name
    (empty for the default), one array per input, and the format the answer uses."""
    signature_name: str
    inputs: Dict[str, np.ndarray]
    format: str

    def to_proto(self, model_name: str = "model"):
        """The gRPC PredictRequest TF Serving builds from this body."""
        # TensorFlow and its protos on use only: the JSON rules need numpy alone.
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = self.signature_name
        for name, array in self.inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
        return request


SignatureSource = Union[Any, Mapping[str, Any], Callable[[str], Mapping[str, Any]]]


def _input_dtypes(signatures: SignatureSource, name: str) -> Dict[str, str]:
    """input name -> dtype name for signature `name`, looked up as TF Serving's
    GetInfoMap does. `signatures` is one SignatureDef (used whatever the name), a
    map of SignatureDefs (a MetaGraphDef's ``signature_def``), or a callable from
    name to a TensorInfo map."""
    if callable(signatures):
        infos = signatures(name)
    elif hasattr(signatures, "inputs"):
        infos = signatures.inputs
    else:
        key = name or DEFAULT_SIGNATURE
        if key not in signatures:
            raise _invalid(f'Serving signature name: "{key}" not found in signature def')
        infos = signatures[key].inputs
    return {key: dtype_name(info.dtype) for key, info in infos.items()}


def _signature_name(doc: Mapping[str, Any]) -> str:
    if SIGNATURE_KEY not in doc:
        return ""
    value = doc[SIGNATURE_KEY]
    if not isinstance(value, bytes):
        raise _format_error(doc, "not formatted correctly. "
                            "'signature_name' key must be a string value.", SIGNATURE_KEY)
    return value.decode("utf-8", "surrogateescape")


def _document(body: Union[str, bytes, Mapping[str, Any]]) -> Dict[str, Any]:
    if isinstance(body, (str, bytes, bytearray)):
        return parse_json(body)
    # A Python body is what a client would json.dumps(): read it back through the
    # same parser, so it gets exactly the treatment of the text.
    try:
        text = json.dumps(body, allow_nan=True, default=_numpy_to_json)
    except (TypeError, ValueError) as e:
        raise _invalid(f"the body is not JSON-serializable: {e}") from None
    return parse_json(text)


def _nonempty_list(doc: Mapping[str, Any], key: str, not_list: str, empty: str) -> list:
    """doc[key], which TF Serving requires to be a non-empty array."""
    value = doc[key]
    if not isinstance(value, list):
        raise _format_error(doc, not_list, key)
    if not value:
        raise _format_error(doc, empty, key)
    return value


def _numpy_to_json(value: Any) -> Any:
    """json.dumps hook: numpy scalars and arrays as a client would send them."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not a JSON value")


def parse_predict_request(body: Union[str, bytes, Mapping[str, Any]],
                          signatures: SignatureSource) -> PredictRequest:
    """A REST :predict body -> `PredictRequest`, as TF Serving converts it.

    `body` is the JSON text (str or bytes) or the Python object a client would
    serialize. Raises `RestError` with TF Serving's code and message.
    """
    doc = _document(body)
    signature_name = _signature_name(doc)
    dtypes = _input_dtypes(signatures, signature_name)
    if not dtypes:
        raise _invalid("Failed to get input map for signature: "
                       f"{signature_name or 'DEFAULT'}")
    if INSTANCES_KEY in doc:
        if INPUTS_KEY in doc:
            raise _format_error(doc, "Not formatted correctly "
                                "expecting only one of 'inputs' or 'instances' keys to exist ")
        instances = _nonempty_list(doc, INSTANCES_KEY, "Expecting 'instances' to be an "
                                   "list/array", "No values in 'instances' array")
        return PredictRequest(signature_name, _from_instances(instances, dtypes), ROW)
    if INPUTS_KEY in doc:
        return PredictRequest(signature_name, _from_inputs(doc[INPUTS_KEY], dtypes), COLUMNAR)
    raise _invalid("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list, dtypes: Dict[str, str]) -> Dict[str, np.ndarray]:
    names = sorted(dtypes)
    if not isinstance(instances[0], dict) and len(names) > 1:
        raise _invalid("instances is a plain list, but expecting list of objects as "
                       "multiple input tensors required as per tensorinfo_map",
                       f"instances[0]: inputs {names}")

    def is_named(value):
        return isinstance(value, dict) and not _is_b64_object(value)

    named = is_named(instances[0])
    flat: Dict[str, list] = {}
    shapes: Dict[str, List[int]] = {}
    counts: Dict[str, int] = {}

    def add(index: int, name: str, value: Any):
        if name not in dtypes:
            raise _invalid(f"JSON object: does not have named input: {name}",
                           f"instances[{index}].{name}: inputs {names}")
        shape, values = _fill(value, dtypes[name])
        if name not in counts:
            counts[name], shapes[name] = len(values), shape
        elif counts[name] != len(values):
            raise _invalid(f"Expecting tensor size: {counts[name]} but got: {len(values)}")
        elif shapes[name] != shape:
            raise _invalid(f"Expecting shape {_shape_text(shapes[name])} but got: "
                           f"{_shape_text(shape)}")
        flat.setdefault(name, []).extend(values)

    for index, instance in enumerate(instances):
        if named:
            if not is_named(instance):
                raise _invalid(f"Expecting object but got list at item {index} of input "
                               "list", f"instances[{index}]")
            for name, value in instance.items():
                try:
                    add(index, name, value)
                except RestError as e:
                    raise RestError(INVALID_ARGUMENT,
                                    f"Failed to process element: {index} key: {name} of "
                                    f"'instances' list. Error: {e.status_string()}",
                                    e.where or f"instances[{index}].{name}") from None
            if set(instance) != set(names):
                raise _invalid(f"Failed to process element: {index} of 'instances' list. "
                               f"JSON object: {debug_string(instance)} keys must be equal "
                               f"to: {','.join(names)}", f"instances[{index}]")
        else:
            if is_named(instance):
                raise _invalid(f"Expecting value/list but got object at item {index} of "
                               "input list", f"instances[{index}]")
            try:
                add(index, names[0], instance)
            except RestError as e:
                raise RestError(INVALID_ARGUMENT,
                                f"Failed to process element: {index} of 'instances' "
                                f"list. Error: {e.status_string()}",
                                f"instances[{index}] (input {names[0]})") from None
    return {name: _to_array([len(instances)] + shapes[name], flat[name], dtypes[name])
            for name in flat}


def _shape_text(shape: List[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _from_inputs(value: Any, dtypes: Dict[str, str]) -> Dict[str, np.ndarray]:
    names = sorted(dtypes)
    if not isinstance(value, dict) or _is_b64_object(value):
        if len(names) > 1:
            raise _invalid("inputs is a plain value/list, but expecting an object as "
                           "multiple input tensors required as per tensorinfo_map",
                           f"inputs: inputs {names}")
        return {names[0]: _column(value, names[0], dtypes[names[0]])}
    tensors = {}
    for name in names:
        if name not in value:
            raise _invalid(f"Missing named input: {name} in 'inputs' object.",
                           f"inputs: has {sorted(value)}")
        tensors[name] = _column(value[name], name, dtypes[name])
    return tensors


def _column(value: Any, name: str, dtype: str) -> np.ndarray:
    try:
        shape, values = _fill(value, dtype)
    except RestError as e:
        # TF Serving's columnar messages do not say which input: add it.
        raise RestError(e.code, e.message, f"inputs.{name}") from None
    return _to_array(shape, values, dtype)


def request_to_tensors(body: Union[str, bytes, Mapping[str, Any]],
                       signature_def: SignatureSource) -> Dict[str, np.ndarray]:
    """A REST Predict body -> {input name: array}, as TF Serving builds its tensors."""
    return parse_predict_request(body, signature_def).inputs


# ---------------------------------------------------------------------------
# Classify / Regress requests: tf.Examples from JSON objects.

def _feature_kind_error(name: str, kind: Optional[str]) -> RestError:
    text = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}.get(
        kind, "UNKNOWN")
    return _invalid(f"Unexpected element type in feature: {name} expecting type: {text}")


def _add_feature_value(value: Any, name: str, feature) -> None:
    kind = feature.WhichOneof("kind")

    def require(wanted):
        if kind not in (None, wanted):
            raise _feature_kind_error(name, kind)

    if value is None or isinstance(value, list) or (
            isinstance(value, dict) and not _is_b64_object(value)):
        raise _invalid(f"Feature: {name} has element with unexpected JSON type: "
                       f"{_json_type(value)}")
    if isinstance(value, bool):
        require("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        require("bytes_list")
        feature.bytes_list.value.append(_decode_b64_object(value))
    elif isinstance(value, bytes):
        require("bytes_list")
        feature.bytes_list.value.append(value)
    elif isinstance(value, float):
        require("float_list")
        with np.errstate(over="ignore"):
            feature.float_list.value.append(float(np.float32(value)))
    else:
        require("int64_list")
        if value > (1 << 63) - 1:
            raise _invalid(f"Feature: {name} has uint64_t element. Only int64_t is "
                           "supported.")
        feature.int64_list.value.append(value)


def _example_from_object(value: Any, example, where: str) -> None:
    if not isinstance(value, dict):
        raise _invalid(f"Example must be JSON object but got JSON {_json_type(value)}", where)
    for name, content in value.items():
        feature = example.features.feature[name]
        feature.Clear()
        try:
            for item in (content if isinstance(content, list) else [content]):
                _add_feature_value(item, name, feature)
        except RestError as e:
            raise RestError(e.code, e.message, f"{where}.{name}") from None


def _fill_examples(body, request):
    doc = _document(body)
    signature_name = _signature_name(doc)
    if SIGNATURE_KEY in doc:                # as upstream: model_spec set only when given
        request.model_spec.signature_name = signature_name
    has_context = CONTEXT_KEY in doc
    if has_context:
        _example_from_object(doc[CONTEXT_KEY],
                             request.input.example_list_with_context.context, CONTEXT_KEY)
    if EXAMPLES_KEY not in doc:
        # TF Serving says "classify" for :regress too.
        raise _format_error(doc, "When method is classify, key "
                            "'examples' is expected and was not found")
    examples = _nonempty_list(doc, EXAMPLES_KEY, "Expecting 'examples' value to be an "
                              "list/array", "'examples' value is an empty array")
    target = (request.input.example_list_with_context if has_context
              else request.input.example_list)
    for index, value in enumerate(examples):
        _example_from_object(value, target.examples.add(), f"examples[{index}]")
    return request


def parse_classify_request(body: Union[str, bytes, Mapping[str, Any]]):
    """A REST :classify body -> tensorflow_serving ClassificationRequest (its
    model_spec holds only the signature name)."""
    # TF Serving's protos (they import TensorFlow) on use only: see PredictRequest.to_proto.
    from tensorflow_serving.apis import classification_pb2
    return _fill_examples(body, classification_pb2.ClassificationRequest())


def parse_regress_request(body: Union[str, bytes, Mapping[str, Any]]):
    """A REST :regress body -> tensorflow_serving RegressionRequest."""
    # TF Serving's protos (they import TensorFlow) on use only: see PredictRequest.to_proto.
    from tensorflow_serving.apis import regression_pb2
    return _fill_examples(body, regression_pb2.RegressionRequest())


# ---------------------------------------------------------------------------
# Responses.

def _float32_from_text(text: str) -> np.float32:
    """The float32 nearest to decimal `text` (as absl::SimpleAtof reads it).
    Going through double is exact unless the double lands on a float32 midpoint."""
    as_double = float(text)
    with np.errstate(over="ignore"):
        nearest = np.float32(as_double)
    if not np.isfinite(nearest) or float(nearest) == as_double:
        return nearest
    other = np.nextafter(nearest, np.float32(math.copysign(np.inf, as_double - float(nearest))))
    midpoint = (float(nearest) + float(other)) / 2
    if as_double != midpoint:
        return nearest
    exact = Fraction(text)
    if exact == Fraction(midpoint):            # a true tie: to even
        return nearest if int(nearest.view(np.uint32)) % 2 == 0 else other
    above = exact > Fraction(midpoint)
    return max(nearest, other) if above else min(nearest, other)


def format_decimal(value: Union[float, np.floating], double: bool = False) -> str:
    """A float as TF Serving writes it (WriteDecimal): printf %g if that reads back
    as the same value (float32, or double when `double`), else %.9g (%.17g); ".0"
    appended when there is neither a point nor an exponent; NaN, Infinity, -Infinity."""
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "-Infinity" if number < 0 else "Infinity"
    text = "%g" % number
    same = (float(text) == number if double
            else _float32_from_text(text) == np.float32(number))
    if not same:
        text = "%.17g" % number if double else "%.9g" % number
    if "." not in text and "e" not in text:
        text += ".0"
    return text


_WRITE_KINDS = {"float": "float", "double": "double", "int32": "int", "int16": "int",
                "int8": "int", "uint8": "int", "int64": "int", "uint32": "int",
                "uint64": "int", "bool": "bool", "string": "string"}


def _as_array(tensor: Any) -> np.ndarray:
    if hasattr(tensor, "tensor_shape") and hasattr(tensor, "dtype"):   # a TensorProto
        import tensorflow as tf   # only for a TensorProto, which implies TF is loaded
        return tf.make_ndarray(tensor)
    return np.asarray(tensor)


def _write_tensor(writer: _Writer, array: np.ndarray, name: str):
    """AddTensorValues: nested arrays of the tensor's values; a scalar is bare."""
    dtype = dtype_name(array.dtype)
    kind = _WRITE_KINDS.get(dtype)
    as_bytes = dtype == "string" and name.endswith(BYTES_SUFFIX)

    def leaf(value):
        if kind is None:
            raise _invalid(f"Failed to write JSON value for tensor type: {dtype}")
        if kind in ("float", "double"):
            writer.scalar(format_decimal(value, double=kind == "double"))
        elif kind == "int":
            writer.scalar(str(int(value)))
        elif kind == "bool":
            writer.scalar("true" if value else "false")
        else:
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
            if as_bytes:
                writer.start(array=False)
                writer.string(B64_KEY)
                writer.string(base64.b64encode(raw))
                writer.end()
            else:
                writer.string(raw)

    def walk(sub):
        if sub.ndim == 0:
            leaf(sub[()])
            return
        writer.start(array=True)
        if sub.ndim == 1:
            for value in sub:
                leaf(value)
        else:
            for part in sub:
                walk(part)
        writer.end()

    walk(array)


def tensors_to_json(tensors: Mapping[str, Any], format: str = ROW) -> str:
    """Output tensors (ndarrays or TensorProtos) -> TF Serving's answer text
    (MakeJsonFromTensors): ``{"predictions": [...]}`` for a row-format request,
    ``{"outputs": ...}`` for a columnar one."""
    if not tensors:
        raise _invalid("Cannot convert empty tensor map to JSON")
    if format not in (ROW, COLUMNAR):
        raise _invalid("Invalid request format")
    names = sorted(tensors)
    arrays = {name: _as_array(tensors[name]) for name in names}
    writer = _Writer()
    writer.start(array=False)
    multi = len(names) > 1
    if format == COLUMNAR:
        writer.string(OUTPUTS_KEY)
        if multi:
            writer.start(array=False)
        for name in names:
            if multi:
                writer.string(name)
            _write_tensor(writer, arrays[name], name)
        if multi:
            writer.end()
        writer.end()
        return writer.text()
    batch = -1
    for name in names:
        if arrays[name].ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        size = arrays[name].shape[0]
        if batch >= 0 and size != batch:
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {size} "
                           f"expecting: {batch}")
        batch = size
    writer.string(PREDICTIONS_KEY)
    writer.start(array=True)
    for item in range(batch):
        if multi:
            writer.start(array=False)
        writer.single_line = True       # TF Serving writes each row's arrays on one line
        for name in names:
            if multi:
                writer.string(name)
            _write_tensor(writer, arrays[name][item, ...], name)
        writer.single_line = False
        if multi:
            writer.end()
    writer.end()
    writer.end()
    return writer.text()


def outputs_to_json(outputs: Mapping[str, Any], format: str = ROW) -> Any:
    """The answer as a client's JSON parser reads it: `tensors_to_json` parsed back
    (float32 values therefore as the decimals TF Serving wrote, e.g. 0.0003)."""
    return json.loads(tensors_to_json(outputs, format))


def outputs_to_predictions(outputs: Mapping[str, Any]) -> Dict[str, Any]:
    """Signature outputs -> the row-format answer ``{"predictions": [...]}``."""
    return outputs_to_json(outputs, ROW)


def classification_result_to_json(result) -> str:
    """A tensorflow_serving ClassificationResult -> ``{"results": [[[label, score],
    ...], ...]}`` (MakeJsonFromClassificationResult)."""
    if not len(result.classifications):
        raise _invalid("Cannot convert empty ClassificationResults to JSON")
    writer = _Writer()
    writer.start(array=False)
    writer.string(RESULTS_KEY)
    writer.start(array=True)
    for classifications in result.classifications:
        writer.single_line = True
        writer.start(array=True)
        for cls in classifications.classes:
            writer.start(array=True)
            writer.string(cls.label)
            writer.scalar(format_decimal(cls.score))
            writer.end()
        writer.end()
        writer.single_line = False
    writer.end()
    writer.end()
    return writer.text()


def regression_result_to_json(result) -> str:
    """A tensorflow_serving RegressionResult -> ``{"results": [value, ...]}``."""
    if not len(result.regressions):
        raise _invalid("Cannot convert empty RegressionResults to JSON")
    writer = _Writer()
    writer.start(array=False)
    writer.string(RESULTS_KEY)
    writer.single_line = True
    writer.start(array=True)
    for regression in result.regressions:
        writer.scalar(format_decimal(regression.value))
    writer.end()
    writer.end()
    return writer.text()


def error_to_json(status: Union[None, str, RestError]) -> str:
    """TF Serving's error body (MakeJsonFromStatus): ``{"error": message}`` for a
    `RestError` or a message; nothing ("") for None, an OK status."""
    if status is None:
        return ""
    writer = _Writer()
    writer.start(array=False)
    writer.string(ERROR_KEY)
    writer.string(status.message if isinstance(status, RestError) else status)
    writer.end()
    return writer.text()


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
    return {INSTANCES_KEY: [{k: value(v) for k, v in row.items()} for row in rows]}
