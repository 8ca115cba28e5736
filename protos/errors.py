"""Errors raised by mimo.protos (no gRPC dependency: servicers map them)."""

from __future__ import annotations


class CodecError(ValueError):
    """A tensor could not be converted between numpy and protobuf.

    On the server this is the client's fault (INVALID_ARGUMENT). The message
    names the tensor, e.g. "input 'x': raw data is 12 bytes, shape [2, 2] FP32 needs 16".
    `tensor` holds the tensor name when known.
    """

    def __init__(self, message: str, tensor: str | None = None, kind: str = "tensor"):
        self.tensor = tensor
        super().__init__(message if tensor is None else f"{kind} {tensor!r}: {message}")


def error_line(exc: BaseException, limit: int = 300) -> str:
    """The line of an exception's message that says what went wrong, for a one-line report.

    TensorFlow puts it after "Graph execution error:" and a trace of nodes; Python's own
    messages say it on their first line.
    """
    lines = [line.rstrip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line[0].isspace()
            and not line.startswith(("Graph execution error", "Detected at node", "[[", "File ", "in user code"))]
    return (said[-1] if said else lines[0].strip() if lines else type(exc).__name__)[:limit]
