"""The export-time check that both files compute what the Keras model computes.

The SavedModel and the ONNX file are loaded back from disk (what will be served, not the
in-memory model) and run on the same random inputs as the Keras model itself, over several
batch sizes and sequence lengths, the minimum length included. Inputs are made from the
contract: ids inside the derived id range, sequences no shorter than the derived minimum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mimo.export.contract import Contract, call_by_name
from mimo.protos.errors import error_line
from mimo.protos.examples import example_inputs

RTOL = ATOL = 1e-4


class ParityError(RuntimeError):
    pass


def parity_cases(contract: Contract) -> list[tuple[int, int]]:
    """(batch, sequence length) pairs; lengths only matter for inputs with dynamic axes."""
    if not any(-1 in t.shape[1:] for t in contract.inputs):
        return [(1, 1), (2, 1), (5, 1)]
    shortest = contract.min_length
    return [(1, shortest), (2, shortest + 7), (5, 2 * shortest + 13), (3, shortest)]


def sample_inputs(contract: Contract, rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
    """Valid random inputs: the contract's dtypes and shapes, ids in range, lengths above the minimum."""
    return example_inputs([(t.name, t.datatype, t.shape) for t in contract.inputs], contract.constraints,
                          rng, batch, length)


def check_parity(model, contract: Contract, savedmodel_dir: Path, onnx_path: Path | None, seed: int = 1) -> dict:
    """Max |diff| per head against Keras for each file; ParityError if the SavedModel disagrees.

    Returns {"parity": {head: worst over files}, "parity_by_format": ..., "parity_cases": [...],
    "onnx_parity_error": message} (the last only when the ONNX file disagrees: the caller then
    drops it and serves the SavedModel).
    """
    import onnxruntime as ort
    import tensorflow as tf

    call = call_by_name(model, contract)
    signature = tf.saved_model.load(str(savedmodel_dir)).signatures["serving_default"]
    session, onnx_error = None, None
    if onnx_path:
        try:
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a file ONNX Runtime refuses is not served
            onnx_error = f"ONNX Runtime cannot load the conversion: {error_line(exc)}"
    heads = [t.name for t in contract.outputs]
    formats = ["savedmodel"] + (["onnx"] if session else [])
    worst = {f: {head: 0.0 for head in heads} for f in formats}
    failing: dict[str, set[str]] = {f: set() for f in formats}  # heads outside the tolerance
    cases = []
    rng = np.random.default_rng(seed)
    for batch, length in parity_cases(contract):
        feeds = sample_inputs(contract, rng, batch, length)
        want = {k: np.asarray(v) for k, v in call({k: tf.constant(v) for k, v in feeds.items()}).items()}
        got = {"savedmodel": {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in feeds.items()}).items()}}
        if session:
            try:
                got["onnx"] = dict(zip(heads, session.run(heads, feeds)))
            except Exception as exc:  # noqa: BLE001 - a file that cannot run is not served
                onnx_error = f"ONNX Runtime cannot run the conversion: {error_line(exc)}"
                session = None
                formats.remove("onnx")
                worst.pop("onnx")
        case = {"batch": batch, "length": length, "max_abs_diff": {}}
        for fmt in formats:
            diffs = {head: _difference(want[head], got[fmt][head]) for head in heads}
            failing[fmt].update(head for head in heads if not _close(want[head], got[fmt][head]))
            case["max_abs_diff"][fmt] = diffs
            worst[fmt] = {head: max(worst[fmt][head], diff) for head, diff in diffs.items()}
        cases.append(case)
    facts = {"parity_cases": cases, "parity_by_format": worst}
    if onnx_error:
        facts["onnx_parity_error"] = onnx_error
    if failing["savedmodel"]:
        raise ParityError(f"the exported SavedModel disagrees with the Keras model: {_describe(worst, failing, 'savedmodel')}")
    if session and failing["onnx"]:
        facts["onnx_parity_error"] = f"the ONNX conversion disagrees with the Keras model: {_describe(worst, failing, 'onnx')}"
        formats.remove("onnx")
    facts["parity"] = {head: max(worst[f][head] for f in formats) for head in heads}
    return facts


def _difference(want: np.ndarray, got: np.ndarray) -> float:
    """Max |diff| (inf when shapes differ, or strings or non-finite values do not match)."""
    if want.shape != got.shape:
        return float("inf")
    if want.dtype.kind in "OSU":
        return 0.0 if np.array_equal(want, got) else float("inf")
    want, got = want.astype(np.float64), got.astype(np.float64)
    if not np.array_equal(np.isfinite(want), np.isfinite(got)):
        return float("inf")
    finite = np.isfinite(want)
    return float(np.max(np.abs(want[finite] - got[finite]), initial=0.0))


def _close(want: np.ndarray, got: np.ndarray) -> bool:
    """Within ATOL, or RTOL of the value for large outputs (a price of 10^4 has float32 steps of 10^-3)."""
    if want.shape != got.shape:
        return False
    if want.dtype.kind in "OSU":
        return bool(np.array_equal(want, got))
    return bool(np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True))


def _describe(worst: dict, failing: dict, fmt: str) -> str:
    return ", ".join(f"{head} max |diff| {worst[fmt][head]:.3g}" for head in sorted(failing[fmt]))
