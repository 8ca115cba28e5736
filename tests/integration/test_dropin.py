"""Drop-in versions (a bare SavedModel or ONNX file, no model.json) and load-time truth.

Tiny Keras models are built once per module; each test lays out its own repository from them and
runs the real server in-process, called with tritonclient.grpc and the TF Serving API.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import start_server

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
grpcclient = pytest.importorskip("tritonclient.grpc")

from mimo.protos import model_files  # noqa: E402
from mimo.protos.repository import RepositoryError  # noqa: E402

TOL = 1e-5
WORDS = ["red", "green", "blue"]


def _two_by_two():
    """2 inputs (a [-1, 8], b [-1, 4]) and 2 named heads (score [-1, 3], flag [-1, 1])."""
    a, b = keras.Input((8,), name="a"), keras.Input((4,), name="b")
    hidden = keras.layers.Dense(6, activation="relu")(keras.layers.Concatenate()([a, b]))
    score = keras.layers.Dense(3, activation="softmax", name="score")(hidden)
    flag = keras.layers.Dense(1, activation="sigmoid", name="flag")(hidden)
    return keras.Model({"a": a, "b": b}, {"score": score, "flag": flag})


def _text_model():
    """A string input (text [-1]) through StringLookup: SavedModel-only, no ONNX."""
    text = keras.Input((), dtype="string", name="text")
    one_hot = keras.layers.StringLookup(vocabulary=WORDS, output_mode="one_hot")(text)
    return keras.Model({"text": text}, {"probs": keras.layers.Dense(2, activation="softmax", name="probs")(one_hot)})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The models' files and reference answers: {kind: (source folder, inputs, expected)}."""
    import tf2onnx

    root = tmp_path_factory.mktemp("dropin-sources")
    keras.utils.set_random_seed(0)
    model = _two_by_two()
    rng = np.random.default_rng(0)
    inputs = {"a": rng.random((3, 8), dtype=np.float32), "b": rng.random((3, 4), dtype=np.float32)}
    expected = {k: np.asarray(v) for k, v in model(inputs).items()}
    model.export(str(root / "savedmodel" / "model.savedmodel"), format="tf_saved_model", verbose=False)
    spec = [tf.TensorSpec((None, 8), tf.float32, name="a"), tf.TensorSpec((None, 4), tf.float32, name="b")]
    function = tf.function(lambda a, b: model({"a": a, "b": b}))
    (root / "onnx").mkdir()
    tf2onnx.convert.from_function(function, input_signature=spec, opset=17,
                                  output_path=str(root / "onnx" / "model.onnx"))
    text_model = _text_model()
    words = np.array([b"red", b"blue", b"mauve", b"green"], dtype=object)
    text_expected = {k: np.asarray(v) for k, v in text_model({"text": tf.constant(words)}).items()}
    text_model.export(str(root / "text" / "model.savedmodel"), format="tf_saved_model", verbose=False)
    return {"savedmodel": (root / "savedmodel", inputs, expected), "onnx": (root / "onnx", inputs, expected),
            "text": (root / "text", {"text": words}, text_expected)}


def drop_in(repo: Path, name: str, source: Path, model_json: dict | str | None = None, version: int = 1) -> Path:
    """repo/name/version/ holding a copy of `source`'s files, and model.json when given."""
    shutil.copytree(source, repo / name / str(version))
    if model_json is not None:
        text = model_json if isinstance(model_json, str) else json.dumps(model_json)
        (repo / name / "model.json").write_text(text)
    return repo / name


def triton_infer(client, model: str, inputs: dict, outputs: list[str]) -> dict:
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
    return {n: result.as_numpy(n) for n in outputs}


def index_of(client) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m["name"], m.get("version", "")): (m.get("state", ""), m.get("reason", ""))
            for m in client.get_model_repository_index(as_json=True).get("models", [])}


# -- describing files (protos.model_files, the exporter's entry point too) ------------------------


