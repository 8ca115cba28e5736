"""Writers for the two formats: a SavedModel with named signatures, and its ONNX conversion.

Both start from the same `tf.function`s, so the names in each format are the contract names:
input keys from the TensorSpec names, output keys from the dict the function returns.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from mimo.export.contract import Contract, call_by_name
from mimo.protos.dtypes import datatype_to_numpy

OPSET = 17  # tf2onnx 1.17 accepts 17 or 18 and refuses 19+


def tf_dtype(datatype: str) -> tf.DType:
    return tf.string if datatype == "BYTES" else tf.as_dtype(datatype_to_numpy(datatype))


def input_specs(contract: Contract) -> list[tf.TensorSpec]:
    """Named specs with every -1 left dynamic (batch, and sequence length where it varies)."""
    return [
        tf.TensorSpec([None if d == -1 else d for d in t.shape], tf_dtype(t.datatype), name=t.name)
        for t in contract.inputs
    ]


def signature_function(model, contract: Contract, heads: list[str]) -> tf.types.experimental.GenericFunction:
    """A tf.function from the contract inputs to a dict holding only `heads`."""
    names = [t.name for t in contract.inputs]
    call = call_by_name(model, contract)

    def serve(*tensors):
        named = dict(zip(names, tensors))
        _assert_min_lengths(contract, named)
        outputs = call(named)
        return {name: tf.identity(outputs[name], name=name) for name in heads}

    return tf.function(serve, input_signature=input_specs(contract))


def _assert_min_lengths(contract: Contract, tensors: dict) -> None:
    """Below the minimum length TF on CPU returns wrong numbers without an error; make it raise."""
    for name, constraint in contract.constraints.items():
        if "min_length" in constraint:
            tf.debugging.assert_greater_equal(
                tf.shape(tensors[name])[1], constraint["min_length"],
                message=f"input '{name}' is shorter than the model's minimum length {constraint['min_length']}",
            )


def write_savedmodel(model, contract: Contract, path: Path) -> None:
    """Save the layers' state and the signature functions only: no optimizer slots, no Keras config."""
    functions = {name: signature_function(model, contract, heads) for name, heads in contract.signatures.items()}
    module = tf.Module()
    # Tracking the layers (not the compiled model) keeps RMSprop's slots out and brings along
    # every resource the functions capture: variables, and lookup tables of TextVectorization,
    # StringLookup and a wrapped SavedModel. (Tracking the weights as well would save them twice.)
    module.layers = list(model.layers)
    for name, function in functions.items():
        setattr(module, f"signature_{name}", function)
    tf.saved_model.save(module, str(path), signatures=functions)


def write_onnx(model, contract: Contract, path: Path) -> None:
    """Convert with tf2onnx; raises when the converter cannot (an op it lacks, a string tensor)."""
    import onnx
    import tf2onnx

    function = signature_function(model, contract, [t.name for t in contract.outputs])
    model_proto, _ = tf2onnx.convert.from_function(
        function, input_signature=function.input_signature, opset=OPSET
    )
    # tf2onnx copies an op it cannot convert into the graph as it is and only logs it; such a
    # file is no ONNX model (ONNX Runtime refuses it), so refuse it here, naming the ops.
    unknown = sorted({n.op_type for n in model_proto.graph.node
                      if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)})
    if unknown:
        raise ValueError(f"no ONNX equivalent for TensorFlow op(s) {', '.join(unknown)}")
    # A tensor the function captured but tf2onnx did not freeze becomes an extra graph input
    # (seen with an adapted Normalization layer): the file would need feeds no client has.
    extra = [i.name for i in model_proto.graph.input if i.name not in {t.name for t in contract.inputs}]
    if extra:
        raise ValueError(f"the conversion left captured tensors as graph inputs ({', '.join(extra[:3])})")
    _name_dynamic_axes(model_proto)
    onnx.save(model_proto, str(path))


def _name_dynamic_axes(model_proto) -> None:
    """Give dynamic axes readable names ("batch", "<input>_axisN") instead of tf2onnx's unk__N."""
    for graph_input in model_proto.graph.input:
        for axis, dim in enumerate(graph_input.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_param = "batch" if axis == 0 else f"{graph_input.name}_axis{axis}"
    for graph_output in model_proto.graph.output:
        dims = graph_output.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
