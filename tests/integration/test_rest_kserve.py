"""KServe v2 REST (the Open Inference Protocol over HTTP) as tritonclient.http speaks it, sync and
asyncio, against the real server: every model, JSON and binary tensors, equal to the gRPC answers
and to ONNX Runtime in-process; health, metadata, config, statistics, the repository extension,
request ids and signatures; model control, the bearer token and TLS on the HTTP port."""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request

import numpy as np
import pytest

import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from client_support import make_pki
from helpers import MODELS, run_onnx, sample_inputs, start_server
from mimo.protos.dtypes import numpy_to_datatype
from rest_support import (MLP_X, assert_close, assert_mlp_serves, call, grpc_error, grpc_request,
                          linked_repository, v2_body, v2_outputs)

pytestmark = pytest.mark.timeout(120)

BATCH = 3
TOKEN = "rest-token"
ADMIN = "rest-admin"
POSTS_HEADS = ("age", "income", "gender")


@pytest.fixture
def new_client():
    """tritonclient.http clients made by a test, closed after it and collected on this thread: a
    client that an exception's traceback holds in a cycle would otherwise be collected on whatever
    thread the collector next runs (a server thread), where its gevent pool refuses to close."""
    made = []

    def make(address: str, **options) -> triton_http.InferenceServerClient:
        made.append(triton_http.InferenceServerClient(address, **options))
        return made[-1]

    yield make
    for c in made:
        c.close()
    made.clear()
    gc.collect()


@pytest.fixture(scope="module")
def client(server):
    c = triton_http.InferenceServerClient(server.http_address, network_timeout=120)
    yield c
    c.close()
    del c
    gc.collect()


@pytest.fixture(scope="module")
def grpc_client(server):
    c = triton_grpc.InferenceServerClient(server.address)
    yield c
    c.close()


_inputs: dict = {}
_grpc_answers: dict = {}


def inputs_for(repo, model: str) -> dict:
    if model not in _inputs:
        _inputs[model] = sample_inputs(repo, model, BATCH, seed=11)
    return _inputs[model]


def grpc_answer(grpc_client, repo, model: str) -> dict:
    """tritonclient.grpc's answer for the model's sample inputs (and, checked once, ONNX Runtime's)."""
    if model not in _grpc_answers:
        inputs = inputs_for(repo, model)
        built = []
        for name, array in inputs.items():
            tensor = triton_grpc.InferInput(name, list(array.shape), numpy_to_datatype(array.dtype))
            tensor.set_data_from_numpy(array)
            built.append(tensor)
        result = grpc_client.infer(model, built, client_timeout=120)
        names = [o["name"] for o in result.get_response(as_json=True)["outputs"]]
        answer = {name: result.as_numpy(name) for name in names}
        assert_close(answer, run_onnx(repo, model, inputs))
        _grpc_answers[model] = answer
    return _grpc_answers[model]


def http_inputs(module, inputs: dict, binary: bool) -> list:
    built = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), numpy_to_datatype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        built.append(tensor)
    return built


def outputs_of(result) -> dict:
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def assert_binary_as_asked(result, names, binary: bool) -> None:
    """Each output came back as binary data exactly when asked (JSON `data` otherwise)."""
    heads = {o["name"]: o for o in result.get_response()["outputs"]}
    assert list(heads) == list(names)
    for name in names:
        if binary:
            assert "data" not in heads[name] and heads[name]["parameters"]["binary_data_size"] > 0, heads[name]
        else:
            assert "data" in heads[name] and "parameters" not in heads[name], heads[name]


# -- inference: every model, JSON and binary, sync and asyncio -------------------------------------


FORMS = {"json": (False, False), "binary": (True, True), "binary-in-json-out": (True, False),
         "json-in-binary-out": (False, True)}
# Every model in both pure forms; the mixed ones on all but dual_camera (whose JSON is large).
SYNC_CASES = [pytest.param(model, *FORMS[form], id=f"{form}-{model}") for form in FORMS for model in MODELS
              if form in ("json", "binary") or model != "dual_camera"]


