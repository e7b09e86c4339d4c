"""TF Serving's own tests of its REST conversion, ported: one test per upstream case.

Upstream: tensorflow/serving, tensorflow_serving/util/json_tensor_test.cc (every
TEST and TYPED_TEST there; a TYPED_TEST runs once for ClassificationRequest and
once for RegressionRequest, as upstream instantiates it). Each test is named after
its upstream case and checks what upstream checks: the same accept/refuse, the
status code (upstream asserts IsInvalidArgument), the same message substring, the
same tensor values, the same JSON (numbers compared as values, or as their text
where upstream compares "all values as strings"). TensorInfo maps, TensorProtos and
request/result protos are built from text protos with TensorFlow's and TF Serving's
own proto classes, as upstream builds them.

Beyond upstream, a few cases pin what json_tensor.cc does and upstream does not
test (integer ranges, fractions and booleans for numeric inputs, ignored keys).
"""

import json
import math
import re
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, regression_pb2

from export_archive import rest

pytestmark = pytest.mark.integration


# --- helpers: the upstream test's fixtures ---------------------------------

def infomap(**dtypes):
    """A TensorInfo map, each parsed from "dtype: DT_..." as upstream does."""
    return {name: text_format.Parse(f"dtype: {dtype}", meta_graph_pb2.TensorInfo())
            for name, dtype in dtypes.items()}


def getmap(infos):
    """Upstream's getmap(): the same TensorInfo map whatever the signature name."""
    return lambda signature_name: infos


def fill(json_text, infos):
    return rest.parse_predict_request(json_text, getmap(infos))


def tensor(text):
    return text_format.Parse(text, tensor_pb2.TensorProto())


def assert_tensor(actual, expected_text):
    """EqualsProto for a TensorProto upstream expects, compared as the tensor it is:
    dtype, shape and every value (NaN equal to NaN, and the sign of zero kept)."""
    expected = tf.make_ndarray(tensor(expected_text))
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist()
    else:
        np.testing.assert_array_equal(actual, expected)
        if expected.dtype.kind == "f":
            np.testing.assert_array_equal(np.signbit(actual), np.signbit(expected))


def refused(call, *args, substring, code="INVALID_ARGUMENT"):
    with pytest.raises(rest.RestError) as info:
        call(*args)
    assert info.value.code == code, info.value
    assert substring in info.value.message, info.value.message
    return info.value


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NUMBER_TOKEN = re.compile(r"-?(?:NaN|Infinity|[0-9][0-9.eE+-]*)")


def numbers_as_strings(text):
    """The JSON with every number token quoted: CompareJsonAllValuesAsStrings."""
    parts, last = [], 0
    for match in _STRING.finditer(text):
        parts.append(_NUMBER_TOKEN.sub(lambda m: f'"{m.group()}"', text[last:match.start()]))
        parts.append(match.group())
        last = match.end()
    parts.append(_NUMBER_TOKEN.sub(lambda m: f'"{m.group()}"', text[last:]))
    return rest.parse_json("".join(parts))


def compare_json(actual, expected):
    """CompareJson: both parsed, compared as values (so 1 == 1.0, as rapidjson)."""
    assert rest.parse_json(actual) == rest.parse_json(expected), actual


def compare_json_as_strings(actual, expected):
    assert numbers_as_strings(actual) == numbers_as_strings(expected), actual


def assert_filled(body, infos, expected_text, name="default", format=rest.ROW):
    """One input filled from `body`, in `format`, equal to the expected TensorProto."""
    req = fill(body, infos)
    assert len(req.inputs) == 1 and req.format == format, req
    assert_tensor(req.inputs[name], expected_text)
    return req


def tensormap(**texts):
    return {name: tensor(text) for name, text in texts.items()}


# --- FillPredictRequestFromJson -------------------------------------------

def test_SingleUnnamedTensor():
    assert_filled('{"instances": [[1,2],[3,4],[5,6]]}', infomap(default="DT_INT32"),
                  """dtype: DT_INT32
        tensor_shape { dim { size: 3 } dim { size: 2 } }
        int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6""")


