"""Backends: one synchronous interface, numpy in and numpy out.

    load() / describe() -> dict / signature(name) / predict(inputs, outputs, signature) -> dict / unload()

`create_backend` picks the implementation by name; each module imports its runtime lazily so
a server that only uses ONNX Runtime never pays for importing TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from mimo.serving.core.backends.base import Backend, BackendOptions

BACKEND_FORMATS = {"onnxruntime": "onnx", "tensorflow": "savedmodel"}  # backend -> the file format it loads


def create_backend(kind: str, version_dir: Path, options: BackendOptions) -> Backend:
    if kind == "onnxruntime":
        from mimo.serving.core.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(version_dir, options)
    if kind == "tensorflow":
        from mimo.serving.core.backends.tensorflow_backend import TensorFlowBackend

        return TensorFlowBackend(version_dir, options)
    raise ValueError(f"unknown backend {kind!r}")


__all__ = ["BACKEND_FORMATS", "Backend", "BackendOptions", "create_backend"]
