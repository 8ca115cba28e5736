"""A user's own models, none of them the notebook's, through the CLI and the Python call, served.

Each model of `user_models` is exported twice: with `mimo.export.export_model` on the live model
(as after `model.fit()` in a notebook) and with `mimo export --from file.keras` (the CLI's own
`main`, in-process; one test runs it as a subprocess). One server serves both repositories' worth,
and tritonclient checks every head against Keras' own answer, and the derived constraints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

keras = pytest.importorskip("keras")
grpcclient = pytest.importorskip("tritonclient.grpc")

import user_models  # noqa: E402
from helpers import start_server  # noqa: E402
from mimo.export import ExportError, export_model  # noqa: E402
from mimo.export import cli as export_cli  # noqa: E402
from mimo.protos.repository import read_model_json  # noqa: E402

NAMES = list(user_models.BUILDERS)
SOURCES = ["python", "cli"]
TOL = 1e-5
CUSTOM_LAYERS = Path(user_models.__file__).with_name("custom.py")


def served_name(name: str, source: str) -> str:
    return name if source == "python" else f"{name}_cli"


@pytest.fixture(scope="session")
def user_repo(tmp_path_factory):
    """{model: keras answers} and the repository holding every model, exported both ways."""
    repo = tmp_path_factory.mktemp("user-repo")
    files = tmp_path_factory.mktemp("user-files")
    keras.utils.set_random_seed(7)
    answers, facts = {}, {}
    for name, build in user_models.BUILDERS.items():
        model = build()
        request = user_models.request(name)
        answers[name] = {k: np.asarray(v) for k, v in _heads(model, request).items()}
        facts[name] = export_model(model, name, repo, log=None)
        model.save(files / f"{name}.keras")
        assert export_cli.main(["--from", str(files / f"{name}.keras"), "--name", f"{name}_cli",
                                "--out", str(repo), "--quiet"]) == 0
    return repo, files, answers, facts


def _heads(model, request):
    """Keras' own answer, named as the contract names the heads."""
    from mimo.export.contract import call_by_name, derive_contract

    return call_by_name(model, derive_contract(model))(request)


@pytest.fixture(scope="session")
def user_server(user_repo):
    thread = start_server(user_repo[0])
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def triton(user_server):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{user_server.port}")
    yield client
    client.close()


def infer(client, model: str, arrays: dict, outputs: list[str] | None = None) -> dict:
    from mimo.protos.dtypes import numpy_to_datatype

    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), numpy_to_datatype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    requested = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    result = client.infer(model, inputs, outputs=requested)
    heads = [o["name"] for o in result.get_response(as_json=True)["outputs"]]
    return {head: result.as_numpy(head) for head in heads}


# -- what was derived -----------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", NAMES)
def test_contract_is_derived_from_the_model(user_repo, name, source):
    spec = read_model_json(user_repo[0] / served_name(name, source))
    inputs, outputs, constraints, formats = user_models.EXPECTED[name]
    assert {t.name: (t.datatype, list(t.shape)) for t in spec.inputs} == inputs
    assert {t.name: (t.datatype, list(t.shape)) for t in spec.outputs} == outputs
    assert spec.raw.get("constraints", {}) == constraints
    facts = spec.versions[1]
    assert facts["formats"] == formats
    assert set(spec.signatures) == {"serving_default"} | (set(outputs) if len(outputs) > 1 else set())
    assert spec.signatures["serving_default"]["outputs"] == list(outputs)
    assert all(diff <= 1e-5 for diff in facts["parity"].values()), facts["parity"]
    for tensor, constraint in constraints.items():  # each constraint says where it came from
        notes = " ".join(facts["analysis"][tensor])
        assert all(f"{key}: " in notes for key in constraint), notes


def test_savedmodel_only_models_say_why(user_repo):
    facts = user_repo[3]
    assert "'review' is a string tensor (BYTES)" in facts["string_input"]["onnx_skipped"]
    assert "Lgamma" in facts["unconvertible"]["onnx_skipped"]
    assert not (user_repo[0] / "unconvertible" / "1" / "model.onnx").exists()
    assert all("onnx_skipped" not in f for n, f in facts.items() if n not in ("string_input", "unconvertible"))


# -- served ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", NAMES)
def test_served_answers_equal_keras(triton, user_repo, name, source):
    got = infer(triton, served_name(name, source), user_models.request(name))
    want = user_repo[2][name]
    assert set(got) == set(want)
    for head, value in want.items():
        np.testing.assert_allclose(got[head], value, rtol=0, atol=TOL, err_msg=f"{name}/{head}")


@pytest.mark.parametrize("name,backend", [("string_input", "tensorflow"), ("unconvertible", "tensorflow"),
                                          ("dict_io", "onnxruntime")])
def test_savedmodel_only_models_are_served_by_tensorflow(triton, name, backend):
    assert triton.get_model_metadata(name).platform.startswith(backend)


