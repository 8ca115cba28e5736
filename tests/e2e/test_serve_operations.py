"""`mimo serve` as a subprocess: secrets kept off the command line; one scrape for every worker."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import free_port, sample_inputs
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc
from test_serve_process import wait_ready


@pytest.fixture
def mlp_repo(tmp_path, exported_repo) -> Path:
    repo = tmp_path / "repo"
    (repo / "mlp").mkdir(parents=True)
    shutil.copy(exported_repo / "mlp" / "model.json", repo / "mlp" / "model.json")
    (repo / "mlp" / "1").symlink_to(exported_repo / "mlp" / "1")
    return repo


def _serve(repo: Path, port: int, *args: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mimo", "serve", "--model-repository", str(repo),
                             "--port", str(port), "--http-port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def test_tokens_from_files_stay_out_of_the_process_command_line(mlp_repo, tmp_path, exported_repo):
    (tmp_path / "token").write_text("infer-secret-4711\n")
    (tmp_path / "admin").write_text("admin-secret-0815\n")
    (tmp_path / "token").chmod(0o600)
    port = free_port()
    process = _serve(mlp_repo, port, "--metrics-port", "0", "--token-file", str(tmp_path / "token"),
                     "--model-control-mode", "explicit", "--admin-token-file", str(tmp_path / "admin"))
    address = f"127.0.0.1:{port}"
    try:
        wait_ready(address, process)
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert b"--token-file" in cmdline and b"secret" not in cmdline
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        request = codec.encode_infer_request("mlp", sample_inputs(exported_repo, "mlp", 1))
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub.ModelInfer(request, timeout=30, metadata=[("authorization", "Bearer infer-secret-4711")])
        unload = pb.RepositoryModelUnloadRequest(model_name="mlp")
        stub.RepositoryModelUnload(unload, timeout=30, metadata=[("authorization", "Bearer admin-secret-0815")])
    finally:
        _stop(process)


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "_created" not in text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_one_scrape_sees_every_worker(mlp_repo, exported_repo):
    port, metrics = free_port(), free_port()
    process = _serve(mlp_repo, port, "--workers", "2", "--metrics-port", str(metrics))
    address = f"127.0.0.1:{port}"
    try:
        wait_ready(address, process)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the other worker may still be loading
            try:
                samples = _scrape(metrics)
            except OSError:
                samples = {}
            if all(samples.get(("mimo_worker_up", (("worker", w),))) == 1 for w in "01"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("not every worker answered the scrape")
        request = codec.encode_infer_request("mlp", sample_inputs(exported_repo, "mlp", 1))
        for _ in range(3):  # a channel each: SO_REUSEPORT spreads connections over the workers
            pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address)).ModelInfer(request, timeout=30)
        samples = _scrape(metrics)
        for worker in "01":
            labels = (("model", "mlp"), ("state", "READY"), ("version", "1"), ("worker", worker))
            assert samples[("mimo_model_state", labels)] == 1
            assert samples[("mimo_queue_depth", (("model", "mlp"), ("version", "1"), ("worker", worker)))] == 0
        served = sum(value for (name, labels), value in samples.items()
                     if name == "mimo_requests_total" and ("status", "OK") in labels)
        assert served == 3
    finally:
        _stop(process)
