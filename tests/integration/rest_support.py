"""Shared by the REST tests: plain HTTP calls (http.client), v2 JSON request bodies, the gRPC
reference answers and error details for the same requests, and the "still serving" check."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import NamedTuple

import grpc
import numpy as np

from mimo.protos import codec
from mimo.protos import grpc_service_pb2_grpc as pb_grpc
from mimo.protos.dtypes import numpy_to_datatype

BIG = 256 * 1024 * 1024
MLP_X = np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64)


class Reply(NamedTuple):
    status: int
    headers: dict  # lower-cased names
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """The `error` of a JSON error body (asserting the body is one)."""
        document = self.json()
        assert isinstance(document, dict) and set(document) == {"error"}, self.body[:300]
        assert "Traceback" not in document["error"]
        return document["error"]


def call(address: str, method: str, path: str, body=None, headers=None, timeout: float = 60,
         context: ssl.SSLContext | None = None) -> Reply:
    """One request on a fresh connection; `body` may be bytes or a JSON-able object."""
    host, port = address.rsplit(":", 1)
    if body is not None and not isinstance(body, (bytes, bytearray)):
        body = json.dumps(body).encode()
    if context is None:
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    else:
        connection = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def v2_tensor(name: str, array: np.ndarray) -> dict:
    return {"name": name, "datatype": numpy_to_datatype(array.dtype), "shape": list(array.shape),
            "data": array.ravel().tolist()}


def v2_body(inputs: dict, **fields) -> dict:
    """A KServe v2 REST JSON inference request of `inputs` ({name: array})."""
    return {"inputs": [v2_tensor(name, array) for name, array in inputs.items()], **fields}


def v2_outputs(document: dict) -> dict:
    """{name: array} from a JSON (not binary) v2 inference response."""
    out = {}
    for tensor in document["outputs"]:
        out[tensor["name"]] = np.asarray(tensor["data"], dtype=np.float32 if tensor["datatype"] == "FP32"
                                         else None).reshape(tensor["shape"])
    return out


def grpc_stub(address: str) -> pb_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", BIG),
                                                       ("grpc.max_send_message_length", BIG)])
    return pb_grpc.GRPCInferenceServiceStub(channel)


def grpc_error(address: str, request) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and details the server gives `request` (a ModelInferRequest)."""
    try:
        grpc_stub(address).ModelInfer(request, timeout=60)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.INTERNAL: 500,
}


def assert_close(got: dict, want: dict, atol: float = 1e-5, ordered: bool = False) -> None:
    if ordered:
        assert list(got) == list(want), (list(got), list(want))
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name in want:
        assert np.shape(got[name]) == np.shape(want[name]), (name, np.shape(got[name]), np.shape(want[name]))
        np.testing.assert_allclose(np.asarray(got[name], np.float64), np.asarray(want[name], np.float64),
                                   atol=atol, rtol=0, err_msg=name)


_MLP_WANT: dict = {}


def mlp_reference(repository) -> np.ndarray:
    from helpers import run_onnx

    key = str(repository)
    if key not in _MLP_WANT:
        _MLP_WANT[key] = run_onnx(repository, "mlp", {"x": MLP_X})["probs"]
    return _MLP_WANT[key]


def assert_mlp_serves(http_address: str, repository, headers=None, context=None) -> None:
    """A valid mlp inference over KServe REST is answered, and right."""
    reply = call(http_address, "POST", "/v2/models/mlp/infer", v2_body({"x": MLP_X}), headers=headers,
                 timeout=30, context=context)
    assert reply.status == 200, reply
    got = v2_outputs(reply.json())
    assert_close(got, {"probs": mlp_reference(repository)})


def grpc_request(model: str, inputs: dict, **kwargs):
    return codec.encode_infer_request(model, inputs, **kwargs)


def linked_repository(repository, folder, models=("mlp",)):
    """A repository of real model folders (model.json copied, version folders linked), which
    explicit model control may load again after an unload (a linked model folder it refuses)."""
    import shutil
    from pathlib import Path

    folder = Path(folder)
    for name in models:
        (folder / name).mkdir(parents=True)
        shutil.copy(Path(repository) / name / "model.json", folder / name / "model.json")
        (folder / name / "1").symlink_to(Path(repository).resolve() / name / "1", target_is_directory=True)
    return folder
