"""TensorFlow Serving's REST API (`/v1/models/...`) against the real server, with plain HTTP
clients: predict in the row ("instances") and columnar ("inputs") formats equal to the gRPC
Predict answers and ONNX Runtime, signatures, versions, status and metadata, and its errors."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from helpers import run_onnx, sample_inputs
from mimo.protos import codec
from mimo.protos import tf_serving_pb2 as tfs
from mimo.protos import tf_serving_pb2_grpc as tfs_grpc
from rest_support import BIG, MLP_X, assert_close, assert_mlp_serves, call

pytestmark = pytest.mark.timeout(120)

BATCH = 3
POSTS_HEADS = ("age", "income", "gender")


@pytest.fixture(scope="module")
def prediction(server):
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", BIG)])
    yield tfs_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def model_service(server):
    channel = grpc.insecure_channel(server.address)
    yield tfs_grpc.ModelServiceStub(channel)
    channel.close()


_inputs: dict = {}


def inputs_for(repo, model: str) -> dict:
    if model not in _inputs:
        _inputs[model] = sample_inputs(repo, model, BATCH, seed=23)
    return _inputs[model]


def grpc_predict(prediction, model: str, inputs: dict, signature: str = "", version=None) -> dict:
    request = codec.encode_predict_request(model, inputs, signature_name=signature, version=version)
    return codec.decode_predict_response(prediction.Predict(request, timeout=60))


def grpc_predict_error(prediction, model: str, inputs: dict, **kwargs) -> tuple[grpc.StatusCode, str]:
    try:
        prediction.Predict(codec.encode_predict_request(model, inputs, **kwargs), timeout=60)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def predict(server, model: str, body, path_version: str = "") -> tuple[int, dict]:
    path = f"/v1/models/{model}" + (f"/versions/{path_version}" if path_version else "") + ":predict"
    reply = call(server.http_address, "POST", path, body)
    assert reply.headers.get("content-type") == "application/json", reply
    return reply.status, reply.json()


def rows(inputs: dict) -> list:
    """The row format: one entry per batch row; an object of inputs when there are several."""
    if len(inputs) == 1:
        return next(iter(inputs.values())).tolist()
    batch = len(next(iter(inputs.values())))
    return [{name: array[i].tolist() for name, array in inputs.items()} for i in range(batch)]


def from_predictions(predictions: list, names: list[str]) -> dict:
    if len(names) == 1:
        return {names[0]: np.asarray(predictions, np.float32)}
    assert all(set(row) == set(names) for row in predictions), predictions[0].keys()
    return {name: np.asarray([row[name] for row in predictions], np.float32) for name in names}


# -- predict: both formats, equal to gRPC Predict and ONNX Runtime ---------------------------------------


@pytest.mark.parametrize("model", ["mlp", "qa", "posts"])
def test_row_format_equals_grpc_predict(exported_repo, server, prediction, model):
    inputs = inputs_for(exported_repo, model)
    want = grpc_predict(prediction, model, inputs)
    assert_close(want, run_onnx(exported_repo, model, inputs))
    status, document = predict(server, model, {"instances": rows(inputs)})
    assert status == 200, document
    assert list(document) == ["predictions"] and len(document["predictions"]) == BATCH
    if len(want) > 1:  # the model's output order (gRPC's map has none)
        assert all(list(row) == list(POSTS_HEADS) for row in document["predictions"]), document["predictions"][0]
    assert_close(from_predictions(document["predictions"], list(want)), want)


@pytest.mark.parametrize("model", ["mlp", "qa", "posts"])
def test_columnar_format_equals_grpc_predict(exported_repo, server, prediction, model):
    inputs = inputs_for(exported_repo, model)
    want = grpc_predict(prediction, model, inputs)
    forms = [{name: array.tolist() for name, array in inputs.items()}]
    if len(inputs) == 1:
        forms.append(next(iter(inputs.values())).tolist())  # one input: the bare value too
    for form in forms:
        status, document = predict(server, model, {"inputs": form})
        assert status == 200, document
        assert list(document) == ["outputs"]
        outputs = document["outputs"]
        if len(want) == 1:  # one output: the bare value
            assert isinstance(outputs, list)
            got = {next(iter(want)): np.asarray(outputs, np.float32)}
        else:
            assert list(outputs) == list(POSTS_HEADS) and set(want) == set(POSTS_HEADS)
            got = {name: np.asarray(value, np.float32) for name, value in outputs.items()}
        assert_close(got, want)


def test_signature_name_in_the_body_and_with_signature_named_instances(exported_repo, server, prediction):
    inputs = inputs_for(exported_repo, "posts")
    status, document = predict(server, "posts", {"signature_name": "serving_default", "instances": [
        {"posts": row} for row in inputs["posts"].tolist()]})
    assert status == 200, document
    want = grpc_predict(prediction, "posts", inputs)
    assert_close(from_predictions(document["predictions"], list(POSTS_HEADS)), want)


@pytest.mark.parametrize("head", POSTS_HEADS)
def test_signature_name_gives_only_that_head(exported_repo, server, prediction, head):
    inputs = inputs_for(exported_repo, "posts")
    want = grpc_predict(prediction, "posts", inputs, signature=head)
    assert list(want) == [head]
    assert_close(want, {head: run_onnx(exported_repo, "posts", inputs)[head]})
    status, document = predict(server, "posts", {"signature_name": head, "instances": inputs["posts"].tolist()})
    assert status == 200, document
    predictions = document["predictions"]
    assert len(predictions) == BATCH and all(isinstance(row, list) for row in predictions), predictions
    assert_close({head: np.asarray(predictions, np.float32)}, want)
    status, document = predict(server, "posts", {"signature_name": head, "inputs": inputs["posts"].tolist()})
    assert status == 200, document
    assert isinstance(document["outputs"], list)  # the bare value, not {name: value}
    assert_close({head: np.asarray(document["outputs"], np.float32)}, want)


def test_unknown_signature_is_400_with_the_grpc_words(exported_repo, server, prediction):
    inputs = inputs_for(exported_repo, "posts")
    code, details = grpc_predict_error(prediction, "posts", inputs, signature_name="height")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    status, document = predict(server, "posts", {"signature_name": "height", "instances": inputs["posts"].tolist()})
    assert status == 400 and "unknown signature 'height'" in document["error"], document
    assert "signature 'height'" in details and "age" in document["error"]


def test_unknown_signature_reads_the_same_as_on_grpc_predict(exported_repo, server, prediction):
    """The REST predict names an unknown signature in gRPC Predict's words (the same core check)."""
    inputs = inputs_for(exported_repo, "posts")
    code, details = grpc_predict_error(prediction, "posts", inputs, signature_name="height")
    status, document = predict(server, "posts", {"signature_name": "height", "instances": inputs["posts"].tolist()})
    assert (status, document) == (400, {"error": details})


