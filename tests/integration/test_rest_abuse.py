"""The HTTP port under bad and hostile requests: the gRPC hardening corpus sent as KServe v2 REST
(each with the mapped HTTP status and gRPC's very words), and what only HTTP has (malformed and
nested JSON, truncated, stalled, oversized and compressed bodies, framing headers, paths and
methods). After every case the server still answers a valid mlp inference, and right."""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import socket
import threading
import time
import zlib
from urllib.parse import quote

import numpy as np
import pytest

from client_support import mini_repository
from helpers import run_onnx, sample_inputs, start_server
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos.dtypes import numpy_to_datatype
from rest_support import (
    GRPC_TO_HTTP,
    MLP_X,
    assert_close,
    assert_mlp_serves,
    call,
    grpc_error,
    grpc_request,
    mlp_reference,
    v2_body,
    v2_outputs,
)

pytestmark = pytest.mark.timeout(120)

MLP_BODY = json.dumps(v2_body({"x": MLP_X})).encode()
INFER = "/v2/models/mlp/infer"
LIMIT_MB = 1


@pytest.fixture(scope="module")
def small(exported_repo, tmp_path_factory):
    """A server of mlp and qa with a 1 MiB message limit."""
    repo = mini_repository(exported_repo, tmp_path_factory.mktemp("rest-abuse") / "repo", models=("mlp", "qa"))
    thread = start_server(repo, max_message_mb=LIMIT_MB)
    yield thread
    thread.stop()


@pytest.fixture
def serves(server, exported_repo):
    """After the test: the session server still answers a valid mlp inference correctly."""
    yield
    assert_mlp_serves(server.http_address, exported_repo)


