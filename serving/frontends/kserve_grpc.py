"""KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`), as Triton speaks it.

Wire-compatible with tritonclient.grpc and perf_analyzer: the ModelConfig subset they read, the
streaming wrapper message, statistics and the repository extension.
"""

from __future__ import annotations

import asyncio
import json

from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc
from mimo.protos import model_config_pb2 as mc
from mimo.protos.dtypes import datatype_to_triton
from mimo.serving.core.control import authorization_of
from mimo.serving.core.core import Core, ModelInfo
from mimo.serving.core.errors import InvalidArgument
from mimo.serving.frontends import kserve_parameters
from mimo.serving.frontends.grpc_services import add_service
from mimo.serving.frontends.grpc_status import abort, grpc_status, parse_request

STREAM_WINDOW = 128  # requests in flight per stream; responses still leave in request order
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# Inference requests parse with the codec's own parser: large raw contents stay where they arrived.
PARSERS = {"ModelInfer": codec.parse_infer_request, "ModelStreamInfer": codec.parse_infer_request}


def add_inference_service(server, core: Core) -> str:
    """Register `inference.GRPCInferenceService` on `server`; returns its name. On a server that
    takes unary calls in bulk (the native transport), ModelInfer goes that way."""
    servicer = InferenceServicer(core)
    name = add_service(server, servicer, SERVICE, pb, PARSERS)
    if hasattr(server, "add_bulk_unary"):
        server.add_bulk_unary(f"/{name}/ModelInfer", servicer.model_infer_bulk)
        server.add_bulk_stream(f"/{name}/ModelStreamInfer", servicer.model_stream_infer_bulk)
    return name


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: Core):
        self.core = core

    # -- health-like --------------------------------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.core.live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.core.ready())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

    # -- metadata -----------------------------------------------------------------------------

    async def ServerMetadata(self, request, context):
        info = self.core.server_info()
        return pb.ServerMetadataResponse(name=info.name, version=info.version, extensions=info.extensions)

    async def ModelMetadata(self, request, context):
        try:
            info = self.core.model(request.name, request.version)
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=info.name,
            versions=[str(v) for v in info.ready_versions],
            platform=info.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in info.spec.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in info.spec.outputs],
        )

    async def ModelConfig(self, request, context):
        try:
            info = self.core.model(request.name, request.version)
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)
        return pb.ModelConfigResponse(config=model_config(info))

    # -- inference ----------------------------------------------------------------------------

    async def ModelInfer(self, request, context):
        try:
            return await self._infer(request, context.time_remaining())
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            await abort(context, exc)

    async def ModelStreamInfer(self, request_iterator, context):
        # Read ahead and run several requests at once, but answer strictly in request order; an
        # error answers its own request (error_message) and the stream goes on.
        window: asyncio.Queue = asyncio.Queue(maxsize=STREAM_WINDOW)

        async def read_requests():
            try:
                async for request in request_iterator:
                    await window.put(asyncio.ensure_future(self._stream_one(request)))
            finally:
                await window.put(None)

        reader = asyncio.ensure_future(read_requests())
        try:
            while (task := await window.get()) is not None:
                yield await task
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()

    async def _stream_one(self, request: codec.InferRequest) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request, None))
        except Exception as exc:  # noqa: BLE001
            return _stream_error(exc, request.message)

    async def _infer(self, parsed: codec.InferRequest, remaining):
        request, raw = parsed
        result = await self.core.infer(*_core_arguments(request, raw, remaining))
        return _response(result, request, raw)

    def model_infer_bulk(self, calls) -> None:
        """ModelInfer for every call one wake-up of the native transport brought (BulkCall): each
        is parsed, decoded, validated and queued here, and answered when its batch has run, with
        no coroutine per call. The same steps as `_infer`, the same errors."""
        for call in calls:
            try:
                request, raw = parse_request(PARSERS["ModelInfer"], call.payload)
                answer = self.core.submit(*_core_arguments(request, raw, call.time_remaining()),
                                          _BulkReply(call, request, raw))
                if not answer.done():
                    call.on_cancel = answer.cancel
            except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
                call.fail(*grpc_status(exc))

    def model_stream_infer_bulk(self, stream, payloads) -> None:
        """ModelStreamInfer's messages of one wake-up of the native transport (BulkStream): each
        is parsed, decoded, validated and queued as model_infer_bulk's calls are, and its answer
        (or its error_message) goes out in request order. A message that does not parse ends the
        stream with its status, after the answers before it: as `ModelStreamInfer`."""
        for payload in payloads:
            try:
                request, raw = parse_request(PARSERS["ModelStreamInfer"], payload, "a request message")
            except Exception as exc:  # noqa: BLE001
                stream.fail(*grpc_status(exc))
                return
            reply = _StreamReply(stream.slot(), request, raw)
            try:
                answer = self.core.submit(*_core_arguments(request, raw, None), reply)
            except Exception as exc:  # noqa: BLE001 - decoding: this request's error_message
                reply.set_exception(exc)
                continue
            if not answer.done():
                reply.target.on_cancel = answer.cancel

    # -- statistics and repository ------------------------------------------------------------

    async def ModelStatistics(self, request, context):
        try:
            found = self.core.statistics(request.name, request.version)
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)
        return pb.ModelStatisticsResponse(model_stats=[statistics_message(stats) for stats in found])

    async def RepositoryIndex(self, request, context):
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[
            index(name=v.model, version="" if v.version is None else str(v.version), state=v.state, reason=v.reason)
            for v in self.core.index(request.ready)
        ])

    async def RepositoryModelLoad(self, request, context):
        try:
            if request.parameters:
                # Triton's "config" and "file:<path>" overrides would load what the repository does not hold.
                raise InvalidArgument(f"RepositoryModelLoad parameters ({', '.join(sorted(request.parameters))}) "
                                      "are not supported: mimo loads a model's folder as the repository holds it")
            await self.core.load(request.model_name, authorization_of(context.invocation_metadata()))
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            await self.core.unload(request.model_name, authorization_of(context.invocation_metadata()))
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)
        return pb.RepositoryModelUnloadResponse()


