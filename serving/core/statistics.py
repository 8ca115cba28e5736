"""Per model-version counters for ModelStatistics (Triton's shape) and Prometheus metrics.

The Prometheus series are counted here, in plain integers under the version's lock, and handed to
prometheus_client at scrape time (`SeriesCollector`): its own Histogram takes a lock per bucket and
costs about 1 us an observation, several times per request on the event loop.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

LABELS = ["model", "version"]
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
QUEUE_BUCKETS = (0.00005, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1)
COMPUTE_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Buckets:
    """One histogram series: a count per bucket (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "labels", "counts", "sum")

    def __init__(self, bounds: tuple):
        self.bounds = bounds
        self.labels = [*map(floatToGoString, bounds), "+Inf"]  # as prometheus_client writes `le`
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:  # under the series' lock
        self.counts[bisect_left(self.bounds, value)] += 1  # bucket `le` holds value <= le
        self.sum += value

    def exposed(self) -> tuple[list, float]:
        cumulative, total = [], 0
        for bound, count in zip(self.labels, self.counts):
            total += count
            cumulative.append((bound, total))
        return cumulative, self.sum


class Series:
    """The Prometheus series of one (model, version): shared by every ModelStats of that version
    (a reload's old and new copies count into the same series, as prometheus_client's would)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency = Buckets(LATENCY_BUCKETS)
        self.queue = Buckets(QUEUE_BUCKETS)
        self.compute = Buckets(COMPUTE_BUCKETS)
        self.batch = Buckets(BATCH_BUCKETS)
        self.requests: defaultdict[str, int] = defaultdict(int)  # by status
        self.histograms = False  # a version's series (not the one of requests refused before any)


_SERIES: dict[tuple[str, str], Series] = {}
_SERIES_LOCK = threading.Lock()


def series(model: str, version: str) -> Series:
    with _SERIES_LOCK:
        found = _SERIES.get((model, version))
        if found is None:
            found = _SERIES[(model, version)] = Series()
        return found


class SeriesCollector:
    """mimo_requests_total and the four histograms, read at scrape time."""

    HISTOGRAMS = (
        ("mimo_request_seconds", "Request latency in the server, decode to encode", "latency"),
        ("mimo_queue_seconds", "Time a request waited for an execution slot", "queue"),
        ("mimo_compute_seconds", "Backend execution time per batch", "compute"),
        ("mimo_batch_size", "Requests' items per backend execution", "batch"),
    )

    def collect(self):
        requests = CounterMetricFamily("mimo_requests", "Inference requests", labels=LABELS + ["status"])
        families = [(HistogramMetricFamily(name, doc, labels=LABELS), attribute)
                    for name, doc, attribute in self.HISTOGRAMS]
        with _SERIES_LOCK:
            found = list(_SERIES.items())
        for labels, one in found:
            with one.lock:  # a consistent copy, then the families are built outside the lock
                counts = dict(one.requests)
                exposed = [(family, getattr(one, attribute).exposed()) for family, attribute in families]
            for status, count in sorted(counts.items()):
                requests.add_metric([*labels, status], count)
            if one.histograms:
                for family, (buckets, total) in exposed:
                    family.add_metric(list(labels), buckets, total)
        yield requests
        for family, _ in families:
            yield family


REGISTRY.register(SeriesCollector())


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class ModelStats:
    """What ModelStatistics reports for one model version, and its Prometheus series."""

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
    lock: threading.Lock = field(init=False, repr=False)

    def __post_init__(self):
        self._series = series(self.model, self.version)
        self._series.histograms = True
        self.lock = self._series.lock  # one lock for these counters and the series

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
            self._series.compute.observe(compute_ns / 1e9)
            self._series.batch.observe(batch_size)

    def record_queue(self, *queue_ns: int) -> None:
        """The queueing time of one request, or of each request of a batch."""
        with self.lock:
            queue, observe = self.queue, self._series.queue.observe
            for ns in queue_ns:
                queue.count += 1
                queue.ns += ns
                observe(ns / 1e9)

    def begin(self) -> None:
        """A request reached this version; its record_request() ends it."""
        self.in_flight += 1

    def record_request(self, ok: bool, total_ns: int, status: str = "OK") -> None:
        self.in_flight -= 1
        with self.lock:
            if ok:
                self.success.count += 1
                self.success.ns += total_ns
                self.last_inference_ms = int(time.time() * 1000)
            else:
                self.fail.add(total_ns)
            self._series.latency.observe(total_ns / 1e9)
            self._series.requests["OK" if ok else status] += 1


def record_rejected(model: str, version: str, status: str) -> None:
    """A request refused before it reached a model version (unknown model, bad input)."""
    one = series(model or "-", version or "-")
    with one.lock:
        one.requests[status] += 1
