"""Request messages read off the wire headers, in time independent of the payload: typed tensor
bytes are counted, and a large request's raw contents are found without copying them."""

from __future__ import annotations

import numpy as np
import pytest

from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import tf_framework_pb2 as tfpb
from mimo.protos import tf_serving_pb2 as tfs
from mimo.protos.wire import split_raw_contents, split_tensor_contents, typed_bytes
from mimo.serving.core.errors import InvalidArgument
from mimo.serving.frontends.grpc_status import MAX_TYPED_BYTES, parse_request


def kserve(typed: int, raw: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="INT32", shape=[typed]).contents.int_contents.extend([7] * typed)
    request.inputs.add(name="b", datatype="INT32", shape=[raw])
    request.raw_input_contents.append(np.ones(raw, np.int32).tobytes())
    return request


def predict(typed: int, raw: int) -> tfs.PredictRequest:
    request = tfs.PredictRequest()
    request.inputs["a"].dtype = tfpb.DT_INT32
    request.inputs["a"].int_val.extend([7] * typed)
    request.inputs["b"].dtype = tfpb.DT_INT32
    request.inputs["b"].tensor_content = np.ones(raw, np.int32).tobytes()
    return request


@pytest.mark.parametrize("build", [kserve, predict])
def test_typed_bytes_count_typed_values_and_not_raw_ones(build):
    only_raw = build(0, 1000).SerializeToString()
    both = build(1000, 1000).SerializeToString()
    assert typed_bytes(type(build(0, 0)), only_raw) <= 8
    assert 1000 <= typed_bytes(type(build(0, 0)), both) <= 1100  # 1000 ids of 1 byte each, packed


def test_unpacked_values_count_whole():
    """Each unpacked value is a field of its own: the walk stops early and counts the tensor whole."""
    value = b"\x38\x01" * 5000  # int_val = 1, unpacked
    tensor = b"\x08\x03" + value
    entry = b"\x0a\x01a\x12" + _varint(len(tensor)) + tensor
    message = b"\x12" + _varint(len(entry)) + entry
    assert typed_bytes(tfs.PredictRequest, message) >= len(value)


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def test_garbage_and_other_messages_count_nothing():
    assert typed_bytes(pb.ModelInferRequest, b"\xff" * 100) == 0
    assert typed_bytes(pb.ServerLiveRequest, b"anything") == 0


def test_parse_request_refuses_typed_values_past_the_limit_only():
    over = MAX_TYPED_BYTES + 1024  # ids of 7 take one byte each on the wire
    parse_request(pb.ModelInferRequest.FromString, kserve(1000, over).SerializeToString())  # raw: fine
    with pytest.raises(InvalidArgument, match="MiB of typed tensor values.*raw_input_contents"):
        parse_request(pb.ModelInferRequest.FromString, kserve(over, 10).SerializeToString())


# -- large ModelInferRequests: raw contents read where they arrived ---------------------------------


def _large_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="r1")
    request.parameters["signature_name"].string_param = "s"
    request.inputs.add(name="x", datatype="FP32", shape=[2, 40_000])
    request.inputs.add(name="t", datatype="BYTES", shape=[2])
    request.outputs.add(name="y")
    x = np.arange(80_000, dtype=np.float32).reshape(2, 40_000)
    request.raw_input_contents.append(x.tobytes())
    request.raw_input_contents.append(codec._encode_v2_bytes([b"first", b"second"]))
    return request


def test_a_large_request_keeps_its_raw_contents_in_the_request_bytes():
    request = _large_request()
    payload = request.SerializeToString()
    assert len(payload) >= codec.ZERO_COPY_MIN_BYTES
    parsed = codec.parse_infer_request(payload)
    assert not parsed.message.raw_input_contents  # the parser never saw them
    # Everything else is the message as sent.
    expected = pb.ModelInferRequest()
    expected.CopyFrom(request)
    del expected.raw_input_contents[:]
    assert parsed.message == expected
    inputs = codec.decode_infer_request(*parsed)
    assert inputs["x"].tolist() == np.arange(80_000, dtype=np.float32).reshape(2, 40_000).tolist()
    assert inputs["t"].tolist() == [b"first", b"second"] and type(inputs["t"][0]) is bytes
    # No copy: the array is a view of the bytes the transport handed over.
    assert np.shares_memory(inputs["x"], np.frombuffer(payload, np.uint8))
    assert not inputs["x"].flags.writeable


