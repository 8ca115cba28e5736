"""Prometheus metrics over HTTP (the counters and histograms live in statistics.py).

The gauges (queue depth, in-flight requests, each version's state) are read from the registries
at scrape time, so they are never stale and a version that is gone has no series. Under
`--workers N` the supervisor serves one endpoint that gathers every worker's (`WorkersCollector`).
"""

from __future__ import annotations

import logging
import socket
import threading
import urllib.request
import weakref
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("mimo.serving")
STATES = ("READY", "LOADING", "UNAVAILABLE", "UNLOADING")  # the registry's version states


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - scrapes are not worth a log line each
        pass


def metrics_only(app):
    """The metrics app at /metrics and a 404 everywhere else: a scrape port that answered 200 on
    every path made `/v2/health/ready` look healthy to HTTP clients."""

    def serve(environ, start_response):
        if environ.get("PATH_INFO", "") in ("/metrics", "/metrics/"):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: this port serves Prometheus metrics at /metrics only\n"]

    return serve


def start_metrics_server(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> None:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
        server = make_server(host, port, metrics_only(make_wsgi_app(registry)), server_class, _QuietHandler)
        threading.Thread(target=server.serve_forever, name="mimo-metrics", daemon=True).start()
    except OSError as exc:  # metrics are an aid: a taken port must not stop serving
        log.error("metrics endpoint on %s:%d not started: %s", host, port, exc)
        return
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)


class RegistryCollector:
    """Per model version: requests queued, requests in flight, and the version's state."""

    def __init__(self):
        self._registries = weakref.WeakSet()

    def watch(self, registry) -> None:
        self._registries.add(registry)

    def collect(self):
        labels = ["model", "version"]
        queued = GaugeMetricFamily("mimo_queue_depth", "Requests waiting for an execution", labels=labels)
        in_flight = GaugeMetricFamily("mimo_inflight_requests", "Requests in the server for this version, "
                                      "queued or computing", labels=labels)
        state = GaugeMetricFamily("mimo_model_state", "1 for the version's state (READY, LOADING, "
                                  "UNAVAILABLE, UNLOADING), 0 for the others", labels=labels + ["state"])
        for registry in list(self._registries):
            # Read from the metrics thread while the event loop changes them: copy, then read.
            for entry in list(registry.models.values()):
                for mv in list(entry.versions.values()):
                    key = [mv.model, str(mv.version)]
                    queued.add_metric(key, mv.scheduler.size if mv.scheduler is not None else 0)
                    in_flight.add_metric(key, mv.stats.in_flight if mv.stats is not None else 0)
                    for name in STATES:
                        state.add_metric(key + [name], 1 if mv.state == name else 0)
        yield from (queued, in_flight, state)


_COLLECTOR = RegistryCollector()
REGISTRY.register(_COLLECTOR)
watch = _COLLECTOR.watch


class WorkersCollector:
    """Every worker's metrics, fetched at scrape time and labelled worker="<index>"; a worker that
    does not answer (still loading, or gone) is mimo_worker_up 0."""

    def __init__(self, urls: list[str], timeout: float = 2.0):
        self.urls, self.timeout = urls, timeout

    def collect(self):
        up = GaugeMetricFamily("mimo_worker_up", "1 when the worker process answered this scrape", labels=["worker"])
        families = {}
        for index, url in enumerate(self.urls):
            try:
                text = urllib.request.urlopen(url, timeout=self.timeout).read().decode()
            except OSError:
                up.add_metric([str(index)], 0)
                continue
            up.add_metric([str(index)], 1)
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                merged.samples += [s._replace(labels={**s.labels, "worker": str(index)}) for s in family.samples]
        yield up
        yield from families.values()