def raw_exchange(address: str, data: bytes, timeout: float = 10, read_all: bool = True) -> bytes:
    """Bytes on a fresh socket, then what comes back until the server closes or `timeout`."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_all and b"\r\n\r\n" in b"".join(chunks):
                    break
        except socket.timeout:
            pass
        return b"".join(chunks)


def parse_raw(data: bytes) -> tuple[int, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


# -- the gRPC corpus over HTTP: the mapped status and the same words ----------------------------------


def _corpus(repo):
    mlp = sample_inputs(repo, "mlp", 2)
    qa = sample_inputs(repo, "qa", 2)
    posts = sample_inputs(repo, "posts", 1)
    shortest = json.loads((repo / "posts" / "model.json").read_text())["constraints"]["posts"]["min_length"]
    high = dict(qa, text=qa["text"].copy())
    high["text"][1, 3] = 10000
    negative = dict(qa, question=qa["question"].copy())
    negative["question"][0, 0] = -1
    # name: (model, version, inputs, requested outputs, HTTP status, a phrase both must hold)
    return {
        "unknown model": ("nope", "", mlp, None, 404, "unknown model 'nope'"),
        "unknown version": ("mlp", "7", mlp, None, 404, "no version '7'"),
        "version not ascii digits": ("mlp", "²", mlp, None, 404, "no version '²'"),
        "version arabic digit": ("mlp", "١", mlp, None, 404, "no version '١'"),
        "negative version": ("mlp", "-1", mlp, None, 404, "no version '-1'"),
        "missing input": ("qa", "", {"text": qa["text"]}, None, 400, "missing input 'question'"),
        "unexpected input": ("mlp", "", dict(mlp, y=mlp["x"]), None, 400, "unexpected input 'y'"),
        "wrong datatype": ("mlp", "", {"x": mlp["x"].astype(np.float64)}, None, 400,
                           "input 'x': datatype FP64 where the model takes FP32"),
        "wrong rank": ("mlp", "", {"x": mlp["x"].reshape(2, 8, 8)}, None, 400, "input 'x': rank 3"),
        "wrong fixed dimension": ("mlp", "", {"x": np.zeros((2, 63), np.float32)}, None, 400,
                                  "input 'x': dimension 1 is 63 where the model takes 64"),
        "shorter than minimum": ("posts", "", {"posts": posts["posts"][:, : shortest - 1]}, None, 400,
                                 f"sequence length {shortest - 1} is shorter than the model's minimum {shortest}"),
        "token id too large": ("qa", "", high, None, 400,
                               "input 'text': token id 10000 at [1, 3] is outside the vocabulary [0, 10000)"),
        "negative token id": ("qa", "", negative, None, 400, "input 'question': token id -1 at [0, 0]"),
        "empty batch": ("mlp", "", {"x": np.zeros((0, 64), np.float32)}, None, 400, "input 'x': empty batch"),
        "unknown output": ("posts", "", posts, ["height"], 400, "unknown output 'height'"),
        "over max batch": ("mlp", "", {"x": np.zeros((65, 64), np.float32)}, None, 400, "max_batch_size 32"),
    }


CORPUS = ["unknown model", "unknown version", "version not ascii digits", "version arabic digit", "negative version",
          "missing input", "unexpected input", "wrong datatype", "wrong rank", "wrong fixed dimension",
          "shorter than minimum", "token id too large", "negative token id", "empty batch", "unknown output",
          "over max batch"]


@pytest.mark.parametrize("case", CORPUS)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_grpc_corpus_over_http_has_the_mapped_status_and_the_same_words(exported_repo, server, serves, case, binary):
    model, version, inputs, outputs, status, phrase = _corpus(exported_repo)[case]
    request = grpc_request(model, inputs, outputs=outputs)
    request.model_version = version
    code, details = grpc_error(server.address, request)
    assert GRPC_TO_HTTP[code] == status and phrase in details, (code, details)
    path = f"/v2/models/{model}" + (f"/versions/{quote(version)}" if version else "") + "/infer"
    if binary:
        body, headers = _binary_body(inputs, outputs)
    else:
        document = v2_body(inputs)
        if outputs:
            document["outputs"] = [{"name": name} for name in outputs]
        body, headers = json.dumps(document).encode(), {}
    reply = call(server.http_address, "POST", path, body, headers=headers)
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json"
    assert reply.error == details  # the same words as gRPC's, so the phrase too
    assert phrase in reply.error


def _binary_body(inputs: dict, outputs) -> tuple[bytes, dict]:
    """Triton's binary tensor extension: a JSON header, then each input's raw bytes."""
    heads, raws = [], []
    for name, array in inputs.items():
        raw = np.ascontiguousarray(array).tobytes()
        tensor = {"name": name, "datatype": numpy_to_datatype(array.dtype), "shape": list(array.shape),
                  "parameters": {"binary_data_size": len(raw)}}
        heads.append(tensor)
        raws.append(raw)
    document = {"inputs": heads}
    if outputs:
        document["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    header = json.dumps(document).encode()
    return header + b"".join(raws), {"Inference-Header-Content-Length": str(len(header)),
                                     "Content-Type": "application/octet-stream"}


def test_shape_whose_element_count_overflows_is_400_with_the_grpc_words(server, serves):
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[2**62, 2**62, 0])
    request.raw_input_contents.append(b"")
    code, details = grpc_error(server.address, request)
    assert GRPC_TO_HTTP[code] == 400 and "overflows" in details
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**62, 2**62, 0], "data": []}]}
    reply = call(server.http_address, "POST", INFER, body)
    assert reply.status == 400 and reply.error == details and "input 'x'" in reply.error
    for shape in ([2**63, 1], [-1, 64], [2**40, 2**40]):
        reply = call(server.http_address, "POST", INFER, {"inputs": [
            {"name": "x", "datatype": "FP32", "shape": shape, "data": []}]})
        assert reply.status == 400 and "input 'x'" in reply.error, (shape, reply)


# -- malformed documents -------------------------------------------------------------------------


@pytest.mark.parametrize("body, fragment", [
    (b'{"inputs": [', "the inference request is not valid JSON"),
    (b"", "the inference request is not valid JSON"),
    (b"\xff\xfe{}", "the inference request is not valid JSON"),
    (b"[1, 2]", "the inference request must be a JSON object, got an array of 2"),
    (b'{"id": "x"}', "the inference request has no \"inputs\""),
    (b'{"inputs": {"name": "x"}}', "\"inputs\" must be a JSON array"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64]}]}', "has neither \"data\""),
    (b'{"inputs": [{"name": "x", "datatype": "FP99", "shape": [1, 64], "data": []}]}', "unsupported datatype 'FP99'"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, "64"], "data": []}]}',
     "shape must be an array of integers"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [' + b'"a",' * 63 + b'"a"]}]}',
     "FP32 data must be numbers, got strings"),
    (b'{"id": 7, "inputs": []}', "\"id\" must be a string"),
    (b'{"inputs": [], "parameters": {"binary_data_output": "yes"}}', "binary_data_output must be true or false"),
    (b'{"inputs": [], "parameters": {"timeout": -5}}', "parameter 'timeout' must be a non-negative integer"),
    (b'{"inputs": [], "parameters": {"signature_name": ""}}', "parameter 'signature_name' must be a non-empty string"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1e999]}]}', "not valid JSON"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1e39, 0]}]}',
     "input 'x': a value is out of range for FP32"),
    (b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 1], "data": [1099511627776]}]}',
     "input 'x': value 1099511627776 is out of range for INT32"),
    (b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 1], "data": [2.5]}]}',
     "INT32 value 2.5 is not an exact integer"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}, '
     b'{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}', "input 'x': appears twice"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [], '
     b'"parameters": {"shared_memory_region": "r"}}]}', "shared memory is not supported over REST"),
    (b'{"inputs": [], "outputs": [{"name": "probs", "parameters": {"classification": 3}}]}',
     "the classification extension is not supported"),
])
def test_malformed_json_is_400_with_a_clear_message(server, serves, body, fragment):
    reply = call(server.http_address, "POST", INFER, body)
    assert reply.status == 400 and fragment in reply.error, reply


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_400(server, serves, literal):
    body = (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": ['
            + literal.encode() + b", 0.0" * 63 + b"]}]}")
    reply = call(server.http_address, "POST", INFER, body)
    assert reply.status == 400 and "not valid JSON" in reply.error, reply
    assert "NaN and Infinity are not JSON numbers" in reply.error, reply.error
    reply = call(server.http_address, "POST", "/v1/models/mlp:predict",
                 b'{"instances": [[' + literal.encode() + b"" + b", 0.0" * 63 + b"]]}")
    assert reply.status == 400 and "NaN and Infinity are not JSON numbers" in reply.error, reply


@pytest.mark.parametrize("count", [127, 129, 0])
def test_data_count_that_disagrees_with_the_shape_is_400(server, serves, count):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 64], "data": [0.5] * count}]}
    reply = call(server.http_address, "POST", INFER, body)
    assert reply.status == 400, reply
    assert reply.error == f"input 'x': data has {count} elements where shape [2, 64] needs 128"


def test_nested_data_that_disagrees_with_the_shape_is_400(server, exported_repo, serves):
    ragged = [[0.5] * 64, [0.5] * 63]
    reply = call(server.http_address, "POST", INFER, {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 64], "data": ragged}]})
    assert reply.status == 400 and "ragged data: 63 elements in dimension 1" in reply.error, reply
    nested = MLP_X.tolist()  # nested like the shape: accepted, and right
    reply = call(server.http_address, "POST", INFER, {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 64], "data": nested}]})
    assert reply.status == 200
    assert_close(v2_outputs(reply.json()), {"probs": mlp_reference(exported_repo)})


@pytest.mark.parametrize("path", [INFER, "/v1/models/mlp:predict"])
def test_half_a_million_nested_brackets_are_400_at_once(server, serves, path):
    body = b"[" * 500_000
    if path == INFER:
        body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": ' + body
    else:
        body = b'{"instances": ' + body
    started = time.perf_counter()
    reply = call(server.http_address, "POST", path, body)
    took = time.perf_counter() - started
    assert reply.status == 400 and "not valid JSON" in reply.error, reply
    assert took < 2, took


# -- framing: Content-Type, Inference-Header-Content-Length, Content-Encoding ---------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None,
                                          "application/json; charset=utf-8"])
def test_any_content_type_with_valid_json_is_served(server, exported_repo, content_type):
    """curl -d sends application/x-www-form-urlencoded: the body is read as JSON all the same."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    reply = call(server.http_address, "POST", INFER, MLP_BODY, headers=headers)
    assert reply.status == 200, reply
    assert_close(v2_outputs(reply.json()), {"probs": mlp_reference(exported_repo)})


