"""The Prometheus series counted in statistics.py, read back through prometheus_client's registry
as a scrape sees them."""

from prometheus_client import REGISTRY

from mimo.serving.core.statistics import ModelStats, record_rejected


def sample(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_histogram_buckets_are_cumulative_and_include_their_bound():
    stats = ModelStats("stats-buckets", "1")
    for ns in (100_000, 1_000_000, 1_000_001, 7_000_000_000):  # 0.1 ms, 1 ms (a bound), just over, 7 s
        stats.record_request(True, ns)
    labels = {"model": "stats-buckets", "version": "1"}
    assert sample("mimo_request_seconds_bucket", le="0.0002", **labels) == 1
    assert sample("mimo_request_seconds_bucket", le="0.001", **labels) == 2  # value == bound counts
    assert sample("mimo_request_seconds_bucket", le="0.002", **labels) == 3
    assert sample("mimo_request_seconds_bucket", le="5.0", **labels) == 3
    assert sample("mimo_request_seconds_bucket", le="+Inf", **labels) == 4
    assert sample("mimo_request_seconds_count", **labels) == 4
    assert abs(sample("mimo_request_seconds_sum", **labels) - 7.002100001) < 1e-9
    assert sample("mimo_requests_total", status="OK", **labels) == 4


def test_a_batch_records_each_request_queue_time_and_one_execution():
    stats = ModelStats("stats-batch", "2")
    stats.record_queue(10_000, 300_000, 2_000_000)
    stats.record_execution(3, 1_500_000, requests=3)
    labels = {"model": "stats-batch", "version": "2"}
    assert stats.queue.count == 3 and stats.queue.ns == 2_310_000
    assert sample("mimo_queue_seconds_bucket", le="5e-05", **labels) == 1
    assert sample("mimo_queue_seconds_bucket", le="0.0005", **labels) == 2
    assert sample("mimo_queue_seconds_count", **labels) == 3
    assert sample("mimo_batch_size_bucket", le="2.0", **labels) == 0
    assert sample("mimo_batch_size_bucket", le="4.0", **labels) == 1
    assert sample("mimo_compute_seconds_bucket", le="0.002", **labels) == 1
    assert stats.execution_count == 1 and stats.inference_count == 3 and stats.compute_infer.count == 3


def test_failures_count_under_their_status_and_a_reload_shares_the_series():
    first = ModelStats("stats-status", "1")
    first.begin()
    first.record_request(False, 1000, "INVALID_ARGUMENT")
    reloaded = ModelStats("stats-status", "1")  # a new copy of the same version
    reloaded.record_request(True, 1000)
    labels = {"model": "stats-status", "version": "1"}
    assert sample("mimo_requests_total", status="INVALID_ARGUMENT", **labels) == 1
    assert sample("mimo_requests_total", status="OK", **labels) == 1
    assert sample("mimo_request_seconds_count", **labels) == 2
    assert first.fail.count == 1 and first.success.count == 0 and reloaded.success.count == 1
    assert first.in_flight == 0


def test_requests_refused_before_a_version_have_a_counter_and_no_histograms():
    record_rejected("", "", "NOT_FOUND_TEST")
    assert sample("mimo_requests_total", model="-", version="-", status="NOT_FOUND_TEST") == 1
    assert sample("mimo_request_seconds_count", model="-", version="-") is None
