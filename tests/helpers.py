"""Shared test helpers: small exports, in-process servers, in-process reference runs."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from mimo.serving.app import ServerThread
from mimo.serving.settings import ServerSettings

# Small sizes keep the session export short: Xception at its smallest input, one epoch.
TEST_EXPORT = dict(image_size=71, epochs=1, samples=64, verbose=0)
MODELS = ["mlp", "qa", "posts", "similarity", "dual_camera", "clothing_price", "inception_residual"]


def server_settings(repository: Path, **overrides) -> ServerSettings:
    # HTTP port 0 means off: the REST front ends get a free port of their own.
    values = dict(model_repository=Path(repository), host="127.0.0.1", port=0, metrics_port=0,
                  http_port=free_port(), grace_seconds=5.0)
    values.update(overrides)
    return ServerSettings(**values)


def start_server(repository: Path, **overrides) -> ServerThread:
    return ServerThread(server_settings(repository, **overrides)).start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_inputs(repository: Path, model: str, batch: int, seed: int = 0, length: int | None = None) -> dict:
    """Valid random inputs for `model`, built from its model.json (min lengths, id ranges)."""
    from mimo.protos.dtypes import datatype_to_numpy
    from mimo.protos.repository import read_model_json

    spec = read_model_json(Path(repository) / model)
    rng = np.random.default_rng(seed)
    arrays = {}
    for tensor in spec.inputs:
        constraint = spec.constraints.get(tensor.name)
        shortest = constraint.min_length if constraint and constraint.min_length else 1
        shape = [batch] + [
            (length or max(shortest, 12)) if d == -1 else d for d in tensor.shape[1:]
        ]
        dtype = datatype_to_numpy(tensor.datatype)
        if constraint and constraint.id_range:
            low, high = constraint.id_range
            arrays[tensor.name] = rng.integers(max(low, 1), high, size=shape).astype(dtype)
        else:
            arrays[tensor.name] = rng.random(shape).astype(dtype)
    return arrays


def run_onnx(repository: Path, model: str, inputs: dict, version: int = 1) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(Path(repository) / model / str(version) / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


_saved = {}


def run_savedmodel(repository: Path, model: str, inputs: dict, signature: str = "serving_default",
                   version: int = 1) -> dict:
    import tensorflow as tf

    key = (str(repository), model, version)
    if key not in _saved:
        _saved[key] = tf.saved_model.load(str(Path(repository) / model / str(version) / "model.savedmodel"))
    function = _saved[key].signatures[signature]
    return {k: v.numpy() for k, v in function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def triton_inputs(module, inputs: dict) -> list:
    """{name: array} as tritonclient InferInputs (module: tritonclient.grpc or tritonclient.grpc.aio)."""
    from mimo.protos.dtypes import numpy_to_datatype

    built = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), numpy_to_datatype(array.dtype))
        tensor.set_data_from_numpy(array)
        built.append(tensor)
    return built
