"""A new version takes over only when it has passed the contract check and answered warm-up requests.

The repository holds the session's exported `qa` (version 1). Versions dropped in beside it that
load but cannot serve qa's contract (another model's file; a SavedModel with qa's signature that
fails when it runs) are reported not ready with their reason, and version 1 keeps answering.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from helpers import sample_inputs, start_server

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")


def _failing_qa_savedmodel(path):
    """qa's exact signature (names, dtypes, shapes), but every call fails inside the graph."""
    specs = [tf.TensorSpec([None, None], tf.int32, name="text"), tf.TensorSpec([None, None], tf.int32, name="question")]

    @tf.function(input_signature=specs)
    def serve(text, question):
        tf.debugging.assert_equal(tf.shape(text)[0], -1, message="this version cannot compute")
        return {"answer": tf.zeros([tf.shape(text)[0], 500], tf.float32)}

    tf.saved_model.save(tf.Module(), str(path), signatures={"serving_default": serve})


@pytest.fixture
def qa_repo(exported_repo, tmp_path):
    (tmp_path / "qa").mkdir()
    shutil.copy(exported_repo / "qa" / "model.json", tmp_path / "qa" / "model.json")
    (tmp_path / "qa" / "1").symlink_to(exported_repo / "qa" / "1")
    return tmp_path


def _state(thread, version):
    entry = thread.server.registry.models["qa"]
    mv = entry.versions.get(version)
    return (mv.state, mv.reason) if mv else (None, "")


def test_a_version_that_fails_its_warm_up_never_takes_over(exported_repo, qa_repo):
    thread = start_server(qa_repo, poll_seconds=0)
    try:
        request = sample_inputs(exported_repo, "qa", batch=2)
        from mimo.client import Client

        with Client(thread.address) as client:
            want = client.predict("qa", request)["answer"]
            # Another model's file under qa's name: refused by the contract check.
            (qa_repo / "qa" / "2").mkdir()
            shutil.copy(exported_repo / "mlp" / "1" / "model.onnx", qa_repo / "qa" / "2" / "model.onnx")
            thread.call(thread.server.registry.refresh())
            state, reason = _state(thread, 2)
            assert state == "UNAVAILABLE" and "'text'" in reason, reason
            np.testing.assert_array_equal(client.predict("qa", request)["answer"], want)

            # qa's own signature, but it cannot compute: refused by the warm-up request.
            _failing_qa_savedmodel(qa_repo / "qa" / "3" / "model.savedmodel")
            thread.call(thread.server.registry.refresh())
            state, reason = _state(thread, 3)
            assert state == "UNAVAILABLE" and "warm-up request" in reason and "cannot compute" in reason, reason
            assert _state(thread, 1)[0] == "READY"
            np.testing.assert_array_equal(client.predict("qa", request)["answer"], want)
    finally:
        thread.stop()


def test_answers_that_contradict_the_contract_are_refused(exported_repo):
    """The warm-up checks the answer's dtype and fixed dims against model.json, not only that it runs."""
    from mimo.protos.repository import ModelSpec
    from mimo.serving.core.errors import Unavailable
    from mimo.serving.core.loader import warm_up

    document = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
                "signatures": {"serving_default": {"inputs": ["x"], "outputs": ["y"]}},
                "max_batch_size": 8, "versions": {}}
    spec = ModelSpec.from_json(document)

    class Backend:
        calls = 0

        def __init__(self, answer):
            self.answer = answer

        def predict(self, inputs, outputs, signature="serving_default"):
            Backend.calls += 1
            assert inputs["x"].shape == (1, 4) and inputs["x"].dtype == np.float32
            return {"y": self.answer}

    warm_up(Backend(np.zeros((1, 3), np.float32)), spec)
    assert Backend.calls == 2  # two runs: ONNX Runtime's second run is still not its steady state
    with pytest.raises(Unavailable, match=r"output 'y' has shape \[1, 5\], model.json says \[-1, 3\]"):
        warm_up(Backend(np.zeros((1, 5), np.float32)), spec)
    with pytest.raises(Unavailable, match="output 'y' is float64, model.json says FP32"):
        warm_up(Backend(np.zeros((1, 3), np.float64)), spec)
