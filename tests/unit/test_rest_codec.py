"""The REST codec: KServe v2 JSON/binary tensors and TF Serving predict JSON, both ways.

No server and no TensorFlow: request bodies are built here (or by tritonclient.http itself) and
responses are read back with orjson (or tritonclient.http).
"""

import base64
import json
import struct
import time
import tracemalloc

import numpy as np
import orjson
import pytest

from mimo.protos import DATATYPES, CodecError, datatype_to_numpy
from mimo.protos.rest_codec import (
    RestInferRequest,
    TfPredictRequest,
    decode_infer_request,
    decode_predict_request,
    encode_infer_response,
    encode_predict_response,
)

LIMIT = 1 << 20
SHAPES = [(2, 3), (), (0,), (2, 0, 3), (1,)]


def sample(datatype, shape=(2, 3), finite=True, utf8=True):
    """An array of `datatype` with extreme values (JSON-safe unless finite/utf8 are False)."""
    n = int(np.prod(shape))
    if datatype == "BYTES":
        pool = [b"", b"a", "h\u00e9llo \u2603".encode(), b"x" * 300, b"\x00nul"]
        if not utf8:
            pool.append(b"\xff\xfe")
        out = np.empty(n, dtype=object)
        out[:] = [pool[i % len(pool)] for i in range(n)]
        return out.reshape(shape)
    dtype = datatype_to_numpy(datatype)
    if datatype == "BOOL":
        return (np.arange(n) % 2 == 0).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max - 1, info.min + 1]
    else:
        values = [-1.5, np.finfo(dtype).max, np.finfo(dtype).tiny, 0.1, 3.25, -0.0]
        if not finite:
            values += [np.inf, -np.inf]
    return np.array([values[i % len(values)] for i in range(n)], dtype=dtype).reshape(shape)


def assert_same(got, want):
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object and got.tolist() == want.tolist()
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def raw_of(arr):
    if arr.dtype == object:
        return b"".join(struct.pack("<I", len(item)) + item for item in arr.ravel().tolist())
    return arr.tobytes()


def json_data(arr):
    if arr.dtype == object:
        return [item.decode() for item in arr.ravel().tolist()]
    return arr.ravel().tolist()


def request_body(tensors, outputs=None, parameters=None, request_id=None):
    """A v2 REST request as a client sends it: tensors are (name, array, binary) or dicts."""
    inputs, blobs = [], []
    for tensor in tensors:
        if isinstance(tensor, dict):
            inputs.append(tensor)
            continue
        name, arr, binary = tensor
        item = {"name": name, "shape": list(arr.shape), "datatype": datatype_of(arr)}
        if binary:
            blob = raw_of(arr)
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = json_data(arr)
        inputs.append(item)
    doc = {"inputs": inputs}
    if outputs is not None:
        doc["outputs"] = outputs
    if parameters is not None:
        doc["parameters"] = parameters
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def datatype_of(arr):
    from mimo.protos import numpy_to_datatype

    return numpy_to_datatype(arr.dtype)


def decode(tensors, **kwargs):
    body, length = request_body(tensors)
    return decode_infer_request(body, length, kwargs.get("max_elements", LIMIT))


def one(item, header_length=None, max_elements=LIMIT, extra=b""):
    """Decode a request with the one JSON input `item` (plus `extra` binary bytes)."""
    header = json.dumps({"inputs": [item]}).encode()  # stdlib: integers past 64 bits too
    if extra and header_length is None:
        header_length = len(header)
    return decode_infer_request(header + extra, header_length, max_elements).inputs


def refused(match, item=None, body=None, header_length=None, max_elements=LIMIT, extra=b""):
    with pytest.raises(CodecError, match=match) as info:
        if body is not None:
            decode_infer_request(body, header_length, max_elements)
        else:
            one(item, header_length, max_elements, extra)
    return str(info.value)


def x(datatype, shape, data):
    return {"name": "x", "datatype": datatype, "shape": shape, "data": data}


