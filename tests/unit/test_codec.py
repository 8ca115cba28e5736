"""Round trips and decoding errors of the one codec (v2 and TF Serving tensors)."""

import struct

import numpy as np
import pytest

from mimo.protos import (
    DATATYPES,
    CodecError,
    datatype_to_numpy,
    decode_infer_request,
    decode_infer_response,
    decode_parameters,
    decode_predict_request,
    decode_predict_response,
    decode_tensor_proto,
    encode_infer_request,
    encode_infer_response,
    encode_predict_request,
    encode_predict_response,
    encode_tensor_proto,
    requested_outputs,
)
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as v2
from mimo.protos import tf_framework_pb2 as tfpb
from mimo.protos import tf_serving_pb2 as tfs


def sample(datatype, shape=(2, 3)):
    """An array of `datatype` with extreme values where the type has them."""
    n = int(np.prod(shape))
    if datatype == "BYTES":
        pool = [b"", b"a", b"\x00\xff", "héllo".encode(), b"x" * 300]
        return np.array([pool[i % len(pool)] for i in range(n)] + [b""], dtype=object)[:n].reshape(shape)
    dtype = datatype_to_numpy(datatype)
    if datatype == "BOOL":
        return (np.arange(n) % 2 == 0).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max - 1, info.min + 1]
    else:
        values = [-1.5, np.inf, -np.inf, 0.0, np.finfo(dtype).max, 3.25]
    return np.array([values[i % len(values)] for i in range(n)], dtype=dtype).reshape(shape)


def assert_same(got, want):
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object and got.tolist() == want.tolist()
    else:
        assert got.dtype == want.dtype.newbyteorder("<") or got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


SHAPES = [(2, 3), (), (0,), (2, 0, 3), (1,)]


# ------------------------------------------------------------------ v2 round trips


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_v2_request_round_trip(datatype, shape, raw):
    arr = sample(datatype, shape)
    if datatype == "FP16" and not raw:
        with pytest.raises(CodecError, match="'x'"):
            encode_infer_request("m", {"x": arr}, raw=False)
        return
    request = encode_infer_request("m", {"x": arr}, raw=raw)
    request = v2.ModelInferRequest.FromString(request.SerializeToString())
    assert request.inputs[0].datatype == datatype
    assert list(request.inputs[0].shape) == list(shape)
    assert len(request.raw_input_contents) == (1 if raw else 0)
    assert_same(decode_infer_request(request)["x"], arr)


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_v2_response_round_trip(datatype, raw):
    outputs = {"y": sample(datatype), "z": sample("FP32", (4,))}
    if datatype == "FP16" and not raw:
        return  # FP16 has no typed field (covered above)
    response = encode_infer_response("m", outputs, model_version=2, request_id="r1", raw=raw)
    response = v2.ModelInferResponse.FromString(response.SerializeToString())
    assert (response.model_name, response.model_version, response.id) == ("m", "2", "r1")
    decoded = decode_infer_response(response)
    assert list(decoded) == ["y", "z"]
    for name, want in outputs.items():
        assert_same(decoded[name], want)


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("shape", [(), (0, 4), (2, 3), (1, 200, 3)], ids=str)  # 200: a two-byte varint
@pytest.mark.parametrize("names", [("m", 2, ""), ("", "", "r" * 130), ("é" * 100, "17", "id-1")], ids=str)
def test_response_bytes_are_the_messages_bytes(datatype, shape, names):
    """The unary answer's writer: exactly what protobuf serializes, every datatype and shape, long
    and empty names (proto3 leaves "" out), several outputs in their order."""
    model, version, request_id = names
    outputs = {"y": sample(datatype, shape), "ünï" * 50: sample("FP32", (4,)), "b": sample("BYTES", (2,))}
    want = encode_infer_response(model, outputs, model_version=version, request_id=request_id).SerializeToString()
    assert codec.infer_response_bytes(model, outputs, version, request_id) == want


