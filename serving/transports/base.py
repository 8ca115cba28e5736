"""The one small interface every transport offers the app, and the plain HTTP request/response.

A gRPC transport is registered on exactly as a grpc.aio.Server is (the generated
add_*_to_server functions call `add_generic_rpc_handlers` / `add_registered_method_handlers`), then
listens, with or without TLS. An HTTP transport hands each whole request to one handler
(`async (HttpRequest) -> HttpResponse`): routing and JSON are the front ends' business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from mimo.serving.transports.tls import TlsMaterial


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # the request target: path and query, percent-encoded as received
    headers: tuple[tuple[str, str], ...]  # names in lower case, as received, in order
    body: bytes
    peer: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class GrpcTransport(Protocol):
    def add_generic_rpc_handlers(self, handlers) -> None: ...

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None: ...

    def listen(self, address: str, tls: TlsMaterial | None) -> int:
        """Listen on `address` (host:port; port 0 picks one); returns the port."""

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let running ones finish for `grace` seconds, cancel the rest."""

    async def wait_for_termination(self, timeout: float | None = None) -> bool: ...


class HttpTransport(Protocol):
    def listen_http(self, address: str, tls: TlsMaterial | None, handler: HttpHandler) -> int: ...

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> None: ...