def test_DeeplyNestedWellFormed():
    body = '{"instances":[1], "nested":' + "[" * 500000 + "]" * 500000 + "}"
    req = fill(body, infomap(default="DT_INT32"))
    assert len(req.inputs) == 1


def test_DeeplyNestedMalformed():
    body = '{"signature_name":' + "[" * 500000 + "]" * 500000 + "}"
    refused(fill, body, infomap(default="DT_INT32"), substring="key must be a string value")


def test_MixedInputForFloatTensor():
    assert_filled('{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', infomap(default="DT_FLOAT"),
                  """dtype: DT_FLOAT
        tensor_shape { dim { size: 7 } }
        float_val: 1 float_val: 2.0 float_val: 3 float_val: 4 float_val: 5.003
        float_val: 0.007 float_val: 0.0""")


def test_MixedInputForDoubleTensor():
    assert_filled('{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', infomap(default="DT_DOUBLE"),
                  """dtype: DT_DOUBLE
        tensor_shape { dim { size: 7 } }
        double_val: 1.0 double_val: 2 double_val: 3 double_val: 4 double_val: 0.662
        double_val: 0 double_val: 0.0""")


def test_FloatTensorWithPrecisionLoss():
    expected = """dtype: DT_FLOAT tensor_shape { dim { size: 1 } } float_val: 1435774380"""
    for body in ('{"instances": [1435774380]}', '{"instances": [1435774380.0]}'):
        req = fill(body, infomap(default="DT_FLOAT"))
        assert req.format == rest.ROW
        assert_tensor(req.inputs["default"], expected)


def assert_one_float(cases):
    """Each double, written as absl::Substitute writes it (six significant digits,
    like %g), fills a float tensor with the expected float_val."""
    for value, expected in cases:
        assert_filled('{ "instances": [%g] }' % value, infomap(default="DT_FLOAT"),
                      f"dtype: DT_FLOAT tensor_shape {{ dim {{ size: 1 }} }} "
                      f"float_val: {expected}")


def test_FloatTensorThatExceedsMaxReturnsInf():
    assert_one_float([(sys.float_info.max, "inf"), (-sys.float_info.max, "-inf")])


def test_FloatTensorThatExceedsMinReturnsZero():
    assert_one_float([(sys.float_info.min, "0"), (-sys.float_info.min, "-0")])


def test_SingleUnnamedTensorWithSignature():
    req = assert_filled('{"signature_name": "predict_images", "instances": [[1,2]]}',
                        infomap(default="DT_INT32"), """dtype: DT_INT32
        tensor_shape { dim { size: 1 } dim { size: 2 } } int_val: 1 int_val: 2""")
    assert req.signature_name == "predict_images"


def test_TensorFromNonNullTerminatedBuffer():
    # The last character is an 'X' the parser is not given (a buffer, not a C string).
    jsonstr = b'{"instances": [[1,2],[3,4],[5,6]]}X'
    assert_filled(memoryview(jsonstr)[:-1].tobytes(), infomap(default="DT_INT32"),
                  """dtype: DT_INT32
        tensor_shape { dim { size: 3 } dim { size: 2 } }
        int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6""")


def test_SingleUnnamedTensorBase64Scalars():
    assert_filled('{"instances": [ { "b64" : "aGVsbG8=" }, { "b64": "d29ybGQ=" } ]}',
                  infomap(default="DT_STRING"), """dtype: DT_STRING
        tensor_shape { dim { size: 2 } } string_val: "hello" string_val: "world" """)


def test_SingleUnnamedTensorBase64Lists():
    assert_filled('{"instances": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}',
                  infomap(default="DT_STRING"), """dtype: DT_STRING
        tensor_shape { dim { size: 2 } dim { size: 1 } }
        string_val: "hello" string_val: "world" """)


def test_SingleNamedTensorBase64():
    assert_filled('{"instances": [{"default": [ [{ "b64" : "aGVsbG8=" }], '
                  '[{ "b64": "d29ybGQ=" }] ]}]}', infomap(default="DT_STRING"),
                  """dtype: DT_STRING
        tensor_shape { dim { size: 1 } dim { size: 2 } dim { size: 1 } }
        string_val: "hello" string_val: "world" """)


