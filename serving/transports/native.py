"""The native frontend: grpc.aio.Server's interface over mimo's Rust transport.

grpc.aio spends about 330 us of CPU per unary call in its own machinery (bench/README.md). The
transport (native/, Rust: tokio, hyper, h2, tonic, rustls; built by `pip install` through
setuptools-rust) terminates HTTP/2 and gRPC in its own threads and hands this module (method,
metadata, request bytes) events in batches, woken through one file descriptor on the event loop. Here they run through the same servicers,
interceptors, codec and error mapping as under grpc.aio: the services are registered on this
object exactly as on a grpc.aio server, so the server assembly does not care which one it has.

The bulk path: a front end may take a unary method's calls in bulk (`add_bulk_unary`). Every call
of that method one wake-up brought then goes to its handler in one synchronous call, as BulkCall
objects it answers when it can (here, when the request's batch has run), with no asyncio task,
interceptor coroutine or servicer coroutine per call. Interceptors that can check a call without a
coroutine (a `check(method, metadata)` that raises a ServingError) guard it; with any other
interceptor the method goes the task path. A streaming method may go the same way
(`add_bulk_stream`): its messages of one wake-up go to the handler together, as payloads of a
BulkStream that sends the answers in request order.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import os
import time
from typing import NamedTuple

import grpc

from mimo.protos.codec import ZERO_COPY_MIN_BYTES
from mimo.serving.core.errors import NO_REQUEST_MESSAGE, ServingError
from mimo.serving.frontends.grpc_status import GRPC_CODES, parse_request
from mimo.serving.transports.base import HttpHandler, HttpRequest, HttpResponse
from mimo.serving.transports.tls import TlsMaterial

try:
    from mimo.serving import _transport as native
except ImportError as exc:  # installed without a Rust toolchain: the pure package, served on grpc.aio
    native = None
    IMPORT_ERROR = str(exc)
else:
    IMPORT_ERROR = ""

log = logging.getLogger("mimo.serving")

STREAM_WINDOW = 128  # request messages a stream may have read ahead of its handler
# The transport's own threads (tokio workers): HTTP/2 for tens of thousands of calls a second
# each; more only add hand-offs on a busy core. MIMO_TRANSPORT_THREADS overrides.
TRANSPORT_THREADS = int(os.environ.get("MIMO_TRANSPORT_THREADS", "2"))
# The events that carry a request message (a Payload when large, see ZERO_COPY_MIN_BYTES).
_REQUESTS = (native.UNARY, native.MESSAGE) if native is not None else ()
HOW_TO_BUILD = "reinstall with a Rust toolchain on PATH (pip install ., or make install)"


def available() -> bool:
    return native is not None


def _code(status: grpc.StatusCode) -> int:
    return status.value[0]


def _deadline(timeout: float) -> float | None:
    """A call's deadline (time.monotonic() seconds) from the transport's timeout (-1: none)."""
    return time.monotonic() + timeout if timeout >= 0 else None


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class _Details(NamedTuple):
    """grpc.HandlerCallDetails, as interceptors and generic handlers read it."""

    method: str
    invocation_metadata: tuple


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details


class NativeContext:
    """The parts of grpc.aio.ServicerContext that servicers use."""

    __slots__ = ("_metadata", "_deadline", "_peer", "_code", "_details", "_cancelled", "_writer", "_requests")

    def __init__(self, metadata: tuple, timeout: float, peer: str):
        self._metadata = metadata
        self._deadline = _deadline(timeout)
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._cancelled = False
        self._writer = None  # streaming responses: handlers may write through the context
        self._requests: _RequestStream | None = None  # ... and read through it

    async def write(self, message) -> None:
        if self._writer is None:
            raise RuntimeError("context.write() on a call without a response stream")
        await self._writer(message)

    async def read(self):
        if self._requests is None:
            raise RuntimeError("context.read() on a call without a request stream")
        return await anext(self._requests, grpc.aio.EOF)

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def time_remaining(self) -> float | None:
        return _remaining(self._deadline)

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        raise _Abort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self):
        return self._code

    def details(self) -> str:
        return self._details

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._cancelled

    def set_trailing_metadata(self, metadata) -> None:
        pass  # nothing of mimo's sends trailing metadata

    async def send_initial_metadata(self, metadata) -> None:
        pass


class _BulkItem:
    """A call on the bulk path, answered once: by its handler, or not at all if the client goes
    away first (then `on_cancel`, the handler's, hears of it)."""

    __slots__ = ("_server", "call", "over", "on_cancel")

    def __init__(self, server: "NativeServer", call: int):
        self._server = server
        self.call = call
        self.over = False  # answered, or the client went away
        self.on_cancel = None

    def _end(self) -> bool:
        """True once: the first answer goes out, any later one is dropped."""
        if self.over:
            return False
        self.over = True
        self._server._bulk.pop(self.call, None)
        # on_cancel is bound to the handler's answer, which holds this call: let go of it so the
        # call's objects (its request bytes among them) are freed now, not by a later gc pass.
        self.on_cancel = None
        return True

    def _gone(self) -> None:
        if not self.over:
            self.over = True
            cancel, self.on_cancel = self.on_cancel, None
            if cancel is not None:
                cancel()


class BulkCall(_BulkItem):
    """One unary call on the bulk path: its request bytes, and the way to answer it once."""

    __slots__ = ("payload", "metadata", "_deadline")

    def __init__(self, server: "NativeServer", call: int, payload: bytes, metadata: tuple, timeout: float):
        super().__init__(server, call)
        self.payload = payload
        self.metadata = metadata
        self._deadline = _deadline(timeout)

    def time_remaining(self) -> float | None:
        return _remaining(self._deadline)

    def reply(self, payload: bytes) -> None:
        if self._end():
            self._server._transport.reply(self.call, payload)

    def fail(self, code: grpc.StatusCode, details: str) -> None:
        if self._end():
            self._server._transport.finish(self.call, _code(code), details)


class BulkHttp(_BulkItem):
    """One HTTP request on the bulk path: the request, and the way to answer it once."""

    __slots__ = ("request",)

    def __init__(self, server: "NativeServer", call: int, request: HttpRequest):
        super().__init__(server, call)
        self.request = request

    def respond(self, response: HttpResponse) -> None:
        if self._end():
            self._server._transport.respond(self.call, response.status, response.headers, response.body)


class BulkStream:
    """One streaming call on the bulk path. The handler takes each request message as it arrives
    and reserves its answer's place (`slot`); answers leave in request order, whatever order they
    are filled in. A message is acknowledged to the transport (which then reads one more) once its
    answer is sent, so a stream holds at most the read window (STREAM_WINDOW) of requests in the
    server, and while its client does not read (the transport's unsent limit) none are acknowledged."""

    __slots__ = ("_server", "call", "method", "_pending", "_ended", "_status", "_blocked", "_owed", "over")

    def __init__(self, server: "NativeServer", call: int, method: str):
        self._server = server
        self.call = call
        self.method = method
        self._pending: collections.deque[StreamSlot] = collections.deque()  # oldest first
        self._ended = False  # the client half-closed
        self._status: tuple[grpc.StatusCode, str] | None = None  # to end with, after the answers before it
        self._blocked = False  # the client is not reading its answers: acknowledgements wait
        self._owed = 0  # acknowledgements held back while blocked
        self.over = False  # ended, or the client went away

    @property
    def taking(self) -> bool:
        """Whether messages still go to the handler (not after a failure or the end)."""
        return not (self.over or self._status)

    def slot(self) -> "StreamSlot":
        slot = StreamSlot(self)
        self._pending.append(slot)
        return slot

    def fail(self, code: grpc.StatusCode, details: str) -> None:
        """End the stream with this status once the answers already reserved are sent."""
        if self.taking:
            self._status = (code, details)
            self._flush()

    def _end(self) -> None:  # END: the client sent its last message
        self._ended = True
        self._flush()

    def _writable(self) -> None:  # WRITABLE: the client reads again
        self._blocked, owed, self._owed = False, self._owed, 0
        for _ in range(owed):
            self._server._transport.ack(self.call)

    def _flush(self) -> None:
        transport, pending = self._server._transport, self._pending
        while pending and pending[0].payload is not None and not self.over:
            if transport.write(self.call, pending.popleft().payload) == native.FULL:
                self._blocked = True
            if self._blocked:
                self._owed += 1
            else:
                transport.ack(self.call)
        if not pending and (self._ended or self._status) and not self.over:
            code, details = self._status or (grpc.StatusCode.OK, "")
            self.over = True
            self._server._bulk_streams.pop(self.call, None)
            transport.finish(self.call, _code(code), details)

    def _gone(self) -> None:  # GONE, or the server stopped: nothing more is sent
        if not self.over:
            self.over = True
            self._server._bulk_streams.pop(self.call, None)
            pending, self._pending = self._pending, collections.deque()
            for slot in pending:
                if slot.on_cancel is not None:
                    slot.on_cancel()


class StreamSlot:
    """The place of one answer in its stream's order: `send` fills it (once)."""

    __slots__ = ("_stream", "payload", "on_cancel")

    def __init__(self, stream: BulkStream):
        self._stream = stream
        self.payload: bytes | None = None
        self.on_cancel = None  # the handler's: called if the stream goes away before the answer

    @property
    def over(self) -> bool:
        return self._stream.over

    def send(self, payload: bytes) -> None:
        if self.payload is None:
            self.payload = payload
            self.on_cancel = None  # as _BulkItem._end: no cycle through the handler's answer
            self._stream._flush()


class _RequestStream:
    """The request messages of one streaming call, as an async iterator; each message taken
    lets the transport read one more (back-pressure)."""

    __slots__ = ("_transport", "_call", "_deserialize", "_messages", "_ended", "_waiter")

    def __init__(self, transport, call: int):
        self._transport = transport
        self._call = call
        self._deserialize = None  # set once the handler is known; messages may arrive before
        self._messages: collections.deque = collections.deque()
        self._ended = False
        self._waiter: asyncio.Future | None = None

    def push(self, payload: bytes) -> None:
        self._messages.append(payload)
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self._messages:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        payload = self._messages.popleft()
        self._transport.ack(self._call)
        return _parse(self._deserialize, payload, "a request message")


class NativeServer:
    """Registered like a grpc.aio.Server (the generated add_*_to_server functions work on it)."""

    def __init__(self, *, interceptors=(), max_message_bytes: int = 4 * 1024 * 1024):
        if native is None:
            raise RuntimeError(f"the native transport is not built ({IMPORT_ERROR}); {HOW_TO_BUILD}")
        # The interceptor chain, built once: interceptor 0 first, the handler lookup last.
        self._intercepted = None
        if interceptors:
            self._intercepted = self._continuation
            for interceptor in reversed(list(interceptors)):
                self._intercepted = functools.partial(interceptor.intercept_service, self._intercepted)
        self._max_message_bytes = max_message_bytes
        self._registered: dict[str, grpc.RpcMethodHandler] = {}
        self._bulk_handlers: dict[str, object] = {}  # method -> handler(list[BulkCall])
        self._bulk: dict[int, BulkCall | BulkHttp] = {}  # calls on the bulk path not yet answered
        self._bulk_http = None  # handler(list[BulkHttp]) -> the requests it leaves to the HTTP handler
        self._bulk_stream_handlers: dict[str, object] = {}  # method -> handler(BulkStream, payloads)
        self._bulk_streams: dict[int, BulkStream] = {}  # streams on the bulk path not yet over
        # The bulk path runs only interceptors that check without a coroutine (see the module doc).
        self._checks = [getattr(i, "check", None) for i in interceptors]
        self._generic: list[grpc.GenericRpcHandler] = []
        self._transport = None
        self._http_handler: HttpHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[int, asyncio.Task] = {}
        self._streams: dict[int, _RequestStream] = {}
        self._writable: dict[int, asyncio.Future] = {}  # streams waiting for the client to read
        self._stopped = asyncio.Event()

    # -- registration, as on grpc.aio.Server ----------------------------------------------------

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        for name, handler in handlers.items():
            self._registered[f"/{service}/{name}"] = handler

    def add_bulk_unary(self, method: str, handler) -> None:
        """Calls of the unary `method` ("/package.Service/Method") go to `handler(calls)` in bulk:
        a list of BulkCall, each to be answered (reply or fail) once, now or later."""
        if None not in self._checks:
            self._bulk_handlers[method] = handler

    def add_bulk_stream(self, method: str, handler) -> None:
        """Streams of the request- and response-streaming `method` go to `handler(stream,
        payloads)`: each wake-up's messages of a stream in one call, to be answered through
        `stream.slot()` in request order (or `stream.fail` ends the stream)."""
        if None not in self._checks:
            self._bulk_stream_handlers[method] = handler

    def add_bulk_http(self, handler) -> None:
        """Each wake-up's HTTP requests go to `handler(requests)` first (BulkHttp, to be answered
        once with `respond`); those it returns go to the HTTP handler as usual, one task each."""
        self._bulk_http = handler

    def listen(self, address: str, tls: TlsMaterial | None) -> int:
        """gRPC on `address`; register every service first (unary methods are told apart here)."""
        if self._transport is not None:
            raise RuntimeError("the native server listens for gRPC on one address, before HTTP")
        return self._start_port(self._make_transport(address, tls).start)

    def listen_http(self, address: str, tls: TlsMaterial | None, handler: HttpHandler) -> int:
        """HTTP/1.1 and h2c (or TLS, the same material as gRPC's) on `address`, through the same
        transport threads and event queue as gRPC; each request goes to `handler` whole."""
        if self._http_handler is not None:
            raise RuntimeError("the native server listens for HTTP on one address")
        transport = self._transport or self._make_transport("", tls)
        self._http_handler = handler
        return self._start_port(lambda: transport.start_http(address))

    def _make_transport(self, address: str, tls: TlsMaterial | None):
        # Unary methods arrive as one event carrying their request; the others as a stream.
        unary = {m for m, h in self._registered.items() if not (h.request_streaming or h.response_streaming)}
        key, cert, client_ca = ("", "", "") if tls is None else (
            tls.key.decode(), tls.cert.decode(), (tls.client_ca or b"").decode())
        self._transport = native.Transport(address, self._max_message_bytes, unary, STREAM_WINDOW, key, cert, client_ca,
                                           threads=TRANSPORT_THREADS, view_min_bytes=ZERO_COPY_MIN_BYTES)
        return self._transport

    def _start_port(self, start) -> int:
        try:
            return start()
        except RuntimeError as exc:
            raise OSError(str(exc)) from exc

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._transport is None:
            raise RuntimeError("no port: call listen or listen_http first")
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._transport.fileno(), self._on_events)
        self._on_events()  # calls that arrived between listening and now

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let running ones finish for `grace` seconds, then cancel the rest."""
        if self._transport is not None and self._loop is not None:
            await self._loop.run_in_executor(None, self._transport.shutdown, float(grace or 0))
            self._loop.remove_reader(self._transport.fileno())
            self._on_events()
        for task in list(self._tasks.values()):
            task.cancel()
        for bulk in list(self._bulk.values()):  # the transport has ended them (UNAVAILABLE)
            bulk._gone()
        self._bulk.clear()
        for stream in list(self._bulk_streams.values()):
            stream._gone()
        self._bulk_streams.clear()
        self._stopped.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # -- dispatch -------------------------------------------------------------------------------

    def _on_events(self) -> None:
        transport = self._transport
        bulk_handlers, bulk, streams, messages = self._bulk_handlers, None, self._bulk_streams, None
        http = None
        for event in transport.drain():
            if event[0] == native.HTTP and self._bulk_http is not None:
                kind, call, method, payload, metadata, _, peer = event
                self._bulk[call] = taken = BulkHttp(self, call, _http_request(method, payload, metadata, peer))
                http = http or []
                http.append(taken)
                continue
            if event[0] == native.UNARY and event[2] in bulk_handlers:
                kind, call, method, payload, metadata, timeout, _ = event
                self._bulk[call] = taken = BulkCall(self, call, payload, metadata, timeout)
                bulk = bulk or {}
                bulk.setdefault(method, []).append(taken)
                continue
            stream = streams.get(event[1]) if streams else None
            if stream is not None:
                if event[0] == native.MESSAGE:
                    if stream.taking:
                        messages = messages or {}
                        messages.setdefault(stream, []).append(event[3])
                    continue
                if messages and stream in messages:
                    taken = messages.pop(stream)
                    if event[0] != native.GONE:  # its messages so far go before what ends it
                        self._run_bulk_stream(stream, taken)
                self._stream_event(stream, event[0])
                continue
            if event[0] == native.OPEN and event[2] in self._bulk_stream_handlers:
                self._open_bulk_stream(event[1], event[2], event[4])
                continue
            if event[0] in _REQUESTS and type(event[3]) is not bytes:
                # A large request as a view of the transport's buffer: only the bulk paths read it
                # in place; every other handler gets bytes (the copy the transport used to make).
                event = (*event[:3], bytes(event[3]), *event[4:])
            try:
                self._dispatch(transport, *event)
            except Exception:  # noqa: BLE001 - one event must not lose the others
                log.exception("native transport: could not dispatch event %s", event[:3])
                transport.finish(event[1], _code(grpc.StatusCode.INTERNAL), "the server could not take this call")
        if bulk:
            for method, calls in bulk.items():
                self._run_bulk(method, calls)
        if messages:
            for stream, payloads in messages.items():
                self._run_bulk_stream(stream, payloads)
        if http:
            self._run_bulk_http(http)

    def _run_bulk_http(self, requests: list[BulkHttp]) -> None:
        try:
            left = self._bulk_http(requests)
        except Exception:  # noqa: BLE001 - a handler bug must still answer every request
            log.exception("unexpected error in the HTTP bulk handler")
            for taken in requests:
                taken.respond(_internal_error())
            return
        for taken in left:  # the task path: the HTTP handler, awaited
            self._bulk.pop(taken.call, None)
            self._tasks[taken.call] = self._loop.create_task(self._http(taken.call, taken.request))

    def _open_bulk_stream(self, call: int, method: str, metadata: tuple) -> None:
        try:
            for check in self._checks:
                check(method, metadata)
        except ServingError as exc:
            self._transport.finish(call, _code(GRPC_CODES[exc.code]), exc.message)
            return
        self._bulk_streams[call] = BulkStream(self, call, method)

    def _run_bulk_stream(self, stream: BulkStream, payloads: list) -> None:
        if not stream.taking:
            return
        try:
            self._bulk_stream_handlers[stream.method](stream, payloads)
        except Exception:  # noqa: BLE001 - a handler bug ends its stream, not the others
            log.exception("unexpected error in %s (bulk stream)", stream.method)
            stream.fail(grpc.StatusCode.INTERNAL, "the server could not take this stream's requests")

    @staticmethod
    def _stream_event(stream: BulkStream, kind: int) -> None:
        if kind == native.END:
            stream._end()
        elif kind == native.WRITABLE:
            stream._writable()
        elif kind == native.GONE:
            stream._gone()

    def _run_bulk(self, method: str, calls: list[BulkCall]) -> None:
        """One method's calls of this wake-up, through the interceptors' checks, to its handler."""
        allowed = []
        for taken in calls:
            if taken.over:  # gone in this same wake-up
                continue
            try:
                for check in self._checks:
                    check(method, taken.metadata)
            except ServingError as exc:
                taken.fail(GRPC_CODES[exc.code], exc.message)
            else:
                allowed.append(taken)
        if not allowed:
            return
        calls = allowed
        try:
            self._bulk_handlers[method](calls)
        except Exception:  # noqa: BLE001 - a handler bug must still answer every call
            log.exception("unexpected error in %s (bulk)", method)
            for taken in calls:
                taken.fail(grpc.StatusCode.INTERNAL, "the server could not take this call")

    def _dispatch(self, transport, kind, call, method, payload, metadata, timeout, peer) -> None:
        if kind == native.UNARY:
            self._tasks[call] = self._loop.create_task(self._unary(call, method, payload, metadata, timeout, peer))
        elif kind == native.HTTP:
            self._tasks[call] = self._loop.create_task(self._http(call, _http_request(method, payload, metadata, peer)))
        elif kind == native.MESSAGE:
            stream = self._streams.get(call)
            if stream is not None:
                stream.push(payload)
        elif kind == native.OPEN:
            # Registered now: this very batch of events may hold the stream's first messages.
            self._streams[call] = requests = _RequestStream(transport, call)
            self._tasks[call] = self._loop.create_task(
                self._streaming(call, requests, method, metadata, timeout, peer))
        elif kind == native.END:
            stream = self._streams.get(call)
            if stream is not None:
                stream.end()
        elif kind == native.WRITABLE:
            waiter = self._writable.pop(call, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == native.GONE:
            task = self._tasks.get(call)
            if task is not None:
                task.cancel()
            bulk = self._bulk.pop(call, None)
            if bulk is not None:
                bulk._gone()

    async def _handler(self, method: str, metadata: tuple) -> grpc.RpcMethodHandler:
        """The method's handler, through the interceptors; an unknown method is UNIMPLEMENTED."""
        details = _Details(method, metadata)
        handler = self._lookup(details) if self._intercepted is None else await self._intercepted(details)
        if handler is None:
            raise _Abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {method}")
        return handler

    def _lookup(self, details: _Details):
        return self._registered.get(details.method) or self._generic_handler(details)

    async def _continuation(self, details: _Details):
        return self._lookup(details)

    def _generic_handler(self, details: _Details):
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    async def _unary(self, call: int, method: str, payload: bytes, metadata: tuple, timeout: float, peer: str):
        transport = self._transport
        context = NativeContext(metadata, timeout, peer)
        try:
            handler = await self._handler(method, metadata)
            request = _parse(handler.request_deserializer, payload)
            response = handler.unary_unary(request, context)
            if inspect.isawaitable(response):
                response = await response
            if context._code not in (None, grpc.StatusCode.OK):
                transport.finish(call, _code(context._code), context._details)
            else:
                transport.reply(call, handler.response_serializer(response))
        except BaseException as exc:  # noqa: BLE001 - every failure answers the call
            self._fail(call, method, exc, context)
        finally:
            self._tasks.pop(call, None)

    async def _streaming(self, call: int, requests: _RequestStream, method: str, metadata: tuple, timeout: float,
                         peer: str):
        transport = self._transport
        context = NativeContext(metadata, timeout, peer)
        try:
            handler = await self._handler(method, metadata)
            requests._deserialize = handler.request_deserializer
            if handler.request_streaming:
                argument = requests
                behaviour = handler.stream_stream if handler.response_streaming else handler.stream_unary
            else:  # unary request, streamed response (e.g. health Watch): exactly one message
                argument = await anext(requests, None)
                if argument is None:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, NO_REQUEST_MESSAGE)
                behaviour = handler.unary_stream
            serialize = handler.response_serializer or (lambda r: r)
            context._requests = requests
            if handler.response_streaming:
                context._writer = lambda response: self._send(call, serialize(response))
            result = behaviour(argument, context)
            if handler.response_streaming and hasattr(result, "__aiter__"):
                async for response in result:
                    await self._send(call, serialize(response))
            else:
                response = await result if inspect.isawaitable(result) else result
                if response is not None and not handler.response_streaming:
                    await self._send(call, serialize(response))
            code = context._code or grpc.StatusCode.OK
            transport.finish(call, _code(code), context._details)
        except BaseException as exc:  # noqa: BLE001
            self._fail(call, method, exc, context)
        finally:
            self._streams.pop(call, None)
            self._writable.pop(call, None)
            self._tasks.pop(call, None)

    async def _http(self, call: int, request: HttpRequest) -> None:
        """One HTTP request, through the HTTP handler."""
        try:
            response = await self._http_handler(request)
        except asyncio.CancelledError:  # the client went away, or the server is stopping
            response = HttpResponse(503, b'{"error": "the server is shutting down"}')
        except Exception:  # noqa: BLE001 - the handler answers its own errors; this is a bug
            log.exception("unexpected error answering HTTP %s", request.method)
            response = _internal_error()
        finally:
            self._tasks.pop(call, None)
        self._transport.respond(call, response.status, response.headers, response.body)

    async def _send(self, call: int, payload: bytes) -> None:
        """One response message of a stream; when the client is not reading and the unsent ones
        pass the transport's limit, wait until it reads (back-pressure up to the handler)."""
        if self._transport.write(call, payload) == native.FULL:
            self._writable[call] = waiter = self._loop.create_future()
            await waiter

    def _fail(self, call: int, method: str, exc: BaseException, context: NativeContext) -> None:
        """The status of a call whose handler raised: an abort's own, CANCELLED when the call was
        cancelled (client gone, deadline, shutdown), else UNKNOWN as grpc answers."""
        if isinstance(exc, _Abort):
            code, details = exc.code, exc.details
        elif isinstance(exc, asyncio.CancelledError):
            context._cancelled = True
            code, details = grpc.StatusCode.CANCELLED, "the call was cancelled"
        else:
            log.exception("unexpected error in %s", method)
            code, details = grpc.StatusCode.UNKNOWN, f"unexpected {type(exc).__name__}: {exc}"
        self._transport.finish(call, _code(code), details)
        if not isinstance(exc, Exception) and not isinstance(exc, asyncio.CancelledError):
            raise exc  # KeyboardInterrupt, SystemExit


def _http_request(method: str, body: bytes, metadata: tuple, peer: str) -> HttpRequest:
    """An HTTP event's request: its metadata is (":path", target), then the headers, lower-cased."""
    return HttpRequest(method, metadata[0][1], metadata[1:], body, peer)


def _internal_error() -> HttpResponse:
    """The answer to an HTTP request whose handler failed unexpectedly (a bug; it is logged)."""
    return HttpResponse(500, b'{"error": "internal error"}', [("content-type", "application/json")])


def _parse(deserialize, payload: bytes, what: str = "the request message"):
    if deserialize is None:
        return payload
    try:
        return parse_request(deserialize, payload, what)
    except ServingError as exc:
        raise _Abort(GRPC_CODES[exc.code], exc.message) from None