# ------------------------------------------------------------------ KServe v2: request round trips


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_request_round_trip(datatype, shape, binary):
    arr = sample(datatype, shape, finite=not binary, utf8=not binary)
    got = decode([("x", arr, binary)]).inputs["x"]
    assert_same(got, arr)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_v2_nested_data_is_row_major_like_flat(datatype):
    arr = sample(datatype, (2, 3, 2))
    nested = np.vectorize(bytes.decode, otypes=[object])(arr).tolist() if datatype == "BYTES" else arr.tolist()
    got = one(x(datatype, [2, 3, 2], nested))["x"]
    assert_same(got, arr)
    assert_same(one(x(datatype, [2, 3, 2], json_data(arr)))["x"], arr)


def test_v2_mixed_json_and_binary_inputs_keep_request_order():
    a, b, c = np.arange(6, dtype="<f4").reshape(2, 3), sample("BYTES", (3,)), np.array([7, 8], dtype="<i8")
    request = decode([("a", a, True), ("b", b, False), ("c", c, True)])
    assert list(request.inputs) == ["a", "b", "c"]
    assert_same(request.inputs["a"], a)
    assert_same(request.inputs["b"], b)
    assert_same(request.inputs["c"], c)
    assert not request.inputs["a"].flags.writeable  # a view of the body, like the protobuf codec's


def test_v2_bytes_json_strings_are_utf8_bytes():
    got = one(x("BYTES", [3], ["", "snow \u2603", "\U0001f600"]))["x"]
    assert got.dtype == object and got.tolist() == [b"", "snow \u2603".encode(), "\U0001f600".encode()]


def test_v2_integral_floats_are_accepted_for_ints():
    assert one(x("INT32", [2], [3.0, -2e3]))["x"].tolist() == [3, -2000]


def test_v2_request_fields():
    body, length = request_body(
        [("x", np.zeros(2, "<f4"), True)], request_id="r1",
        outputs=[{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"},
                 {"name": "c", "parameters": {"binary_data": False}}],
        parameters={"binary_data_output": True, "signature_name": "s"})
    request = decode_infer_request(body, length, LIMIT)
    assert isinstance(request, RestInferRequest)
    assert request.id == "r1"
    assert request.outputs == ["a", "b", "c"]
    assert request.binary_outputs == {"a": True, "c": False}
    assert request.binary_default is True
    assert request.parameters["signature_name"] == "s"
    assert [request.wants_binary(n) for n in "abc"] == [True, True, False]
    plain = decode_infer_request(b'{"inputs": []}', None, LIMIT)
    assert (plain.id, plain.inputs, plain.outputs, plain.binary_default, plain.parameters) == ("", {}, [], False, {})


def test_v2_header_length_may_be_the_header_string():
    body, length = request_body([("x", np.arange(3, dtype="<i4"), True)])
    assert decode_infer_request(body, str(length), LIMIT).inputs["x"].tolist() == [0, 1, 2]


# ------------------------------------------------------------------ KServe v2: refused requests


def test_v2_binary_data_size_must_add_up():
    arr = np.arange(4, dtype="<f4")
    body, length = request_body([("x", arr, True)])
    refused("add up to 16 bytes but 17 follow", body=body + b"\0", header_length=length)
    refused("add up to 16 bytes but 15 follow", body=body[:-1], header_length=length)
    # Without the header the whole body is JSON: binary inputs cannot have their bytes.
    header = body[:length]
    refused("add up to 16 bytes but 0 follow.*no Inference-Header-Content-Length", body=header)
    # The sizes add up, but one tensor's size does not fit its shape.
    bad = {"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 12}}
    refused(r"input 'x': raw data is 12 bytes, shape \[4\] FP32 needs 16", bad, extra=b"\0" * 12)


def test_v2_bad_binary_bytes_elements():
    item = {"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 9}}
    refused("input 's': raw BYTES element 1 overruns", item, extra=struct.pack("<I", 1) + b"a" + struct.pack("<I", 9))
    item["parameters"]["binary_data_size"] = 6
    refused("input 's': raw BYTES data ends after 1 of 2", item, extra=struct.pack("<I", 1) + b"a" + b"z")


@pytest.mark.parametrize("length, match", [
    (10**6, "larger than the body"), (-1, "non-negative integer"), ("abc", "non-negative integer"),
    (1.5, "non-negative integer"), (True, "non-negative integer"), ("\u00b2", "non-negative integer"),
])
def test_v2_bad_header_length(length, match):
    refused(match, body=b'{"inputs": []}', header_length=length)


@pytest.mark.parametrize("body, match", [
    (b'{"inputs": [', "not valid JSON"),
    (b"\xff", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[]", "must be a JSON object, got an array"),
    (b'"x"', "must be a JSON object, got a string"),
    (b"{}", 'no "inputs"'),
    (b'{"inputs": {}}', '"inputs" must be a JSON array'),
    (b'{"inputs": [1]}', r"inputs\[0\] must be a JSON object"),
    (b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}', r'inputs\[0\] needs a "name"'),
    (b'{"id": 3, "inputs": []}', '"id" must be a string'),
    (b'{"parameters": [], "inputs": []}', "parameters must be a JSON object"),
    (b'{"parameters": {"binary_data_output": 1}, "inputs": []}', "binary_data_output must be true or false"),
    (b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]}', "output 'y'"),
    (b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 2}}]}', "classification"),
    (b'{"inputs": [], "outputs": {}}', '"outputs" must be a JSON array'),
])
def test_v2_malformed_requests(body, match):
    refused(match, body=body)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_v2_nan_and_infinity_literals_are_not_json(literal):
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, ' + literal + b"]}]}"
    message = refused("not valid JSON", body=body)
    assert "NaN and Infinity are not JSON numbers" in message