def test_MultipleNamedTensor():
    req = fill("""{"instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
         "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
         "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}""",
               infomap(int_tensor="DT_INT32", str_tensor="DT_STRING",
                       float_tensor="DT_FLOAT", dbl_tensor="DT_DOUBLE"))
    assert len(req.inputs) == 4 and req.format == rest.ROW
    assert_tensor(req.inputs["int_tensor"], """dtype: DT_INT32
        tensor_shape { dim { size: 2 } dim { size: 3 } dim { size: 2 } }
        int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6
        int_val: 7 int_val: 8 int_val: 9 int_val: 0 int_val: 1 int_val: 2""")
    assert_tensor(req.inputs["str_tensor"], """dtype: DT_STRING
        tensor_shape { dim { size: 2 } dim { size: 2 } }
        string_val: "foo" string_val: "bar" string_val: "baz" string_val: "bat" """)
    assert_tensor(req.inputs["float_tensor"], """dtype: DT_FLOAT
        tensor_shape { dim { size: 2 } dim { size: 2 } }
        float_val: 1.0 float_val: NaN float_val: 2.0 float_val: Infinity""")
    assert_tensor(req.inputs["dbl_tensor"], """dtype: DT_DOUBLE
        tensor_shape { dim { size: 2 } dim { size: 1 } }
        double_val: NaN double_val: 2.0""")


def test_SingleUnnamedTensorColumnarFormat():
    expected = """dtype: DT_INT32
        tensor_shape { dim { size: 1 } dim { size: 3 } dim { size: 2 } }
        int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6"""
    # Named, then the named input skipped (one input: the bare tensor).
    for body in ('{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}',
                 '{"inputs": [[[1,2],[3,4],[5,6]]]}'):
        assert_filled(body, infomap(int_tensor="DT_INT32"), expected, "int_tensor",
                      rest.COLUMNAR)


def test_MultipleNamedTensorColumnarFormat():
    req = fill("""{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]],
                              "str_tensor": ["foo", "bar"],
                              "bin_tensor": { "b64" : "aGVsbG8=" }}}""",
               infomap(int_tensor="DT_INT32", str_tensor="DT_STRING",
                       bin_tensor="DT_STRING"))
    assert len(req.inputs) == 3 and req.format == rest.COLUMNAR
    assert_tensor(req.inputs["int_tensor"], """dtype: DT_INT32
        tensor_shape { dim { size: 1 } dim { size: 3 } dim { size: 2 } }
        int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6""")
    assert_tensor(req.inputs["str_tensor"], """dtype: DT_STRING
        tensor_shape { dim { size: 2 } } string_val: "foo" string_val: "bar" """)
    assert_tensor(req.inputs["bin_tensor"], """dtype: DT_STRING
        tensor_shape {} string_val: "hello" """)


def test_SingleUnnamedTensorErrors():
    infos = infomap(default="DT_INT32")
    for body, substring in (
            ("", "document is empty"),
            ('{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}',
             "must be a string value"),
            ('{"instances": [[1,2],[3,4],[5,6,7]], "inputs": [[1,2],[3,4],[5,6,7]]}',
             "Not formatted correctly"),
            ('{"instances": [[1,2],[3,4],[5,6,7]]}', "Expecting tensor size"),
            ('{"instances": [[1,2],[3,4],[[5,6]]]}', "Expecting shape"),
            ('{"instances": [1, [1]]}', "Expecting shape"),
            ('{"instances": [[1,2],["a", "b"]]}', "not of expected type")):
        refused(fill, body, infos, substring=substring)