def test_describe_a_bare_savedmodel_and_onnx_file(built):
    saved = model_files.describe_version(built["savedmodel"][0])
    assert saved["formats"] == ["savedmodel"] and saved["max_batch_size"] == 32
    assert saved["inputs"] == [{"name": "a", "datatype": "FP32", "shape": [-1, 8]},
                               {"name": "b", "datatype": "FP32", "shape": [-1, 4]}]
    assert saved["outputs"] == [{"name": "flag", "datatype": "FP32", "shape": [-1, 1]},
                                {"name": "score", "datatype": "FP32", "shape": [-1, 3]}]
    assert list(saved["signatures"])[0] == "serving_default"
    assert saved["signatures"]["serving_default"] == {"inputs": ["a", "b"], "outputs": ["flag", "score"]}
    onnx = model_files.describe_version(built["onnx"][0])
    assert onnx["formats"] == ["onnx"] and onnx["max_batch_size"] == 32
    assert {t["name"]: (t["datatype"], t["shape"]) for t in onnx["inputs"]} == {"a": ("FP32", [-1, 8]),
                                                                                 "b": ("FP32", [-1, 4])}
    assert onnx["signatures"] == {"serving_default": {"inputs": [t["name"] for t in onnx["inputs"]],
                                                      "outputs": [t["name"] for t in onnx["outputs"]]}}
    text = model_files.describe_version(built["text"][0])
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    with pytest.raises(RepositoryError, match="holds neither"):
        model_files.describe_version(built["text"][0].parent)


# -- serving drop-ins -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dropin_server(built, tmp_path_factory):
    """Drop-ins (bare SavedModel, bare ONNX, string input, a partial model.json) beside broken folders."""
    repo = tmp_path_factory.mktemp("dropin-repo")
    drop_in(repo, "bare_savedmodel", built["savedmodel"][0])
    drop_in(repo, "bare_onnx", built["onnx"][0])
    drop_in(repo, "text", built["text"][0])
    drop_in(repo, "partial", built["savedmodel"][0], {"batching": {"max_queue_delay_ms": 1}, "max_batch_size": 4})
    onnx_out = next(t["name"] for t in model_files.describe_version(built["onnx"][0])["outputs"]
                    if t["shape"] == [-1, 3])
    drop_in(repo, "wrong_output", built["onnx"][0], {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 8]}, {"name": "b", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "wrong", "datatype": "FP32", "shape": [-1, 3]}]})
    drop_in(repo, "wrong_shape", built["savedmodel"][0], {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 32]}, {"name": "b", "datatype": "FP32", "shape": [-1, 4]}]})
    drop_in(repo, "both", built["savedmodel"][0])
    shutil.copy(built["onnx"][0] / "model.onnx", repo / "both" / "1" / "model.onnx")
    drop_in(repo, "savedmodel_only", built["text"][0], {  # as the exporter writes a string-input model
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 2]}],
        "signatures": {"serving_default": {"inputs": ["text"], "outputs": ["probs"]}}, "max_batch_size": 8,
        "versions": {"1": {"formats": ["savedmodel"], "onnx_skipped": "string input 'text'"}}})
    drop_in(repo, "bad_json", built["savedmodel"][0], "{not json")
    (repo / "empty_version" / "1").mkdir(parents=True)
    (repo / "no_versions").mkdir()
    thread = start_server(repo)
    client = grpcclient.InferenceServerClient(thread.address)
    yield thread, client, repo, onnx_out
    client.close()
    thread.stop()


def test_bare_savedmodel_is_served_from_its_signature(built, dropin_server):
    _, client, _, _ = dropin_server
    _, inputs, expected = built["savedmodel"]
    answer = triton_infer(client, "bare_savedmodel", inputs, ["score", "flag"])
    for name in ("score", "flag"):
        np.testing.assert_allclose(answer[name], expected[name], atol=TOL)
    meta = client.get_model_metadata("bare_savedmodel", as_json=True)
    assert meta["platform"] == "tensorflow_savedmodel"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("a", "FP32", ["-1", "8"]), ("b", "FP32", ["-1", "4"])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("flag", "FP32", ["-1", "1"]), ("score", "FP32", ["-1", "3"])]
    config = client.get_model_config("bare_savedmodel", as_json=True)["config"]
    assert config["backend"] == "tensorflow" and config["max_batch_size"] == 32
    assert [(i["name"], i["dims"]) for i in config["input"]] == [("a", ["8"]), ("b", ["4"])]
    signatures = json.loads(config["parameters"]["signatures"]["string_value"])
    assert signatures["serving_default"] == {"inputs": ["a", "b"], "outputs": ["flag", "score"]}


