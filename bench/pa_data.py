"""perf_analyzer --input-data JSON for the bench's models (16 samples each, fixed seed).

Every sample carries its own "shape", so perf_analyzer needs no --shape flag for the sequence
inputs. Token ids are drawn from [1, vocabulary) (0 is the padding id of a masked model).

  mlp    x       FP32  [64]
  qa     text    INT32 [100]   question INT32 [100]   (the peers' lengths)
  posts  posts   INT32 [300]   (the model's minimum length is 269)
  qa_mixed       text lengths 20..100, question lengths 4..20, all different (padding vs grouping)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SAMPLES = 16
QA_LENGTH = 100
POSTS_LENGTH = 300


def _tokens(rng, vocabulary: int, length: int) -> dict:
    return {"content": rng.integers(1, vocabulary, length).tolist(), "shape": [length]}


def datasets(seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    mlp = [{"x": {"content": rng.random(64).round(6).tolist(), "shape": [64]}} for _ in range(SAMPLES)]
    qa = [{"text": _tokens(rng, 10000, QA_LENGTH), "question": _tokens(rng, 10000, QA_LENGTH)}
          for _ in range(SAMPLES)]
    posts = [{"posts": _tokens(rng, 50000, POSTS_LENGTH)} for _ in range(SAMPLES)]
    text_lengths = np.linspace(20, 100, SAMPLES).astype(int)
    question_lengths = np.linspace(4, 20, SAMPLES).astype(int)
    rng.shuffle(text_lengths)
    qa_mixed = [{"text": _tokens(rng, 10000, int(t)), "question": _tokens(rng, 10000, int(q))}
                for t, q in zip(text_lengths, question_lengths)]
    return {"mlp": {"data": mlp}, "qa": {"data": qa}, "posts": {"data": posts}, "qa_mixed": {"data": qa_mixed}}


def write(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, document in datasets().items():
        paths[name] = out / f"pa_{name}.json"
        paths[name].write_text(json.dumps(document))
    return paths


def as_arrays(document: dict) -> list[dict[str, np.ndarray]]:
    """The samples of one input-data document as numpy feeds (for in-process checks)."""
    dtype = {"x": np.float32}
    return [{name: np.asarray(t["content"], dtype=dtype.get(name, np.int32)).reshape([1] + t["shape"])
             for name, t in sample.items()} for sample in document["data"]]


if __name__ == "__main__":
    for name, path in write(Path(sys.argv[1] if len(sys.argv) > 1 else ".")).items():
        print(name, path)
