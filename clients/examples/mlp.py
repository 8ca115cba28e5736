"""mlp: a batch of 64-feature vectors -> probabilities over 10 classes.

    python clients/examples/mlp.py --target localhost:8500
"""

import argparse

import numpy as np

from mimo.client import Client

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--target", default="localhost:8500")
args = p.parse_args()

with Client(args.target, timeout=30) as client:
    features = client.metadata("mlp").inputs["x"].shape[1]  # 64: from the server, not hard-coded
    x = np.random.default_rng(0).random((4, features), dtype=np.float32)

    probs = client.predict("mlp", x=x)["probs"]
    print(f"probs: shape {probs.shape}, dtype {probs.dtype}")
    for i, row in enumerate(probs):
        print(f"  item {i}: class {row.argmax()} (p={row.max():.3f})")

    # Many requests over one stream, several in flight, results in order.
    batches = ({"x": x[i : i + 1]} for i in range(len(x)))
    for i, heads in enumerate(client.predict_many("mlp", batches, concurrency=4)):
        print(f"  streamed item {i}: class {heads['probs'][0].argmax()}")
