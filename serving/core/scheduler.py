"""Per-model scheduler: a bounded queue, dynamic batching, and where the backend runs.

It runs on the event loop (no locks). A request joins the queue of its batch key, and a dispatch
is scheduled for the end of the current loop iteration (`call_soon`), so every request that arrived
in the same iteration can share one backend call. A dispatch takes the oldest live request plus the
requests queued behind it with the same key, up to `max_batch_size` items, while an execution slot
is free. An idle model therefore runs each request at once (batching costs nothing at low load),
and a busy one batches whatever queued up while its slots were busy. `max_queue_delay` can hold a
partial batch back a little for a fuller one.

Batch keys: requests batch together only when their signature, input names, dtypes and item shapes
agree, or, for inputs the model declares padding-exact (model.json `batching.padding`, e.g. a
masked sequence input), when everything but the sequence length (axis 1) agrees; such inputs are
right-padded with the declared value up to the longest request of the batch.

Where the backend runs (`execution`):
  inline  on the event-loop thread: no thread hand-off (two context switches and a GIL hand-over
          per execution, 20-40 us). Right for models that compute in a few microseconds. But the
          loop cannot take new requests while it computes, and grpc.aio hands the loop about one
          new request per iteration, so under load inline batches stay small.
  thread  in `instances` worker threads (ONNX Runtime and TensorFlow release the GIL): the loop
          keeps taking requests while a batch computes, so the next batch has grown meanwhile
          (even on one core), and with more cores decode/encode overlap the compute.
  auto    a request that finds the model idle runs inline at once (the lowest latency) if it is
          expected to compute in under 1 ms; queued work runs inline while it is expected to take
          less than `inline_max_us` (50 us: cheaper than a hand-off), in threads otherwise (so
          batches can grow meanwhile). The expectation is the model's recent execution time
          scaled by the work's size (input bytes) against the recent executions' size: a request
          far larger than recent ones goes to a thread, so it never stalls the loop (every model).
          Cheap queued work still goes to threads while they are seen to batch enough to pay for
          the hand-off (THREAD_PAYS_BATCH): inline, a batch is what one loop iteration brought,
          while a worker computes the loop waits and the transport delivers more, even on one
          core. Inline runs probe threads now and then (PROBE_EVERY, PROBE_LENGTH; rarer while probes
          find no batching, so sparse traffic seldom pays a hand-off), so the choice
          follows the load.

A request's answer goes to its `reply`: anything with done(), set_result() and set_exception(),
as an asyncio future has (`infer` awaits one; the front ends' bulk paths pass their own, which
encode and send the answer where the batch completes, with no task per request). A reply that is
done before its request runs (the client went away) means the request is dropped.

Expired and cancelled requests never run: they leave the queue, and a worker drops those that
expired while they waited for it. A failing batch is retried one request at a time, so one bad
request gets its error and the others still get their results.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import numpy as np

from mimo.serving.core.backends import Backend
from mimo.serving.core.errors import BackendFailure, DeadlineExceeded, ResourceExhausted, Unavailable, log
from mimo.serving.core.statistics import ModelStats

EXECUTION_MODES = ("auto", "inline", "thread")
# A request runs at once, without queueing, when the model is idle: nothing queued or running,
# nothing finished in the last IDLE_NS, and the previous request arrived more than IDLE_NS (and two
# executions) ago. Sparse traffic (c=1) takes this path; under load requests queue, and batch.
IDLE_NS = 100_000
# auto: an idle request runs inline only if the model computes in under this. A longer execution
# goes to a thread even when idle, so the loop keeps taking the requests that arrive meanwhile,
# and they batch (measured: a 2.4 ms masked qa run inline when idle kept batches at 1 under load).
IDLE_INLINE_MAX_NS = 1_000_000
# auto, under load, for work cheap enough to run inline: threads while their executions average at
# least this many requests. Measured on one core (mlp, 35 us an execution, c=32): inline batches
# stayed at 1.1 requests, threads batched 8 and served 20-35% more; at c=8 threads batched 2.3 and
# served 15% less than inline.
THREAD_PAYS_BATCH = 4.0
PROBE_EVERY = 256  # inline executions before a probe of the threads...
PROBE_LENGTH = 16  # ... of this many executions (enough for the batches to grow)
# A probe that finds the threads batching too little doubles the wait for the next one, up to this:
# sparse traffic (c=1) then sends 0.2% of its requests through a thread hand-off instead of 6%.
PROBE_EVERY_MAX = 8192


@dataclass
class SchedulerOptions:
    instances: int = 1  # concurrent backend executions (thread mode)
    batching: bool = True
    max_batch_size: int = 32  # items per execution
    max_queue_delay_s: float = 0.0
    max_queue_size: int = 1024  # requests waiting (not running) before RESOURCE_EXHAUSTED
    padding: Mapping[str, float] = field(default_factory=dict)  # input -> pad value (axis 1)
    execution: str = "auto"  # auto | inline | thread
    inline_max_us: float = 50.0  # auto: inline while executions take less than this


class Reply(Protocol):
    """Where a request's answer goes: an asyncio future is one."""

    def done(self) -> bool: ...
    def set_result(self, result) -> None: ...
    def set_exception(self, exc: BaseException) -> None: ...