@pytest.mark.parametrize("model, binary_in, binary_out", SYNC_CASES)
def test_sync_infer_equals_grpc_and_onnxruntime(exported_repo, client, grpc_client, model, binary_in, binary_out):
    want = grpc_answer(grpc_client, exported_repo, model)
    inputs = inputs_for(exported_repo, model)
    outputs = [triton_http.InferRequestedOutput(name, binary_data=binary_out) for name in want]
    result = client.infer(model, http_inputs(triton_http, inputs, binary_in), outputs=outputs)
    got = outputs_of(result)
    assert_binary_as_asked(result, list(want), binary_out)
    assert result.get_response()["model_name"] == model and result.get_response()["model_version"] == "1"
    assert_close(got, want, ordered=True)
    assert all(got[n].dtype == want[n].dtype for n in want)
    assert_close(got, run_onnx(exported_repo, model, inputs))


@pytest.mark.parametrize("model", MODELS)
def test_aio_infer_equals_grpc_json_and_binary(exported_repo, grpc_client, server, model):
    want = grpc_answer(grpc_client, exported_repo, model)
    inputs = inputs_for(exported_repo, model)

    async def main():
        async with triton_aio.InferenceServerClient(server.http_address) as aio:
            assert await aio.is_server_ready() and await aio.is_model_ready(model)
            results = []
            for binary in (False, True):
                outputs = [triton_aio.InferRequestedOutput(name, binary_data=binary) for name in want]
                results.append((binary, await aio.infer(model, http_inputs(triton_aio, inputs, binary),
                                                        outputs=outputs, request_id=f"aio-{binary}")))
            return results

    for binary, result in asyncio.run(main()):
        assert_binary_as_asked(result, list(want), binary)
        assert result.get_response()["id"] == f"aio-{binary}"
        assert_close(outputs_of(result), want, ordered=True)


def test_aio_concurrent_calls_to_every_model(exported_repo, grpc_client, server):
    wants = {m: grpc_answer(grpc_client, exported_repo, m) for m in MODELS}

    async def main():
        async with triton_aio.InferenceServerClient(server.http_address) as aio:
            calls = [aio.infer(m, http_inputs(triton_aio, inputs_for(exported_repo, m), True)) for m in MODELS * 2]
            metadata = aio.get_model_metadata("posts")
            return await asyncio.gather(*calls), await metadata

    results, metadata = asyncio.run(main())
    for model, result in zip(MODELS * 2, results):
        assert result.get_response()["model_name"] == model
        assert_close(outputs_of(result), wants[model])
    assert [o["name"] for o in metadata["outputs"]] == list(POSTS_HEADS)


def test_a_burst_of_good_and_bad_infer_calls_each_get_their_own_answer(exported_repo, grpc_client, server):
    """On the native transport infer takes the bulk path (no task per request): concurrent good
    calls, calls that fail (unknown model, wrong input, bad JSON) and other endpoints mixed in one
    burst each get their own status and answer, and nothing is left behind."""
    http = server.server._http
    if type(http).__name__ == "NativeServer":
        assert http._bulk_http is not None
    mlp = inputs_for(exported_repo, "mlp")
    want = grpc_answer(grpc_client, exported_repo, "mlp")
    good = ("POST", "/v2/models/mlp/infer", v2_body(mlp, id="ok"))
    cases = [good, ("POST", "/v2/models/nope/infer", v2_body(mlp)),
             ("POST", "/v2/models/mlp/infer", v2_body({"wrong": mlp["x"]})),
             ("POST", "/v2/models/mlp/infer", b"{not json"), ("GET", "/v2/models/mlp", None), good] * 4

    async def main():
        async def one(method, path, body):
            return await asyncio.to_thread(call, server.http_address, method, path, body)

        return await asyncio.gather(*(one(*case) for case in cases))

    replies = asyncio.run(main())
    assert [r.status for r in replies] == [200, 404, 400, 400, 200, 200] * 4
    for reply, (_, path, body) in zip(replies, cases):
        document = json.loads(reply.body)
        if reply.status != 200:
            assert document["error"], document
        elif path.endswith("/infer"):
            assert document["id"] == "ok" and document["model_name"] == "mlp"
            assert_close(v2_outputs(document), want)
    assert "unknown model 'nope'" in json.loads(replies[1].body)["error"]
    assert "wrong" in json.loads(replies[2].body)["error"]
    if type(http).__name__ == "NativeServer":
        assert not http._bulk


