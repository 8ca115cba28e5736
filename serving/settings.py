"""Server-wide settings: command-line flags, each with a MIMO_* environment variable behind it.

Each option is declared once, as a `ServerSettings` field made by `option(...)`: its name gives the
flag (`max_queue_size` -> `--max-queue-size`; a boolean that defaults to True: `--no-batching`) and
the variable (`MIMO_MAX_QUEUE_SIZE`, `MIMO_BATCHING=0`), its annotation the type, its metadata the
help and choices; `build_parser()` and `parse_settings()` are generated from the fields.

Parsed only in `main()`; everything else receives a `ServerSettings`. Per-model settings live in
each model's model.json and override the server-wide defaults where both exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from mimo.serving.thread_policy import POLICIES as THREAD_POLICIES


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

ENV_PREFIX = "MIMO_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def option(default=dataclasses.MISSING, help: str = "", *, choices: tuple[str, ...] | None = None,
           secret: bool = False, file_help: str | None = None):
    """A `ServerSettings` field that is also a flag and a MIMO_ variable. `secret`: left out of repr;
    `file_help`: the value may instead be read from the file `--<flag>-file` (MIMO_<NAME>_FILE)."""
    return field(default=default, repr=not secret,
                 metadata={"help": help, "choices": choices, "file_help": file_help})


@dataclass
class ServerSettings:
    model_repository: Path = option(help="the model repository: one folder per model (required)")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0 or :: for every interface)")
    port: int = option(8500, "gRPC port (default 8500; 0 = any free port)")
    http_port: int = option(8501, "HTTP port for KServe v2 REST and TensorFlow Serving REST "
                            "(default 8501; 0 turns HTTP off)")
    backend: str = option("onnxruntime", "default backend; a model.json 'backend' overrides it (default onnxruntime)",
                          choices=BACKENDS)
    device: str = option("auto", "where models compute (default auto)", choices=DEVICES)
    max_message_mb: int = option(64, "largest request or response message, in MiB (default 64)")
    metrics_port: int = option(8000, "Prometheus /metrics port (default 8000; 0 = off)")
    instances: int = option(0, "concurrent executions per model (default: one per core, at most 4)")
    intra_op_threads: int = option(1, "threads per execution (default 1); instances x threads should not "
                                   "exceed the cores")
    execution: str = option(
        "auto", "where models run: 'inline' on the event loop (no thread hand-off), 'thread' in "
        "--instances worker threads (batches grow while one computes), 'auto' (default): a "
        "request that finds its model idle runs inline if the model computes in under 1 ms, "
        "queued work inline under 50 us per execution and in threads otherwise, and such cheap "
        "work in threads too while they are seen to batch 4 requests or more", choices=EXECUTION)
    workers: int = option(
        1, "server processes sharing the port (SO_REUSEPORT); each loads every model "
        "(default 1). --metrics-port then serves every worker's metrics, labelled worker=\"i\", "
        "gathered from the workers' own endpoints on the next N ports")
    event_loop: str = option(
        "auto", "the asyncio event loop of `mimo serve`: uvloop (less CPU per request: +20%% qa "
        "requests/s on one core in make bench), asyncio, or 'auto' (default): uvloop when it is "
        "installed (the server extra installs it, except on Windows)", choices=EVENT_LOOPS)
    thread_policy: str = option(
        "auto", "Linux CPU scheduling of the server's threads: 'batch' (SCHED_BATCH): the "
        "transport's, the event loop's and the models' threads each run until they wait instead "
        "of preempting one another at every hand-off, so each takes its work in bulk (one core, "
        "mlp at c=8 and c=32: +20-45%% requests/s), at some latency for requests that come one at "
        "a time (mlp c=1 p50 +2-5%%); 'normal' (SCHED_OTHER) as the process was started; 'auto' "
        "(default): normal while requests do not overlap, batch while they do",
        choices=THREAD_POLICIES)
    frontend: str = option(
        "auto", "gRPC transport: 'native' (mimo's Rust transport: HTTP/2 and gRPC off the Python "
        "thread, several times cheaper per call), 'python' (grpc.aio), 'auto' (default): native "
        "when it is built (pip builds it where a Rust toolchain is on PATH), else python", choices=FRONTENDS)
    batching: bool = option(True, "run every request on its own")
    max_queue_delay_ms: float = option(0.0, "extra wait for a fuller batch, in ms (default 0: batch what is queued)")
    max_queue_size: int = option(1024, "requests waiting per model before RESOURCE_EXHAUSTED (default 1024)")
    strict_readiness: bool = option(False, "refuse to start (exit 2) unless every model and version loads; "
                                    "without it the server starts when at least one does and reports the others")
    poll_seconds: float = option(0.0, "poll the repository for new versions every N seconds (0 = off)")
    grace_seconds: float = option(20.0, "on SIGTERM, how long in-flight requests may take (default 20)")
    tls_cert: Path | None = option(None, "TLS certificate chain, PEM (with --tls-key)")
    tls_key: Path | None = option(None, "TLS private key, PEM (with --tls-cert)")
    tls_client_ca: Path | None = option(None, "require client certificates signed by this CA (mutual TLS)")
    token: str | None = option(
        None, "bearer token required on inference and metadata calls. A flag's value is visible to every "
        "local user (ps, /proc/PID/cmdline): prefer --token-file or the MIMO_TOKEN environment variable",
        secret=True, file_help="read the bearer token from this file (surrounding whitespace ignored)")
    model_control_mode: str = option(
        "none", "'none' (default): the repository RPCs RepositoryModelLoad/Unload are refused "
        "(PERMISSION_DENIED); 'explicit': they load and unload the repository's models, by folder "
        "name, for holders of --admin-token when one is set. RepositoryIndex and health stay open",
        choices=MODEL_CONTROL_MODES)
    admin_token: str | None = option(
        None, "bearer token RepositoryModelLoad/Unload require under --model-control-mode explicit. A flag's "
        "value is visible to every local user (ps, /proc/PID/cmdline): prefer --admin-token-file or the "
        "MIMO_ADMIN_TOKEN environment variable",
        secret=True, file_help="read the admin token from this file (surrounding whitespace ignored)")
    log_level: str = option("INFO", "logging level: DEBUG, INFO, WARNING or ERROR (default INFO)")

    # Resolved from the options at construction (dataclasses.replace resolves them again), so that
    # reading them imports nothing.
    uses_uvloop: bool = field(init=False)
    native_frontend: bool = field(init=False)  # the server runs on the native transport

    def __post_init__(self) -> None:
        self.uses_uvloop = self.event_loop == "uvloop" or (self.event_loop == "auto" and _uvloop_installed())
        self.native_frontend = self.frontend == "native" or (
            self.frontend == "auto" and _native_transport().available())

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def executions_per_model(self) -> int:
        """Concurrent executions per model in this process: the usable cores (the affinity mask,
        so a server pinned with taskset does not oversubscribe its core) shared among the worker
        processes, at least 1 and at most 4."""
        if self.instances:
            return self.instances
        return max(1, min(4, usable_cores() // max(1, self.workers)))


def _uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _native_transport():
    """The native transport's module, imported on first use (it loads the Rust extension when built)."""
    from mimo.serving.transports import native

    return native