@pytest.mark.parametrize("value, fragment", [
    (lambda n: str(n + 1), "is larger than the body"),
    (lambda n: str(10**12), "is larger than the body"),
    (lambda n: "-3", "must be a non-negative integer"),
    (lambda n: "12abc", "must be a non-negative integer"),
    (lambda n: str(n - 5), "not valid JSON"),  # cuts the JSON header short
    (lambda n: "0", "not valid JSON"),
])
def test_inference_header_content_length_that_does_not_fit_is_400(server, serves, value, fragment):
    reply = call(server.http_address, "POST", INFER, MLP_BODY,
                 headers={"Inference-Header-Content-Length": value(len(MLP_BODY))})
    assert reply.status == 400 and fragment in reply.error, reply


def test_binary_sizes_that_disagree_with_the_body_are_400(server, exported_repo, serves):
    body, headers = _binary_body({"x": MLP_X}, None)
    for cut in (4, 1):
        reply = call(server.http_address, "POST", INFER, body[:-cut], headers=headers)
        assert reply.status == 400 and "binary_data_size add up to 512 bytes" in reply.error, reply
    reply = call(server.http_address, "POST", INFER, body + b"\0\0\0\0", headers=headers)
    assert reply.status == 400 and "516 follow the JSON header" in reply.error, reply
    reply = call(server.http_address, "POST", INFER, body)  # no header length: the whole body read as JSON
    assert reply.status == 400 and "not valid JSON" in reply.error, reply
    reply = call(server.http_address, "POST", INFER, body, headers=headers)
    assert reply.status == 200
    assert_close(v2_outputs(reply.json()), {"probs": mlp_reference(exported_repo)})


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP"])
def test_compressed_request_bodies_are_served(server, exported_repo, encoding):
    data = gzip.compress(MLP_BODY) if encoding.lower() == "gzip" else zlib.compress(MLP_BODY)
    reply = call(server.http_address, "POST", INFER, data, headers={"Content-Encoding": encoding})
    assert reply.status == 200, reply
    assert_close(v2_outputs(reply.json()), {"probs": mlp_reference(exported_repo)})
    binary, headers = _binary_body({"x": MLP_X}, None)  # the header length counts the inflated body
    reply = call(server.http_address, "POST", INFER, gzip.compress(binary) if encoding.lower() == "gzip"
                 else zlib.compress(binary), headers=dict(headers, **{"Content-Encoding": encoding}))
    assert reply.status == 200, reply
    tf = call(server.http_address, "POST", "/v1/models/mlp:predict",
              gzip.compress(json.dumps({"instances": MLP_X.tolist()}).encode()) if encoding.lower() == "gzip"
              else zlib.compress(json.dumps({"instances": MLP_X.tolist()}).encode()),
              headers={"Content-Encoding": encoding})
    assert tf.status == 200, tf
    assert_close({"probs": np.asarray(tf.json()["predictions"], np.float32)}, {"probs": mlp_reference(exported_repo)})