def test_requested_outputs_subset_in_the_order_asked(exported_repo, server, client, grpc_client):
    want = grpc_answer(grpc_client, exported_repo, "posts")
    inputs = http_inputs(triton_http, inputs_for(exported_repo, "posts"), True)
    for asked in (["income"], ["gender", "age"], ["income", "age"]):
        outputs = [triton_http.InferRequestedOutput(name, binary_data=(i % 2 == 0)) for i, name in enumerate(asked)]
        result = client.infer("posts", inputs, outputs=outputs)
        got = outputs_of(result)
        assert list(got) == asked
        assert_close(got, {name: want[name] for name in asked}, ordered=True)
    # A plain JSON request naming an output that is not the model's: 400 with gRPC's words.
    body = v2_body(inputs_for(exported_repo, "posts"), outputs=[{"name": "height"}])
    reply = call(server.http_address, "POST", "/v2/models/posts/infer", body)
    code, details = grpc_error(server.address, grpc_request("posts", inputs_for(exported_repo, "posts"),
                                                         outputs=["height"]))
    assert reply.status == 400 and "unknown output 'height'" in reply.error and reply.error == details


@pytest.mark.parametrize("head", POSTS_HEADS)
def test_signature_name_parameter_gives_only_that_head(exported_repo, client, grpc_client, head):
    want = grpc_answer(grpc_client, exported_repo, "posts")
    inputs = inputs_for(exported_repo, "posts")
    for binary in (False, True):
        result = client.infer("posts", http_inputs(triton_http, inputs, binary), parameters={"signature_name": head},
                              outputs=None if binary else [triton_http.InferRequestedOutput(head, binary_data=False)])
        got = outputs_of(result)
        assert list(got) == [head]
        assert_binary_as_asked(result, [head], binary)  # no outputs named: binary_data_output, all binary
        assert_close(got, {head: want[head]})
    # gRPC gives the same single head for the same parameter
    grpc_inputs = []
    for name, array in inputs.items():
        tensor = triton_grpc.InferInput(name, list(array.shape), "INT32")
        tensor.set_data_from_numpy(array)
        grpc_inputs.append(tensor)
    via_grpc = grpc_client.infer("posts", grpc_inputs, parameters={"signature_name": head})
    assert [o["name"] for o in via_grpc.get_response(as_json=True)["outputs"]] == [head]


def test_unknown_signature_is_400_with_the_grpc_words(exported_repo, server, client):
    inputs = inputs_for(exported_repo, "posts")
    with pytest.raises(InferenceServerException) as error:
        client.infer("posts", http_inputs(triton_http, inputs, True), parameters={"signature_name": "height"})
    assert error.value.status() == "400"
    code, details = grpc_error(server.address,
                               grpc_request("posts", inputs, parameters={"signature_name": "height"}))
    assert "unknown signature 'height'" in error.value.message() and error.value.message() == details


def test_request_id_is_echoed(server, client):
    inputs = http_inputs(triton_http, {"x": MLP_X}, False)
    result = client.infer("mlp", inputs, request_id="req-42/ü")
    assert result.get_response()["id"] == "req-42/ü"
    assert "id" not in client.infer("mlp", inputs).get_response()  # none asked, none sent
    reply = call(server.http_address, "POST", "/v2/models/mlp/infer", v2_body({"x": MLP_X}, id="plain-7"))
    assert reply.status == 200 and reply.json()["id"] == "plain-7"
    assert reply.headers["content-type"] == "application/json"


def test_timeout_parameter_is_the_requests_deadline(exported_repo, server, client):
    """Triton's request parameter `timeout` (microseconds): 1 us has passed before the request can
    run (504); a generous one changes nothing."""
    reply = call(server.http_address, "POST", "/v2/models/mlp/infer", v2_body({"x": MLP_X}, parameters={"timeout": 1}))
    assert reply.status == 504 and "deadline" in reply.error, reply
    with pytest.raises(InferenceServerException) as error:
        client.infer("mlp", http_inputs(triton_http, {"x": MLP_X}, True), timeout=1)
    assert error.value.status() == "504"
    result = client.infer("mlp", http_inputs(triton_http, {"x": MLP_X}, True), timeout=30_000_000)
    assert_close(outputs_of(result), run_onnx(exported_repo, "mlp", {"x": MLP_X}))


