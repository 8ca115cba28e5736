"""AsyncClient: Client's methods as coroutines (grpc.aio), over the same core.ClientCore."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Iterable, Mapping

import grpc
import numpy as np

from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc

from mimo.client.core import ClientCore, Pem, output_names
from mimo.client.errors import InferenceError, ServerUnavailableError
from mimo.client.metadata import ModelMetadata, ModelStatus

_END = object()


class AsyncClient:
    """The asyncio client; same arguments, methods and errors as `Client`.

        async with AsyncClient("localhost:8500") as c:
            heads = await c.predict("mlp", x=x)
            async for result in c.predict_many("mlp", ({"x": b} for b in batches)):
                ...
    """

    def __init__(self, target: str, *, timeout: float | None = None, tls: bool = False,
                 root_certificates: Pem = None, certificate_chain: Pem = None, private_key: Pem = None,
                 token: str | None = None, max_message_mb: int = 64, local_checks: bool = True):
        self._core = ClientCore(target, timeout=timeout, tls=tls, root_certificates=root_certificates,
                                certificate_chain=certificate_chain, private_key=private_key, token=token,
                                max_message_mb=max_message_mb, local_checks=local_checks)
        self._channel = None
        self._stub_ = None

    @property
    def target(self) -> str:
        return self._core.target

    @property
    def _stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        # Made on first use, inside the running event loop the channel must belong to.
        if self._stub_ is None:
            args, kwargs = self._core.channel_args()
            make = grpc.aio.insecure_channel if len(args) == 1 else grpc.aio.secure_channel
            self._channel = make(*args, **kwargs)
            self._stub_ = pb_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub_

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub_ = None

    def __repr__(self) -> str:
        return f"AsyncClient({self.target!r})"

    async def _call(self, method_name: str, request, timeout, model=None, **kwargs):
        method = getattr(self._stub, method_name)
        try:
            return await method(request, timeout=self._core.deadline(timeout), metadata=self._core.call_metadata,
                                **kwargs)
        except grpc.RpcError as exc:
            raise self._core.error(exc, model) from None

    # -- health ----------------------------------------------------------------------------

    async def live(self, *, timeout: float | None = None) -> bool:
        try:
            return (await self._call("ServerLive", pb.ServerLiveRequest(), timeout)).live
        except ServerUnavailableError:
            return False

    async def ready(self, model: str | None = None, version: str | int | None = None, *,
                    timeout: float | None = None) -> bool:
        try:
            if model is None:
                return (await self._call("ServerReady", pb.ServerReadyRequest(), timeout)).ready
            request = pb.ModelReadyRequest(name=model, version="" if version is None else str(version))
            return (await self._call("ModelReady", request, timeout, model)).ready
        except ServerUnavailableError:
            return False

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                response = await self._stub.ServerReady(pb.ServerReadyRequest(), timeout=left, wait_for_ready=True,
                                                        metadata=self._core.call_metadata)
                if response.ready:
                    return
            except grpc.RpcError:
                pass
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        raise ServerUnavailableError(self.target, f"not ready after {timeout:g} s")

    # -- repository and metadata -------------------------------------------------------------

    async def models(self, *, timeout: float | None = None) -> list[ModelStatus]:
        return self._core.parse_index(await self._call("RepositoryIndex", self._core.index_request(), timeout))

    async def metadata(self, model: str, version: str | int | None = None, *,
                       timeout: float | None = None) -> ModelMetadata:
        meta_request, config_request = self._core.metadata_requests(model, version)
        meta = await self._call("ModelMetadata", meta_request, timeout, model)
        try:
            config = await self._call("ModelConfig", config_request, timeout, model)
        except InferenceError as exc:
            if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                raise
            config = None
        return self._core.store_metadata(meta, config)

    # -- inference ---------------------------------------------------------------------------

    async def predict(self, model: str, inputs: Mapping[str, Any] | None = None, /, *,
                      outputs: Iterable[str] | None = None, version: str | int | None = None,
                      signature: str | None = None, timeout: float | None = None,
                      **named: Any) -> dict[str, np.ndarray]:
        """See Client.predict."""
        outputs = output_names(outputs)  # once: a generator of names must serve twice
        if self._core.needs_metadata(model, inputs, named):  # once per model: int64/float64 and lists
            await self.metadata(model, version, timeout=timeout)
        request = self._core.infer_request(model, inputs, named, outputs, version, signature)
        response = await self._call("ModelInfer", request, timeout, model)
        return self._core.infer_result(model, response, outputs, signature)

    async def predict_many(self, model: str, batches: Iterable[Mapping[str, Any]], *, concurrency: int = 8,
                           outputs: Iterable[str] | None = None, version: str | int | None = None,
                           signature: str | None = None, timeout: float | None = None,
                           return_exceptions: bool = False) -> AsyncIterator[dict[str, np.ndarray] | InferenceError]:
        """See Client.predict_many (an async generator here; `batches` is a plain iterable)."""
        plan = self._core.stream(model, batches, concurrency, outputs, version, signature, return_exceptions)
        requests: asyncio.Queue = asyncio.Queue()

        async def request_iterator():
            while (request := await requests.get()) is not _END:
                yield request

        # Requests go out from gRPC's own task, so a slow reader here never blocks writing.
        call = self._stub.ModelStreamInfer(request_iterator(), timeout=self._core.deadline(timeout),
                                           metadata=self._core.call_metadata)
        closed = False
        try:
            while True:
                for request in plan.to_send():
                    requests.put_nowait(request)
                if plan.needs_metadata:
                    try:
                        await self.metadata(model, version, timeout=timeout)
                    except ServerUnavailableError:
                        raise
                    except InferenceError as exc:  # e.g. an unknown model: that item's error
                        plan.refuse(exc)
                    continue
                if plan.exhausted and not closed:
                    requests.put_nowait(_END)
                    closed = True
                for item in plan.ready():
                    if isinstance(item, InferenceError) and not return_exceptions:
                        raise item
                    yield item
                if plan.finished:
                    return
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise plan.early_end()
                plan.receive(response)
        except grpc.RpcError as exc:
            raise self._core.error(exc, model) from None
        finally:
            if not closed:
                requests.put_nowait(_END)
            call.cancel()
