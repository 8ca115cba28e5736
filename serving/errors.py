"""Errors that carry a gRPC status code, and the ONE place that maps exceptions to statuses.

Every layer raises a `ServingError` subclass; servicers call `status_for` and never build
status codes themselves. Messages are short and truncated, and no traceback reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from mimo.protos.errors import CodecError
from mimo.protos.wire import typed_bytes

log = logging.getLogger("mimo.serving")
MAX_MESSAGE = 1000  # characters of an error message sent to a client


class ServingError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServingError):
    """The server's configuration does not allow the call (e.g. model control is off)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class BackendFailure(ServingError):
    """A backend raised while computing: INTERNAL, for that request only."""

    code = grpc.StatusCode.INTERNAL


NO_REQUEST_MESSAGE = "the call carried no request message"


# Typed tensor values past this are refused before parsing: protobuf parses them at ~60 MB/s
# holding the GIL, so 4 MiB costs every other call ~60 ms; raw contents parse at ~1 GB/s.
MAX_TYPED_BYTES = 4 << 20


def parse_request(parse, payload: bytes, what: str = "the request message"):
    """A request message from its bytes (both gRPC transports): bad bytes are the client's error."""
    typed = typed_bytes(getattr(parse, "__self__", None), payload) if len(payload) > MAX_TYPED_BYTES else 0
    if typed > MAX_TYPED_BYTES:
        raise InvalidArgument(
            f"{what} holds {typed / 2**20:.1f} MiB of typed tensor values (contents / *_val), over the "
            f"{MAX_TYPED_BYTES >> 20} MiB limit for them: send large tensors as raw bytes "
            "(raw_input_contents in KServe v2, tensor_content in TF Serving)")
    try:
        return parse(payload)
    except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the bytes are at fault
        raise InvalidArgument(f"could not parse {what}: {exc}") from None


def truncate(message: str, limit: int = MAX_MESSAGE) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def status_code(exc: BaseException, deadline: float | None = None) -> grpc.StatusCode:
    """The status a request that raised `exc` ends with, as answered and as counted.

    A cancelled handler is the client going away or its deadline (`deadline`, time.monotonic()
    seconds) passing: neither is the server's failure.
    """
    if isinstance(exc, ServingError):
        return exc.code
    if isinstance(exc, CodecError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, asyncio.CancelledError):
        if deadline is not None and time.monotonic() >= deadline:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(status code, client-safe message) for any exception raised while serving a request."""
    code = status_code(exc)
    if isinstance(exc, ServingError):
        return code, truncate(exc.message)
    if code is not grpc.StatusCode.INTERNAL:  # the client's doing (bad bytes, cancelled)
        return code, truncate(str(exc))
    # Anything else is a bug or a backend failure: log it here, send no internals.
    log.exception("internal error while serving a request")
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})"