def test_MultipleNamedTensorErrors():
    infos = infomap(int_tensor="DT_INT32", str_tensor="DT_STRING")
    for body, substring in (
            # Different shapes across int_tensor instances.
            ("""{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},
                 {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}""",
             "Expecting shape"),
            # Different size/length across int_tensor instances.
            ("""{"instances": [{"int_tensor": [[1,2],[3,4],[5,6],[7,8]],
                                "str_tensor": ["foo", "bar"]},
                 {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}""",
             "Expecting tensor size"),
            # First element an object: the rest must be objects too.
            ("""{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},
                 [1, 20, 30],
                 {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}""",
             "Expecting object but got list")):
        refused(fill, body, infos, substring=substring)
    # First element a list: the rest must be lists too.
    refused(fill, '{"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}',
            infomap(str_tensor="DT_STRING"), substring="Expecting value/list but got object")


# --- MakeJsonFromTensors ---------------------------------------------------

INT_2x3x2 = """dtype: DT_INT32
    tensor_shape { dim { size: 2 } dim { size: 3 } dim { size: 2 } }
    int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6
    int_val: 7 int_val: 8 int_val: 9 int_val: 0 int_val: 1 int_val: 2"""
BYTES_2x2 = """dtype: DT_STRING tensor_shape { dim { size: 2 } dim { size: 2 } }
    string_val: "hello" string_val: "world" string_val: "tf" string_val: "serving" """


def test_FromJsonSingleTensor():
    tensors = tensormap(int_tensor=INT_2x3x2)
    compare_json(rest.tensors_to_json(tensors, rest.ROW),
                 '{"predictions": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]}')
    compare_json(rest.tensors_to_json(tensors, rest.COLUMNAR),
                 '{"outputs": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]}')


def test_FromJsonSingleScalarTensor():
    tensors = tensormap(int_tensor="""dtype: DT_INT32 tensor_shape { dim { size: 5 } }
        int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5""")
    compare_json(rest.tensors_to_json(tensors, rest.ROW), '{ "predictions": [1, 2, 3, 4, 5] }')
    compare_json(rest.tensors_to_json(tensors, rest.COLUMNAR), '{ "outputs": [1, 2, 3, 4, 5] }')


def test_FromJsonSingleBytesTensor():
    compare_json(rest.tensors_to_json(tensormap(str_tensor_bytes=BYTES_2x2), rest.ROW),
                 """{"predictions": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                                     [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}""")


def test_FromJsonSingleFloatTensorSixDigitPrecision():
    tensors = tensormap(float_tensor="""dtype: DT_FLOAT
        tensor_shape { dim { size: 2 } dim { size: 3 } }
        float_val: 9000000 float_val: 999999 float_val: 0.50000 float_val: .0003
        float_val: .00003 float_val: 555557.5""")
    compare_json_as_strings(rest.tensors_to_json(tensors, rest.ROW),
                            '{"predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]]}')


def test_FromJsonSingleFloatTensorNonFinite():
    tensors = tensormap(float_tensor="""dtype: DT_FLOAT
        tensor_shape { dim { size: 2 } dim { size: 2 } }
        float_val: NaN float_val: Infinity float_val: 3 float_val: -Infinity""")
    compare_json_as_strings(rest.tensors_to_json(tensors, rest.ROW),
                            '{"predictions": [[NaN, Infinity], [3.0, -Infinity]]}')


def test_FromJsonSingleTensorErrors():
    refused(rest.tensors_to_json, {}, rest.ROW, substring="empty tensor map")
    complex_tensor = tensormap(tensor="""dtype: DT_COMPLEX64 tensor_shape { dim { size: 2 } }
        scomplex_val: 1.0 scomplex_val: 2.0""")
    refused(rest.tensors_to_json, complex_tensor, rest.ROW, substring="tensor type: complex64")
    no_shape = tensormap(tensor="dtype: DT_INT32 int_val: 1")
    refused(rest.tensors_to_json, no_shape, rest.ROW, substring="no shape information")


