"""Who may import whom inside mimo.serving: the core knows no protocol and no transport; front ends
reach the core through its public objects, not the registry; transports know no model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[2] / "serving"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((SERVING / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("core"), ids=lambda p: p.name)
def test_the_core_imports_no_protocol_and_no_transport(path):
    forbidden = ("grpc", "grpc_health", "google.protobuf", "orjson", "mimo.serving.frontends",
                 "mimo.serving.transports", "mimo.serving.app")
    bad = [m for m in _imports(path) if m.startswith(forbidden) or m.endswith("_pb2")]
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", _modules("frontends"), ids=lambda p: p.name)
def test_front_ends_use_the_core_not_its_registry_and_no_transport(path):
    bad = [m for m in _imports(path) if m in ("mimo.serving.core.scheduler", "mimo.serving.core.loader",
                                              "mimo.serving.core.backends", "mimo.serving.app")
           or (m.startswith("mimo.serving.transports") and m != "mimo.serving.transports.base")]
    assert not bad, f"{path.name} imports {bad}"
    source = path.read_text()
    assert ".registry" not in source and ".models[" not in source, f"{path.name} reaches into the registry"


@pytest.mark.parametrize("path", _modules("transports"), ids=lambda p: p.name)
def test_transports_know_no_model(path):
    bad = [m for m in _imports(path) if m.startswith(("mimo.serving.core.core", "mimo.serving.core.registry",
                                                      "mimo.serving.core.scheduler", "mimo.serving.app"))]
    assert not bad, f"{path.name} imports {bad}"
