"""The server assembly: registry, gRPC services, health, reflection, metrics, and the lifecycle.

`MimoServer` runs on an asyncio loop (grpc.aio); compute never runs on that loop but in each
model's worker threads. `ServerThread` runs one in a background thread, for tests and embedding.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from mimo.protos import grpc_service_pb2, grpc_service_pb2_grpc
from mimo.protos.repository import RepositoryError
from mimo.serving import native_server
from mimo.serving.aio_requests import RequestParsing
from mimo.serving.reflection import add_reflection, register_in_pool
from mimo.serving.registry import READY, Registry
from mimo.serving import metrics
from mimo.serving.security import ModelControl, interceptors, server_credentials, tls_material
from mimo.serving.servicers.kserve import InferenceServicer
from mimo.serving.settings import ServerSettings

log = logging.getLogger("mimo.serving")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class MimoServer:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.registry = Registry(settings)
        self.health = health_aio.HealthServicer()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._loaded = False
        self._draining = False
        self._poller: asyncio.Task | None = None
        self._services: list[str] = []  # gRPC services served (health answers for each by name)

    def ready(self) -> bool:
        if not self._loaded or self._draining:
            return False
        if self.settings.strict_readiness and self.registry.problems():
            return False
        return bool(self.registry.ready_versions())

    async def start(self) -> int:
        """Load the repository, then listen; returns the port.

        RepositoryError, naming every reason, when there is nothing to serve (no READY version at
        all) or, with --strict-readiness, when any model or version is not ready. Otherwise the
        models that cannot be served are reported (RepositoryIndex, readiness, log) and the rest serve.
        """
        await self.registry.load_all()
        await self._refuse_unless_servable()
        self._loaded = True
        server = self._make_server()
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.registry, self.ready, ModelControl(self.settings)), server
        )
        self._add_tf_serving(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        register_in_pool(health_pb2)
        services = [
            grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        ] + self._tf_serving_names
        self._services = services + add_reflection(server, services)
        self.port = self._listen(server)
        await server.start()
        self._server = server
        metrics.watch(self.registry)
        await self.update_health()
        if self.settings.poll_seconds > 0:
            self._poller = asyncio.ensure_future(self._poll_repository())
        log.info("mimo serving %d model version(s) on %s:%d", len(self.registry.ready_versions()),
                 self.settings.host, self.port)
        return self.port

    async def _refuse_unless_servable(self) -> None:
        problems = self.registry.problems()
        if self.registry.ready_versions() and not (self.settings.strict_readiness and problems):
            for problem in problems:
                log.warning("not serving %s", problem)
            return
        await self.registry.close()
        if not self.registry.models:
            raise RepositoryError(f"model repository {self.settings.model_repository} holds no models")
        why = "--strict-readiness and not every model is ready" if self.registry.ready_versions() else \
            f"nothing to serve in {self.settings.model_repository}"
        raise RepositoryError(why + ":\n  " + "\n  ".join(problems))

    def _make_server(self):
        """The native transport when it is built and wanted, else grpc.aio: same services on both."""
        chain = interceptors(self.settings)
        limit = self.settings.max_message_bytes
        if self.settings.native_frontend:
            log.info("gRPC frontend: native (mimo's Rust transport: %s)", native_server.native.STACK)
            return native_server.NativeServer(interceptors=chain, max_message_bytes=limit)
        if not native_server.available():  # said once, at start-up
            log.info("native transport not built (%s): %s", native_server.IMPORT_ERROR, native_server.HOW_TO_BUILD)
        log.info("gRPC frontend: python (grpc.aio %s)", grpc.__version__)
        return grpc.aio.server(
            interceptors=[*chain, RequestParsing()],  # innermost: it wraps the method's handler
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 1),
            ],
        )

    def _listen(self, server) -> int:
        address = f"{self.settings.host}:{self.settings.port}"
        if isinstance(server, native_server.NativeServer):
            material = tls_material(self.settings)
            port = server.add_insecure_port(address) if material is None else server.add_tls_port(address, *material)
        else:
            credentials = server_credentials(self.settings)
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        if not port:
            raise OSError(f"could not listen on {address}")
        return port

    _tf_serving_names: list[str] = []

    def _add_tf_serving(self, server) -> None:
        try:
            from mimo.serving.servicers.tfserving import add_tf_serving
        except ImportError:
            return
        self._tf_serving_names = add_tf_serving(server, self.registry)

    async def update_health(self) -> None:
        server = SERVING if self.ready() else NOT_SERVING
        await self.health.set("", server)
        for service in self._services:  # a check naming a service (not a model) gets the server's state
            await self.health.set(service, server)
        for name in self.registry.models:
            await self.health.set(name, SERVING if self.registry.is_model_ready(name) else NOT_SERVING)

    async def _poll_repository(self) -> None:
        while not self._draining:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.registry.refresh()
                await self.update_health()
            except Exception:  # noqa: BLE001 - a poll must never kill the server
                log.exception("repository poll failed")

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking new calls, let in-flight ones finish (up to `grace` seconds), unload."""
        self._draining = True
        if self._poller is not None:
            self._poller.cancel()
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.settings.grace_seconds if grace is None else grace)
        await self.registry.close()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


class ServerThread:
    """A MimoServer on its own event loop in a background thread (tests, notebooks)."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.server = MimoServer(settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mimo-server", daemon=True)

    def start(self, timeout: float = 300) -> "ServerThread":
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout)
        except BaseException:  # a refused start leaves no thread behind
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            raise
        return self

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def call(self, coroutine, timeout: float = 60):
        """Run a coroutine on the server's loop (e.g. registry.refresh())."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, grace: float = 5) -> None:
        if self._thread.is_alive():
            self.call(self.server.stop(grace), timeout=grace + 60)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "ServerThread":
        return self if self._thread.is_alive() else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
