"""The bearer token on gRPC calls (both transports run grpc.aio interceptors).

The token guards every inference and metadata call. Health checks, liveness/readiness and server
reflection stay open so load balancers and Kubernetes probes need no secret. RepositoryModelLoad and
Unload carry the admin token instead when one is set (a call carries one bearer token); the core's
ModelControl checks it.
"""

from __future__ import annotations

import grpc

from mimo.serving.core.control import authorization_of, bearer, bearer_matches
from mimo.serving.core.errors import Unauthenticated
from mimo.serving.frontends.grpc_status import grpc_status
from mimo.serving.settings import ServerSettings

OPEN_METHODS = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
MODEL_CONTROL_METHODS = (
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
)
REFUSAL = "missing or wrong bearer token (send 'authorization: Bearer <token>' metadata)"


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, exempt: tuple[str, ...] = ()):
        self._expected = bearer(token)  # built once: this runs on every call
        self._open = OPEN_METHODS + exempt  # exempt: methods another check guards (ModelControl)

    def check(self, method: str, metadata) -> None:
        """Raise Unauthenticated unless the call may go on (without a coroutine: the native
        transport's bulk path calls this directly)."""
        if not (method.startswith(self._open) or bearer_matches(authorization_of(metadata), self._expected)):
            raise Unauthenticated(REFUSAL)

    async def intercept_service(self, continuation, handler_call_details):
        try:
            self.check(handler_call_details.method, handler_call_details.invocation_metadata)
        except Unauthenticated:
            handler = await continuation(handler_call_details)
            return None if handler is None else _refusing_handler(handler)
        return await continuation(handler_call_details)


def interceptors(settings: ServerSettings) -> list[grpc.aio.ServerInterceptor]:
    if not settings.token:
        return []
    # With an admin token, load/unload carry that one instead: ModelControl checks it.
    exempt = MODEL_CONTROL_METHODS if settings.admin_token else ()
    return [TokenInterceptor(settings.token, exempt)]


def _refusing_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind that answers UNAUTHENTICATED without running the method."""
    code, message = grpc_status(Unauthenticated(REFUSAL))

    async def refuse(request_or_iterator, context):
        await context.abort(code, message)

    async def refuse_stream(request_or_iterator, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    args = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **args)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **args)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **args)
    return grpc.unary_unary_rpc_method_handler(refuse, **args)
