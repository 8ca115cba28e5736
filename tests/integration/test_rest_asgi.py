"""The HTTP transport of a pure-Python install (serving/transports/asgi.py, uvicorn) end to end.

A real AsgiServer on port 0, on an event loop in its own thread, with a small real handler that
echoes what reached it; real clients (http.client, raw sockets, ssl) on the other side.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import logging
import shutil
import signal
import socket
import ssl
import threading
import time

import pytest

pytest.importorskip("uvicorn")

from mimo.serving.transports.asgi import AsgiServer, split_address  # noqa: E402
from mimo.serving.transports.base import HttpRequest, HttpResponse  # noqa: E402
from mimo.serving.transports.tls import TlsMaterial  # noqa: E402

pytestmark = pytest.mark.timeout(60)

LIMIT = 4096


class Echo:
    """The handler: answers what arrived; /boom raises, /slow/<s> takes s seconds."""

    def __init__(self):
        self.started = threading.Event()

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/boom"):
            raise RuntimeError("secret detail that must not reach the client")
        if request.path.startswith("/slow/"):
            self.started.set()
            await asyncio.sleep(float(request.path.rsplit("/", 1)[1]))
        body = json.dumps({
            "method": request.method, "path": request.path, "length": len(request.body),
            "sha256": hashlib.sha256(request.body).hexdigest(), "peer": request.peer,
            "headers": [list(pair) for pair in request.headers],
        }).encode()
        return HttpResponse(201 if request.method == "PUT" else 200, body,
                            [("content-type", "application/json"), ("X-Echo", "yes")])


class Served:
    """An AsgiServer started on a loop running in a thread."""

    def __init__(self, address="127.0.0.1:0", tls=None, **options):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.handler = Echo()
        self.server = AsgiServer(max_message_bytes=LIMIT, **options)
        self.port = self.server.listen_http(address, tls, self.handler)
        self.call(self.server.start())

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace=1.0):
        self.call(self.server.stop(grace))

    def close(self):
        try:
            self.stop(0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()

    def connection(self, timeout=10) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)


@pytest.fixture
def served():
    s = Served()
    yield s
    s.close()


def _raw(port: int, head: bytes, timeout=5.0) -> bytes:
    """Send `head` and read until the server closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except socket.timeout:
            pass
        return data


def test_get_answers_the_handlers_status_body_and_headers(served):
    conn = served.connection()
    conn.request("GET", "/v2/models/a%20b/ready?x=1&y=%2F", headers={"X-Test": "Yes", "Accept": "*/*"})
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 200
    assert response.getheader("content-type") == "application/json"
    assert response.getheader("x-echo") == "yes"
    assert int(response.getheader("content-length")) == len(json.dumps(body).encode()) or response.length == 0
    assert response.getheader("server") is None  # uvicorn's own header is off
    assert body["method"] == "GET" and body["path"] == "/v2/models/a%20b/ready?x=1&y=%2F"
    assert ["x-test", "Yes"] in body["headers"] and all(k == k.lower() for k, _ in body["headers"])
    assert body["peer"].startswith("ipv4:127.0.0.1:")
    # Keep-alive: the same connection answers again, with the handler's other status.
    conn.request("PUT", "/again", body=b"x")
    response = conn.getresponse()
    assert response.status == 201 and json.loads(response.read())["path"] == "/again"
    conn.close()


def test_post_body_arrives_whole_in_one_piece_or_chunked(served):
    payload = bytes(range(256)) * 15  # 3840 bytes, within the limit
    conn = served.connection()
    conn.request("POST", "/echo", body=payload, headers={"Content-Type": "application/octet-stream"})
    got = json.loads(conn.getresponse().read())
    assert got["length"] == len(payload) and got["sha256"] == hashlib.sha256(payload).hexdigest()
    # Chunked, in several pieces with pauses: assembled in order.
    pieces = [payload[i:i + 1000] for i in range(0, len(payload), 1000)]

    def slowly():
        for piece in pieces:
            time.sleep(0.05)
            yield piece

    conn.request("POST", "/echo", body=slowly(), encode_chunked=True)
    got = json.loads(conn.getresponse().read())
    assert got["length"] == len(payload) and got["sha256"] == hashlib.sha256(payload).hexdigest()
    conn.close()


