"""What a functional Keras graph tells about its inputs: minimum sequence lengths and id ranges.

Both analyses walk the model's own graph (nested functional models included, so a sub-model
used twice is followed into), rather than pattern-matching known layer stacks:

- the minimum length of a variable-length input is found by building the graph symbolically
  (each layer's `compute_output_spec`) at a given length and asking whether every intermediate
  tensor keeps at least one step; the answer is then confirmed at the minimum and one below.
- the id range of an integer input is the vocabulary of every `Embedding` it reaches through
  layers that pass ids on unchanged (reshapes, slices, casts, concatenation, dropout, ...).
"""

from __future__ import annotations

from typing import Any, Callable

import keras

# Layers and ops that move integer ids around without changing their values.
ID_PRESERVING = {
    "InputLayer", "Reshape", "Flatten", "Permute", "RepeatVector", "Masking", "Identity",
    "Dropout", "SpatialDropout1D", "Cropping1D", "Cropping2D", "Cropping3D", "ZeroPadding1D",
    "ZeroPadding2D", "ZeroPadding3D", "Concatenate", "Cast", "GetItem", "Squeeze", "ExpandDims",
    "Transpose", "Slice", "Flip", "Roll", "TakeAlongAxis", "Take",
}
LONGEST_SEARCHED = 1 << 20  # a sequence this long that still fails is not a length problem


class Unanalysable(Exception):
    """The graph cannot be analysed (a custom or opaque layer in the way)."""


def _functional(model: keras.Model) -> keras.Model | None:
    """The functional graph behind a model: itself, or a built Sequential's inner graph."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model if hasattr(model, "_nodes_by_depth") else None


def walk(model: keras.Model, values: list, step: Callable[[Any, list, dict, list], list]) -> list:
    """Run `step(operation, args, kwargs, outputs)` over the graph from `values` (one per input).

    `step` returns one value per reference output tensor of the node. Nested functional models
    are walked into with the same `step`, so the analyses see every layer. Returns the values
    of the model's outputs.
    """
    graph = _functional(model)
    if graph is None:
        raise Unanalysable(f"{type(model).__name__} {model.name!r} has no functional graph")
    known = {id(t): v for t, v in zip(graph.inputs, values)}
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            if any(id(t) not in known for t in node.input_tensors):
                continue
            args, kwargs = node.arguments.fill_in(known)
            if _functional(node.operation) is not None:
                inner = [known[id(t)] for t in node.input_tensors]
                results = walk(node.operation, inner, step)
            else:
                results = step(node.operation, list(args), kwargs, list(node.outputs))
            for tensor, value in zip(node.outputs, results):
                known[id(tensor)] = value
    return [known.get(id(t)) for t in graph.outputs]


# -- minimum length --------------------------------------------------------------------------


def _builds_at(model: keras.Model, lengths: dict[int, int], long: int) -> bool:
    """Does every tensor of the graph keep at least one step when the inputs have `lengths`?

    `lengths` maps input positions to a length; the other inputs get `long` on their dynamic
    axes, so only the one input varies.
    """
    values = []
    for position, tensor in enumerate(_functional(model).inputs):
        length = lengths.get(position, long)
        shape = [1] + [length if d is None else d for d in tensor.shape[1:]]
        values.append(keras.KerasTensor(shape, dtype=tensor.dtype))

    def step(operation, args, kwargs, outputs):
        _refuse_opaque(operation)
        try:
            specs = keras.tree.flatten(operation.compute_output_spec(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - a layer refusing the shape is the answer
            raise _TooShort() from exc
        for spec in specs:
            if isinstance(spec, keras.KerasTensor) and any(d is not None and d < 1 for d in spec.shape):
                raise _TooShort()
        return specs

    try:
        walk(model, values, step)
    except _TooShort:
        return False
    return True


class _TooShort(Exception):
    pass


def minimum_length(model: keras.Model, position: int) -> int | None:
    """Shortest length along axis 1 that input number `position` can have, or None when any length builds.

    Raises Unanalysable when even a very long sequence fails to build (the cause is not the
    length), or when the minimum found does not hold up when built at min and min - 1.
    """
    long = LONGEST_SEARCHED
    if not _builds_at(model, {position: long}, long):
        raise Unanalysable(f"the graph does not build for input {position} at any length tried")
    if _builds_at(model, {position: 1}, long):
        return None
    low, high = 1, 2  # low fails; find a high that builds, then bisect (lengths are monotonic)
    while not _builds_at(model, {position: high}, long):
        low, high = high, high * 2
    while low + 1 < high:
        middle = (low + high) // 2
        if _builds_at(model, {position: middle}, long):
            high = middle
        else:
            low = middle
    # The confirmation the contract relies on: builds at the minimum, not one below.
    if not (_builds_at(model, {position: high}, long) and not _builds_at(model, {position: high - 1}, long)):
        raise Unanalysable(f"input {position}: no single minimum length (not monotonic)")
    return high


# -- id ranges -------------------------------------------------------------------------------


def embedding_vocabularies(model: keras.Model, position: int) -> tuple[list[tuple[str, int]], list[str]]:
    """Where input `position`'s ids go: (every Embedding they reach unchanged, as (layer name,
    input_dim); the other layers they stop at, as "name (Class)")."""
    graph = _functional(model)
    if graph is None:
        raise Unanalysable(f"{type(model).__name__} {model.name!r} has no functional graph")
    reached: list[tuple[str, int]] = []
    stopped: list[str] = []
    marks = [index == position for index in range(len(graph.inputs))]

    def step(operation, args, kwargs, outputs):
        carries = any(value is True for value in keras.tree.flatten((args, kwargs)))
        if carries:
            _refuse_opaque(operation)
            if isinstance(operation, keras.layers.Embedding):
                reached.append((operation.name, int(operation.input_dim)))
            elif type(operation).__name__ not in ID_PRESERVING:
                stopped.append(f"{operation.name} ({type(operation).__name__})")
        passes = carries and type(operation).__name__ in ID_PRESERVING
        return [passes] * len(outputs)

    walk(model, marks, step)
    return reached, stopped


def _refuse_opaque(operation) -> None:
    """A wrapped SavedModel hides its layers: nothing can be said about what lies inside."""
    if isinstance(operation, keras.layers.TFSMLayer):
        raise Unanalysable(f"it reaches {operation.name!r}, a wrapped SavedModel whose layers cannot be seen")
