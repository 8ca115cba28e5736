"""The real server, in-process on port 0, over the session's exported repository."""

from __future__ import annotations

import asyncio
import json
import shutil

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helpers import MODELS, run_onnx, run_savedmodel, sample_inputs, start_server, triton_inputs
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc
from mimo.protos.repository import RepositoryError

BIG = 256 * 1024 * 1024


def stub_for(address: str) -> pb_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", BIG)])
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def stub(server):
    return stub_for(server.address)


@pytest.fixture(scope="module")
def tf_stub(tf_server):
    return stub_for(tf_server.address)


def infer(stub, model, inputs, raw=True, outputs=None, **kwargs):
    request = codec.encode_infer_request(model, inputs, outputs=outputs, raw=raw, **kwargs)
    return codec.decode_infer_response(stub.ModelInfer(request, timeout=120))


def assert_same(got: dict, want: dict, atol=1e-5):
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, name
        np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=0, err_msg=name)


# -- outputs equal the same format run in-process -------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_onnxruntime_backend_matches_in_process(exported_repo, stub, model, batch, raw):
    inputs = sample_inputs(exported_repo, model, batch, seed=batch)
    assert_same(infer(stub, model, inputs, raw=raw), run_onnx(exported_repo, model, inputs))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_tensorflow_backend_matches_in_process(exported_repo, tf_stub, model, batch, raw):
    inputs = sample_inputs(exported_repo, model, batch, seed=batch + 100)
    assert_same(infer(tf_stub, model, inputs, raw=raw), run_savedmodel(exported_repo, model, inputs))


def test_only_requested_outputs_come_back(exported_repo, stub, tf_stub):
    inputs = sample_inputs(exported_repo, "posts", 2)
    want = run_onnx(exported_repo, "posts", inputs)
    for s in (stub, tf_stub):
        got = infer(s, "posts", inputs, outputs=["income", "age"])
        assert list(got) == ["income", "age"]
        np.testing.assert_allclose(got["income"], want["income"], atol=1e-5)


def test_tensorflow_signature_name_picks_a_head_signature(exported_repo, tf_stub):
    inputs = sample_inputs(exported_repo, "posts", 3)
    got = infer(tf_stub, "posts", inputs, parameters={"signature_name": "gender"})
    assert list(got) == ["gender"]
    np.testing.assert_allclose(got["gender"], run_savedmodel(exported_repo, "posts", inputs, "gender")["gender"],
                               atol=1e-6)
    with pytest.raises(grpc.RpcError) as error:
        infer(tf_stub, "posts", inputs, parameters={"signature_name": "height"})
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown signature 'height'" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        infer(tf_stub, "posts", inputs, outputs=["age"], parameters={"signature_name": "gender"})
    assert "unknown output 'age' in signature 'gender'" in error.value.details()


# -- validation: every bad request gets a clear error, and the server goes on ---------------------


def _request(model, inputs, **kwargs):
    return codec.encode_infer_request(model, inputs, **kwargs)


