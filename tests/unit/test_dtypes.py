"""The one dtype table agrees with the generated enums and fields, and its helpers."""

import numpy as np
import pytest

from mimo.protos import (
    DATATYPES,
    DTYPES,
    CodecError,
    datatype_to_numpy,
    datatype_to_tf,
    datatype_to_triton,
    element_size,
    numpy_to_datatype,
    tf_to_datatype,
    triton_to_datatype,
)
from mimo.protos import grpc_service_pb2, model_config_pb2, tf_framework_pb2

ALL = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
       "FP16", "FP32", "FP64", "BYTES")


def test_table_covers_the_v2_datatypes():
    assert set(DATATYPES) == set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_entry_agrees_with_protos(name):
    entry = DTYPES[name]
    triton_name = "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}"
    assert model_config_pb2.DataType.Name(entry.triton) == triton_name
    tf_names = {"FP16": "DT_HALF", "FP32": "DT_FLOAT", "FP64": "DT_DOUBLE", "BYTES": "DT_STRING"}
    assert tf_framework_pb2.DataType.Name(entry.tf) == tf_names.get(name, f"DT_{name}")
    contents = grpc_service_pb2.InferTensorContents.DESCRIPTOR.fields_by_name
    assert (entry.contents_field is None) == (name == "FP16")
    if entry.contents_field:
        assert entry.contents_field in contents
    assert entry.tf_field in tf_framework_pb2.TensorProto.DESCRIPTOR.fields_by_name
    if name != "BYTES":
        assert entry.numpy.byteorder in "<|="  # little-endian or single byte
        assert element_size(name) == entry.numpy.itemsize


@pytest.mark.parametrize("name", ALL)
def test_helpers_round_trip(name):
    assert numpy_to_datatype(datatype_to_numpy(name)) == name
    assert triton_to_datatype(datatype_to_triton(name)) == name
    assert tf_to_datatype(datatype_to_tf(name)) == name


def test_triton_enum_values():
    # Triton's published numbering (wire contract for ModelConfig).
    assert model_config_pb2.TYPE_INVALID == 0 and model_config_pb2.TYPE_BOOL == 1
    assert model_config_pb2.TYPE_FP32 == 11 and model_config_pb2.TYPE_FP64 == 12
    assert model_config_pb2.TYPE_STRING == 13 and model_config_pb2.TYPE_BF16 == 14


@pytest.mark.parametrize(
    "dtype, name",
    [(">f4", "FP32"), (">i8", "INT64"), ("<U5", "BYTES"), ("S3", "BYTES"), (object, "BYTES"),
     (np.bool_, "BOOL"), (np.float16, "FP16"), (">u2", "UINT16")],
)
def test_numpy_to_datatype_any_byte_order(dtype, name):
    assert numpy_to_datatype(dtype) == name


@pytest.mark.parametrize("bad", [np.complex64, "M8[s]", "V4"])
def test_numpy_without_datatype(bad):
    with pytest.raises(CodecError):
        numpy_to_datatype(bad)


def test_unknown_names_and_enums():
    with pytest.raises(CodecError, match="BF16"):
        datatype_to_numpy("BF16")
    with pytest.raises(CodecError):
        triton_to_datatype(model_config_pb2.TYPE_BF16)
    with pytest.raises(CodecError):
        tf_to_datatype(tf_framework_pb2.DT_COMPLEX64)
    assert element_size("BYTES") == 0