def test_a_small_request_parses_as_protobuf_does():
    request = _large_request()
    request.inputs[0].shape[:] = [2, 4]
    request.raw_input_contents[0] = np.ones(8, np.float32).tobytes()
    parsed = codec.parse_infer_request(request.SerializeToString())
    assert parsed.message == request and list(parsed.raw) == list(request.raw_input_contents)


@pytest.mark.parametrize("damage", ["truncated", "bad wire type", "too many fields"])
def test_bytes_the_splitter_cannot_read_are_left_to_the_parser(damage):
    payload = _large_request().SerializeToString()
    if damage == "truncated":
        payload = payload[:-10]
    elif damage == "bad wire type":
        payload = payload + b"\x0f"  # field 1, wire type 7
    else:
        payload = payload + b"\x18\x01" * 300  # 300 unknown varint fields
    assert split_raw_contents(payload) is None
    if damage == "too many fields":  # well-formed: protobuf keeps unknown fields, and so do we
        assert codec.parse_infer_request(payload).message.model_name == "m"
    else:
        with pytest.raises(InvalidArgument, match="could not parse the request message"):
            parse_request(codec.parse_infer_request, payload)


def test_the_typed_value_limit_applies_to_the_codec_parser_too():
    over = MAX_TYPED_BYTES + 1024
    with pytest.raises(InvalidArgument, match="MiB of typed tensor values"):
        parse_request(codec.parse_infer_request, kserve(over, 10).SerializeToString())


def _large_predict() -> tfs.PredictRequest:
    request = codec.encode_predict_request("m", {"x": np.arange(80_000, dtype=np.float32).reshape(2, 40_000),
                                                 "s": np.array([b"first", b"second"], object)},
                                           signature_name="sig", version=3, output_filter=["y"])
    request.inputs["b"].CopyFrom(codec.encode_tensor_proto(np.arange(30_000, dtype=np.int64)))
    request.inputs["t"].CopyFrom(codec.encode_tensor_proto(np.array([[1, 2]], np.int32), raw=False))
    return request


def test_a_large_predict_request_keeps_its_tensor_contents_in_the_request_bytes():
    request = _large_predict()
    payload = request.SerializeToString()
    parsed = codec.parse_predict_request(payload)
    assert set(parsed.contents) == {"x", "b"}  # "s" travels as string_val, "t" as int_val
    assert not any(t.tensor_content for t in parsed.message.inputs.values())
    expected = tfs.PredictRequest()
    expected.CopyFrom(request)
    for tensor in expected.inputs.values():
        tensor.ClearField("tensor_content")
    assert parsed.message == expected
    inputs = codec.decode_predict_request(parsed.message, contents=parsed.contents)
    whole = codec.decode_predict_request(request)
    assert set(inputs) == set(whole) and all(np.array_equal(inputs[k], whole[k]) for k in whole)
    assert np.shares_memory(inputs["x"], np.frombuffer(payload, np.uint8))


def test_the_last_of_repeated_map_entries_and_contents_wins_as_in_protobuf():
    first = codec.encode_predict_request("m", {"x": np.zeros(20_000, np.float32)}).SerializeToString()
    second = codec.encode_predict_request("m", {"x": np.ones(20_000, np.float32)}).SerializeToString()
    plain = codec.encode_predict_request("m", {"x": np.array([5, 6], np.int32)}, raw=False).SerializeToString()
    for payload in (first + second, second + plain, first + second + first):
        parsed = codec.parse_predict_request(payload)
        expected = codec.decode_predict_request(tfs.PredictRequest.FromString(payload))
        assert codec.decode_predict_request(parsed.message, contents=parsed.contents)["x"].tolist() == expected["x"].tolist()


def test_predict_bytes_the_splitter_cannot_read_are_left_to_the_parser():
    payload = _large_predict().SerializeToString()
    assert split_tensor_contents(payload[:-7]) is None
    with pytest.raises(InvalidArgument, match="could not parse the request message"):
        parse_request(codec.parse_predict_request, payload[:-7])
    with pytest.raises(InvalidArgument, match="MiB of typed tensor values"):
        parse_request(codec.parse_predict_request, predict(MAX_TYPED_BYTES + 1024, 10).SerializeToString())