def _bad_requests(repo):
    mlp = sample_inputs(repo, "mlp", 2)
    qa = sample_inputs(repo, "qa", 2)
    posts = sample_inputs(repo, "posts", 1)
    shortest = json.loads((repo / "posts" / "model.json").read_text())["constraints"]["posts"]["min_length"]

    raw_too_short = _request("mlp", mlp)
    raw_too_short.raw_input_contents[0] = raw_too_short.raw_input_contents[0][:-4]
    mixed = _request("qa", qa)
    mixed.inputs[1].contents.int_contents.extend(qa["question"].ravel().tolist())
    high = dict(qa, text=qa["text"].copy())
    high["text"][1, 3] = 10000
    negative = dict(qa, question=qa["question"].copy())
    negative["question"][0, 0] = -1
    return {
        "unknown model": (_request("nope", mlp), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        "unknown version": (_request("mlp", mlp, version=7), grpc.StatusCode.NOT_FOUND, "no version '7'"),
        "missing input": (_request("qa", {"text": qa["text"]}), None, "missing input 'question'"),
        "unexpected input": (_request("mlp", dict(mlp, y=mlp["x"])), None, "unexpected input 'y'"),
        "wrong datatype": (_request("mlp", {"x": mlp["x"].astype(np.float64)}), None,
                           "input 'x': datatype FP64 where the model takes FP32"),
        "wrong rank": (_request("mlp", {"x": mlp["x"].reshape(2, 8, 8)}), None, "input 'x': rank 3"),
        "wrong fixed dimension": (_request("mlp", {"x": np.zeros((2, 63), np.float32)}), None,
                                  "input 'x': dimension 1 is 63 where the model takes 64"),
        "raw length": (raw_too_short, None, "input 'x'"),
        "raw and typed mixed": (mixed, None, "question"),
        "shorter than minimum": (_request("posts", {"posts": posts["posts"][:, : shortest - 1]}), None,
                                 f"input 'posts': sequence length {shortest - 1} is shorter than the model's minimum {shortest}"),
        "token id too large": (_request("qa", high), None, "input 'text': token id 10000 at [1, 3] is outside the vocabulary [0, 10000)"),
        "negative token id": (_request("qa", negative), None, "input 'question': token id -1 at [0, 0]"),
        "empty batch": (_request("mlp", {"x": np.zeros((0, 64), np.float32)}), None, "input 'x': empty batch"),
        "unknown output": (_request("posts", posts, outputs=["height"]), None, "unknown output 'height'"),
        "over max batch": (_request("mlp", {"x": np.zeros((65, 64), np.float32)}), None, "max_batch_size"),
    }


@pytest.mark.parametrize("case", [
    "unknown model", "unknown version", "missing input", "unexpected input", "wrong datatype", "wrong rank",
    "wrong fixed dimension", "raw length", "raw and typed mixed", "shorter than minimum", "token id too large",
    "negative token id", "empty batch", "unknown output", "over max batch",
])
def test_bad_request_gets_a_clear_error_and_the_next_one_works(exported_repo, stub, case):
    request, code, fragment = _bad_requests(exported_repo)[case]
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request, timeout=30)
    assert error.value.code() == (code or grpc.StatusCode.INVALID_ARGUMENT)
    assert fragment in error.value.details()
    assert "Traceback" not in error.value.details()
    good = sample_inputs(exported_repo, "mlp", 1)
    assert_same(infer(stub, "mlp", good), run_onnx(exported_repo, "mlp", good))


def test_every_problem_is_listed_in_one_message(stub):
    request = _request("qa", {"text": np.zeros((2, 5), np.int64), "extra": np.zeros(2, np.float32)})
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request, timeout=30)
    details = error.value.details()
    for fragment in ("missing input 'question'", "unexpected input 'extra'", "input 'text': datatype INT64"):
        assert fragment in details


def test_message_over_the_limit_is_resource_exhausted(exported_repo):
    with start_server(exported_repo, max_message_mb=1) as small:
        stub = stub_for(small.address)
        big = {"x": np.zeros((8192, 64), np.float32)}  # 2 MiB of raw bytes
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(_request("mlp", big), timeout=30)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        good = sample_inputs(exported_repo, "mlp", 4)
        assert_same(infer(stub, "mlp", good), run_onnx(exported_repo, "mlp", good))


def _repository_with(tmp_path, exported_repo, models):
    """A repository of symlinked version folders; model.json copied so a test can edit it."""
    for name in models:
        (tmp_path / name).mkdir()
        shutil.copy(exported_repo / name / "model.json", tmp_path / name / "model.json")
        (tmp_path / name / "1").symlink_to(exported_repo / name / "1")
    return tmp_path


def test_backend_exception_is_internal_for_that_request_only(exported_repo, tmp_path):
    repo = _repository_with(tmp_path, exported_repo, ["posts", "mlp"])
    document = json.loads((repo / "posts" / "model.json").read_text())
    del document["constraints"]["posts"]["min_length"]  # now a short post reaches ONNX Runtime
    (repo / "posts" / "model.json").write_text(json.dumps(document))
    with start_server(repo) as srv:
        stub = stub_for(srv.address)
        with pytest.raises(grpc.RpcError) as error:
            infer(stub, "posts", {"posts": np.ones((1, 100), np.int32)})
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert "model 'posts' failed to run this request" in error.value.details()
        assert "Traceback" not in error.value.details() and "onnxruntime" not in error.value.details().lower()
        good = sample_inputs(exported_repo, "posts", 2)
        assert_same(infer(stub, "posts", good), run_onnx(exported_repo, "posts", good))


