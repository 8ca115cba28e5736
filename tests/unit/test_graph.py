"""Constraints and names come from the model's graph: minimum lengths, id ranges, contract names."""

from __future__ import annotations

import keras
import pytest
from keras import layers

from mimo.export import graph
from mimo.export.contract import ContractError, derive_contract


def stacked(*stack, vocabulary=None, features=8):
    """A one-input model: tokens (or features) through `stack`, then a Dense head."""
    if vocabulary:
        inputs = keras.Input((None,), dtype="int32", name="tokens")
        x = layers.Embedding(vocabulary, features)(inputs)
    else:
        inputs = keras.Input((None, features), name="tokens")
        x = inputs
    for layer in stack:
        x = layer(x)
    return keras.Model(inputs, layers.Dense(1, name="out")(x))


def notebook_posts_stack():
    return [layers.Conv1D(128, 5), layers.MaxPooling1D(5), layers.Conv1D(256, 5), layers.Conv1D(256, 5),
            layers.MaxPooling1D(5), layers.Conv1D(256, 5), layers.Conv1D(256, 5), layers.GlobalMaxPooling1D()]


def test_notebook_posts_stack_needs_269_tokens():
    assert graph.minimum_length(stacked(*notebook_posts_stack(), vocabulary=50), 0) == 269


@pytest.mark.parametrize("stack,expected", [
    ([layers.Conv1D(4, 3), layers.GlobalMaxPooling1D()], 3),
    ([layers.Conv1D(4, 3, padding="same"), layers.GlobalMaxPooling1D()], None),
    ([layers.Conv1D(4, 3, dilation_rate=2), layers.GlobalMaxPooling1D()], 5),
    ([layers.MaxPooling1D(2), layers.Conv1D(4, 3, strides=2), layers.GlobalAveragePooling1D()], 6),
    ([layers.AveragePooling1D(4, strides=1), layers.GlobalMaxPooling1D()], 4),
    ([layers.LSTM(3)], None),
])
def test_other_stacks(stack, expected):
    model = stacked(*stack)
    assert graph.minimum_length(model, 0) == expected


def test_minimum_is_confirmed_by_keras_own_shape_inference():
    """At the minimum every layer builds with a concrete length; one below, one refuses or empties."""
    stack = notebook_posts_stack()[:-1]
    for length, fits in ((268, False), (269, True)):
        x = keras.Input((length, 8))
        try:
            for layer in [type(l).from_config(l.get_config()) for l in stack]:
                x = layer(x)
            built = x.shape[1] >= 1
        except ValueError:
            built = False
        assert built == fits


def test_minimum_length_inside_a_shared_sub_model():
    ids = keras.Input((None,), dtype="int32")
    sub = keras.Model(ids, layers.GlobalMaxPooling1D()(layers.Conv1D(4, 7)(
        layers.MaxPooling1D(3)(layers.Conv1D(4, 5)(layers.Embedding(77, 8)(ids))))))
    a, b = keras.Input((None,), dtype="int32", name="a"), keras.Input((None,), dtype="int32", name="b")
    model = keras.Model({"a": a, "b": b}, {"o": layers.Dense(1)(layers.concatenate([sub(a), sub(b)]))})
    contract = derive_contract(model)
    assert contract.constraints == {"a": {"min_length": 25, "id_range": [0, 77]},
                                    "b": {"min_length": 25, "id_range": [0, 77]}}


def test_id_range_follows_id_preserving_layers_and_takes_the_smallest_vocabulary():
    ids = keras.Input((6,), dtype="int32", name="ids")
    cropped = layers.Cropping1D((1, 1))(layers.Reshape((6, 1))(ids))
    small = layers.Embedding(40, 4)(layers.Reshape((4,))(cropped))
    large = layers.Embedding(90, 4)(ids)
    out = layers.concatenate([layers.Flatten()(small), layers.Flatten()(large)])
    contract = derive_contract(keras.Model(ids, layers.Dense(1, name="y")(out)))
    assert contract.constraints == {"ids": {"id_range": [0, 40]}}


def test_ids_that_do_not_reach_an_embedding_get_no_range_and_a_reason():
    ids = keras.Input((3,), dtype="int32", name="ids")
    scaled = layers.Dense(2)(layers.Rescaling(0.5)(ids))  # ids turned into numbers: no lookup
    contract = derive_contract(keras.Model(ids, layers.Dense(1, name="y")(scaled)))
    assert contract.constraints == {}
    assert "stop at" in contract.analysis["ids"][0] and "Rescaling" in contract.analysis["ids"][0]


def test_names_datatypes_and_shapes():
    text = keras.Input((None,), dtype="int32", name="text")
    image = keras.Input((4, 4, 3), name="image")
    pooled = layers.concatenate([layers.GlobalAveragePooling1D()(layers.Embedding(9, 2)(text)),
                                 layers.Flatten()(image)])
    model = keras.Model([text, image], [layers.Dense(2, name="first")(pooled), layers.Dense(1, name="second")(pooled)])
    contract = derive_contract(model)
    assert [(t.name, t.datatype, t.shape) for t in contract.inputs] == [
        ("text", "INT32", [-1, -1]), ("image", "FP32", [-1, 4, 4, 3])]
    assert [(t.name, t.shape) for t in contract.outputs] == [("first", [-1, 2]), ("second", [-1, 1])]
    assert contract.signatures == {"serving_default": ["first", "second"], "first": ["first"], "second": ["second"]}


def test_refusals_name_the_problem():
    x = keras.Input((3,), name="x")
    head = layers.Dense(1, name="head")(x)
    with pytest.raises(ContractError, match="two outputs share a name .*'head'"):
        derive_contract(keras.Model(x, [head, head]))
    unnamed = keras.Input((3,))
    with pytest.raises(ContractError, match="no name of their own"):
        derive_contract(keras.Model(unnamed, layers.Dense(1, name="y")(unnamed)))
    fixed = keras.Input(batch_shape=(2, 3), name="x")
    with pytest.raises(ContractError, match="input 'x' has no batch axis"):
        derive_contract(keras.Model(fixed, layers.Dense(1, name="y")(fixed)))
    spaced = keras.Input((3,), name="x")
    with pytest.raises(ContractError, match="'my input' cannot name a tensor.*rename the dict key"):
        derive_contract(keras.Model({"my input": spaced}, {"y": layers.Dense(1)(spaced)}))
    with pytest.raises(ContractError, match="expected a keras.Model"):
        derive_contract("not a model")
