"""`mimo serve` as a subprocess: readiness, perf_analyzer against it, metrics, SIGTERM, bad starts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import free_port, run_onnx, sample_inputs
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = Path(os.environ.get("MIMO_PERF_ANALYZER", ROOT / ".venv-pa" / "bin" / "perf_analyzer"))


def wait_ready(address: str, process: subprocess.Popen, timeout: float = 180) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited with {process.returncode}: {process.stdout.read()}"
        try:
            if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError("server not ready in time")


@pytest.fixture(scope="module")
def served(exported_repo):
    port, metrics, http = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mimo", "serve", "--model-repository", str(exported_repo), "--port", str(port),
         "--metrics-port", str(metrics), "--http-port", str(http)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        wait_ready(address, process)
        yield address, metrics, process, f"127.0.0.1:{http}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def run_perf_analyzer(address: str, model: str, *extra: str, protocol: str = "grpc") -> str:
    assert PERF_ANALYZER.exists(), f"{PERF_ANALYZER} missing: run `make perf-analyzer`"
    command = [str(PERF_ANALYZER), "-m", model, "-u", address, "-i", protocol, "--concurrency-range", "4",
               "--measurement-interval", "800", "--stability-percentage", "999", "--max-trials", "10",
               "--input-data", "zero", *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


QA_SHAPES = ("--shape", "text:40", "--shape", "question:8")


@pytest.mark.parametrize("protocol,model,extra", [
    ("grpc", "mlp", ()), ("grpc", "qa", QA_SHAPES),
    # HTTP: KServe v2 REST as perf_analyzer speaks it (binary tensors, statistics as JSON).
    ("http", "mlp", ()), ("http", "qa", QA_SHAPES), ("http", "posts", ("--shape", "posts:300")),
])
def test_perf_analyzer_reports_no_errors(served, protocol, model, extra):
    address, _, _, http_address = served
    output = run_perf_analyzer(http_address if protocol == "http" else address, model, *extra, protocol=protocol)
    print(output)
    assert "Throughput:" in output and "infer/sec" in output
    assert "error" not in output.lower().replace("error: 0", "")
    stats = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address)).ModelStatistics(
        pb.ModelStatisticsRequest(name=model)).model_stats[0]
    assert stats.inference_stats.success.count > 50 and stats.inference_stats.fail.count == 0


def test_metrics_endpoint_counts_requests(served, exported_repo):
    address, metrics, _, _ = served
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    stub.ModelInfer(codec.encode_infer_request("mlp", sample_inputs(exported_repo, "mlp", 1)), timeout=30)
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    assert 'mimo_requests_total{model="mlp",status="OK",version="1"}' in text
    assert "mimo_compute_seconds_bucket" in text and "mimo_batch_size_bucket" in text


def test_the_metrics_port_answers_metrics_only(served):
    """Any other path is a 404: tritonclient.http's is_server_ready() and probes must not read a
    scrape port as a healthy REST endpoint."""
    _, metrics, _, _ = served
    for path in ("/", "/v2/health/ready", "/v1/models/mlp", "/metricsx"):
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}{path}", timeout=10)
        assert answer.value.code == 404, path
        assert b"/metrics" in answer.value.read()


def test_sigterm_finishes_in_flight_requests_and_exits_zero(served, exported_repo):
    address, metrics, process, _ = served
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 << 20)]))
    inputs = sample_inputs(exported_repo, "dual_camera", 8)
    request = codec.encode_infer_request("dual_camera", inputs)
    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(stub.ModelInfer, request, timeout=120) for _ in range(4)]
        _wait_in_flight(metrics, "dual_camera", 4)  # all four are in the server, none answered yet
        process.send_signal(signal.SIGTERM)
        results = [codec.decode_infer_response(call.result()) for call in calls]
    want = run_onnx(exported_repo, "dual_camera", inputs)
    for result in results:
        np.testing.assert_allclose(result["features"], want["features"], atol=1e-5)
    assert process.wait(60) == 0
    output = process.stdout.read()
    assert "draining" in output
    # The defaults this ran with: the native transport when it is built, uvloop (the server extra).
    from mimo.serving.transports import native as native_server

    assert ("gRPC frontend: native" if native_server.available() else "gRPC frontend: python") in output
    assert "event loop: uvloop" in output


def _wait_in_flight(metrics_port: int, model: str, count: int, timeout: float = 60) -> None:
    """Until the server's in-flight gauge for the model reads `count` (a sleep raced a slow machine)."""
    line = f'mimo_inflight_requests{{model="{model}",version="1"}} {float(count)}'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        if line in text.splitlines():
            return
        time.sleep(0.005)
    raise AssertionError(f"{count} {model} requests never in flight at once")


