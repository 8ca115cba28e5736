"""Writers for the two formats: a SavedModel with named signatures, and its ONNX conversion.

Both start from the same `tf.function`s, so the names in each format are the contract names:
input keys from the TensorSpec names, output keys from the dict the function returns.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from mimo.export.builders import Blueprint
from mimo.protos.dtypes import datatype_to_numpy

OPSET = 17  # tf2onnx 1.17 accepts 17 or 18 and refuses 19+


def input_specs(blueprint: Blueprint) -> list[tf.TensorSpec]:
    """Named specs with every -1 left dynamic (batch, and sequence length where it varies)."""
    return [
        tf.TensorSpec([None if d == -1 else d for d in t.shape], tf.as_dtype(datatype_to_numpy(t.datatype)), name=t.name)
        for t in blueprint.inputs
    ]


def signature_function(blueprint: Blueprint, outputs: list[str]) -> tf.types.experimental.GenericFunction:
    """A tf.function from the contract inputs to a dict holding only `outputs`."""
    names = [t.name for t in blueprint.inputs]
    model = blueprint.model

    def serve(*tensors):
        _assert_min_lengths(blueprint, dict(zip(names, tensors)))
        heads = model(dict(zip(names, tensors)), training=False)
        return {name: tf.identity(heads[name], name=name) for name in outputs}

    return tf.function(serve, input_signature=input_specs(blueprint))


def _assert_min_lengths(blueprint: Blueprint, tensors: dict) -> None:
    """Below the minimum length TF on CPU returns wrong numbers without an error; make it raise."""
    for name, constraint in blueprint.constraints.items():
        if "min_length" in constraint:
            tf.debugging.assert_greater_equal(
                tf.shape(tensors[name])[1], constraint["min_length"],
                message=f"input '{name}' is shorter than the model's minimum length {constraint['min_length']}",
            )


def signature_plan(blueprint: Blueprint) -> dict[str, list[str]]:
    """serving_default returns every head; a multi-head model also gets one signature per head."""
    heads = [t.name for t in blueprint.outputs]
    plan = {"serving_default": heads}
    if len(heads) > 1:
        plan.update({head: [head] for head in heads})
    return plan


def write_savedmodel(blueprint: Blueprint, path: Path) -> dict[str, list[str]]:
    """Save the weights and the signature functions only: no optimizer slots, no Keras config."""
    plan = signature_plan(blueprint)
    functions = {name: signature_function(blueprint, outputs) for name, outputs in plan.items()}
    module = tf.Module()
    # Tracking the variables directly keeps the compiled model (and RMSprop's slots) out.
    module.weights = [w.value for w in blueprint.model.weights]
    for name, function in functions.items():
        setattr(module, f"signature_{name}", function)
    tf.saved_model.save(module, str(path), signatures=functions)
    return plan


def write_onnx(blueprint: Blueprint, path: Path) -> None:
    import onnx
    import tf2onnx

    heads = [t.name for t in blueprint.outputs]
    function = signature_function(blueprint, heads)
    model_proto, _ = tf2onnx.convert.from_function(
        function, input_signature=function.input_signature, opset=OPSET
    )
    _name_dynamic_axes(model_proto, blueprint)
    onnx.save(model_proto, str(path))


def _name_dynamic_axes(model_proto, blueprint: Blueprint) -> None:
    """Give dynamic axes readable names ("batch", "<input>_length") instead of tf2onnx's unk__N."""
    for graph_input in model_proto.graph.input:
        for axis, dim in enumerate(graph_input.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_param = "batch" if axis == 0 else f"{graph_input.name}_axis{axis}"
    for graph_output in model_proto.graph.output:
        dims = graph_output.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