def test_version_in_the_path(exported_repo, server, prediction):
    status, document = predict(server, "mlp", {"instances": MLP_X.tolist()}, path_version="1")
    assert status == 200, document
    want = run_onnx(exported_repo, "mlp", {"x": MLP_X})
    assert_close({"probs": np.asarray(document["predictions"], np.float32)}, want)
    code, details = grpc_predict_error(prediction, "mlp", {"x": MLP_X}, version=7)
    assert code == grpc.StatusCode.NOT_FOUND
    status, document = predict(server, "mlp", {"instances": MLP_X.tolist()}, path_version="7")
    assert status == 404 and document["error"] == details and "no version '7'" in details, (document, details)


def test_unknown_model_is_404_with_the_grpc_words(server, prediction):
    code, details = grpc_predict_error(prediction, "nope", {"x": MLP_X})
    assert code == grpc.StatusCode.NOT_FOUND
    status, document = predict(server, "nope", {"instances": MLP_X.tolist()})
    assert status == 404 and document == {"error": details} and "unknown model 'nope'" in details
    for path in ("/v1/models/nope", "/v1/models/nope/metadata"):
        reply = call(server.http_address, "GET", path)
        assert reply.status == 404 and "unknown model 'nope'" in reply.error, (path, reply)


# -- status and metadata ---------------------------------------------------------------------------