@pytest.mark.timeout(10)
def test_v2_deep_nesting_is_refused_quickly():
    for body in (b"[" * 500_000, b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": '
                 + b"[" * 500_000 + b"]}]}"):
        start = time.monotonic()
        refused("not valid JSON.*depth", body=body)
        assert time.monotonic() - start < 5


def test_v2_datatype_name_and_duplicates():
    refused("input 'x': unsupported datatype 'FP8'", x("FP8", [1], [1]))
    refused("input 'x': unsupported datatype None", {"name": "x", "shape": [1], "data": [1]})
    refused("input 'x': unsupported datatype 'BF16'", x("BF16", [1], [1]))
    body, _ = request_body([("x", np.zeros(1, "<f4"), False), ("x", np.zeros(1, "<f4"), False)])
    refused("input 'x': appears twice", body=body)


def test_v2_data_count_must_match_shape():
    refused(r"input 'x': data has 5 elements where shape \[2, 3\] needs 6", x("FP32", [2, 3], [1, 2, 3, 4, 5]))
    refused(r"data has 0 elements where shape \[\] needs 1", x("FP32", [], []))
    refused(r"ragged data: 2 elements in dimension 1 where shape \[2, 3\] has 3",
            x("FP32", [2, 3], [[1, 2, 3], [4, 5]]))
    refused(r"ragged data: 3 elements in dimension 0", x("FP32", [2, 3], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]))
    refused(r"data is nested 1 deep where shape \[2, 3\] has rank 2", x("FP32", [2, 3], [[1, 2, 3], 4]))
    refused(r"nested deeper than shape \[2, 3\]", x("FP32", [2, 3], [[[1], 2, 3], [4, 5, 6]]))
    refused(r"nested deeper than shape \[2\]", x("FP32", [2], [[1], [2]]))
    refused(r"nested deeper than shape \[2, 1\]", x("FP32", [2, 1], [1, [2]]))
    refused("data must be a JSON array, got a number", x("FP32", [], 1.5))
    refused('neither "data" nor a binary_data_size', {"name": "x", "datatype": "FP32", "shape": [1]})
    both = dict(x("FP32", [1], [1.0]), parameters={"binary_data_size": 4})
    refused('both "data" and a binary_data_size', both, extra=b"\0" * 4)
    shm = dict(x("FP32", [1], [1.0]), parameters={"shared_memory_region": "r"})
    refused("shared memory is not supported", shm)


