"""TLS / mutual TLS credentials, the bearer-token check and who may load and unload models.

The token guards every inference and metadata call. Health checks, liveness/readiness and server
reflection stay open so load balancers and Kubernetes probes need no secret. Model control
(RepositoryModelLoad/Unload) is off unless the server runs with --model-control-mode explicit, and
then takes the admin token instead of the token when one is set (a call carries one bearer token).
"""

from __future__ import annotations

import hmac

import grpc

from mimo.serving.errors import PermissionDenied, Unauthenticated, status_for
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


def bearer(token: str) -> bytes:
    """The `authorization` metadata value that carries `token`."""
    return f"Bearer {token}".encode()


def bearer_matches(metadata, expected: bytes) -> bool:
    """Whether the call's `authorization` metadata is `expected` (constant-time compare)."""
    for key, value in metadata or ():
        if key == "authorization":
            given = value.encode() if isinstance(value, str) else value
            return hmac.compare_digest(given, expected)
    return False


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, exempt: tuple[str, ...] = ()):
        self._expected = bearer(token)  # built once: this runs on every call
        self._open = OPEN_METHODS + exempt  # exempt: methods another check guards (ModelControl)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(self._open) or bearer_matches(handler_call_details.invocation_metadata, self._expected):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _refusing_handler(handler)


def interceptors(settings: ServerSettings) -> list[grpc.aio.ServerInterceptor]:
    if not settings.token:
        return []
    # With an admin token, load/unload carry that one instead: ModelControl checks it.
    exempt = MODEL_CONTROL_METHODS if settings.admin_token else ()
    return [TokenInterceptor(settings.token, exempt)]


class ModelControl:
    """Whether a RepositoryModelLoad/Unload call may change what the server serves."""

    def __init__(self, settings: ServerSettings):
        self.explicit = settings.model_control_mode == "explicit"
        self._expected = bearer(settings.admin_token) if settings.admin_token else None

    def check(self, metadata) -> None:
        """Raise PermissionDenied (model control off) or Unauthenticated (no or wrong admin token)."""
        if not self.explicit:
            raise PermissionDenied("model loading and unloading is off (--model-control-mode none, the default); "
                                   "start the server with --model-control-mode explicit to allow it")
        if self._expected and not bearer_matches(metadata, self._expected):
            raise Unauthenticated("loading and unloading models needs the admin token "
                                  "(send 'authorization: Bearer <admin token>' metadata)")


def _refusing_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind that answers UNAUTHENTICATED without running the method."""
    code, message = status_for(Unauthenticated(
        "missing or wrong bearer token (send 'authorization: Bearer <token>' metadata)"))

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
