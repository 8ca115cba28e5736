"""The scheduler without a model: a counting backend, every execution path."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from mimo.serving.core.backends.base import Backend
from mimo.serving.core.errors import DeadlineExceeded
from mimo.serving.core.scheduler import (
    IDLE_INLINE_MAX_NS, PROBE_EVERY, PROBE_EVERY_MAX, PROBE_LENGTH, THREAD_PAYS_BATCH, Scheduler,
    SchedulerOptions,
)
from mimo.serving.core.statistics import ModelStats


class Counting(Backend):
    """Echoes its input as output `y`, counting calls and the threads they ran on."""

    def __init__(self, seconds_per_item: float = 0.0):
        self.calls = 0
        self.threads: list[str] = []
        self.seconds_per_item = seconds_per_item

    def load(self):
        pass

    def describe(self):
        return {}

    def predict(self, inputs, outputs, signature="serving_default"):
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        x = inputs["x"]
        if self.seconds_per_item:
            time.sleep(self.seconds_per_item * x.size)
        return {"y": x}


def _scheduler(backend: Backend, name: str, **options) -> Scheduler:
    return Scheduler(backend, ModelStats(name, "1"), SchedulerOptions(**options), name)


def _x(items: int = 1) -> dict:
    return {"x": np.ones((1, items), np.float32)}


@pytest.mark.parametrize("execution", ["auto", "inline", "thread"])
def test_a_request_past_its_deadline_never_reaches_the_backend(execution, scheduler_clock):
    async def main():
        backend = Counting()
        scheduler = _scheduler(backend, f"expired-{execution}", execution=execution)
        await scheduler.infer(_x(), ["y"], "serving_default")  # warm: auto has a recent time now
        scheduler_clock.advance(10_000_000)  # idle again
        with pytest.raises(DeadlineExceeded):  # idle: the run-at-once path
            await scheduler.infer(_x(), ["y"], "serving_default", time.monotonic() - 1)
        # Busy: queued behind others, in one batch with live requests.
        results = await asyncio.gather(
            *(scheduler.infer(_x(), ["y"], "serving_default", time.monotonic() + (-1 if i % 2 else 30))
              for i in range(6)), return_exceptions=True)
        scheduler.close()
        return backend.calls, results

    calls, results = asyncio.run(main())
    expired = [r for r in results[1::2]]
    assert all(isinstance(r, DeadlineExceeded) for r in expired), expired
    assert all(isinstance(r, dict) for r in results[0::2]), results
    assert calls <= 1 + 3  # the warm-up and the live ones (batched or not), never an expired one


def test_auto_runs_a_large_request_in_a_thread_even_when_the_model_is_idle(scheduler_clock):
    # Small requests compute fast, so an idle one runs inline; one 1000 times their size must not
    # (a 400k-token qa request inline stalled every model for 0.46 s).
    async def main():
        backend = Counting()
        scheduler = _scheduler(backend, "sizes", execution="auto")
        for _ in range(5):
            await scheduler.infer(_x(8), ["y"], "serving_default")
            scheduler_clock.advance(2_000_000)
        assert 0 < scheduler._ewma_ns < IDLE_INLINE_MAX_NS
        small = len(backend.threads)
        await scheduler.infer(_x(8), ["y"], "serving_default")
        scheduler_clock.advance(2_000_000)
        await scheduler.infer(_x(8_000_000), ["y"], "serving_default")
        scheduler.close()
        return backend.threads[small:]

    small, large = asyncio.run(main())
    assert small == threading.main_thread().name  # inline: the loop's own thread
    assert large.startswith("mimo-sizes-")  # a worker


def test_auto_probes_threads_now_and_then_and_keeps_them_while_they_batch(scheduler_clock):
    """Cheap work runs inline, except a probe of PROBE_LENGTH executions after PROBE_EVERY; a probe
    that finds no batching doubles the wait for the next; work stays in threads while their batches
    pay for the hand-off, and comes back when they shrink, with the first wait again."""
    async def main():
        backend = Counting()
        scheduler = _scheduler(backend, "probe", execution="auto")
        one = lambda: scheduler.infer(_x(), ["y"], "serving_default")

        async def sparse(n):
            mark = len(backend.threads)
            for _ in range(n):  # one at a time, idle in between
                await one()
                scheduler_clock.advance(200_000)
            return backend.threads[mark:]

        await one()  # no time known yet: a thread
        scheduler_clock.advance(2_000_000)
        first = await sparse(PROBE_EVERY + PROBE_LENGTH + 4)
        second = await sparse(2 * PROBE_EVERY + PROBE_LENGTH)  # the probe found batches of 1
        # A probe under load: 64 at once batch (32 a batch), so threads are kept ...
        await sparse(4 * PROBE_EVERY - 4)
        mark = len(backend.threads)
        await asyncio.gather(*(one() for _ in range(PROBE_LENGTH * 64)))
        loaded = backend.threads[mark:]
        # ... until single requests bring the thread batches under THREAD_PAYS_BATCH.
        kept = scheduler._thread_batch
        after = await sparse(PROBE_LENGTH + 8)
        waits = scheduler._probe_every
        scheduler.close()
        return first, second, loaded, kept, after, waits

    first, second, loaded, kept, after, waits = asyncio.run(main())
    inline, probe = threading.main_thread().name, "mimo-probe-0"
    assert first == [inline] * PROBE_EVERY + [probe] * PROBE_LENGTH + [inline] * 4
    assert second == [inline] * (2 * PROBE_EVERY - 4) + [probe] * PROBE_LENGTH + [inline] * 4
    assert set(loaded) == {probe} and len(loaded) >= PROBE_LENGTH * 2  # batches of up to 32
    assert kept >= THREAD_PAYS_BATCH
    assert after[0] == probe and after[-4:] == [inline] * 4
    assert waits == PROBE_EVERY  # threads paid: the next probe comes as soon as the first did


def test_auto_probes_sparse_traffic_ever_more_rarely_up_to_a_bound(scheduler_clock):
    async def main():
        backend = Counting()
        scheduler = _scheduler(backend, "rare", execution="auto")
        await scheduler.infer(_x(), ["y"], "serving_default")  # no time known yet: a thread
        scheduler_clock.advance(2_000_000)
        waits = []
        for _ in range(PROBE_EVERY * 70):
            await scheduler.infer(_x(), ["y"], "serving_default")
            await asyncio.sleep(0)
            if not waits or waits[-1] != scheduler._probe_every:
                waits.append(scheduler._probe_every)
        threads = sum(name.startswith("mimo-rare") for name in backend.threads)
        scheduler.close()
        return waits, threads

    waits, threads = asyncio.run(main())
    assert waits[:3] == [PROBE_EVERY, 2 * PROBE_EVERY, 4 * PROBE_EVERY] and waits[-1] == PROBE_EVERY_MAX
    assert threads == 1 + PROBE_LENGTH * len(waits)  # the first run, then one probe per wait
