"""posts: a social media post (token ids) -> three heads: age, income bracket, gender.

    python clients/examples/posts.py --target localhost:8500
"""

import argparse

import numpy as np

from mimo.client import Client

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--target", default="localhost:8500")
args = p.parse_args()

with Client(args.target, timeout=30) as client:
    spec = client.metadata("posts").inputs["posts"]
    # The conv/pool stack needs a minimum length (the server refuses shorter posts).
    length = max(spec.min_length or 1, 300)
    low, high = spec.id_range
    tokens = np.random.default_rng(0).integers(max(low, 1), high, size=(3, length), dtype=np.int32)

    heads = client.predict("posts", posts=tokens)
    age, income, gender = heads["age"], heads["income"], heads["gender"]
    print(f"age: shape {age.shape}; income: shape {income.shape}; gender: shape {gender.shape}")
    for i in range(len(tokens)):
        print(f"  post {i}: age {age[i, 0]:.1f}, income bracket {income[i].argmax()}, "
              f"gender p={gender[i, 0]:.3f}")