@pytest.mark.parametrize("shape, match", [
    ([2**62, 2**62, 0], "overflows"),
    ([2**31, 2**31, 2**31], "overflows"),
    ([100_000, 100_000], "is 10000000000 elements, over the limit of 1048576"),
    ([1, -1], "negative dimension"),
    ([1, True], "shape must be an array of integers, it holds true"),
    ([1.0], "shape must be an array of integers, it holds a number"),
    ("2", "shape must be an array of integers, got a string"),
    (None, "shape must be an array of integers, got null"),
])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_shape_is_refused_before_anything_is_allocated(shape, match, binary):
    item = {"name": "x", "datatype": "BYTES", "shape": shape}
    if binary:
        item["parameters"] = {"binary_data_size": 0}
    else:
        item["data"] = []
    tracemalloc.start()
    try:
        refused(f"input 'x': .*{match}", item)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_v2_max_elements_is_inclusive():
    assert one(x("INT8", [2, 2], [1, 2, 3, 4]), max_elements=4)["x"].shape == (2, 2)
    refused("over the limit of 3", x("INT8", [2, 2], [1, 2, 3, 4]), max_elements=3)


@pytest.mark.parametrize("datatype, data, match", [
    ("FP32", [1.0, "2"], "FP32 data must be numbers, got strings"),
    ("FP32", [1.0, None], "FP32 data must be numbers, got null"),
    ("FP32", [1.0, True], "FP32 data must be numbers, got true/false"),
    ("FP32", [1.0, {}], "FP32 data must be numbers, got objects"),
    ("FP32", [1e300, 0], "a value is out of range for FP32"),
    ("FP16", [70000, 0], "a value is out of range for FP16"),
    ("INT32", [1, 2.5], "INT32 value 2.5 is not an exact integer"),
    ("INT32", [1, False], "INT32 data must be numbers, got true/false"),
    ("INT64", [1, 1e300], r"INT64 value 1e\+300 is not an exact integer"),
    # orjson reads integers past 64 bits as floats: this one rounds to -2**63, which INT64 holds.
    ("INT64", [0, -9223372036854775809], "INT64 value -9.223372036854776e\\+18 is not an exact"),
    ("UINT8", [0, 300], "value 300 is out of range for UINT8"),
    ("UINT64", [0, -1], "value -1 is out of range for UINT64"),
    ("UINT64", [0, 18446744073709551616], "UINT64 value 1.8446744073709552e\\+19 is not an exact"),
    ("INT8", [0, -129], "value -129 is out of range for INT8"),
    ("BOOL", [True, 1], "BOOL data must be true or false, got integers"),
    ("BYTES", ["a", 1], "BYTES data must be strings, got integers"),
    ("BYTES", ["a", {"b64": "YQ=="}], "BYTES data must be strings, got objects"),
])
def test_v2_wrong_element_types(datatype, data, match):
    refused(f"input 'x': {match}", x(datatype, [2], data))


def test_v2_numbers_beyond_double_are_not_json():
    refused("not valid JSON: number is infinity", x("FP64", [2], [10**400, 0]))
    refused("not valid JSON: number is infinity", body=b'{"inputs": [{"name": "x", "datatype": "FP64", '
            b'"shape": [1], "data": [1e999]}]}')


def test_v2_64_bit_extremes_are_exact():
    assert one(x("UINT64", [1], [2**64 - 1]))["x"].tolist() == [2**64 - 1]
    assert one(x("INT64", [2], [-(2**63), 2**63 - 1]))["x"].tolist() == [-(2**63), 2**63 - 1]


# ------------------------------------------------------------------ KServe v2: responses


def parse(body, length):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient.parse_response_body(body, header_length=length)