def test_timeout_parameter_is_the_deadline_over_grpc_too(exported_repo, grpc_client):
    """The same parameter in a gRPC ModelInferRequest (tritonclient.grpc's `timeout=`): one core rule."""
    tensor = triton_grpc.InferInput("x", list(MLP_X.shape), "FP32")
    tensor.set_data_from_numpy(MLP_X)
    with pytest.raises(InferenceServerException) as error:
        grpc_client.infer("mlp", [tensor], timeout=1)
    assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in error.value.message()
    result = grpc_client.infer("mlp", [tensor], timeout=30_000_000)
    np.testing.assert_allclose(result.as_numpy("probs"), run_onnx(exported_repo, "mlp", {"x": MLP_X})["probs"],
                               atol=1e-5)


def test_the_bearer_scheme_is_case_insensitive(exported_repo):
    """RFC 9110 11.1: `bearer <token>` is `Bearer <token>`; the token itself is compared exactly."""
    guarded = start_server(exported_repo, token="Sesame")
    try:
        for given, status in (("bearer Sesame", 200), ("BEARER Sesame", 200), ("Bearer sesame", 401)):
            reply = call(guarded.http_address, "GET", "/v2/models/mlp", headers={"Authorization": given})
            assert reply.status == status, (given, reply)
    finally:
        guarded.stop()


def test_version_in_the_path(exported_repo, client):
    result = client.infer("mlp", http_inputs(triton_http, {"x": MLP_X}, True), model_version="1")
    assert_close(outputs_of(result), run_onnx(exported_repo, "mlp", {"x": MLP_X}))
    with pytest.raises(InferenceServerException) as error:
        client.infer("mlp", http_inputs(triton_http, {"x": MLP_X}, True), model_version="7")
    assert error.value.status() == "404" and "no version '7'" in error.value.message()


# -- health, metadata, config, statistics, repository ------------------------------------------------


def test_health_and_readiness(client):
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    for model in MODELS:
        assert client.is_model_ready(model) is True, model
        assert client.is_model_ready(model, "1") is True, model
    assert client.is_model_ready("nope") is False
    assert client.is_model_ready("mlp", "7") is False


def test_server_metadata(client, grpc_client):
    metadata = client.get_server_metadata()
    via_grpc = grpc_client.get_server_metadata(as_json=True)
    assert metadata["name"] == via_grpc["name"] == "mimo"
    assert metadata["version"] == via_grpc["version"]
    assert metadata["extensions"] == via_grpc["extensions"]
    assert {"binary_tensor_data", "model_repository", "statistics", "model_configuration"} <= set(
        metadata["extensions"])


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_equals_grpc(client, grpc_client, model):
    metadata = client.get_model_metadata(model)
    via_grpc = grpc_client.get_model_metadata(model, as_json=True)
    assert metadata["name"] == via_grpc["name"] == model
    assert metadata["versions"] == via_grpc["versions"] == ["1"]
    assert metadata["platform"] == via_grpc["platform"]
    for field in ("inputs", "outputs"):
        # gRPC's JSON writes int64 dims as strings; REST writes numbers
        grpc_tensors = [dict(t, shape=[int(d) for d in t["shape"]]) for t in via_grpc[field]]
        assert metadata[field] == grpc_tensors
    assert client.get_model_metadata(model, "1") == metadata
    assert metadata["inputs"][0]["shape"][0] == -1


def test_model_metadata_of_unknown_model_is_404(client):
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("nope")
    assert error.value.status() == "404" and "unknown model 'nope'" in error.value.message()