def test_corrupt_compressed_body_is_400(server, serves):
    data = gzip.compress(MLP_BODY)
    for broken in (data[:20], b"\x1f\x8b" + b"\0" * 30, MLP_BODY):
        reply = call(server.http_address, "POST", INFER, broken, headers={"Content-Encoding": "gzip"})
        assert reply.status == 400, reply
        assert any(w in reply.error for w in ("could not be decompressed", "truncated", "not valid JSON")), reply.error


def test_compressed_body_must_be_whole(server, serves):
    """A gzip/deflate body cut before its trailer (CRC-32 and length; Adler-32), or with bytes
    after its end, is not the body that was sent: 400, never served. A gzip body of several
    members (RFC 1952 2.2) is all of them."""
    data, wrapped = gzip.compress(MLP_BODY), zlib.compress(MLP_BODY)
    broken = {"gzip without its trailer": ("gzip", data[:-8]), "gzip without its length": ("gzip", data[:-4]),
              "gzip with bytes after it": ("gzip", data + b"JUNK"),
              "deflate without its checksum": ("deflate", wrapped[:-4]),
              "deflate with bytes after it": ("deflate", wrapped + b"JUNK")}
    members = gzip.compress(MLP_BODY[:50]) + gzip.compress(MLP_BODY[50:])
    assert gzip.decompress(members) == MLP_BODY
    want = {name: 400 for name in broken} | {"gzip of two members": 200}
    broken["gzip of two members"] = ("gzip", members)
    got = {name: call(server.http_address, "POST", INFER, body, headers={"Content-Encoding": encoding}).status
           for name, (encoding, body) in broken.items()}
    assert got == want


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
def test_unsupported_content_encoding_is_400(server, serves, encoding):
    reply = call(server.http_address, "POST", INFER, MLP_BODY, headers={"Content-Encoding": encoding})
    assert reply.status == 400, reply
    assert f"unsupported Content-Encoding '{encoding}'" in reply.error and "gzip" in reply.error


