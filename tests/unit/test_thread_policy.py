"""--thread-policy auto: the switch between SCHED_OTHER and SCHED_BATCH follows the requests that
overlap, with a gap between the two thresholds so a load between them does not flap."""

from __future__ import annotations

import os
import threading

import pytest

from mimo.serving.thread_policy import BATCH_FROM, NORMAL_BELOW, LoadFollowing, set_every_thread


def _follower(loads: list[float]):
    switches = []
    follower = LoadFollowing(lambda: loads[0], switch=lambda batch: switches.append(batch))
    return follower, switches


def test_overlapping_requests_switch_to_batch_and_single_ones_back():
    loads = [0.0]
    follower, switches = _follower(loads)
    for _ in range(50):  # one request at a time: the loop never sees one waiting
        follower.sample()
    assert switches == [] and not follower.batch
    loads[0] = 8
    for _ in range(3):
        follower.sample()
    assert switches == [True] and follower.batch  # within 3 samples (60 ms)
    loads[0] = 0
    for _ in range(50):
        follower.sample()
    assert switches == [True, False] and not follower.batch


def test_a_load_between_the_thresholds_keeps_the_policy_it_has():
    between = (BATCH_FROM + NORMAL_BELOW) / 2
    loads = [between]
    follower, switches = _follower(loads)
    for _ in range(200):
        follower.sample()
    assert switches == []  # from normal: stays normal
    loads[0] = 10
    for _ in range(20):
        follower.sample()
    loads[0] = between
    for _ in range(200):
        follower.sample()
    assert switches == [True]  # from batch: stays batch


def test_a_refused_switch_stops_the_follower_and_says_why(caplog):
    import asyncio

    follower = LoadFollowing(lambda: 10, switch=lambda batch: "Operation not permitted")
    with caplog.at_level("INFO", logger="mimo.serving"):
        asyncio.run(asyncio.wait_for(follower.run(), 5))
    assert not follower.batch
    assert "auto stopped" in caplog.text and "Operation not permitted" in caplog.text


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_set_every_thread_reaches_threads_started_before_and_after():
    before = os.sched_getscheduler(0)
    started = threading.Event()
    stop = threading.Event()
    thread = threading.Thread(target=lambda: (started.set(), stop.wait(10)))
    thread.start()
    started.wait(5)
    try:
        assert set_every_thread(True) is None
        assert os.sched_getscheduler(thread.native_id) == os.SCHED_BATCH == os.sched_getscheduler(0)
        seen = []
        later = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
        later.start()
        later.join()
        assert seen == [os.SCHED_BATCH]  # inherited from its creator
        assert set_every_thread(False) is None
        assert os.sched_getscheduler(thread.native_id) == os.SCHED_OTHER
    finally:
        stop.set()
        thread.join()
        os.sched_setscheduler(0, before, os.sched_param(0))