def test_model_status_shape(server, model_service):
    for path in ("/v1/models/mlp", "/v1/models/mlp/versions/1", "/v1/models/mlp/"):
        reply = call(server.http_address, "GET", path)
        assert reply.status == 200, (path, reply)
        assert reply.json() == {"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}, path
    request = tfs.GetModelStatusRequest()
    request.model_spec.name = "mlp"
    via_grpc = json_format.MessageToDict(model_service.GetModelStatus(request, timeout=30),
                                         preserving_proto_field_name=True)
    assert via_grpc["model_version_status"][0]["version"] == "1"
    assert via_grpc["model_version_status"][0]["state"] == "AVAILABLE"
    reply = call(server.http_address, "GET", "/v1/models/mlp/versions/7")
    assert reply.status == 404 and "7" in reply.error, reply


def test_model_status_of_a_version_that_is_not_a_number_is_404(server):
    reply = call(server.http_address, "GET", "/v1/models/mlp/versions/%C2%B2")  # "²"
    assert reply.status == 404 and "version '²' is not a version number" in reply.error, reply


def test_metadata_has_each_heads_signature(server, prediction):
    reply = call(server.http_address, "GET", "/v1/models/posts/metadata")
    assert reply.status == 200, reply
    document = reply.json()
    assert document["model_spec"] == {"name": "posts", "signature_name": "", "version": "1"}
    signatures = document["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "age", "income", "gender"}
    assert set(signatures["serving_default"]["outputs"]) == set(POSTS_HEADS)
    widths = {"age": "1", "income": "10", "gender": "1"}
    for head in POSTS_HEADS:
        signature = signatures[head]
        assert list(signature["outputs"]) == [head]
        assert signature["outputs"][head]["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in signature["outputs"][head]["tensor_shape"]["dim"]] == ["-1", widths[head]]
        assert list(signature["inputs"]) == ["posts"]
        assert signature["inputs"]["posts"]["dtype"] == "DT_INT32"
        assert [d["size"] for d in signature["inputs"]["posts"]["tensor_shape"]["dim"]] == ["-1", "-1"]
        assert signature["method_name"] == "tensorflow/serving/predict"
    # The same SignatureDefMap as gRPC's GetModelMetadata
    request = tfs.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "posts"
    via_grpc = tfs.SignatureDefMap()
    assert prediction.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(via_grpc)
    assert json_format.ParseDict(document["metadata"]["signature_def"], tfs.SignatureDefMap()) == via_grpc
    reply = call(server.http_address, "GET", "/v1/models/posts/versions/1/metadata")
    assert reply.status == 200 and reply.json() == document


# -- what the API does not serve, and what it refuses ----------------------------------------------


@pytest.mark.parametrize("verb", ["classify", "regress", "predictx"])
def test_other_verbs_are_404_with_a_clear_message(exported_repo, server, verb):
    status, document = predict_path(server, f"/v1/models/mlp:{verb}", {"instances": MLP_X.tolist()})
    assert status == 404 and f"':{verb}' is not served" in document["error"] and "':predict'" in document["error"]
    assert_mlp_serves(server.http_address, exported_repo)


def predict_path(server, path: str, body) -> tuple[int, dict]:
    reply = call(server.http_address, "POST", path, body)
    return reply.status, reply.json()


def test_b64_is_refused_for_a_numeric_input(exported_repo, server):
    """None of the seven models takes strings: {"b64": ...} where numbers belong is a clear 400."""
    status, document = predict(server, "qa", {"instances": [{"text": [{"b64": "AAAA"}], "question": [1, 2]}]})
    assert status == 400 and document["error"] == "input 'text': INT32 data must be numbers, got objects", document
    status, document = predict(server, "mlp", {"inputs": {"x": [[{"b64": "AAAA"}] * 64]}})
    assert status == 400 and "input 'x': FP32 data must be numbers, got objects" == document["error"], document
    assert_mlp_serves(server.http_address, exported_repo)


@pytest.mark.parametrize("body, fragment", [
    ({"instances": [[0.0] * 64], "inputs": [[0.0] * 64]}, "exactly one of \"instances\""),
    ({"signature_name": "serving_default"}, "it has neither"),
    ({"instances": []}, "\"instances\" is empty"),
    ({"instances": {"x": [0.0] * 64}}, "\"instances\" must be a JSON array"),
    ({"instances": [[0.0] * 64, [0.0] * 63]}, "ragged data"),
    ({"instances": [[True] * 64]}, "FP32 data must be numbers, got true/false"),
    ({"instances": [{"y": [0.0] * 64}]}, "input 'y': is not an input of this signature"),
    ({"signature_name": 3, "instances": [[0.0] * 64]}, "\"signature_name\" must be a string"),
    ([[0.0] * 64], "the predict request must be a JSON object, got an array of 1"),
    (b"{not json", "the predict request is not valid JSON"),
])
def test_malformed_predict_bodies_are_400(exported_repo, server, body, fragment):
    status, document = predict(server, "mlp", body)
    assert status == 400 and fragment in document["error"], document
    assert_mlp_serves(server.http_address, exported_repo)


def test_contract_errors_carry_the_grpc_words(exported_repo, server, prediction):
    """What the model's contract refuses reads the same on TF Serving REST as on gRPC Predict."""
    qa, posts = inputs_for(exported_repo, "qa"), inputs_for(exported_repo, "posts")
    short = {"posts": posts["posts"][:, :20]}
    cases = [
        ("qa", {"text": qa["text"]}, {"instances": [{"text": row} for row in qa["text"].tolist()]},
         "missing input 'question'"),
        ("posts", short, {"instances": short["posts"].tolist()},
         "sequence length 20 is shorter than the model's minimum"),
        ("mlp", {"x": np.zeros((2, 63), np.float32)}, {"instances": np.zeros((2, 63)).tolist()},
         "input 'x': dimension 1 is 63 where the model takes 64"),
    ]
    for model, inputs, body, fragment in cases:
        code, details = grpc_predict_error(prediction, model, inputs)
        status, document = predict(server, model, body)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and fragment in details, details
        assert status == 400 and fragment in document["error"], document
        assert document["error"] == details
    assert_mlp_serves(server.http_address, exported_repo)
