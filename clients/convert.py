"""Narrowing the caller's arrays to the datatypes the model declares, when no value changes.

numpy makes int64 and float64 arrays by default (np.array([1, 2]), np.random.rand, np.arange),
while models take INT32 ids and FP32 features; the server is strict about datatypes, so the
client converts before sending, and only where it is safe:

- integer (or bool) -> integer datatype: when every value lies in the target's range;
  otherwise "input 'posts': int64 value 3000000000 does not fit INT32".
- float -> float datatype (float64 -> FP32, FP16): rounded to the nearest representable value,
  the narrowing every numeric client makes; NaN and +-inf stay what they are, but a finite value
  that would become inf ("float64 value 1e+39 does not fit FP32") is refused.
- integer (or bool) -> float datatype: when every value is represented exactly (|v| <= 2**24
  always is for FP32); otherwise "int64 value 16777217 is not exact in FP32".
- anything else (float -> integer ids, numbers -> BOOL or BYTES, strings -> numbers) is left as
  it is, and the contract check (or the server) reports the datatype mismatch.

An array already of the declared dtype is passed through untouched: no copy, no pass over it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mimo.protos.dtypes import from_numpy

from mimo.client.metadata import ModelMetadata, TensorMetadata

# The dtypes numpy picks on its own: an array of one of these was probably not chosen for the
# model, so it is worth asking the server what the model takes (see dtype_unsettled).
NUMPY_DEFAULTS = (np.dtype(np.int64), np.dtype(np.float64))


def conform(arrays: Mapping[str, Any], meta: ModelMetadata) -> tuple[Mapping[str, Any], list[str]]:
    """(arrays with each known input narrowed to its declared dtype, the problems found).
    Returns the same mapping when nothing needed converting."""
    converted, problems = None, []
    for name, array in arrays.items():
        tensor = meta.inputs.get(name)
        target = tensor.dtype if tensor is not None else None
        if target is None:
            continue  # unknown inputs and datatypes are the contract check's to report
        try:
            narrowed = narrow(array, target)
        except ValueError as exc:
            problems.append(f"input '{name}': {exc}")
            continue
        if narrowed is not array:
            converted = converted if converted is not None else dict(arrays)
            converted[name] = narrowed
    return (arrays if converted is None else converted), problems


def narrow(array: np.ndarray, target: np.dtype) -> np.ndarray:
    """`array` as `target` when every value converts as the module docstring says; the array
    itself when the kinds do not convert; ValueError naming a value that does not fit."""
    source = array.dtype
    if source == target:
        return array
    if source.kind not in "biuf" or target.kind not in "iuf" or (source.kind == "f" and target.kind != "f"):
        return array
    datatype = from_numpy(target).name
    if target.kind in "iu":
        if array.size:
            low, high = array.min(), array.max()
            limits = np.iinfo(target)
            if high > limits.max or low < limits.min:
                raise ValueError(f"{source} value {high if high > limits.max else low} does not fit {datatype}")
        return array.astype(target)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected below, not warned
        out = array.astype(target)
        if source.kind == "f":
            bad = np.isinf(out) & np.isfinite(array)
            if bad.any():
                raise ValueError(f"{source} value {float(array[bad].flat[0])} does not fit {datatype}")
        else:
            bad = out.astype(source) != array
            if bad.any():
                raise ValueError(f"{source} value {array[bad].flat[0]} is not exact in {datatype}")
    return out


def dtype_unsettled(values: Mapping[str, Any]) -> bool:
    """Whether any input is a list, a scalar or an array of numpy's default dtypes, i.e. one
    whose datatype only the model's metadata can settle."""
    return any(type(v) is not np.ndarray or v.dtype in NUMPY_DEFAULTS for v in values.values())


def as_array(value: Any, tensor: TensorMetadata) -> np.ndarray:
    """A list or scalar as an array that narrow() can finish: numpy's own dtype for numbers
    (so int64 ids out of INT32's range are caught, not wrapped), object for BYTES."""
    return np.asarray(value, dtype=object if tensor.datatype == "BYTES" else None)
