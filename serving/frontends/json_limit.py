"""How much JSON one REST request may carry.

JSON tensors parse at about 50 MB/s while holding the GIL (orjson, then numpy), so every other
call on the event loop waits meanwhile: 8 MiB costs them ~160 ms. Past that a request is refused
with the way to send large tensors (Triton's binary tensor extension parses at memory speed). The
gRPC front ends refuse typed values past 4 MiB for the same reason (frontends/grpc_status.py).
"""

from __future__ import annotations

from mimo.serving.core.errors import InvalidArgument

MAX_JSON_BYTES = 8 << 20
MAX_TENSOR_ELEMENTS = 2**31  # per tensor, checked before building it; the body limit bounds the rest


def check_json_size(size: int, remedy: str) -> None:
    if size > MAX_JSON_BYTES:
        raise InvalidArgument(f"the request carries {size / 2**20:.1f} MiB of JSON, over the "
                              f"{MAX_JSON_BYTES >> 20} MiB limit for JSON tensors: {remedy}")
