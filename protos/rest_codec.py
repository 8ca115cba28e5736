"""The JSON/HTTP wire form of tensors for the two REST front ends: pure functions, numpy in/out.

KServe v2 REST (Open Inference Protocol over HTTP, with Triton's binary tensor data extension,
as tritonclient.http speaks it):
                           server  decode_infer_request / encode_infer_response
TF Serving REST (POST /v1/models/{m}:predict):
                           server  decode_predict_request / encode_predict_response

Conventions are those of mimo.protos.codec (the protobuf codec), whose helpers are reused: BYTES
tensors are numpy object arrays of `bytes`; binary tensor data is raw little-endian row-major,
BYTES as 4-byte little-endian length-prefixed items; raw arrays are read-only np.frombuffer views
of the body. JSON goes through orjson (fast, and serialises numpy arrays without Python lists).

Everything a client can get wrong raises CodecError naming the tensor, and is checked before an
array is built: a shape's element count against `max_elements`, the data's element count and
nesting against the shape, and the element types against the datatype. Nesting is walked level
by level (no recursion); orjson itself refuses JSON nested deeper than 1024 levels.

JSON has no NaN or Infinity: orjson refuses them in requests (a CodecError here) and writes them as
`null` in responses (tritonclient's as_numpy reads null back as NaN, so an infinity turns into NaN).
That is kept rather than writing non-standard JSON; clients that need non-finite floats exactly ask
for binary data (KServe).
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping

import numpy as np
import orjson

from mimo.protos.codec import (
    _as_array,
    _bytes_items,
    _decode_v2_bytes,
    _encode_v2_bytes,
    _frombuffer,
    _numeric_raw,
    _object_array,
    _shape,
)
from mimo.protos.dtypes import DTYPES, DType
from mimo.protos.errors import CodecError

_BYTES = DTYPES["BYTES"]
_BOOL = DTYPES["BOOL"]
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
# JSON numbers are doubles: a float beyond 2**53 may not be the integer the client wrote (orjson
# also turns integer literals past the 64-bit range into floats), so integer types refuse them.
_EXACT = 2**53
# Parameters that point at data in shared memory, which a REST front end cannot reach.
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")

# ---------------------------------------------------------------- shared pieces


def _loads(data, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        hint = ""
        rest = (exc.doc or "")[exc.pos : exc.pos + 8]
        if rest.startswith(("NaN", "Infinity")):
            hint = " (NaN and Infinity are not JSON numbers)"
        raise CodecError(f"{what} is not valid JSON: {exc}{hint}") from None


def _json_type(value: Any) -> str:
    """How a value looks in JSON, for messages (never the value itself: it may be huge)."""
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is str:
        return "a string"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is list:
        return f"an array of {len(value)}"
    if kind is dict:
        return "an object"
    return kind.__name__


def _object(value: Any, what: str, optional: bool = False) -> dict:
    if optional and value is None:
        return {}
    if type(value) is not dict:
        raise CodecError(f"{what} must be a JSON object, got {_json_type(value)}")
    return value


def _checked_shape(dims: Any, name: str, max_elements: int) -> tuple[int, ...]:
    """A shape from JSON, refused before anything is allocated when it is too big."""
    if type(dims) is not list:
        raise CodecError(f"shape must be an array of integers, got {_json_type(dims)}", name, "input")
    bad = next((d for d in dims if type(d) is not int), dims)  # (bool is not an int here)
    if bad is not dims:
        raise CodecError(f"shape must be an array of integers, it holds {_json_type(bad)}", name, "input")
    shape = _shape(dims, name, "input")  # negative dims, int64 overflow
    count = math.prod(shape)
    if count > max_elements:
        raise CodecError(f"shape {list(shape)} is {count} elements, over the limit of {max_elements}",
                         name, "input")
    return shape


def _flatten(data: Any, shape: tuple[int, ...], name: str, derived: bool = False) -> list:
    """Nested lists -> the leaves in row-major order, each level checked against `shape`.

    Breadth first, one level at a time: no recursion, and no level is walked past the first
    mismatch. Leaves are not checked here (see _to_array).
    """
    level = [data]
    for axis, size in enumerate(shape):
        flat: list = []
        for item in level:
            if type(item) is not list:
                raise CodecError(f"data is nested {axis} deep where shape {list(shape)} has rank {len(shape)}",
                                 name, "input")
            if len(item) != size:
                where = "the first has" if derived else f"shape {list(shape)} has"
                raise CodecError(f"ragged data: {len(item)} elements in dimension {axis} where {where} {size}",
                                 name, "input")
            flat.extend(item)
        level = flat
    return level


def _to_array(entry: DType, leaves: list, shape: tuple[int, ...], name: str, b64: bool = False) -> np.ndarray:
    """JSON scalars -> an array of `entry`'s dtype; the element types are checked first.

    One pass of set(map(type)) finds the types present (numpy's own inference would turn
    true into 1 and 1 into "1"); the conversion itself is numpy's, in C.
    """
    types = set(map(type, leaves))
    if list in types:
        raise CodecError(f"data is nested deeper than shape {list(shape)}", name, "input")
    if entry is _BYTES:
        return _object_array(_strings(leaves, types, name, b64), shape)
    if entry is _BOOL:
        _only(types, {bool}, "true or false", entry, name)
        return np.array(leaves, dtype=np.bool_).reshape(shape)
    _only(types, {int, float}, "numbers", entry, name)
    if entry.numpy.kind == "f":
        return _floats(entry, leaves, name).reshape(shape)
    return _ints(entry, leaves, float in types, name).reshape(shape)


_TYPE_NAMES = {bool: "true/false", int: "integers", float: "numbers", str: "strings", dict: "objects",
               list: "arrays", type(None): "null"}


def _only(types: set, allowed: set, want: str, entry: DType, name: str) -> None:
    wrong = types - allowed
    if wrong:
        got = ", ".join(sorted(_TYPE_NAMES.get(t, t.__name__) for t in wrong))
        raise CodecError(f"{entry.name} data must be {want}, got {got}", name, "input")


def _floats(entry: DType, leaves: list, name: str) -> np.ndarray:
    # orjson gives ints within 64 bits and finite doubles (it refuses 1e999), which numpy converts
    # without error; narrowing can overflow to inf, and as JSON holds no infinities any inf here
    # is a value too large for the type.
    with np.errstate(over="ignore"):  # reported below, in words
        arr = np.array(leaves, dtype=entry.numpy)
    if not np.isfinite(arr).all():
        raise CodecError(f"a value is out of range for {entry.name}", name, "input")
    return arr


def _ints(entry: DType, leaves: list, has_floats: bool, name: str) -> np.ndarray:
    if has_floats:  # 3.0 is accepted as 3; 2.5 and inexact big floats are not
        exact = []
        for value in leaves:
            if type(value) is float:
                if not value.is_integer() or abs(value) > _EXACT:
                    raise CodecError(f"{entry.name} value {value!r} is not an exact integer", name, "input")
                value = int(value)
            exact.append(value)
        leaves = exact
    if leaves:  # the range is checked here: numpy < 2 wraps out-of-range Python ints silently
        info = np.iinfo(entry.numpy)
        low, high = min(leaves), max(leaves)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise CodecError(f"value {bad} is out of range for {entry.name}", name, "input")
    return np.array(leaves, dtype=entry.numpy)


def _strings(leaves: list, types: set, name: str, b64: bool) -> list[bytes]:
    """BYTES from JSON strings (UTF-8; orjson has refused invalid text) or, for TF, {"b64": ...}."""
    if types <= {str}:
        return [s.encode("utf-8") for s in leaves]
    if not b64 or not types <= {str, dict}:
        _only(types, {str, dict} if b64 else {str}, 'strings or {"b64": ...}' if b64 else "strings", _BYTES, name)
    out = []
    for i, value in enumerate(leaves):
        if type(value) is str:
            out.append(value.encode("utf-8"))
        elif _is_b64(value) and type(value["b64"]) is str:
            out.append(_b64decode(value["b64"], i, name))
        else:
            raise CodecError(f'BYTES element {i} is an object other than {{"b64": "..."}}', name, "input")
    return out


def _b64decode(text: str, index: int, name: str) -> bytes:
    try:  # standard alphabet; missing padding is tolerated, as TF Serving does
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CodecError(f"BYTES element {index}: invalid base64 in \"b64\"", name, "input") from None


def _is_b64(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and "b64" in value


def _json_numbers(entry: DType, arr: np.ndarray) -> np.ndarray:
    """A numeric array orjson can write: native byte order, C-contiguous (orjson's rules)."""
    arr = np.asarray(arr, dtype=entry.numpy.newbyteorder("="))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)