def test_FromJsonMultipleNamedTensors():
    tensors = tensormap(
        int_tensor=INT_2x3x2,
        str_tensor="""dtype: DT_STRING tensor_shape { dim { size: 2 } dim { size: 2 } }
            string_val: "foo" string_val: "bar" string_val: "baz" string_val: "bat" """,
        float_tensor="""dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 1 } }
            float_val: 1.0 float_val: 2.0""",
        double_scalar_tensor="""dtype: DT_DOUBLE tensor_shape { dim { size: 2 } }
            double_val: 8.0 double_val: 9.0""",
        str_tensor_bytes=BYTES_2x2)
    compare_json(rest.tensors_to_json(tensors, rest.ROW), """{"predictions": [
        {"double_scalar_tensor": 8.0, "float_tensor": [1.0],
         "int_tensor": [[1, 2], [3, 4], [5, 6]], "str_tensor": ["foo", "bar"],
         "str_tensor_bytes": [ {"b64": "aGVsbG8="}, {"b64": "d29ybGQ="} ]},
        {"double_scalar_tensor": 9.0, "float_tensor": [2.0],
         "int_tensor": [[7, 8], [9, 0], [1, 2]], "str_tensor": ["baz", "bat"],
         "str_tensor_bytes": [ {"b64": "dGY="}, {"b64": "c2VydmluZw=="} ]}]}""")
    compare_json(rest.tensors_to_json(tensors, rest.COLUMNAR), """{"outputs": {
        "double_scalar_tensor": [8.0, 9.0], "float_tensor": [[1.0], [2.0]],
        "int_tensor": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]],
        "str_tensor": [["foo", "bar"], ["baz", "bat"]],
        "str_tensor_bytes": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                             [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}}""")


def test_FromJsonMultipleNamedTensorsErrors():
    tensors = tensormap(
        int_tensor="""dtype: DT_INT32 tensor_shape { dim { size: 2 } dim { size: 3 } }
            int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6""",
        str_tensor="""dtype: DT_STRING tensor_shape { dim { size: 1 } dim { size: 3 } }
            string_val: "foo" string_val: "bar" string_val: "baz" """)
    refused(rest.tensors_to_json, tensors, rest.ROW, substring="inconsistent batch size")


def test_FromJsonSingleZeroBatchTensor():
    tensors = tensormap(int_tensor="""dtype: DT_INT32
        tensor_shape { dim { size: 0 } dim { size: 2 } }""")
    compare_json(rest.tensors_to_json(tensors, rest.ROW), '{ "predictions": [] }')


def test_FromJsonMultipleZeroBatchTensors():
    tensors = tensormap(
        str_tensor="""dtype: DT_STRING
            tensor_shape { dim { size: 0 } dim { size: 1 } dim { size: 2 } }""",
        float_tensor="""dtype: DT_FLOAT
            tensor_shape { dim { size: 0 } dim { size: 3 } dim { size: 4 } }""")
    compare_json(rest.tensors_to_json(tensors, rest.ROW), '{ "predictions": [] }')


def test_FromJsonMultipleZeroBatchTensorsErrors():
    tensors = tensormap(
        int_tensor="dtype: DT_INT32 tensor_shape { dim { size: 0 } dim { size: 2 } }",
        str_tensor="""dtype: DT_STRING tensor_shape { dim { size: 1 } dim { size: 2 } }
            string_val: "foo" string_val: "bar" """)
    refused(rest.tensors_to_json, tensors, rest.ROW, substring="inconsistent batch size")


# --- FillClassificationRequestFromJson / FillRegressionRequestFromJson ---
# TYPED_TEST(ClassifyRegressRequestTest, ...) over both request types.

REQUEST_TYPES = pytest.mark.parametrize("request_type", [
    pytest.param((rest.parse_classify_request, classification_pb2.ClassificationRequest),
                 id="ClassificationRequest"),
    pytest.param((rest.parse_regress_request, regression_pb2.RegressionRequest),
                 id="RegressionRequest")])


def assert_same_request(actual, expected):
    """MessageDifferencer with NaN equal to NaN: the text forms (maps sorted by key,
    floats printed from the same float32 values, nan as "nan") are compared."""
    assert text_format.MessageToString(actual) == text_format.MessageToString(expected)


