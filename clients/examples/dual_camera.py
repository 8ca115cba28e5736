"""dual_camera: two camera images -> features from one shared Xception base.

    python clients/examples/dual_camera.py --target localhost:8500
"""

import argparse

import numpy as np

from mimo.client import Client

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--target", default="localhost:8500")
args = p.parse_args()

with Client(args.target, timeout=60) as client:
    _, height, width, channels = client.metadata("dual_camera").inputs["left"].shape  # set at export
    rng = np.random.default_rng(0)
    left = rng.random((1, height, width, channels), dtype=np.float32)
    right = rng.random((1, height, width, channels), dtype=np.float32)

    features = client.predict("dual_camera", left=left, right=right)["features"]
    print(f"features: shape {features.shape}, dtype {features.dtype}")
    print(f"  mean {features.mean():.5f}, max {features.max():.5f}")
