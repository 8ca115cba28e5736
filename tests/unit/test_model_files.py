"""protos.model_files without a model file: completing a partial model.json and checking it against
a description, and protos.repository reading a partial or broken model.json."""

from __future__ import annotations

import json

import pytest

from mimo.protos import model_files
from mimo.protos.repository import ModelSpec, RepositoryError, read_model_document, validate_model_json

DESCRIBED = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
             "outputs": [{"name": "prob", "datatype": "FP32", "shape": [-1, 10]},
                         {"name": "aux", "datatype": "FP32", "shape": [-1, 1]}],
             "signatures": {"serving_default": {"inputs": ["x"], "outputs": ["prob", "aux"]},
                            "aux_only": {"inputs": ["x"], "outputs": ["aux"]}},
             "max_batch_size": 32}


def test_mismatches_name_what_model_json_gets_wrong():
    document = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 32]}],
                "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 10]},
                            {"name": "aux", "datatype": "INT32", "shape": [-1, 1]}]}
    assert model_files.mismatches(document, DESCRIBED, "model.onnx", signatures=False) == [
        "model.json input 'x' shape [-1, 32] but model.onnx has [-1, 64]",
        "model.json output 'score' is not an output of model.onnx (outputs: prob, aux)",
        "model.json output 'aux' datatype INT32 but model.onnx has FP32",
    ]
    narrower = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 64]}], "max_batch_size": 0}
    assert model_files.mismatches(narrower, DESCRIBED, "model.onnx") == []
    assert model_files.mismatches({"inputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}, DESCRIBED,
                                  "model.onnx")[-1] == "model.onnx input 'x' is missing from model.json"
    fixed = dict(DESCRIBED, inputs=[{"name": "x", "datatype": "FP32", "shape": [1, 64]}])
    assert model_files.mismatches({"max_batch_size": 8}, fixed, "model.savedmodel") == [
        "model.json max_batch_size 8 but model.savedmodel has a fixed axis 0 in x (set max_batch_size 0)"]
    signatures = {"head": {"inputs": ["x"], "outputs": ["prob"]}, "aux_only": {"inputs": ["x"], "outputs": ["prob"]}}
    assert model_files.mismatches({"signatures": signatures}, DESCRIBED, "model.savedmodel") == [
        "model.json signature 'head' is not a signature of model.savedmodel (signatures: serving_default, aux_only)",
        "model.json signature 'aux_only' outputs ['prob'] are not outputs of that signature in model.savedmodel",
    ]
    assert model_files.mismatches({"signatures": signatures}, DESCRIBED, "model.onnx", signatures=False) == []


def test_complete_fills_what_model_json_leaves_out_and_keeps_what_it_says():
    merged = model_files.complete({"name": "m", "constraints": {"x": {"min_length": 2}}}, DESCRIBED)
    assert {k: merged[k] for k in ("inputs", "outputs", "signatures", "max_batch_size")} == {
        k: DESCRIBED[k] for k in ("inputs", "outputs", "signatures", "max_batch_size")}
    assert ModelSpec.from_json(merged).constraints["x"].min_length == 2
    # model.json serves one head: the derived signatures keep only it, dropping those left empty.
    one_head = model_files.complete({"name": "m", "outputs": [DESCRIBED["outputs"][0]], "max_batch_size": 0}, DESCRIBED)
    assert one_head["signatures"] == {"serving_default": {"inputs": ["x"], "outputs": ["prob"]}}
    assert one_head["max_batch_size"] == 0


def test_every_model_json_key_is_optional_but_a_contract_is_complete():
    validate_model_json({})
    validate_model_json({"backend": "tensorflow", "versions": {"1": {"formats": ["savedmodel"],
                                                                     "onnx_skipped": "string input"}}})
    with pytest.raises(RepositoryError, match="model.json: no inputs, outputs, signatures, max_batch_size"):
        ModelSpec.from_json({"name": "m"})
    with pytest.raises(RepositoryError, match="constraint or padding for unknown input 'y'"):
        validate_model_json({"inputs": DESCRIBED["inputs"], "constraints": {"y": {"min_length": 1}}})


def test_read_model_document(tmp_path):
    (tmp_path / "m").mkdir()
    assert read_model_document(tmp_path / "m") == {"name": "m"}  # a drop-in: no model.json
    (tmp_path / "m" / "model.json").write_text(json.dumps({"batching": {"max_queue_delay_ms": 2}}))
    assert read_model_document(tmp_path / "m") == {"batching": {"max_queue_delay_ms": 2}, "name": "m"}
    for text, message in (("{nope", "not valid JSON"), ("[1]", "must hold a JSON object, not list"),
                          ('{"name": "n"}', "name 'n' does not match its folder 'm'"),
                          ('{"max_batch_size": -1}', "max_batch_size: -1 is less than the minimum of 0")):
        (tmp_path / "m" / "model.json").write_text(text)
        with pytest.raises(RepositoryError, match=message):
            read_model_document(tmp_path / "m")
