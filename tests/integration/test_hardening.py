"""Hardening: requests built to hurt the server (amplifying, stalling, malformed, expired) get a
clear status at once, are counted under that status, and leave every other call unharmed.

The servers here serve only mlp and qa (a repository of links into the session's export), so they
start in seconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import REGISTRY

from helpers import start_server
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc
from mimo.protos import tf_framework_pb2 as tfpb
from mimo.protos import tf_serving_pb2 as tfs
from mimo.protos import tf_serving_pb2_grpc as tfs_grpc
from mimo.serving.core.validation import validate_request
from mimo.serving.transports import native as native_server

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
PREDICT = "/tensorflow.serving.PredictionService/Predict"
FRONTENDS = ["python"] + (["native"] if native_server.available() else [])
MLP_X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)


@pytest.fixture(scope="module")
def repo(exported_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening-repo")
    for model in ("mlp", "qa"):
        (root / model).symlink_to(exported_repo / model, target_is_directory=True)
    return root


@pytest.fixture(scope="module", params=FRONTENDS)
def served(request, repo):
    thread = start_server(repo, frontend=request.param)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def auto(repo):
    """The default frontend with --execution auto (the default)."""
    thread = start_server(repo, execution="auto")
    yield thread
    thread.stop()


def _raw(channel: grpc.Channel, method: str):
    return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def _status(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    try:
        call(*args, **kwargs)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def _mlp_request() -> pb.ModelInferRequest:
    return codec.encode_infer_request("mlp", {"x": MLP_X})


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- 1. a TF Serving broadcast is bounded before anything is allocated or checked -----------------


def test_tf_broadcast_past_the_message_limit_is_refused_at_once(auto):
    request = tfs.PredictRequest()
    request.model_spec.name = "qa"
    text = request.inputs["text"]
    text.dtype = tfpb.DT_INT32
    text.tensor_shape.dim.add(size=1)
    text.tensor_shape.dim.add(size=2**35)
    text.int_val.append(0)
    assert len(request.SerializeToString()) == 36  # ... that once meant 2**35 checks on the loop
    channel = grpc.insecure_channel(auto.address)
    predict = tfs_grpc.PredictionServiceStub(channel).Predict
    infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
    infer(_mlp_request())
    with ThreadPoolExecutor(1) as pool:
        bad = pool.submit(_status, predict, request, timeout=60)
        started = time.perf_counter()
        infer(_mlp_request(), timeout=30)  # in parallel: another model's call is not held up
        other = time.perf_counter() - started
        code, details = bad.result()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "input 'text'" in details and "34359738368 elements" in details and "message limit" in details
    assert other < 0.5


# -- 2. a large request to an idle fast model runs off the loop ---------------------------------


def _typed_qa_requests(tokens: int) -> dict[str, bytes]:
    """qa requests whose ids travel as typed values (KServe int_contents, TF Serving int_val)."""
    kserve = pb.ModelInferRequest(model_name="qa")
    for name in ("text", "question"):
        kserve.inputs.add(name=name, datatype="INT32", shape=[1, tokens]).contents.int_contents.extend([1] * tokens)
    predict = tfs.PredictRequest()
    predict.model_spec.name = "qa"
    for name in ("text", "question"):
        tensor = predict.inputs[name]
        tensor.dtype = tfpb.DT_INT32
        tensor.tensor_shape.dim.add(size=1)
        tensor.tensor_shape.dim.add(size=tokens)
        tensor.int_val.extend([1] * tokens)
    return {MODEL_INFER: kserve.SerializeToString(), PREDICT: predict.SerializeToString()}


@pytest.mark.parametrize("method", [MODEL_INFER, PREDICT])
def test_large_typed_values_are_refused_before_parsing(served, method, caplog):
    """Typed values parse at tens of MB/s holding the GIL (no thread helps): past 4 MiB they are
    refused from the wire headers alone, in less time than the parse alone would take here."""
    payload = _typed_qa_requests(3_000_000)[method]  # 2 x 3M one-byte ids: ~5.7 MiB typed
    started = time.perf_counter()
    (pb.ModelInferRequest if method == MODEL_INFER else tfs.PredictRequest).FromString(payload)
    parse_seconds = time.perf_counter() - started
    with grpc.insecure_channel(served.address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        started = time.perf_counter()
        code, details = _status(_raw(channel, method), payload, timeout=30)
        refused_in = time.perf_counter() - started
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "MiB of typed tensor values" in details and "raw" in details, details
        # The same ids as raw bytes are fine (raw contents cost the parser next to nothing).
        raw = codec.encode_infer_request("qa", {n: np.ones((1, 300), np.int32) for n in ("text", "question")})
        assert _status(_raw(channel, MODEL_INFER), raw.SerializeToString(), timeout=30)[0] == grpc.StatusCode.OK
    assert refused_in < parse_seconds + 0.5, (refused_in, parse_seconds)  # no parse on top of the transfer
    assert _errors(caplog) == []


def test_large_request_to_an_idle_fast_model_does_not_stall_other_models(auto):
    channel = grpc.insecure_channel(auto.address)
    infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
    tokens = lambda n: np.ones((1, n), np.int32)
    small = codec.encode_infer_request("qa", {"text": tokens(12), "question": tokens(12)})
    large = codec.encode_infer_request("qa", {"text": tokens(200_000), "question": tokens(200_000)})
    for _ in range(20):  # qa computes fast when small: an idle request is a candidate to run inline
        infer(small)
        infer(_mlp_request())
        time.sleep(0.003)
    time.sleep(0.01)  # qa idle
    done, took = threading.Event(), []

    def send_large():
        started = time.perf_counter()
        infer(large, timeout=120)
        took.append(time.perf_counter() - started)
        done.set()

    sender = threading.Thread(target=send_large)
    sender.start()
    latencies = []
    while not done.wait(0.005):
        started = time.perf_counter()
        infer(_mlp_request(), timeout=120)
        latencies.append(time.perf_counter() - started)
    sender.join()
    # Relative to the large request's own time: inline, mlp waited for all of it (0.95 s of 0.97 s).
    assert latencies, "no mlp call while qa computed"
    assert max(latencies) < took[0] / 4, (max(latencies), took[0])


def _large_invalid_qa(method: str, mib: int) -> bytes:
    """Two raw int32 inputs of mib/2 MiB each, the last id outside the vocabulary: all decode and
    validation work, no compute."""
    n = mib * (1 << 20) // 8
    text, question = np.ones((1, n), np.int32), np.ones((1, n), np.int32)
    text[0, -1] = 10**8
    if method == MODEL_INFER:
        return codec.encode_infer_request("qa", {"text": text, "question": question}).SerializeToString()
    return codec.encode_predict_request("qa", {"text": text, "question": question}).SerializeToString()


def _buffer_under(array: np.ndarray):
    """The object whose memory an array views (through numpy views and memoryview slices)."""
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


@pytest.mark.parametrize("method", [MODEL_INFER, PREDICT])
def test_a_large_raw_request_is_decoded_and_validated_off_the_event_loop(served, method, monkeypatch):
    """A large raw request reaches validation as numpy views into the request's own bytes (no copy
    by the protobuf parser, none by the codec), and is validated in a thread, not on the event loop.
    Validation itself is the real one; the spy only notes where it ran and what it was given."""
    from mimo.serving.core import core

    payload = _large_invalid_qa(method, 48)
    seen = []

    def spy(spec, inputs, *rest):
        seen.append((threading.get_ident(), {name: _buffer_under(a) for name, a in inputs.items()}))
        return validate_request(spec, inputs, *rest)

    async def ident():
        return threading.get_ident()

    loop_thread = asyncio.run_coroutine_threadsafe(ident(), served.loop).result(10)
    monkeypatch.setattr(core, "validate_request", spy)
    channel = grpc.insecure_channel(served.address, options=[("grpc.max_send_message_length", 1 << 30)])
    with pytest.raises(grpc.RpcError) as answer:
        channel.unary_unary(method, request_serializer=None, response_deserializer=None)(payload, timeout=120)
    assert answer.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside the vocabulary" in answer.value.details()
    [(thread, buffers)] = seen
    assert thread != loop_thread
    # Each input views the whole received message (the parser's copy would hold just that input).
    assert set(buffers) == {"text", "question"}
    for name, buffer in buffers.items():
        assert len(memoryview(buffer).cast("B")) >= len(payload), (name, type(buffer), len(memoryview(buffer)))
    # Before: the loop parsed (a copy of each input), decoded and validated all 48 MiB itself, 1.2-1.6x
    # the payload's parse+decode+validate CPU measured alone; now its part is the transport's one copy
    # of the message into Python bytes (0.3-0.6x on this machine's kind).


# -- 3. deadlines and cancellations are counted as such, never as INTERNAL ------------------------


def _requests_total(status: str) -> float:
    return REGISTRY.get_sample_value("mimo_requests_total", {"model": "mlp", "version": "1", "status": status}) or 0


def test_expired_and_cancelled_requests_are_counted_as_such(served):
    channel = grpc.insecure_channel(served.address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    stub.ModelInfer(_mlp_request())
    statuses = ("OK", "INTERNAL", "DEADLINE_EXCEEDED", "CANCELLED")
    before = {s: _requests_total(s) for s in statuses}
    fail_before = _fail_count(stub)
    codes = []
    with ThreadPoolExecutor(8) as pool:
        for code, _ in pool.map(lambda _: _status(stub.ModelInfer, _mlp_request(), timeout=0.001), range(300)):
            codes.append(code)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, set(codes)
    deadline = time.monotonic() + 10
    while True:  # the server may still be finishing calls its clients gave up on
        delta = {s: _requests_total(s) - before[s] for s in statuses}
        if sum(delta.values()) >= 300 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert delta["INTERNAL"] == 0, delta
    failed = delta["DEADLINE_EXCEEDED"] + delta["CANCELLED"]
    assert failed > 0, delta
    assert _fail_count(stub) - fail_before == failed  # ModelStatistics agrees with the metrics
    assert stub.ModelInfer(_mlp_request()).model_name == "mlp"


def _fail_count(stub) -> int:
    response = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp"))
    return sum(s.inference_stats.fail.count for s in response.model_stats)


# -- 9. versions are ASCII digits; shapes that overflow are the client's error ---------------------


@pytest.mark.parametrize("version", ["²", "١", "1 ", "-1"])
def test_version_that_is_not_ascii_digits_is_not_found(served, version, caplog):
    request = _mlp_request()
    request.model_version = version
    code, details = _status(pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(served.address)).ModelInfer,
                            request, timeout=10)
    assert code == grpc.StatusCode.NOT_FOUND, (code, details)
    assert f"no version '{version}'" in details
    assert not _errors(caplog)


def test_shape_whose_element_count_overflows_is_invalid_argument(served, caplog):
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[2**62, 2**62, 0])
    request.raw_input_contents.append(b"")
    code, details = _status(pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(served.address)).ModelInfer,
                            request, timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "input 'x'" in details and "overflows" in details
    assert not _errors(caplog)


# -- 10. unparsable and missing request messages: INVALID_ARGUMENT, no traceback, on both frontends


@pytest.mark.parametrize("method", [MODEL_INFER, PREDICT])
def test_unparsable_request_is_invalid_argument_without_a_traceback(served, method, caplog):
    code, details = _status(_raw(grpc.insecure_channel(served.address), method), b"\xff\xff\xff", timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "could not parse the request message" in details
    assert not _errors(caplog)


@pytest.mark.parametrize("method", [MODEL_INFER, PREDICT])
def test_unary_call_without_a_request_message_is_answered_at_once(served, method, caplog):
    call = grpc.insecure_channel(served.address).stream_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    started = time.perf_counter()
    code, details = _status(call, iter([]), timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "no request message" in details
    assert time.perf_counter() - started < 2  # not at the deadline
    assert not _errors(caplog)


def test_unparsable_message_in_a_stream_is_invalid_argument_without_a_traceback(served, caplog):
    stream = grpc.insecure_channel(served.address).stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    code, details = _status(lambda: list(stream(iter([b"\xff\xff\xff\xff"]), timeout=10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "could not parse a request message" in details
    assert not _errors(caplog)


# -- health names services, reflection speaks v1 too ----------------------------------------------


def test_health_check_naming_a_service_answers_with_its_state(served):
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(served.address))
    for service in ("inference.GRPCInferenceService", "tensorflow.serving.PredictionService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_v1_lists_and_describes_services(served):
    info = grpc.insecure_channel(served.address).stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    answer = next(info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    services = {s.name for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= services
    for symbol in ("grpc.reflection.v1.ServerReflection", "inference.GRPCInferenceService"):
        answer = next(info(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)]), timeout=10))
        assert answer.file_descriptor_response.file_descriptor_proto, symbol


# -- fuzz: mutated messages all end with a status in time, and the server still answers right ------

ANSWERED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED}


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(4)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:  # flip a byte
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:  # truncate
            data = data[:at]
        elif kind == 2:  # insert random bytes
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:  # repeat a slice (repeated fields, duplicate tags)
            end = min(len(data), at + rng.randint(1, 16))
            data[at:at] = data[at:end]
    return bytes(data)


def test_fuzzed_requests_all_end_in_a_status_and_the_server_still_answers(served, caplog):
    channel = grpc.insecure_channel(served.address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    expected = codec.decode_infer_response(stub.ModelInfer(_mlp_request()))
    qa = codec.encode_infer_request("qa", {"text": np.full((1, 12), 3, np.int32),
                                          "question": np.full((1, 12), 4, np.int32)}, raw=False)
    seeds = [
        (MODEL_INFER, _mlp_request().SerializeToString()),
        (MODEL_INFER, qa.SerializeToString()),
        (PREDICT, codec.encode_predict_request("mlp", {"x": MLP_X}).SerializeToString()),
        (PREDICT, codec.encode_predict_request("qa", {"text": np.full((1, 12), 3, np.int32),
                                                      "question": np.full((1, 12), 4, np.int32)},
                                               raw=False).SerializeToString()),
    ]
    rng = random.Random(1234)
    calls = {method: _raw(channel, method) for method in (MODEL_INFER, PREDICT)}
    outcomes = []
    started = time.perf_counter()
    for i in range(300):
        method, payload = seeds[i % len(seeds)]
        sent = time.perf_counter()
        code, details = _status(calls[method], _mutate(payload, rng), timeout=5)
        outcomes.append((code, time.perf_counter() - sent, details))
    unexpected = [(c, d) for c, _, d in outcomes if c not in ANSWERED]
    assert not unexpected, unexpected[:5]
    assert max(t for _, t, _ in outcomes) < 5
    assert time.perf_counter() - started < 30
    assert not _errors(caplog)
    got = codec.decode_infer_response(stub.ModelInfer(_mlp_request(), timeout=10))
    np.testing.assert_array_equal(got["probs"], expected["probs"])
