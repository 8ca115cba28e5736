"""Validation of a decoded request against the model's contract, before any compute.

The check itself is mimo.protos.contract (shared with the client's local check); here its
problems become one INVALID_ARGUMENT that names the model and every offending input.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mimo.protos.contract import DEFAULT_SIGNATURE
from mimo.protos.repository import ModelSpec
from mimo.serving.core.errors import InvalidArgument

__all__ = ["DEFAULT_SIGNATURE", "validate_request"]


def signature_of(spec: ModelSpec, signature: str = "") -> Mapping[str, list[str]]:
    """A signature's input and output names; InvalidArgument, in validate_request's words, when
    the model has no such signature."""
    found = spec.contract.signature(signature or DEFAULT_SIGNATURE)
    if found is None:
        raise InvalidArgument(f"model '{spec.name}': " + spec.contract.unknown_signature(signature))
    return found


def validate_request(
    spec: ModelSpec,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    signature: str = DEFAULT_SIGNATURE,
) -> list[str]:
    """Raise InvalidArgument listing every problem; return the outputs to compute."""
    contract = spec.contract
    problems = contract.problems(inputs, list(outputs), signature)
    if problems:
        raise InvalidArgument(f"model '{spec.name}': " + "; ".join(problems))
    return contract.heads(list(outputs), signature)