class _Job:
    __slots__ = ("inputs", "outputs", "signature", "reply", "deadline", "batch", "key", "nbytes", "enqueued_ns")

    def __init__(self, inputs, outputs, signature, reply, deadline, batch, key, nbytes):
        self.inputs = inputs
        self.outputs = outputs
        self.signature = signature
        self.reply = reply
        self.deadline = deadline  # time.monotonic() seconds, or None
        self.batch = batch
        self.key = key
        self.nbytes = nbytes  # input bytes: the size that scales the expected execution time
        self.enqueued_ns = time.perf_counter_ns()


def batch_key(inputs: Mapping[str, np.ndarray], signature: str, padding: Mapping[str, float]) -> tuple:
    """Requests share a batch only when their keys are equal."""
    parts = [signature]
    for name in sorted(inputs):
        array = inputs[name]
        if name in padding and array.ndim >= 2:
            parts.append((name, array.dtype.str, array.ndim, array.shape[2:]))
        else:
            parts.append((name, array.dtype.str, array.shape[1:]))
    return tuple(parts)


def assemble(jobs: Sequence[_Job], padding: Mapping[str, float]) -> dict[str, np.ndarray]:
    """One batch from several requests: concatenated, right-padded along axis 1 where allowed."""
    batched = {}
    items = sum(job.batch for job in jobs)
    for name in jobs[0].inputs:
        parts = [job.inputs[name] for job in jobs]
        pad = padding.get(name)
        if pad is not None and parts[0].ndim >= 2:
            longest = max(part.shape[1] for part in parts)
            if any(part.shape[1] != longest for part in parts):
                first = parts[0]
                out = np.full((items, longest) + first.shape[2:], pad, dtype=first.dtype)
                row = 0
                for part in parts:
                    out[row : row + part.shape[0], : part.shape[1]] = part
                    row += part.shape[0]
                batched[name] = out
                continue
        batched[name] = np.concatenate(parts)
    return batched


def _answer(job: _Job, result) -> None:
    """A job's result or error to its reply, unless the reply is done already (cancelled)."""
    if job.reply.done():
        return
    if isinstance(result, BaseException):
        job.reply.set_exception(result)
    else:
        job.reply.set_result(result)


def _may_start(job: _Job, now: float) -> bool:
    if job.reply.done():  # cancelled by the client
        return False
    return job.deadline is None or now <= job.deadline


