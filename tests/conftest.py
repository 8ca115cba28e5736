"""Session fixtures: one small export of all seven models, and in-process servers on port 0.

Set MIMO_TEST_REPOSITORY to a repository exported with the same small sizes to skip the export
while iterating locally; CI always exports afresh.
"""

from __future__ import annotations

import os
import threading
import types
from pathlib import Path

import pytest

from helpers import MODELS, TEST_EXPORT, start_server


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory) -> Path:
    reuse = os.environ.get("MIMO_TEST_REPOSITORY")
    if reuse:
        return Path(reuse)
    from mimo.export.notebook import ExportOptions, export_notebook_model

    out = tmp_path_factory.mktemp("repository")
    options = ExportOptions(out=out, **TEST_EXPORT)
    for name in MODELS:
        export_notebook_model(name, options)
    return out


@pytest.fixture(scope="session")
def server(exported_repo):
    """The default server: ONNX Runtime backend, batching on."""
    thread = start_server(exported_repo)
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def tf_server(exported_repo):
    thread = start_server(exported_repo, backend="tensorflow")
    yield thread
    thread.stop()


class SteppedClock:
    """The scheduler's perf_counter_ns, made deterministic: each reading is 1 us after the last,
    and the test moves it on with `advance`. The scheduler's idle detection and its inline/thread
    choice read this clock, so on a loaded machine a preempted test still sees the same times."""

    STEP_NS = 1_000

    def __init__(self):
        self._now = 10**12
        self._lock = threading.Lock()  # worker threads read it too

    def perf_counter_ns(self) -> int:
        with self._lock:
            self._now += self.STEP_NS
            return self._now

    def advance(self, ns: int) -> None:
        with self._lock:
            self._now += ns


@pytest.fixture
def scheduler_clock(monkeypatch) -> SteppedClock:
    """Swap the scheduler module's clock for a SteppedClock (deadlines keep the real one)."""
    import time

    from mimo.serving.core import scheduler

    clock = SteppedClock()
    fake_time = types.SimpleNamespace(perf_counter_ns=clock.perf_counter_ns, monotonic=time.monotonic)
    monkeypatch.setattr(scheduler, "time", fake_time)
    return clock
