"""The one inference path every protocol shares: registry -> validation -> scheduler.

Servicers decode their protocol's request with the codec, call `infer`, and encode the result;
nothing protocol-specific happens here.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from mimo.serving.errors import DeadlineExceeded, ServingError, status_code
from mimo.serving.registry import ModelVersion, Registry
from mimo.serving.statistics import record_rejected
from mimo.serving.validation import DEFAULT_SIGNATURE, validate_request


async def infer(
    registry: Registry,
    model: str,
    version: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    signature: str = "",
    timeout: float | None = None,
) -> tuple[ModelVersion, dict[str, np.ndarray]]:
    started = time.perf_counter_ns()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        served = registry.get(model, version)
    except ServingError as exc:
        record_rejected("-", "-", exc.code.name)
        raise
    served.stats.begin()  # every path below ends in record_request
    try:
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded("the deadline passed before the request could start")
        signature = signature or DEFAULT_SIGNATURE
        wanted = validate_request(served.spec, inputs, outputs, signature)
        results = await served.scheduler.infer(inputs, wanted, signature, deadline)
    except BaseException as exc:
        # Counted under the status the client sees: a deadline or a cancellation is no INTERNAL.
        served.stats.record_request(False, time.perf_counter_ns() - started, status_code(exc, deadline).name)
        raise
    served.stats.record_request(True, time.perf_counter_ns() - started)
    return served, results