def test_a_body_over_the_limit_is_413_and_the_server_still_answers(served):
    expected = {"error": f"the request body is larger than the server's limit of {LIMIT} bytes"}
    # Declared length over the limit, body sent.
    conn = served.connection()
    conn.request("POST", "/echo", body=b"x" * (LIMIT + 1))
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read()) == expected
    assert response.getheader("content-type") == "application/json"
    conn.close()
    # No declared length (chunked): refused once the bytes received pass the limit.
    conn = served.connection()
    conn.request("POST", "/echo", body=iter([b"y" * 3000, b"y" * 3000]), encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read()) == expected
    conn.close()
    # Exactly the limit is fine, and the server goes on answering.
    conn = served.connection()
    conn.request("POST", "/echo", body=b"z" * LIMIT)
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["length"] == LIMIT
    conn.close()


def test_content_length_over_the_limit_is_refused_before_the_body_is_sent(served):
    start = time.monotonic()
    answer = _raw(served.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"larger than the server's limit" in answer and time.monotonic() - start < 3
    # With Expect: 100-continue the client is told no without being asked for the body.
    answer = _raw(served.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                               b"Expect: 100-continue\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer, answer
    # ... and asked for it when it fits.
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"abc")
        answer = b""
        while not answer.endswith(b"}"):  # head and body may come in two pieces
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"length": 3' in answer


def _guarded():
    from mimo.serving.transports import asgi

    if asgi._guarded_httptools() is None:
        pytest.skip("httptools is not installed (h11 bounds the head itself)")
    return asgi


def test_a_request_head_over_the_limit_is_431_whole_or_unfinished(served):
    asgi = _guarded()
    limit = asgi.MAX_HEAD_BYTES
    # Within the limit: served.
    answer = _raw(served.port, b"GET /h HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * (limit - 200)
                  + b"\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    # A whole head over it, in one piece.
    answer = _raw(served.port, b"GET /h HTTP/1.1\r\nHost: x\r\n" + b"X-B: bbbbbbbb\r\n" * (limit // 10) + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ") and b"request head is larger" in answer, answer[:100]
    # One header that never ends: refused once its bytes pass the limit, not gathered forever.
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        sock.sendall(b"GET /h HTTP/1.1\r\nHost: x\r\nX-C: ")
        answer = b""
        try:
            for _ in range(64):
                sock.sendall(b"c" * 1024)
                time.sleep(0.002)
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:  # the server closed while this was still sending
            pass
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    conn = served.connection()  # and the server goes on
    conn.request("GET", "/after")
    assert conn.getresponse().status == 200
    conn.close()


def test_a_head_that_does_not_arrive_in_time_closes_the_connection(monkeypatch):
    asgi = _guarded()
    monkeypatch.setattr(asgi, "HEAD_TIMEOUT", 0.5)
    served = Served()
    try:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
            sock.sendall(b"GET /h HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            assert sock.recv(100) == b""  # closed
        assert 0.4 < time.monotonic() - start < 3
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
            assert sock.recv(100) == b""  # nothing sent at all: closed too
        conn = served.connection()  # a prompt client is served, and kept alive past the head timeout
        conn.request("GET", "/prompt")
        assert conn.getresponse().read()
        time.sleep(0.7)
        conn.request("GET", "/again")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        served.close()


def test_a_body_that_does_not_arrive_in_time_is_408():
    served = Served(body_timeout=0.5)
    try:
        start = time.monotonic()
        answer = _raw(served.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this")
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"did not arrive within 0.5 s" in answer and time.monotonic() - start < 3
    finally:
        served.close()


def test_a_handler_exception_is_500_json_without_a_traceback(served, caplog):
    with caplog.at_level(logging.ERROR, logger="mimo.serving"):
        conn = served.connection()
        conn.request("GET", "/boom")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 500
        assert json.loads(body) == {"error": "internal error"}
        assert b"Traceback" not in body and b"secret" not in body
        conn.request("GET", "/fine")  # the connection survives
        assert conn.getresponse().status == 200
        conn.close()
    assert any(r.exc_info and "secret" in str(r.exc_info[1]) for r in caplog.records)


def _slow_request(served, seconds: float) -> tuple[threading.Thread, dict]:
    """A GET the handler takes `seconds` to answer, started in a thread; returns once it runs."""
    result = {}

    def slow():
        conn = served.connection()
        conn.request("GET", f"/slow/{seconds:g}")
        response = conn.getresponse()
        result["status"], result["body"] = response.status, response.read()

    client = threading.Thread(target=slow)
    client.start()
    assert served.handler.started.wait(5)
    return client, result


def test_stop_lets_a_request_in_progress_finish_within_grace():
    served = Served()
    try:
        client, result = _slow_request(served, 1)
        start = time.monotonic()
        served.stop(grace=10)
        took = time.monotonic() - start
        client.join(5)
        assert result["status"] == 200 and json.loads(result["body"])["path"] == "/slow/1"
        assert took < 3  # it ended when the request did, not at the end of the grace period
        with pytest.raises(OSError):  # no longer listening
            socket.create_connection(("127.0.0.1", served.port), timeout=2).close()
    finally:
        served.close()


def test_stop_answers_503_to_what_outlasts_the_grace_period():
    served = Served()
    try:
        client, result = _slow_request(served, 30)
        start = time.monotonic()
        served.stop(grace=0.3)
        assert time.monotonic() - start < 3
        client.join(5)
        assert result["status"] == 503
        assert json.loads(result["body"]) == {"error": "the server is shutting down"}
    finally:
        served.close()


def test_serving_on_the_main_thread_leaves_the_signal_handlers_alone():
    got = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: got.append(sig))
    try:
        async def main():
            before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            server = AsgiServer(max_message_bytes=LIMIT)
            port = server.listen_http("127.0.0.1:0", None, Echo())
            await server.start()
            serving = {sig: signal.getsignal(sig) for sig in before}
            signal.raise_signal(signal.SIGTERM)  # the host's handler, not uvicorn's, gets it
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /main HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
            await server.stop(1)
            after = {sig: signal.getsignal(sig) for sig in before}
            return before, serving, after, answer

        before, serving, after, answer = asyncio.run(main())
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert serving == before and after == before
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_port_is_shared_with_reuseport_and_addresses_parse():
    assert split_address("[::1]:8000") == ("::1", 8000)
    assert split_address("0.0.0.0:0") == ("0.0.0.0", 0)
    assert split_address(":9") == ("", 9)
    with pytest.raises(OSError):
        split_address("localhost")
    first = Served()
    try:
        second = Served(f"127.0.0.1:{first.port}")  # --workers N: one port, several processes
        try:
            assert second.port == first.port
        finally:
            second.close()
    finally:
        first.close()


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        served = Served("[::1]:0")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        conn = http.client.HTTPConnection("::1", served.port, timeout=10)
        conn.request("GET", "/v6")
        body = json.loads(conn.getresponse().read())
        assert body["peer"].startswith("ipv6:[::1]:")
        conn.close()
    finally:
        served.close()


def test_tls_and_mutual_tls(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("the test PKI is made with the openssl CLI")
    from client_support import make_pki

    pki = make_pki(tmp_path)
    key, cert, ca = (pki["server_key"].read_bytes(), pki["server"].read_bytes(), pki["ca"].read_bytes())
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    served = Served(tls=TlsMaterial(key, cert, None))
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", served.port, timeout=10, context=context)
        conn.request("GET", "/tls")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        served.close()
    served = Served(tls=TlsMaterial(key, cert, ca))
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):  # no client certificate: refused
            conn = http.client.HTTPSConnection("127.0.0.1", served.port, timeout=10, context=context)
            conn.request("GET", "/tls")
            conn.getresponse().read()
        context.load_cert_chain(str(pki["client"]), str(pki["client_key"]))
        conn = http.client.HTTPSConnection("127.0.0.1", served.port, timeout=10, context=context)
        conn.request("GET", "/mtls")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        served.close()


def test_a_pure_install_serves_rest_on_uvicorn_with_the_same_answers(exported_repo, server, monkeypatch):
    """Without the native transport (monkeypatched away, as in a pure wheel), `mimo serve` still
    answers KServe v2 REST, on uvicorn, with the native server's answers."""
    import numpy as np
    import tritonclient.http as httpclient

    from helpers import start_server
    from mimo.serving.transports import native

    monkeypatch.setattr(native, "available", lambda: False)  # not `native = None`: the session server uses it
    pure = start_server(exported_repo, frontend="python")
    try:
        assert type(pure.server._http).__name__ == "AsgiServer"
        x = np.random.default_rng(3).random((3, 64), dtype=np.float32)
        answers = []
        for address in (pure.http_address, server.http_address):
            client = httpclient.InferenceServerClient(address)
            assert client.is_server_ready()
            tensor = httpclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            answers.append(client.infer("mlp", [tensor]).as_numpy("probs"))
        np.testing.assert_array_equal(answers[0], answers[1])
    finally:
        pure.stop()
