"""The ONE dtype table: v2 datatype names <-> numpy <-> protobuf fields and enums.

Every other module (codec, servicers, metadata, model config, clients) asks
this table instead of keeping its own mapping, so the protocols cannot drift.
BF16 is not in the table: numpy has no bfloat16 without extra packages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from mimo.protos import model_config_pb2 as _mc
from mimo.protos import tf_framework_pb2 as _tf
from mimo.protos.errors import CodecError


@dataclass(frozen=True)
class DType:
    name: str  # v2 datatype, e.g. "FP32"
    numpy: np.dtype  # little-endian numpy dtype; object for BYTES
    contents_field: str | None  # InferTensorContents field; None = raw only (FP16)
    triton: int  # inference.DataType (TYPE_*) in model_config
    tf: int  # tensorflow.DataType (DT_*)
    tf_field: str  # TensorProto typed field (half_val holds FP16 bit patterns)
    itemsize: int  # bytes per element on the wire; 0 = variable (BYTES)


def _d(name, np_dtype, contents, triton, tf, tf_field):
    dt = np.dtype(np_dtype)
    return DType(name, dt, contents, triton, tf, tf_field, 0 if dt.kind == "O" else dt.itemsize)


_TABLE = (
    _d("BOOL", np.bool_, "bool_contents", _mc.TYPE_BOOL, _tf.DT_BOOL, "bool_val"),
    _d("UINT8", "u1", "uint_contents", _mc.TYPE_UINT8, _tf.DT_UINT8, "int_val"),
    _d("UINT16", "<u2", "uint_contents", _mc.TYPE_UINT16, _tf.DT_UINT16, "int_val"),
    _d("UINT32", "<u4", "uint_contents", _mc.TYPE_UINT32, _tf.DT_UINT32, "uint32_val"),
    _d("UINT64", "<u8", "uint64_contents", _mc.TYPE_UINT64, _tf.DT_UINT64, "uint64_val"),
    _d("INT8", "i1", "int_contents", _mc.TYPE_INT8, _tf.DT_INT8, "int_val"),
    _d("INT16", "<i2", "int_contents", _mc.TYPE_INT16, _tf.DT_INT16, "int_val"),
    _d("INT32", "<i4", "int_contents", _mc.TYPE_INT32, _tf.DT_INT32, "int_val"),
    _d("INT64", "<i8", "int64_contents", _mc.TYPE_INT64, _tf.DT_INT64, "int64_val"),
    _d("FP16", "<f2", None, _mc.TYPE_FP16, _tf.DT_HALF, "half_val"),
    _d("FP32", "<f4", "fp32_contents", _mc.TYPE_FP32, _tf.DT_FLOAT, "float_val"),
    _d("FP64", "<f8", "fp64_contents", _mc.TYPE_FP64, _tf.DT_DOUBLE, "double_val"),
    _d("BYTES", object, "bytes_contents", _mc.TYPE_STRING, _tf.DT_STRING, "string_val"),
)

DTYPES: Mapping[str, DType] = {d.name: d for d in _TABLE}
DATATYPES: tuple[str, ...] = tuple(DTYPES)
BY_TRITON: Mapping[int, DType] = {d.triton: d for d in _TABLE}
BY_TF: Mapping[int, DType] = {d.tf: d for d in _TABLE}
# numpy (kind, itemsize) -> entry; str/bytes arrays of any width are BYTES.
_BY_NUMPY = {(d.numpy.kind, d.numpy.itemsize): d for d in _TABLE if d.itemsize}


def lookup(datatype: str) -> DType:
    """The table entry for a v2 datatype name; CodecError if unknown."""
    try:
        return DTYPES[datatype]
    except KeyError:
        raise CodecError(f"unsupported datatype {datatype!r}") from None


def from_numpy(dtype) -> DType:
    """The table entry for a numpy dtype (any byte order); CodecError if none fits."""
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return DTYPES["BYTES"]
    entry = _BY_NUMPY.get((dt.kind, dt.itemsize))
    if entry is None:
        raise CodecError(f"numpy dtype {dt} has no v2 datatype")
    return entry


def datatype_to_numpy(datatype: str) -> np.dtype:
    return lookup(datatype).numpy


def numpy_to_datatype(dtype) -> str:
    return from_numpy(dtype).name


def element_size(datatype: str) -> int:
    """Bytes per element in raw form; 0 for BYTES (length-prefixed, variable)."""
    return lookup(datatype).itemsize


def datatype_to_triton(datatype: str) -> int:
    """v2 name -> model_config DataType enum value (e.g. "BYTES" -> TYPE_STRING)."""
    return lookup(datatype).triton


def triton_to_datatype(value: int) -> str:
    try:
        return BY_TRITON[value].name
    except KeyError:
        raise CodecError(f"unsupported model_config DataType {value}") from None


def datatype_to_tf(datatype: str) -> int:
    """v2 name -> tensorflow DataType enum value (e.g. "FP32" -> DT_FLOAT)."""
    return lookup(datatype).tf


def tf_to_datatype(value: int) -> str:
    try:
        return BY_TF[value].name
    except KeyError:
        raise CodecError(f"unsupported tensorflow DataType {value}") from None