def split(body, length):
    """The JSON header and the binary blobs of a response, by name (our own reading)."""
    if length is None:
        return orjson.loads(body), {}
    doc, offset, blobs = orjson.loads(body[:length]), length, {}
    for output in doc["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[output["name"]] = body[offset : offset + size]
            offset += size
    assert offset == len(body)
    return doc, blobs


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_response_is_read_by_tritonclient(datatype, shape, binary):
    arr = sample(datatype, shape, finite=not binary, utf8=not binary)
    body, length = encode_infer_response("m", 3, "r7", {"y": arr}, {"y"} if binary else ())
    assert (length is None) is not binary
    doc, blobs = split(body, length)
    assert doc["model_name"] == "m" and doc["model_version"] == "3" and doc["id"] == "r7"
    (out,) = doc["outputs"]
    assert out["name"] == "y" and out["datatype"] == datatype and out["shape"] == list(shape)
    if binary:
        assert out["parameters"] == {"binary_data_size": len(raw_of(arr))}
        assert blobs["y"] == raw_of(arr)
    else:
        assert len(out["data"]) == arr.size  # flat, row-major
        if datatype == "BYTES":
            assert out["data"] == json_data(arr)
        else:  # floats are written in their own type's shortest form (3.4028235e+38 for FP32)
            assert_same(np.array(out["data"], dtype=arr.dtype).reshape(arr.shape), arr)
    got = parse(body, length).as_numpy("y")
    assert got.shape == arr.shape
    if arr.size == 0:
        return  # tritonclient gives a float64 np.empty(0) for an empty binary output
    if datatype == "BYTES" and not binary:  # tritonclient leaves JSON strings as str
        assert got.tolist() == np.vectorize(bytes.decode, otypes=[object])(arr).tolist()
    else:
        assert_same(got, arr)


def test_v2_response_mixes_binary_and_json_in_output_order():
    outputs = {"a": np.arange(3, dtype="<i4"), "b": np.array([0.5], "<f8"), "c": sample("BYTES", (2,))}
    request = RestInferRequest(binary_outputs={"a": True, "b": False}, binary_default=True)
    body, length = encode_infer_response("m", "", "", outputs, request.wants_binary)
    doc, blobs = split(body, length)
    assert "id" not in doc and [o["name"] for o in doc["outputs"]] == ["a", "b", "c"]
    assert set(blobs) == {"a", "c"} and doc["outputs"][1]["data"] == [0.5]
    result = parse(body, length)
    for name, arr in outputs.items():
        assert_same(result.as_numpy(name), arr)


def test_v2_response_details():
    # Non-contiguous, big-endian and str inputs are written like their plain equivalents.
    arr = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    body, length = encode_infer_response("m", 1, "", {"y": arr, "s": np.array(["a", "\u00e9"])})
    doc = orjson.loads(body)
    assert length is None and doc["outputs"][0]["data"] == arr.ravel().tolist()
    assert doc["outputs"][0]["datatype"] == "FP32" and doc["outputs"][1]["data"] == ["a", "\u00e9"]
    body, length = encode_infer_response("m", 1, "", {"y": arr}, lambda name: True)
    assert_same(parse(body, length).as_numpy("y"), arr.astype("<f4"))
    # JSON has no NaN: orjson writes null (read back as NaN by tritonclient).
    body, _ = encode_infer_response("m", 1, "", {"y": np.array([np.nan, np.inf, 1], "<f4")})
    assert orjson.loads(body)["outputs"][0]["data"] == [None, None, 1.0]
    # A zero-size binary output still frames the body.
    body, length = encode_infer_response("m", 1, "", {"y": np.zeros((0, 2), "<f4")}, {"y"})
    assert length == len(body)


def test_v2_non_utf8_bytes_need_binary_data():
    arr = np.array([b"ok", b"\xff"], dtype=object)
    with pytest.raises(CodecError, match="output 'y': BYTES element 1 is not UTF-8.*binary_data"):
        encode_infer_response("m", 1, "", {"y": arr})
    body, length = encode_infer_response("m", 1, "", {"y": arr}, {"y"})
    assert parse(body, length).as_numpy("y").tolist() == [b"ok", b"\xff"]


# ------------------------------------------------------------------ KServe v2: tritonclient's requests


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_decodes_what_tritonclient_sends(binary):
    import tritonclient.http as httpclient

    arrays = {"f": sample("FP32", (2, 3)), "h": sample("FP16", (4,)), "i": sample("INT64", (2, 2)),
              "u": sample("UINT8", (3,)), "b": sample("BOOL", (2, 1)), "s": sample("BYTES", (2, 2))}
    inputs = []
    for name, arr in arrays.items():
        tensor = httpclient.InferInput(name, list(arr.shape), datatype_of(arr))
        tensor.set_data_from_numpy(arr, binary_data=binary and name != "h")  # one JSON among binaries
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput("y", binary_data=True),
               httpclient.InferRequestedOutput("z", binary_data=False)]
    body, length = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id="q", parameters={"signature_name": "sig"})
    assert (length is None) is not binary
    request = decode_infer_request(body, length, LIMIT)
    assert request.id == "q" and request.parameters == {"signature_name": "sig"}
    assert request.outputs == ["y", "z"] and request.binary_outputs == {"y": True, "z": False}
    for name, arr in arrays.items():
        assert_same(request.inputs[name], arr)
    # No outputs named: tritonclient asks for every output in binary.
    body, length = httpclient.InferenceServerClient.generate_request_body(inputs)
    request = decode_infer_request(body, length, LIMIT)
    assert request.outputs == [] and request.binary_default is True and request.wants_binary("any")


