"""The exported repository, checked with real TensorFlow, tf2onnx and ONNX Runtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import MODELS, run_onnx, run_savedmodel, sample_inputs
from mimo.protos.repository import check_version_layout, read_model_json, validate_model_json, version_dirs

# The contract from DESIGN.md (names, datatypes; shapes with -1 for dynamic axes).
CONTRACT = {
    "mlp": ({"x": ("FP32", [-1, 64])}, {"probs": ("FP32", [-1, 10])}),
    "qa": ({"text": ("INT32", [-1, -1]), "question": ("INT32", [-1, -1])}, {"answer": ("FP32", [-1, 500])}),
    "posts": ({"posts": ("INT32", [-1, -1])},
              {"age": ("FP32", [-1, 1]), "income": ("FP32", [-1, 10]), "gender": ("FP32", [-1, 1])}),
    "similarity": ({"left": ("FP32", [-1, -1, 128]), "right": ("FP32", [-1, -1, 128])},
                   {"similarity": ("FP32", [-1, 1])}),
    "dual_camera": ({"left": ("FP32", [-1, 71, 71, 3]), "right": ("FP32", [-1, 71, 71, 3])},
                    {"features": ("FP32", [-1, 3, 3, 4096])}),
    "clothing_price": ({"metadata": ("FP32", [-1, 32]), "description": ("INT32", [-1, -1]),
                        "picture": ("FP32", [-1, 64, 64, 3])}, {"price": ("FP32", [-1, 1])}),
    "inception_residual": ({"image": ("FP32", [-1, 32, 32, 3])}, {"probs": ("FP32", [-1, 10])}),
}
ORT_TYPES = {"FP32": "tensor(float)", "INT32": "tensor(int32)"}


def test_model_json_matches_contract_and_schema(exported_repo):
    assert sorted(p.name for p in exported_repo.iterdir() if p.is_dir()) == sorted(MODELS)
    for name, (inputs, outputs) in CONTRACT.items():
        document = json.loads((exported_repo / name / "model.json").read_text())
        validate_model_json(document)
        spec = read_model_json(exported_repo / name)
        assert {t.name: (t.datatype, list(t.shape)) for t in spec.inputs} == inputs
        assert {t.name: (t.datatype, list(t.shape)) for t in spec.outputs} == outputs
        assert list(version_dirs(exported_repo / name)) == [1]
        assert check_version_layout(exported_repo / name / "1") == []
        facts = spec.versions[1]
        assert facts["parameters"] > 0 and facts["opset"] in (17, 18)
        assert set(facts["libraries"]) >= {"tensorflow", "keras", "tf2onnx", "onnxruntime"}
        assert set(facts["parity"]) == set(outputs)
        assert all(0 <= diff < 1e-4 for diff in facts["parity"].values()), facts["parity"]
        expected_signatures = {"serving_default"} | (set(outputs) if len(outputs) > 1 else set())
        assert set(spec.signatures) == expected_signatures


def test_constraints_come_from_the_layers(exported_repo):
    constraints = {name: json.loads((exported_repo / name / "model.json").read_text()).get("constraints", {})
                   for name in MODELS}
    assert constraints["posts"] == {"posts": {"id_range": [0, 50000], "min_length": 269}}
    assert constraints["qa"] == {"text": {"id_range": [0, 10000]}, "question": {"id_range": [0, 10000]}}
    assert constraints["clothing_price"] == {"description": {"id_range": [0, 10000]}}
    assert constraints["mlp"] == {} and constraints["similarity"] == {}


def test_schema_rejects_a_broken_model_json(exported_repo):
    from mimo.protos.repository import RepositoryError

    document = json.loads((exported_repo / "mlp" / "model.json").read_text())
    broken = dict(document, inputs=[{"name": "x", "datatype": "FLOAT", "shape": [-1, 64]}])
    with pytest.raises(RepositoryError, match="datatype"):
        validate_model_json(broken)
    with pytest.raises(RepositoryError, match="unknown tensors"):
        validate_model_json(dict(document, signatures={"serving_default": {"inputs": ["y"], "outputs": ["probs"]}}))


FRESH_PROCESS_SCRIPT = textwrap.dedent("""
    import json, sys, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf, onnxruntime as ort
    repo, names = sys.argv[1], sys.argv[2:]
    report = {}
    for name in names:
        loaded = tf.saved_model.load(f"{repo}/{name}/1/model.savedmodel")
        sigs = {}
        for sig_name, fn in loaded.signatures.items():
            _, kwargs = fn.structured_input_signature
            sigs[sig_name] = {
                "inputs": {k: [v.dtype.name, [-1 if d is None else d for d in v.shape.as_list()]] for k, v in kwargs.items()},
                "outputs": {k: [v.dtype.name, [-1 if d is None else d for d in v.shape.as_list()]]
                            for k, v in fn.structured_outputs.items()},
            }
        session = ort.InferenceSession(f"{repo}/{name}/1/model.onnx", providers=["CPUExecutionProvider"])
        onnx = {
            "inputs": {i.name: [i.type, [d if isinstance(d, int) else -1 for d in i.shape]] for i in session.get_inputs()},
            "outputs": {o.name: [o.type, [d if isinstance(d, int) else -1 for d in o.shape]] for o in session.get_outputs()},
        }
        report[name] = {"signatures": sigs, "onnx": onnx}
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def fresh_process_report(exported_repo):
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS_SCRIPT, str(exported_repo), *MODELS],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", MODELS)
def test_savedmodel_signatures_in_a_fresh_process(fresh_process_report, name):
    inputs, outputs = CONTRACT[name]
    tf_dtype = {"FP32": "float32", "INT32": "int32"}
    sigs = fresh_process_report[name]["signatures"]
    want_inputs = {k: [tf_dtype[d], s] for k, (d, s) in inputs.items()}
    assert sigs["serving_default"]["inputs"] == want_inputs
    assert sigs["serving_default"]["outputs"] == {k: [tf_dtype[d], s] for k, (d, s) in outputs.items()}
    if len(outputs) > 1:  # one signature per head, so a caller can ask for one head alone
        for head, (dtype, shape) in outputs.items():
            assert sigs[head]["inputs"] == want_inputs
            assert sigs[head]["outputs"] == {head: [tf_dtype[dtype], shape]}
    else:
        assert set(sigs) == {"serving_default"}


