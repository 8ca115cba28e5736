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