def _thread_policies(pid: int) -> set[int]:
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@contextlib.contextmanager
def _serving_mlp(tmp_path: Path, exported_repo: Path, **env: str):
    """A server of its own (the module's shared one is stopped by the SIGTERM test)."""
    repository = tmp_path / f"repository-{len(list(tmp_path.iterdir()))}"
    repository.mkdir()
    (repository / "mlp").symlink_to(exported_repo / "mlp", target_is_directory=True)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mimo", "serve", "--model-repository", str(repository), "--port", str(port),
         "--metrics-port", "0", "--http-port", "0"],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(f"127.0.0.1:{port}", process)
        yield f"127.0.0.1:{port}", process
    finally:
        process.kill()
        process.wait(10)


def _until(condition, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_server_threads_run_sched_batch_while_requests_overlap(tmp_path, exported_repo):
    """auto (the default): the transport's, the loop's and the models' threads run SCHED_OTHER
    while requests come one at a time, all SCHED_BATCH while they overlap, and back after."""
    own = os.sched_getscheduler(0)
    with _serving_mlp(tmp_path, exported_repo) as (address, process):
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        request = codec.encode_infer_request("mlp", sample_inputs(exported_repo, "mlp", 1))
        for _ in range(50):
            stub.ModelInfer(request, timeout=30)
        assert len(os.listdir(f"/proc/{process.pid}/task")) > 3  # the loop, the transport's, a model's
        assert _thread_policies(process.pid) == {own}
        stop = threading.Event()

        def load():
            while not stop.is_set():
                stub.ModelInfer(request, timeout=30)

        with ThreadPoolExecutor(8) as pool:
            clients = [pool.submit(load) for _ in range(8)]
            try:
                overlapped = _until(lambda: _thread_policies(process.pid) == {os.SCHED_BATCH})
            finally:
                stop.set()
            for client in clients:
                client.result()
        assert overlapped, _thread_policies(process.pid)
        assert _until(lambda: _thread_policies(process.pid) == {own}), _thread_policies(process.pid)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_thread_policy_batch_and_normal_hold_whatever_the_load(tmp_path, exported_repo):
    with _serving_mlp(tmp_path, exported_repo, MIMO_THREAD_POLICY="batch") as (address, process):
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        stub.ModelInfer(codec.encode_infer_request("mlp", sample_inputs(exported_repo, "mlp", 1)), timeout=30)
        assert _thread_policies(process.pid) == {os.SCHED_BATCH}
    with _serving_mlp(tmp_path, exported_repo, MIMO_THREAD_POLICY="normal") as (address, process):
        request = codec.encode_infer_request("mlp", sample_inputs(exported_repo, "mlp", 1))
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: stub.ModelInfer(request, timeout=30), range(400)))
        assert _thread_policies(process.pid) == {os.sched_getscheduler(0)}  # this test's own


def _start_and_fail(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mimo", "serve", "--port", "0", "--metrics-port", "0", "--http-port", "0",
                           *args],
                          capture_output=True, text=True, timeout=120)


