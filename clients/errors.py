"""The client's one exception type, and the one place that turns gRPC errors into it."""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    """A call failed. `.code` is the grpc.StatusCode, `.message` the server's message (or the
    client's, for checks made before sending), `.model` the model the call was for (or None).

    Local checks raise the status code the server would give for the same mistake
    (INVALID_ARGUMENT), so callers can handle both alike.
    """

    def __init__(self, code: grpc.StatusCode, message: str, model: str | None = None):
        self.code = code
        self.message = message
        self.model = model
        super().__init__(f"{code.name}: {message}")


class ServerUnavailableError(InferenceError):
    """UNAVAILABLE: the server could not be reached at `.target` (refused, TLS handshake failed,
    name not resolved), or it answered that it is not ready or is shutting down. Retry later."""

    def __init__(self, target: str, detail: str, model: str | None = None):
        self.target = target
        super().__init__(grpc.StatusCode.UNAVAILABLE, f"server at {target} is unavailable: {detail}", model)


def from_rpc_error(exc: grpc.RpcError, target: str, model: str | None = None) -> InferenceError:
    """grpc.RpcError (sync) or grpc.aio.AioRpcError -> InferenceError; same fields either way."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    detail = (exc.details() if callable(getattr(exc, "details", None)) else None) or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailableError(target, detail or "no detail", model)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and not detail:
        detail = "deadline exceeded"
    return InferenceError(code, detail or code.name.lower().replace("_", " "), model)


def invalid(model: str | None, problems: list[str]) -> InferenceError:
    """INVALID_ARGUMENT listing every problem, worded like the server's validation message."""
    prefix = f"model '{model}': " if model else ""
    return InferenceError(grpc.StatusCode.INVALID_ARGUMENT, prefix + "; ".join(problems), model)
