"""similarity: two sequences of 128-d vectors -> how similar they are (one shared LSTM).

    python clients/examples/similarity.py --target localhost:8500
"""

import argparse

import numpy as np

from mimo.client import Client

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--target", default="localhost:8500")
args = p.parse_args()

with Client(args.target, timeout=30) as client:
    width = client.metadata("similarity").inputs["left"].shape[-1]  # 128
    rng = np.random.default_rng(0)
    left = rng.random((2, 40, width), dtype=np.float32)
    right = np.stack([left[0], rng.random((40, width), dtype=np.float32)])  # a twin, then a stranger

    similarity = client.predict("similarity", left=left, right=right)["similarity"]
    print(f"similarity: shape {similarity.shape}, dtype {similarity.dtype}")
    for i, value in enumerate(similarity[:, 0]):
        print(f"  pair {i}: {value:.4f}")
