"""The server assembly: settings -> core -> front ends -> transports, and the lifecycle.

`MimoServer` runs on one asyncio loop: gRPC (native or grpc.aio) and HTTP (REST) requests meet
the same core there, so they share validation, the scheduler and the batches. Compute never runs on
that loop but in each model's worker threads. `ServerThread` runs one in a background thread, for
tests and embedding.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from mimo.protos.repository import RepositoryError
from mimo.serving import metrics
from mimo.serving.core.core import Core
from mimo.serving.frontends.grpc_auth import interceptors
from mimo.serving.frontends.http_router import HttpFrontEnd
from mimo.serving.frontends.kserve_grpc import add_inference_service
from mimo.serving.reflection import add_reflection, register_in_pool
from mimo.serving.settings import ServerSettings
from mimo.serving.transports import native as native_transport
from mimo.serving.transports.aio import AioServer
from mimo.serving.transports.tls import tls_material

log = logging.getLogger("mimo.serving")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class MimoServer:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.core = Core(settings)
        self.health = health_aio.HealthServicer()
        self.port: int | None = None
        self.http_port: int | None = None  # None: HTTP is off
        self._server = None  # the gRPC transport
        self._http = None  # the HTTP transport (the gRPC one when that is native)
        self._poller: asyncio.Task | None = None
        self._services: list[str] = []  # gRPC services served (health answers for each by name)

    @property
    def registry(self):
        return self.core.registry

    def ready(self) -> bool:
        return self.core.ready()

    async def start(self) -> int:
        """Load the repository, then listen; returns the gRPC port.

        RepositoryError, naming every reason, when there is nothing to serve (no READY version at
        all) or, with --strict-readiness, when any model or version is not ready. Otherwise the
        models that cannot be served are reported (RepositoryIndex, readiness, log) and the rest serve.
        """
        await self.core.load_repository()
        await self._refuse_unless_servable()
        tls = tls_material(self.settings)
        self._server = server = self._grpc_transport()
        self._add_grpc_services(server)
        self.port = self._checked(server.listen(f"{self.settings.host}:{self.settings.port}", tls))
        if self.settings.http_port:
            self._http = self._http_transport(server)
            front_end = HttpFrontEnd(self.core, self.settings)
            address = f"{self.settings.host}:{self.settings.http_port}"
            self.http_port = self._checked(self._http.listen_http(address, tls, front_end.handle))
            if hasattr(self._http, "add_bulk_http"):
                self._http.add_bulk_http(front_end.take_bulk)
        await server.start()
        if self._http is not None and self._http is not server:
            await self._http.start()
        metrics.watch(self.core.registry)
        await self.update_health()
        if self.settings.poll_seconds > 0:
            self._poller = asyncio.ensure_future(self._poll_repository())
        log.info("mimo serving %d model version(s) on %s: gRPC %d, HTTP %s",
                 len(self.core.registry.ready_versions()), self.settings.host, self.port, self.http_port or "off")
        return self.port

    async def _refuse_unless_servable(self) -> None:
        registry = self.core.registry
        problems = registry.problems()
        if registry.ready_versions() and not (self.settings.strict_readiness and problems):
            for problem in problems:
                log.warning("not serving %s", problem)
            return
        await self.core.close()
        if not registry.models:
            raise RepositoryError(f"model repository {self.settings.model_repository} holds no models")
        why = "--strict-readiness and not every model is ready" if registry.ready_versions() else \
            f"nothing to serve in {self.settings.model_repository}"
        raise RepositoryError(why + ":\n  " + "\n  ".join(problems))

    def _grpc_transport(self):
        """The native transport when it is built and wanted, else grpc.aio: same services on both."""
        chain = interceptors(self.settings)
        limit = self.settings.max_message_bytes
        if self.settings.native_frontend:
            log.info("gRPC frontend: native (mimo's Rust transport: %s)", native_transport.native.STACK)
            return native_transport.NativeServer(interceptors=chain, max_message_bytes=limit)
        if not native_transport.available():  # said once, at start-up
            log.info("native transport not built (%s): %s", native_transport.IMPORT_ERROR,
                     native_transport.HOW_TO_BUILD)
        log.info("gRPC frontend: python (grpc.aio %s)", grpc.__version__)
        return AioServer(interceptors=chain, max_message_bytes=limit)

    def _http_transport(self, grpc_transport):
        """HTTP rides the native transport (its threads, its event queue) whenever that is built."""
        if hasattr(grpc_transport, "listen_http"):
            return grpc_transport
        if native_transport.available():
            return native_transport.NativeServer(max_message_bytes=self.settings.max_message_bytes)
        from mimo.serving.transports.asgi import AsgiServer

        return AsgiServer(max_message_bytes=self.settings.max_message_bytes)

    def _add_grpc_services(self, server) -> None:
        services = [add_inference_service(server, self.core)]
        try:
            from mimo.serving.frontends.tfserving_grpc import add_tf_serving
        except ImportError:  # the TF Serving protos are generated with the rest: only a broken install lacks them
            log.warning("TensorFlow Serving's API is not available in this install")
        else:
            services += add_tf_serving(server, self.core)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        register_in_pool(health_pb2)
        services.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        self._services = services + add_reflection(server, services)

    def _checked(self, port: int) -> int:
        if not port:
            raise OSError(f"could not listen on {self.settings.host}")
        return port

    async def update_health(self) -> None:
        server = SERVING if self.core.ready() else NOT_SERVING
        await self.health.set("", server)
        for service in self._services:  # a check naming a service (not a model) gets the server's state
            await self.health.set(service, server)
        for name in self.core.model_names():
            await self.health.set(name, SERVING if self.core.model_ready(name) else NOT_SERVING)

    async def _poll_repository(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.core.refresh()
                await self.update_health()
            except Exception:  # noqa: BLE001 - a poll must never kill the server
                log.exception("repository poll failed")

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking new calls, let in-flight ones finish (up to `grace` seconds), unload."""
        self.core.begin_drain()
        if self._poller is not None:
            self._poller.cancel()
        await self.health.enter_graceful_shutdown()
        grace = self.settings.grace_seconds if grace is None else grace
        stopping = [t.stop(grace) for t in {id(t): t for t in (self._server, self._http) if t is not None}.values()]
        await asyncio.gather(*stopping)
        await self.core.close()

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
    def http_port(self) -> int | None:
        return self.server.http_port

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    @property
    def http_address(self) -> str:
        return f"{self.settings.host}:{self.http_port}"

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
