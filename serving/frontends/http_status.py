"""The ONE place where the error family becomes HTTP statuses, for both REST dialects.

Bodies are JSON `{"error": "<the words gRPC gives>"}`: KServe v2 REST and TensorFlow Serving REST
both answer errors so, and tritonclient.http reads the `error` field.
"""

from __future__ import annotations

import orjson

from mimo.serving.core.errors import Status, status_for
from mimo.serving.transports.base import HttpResponse

HTTP_STATUSES = {
    Status.OK: 200,
    Status.CANCELLED: 499,  # the client closed the request (nginx's code; nobody reads it)
    Status.INVALID_ARGUMENT: 400,
    Status.DEADLINE_EXCEEDED: 504,
    Status.NOT_FOUND: 404,
    Status.PERMISSION_DENIED: 403,
    Status.RESOURCE_EXHAUSTED: 429,
    Status.UNIMPLEMENTED: 501,
    Status.INTERNAL: 500,
    Status.UNAVAILABLE: 503,
    Status.UNAUTHENTICATED: 401,
}
JSON = ("content-type", "application/json")


def json_response(document, status: int = 200, headers: tuple = ()) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), [JSON, *headers])


def error_response(exc: BaseException) -> HttpResponse:
    """The response for any exception raised while answering a request (logged when a bug)."""
    status, message = status_for(exc)
    headers = [("www-authenticate", "Bearer")] if status is Status.UNAUTHENTICATED else []
    return json_response({"error": message}, HTTP_STATUSES[status], headers)
