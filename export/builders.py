"""One builder per model of the reference notebook, with the names DESIGN.md makes the contract.

Each builder returns a `Blueprint`: the Keras model to serve (dict in, dict out, keyed by the
contract names), the model to fit (usually the same one), per-head losses, and how to make
synthetic data of the right kind for every loss. What is served (names, dtypes, shapes, minimum
lengths, id ranges) is not declared here: the one exporter derives it from the model, as it does
for a user's model. The notebook's bugs are fixed here, not copied: `posts` is trained above the
minimum length its conv/pool stack needs, its targets match their losses, the dual camera really
calls ONE Xception base on both inputs, and the Inception branches are padded so their outputs
can be concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
from keras import layers

from mimo.export.graph import minimum_length

Arrays = dict[str, np.ndarray]


@dataclass
class Blueprint:
    name: str
    model: keras.Model  # what is exported: dict of contract inputs -> dict of contract outputs
    losses: dict[str, str]
    make_inputs: Callable[[np.random.Generator, int, int | None], Arrays]  # (rng, batch, length)
    make_targets: Callable[[np.random.Generator, int], Arrays]
    train_length: int | None = None  # sequence length used for fitting; None if no sequences
    loss_weights: dict[str, float] | None = None
    training_model: keras.Model | None = None  # when the served model has no head to fit
    default_epochs: int = 10
    default_samples: int = 1000
    batch_size: int = 128  # for fitting
    max_batch_size: int = 32  # the serving default written to model.json


def _tokens(rng: np.random.Generator, vocab: int, batch: int, length: int) -> np.ndarray:
    # Ids start at 1 as in the notebook (0 is kept free as a padding id).
    return rng.integers(1, vocab, size=(batch, length), dtype=np.int32)


def _floats(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.random(shape, dtype=np.float32)


def _one_hot(rng: np.random.Generator, batch: int, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[rng.integers(0, classes, size=batch)]


def _binary(rng: np.random.Generator, batch: int) -> np.ndarray:
    # Both classes present, whatever the batch (the notebook's all-zero gender is not a task).
    labels = rng.integers(0, 2, size=(batch, 1)).astype(np.float32)
    labels[0, 0], labels[-1, 0] = 0.0, 1.0
    return labels


def build_mlp(image_size: int) -> Blueprint:
    x = keras.Input(shape=(64,), name="x")
    h = layers.Dense(32, activation="relu")(x)
    h = layers.Dense(32, activation="relu")(h)
    probs = layers.Dense(10, activation="softmax")(h)
    model = keras.Model({"x": x}, {"probs": probs}, name="mlp")
    return Blueprint(
        name="mlp",
        model=model,
        losses={"probs": "categorical_crossentropy"},
        make_inputs=lambda rng, b, n: {"x": _floats(rng, b, 64)},
        make_targets=lambda rng, b: {"probs": _one_hot(rng, b, 10)},
    )


def build_qa(image_size: int) -> Blueprint:
    text = keras.Input(shape=(None,), dtype="int32", name="text")
    question = keras.Input(shape=(None,), dtype="int32", name="question")
    text_embedding = layers.Embedding(10000, 64)
    question_embedding = layers.Embedding(10000, 32)
    encoded_text = layers.LSTM(32)(text_embedding(text))
    encoded_question = layers.LSTM(16)(question_embedding(question))
    merged = layers.concatenate([encoded_text, encoded_question], axis=-1)
    answer = layers.Dense(500, activation="softmax")(merged)
    model = keras.Model({"text": text, "question": question}, {"answer": answer}, name="qa")
    return Blueprint(
        name="qa",
        model=model,
        losses={"answer": "categorical_crossentropy"},
        make_inputs=lambda rng, b, n: {
            "text": _tokens(rng, 10000, b, n),
            "question": _tokens(rng, 10000, b, max(1, n // 5)),
        },
        # One-hot answers (the notebook's randint(0, 1) gives all-zero targets).
        make_targets=lambda rng, b: {"answer": _one_hot(rng, b, 500)},
        train_length=100,
    )


def build_posts(image_size: int) -> Blueprint:
    vocabulary_size, income_groups = 50000, 10
    posts = keras.Input(shape=(None,), dtype="int32", name="posts")
    embedding = layers.Embedding(vocabulary_size, 256)
    stack = [
        layers.Conv1D(128, 5, activation="relu"),
        layers.MaxPooling1D(5),
        layers.Conv1D(256, 5, activation="relu"),
        layers.Conv1D(256, 5, activation="relu"),
        layers.MaxPooling1D(5),
        layers.Conv1D(256, 5, activation="relu"),
        layers.Conv1D(256, 5, activation="relu"),
        layers.GlobalMaxPooling1D(),
    ]
    x = embedding(posts)
    for layer in stack:
        x = layer(x)
    x = layers.Dense(128, activation="relu")(x)
    heads = {
        "age": layers.Dense(1)(x),
        "income": layers.Dense(income_groups, activation="softmax")(x),
        "gender": layers.Dense(1, activation="sigmoid")(x),
    }
    model = keras.Model({"posts": posts}, heads, name="posts")
    shortest = minimum_length(model, 0)  # derived from the layers, as the exporter does

    def targets(rng: np.random.Generator, b: int) -> Arrays:
        income = rng.uniform(1000, 100000, size=b)
        groups = np.minimum(((income - 1000) / (99000 / income_groups)).astype(int), income_groups - 1)
        return {
            "age": rng.integers(18, 50, size=(b, 1)).astype(np.float32),
            "income": np.eye(income_groups, dtype=np.float32)[groups],
            "gender": _binary(rng, b),
        }

    return Blueprint(
        name="posts",
        model=model,
        losses={"age": "mse", "income": "categorical_crossentropy", "gender": "binary_crossentropy"},
        loss_weights={"age": 0.25, "income": 1.0, "gender": 10.0},
        make_inputs=lambda rng, b, n: {"posts": _tokens(rng, vocabulary_size, b, n)},
        make_targets=targets,
        train_length=shortest + 31,  # trained above the minimum, not at it
        batch_size=64,
    )


def build_similarity(image_size: int) -> Blueprint:
    lstm = layers.LSTM(32)  # ONE layer instance: both branches share its weights
    left = keras.Input(shape=(None, 128), name="left")
    right = keras.Input(shape=(None, 128), name="right")
    merged = layers.concatenate([lstm(left), lstm(right)], axis=-1)
    similarity = layers.Dense(1, activation="sigmoid")(merged)
    model = keras.Model({"left": left, "right": right}, {"similarity": similarity}, name="similarity")
    return Blueprint(
        name="similarity",
        model=model,
        losses={"similarity": "binary_crossentropy"},
        make_inputs=lambda rng, b, n: {
            "left": _floats(rng, b, n, 128),
            "right": _floats(rng, b, max(1, n - 3), 128),
        },
        make_targets=lambda rng, b: {"similarity": _binary(rng, b)},
        train_length=20,
        default_epochs=5,
    )


def build_dual_camera(image_size: int) -> Blueprint:
    base = keras.applications.Xception(weights=None, include_top=False)
    left = keras.Input(shape=(image_size, image_size, 3), name="left")
    right = keras.Input(shape=(image_size, image_size, 3), name="right")
    # The same base instance on both cameras (the notebook overwrote `right_input` instead).
    features = layers.concatenate([base(left), base(right)], axis=-1)
    model = keras.Model({"left": left, "right": right}, {"features": features}, name="dual_camera")
    # The features have no loss of their own; fit them through a small depth head.
    depth = layers.Dense(1)(layers.GlobalAveragePooling2D()(features))
    trainer = keras.Model({"left": left, "right": right}, {"depth": depth})
    return Blueprint(
        name="dual_camera",
        model=model,
        losses={"depth": "mse"},
        training_model=trainer,
        make_inputs=lambda rng, b, n: {
            "left": _floats(rng, b, image_size, image_size, 3),
            "right": _floats(rng, b, image_size, image_size, 3),
        },
        make_targets=lambda rng, b: {"depth": rng.uniform(0.5, 10.0, size=(b, 1)).astype(np.float32)},
        default_epochs=1,
        default_samples=32 if image_size > 100 else 64,
        batch_size=16,
        max_batch_size=8,
    )


def build_clothing_price(image_size: int) -> Blueprint:
    metadata_size, vocab, picture = 32, 10000, 64
    metadata = keras.Input(shape=(metadata_size,), name="metadata")
    description = keras.Input(shape=(None,), dtype="int32", name="description")
    image = keras.Input(shape=(picture, picture, 3), name="picture")
    # 1. one-hot metadata -> dense; 2. text -> RNN; 3. picture -> 2-D convnet; then merge.
    m = layers.Dense(32, activation="relu")(metadata)
    embedding = layers.Embedding(vocab, 64)
    d = layers.LSTM(32)(embedding(description))
    p = layers.Conv2D(32, 3, activation="relu")(image)
    p = layers.MaxPooling2D(2)(p)
    p = layers.Conv2D(64, 3, activation="relu")(p)
    p = layers.GlobalMaxPooling2D()(p)
    merged = layers.concatenate([m, d, p], axis=-1)
    price = layers.Dense(1)(layers.Dense(64, activation="relu")(merged))
    model = keras.Model(
        {"metadata": metadata, "description": description, "picture": image},
        {"price": price},
        name="clothing_price",
    )

    def inputs(rng: np.random.Generator, b: int, n: int) -> Arrays:
        return {
            "metadata": _one_hot(rng, b, metadata_size),
            "description": _tokens(rng, vocab, b, n),
            "picture": _floats(rng, b, picture, picture, 3),
        }

    return Blueprint(
        name="clothing_price",
        model=model,
        losses={"price": "mse"},
        make_inputs=inputs,
        make_targets=lambda rng, b: {"price": rng.uniform(5, 200, size=(b, 1)).astype(np.float32)},
        train_length=40,
        default_epochs=3,
        default_samples=512,
        batch_size=64,
    )


def build_inception_residual(image_size: int) -> Blueprint:
    image = keras.Input(shape=(32, 32, 3), name="image")
    # Inception module: four branches with the same stride; 'same' padding so they concatenate
    # (the notebook's valid-padded pooling branch comes out smaller and cannot be merged).
    a = layers.Conv2D(32, 1, activation="relu", strides=2)(image)
    b = layers.Conv2D(32, 1, activation="relu")(image)
    b = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(b)
    c = layers.AveragePooling2D(3, strides=2, padding="same")(image)
    c = layers.Conv2D(32, 3, activation="relu", padding="same")(c)
    d = layers.Conv2D(32, 1, activation="relu")(image)
    d = layers.Conv2D(32, 3, activation="relu", padding="same")(d)
    d = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(d)
    x = layers.concatenate([a, b, c, d], axis=-1)  # 16 x 16 x 128
    # Identity residual block.
    y = layers.Conv2D(128, 3, activation="relu", padding="same")(x)
    y = layers.Conv2D(128, 3, activation="relu", padding="same")(y)
    y = layers.Conv2D(128, 3, activation="relu", padding="same")(y)
    x = layers.add([y, x])
    # Linear residual block: a strided 1x1 convolution matches the pooled shape.
    y = layers.Conv2D(128, 3, activation="relu", padding="same")(x)
    y = layers.Conv2D(128, 3, activation="relu", padding="same")(y)
    y = layers.MaxPooling2D(2, strides=2)(y)
    x = layers.add([y, layers.Conv2D(128, 1, strides=2, padding="same")(x)])
    probs = layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model({"image": image}, {"probs": probs}, name="inception_residual")
    return Blueprint(
        name="inception_residual",
        model=model,
        losses={"probs": "categorical_crossentropy"},
        make_inputs=lambda rng, b, n: {"image": _floats(rng, b, 32, 32, 3)},
        make_targets=lambda rng, b: {"probs": _one_hot(rng, b, 10)},
        default_epochs=3,
        default_samples=512,
        batch_size=64,
    )


BUILDERS: dict[str, Callable[[int], Blueprint]] = {
    "mlp": build_mlp,
    "qa": build_qa,
    "posts": build_posts,
    "similarity": build_similarity,
    "dual_camera": build_dual_camera,
    "clothing_price": build_clothing_price,
    "inception_residual": build_inception_residual,
}
