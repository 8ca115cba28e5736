"""`mimo serve`: parse settings, start the server, run until SIGTERM/SIGINT, drain, exit 0."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from mimo.serving.settings import parse_settings

    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from mimo.protos.repository import RepositoryError

    try:
        return asyncio.run(_serve(settings))
    except RepositoryError as exc:
        print(f"mimo serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mimo serve: {exc}", file=sys.stderr)
        return 2


async def _serve(settings) -> int:
    from mimo.serving.metrics import start_metrics_server
    from mimo.serving.server import MimoServer

    server = MimoServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    if settings.metrics_port:
        start_metrics_server(settings.metrics_port, settings.host)
    print(f"mimo: serving on {settings.host}:{server.port} (ready: {server.ready()})", flush=True)
    await stop.wait()
    logging.getLogger("mimo.serving").info("shutting down: draining in-flight requests")
    await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
