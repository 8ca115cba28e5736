"""`mimo predict` and `mimo models` against the in-process server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import MODELS, free_port, sample_inputs
from mimo.cli import main
from mimo.client import Client

MIMO = Path(sys.executable).with_name("mimo")


@pytest.mark.parametrize("model", MODELS)
def test_predict_random_prints_every_head(server, capsys, model):
    assert main(["predict", model, "--random", "--target", server.address]) == 0
    out = capsys.readouterr().out
    with Client(server.address) as c:
        heads = list(c.metadata(model).outputs)
    for head in heads:
        assert head in out
    assert "FP32" in out


def test_summaries_plain_text(server, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)  # rich is optional: plain text without it
    monkeypatch.setitem(sys.modules, "rich.console", None)
    assert main(["predict", "posts", "--random", "--seed", "1", "--target", server.address]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "[1, 1]" in lines["age"] and "value" in lines["age"]
    assert "top-3: class" in lines["income"] and "FP32" in lines["income"]
    assert main(["predict", "dual_camera", "--random", "--target", server.address]) == 0
    assert "min" in capsys.readouterr().out
    assert main(["models", "--target", server.address]) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in MODELS) and "READY" in out


def test_predict_json_with_files_outputs_and_signature(exported_repo, server, tf_server, capsys, tmp_path):
    inputs = sample_inputs(exported_repo, "qa", 2, seed=9)
    args = []
    for name, array in inputs.items():
        np.save(tmp_path / f"{name}.npy", array)
        args += ["--input", f"{name}={tmp_path / name}.npy"]
    assert main(["predict", "qa", *args, "--json", "--target", server.address]) == 0
    document = json.loads(capsys.readouterr().out)
    answer = document["outputs"]["answer"]
    assert answer["shape"] == [2, 500] and answer["datatype"] == "FP32"
    with Client(server.address) as c:
        np.testing.assert_allclose(np.array(answer["data"], np.float32), c.predict("qa", inputs)["answer"],
                                   atol=1e-5)
    assert answer["summary"]["kind"] == "classes" and len(answer["summary"]["top3"][0]) == 3

    assert main(["predict", "posts", "--random", "--json", "--output", "age", "--output", "gender",
                 "--target", server.address]) == 0
    document = json.loads(capsys.readouterr().out)
    assert list(document["outputs"]) == ["age", "gender"] and document["inputs"]["posts"]["shape"][1] >= 269
    assert document["outputs"]["age"]["summary"]["kind"] == "value"

    assert main(["predict", "posts", "--random", "--json", "--signature", "income",
                 "--target", tf_server.address]) == 0
    assert list(json.loads(capsys.readouterr().out)["outputs"]) == ["income"]


def test_models_json(server, capsys):
    assert main(["models", "--json", "--target", server.address]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert sorted(listed) == sorted(MODELS)
    assert listed["mlp"]["versions"] == ["1"] and listed["mlp"]["ready"] is True


def test_errors_are_one_line_and_exit_1(server, capsys, tmp_path):
    assert main(["predict", "nope", "--random", "--target", server.address]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    np.save(tmp_path / "short.npy", np.ones((1, 10), np.int32))
    assert main(["predict", "posts", "--input", f"posts={tmp_path / 'short.npy'}", "--target", server.address]) == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "input 'posts'" in err and "Traceback" not in err
    target = f"127.0.0.1:{free_port()}"
    assert main(["models", "--target", target, "--timeout", "3"]) == 1
    assert target in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no inputs: a usage error
        main(["predict", "mlp", "--target", server.address])


def test_the_installed_command(server):
    env = {**os.environ, "MIMO_TARGET": server.address}
    out = subprocess.run([str(MIMO), "predict", "mlp", "--random", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["outputs"]["probs"]["shape"] == [1, 10]
