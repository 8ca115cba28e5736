"""The HTTP front end: one handler for the HTTP transport, routing each request to KServe v2 REST
(`/v2/...`) or TensorFlow Serving REST (`/v1/...`), with the bearer token checked as on gRPC.

Health (`/v2/health/*`) stays open; model load/unload take the admin token when one is set. A
path that is no endpoint is 404, a known path with the wrong method 405: never a 200.
"""

from __future__ import annotations

import re
import zlib
from typing import Awaitable, Callable
from urllib.parse import unquote

from mimo.serving.core.control import bearer, bearer_matches
from mimo.serving.core.core import Core
from mimo.serving.core.errors import InvalidArgument, NotFound, Unauthenticated
from mimo.serving.frontends import kserve_rest, tfserving_rest
from mimo.serving.frontends.http_status import error_response
from mimo.serving.settings import ServerSettings
from mimo.serving.transports.base import HttpRequest, HttpResponse

Endpoint = Callable[..., Awaitable[HttpResponse]]
OPEN, TOKEN, ADMIN = "open", "token", "admin"  # who may call a route
_NAME = r"(?P<model>[^/:]+)"
_VERSION = r"(?:/versions/(?P<version>[^/:]+))?"


class _Route:
    def __init__(self, methods: str, pattern: str, endpoint: Endpoint, guard: str):
        self.methods = methods.split()
        self.pattern = re.compile(pattern + r"/?")
        self.endpoint, self.guard = endpoint, guard


def _routes(kserve: kserve_rest.KServeRest, tfs: tfserving_rest.TfServingRest) -> list[_Route]:
    r = _Route
    return [
        r("GET", r"/v2/health/live", kserve.live, OPEN),
        r("GET", r"/v2/health/ready", kserve.ready, OPEN),
        r("GET", r"/v2", kserve.server_metadata, TOKEN),
        r("GET", r"/v2/models/stats", kserve.statistics, TOKEN),
        r("POST", r"/v2/repository/index", kserve.repository_index, TOKEN),
        r("POST", rf"/v2/repository/models/{_NAME}/load", kserve.load, ADMIN),
        r("POST", rf"/v2/repository/models/{_NAME}/unload", kserve.unload, ADMIN),
        r("GET", rf"/v2/models/{_NAME}{_VERSION}", kserve.model_metadata, TOKEN),
        r("GET", rf"/v2/models/{_NAME}{_VERSION}/ready", kserve.model_ready, TOKEN),
        r("GET", rf"/v2/models/{_NAME}{_VERSION}/config", kserve.model_config, TOKEN),
        r("GET", rf"/v2/models/{_NAME}{_VERSION}/stats", kserve.statistics, TOKEN),
        r("POST", rf"/v2/models/{_NAME}{_VERSION}/infer", kserve.infer, TOKEN),
        r("GET", rf"/v1/models/{_NAME}{_VERSION}", tfs.status, TOKEN),
        r("GET", rf"/v1/models/{_NAME}{_VERSION}/metadata", tfs.metadata, TOKEN),
        r("POST", rf"/v1/models/{_NAME}{_VERSION}:(?P<verb>[a-z]+)", tfs.call, TOKEN),
    ]