def test_gzip_bomb_is_400_at_once(small, exported_repo):
    inflated = 64 * 1024 * 1024  # 64 MiB of spaces after a valid document: 64 KiB gzipped
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * (1 << 20)
    bomb = compressor.compress(MLP_BODY) + b"".join(compressor.compress(chunk) for _ in range(inflated >> 20))
    bomb += compressor.flush()
    assert len(bomb) < LIMIT_MB * 1024 * 1024 // 4
    started = time.perf_counter()
    reply = call(small.http_address, "POST", INFER, bomb, headers={"Content-Encoding": "gzip"})
    took = time.perf_counter() - started
    assert reply.status == 400, reply
    assert f"decompresses past the server's limit of {LIMIT_MB * 1024 * 1024} bytes" in reply.error
    assert took < 2, took
    # A compressed body that inflates to just under the limit is served.
    padded = MLP_BODY + b" " * (LIMIT_MB * 1024 * 1024 - len(MLP_BODY) - 16)
    reply = call(small.http_address, "POST", INFER, gzip.compress(padded), headers={"Content-Encoding": "gzip"})
    assert reply.status == 200, reply
    assert_mlp_serves(small.http_address, exported_repo)


# -- paths and methods ---------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/v2/models"), ("POST", "/v3/models/mlp/infer"), ("POST", "/v2/models/mlp/infer/extra"),
    ("GET", "/v2/health"), ("GET", "/v2/health/started"), ("POST", "/v2/models/mlp:predict"),
    ("GET", "/v1/models"), ("GET", "/v1/models/mlp/versions"), ("POST", "/v1/models/mlp/predict"),
    ("GET", "/metrics"), ("GET", "/v2/models/mlp/versions/1/versions/1"), ("POST", "/v2/repository/models/a/b/load"),
    ("GET", "/inference.GRPCInferenceService/ModelInfer"), ("GET", "/v2//health/ready"),
])
def test_unknown_path_is_404_json_never_200(server, serves, method, path):
    reply = call(server.http_address, method, path, MLP_BODY if method == "POST" else None)
    assert reply.status == 404, (path, reply)
    assert reply.headers["content-type"] == "application/json"
    assert "no endpoint" in reply.error and "/v2" in reply.error and "/v1/models" in reply.error


@pytest.mark.parametrize("method, path, allow", [
    ("GET", INFER, "POST"), ("PUT", INFER, "POST"), ("DELETE", "/v2/models/mlp", "GET"),
    ("POST", "/v2/health/ready", "GET"), ("GET", "/v1/models/mlp:predict", "POST"),
    ("GET", "/v2/repository/index", "POST"), ("PATCH", "/v1/models/mlp/metadata", "GET"),
    ("POST", "/v2/models/mlp/versions/1/ready", "GET"),
])
def test_wrong_method_is_405_with_allow(server, serves, method, path, allow):
    reply = call(server.http_address, method, path, MLP_BODY if method in ("POST", "PUT", "PATCH") else None)
    assert reply.status == 405, reply
    assert reply.headers.get("allow") == allow
    assert f"{method} is not allowed on {path}" in reply.error and allow in reply.error


def test_head_and_options_never_run_an_inference(server, serves):
    for method in ("HEAD", "OPTIONS"):
        reply = call(server.http_address, method, INFER)
        assert reply.status == 405 and reply.headers.get("allow") == "POST", (method, reply)


@pytest.mark.parametrize("path", ["/v2/health/ready", "/v2/health/live", "/v2/models/mlp/ready"])
def test_head_answers_as_get_does(server, path):
    """RFC 9110 9.1: every general-purpose server MUST support HEAD wherever it supports GET
    (load balancers' health checks use it): GET's status, no body."""
    reply = call(server.http_address, "HEAD", path)
    assert (reply.status, reply.body) == (200, b""), reply


# -- bodies that are truncated, stalled, oversized or slow ---------------------------------------------------


