"""Request messages read off the wire format without parsing them: how many bytes hold *typed*
tensor values, and where a ModelInferRequest's raw contents lie.

Typed values (KServe `contents`, TF Serving's `int_val`, `string_val`, ...) cost protobuf's
parser far more per byte than raw bytes (`raw_input_contents`, `tensor_content`), and the parser
holds the GIL for the whole message, so no thread can keep a large typed request from stalling
every other call. The server therefore refuses typed values past a bound before parsing. Only
field headers are read: a length-delimited field is skipped by its length, and every walk stops
after a bounded number of fields, counting what is left as typed (the conservative answer).
"""

from __future__ import annotations

import functools

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


def spans(buf: memoryview):
    """(field number, wire type, value, start, end) for each field of one message: value is a
    memoryview for length-delimited fields, else None; buf[start:end] is the whole field, key
    included. Stops after MAX_FIELDS (raises OverflowError)."""
    at, seen = 0, 0
    while at < len(buf):
        seen += 1
        if seen > MAX_FIELDS:
            raise OverflowError
        start = at
        key, at = _varint(buf, at)
        number, kind = key >> 3, key & 7
        value = None
        if kind == 0:
            _, at = _varint(buf, at)
        elif kind == 1 or kind == 5:
            at += 8 if kind == 1 else 4
        elif kind == LENGTH_DELIMITED:
            size, at = _varint(buf, at)
            value = buf[at:at + size]
            at += size
        else:
            raise WireError(f"wire type {kind}")
        if at > len(buf):
            raise WireError("truncated field")
        yield number, kind, value, start, at


def fields(buf: memoryview):
    """(field number, wire type, value) for each field of one message (see spans)."""
    for number, kind, value, _, _ in spans(buf):
        yield number, kind, value


def _submessages(buf: memoryview, number: int):
    for field, kind, value in fields(buf):
        if field == number and kind == LENGTH_DELIMITED:
            yield value


_INFER_INPUTS = kserve.ModelInferRequest.DESCRIPTOR.fields_by_name["inputs"].number
_INFER_RAW = kserve.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
_INPUT_CONTENTS = kserve.ModelInferRequest.InferInputTensor.DESCRIPTOR.fields_by_name["contents"].number
_PREDICT_INPUTS = tfs.PredictRequest.DESCRIPTOR.fields_by_name["inputs"].number
_MAP_VALUE = 2  # a map entry is {key = 1, value = 2}
_TENSOR_CONTENT = tfs.PredictRequest.DESCRIPTOR.fields_by_name["inputs"].message_type.fields_by_name[
    "value"].message_type.fields_by_name["tensor_content"].number
_MAP_KEY = 1
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


def split_raw_contents(payload: bytes) -> tuple[bytes, list[memoryview]] | None:
    """A serialized ModelInferRequest without its raw_input_contents, and those contents, in order,
    as views of `payload` (no copy: protobuf's parser would copy each into the message, and reading
    the field would copy it again). None when the bytes are not a well-formed message, or have more
    top-level fields than a request needs: the parser then reads them whole, and words any error."""
    buf = memoryview(payload)
    kept, raw, since = [], [], 0
    try:
        for number, kind, value, start, end in spans(buf):
            if number == _INFER_RAW and kind == LENGTH_DELIMITED:
                kept.append(buf[since:start])
                raw.append(value)
                since = end
    except (OverflowError, WireError):
        return None
    kept.append(buf[since:])
    return b"".join(kept), raw


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


