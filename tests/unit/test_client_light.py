"""mimo.client stays light (no TensorFlow, no ONNX Runtime) and its core works without a server."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest

from mimo.client import InferenceError
from mimo.client.cli import describe, summarize
from mimo.client.core import ClientCore
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import model_config_pb2 as mc


def test_import_loads_neither_tensorflow_nor_onnxruntime():
    code = ("import sys, mimo.client, mimo.client.cli; "
            "assert 'tensorflow' not in sys.modules and 'onnxruntime' not in sys.modules; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'onnxruntime', 'keras', "
            "'tf2onnx', 'onnx', 'mimo.serving', 'mimo.export') or m.startswith(('mimo.serving', 'mimo.export'))); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def _core_with_posts() -> ClientCore:
    core = ClientCore("test:1")
    t = pb.ModelMetadataResponse.TensorMetadata
    meta = pb.ModelMetadataResponse(
        name="posts", versions=["1"], platform="onnxruntime_onnx",
        inputs=[t(name="posts", datatype="INT32", shape=[-1, -1])],
        outputs=[t(name=n, datatype="FP32", shape=[-1, s]) for n, s in (("age", 1), ("income", 10))])
    config = pb.ModelConfigResponse(config=mc.ModelConfig(name="posts", max_batch_size=4))
    config.config.parameters["constraints"].string_value = '{"posts": {"min_length": 5, "id_range": [0, 100]}}'
    config.config.parameters["signatures"].string_value = (
        '{"serving_default": {"inputs": ["posts"], "outputs": ["age", "income"]},'
        ' "age": {"inputs": ["posts"], "outputs": ["age"]}}')
    core.store_metadata(meta, config)
    return core


def test_request_carries_arrays_outputs_version_and_signature():
    core = _core_with_posts()
    tokens = np.arange(1, 11, dtype=np.int32).reshape(2, 5)
    request = core.infer_request("posts", None, {"posts": tokens}, ["age"], 3, "age")
    assert request.model_name == "posts" and request.model_version == "3"
    assert [o.name for o in request.outputs] == ["age"]
    assert request.parameters["signature_name"].string_param == "age"
    assert request.raw_input_contents and not request.inputs[0].HasField("contents")  # raw bytes
    np.testing.assert_array_equal(codec.decode_infer_request(request)["posts"], tokens)
    # Lists use the declared dtype once it is known.
    listed = core.infer_request("posts", {"posts": tokens.tolist()}, {}, None, None, None)
    assert listed.inputs[0].datatype == "INT32"


@pytest.mark.parametrize("bad, words", [
    (np.ones((1, 4), np.int32), "sequence length 4 is shorter than the model's minimum 5"),
    (np.full((1, 5), 100, np.int32), "token id 100 at [0, 0] is outside the vocabulary [0, 100)"),
    (np.full((1, 5), -3, np.int32), "token id -3 at [0, 0]"),
    (np.ones((5, 5), np.int32), "batch of 5 is over the model's max_batch_size 4"),
    (np.ones((1, 5), np.float32), "datatype FP32 where the model takes INT32"),  # floats are not ids
])
def test_local_checks(bad, words):
    with pytest.raises(InferenceError) as info:
        _core_with_posts().infer_request("posts", {"posts": bad}, {}, None, None, None)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and words in info.value.message
    assert info.value.message.startswith("model 'posts': input 'posts'")


def test_a_missing_head_is_an_error_not_none():
    core = _core_with_posts()
    answer = codec.encode_infer_response("posts", {"age": np.ones((1, 1), np.float32)})
    assert list(core.infer_result("posts", answer, ["age"], None)) == ["age"]
    assert list(core.infer_result("posts", answer, None, "age")) == ["age"]
    for outputs, signature in ((["age", "income"], None), (None, None)):
        with pytest.raises(InferenceError, match="lacks output.*'income'") as info:
            core.infer_result("posts", answer, outputs, signature)
        assert info.value.model == "posts"


def test_stream_plan_puts_answers_back_in_order_and_bounds_in_flight():
    core = ClientCore("test:1")
    items = [{"x": np.full((1, 2), i, np.float32)} for i in range(7)]
    plan = core.stream("m", items, 3, None, None, None, False)
    sent = plan.to_send()
    assert [r.id for r in sent] == ["0", "1", "2"] and plan.to_send() == []  # 3 in flight at most

    def answer(request_id, value):
        response = pb.ModelStreamInferResponse()
        codec.encode_infer_response("m", {"y": np.full((1,), value, np.float32)}, request_id=request_id,
                                    response=response.infer_response)
        return response

    plan.receive(answer("2", 2))
    plan.receive(answer("1", 1))
    assert plan.ready() == []  # item 0 is not answered yet
    plan.receive(answer("0", 0))
    assert [r["y"][0] for r in plan.ready()] == [0, 1, 2]
    assert [r.id for r in plan.to_send()] == ["3", "4", "5"]
    failed = pb.ModelStreamInferResponse(error_message="boom")
    failed.infer_response.id = "3"
    plan.receive(failed)
    [error] = plan.ready()
    assert isinstance(error, InferenceError) and error.message == "boom" and error.model == "m"
    assert not plan.finished


def test_summaries():
    assert summarize(np.array([[0.1, 0.7, 0.2]], np.float32))["kind"] == "classes"
    assert describe(summarize(np.array([[0.1, 0.7, 0.2]], np.float32))).startswith("top-3: class 1 (0.700)")
    assert summarize(np.array([[3.5]], np.float32)) == {"kind": "value", "values": [3.5]}
    stats = summarize(np.arange(12, dtype=np.float32).reshape(1, 3, 4))
    assert stats["kind"] == "stats" and stats["min"] == 0 and stats["max"] == 11