def _json_strings(arr: np.ndarray, name: str, b64: bool) -> list:
    """BYTES elements as JSON strings (row-major, flat); non-UTF-8 as {"b64"} or, for KServe, an error."""
    out = []
    for i, item in enumerate(_bytes_items(arr, name, "output")):
        try:
            out.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            if not b64:
                raise CodecError(f"BYTES element {i} is not UTF-8 text, which JSON cannot carry: "
                                 "request this output with binary_data", name, "output") from None
            out.append({"b64": base64.b64encode(item).decode("ascii")})
    return out


# ---------------------------------------------------------------- KServe v2 REST


@dataclass
class RestInferRequest:
    """A decoded KServe v2 REST inference request."""

    id: str = ""
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # requested output names; [] = all
    binary_outputs: dict[str, bool] = field(default_factory=dict)  # outputs that set binary_data
    binary_default: bool = False  # the request parameter "binary_data_output"
    parameters: dict[str, Any] = field(default_factory=dict)

    def wants_binary(self, name: str) -> bool:
        """Whether output `name` goes back as binary data (pass to encode_infer_response)."""
        return self.binary_outputs.get(name, self.binary_default)


def _split_body(body, header_length) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary data after it (views: nothing is copied)."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view):]
    if type(header_length) is str and header_length.isascii() and header_length.strip().isdigit():
        header_length = int(header_length)
    if type(header_length) is not int or header_length < 0:
        raise CodecError(f"Inference-Header-Content-Length must be a non-negative integer, got {header_length!r}")
    if header_length > len(view):
        raise CodecError(f"Inference-Header-Content-Length {header_length} is larger than the body "
                         f"({len(view)} bytes)")
    return view[:header_length], view[header_length:]


