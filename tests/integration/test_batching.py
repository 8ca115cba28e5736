"""Dynamic batching: batched results equal unbatched ones, and the queue's rules hold.

Requests are sent concurrently while the server holds partial batches back (a long
max_queue_delay), so batches really form; ModelStatistics' batch_stats shows that they did.
Nothing here measures speed (that is `make bench`); the waits only order events.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import MODELS, sample_inputs, start_server
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc

DELAY_MS = 300  # a partial batch waits this long for company: concurrent requests always meet
BIG = 256 * 1024 * 1024


def stub_for(address: str) -> pb_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", BIG)])
    return pb_grpc.GRPCInferenceServiceStub(channel)


def request(model, inputs, outputs=None):
    return codec.encode_infer_request(model, inputs, outputs=outputs)


def send_together(stub, requests, timeout=60):
    """Send every request before waiting for any answer; results (or RpcErrors) in order."""
    futures = [stub.ModelInfer.future(r, timeout=timeout) for r in requests]
    out = []
    for future in futures:
        try:
            out.append(codec.decode_infer_response(future.result()))
        except grpc.RpcError as exc:
            out.append(exc)
    return out


def batch_sizes(stub, model) -> dict[int, int]:
    """{items per execution: executions} from ModelStatistics."""
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10).model_stats[0]
    return {int(b.batch_size): int(b.compute_infer.count) for b in stats.batch_stats}


def scheduler_of(server_thread, model):
    return server_thread.server.registry.get(model).scheduler


def wait_for(condition, timeout=30.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


_sessions = {}


def unbatched(repo: Path, model: str, inputs: dict, outputs=None) -> dict:
    """The same request run alone, in-process, by ONNX Runtime."""
    import onnxruntime as ort

    key = (str(repo), model)
    if key not in _sessions:
        _sessions[key] = ort.InferenceSession(str(repo / model / "1" / "model.onnx"),
                                              providers=["CPUExecutionProvider"])
    session = _sessions[key]
    names = outputs or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def assert_close(got: dict, want: dict):
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def repository_with(tmp_path: Path, exported_repo: Path, models, edit=None) -> Path:
    """Symlinked version folders, model.json copied (and optionally edited)."""
    for name in models:
        (tmp_path / name).mkdir()
        document = json.loads((exported_repo / name / "model.json").read_text())
        if edit:
            edit(name, document)
        (tmp_path / name / "model.json").write_text(json.dumps(document))
        (tmp_path / name / "1").symlink_to(exported_repo / name / "1")
    return tmp_path


@pytest.fixture(scope="module")
def batching_server(exported_repo):
    thread = start_server(exported_repo, max_queue_delay_ms=DELAY_MS)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def batching_stub(batching_server):
    return stub_for(batching_server.address)


# -- batched == unbatched, for every model --------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_batched_results_equal_unbatched(exported_repo, batching_stub, model):
    count = 40 if model == "mlp" else 6  # mlp: more than max_batch_size (32) at once
    inputs = [sample_inputs(exported_repo, model, 2 if i == 1 else 1, seed=100 + i) for i in range(count)]
    results = send_together(batching_stub, [request(model, x) for x in inputs])
    for x, got in zip(inputs, results):
        assert not isinstance(got, Exception), got
        assert_close(got, unbatched(exported_repo, model, x))
    sizes = batch_sizes(batching_stub, model)
    assert max(sizes) > 1, f"no batch formed: {sizes}"
    assert max(sizes) <= 32, f"a batch went over max_batch_size: {sizes}"


def test_different_lengths_never_share_a_batch_without_padding(exported_repo, batching_server, batching_stub):
    backend = scheduler_of(batching_server, "qa").backend
    seen = []
    original = backend.predict

    def recording(inputs, outputs, signature="serving_default"):
        seen.append({name: array.shape for name, array in inputs.items()})
        return original(inputs, outputs, signature)

    backend.predict = recording
    try:
        inputs = [sample_inputs(exported_repo, "qa", 1, seed=i, length=length)
                  for i, length in enumerate([10, 20, 10, 20, 30])]
        results = send_together(batching_stub, [request("qa", x) for x in inputs])
    finally:
        backend.predict = original
    for x, got in zip(inputs, results):
        assert_close(got, unbatched(exported_repo, "qa", x))
    assert sorted(shape["text"] for shape in seen) == [(1, 30), (2, 10), (2, 20)]


def test_each_request_gets_its_own_outputs_from_a_shared_batch(exported_repo, batching_server, batching_stub):
    before = batch_sizes(batching_stub, "posts")
    wanted = [["age"], ["income", "gender"], None, ["gender"]]
    inputs = [sample_inputs(exported_repo, "posts", 1, seed=50 + i) for i in range(len(wanted))]
    results = send_together(batching_stub, [request("posts", x, outputs=o) for x, o in zip(inputs, wanted)])
    for x, outputs, got in zip(inputs, wanted, results):
        assert list(got) == (outputs or ["age", "income", "gender"])
        assert_close(got, unbatched(exported_repo, "posts", x, outputs))
    after = batch_sizes(batching_stub, "posts")
    assert after.get(4, 0) == before.get(4, 0) + 1, f"the four requests did not share a batch: {after}"


# -- one bad request does not harm the others -----------------------------------------------------


def test_one_failing_request_in_a_batch_does_not_harm_the_others(exported_repo, tmp_path):
    # Without the id_range constraint an out-of-vocabulary token reaches ONNX Runtime, which fails
    # the whole batch; the scheduler then runs each request alone.
    def no_id_range(name, document):
        document["constraints"] = {}

    repo = repository_with(tmp_path, exported_repo, ["qa"], edit=no_id_range)
    with start_server(repo, max_queue_delay_ms=DELAY_MS) as srv:
        stub = stub_for(srv.address)
        backend = scheduler_of(srv, "qa").backend
        calls = []
        original = backend.predict

        def recording(inputs, outputs, signature="serving_default"):
            calls.append(len(inputs["text"]))
            return original(inputs, outputs, signature)

        backend.predict = recording
        inputs = [sample_inputs(exported_repo, "qa", 1, seed=i) for i in range(4)]
        inputs[1]["text"][0, 3] = 1_000_000
        results = send_together(stub, [request("qa", x) for x in inputs])
        assert isinstance(results[1], grpc.RpcError)
        assert results[1].code() == grpc.StatusCode.INTERNAL
        for i in (0, 2, 3):
            assert_close(results[i], unbatched(exported_repo, "qa", inputs[i]))
        assert calls[0] == 4, f"the four requests did not share a batch: {calls}"


def test_invalid_request_among_concurrent_ones_fails_alone(exported_repo, batching_stub):
    inputs = [sample_inputs(exported_repo, "mlp", 1, seed=i) for i in range(4)]
    bad = {"x": np.zeros((1, 63), np.float32)}
    results = send_together(batching_stub, [request("mlp", x) for x in inputs[:2]] + [request("mlp", bad)]
                            + [request("mlp", x) for x in inputs[2:]])
    assert isinstance(results[2], grpc.RpcError) and results[2].code() == grpc.StatusCode.INVALID_ARGUMENT
    for x, got in zip(inputs, results[:2] + results[3:]):
        assert_close(got, unbatched(exported_repo, "mlp", x))


# -- the queue: bounded, deadline-aware --------------------------------------------------------------


def test_full_queue_is_resource_exhausted(exported_repo, tmp_path):
    repo = repository_with(tmp_path, exported_repo, ["mlp"])
    with start_server(repo, max_queue_size=2, max_queue_delay_ms=2000) as srv:
        stub = stub_for(srv.address)
        scheduler = scheduler_of(srv, "mlp")
        inputs = [sample_inputs(exported_repo, "mlp", 1, seed=i) for i in range(2)]
        held = [stub.ModelInfer.future(request("mlp", x), timeout=60) for x in inputs]
        wait_for(lambda: scheduler.size == 2)  # both wait for company in the queue
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request("mlp", inputs[0]), timeout=30)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in error.value.details()
        for x, future in zip(inputs, held):  # the queued ones still run
            assert_close(codec.decode_infer_response(future.result()), unbatched(exported_repo, "mlp", x))


def test_request_whose_deadline_passes_in_the_queue_never_runs(exported_repo, tmp_path):
    repo = repository_with(tmp_path, exported_repo, ["mlp"])
    with start_server(repo, max_queue_delay_ms=1500) as srv:
        stub = stub_for(srv.address)
        scheduler = scheduler_of(srv, "mlp")
        x = sample_inputs(exported_repo, "mlp", 1)
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request("mlp", x), timeout=0.3)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: scheduler.size == 0 and scheduler.running == 0)  # the held batch's time is up
        assert batch_sizes(stub, "mlp") == {}, "the expired request ran"
        got = codec.decode_infer_response(stub.ModelInfer(request("mlp", x), timeout=30))
        assert_close(got, unbatched(exported_repo, "mlp", x))
        assert batch_sizes(stub, "mlp") == {1: 1}


# -- padding where the model declares it exact ------------------------------------------------------


def _sum_model(path: Path) -> None:
    """A tiny ONNX model for which right-padding with 0 is exact: total = sum(tokens, axis 1)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["tokens"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["as_float", "axes"], ["total"], keepdims=1),
        ],
        "summer",
        [helper.make_tensor_value_info("tokens", TensorProto.INT32, ["batch", "length"])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _sum_repository(root: Path, padding: bool) -> Path:
    name = "summer"
    (root / name / "1").mkdir(parents=True)
    _sum_model(root / name / "1" / "model.onnx")
    document = {
        "name": name,
        "inputs": [{"name": "tokens", "datatype": "INT32", "shape": [-1, -1]}],
        "outputs": [{"name": "total", "datatype": "FP32", "shape": [-1, 1]}],
        "constraints": {"tokens": {"id_range": [0, 1000]}},
        "signatures": {"serving_default": {"inputs": ["tokens"], "outputs": ["total"]}},
        "max_batch_size": 32,
        "batching": {"max_queue_delay_ms": DELAY_MS, **({"padding": {"tokens": 0}} if padding else {})},
        "versions": {"1": {"formats": ["onnx"], "parity": {}}},
    }
    (root / name / "model.json").write_text(json.dumps(document))
    return root


@pytest.mark.parametrize("padding", [True, False], ids=["padding", "no-padding"])
def test_padding_batches_different_lengths_exactly(tmp_path, padding):
    repo = _sum_repository(tmp_path, padding)
    rng = np.random.default_rng(0)
    lengths = [3, 8, 5, 8]
    inputs = [{"tokens": rng.integers(1, 1000, size=(1, n)).astype(np.int32)} for n in lengths]
    with start_server(repo) as srv:
        stub = stub_for(srv.address)
        backend = scheduler_of(srv, "summer").backend
        shapes = []
        original = backend.predict

        def recording(feeds, outputs, signature="serving_default"):
            shapes.append(feeds["tokens"].shape)
            return original(feeds, outputs, signature)

        backend.predict = recording
        results = send_together(stub, [request("summer", x) for x in inputs])
    for x, got in zip(inputs, results):
        np.testing.assert_array_equal(got["total"], x["tokens"].sum(axis=1, keepdims=True).astype(np.float32))
    if padding:
        assert shapes == [(4, 8)]  # one batch, right-padded to the longest request
    else:
        assert sorted(shapes) == [(1, 3), (1, 5), (2, 8)]


def test_padding_is_ignored_when_an_output_has_a_sequence_axis():
    from mimo.protos.repository import ModelSpec
    from mimo.serving.core.registry import padding_of

    document = {
        "name": "m",
        "inputs": [{"name": "tokens", "datatype": "INT32", "shape": [-1, -1]}],
        "outputs": [{"name": "per_token", "datatype": "FP32", "shape": [-1, -1]}],
        "signatures": {"serving_default": {"inputs": ["tokens"], "outputs": ["per_token"]}},
        "max_batch_size": 8,
        "batching": {"padding": {"tokens": 0}},
        "versions": {"1": {"formats": ["onnx"], "parity": {}}},
    }
    assert padding_of(ModelSpec.from_json(document)) == {}
    document["outputs"][0]["shape"] = [-1, 4]
    document["signatures"]["serving_default"]["outputs"] = ["per_token"]
    assert padding_of(ModelSpec.from_json(document)) == {"tokens": 0}


# -- the scheduler on its own (a fake backend: exact control over timing and failures) -----------


class _FakeBackend:
    """Answers y = 2x; blocks while `gate` is clear; fails batches holding a negative value."""

    def __init__(self):
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def predict(self, inputs, outputs, signature="serving_default"):
        self.gate.wait(10)
        x = inputs["x"]
        self.calls.append(len(x))
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": 2 * x}


def _scheduler(backend, **options):
    from mimo.serving.core.scheduler import Scheduler, SchedulerOptions
    from mimo.serving.core.statistics import ModelStats

    return Scheduler(backend, ModelStats("fake", "1"), SchedulerOptions(**options), "fake")


def test_scheduler_drops_a_request_whose_deadline_passed_while_queued():
    async def scenario():
        backend = _FakeBackend()
        scheduler = _scheduler(backend, execution="thread", instances=1)
        backend.gate.clear()  # the first request occupies the only execution slot
        first = asyncio.ensure_future(scheduler.infer({"x": np.ones((1, 2))}, ["y"], "s"))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(
            scheduler.infer({"x": np.ones((1, 2))}, ["y"], "s", deadline=time.monotonic() + 0.05))
        await asyncio.sleep(0.2)  # its deadline passes while it waits for the slot
        backend.gate.set()
        np.testing.assert_array_equal((await first)["y"], 2 * np.ones((1, 2)))
        from mimo.serving.core.errors import DeadlineExceeded

        with pytest.raises(DeadlineExceeded):
            await late
        scheduler.close()
        return backend.calls

    assert asyncio.run(scenario()) == [1]


@pytest.mark.parametrize("execution", ["inline", "thread"])
def test_scheduler_isolates_a_failing_request(execution, scheduler_clock):
    async def scenario():
        backend = _FakeBackend()
        scheduler = _scheduler(backend, execution=execution, instances=1)
        if execution == "thread":
            backend.gate.clear()  # the first request holds the worker while the others queue up
        # The first request finds the model idle and runs at once; the three behind it batch.
        values = [5.0, 1.0, -1.0, 3.0]
        tasks = [asyncio.ensure_future(scheduler.infer({"x": np.full((1, 2), v)}, ["y"], "s")) for v in values]
        await asyncio.sleep(0.05)
        backend.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        scheduler.close()
        return backend.calls, results

    calls, results = asyncio.run(scenario())
    assert calls == [1, 3, 1, 1, 1]  # the batch of three fails, then each of them runs alone
    from mimo.serving.core.errors import BackendFailure

    assert isinstance(results[2], BackendFailure)
    for i, value in ((0, 5.0), (1, 1.0), (3, 3.0)):
        np.testing.assert_array_equal(results[i]["y"], np.full((1, 2), 2 * value))


def test_scheduler_respects_max_batch_size_and_order(scheduler_clock):
    async def scenario():
        backend = _FakeBackend()
        scheduler = _scheduler(backend, execution="inline", max_batch_size=4)
        tasks = [asyncio.ensure_future(scheduler.infer({"x": np.full((b, 1), float(i))}, ["y"], "s"))
                 for i, b in enumerate([1, 2, 2, 1, 3])]  # all arrive in one loop iteration
        results = await asyncio.gather(*tasks)
        scheduler.close()
        return backend.calls, results

    calls, results = asyncio.run(scenario())
    # The first finds the model idle and runs alone; then [2, 2] and [1, 3]: never more than 4
    # items, in arrival order.
    assert calls == [1, 4, 4]
    for i, got in enumerate(results):
        assert (got["y"] == 2.0 * i).all()


def test_scheduler_without_batching_runs_requests_one_by_one():
    async def scenario():
        backend = _FakeBackend()
        scheduler = _scheduler(backend, execution="inline", batching=False)
        await asyncio.gather(*[scheduler.infer({"x": np.ones((1, 1))}, ["y"], "s") for _ in range(5)])
        scheduler.close()
        return backend.calls

    assert asyncio.run(scenario()) == [1, 1, 1, 1, 1]


# -- several server processes on one port (mimo serve --workers N) ---------------------------------


def test_workers_share_the_port_and_stop_together(exported_repo, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from helpers import free_port

    (tmp_path / "repo").mkdir()
    repo = repository_with(tmp_path / "repo", exported_repo, ["mlp"])
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mimo.cli", "serve", "--model-repository", str(repo), "--port", str(port),
         "--metrics-port", "0", "--http-port", "0", "--workers", "2", "--grace-seconds", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        stub = stub_for(f"127.0.0.1:{port}")

        def ready():
            try:
                return stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=2).ready
            except grpc.RpcError:
                return False

        wait_for(ready, timeout=120)
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        assert len(workers) == 2
        x = sample_inputs(exported_repo, "mlp", 3)
        for _ in range(4):  # new channels: the kernel spreads connections over the workers
            got = codec.decode_infer_response(stub_for(f"127.0.0.1:{port}").ModelInfer(request("mlp", x), timeout=30))
            assert_close(got, unbatched(exported_repo, "mlp", x))
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        for pid in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
