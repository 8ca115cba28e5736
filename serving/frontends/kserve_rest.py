"""KServe v2 REST (Open Inference Protocol over HTTP), as tritonclient.http and perf_analyzer -i http
speak it: health, metadata, infer (JSON tensors and Triton's binary tensor extension), config,
statistics and the repository extension.

Config, statistics and the repository index are the same messages the gRPC front end builds,
written as JSON the way Triton's REST API writes them (64-bit integers as numbers).
"""

from __future__ import annotations

import orjson

from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import rest_codec
from mimo.protos.errors import CodecError
from mimo.serving.core.core import Core
from mimo.serving.core.errors import InvalidArgument, Unavailable
from mimo.serving.frontends import kserve_parameters
from mimo.serving.frontends.kserve_grpc import model_config, statistics_message
from mimo.serving.frontends.proto_json import message_json
from mimo.serving.frontends.http_status import error_response, json_response
from mimo.serving.frontends.json_limit import MAX_TENSOR_ELEMENTS, check_json_size
from mimo.serving.transports.base import HttpRequest, HttpResponse

HEADER_LENGTH = "inference-header-content-length"


class KServeRest:
    def __init__(self, core: Core):
        self.core = core

    # -- health and metadata ------------------------------------------------------------------

    async def live(self, request: HttpRequest) -> HttpResponse:
        return _state(self.core.live(), "the server is not live")

    async def ready(self, request: HttpRequest) -> HttpResponse:
        return _state(self.core.ready(), "the server is not ready (loading, draining or no model version ready)")

    async def server_metadata(self, request: HttpRequest) -> HttpResponse:
        info = self.core.server_info()
        return json_response({"name": info.name, "version": info.version, "extensions": list(info.extensions)})

    async def model_metadata(self, request: HttpRequest, model: str, version: str = "") -> HttpResponse:
        info = self.core.model(model, version)
        tensor = lambda t: {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}  # noqa: E731
        return json_response({
            "name": info.name,
            "versions": [str(v) for v in info.ready_versions],
            "platform": info.platform,
            "inputs": [tensor(t) for t in info.spec.inputs],
            "outputs": [tensor(t) for t in info.spec.outputs],
        })

    async def model_ready(self, request: HttpRequest, model: str, version: str = "") -> HttpResponse:
        self.core.model(model, version)  # NotFound / Unavailable name the reason
        return HttpResponse(200)

    async def model_config(self, request: HttpRequest, model: str, version: str = "") -> HttpResponse:
        return json_response(message_json(model_config(self.core.model(model, version))))

    async def statistics(self, request: HttpRequest, model: str = "", version: str = "") -> HttpResponse:
        found = self.core.statistics(model, version)
        return json_response(message_json(pb.ModelStatisticsResponse(model_stats=[statistics_message(s) for s in found])))

    # -- inference ----------------------------------------------------------------------------

    async def infer(self, request: HttpRequest, model: str, version: str = "") -> HttpResponse:
        decoded = _decode(request)
        result = await self.core.infer(*_core_arguments(decoded, model, version))
        return _infer_response(result, decoded)

    def infer_bulk(self, taken, request: HttpRequest, model: str, version: str = "") -> None:
        """`infer` without a coroutine, for the transport's bulk path: `taken` (respond(),
        on_cancel, over) is answered when the request's batch has run, or now with its error."""
        decoded = _decode(request)
        reply = _RestReply(taken, decoded)
        answer = self.core.submit(*_core_arguments(decoded, model, version), reply)
        if not answer.done():
            taken.on_cancel = answer.cancel

    # -- repository ---------------------------------------------------------------------------

    async def repository_index(self, request: HttpRequest) -> HttpResponse:
        ready = bool(_json_object(request).get("ready", False))
        return json_response([
            {"name": v.model, "version": "" if v.version is None else str(v.version), "state": v.state,
             "reason": v.reason}
            for v in self.core.index(ready)
        ])

    async def load(self, request: HttpRequest, model: str) -> HttpResponse:
        parameters = _json_object(request).get("parameters") or {}
        if parameters:
            # Triton's "config" and "file:<path>" overrides would load what the repository does not hold.
            raise InvalidArgument(f"load parameters ({', '.join(sorted(parameters))}) are not supported: mimo "
                                  "loads a model's folder as the repository holds it")
        await self.core.load(model, request.header("authorization"))
        return HttpResponse(200)

    async def unload(self, request: HttpRequest, model: str) -> HttpResponse:
        _json_object(request)
        await self.core.unload(model, request.header("authorization"))
        return HttpResponse(200)


def _decode(request: HttpRequest) -> rest_codec.RestInferRequest:
    header_length = _header_length(request)
    check_json_size(len(request.body) if header_length is None else min(header_length, len(request.body)),
                    "send large tensors as binary data (Inference-Header-Content-Length and each input's "
                    "binary_data_size; tritonclient's set_data_from_numpy(..., binary_data=True))")
    try:
        return rest_codec.decode_infer_request(request.body, header_length, MAX_TENSOR_ELEMENTS)
    except CodecError as exc:
        raise InvalidArgument(str(exc)) from None


def _core_arguments(decoded, model: str, version: str) -> tuple:
    """Core.infer's arguments for a decoded REST request."""
    parameters = decoded.parameters
    return (model, version, decoded.inputs, decoded.outputs, kserve_parameters.signature_name(parameters),
            kserve_parameters.timeout(parameters, None))


def _infer_response(result, decoded) -> HttpResponse:
    body, header_length = rest_codec.encode_infer_response(result.model, result.version, decoded.id,
                                                           result.outputs, decoded.wants_binary)
    if header_length is None:
        return HttpResponse(200, body, [("content-type", "application/json")])
    return HttpResponse(200, body, [("content-type", "application/octet-stream"), (HEADER_LENGTH, str(header_length))])


class _RestReply:
    """The core's answer to one bulk REST infer request, encoded and sent as soon as it is known."""

    __slots__ = ("taken", "decoded")

    def __init__(self, taken, decoded):
        self.taken = taken
        self.decoded = decoded

    def done(self) -> bool:
        return self.taken.over

    def set_result(self, result) -> None:
        try:
            response = _infer_response(result, self.decoded)
        except Exception as exc:  # noqa: BLE001
            response = error_response(exc)
        self.taken.respond(response)

    def set_exception(self, exc: BaseException) -> None:
        self.taken.respond(error_response(exc))


def _state(ok: bool, why: str) -> HttpResponse:
    if ok:
        return HttpResponse(200)
    raise Unavailable(why)


def _header_length(request: HttpRequest) -> int | None:
    value = request.header(HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InvalidArgument(f"Inference-Header-Content-Length must be a non-negative integer, not {value!r}")
    return int(value)


def _json_object(request: HttpRequest) -> dict:
    """An optional JSON object body (repository calls): empty is {}."""
    if not request.body.strip():
        return {}
    try:
        document = orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return document


