"""What a model file says about itself, and whether a model.json agrees with it.

Shared by the server (a drop-in version folder with no model.json is served from its own
signature; every model.json is checked against the file at load) and the exporter (`mimo export
--from <drop-in folder>`). TensorFlow and ONNX Runtime are imported inside the functions that need
them, so importing this module costs nothing and the client never pulls either in.

A *description* is a model.json-shaped fragment:

    {"inputs": [{"name", "datatype", "shape"}...], "outputs": [...],
     "signatures": {name: {"inputs": [...], "outputs": [...]}}, "max_batch_size": N,
     "formats": ["savedmodel", "onnx"]}          # formats: what the version folder holds

Shapes use -1 for dynamic axes; datatypes are v2 names from the one dtype table (mimo.protos.dtypes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from mimo.protos.dtypes import from_numpy, tf_to_datatype
from mimo.protos.errors import CodecError
from mimo.protos.repository import (
    ONNX_FILE,
    SAVEDMODEL_DIR,
    RepositoryError,
    present_formats,
)

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MAX_BATCH_SIZE = 32  # a drop-in whose every tensor has a dynamic axis 0 batches up to this
# Derived once from the file: model.json may leave these out (what the file cannot tell, it must say).
DERIVED_KEYS = ("inputs", "outputs", "signatures", "max_batch_size")
# ONNX Runtime's element type names that are not numpy's own names.
_ORT_TO_NUMPY = {"float": "float32", "double": "float64", "string": "object"}


# -- describing files -----------------------------------------------------------------------------


def describe_version(version_dir: str | os.PathLike) -> dict[str, Any]:
    """Describe a version folder from its SavedModel if it has one, else from its ONNX file."""
    version_dir = Path(version_dir)
    formats = present_formats(version_dir)
    if "savedmodel" in formats:
        described = describe_savedmodel(version_dir / SAVEDMODEL_DIR)
    elif "onnx" in formats:
        described = describe_onnx(version_dir / ONNX_FILE)
    else:
        raise RepositoryError(f"{version_dir}: holds neither {SAVEDMODEL_DIR}/ nor {ONNX_FILE}")
    return dict(described, formats=formats)


def describe_savedmodel(path: str | os.PathLike) -> dict[str, Any]:
    """Load a SavedModel (TensorFlow) and describe its signatures."""
    import tensorflow as tf

    return describe_signatures(tf.saved_model.load(str(path)).signatures)


def describe_signatures(signatures: Mapping[str, Any]) -> dict[str, Any]:
    """Describe a loaded SavedModel's signature functions (`loaded.signatures`).

    Inputs and outputs are the union over the signatures; a name must mean the same tensor in all.
    """
    if not signatures:
        raise RepositoryError("the SavedModel has no signatures (export it with a serving signature)")
    inputs: dict[str, dict] = {}
    outputs: dict[str, dict] = {}
    described = {}
    # serving_default first: it is the signature clients call when they name none.
    for name in sorted(signatures, key=lambda n: n != DEFAULT_SIGNATURE):
        function = signatures[name]
        args, kwargs = function.structured_input_signature
        if args:
            raise RepositoryError(f"SavedModel signature {name!r} takes positional inputs; signatures name them")
        ins = [_tf_tensor(key, spec) for key, spec in sorted(kwargs.items())]
        outs = [_tf_tensor(key, spec) for key, spec in sorted(function.structured_outputs.items())]
        _union(inputs, ins, f"signature {name!r}")
        _union(outputs, outs, f"signature {name!r}")
        described[name] = {"inputs": [t["name"] for t in ins], "outputs": [t["name"] for t in outs]}
    return _description(list(inputs.values()), list(outputs.values()), described)


def describe_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """Open an ONNX file with ONNX Runtime (CPU) and describe its graph inputs and outputs."""
    import onnxruntime as ort

    return describe_onnx_session(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))


def describe_onnx_session(session) -> dict[str, Any]:
    """Describe a loaded onnxruntime.InferenceSession: one signature, every input and output."""
    inputs = [_ort_tensor(node) for node in session.get_inputs()]
    outputs = [_ort_tensor(node) for node in session.get_outputs()]
    signatures = {DEFAULT_SIGNATURE: {"inputs": [t["name"] for t in inputs], "outputs": [t["name"] for t in outputs]}}
    return _description(inputs, outputs, signatures)


def _description(inputs: list[dict], outputs: list[dict], signatures: dict) -> dict[str, Any]:
    batched = all(t["shape"] and t["shape"][0] == -1 for t in inputs + outputs)
    return {"inputs": inputs, "outputs": outputs, "signatures": signatures,
            "max_batch_size": DEFAULT_MAX_BATCH_SIZE if batched else 0}


def _tf_tensor(name: str, spec) -> dict:
    if spec.shape.rank is None:
        raise RepositoryError(f"SavedModel tensor {name!r} has an unknown rank")
    try:
        datatype = tf_to_datatype(spec.dtype.as_datatype_enum)
    except CodecError:
        raise RepositoryError(f"SavedModel tensor {name!r} has dtype {spec.dtype.name}, which mimo cannot serve") from None
    return {"name": name, "datatype": datatype, "shape": [-1 if d is None else int(d) for d in spec.shape.as_list()]}


def _ort_tensor(node) -> dict:
    element = node.type.removeprefix("tensor(").removesuffix(")")
    try:
        datatype = from_numpy(np.dtype(_ORT_TO_NUMPY.get(element, element))).name
    except (TypeError, CodecError):
        raise RepositoryError(f"ONNX tensor {node.name!r} has type {node.type}, which mimo cannot serve") from None
    # Symbolic ('batch', 'unk__3') and missing dimensions are dynamic.
    return {"name": node.name, "datatype": datatype,
            "shape": [d if isinstance(d, int) and d >= 0 else -1 for d in node.shape]}


def _union(into: dict[str, dict], tensors: Iterable[dict], where: str) -> None:
    for tensor in tensors:
        seen = into.setdefault(tensor["name"], tensor)
        if seen != tensor:
            raise RepositoryError(f"{where}: tensor {tensor['name']!r} is {_show(tensor)} but another "
                                  f"signature has {_show(seen)}")


def _show(tensor: Mapping) -> str:
    return f"{tensor['datatype']} {list(tensor['shape'])}"


# -- model.json against the file ------------------------------------------------------------------


def complete(document: Mapping[str, Any], described: Mapping[str, Any]) -> dict[str, Any]:
    """model.json with what it leaves out filled in from the file's description (model.json wins).

    Signatures taken from the file keep only the tensors model.json lists, so a model.json that
    serves a subset of the outputs stays consistent.
    """
    merged = dict(document)
    for key in ("inputs", "outputs", "max_batch_size"):
        merged.setdefault(key, described[key])
    if "signatures" not in merged:
        names = {t["name"] for t in merged["inputs"]} | {t["name"] for t in merged["outputs"]}
        signatures = {}
        for sig, spec in described["signatures"].items():
            outs = [n for n in spec["outputs"] if n in names]
            if outs:
                signatures[sig] = {"inputs": [n for n in spec["inputs"] if n in names], "outputs": outs}
        merged["signatures"] = signatures
    return merged


def mismatches(document: Mapping[str, Any], described: Mapping[str, Any], label: str,
               signatures: bool = True) -> list[str]:
    """Where model.json says something the model file (`label`, e.g. "model.onnx") contradicts.

    Names, datatypes, ranks and fixed dimensions of every tensor model.json lists; every input the
    file needs; batching only where axis 0 is dynamic; with `signatures` (a SavedModel: the backend
    calls them by name) each signature's name and tensors. An ONNX graph has one signature and
    model.json's per-head ones are only output subsets, so pass signatures=False for it.
    model.json may fix a dimension the file leaves dynamic.
    """
    problems = []
    file_in = {t["name"]: t for t in described["inputs"]}
    file_out = {t["name"]: t for t in described["outputs"]}
    for kind, listed, found in (("input", document.get("inputs"), file_in), ("output", document.get("outputs"), file_out)):
        for tensor in listed or []:
            problems += _tensor_mismatch(kind, tensor, found, label)
    if document.get("inputs") is not None:
        listed = {t["name"] for t in document["inputs"]}
        problems += [f"{label} input '{n}' is missing from model.json" for n in file_in if n not in listed]
    if signatures:
        for sig, spec in (document.get("signatures") or {}).items():
            problems += _signature_mismatch(sig, spec, described["signatures"], label)
    if document.get("max_batch_size", 0) > 0:
        fixed = [t["name"] for t in described["inputs"] + described["outputs"] if not t["shape"] or t["shape"][0] != -1]
        if fixed:
            problems.append(f"model.json max_batch_size {document['max_batch_size']} but {label} has a fixed "
                            f"axis 0 in {', '.join(fixed)} (set max_batch_size 0)")
    return problems


def _tensor_mismatch(kind: str, tensor: Mapping, found: Mapping[str, dict], label: str) -> list[str]:
    name = tensor["name"]
    actual = found.get(name)
    if actual is None:
        return [f"model.json {kind} '{name}' is not an {kind} of {label} ({kind}s: {', '.join(found)})"]
    if tensor["datatype"] != actual["datatype"]:
        return [f"model.json {kind} '{name}' datatype {tensor['datatype']} but {label} has {actual['datatype']}"]
    want, have = list(tensor["shape"]), list(actual["shape"])
    if len(want) != len(have) or any(h != -1 and w != h for w, h in zip(want, have)):
        return [f"model.json {kind} '{name}' shape {want} but {label} has {have}"]
    return []


def _signature_mismatch(sig: str, spec: Mapping, found: Mapping[str, Mapping], label: str) -> list[str]:
    actual = found.get(sig)
    if actual is None:
        return [f"model.json signature '{sig}' is not a signature of {label} (signatures: {', '.join(found)})"]
    problems = []
    if set(spec["inputs"]) != set(actual["inputs"]):
        problems.append(f"model.json signature '{sig}' inputs {sorted(spec['inputs'])} but {label} has "
                        f"{sorted(actual['inputs'])}")
    extra = [n for n in spec["outputs"] if n not in actual["outputs"]]
    if extra:
        problems.append(f"model.json signature '{sig}' outputs {extra} are not outputs of that signature in {label}")
    return problems