@REQUEST_TYPES
def test_ClassifyRegressRequestTest_RequestNoContext(request_type):
    parse, proto = request_type
    req = parse("""{"examples": [
        {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0 ], "age": 20},
        {"names": [ "baz" ], "ratings": 6.0}]}""")
    expected = text_format.Parse("""input { example_list {
        examples { features {
          feature { key: "names" value { bytes_list { value: "foo" value: "bar" } } }
          feature { key: "ratings" value { float_list { value: 8.0 value: 9.0 } } }
          feature { key: "age" value { int64_list { value: 20 } } } } }
        examples { features {
          feature { key: "names" value { bytes_list { value: "baz" } } }
          feature { key: "ratings" value { float_list { value: 6.0 } } } } } } }""", proto())
    assert_same_request(req, expected)


@REQUEST_TYPES
def test_ClassifyRegressRequestTest_RequestWithContextAndSignature(request_type):
    parse, proto = request_type
    req = parse("""{"signature_name": "custom_signture",
        "context": {"query": "pizza", "location": [ "sfo" ]},
        "examples": [
          {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0, NaN, Infinity ], "age": 20},
          {"names": [ "baz", { "b64": "aGVsbG8=" } ], "ratings": 6.0,
           "intboolmix": [ 1, true, false ]},
          {"names": "bar", "ratings": -Infinity}]}""")
    expected = text_format.Parse("""model_spec { signature_name: "custom_signture" }
      input { example_list_with_context {
        context { features {
          feature { key: "query" value { bytes_list { value: "pizza" } } }
          feature { key: "location" value { bytes_list { value: "sfo" } } } } }
        examples { features {
          feature { key: "names" value { bytes_list { value: "foo" value: "bar" } } }
          feature { key: "ratings" value { float_list {
            value: 8.0 value: 9.0 value: NaN value: Infinity } } }
          feature { key: "age" value { int64_list { value: 20 } } } } }
        examples { features {
          feature { key: "names" value { bytes_list { value: "baz" value: "hello" } } }
          feature { key: "ratings" value { float_list { value: 6.0 } } }
          feature { key: "intboolmix" value { int64_list { value: 1 value: 1 value: 0 } } } } }
        examples { features {
          feature { key: "names" value { bytes_list { value: "bar" } } }
          feature { key: "ratings" value { float_list { value: -Infinity } } } } } } }""",
                                 proto())
    assert_same_request(req, expected)


@REQUEST_TYPES
def test_ClassifyRegressRequestTest_JsonErrors(request_type):
    parse, _ = request_type
    for body, substring in (
            ('{"signature_name": [ "hello" ], "examples": [ { "names": [ "foo", "bar" ] } ]}',
             "'signature_name' key must be a string"),
            ('{"context": [ { "names": [ "foo", "bar" ] } ]}', "Example must be JSON object"),
            ('{"examples": { "names": [ "foo", "bar" ] }}', "list/array"),
            ('{"examples": [ [ { "names": [ "foo", "bar" ] } ] ]}',
             "Example must be JSON object"),
            ('{"examples": [ { "names": [ 10, null ] } ]}',
             "names has element with unexpected JSON type: Null"),
            ('{"examples": [ { "names": [ 10, 10.0 ] } ]}',
             "feature: names expecting type: int64"),
            ('{"examples": [ { "names": [ 10, { "test": 10 } ] } ]}',
             "names has element with unexpected JSON type: Object"),
            ('{"examples": [ { "names": [ [10], 20 ] } ]}',
             "names has element with unexpected JSON type: Array"),
            ('{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}',
             "Only int64_t is supported")):
        refused(parse, body, substring=substring)


# --- MakeJsonFromClassificationResult / RegressionResult / Status ---------

def test_ClassifyRegressnResultTest_JsonFromClassificationResult():
    result = text_format.Parse("""
        classifications { classes { label: "car" score: 0.2 } classes { label: "bike" score: 0.7 }
                          classes { label: "bus" score: 0.1 } }
        classifications { classes { label: "car" score: 0.7 } classes { label: "bike" score: 0.1 }
                          classes { label: "bus" score: 0.2 } }""",
                               classification_pb2.ClassificationResult())
    compare_json(rest.classification_result_to_json(result), """{"results": [
        [ ["car", 0.2], ["bike", 0.7], ["bus", 0.1] ],
        [ ["car", 0.7], ["bike", 0.1], ["bus", 0.2] ]]}""")