def test_model_that_cannot_load_is_not_ready_and_others_serve(exported_repo, tmp_path):
    repo = _repository_with(tmp_path, exported_repo, ["mlp"])
    (repo / "qa").mkdir()
    shutil.copy(exported_repo / "qa" / "model.json", repo / "qa" / "model.json")
    (repo / "qa" / "1").mkdir()
    (repo / "qa" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with start_server(repo) as srv:
        stub = stub_for(srv.address)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="qa")).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready
        index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert index["qa"].state == "UNAVAILABLE" and "could not load" in index["qa"].reason
        assert index["mlp"].state == "READY"
        with pytest.raises(grpc.RpcError) as error:
            infer(stub, "qa", sample_inputs(exported_repo, "qa", 1))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        good = sample_inputs(exported_repo, "mlp", 1)
        assert_same(infer(stub, "mlp", good), run_onnx(exported_repo, "mlp", good))
    # --strict-readiness: the operator asked that every model serve, so one that cannot refuses the start.
    with pytest.raises(RepositoryError, match=r"--strict-readiness and not every model is ready:\n  model qa version 1"):
        start_server(repo, strict_readiness=True)


def test_new_version_hot_reloads_without_dropping_requests(exported_repo, tmp_path):
    repo = _repository_with(tmp_path, exported_repo, ["mlp"])
    with start_server(repo) as srv:
        stub = stub_for(srv.address)
        inputs = sample_inputs(exported_repo, "mlp", 2)
        first = infer(stub, "mlp", inputs)
        (repo / "mlp" / "2").symlink_to(exported_repo / "mlp" / "1")
        srv.call(srv.server.registry.refresh())
        response = stub.ModelInfer(_request("mlp", inputs), timeout=30)
        assert response.model_version == "2"
        assert_same(codec.decode_infer_response(response), first)
        with pytest.raises(grpc.RpcError) as error:
            infer(stub, "mlp", inputs, version=1)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


# -- the other RPCs ---------------------------------------------------------------------------------


def test_metadata_config_index_and_statistics(exported_repo, stub):
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "mimo" and "statistics" in meta.extensions
    model = stub.ModelMetadata(pb.ModelMetadataRequest(name="posts"))
    assert model.versions == ["1"] and model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("posts", "INT32", [-1, -1])]
    assert [t.name for t in model.outputs] == ["age", "income", "gender"]
    config = stub.ModelConfig(pb.ModelConfigRequest(name="qa")).config
    assert config.name == "qa" and config.max_batch_size == 32
    assert [(i.name, list(i.dims)) for i in config.input] == [("text", [-1]), ("question", [-1])]
    assert json.loads(config.parameters["constraints"].string_value)["text"] == {"id_range": [0, 10000]}
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert sorted(m.name for m in index.models) == sorted(MODELS)
    before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp")).model_stats[0]
    infer(stub, "mlp", sample_inputs(exported_repo, "mlp", 3))
    after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp")).model_stats[0]
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_count == before.inference_count + 3
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_answers_in_order_and_survives_an_error(exported_repo, stub):
    good = [sample_inputs(exported_repo, "mlp", 1, seed=i) for i in range(12)]
    requests = [_request("mlp", inputs, request_id=str(i)) for i, inputs in enumerate(good)]
    requests.insert(5, _request("mlp", {"x": np.zeros((1, 3), np.float32)}, request_id="bad"))
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert [r.infer_response.id for r in responses] == [r.id for r in requests]
    assert "dimension 1 is 3" in responses[5].error_message
    for response, inputs in zip(responses[:5] + responses[6:], good):
        assert response.error_message == ""
        assert_same(codec.decode_infer_response(response.infer_response), run_onnx(exported_repo, "mlp", inputs))


def test_health_per_model_and_reflection(server):
    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="qa")).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as error:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    services = {s.name for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
    answer = next(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="inference.GRPCInferenceService")])))
    assert answer.file_descriptor_response.file_descriptor_proto


# -- an independent client: tritonclient -----------------------------------------------------------