def test_v2_tritonclient_nan_in_json_is_refused():
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1, np.nan], "<f4"), binary_data=False)
    body, length = httpclient.InferenceServerClient.generate_request_body([tensor])
    with pytest.raises(CodecError, match="not valid JSON.*NaN"):
        decode_infer_request(body, length, LIMIT)


# ------------------------------------------------------------------ TF Serving: requests

ONE = {"x": ("FP32", 2)}
TWO = {"a": ("INT32", 2), "s": ("BYTES", 1)}


def predict(doc, ranks=ONE, max_elements=LIMIT):
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return decode_predict_request(body, ranks, max_elements)


def tf_refused(match, doc, ranks=ONE, max_elements=LIMIT):
    with pytest.raises(CodecError, match=match):
        predict(doc, ranks, max_elements)


def test_tf_row_format_one_input():
    request = predict({"instances": [[1, 2.5], [3, 4]]})
    assert isinstance(request, TfPredictRequest) and request.row_format and request.signature_name == ""
    assert_same(request.inputs["x"], np.array([[1, 2.5], [3, 4]], "<f4"))
    # The one input's entries may also be named.
    named = predict({"instances": [{"x": [1, 2.5]}, {"x": [3, 4]}], "signature_name": "sig"})
    assert named.signature_name == "sig"
    assert_same(named.inputs["x"], request.inputs["x"])
    # Rank 1: each instance is a scalar.
    assert_same(predict({"instances": [1, 2, 3]}, {"x": ("INT64", 1)}).inputs["x"], np.array([1, 2, 3], "<i8"))


def test_tf_row_format_several_inputs():
    request = predict({"instances": [{"a": [1, 2], "s": "p"}, {"a": [3, 4], "s": {"b64": "/w=="}}]}, TWO)
    assert request.row_format
    assert_same(request.inputs["a"], np.array([[1, 2], [3, 4]], "<i4"))
    assert request.inputs["s"].dtype == object and request.inputs["s"].tolist() == [b"p", b"\xff"]


