"""Prometheus metrics over HTTP (the counters and histograms live in statistics.py)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger("mimo.serving")


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # metrics are an aid: a taken port must not stop serving
        log.error("metrics endpoint on %s:%d not started: %s", host, port, exc)
        return
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