class HttpFrontEnd:
    def __init__(self, core: Core, settings: ServerSettings):
        self.max_body = settings.max_message_bytes
        self._token = bearer(settings.token) if settings.token else None
        # Load/unload: the admin token when there is one (the core checks it), else the token.
        self._admin_by_core = bool(settings.admin_token)
        self._kserve = kserve_rest.KServeRest(core)
        self._routes = _routes(self._kserve, tfserving_rest.TfServingRest(core))

    async def handle(self, request: HttpRequest) -> HttpResponse:
        try:
            path = request.path.split("?", 1)[0]
            route, match = self._find("GET" if request.method == "HEAD" else request.method, path)
            plain, arguments = self._admit(route, match, request)
            response = await route.endpoint(plain, **arguments)
            if request.method == "HEAD":  # GET's status and headers (RFC 9110 9.3.2)
                response.body = b""
            return response
        except _MethodNotAllowed as exc:
            response = error_response(InvalidArgument(str(exc)))
            response.status = 405
            response.headers.append(("allow", exc.allow))
            return response
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status (bugs are logged there)
            return error_response(exc)

    def take_bulk(self, requests) -> list:
        """The native transport's bulk path: KServe infer requests among `requests` (BulkHttp) are
        decoded, validated and queued here and answered when their batch has run, with no
        coroutine each; the others are returned, for `handle`. The same checks and errors."""
        left = []
        for taken in requests:
            request = taken.request
            if request.method != "POST":  # infer is POST; the rest (HEAD's rules too) is handle's
                left.append(taken)
                continue
            try:
                route, match = self._find(request.method, request.path.split("?", 1)[0])
                if route.endpoint != self._kserve.infer:
                    left.append(taken)
                    continue
                plain, arguments = self._admit(route, match, request)
                self._kserve.infer_bulk(taken, plain, **arguments)
            except _MethodNotAllowed:
                left.append(taken)  # handle words it
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status
                taken.respond(error_response(exc))
        return left

    def _admit(self, route: _Route, match: re.Match, request: HttpRequest) -> tuple[HttpRequest, dict]:
        """A routed request past the token check: with its body decompressed, and the path's
        arguments for the endpoint."""
        self._authorize(route.guard, request)
        arguments = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
        return _with_plain_body(request, self.max_body), arguments

    def _find(self, method: str, path: str):
        allowed = []
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            if method in route.methods:
                return route, match
            allowed += route.methods
        if allowed:
            raise _MethodNotAllowed(f"{method} is not allowed on {path} (use {', '.join(allowed)})", ", ".join(allowed))
        raise NotFound(f"no endpoint {path} on this server (KServe v2 REST under /v2, TensorFlow Serving REST "
                       "under /v1/models)")

    def _authorize(self, guard: str, request: HttpRequest) -> None:
        if guard == OPEN or self._token is None or (guard == ADMIN and self._admin_by_core):
            return
        if not bearer_matches(request.header("authorization"), self._token):
            raise Unauthenticated("missing or wrong bearer token (send the header 'Authorization: Bearer <token>')")


class _MethodNotAllowed(Exception):
    def __init__(self, message: str, allow: str):
        super().__init__(message)
        self.allow = allow


def _with_plain_body(request: HttpRequest, limit: int) -> HttpRequest:
    """The request with its body decompressed (gzip or deflate, as tritonclient.http can send),
    never past `limit` bytes: a small compressed body cannot become a large one here."""
    encoding = (request.header("content-encoding") or "identity").strip().lower()
    if encoding == "identity" or not request.body:
        return request
    if encoding not in ("gzip", "deflate"):
        raise InvalidArgument(f"unsupported Content-Encoding '{encoding}': send identity, gzip or deflate")
    body = _inflate(request.body, encoding, limit)
    headers = tuple((k, v) for k, v in request.headers if k not in ("content-encoding", "content-length"))
    return HttpRequest(request.method, request.path, headers, body, request.peer)


def _inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """A whole gzip (one member or several, RFC 1952 2.2) or zlib stream: truncated or trailing
    bytes are the client's error, never a shorter body served as if complete."""
    parts, size = [], 0
    while True:
        inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            part = inflater.decompress(data, limit + 1 - size)
        except zlib.error as exc:
            raise InvalidArgument(f"the {encoding} request body could not be decompressed: {exc}") from None
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise InvalidArgument(f"the request body decompresses past the server's limit of {limit} bytes")
        if not inflater.eof:
            raise InvalidArgument(f"the {encoding} request body is truncated")
        parts.append(part)
        data = inflater.unused_data
        if not data:
            return b"".join(parts)
        if encoding == "deflate":
            raise InvalidArgument("the deflate request body has bytes after its end")