def test_tf_columnar_format():
    request = predict({"inputs": [[1, 2], [3, 4]]})
    assert not request.row_format
    assert_same(request.inputs["x"], np.array([[1, 2], [3, 4]], "<f4"))
    assert_same(predict({"inputs": {"x": [[1, 2]]}}).inputs["x"], np.array([[1, 2]], "<f4"))
    request = predict({"inputs": {"a": [[1, 2], [3, 4], [5, 6]], "s": ["u", "v"]}}, TWO)
    assert request.inputs["a"].shape == (3, 2) and request.inputs["s"].tolist() == [b"u", b"v"]  # batches may differ
    scalar = predict({"inputs": {"k": 3}}, {"k": ("INT32", 0)})
    assert scalar.inputs["k"].shape == () and scalar.inputs["k"].dtype == np.dtype("<i4")
    assert predict({"inputs": {"b64": "YQ"}}, {"k": ("BYTES", 0)}).inputs["k"].tolist() == b"a"  # a value, padding-less
    assert predict({"inputs": []}, {"x": ("FP32", 1)}).inputs["x"].shape == (0,)
    assert predict({"inputs": [[]]}, {"x": ("FP32", 3)}).inputs["x"].shape == (1, 0, 0)


def test_tf_unknown_rank_follows_the_data():
    assert predict({"inputs": [[[1]], [[2]]]}, {"x": ("UINT8", None)}).inputs["x"].shape == (2, 1, 1)


@pytest.mark.parametrize("doc, ranks, match", [
    ({"instances": [[1, 2]], "inputs": [[1, 2]]}, ONE, "exactly one of.*it has both"),
    ({"signature_name": "s"}, ONE, "exactly one of.*it has neither"),
    ({"instances": [[1, 2]], "signature_name": 3}, ONE, '"signature_name" must be a string'),
    ({"instances": [[1, 2], [3]]}, ONE, "input 'x': ragged data: 1 elements in dimension 1 where the first has 2"),
    ({"instances": [[[1], [2]], [[3], [4, 5]]]}, {"x": ("FP32", 3)}, "input 'x': ragged data"),
    ({"instances": [{"a": [1], "s": "p"}, {"a": [1, 2], "s": "q"}]}, TWO, "input 'a': ragged data"),
    ({"instances": [{"a": [1], "s": "p"}, {"a": [2]}]}, TWO, r"instances\[1\] has inputs \['a'\] where instances\[0\]"),
    ({"instances": [{"a": [1], "s": "p"}, [2]]}, TWO, r"instances\[1\] has an array of 1 where"),
    ({"instances": [[1], [2]]}, TWO, "with several inputs .* each instance must be an object"),
    ({"inputs": [[1], [2]]}, TWO, 'with several inputs .* "inputs" must be an object'),
    ({"instances": [{"q": [1]}]}, TWO, "input 'q': is not an input of this signature .*a, s"),
    ({"inputs": {"q": [1]}}, ONE, "input 'q': is not an input of this signature"),
    ({"instances": {"x": [1]}}, ONE, '"instances" must be a JSON array'),
    ({"instances": []}, ONE, '"instances" is empty'),
    ({"instances": [1, 2]}, ONE, "input 'x': value has rank 1 where the model takes rank 2"),
    ({"inputs": [[[1]]]}, ONE, r"input 'x': data is nested deeper than shape \[1, 1\]"),
    ({"instances": [3]}, {"k": ("INT32", 0)}, "input 'k': is a scalar.*send it in \"inputs\""),
    ({"inputs": [[1, "2"]]}, ONE, "input 'x': FP32 data must be numbers, got strings"),
    ({"inputs": [[1, {"b64": "YQ=="}]]}, ONE, "input 'x': FP32 data must be numbers, got objects"),
    ({"inputs": [[1, 2.5]]}, {"x": ("INT32", 2)}, "input 'x': INT32 value 2.5 is not an exact integer"),
    ({"inputs": [[1, 2]]}, {"x": ("BOOL", 2)}, "input 'x': BOOL data must be true or false"),
    ({"inputs": {"s": [{"b64": "not base64!"}], "a": [[1]]}}, TWO, "input 's': BYTES element 0: invalid base64"),
    ({"inputs": {"s": [{"b64": 3}], "a": [[1]]}}, TWO, "input 's': BYTES element 0 is an object other than"),
    ({"inputs": {"s": [{"b64": "YQ==", "x": 1}], "a": [[1]]}}, TWO, "input 's': BYTES element 0 is an object"),
    ({"inputs": {"s": [1], "a": [[1]]}}, TWO, r"input 's': BYTES data must be strings or \{\"b64\""),
    ({"inputs": [[1, 2], [3, 4]]}, ONE, "input 'x': shape \\[2, 2\\] is 4 elements, over the limit of 3"),
    ([1], ONE, "the predict request must be a JSON object"),
])
def test_tf_refused_requests(doc, ranks, match):
    tf_refused(match, doc, ranks, max_elements=3 if "limit" in match else LIMIT)