# --- the flags and variables, generated from the fields -------------------------------------------

def options() -> list[dataclasses.Field]:
    """The server options: every `ServerSettings` field set by a flag and a variable."""
    return [f for f in dataclasses.fields(ServerSettings) if f.init]


def flag(f: dataclasses.Field) -> str:
    """`--max-queue-size`; a boolean that defaults to True is switched off: `--no-batching`."""
    name = f.name.replace("_", "-")
    return f"--no-{name}" if kind(f) is bool and f.default is True else f"--{name}"


def variable(f: dataclasses.Field) -> str:
    """`MIMO_MAX_QUEUE_SIZE`, from the field's name (`MIMO_BATCHING` for `--no-batching`)."""
    return ENV_PREFIX + f.name.upper()


_HINTS = typing.get_type_hints(ServerSettings)


def kind(f: dataclasses.Field) -> type:
    """The option's type without its None: str, int, float, bool or Path."""
    hint = _HINTS[f.name]
    types = [t for t in typing.get_args(hint) if t is not type(None)]
    return types[0] if types else hint


def _path(text: str) -> Path | None:
    return Path(text) if text else None


def _from_text(f: dataclasses.Field, text: str):
    """An option's value from its variable's text; ValueError says what is wrong."""
    typ = kind(f)
    if typ is bool:
        lowered = text.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise ValueError("not a boolean (1/0, true/false, yes/no, on/off)")
        return lowered in _TRUE
    if typ is Path:
        return _path(text)
    try:
        value = typ(text)
    except ValueError:
        raise ValueError(f"not {'an' if typ is int else 'a'} {typ.__name__}") from None
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise ValueError(f"choose from {', '.join(choices)}")
    return value


