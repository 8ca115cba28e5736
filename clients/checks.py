"""Turning what the caller passed into named arrays, and the checks made before sending.

The checks are the server's own (mimo.protos.contract: same status code, INVALID_ARGUMENT, and
the same wording, naming the input), so a bad request fails fast without a round trip and callers
handle a local and a remote refusal alike. They run only when the model's metadata is cached.
"""

from __future__ import annotations

from typing import Any, Mapping

import grpc
import numpy as np

from mimo.protos.contract import Contract, InputRule

from mimo.client.convert import as_array
from mimo.client.errors import InferenceError, invalid
from mimo.client.metadata import ModelMetadata


def gather_inputs(model: str, inputs: Mapping[str, Any] | None, named: dict[str, Any],
                  meta: ModelMetadata | None) -> Mapping[str, Any]:
    """The mapping and the keyword inputs as one {name: array}; lists and scalars become arrays
    when the model's declared dtype is known (convert.conform then narrows them to it), and are
    refused otherwise (guessing float64 or int64 would only fail on the server)."""
    if named:
        if inputs:
            both = sorted(set(inputs) & set(named))
            if both:
                raise TypeError(f"input {both[0]!r} given both in the mapping and as a keyword")
            merged = {**inputs, **named}
        else:
            merged = named
    elif inputs is not None:
        merged = inputs
    else:
        raise TypeError("predict() needs inputs: a mapping or keyword arguments")
    converted = None
    for name, value in merged.items():
        if type(value) is np.ndarray or isinstance(value, (np.ndarray, np.generic)):
            continue
        converted = converted if converted is not None else dict(merged)
        converted[name] = _convert(model, name, value, meta)
    return merged if converted is None else converted


def _convert(model: str, name: str, value: Any, meta: ModelMetadata | None) -> np.ndarray:
    tensor = meta.inputs.get(name) if meta is not None else None
    kind = type(value).__name__
    if tensor is None or tensor.dtype is None:
        why = (f"model '{model}' has no input '{name}'" if meta is not None
               else f"the client does not know the datatypes of model '{model}' yet")
        raise invalid(model, [f"input '{name}' is a {kind} and {why}: pass a numpy array, "
                              f"or call client.metadata('{model}') first"])
    cannot = f"input '{name}': cannot convert the {kind} to {tensor.datatype}"
    try:
        array = as_array(value, tensor)
    except (TypeError, ValueError, OverflowError) as exc:  # ragged lists, mixed types
        raise invalid(model, [f"{cannot} ({exc})"]) from None
    if array.dtype.kind == "O" and tensor.datatype != "BYTES":  # e.g. ints beyond int64
        raise invalid(model, [f"{cannot} (numpy holds its values as Python objects, not numbers)"])
    return array


class Checker:
    """The model's contract check (mimo.protos.contract, the same code the server runs), raising
    the client's error type; built once per model when its metadata arrives."""

    def __init__(self, meta: ModelMetadata):
        self.meta = meta
        self.model = meta.name
        rules = [InputRule(t.name, t.datatype, t.shape, t.min_length, t.id_range) for t in meta.inputs.values()]
        self.contract = Contract(meta.name, rules, list(meta.outputs), meta.signatures, meta.max_batch_size)

    def check(self, arrays: Mapping[str, Any], outputs, signature: str | None) -> None:
        problems = self.contract.problems(arrays, outputs, signature)
        if problems:
            raise invalid(self.model, problems)

    def heads(self, outputs, signature: str | None) -> list[str]:
        """The heads an answer must carry."""
        return self.contract.heads(outputs, signature)


def check_heads(model: str, result: Mapping[str, np.ndarray], wanted) -> None:
    """A head the caller asked for (or the signature promises) that is not in the answer is an
    error here, not a KeyError or a None later."""
    if len(wanted) == 1 and wanted[0] in result:  # the usual single head: one lookup
        return
    missing = [n for n in wanted if n not in result]
    if missing:
        raise InferenceError(grpc.StatusCode.INTERNAL,
                             f"the server's answer lacks output(s) {', '.join(map(repr, missing))} "
                             f"(it has: {', '.join(result) or 'none'})", model)