def _core_arguments(request, raw, remaining) -> tuple:
    """Core.infer's arguments from a parsed ModelInferRequest (`remaining`: of the call's deadline)."""
    inputs = codec.decode_infer_request(request, raw)
    parameters = _read_parameters(request.parameters)
    signature = kserve_parameters.signature_name(parameters)
    timeout = kserve_parameters.timeout(parameters, remaining)
    return request.model_name, request.model_version, inputs, codec.requested_outputs(request), signature, timeout


def _answers_raw(request, raw) -> bool:
    """Raw output bytes unless the client sent typed contents only (then answer in kind)."""
    return bool(raw) or not request.inputs


def _response(result, request, raw) -> pb.ModelInferResponse:
    return codec.encode_infer_response(result.model, result.outputs, result.version, request.id,
                                       raw=_answers_raw(request, raw))


def _response_bytes(result, request, raw) -> bytes:
    """_response, serialized (the raw case written without building the message)."""
    if _answers_raw(request, raw):
        return codec.infer_response_bytes(result.model, result.outputs, result.version, request.id)
    return _response(result, request, raw).SerializeToString()


class _BulkReply:
    """The core's answer to one bulk ModelInfer call (`target`: a BulkCall), encoded and sent as
    soon as it is known; an error is the call's status."""

    __slots__ = ("target", "request", "raw")

    def __init__(self, target, request, raw):
        self.target = target
        self.request = request
        self.raw = raw

    def done(self) -> bool:
        return self.target.over

    def set_result(self, result) -> None:
        try:
            payload = self._encode(_response_bytes(result, self.request, self.raw))
        except Exception as exc:  # noqa: BLE001
            self.set_exception(exc)
        else:
            self._send(payload)

    def _encode(self, response: bytes) -> bytes:
        return response

    def _send(self, payload: bytes) -> None:
        self.target.reply(payload)

    def set_exception(self, exc: BaseException) -> None:
        self.target.fail(*grpc_status(exc))


