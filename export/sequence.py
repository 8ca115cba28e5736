"""The shortest sequence a stack of 1-D convolution and pooling layers can take.

The notebook's `posts` model fails on length-100 posts because every valid convolution and
pooling step shortens the sequence. We compute the minimum from the layers' own settings so a
change to the stack changes the contract, rather than hard-coding a number.
"""

from __future__ import annotations

import math
from typing import Iterable

import keras


def _window_output_length(length: int, window: int, stride: int, padding: str, dilation: int = 1) -> int:
    if padding == "same":
        return math.ceil(length / stride)
    if padding == "causal":
        return math.ceil(length / stride)
    span = dilation * (window - 1) + 1
    return (length - span) // stride + 1


def layer_output_length(layer: keras.layers.Layer, length: int) -> int:
    """Length along the time axis after `layer`, following Keras' own shape rules."""
    if isinstance(layer, keras.layers.Conv1D):
        return _window_output_length(
            length, layer.kernel_size[0], layer.strides[0], layer.padding, layer.dilation_rate[0]
        )
    if isinstance(layer, (keras.layers.MaxPooling1D, keras.layers.AveragePooling1D)):
        return _window_output_length(length, layer.pool_size[0], layer.strides[0], layer.padding)
    if isinstance(layer, (keras.layers.GlobalMaxPooling1D, keras.layers.GlobalAveragePooling1D)):
        # A global pool over an empty sequence has nothing to pool: it needs one step.
        return 1 if length >= 1 else 0
    return length  # Embedding, Dense, activations: length unchanged


def minimum_length(stack: Iterable[keras.layers.Layer], limit: int = 1_000_000) -> int:
    """Smallest input length for which every layer of `stack` keeps at least one step."""
    layers = list(stack)

    def fits(length: int) -> bool:
        for layer in layers:
            length = layer_output_length(layer, length)
            if length < 1:
                return False
        return True

    # Output length is monotonic in input length, so a doubling then bisection search works.
    high = 1
    while not fits(high):
        high *= 2
        if high > limit:
            raise ValueError("the layer stack shrinks every sequence to nothing")
    low = high // 2
    while low + 1 < high:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid
    return high