def test_ClassifyRegressnResultTest_JsonFromRegressionResult():
    result = text_format.Parse("regressions { value: 0.2 } regressions { value: 0.9 } "
                               "regressions { value: 1.0 }", regression_pb2.RegressionResult())
    compare_json(rest.regression_result_to_json(result), '{ "results": [ 0.2, 0.9, 1.0 ] }')


def test_ClassifyRegressnResultTest_JsonFromRegressionResultWithNonFinite():
    result = text_format.Parse(
        "regressions { value: 0.2 } regressions { value: Infinity } regressions { value: 1.0 } "
        "regressions { value: -Infinity } regressions { value: NaN }",
        regression_pb2.RegressionResult())
    compare_json_as_strings(rest.regression_result_to_json(result),
                            '{ "results": [ 0.2, Infinity, 1.0, -Infinity, NaN ] }')


def test_ClassifyRegressnResultTest_JsonFromResultErrors():
    refused(rest.classification_result_to_json, classification_pb2.ClassificationResult(),
            substring="empty ClassificationResults")
    refused(rest.regression_result_to_json, regression_pb2.RegressionResult(),
            substring="empty RegressionResults")


def test_MakeJsonFromTensors_StatusOK():
    assert rest.error_to_json(None) == ""


def test_MakeJsonFromTensors_StatusError():
    compare_json(rest.error_to_json(rest.RestError("INVALID_ARGUMENT", 'Bad key: "key"')),
                 r'{ "error": "Bad key: \"key\"" }')
    compare_json(rest.error_to_json(rest.RestError("INVALID_ARGUMENT", "Bad key: 'key'")),
                 """{ "error": "Bad key: 'key'" }""")


# --- json_tensor.cc behaviour upstream's test does not cover --------------

@pytest.mark.parametrize("dtype,accepted,refused_values", [
    # int8/int16/uint8 go through the proto's int32 field: int32 range, then wrap.
    ("DT_INT8", [(-2147483648, 0), (300, 44), (127, 127)], [2147483648, 2.0, True]),
    ("DT_INT16", [(70000, 4464)], [2147483648, 1.5]),
    ("DT_UINT8", [(-1, 255), (256, 0)], [-2147483649]),
    ("DT_INT32", [(-2147483648, -2147483648), (2147483647, 2147483647)],
     [2147483648, -2147483649, 2.0, False]),
    ("DT_INT64", [(-(1 << 63), -(1 << 63)), ((1 << 63) - 1, (1 << 63) - 1)],
     [1 << 63, -(1 << 63) - 1, 2.0]),
    ("DT_UINT32", [(0, 0), ((1 << 32) - 1, (1 << 32) - 1)], [-1, 1 << 32]),
    ("DT_UINT64", [((1 << 64) - 1, (1 << 64) - 1)], [-1, 1 << 64, 1.0]),
    ("DT_FLOAT", [(2, 2.0), (0.5, 0.5)], [True, "1"]),
    ("DT_BOOL", [(True, True)], [1, 0.0]),
])
def test_integer_ranges_and_json_types(dtype, accepted, refused_values):
    infos = infomap(x=dtype)
    for value, want in accepted:
        got = fill('{"instances": [%s]}' % json.dumps(value), infos).inputs["x"]
        assert got.tolist() == [want], (dtype, value, got)
    for value in refused_values:
        error = refused(fill, '{"instances": [%s]}' % json.dumps(value), infos,
                        substring="is not of expected type: " + dtype[3:].lower())
        assert error.where == "instances[0] (input x)", error.where