@pytest.mark.parametrize("body", [b'{"instances": [[1, NaN]]}', b"{", b"\xff"])
def test_tf_invalid_json(body):
    tf_refused("predict request is not valid JSON", body)


@pytest.mark.timeout(10)
def test_tf_deep_nesting_is_refused_quickly():
    tf_refused("not valid JSON.*depth", b'{"instances": ' + b"[" * 500_000)


# ------------------------------------------------------------------ TF Serving: responses


def test_tf_response_row_format():
    y = np.arange(6, dtype="<f4").reshape(3, 2) / 4
    assert orjson.loads(encode_predict_response({"y": y}, True)) == {"predictions": y.tolist()}
    k = np.array([1, 2, 3], "<i8")
    s = np.array([b"a", b"\xff", "\u00e9".encode()], dtype=object)
    got = orjson.loads(encode_predict_response({"y": y, "k": k, "s": s}, True))
    assert got == {"predictions": [{"y": y[i].tolist(), "k": int(k[i]), "s": v}
                                   for i, v in enumerate(["a", {"b64": "/w=="}, "\u00e9"])]}


def test_tf_response_columnar_format():
    y = np.arange(4, dtype="<f8").reshape(2, 2)
    assert orjson.loads(encode_predict_response({"y": y}, False)) == {"outputs": y.tolist()}
    got = orjson.loads(encode_predict_response({"y": y, "n": np.float32(0.5), "b": np.array([True])}, False))
    assert got == {"outputs": {"y": y.tolist(), "n": 0.5, "b": [True]}}
    s = np.array([[b"a"], [b"\x00\xff"]], dtype=object)
    assert orjson.loads(encode_predict_response({"s": s}, False)) == {"outputs": [["a"], [{"b64": "AP8="}]]}
    assert orjson.loads(encode_predict_response({"s": np.array(b"q", dtype=object)}, False)) == {"outputs": "q"}


@pytest.mark.parametrize("datatype", DATATYPES)
def test_tf_round_trip_every_dtype(datatype):
    arr = sample(datatype, (2, 3))
    for row_format in (True, False):
        doc = orjson.loads(encode_predict_response({"x": arr}, row_format))
        key = "instances" if row_format else "inputs"
        body = orjson.dumps({key: doc["predictions" if row_format else "outputs"]})
        assert_same(decode_predict_request(body, {"x": (datatype, 2)}, LIMIT).inputs["x"], arr)


def test_tf_b64_round_trip():
    raw = bytes(range(256))
    doc = orjson.loads(encode_predict_response({"s": np.array([raw], dtype=object)}, False))
    assert doc == {"outputs": [{"b64": base64.b64encode(raw).decode()}]}
    back = decode_predict_request(orjson.dumps({"inputs": doc["outputs"]}), {"s": ("BYTES", 1)}, LIMIT)
    assert back.inputs["s"].tolist() == [raw]


def test_tf_response_refusals():
    with pytest.raises(CodecError, match="outputs disagree on the batch size \\('a' 2, 'b' 3\\)"):
        encode_predict_response({"a": np.zeros(2), "b": np.zeros(3)}, True)
    with pytest.raises(CodecError, match="output 'n': is a scalar"):
        encode_predict_response({"y": np.zeros(2), "n": np.float32(1)}, True)
    with pytest.raises(CodecError, match="output 'n': is a scalar"):
        encode_predict_response({"n": np.array(1.0)}, True)
