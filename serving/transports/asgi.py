"""The HTTP transport of a pure-Python install: the HTTP port on uvicorn, on the server's own loop.

When the native transport is not built, HTTP (KServe v2 REST, TF Serving REST) is served here:
uvicorn's HTTP/1.1 protocol (httptools when installed, else h11) on the event loop that also runs
grpc.aio and the core, so handlers run exactly as under the native transport. One small ASGI
function turns each request into an `HttpRequest`, with the native transport's rules: a body is
bounded by `max_message_bytes` (413 as soon as Content-Length or the bytes received pass it, the
rest never read into memory) and must arrive within 30 s (408); a handler that raises answers
500 without a traceback. The socket is bound here (SO_REUSEPORT, so `--workers N` processes share
the port; port 0 picks one, known before `start()`), and uvicorn never touches the host
process's signal handlers or logging configuration.

Unlike the native transport this port speaks HTTP/1.1 only (no h2c, no ALPN h2).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import socket
import ssl
import tempfile
import time
from urllib.parse import quote

from mimo.serving.transports.base import HttpHandler, HttpRequest, HttpResponse
from mimo.serving.transports.tls import TlsMaterial

try:
    import uvicorn
except ImportError as exc:  # the client-only install
    uvicorn = None
    IMPORT_ERROR = str(exc)
else:
    IMPORT_ERROR = ""

log = logging.getLogger("mimo.serving")

BODY_TIMEOUT = 30.0  # a whole request body must arrive within this (seconds), as on the native transport
KEEP_ALIVE_SECONDS = 60  # an idle keep-alive connection is closed after this
BACKLOG = 4096
# A request's head (request line and headers) must fit in this and arrive within that, as on the
# native transport: uvicorn's httptools protocol bounds neither (h11 bounds the size, at 16 KiB).
MAX_HEAD_BYTES = 16 << 10
HEAD_TIMEOUT = 10.0
HOW_TO_INSTALL = "pip install 'mimo-serve[server]' (uvicorn), or build the native transport"

_JSON = ("content-type", "application/json")
_CLOSE = ("connection", "close")
# What uvicorn refuses to write (it would drop the connection instead of answering).
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY = frozenset({204, 304})


def available() -> bool:
    return uvicorn is not None


if uvicorn is not None:

    class _Server(uvicorn.Server):
        """uvicorn's server, minus its signal handling: SIGINT and SIGTERM belong to the host
        process (uvicorn takes them over while serving when it runs in the main thread)."""

        @contextlib.contextmanager
        def capture_signals(self):  # uvicorn >= 0.29
            yield

        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            pass

        sweep = None  # called on every tick: the bodies that are late

        async def on_tick(self, counter: int) -> bool:
            if self.sweep is not None:  # uvicorn ticks every 0.1 s
                self.sweep()
            if counter % 10 == 0:
                self.close_slow_heads()
            return await super().on_tick(counter)

        def close_slow_heads(self) -> None:
            """Close the connections whose request head has taken longer than HEAD_TIMEOUT."""
            deadline = time.monotonic() - HEAD_TIMEOUT
            for connection in list(self.server_state.connections):
                since = getattr(connection, "head_since", None)
                if since is not None and since < deadline and not connection.transport.is_closing():
                    connection.transport.close()

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if not self.ready.done():
                self.ready.set_result(None)


def _head_too_large() -> bytes:
    body = b'{"error": "the request head is larger than the server\'s limit of %d bytes"}' % MAX_HEAD_BYTES
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


@functools.lru_cache(maxsize=None)
def _guarded_httptools():
    """uvicorn's httptools protocol with a bound on each request head: its size (MAX_HEAD_BYTES,
    431; httptools itself gathers a header of any size) and the time it may take (HEAD_TIMEOUT,
    then the server's once-a-second sweep closes the connection: no timer per request); None
    without httptools. The hooks are asyncio.Protocol's methods and httptools' parser callbacks,
    each passed on to uvicorn's own."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    refusal = _head_too_large()

    class GuardedHttpTools(HttpToolsProtocol):
        head_since: float | None = None  # when the head being read began (monotonic), or None
        _head_open = True  # between requests, or inside a head
        _head_reads = 0  # the open head's reads that ended with it unfinished (a header of any size)
        _heads = 0  # heads completed on this connection
        _refused = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.head_since = time.monotonic()  # the first request must come within HEAD_TIMEOUT

        def data_received(self, data: bytes) -> None:
            open_before, heads = self._head_open, self._heads
            super().data_received(data)
            # A read that began and ended inside the same unfinished head is all head.
            if open_before and self._head_open and self._heads == heads and not self._refused:
                self._head_reads += len(data)
                if self._head_reads > MAX_HEAD_BYTES and not self.transport.is_closing():
                    self._refused = True
                    self.transport.write(refusal)
                    self.transport.close()

        def on_message_begin(self) -> None:
            if self.head_since is None:
                self.head_since = time.monotonic()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self.head_since = None
            size = len(self.url)
            for name, value in self.headers:
                size += len(name) + len(value) + 4
            if size > MAX_HEAD_BYTES:
                self._refused = True
                raise ValueError("request head too large")  # the parser fails: send_400_response
            self._head_open, self._heads = False, self._heads + 1
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._head_open, self._head_reads = True, 0
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:
            if not self._refused:
                return super().send_400_response(msg)
            self.transport.write(refusal)
            self.transport.close()

    return GuardedHttpTools


def _protocol(http: str):
    """What uvicorn's `http` option gets: httptools with the head guard where it would be used."""
    if http in ("auto", "httptools"):
        guarded = _guarded_httptools()
        if guarded is not None:
            return guarded
        return "h11" if http == "auto" else http
    return http


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    pass


def _error(status: int, message: str, close: bool = True) -> HttpResponse:
    body = ('{"error": "%s"}' % message.replace("\\", "\\\\").replace('"', '\\"')).encode()
    return HttpResponse(status, body, [_JSON, _CLOSE] if close else [_JSON])


def split_address(address: str) -> tuple[str, int]:
    """("host", port) from "host:port", "[v6]:port" or ":port" (every interface)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise OSError(f"could not listen on {address}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def bind(address: str) -> socket.socket:
    """A listening, non-blocking socket on `address` with SO_REUSEADDR and SO_REUSEPORT; the first
    of the host's addresses that binds (as the native transport does)."""
    host, port = split_address(address)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"could not listen on {address}: {exc}") from None
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)  # connections made before start() wait in the backlog
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise OSError(f"could not listen on {address}: {last or 'no address'}")


