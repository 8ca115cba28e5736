"""The export-time check that the SavedModel and the ONNX file compute the same function.

Both files are loaded back from disk (what will be served, not the in-memory model) and run on the
same random inputs over several batch sizes and sequence lengths, the minimum length included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mimo.export.builders import Blueprint

TOLERANCE = 1e-4


class ParityError(RuntimeError):
    pass


def parity_cases(blueprint: Blueprint) -> list[tuple[int, int | None]]:
    """(batch, sequence length) pairs; lengths only matter for models with sequence inputs."""
    if not blueprint.sequence_inputs:
        return [(1, None), (2, None), (5, None)]
    shortest = blueprint.min_length
    return [(1, shortest), (2, shortest + 7), (5, 2 * shortest + 13), (3, shortest)]


def check_parity(blueprint: Blueprint, savedmodel_dir: Path, onnx_path: Path, seed: int = 1) -> dict:
    import onnxruntime as ort
    import tensorflow as tf

    loaded = tf.saved_model.load(str(savedmodel_dir))
    signature = loaded.signatures["serving_default"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    heads = [t.name for t in blueprint.outputs]
    worst = {head: 0.0 for head in heads}
    cases = []
    rng = np.random.default_rng(seed)
    for batch, length in parity_cases(blueprint):
        feeds = blueprint.make_inputs(rng, batch, length or 1)
        want = {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in feeds.items()}).items()}
        got = dict(zip(heads, session.run(heads, feeds)))
        diffs = {head: float(np.max(np.abs(want[head] - got[head]))) for head in heads}
        cases.append({"batch": batch, "length": length, "max_abs_diff": diffs})
        for head, diff in diffs.items():
            if not np.isfinite(diff):
                diff = float("inf")
            worst[head] = max(worst[head], diff)
    failing = {head: diff for head, diff in worst.items() if not diff <= TOLERANCE}
    if failing:
        raise ParityError(
            f"{blueprint.name}: SavedModel and ONNX disagree by more than {TOLERANCE:g}: "
            + ", ".join(f"{head} max |diff| {diff:.3g}" for head, diff in failing.items())
        )
    return {"parity": worst, "parity_cases": cases}
