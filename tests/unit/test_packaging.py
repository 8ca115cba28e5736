"""The distribution builds as a wheel whose `mimo` namespace maps the four top-level folders."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("mimo_serve-*.whl"))
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
