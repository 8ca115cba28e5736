"""TensorFlow Serving's Predict API on the same server, with tensors made by TensorFlow itself."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from helpers import run_onnx, run_savedmodel, sample_inputs
from mimo.protos import tf_serving_pb2 as tfs
from mimo.protos import tf_serving_pb2_grpc as tfs_grpc


def predict_request(model: str, inputs: dict, signature: str = "", output_filter=(), version=None):
    """A PredictRequest whose TensorProtos are TensorFlow's own serialization (tf.make_tensor_proto)."""
    import tensorflow as tf

    request = tfs.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, array in inputs.items():
        request.inputs[name].ParseFromString(tf.make_tensor_proto(array).SerializeToString())
    request.output_filter.extend(output_filter)
    return request


def outputs_via_tensorflow(response) -> dict:
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    return {name: tf.make_ndarray(tensor_pb2.TensorProto.FromString(proto.SerializeToString()))
            for name, proto in response.outputs.items()}


@pytest.fixture(scope="module")
def prediction(server):
    return tfs_grpc.PredictionServiceStub(grpc.insecure_channel(server.address))


@pytest.mark.parametrize("model", ["mlp", "qa", "posts", "similarity"])
def test_predict_matches_in_process(exported_repo, prediction, model):
    inputs = sample_inputs(exported_repo, model, 3)
    response = prediction.Predict(predict_request(model, inputs), timeout=60)
    got, want = outputs_via_tensorflow(response), run_onnx(exported_repo, model, inputs)
    assert set(got) == set(want) and response.model_spec.name == model
    assert response.model_spec.version.value == 1
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5)


def test_predict_output_filter_and_signature(exported_repo, tf_server):
    stub = tfs_grpc.PredictionServiceStub(grpc.insecure_channel(tf_server.address))
    inputs = sample_inputs(exported_repo, "posts", 2)
    response = stub.Predict(predict_request("posts", inputs, output_filter=["age"]), timeout=60)
    assert list(response.outputs) == ["age"]
    response = stub.Predict(predict_request("posts", inputs, signature="income"), timeout=60)
    got = outputs_via_tensorflow(response)
    assert list(got) == ["income"] and response.model_spec.signature_name == "income"
    np.testing.assert_allclose(got["income"], run_savedmodel(exported_repo, "posts", inputs, "income")["income"],
                               atol=1e-6)


def test_predict_errors(exported_repo, prediction):
    with pytest.raises(grpc.RpcError) as error:
        prediction.Predict(predict_request("nope", {"x": np.zeros((1, 64), np.float32)}), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        prediction.Predict(predict_request("posts", {"posts": np.ones((1, 20), np.int32)}), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shorter than" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        prediction.Predict(predict_request("mlp", sample_inputs(exported_repo, "mlp", 1), version=9), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_model_metadata_and_status(server):
    channel = grpc.insecure_channel(server.address)
    request = tfs.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "posts"
    response = tfs_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=30)
    signatures = tfs.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default", "age", "income", "gender"}
    default = signatures.signature_def["serving_default"]
    assert set(default.outputs) == {"age", "income", "gender"}
    assert [d.size for d in default.inputs["posts"].tensor_shape.dim] == [-1, -1]
    status_request = tfs.GetModelStatusRequest()
    status_request.model_spec.name = "qa"
    status = tfs_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, tfs.ModelVersionStatus.AVAILABLE)]
