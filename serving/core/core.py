"""The protocol-free core every front end calls (the role of MLServer's DataPlane, Triton's C API).

It owns the registry and takes and returns plain values: numpy arrays, the contract (`ModelSpec`)
and the small dataclasses below. It never sees a protobuf or an HTTP request, and it raises only
the error family of `core/errors.py`. Inference flows registry -> validation -> scheduler ->
backend; statistics and metrics are recorded here, once for every protocol.
"""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from mimo import __version__
from mimo.protos.repository import ModelSpec
from mimo.serving.core.control import ModelControl
from mimo.serving.core.errors import DeadlineExceeded, NotFound, ServingError, status_code
from mimo.serving.core.registry import LOADING, READY, UNAVAILABLE, UNLOADING, Registry
from mimo.serving.core.scheduler import Reply, SchedulerOptions
from mimo.serving.core.statistics import ModelStats, record_rejected
from mimo.serving.core.validation import DEFAULT_SIGNATURE, validate_request
from mimo.serving.settings import ServerSettings

# The version states are the registry's; front ends take them from here.
__all__ = ["Answer", "Core", "InferResult", "ModelInfo", "ServerInfo", "VersionState", "EXTENSIONS",
           "LOADING", "READY", "UNAVAILABLE", "UNLOADING"]
# From this many input bytes on, a request is validated in a thread: the checks (id ranges) are
# linear in its size, and numpy's reductions let the event loop serve other requests meanwhile.
OFF_LOOP_BYTES = 1 << 20
# Triton's names for what mimo's KServe v2 front ends implement beyond the core protocol.
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics", "model_configuration", "schedule_policy")


@dataclass(frozen=True)
class ServerInfo:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class ModelInfo:
    """One served model version: what metadata, config and signature answers are made from."""

    name: str
    version: int
    ready_versions: tuple[int, ...]  # of this model, ascending
    platform: str  # "onnxruntime_onnx" | "tensorflow_savedmodel"
    backend: str  # "onnxruntime" | "tensorflow"
    spec: ModelSpec
    scheduling: SchedulerOptions


@dataclass(frozen=True)
class VersionState:
    """A model version as the repository index reports it; version None: the model as a whole."""

    model: str
    version: int | None
    state: str  # READY | LOADING | UNLOADING | UNAVAILABLE
    reason: str


@dataclass(frozen=True)
class InferResult:
    model: str
    version: int
    outputs: dict[str, np.ndarray]


