"""The grpc.aio transport: the pure-Python fallback when the native one is not built.

grpc.aio parses a request before the handler runs: bytes that do not parse end as UNKNOWN with a
logged traceback each, and a unary call whose client half-closes without a message is never
answered (it hangs until its deadline). `RequestParsing` hands every handler its request as bytes
through a request stream, and parses them itself: a missing message or bad bytes end as
INVALID_ARGUMENT with a short message, and nothing is logged, as on the native transport.
"""

from __future__ import annotations

import inspect

import grpc

from mimo.serving.core.errors import NO_REQUEST_MESSAGE, InvalidArgument, ServingError
from mimo.serving.frontends.grpc_status import abort, parse_request
from mimo.serving.transports.tls import TlsMaterial


class AioServer:
    """A grpc.aio.Server behind the transport interface (transports/base.py)."""

    def __init__(self, *, interceptors=(), max_message_bytes: int):
        self._server = grpc.aio.server(
            interceptors=[*interceptors, RequestParsing()],  # innermost: it wraps the method's handler
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 1),
            ],
        )

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self._server.add_registered_method_handlers(service, handlers)

    def listen(self, address: str, tls: TlsMaterial | None) -> int:
        if tls is None:
            return self._server.add_insecure_port(address)
        if tls.client_ca:
            credentials = grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.client_ca,
                                                      require_client_auth=True)
        else:
            credentials = grpc.ssl_server_credentials([(tls.key, tls.cert)])
        return self._server.add_secure_port(address, credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)


class RequestParsing(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once (cached): request-streaming, bytes in, parsed here."""

    def __init__(self):
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        cached = self._wrapped.get(id(handler))
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[id(handler)] = (handler, _wrap(handler))
        return cached[1]


def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    parse = handler.request_deserializer

    async def one(requests, context):
        async for payload in requests:
            return await _parse(parse, payload, context, "the request message")
        await abort(context, InvalidArgument(NO_REQUEST_MESSAGE))

    async def each(requests, context):
        async for payload in requests:
            yield await _parse(parse, payload, context, "a request message")

    if handler.request_streaming:
        behaviour = handler.stream_stream if handler.response_streaming else handler.stream_unary
    else:
        behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary

    async def argument(requests, context):  # the handler's own argument: one message, or a stream
        return each(requests, context) if handler.request_streaming else await one(requests, context)

    if handler.response_streaming and inspect.isasyncgenfunction(behaviour):
        async def call(requests, context):
            async for response in behaviour(await argument(requests, context), context):
                yield response
    else:  # a coroutine (which may stream through context.write)
        async def call(requests, context):
            return await behaviour(await argument(requests, context), context)

    make = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler
    return make(call, request_deserializer=None, response_serializer=handler.response_serializer)


async def _parse(parse, payload: bytes, context, what: str):
    try:
        return parse_request(parse, payload, what)
    except ServingError as exc:
        await abort(context, exc)