class Scheduler:
    def __init__(self, backend: Backend, stats: ModelStats, options: SchedulerOptions, name: str):
        if options.execution not in EXECUTION_MODES:
            raise ValueError(f"execution must be one of {EXECUTION_MODES}, not {options.execution!r}")
        self.backend = backend
        self.stats = stats
        self.options = options
        self.name = name
        self.padding = dict(options.padding) if options.batching else {}
        self.queues: dict[tuple, deque[_Job]] = {}
        self.size = 0  # queued requests
        self.running = 0  # executions in progress
        self.closed = False
        self._slots = 1 if options.execution == "inline" else max(1, options.instances)
        self._auto = options.execution == "auto"
        self._inline = options.execution == "inline"
        self._inline_ns = options.inline_max_us * 1000
        self._ewma_ns = 0.0  # recent execution time (auto mode)
        self._ewma_bytes = 0.0  # ... and the input bytes those executions took
        self._thread_batch = 0.0  # recent requests per execution in threads (auto mode)
        self._inline_runs = 0  # inline executions since the last probe of the threads
        self._probe_left = 0  # executions of the current probe still to send to threads
        self._probing = False  # a probe was sent and its outcome is not yet known
        self._probe_every = PROBE_EVERY
        self._hold_allowed = options.batching and options.max_queue_delay_s > 0
        self._last_done_ns = 0
        self._last_arrival_ns = 0
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._work: queue.SimpleQueue | None = None
        self._threads: list[threading.Thread] = []
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        return self.size

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        signature: str,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """The outputs of one request (`submit`, awaited)."""
        future = asyncio.get_running_loop().create_future()
        self.submit(inputs, outputs, signature, deadline, future)
        return future.result() if future.done() else await future

    def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        signature: str,
        deadline: float | None,
        reply: Reply,
    ) -> None:
        """Queue one request (or run it now, when the model is idle); its outputs or its error go
        to `reply`. A closed scheduler or a full queue raises here, before anything is queued."""
        if self.closed:
            raise Unavailable("model is unloading")
        if self.size >= self.options.max_queue_size:
            raise ResourceExhausted(f"queue full ({self.options.max_queue_size} requests waiting); retry later")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        batch = next(iter(inputs.values())).shape[0]
        nbytes = sum(array.nbytes for array in inputs.values())
        now = time.perf_counter_ns()
        gap, self._last_arrival_ns = now - self._last_arrival_ns, now
        idle = (not self.size and self.running < self._slots and not self._hold_allowed
                and now - self._last_done_ns > IDLE_NS and gap > max(IDLE_NS, 2 * self._ewma_ns))
        if idle and (self._inline or (self._auto and self._expected_ns(nbytes) < IDLE_INLINE_MAX_NS
                                      and self._cheap_runs_inline())):
            # Idle (nothing queued or running, nothing finished in the last IDLE_NS): run now, on
            # this task, without queueing or a thread hand-off. Under load, arrivals come closer
            # together than IDLE_NS and take the queue, where they batch.
            self._run_now(_Job(inputs, outputs, signature, reply, deadline, batch, None, nbytes))
            return
        key = batch_key(inputs, signature, self.padding) if self.options.batching else None
        job = _Job(inputs, outputs, signature, reply, deadline, batch, key, nbytes)
        if idle:  # straight to a worker thread
            self._idle.clear()
            self._launch([job], inline=False)
            return
        lane = self.queues.get(key)
        if lane is None:
            lane = self.queues[key] = deque()
        lane.append(job)
        self.size += 1
        if not self._scheduled:
            # At the end of this loop iteration: requests that arrive together batch together.
            self._scheduled = True
            self._idle.clear()
            loop.call_soon(self._dispatch)

    def _run_now(self, job: _Job) -> None:
        self.stats.record_queue(0)
        self.running += 1
        try:
            result = self._execute([job])[0]
        finally:
            self.running -= 1
            self._last_done_ns = time.perf_counter_ns()
        _answer(job, result)

    # -- event-loop side ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._scheduled = False
        while self.size and self.running < self._slots:
            jobs = self._take_batch()
            if not jobs:
                break
            if self._hold(jobs):
                break
            self._launch(jobs)
        if not self.size and not self.running:
            self._idle.set()

    def _take_batch(self) -> list[_Job]:
        """The oldest live request plus queued requests that can share its batch."""
        now = time.monotonic()
        oldest = None
        for key, lane in list(self.queues.items()):
            while lane and not self._is_live(lane[0], now):
                lane.popleft()
                self.size -= 1
            if not lane:
                del self.queues[key]
            elif oldest is None or lane[0].enqueued_ns < oldest[0].enqueued_ns:
                oldest = lane
        if oldest is None:
            return []
        first = oldest.popleft()
        self.size -= 1
        jobs, items = [first], first.batch
        if self.options.batching:
            limit = self.options.max_batch_size
            while oldest and items + oldest[0].batch <= limit:
                job = oldest.popleft()
                self.size -= 1
                if self._is_live(job, now):
                    jobs.append(job)
                    items += job.batch
        if not oldest:
            del self.queues[first.key]
        return jobs

    def _hold(self, jobs: list[_Job]) -> bool:
        """Hold a partial batch for up to max_queue_delay (then run whatever is there)."""
        delay = self.options.max_queue_delay_s
        if not (self.options.batching and delay > 0):
            return False
        if sum(job.batch for job in jobs) >= self.options.max_batch_size:
            return False
        waited = (time.perf_counter_ns() - jobs[0].enqueued_ns) / 1e9
        if waited >= delay:
            return False
        lane = self.queues.setdefault(jobs[0].key, deque())
        lane.extendleft(reversed(jobs))
        self.size += len(jobs)
        if self._timer is None:
            self._timer = self._loop.call_later(delay - waited, self._on_timer)
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    @staticmethod
    def _is_live(job: _Job, now: float) -> bool:
        if job.reply.done():  # cancelled by the client
            return False
        if job.deadline is not None and now > job.deadline:
            job.reply.set_exception(DeadlineExceeded("deadline passed while the request was queued"))
            return False
        return True

    def _launch(self, jobs: list[_Job], inline: bool | None = None) -> None:
        started = time.perf_counter_ns()
        self.stats.record_queue(*[started - job.enqueued_ns for job in jobs])
        self.running += 1
        if self._runs_inline(jobs) if inline is None else inline:
            self._complete(jobs, self._execute(jobs))
            return
        if self._auto:
            self._thread_batch = 0.8 * self._thread_batch + 0.2 * len(jobs)
        if self._work is None:
            self._start_threads()
        self._work.put(jobs)

    def _runs_inline(self, jobs: list[_Job]) -> bool:
        if self._inline or not self._auto:
            return self._inline
        return self._expected_ns(sum(job.nbytes for job in jobs)) < self._inline_ns and self._cheap_runs_inline()

    def _cheap_runs_inline(self) -> bool:
        """auto, for work cheap enough to run inline: inline, unless threads are seen to batch
        enough to pay for the hand-off under the present load (probed after PROBE_EVERY runs, less
        often while probes find them batching too little)."""
        if self._probe_left:
            self._probe_left -= 1
            return False
        if self._thread_batch >= THREAD_PAYS_BATCH:
            self._probing, self._probe_every = False, PROBE_EVERY  # they pay: probe soon once they stop
            return False
        if self._probing:  # the probe's batches were too small: wait longer before the next one
            self._probing, self._probe_every = False, min(2 * self._probe_every, PROBE_EVERY_MAX)
        self._inline_runs += 1
        if self._inline_runs >= self._probe_every:
            self._inline_runs, self._probe_left, self._probing = 0, PROBE_LENGTH, True
        return True

    def _expected_ns(self, nbytes: int) -> float:
        """How long `nbytes` of input should take: the recent executions' time, scaled by size.

        Linear scaling overestimates large work (part of a small execution is fixed overhead):
        the safe side, since an underestimate would run a long execution on the loop. Unknown
        (no execution yet) is infinite: the first execution runs in a thread.
        """
        if not self._ewma_ns:
            return float("inf")
        return self._ewma_ns * max(1.0, nbytes / max(self._ewma_bytes, 1.0))

    def _complete(self, jobs: list[_Job], results: list) -> None:
        self.running -= 1
        self._last_done_ns = time.perf_counter_ns()
        for job, result in zip(jobs, results):
            _answer(job, result)

    def _complete_from_thread(self, jobs: list[_Job], results: list) -> None:
        self._complete(jobs, results)
        self._dispatch()

    # -- worker threads -------------------------------------------------------------------------

    def _start_threads(self) -> None:
        self._work = queue.SimpleQueue()
        for i in range(self._slots):
            thread = threading.Thread(target=self._worker, name=f"mimo-{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _worker(self) -> None:
        work, loop = self._work, self._loop
        while True:
            jobs = work.get()
            if jobs is None:
                return
            results = self._execute(jobs)
            try:
                loop.call_soon_threadsafe(self._complete_from_thread, jobs, results)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    # -- execution (inline or in a worker thread) -------------------------------------------------

    def _execute(self, jobs: list[_Job]) -> list:
        """Results (or exceptions) in the order of `jobs`; expired or cancelled jobs do not run."""
        # The last moment to drop one: a job may have waited for a worker since it was taken.
        # (A worker reads a loop-side future's state; a stale read costs one wasted run at worst.)
        now = time.monotonic()
        live = [job for job in jobs if _may_start(job, now)]
        if len(live) == len(jobs):
            return self._compute(jobs)
        results = dict(zip(map(id, live), self._compute(live) if live else ()))
        expired = "deadline passed before the request could run"
        return [results[id(job)] if id(job) in results else DeadlineExceeded(expired) for job in jobs]

    def _compute(self, jobs: list[_Job]) -> list:
        if len(jobs) == 1:
            return [self._run_one(jobs[0])]
        job0 = jobs[0]
        outputs = list(dict.fromkeys(name for job in jobs for name in job.outputs))
        try:
            t0 = time.perf_counter_ns()
            batched = assemble(jobs, self.padding)
            t1 = time.perf_counter_ns()
            results = self.backend.predict(batched, outputs, job0.signature)
            t2 = time.perf_counter_ns()
            split, start = [], 0
            for job in jobs:
                end = start + job.batch
                split.append({name: results[name][start:end] for name in job.outputs})
                start = end
            t3 = time.perf_counter_ns()
        except Exception:
            # Isolate the failure: each request on its own gets its own result or error.
            return [self._run_one(job) for job in jobs]
        self._observe(t2 - t1, sum(job.nbytes for job in jobs))
        self.stats.record_execution(start, t2 - t1, len(jobs), t1 - t0, t3 - t2)
        return split

    def _run_one(self, job: _Job):
        try:
            started = time.perf_counter_ns()
            results = self.backend.predict(job.inputs, job.outputs, job.signature)
            took = time.perf_counter_ns() - started
            out = {name: results[name] for name in job.outputs}
        except Exception as exc:  # noqa: BLE001 - a backend failure answers this request only
            log.warning("backend failure in %s: %s", self.stats.model, exc)
            return BackendFailure(f"model '{self.stats.model}' failed to run this request ({type(exc).__name__})")
        self._observe(took, job.nbytes)
        self.stats.record_execution(job.batch, took)
        return out

    def _observe(self, took_ns: int, nbytes: int) -> None:
        if not self._ewma_ns:
            self._ewma_ns, self._ewma_bytes = float(took_ns), float(nbytes)
            return
        self._ewma_ns = 0.8 * self._ewma_ns + 0.2 * took_ns
        self._ewma_bytes = 0.8 * self._ewma_bytes + 0.2 * nbytes

    # -- lifecycle ------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Wait for queued and running work to finish (used on shutdown and unload)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for lane in self.queues.values():
            for job in lane:
                if not job.reply.done():
                    job.reply.set_exception(Unavailable("model unloaded"))
        self.queues.clear()
        self.size = 0
        if self._work is not None:
            for _ in self._threads:
                self._work.put(None)
