"""clothing_price: item metadata, a description (token ids) and a picture -> a price.

    python clients/examples/clothing_price.py --target localhost:8500
"""

import argparse

import numpy as np

from mimo.client import Client

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--target", default="localhost:8500")
args = p.parse_args()

with Client(args.target, timeout=30) as client:
    inputs = client.metadata("clothing_price").inputs
    fields = inputs["metadata"].shape[1]
    _, height, width, channels = inputs["picture"].shape
    low, high = inputs["description"].id_range
    rng = np.random.default_rng(0)

    price = client.predict(
        "clothing_price",
        metadata=rng.random((2, fields), dtype=np.float32),
        description=rng.integers(max(low, 1), high, size=(2, 30), dtype=np.int32),
        picture=rng.random((2, height, width, channels), dtype=np.float32),
    )["price"]
    print(f"price: shape {price.shape}, dtype {price.dtype}")
    for i, value in enumerate(price[:, 0]):
        print(f"  item {i}: {value:.2f}")