@pytest.mark.parametrize("model", MODELS)
def test_tritonclient_sync(exported_repo, server, model):
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(server.address)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
    metadata = client.get_model_metadata(model, as_json=True)
    config = client.get_model_config(model, as_json=True)["config"]
    spec = json.loads((exported_repo / model / "model.json").read_text())
    assert [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in metadata["inputs"]] == [
        (t["name"], t["datatype"], t["shape"]) for t in spec["inputs"]]
    assert [o["name"] for o in metadata["outputs"]] == [t["name"] for t in spec["outputs"]]
    assert int(config["max_batch_size"]) == spec["max_batch_size"]
    assert [i["name"] for i in config["input"]] == [t["name"] for t in spec["inputs"]]
    for batch in (1, 8):
        inputs = sample_inputs(exported_repo, model, batch, seed=7)
        result = client.infer(model, triton_inputs(triton, inputs))
        want = run_onnx(exported_repo, model, inputs)
        assert_same({name: result.as_numpy(name) for name in want}, want)


def test_tritonclient_asyncio(exported_repo, server):
    import tritonclient.grpc.aio as triton_aio

    async def main():
        client = triton_aio.InferenceServerClient(server.address)
        try:
            assert await client.is_server_ready()
            for model in MODELS:
                inputs = sample_inputs(exported_repo, model, 2, seed=11)
                results = await asyncio.gather(*[client.infer(model, triton_inputs(triton_aio, inputs))
                                                 for _ in range(3)])
                want = run_onnx(exported_repo, model, inputs)
                for result in results:
                    assert_same({name: result.as_numpy(name) for name in want}, want)
            config = await client.get_model_config("posts", as_json=True)
            assert config["config"]["name"] == "posts"
        finally:
            await client.close()

    asyncio.run(main())


def test_tritonclient_reports_errors(exported_repo, server):
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(server.address)
    tokens = np.ones((1, 10), np.int32)
    with pytest.raises(InferenceServerException) as error:
        client.infer("posts", triton_inputs(triton, {"posts": tokens}))
    assert "StatusCode.INVALID_ARGUMENT" in str(error.value.status()) and "shorter than" in error.value.message()


def test_model_json_backend_and_version_policy_override_server_defaults(exported_repo, tmp_path):
    repo = _repository_with(tmp_path, exported_repo, ["mlp"])
    (repo / "mlp" / "2").symlink_to(exported_repo / "mlp" / "1")
    document = json.loads((repo / "mlp" / "model.json").read_text())
    document.update(backend="tensorflow", version_policy={"all": True})
    (repo / "mlp" / "model.json").write_text(json.dumps(document))
    with start_server(repo, backend="onnxruntime") as srv:
        stub = stub_for(srv.address)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp"))
        assert metadata.platform == "tensorflow_savedmodel" and list(metadata.versions) == ["1", "2"]
        inputs = sample_inputs(exported_repo, "mlp", 2)
        want = run_savedmodel(exported_repo, "mlp", inputs)
        for version in (1, 2):
            assert_same(infer(stub, "mlp", inputs, version=version), want)
        assert stub.ModelInfer(_request("mlp", inputs), timeout=30).model_version == "2"


def test_stream_error_carries_its_status_code(stub):
    bad = _request("nope", {"x": np.zeros((1, 64), np.float32)}, request_id="a")
    response = next(iter(stub.ModelStreamInfer(iter([bad]), timeout=30)))
    assert response.infer_response.parameters["error_code"].string_param == "NOT_FOUND"


def test_repository_unload_and_load(exported_repo, tmp_path):
    repo = _repository_with(tmp_path, exported_repo, ["mlp", "qa"])
    with start_server(repo, model_control_mode="explicit") as srv:
        stub = stub_for(srv.address)
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"), timeout=30)
        assert not stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready
        with pytest.raises(grpc.RpcError) as error:
            infer(stub, "mlp", sample_inputs(exported_repo, "mlp", 1))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert stub.ModelReady(pb.ModelReadyRequest(name="qa")).ready
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"), timeout=60)
        good = sample_inputs(exported_repo, "mlp", 1)
        assert_same(infer(stub, "mlp", good), run_onnx(exported_repo, "mlp", good))
        with pytest.raises(grpc.RpcError) as error:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope"), timeout=30)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
