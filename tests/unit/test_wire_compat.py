"""Wire compatibility with tritonclient.grpc 2.41 (Triton's own generated protos).

Our messages must use Triton's field numbers, types and enum values, so bytes
serialized by one side parse correctly on the other.
"""

import numpy as np
import pytest
from google.protobuf import json_format

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2 as triton_mc  # noqa: E402
from tritonclient.grpc import service_pb2 as triton  # noqa: E402
from tritonclient.grpc._utils import _get_inference_request  # noqa: E402

from mimo.protos import (  # noqa: E402
    POOL,
    decode_infer_request,
    decode_parameters,
    encode_infer_request,
    encode_infer_response,
)
from mimo.protos import grpc_service_pb2 as ours  # noqa: E402
from mimo.protos import model_config_pb2 as ours_mc  # noqa: E402


def _messages(container):
    for msg in container.message_types_by_name.values() if hasattr(container, "message_types_by_name") \
            else container.nested_types:
        yield msg
        yield from _messages(msg)


def _enums(file):
    yield from file.enum_types_by_name.values()
    for msg in _messages(file):
        yield from msg.enum_types


def _type_name(field):
    typ = field.message_type or field.enum_type
    return typ.full_name if typ else None


@pytest.mark.parametrize("file", [ours.DESCRIPTOR, ours_mc.DESCRIPTOR], ids=lambda f: f.name)
def test_messages_match_triton_field_by_field(file):
    theirs_pool = triton.DESCRIPTOR.pool
    checked = 0
    for msg in _messages(file):
        theirs = theirs_pool.FindMessageTypeByName(msg.full_name)
        for field in msg.fields:
            other = theirs.fields_by_number.get(field.number)
            where = f"{msg.full_name}.{field.name} = {field.number}"
            assert other is not None, f"{where}: not in Triton"
            assert other.name == field.name, where
            assert other.type == field.type, where
            assert other.is_repeated == field.is_repeated, where
            assert _type_name(other) == _type_name(field), where
            assert (other.containing_oneof is None) == (field.containing_oneof is None), where
            checked += 1
    assert checked > 50


@pytest.mark.parametrize("file", [ours.DESCRIPTOR, ours_mc.DESCRIPTOR], ids=lambda f: f.name)
def test_enums_match_triton(file):
    theirs_pool = triton.DESCRIPTOR.pool
    for enum in _enums(file):
        theirs = theirs_pool.FindEnumTypeByName(enum.full_name)
        assert {v.name: v.number for v in enum.values} == {v.name: v.number for v in theirs.values}


def test_service_methods_match_triton():
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    mine = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert mine.full_name == "inference.GRPCInferenceService"
    for method in mine.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (other.client_streaming, other.server_streaming)
    assert {m.name for m in mine.methods} >= {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "ModelStreamInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex",
        "RepositoryModelLoad", "RepositoryModelUnload"}


def test_tritonclient_request_decodes_through_our_codec():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[1, -2**40]], dtype=np.int64)
    text = np.array([b"hello", b"", "wörld".encode()], dtype=object)
    flags = np.array([True, False])
    half = np.array([0.5, -1.0], dtype=np.float16)
    inputs = []
    for name, arr, datatype in [("x", x, "FP32"), ("ids", ids, "INT64"), ("text", text, "BYTES"),
                                ("flags", flags, "BOOL"), ("half", half, "FP16")]:
        infer_input = grpcclient.InferInput(name, list(arr.shape), datatype)
        infer_input.set_data_from_numpy(arr)
        inputs.append(infer_input)
    outputs = [grpcclient.InferRequestedOutput("y")]
    request = _get_inference_request(
        model_name="m", inputs=inputs, model_version="1", request_id="r", outputs=outputs,
        sequence_id=0, sequence_start=False, sequence_end=False, priority=3, timeout=1000,
        parameters={"custom": "v"})
    parsed = ours.ModelInferRequest.FromString(request.SerializeToString())
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("m", "1", "r")
    assert [o.name for o in parsed.outputs] == ["y"]
    assert decode_parameters(parsed.parameters) == {"priority": 3, "timeout": 1000, "custom": "v"}
    decoded = decode_infer_request(parsed)
    np.testing.assert_array_equal(decoded["x"], x)
    np.testing.assert_array_equal(decoded["ids"], ids)
    assert decoded["text"].tolist() == text.tolist()
    np.testing.assert_array_equal(decoded["flags"], flags)
    np.testing.assert_array_equal(decoded["half"], half)


def test_our_response_reads_in_tritonclient():
    outputs = {
        "age": np.array([[31.5], [40.0]], dtype=np.float32),
        "gender": np.array([[0.1, 0.9]], dtype=np.float64),
        "tokens": np.array([[b"a", b"bc"]], dtype=object),
        "count": np.array([7], dtype=np.uint16),
    }
    wire = encode_infer_response("posts", outputs, model_version="2", request_id="r").SerializeToString()
    result = grpcclient.InferResult(triton.ModelInferResponse.FromString(wire))
    for name, want in outputs.items():
        got = result.as_numpy(name)
        assert got.shape == want.shape
        assert got.tolist() == want.tolist()
    assert result.get_response().model_version == "2"


