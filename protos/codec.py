"""The ONE codec: numpy <-> protobuf tensors, both protocols, both sides.

KServe v2 (inference.*):   server  decode_infer_request / encode_infer_response
                                   (infer_response_bytes: the same, serialized, for raw answers;
                                   stream_response_bytes wraps one for ModelStreamInfer)
                           client  encode_infer_request / decode_infer_response
TF Serving (tensorflow.*): server  decode_predict_request / encode_predict_response
                           client  encode_predict_request / decode_predict_response
                           either  decode_tensor_proto / encode_tensor_proto

Raw bytes (raw_input_contents / raw_output_contents / tensor_content) are
the fast path: little-endian, row-major, decoded with np.frombuffer (no Python
lists; the arrays are read-only views of the message bytes) and encoded with
one arr.tobytes(). A server parses a large ModelInferRequest with
parse_infer_request: its raw contents stay in the request's bytes (no copy). The typed fields are accepted and can be produced too.
BYTES tensors are numpy object arrays of `bytes` (str is encoded as UTF-8).
Every decoding problem raises CodecError naming the tensor.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from mimo.protos import grpc_service_pb2 as _v2
from mimo.protos import tf_framework_pb2 as _tf
from mimo.protos import tf_serving_pb2 as _tfs
from mimo.protos import wire
from mimo.protos.dtypes import BY_TF, DTYPES, DType, from_numpy
from mimo.protos.errors import CodecError

_LEN = struct.Struct("<I")  # v2 BYTES element length prefix
_BYTES = DTYPES["BYTES"]
_FP16 = DTYPES["FP16"]
# From this size on, parse_infer_request leaves raw contents in the request's bytes: below it the
# copies cost less than walking the fields in Python.
ZERO_COPY_MIN_BYTES = 64 * 1024
# numpy (and every backend) counts elements and bytes in int64; a shape past that is refused here
# rather than failing inside numpy. (Zero dims do not save it: numpy checks the non-zero product.)
_MAX_ELEMENTS = (2**63 - 1) // 8

# ---------------------------------------------------------------- shared pieces


def _shape(dims: Iterable[int], name: str, kind: str) -> tuple[int, ...]:
    shape = tuple(dims)
    if shape and min(shape) < 0:
        raise CodecError(f"negative dimension in shape {list(shape)}", name, kind)
    count = math.prod(shape)
    if count > _MAX_ELEMENTS or (not count and math.prod(d for d in shape if d) > _MAX_ELEMENTS):
        raise CodecError(f"shape {list(shape)} overflows: more than 2**60 elements", name, kind)
    return shape


def _as_array(value: Any, name: str, kind: str) -> tuple[np.ndarray, DType]:
    arr = np.asarray(value)
    try:
        return arr, from_numpy(arr.dtype)
    except CodecError as exc:
        raise CodecError(str(exc), name, kind) from None


def _bytes_items(arr: np.ndarray, name: str, kind: str) -> list[bytes]:
    """BYTES elements in row-major order as bytes (str -> UTF-8)."""
    items = arr.ravel().tolist()
    for i, item in enumerate(items):
        if not isinstance(item, bytes):
            if isinstance(item, str):
                items[i] = item.encode("utf-8")
            elif isinstance(item, (bytearray, memoryview, np.bytes_)):
                items[i] = bytes(item)
            else:
                raise CodecError(f"BYTES element of type {type(item).__name__}", name, kind)
    return items


def _object_array(items: list, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items  # slice assignment: numpy must not unpack the bytes themselves
    return out.reshape(shape)


def _numeric_raw(entry: DType, arr: np.ndarray) -> bytes:
    # asarray only copies when the byte order (or type) differs; tobytes is the one copy.
    return np.asarray(arr, dtype=entry.numpy).tobytes()


def _frombuffer(entry: DType, data: bytes, shape, name: str, kind: str) -> np.ndarray:
    need = math.prod(shape) * entry.itemsize
    if len(data) != need:
        raise CodecError(
            f"raw data is {len(data)} bytes, shape {list(shape)} {entry.name} needs {need}", name, kind
        )
    return np.ndarray(shape, entry.numpy, data)  # a view of `data`, as frombuffer's, in one call


def _from_values(entry: DType, values, shape, name: str, kind: str, broadcast=False,
                 max_bytes: int | None = None) -> np.ndarray:
    """Typed protobuf values -> array; counts must match (TF also allows one value, broadcast).

    A broadcast may expand to at most `max_bytes` (the server's message limit: no more than the
    client could have sent raw), checked before anything is allocated.
    """
    count, n = math.prod(shape), len(values)
    if n != count and not (broadcast and n == 1):
        raise CodecError(f"{n} values for shape {list(shape)} ({count} elements)", name, kind)
    expanded = count * (entry.itemsize or 8)  # BYTES: one object pointer per element
    if n != count and max_bytes is not None and expanded > max_bytes:
        raise CodecError(f"1 value broadcast to shape {list(shape)} is {count} elements ({expanded} bytes), "
                         f"over the message limit of {max_bytes} bytes", name, kind)
    if entry is _BYTES:
        arr = _object_array(list(values), (n,))
    else:
        arr = np.asarray(values)  # the field's wire type (int32, uint64, ...)
        if entry is _FP16:  # TF half_val: bit patterns in int32
            arr = arr.astype("<u2").view("<f2")
        elif arr.dtype != entry.numpy:  # narrow ints travel widened: check the range
            cast = arr.astype(entry.numpy)
            if not np.array_equal(cast, arr):
                raise CodecError(f"values out of range for {entry.name}", name, kind)
            arr = cast
    if n != count:
        return np.broadcast_to(arr.reshape(()), shape)  # read-only, no memory per element
    return arr.reshape(shape)


# ---------------------------------------------------------------- KServe v2


def _decode_v2_bytes(data: bytes, shape, name: str, kind: str) -> np.ndarray:
    count, total, off, items = math.prod(shape), len(data), 0, []
    unpack = _LEN.unpack_from
    for _ in range(count):
        if off + 4 > total:
            raise CodecError(f"raw BYTES data ends after {len(items)} of {count} elements", name, kind)
        (size,) = unpack(data, off)
        off += 4
        if off + size > total:
            raise CodecError(f"raw BYTES element {len(items)} overruns the data", name, kind)
        items.append(data[off : off + size])
        off += size
    if off != total:
        raise CodecError(f"raw BYTES data has {total - off} bytes past {count} elements", name, kind)
    return _object_array(items, shape)


def _encode_v2_bytes(items: list[bytes]) -> bytes:
    pack = _LEN.pack
    return b"".join([part for item in items for part in (pack(len(item)), item)])


def _decode_v2(tensors, raws, kind: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if raws and len(raws) != len(tensors):
        raise CodecError(f"{len(raws)} raw contents for {len(tensors)} {kind}s")
    # Protobuf's repeated fields slice into lists several times faster than they iterate.
    for i, tensor in enumerate(tensors[:]):
        name = tensor.name
        if name in out:
            raise CodecError("appears twice", name, kind)
        entry = DTYPES.get(tensor.datatype)
        if entry is None:
            raise CodecError(f"unsupported datatype {tensor.datatype!r}", name, kind)
        shape = _shape(tensor.shape[:], name, kind)  # a list: see above
        if raws:
            if tensor.HasField("contents"):
                raise CodecError("has typed contents but the message uses raw contents", name, kind)
            data = raws[i]
            if entry is _BYTES:
                out[name] = _decode_v2_bytes(bytes(data), shape, name, kind)  # elements: bytes, not views
            else:
                out[name] = _frombuffer(entry, data, shape, name, kind)
            continue
        contents = tensor.contents
        for field, _ in contents.ListFields():
            if field.name != entry.contents_field:
                raise CodecError(f"{entry.name} data sent in {field.name}", name, kind)
        if entry.contents_field is None:  # FP16: raw only
            if math.prod(shape):
                raise CodecError(f"{entry.name} travels only as raw contents", name, kind)
            out[name] = np.zeros(shape, dtype=entry.numpy)
            continue
        out[name] = _from_values(entry, getattr(contents, entry.contents_field), shape, name, kind)
    return out


def _encode_v2(tensors, raws, arrays: Mapping[str, Any], raw: bool, kind: str) -> None:
    for name, value in arrays.items():
        arr, entry = _as_array(value, name, kind)
        tensor = tensors.add()
        tensor.name = name
        tensor.datatype = entry.name
        tensor.shape.extend(arr.shape)
        if entry is _BYTES:
            items = _bytes_items(arr, name, kind)
            if raw:
                raws.append(_encode_v2_bytes(items))
            else:
                tensor.contents.bytes_contents.extend(items)
        elif raw:
            raws.append(_numeric_raw(entry, arr))
        elif entry.contents_field is None:
            raise CodecError(f"{entry.name} travels only as raw contents", name, kind)
        else:
            getattr(tensor.contents, entry.contents_field).extend(arr.ravel().tolist())


def decode_parameters(params: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """A v2 `parameters` map (InferParameter values) -> plain Python values."""
    out = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(param, which)
    return out


def _set_parameters(target, parameters: Mapping[str, Any] | None) -> None:
    for key, value in (parameters or {}).items():
        param = target[key]
        if isinstance(value, _v2.InferParameter):
            param.CopyFrom(value)
        elif isinstance(value, (bool, np.bool_)):  # before int: bool is an int
            param.bool_param = bool(value)
        elif isinstance(value, (int, np.integer)):
            if value >= 2**63:
                param.uint64_param = int(value)
            else:
                param.int64_param = int(value)
        elif isinstance(value, (float, np.floating)):
            param.double_param = float(value)
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise CodecError(f"parameter {key!r}: unsupported type {type(value).__name__}")


class InferRequest(NamedTuple):
    """A server's parsed ModelInferRequest: the message and its raw contents, one bytes-like per
    input (views of the request's bytes, which the message then does not hold), or none."""

    message: Any
    raw: Sequence


def parse_infer_request(payload: bytes) -> InferRequest:
    """Server: a serialized ModelInferRequest. A large one goes through protobuf's parser without
    its raw contents, which numpy then reads where they arrived: no copy of the tensor bytes."""
    if len(payload) >= ZERO_COPY_MIN_BYTES:
        split = wire.split_raw_contents(payload)
        if split is not None:
            rest, raw = split
            return InferRequest(_v2.ModelInferRequest.FromString(rest), raw)
    message = _v2.ModelInferRequest.FromString(_as_bytes(payload))
    return InferRequest(message, message.raw_input_contents)


def _as_bytes(payload) -> bytes:
    """protobuf's parser takes bytes, bytearray and memoryview, not any buffer: the transport's
    (a large request that did not split, so that protobuf words its error) becomes bytes here."""
    return payload if type(payload) is bytes else bytes(payload)


parse_infer_request.message_class = _v2.ModelInferRequest  # for checks made before parsing


def decode_infer_request(request, raw: Sequence | None = None) -> dict[str, np.ndarray]:
    """Server: ModelInferRequest inputs -> {name: array} (raw or typed contents); `raw`, when
    given, holds the raw contents in place of the message's (see parse_infer_request)."""
    return _decode_v2(request.inputs, request.raw_input_contents if raw is None else raw, "input")


def requested_outputs(request) -> list[str]:
    """Server: the output names a ModelInferRequest asks for ([] = all)."""
    return [output.name for output in request.outputs[:]]  # a list: see _decode_v2


def encode_infer_response(
    model_name: str,
    outputs: Mapping[str, Any],
    model_version: str | int = "",
    request_id: str = "",
    parameters: Mapping[str, Any] | None = None,
    raw: bool = True,
    response=None,
):
    """Server: {name: array} -> ModelInferResponse (raw_output_contents unless raw=False).

    Pass `response` to fill an existing message in place (e.g. the
    infer_response of a ModelStreamInferResponse) instead of a new one.
    """
    if response is None:
        response = _v2.ModelInferResponse()
    response.model_name = model_name
    response.model_version = str(model_version)
    response.id = request_id
    if parameters:
        _set_parameters(response.parameters, parameters)
    _encode_v2(response.outputs, response.raw_output_contents, outputs, raw, "output")
    return response


def infer_response_bytes(model_name: str, outputs: Mapping[str, Any], model_version: str | int = "",
                         request_id: str = "") -> bytes:
    """Server: encode_infer_response(...).SerializeToString() for raw contents and no parameters,
    the same bytes without building the message (the unary answer's fast path: a third of the
    cost for small outputs)."""
    entries, raws = [], []
    for name, value in outputs.items():
        arr, entry = _as_array(value, name, "output")
        entries.append(wire.response_output(name, entry.name, arr.shape))
        raws.append(_encode_v2_bytes(_bytes_items(arr, name, "output")) if entry is _BYTES
                    else _numeric_raw(entry, arr))
    return wire.infer_response(wire.response_head(model_name, str(model_version)), request_id, entries, raws)


def stream_response_bytes(infer_response: bytes) -> bytes:
    """Server: a serialized ModelStreamInferResponse holding one serialized ModelInferResponse
    (no error_message), as protobuf writes it."""
    return wire.stream_response(infer_response)


def encode_infer_request(
    model_name: str,
    inputs: Mapping[str, Any],
    outputs: Iterable[str] | None = None,
    version: str | int | None = None,
    parameters: Mapping[str, Any] | None = None,
    request_id: str | None = None,
    raw: bool = True,
):
    """Client: {name: array} -> ModelInferRequest (raw_input_contents unless raw=False)."""
    request = _v2.ModelInferRequest(model_name=model_name)
    if version is not None:
        request.model_version = str(version)
    if request_id:
        request.id = request_id
    _set_parameters(request.parameters, parameters)
    _encode_v2(request.inputs, request.raw_input_contents, inputs, raw, "input")
    for name in outputs or ():
        request.outputs.add().name = name
    return request


def decode_infer_response(response) -> dict[str, np.ndarray]:
    """Client: ModelInferResponse outputs -> {name: array}."""
    return _decode_v2(response.outputs, response.raw_output_contents, "output")


# ---------------------------------------------------------------- TensorFlow Serving


def _decode_tf_strings(data: bytes, count: int, name: str, kind: str) -> list[bytes]:
    """DT_STRING in tensor_content (TF C++ form): all varint lengths, then all bytes."""
    sizes, off, total = [], 0, len(data)
    for _ in range(count):
        size = shift = 0
        while True:
            if off >= total or shift > 63:
                raise CodecError("malformed DT_STRING tensor_content", name, kind)
            byte = data[off]
            off += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        sizes.append(size)
    if off + sum(sizes) != total:
        raise CodecError("malformed DT_STRING tensor_content", name, kind)
    items = []
    for size in sizes:
        items.append(data[off : off + size])
        off += size
    return items


def decode_tensor_proto(proto, name: str = "tensor", kind: str = "tensor", max_bytes: int | None = None,
                        content=None) -> np.ndarray:
    """A tensorflow.TensorProto -> array (tensor_content raw, or the typed *_val field); `content`,
    when given, is the tensor_content the message does not hold (see parse_predict_request).

    One typed value for a larger shape is broadcast (as TensorFlow does), to at most `max_bytes`.
    """
    entry = BY_TF.get(proto.dtype)
    if entry is None:
        dtype = _tf.DataType.Name(proto.dtype) if proto.dtype in _tf.DataType.values() else proto.dtype
        raise CodecError(f"unsupported dtype {dtype}", name, kind)
    if proto.tensor_shape.unknown_rank:
        raise CodecError("tensor shape has unknown rank", name, kind)
    shape = _shape((d.size for d in proto.tensor_shape.dim), name, kind)
    values = getattr(proto, entry.tf_field)
    if content is None:
        content = proto.tensor_content
    if content:
        if len(values):
            raise CodecError(f"has both tensor_content and {entry.tf_field}", name, kind)
        if entry is _BYTES:
            return _object_array(_decode_tf_strings(bytes(content), math.prod(shape), name, kind), shape)
        return _frombuffer(entry, content, shape, name, kind)
    return _from_values(entry, values, shape, name, kind, broadcast=True, max_bytes=max_bytes)


def encode_tensor_proto(value: Any, proto=None, raw: bool = True, name: str = "tensor", kind: str = "tensor"):
    """An array -> tensorflow.TensorProto (tensor_content unless raw=False; strings use string_val)."""
    arr, entry = _as_array(value, name, kind)
    if proto is None:
        proto = _tf.TensorProto()
    proto.dtype = entry.tf
    dims = proto.tensor_shape.dim
    for size in arr.shape:
        dims.add().size = size
    if entry is _BYTES:
        proto.string_val.extend(_bytes_items(arr, name, kind))
    elif raw:
        proto.tensor_content = _numeric_raw(entry, arr)
    elif entry is _FP16:
        proto.half_val.extend(np.asarray(arr, dtype="<f2").view("<u2").ravel().tolist())
    else:
        getattr(proto, entry.tf_field).extend(arr.ravel().tolist())
    return proto


def _decode_tf_map(tensors, kind: str, max_bytes: int | None = None,
                   contents: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    contents = contents or {}
    return {key: decode_tensor_proto(proto, key, kind, max_bytes, contents.get(key)) for key, proto in tensors.items()}


def _encode_tf_map(target, arrays: Mapping[str, Any], raw: bool, kind: str) -> None:
    for key, value in arrays.items():
        encode_tensor_proto(value, target[key], raw, key, kind)


def _set_model_spec(spec, model_name: str, version, signature_name: str | None) -> None:
    spec.name = model_name
    if version is not None:
        spec.version.value = int(version)
    if signature_name:
        spec.signature_name = signature_name


class PredictRequest(NamedTuple):
    """A server's parsed PredictRequest: the message and, for a large one, its inputs'
    tensor_content by name (views of the request's bytes, which the message then does not hold)."""

    message: Any
    contents: Mapping[str, Any]


def parse_predict_request(payload: bytes) -> PredictRequest:
    """Server: a serialized PredictRequest; large tensor contents stay where they arrived (as
    parse_infer_request does for KServe)."""
    if len(payload) >= ZERO_COPY_MIN_BYTES:
        split = wire.split_tensor_contents(payload)
        if split is not None:
            rest, contents = split
            return PredictRequest(_tfs.PredictRequest.FromString(rest), contents)
    return PredictRequest(_tfs.PredictRequest.FromString(_as_bytes(payload)), {})


parse_predict_request.message_class = _tfs.PredictRequest  # for checks made before parsing


def decode_predict_request(request, max_bytes: int | None = None,
                           contents: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Server: PredictRequest inputs -> {name: array}; a broadcast value expands to <= max_bytes;
    `contents` holds tensor_content the message does not (see parse_predict_request)."""
    return _decode_tf_map(request.inputs, "input", max_bytes, contents)


def encode_predict_response(
    outputs: Mapping[str, Any],
    model_name: str = "",
    version: int | None = None,
    signature_name: str = "",
    raw: bool = True,
    response=None,
):
    """Server: {name: array} -> PredictResponse (model_spec filled when model_name is given)."""
    if response is None:
        response = _tfs.PredictResponse()
    if model_name:
        _set_model_spec(response.model_spec, model_name, version, signature_name)
    _encode_tf_map(response.outputs, outputs, raw, "output")
    return response


def encode_predict_request(
    model_name: str,
    inputs: Mapping[str, Any],
    signature_name: str | None = None,
    version: int | None = None,
    output_filter: Iterable[str] | None = None,
    raw: bool = True,
):
    """Client: {name: array} -> PredictRequest."""
    request = _tfs.PredictRequest()
    _set_model_spec(request.model_spec, model_name, version, signature_name)
    _encode_tf_map(request.inputs, inputs, raw, "input")
    request.output_filter.extend(output_filter or ())
    return request


def decode_predict_response(response) -> dict[str, np.ndarray]:
    """Client: PredictResponse outputs -> {name: array}."""
    return _decode_tf_map(response.outputs, "output")
