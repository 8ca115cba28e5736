"""The ONE place where the error family becomes gRPC status codes, and where request bytes that
reach a gRPC front end become a message (bad bytes are the client's error, on either transport)."""

from __future__ import annotations

import grpc

from mimo.protos.wire import typed_bytes
from mimo.serving.core.errors import InvalidArgument, Status, status_for

GRPC_CODES = {status: grpc.StatusCode[status.name] for status in Status}

# Typed tensor values past this are refused before parsing: protobuf parses them at ~60 MB/s
# holding the GIL, so 4 MiB costs every other call ~60 ms; raw contents parse at ~1 GB/s.
MAX_TYPED_BYTES = 4 << 20


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(gRPC code, client-safe message) for any exception raised while serving a call."""
    status, message = status_for(exc)
    return GRPC_CODES[status], message


async def abort(context, exc: BaseException) -> None:
    """End the call with the status `exc` maps to (raises, as context.abort does)."""
    await context.abort(*grpc_status(exc))


def parse_request(parse, payload: bytes, what: str = "the request message"):
    """A request message from its bytes (both gRPC transports): bad bytes are the client's error."""
    # The message class: a generated FromString's own, or what a custom parser declares.
    message_class = getattr(parse, "message_class", None) or getattr(parse, "__self__", None)
    typed = typed_bytes(message_class, payload) if len(payload) > MAX_TYPED_BYTES else 0
    if typed > MAX_TYPED_BYTES:
        raise InvalidArgument(
            f"{what} holds {typed / 2**20:.1f} MiB of typed tensor values (contents / *_val), over the "
            f"{MAX_TYPED_BYTES >> 20} MiB limit for them: send large tensors as raw bytes "
            "(raw_input_contents in KServe v2, tensor_content in TF Serving)")
    try:
        return parse(payload)
    except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the bytes are at fault
        raise InvalidArgument(f"could not parse {what}: {exc}") from None