@pytest.mark.parametrize("model, max_batch, inputs, outputs", [
    ("mlp", 32, {"x": [64]}, {"probs": [10]}),
    ("qa", 32, {"text": [-1], "question": [-1]}, {"answer": [500]}),
    ("posts", 32, {"posts": [-1]}, {"age": [1], "income": [10], "gender": [1]}),
    ("dual_camera", 8, {"left": [71, 71, 3], "right": [71, 71, 3]}, {"features": [3, 3, 4096]}),
])
def test_model_config(client, grpc_client, model, max_batch, inputs, outputs):
    config = client.get_model_config(model)
    via_grpc = grpc_client.get_model_config(model, as_json=True)["config"]
    assert config["name"] == model and config["max_batch_size"] == max_batch == via_grpc["max_batch_size"]
    assert {t["name"]: t["dims"] for t in config["input"]} == inputs
    assert {t["name"]: t["dims"] for t in config["output"]} == outputs
    assert [t["name"] for t in config["input"]] == [t["name"] for t in via_grpc["input"]]
    assert [[int(d) for d in t["dims"]] for t in via_grpc["output"]] == list(outputs.values())
    assert config["platform"] == via_grpc["platform"] == "onnxruntime_onnx"


def _success(stats: dict, model: str) -> tuple[int, int]:
    (entry,) = [s for s in stats["model_stats"] if s["name"] == model]
    return entry["inference_stats"]["success"]["count"], entry["inference_count"]


def test_inference_statistics_grow_after_an_infer(client, grpc_client):
    before = client.get_inference_statistics("mlp")
    assert [s["name"] for s in before["model_stats"]] == ["mlp"]
    count, inferences = _success(before, "mlp")
    client.infer("mlp", http_inputs(triton_http, {"x": MLP_X}, True))
    after = client.get_inference_statistics("mlp")
    assert _success(after, "mlp") == (count + 1, inferences + MLP_X.shape[0])
    assert after["model_stats"][0]["last_inference"] > 0
    assert after["model_stats"][0]["inference_stats"]["success"]["ns"] > 0
    via_grpc = grpc_client.get_inference_statistics("mlp", as_json=True)
    assert int(via_grpc["model_stats"][0]["inference_stats"]["success"]["count"]) == count + 1
    every = client.get_inference_statistics()
    assert {s["name"] for s in every["model_stats"]} == set(MODELS)
    assert client.get_inference_statistics("mlp", "1")["model_stats"][0]["version"] == "1"
    with pytest.raises(InferenceServerException) as error:
        client.get_inference_statistics("nope")
    assert error.value.status() == "404"


def test_statistics_have_every_field_perf_analyzer_reads(client):
    """perf_analyzer -i http reads, for each model_stats entry, name, version, inference_count,
    execution_count and inference_stats' success, queue, compute_input, compute_infer,
    compute_output, cache_hit and cache_miss (count and ns each) straight from the JSON, with no
    check that a member is there (client_backend/triton/triton_client_backend.cc, ParseStatistics);
    Triton's statistics extension lists them all, and the batch_stats' three durations."""
    client.infer("mlp", http_inputs(triton_http, {"x": MLP_X}, True))
    (entry,) = client.get_inference_statistics("mlp")["model_stats"]
    for key in ("name", "version", "last_inference", "inference_count", "execution_count"):
        assert key in entry, key
    durations = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
                 "cache_miss")
    missing = [f"inference_stats.{name}" for name in durations
               if set(entry["inference_stats"].get(name, {})) != {"count", "ns"}]
    assert entry["batch_stats"], entry
    missing += sorted({f"batch_stats[].{name}" for batch in entry["batch_stats"]
                       for name in ("compute_input", "compute_infer", "compute_output")
                       if set(batch.get(name, {})) != {"count", "ns"}})
    assert not missing, f"the statistics lack {missing}"


def test_request_and_response_compression_as_tritonclient_sends_it(exported_repo, client, grpc_client):
    want = grpc_answer(grpc_client, exported_repo, "qa")
    inputs = inputs_for(exported_repo, "qa")
    for algorithm in ("gzip", "deflate"):
        for binary in (False, True):
            result = client.infer("qa", http_inputs(triton_http, inputs, binary),
                                  outputs=[triton_http.InferRequestedOutput("answer", binary_data=binary)],
                                  request_compression_algorithm=algorithm,
                                  response_compression_algorithm=algorithm)
            assert_close(outputs_of(result), want)