@pytest.mark.parametrize("name", MODELS)
def test_onnx_names_types_and_dynamic_axes(fresh_process_report, name):
    inputs, outputs = CONTRACT[name]
    onnx = fresh_process_report[name]["onnx"]
    assert onnx["inputs"] == {k: [ORT_TYPES[d], s] for k, (d, s) in inputs.items()}
    assert onnx["outputs"] == {k: [ORT_TYPES[d], s] for k, (d, s) in outputs.items()}


@pytest.mark.parametrize("name", MODELS)
def test_both_formats_agree_on_new_inputs(exported_repo, name):
    for batch, length in ((1, None), (3, 301)):
        inputs = sample_inputs(exported_repo, name, batch, seed=42, length=length)
        want = run_savedmodel(exported_repo, name, inputs)
        got = run_onnx(exported_repo, name, inputs)
        assert set(want) == set(got)
        for head in want:
            assert got[head].shape == want[head].shape
            np.testing.assert_allclose(got[head], want[head], atol=1e-4, rtol=0)


def test_posts_minimum_length_runs_and_one_less_fails_in_both(exported_repo):
    import tensorflow as tf

    shortest = read_model_json(exported_repo / "posts").constraints["posts"].min_length
    ok = sample_inputs(exported_repo, "posts", 2, length=shortest)
    assert set(run_onnx(exported_repo, "posts", ok)) == {"age", "income", "gender"}
    assert set(run_savedmodel(exported_repo, "posts", ok)) == {"age", "income", "gender"}
    short = sample_inputs(exported_repo, "posts", 2, length=shortest - 1)
    with pytest.raises(Exception, match="Conv|INVALID_ARGUMENT"):
        run_onnx(exported_repo, "posts", short)
    with pytest.raises(tf.errors.InvalidArgumentError, match="minimum length"):
        run_savedmodel(exported_repo, "posts", short)


def _savedmodel_variables(path: Path) -> dict[str, list[int]]:
    import tensorflow as tf

    # The exporter tracks the model's layers, so every variable is saved under layers/.
    return {n: s for n, s in tf.train.list_variables(str(path / "variables" / "variables"))
            if n.startswith("layers/")}


def _onnx_initializer_elements(path: Path) -> int:
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


