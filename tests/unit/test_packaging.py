"""The distribution builds as a wheel whose `mimo` namespace maps the four top-level folders; with
cargo on PATH it carries the native transport and is tagged for its platform (abi3), without it
(MIMO_PURE=1 stands in for a machine without Rust) it is pure and the server falls back to grpc.aio."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _build_wheel(outdir: Path, source: Path = ROOT, **env) -> Path:
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir), str(source)],
                   check=True, capture_output=True, timeout=600, env={**os.environ, **env})
    (wheel,) = outdir.glob("mimo_serve-*.whl")
    return wheel


def _wheel_metadata(wheel: Path) -> str:
    archive = zipfile.ZipFile(wheel)
    return archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/WHEEL"))).decode()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cargo") is None, reason="no Rust toolchain: the wheel is pure here")
def test_the_wheel_carries_the_native_transport_tagged_for_its_platform(tmp_path):
    wheel = _build_wheel(tmp_path)
    assert wheel.name.endswith("-cp311-abi3-linux_x86_64.whl"), wheel.name
    assert "Root-Is-Purelib: false" in _wheel_metadata(wheel)
    assert "mimo/serving/_transport.abi3.so" in zipfile.ZipFile(wheel).namelist()


@pytest.mark.slow
def test_without_rust_the_wheel_is_pure_and_serves_on_grpc_aio(tmp_path):
    # A copy without build output: the work tree's build/ may hold an extension built before.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "target", "*.so", "models", "bench", ".cache", "__pycache__"))
    wheel = _build_wheel(tmp_path, source, MIMO_PURE="1")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    assert "Root-Is-Purelib: true" in _wheel_metadata(wheel)
    assert not any(n.endswith(".so") for n in zipfile.ZipFile(wheel).namelist())
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    # grpcio and numpy from this environment's site-packages (which holds no `mimo` folder: ours is editable)
    site = next(p for p in sys.path if p.endswith("site-packages"))
    result = subprocess.run(
        [str(python), "-P", "-c", "from mimo.serving.transports import native as n; print(n.__file__, n.available())"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, env={**os.environ, "PYTHONPATH": site})
    assert result.returncode == 0, result.stderr
    assert str(env_dir) in result.stdout and result.stdout.strip().endswith("False")


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every module of the four folders (subpackages included) is in the wheel under mimo/.
    folders = {"mimo": "mimo", "export": "mimo/export", "serving": "mimo/serving", "protos": "mimo/protos",
               "clients": "mimo/client"}
    for folder, package in folders.items():
        for source in (ROOT / folder).rglob("*.py"):
            relative = source.relative_to(ROOT / folder)
            if "examples" in relative.parts or "__pycache__" in relative.parts:
                continue
            assert f"{package}/{relative.as_posix()}" in names, f"{folder}/{relative} missing from the wheel"
    for expected in ("mimo/protos/grpc_service.proto", "mimo/protos/model_schema.json"):
        assert expected in names, expected
    assert not any(n.startswith(("tests/", "export/", "serving/")) for n in names)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # --no-deps: the point is the package layout, not a second download of TensorFlow.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    result = subprocess.run(
        [str(python), "-c", "import mimo.export, mimo.cli; print(mimo.export.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert str(env_dir) in result.stdout
    result = subprocess.run([str(env_dir / "bin" / "mimo"), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("mimo ")
    # Without the server extra, `mimo export` explains what to install instead of a traceback.
    result = subprocess.run([str(env_dir / "bin" / "mimo"), "export"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "pip install 'mimo-serve[server]'" in result.stderr
