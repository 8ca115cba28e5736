"""KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`), as Triton speaks it.

Wire-compatible with tritonclient.grpc and perf_analyzer: the ModelConfig subset they read, the
streaming wrapper message, statistics and the repository extension.
"""

from __future__ import annotations

import asyncio
import json

import grpc

from mimo import __version__
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc
from mimo.protos import model_config_pb2 as mc
from mimo.protos.dtypes import datatype_to_triton
from mimo.serving.errors import InvalidArgument, ServingError, status_for
from mimo.serving.inference import infer
from mimo.serving.registry import Registry
from mimo.serving.security import ModelControl

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "model_configuration", "schedule_policy"]
STREAM_WINDOW = 128  # requests in flight per stream; responses still leave in request order


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: Registry, readiness, control: ModelControl):
        self.registry = registry
        self.readiness = readiness  # () -> bool, owned by the server (loading, draining)
        self.control = control  # who may load and unload models

    # -- health-like --------------------------------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.readiness())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.registry.is_model_ready(request.name, request.version))

    # -- metadata -----------------------------------------------------------------------------

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="mimo", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        try:
            served = self.registry.get(request.name, request.version)
        except ServingError as exc:
            await _abort(context, exc)
        entry = self.registry.models[request.name]
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[str(v) for v, mv in sorted(entry.versions.items()) if mv.state == "READY"],
            platform=served.backend.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in served.spec.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in served.spec.outputs],
        )

    async def ModelConfig(self, request, context):
        try:
            served = self.registry.get(request.name, request.version)
        except ServingError as exc:
            await _abort(context, exc)
        return pb.ModelConfigResponse(config=model_config(served))

    # -- inference ----------------------------------------------------------------------------

    async def ModelInfer(self, request, context):
        try:
            return await self._infer(request, context.time_remaining())
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            await _abort(context, exc)

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

    async def _stream_one(self, request) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request, None))
        except Exception as exc:  # noqa: BLE001
            code, message = status_for(exc)
            response = pb.ModelStreamInferResponse(
                error_message=message,
                infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
            )
            # Triton's wrapper has no status code; mimo adds it as a parameter clients may read.
            response.infer_response.parameters["error_code"].string_param = code.name
            return response

    async def _infer(self, request, timeout):
        inputs = codec.decode_infer_request(request)
        signature = ""
        if "signature_name" in request.parameters:
            signature = request.parameters["signature_name"].string_param
            if not signature:
                raise InvalidArgument("parameter 'signature_name' must be a non-empty string")
        served, outputs = await infer(
            self.registry, request.model_name, request.model_version, inputs,
            codec.requested_outputs(request), signature, timeout,
        )
        raw = _wants_raw(request)
        return codec.encode_infer_response(
            served.name, outputs, served.version, request.id, raw=raw
        )

    # -- statistics and repository ------------------------------------------------------------

    async def ModelStatistics(self, request, context):
        versions = []
        for name, entry in self.registry.models.items():
            if request.name and name != request.name:
                continue
            for number, mv in sorted(entry.versions.items()):
                if request.version and str(number) != request.version:
                    continue
                if mv.stats is not None:
                    versions.append(statistics_message(mv.stats))
        if request.name and not versions and request.name not in self.registry.models:
            await _abort(context, ServingError(f"unknown model '{request.name}'"), grpc.StatusCode.NOT_FOUND)
        return pb.ModelStatisticsResponse(model_stats=versions)

    async def RepositoryIndex(self, request, context):
        index = pb.RepositoryIndexResponse.ModelIndex
        models = []
        for name, entry in sorted(self.registry.models.items()):
            for number, mv in sorted(entry.versions.items()):
                if request.ready and mv.state != "READY":
                    continue
                models.append(index(name=name, version=str(number), state=mv.state, reason=mv.reason))
            # A model that cannot be served at all (or serves stale versions) says why, without a version.
            if (entry.reason or not entry.versions) and not request.ready:
                models.append(index(name=name, state="UNAVAILABLE", reason=entry.reason or "no version loaded"))
        return pb.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(self, request, context):
        try:
            self.control.check(context.invocation_metadata())
            if request.parameters:
                # Triton's "config" and "file:<path>" overrides would load what the repository does not hold.
                raise InvalidArgument(f"RepositoryModelLoad parameters ({', '.join(sorted(request.parameters))}) "
                                      "are not supported: mimo loads a model's folder as the repository holds it")
            await self.registry.load_model(request.model_name)
        except ServingError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            self.control.check(context.invocation_metadata())
            await self.registry.unload_model(request.model_name)
        except ServingError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelUnloadResponse()


def _wants_raw(request) -> bool:
    """Raw output bytes unless the client sent typed contents only (then answer in kind)."""
    return bool(request.raw_input_contents) or not request.inputs


def model_config(served) -> mc.ModelConfig:
    """The subset of Triton's ModelConfig that tritonclient and perf_analyzer read."""
    spec = served.spec
    batched = spec.max_batch_size > 0
    dims = lambda shape: list(shape[1:] if batched else shape)
    config = mc.ModelConfig(
        name=spec.name,
        platform=served.backend.platform,
        backend=served.backend_kind,
        max_batch_size=spec.max_batch_size,
        input=[mc.ModelInput(name=t.name, data_type=datatype_to_triton(t.datatype), dims=dims(t.shape))
               for t in spec.inputs],
        output=[mc.ModelOutput(name=t.name, data_type=datatype_to_triton(t.datatype), dims=dims(t.shape))
                for t in spec.outputs],
    )
    options = served.scheduler.options
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
    with stats.lock:
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
            ),
            batch_stats=[
                pb.InferBatchStatistics(batch_size=size, compute_infer=duration(d))
                for size, d in sorted(stats.batches.items())
            ],
        )


async def _abort(context, exc: BaseException, code: grpc.StatusCode | None = None):
    status, message = status_for(exc)
    await context.abort(code or status, message)
