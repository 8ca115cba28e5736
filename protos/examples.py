"""Valid example inputs made from a contract: what the server warms a model up with, and what the
exporter checks parity on. Ids lie inside each input's id range, sequences are no shorter than its
minimum length, strings are short words; every other dynamic axis gets `length`
(at least the minimum), and a dynamic axis 0 gets `batch`.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from mimo.protos.dtypes import datatype_to_numpy

WORDS = np.array([b"the", b"model", b"serves", b"every", b"head", b"by", b"name", b"unknown"], dtype=object)


def example_inputs(inputs: Iterable[tuple[str, str, Iterable[int]]], constraints: Mapping[str, Mapping],
                   rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
    """{name: array} for (name, datatype, shape) inputs; constraints as in model.json
    ({name: {"min_length": n, "id_range": [low, high]}})."""
    arrays = {}
    for name, datatype, shape in inputs:
        constraint = constraints.get(name, {})
        steps = max(length, constraint.get("min_length") or 1)
        dims = list(shape)
        # Axis 0 is the batch unless the model fixes it (no batching: max_batch_size 0).
        full = [batch if dims[0] == -1 else dims[0]] + [steps if d == -1 else d for d in dims[1:]]
        if datatype == "BYTES":
            counts = rng.integers(1, 6, size=full)
            arrays[name] = np.vectorize(lambda n: b" ".join(rng.choice(WORDS, n)), otypes=[object])(counts)
        elif datatype == "BOOL":
            arrays[name] = rng.integers(0, 2, size=full).astype(bool)
        elif constraint.get("id_range"):
            low, high = constraint["id_range"]
            arrays[name] = rng.integers(max(low, 1) if high > 1 else low, high, size=full).astype(datatype_to_numpy(datatype))
        elif datatype.startswith(("INT", "UINT")):
            arrays[name] = rng.integers(0, 10, size=full).astype(datatype_to_numpy(datatype))
        else:
            arrays[name] = rng.random(full).astype(datatype_to_numpy(datatype))
    return arrays