def test_our_request_parses_in_triton_types():
    request = encode_infer_request("m", {"x": np.ones((1, 2), np.float32)}, outputs=["y"], version=1,
                                   parameters={"priority": 1})
    theirs = triton.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.inputs[0].datatype == "FP32" and list(theirs.inputs[0].shape) == [1, 2]
    assert np.frombuffer(theirs.raw_input_contents[0], np.float32).tolist() == [1.0, 1.0]
    assert theirs.parameters["priority"].int64_param == 1


def test_typed_contents_interoperate():
    theirs = triton.ModelInferRequest(model_name="m")
    tensor = theirs.inputs.add(name="u", datatype="UINT64", shape=[2])
    tensor.contents.uint64_contents.extend([1, 2**64 - 1])
    decoded = decode_infer_request(ours.ModelInferRequest.FromString(theirs.SerializeToString()))
    assert decoded["u"].tolist() == [1, 2**64 - 1]


def test_model_config_reads_in_tritonclient():
    config = ours_mc.ModelConfig(name="posts", platform="tensorflow_savedmodel", backend="tensorflow",
                                 max_batch_size=64)
    config.input.add(name="posts", data_type=ours_mc.TYPE_INT32, dims=[-1])
    config.output.add(name="age", data_type=ours_mc.TYPE_FP32, dims=[1])
    config.dynamic_batching.preferred_batch_size.extend([8, 16])
    config.dynamic_batching.max_queue_delay_microseconds = 500
    config.instance_group.add(kind=ours_mc.ModelInstanceGroup.KIND_GPU, count=1, gpus=[0])
    config.version_policy.latest.num_versions = 1
    wire = ours.ModelConfigResponse(config=config).SerializeToString()
    theirs = triton.ModelConfigResponse.FromString(wire)
    assert json_format.MessageToDict(theirs) == json_format.MessageToDict(
        ours.ModelConfigResponse.FromString(wire), descriptor_pool=POOL)
    assert theirs.config.input[0].data_type == triton_mc.TYPE_INT32
    assert theirs.config.max_batch_size == 64


def test_stream_response_wrapper():
    stream = ours.ModelStreamInferResponse(error_message="")
    encode_infer_response("m", {"y": np.array([1, 2], np.int32)}, response=stream.infer_response)
    theirs = triton.ModelStreamInferResponse.FromString(stream.SerializeToString())
    result = grpcclient.InferResult(theirs.infer_response)
    assert result.as_numpy("y").tolist() == [1, 2]
    err = triton.ModelStreamInferResponse.FromString(
        ours.ModelStreamInferResponse(error_message="boom").SerializeToString())
    assert err.error_message == "boom"


def test_statistics_reads_in_tritonclient():
    stats = ours.ModelStatisticsResponse()
    model = stats.model_stats.add(name="m", version="1", inference_count=5, execution_count=2)
    model.inference_stats.success.count = 5
    model.inference_stats.success.ns = 1234
    model.batch_stats.add(batch_size=4).compute_infer.ns = 99
    theirs = triton.ModelStatisticsResponse.FromString(stats.SerializeToString())
    assert theirs.model_stats[0].inference_stats.success.ns == 1234
    assert theirs.model_stats[0].batch_stats[0].compute_infer.ns == 99



# TensorFlow Serving's published field numbers (tensorflow_serving/apis/*.proto);
# tensorflow-serving-api is not a dependency, so they are pinned here.
TF_SERVING_FIELDS = {
    "ModelSpec": {"name": 1, "version": 2, "signature_name": 3, "version_label": 4},
    "PredictRequest": {"model_spec": 1, "inputs": 2, "output_filter": 3},
    "PredictResponse": {"outputs": 1, "model_spec": 2},
    "SignatureDefMap": {"signature_def": 1},
    "GetModelMetadataRequest": {"model_spec": 1, "metadata_field": 2},
    "GetModelMetadataResponse": {"model_spec": 1, "metadata": 2},
    "GetModelStatusRequest": {"model_spec": 1},
    "ModelVersionStatus": {"version": 1, "state": 2, "status": 3},
    "GetModelStatusResponse": {"model_version_status": 1},
    "StatusProto": {"error_code": 1, "error_message": 2},
}


@pytest.mark.parametrize("name", sorted(TF_SERVING_FIELDS))
def test_tf_serving_field_numbers(name):
    from mimo.protos import tf_serving_pb2

    msg = tf_serving_pb2.DESCRIPTOR.message_types_by_name[name]
    assert msg.full_name == f"tensorflow.serving.{name}"
    assert {f.name: f.number for f in msg.fields} == TF_SERVING_FIELDS[name]


def test_tf_serving_services():
    from mimo.protos import tf_serving_pb2

    services = tf_serving_pb2.DESCRIPTOR.services_by_name
    assert services["PredictionService"].full_name == "tensorflow.serving.PredictionService"
    assert {m.name for m in services["PredictionService"].methods} == {"Predict", "GetModelMetadata"}
    assert {m.name for m in services["ModelService"].methods} == {"GetModelStatus"}
    spec = tf_serving_pb2.ModelSpec.DESCRIPTOR.fields_by_name
    assert spec["version"].message_type.full_name == "google.protobuf.Int64Value"
    assert spec["version"].containing_oneof.name == "version_choice"
    states = tf_serving_pb2.ModelVersionStatus.State
    assert [states.Value(s) for s in ("UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END")] == \
        [0, 10, 20, 30, 40, 50]
