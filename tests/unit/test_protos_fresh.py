"""The committed generated modules in protos/ match what scripts/gen_protos.py produces now."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_protos.py"


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_protos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_modules_are_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    gen = _gen_module()
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True)
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir() if gen.is_generated(p)}
    committed = {p.name: p.read_text() for p in (ROOT / "protos").iterdir() if gen.is_generated(p)}
    hint = "run: python scripts/gen_protos.py"
    assert sorted(committed) == sorted(fresh), f"missing or extra generated modules; {hint}"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale generated modules {stale}; {hint}"
    assert fresh, "nothing was generated"


def test_generated_modules_use_private_pool():
    # Importing next to tritonclient (same `inference.*` names) must not clash.
    pytest.importorskip("tritonclient.grpc")
    import tritonclient.grpc.service_pb2  # noqa: F401  registers inference.* in the default pool

    from mimo.protos import POOL, grpc_service_pb2, tf_serving_pb2

    assert grpc_service_pb2.DESCRIPTOR.pool is POOL
    assert tf_serving_pb2.DESCRIPTOR.pool is POOL


def test_importing_protos_does_not_load_tensorflow():
    code = "import sys, mimo.protos; print(any(m.split('.')[0] in ('tensorflow', 'onnxruntime') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
