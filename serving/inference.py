"""The one inference path every protocol shares: registry -> validation -> scheduler.

Servicers decode their protocol's request with the codec, call `infer`, and encode the result;
nothing protocol-specific happens here.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from mimo.serving.errors import ServingError
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
    try:
        served = registry.get(model, version)
    except ServingError as exc:
        record_rejected("-", "-", exc.code.name)
        raise
    served.stats.begin()  # every path below ends in record_request
    try:
        signature = signature or DEFAULT_SIGNATURE
        wanted = validate_request(served.spec, inputs, outputs, signature)
        deadline = None if timeout is None else time.monotonic() + timeout
        results = await served.scheduler.infer(inputs, wanted, signature, deadline)
    except ServingError as exc:
        served.stats.record_request(False, time.perf_counter_ns() - started, exc.code.name)
        raise
    except BaseException:
        served.stats.record_request(False, time.perf_counter_ns() - started, "INTERNAL")
        raise
    served.stats.record_request(True, time.perf_counter_ns() - started)
    return served, results