def _input_spec(i: int, item: Any, seen: set, max_elements: int):
    """One entry of "inputs" checked: (name, entry, shape, binary_data_size or None, data)."""
    item = _object(item, f"inputs[{i}]")
    name = item.get("name")
    if type(name) is not str:
        raise CodecError(f"inputs[{i}] needs a \"name\" string")
    if name in seen:
        raise CodecError("appears twice", name, "input")
    seen.add(name)
    datatype = item.get("datatype")
    entry = DTYPES.get(datatype) if type(datatype) is str else None
    if entry is None:
        raise CodecError(f"unsupported datatype {datatype!r}", name, "input")
    shape = _checked_shape(item.get("shape"), name, max_elements)
    params = _object(item.get("parameters"), f"input {name!r}: parameters", optional=True)
    if any(key in params for key in _SHARED_MEMORY):
        raise CodecError("shared memory is not supported over REST: send the data in the request", name, "input")
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise CodecError("has neither \"data\" nor a binary_data_size parameter", name, "input")
        return name, entry, shape, None, item["data"]
    if type(size) is not int or size < 0:
        raise CodecError(f"binary_data_size must be a non-negative integer, got {_json_type(size)}", name, "input")
    if "data" in item:
        raise CodecError("has both \"data\" and a binary_data_size parameter", name, "input")
    return name, entry, shape, size, None