def test_binary_data_output_parameter_makes_every_output_binary(exported_repo, server, grpc_client):
    want = grpc_answer(grpc_client, exported_repo, "posts")
    body = v2_body(inputs_for(exported_repo, "posts"), parameters={"binary_data_output": True})
    reply = call(server.http_address, "POST", "/v2/models/posts/infer", body)
    assert reply.status == 200 and reply.headers["content-type"] == "application/octet-stream"
    length = int(reply.headers["inference-header-content-length"])
    header = json.loads(reply.body[:length])
    offset, got = length, {}
    for tensor in header["outputs"]:
        size = tensor["parameters"]["binary_data_size"]
        got[tensor["name"]] = np.frombuffer(reply.body[offset : offset + size], np.float32).reshape(tensor["shape"])
        offset += size
    assert offset == len(reply.body) and list(got) == list(POSTS_HEADS)
    assert_close(got, want)


def test_repository_index(client, grpc_client):
    index = client.get_model_repository_index()
    assert [(e["name"], e["version"], e["state"]) for e in index] == [(m, "1", "READY") for m in sorted(MODELS)]
    via_grpc = grpc_client.get_model_repository_index(as_json=True)["models"]
    assert [(e["name"], e["version"], e["state"]) for e in via_grpc] == [(e["name"], e["version"], e["state"])
                                                                        for e in index]


def test_load_and_unload_are_403_on_the_default_server(client, exported_repo):
    for action in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException) as error:
            action("mlp")
        assert error.value.status() == "403" and "--model-control-mode explicit" in error.value.message()
    assert client.is_model_ready("mlp")


# -- model control, the token and TLS, each on a small server of its own ---------------------------------


@pytest.fixture(scope="module")
def small_repo(exported_repo, tmp_path_factory):
    return linked_repository(exported_repo, tmp_path_factory.mktemp("rest-mini") / "repo", models=("mlp", "qa"))


@pytest.fixture(scope="module")
def control_server(small_repo):
    thread = start_server(small_repo, model_control_mode="explicit", admin_token=ADMIN)
    yield thread
    thread.stop()


def test_explicit_model_control_over_http_takes_the_admin_token(control_server, small_repo, new_client):
    c = new_client(control_server.http_address)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert c.is_model_ready("qa")
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}):
        for action in (c.unload_model, c.load_model):
            with pytest.raises(InferenceServerException) as error:
                action("qa", headers=headers)
            assert error.value.status() == "401" and "admin token" in error.value.message(), headers
    assert c.is_model_ready("qa")
    c.unload_model("qa", headers=admin)
    assert not c.is_model_ready("qa")
    index = {e["name"]: e["state"] for e in c.get_model_repository_index()}
    assert index["qa"] != "READY" and index["mlp"] == "READY"
    qa = {"text": np.ones((1, 12), np.int32), "question": np.full((1, 12), 2, np.int32)}
    with pytest.raises(InferenceServerException) as error:
        c.infer("qa", http_inputs(triton_http, qa, True))
    assert error.value.status() == "503" and error.value.message() == "model 'qa' has no ready version"
    assert call(control_server.http_address, "GET", "/v2/models/qa/ready").status == 503
    assert_mlp_serves(control_server.http_address, small_repo)  # the other model is untouched
    c.load_model("qa", headers=admin)
    assert c.is_model_ready("qa")
    result = c.infer("qa", http_inputs(triton_http, qa, True))
    assert_close(outputs_of(result), run_onnx(small_repo, "qa", qa))
    # A load naming what the repository does not hold: 404; load parameters: refused.
    with pytest.raises(InferenceServerException) as error:
        c.load_model("nope", headers=admin)
    assert error.value.status() == "404"
    reply = call(control_server.http_address, "POST", "/v2/repository/models/mlp/load",
                 {"parameters": {"config": "{}"}}, headers=admin)
    assert reply.status == 400 and "not supported" in reply.error
    reply = call(control_server.http_address, "POST", "/v2/repository/models/mlp/load", b"[1]", headers=admin)
    assert reply.status == 400 and "JSON object" in reply.error


