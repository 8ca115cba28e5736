"""qa: a text and a question (token ids) -> a distribution over 500 answer words.

    python clients/examples/qa.py --target localhost:8500
"""

import argparse

import numpy as np

from mimo.client import Client

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--target", default="localhost:8500")
args = p.parse_args()

with Client(args.target, timeout=30) as client:
    meta = client.metadata("qa")
    low, high = meta.inputs["text"].id_range  # the vocabulary: ids outside it are refused
    rng = np.random.default_rng(0)
    text = rng.integers(max(low, 1), high, size=(2, 100), dtype=np.int32)  # 0 is padding
    question = rng.integers(max(low, 1), high, size=(2, 20), dtype=np.int32)

    # A mapping works as well as keywords; outputs= asks for some heads only.
    answer = client.predict("qa", {"text": text, "question": question}, outputs=["answer"])["answer"]
    print(f"answer: shape {answer.shape}, dtype {answer.dtype}")
    for i, row in enumerate(answer):
        print(f"  question {i}: answer word {row.argmax()} (p={row.max():.4f})")
