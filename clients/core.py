"""The one client core that Client (sync) and AsyncClient (asyncio) share: channel settings,
request building, response decoding, the metadata cache and the checks, and the bookkeeping of
a predict_many stream. It does no I/O, so the two clients differ only in how they wait.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from typing import Any, Iterable, Mapping

import grpc
import numpy as np

from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos.errors import CodecError

from mimo.client.checks import Checker, check_heads, gather_inputs
from mimo.client.convert import conform, dtype_unsettled
from mimo.client.errors import InferenceError, from_rpc_error, invalid
from mimo.client.metadata import ModelMetadata, parse_index, parse_metadata

Pem = bytes | str | os.PathLike | None


def _pem(value: Pem) -> bytes | None:
    """PEM bytes, PEM text, or a path to a PEM file."""
    if value is None or isinstance(value, bytes):
        return value
    text = os.fspath(value)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    with open(text, "rb") as f:
        return f.read()


def output_names(outputs) -> list[str] | tuple[str, ...] | None:
    """outputs= as given (None, one name, or any iterable of names) -> None or a list/tuple."""
    if outputs is None or isinstance(outputs, (list, tuple)):
        return outputs
    return [outputs] if isinstance(outputs, str) else list(outputs)


class ClientCore:
    def __init__(self, target: str, *, timeout: float | None = None, tls: bool = False,
                 root_certificates: Pem = None, certificate_chain: Pem = None, private_key: Pem = None,
                 token: str | None = None, max_message_mb: int = 64, local_checks: bool = True):
        self.target = target
        self.timeout = timeout
        self.local_checks = local_checks
        # Built once: every call passes the same metadata tuple.
        self.call_metadata = (("authorization", f"Bearer {token}"),) if token else None
        limit = int(max_message_mb * 1024 * 1024)
        self.options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
        self.credentials = None
        if tls or root_certificates or certificate_chain or private_key:
            if bool(certificate_chain) != bool(private_key):
                raise ValueError("certificate_chain and private_key go together (mutual TLS)")
            self.credentials = grpc.ssl_channel_credentials(
                _pem(root_certificates), _pem(private_key), _pem(certificate_chain))
        self._checkers: dict[str, Checker] = {}

    def channel_args(self) -> tuple[tuple, dict]:
        """(args, kwargs) for grpc[.aio].secure_channel / insecure_channel."""
        if self.credentials is None:
            return (self.target,), {"options": self.options}
        return (self.target, self.credentials), {"options": self.options}

    def deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def error(self, exc: grpc.RpcError, model: str | None = None) -> InferenceError:
        return from_rpc_error(exc, self.target, model)

    # -- metadata ---------------------------------------------------------------------------

    @staticmethod
    def metadata_requests(model: str, version: str | int | None):
        v = "" if version is None else str(version)
        return pb.ModelMetadataRequest(name=model, version=v), pb.ModelConfigRequest(name=model, version=v)

    def store_metadata(self, meta_response, config_response) -> ModelMetadata:
        meta = parse_metadata(meta_response, config_response)
        # Per model, not per version: a model's inputs and outputs are declared once (model.json).
        self._checkers[meta.name] = Checker(meta)
        return meta

    def cached(self, model: str) -> ModelMetadata | None:
        checker = self._checkers.get(model)
        return checker.meta if checker is not None else None

    def forget(self, model: str | None = None) -> None:
        """Drop cached metadata (one model, or all), e.g. after the model changed on the server."""
        if model is None:
            self._checkers.clear()
        else:
            self._checkers.pop(model, None)

    @staticmethod
    def index_request():
        return pb.RepositoryIndexRequest()

    parse_index = staticmethod(parse_index)

    def needs_metadata(self, model: str, inputs: Mapping[str, Any] | None, named: Mapping[str, Any]) -> bool:
        """Whether to fetch `model`'s metadata before sending these inputs: local checks are on,
        it is not cached yet, and an input is a list, a scalar or an int64/float64 array, whose
        datatype only the model can settle (fetched once per model, then cached)."""
        if not self.local_checks or model in self._checkers:
            return False
        return any(isinstance(given, Mapping) and dtype_unsettled(given) for given in (inputs, named))

    # -- one inference ----------------------------------------------------------------------

    def infer_request(self, model: str, inputs: Mapping[str, Any] | None, named: dict[str, Any],
                      outputs: Iterable[str] | None, version: str | int | None,
                      signature: str | None, request_id: str | None = None):
        checker = self._checkers.get(model)
        meta = checker.meta if checker is not None else None
        arrays = gather_inputs(model, inputs, named, meta)
        if meta is not None:  # even without local checks: known datatypes are worth meeting
            arrays, problems = conform(arrays, meta)
            if problems:
                raise invalid(model, problems)
        outputs = output_names(outputs)
        if checker is not None and self.local_checks:
            checker.check(arrays, outputs, signature)
        try:
            return codec.encode_infer_request(
                model, arrays, outputs, version,
                {"signature_name": signature} if signature else None, request_id)
        except CodecError as exc:
            raise invalid(model, [str(exc)]) from None

    def infer_result(self, model: str, response, outputs, signature: str | None) -> dict[str, np.ndarray]:
        try:
            result = codec.decode_infer_response(response)
        except CodecError as exc:
            raise InferenceError(grpc.StatusCode.INTERNAL, f"unreadable answer: {exc}", model) from None
        if outputs:
            check_heads(model, result, output_names(outputs))
        else:
            checker = self._checkers.get(model)
            if checker is not None and checker.meta.signatures:
                check_heads(model, result, checker.heads(None, signature))
            elif not result:
                raise InferenceError(grpc.StatusCode.INTERNAL, "the server's answer has no outputs", model)
        return result

    # -- many inferences over one stream -----------------------------------------------------

    def stream(self, model: str, batches: Iterable[Mapping[str, Any]], concurrency: int,
               outputs, version, signature, return_exceptions: bool) -> "StreamPlan":
        return StreamPlan(self, model, batches, concurrency, outputs, version, signature, return_exceptions)


class StreamPlan:
    """predict_many's bookkeeping: which requests to send now (at most `concurrency` in flight),
    and the results in input order. Each request carries its index as its id, so answers are put
    back in order even from a server that answered out of order.

    A driver loops: send `to_send()`; when `needs_metadata`, fetch the model's metadata and loop
    (the item that wanted it waits); close the request side once `exhausted`, hand out `ready()`,
    stop when `finished`, otherwise read one response into `receive()`.
    """

    def __init__(self, core: ClientCore, model, batches, concurrency, outputs, version, signature,
                 return_exceptions):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.core, self.model, self.concurrency = core, model, concurrency
        self.outputs = output_names(outputs)
        self.version, self.signature = version, signature
        self.return_exceptions = return_exceptions
        self._items = iter(batches)
        self._slots: deque = deque()  # per input, in order: a request id (str) or a local error
        self._pending: OrderedDict[str, None] = OrderedDict()  # ids sent, not yet answered
        self._answers: dict[str, Any] = {}
        self._count = 0
        self._held = None  # an item waiting for the model's metadata
        self.exhausted = False
        self.needs_metadata = False

    def to_send(self) -> list:
        requests = []
        self.needs_metadata = False
        while not self.exhausted and len(self._pending) < self.concurrency:
            item, self._held = self._held, None
            if item is None:
                try:
                    item = next(self._items)
                except StopIteration:
                    self.exhausted = True
                    break
            if isinstance(item, Mapping) and self.core.needs_metadata(self.model, item, {}):
                self._held, self.needs_metadata = item, True
                break
            request_id = str(self._count)
            self._count += 1
            try:
                if not isinstance(item, Mapping):
                    raise TypeError(f"predict_many: item {request_id} is a {type(item).__name__}, "
                                    "not a mapping of input names to arrays")
                request = self.core.infer_request(self.model, item, {}, self.outputs, self.version,
                                                  self.signature, request_id)
            except InferenceError as exc:  # refused locally: this item's answer, no round trip
                self._slots.append(exc)
                continue
            self._slots.append(request_id)
            self._pending[request_id] = None
            requests.append(request)
        return requests

    def refuse(self, error: InferenceError) -> None:
        """The model's metadata could not be fetched for the held item: that is its answer."""
        self._held = None
        self._count += 1
        self._slots.append(error)

    def receive(self, response) -> None:
        request_id = response.infer_response.id
        if request_id not in self._pending:
            if not self._pending:
                raise InferenceError(grpc.StatusCode.INTERNAL, "the server sent an answer nobody asked for", self.model)
            request_id = next(iter(self._pending))  # a server that does not echo ids answers in order
        del self._pending[request_id]
        self._answers[request_id] = response

    def ready(self) -> list:
        """Results (dicts) or InferenceErrors that are next in input order."""
        out = []
        while self._slots:
            front = self._slots[0]
            if isinstance(front, str):
                response = self._answers.pop(front, None)
                if response is None:
                    break
                front = self._result(response)
            self._slots.popleft()
            out.append(front)
        return out

    def _result(self, response):
        if response.error_message:
            # Triton's wrapper carries no status code; mimo's server adds it as a parameter.
            code_name = response.infer_response.parameters["error_code"].string_param \
                if "error_code" in response.infer_response.parameters else ""
            code = getattr(grpc.StatusCode, code_name, grpc.StatusCode.UNKNOWN)
            return InferenceError(code, response.error_message, self.model)
        try:
            return self.core.infer_result(self.model, response.infer_response, self.outputs, self.signature)
        except InferenceError as exc:
            return exc

    @property
    def finished(self) -> bool:
        return self.exhausted and not self._slots

    def early_end(self) -> InferenceError:
        return InferenceError(grpc.StatusCode.UNKNOWN,
                              f"the stream ended with {len(self._pending)} request(s) unanswered", self.model)
