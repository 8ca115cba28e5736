"""TLS / mutual TLS credentials and the bearer-token check.

The token guards every inference and metadata call. Health checks, liveness/readiness and server
reflection stay open so load balancers and Kubernetes probes need no secret.
"""

from __future__ import annotations

import hmac

import grpc

from mimo.serving.settings import ServerSettings

OPEN_METHODS = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)


def tls_material(settings: ServerSettings) -> tuple[bytes, bytes, bytes | None] | None:
    """(key, certificate chain, client CA or None) in PEM, or None without TLS."""
    if not settings.tls_cert:
        return None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return settings.tls_key.read_bytes(), settings.tls_cert.read_bytes(), client_ca


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    material = tls_material(settings)
    if material is None:
        return None
    key, cert, client_ca = material
    if client_ca:
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)
    return grpc.ssl_server_credentials([(key, cert)])


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_METHODS) or self._authorized(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _refusing_handler(handler)

    def _authorized(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False


def _refusing_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind that answers UNAUTHENTICATED without running the method."""
    message = "missing or wrong bearer token (send 'authorization: Bearer <token>' metadata)"

    async def refuse(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    args = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **args)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **args)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **args)
    return grpc.unary_unary_rpc_method_handler(refuse, **args)