@pytest.fixture(scope="module")
def token_server(small_repo):
    thread = start_server(small_repo, token=TOKEN)
    yield thread
    thread.stop()


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v2/models/mlp/infer", v2_body({"x": MLP_X})),
    ("GET", "/v2/models/mlp", None),
    ("GET", "/v2/models/mlp/ready", None),
    ("GET", "/v2/models/mlp/config", None),
    ("GET", "/v2/models/stats", None),
    ("GET", "/v2", None),
    ("POST", "/v2/repository/index", {}),
    ("GET", "/v1/models/mlp", None),
    ("POST", "/v1/models/mlp:predict", {"instances": MLP_X.tolist()}),
])
def test_token_is_needed_on_every_non_health_endpoint(token_server, method, path, body):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        reply = call(token_server.http_address, method, path, body, headers=headers)
        assert reply.status == 401, (headers, reply)
        assert "bearer token" in reply.error and reply.headers.get("www-authenticate") == "Bearer"
    reply = call(token_server.http_address, method, path, body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200, reply


def test_token_server_health_is_open_and_tritonclient_sends_the_token(token_server, small_repo, new_client):
    for path in ("/v2/health/ready", "/v2/health/live"):
        assert call(token_server.http_address, "GET", path).status == 200
    anonymous = new_client(token_server.http_address)
    assert anonymous.is_server_ready() and anonymous.is_server_live()
    with pytest.raises(InferenceServerException) as error:
        anonymous.infer("mlp", http_inputs(triton_http, {"x": MLP_X}, True))
    assert error.value.status() == "401"
    assert anonymous.is_model_ready("mlp") is False  # tritonclient reads 401 as not ready
    headers = {"Authorization": f"Bearer {TOKEN}"}
    good = new_client(token_server.http_address)
    # (a copy: tritonclient.http adds Inference-Header-Content-Length to the dict it is given)
    result = good.infer("mlp", http_inputs(triton_http, {"x": MLP_X}, True), headers=dict(headers))
    assert_close(outputs_of(result), run_onnx(small_repo, "mlp", {"x": MLP_X}))
    assert good.is_model_ready("mlp", headers=dict(headers))
    assert_mlp_serves(token_server.http_address, small_repo, headers=headers)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("rest-pki"))


def test_tls_on_the_http_port(small_repo, pki, new_client):
    thread = start_server(small_repo, tls_cert=pki["server"], tls_key=pki["server_key"])
    try:
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        for host in ("127.0.0.1", "localhost"):
            url = f"https://{host}:{thread.http_port}/v2/health/ready"
            with urllib.request.urlopen(url, context=context, timeout=10) as response:
                assert response.status == 200
        assert_mlp_serves(thread.http_address, small_repo, context=context)
        reply = call(thread.http_address, "GET", "/v1/models/mlp", context=context)
        assert reply.status == 200 and reply.json()["model_version_status"][0]["state"] == "AVAILABLE"
        # tritonclient.http over TLS, trusting the CA
        secure = new_client(thread.http_address, ssl=True, ssl_options={"ca_certs": str(pki["ca"])})
        result = secure.infer("mlp", http_inputs(triton_http, {"x": MLP_X}, True))
        assert_close(outputs_of(result), run_onnx(small_repo, "mlp", {"x": MLP_X}))
        # Not trusting the CA: the handshake fails.
        with pytest.raises(urllib.error.URLError) as error:
            urllib.request.urlopen(f"https://127.0.0.1:{thread.http_port}/v2/health/ready",
                                   context=ssl.create_default_context(), timeout=10)
        assert isinstance(error.value.reason, ssl.SSLCertVerificationError)
        # Plain HTTP on the TLS port is refused: a TLS alert or a close, never an HTTP answer.
        with socket.create_connection(("127.0.0.1", thread.http_port), timeout=10) as sock:
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\n\r\n")
            try:
                answer = sock.recv(1000)
            except ConnectionResetError:
                answer = b""
        assert not answer.startswith(b"HTTP/"), answer
        assert answer == b"" or answer[:1] == b"\x15", answer  # 0x15: a TLS alert record
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            connection = http.client.HTTPConnection("127.0.0.1", thread.http_port, timeout=10)
            try:
                connection.request("GET", "/v2/health/ready")
                connection.getresponse()
            finally:
                connection.close()
        # ... and the TLS port goes on serving after it.
        assert_mlp_serves(thread.http_address, small_repo, context=context)
    finally:
        thread.stop()
