"""Per-model scheduler: a bounded queue, a fixed number of concurrent executions, dynamic batching.

Runs on the event loop (no locks): a request joins the queue, and whenever an execution slot is
free the scheduler takes the oldest request plus every queued request that can share its batch
(same signature, same item shapes and dtypes; the batch within max_batch_size) and runs them as
one backend call in a worker thread. An idle model therefore runs each request at once (batching
costs nothing at low load), and a busy one batches whatever queued up while the slots were busy.
`max_queue_delay` can hold a partial batch back a little for a fuller one.

Expired and cancelled requests leave the queue without running. A failing batch is retried one
request at a time, so one bad request gets its error and the others still get their results.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from mimo.serving.backends import Backend
from mimo.serving.errors import BackendFailure, DeadlineExceeded, ResourceExhausted, Unavailable, log
from mimo.serving.statistics import ModelStats


@dataclass
class SchedulerOptions:
    instances: int = 1  # concurrent backend executions
    batching: bool = True
    max_batch_size: int = 32  # items per execution
    max_queue_delay_s: float = 0.0
    max_queue_size: int = 1024


@dataclass
class _Job:
    inputs: Mapping[str, np.ndarray]
    outputs: Sequence[str]
    signature: str
    future: asyncio.Future
    deadline: float | None  # time.monotonic() seconds
    batch: int
    key: tuple  # requests batch together only when their keys are equal
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)


def _batch_key(inputs: Mapping[str, np.ndarray], signature: str) -> tuple:
    return (signature,) + tuple(
        (name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items())
    )


class Scheduler:
    def __init__(self, backend: Backend, stats: ModelStats, options: SchedulerOptions, name: str):
        self.backend = backend
        self.stats = stats
        self.options = options
        self.executor = ThreadPoolExecutor(max_workers=options.instances, thread_name_prefix=f"mimo-{name}")
        self.pending: deque[_Job] = deque()
        self.free_slots = options.instances
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        signature: str,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        if self.closed:
            raise Unavailable("model is unloading")
        if len(self.pending) >= self.options.max_queue_size:
            raise ResourceExhausted(
                f"queue full ({self.options.max_queue_size} requests waiting); retry later"
            )
        batch = next(iter(inputs.values())).shape[0]
        job = _Job(inputs, outputs, signature, asyncio.get_running_loop().create_future(), deadline, batch,
                   _batch_key(inputs, signature))
        self.pending.append(job)
        self._idle.clear()
        self._dispatch()
        return await job.future

    # -- event-loop side ----------------------------------------------------------------------

    def _dispatch(self, flush: bool = False) -> None:
        while self.free_slots > 0 and self.pending:
            jobs = self._take_batch()
            if not jobs:
                continue
            if not flush and self._should_wait(jobs):
                for job in reversed(jobs):
                    self.pending.appendleft(job)
                return
            self.free_slots -= 1
            now = time.perf_counter_ns()
            for job in jobs:
                self.stats.record_queue(now - job.enqueued_ns)
            work = asyncio.get_running_loop().run_in_executor(self.executor, self._execute, jobs)
            work.add_done_callback(lambda done, jobs=jobs: self._finish(jobs, done))
        if not self.pending and self.free_slots == self.options.instances:
            self._idle.set()

    def _take_batch(self) -> list[_Job]:
        """The oldest live request plus queued requests that can share its batch."""
        now = time.monotonic()
        head = None
        while self.pending and head is None:
            job = self.pending.popleft()
            if self._is_live(job, now):
                head = job
        if head is None:
            return []
        jobs, items = [head], head.batch
        if not self.options.batching:
            return jobs
        kept = deque()
        while self.pending:
            job = self.pending.popleft()
            if not self._is_live(job, now):
                continue
            if job.key == head.key and items + job.batch <= self.options.max_batch_size:
                jobs.append(job)
                items += job.batch
            else:
                kept.append(job)
        self.pending = kept
        return jobs

    def _should_wait(self, jobs: list[_Job]) -> bool:
        """Hold a partial batch for up to max_queue_delay, then run whatever is there."""
        delay = self.options.max_queue_delay_s
        if not (self.options.batching and delay > 0):
            return False
        if sum(job.batch for job in jobs) >= self.options.max_batch_size:
            return False
        waited = (time.perf_counter_ns() - jobs[0].enqueued_ns) / 1e9
        if waited >= delay:
            return False
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay - waited, self._on_timer)
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch(flush=True)

    @staticmethod
    def _is_live(job: _Job, now: float) -> bool:
        if job.future.done():  # cancelled by the client
            return False
        if job.deadline is not None and now > job.deadline:
            job.future.set_exception(DeadlineExceeded("deadline passed while the request was queued"))
            return False
        return True

    def _finish(self, jobs: list[_Job], done: asyncio.Future) -> None:
        self.free_slots += 1
        try:
            results = done.result()
        except BaseException as exc:  # _execute handles its own errors; this is a bug guard
            results = [exc] * len(jobs)
        for job, result in zip(jobs, results):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        self._dispatch()

    # -- worker-thread side -------------------------------------------------------------------

    def _execute(self, jobs: list[_Job]) -> list:
        if len(jobs) == 1:
            return [self._run_one(jobs[0])]
        outputs = list(dict.fromkeys(name for job in jobs for name in job.outputs))
        names = list(jobs[0].inputs)
        try:
            batched = {name: np.concatenate([job.inputs[name] for job in jobs]) for name in names}
            started = time.perf_counter_ns()
            results = self.backend.predict(batched, outputs, jobs[0].signature)
            self.stats.record_execution(len(batched[names[0]]), time.perf_counter_ns() - started, len(jobs))
        except Exception:
            # Isolate the failure: each request on its own gets its own result or error.
            return [self._run_one(job) for job in jobs]
        split, start = [], 0
        for job in jobs:
            end = start + job.batch
            split.append({name: results[name][start:end] for name in job.outputs})
            start = end
        return split

    def _run_one(self, job: _Job):
        try:
            started = time.perf_counter_ns()
            results = self.backend.predict(job.inputs, job.outputs, job.signature)
            self.stats.record_execution(job.batch, time.perf_counter_ns() - started)
            return {name: results[name] for name in job.outputs}
        except Exception as exc:
            log.warning("backend failure in %s: %s", self.stats.model, exc)
            return BackendFailure(f"model '{self.stats.model}' failed to run this request ({type(exc).__name__})")

    # -- lifecycle ------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Wait for queued and running work to finish (used on shutdown and unload)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def close(self) -> None:
        self.closed = True
        while self.pending:
            job = self.pending.popleft()
            if not job.future.done():
                job.future.set_exception(Unavailable("model unloaded"))
        self.executor.shutdown(wait=False)
