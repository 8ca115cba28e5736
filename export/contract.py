"""The serving contract of any Keras model, derived from the model itself.

Names come from the model (dict keys; otherwise the input layers' and output layers' names, never
TF Serving's `output_0`), dtypes and shapes from its tensors (-1 for dynamic axes), and the
constraints from its graph (`mimo.export.graph`). A model mimo cannot serve by name (unnamed
inputs, two heads with one name, no batch axis) is refused with a message that says how to fix it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import keras
import numpy as np

from mimo.export import graph
from mimo.protos.dtypes import numpy_to_datatype

# Keras' own names for layers nobody named: "input_layer", "input_layer_3", "keras_tensor_12".
AUTO_INPUT_NAME = re.compile(r"^(input_layer|keras_tensor)(_\d+)?$")
# What a SavedModel signature accepts as a tensor name (and every client can spell).
TENSOR_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-]*$")


class ContractError(ValueError):
    """The model cannot be given a serving contract (the message says why and what to do)."""


@dataclass
class TensorInfo:
    name: str
    datatype: str  # v2 datatype name, e.g. "FP32"
    shape: list[int]  # -1 for a dynamic dimension


@dataclass
class Contract:
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    constraints: dict[str, dict] = field(default_factory=dict)
    analysis: dict[str, list[str]] = field(default_factory=dict)  # per input: what was derived, or why not
    onnx_blockers: list[str] = field(default_factory=list)  # why ONNX cannot hold this model

    @property
    def signatures(self) -> dict[str, list[str]]:
        """serving_default returns every head; a multi-head model also gets one per head."""
        heads = [t.name for t in self.outputs]
        plan = {"serving_default": heads}
        if len(heads) > 1:
            plan.update({head: [head] for head in heads})
        return plan

    @property
    def min_length(self) -> int:
        """Shortest sequence every sequence input accepts (1 when nothing shrinks it)."""
        return max([c.get("min_length", 1) for c in self.constraints.values()] or [1])

    def document(self) -> dict:
        """The contract part of model.json."""
        return {
            "inputs": [vars(t) for t in self.inputs],
            "outputs": [vars(t) for t in self.outputs],
            "constraints": self.constraints,
            "signatures": {
                name: {"inputs": [t.name for t in self.inputs], "outputs": heads}
                for name, heads in self.signatures.items()
            },
        }


def derive_contract(model: keras.Model) -> Contract:
    if not isinstance(model, keras.Model):
        raise ContractError(f"expected a keras.Model, got {type(model).__name__}")
    try:
        input_tensors, output_tensors = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        input_tensors = output_tensors = None
    if not input_tensors or not output_tensors:
        raise ContractError(
            f"model {model.name!r} has no defined inputs: mimo serves functional and Sequential models "
            "built on keras.Input (a subclassed or unbuilt model has no named inputs to serve)"
        )
    named_inputs = input_names(model)
    inputs = [_tensor(name, input_tensors[i], "input") for name, i in named_inputs]
    outputs = [_tensor(name, output_tensors[i], "output") for name, i in output_names(model)]
    contract = Contract(inputs, outputs)
    for tensor, (_, position) in zip(inputs, named_inputs):
        _analyse_input(model, position, tensor, contract)
        if tensor.datatype == "BYTES":
            contract.onnx_blockers.append(
                f"input '{tensor.name}' is a string tensor (BYTES), which tf2onnx cannot convert"
            )
    return contract


def input_names(model: keras.Model) -> list[tuple[str, int]]:
    """(contract name, position in model.inputs) of each input, in the model's own order:
    dict keys as the dict lists them, else the input layers' names."""
    names = _named(model, list(model.inputs), getattr(model, "_inputs_struct", None))
    unnamed = [n for n, _ in names if AUTO_INPUT_NAME.match(n)]
    if unnamed:
        raise ContractError(
            f"model {model.name!r}: input(s) {', '.join(repr(n) for n in unnamed)} have no name of their own "
            "(Keras made it up); clients call inputs by name, so name each one: "
            "keras.Input(shape, name='...')" + _layer_list(model)
        )
    _refuse_bad_names(model, [n for n, _ in names], "input")
    _refuse_duplicates(model, [n for n, _ in names], "input")
    return names


def output_names(model: keras.Model) -> list[tuple[str, int]]:
    """(contract name, position in model.outputs) of each head: dict keys, else the output layers' names."""
    names = _named(model, list(model.outputs), getattr(model, "_outputs_struct", None))
    _refuse_bad_names(model, [n for n, _ in names], "output")
    _refuse_duplicates(model, [n for n, _ in names], "output")
    return names


def _named(model: keras.Model, tensors: list, structure) -> list[tuple[str, int]]:
    # Keras flattens a dict in sorted key order; the contract keeps the order the user wrote.
    position = {id(t): i for i, t in enumerate(tensors)}
    if isinstance(structure, dict):
        return [(key, position[id(t)]) for key, t in structure.items()]
    return [(_layer_name(t), i) for i, t in enumerate(tensors)]