def test_one_head_of_a_list_output_model(triton):
    request = user_models.request("list_heads")
    got = infer(triton, "list_heads", request, outputs=["spread"])
    assert list(got) == ["spread"]


def _refused(client, model, arrays, *words):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        infer(client, model, arrays)
    assert "INVALID_ARGUMENT" in str(caught.value.status()), caught.value
    for word in words:
        assert word in caught.value.message(), caught.value.message()


@pytest.mark.parametrize("model", ["text_conv", "text_conv_cli"])
def test_derived_minimum_length_is_enforced(triton, model):
    _refused(triton, model, {"tokens": np.ones((2, 11), np.int32)}, "'tokens'", "12")
    assert infer(triton, model, {"tokens": np.ones((2, 12), np.int32)})["sentiment"].shape == (2, 1)


def test_minimum_length_through_a_shared_sub_model(triton):
    ok = np.ones((1, 4), np.int32)
    _refused(triton, "shared_encoder", {"query": ok, "document": np.ones((1, 3), np.int32)}, "'document'", "4")
    assert infer(triton, "shared_encoder", {"query": ok, "document": ok})["relevance"].shape == (1, 1)


@pytest.mark.parametrize("model,tensor,vocabulary", [("text_conv", "tokens", 500), ("dict_io", "category", 12),
                                                     ("shared_encoder", "query", 300)])
def test_derived_id_range_is_enforced(triton, model, tensor, vocabulary):
    request = user_models.request(model.removesuffix("_cli"), batch=2)
    request[tensor] = np.full_like(request[tensor], vocabulary - 1)
    infer(triton, model, request)
    request[tensor] = np.full_like(request[tensor], vocabulary)
    _refused(triton, model, request, f"'{tensor}'", str(vocabulary))


# -- the CLI --------------------------------------------------------------------------------


def test_cli_as_a_subprocess_imports_custom_layers(user_repo, tmp_path):
    """--import registers the user's layers in a fresh process; without it, one line says so."""
    source = user_repo[1] / "custom_layer.keras"
    command = [sys.executable, "-m", "mimo", "export", "--from", str(source), "--name", "mine", "--out", str(tmp_path)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1, refused.stderr
    assert "--import" in refused.stderr and not (tmp_path / "mine").exists()
    done = subprocess.run(command + ["--import", str(CUSTOM_LAYERS)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mine:" in done.stdout and "max|diff| against Keras y" in done.stdout
    assert read_model_json(tmp_path / "mine").versions[1]["formats"] == ["savedmodel", "onnx"]


def test_cli_from_a_savedmodel_folder(user_repo, tmp_path):
    model = keras.saving.load_model(user_repo[1] / "dict_io.keras")
    exported = tmp_path / "dropped" / "1" / "model.savedmodel"
    model.export(str(exported), format="tf_saved_model", verbose=False)
    for source in (exported, exported.parent):  # the SavedModel itself, or its version folder
        repo = tmp_path / f"repo-{source.name}"
        assert export_cli.main(["--from", str(source), "--name", "dict_io", "--out", str(repo), "--quiet"]) == 0
        spec = read_model_json(repo / "dict_io")
        assert {t.name for t in spec.inputs} == {"features", "category"}
        assert {t.name for t in spec.outputs} == {"score", "label"}
        assert spec.versions[1]["formats"] == ["savedmodel", "onnx"]
        # The ids pass through an opaque SavedModel: no range is claimed, and model.json says why.
        assert "category" not in spec.raw.get("constraints", {})
        assert "not analysed" in " ".join(spec.versions[1]["analysis"]["category"])


def test_cli_from_a_legacy_h5_file(tmp_path):
    model = user_models.dict_io()
    model.save(tmp_path / "legacy.h5")
    assert export_cli.main(["--from", str(tmp_path / "legacy.h5"), "--name", "legacy", "--out", str(tmp_path / "repo"),
                            "--quiet"]) == 0
    spec = read_model_json(tmp_path / "repo" / "legacy")
    assert spec.raw["constraints"] == {"category": {"id_range": [0, 12]}}
    assert spec.versions[1]["formats"] == ["savedmodel", "onnx"]


def _bad_models(folder: Path) -> dict[str, Path]:
    x = keras.Input((3,), name="x")
    head = keras.layers.Dense(1, name="head")(x)
    keras.Model(x, [head, head]).save(folder / "same_heads.keras")
    fixed = keras.Input(batch_shape=(4, 3), name="x")
    keras.Model(fixed, keras.layers.Dense(1, name="y")(fixed)).save(folder / "fixed_batch.keras")
    keras.Model(x, keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)).save(folder / "with_lambda.keras")
    (folder / "notes.keras").write_text("not a model")
    (folder / "notes.txt").write_text("not a model")
    return {p.stem: p for p in folder.iterdir()}


@pytest.mark.parametrize("case,arguments,message", [
    ("missing", ["--from", "{files}/nothing.keras", "--name", "m"], "no such file or folder"),
    ("not a model", ["--from", "{files}/notes.keras", "--name", "m"], "not a Keras model file"),
    ("not a model file", ["--from", "{files}/notes.txt", "--name", "m"], "not a model file"),
    ("no batch axis", ["--from", "{files}/fixed_batch.keras", "--name", "m"], "has no batch axis"),
    ("slash in name", ["--from", "{user}/sequential.keras", "--name", "a/b"], "is not a folder name"),
    ("dots in name", ["--from", "{user}/sequential.keras", "--name", ".."], "is not a folder name"),
    ("two heads, one name", ["--from", "{files}/same_heads.keras", "--name", "m"], "share a name"),
    ("a Lambda layer", ["--from", "{files}/with_lambda.keras", "--name", "m"], "pass --unsafe-lambda if you trust"),
    ("version exists", ["--from", "{user}/sequential.keras", "--name", "taken", "--version", "1"],
     "already exists; pass --force"),
])
def test_cli_refuses_bad_input_in_one_line(user_repo, tmp_path, capsys, case, arguments, message):
    files = tmp_path / "files"
    files.mkdir()
    _bad_models(files)
    repo = tmp_path / "repo"
    if case == "version exists":
        assert export_cli.main(["--from", str(user_repo[1] / "sequential.keras"), "--name", "taken",
                                "--out", str(repo), "--quiet"]) == 0
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) if repo.exists() else []
    capsys.readouterr()
    argv = [a.format(files=files, user=user_repo[1]) for a in arguments] + ["--out", str(repo), "--quiet"]
    assert export_cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mimo export: ") and message in err, err
    after = sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) if repo.exists() else []
    assert after == before  # nothing left in the repository