def _head(path: str, length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


def test_truncated_body_then_close_does_not_hang_the_server(server, exported_repo):
    host, port = server.http_address.rsplit(":", 1)
    for _ in range(5):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(_head(INFER, len(MLP_BODY)) + MLP_BODY[: len(MLP_BODY) // 2])
        started = time.perf_counter()
        assert_mlp_serves(server.http_address, exported_repo)
        assert time.perf_counter() - started < 2


def test_a_stalled_body_does_not_block_other_requests(server, exported_repo):
    host, port = server.http_address.rsplit(":", 1)
    stalled = [socket.create_connection((host, int(port)), timeout=10) for _ in range(8)]
    try:
        for sock in stalled:
            sock.sendall(_head(INFER, len(MLP_BODY)) + MLP_BODY[:100])
        for _ in range(5):
            started = time.perf_counter()
            assert_mlp_serves(server.http_address, exported_repo)
            assert time.perf_counter() - started < 1
        # the stalled ones are still waiting for their bodies, not answered
        stalled[0].settimeout(0.2)
        with pytest.raises(socket.timeout):
            stalled[0].recv(100)
        # ... and finishing one now gets its answer
        stalled[0].settimeout(30)
        stalled[0].sendall(MLP_BODY[100:])
        reply = b""
        while b"\r\n\r\n" not in reply or len(parse_raw(reply)[2]) < int(parse_raw(reply)[1]["content-length"]):
            chunk = stalled[0].recv(65536)
            assert chunk, reply
            reply += chunk
        status, _, body = parse_raw(reply)
        assert status == 200
        assert_close(v2_outputs(json.loads(body)), {"probs": mlp_reference(exported_repo)})
    finally:
        for sock in stalled:
            sock.close()


def test_body_over_the_limit_is_413(small, exported_repo):
    limit = LIMIT_MB * 1024 * 1024
    # Declared too large: answered from the headers, before any of the body is sent.
    started = time.perf_counter()
    data = raw_exchange(small.http_address, _head(INFER, 2 * limit), timeout=10, read_all=False)
    status, headers, body = parse_raw(data)
    assert status == 413 and time.perf_counter() - started < 2
    assert json.loads(body[: int(headers["content-length"])]) == {
        "error": f"the request body is larger than the server's limit of {limit} bytes"}
    # Sent too large with http.client (the body written whole): 413 too, or the connection closed
    # under the writer once the server has answered; never a 200.
    try:
        reply = call(small.http_address, "POST", INFER, MLP_BODY + b" " * (2 * limit))
        assert reply.status == 413 and "larger than the server's limit" in reply.error, reply
    except (BrokenPipeError, ConnectionResetError):
        pass
    # Chunked, with no Content-Length to refuse early: the limit holds as the body arrives.
    connection = http.client.HTTPConnection(*small.http_address.rsplit(":", 1), timeout=30)
    try:
        chunks = (MLP_BODY + b" " * 65536 if i == 0 else b" " * 65536 for i in range(40))
        connection.request("POST", INFER, body=chunks, encode_chunked=True,
                           headers={"Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        assert response.status == 413, response.read()
        assert "larger than the server's limit" in json.loads(response.read())["error"]
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        connection.close()
    assert_mlp_serves(small.http_address, exported_repo)


def test_chunked_body_under_the_limit_is_served(small, exported_repo):
    connection = http.client.HTTPConnection(*small.http_address.rsplit(":", 1), timeout=30)
    try:
        pieces = [MLP_BODY[i : i + 100] for i in range(0, len(MLP_BODY), 100)]
        connection.request("POST", INFER, body=iter(pieces), encode_chunked=True,
                           headers={"Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        assert response.status == 200
        assert_close(v2_outputs(json.loads(response.read())), {"probs": mlp_reference(exported_repo)})
    finally:
        connection.close()


def test_expect_100_continue_is_honoured(server, exported_repo):
    """curl sends `Expect: 100-continue` before larger bodies and waits for the interim answer."""
    host, port = server.http_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(_head(INFER, len(MLP_BODY), "Expect: 100-continue\r\n"))
        interim = sock.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        sock.sendall(MLP_BODY)
        reply = b""
        while b"\r\n\r\n" not in reply or len(parse_raw(reply)[2]) < int(parse_raw(reply)[1]["content-length"]):
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    status, _, body = parse_raw(reply)
    assert status == 200
    assert_close(v2_outputs(json.loads(body)), {"probs": mlp_reference(exported_repo)})


def test_a_slow_two_mebibyte_body_does_not_block_others(server, exported_repo):
    padded = MLP_BODY + b" " * (2 * 1024 * 1024)  # valid JSON: trailing whitespace
    host, port = server.http_address.rsplit(":", 1)
    answer: list = []

    def send_slowly():
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(_head(INFER, len(padded)))
            step = len(padded) // 20
            for i in range(0, len(padded), step):
                sock.sendall(padded[i : i + step])
                time.sleep(0.1)
            reply = b""
            while b"\r\n\r\n" not in reply or len(parse_raw(reply)[2]) < int(parse_raw(reply)[1]["content-length"]):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            answer.append(reply)

    sender = threading.Thread(target=send_slowly)
    sender.start()
    latencies = []
    while sender.is_alive():
        started = time.perf_counter()
        assert_mlp_serves(server.http_address, exported_repo)
        latencies.append(time.perf_counter() - started)
    sender.join()
    assert len(latencies) >= 5 and max(latencies) < 0.5, latencies
    status, _, body = parse_raw(answer[0])
    assert status == 200
    assert_close(v2_outputs(json.loads(body)), {"probs": mlp_reference(exported_repo)})


def test_clients_that_leave_before_the_answer_cost_nothing_else(server, exported_repo, caplog):
    """The client closes while its (large) inference runs: that call is dropped, nothing is logged
    as an error, and the next requests are answered."""
    body = json.dumps(v2_body(sample_inputs(exported_repo, "dual_camera", 4))).encode()
    host, port = server.http_address.rsplit(":", 1)
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(_head("/v2/models/dual_camera/infer", len(body)) + body)
            time.sleep(0.05)
    for _ in range(3):
        assert_mlp_serves(server.http_address, exported_repo)
    time.sleep(0.5)  # the dropped calls end meanwhile
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert_mlp_serves(server.http_address, exported_repo)


def test_garbage_request_line_gets_400_and_the_server_goes_on(server, exported_repo):
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40,  # a TLS ClientHello
                 b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                 b"POST /v2/models/mlp/infer HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n12345"):
        data = raw_exchange(server.http_address, junk, timeout=5)
        assert not data or data.startswith(b"HTTP/1.1 4") or data.startswith(b"HTTP/1.0 4"), data[:100]
    assert_mlp_serves(server.http_address, exported_repo)


# -- keep-alive -------------------------------------------------------------------------------------


def test_two_hundred_requests_on_one_keep_alive_connection(server, exported_repo):
    host, port = server.http_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    want = run_onnx(exported_repo, "mlp", {"x": MLP_X})["probs"]
    try:
        connection.connect()
        sock = connection.sock
        for i in range(200):
            if i % 4 == 3:  # errors keep the connection open too
                connection.request("POST", "/v2/models/nope/infer", MLP_BODY)
                response = connection.getresponse()
                assert response.status == 404 and "unknown model" in json.loads(response.read())["error"]
            elif i % 4 == 2:
                connection.request("GET", "/v2/health/ready")
                response = connection.getresponse()
                assert response.status == 200 and response.read() == b""
            else:
                connection.request("POST", INFER, MLP_BODY, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                assert response.status == 200
                assert response.getheader("connection", "").lower() != "close"
                assert_close(v2_outputs(json.loads(response.read())), {"probs": want})
            assert connection.sock is sock, f"reconnected at request {i}"
    finally:
        connection.close()


def test_json_tensors_past_the_json_limit_are_refused_with_the_binary_way(server, exported_repo):
    """JSON parses slowly holding the GIL: past 8 MiB of it a request is refused before parsing,
    naming the binary tensor extension; the same tensors sent binary are served."""
    rng = np.random.default_rng(5)
    pair = {side: rng.random((1, 2000, 128), dtype=np.float32) for side in ("left", "right")}  # ~10 MiB of JSON
    body = json.dumps(v2_body(pair)).encode()
    assert len(body) > 8 << 20
    path = "/v2/models/similarity/infer"
    reply = call(server.http_address, "POST", path, body)
    assert reply.status == 400 and "limit for JSON tensors" in reply.error and "binary" in reply.error, reply
    header = json.dumps({"inputs": [{"name": side, "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}} for side, x in pair.items()]})
    reply = call(server.http_address, "POST", path, header.encode() + b"".join(x.tobytes() for x in pair.values()),
                 headers={"Inference-Header-Content-Length": str(len(header))})
    assert reply.status == 200, reply
    rows = {"instances": [{side: x[0].tolist() for side, x in pair.items()}]}
    reply = call(server.http_address, "POST", "/v1/models/similarity:predict", rows)
    assert reply.status == 400 and "limit for JSON tensors" in reply.error, reply
    assert_mlp_serves(server.http_address, exported_repo)
