"""mimo.protos: the wire contract (generated protobuf/gRPC modules), the ONE
dtype table and the ONE numpy <-> protobuf codec.

Imports only numpy, protobuf and grpc (never TensorFlow or ONNX Runtime), so
both the client and the server can depend on it. Generated modules:
`mimo.protos.grpc_service_pb2[_grpc]` (KServe v2 / Triton), `model_config_pb2`,
`tf_serving_pb2[_grpc]` (TF Serving), `tf_framework_pb2`, `tf_error_codes_pb2`;
they live in the private descriptor pool `POOL` (see _pool.py for why).
"""

from mimo.protos._pool import POOL
from mimo.protos.codec import (
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
from mimo.protos.dtypes import (
    DATATYPES,
    DTYPES,
    DType,
    datatype_to_numpy,
    datatype_to_tf,
    datatype_to_triton,
    element_size,
    from_numpy,
    lookup,
    numpy_to_datatype,
    tf_to_datatype,
    triton_to_datatype,
)
from mimo.protos.errors import CodecError

__all__ = [
    "POOL",
    "CodecError",
    "DATATYPES",
    "DTYPES",
    "DType",
    "datatype_to_numpy",
    "datatype_to_tf",
    "datatype_to_triton",
    "decode_infer_request",
    "decode_infer_response",
    "decode_parameters",
    "decode_predict_request",
    "decode_predict_response",
    "decode_tensor_proto",
    "element_size",
    "encode_infer_request",
    "encode_infer_response",
    "encode_predict_request",
    "encode_predict_response",
    "encode_tensor_proto",
    "from_numpy",
    "lookup",
    "numpy_to_datatype",
    "requested_outputs",
    "tf_to_datatype",
    "triton_to_datatype",
]