@pytest.mark.parametrize("name", ["similarity", "dual_camera"])
def test_shared_base_is_stored_once(exported_repo, name):
    version = exported_repo / name / "1"
    parameters = read_model_json(exported_repo / name).versions[1]["parameters"]
    saved = _savedmodel_variables(version / "model.savedmodel")
    assert sum(int(np.prod(s)) for s in saved.values()) == parameters
    # A second copy of the shared weights would double these; folding BatchNorm makes ONNX a bit smaller.
    assert 0.95 * parameters <= _onnx_initializer_elements(version / "model.onnx") <= 1.02 * parameters
    if name == "similarity":
        lstm_kernels = [n for n, s in saved.items() if s == [128, 128]]
        assert len(lstm_kernels) == 1


def test_dual_camera_same_picture_gives_identical_branch_features(exported_repo):
    picture = np.random.default_rng(3).random((2, 71, 71, 3), dtype=np.float32)
    for run in (run_onnx, run_savedmodel):
        features = run(exported_repo, "dual_camera", {"left": picture, "right": picture})["features"]
        half = features.shape[-1] // 2
        np.testing.assert_array_equal(features[..., :half], features[..., half:])
        other = run(exported_repo, "dual_camera", {"left": picture, "right": picture[::-1].copy()})["features"]
        assert not np.allclose(other[..., :half], other[..., half:])


@pytest.mark.parametrize("name", MODELS)
def test_savedmodel_holds_weights_not_optimizer_state(exported_repo, name):
    sizes = read_model_json(exported_repo / name).versions[1]["sizes_bytes"]
    onnx_bytes = 4 * _onnx_initializer_elements(exported_repo / name / "1" / "model.onnx")
    assert sizes["savedmodel_variables"] <= 1.05 * onnx_bytes + 64 * 1024, sizes
    variables = _savedmodel_variables(exported_repo / name / "1" / "model.savedmodel")
    assert variables and all("OPTIMIZER" not in n and "optimizer" not in n for n in variables)


def test_existing_version_is_not_overwritten_without_force(exported_repo, tmp_path):
    from mimo.export.notebook import ExportOptions, export_notebook_model as export_model
    from mimo.export.pipeline import ExportError

    options = ExportOptions(out=tmp_path, epochs=1, samples=16, verbose=0)
    export_model("mlp", options)
    before = (tmp_path / "mlp" / "1" / "model.onnx").read_bytes()
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_model("mlp", ExportOptions(out=tmp_path, version=1, epochs=1, samples=16, verbose=0))
    assert (tmp_path / "mlp" / "1" / "model.onnx").read_bytes() == before
    export_model("mlp", ExportOptions(out=tmp_path, version=1, epochs=1, samples=16, verbose=0, seed=5, force=True))
    assert (tmp_path / "mlp" / "1" / "model.onnx").read_bytes() != before
    export_model("mlp", options)  # no --version: one above the newest
    assert list(version_dirs(tmp_path / "mlp")) == [1, 2]
    assert set(read_model_json(tmp_path / "mlp").versions) == {1, 2}


def test_failed_parity_leaves_nothing_behind(tmp_path, monkeypatch):
    from mimo.export import parity
    from mimo.export.notebook import ExportOptions, export_notebook_model as export_model

    monkeypatch.setattr(parity, "_close", lambda want, got: False)  # every head now disagrees
    with pytest.raises(parity.ParityError, match="SavedModel disagrees with the Keras model: probs"):
        export_model("mlp", ExportOptions(out=tmp_path, epochs=1, samples=16, verbose=0))
    assert not (tmp_path / "mlp").exists()


def test_killed_export_leaves_no_partial_version(tmp_path):
    command = [sys.executable, "-m", "mimo", "export", "--models", "qa", "--out", str(tmp_path),
               "--epochs", "1", "--samples", "32", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    model_dir = tmp_path / "qa"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and not list(tmp_path.glob(".staging-qa-*/1/model.savedmodel")):
            assert process.poll() is None, "export ended before it could be killed"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    # Nothing the server would see: the first version is built in a hidden folder of the repository.
    assert not model_dir.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    # The next export clears the dead one's staging folder and publishes version 1.
    from mimo.export.notebook import ExportOptions, export_notebook_model as export_model

    export_model("qa", ExportOptions(out=tmp_path, epochs=1, samples=16, verbose=0))
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".")] == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert list(version_dirs(model_dir)) == [1]


def test_cli_refuses_unknown_model_and_small_image():
    result = subprocess.run([sys.executable, "-m", "mimo", "export", "--models", "nope"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr
    result = subprocess.run([sys.executable, "-m", "mimo", "export", "--image-size", "32"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "at least 71" in result.stderr