def test_v2_raw_bytes_are_little_endian_and_length_prefixed():
    request = encode_infer_request("m", {"f": np.array([1.0], ">f4"), "s": np.array([b"ab", "c"], dtype=object)})
    assert request.raw_input_contents[0] == struct.pack("<f", 1.0)
    assert request.raw_input_contents[1] == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"


def test_v2_raw_decode_is_zero_copy_view():
    request = encode_infer_request("m", {"x": np.arange(4, dtype=np.int32)})
    arr = decode_infer_request(request)["x"]
    assert not arr.flags.writeable and arr.base is not None


def test_v2_encode_accepts_non_contiguous_and_str_arrays():
    arr = np.arange(12, dtype=np.float64).reshape(3, 4).T
    texts = np.array(["a", "bé"])
    decoded = decode_infer_request(encode_infer_request("m", {"x": arr, "t": texts}))
    np.testing.assert_array_equal(decoded["x"], arr)
    assert decoded["t"].tolist() == [b"a", "bé".encode()]


def test_v2_request_fields_and_parameters():
    request = encode_infer_request(
        "m", {"x": np.zeros(1, np.float32)}, outputs=["a", "b"], version=3, request_id="id7",
        parameters={"priority": 2, "flag": True, "ratio": 0.5, "tag": "t", "big": 2**64 - 1},
    )
    assert (request.model_name, request.model_version, request.id) == ("m", "3", "id7")
    assert requested_outputs(request) == ["a", "b"]
    assert request.parameters["flag"].WhichOneof("parameter_choice") == "bool_param"
    assert request.parameters["big"].WhichOneof("parameter_choice") == "uint64_param"
    assert decode_parameters(request.parameters) == {
        "priority": 2, "flag": True, "ratio": 0.5, "tag": "t", "big": 2**64 - 1}
    with pytest.raises(CodecError, match="'bad'"):
        encode_infer_request("m", {}, parameters={"bad": [1]})


def test_v2_response_fills_stream_wrapper_in_place():
    stream = v2.ModelStreamInferResponse()
    encode_infer_response("m", {"y": np.ones(2, np.float32)}, response=stream.infer_response)
    assert stream.HasField("infer_response")
    np.testing.assert_array_equal(decode_infer_response(stream.infer_response)["y"], [1, 1])


# ------------------------------------------------------------------ v2 decoding errors


def _request(datatype="FP32", shape=(2,), raw=None, **contents):
    request = v2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="tok", datatype=datatype, shape=shape)
    if contents:
        for field, values in contents.items():
            getattr(tensor.contents, field).extend(values)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize(
    "request_, match",
    [
        (_request(raw=b"\x00" * 7), "7 bytes.*needs 8"),
        (_request("FP32", (2, 3), raw=b"\x00" * 8), "needs 24"),
        (_request("BF16", raw=b"\x00" * 4), "unsupported datatype 'BF16'"),
        (_request("FLOAT", fp32_contents=[1, 2]), "unsupported datatype 'FLOAT'"),
        (_request(raw=b"\x00" * 8, fp32_contents=[1, 2]), "typed contents.*raw"),
        (_request(fp32_contents=[1, 2, 3]), "3 values for shape \\[2\\]"),
        (_request(), "0 values"),
        (_request(shape=(-1, 2), raw=b""), "negative dimension"),
        (_request(int_contents=[1, 2]), "FP32 data sent in int_contents"),
        (_request("UINT8", uint_contents=[1, 300]), "out of range for UINT8"),
        (_request("FP16", shape=(1,)), "FP16 travels only as raw"),
        (_request("BYTES", shape=(2,), raw=b"\x01\x00\x00\x00a"), "ends after 1 of 2"),
        (_request("BYTES", shape=(1,), raw=b"\x05\x00\x00\x00ab"), "overruns"),
        (_request("BYTES", shape=(1,), raw=b"\x01\x00\x00\x00abc"), "2 bytes past"),
    ],
)
def test_v2_decode_errors_name_the_tensor(request_, match):
    with pytest.raises(CodecError, match=match) as info:
        decode_infer_request(request_)
    assert "input 'tok'" in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.tensor == "tok"


