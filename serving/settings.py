"""Server-wide settings: command-line flags, each with a MIMO_* environment variable behind it.

Parsed only in `main()`; everything else receives a `ServerSettings`. Per-model settings live in
each model's model.json and override the server-wide defaults where both exist.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)

BACKENDS = ("onnxruntime", "tensorflow")
EXECUTION = ("auto", "inline", "thread")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
DEVICES = ("auto", "cpu", "gpu")
FRONTENDS = ("auto", "native", "python")
MODEL_CONTROL_MODES = ("none", "explicit")


@dataclass
class ServerSettings:
    model_repository: Path
    host: str = "127.0.0.1"
    port: int = 8500
    backend: str = "onnxruntime"
    device: str = "auto"
    max_message_mb: int = 64
    metrics_port: int = 8000  # 0 turns the Prometheus endpoint off
    instances: int = 0  # concurrent executions per model; 0 = one per usable core (at most 4)
    intra_op_threads: int = 1  # per execution; instances x threads should not exceed the cores
    execution: str = "auto"  # where models run: auto | inline (event loop) | thread (worker threads)
    workers: int = 1  # server processes sharing the port (SO_REUSEPORT), each loading every model
    event_loop: str = "auto"  # auto (uvloop when installed) | asyncio | uvloop
    frontend: str = "auto"  # gRPC transport: native (Rust, built by pip install) | python (grpc.aio) | auto
    batching: bool = True
    max_queue_delay_ms: float = 0.0  # extra wait for a fuller batch; 0 = batch what is queued
    max_queue_size: int = 1024  # requests waiting per model before RESOURCE_EXHAUSTED
    strict_readiness: bool = False  # start (and be ready) only when every model and version is
    poll_seconds: float = 0.0  # repository poll for new versions; 0 = off
    grace_seconds: float = 20.0  # on SIGTERM, how long in-flight requests may take
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token: str | None = field(default=None, repr=False)
    # RepositoryModelLoad/Unload: refused under "none" (Triton's default too); "explicit" allows them,
    # to holders of admin_token when one is set.
    model_control_mode: str = "none"
    admin_token: str | None = field(default=None, repr=False)
    log_level: str = "INFO"

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def uses_uvloop(self) -> bool:
        if self.event_loop != "auto":
            return self.event_loop == "uvloop"
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return False
        return True

    @property
    def native_frontend(self) -> bool:
        """Whether the server runs on the native transport (auto: when it is built)."""
        if self.frontend == "python":
            return False
        from mimo.serving import native_server

        return self.frontend == "native" or native_server.available()

    @property
    def executions_per_model(self) -> int:
        """Concurrent executions per model in this process: the usable cores (the affinity mask,
        so a server pinned with taskset does not oversubscribe its core) shared among the worker
        processes, at least 1 and at most 4."""
        if self.instances:
            return self.instances
        return max(1, min(4, usable_cores() // max(1, self.workers)))


def _env(name: str, default):
    return os.environ.get(f"MIMO_{name}", default)


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(f"MIMO_{name}")
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _secret(parser: argparse.ArgumentParser, flag: str, value: str | None, path: str | None) -> str | None:
    """A token given as `flag` (or its MIMO_ variable) or read from the file `flag`-file, not both."""
    if value and path:
        parser.error(f"give {flag} or {flag}-file, not both (check the MIMO_ environment variables too)")
    if not path:
        return value or None
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        parser.error(f"{flag}-file: cannot read {path}: {exc.strerror}")
    if not secret:
        parser.error(f"{flag}-file: {path} is empty")
    return secret


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mimo serve",
        description="Serve a model repository over gRPC (Open Inference Protocol and TensorFlow Serving's "
        "Predict API). Every flag can also be set by the MIMO_<FLAG> environment variable.",
    )
    p.add_argument("--model-repository", default=_env("MODEL_REPOSITORY", None), help="repository folder (MIMO_MODEL_REPOSITORY)")
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(_env("PORT", 8500)))
    p.add_argument("--backend", choices=BACKENDS, default=_env("BACKEND", "onnxruntime"),
                   help="default backend; a model.json 'backend' overrides it (default onnxruntime)")
    p.add_argument("--device", choices=DEVICES, default=_env("DEVICE", "auto"))
    p.add_argument("--max-message-mb", type=int, default=int(_env("MAX_MESSAGE_MB", 64)))
    p.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT", 8000)), help="0 = off")
    p.add_argument("--instances", type=int, default=int(_env("INSTANCES", 0)),
                   help="concurrent executions per model (default: one per core, at most 4)")
    p.add_argument("--intra-op-threads", type=int, default=int(_env("INTRA_OP_THREADS", 1)))
    p.add_argument("--execution", choices=EXECUTION, default=_env("EXECUTION", "auto"),
                   help="where models run: 'inline' on the event loop (no thread hand-off), 'thread' in "
                   "--instances worker threads (batches grow while one computes), 'auto' (default): a "
                   "request that finds its model idle runs inline if the model computes in under 1 ms, "
                   "queued work inline under 50 us per execution and in threads otherwise")
    p.add_argument("--event-loop", choices=EVENT_LOOPS, default=_env("EVENT_LOOP", "auto"),
                   help="the asyncio event loop of `mimo serve`: uvloop (less CPU per request: +20%% qa "
                   "requests/s on one core in make bench), asyncio, or 'auto' (default): uvloop when it is "
                   "installed (the server extra installs it, except on Windows)")
    p.add_argument("--frontend", choices=FRONTENDS, default=_env("FRONTEND", "auto"),
                   help="gRPC transport: 'native' (mimo's Rust transport: HTTP/2 and gRPC off the Python "
                   "thread, several times cheaper per call), 'python' (grpc.aio), 'auto' (default): native "
                   "when it is built (pip builds it where a Rust toolchain is on PATH), else python")
    p.add_argument("--workers", type=int, default=int(_env("WORKERS", 1)),
                   help="server processes sharing the port (SO_REUSEPORT); each loads every model "
                   "(default 1). --metrics-port then serves every worker's metrics, labelled worker=\"i\", "
                   "gathered from the workers' own endpoints on the next N ports")
    p.add_argument("--no-batching", dest="batching", action="store_false", default=_env_bool("BATCHING", True),
                   help="run every request on its own (MIMO_BATCHING=0)")
    p.add_argument("--max-queue-delay-ms", type=float, default=float(_env("MAX_QUEUE_DELAY_MS", 0.0)))
    p.add_argument("--max-queue-size", type=int, default=int(_env("MAX_QUEUE_SIZE", 1024)))
    p.add_argument("--strict-readiness", action="store_true", default=_env_bool("STRICT_READINESS", False),
                   help="refuse to start (exit 2) unless every model and version loads; without it the "
                        "server starts when at least one does and reports the others")
    p.add_argument("--poll-seconds", type=float, default=float(_env("POLL_SECONDS", 0.0)),
                   help="poll the repository for new versions every N seconds (0 = off)")
    p.add_argument("--grace-seconds", type=float, default=float(_env("GRACE_SECONDS", 20.0)))
    p.add_argument("--tls-cert", default=_env("TLS_CERT", None))
    p.add_argument("--tls-key", default=_env("TLS_KEY", None))
    p.add_argument("--tls-client-ca", default=_env("TLS_CLIENT_CA", None),
                   help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--token", default=_env("TOKEN", None),
                   help="bearer token required on inference and metadata calls (MIMO_TOKEN). A flag's "
                   "value is visible to every local user (ps, /proc/PID/cmdline): prefer --token-file "
                   "or the MIMO_TOKEN environment variable")
    p.add_argument("--token-file", default=_env("TOKEN_FILE", None),
                   help="read the bearer token from this file (MIMO_TOKEN_FILE; surrounding whitespace ignored)")
    p.add_argument("--model-control-mode", choices=MODEL_CONTROL_MODES, default=_env("MODEL_CONTROL_MODE", "none"),
                   help="'none' (default): the repository RPCs RepositoryModelLoad/Unload are refused "
                   "(PERMISSION_DENIED); 'explicit': they load and unload the repository's models, by folder "
                   "name, for holders of --admin-token when one is set. RepositoryIndex and health stay open")
    p.add_argument("--admin-token", default=_env("ADMIN_TOKEN", None),
                   help="bearer token RepositoryModelLoad/Unload require under --model-control-mode explicit "
                   "(MIMO_ADMIN_TOKEN); visible to local users as a flag: prefer --admin-token-file")
    p.add_argument("--admin-token-file", default=_env("ADMIN_TOKEN_FILE", None),
                   help="read the admin token from this file (MIMO_ADMIN_TOKEN_FILE)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p


def parse_settings(argv: list[str]) -> ServerSettings:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model_repository:
        parser.error("--model-repository (or MIMO_MODEL_REPOSITORY) is required")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    if args.event_loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("--event-loop uvloop: uvloop is not installed (pip install uvloop)")
    if args.frontend == "native":
        from mimo.serving import native_server

        if not native_server.available():
            parser.error(f"--frontend native: the native transport is not built ({native_server.IMPORT_ERROR}); "
                         f"{native_server.HOW_TO_BUILD}, or use --frontend python")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and args.port == 0:
        parser.error("--workers needs a fixed --port (the workers share it)")
    if args.max_message_mb < 1:
        parser.error("--max-message-mb must be at least 1")
    token = _secret(parser, "--token", args.token, args.token_file)
    admin_token = _secret(parser, "--admin-token", args.admin_token, args.admin_token_file)
    if admin_token and args.model_control_mode != "explicit":
        parser.error("--admin-token guards RepositoryModelLoad/Unload: it needs --model-control-mode explicit")
    if args.model_control_mode == "explicit" and args.poll_seconds > 0:
        # The poller would load again what an operator unloaded: one of the two decides what is served.
        parser.error("--model-control-mode explicit and --poll-seconds exclude each other: choose one")
    if args.model_control_mode == "explicit" and args.workers > 1:
        # A load or unload reaches the one worker its connection landed on; the others would differ.
        parser.error("--model-control-mode explicit needs --workers 1 (a load or unload reaches one worker only)")
    optional_path = lambda value: Path(value) if value else None
    return ServerSettings(
        model_repository=Path(args.model_repository),
        host=args.host,
        port=args.port,
        backend=args.backend,
        device=args.device,
        max_message_mb=args.max_message_mb,
        metrics_port=args.metrics_port,
        instances=args.instances,
        intra_op_threads=args.intra_op_threads,
        execution=args.execution,
        workers=args.workers,
        event_loop=args.event_loop,
        frontend=args.frontend,
        batching=args.batching,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_size=args.max_queue_size,
        strict_readiness=args.strict_readiness,
        poll_seconds=args.poll_seconds,
        grace_seconds=args.grace_seconds,
        tls_cert=optional_path(args.tls_cert),
        tls_key=optional_path(args.tls_key),
        tls_client_ca=optional_path(args.tls_client_ca),
        token=token,
        model_control_mode=args.model_control_mode,
        admin_token=admin_token,
        log_level=args.log_level,
    )