def call_by_name(model: keras.Model, contract: Contract):
    """A function {input name: tensor} -> {head name: tensor} that calls `model` its own way."""
    in_names = [t.name for t in contract.inputs]
    out_names = [t.name for t in contract.outputs]
    positions = output_names(model)
    structure = getattr(model, "_inputs_struct", None)

    def call(tensors: dict):
        if isinstance(structure, dict):
            heads = model(dict(tensors), training=False)
        elif len(in_names) == 1:
            heads = model(tensors[in_names[0]], training=False)
        else:
            heads = model([tensors[n] for n in in_names], training=False)
        if isinstance(heads, dict):
            return {name: heads[name] for name in out_names}
        flat = keras.tree.flatten(heads)
        return {name: flat[i] for name, i in positions}

    return call


def _layer_name(tensor) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else tensor.name


def _refuse_bad_names(model: keras.Model, names: list[str], kind: str) -> None:
    bad = [n for n in names if not TENSOR_NAME.match(n)]
    if bad:
        raise ContractError(
            f"model {model.name!r}: {kind} name(s) {', '.join(repr(n) for n in bad)} cannot name a tensor "
            "(letters, digits, '_', '.' and '-', not starting with '_' or '-'); rename the "
            f"{'dict key' if isinstance(getattr(model, f'_{kind}s_struct', None), dict) else 'layer'}"
        )


def _refuse_duplicates(model: keras.Model, names: list[str], kind: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        positions = {n: [i for i, m in enumerate(names) if m == n] for n in repeated}
        detail = "; ".join(f"'{n}' is {kind}s {positions[n]}" for n in repeated)
        raise ContractError(
            f"model {model.name!r}: two {kind}s share a name ({detail}); clients ask for heads by name, "
            f"so give each {kind} layer its own name (name='...') or return a dict" + _layer_list(model)
        )


def _layer_list(model: keras.Model) -> str:
    """For Sequential models the layer names are the only names there are: list them."""
    if not isinstance(model, keras.Sequential):
        return ""
    layers = getattr(getattr(model, "_functional", None), "layers", None) or model.layers
    return "; its layers: " + ", ".join(f"{l.name} ({type(l).__name__})" for l in layers)


def _datatype(dtype: str) -> str:
    return "BYTES" if dtype == "string" else numpy_to_datatype(np.dtype(dtype))


def _tensor(name: str, tensor, kind: str) -> TensorInfo:
    shape = list(tensor.shape)
    if not shape or shape[0] is not None:
        where = "it is a scalar" if not shape else f"axis 0 is fixed at {shape[0]}"
        raise ContractError(
            f"{kind} '{name}' has no batch axis ({where}); mimo batches on axis 0, so build the model "
            "with keras.Input(shape=...) and no fixed batch_size"
        )
    try:
        datatype = _datatype(str(tensor.dtype))
    except Exception:  # noqa: BLE001 - the dtype table names what it supports
        raise ContractError(f"{kind} '{name}' has dtype {tensor.dtype}, which the v2 protocol cannot carry") from None
    return TensorInfo(name, datatype, [-1 if d is None else int(d) for d in shape])


def _analyse_input(model: keras.Model, position: int, tensor: TensorInfo, contract: Contract) -> None:
    """Minimum length and id range of one input, with a note of what was found or why not."""
    notes, constraint = [], {}
    if len(tensor.shape) >= 2 and tensor.shape[1] == -1:
        try:
            shortest = graph.minimum_length(model, position)
        except graph.Unanalysable as exc:
            notes.append(f"min_length: not analysed ({exc}); no minimum is enforced")
        else:
            if shortest is None:
                notes.append("min_length: none needed (the graph builds at length 1)")
            else:
                constraint["min_length"] = shortest
                notes.append(f"min_length: {shortest} (the graph builds at {shortest}, not at {shortest - 1})")
    if tensor.datatype.startswith(("INT", "UINT")):
        try:
            vocabularies, stopped = graph.embedding_vocabularies(model, position)
        except graph.Unanalysable as exc:
            notes.append(f"id_range: not analysed ({exc}); ids are not checked")
        else:
            if vocabularies:
                high = min(size for _, size in vocabularies)
                constraint["id_range"] = [0, high]
                layers = ", ".join(f"{layer} ({size})" for layer, size in vocabularies)
                notes.append(f"id_range: [0, {high}) from Embedding {layers}")
            else:
                where = f"; they stop at {', '.join(stopped)}" if stopped else ""
                notes.append(f"id_range: none (the ids reach no Embedding through id-preserving layers{where})")
    if constraint:
        contract.constraints[tensor.name] = constraint
    if notes:
        contract.analysis[tensor.name] = notes