def _default(parser: argparse.ArgumentParser, f: dataclasses.Field, name: str):
    """The variable `name`'s value when it is set, else the declared default."""
    text = os.environ.get(name)
    if text is None:
        return None if f.default is dataclasses.MISSING else f.default
    try:
        return _from_text(f, text)
    except ValueError as exc:
        parser.error(f"{name}={text!r}: {exc}")


def _help(f: dataclasses.Field, text: str, name: str) -> str:
    if kind(f) is bool:  # the value that does what the flag does
        name = f"{name}={'0' if f.default else '1'}"
    return f"{text} [env: {name}]" if text else f"[env: {name}]"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mimo serve",
        description="Serve a model repository over gRPC and HTTP (Open Inference Protocol / KServe v2 and "
        "TensorFlow Serving's Predict API). Every flag can also be set by its MIMO_<FLAG> environment "
        "variable (--max-queue-size: MIMO_MAX_QUEUE_SIZE; --no-batching: MIMO_BATCHING=0); a flag beats its variable.",
    )
    for f in options():
        name, text = variable(f), f.metadata["help"]
        if kind(f) is bool:
            p.add_argument(flag(f), dest=f.name, action="store_false" if f.default else "store_true",
                           default=_default(p, f, name), help=_help(f, text, name))
        else:
            p.add_argument(flag(f), dest=f.name, type=_path if kind(f) is Path else kind(f),
                           choices=f.metadata["choices"], default=_default(p, f, name), help=_help(f, text, name))
        if f.metadata["file_help"]:
            p.add_argument(f"{flag(f)}-file", dest=f"{f.name}_file", default=os.environ.get(f"{name}_FILE"),
                           help=_help(f, f.metadata["file_help"], f"{name}_FILE"))
    return p


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


def parse_settings(argv: list[str]) -> ServerSettings:
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in options()}
    for f in options():
        if f.metadata["file_help"]:
            values[f.name] = _secret(parser, flag(f), values[f.name], getattr(args, f"{f.name}_file"))
    s = ServerSettings(**values)
    if not s.model_repository:
        parser.error("--model-repository (or MIMO_MODEL_REPOSITORY) is required")
    if bool(s.tls_cert) != bool(s.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if s.tls_client_ca and not s.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    if s.event_loop == "uvloop" and not _uvloop_installed():
        parser.error("--event-loop uvloop: uvloop is not installed (pip install uvloop)")
    if s.frontend == "native":
        native = _native_transport()
        if not native.available():
            parser.error(f"--frontend native: the native transport is not built ({native.IMPORT_ERROR}); "
                         f"{native.HOW_TO_BUILD}, or use --frontend python")
    if s.workers < 1:
        parser.error("--workers must be at least 1")
    if s.workers > 1 and s.port == 0:
        parser.error("--workers needs a fixed --port (the workers share it)")
    if s.http_port and s.http_port == s.port:  # http_port 0 is off, not "any free port"
        parser.error("--http-port and --port must differ")
    if s.max_message_mb < 1:
        parser.error("--max-message-mb must be at least 1")
    if s.admin_token and s.model_control_mode != "explicit":
        parser.error("--admin-token guards RepositoryModelLoad/Unload: it needs --model-control-mode explicit")
    if s.model_control_mode == "explicit" and s.poll_seconds > 0:
        # The poller would load again what an operator unloaded: one of the two decides what is served.
        parser.error("--model-control-mode explicit and --poll-seconds exclude each other: choose one")
    if s.model_control_mode == "explicit" and s.workers > 1:
        # A load or unload reaches the one worker its connection landed on; the others would differ.
        parser.error("--model-control-mode explicit needs --workers 1 (a load or unload reaches one worker only)")
    return s