class _StreamReply(_BulkReply):
    """The same for one request of a bulk stream (`target`: its StreamSlot): the answer goes into
    its place in the stream's order, and an error is that answer's error_message."""

    __slots__ = ()

    def _encode(self, response: bytes) -> bytes:
        return codec.stream_response_bytes(response)

    def _send(self, payload: bytes) -> None:
        self.target.send(payload)

    def set_exception(self, exc: BaseException) -> None:
        self.target.send(_stream_error(exc, self.request).SerializeToString())


def _stream_error(exc: BaseException, request) -> pb.ModelStreamInferResponse:
    """A stream's answer to a request that failed: error_message, and the stream goes on."""
    code, message = grpc_status(exc)
    response = pb.ModelStreamInferResponse(
        error_message=message, infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id))
    # Triton's wrapper has no status code; mimo adds it as a parameter clients may read.
    response.infer_response.parameters["error_code"].string_param = code.name
    return response


def _read_parameters(parameters) -> dict:
    """Only the parameters mimo reads. perf_analyzer sends others on every request, and decoding a
    whole protobuf map costs ~10 us on the event loop where two lookups cost well under one."""
    return {key: getattr(parameters[key], parameters[key].WhichOneof("parameter_choice") or "string_param")
            for key in kserve_parameters.READ if key in parameters}


def model_config(info: ModelInfo) -> mc.ModelConfig:
    """The subset of Triton's ModelConfig that tritonclient and perf_analyzer read (the REST
    front end sends the same message as JSON)."""
    spec = info.spec
    batched = spec.max_batch_size > 0
    dims = lambda shape: list(shape[1:] if batched else shape)
    config = mc.ModelConfig(
        name=spec.name,
        platform=info.platform,
        backend=info.backend,
        max_batch_size=spec.max_batch_size,
        input=[mc.ModelInput(name=t.name, data_type=datatype_to_triton(t.datatype), dims=dims(t.shape))
               for t in spec.inputs],
        output=[mc.ModelOutput(name=t.name, data_type=datatype_to_triton(t.datatype), dims=dims(t.shape))
                for t in spec.outputs],
    )
    options = info.scheduling
    if options.batching:
        config.dynamic_batching.max_queue_delay_microseconds = int(options.max_queue_delay_s * 1e6)
        config.dynamic_batching.default_queue_policy.max_queue_size = options.max_queue_size
    config.instance_group.add(count=options.instances)
    # What the v2 metadata cannot say (min lengths, id ranges, signatures) travels as parameters.
    constraints = {
        name: {k: v for k, v in (("min_length", c.min_length), ("id_range", c.id_range)) if v is not None}
        for name, c in spec.constraints.items()
    }
    config.parameters["constraints"].string_value = json.dumps(constraints)
    config.parameters["signatures"].string_value = json.dumps(spec.signatures)
    return config


def statistics_message(stats) -> pb.ModelStatistics:
    duration = lambda d: pb.StatisticDuration(count=d.count, ns=d.ns)
    return pb.ModelStatistics(
        name=stats.model,
        version=stats.version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=duration(stats.success),
            fail=duration(stats.fail),
            queue=duration(stats.queue),
            compute_input=duration(stats.compute_input),
            compute_infer=duration(stats.compute_infer),
            compute_output=duration(stats.compute_output),
            # mimo has no response cache; perf_analyzer reads these without checking they exist.
            cache_hit=pb.StatisticDuration(),
            cache_miss=pb.StatisticDuration(),
        ),
        batch_stats=[
            pb.InferBatchStatistics(batch_size=size, compute_input=pb.StatisticDuration(), compute_infer=duration(d),
                                    compute_output=pb.StatisticDuration())
            for size, d in sorted(stats.batches.items())
        ],
    )
