"""Per model-version counters for ModelStatistics (Triton's shape) and Prometheus metrics."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram, disable_created_metrics

# A `*_created` series per labelled counter and histogram doubles what is scraped and says nothing
# a dashboard uses (Prometheus tracks resets itself).
disable_created_metrics()

REQUESTS = Counter("mimo_requests_total", "Inference requests", ["model", "version", "status"])
LATENCY = Histogram(
    "mimo_request_seconds", "Request latency in the server, decode to encode", ["model", "version"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
QUEUE = Histogram(
    "mimo_queue_seconds", "Time a request waited for an execution slot", ["model", "version"],
    buckets=(0.00005, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
)
COMPUTE = Histogram(
    "mimo_compute_seconds", "Backend execution time per batch", ["model", "version"],
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
)
BATCH = Histogram(
    "mimo_batch_size", "Requests' items per backend execution", ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class ModelStats:
    """What ModelStatistics reports for one model version."""

    model: str
    version: str
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    in_flight: int = 0  # requests between begin() and record_request() (the event loop changes it)
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        labels = (self.model, self.version)
        self._latency = LATENCY.labels(*labels)
        self._queue = QUEUE.labels(*labels)
        self._compute = COMPUTE.labels(*labels)
        self._batch = BATCH.labels(*labels)
        self._ok = REQUESTS.labels(self.model, self.version, "OK")

    def record_execution(
        self, batch_size: int, compute_ns: int, requests: int = 1, input_ns: int = 0, output_ns: int = 0
    ) -> None:
        """One backend execution of `batch_size` items for `requests` requests.

        As in Triton, every request of a batch is charged the whole execution, and compute_input,
        compute_infer and compute_output always have the same count (perf_analyzer refuses
        statistics where they differ: "Server side statistics compute counts must be the same").
        """
        with self.lock:
            self.execution_count += 1
            self.inference_count += batch_size
            self.compute_input.add(input_ns * requests, requests)
            self.compute_infer.add(compute_ns * requests, requests)
            self.compute_output.add(output_ns * requests, requests)
            self.batches[batch_size].add(compute_ns)
        self._compute.observe(compute_ns / 1e9)
        self._batch.observe(batch_size)

    def record_queue(self, queue_ns: int) -> None:
        with self.lock:
            self.queue.add(queue_ns)
        self._queue.observe(queue_ns / 1e9)

    def begin(self) -> None:
        """A request reached this version; its record_request() ends it."""
        self.in_flight += 1

    def record_request(self, ok: bool, total_ns: int, status: str = "OK") -> None:
        self.in_flight -= 1
        with self.lock:
            (self.success if ok else self.fail).add(total_ns)
            if ok:
                self.last_inference_ms = int(time.time() * 1000)
        self._latency.observe(total_ns / 1e9)
        (self._ok if ok else REQUESTS.labels(self.model, self.version, status)).inc()


def record_rejected(model: str, version: str, status: str) -> None:
    """A request refused before it reached a model version (unknown model, bad input)."""
    REQUESTS.labels(model or "-", version or "-", status).inc()
