"""How many bytes of a request message hold *typed* tensor values, read off the wire format
without parsing the message.

Typed values (KServe `contents`, TF Serving's `int_val`, `string_val`, ...) cost protobuf's
parser far more per byte than raw bytes (`raw_input_contents`, `tensor_content`), and the parser
holds the GIL for the whole message, so no thread can keep a large typed request from stalling
every other call. The server therefore refuses typed values past a bound before parsing. Only
field headers are read: a length-delimited field is skipped by its length, and every walk stops
after a bounded number of fields, counting what is left as typed (the conservative answer).
"""

from __future__ import annotations

from mimo.protos import grpc_service_pb2 as kserve
from mimo.protos import tf_serving_pb2 as tfs

LENGTH_DELIMITED = 2
MAX_FIELDS = 256  # a request's inputs and a tensor's fields are few; past this, count it all


class WireError(ValueError):
    """Not a well-formed message (the parser then says why)."""


def _varint(buf: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def fields(buf: memoryview):
    """(field number, wire type, value) for each field of one message; value is a memoryview for
    length-delimited fields, else None. Stops after MAX_FIELDS (raises OverflowError)."""
    at, seen = 0, 0
    while at < len(buf):
        seen += 1
        if seen > MAX_FIELDS:
            raise OverflowError
        key, at = _varint(buf, at)
        number, kind = key >> 3, key & 7
        if kind == 0:
            _, at = _varint(buf, at)
            yield number, kind, None
        elif kind == 1 or kind == 5:
            at += 8 if kind == 1 else 4
            yield number, kind, None
        elif kind == LENGTH_DELIMITED:
            size, at = _varint(buf, at)
            if at + size > len(buf):
                raise WireError("truncated field")
            yield number, kind, buf[at:at + size]
            at += size
        else:
            raise WireError(f"wire type {kind}")


def _submessages(buf: memoryview, number: int):
    for field, kind, value in fields(buf):
        if field == number and kind == LENGTH_DELIMITED:
            yield value


_INFER_INPUTS = kserve.ModelInferRequest.DESCRIPTOR.fields_by_name["inputs"].number
_INPUT_CONTENTS = kserve.ModelInferRequest.InferInputTensor.DESCRIPTOR.fields_by_name["contents"].number
_PREDICT_INPUTS = tfs.PredictRequest.DESCRIPTOR.fields_by_name["inputs"].number
_MAP_VALUE = 2  # a map entry is {key = 1, value = 2}
_TENSOR_UNTYPED = {f.number for f in tfs.PredictRequest.DESCRIPTOR.fields_by_name["inputs"]
                   .message_type.fields_by_name["value"].message_type.fields
                   if f.name in ("dtype", "tensor_shape", "version_number", "tensor_content")}


def _kserve_typed(buf: memoryview) -> int:
    total = 0
    for tensor in _submessages(buf, _INFER_INPUTS):
        try:
            total += sum(len(c) for c in _submessages(tensor, _INPUT_CONTENTS))
        except OverflowError:
            total += len(tensor)
    return total


def _tfserving_typed(buf: memoryview) -> int:
    total = 0
    for entry in _submessages(buf, _PREDICT_INPUTS):
        for tensor in _submessages(entry, _MAP_VALUE):
            try:
                total += sum(len(v) if v is not None else 8 for n, _, v in fields(tensor) if n not in _TENSOR_UNTYPED)
            except OverflowError:  # unpacked repeated values: each one a field
                total += len(tensor)
    return total


TYPED_COUNTERS = {kserve.ModelInferRequest: _kserve_typed, tfs.PredictRequest: _tfserving_typed}


def typed_bytes(message_class, payload: bytes) -> int:
    """Bytes of typed tensor values in `payload`, a serialized `message_class` (0 for other
    messages, and for bytes that are not a well-formed message: the parser reports those)."""
    counter = TYPED_COUNTERS.get(message_class)
    if counter is None:
        return 0
    try:
        return counter(memoryview(payload))
    except OverflowError:
        return len(payload)  # more top-level fields than any request needs: count it all
    except WireError:
        return 0