def test_ignored_keys_errors_and_columnar_where():
    infos = infomap(a="DT_FLOAT", b="DT_STRING")
    # An extra key in columnar "inputs", and unknown top-level keys: ignored.
    req = fill('{"inputs": {"a": [1], "b": ["x"], "extra": 3}, "junk": 1}', infos)
    assert sorted(req.inputs) == ["a", "b"] and req.format == rest.COLUMNAR
    # Text after the root object is not read.
    assert fill('{"inputs": {"a": [1], "b": ["x"]}} trailing', infos).inputs["a"].tolist() == [1]
    error = refused(fill, '{"inputs": {"a": ["x"], "b": ["x"]}}', infos,
                    substring='JSON Value: "x" Type: String is not of expected type: float')
    assert error.where == "inputs.a" and error.http_status == 400
    error = refused(fill, '{"instances": [{"a": 1, "b": "x"}, {"b": "y"}]}', infos,
                    substring="Failed to process element: 1 of 'instances' list")
    assert "keys must be equal to: a,b" in error.message and error.where == "instances[1]"
    # A half input is UNIMPLEMENTED in columnar format; row format wraps it as
    # INVALID_ARGUMENT, as TF Serving does.
    refused(fill, '{"inputs": [1.5]}', infomap(h="DT_HALF"), code="UNIMPLEMENTED",
            substring="to type: half")
    refused(fill, '{"instances": [1.5]}', infomap(h="DT_HALF"),
            substring="Error: UNIMPLEMENTED: Conversion of JSON Value: 1.5 to type: half")
    for body, substring in (
            ("   ", "JSON Parse error: The document is empty. at offset: 3"),
            ("[1]", "JSON Value: [1] Is not object"),
            ('{"instances": [1,]}', "JSON Parse error: Unspecific syntax error."),
            ('{"instances": [1e400]}', "JSON Parse error: Number too big"),
            ('{"instances": [1.]}', "JSON Parse error: Miss fraction part"),
            ('{"instances" [1]}', "JSON Parse error: Missing a colon")):
        refused(fill, body, infos, substring=substring)


def test_signature_lookup_like_tf_serving():
    signatures = {"serving_default": meta_graph_pb2.SignatureDef(inputs=infomap(x="DT_INT64")),
                  "other": meta_graph_pb2.SignatureDef(inputs=infomap(y="DT_STRING"))}
    assert fill_with(signatures, '{"instances": [1]}').inputs["x"].dtype == np.int64
    assert fill_with(signatures, '{"signature_name": "other", "instances": ["a"]}'
                     ).inputs["y"].tolist() == [b"a"]
    refused(fill_with, signatures, '{"signature_name": "nope", "instances": [1]}',
            substring='Serving signature name: "nope" not found in signature def')


def fill_with(signatures, body):
    return rest.parse_predict_request(body, signatures)


def test_float_output_text_as_tf_serving_writes_it():
    # %g when it reads back as the same float32, else %.9g; doubles %g or %.17g.
    values = np.float32([0.0003, 0.1, 1.0000001, 16777216, -0.0, 1e-45, 3.4028235e38])
    text = rest.tensors_to_json({"y": values}, rest.COLUMNAR)
    tokens = re.findall(r"-?[0-9][0-9.e+-]*", text)
    assert tokens == ["0.0003", "0.1", "1.00000012", "16777216.0", "-0.0",
                      "1.4013e-45", "3.40282347e+38"], tokens
    doubles = rest.tensors_to_json({"y": np.float64([0.1, 1 / 3, 2.0])}, rest.COLUMNAR)
    assert re.findall(r"[0-9][0-9.e+-]*", doubles) == ["0.1", "0.33333333333333331", "2.0"]
    # What a client's JSON parser reads: the decimals written, not widened floats.
    assert rest.outputs_to_predictions({"y": np.float32([0.0003])}) == {"predictions": [0.0003]}
    assert math.isnan(rest.outputs_to_predictions({"y": np.float32([np.nan])})["predictions"][0])
    # The exact text TF Serving's PrettyWriter emits for a row answer.
    assert rest.tensors_to_json({"y": np.int32([[1, 2], [3, 4]])}) == (
        '{\n    "predictions": [[1, 2], [3, 4]\n    ]\n}')
