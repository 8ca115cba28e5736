"""Turning what the caller passed into named arrays, and the checks made before sending.

The checks mirror the server's validation (same status code, INVALID_ARGUMENT, and the same
wording, naming the input), so a bad request fails fast without a round trip and callers handle
a local and a remote refusal alike. They run only when the model's metadata is cached.
"""

from __future__ import annotations

from typing import Any, Mapping

import grpc
import numpy as np

from mimo.protos.dtypes import from_numpy
from mimo.protos.errors import CodecError

from mimo.client.errors import InferenceError, invalid
from mimo.client.metadata import DEFAULT_SIGNATURE, ModelMetadata


def gather_inputs(model: str, inputs: Mapping[str, Any] | None, named: dict[str, Any],
                  meta: ModelMetadata | None) -> Mapping[str, Any]:
    """The mapping and the keyword inputs as one {name: array}; lists and scalars are converted
    with the model's declared dtype when it is known, and refused otherwise (guessing float64 or
    int64 would only fail on the server)."""
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
    try:
        return np.asarray(value, dtype=tensor.dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise invalid(model, [f"input '{name}': cannot convert the {kind} to {tensor.datatype} ({exc})"]) from None


class Checker:
    """The checks for one model, with what they need looked up once (not per call)."""

    def __init__(self, meta: ModelMetadata):
        self.meta = meta
        self.model = meta.name
        self._inputs = {
            name: (t.datatype, t.dtype, t.shape, [(a, d) for a, d in enumerate(t.shape) if d != -1],
                   t.min_length, t.id_range, _unsigned_view(t))
            for name, t in meta.inputs.items()
        }
        self._contracts = {sig: meta.contract(sig) for sig in (None, *meta.signatures)}
        self._heads = {sig: contract["outputs"] for sig, contract in self._contracts.items()}

    def contract(self, signature: str | None) -> dict[str, list[str]]:
        contract = self._contracts.get(signature)
        if contract is None:
            contract = self.meta.contract(signature)
        if contract is None:
            raise invalid(self.model, [f"unknown signature '{signature}' (has: {', '.join(self.meta.signatures)})"])
        return contract

    def check(self, arrays: Mapping[str, Any], outputs, signature: str | None) -> None:
        if not (outputs or self._passes(arrays, signature)):
            self._problems(arrays, outputs, signature)

    def _passes(self, arrays: Mapping[str, Any], signature: str | None) -> bool:
        """The hot path: True when every check passes, with as little work as possible. Any doubt
        (False) goes to _problems, which finds and words each problem."""
        contract = self._contracts.get(signature)
        if contract is None or len(arrays) != len(contract["inputs"]):
            return False
        batch, limit = None, self.meta.max_batch_size or 1 << 62
        inputs = self._inputs
        for name in contract["inputs"]:
            arr = arrays.get(name)
            if arr is None:
                return False
            _, dtype, shape, fixed, min_length, id_range, unsigned = inputs[name]
            got, dt = arr.shape, arr.dtype
            if (dt is not dtype and dt != dtype) or len(got) != len(shape) or not got:
                return False
            for axis, want in fixed:
                if got[axis] != want:
                    return False
            if batch is None:
                batch = got[0]
            if got[0] != batch or not 0 < batch <= limit or 0 in got:
                return False
            if min_length is not None and got[1] < min_length:
                return False
            if id_range is not None:
                if unsigned is not None:  # inlined _ids_in_range: the common case, on every call
                    if _max_reduce(arr.view(unsigned), axis=None) >= id_range[1]:
                        return False
                elif not _ids_in_range(arr, id_range, unsigned):
                    return False
        return True

    def _problems(self, arrays: Mapping[str, Any], outputs, signature: str | None) -> None:
        contract = self.contract(signature)
        expected = contract["inputs"]
        problems: list[str] = []
        batches: dict[str, int] = {}
        if len(arrays) != len(expected) or any(n not in arrays for n in expected):
            problems += [f"missing input '{n}'" for n in expected if n not in arrays]
            problems += [f"unexpected input '{n}' (expected {', '.join(expected)})" for n in arrays if n not in expected]
        for name in expected:
            value = arrays.get(name)
            if value is not None:
                self._check_input(name, value, batches, problems)
        if len(set(batches.values())) > 1:
            problems.append("inputs disagree on the batch size: " + ", ".join(f"'{n}' {b}" for n, b in batches.items()))
        if outputs:
            heads = contract["outputs"]
            where = "" if signature in (None, DEFAULT_SIGNATURE) else f" in signature '{signature}'"
            problems += [f"unknown output '{n}'{where} (has: {', '.join(heads)})" for n in outputs if n not in heads]
            if len(set(outputs)) != len(outputs):
                problems.append("an output is requested twice")
        if problems:
            raise invalid(self.model, problems)

    def _check_input(self, name: str, arr, batches: dict, problems: list[str]) -> None:
        datatype, dtype, shape, fixed, min_length, id_range, unsigned = self._inputs[name]
        before = len(problems)
        if dtype is not None and arr.dtype != dtype:
            problems.append(f"input '{name}': datatype {_v2_name(arr.dtype)} where the model takes {datatype}"
                            f" (convert with .astype(np.{dtype.name}))")
        if arr.ndim != len(shape):
            problems.append(f"input '{name}': rank {arr.ndim} (shape {list(arr.shape)}) where the model takes "
                            f"rank {len(shape)} {list(shape)}")
            return
        got = arr.shape
        for axis, want in fixed:
            if got[axis] != want:
                problems.append(f"input '{name}': dimension {axis} is {got[axis]} where the model takes {want}")
        if not got:
            return
        batches[name] = got[0]
        if got[0] == 0:
            problems.append(f"input '{name}': empty batch (dimension 0 is 0)")
        elif self.meta.max_batch_size and got[0] > self.meta.max_batch_size:
            problems.append(f"input '{name}': batch of {got[0]} is over the model's max_batch_size "
                            f"{self.meta.max_batch_size}")
        if 0 in got[1:]:
            problems.append(f"input '{name}': empty dimension in shape {list(got)}")
        if len(problems) != before:
            return  # constraints only make sense on a well-formed tensor, as on the server
        if min_length is not None and arr.ndim >= 2 and got[1] < min_length:
            problems.append(f"input '{name}': sequence length {got[1]} is shorter than the model's minimum {min_length}")
        if id_range is not None and arr.size and not _ids_in_range(arr, id_range, unsigned):
            low, high = id_range
            smallest, largest = int(arr.min()), int(arr.max())
            if smallest < low or largest >= high:
                bad = smallest if smallest < low else largest
                index = [int(i) for i in np.argwhere(arr == bad)[0]]
                problems.append(f"input '{name}': token id {bad} at {index} is outside the vocabulary [{low}, {high})")

    def heads(self, outputs, signature: str | None) -> list[str]:
        """The heads an answer must carry."""
        if outputs:
            return outputs
        heads = self._heads.get(signature)
        return heads if heads is not None else self.contract(signature)["outputs"]


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


_max_reduce = np.maximum.reduce


def _unsigned_view(t) -> np.dtype | None:
    """For ids in [0, high) of a signed type: the same-size unsigned dtype (see _ids_in_range)."""
    if t.id_range is None or t.id_range[0] != 0 or t.dtype is None or t.dtype.kind != "i":
        return None
    return np.dtype(t.dtype.str.replace("i", "u"))


def _ids_in_range(arr: np.ndarray, id_range: tuple[int, int], unsigned: np.dtype | None) -> bool:
    """One pass over the ids when the range starts at 0 (vocabularies do): seen as unsigned, a
    negative id is huge, so `max < high` covers both ends. Otherwise min and max. (The ufuncs
    directly: arr.min() adds a Python layer that costs more than the reduction here.)"""
    low, high = id_range
    if unsigned is not None:
        return np.maximum.reduce(arr.view(unsigned), axis=None) < high
    return low <= int(np.minimum.reduce(arr, axis=None)) and int(np.maximum.reduce(arr, axis=None)) < high


def _v2_name(dtype: np.dtype) -> str:
    try:
        return from_numpy(dtype).name
    except CodecError:
        return str(dtype)