class Core:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.registry = Registry(settings)
        self.control = ModelControl(settings.model_control_mode, settings.admin_token)
        self._loaded = False
        self._draining = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def load_repository(self) -> None:
        await self.registry.load_all()
        self._loaded = True

    async def refresh(self) -> None:
        """Pick up new, changed and removed versions (the repository poll)."""
        await self.registry.refresh()

    def begin_drain(self) -> None:
        """Not ready from now on (SIGTERM): load balancers stop sending, in-flight calls finish."""
        self._draining = True

    async def close(self) -> None:
        await self.registry.close()

    # -- health -------------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Serving: loaded, not draining, at least one version ready (all, with --strict-readiness)."""
        if not self._loaded or self._draining:
            return False
        if self.settings.strict_readiness and self.registry.problems():
            return False
        return bool(self.registry.ready_versions())

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.registry.is_model_ready(name, version)

    def model_names(self) -> list[str]:
        return sorted(self.registry.models)

    # -- metadata -----------------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        return ServerInfo("mimo", __version__, EXTENSIONS)

    def model(self, name: str, version: str = "") -> ModelInfo:
        """The served version of `name` (the newest ready one unless `version` names one)."""
        served = self.registry.get(name, version)
        entry = self.registry.models[name]
        return ModelInfo(
            name=served.name,
            version=served.version,
            ready_versions=tuple(n for n, mv in sorted(entry.versions.items()) if mv.state == READY),
            platform=served.backend.platform,
            backend=served.backend_kind,
            spec=served.spec,
            scheduling=served.scheduler.options,
        )

    def versions(self, name: str, version: int | None = None) -> list[VersionState]:
        """Every loaded version of `name` (or the one asked for) with its state: NotFound otherwise."""
        entry = self.registry.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}'")
        found = [VersionState(name, n, mv.state, mv.reason) for n, mv in sorted(entry.versions.items())
                 if version is None or n == version]
        if version is not None and not found:
            raise NotFound(f"model '{name}' has no version {version}")
        return found

    def index(self, ready_only: bool = False) -> list[VersionState]:
        """The repository: every model's versions; a model with nothing to serve says why (version None)."""
        found = []
        for name, entry in sorted(self.registry.models.items()):
            found += [VersionState(name, n, mv.state, mv.reason) for n, mv in sorted(entry.versions.items())
                      if not ready_only or mv.state == READY]
            if (entry.reason or not entry.versions) and not ready_only:
                found.append(VersionState(name, None, "UNAVAILABLE", entry.reason or "no version loaded"))
        return found

    def in_flight(self) -> int:
        """Requests inside the core now (between their arrival and their answer), over all models."""
        return sum(mv.stats.in_flight for entry in self.registry.models.values()
                   for mv in entry.versions.values() if mv.stats is not None)

    def statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        """Copies of the statistics of every loaded version (of `name`, of `version`)."""
        if name and name not in self.registry.models:
            raise NotFound(f"unknown model '{name}'")
        found = []
        for model, entry in sorted(self.registry.models.items()):
            if name and model != name:
                continue
            for number, mv in sorted(entry.versions.items()):
                if (not version or str(number) == version) and mv.stats is not None:
                    found.append(_snapshot(mv.stats))
        return found

    # -- inference ----------------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] = (),
        signature: str = "",
        timeout: float | None = None,
    ) -> InferResult:
        """Validate `inputs` against the model's contract, run them (batched), return the heads asked
        for (all of the signature's when `outputs` is empty). `timeout` is what is left of the
        caller's deadline in seconds."""
        future = asyncio.get_running_loop().create_future()
        answer = self.submit(model, version, inputs, outputs, signature, timeout, future)
        if future.done():  # answered at once (an idle model runs the request inline, or an error)
            return future.result()
        try:
            return await future
        except asyncio.CancelledError:
            answer.cancel()
            raise

    def submit(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        signature: str,
        timeout: float | None,
        reply: Reply,
    ) -> "Answer":
        """`infer` without a coroutine, for front ends that take requests in bulk: the InferResult
        or the error goes to `reply` (done(), set_result(), set_exception(): an asyncio future is
        one), now or when the request's batch has run. The Answer returned lets the front end
        cancel the request (its client went away)."""
        answer = Answer(reply, time.perf_counter_ns(), None if timeout is None else time.monotonic() + timeout)
        try:
            served = self.registry.get(model, version)
        except ServingError as exc:
            record_rejected("-", "-", exc.code.name)
            answer.reject(exc)
            return answer
        answer.served = served
        served.stats.begin()  # every path below ends in answer's record_request
        try:
            if timeout is not None and timeout <= 0:
                raise DeadlineExceeded("the deadline passed before the request could start")
            signature = signature or DEFAULT_SIGNATURE
            if sum(array.nbytes for array in inputs.values()) >= OFF_LOOP_BYTES:
                validating = asyncio.get_running_loop().run_in_executor(
                    None, validate_request, served.spec, inputs, outputs, signature)
                validating.add_done_callback(lambda done: self._validated(served, inputs, done, signature, answer))
            else:
                wanted = validate_request(served.spec, inputs, outputs, signature)
                served.scheduler.submit(inputs, wanted, signature, answer.deadline, answer)
        except Exception as exc:  # noqa: BLE001 - every failure is the request's answer
            answer.set_exception(exc)
        return answer

    @staticmethod
    def _validated(served, inputs, validation: asyncio.Future, signature: str, answer: "Answer") -> None:
        """A large request's off-loop validation is over: queue it, or answer its error."""
        if answer.done():  # cancelled while it was validated
            return
        try:
            served.scheduler.submit(inputs, validation.result(), signature, answer.deadline, answer)
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - cancelled: the off-loop check
            answer.set_exception(exc)

    # -- model control ------------------------------------------------------------------------

    async def load(self, name: str, authorization: str | bytes | None = None) -> None:
        """Load the repository's folder `name` (PermissionDenied unless model control is explicit)."""
        self.control.check(authorization)
        await self.registry.load_model(name)

    async def unload(self, name: str, authorization: str | bytes | None = None) -> None:
        self.control.check(authorization)
        await self.registry.unload_model(name)


class Answer:
    """A request's way out of the core: it records the request's statistics once (success, or
    failure under the status the client sees) and hands the InferResult or error to the reply."""

    __slots__ = ("reply", "started", "deadline", "served", "_over")

    def __init__(self, reply: Reply, started: int, deadline: float | None):
        self.reply = reply
        self.started = started  # perf_counter_ns
        self.deadline = deadline  # time.monotonic() seconds, or None
        self.served = None  # the model version, once found
        self._over = False

    def done(self) -> bool:
        return self._over or self.reply.done()

    def set_result(self, outputs: dict[str, np.ndarray]) -> None:
        if self._end(None):
            served = self.served
            self.reply.set_result(InferResult(served.name, served.version, outputs))

    def set_exception(self, exc: BaseException) -> None:
        if self._end(exc):
            self.reply.set_exception(exc)

    def cancel(self) -> None:
        """The client went away: counted as cancelled; the reply hears nothing more."""
        self._end(asyncio.CancelledError())

    def reject(self, exc: ServingError) -> None:
        """Refused before any model version was found (counted by the caller)."""
        self._over = True
        self.reply.set_exception(exc)

    def _end(self, exc: BaseException | None) -> bool:
        if self._over:
            return False
        self._over = True
        took = time.perf_counter_ns() - self.started
        if exc is None:
            self.served.stats.record_request(True, took)
        else:
            self.served.stats.record_request(False, took, status_code(exc, self.deadline).name)
        return not self.reply.done()


def _snapshot(stats: ModelStats) -> ModelStats:
    """A consistent copy, taken under the lock the worker threads update it with."""
    with stats.lock:
        clone = copy.copy(stats)
        for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            setattr(clone, name, copy.copy(getattr(stats, name)))
        clone.batches = {size: copy.copy(d) for size, d in sorted(stats.batches.items())}
    return clone