def test_v2_raw_count_must_match_inputs():
    request = _request(raw=b"\x00" * 8)
    request.inputs.add(name="other", datatype="FP32", shape=[1])
    with pytest.raises(CodecError, match="1 raw contents for 2 inputs"):
        decode_infer_request(request)


def test_v2_duplicate_names():
    request = _request(raw=b"\x00" * 8)
    request.inputs.add(name="tok", datatype="FP32", shape=[2])
    request.raw_input_contents.append(b"\x00" * 8)
    with pytest.raises(CodecError, match="'tok': appears twice"):
        decode_infer_request(request)


def test_response_errors_say_output():
    response = v2.ModelInferResponse()
    response.outputs.add(name="head", datatype="INT32", shape=[3])
    response.raw_output_contents.append(b"\x00" * 4)
    with pytest.raises(CodecError, match="output 'head'"):
        decode_infer_response(response)


@pytest.mark.parametrize("value, match", [(np.zeros(2, np.complex64), "complex64"),
                                          (np.array([b"a", 3], dtype=object), "int")])
def test_encode_errors_name_the_tensor(value, match):
    with pytest.raises(CodecError, match=match) as info:
        encode_infer_request("m", {"bad": value})
    assert "'bad'" in str(info.value)
    with pytest.raises(CodecError, match="'bad'"):
        encode_predict_request("m", {"bad": value})


# ------------------------------------------------------------------ TF Serving tensors


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("raw", [True, False], ids=["content", "typed"])
def test_tensor_proto_round_trip(datatype, shape, raw):
    arr = sample(datatype, shape)
    proto = encode_tensor_proto(arr, raw=raw)
    proto = tfpb.TensorProto.FromString(proto.SerializeToString())
    assert [d.size for d in proto.tensor_shape.dim] == list(shape)
    if datatype == "BYTES":
        assert not proto.tensor_content  # strings always travel in string_val
    elif raw:
        assert proto.tensor_content == arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    assert_same(decode_tensor_proto(proto), arr)


def test_tensor_proto_fp16_typed_uses_half_val_bits():
    proto = encode_tensor_proto(np.array([1.0, -2.0], np.float16), raw=False)
    assert list(proto.half_val) == [0x3C00, 0xC000]
    assert proto.dtype == tfpb.DT_HALF


def test_predict_round_trip():
    inputs = {"text": sample("INT64", (2, 5)), "q": sample("BYTES", (2,))}
    request = encode_predict_request("qa", inputs, signature_name="serving_default", version=4,
                                     output_filter=["answer"])
    request = tfs.PredictRequest.FromString(request.SerializeToString())
    assert request.model_spec.name == "qa" and request.model_spec.version.value == 4
    assert request.model_spec.signature_name == "serving_default"
    assert list(request.output_filter) == ["answer"]
    decoded = decode_predict_request(request)
    for name, want in inputs.items():
        assert_same(decoded[name], want)
    response = encode_predict_response({"answer": sample("FP32")}, model_name="qa", version=4)
    response = tfs.PredictResponse.FromString(response.SerializeToString())
    assert response.model_spec.version.value == 4
    assert_same(decode_predict_response(response)["answer"], sample("FP32"))


def test_tensor_proto_broadcasts_a_single_typed_value():
    # tf.make_tensor_proto(0.5, shape=[2, 2]) sends one float_val.
    proto = tfpb.TensorProto(dtype=tfpb.DT_FLOAT, float_val=[0.5])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(decode_tensor_proto(proto), np.full((2, 2), 0.5, np.float32))


