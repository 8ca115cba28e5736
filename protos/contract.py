"""The ONE request check against a model's contract, used by the server and the client alike.

The server validates every request before any compute; the client runs the very same check
before sending when it has the model's metadata, so a bad request fails fast and both sides give
the same status (INVALID_ARGUMENT) and the same words, naming the input. `problems()` returns
every problem at once ([] when the request is fine).

Some checks are not cosmetic: below `posts`' minimum length TensorFlow returns wrong numbers
without an error, and a GPU embedding lookup does not bounds-check token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from mimo.protos.dtypes import DTYPES, from_numpy
from mimo.protos.errors import CodecError

DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class InputRule:
    name: str
    datatype: str  # v2 name, e.g. "INT32"
    shape: tuple[int, ...]  # -1 = any size
    min_length: int | None = None  # shortest sequence (dimension 1)
    id_range: tuple[int, int] | None = None  # token ids must lie in [low, high)

    @property
    def dtype(self) -> np.dtype | None:
        entry = DTYPES.get(self.datatype)
        return entry.numpy if entry is not None else None


class Contract:
    """The checks for one model, with what they need looked up once (not per request)."""

    def __init__(self, model: str, inputs: Iterable[InputRule], outputs: Iterable[str],
                 signatures: Mapping[str, Mapping[str, list[str]]] | None, max_batch_size: int):
        self.model = model
        self.rules = {rule.name: rule for rule in inputs}
        self.max_batch_size = max_batch_size
        # A model that publishes no signatures has one: every input, every output.
        self.signatures = dict(signatures or {DEFAULT_SIGNATURE: {"inputs": list(self.rules),
                                                                  "outputs": list(outputs)}})
        self._prepared = {
            name: (rule.dtype, rule.shape, [(a, d) for a, d in enumerate(rule.shape) if d != -1],
                   rule.min_length, rule.id_range, _unsigned_view(rule))
            for name, rule in self.rules.items()
        }

    def signature(self, name: str | None) -> Mapping[str, list[str]] | None:
        return self.signatures.get(name or DEFAULT_SIGNATURE)

    def unknown_signature(self, name: str | None) -> str:
        return f"unknown signature '{name}' (has: {', '.join(self.signatures)})"

    def heads(self, outputs: list[str] | None, signature: str | None) -> list[str]:
        """The outputs an answer carries: those asked for, or all of the signature's."""
        if outputs:
            return list(outputs)
        contract = self.signature(signature)
        return list(contract["outputs"]) if contract else []

    def problems(self, arrays: Mapping[str, Any], outputs: list[str] | None = None,
                 signature: str | None = None) -> list[str]:
        if not outputs and self._passes(arrays, signature):
            return []
        return self._problems(arrays, outputs or [], signature)

    # -- the hot path: True when everything passes, with as little work as possible -------------

    def _passes(self, arrays: Mapping[str, Any], signature: str | None) -> bool:
        contract = self.signatures.get(signature or DEFAULT_SIGNATURE)
        if contract is None or len(arrays) != len(contract["inputs"]):
            return False
        batch, limit = None, self.max_batch_size or 1 << 62
        for name in contract["inputs"]:
            arr = arrays.get(name)
            if arr is None:
                return False
            dtype, shape, fixed, min_length, id_range, unsigned = self._prepared[name]
            got = arr.shape
            if arr.dtype != dtype or len(got) != len(shape) or not got:
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
            if id_range is not None and not _ids_in_range(arr, id_range, unsigned):
                return False
        return True

    # -- the slow path: find and word every problem ---------------------------------------------

    def _problems(self, arrays: Mapping[str, Any], outputs: list[str], signature: str | None) -> list[str]:
        contract = self.signature(signature)
        if contract is None:
            return [self.unknown_signature(signature)]
        expected = contract["inputs"]
        problems = [f"missing input '{n}'" for n in expected if n not in arrays]
        problems += [f"unexpected input '{n}' (expected {', '.join(expected)})" for n in arrays if n not in expected]
        batches: dict[str, int] = {}
        for name in expected:
            if name in arrays:
                self._check_input(name, arrays[name], batches, problems)
        if len(set(batches.values())) > 1:
            problems.append("inputs disagree on the batch size: " + ", ".join(f"'{n}' {b}" for n, b in batches.items()))
        heads = contract["outputs"]
        where = "" if signature in (None, "", DEFAULT_SIGNATURE) else f" in signature '{signature}'"
        problems += [f"unknown output '{n}'{where} (has: {', '.join(heads)})" for n in outputs if n not in heads]
        if len(set(outputs)) != len(outputs):
            problems.append("an output is requested twice")
        return problems

    def _check_input(self, name: str, arr, batches: dict, problems: list[str]) -> None:
        rule = self.rules[name]
        dtype, shape, fixed, min_length, id_range, unsigned = self._prepared[name]
        before = len(problems)
        if dtype is not None and arr.dtype != dtype:
            problems.append(f"input '{name}': datatype {_v2_name(arr.dtype)} where the model takes {rule.datatype}")
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
        elif self.max_batch_size and got[0] > self.max_batch_size:
            problems.append(f"input '{name}': batch of {got[0]} is over the model's max_batch_size {self.max_batch_size}")
        if 0 in got[1:]:
            problems.append(f"input '{name}': empty dimension in shape {list(got)}")
        if len(problems) != before:
            return  # constraints only make sense on a well-formed tensor
        if min_length is not None and arr.ndim >= 2 and got[1] < min_length:
            problems.append(f"input '{name}': sequence length {got[1]} is shorter than the model's minimum {min_length}")
        if id_range is not None and arr.size and not _ids_in_range(arr, id_range, unsigned):
            low, high = id_range
            values = _own_values(arr)  # an index into these is one into arr too
            smallest, largest = int(values.min()), int(values.max())
            bad = smallest if smallest < low else largest
            index = [int(i) for i in np.argwhere(values == bad)[0]]
            problems.append(f"input '{name}': token id {bad} at {index} is outside the vocabulary [{low}, {high})")


def _unsigned_view(rule: InputRule) -> np.dtype | None:
    """For ids in [0, high) of a signed type: the same-size unsigned dtype (see _ids_in_range)."""
    dtype = rule.dtype
    if rule.id_range is None or rule.id_range[0] != 0 or dtype is None or dtype.kind != "i":
        return None
    return np.dtype(dtype.str.replace("i", "u"))


def _ids_in_range(arr: np.ndarray, id_range: tuple[int, int], unsigned: np.dtype | None) -> bool:
    """One pass when the range starts at 0 (vocabularies do): seen as unsigned, a negative id is
    huge, so `max < high` covers both ends. Otherwise min and max. (The ufuncs directly:
    arr.min() adds a Python layer that costs more than the reduction for small tensors.)"""
    low, high = id_range
    arr = _own_values(arr)
    if unsigned is not None and arr.dtype.kind == "i":
        return int(np.maximum.reduce(arr.view(unsigned), axis=None)) < high
    return low <= int(np.minimum.reduce(arr, axis=None)) and int(np.maximum.reduce(arr, axis=None)) < high


def _own_values(arr: np.ndarray) -> np.ndarray:
    """The values an array stores: a broadcast one (TF Serving's single value for a whole shape)
    with its stride-0 axes collapsed, so checking it costs what was sent, not what the shape says."""
    strides = arr.strides
    if 0 not in strides:
        return arr
    return arr[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in strides)]


def _v2_name(dtype: np.dtype) -> str:
    try:
        return from_numpy(dtype).name
    except CodecError:
        return str(dtype)
