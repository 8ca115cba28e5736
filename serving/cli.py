"""`mimo serve`: parse settings, start the server, run until SIGTERM/SIGINT, drain, exit 0."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from mimo.serving.thread_policy import LoadFollowing, set_every_thread

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from mimo.serving.settings import parse_settings

    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _set_thread_policy(settings.thread_policy)
    if settings.workers > 1:
        return _supervise(settings, list(sys.argv[1:] if argv is None else argv))
    from mimo.protos.repository import RepositoryError

    uses_uvloop = settings.uses_uvloop
    if uses_uvloop:
        import uvloop

        run = uvloop.run
    else:
        run = asyncio.run
    logging.getLogger("mimo.serving").info("event loop: %s", "uvloop" if uses_uvloop else "asyncio")
    try:
        return run(_serve(settings))
    except RepositoryError as exc:
        print(f"mimo serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mimo serve: {exc}", file=sys.stderr)
        return 2


def _set_thread_policy(policy: str) -> None:
    """`batch`: SCHED_BATCH for every thread of the process (numpy's BLAS threads exist already),
    before the server starts its own, which inherit it. `auto` switches later, with the load
    (serving/thread_policy.py); `normal` leaves the policy as it is."""
    if policy != "batch":
        return
    log = logging.getLogger("mimo.serving")
    refused = set_every_thread(True)
    if refused is not None:  # not Linux, or refused
        log.info("thread policy: batch not available (%s)", refused)
        return
    log.info("thread policy: batch (SCHED_BATCH)")


def _supervise(settings, argv: list[str]) -> int:
    """`--workers N`: run N `mimo serve` processes that share the port (SO_REUSEPORT; the kernel
    spreads new connections over them), each loading every model. Python's gRPC stack handles one
    request at a time per process, so more processes use more cores. Worker i serves its metrics on
    metrics_port + 1 + i; metrics_port answers for all of them (each series labelled worker="i").
    SIGTERM/SIGINT are passed on and each worker drains; if one worker dies, the
    others are stopped too and the exit status is non-zero (let the supervisor restart the set)."""
    import subprocess
    import time

    log = logging.getLogger("mimo.serving")
    env = dict(os.environ, MIMO_WORKERS="1")
    children = []
    for index in range(settings.workers):
        args = list(argv)
        # The last occurrence of a flag wins in argparse: override --workers and --metrics-port.
        args += ["--workers", "1"]
        if settings.metrics_port:
            args += ["--metrics-port", str(settings.metrics_port + 1 + index)]
        children.append(subprocess.Popen([sys.executable, "-m", "mimo.serving.cli", *args], env=env))
    if settings.metrics_port:
        from prometheus_client import CollectorRegistry

        from mimo.serving.metrics import WorkersCollector, start_metrics_server

        local = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        gathered = CollectorRegistry()
        gathered.register(WorkersCollector([f"http://{local}:{settings.metrics_port + 1 + index}/metrics"
                                            for index in range(settings.workers)]))
        start_metrics_server(settings.metrics_port, settings.host, gathered)
    log.info("mimo: %d worker processes on %s:%d: pids %s", settings.workers, settings.host, settings.port,
             " ".join(str(c.pid) for c in children))

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    while not stopping:
        if any(child.poll() is not None for child in children):
            failed = [c for c in children if c.returncode not in (None, 0)]
            status = failed[0].returncode if failed else 1
            log.error("mimo: a worker process exited (status %s); stopping the others", status)
            break
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.grace_seconds + 10
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return status if not stopping else 0


async def _serve(settings) -> int:
    from mimo.serving.metrics import start_metrics_server
    from mimo.serving.app import MimoServer

    server = MimoServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # Everything loaded so far (modules, models, descriptors: ~45k objects) lives as long as the
    # process: keep it out of the cyclic GC's full collections (each took ~9 ms, a p99 spike).
    gc.collect()
    gc.freeze()
    if settings.metrics_port:
        start_metrics_server(settings.metrics_port, settings.host)
    print(f"mimo: serving on {settings.host}:{server.port} (ready: {server.ready()})", flush=True)
    # The process's threads, so `mimo serve`'s only (a server started in-process leaves them alone).
    policy = asyncio.ensure_future(LoadFollowing(server.core.in_flight).run()) \
        if settings.thread_policy == "auto" else None
    await stop.wait()
    logging.getLogger("mimo.serving").info("shutting down: draining in-flight requests")
    if policy is not None:
        policy.cancel()
    await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
