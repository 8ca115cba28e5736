"""The Linux scheduling policy of the server's threads (`--thread-policy`).

SCHED_BATCH: a woken thread does not preempt the running one, so on a busy core the transport's,
the event loop's and the models' threads each take their work in bulk (one core, mlp at c=8 and
c=32: 1-2 context switches per request instead of 5-6, +20-45% requests/s). When requests come one
at a time it costs latency instead: the transport thread woken to send an answer waits until the
loop thread has finished its own bookkeeping (mlp c=1 p50 +2-5%). So `auto` (the default) follows
the load: SCHED_OTHER while requests do not overlap, SCHED_BATCH while they do.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

POLICIES = ("auto", "batch", "normal")
# auto: requests in flight (in the core), sampled every SAMPLE_S and averaged over the last
# samples; from BATCH_FROM the threads run SCHED_BATCH, below NORMAL_BELOW SCHED_OTHER again (the
# gap keeps a load between the two from switching back and forth).
SAMPLE_S = 0.02
SMOOTHING = 0.2  # weight of each new sample: about the last 10 (200 ms)
BATCH_FROM = 1.5
NORMAL_BELOW = 0.8

log = logging.getLogger("mimo.serving")


def set_every_thread(batch: bool) -> str | None:
    """SCHED_BATCH (or SCHED_OTHER) for every thread of this process; threads started later
    inherit their creator's. Any unprivileged process may choose either. The reason if refused."""
    policy = getattr(os, "SCHED_BATCH" if batch else "SCHED_OTHER", None)
    if policy is None:
        return "this OS has no SCHED_BATCH"
    try:
        threads = os.listdir("/proc/self/task")
    except OSError as exc:
        return str(exc)
    for thread in threads:
        try:
            os.sched_setscheduler(int(thread), policy, os.sched_param(0))
        except ProcessLookupError:  # the thread ended meanwhile
            pass
        except OSError as exc:
            return str(exc)
    return None


class LoadFollowing:
    """`auto`: SCHED_BATCH while requests overlap, SCHED_OTHER while they come one at a time."""

    def __init__(self, in_flight: Callable[[], int], switch: Callable[[bool], str | None] = set_every_thread):
        self._in_flight = in_flight
        self._switch = switch
        self.load = 0.0  # requests in flight, smoothed
        self.batch = False  # the policy the threads run now (the process starts SCHED_OTHER)

    def sample(self) -> None:
        self.load += SMOOTHING * (self._in_flight() - self.load)
        wanted = self.load >= BATCH_FROM if not self.batch else self.load >= NORMAL_BELOW
        if wanted != self.batch:
            refused = self._switch(wanted)
            if refused is not None:
                raise OSError(refused)
            self.batch = wanted

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(SAMPLE_S)
                self.sample()
        except OSError as exc:
            log.info("thread policy: auto stopped, the threads keep their policy (%s)", exc)
