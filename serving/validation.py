"""Validation of a decoded request against the model's contract, before any compute.

Every problem is collected and reported in one INVALID_ARGUMENT message that names the input.
Some of these are not cosmetic: below `posts`' minimum length TensorFlow returns wrong numbers
without an error, and a GPU embedding lookup does not bounds-check token ids.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mimo.protos.dtypes import datatype_to_numpy
from mimo.protos.repository import ModelSpec
from mimo.serving.errors import InvalidArgument

DEFAULT_SIGNATURE = "serving_default"


def validate_request(
    spec: ModelSpec,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    signature: str = DEFAULT_SIGNATURE,
) -> list[str]:
    """Raise InvalidArgument listing every problem; return the outputs to compute."""
    if signature not in spec.signatures:
        raise InvalidArgument(
            f"model '{spec.name}': unknown signature '{signature}' (has: {', '.join(spec.signatures)})"
        )
    contract = spec.signatures[signature]
    problems: list[str] = []

    expected = contract["inputs"]
    missing = [n for n in expected if n not in inputs]
    unexpected = [n for n in inputs if n not in expected]
    problems += [f"missing input '{n}'" for n in missing]
    problems += [f"unexpected input '{n}' (expected {', '.join(expected)})" for n in unexpected]

    batch_sizes = {}
    for name in expected:
        if name in inputs:
            problems += _check_input(spec, name, inputs[name], batch_sizes)
    if len(set(batch_sizes.values())) > 1:
        sizes = ", ".join(f"'{n}' {b}" for n, b in batch_sizes.items())
        problems.append(f"inputs disagree on the batch size: {sizes}")

    wanted = list(outputs) or list(contract["outputs"])
    for name in wanted:
        if name not in contract["outputs"]:
            where = "" if signature == DEFAULT_SIGNATURE else f" in signature '{signature}'"
            problems.append(
                f"unknown output '{name}'{where} (has: {', '.join(contract['outputs'])})"
            )
    if len(set(wanted)) != len(wanted):
        problems.append("an output is requested twice")

    if problems:
        raise InvalidArgument(f"model '{spec.name}': " + "; ".join(problems))
    return wanted


def _check_input(spec: ModelSpec, name: str, array: np.ndarray, batch_sizes: dict) -> list[str]:
    tensor = spec.input(name)
    problems = []
    want_dtype = datatype_to_numpy(tensor.datatype)
    if array.dtype != want_dtype:
        problems.append(f"input '{name}': datatype {_v2_name(array.dtype)} where the model takes {tensor.datatype}")
    if array.ndim != len(tensor.shape):
        problems.append(
            f"input '{name}': rank {array.ndim} (shape {list(array.shape)}) where the model takes "
            f"rank {len(tensor.shape)} {list(tensor.shape)}"
        )
        return problems
    for axis, (got, want) in enumerate(zip(array.shape, tensor.shape)):
        if want != -1 and got != want:
            problems.append(f"input '{name}': dimension {axis} is {got} where the model takes {want}")
    batch = array.shape[0]
    batch_sizes[name] = batch
    if batch == 0:
        problems.append(f"input '{name}': empty batch (dimension 0 is 0)")
    elif spec.max_batch_size and batch > spec.max_batch_size:
        problems.append(f"input '{name}': batch of {batch} is over the model's max_batch_size {spec.max_batch_size}")
    if any(d == 0 for d in array.shape[1:]):
        problems.append(f"input '{name}': empty dimension in shape {list(array.shape)}")
        return problems

    constraint = spec.constraints.get(name)
    if constraint is None or problems:
        return problems
    if constraint.min_length is not None and array.ndim >= 2 and array.shape[1] < constraint.min_length:
        problems.append(
            f"input '{name}': sequence length {array.shape[1]} is shorter than the model's minimum {constraint.min_length}"
        )
    if constraint.id_range is not None and array.size:
        low, high = constraint.id_range
        smallest, largest = int(array.min()), int(array.max())
        if smallest < low or largest >= high:
            bad = smallest if smallest < low else largest
            index = tuple(int(i) for i in np.argwhere(array == bad)[0])
            problems.append(
                f"input '{name}': token id {bad} at {list(index)} is outside the vocabulary [{low}, {high})"
            )
    return problems


def _v2_name(dtype: np.dtype) -> str:
    from mimo.protos.dtypes import from_numpy

    try:
        return from_numpy(dtype).name
    except ValueError:
        return str(dtype)