def _peer(client) -> str:
    """The client as the native transport names it: "ipv4:1.2.3.4:5" or "ipv6:[::1]:5"."""
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


class AsgiServer:
    """An HTTP transport (transports/base.py) on uvicorn, running on the current event loop."""

    def __init__(self, *, max_message_bytes: int, body_timeout: float = BODY_TIMEOUT,
                 keep_alive: int = KEEP_ALIVE_SECONDS, http: str = "auto"):
        if uvicorn is None:
            raise ImportError(f"HTTP without the native transport needs uvicorn ({IMPORT_ERROR}): {HOW_TO_INSTALL}")
        self._limit = max_message_bytes
        self._body_timeout = body_timeout
        self._keep_alive = keep_alive
        self._http = http  # "auto": httptools when installed, else h11
        self._too_large = _error(413, f"the request body is larger than the server's limit of {max_message_bytes} bytes")
        self._too_slow = _error(408, f"the request body did not arrive within {body_timeout:g} s")
        self._handler: HttpHandler | None = None
        self._config = None
        self._sock: socket.socket | None = None
        self._server = None
        self._task: asyncio.Task | None = None
        self._stopped: asyncio.Event | None = None
        # Requests reading their body, and when they must be done: a sweep on uvicorn's tick
        # cancels the late ones, rather than a timer per request (asyncio.timeout: ~10 us each).
        self._reading: dict[asyncio.Task, float] = {}
        self._late: set[asyncio.Task] = set()

    # -- the transport interface --------------------------------------------------------------

    def listen_http(self, address: str, tls: TlsMaterial | None, handler: HttpHandler) -> int:
        """Bind `address` (host:port; port 0 picks one) and return the port; served from start()."""
        if self._sock is not None:
            raise RuntimeError("the ASGI server listens for HTTP on one address")
        sock = bind(address)
        try:
            self._config = self._load_config(sock, tls)
        except BaseException:
            sock.close()
            raise
        self._sock, self._handler = sock, handler
        return sock.getsockname()[1]

    async def start(self) -> None:
        if self._sock is None:
            raise RuntimeError("no port: call listen_http first")
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = server = _Server(self._config)
        server.sweep = self._cancel_late_bodies
        server.ready = loop.create_future()
        self._task = loop.create_task(server.serve(sockets=[self._sock]), name="mimo-http-asgi")
        await asyncio.wait([server.ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not server.ready.done():  # serve() ended before listening: its error, if it has one
            self._task.result()
            raise OSError("the HTTP server stopped while starting")

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, let requests in progress finish for `grace` seconds, cancel the rest."""
        server, task = self._server, self._task
        if server is None:
            if self._sock is not None:
                self._sock.close()
            return
        # A floor, so that idle keep-alive connections (closed at once) are not reported as
        # cancelled requests when grace is 0.
        grace = max(0.05, float(grace or 0))
        server.config.timeout_graceful_shutdown = grace
        server.should_exit = True  # seen within 0.1 s by uvicorn's main loop
        try:
            await asyncio.wait_for(asyncio.shield(task), grace + 5.0)
        except asyncio.TimeoutError:  # pragma: no cover - uvicorn's shutdown itself is bounded
            server.force_exit = True
            task.cancel()
        except Exception:  # noqa: BLE001 - stopping goes on whatever serve() ended with
            log.exception("the HTTP server failed while stopping")
        # Requests cancelled at the deadline answer 503 on their way out; then nothing stays open.
        leftovers = list(server.server_state.tasks)
        if leftovers:
            await asyncio.wait(leftovers, timeout=1.0)
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
        self._stopped.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        if self._stopped is None:
            return True
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # -- uvicorn ------------------------------------------------------------------------------

    def _load_config(self, sock: socket.socket, tls: TlsMaterial | None):
        host, port = sock.getsockname()[:2]
        options = dict(
            host=host, port=port, loop="none", http=_protocol(self._http), ws="none", lifespan="off",
            interface="asgi3",
            log_config=None, log_level="warning", access_log=False,  # the host's logging, untouched
            proxy_headers=False,  # the peer is the socket's, as on the native transport
            server_header=False, timeout_keep_alive=self._keep_alive, backlog=BACKLOG,
            limit_concurrency=None, timeout_graceful_shutdown=None,
        )
        if tls is None:
            config = uvicorn.Config(self._app, **options)
            config.load()
            return config
        # uvicorn reads TLS material from files: private ones, gone once the context is built.
        folder = tempfile.mkdtemp(prefix="mimo-tls-")  # mode 0700
        try:
            key, cert = os.path.join(folder, "key.pem"), os.path.join(folder, "cert.pem")
            _write_private(key, tls.key)
            _write_private(cert, tls.cert)
            options.update(ssl_keyfile=key, ssl_certfile=cert)
            if tls.client_ca:
                ca = os.path.join(folder, "client_ca.pem")
                _write_private(ca, tls.client_ca)
                options.update(ssl_ca_certs=ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
            config = uvicorn.Config(self._app, **options)
            try:
                config.load()  # builds the SSL context
            except ssl.SSLError as exc:
                raise OSError(f"TLS: {exc}") from None
            return config
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- the ASGI application -----------------------------------------------------------------

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan is off and websockets are not served
            return
        limit = self._limit
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:  # refused before a byte of the body is read
                    await self._send(send, scope, self._too_large)
                    return
        task = asyncio.current_task()
        self._reading[task] = time.monotonic() + self._body_timeout
        try:
            body = await self._chunks(receive, limit)
        except asyncio.CancelledError:
            if task not in self._late:  # the server is stopping
                await self._send(send, scope, _error(503, "the server is shutting down"))
                return
            self._late.discard(task)
            if hasattr(task, "uncancel"):
                task.uncancel()
            await self._send(send, scope, self._too_slow)
            return
        except _TooLarge:
            await self._send(send, scope, self._too_large)
            return
        except _Gone:  # the client left before sending its whole body
            return
        finally:
            self._reading.pop(task, None)
        raw_path = scope.get("raw_path") or quote(scope["path"]).encode()
        query = scope.get("query_string")
        target = (raw_path + b"?" + query if query else raw_path).decode("latin-1")
        headers = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"])
        request = HttpRequest(scope["method"], target, headers, body, _peer(scope.get("client")))
        try:
            response = await self._handler(request)
            if not isinstance(response, HttpResponse):
                raise TypeError(f"the HTTP handler returned {type(response).__name__}, not an HttpResponse")
        except asyncio.CancelledError:  # the server is stopping and the grace period is over
            response = _error(503, "the server is shutting down")
        except Exception:  # noqa: BLE001 - the handler answers its own errors; this is a bug
            log.exception("unexpected error answering HTTP %s", scope["method"])
            response = HttpResponse(500, b'{"error": "internal error"}', [_JSON])
        await self._send(send, scope, response)

    def _cancel_late_bodies(self) -> None:
        if not self._reading:
            return
        now = time.monotonic()
        for task, deadline in list(self._reading.items()):
            if deadline < now:
                del self._reading[task]
                self._late.add(task)
                task.cancel()

    @staticmethod
    async def _chunks(receive, limit: int) -> bytes:
        message = await receive()
        if message["type"] != "http.request":
            raise _Gone
        body = message.get("body", b"")
        if not message.get("more_body", False):  # the usual case: the body came with the headers
            if len(body) > limit:
                raise _TooLarge
            return body
        chunks, size = [body], len(body)
        while True:
            if size > limit:
                raise _TooLarge
            message = await receive()
            if message["type"] != "http.request":
                raise _Gone
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                if size > limit:
                    raise _TooLarge
                return b"".join(chunks)

    @staticmethod
    async def _send(send, scope, response: HttpResponse) -> None:
        status, body = response.status, bytes(response.body)
        if not 200 <= status <= 599:  # informational statuses are not final answers
            log.error("the HTTP handler answered status %r: 500 instead", status)
            status, body, pairs = 500, b'{"error": "internal error"}', [_JSON]
        else:
            pairs = response.headers
        headers, has_length = [], False
        for name, value in pairs:
            name, value = name.lower().encode("latin-1", "replace"), value.encode()
            if _BAD_NAME.search(name) or _BAD_VALUE.search(value):
                continue  # dropped, as the native transport drops what HTTP cannot carry
            if name == b"content-length":
                if has_length or status in _NO_BODY:
                    continue
                has_length = True
                if scope["method"] != "HEAD":  # a HEAD answer may announce the length of a GET's body
                    value = str(len(body)).encode()
            headers.append((name, value))
        if status in _NO_BODY:
            body = b""
        elif not has_length:
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