def _json_tensor(entry: DType, data: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`data` flat (row-major) or nested like the shape -> array."""
    if type(data) is not list:
        raise CodecError(f"data must be a JSON array, got {_json_type(data)}", name, "input")
    nested = len(shape) > 1 and bool(data) and type(data[0]) is list
    if nested:
        leaves = _flatten(data, shape, name)
    else:
        count = math.prod(shape)
        if len(data) != count:
            raise CodecError(f"data has {len(data)} elements where shape {list(shape)} needs {count}", name, "input")
        leaves = data
    return _to_array(entry, leaves, shape, name)


def _binary_tensor(entry: DType, data: memoryview, shape: tuple[int, ...], name: str) -> np.ndarray:
    if entry is _BYTES:  # items must be bytes objects, not views
        return _decode_v2_bytes(bytes(data), shape, name, "input")
    return _frombuffer(entry, data, shape, name, "input")


def _decode_inputs(items: Any, binary: memoryview, max_elements: int, framed: bool) -> dict[str, np.ndarray]:
    if type(items) is not list:
        raise CodecError(f"\"inputs\" must be a JSON array, got {_json_type(items)}")
    seen: set = set()
    specs = [_input_spec(i, item, seen, max_elements) for i, item in enumerate(items)]
    # The binary sizes are checked against the body before any tensor is decoded.
    total = sum(spec[3] for spec in specs if spec[3] is not None)
    if total != len(binary):
        hint = "" if framed else " (no Inference-Header-Content-Length: the whole body is JSON)"
        raise CodecError(f"the inputs' binary_data_size add up to {total} bytes but {len(binary)} follow "
                         f"the JSON header{hint}")
    out, offset = {}, 0
    for name, entry, shape, size, data in specs:
        if size is None:
            out[name] = _json_tensor(entry, data, shape, name)
        else:
            out[name] = _binary_tensor(entry, binary[offset : offset + size], shape, name)
            offset += size
    return out


def _requested_outputs(items: Any) -> tuple[list[str], dict[str, bool]]:
    if items is None:
        return [], {}
    if type(items) is not list:
        raise CodecError(f"\"outputs\" must be a JSON array, got {_json_type(items)}")
    names, binary = [], {}
    for i, item in enumerate(items):
        item = _object(item, f"outputs[{i}]")
        name = item.get("name")
        if type(name) is not str:
            raise CodecError(f"outputs[{i}] needs a \"name\" string")
        params = _object(item.get("parameters"), f"output {name!r}: parameters", optional=True)
        if "classification" in params:
            raise CodecError("the classification extension is not supported", name, "output")
        if any(key in params for key in _SHARED_MEMORY):
            raise CodecError("shared memory is not supported over REST", name, "output")
        if "binary_data" in params:
            if type(params["binary_data"]) is not bool:
                raise CodecError("binary_data must be true or false", name, "output")
            binary[name] = params["binary_data"]
        names.append(name)
    return names, binary


def decode_infer_request(body: bytes, header_length: int | None, max_elements: int) -> RestInferRequest:
    """Server: a v2 REST inference request body -> RestInferRequest.

    `header_length` is the Inference-Header-Content-Length header (None when absent: the whole
    body is JSON); inputs with a binary_data_size parameter take their bytes, in order, from the
    body after the header. No tensor may have more than `max_elements` elements.
    """
    header, binary = _split_body(body, header_length)
    doc = _object(_loads(header, "the inference request"), "the inference request")
    request_id = doc.get("id", "")
    if type(request_id) is not str:
        raise CodecError(f"\"id\" must be a string, got {_json_type(request_id)}")
    parameters = dict(_object(doc.get("parameters"), "the request's parameters", optional=True))
    binary_default = parameters.get("binary_data_output", False)
    if type(binary_default) is not bool:
        raise CodecError("parameter binary_data_output must be true or false")
    if "inputs" not in doc:
        raise CodecError("the inference request has no \"inputs\"")
    inputs = _decode_inputs(doc["inputs"], binary, max_elements, header_length is not None)
    outputs, binary_outputs = _requested_outputs(doc.get("outputs"))
    return RestInferRequest(request_id, inputs, outputs, binary_outputs, binary_default, parameters)


def encode_infer_response(
    model_name: str,
    model_version: str | int,
    request_id: str,
    outputs: Mapping[str, Any],
    binary: Callable[[str], bool] | Collection[str] = (),
) -> tuple[bytes, int | None]:
    """Server: {name: array} -> (body, JSON header length) of a v2 REST inference response.

    `binary` says which outputs travel as binary data (RestInferRequest.wants_binary, or a set of
    names). The length is None when none does: the body is plain JSON (application/json); else
    the caller sends it as Inference-Header-Content-Length, with application/octet-stream.
    """
    wants = binary if callable(binary) else frozenset(binary).__contains__
    heads, raws, framed = [], [], False
    for name, value in outputs.items():
        arr, entry = _as_array(value, name, "output")
        head: dict[str, Any] = {"name": name, "datatype": entry.name, "shape": list(arr.shape)}
        if wants(name):
            raw = _encode_v2_bytes(_bytes_items(arr, name, "output")) if entry is _BYTES else _numeric_raw(entry, arr)
            head["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
            framed = True
        elif entry is _BYTES:
            head["data"] = _json_strings(arr, name, b64=False)
        else:
            head["data"] = _json_numbers(entry, arr).ravel()  # flat, row-major; NaN/Inf become null
        heads.append(head)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request_id:
        doc["id"] = request_id
    doc["outputs"] = heads
    header = orjson.dumps(doc, option=_NUMPY)
    if not framed:
        return header, None
    return b"".join([header, *raws]), len(header)


# ---------------------------------------------------------------- TensorFlow Serving REST


@dataclass
class TfPredictRequest:
    """A decoded TF Serving REST predict request."""

    signature_name: str = ""
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    row_format: bool = True  # "instances" (rows); False: "inputs" (columns)


def _known(names, input_ranks: Mapping[str, Any]) -> None:
    for name in names:
        if name not in input_ranks:
            raise CodecError(f"is not an input of this signature (its inputs: {', '.join(input_ranks)})",
                             name, "input")


def _is_named(value: Any) -> bool:
    """An object of {input_name: value}, as opposed to a value (a {"b64"} object is a value)."""
    return type(value) is dict and not _is_b64(value)


def _row_columns(instances: Any, input_ranks: Mapping[str, tuple[str, int]]) -> dict[str, Any]:
    """Row format -> {name: list of the rows' values} (each then has the batch dimension)."""
    if type(instances) is not list:
        raise CodecError(f"\"instances\" must be a JSON array (one entry per batch row), got {_json_type(instances)}")
    if not instances:
        raise CodecError("\"instances\" is empty")
    first = instances[0]
    if not _is_named(first):
        if len(input_ranks) != 1:
            raise CodecError(f"with several inputs ({', '.join(input_ranks)}) each instance must be an object "
                             "{input_name: value}")
        return {next(iter(input_ranks)): instances}
    keys = first.keys()
    _known(keys, input_ranks)
    for i, row in enumerate(instances):
        if not _is_named(row) or row.keys() != keys:
            got = f"inputs {sorted(row)}" if _is_named(row) else _json_type(row)
            raise CodecError(f"instances[{i}] has {got} where instances[0] has inputs {sorted(keys)}")
    return {name: [row[name] for row in instances] for name in keys}


def _column_values(inputs: Any, input_ranks: Mapping[str, tuple[str, int]]) -> dict[str, Any]:
    if _is_named(inputs):
        _known(inputs, input_ranks)
        return inputs
    if len(input_ranks) != 1:
        raise CodecError(f"with several inputs ({', '.join(input_ranks)}) \"inputs\" must be an object "
                         "{input_name: value}")
    return {next(iter(input_ranks)): inputs}


def _value_shape(value: Any, rank: int | None, name: str) -> tuple[int, ...]:
    """The shape a nested value claims, read down its first elements (raggedness is _flatten's)."""
    shape: list[int] = []
    while type(value) is list and (rank is None or len(shape) < rank):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    if rank is not None and len(shape) < rank:
        if type(value) is not list:
            raise CodecError(f"value has rank {len(shape)} where the model takes rank {rank}", name, "input")
        shape += [0] * (rank - len(shape))  # an empty list: the dimensions inside are empty too
    return tuple(shape)


def _tf_tensor(value: Any, datatype: str, rank: int | None, name: str, max_elements: int) -> np.ndarray:
    entry = DTYPES.get(datatype)
    if entry is None:
        raise CodecError(f"unsupported datatype {datatype!r}", name, "input")
    shape = _value_shape(value, rank, name)
    count = math.prod(shape)
    if count > max_elements:
        raise CodecError(f"shape {list(shape)} is {count} elements, over the limit of {max_elements}", name, "input")
    leaves = _flatten(value, shape, name, derived=True)
    return _to_array(entry, leaves, shape, name, b64=True)


def decode_predict_request(
    body: bytes,
    input_ranks: Mapping[str, tuple[str, int | None]] | Callable[[str], Mapping[str, tuple[str, int | None]]],
    max_elements: int,
) -> TfPredictRequest:
    """Server: a TF Serving REST predict body -> TfPredictRequest.

    `input_ranks` maps each input of the chosen signature to (v2 datatype, rank) from the model's
    contract (or is a function of the request's signature_name that returns that map) (rank None: as deep as the data goes). Row format ("instances") adds the batch
    dimension itself, so a row is one rank lower. Missing inputs are left to the contract check.
    """
    doc = _object(_loads(body, "the predict request"), "the predict request")
    signature = doc.get("signature_name", "")
    if type(signature) is not str:
        raise CodecError(f"\"signature_name\" must be a string, got {_json_type(signature)}")
    if callable(input_ranks):  # the signature's own inputs, once its name is known
        input_ranks = input_ranks(signature)
    row_format = "instances" in doc
    if row_format == ("inputs" in doc):
        which = "both" if row_format else "neither"
        raise CodecError("a predict request needs exactly one of \"instances\" (row format) and \"inputs\" "
                         f"(columnar format); it has {which}")
    if row_format:
        values = _row_columns(doc["instances"], input_ranks)
        for name in values:
            if input_ranks[name][1] == 0:
                raise CodecError("is a scalar (rank 0), which has no batch rows: send it in \"inputs\"", name, "input")
    else:
        values = _column_values(doc["inputs"], input_ranks)
    inputs = {}
    for name, value in values.items():
        datatype, rank = input_ranks[name]
        inputs[name] = _tf_tensor(value, datatype, rank, name, max_elements)
    return TfPredictRequest(signature, inputs, row_format)


def _tf_value(value: Any, name: str):
    """An output as orjson writes it: a numeric array or scalar, or nested lists of strings."""
    arr, entry = _as_array(value, name, "output")
    if entry is _BYTES:
        return _object_array(_json_strings(arr, name, b64=True), arr.shape).tolist()
    arr = _json_numbers(entry, arr)
    return arr[()] if arr.ndim == 0 else arr  # orjson writes numpy scalars, not 0-d arrays


def encode_predict_response(outputs: Mapping[str, Any], row_format: bool) -> bytes:
    """Server: {name: array} -> a TF Serving REST predict response body.

    Row format: {"predictions": [...]}, one entry per batch row (the row itself with one output,
    {name: row} with several). Columnar: {"outputs": value} with one output, else {name: value}.
    BYTES are UTF-8 strings, or {"b64": ...} where not valid UTF-8. NaN/Inf are written as null.
    """
    values = {name: _tf_value(value, name) for name, value in outputs.items()}
    if not row_format:
        doc = next(iter(values.values())) if len(values) == 1 else values
        return orjson.dumps({"outputs": doc}, option=_NUMPY)
    batches = {}
    for name, value in values.items():
        if not isinstance(value, (list, np.ndarray)):
            raise CodecError("is a scalar (rank 0), which has no batch rows for \"predictions\"", name, "output")
        batches[name] = len(value)
    if len(set(batches.values())) > 1:
        sizes = ", ".join(f"{name!r} {size}" for name, size in batches.items())
        raise CodecError(f"outputs disagree on the batch size ({sizes}), which \"predictions\" rows need")
    if len(values) == 1:
        predictions = next(iter(values.values()))
    else:
        rows = next(iter(batches.values()), 0)
        predictions = [{name: value[i] for name, value in values.items()} for i in range(rows)]
    return orjson.dumps({"predictions": predictions}, option=_NUMPY)