def test_tensor_proto_string_content_in_tf_cpp_form():
    proto = tfpb.TensorProto(dtype=tfpb.DT_STRING, tensor_content=b"\x02\x00\x81\x01ab" + b"z" * 129)
    proto.tensor_shape.dim.add(size=3)
    assert decode_tensor_proto(proto).tolist() == [b"ab", b"", b"z" * 129]


def _proto(dtype=tfpb.DT_FLOAT, dims=(2,), **fields):
    proto = tfpb.TensorProto(dtype=dtype, **fields)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


@pytest.mark.parametrize(
    "proto, match",
    [
        (_proto(tensor_content=b"\x00" * 7), "7 bytes.*needs 8"),
        (_proto(tfpb.DT_COMPLEX64, tensor_content=b"\x00" * 16), "unsupported dtype DT_COMPLEX64"),
        (_proto(tfpb.DT_INVALID), "unsupported dtype DT_INVALID"),
        (_proto(tensor_content=b"\x00" * 8, float_val=[1, 2]), "both tensor_content and float_val"),
        (_proto(float_val=[1, 2, 3]), "3 values for shape \\[2\\]"),
        (_proto(dims=(2, -1), float_val=[1]), "negative dimension"),
        (_proto(tfpb.DT_UINT8, int_val=[1, 256]), "out of range for UINT8"),
        (_proto(tfpb.DT_STRING, dims=(2,), tensor_content=b"\x05\x01ab"), "malformed DT_STRING"),
        (_proto(dims=()), "0 values"),
    ],
)
def test_tensor_proto_decode_errors_name_the_tensor(proto, match):
    request = tfs.PredictRequest()
    request.inputs["ids"].CopyFrom(proto)
    with pytest.raises(CodecError, match=match) as info:
        decode_predict_request(request)
    assert "input 'ids'" in str(info.value)


def test_tensor_proto_unknown_rank():
    proto = _proto(float_val=[1.0])
    proto.tensor_shape.unknown_rank = True
    with pytest.raises(CodecError, match="'w'.*unknown rank"):
        decode_tensor_proto(proto, "w")


def test_tf_broadcast_is_capped_by_max_bytes_before_allocating():
    # 36 bytes on the wire that once expanded to 2**35 int32s (and 14.5 s of checks on the loop).
    proto = _proto(tfpb.DT_INT32, dims=(1, 2**35), int_val=[7])
    with pytest.raises(CodecError, match=r"'text'.*34359738368 elements \(137438953472 bytes\).*limit of 1048576"):
        decode_tensor_proto(proto, "text", "input", max_bytes=1 << 20)
    small = decode_tensor_proto(_proto(tfpb.DT_INT32, dims=(2, 4), int_val=[7]), max_bytes=32)
    assert small.shape == (2, 4) and (small == 7).all()


@pytest.mark.parametrize("dims", [(2**62, 2**62, 0), (2**40, 2**40)])
def test_shape_whose_element_count_overflows_is_a_codec_error(dims):
    proto = _proto(dims=dims)
    with pytest.raises(CodecError, match="overflows"):
        decode_tensor_proto(proto, "w")
    request = v2.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=list(dims))
    request.raw_input_contents.append(b"")
    with pytest.raises(CodecError, match="input 'x'.*overflows"):
        decode_infer_request(request)


@pytest.mark.parametrize("parse", [codec.parse_infer_request, codec.parse_predict_request])
def test_large_bad_bytes_in_a_buffer_get_the_parsers_words_not_a_type_error(parse):
    """The native transport hands large messages over as a buffer (not bytes); one too broken to
    split goes to protobuf's parser, which must say what is wrong with the bytes."""
    from google.protobuf.message import DecodeError

    # Any object with the buffer protocol, as the transport's Payload (protobuf takes only bytes,
    # bytearray and memoryview).
    garbage = np.frombuffer(b"\xff" * (codec.ZERO_COPY_MIN_BYTES + 10), np.uint8)
    with pytest.raises(DecodeError, match="Error parsing message"):
        parse(garbage)