def test_startup_fails_clearly_on_missing_repository(tmp_path):
    result = _start_and_fail("--model-repository", str(tmp_path / "nowhere"))
    assert result.returncode != 0
    assert f"model repository {tmp_path / 'nowhere'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_startup_fails_clearly_on_malformed_model_json(tmp_path, exported_repo):
    (tmp_path / "mlp").mkdir()
    (tmp_path / "mlp" / "1").symlink_to(exported_repo / "mlp" / "1")
    document = json.loads((exported_repo / "mlp" / "model.json").read_text())
    document["inputs"][0]["shape"] = "64"
    (tmp_path / "mlp" / "model.json").write_text(json.dumps(document))
    result = _start_and_fail("--model-repository", str(tmp_path))
    assert result.returncode == 2 and f"nothing to serve in {tmp_path}:" in result.stderr
    assert "mlp/model.json: inputs/0/shape" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "mlp" / "model.json").write_text("{not json")
    result = _start_and_fail("--model-repository", str(tmp_path))
    assert result.returncode != 0 and "not valid JSON" in result.stderr


def test_settings_come_from_environment(tmp_path):
    from mimo.serving.settings import parse_settings

    env = {"MIMO_MODEL_REPOSITORY": str(tmp_path), "MIMO_PORT": "9123", "MIMO_BACKEND": "tensorflow",
           "MIMO_MAX_MESSAGE_MB": "8", "MIMO_BATCHING": "0", "MIMO_FRONTEND": "auto"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings = parse_settings([])
        assert (settings.model_repository, settings.port, settings.backend) == (tmp_path, 9123, "tensorflow")
        assert settings.max_message_bytes == 8 << 20 and settings.batching is False
        assert parse_settings(["--port", "9200"]).port == 9200  # a flag beats the environment
        assert parse_settings([]).uses_uvloop is True  # auto: uvloop, which the server extra installs
        assert parse_settings(["--event-loop", "asyncio"]).uses_uvloop is False
        os.environ["MIMO_FRONTEND"] = "python"
        assert parse_settings([]).native_frontend is False
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_drop_ins_serve_beside_a_broken_folder_and_strict_readiness_refuses_it(tmp_path, exported_repo):
    """`mimo serve` on bare files (no model.json) and one broken folder: the rest serve; the operator
    who asked for --strict-readiness gets exit 2 and every reason instead."""
    (tmp_path / "mlp_onnx" / "1").mkdir(parents=True)
    shutil.copy(exported_repo / "mlp" / "1" / "model.onnx", tmp_path / "mlp_onnx" / "1" / "model.onnx")
    (tmp_path / "mlp_savedmodel" / "1").mkdir(parents=True)
    shutil.copytree(exported_repo / "mlp" / "1" / "model.savedmodel", tmp_path / "mlp_savedmodel" / "1" / "model.savedmodel")
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "model.json").write_text("{not json")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mimo", "serve", "--model-repository", str(tmp_path), "--port", str(port),
         "--metrics-port", "0", "--http-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = f"127.0.0.1:{port}"
    try:
        wait_ready(address, process)
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        index = {(m.name, m.version): (m.state, m.reason) for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert index[("mlp_onnx", "1")] == ("READY", "") and index[("mlp_savedmodel", "1")] == ("READY", "")
        assert index[("broken", "")][0] == "UNAVAILABLE" and "broken/model.json: not valid JSON" in index[("broken", "")][1]
        inputs = sample_inputs(exported_repo, "mlp", 2)
        expected = run_onnx(exported_repo, "mlp", inputs)["probs"]
        for name in ("mlp_onnx", "mlp_savedmodel"):
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
            assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 64])]
            answer = codec.decode_infer_response(stub.ModelInfer(codec.encode_infer_request(name, inputs), timeout=30))
            np.testing.assert_allclose(answer["probs"], expected, atol=1e-5)
    finally:
        process.send_signal(signal.SIGTERM)
        log = process.communicate(timeout=60)[0]
    assert process.returncode == 0
    loads = [line for line in log.splitlines() if " ready on " in line and "mlp_" in line]
    print("\n".join(loads))  # the drop-ins' load times, TensorFlow's import included for the first
    assert len(loads) == 2 and all(line.rstrip().endswith(" s") for line in loads)
    assert "model mlp_onnx version 1: derived from model.onnx: inputs x FP32 [-1, 64]; outputs probs FP32" in log
    result = _start_and_fail("--model-repository", str(tmp_path), "--strict-readiness")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--strict-readiness and not every model is ready:" in result.stderr
    assert f"model broken: {tmp_path / 'broken' / 'model.json'}: not valid JSON" in result.stderr