def _varint_bytes(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(number: int, body: bytes) -> bytes:
    return _varint_bytes(number << 3 | LENGTH_DELIMITED) + _varint_bytes(len(body)) + body


def _without(buf: memoryview, number: int) -> tuple[bytes, memoryview | None]:
    """`buf` without its length-delimited field `number`, and that field's last value (proto3:
    the last one wins)."""
    kept, found, since = [], None, 0
    for field, kind, value, start, end in spans(buf):
        if field == number and kind == LENGTH_DELIMITED:
            kept.append(buf[since:start])
            found, since = value, end
    kept.append(buf[since:])
    return b"".join(kept), found


def split_tensor_contents(payload: bytes) -> tuple[bytes, dict[str, memoryview]] | None:
    """A serialized PredictRequest without its inputs' tensor_content, and those contents by input
    name as views of `payload` (no copy), as split_raw_contents does for KServe. None when the
    bytes are not a well-formed message (or too many fields): the parser then reads them whole."""
    buf = memoryview(payload)
    kept, contents, since = [], {}, 0
    try:
        for number, kind, entry, start, end in spans(buf):
            if number != _PREDICT_INPUTS or kind != LENGTH_DELIMITED:
                continue
            key, rebuilt, content = "", [], None
            for field, field_kind, value, field_start, field_end in spans(entry):
                if field == _MAP_KEY and field_kind == LENGTH_DELIMITED:
                    key = bytes(value).decode()
                if field == _MAP_VALUE and field_kind == LENGTH_DELIMITED:
                    tensor, found = _without(value, _TENSOR_CONTENT)
                    rebuilt.append(_length_delimited(_MAP_VALUE, tensor))
                    content = content if found is None else found  # repeated values merge
                else:
                    rebuilt.append(entry[field_start:field_end])
            kept.append(buf[since:start])
            kept.append(_length_delimited(_PREDICT_INPUTS, b"".join(rebuilt)))
            since = end
            contents[key] = content  # a later entry for the same name replaces an earlier one
    except (OverflowError, WireError, UnicodeDecodeError):
        return None
    kept.append(buf[since:])
    return b"".join(kept), {key: content for key, content in contents.items() if content is not None}


# -- writing a ModelInferResponse (the server's unary answer) without building the message -------

_RESPONSE = kserve.ModelInferResponse.DESCRIPTOR.fields_by_name
_OUTPUT = kserve.ModelInferResponse.InferOutputTensor.DESCRIPTOR.fields_by_name


def _string_field(number: int, text: str) -> bytes:
    return _length_delimited(number, text.encode()) if text else b""  # proto3 leaves "" out


@functools.lru_cache(maxsize=256)
def response_head(model_name: str, model_version: str) -> bytes:
    """model_name and model_version of a ModelInferResponse (the same on every answer)."""
    return (_string_field(_RESPONSE["model_name"].number, model_name)
            + _string_field(_RESPONSE["model_version"].number, model_version))


@functools.lru_cache(maxsize=4096)
def response_output(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    """One `outputs` entry (name, datatype, packed shape): the same for every answer of that shape."""
    dims = b"".join(_varint_bytes(dim) for dim in shape)  # dims are >= 0 here
    body = (_string_field(_OUTPUT["name"].number, name) + _string_field(_OUTPUT["datatype"].number, datatype)
            + (_length_delimited(_OUTPUT["shape"].number, dims) if dims else b""))
    return _length_delimited(_RESPONSE["outputs"].number, body)


_RESPONSE_ID = _RESPONSE["id"].number
_RAW_OUTPUT_KEY = _varint_bytes(_RESPONSE["raw_output_contents"].number << 3 | LENGTH_DELIMITED)


def infer_response(head: bytes, request_id: str, outputs: list[bytes], raws: list[bytes]) -> bytes:
    """A serialized ModelInferResponse, byte for byte what protobuf writes for the same message
    without parameters: fields in number order (1, 2 in `head`; id; outputs; raw contents)."""
    parts = [head, _string_field(_RESPONSE_ID, request_id) if request_id else b"", *outputs]
    for raw in raws:
        parts += (_RAW_OUTPUT_KEY, _varint_bytes(len(raw)), raw)
    return b"".join(parts)


_STREAM_INFER_KEY = _varint_bytes(
    kserve.ModelStreamInferResponse.DESCRIPTOR.fields_by_name["infer_response"].number << 3 | LENGTH_DELIMITED)


def stream_response(infer_response: bytes) -> bytes:
    """A serialized ModelStreamInferResponse with only its infer_response (a serialized one)."""
    return b"".join((_STREAM_INFER_KEY, _varint_bytes(len(infer_response)), infer_response))