def test_bare_onnx_file_is_served_by_onnxruntime(built, dropin_server):
    _, client, _, onnx_out = dropin_server
    _, inputs, expected = built["onnx"]
    answer = triton_infer(client, "bare_onnx", inputs, [onnx_out])
    np.testing.assert_allclose(answer[onnx_out], expected["score"], atol=TOL)
    meta = client.get_model_metadata("bare_onnx", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert {t["name"]: t["shape"] for t in meta["inputs"]} == {"a": ["-1", "8"], "b": ["-1", "4"]}
    assert client.get_model_config("bare_onnx", as_json=True)["config"]["max_batch_size"] == 32


def test_string_input_savedmodel_answers_bytes_and_dt_string(built, dropin_server):
    from mimo.protos import codec
    from mimo.protos import tf_serving_pb2 as tfs
    from mimo.protos import tf_serving_pb2_grpc as tfs_grpc

    thread, client, _, _ = dropin_server
    _, inputs, expected = built["text"]
    meta = client.get_model_metadata("text", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("text", "BYTES", ["-1"])]
    assert meta["platform"] == "tensorflow_savedmodel"
    answer = triton_infer(client, "text", inputs, ["probs"])
    np.testing.assert_allclose(answer["probs"], expected["probs"], atol=TOL)
    # TF Serving: DT_STRING in, the same numbers out.
    request = tfs.PredictRequest()
    request.model_spec.name = "text"
    request.inputs["text"].CopyFrom(codec.encode_tensor_proto(inputs["text"]))
    with grpc.insecure_channel(thread.address) as channel:
        response = tfs_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    np.testing.assert_allclose(codec.decode_tensor_proto(response.outputs["probs"]), expected["probs"], atol=TOL)
    with pytest.raises(Exception) as error:  # a number where the model takes strings: named, before compute
        triton_infer(client, "text", {"text": np.zeros((2,), np.float32)}, ["probs"])
    assert "input 'text': datatype FP32 where the model takes BYTES" in str(error.value)


def test_partial_model_json_is_merged_with_what_the_file_says(built, dropin_server):
    thread, client, _, _ = dropin_server
    config = client.get_model_config("partial", as_json=True)["config"]
    assert config["max_batch_size"] == 4 and config["backend"] == "tensorflow"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "1000"
    assert [i["name"] for i in config["input"]] == ["a", "b"]
    _, inputs, expected = built["savedmodel"]
    np.testing.assert_allclose(triton_infer(client, "partial", inputs, ["flag"])["flag"], expected["flag"], atol=TOL)


def test_backend_follows_the_formats_a_version_has(built, dropin_server):
    _, client, _, _ = dropin_server
    backend = lambda name: client.get_model_config(name, as_json=True)["config"]["backend"]  # noqa: E731
    assert backend("both") == "onnxruntime"  # both files: the server's --backend default
    assert backend("savedmodel_only") == "tensorflow"  # formats ["savedmodel"], no "backend" key
    _, inputs, expected = built["text"]
    answer = triton_infer(client, "savedmodel_only", inputs, ["probs"])
    np.testing.assert_allclose(answer["probs"], expected["probs"], atol=TOL)
    assert client.get_model_config("savedmodel_only", as_json=True)["config"]["max_batch_size"] == 8


def test_mismatched_and_broken_folders_are_reported_beside_the_good_ones(dropin_server):
    thread, client, repo, onnx_out = dropin_server
    index = index_of(client)
    state, reason = index[("wrong_output", "1")]
    assert state == "UNAVAILABLE"
    assert f"model.json output 'wrong' is not an output of model.onnx (outputs: " in reason and onnx_out in reason
    state, reason = index[("wrong_shape", "1")]
    assert state == "UNAVAILABLE"
    assert "model.json input 'a' shape [-1, 32] but model.savedmodel has [-1, 8]" in reason
    state, reason = index[("bad_json", "")]
    assert state == "UNAVAILABLE" and f"{repo / 'bad_json' / 'model.json'}: not valid JSON" in reason
    state, reason = index[("empty_version", "1")]
    assert state == "UNAVAILABLE" and "holds neither a SavedModel (model.savedmodel/) nor model.onnx" in reason
    assert index[("no_versions", "")] == ("UNAVAILABLE", f"no version folders (1/, 2/, ...) in {repo / 'no_versions'}")
    for name in ("wrong_output", "wrong_shape", "bad_json", "empty_version", "no_versions"):
        assert not client.is_model_ready(name), name
    for name in ("bare_savedmodel", "bare_onnx", "text", "partial", "both", "savedmodel_only"):
        assert client.is_model_ready(name) and index[(name, "1")] == ("READY", ""), name
    assert client.is_server_ready()
    with pytest.raises(Exception) as error:
        triton_infer(client, "wrong_output", {"a": np.ones((1, 8), np.float32), "b": np.ones((1, 4), np.float32)},
                     ["wrong"])
    assert "StatusCode.UNAVAILABLE" in str(error.value) and "is not an output of model.onnx" in str(error.value)


def test_hot_reload_loads_a_fixed_folder_and_reports_one_that_breaks(built, dropin_server):
    thread, client, repo, _ = dropin_server
    (repo / "wrong_shape" / "model.json").write_text(json.dumps({"constraints": {}}))  # now consistent
    shutil.rmtree(repo / "empty_version" / "1")
    shutil.copytree(built["onnx"][0], repo / "empty_version" / "1")
    shutil.copytree(built["text"][0], repo / "late" / "1")  # a new folder
    (repo / "partial" / "model.json").write_text('{"max_batch_size": "four"}')  # breaks
    thread.call(thread.server.registry.refresh())
    index = index_of(client)
    for name in ("wrong_shape", "empty_version", "late"):
        assert client.is_model_ready(name) and index[(name, "1")] == ("READY", ""), name
    state, reason = index[("partial", "")]
    assert state == "UNAVAILABLE" and "max_batch_size: 'four' is not of type 'integer'" in reason
    assert "(serving the versions loaded before)" in reason and client.is_model_ready("partial")
    _, inputs, expected = built["savedmodel"]
    np.testing.assert_allclose(triton_infer(client, "wrong_shape", inputs, ["score"])["score"], expected["score"],
                               atol=TOL)


# -- refusing to start ----------------------------------------------------------------------------


def test_a_repository_with_nothing_servable_refuses_to_start(built, tmp_path):
    drop_in(tmp_path, "bad_json", built["savedmodel"][0], "[1, 2")
    (tmp_path / "empty" / "1").mkdir(parents=True)
    with pytest.raises(RepositoryError) as error:
        start_server(tmp_path)
    message = str(error.value)
    assert message.startswith(f"nothing to serve in {tmp_path}:")
    assert f"model bad_json: {tmp_path / 'bad_json' / 'model.json'}: not valid JSON" in message
    assert "model empty version 1: unavailable: " in message and "holds neither" in message
    with pytest.raises(RepositoryError, match=f"model repository {tmp_path / 'none'} holds no models"):
        (tmp_path / "none").mkdir()
        start_server(tmp_path / "none")


def test_strict_readiness_refuses_one_broken_folder(built, tmp_path):
    drop_in(tmp_path, "good", built["onnx"][0])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text('{"name": "other"}')
    with start_server(tmp_path) as thread:  # without it: the good model serves
        assert grpcclient.InferenceServerClient(thread.address).is_model_ready("good")
    with pytest.raises(RepositoryError) as error:
        start_server(tmp_path, strict_readiness=True)
    assert str(error.value) == (f"--strict-readiness and not every model is ready:\n  model broken: "
                                f"{tmp_path / 'broken' / 'model.json'}: name 'other' does not match its folder 'broken'")
