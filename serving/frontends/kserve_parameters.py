"""The request parameters mimo reads in KServe v2 infer requests, over gRPC and REST alike."""

from __future__ import annotations

from typing import Any, Mapping

from mimo.serving.core.errors import InvalidArgument

READ = ("signature_name", "timeout")  # the parameters below; the others are ignored


def signature_name(parameters: Mapping[str, Any]) -> str:
    """`signature_name`: which of the model's signatures to run ("" = serving_default)."""
    if "signature_name" not in parameters:
        return ""
    value = parameters["signature_name"]
    if not isinstance(value, str) or not value:
        raise InvalidArgument("parameter 'signature_name' must be a non-empty string")
    return value


def timeout(parameters: Mapping[str, Any], remaining: float | None) -> float | None:
    """Seconds the request may take: Triton's `timeout` parameter (microseconds) or what is left of
    the call's own deadline, whichever ends first."""
    value = parameters.get("timeout")
    if value is None:
        return remaining
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument("parameter 'timeout' must be a non-negative integer (microseconds)")
    return value / 1e6 if remaining is None else min(remaining, value / 1e6)