def test_lambda_layers_load_when_the_user_trusts_the_file(tmp_path):
    x = keras.Input((3,), name="x")
    keras.Model(x, keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)).save(tmp_path / "lambda.keras")
    assert export_cli.main(["--from", str(tmp_path / "lambda.keras"), "--name", "doubled", "--out", str(tmp_path / "repo"),
                            "--unsafe-lambda", "--quiet"]) == 0
    assert [t.name for t in read_model_json(tmp_path / "repo" / "doubled").outputs] == ["double"]


def test_a_conversion_that_needs_extra_feeds_falls_back_to_savedmodel(tmp_path):
    """An adapted Normalization: tf2onnx leaves its statistics as graph inputs no client could feed."""
    normalize = keras.layers.Normalization()
    normalize.adapt(np.random.default_rng(0).random((20, 3)).astype("float32"))
    x = keras.Input((3,), name="x")
    facts = export_model(keras.Model(x, keras.layers.Dense(1, name="y")(normalize(x))), "normalized", tmp_path, log=None)
    assert facts["formats"] == ["savedmodel"] and "captured tensors as graph inputs" in facts["onnx_skipped"]
    assert facts["parity"]["y"] <= 1e-6


def test_unnamed_inputs_are_refused_with_the_layer_names(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="out")])
    with pytest.raises(ExportError, match=r"no name of their own.*its layers: .*out \(Dense\)"):
        export_model(model, "seq", tmp_path, log=None)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_model_json_for_a_drop_in_version_in_place(user_repo, tmp_path):
    """A bare SavedModel dropped into the repository gets its full model.json; the files stay."""
    import tf2onnx

    model = keras.saving.load_model(user_repo[1] / "list_heads.keras")
    version = tmp_path / "repo" / "heads" / "3"
    model.export(str(version / "model.savedmodel"), format="tf_saved_model", verbose=False)
    files_before = sorted(p.name for p in version.rglob("*"))
    assert export_cli.main(["--from", str(version), "--name", "heads", "--out", str(tmp_path / "repo"), "--quiet"]) == 0
    assert sorted(p.name for p in version.rglob("*")) == files_before
    spec = read_model_json(tmp_path / "repo" / "heads")
    assert list(spec.versions) == [3] and spec.versions[3]["formats"] == ["savedmodel"]
    assert [t.name for t in spec.inputs] == ["left", "right"]
    assert "not analysed" in spec.versions[3]["analysis"]["left"][0]
    # Run again: the version is described already.
    assert export_cli.main(["--from", str(version), "--name", "heads", "--out", str(tmp_path / "repo"), "--quiet"]) == 1

    # A folder elsewhere holding only model.onnx becomes the next version, described from the file.
    onnx_only = tmp_path / "elsewhere"
    onnx_only.mkdir()
    tf2onnx.convert.from_keras(model, opset=17, output_path=str(onnx_only / "model.onnx"))
    assert export_cli.main(["--from", str(onnx_only), "--name", "heads", "--out", str(tmp_path / "repo"), "--quiet"]) == 0
    spec = read_model_json(tmp_path / "repo" / "heads")
    assert sorted(spec.versions) == [3, 4] and spec.versions[4]["formats"] == ["onnx"]
    assert (tmp_path / "repo" / "heads" / "4" / "model.onnx").read_bytes() == (onnx_only / "model.onnx").read_bytes()
