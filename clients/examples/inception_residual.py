"""inception_residual: a 32x32 RGB image -> probabilities over 10 classes, with AsyncClient.

    python clients/examples/inception_residual.py --target localhost:8500
"""

import argparse
import asyncio

import numpy as np

from mimo.client import AsyncClient


async def main(target: str) -> None:
    async with AsyncClient(target, timeout=30) as client:
        shape = (await client.metadata("inception_residual")).inputs["image"].shape  # (-1, 32, 32, 3)
        images = np.random.default_rng(0).random((3, *shape[1:]), dtype=np.float32)

        probs = (await client.predict("inception_residual", image=images))["probs"]
        print(f"probs: shape {probs.shape}, dtype {probs.dtype}")
        # Several calls at once: each is its own request; the server may batch them.
        singles = await asyncio.gather(*(client.predict("inception_residual", image=images[i : i + 1])
                                         for i in range(len(images))))
        for i, heads in enumerate(singles):
            print(f"  image {i}: class {heads['probs'][0].argmax()} (p={heads['probs'][0].max():.3f})")


p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--target", default="localhost:8500")
asyncio.run(main(p.parse_args().target))
