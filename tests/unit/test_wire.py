"""Typed tensor bytes are read off the wire headers, in time independent of the payload."""

from __future__ import annotations

import numpy as np
import pytest

from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import tf_framework_pb2 as tfpb
from mimo.protos import tf_serving_pb2 as tfs
from mimo.protos.wire import typed_bytes
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
