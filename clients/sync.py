"""Client: the blocking client. Everything but the waiting lives in core.ClientCore."""

from __future__ import annotations

import queue
import time
from typing import Any, Iterable, Iterator, Mapping

import grpc
import numpy as np

from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc

from mimo.client.core import ClientCore, Pem, output_names
from mimo.client.errors import InferenceError, ServerUnavailableError
from mimo.client.metadata import ModelMetadata, ModelStatus

_END = object()  # closes a stream's request side


class Client:
    """A blocking client for a mimo (or any Open Inference Protocol) gRPC server.

        with Client("localhost:8500") as c:
            heads = c.predict("posts", posts=tokens)    # {"age": ..., "income": ..., "gender": ...}

    `timeout` is the default deadline of every call in seconds (None: none). TLS is on when `tls`
    or any certificate is given; `root_certificates` verifies the server (default: the system's
    roots), `certificate_chain` + `private_key` identify the client (mutual TLS). Each accepts
    PEM bytes or a file path. `token` is sent as "authorization: Bearer <token>" metadata.
    The model's metadata (`metadata(model)`, cached per model) lets the client check inputs
    before sending and convert int64/float64 arrays and lists to the declared datatypes when
    no value changes (see mimo.client.convert). predict fetches it by itself, once per model,
    the first time an input is a list, a scalar or an int64/float64 array.
    `local_checks=False` leaves all checking to the server and fetches nothing on its own;
    metadata fetched explicitly is still used to convert (a conversion that would change a
    value is refused either way: the server would refuse the request anyway).
    """

    def __init__(self, target: str, *, timeout: float | None = None, tls: bool = False,
                 root_certificates: Pem = None, certificate_chain: Pem = None, private_key: Pem = None,
                 token: str | None = None, max_message_mb: int = 64, local_checks: bool = True):
        self._core = ClientCore(target, timeout=timeout, tls=tls, root_certificates=root_certificates,
                                certificate_chain=certificate_chain, private_key=private_key, token=token,
                                max_message_mb=max_message_mb, local_checks=local_checks)
        args, kwargs = self._core.channel_args()
        make = grpc.insecure_channel if len(args) == 1 else grpc.secure_channel
        self._channel = make(*args, **kwargs)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    @property
    def target(self) -> str:
        return self._core.target

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def __repr__(self) -> str:
        return f"Client({self.target!r})"

    def _call(self, method, request, timeout, model=None, **kwargs):
        try:
            return method(request, timeout=self._core.deadline(timeout), metadata=self._core.call_metadata, **kwargs)
        except grpc.RpcError as exc:
            raise self._core.error(exc, model) from None

    # -- health ----------------------------------------------------------------------------

    def live(self, *, timeout: float | None = None) -> bool:
        """Whether the server is live; False when it cannot be reached."""
        try:
            return self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout).live
        except ServerUnavailableError:
            return False

    def ready(self, model: str | None = None, version: str | int | None = None, *,
              timeout: float | None = None) -> bool:
        """Whether the server (or one model) is ready; False when the server cannot be reached."""
        try:
            if model is None:
                return self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout).ready
            request = pb.ModelReadyRequest(name=model, version="" if version is None else str(version))
            return self._call(self._stub.ModelReady, request, timeout, model).ready
        except ServerUnavailableError:
            return False

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Block until the server is ready; ServerUnavailableError naming the address after
        `timeout` seconds. Waits for the connection instead of failing fast."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self._stub.ServerReady(pb.ServerReadyRequest(), timeout=left, wait_for_ready=True,
                                          metadata=self._core.call_metadata).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        raise ServerUnavailableError(self.target, f"not ready after {timeout:g} s")

    # -- repository and metadata -------------------------------------------------------------

    def models(self, *, timeout: float | None = None) -> list[ModelStatus]:
        """Every model in the server's repository: name, versions, and whether it is ready."""
        return self._core.parse_index(self._call(self._stub.RepositoryIndex, self._core.index_request(), timeout))

    def metadata(self, model: str, version: str | int | None = None, *,
                 timeout: float | None = None) -> ModelMetadata:
        """Inputs and outputs (datatypes, shapes, min lengths, id ranges) and signatures, from
        the server; cached for the checks and list conversion of later calls."""
        meta_request, config_request = self._core.metadata_requests(model, version)
        meta = self._call(self._stub.ModelMetadata, meta_request, timeout, model)
        try:
            config = self._call(self._stub.ModelConfig, config_request, timeout, model)
        except InferenceError as exc:
            if exc.code != grpc.StatusCode.UNIMPLEMENTED:  # a plain v2 server has no ModelConfig
                raise
            config = None
        return self._core.store_metadata(meta, config)

    # -- inference ---------------------------------------------------------------------------

    def predict(self, model: str, inputs: Mapping[str, Any] | None = None, /, *,
                outputs: Iterable[str] | None = None, version: str | int | None = None,
                signature: str | None = None, timeout: float | None = None,
                **named: Any) -> dict[str, np.ndarray]:
        """Run `model` on named inputs (a mapping, keyword arguments, or both) and return
        {head: array} with the server's shapes and dtypes (read-only arrays over the answer's
        bytes). `outputs` asks for some heads only; `signature` selects a SavedModel signature
        (e.g. "age" of posts on the TensorFlow backend). Raises InferenceError."""
        outputs = output_names(outputs)  # once: a generator of names must serve twice
        if self._core.needs_metadata(model, inputs, named):  # once per model: int64/float64 and lists
            self.metadata(model, version, timeout=timeout)
        request = self._core.infer_request(model, inputs, named, outputs, version, signature)
        response = self._call(self._stub.ModelInfer, request, timeout, model)
        return self._core.infer_result(model, response, outputs, signature)

    def predict_many(self, model: str, batches: Iterable[Mapping[str, Any]], *, concurrency: int = 8,
                     outputs: Iterable[str] | None = None, version: str | int | None = None,
                     signature: str | None = None, timeout: float | None = None,
                     return_exceptions: bool = False) -> Iterator[dict[str, np.ndarray] | InferenceError]:
        """Run `model` on each mapping of `batches` over one ModelStreamInfer stream, with up to
        `concurrency` requests in flight, and yield the results in input order.

        When one item fails, its InferenceError is raised at that item and the iteration stops
        (the stream is cancelled); with `return_exceptions=True` the error is yielded in that
        item's place and the rest go on. Errors of the stream itself (unreachable server, wrong
        token, `timeout`: the deadline of the whole stream) are always raised.
        """
        plan = self._core.stream(model, batches, concurrency, outputs, version, signature, return_exceptions)
        requests: queue.SimpleQueue = queue.SimpleQueue()
        # gRPC reads the request iterator in its own thread; this one reads answers.
        call = self._stub.ModelStreamInfer(iter(requests.get, _END), timeout=self._core.deadline(timeout),
                                           metadata=self._core.call_metadata)
        closed = False
        try:
            while True:
                for request in plan.to_send():
                    requests.put(request)
                if plan.needs_metadata:
                    try:
                        self.metadata(model, version, timeout=timeout)
                    except ServerUnavailableError:
                        raise
                    except InferenceError as exc:  # e.g. an unknown model: that item's error
                        plan.refuse(exc)
                    continue
                if plan.exhausted and not closed:
                    requests.put(_END)
                    closed = True
                for item in plan.ready():
                    if isinstance(item, InferenceError) and not return_exceptions:
                        raise item
                    yield item
                if plan.finished:
                    return
                try:
                    response = next(call)
                except StopIteration:
                    raise plan.early_end() from None
                plan.receive(response)
        except grpc.RpcError as exc:
            raise self._core.error(exc, model) from None
        finally:
            if not closed:
                requests.put(_END)
            call.cancel()
