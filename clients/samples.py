"""Valid random inputs built from a model's metadata (for `mimo predict --random`, smoke tests
and examples): variable dimensions get a length the model accepts, token ids stay in range."""

from __future__ import annotations

import numpy as np

from mimo.client.metadata import ModelMetadata


def random_inputs(meta: ModelMetadata, batch: int = 1, length: int | None = None, seed: int | None = None,
                  signature: str | None = None) -> dict[str, np.ndarray]:
    """{input: array} for `meta` (one signature's inputs): batch `batch`, every other variable
    dimension `length` (default 16, or the input's min length when that is longer)."""
    rng = np.random.default_rng(seed)
    contract = meta.contract(signature)
    names = contract["inputs"] if contract else list(meta.inputs)
    arrays = {}
    for name in names:
        t = meta.inputs[name]
        size = max(length or 16, t.min_length or 1)
        shape = [batch if axis == 0 else (size if d == -1 else d) for axis, d in enumerate(t.shape)]
        dtype = t.dtype
        if dtype is None:
            raise ValueError(f"input '{name}': datatype {t.datatype} has no numpy dtype")
        if t.id_range is not None:
            low, high = t.id_range
            arrays[name] = rng.integers(max(low, 1), high, size=shape).astype(dtype)  # 0 is often padding
        elif dtype.kind in "iu":
            arrays[name] = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[name] = rng.random(shape) < 0.5
        elif dtype.kind == "O":
            arrays[name] = np.full(shape, b"x", dtype=object)
        else:
            arrays[name] = rng.random(shape).astype(dtype)
    return arrays
