"""The ONE error family of the server, protocol-free.

Every layer raises a `ServingError` subclass carrying a `Status`. The front ends map a status to
their protocol in one place each: `frontends/grpc_status.py` (gRPC codes) and
`frontends/http_status.py` (HTTP statuses). Messages are short and truncated, and no traceback
reaches a client.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time

from mimo.protos.errors import CodecError

log = logging.getLogger("mimo.serving")
MAX_MESSAGE = 1000  # characters of an error message sent to a client


class Status(enum.Enum):
    """How a request ended. The names are gRPC's, so counters and logs read the same everywhere."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class ServingError(Exception):
    code = Status.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(ServingError):
    code = Status.NOT_FOUND


class InvalidArgument(ServingError):
    code = Status.INVALID_ARGUMENT


class Unavailable(ServingError):
    code = Status.UNAVAILABLE


class ResourceExhausted(ServingError):
    code = Status.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    code = Status.DEADLINE_EXCEEDED


class Unauthenticated(ServingError):
    code = Status.UNAUTHENTICATED


class PermissionDenied(ServingError):
    """The server's configuration does not allow the call (e.g. model control is off)."""

    code = Status.PERMISSION_DENIED


class Unimplemented(ServingError):
    """No such method or endpoint."""

    code = Status.UNIMPLEMENTED


class BackendFailure(ServingError):
    """A backend raised while computing: INTERNAL, for that request only."""

    code = Status.INTERNAL


NO_REQUEST_MESSAGE = "the call carried no request message"


def truncate(message: str, limit: int = MAX_MESSAGE) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def status_code(exc: BaseException, deadline: float | None = None) -> Status:
    """The status a request that raised `exc` ends with, as answered and as counted.

    A cancelled handler is the client going away or its deadline (`deadline`, time.monotonic()
    seconds) passing: neither is the server's failure.
    """
    if isinstance(exc, ServingError):
        return exc.code
    if isinstance(exc, CodecError):
        return Status.INVALID_ARGUMENT
    if isinstance(exc, asyncio.CancelledError):
        if deadline is not None and time.monotonic() >= deadline:
            return Status.DEADLINE_EXCEEDED
        return Status.CANCELLED
    return Status.INTERNAL


def status_for(exc: BaseException) -> tuple[Status, str]:
    """(status, client-safe message) for any exception raised while serving a request."""
    code = status_code(exc)
    if isinstance(exc, ServingError):
        return code, truncate(exc.message)
    if code is not Status.INTERNAL:  # the client's doing (bad bytes, cancelled)
        return code, truncate(str(exc))
    # Anything else is a bug or a backend failure: log it here, send no internals.
    log.exception("internal error while serving a request")
    return Status.INTERNAL, f"internal error ({type(exc).__name__})"
