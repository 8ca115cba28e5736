"""User-style Keras models of the project's own (none of them the notebook's), for the export tests.

Each builder returns a fresh, untrained model: what matters is that what mimo serves equals what
Keras computes, and that the contract (names, dtypes, shapes, minimum lengths, id ranges) comes
out of the model. `EXPECTED` is what a person reading each model would derive by hand.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from user_models.custom import LogGamma, Scale


def dict_io() -> keras.Model:
    features = keras.Input((8,), name="features")
    category = keras.Input((1,), dtype="int32", name="category")
    merged = layers.concatenate([features, layers.Flatten()(layers.Embedding(12, 4)(category))])
    hidden = layers.Dense(16, activation="relu")(merged)
    return keras.Model({"features": features, "category": category},
                       {"score": layers.Dense(1)(hidden), "label": layers.Dense(3, activation="softmax")(hidden)},
                       name="dict_io")


def list_heads() -> keras.Model:
    left = keras.Input((5,), name="left")
    right = keras.Input((3,), name="right")
    hidden = layers.Dense(8, activation="tanh")(layers.concatenate([left, right]))
    # A list of outputs: the heads are named only by their layers (not output_0, output_1).
    return keras.Model([left, right], [layers.Dense(2, name="mean")(hidden), layers.Dense(2, name="spread")(hidden)],
                       name="list_heads")


def text_conv() -> keras.Model:
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = layers.Embedding(500, 8)(tokens)
    x = layers.Conv1D(8, 3, activation="relu")(x)
    x = layers.MaxPooling1D(2)(x)
    x = layers.Conv1D(8, 3, dilation_rate=2, activation="relu")(x)  # spans 5 steps
    x = layers.GlobalMaxPooling1D()(x)
    return keras.Model(tokens, layers.Dense(1, activation="sigmoid", name="sentiment")(x), name="text_conv")


def shared_encoder() -> keras.Model:
    ids = keras.Input((None,), dtype="int32")
    encoded = layers.GlobalAveragePooling1D()(layers.Conv1D(8, 4)(layers.Embedding(300, 8)(ids)))
    encoder = keras.Model(ids, encoded, name="encoder")  # one sub-model, called on both inputs
    query = keras.Input((None,), dtype="int32", name="query")
    document = keras.Input((None,), dtype="int32", name="document")
    joined = layers.concatenate([encoder(query), encoder(document)])
    return keras.Model({"query": query, "document": document},
                       {"relevance": layers.Dense(1, activation="sigmoid")(joined)}, name="shared_encoder")


def sequential() -> keras.Model:
    return keras.Sequential([
        keras.Input((6,), name="measurements"),
        layers.Dense(8, activation="relu"),
        layers.Dense(2, name="reading"),
    ], name="sequential")


def string_input() -> keras.Model:
    vectorize = layers.TextVectorization(max_tokens=50, output_sequence_length=8)
    vectorize.adapt(["a good film", "a bad film", "not good at all", "very good indeed"])
    review = keras.Input((1,), dtype="string", name="review")
    x = layers.GlobalAveragePooling1D()(layers.Embedding(50, 4)(vectorize(review)))
    return keras.Model(review, layers.Dense(1, activation="sigmoid", name="positive")(x), name="string_input")


def custom_layer() -> keras.Model:
    x = keras.Input((4,), name="x")
    return keras.Model(x, layers.Dense(2, name="y")(Scale()(x)), name="custom_layer")


def unconvertible() -> keras.Model:
    x = keras.Input((4,), name="x")
    return keras.Model(x, layers.Dense(1, name="z")(LogGamma()(x)), name="unconvertible")


BUILDERS = {f.__name__: f for f in (dict_io, list_heads, text_conv, shared_encoder, sequential, string_input,
                                     custom_layer, unconvertible)}

# name -> (inputs {name: (datatype, shape)}, outputs {name: (datatype, shape)}, constraints, formats)
EXPECTED = {
    "dict_io": ({"features": ("FP32", [-1, 8]), "category": ("INT32", [-1, 1])},
                {"score": ("FP32", [-1, 1]), "label": ("FP32", [-1, 3])},
                {"category": {"id_range": [0, 12]}}, ["savedmodel", "onnx"]),
    "list_heads": ({"left": ("FP32", [-1, 5]), "right": ("FP32", [-1, 3])},
                   {"mean": ("FP32", [-1, 2]), "spread": ("FP32", [-1, 2])}, {}, ["savedmodel", "onnx"]),
    "text_conv": ({"tokens": ("INT32", [-1, -1])}, {"sentiment": ("FP32", [-1, 1])},
                  {"tokens": {"min_length": 12, "id_range": [0, 500]}}, ["savedmodel", "onnx"]),
    "shared_encoder": ({"query": ("INT32", [-1, -1]), "document": ("INT32", [-1, -1])},
                       {"relevance": ("FP32", [-1, 1])},
                       {"query": {"min_length": 4, "id_range": [0, 300]},
                        "document": {"min_length": 4, "id_range": [0, 300]}}, ["savedmodel", "onnx"]),
    "sequential": ({"measurements": ("FP32", [-1, 6])}, {"reading": ("FP32", [-1, 2])}, {}, ["savedmodel", "onnx"]),
    "string_input": ({"review": ("BYTES", [-1, 1])}, {"positive": ("FP32", [-1, 1])}, {}, ["savedmodel"]),
    "custom_layer": ({"x": ("FP32", [-1, 4])}, {"y": ("FP32", [-1, 2])}, {}, ["savedmodel", "onnx"]),
    "unconvertible": ({"x": ("FP32", [-1, 4])}, {"z": ("FP32", [-1, 1])}, {}, ["savedmodel"]),
}


def request(name: str, batch: int = 3, length: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid inputs for one model, as a client would send them."""
    rng = np.random.default_rng(seed)
    inputs, _, constraints, _ = EXPECTED[name]
    arrays = {}
    for tensor, (datatype, shape) in inputs.items():
        full = [batch] + [length if d == -1 else d for d in shape[1:]]
        if datatype == "BYTES":
            words = np.array([b"good", b"bad", b"film", b"not", b"very"], dtype=object)
            arrays[tensor] = np.array([[b" ".join(rng.choice(words, 3))] for _ in range(batch)], dtype=object)
        elif datatype == "INT32":
            high = constraints.get(tensor, {}).get("id_range", [0, 10])[1]
            arrays[tensor] = rng.integers(0, high, size=full).astype(np.int32)
        else:
            arrays[tensor] = rng.standard_normal(full).astype(np.float32)
    return arrays
