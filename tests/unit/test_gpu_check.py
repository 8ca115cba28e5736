"""bench/gpu_check.sh, without a GPU: its syntax, its preflight (a machine without a GPU gets exit 2
and the missing pieces named; --allow-cpu --dry-run prints the plan), and the pure parts of
bench/gpu_check.py (nvidia-smi parsing, the repository check, sample inputs, the comparison).

Nothing here starts a server or needs a GPU: the check itself is run by hand on a GPU machine,
and no test depends on it. The two script runs go in parallel (each imports TensorFlow once to
probe it), so the module takes a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
MODELS = ["mlp", "qa", "posts", "similarity", "dual_camera", "clothing_price", "inception_residual"]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _module()


def _fake_repository(root: Path, models=MODELS, image_size: int = 71) -> Path:
    """model.json and (empty) model files for each model: enough for the repository check."""
    for model in models:
        inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
        constraints = {}
        if model == "dual_camera":
            inputs = [{"name": side, "datatype": "FP32", "shape": [-1, image_size, image_size, 3]}
                      for side in ("left", "right")]
        if model == "posts":
            inputs = [{"name": "posts", "datatype": "INT32", "shape": [-1, -1]}]
            constraints = {"posts": {"min_length": 269, "id_range": [0, 50000]}}
        folder = root / model
        (folder / "1" / "model.savedmodel").mkdir(parents=True)
        (folder / "1" / "model.onnx").write_bytes(b"")
        (folder / "1" / "model.savedmodel" / "saved_model.pb").write_bytes(b"")
        (folder / "model.json").write_text(json.dumps({
            "name": model, "inputs": inputs, "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
            "constraints": constraints, "signatures": {}, "max_batch_size": 8 if model == "dual_camera" else 32}))
    return root


def _path_without_nvidia_smi() -> str:
    """PATH minus every folder that holds nvidia-smi: this machine then shows no GPU to the script."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(f for f in folders if f and not (Path(f) / "nvidia-smi").exists())


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """Both script runs, started together: without --allow-cpu (no GPU visible), and
    --allow-cpu --dry-run over a complete (fake) repository."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    repo = _fake_repository(tmp / "repo")
    env = {**os.environ, "PATH": _path_without_nvidia_smi(), "PYTHON": sys.executable}
    common = ["--out", str(tmp / "out.json"), "--work-dir", str(tmp / "work")]
    commands = {
        "no_gpu": ["bash", str(SCRIPT), "--dry-run", "--repository", str(repo)] + common,
        "cpu": ["bash", str(SCRIPT), "--allow-cpu", "--dry-run", "--repository", str(repo)] + common,
    }
    running = {name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=env, cwd=tmp) for name, command in commands.items()}
    done = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        done[name] = (process.returncode, out, err)
    done["tmp"] = tmp
    return done


def test_the_script_parses_and_is_executable():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


def test_without_a_gpu_it_exits_2_naming_what_is_missing(dry_runs):
    code, out, err = dry_runs["no_gpu"]
    assert code == 2, (out, err)
    assert "no GPU to check" in err
    assert "nvidia-smi not found on PATH" in err
    assert "--allow-cpu" in err
    assert "Traceback" not in err
    # Every piece the preflight table marks missing is named in the message.
    rows = [line for line in out.splitlines() if line.startswith("| ") and "MISSING" in line]
    assert rows, out
    for row in rows:
        detail = row.split("|")[3].strip()
        if row.split("|")[1].strip() in ("nvidia-smi", "onnxruntime-cuda", "tensorflow-gpu"):
            assert detail in err, (detail, err)
    if shutil.which("nvidia-smi") is None:  # a CPU machine like this one: all three are missing
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            assert "no CUDAExecutionProvider" in err
        assert "TensorFlow" in err
    assert not (dry_runs["tmp"] / "out.json").exists()  # a dry run writes nothing


def test_allow_cpu_dry_run_prints_the_plan_in_seconds(dry_runs):
    code, out, err = dry_runs["cpu"]
    assert code == 0, (out, err)
    assert gpu_check.CPU_BANNER in out
    assert "plan, in seconds (budget 420 s" in out
    for step in ("preflight", "servers", "answers", "sharing", "throughput-server", "throughput-in-process"):
        assert f"| {step} |" in out, step
    assert "--device cpu" in out
    assert "dual_camera 71x71" in out
    assert "repository" in out and "7 models" in out
    assert "| total |" in out
    assert "Traceback" not in err
    assert not (dry_runs["tmp"] / "work").exists()


def test_a_repository_that_lacks_models_stops_the_run_unless_export(tmp_path):
    repo = _fake_repository(tmp_path / "repo", models=["mlp", "qa"])
    checked = gpu_check.check_repository(repo, MODELS)
    assert sorted(checked["models"]) == ["mlp", "qa"]
    assert checked["missing"]["posts"] == "no folder"
    args = gpu_check.parse_args(["--repository", str(repo)])
    message = gpu_check.missing_message(args, checked)
    assert "lacks posts (no folder)" in message and "--export" in message
    assert "mimo export --out" in message and "--image-size 71" in message

    nothing = gpu_check.check_repository(tmp_path / "absent", MODELS)
    assert not nothing["exists"] and set(nothing["missing"]) == set(MODELS)
    assert "does not exist" in gpu_check.missing_message(args, nothing)

    (repo / "qa" / "1" / "model.onnx").unlink()
    shutil.rmtree(repo / "qa" / "1" / "model.savedmodel")
    assert "neither model.onnx" in gpu_check.check_repository(repo, ["qa"])["missing"]["qa"]


def test_usage_errors_exit_3_not_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        gpu_check.parse_args(["--budget", "5"])
    assert stopped.value.code == 3


def test_nvidia_smi_parsing():
    gpus = gpu_check.parse_gpus("0, GPU-abc, NVIDIA H200, 143771, 512, 570.86\n")
    assert gpus == [{"index": 0, "uuid": "GPU-abc", "name": "NVIDIA H200", "memory_total_mib": 143771.0,
                     "memory_used_mib": 512.0, "driver": "570.86"}]
    apps = gpu_check.parse_compute_apps("1234, GPU-abc, 812\n1240, GPU-abc, [N/A]\nNo running processes found\n")
    assert apps == [{"pid": 1234, "gpu_uuid": "GPU-abc", "used_mib": 812.0},
                    {"pid": 1240, "gpu_uuid": "GPU-abc", "used_mib": None}]


def test_sample_inputs_respect_min_lengths_id_ranges_and_batch(tmp_path):
    repo = _fake_repository(tmp_path / "repo", models=["posts", "dual_camera"], image_size=33)
    posts = gpu_check.sample_inputs(repo, "posts")["posts"]
    assert posts.dtype == np.int32 and posts.shape == (4, 269)
    assert posts.min() >= 1 and posts.max() < 50000
    camera = gpu_check.sample_inputs(repo, "dual_camera", batch=32)
    assert camera["left"].shape == (8, 33, 33, 3) and camera["left"].dtype == np.float32  # max_batch_size 8
    assert gpu_check.check_repository(repo, ["dual_camera"])["image_size"] == 33


def test_compare_and_the_servers_log():
    want = {"a": np.zeros((2, 3), np.float32), "b": np.ones((2, 1), np.float32)}
    close = {"a": np.full((2, 3), 5e-5, np.float32), "b": np.ones((2, 1), np.float32)}
    verdict = gpu_check.compare(close, want, 1e-4)
    assert verdict["status"] == "PASS" and verdict["max_abs_diff"] == pytest.approx(5e-5)
    assert gpu_check.compare({**close, "a": close["a"] * 3}, want, 1e-4)["status"] == "FAIL"
    assert "no output 'b'" in gpu_check.compare({"a": close["a"]}, want, 1e-4)["problems"]
    assert gpu_check.compare({**close, "b": np.ones((2, 2), np.float32)}, want, 1e-4)["status"] == "FAIL"

    log = ("2026-12-02 03:00:00 INFO mimo.serving.core.registry: model mlp version 1 ready on onnxruntime "
           "(CUDAExecutionProvider, CPUExecutionProvider) in 0.21 s\n"
           "2026-12-02 03:00:01 INFO mimo.serving.core.registry: model qa version 2 ready on tensorflow "
           "(/job:localhost/replica:0/task:0/device:GPU:0) in 1.50 s\n")
    found = gpu_check.served_on(log)
    assert found["mlp"]["backend"] == "onnxruntime" and gpu_check.on_gpu(found["mlp"]["devices"])
    assert found["qa"]["version"] == 2 and gpu_check.on_gpu(found["qa"]["devices"])
    assert not gpu_check.on_gpu("CPUExecutionProvider") and not gpu_check.on_gpu("/CPU:0")
