"""The heap's freed pages go back to the system after a model loads (serving/core/memory.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import platform

import pytest

from mimo.serving.core import loader, memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def test_freed_heap_in_the_middle_goes_back_to_the_system():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 200 MB of 4 KiB blocks (under the mmap threshold: on the heap), touched, then all freed but
    # the last, which pins the heap's top: free() alone cannot shrink it, as after a model load.
    blocks = [libc.malloc(4096) for _ in range(50_000)]
    for block in blocks:
        ctypes.memset(block, 1, 4096)
    for block in blocks[:-1]:
        libc.free(block)
    held = _rss_mb()
    assert memory.release_freed_memory() is True
    released = held - _rss_mb()
    libc.free(blocks[-1])
    assert released > 150, f"only {released:.0f} MB of ~200 MB freed went back to the system"


def test_loading_a_version_releases_freed_memory_whether_it_loads_or_fails(exported_repo, monkeypatch):
    calls = []
    monkeypatch.setattr(loader, "release_freed_memory", lambda: calls.append(True) or True)
    from mimo.serving.core.backends import BackendOptions

    document = json.loads((exported_repo / "mlp" / "model.json").read_text())
    loaded = loader.load_version("onnxruntime", document, 1, exported_repo / "mlp" / "1", BackendOptions())
    assert loaded.spec.name == "mlp" and calls == [True]
    with pytest.raises(Exception, match="neither|missing|no such|not"):
        loader.load_version("onnxruntime", document, 9, exported_repo / "mlp" / "9", BackendOptions())
    assert calls == [True, True]
