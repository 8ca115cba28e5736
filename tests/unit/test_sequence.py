"""The minimum sequence length is computed from the layers, not hard-coded."""

from __future__ import annotations

import keras
import pytest
from keras import layers

from mimo.export.sequence import layer_output_length, minimum_length


def notebook_posts_stack():
    return [layers.Conv1D(128, 5), layers.MaxPooling1D(5), layers.Conv1D(256, 5), layers.Conv1D(256, 5),
            layers.MaxPooling1D(5), layers.Conv1D(256, 5), layers.Conv1D(256, 5), layers.GlobalMaxPooling1D()]


def test_notebook_posts_stack_needs_269_tokens():
    assert minimum_length(notebook_posts_stack()) == 269


def test_the_minimum_follows_keras_own_shape_inference():
    stack = notebook_posts_stack()
    for length in (268, 269, 300):
        x = keras.Input(shape=(length, 8))
        ok = True
        for layer in stack[:-1]:
            try:
                x = layer(x)
            except ValueError:
                ok = False
                break
            if x.shape[1] is not None and x.shape[1] < 1:
                ok = False
                break
        assert ok == (length >= 269)


@pytest.mark.parametrize("stack,expected", [
    ([layers.Conv1D(4, 3)], 3),
    ([layers.Conv1D(4, 3, padding="same")], 1),
    ([layers.Conv1D(4, 3, dilation_rate=2)], 5),
    ([layers.MaxPooling1D(2), layers.Conv1D(4, 3, strides=2)], 6),
    ([layers.Embedding(10, 4), layers.LSTM(3)], 1),
])
def test_other_stacks(stack, expected):
    assert minimum_length(stack) == expected


def test_layer_output_length_matches_keras():
    conv = layers.Conv1D(2, 5, strides=2)
    assert layer_output_length(conv, 20) == conv.compute_output_shape((None, 20, 3))[1]
