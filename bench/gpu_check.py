"""The GPU check (bench/gpu_check.sh runs this): mimo on one NVIDIA GPU, with both backends.

  preflight   nvidia-smi shows the GPU; ONNX Runtime has CUDAExecutionProvider; TensorFlow lists a
              GPU; perf_analyzer is there. Each missing piece is named and the steps that need it
              are skipped; no GPU at all: exit 2 (--allow-cpu runs every step on the CPU instead)
  servers     `mimo serve --device gpu --backend onnxruntime` and `... --backend tensorflow`, both
              at once on the one GPU (free ports, --http-port 0, --metrics-port 0), while a
              subprocess that sees no GPU computes the CPU reference (ONNX Runtime CPU session,
              TensorFlow on CPU) for the same inputs
  answers     every model's sample inputs (built from model.json: min lengths, id ranges) over gRPC
              to each server; max |GPU - CPU| per output <= --tolerance (1e-4), and the server's log
              must say the model is on the GPU
  sharing     nvidia-smi --query-compute-apps: GPU memory of each server process (both on the same
              GPU; TensorFlow, with memory growth on, below --tf-share-max (50%) of the total),
              after the answers and again after the throughput runs
  throughput  perf_analyzer -i grpc, c=32, 2 s windows, against the ONNX Runtime GPU server: mlp, qa
              (length 100), posts (length 300), dual_camera (the repository's image size); then
              in-process ONNX Runtime on the same GPU at batch 32 (rows/s, as bench/floor_ort.py)

Prints a markdown report on stdout (progress on stderr) and writes --out (JSON); the servers'
logs, the inputs and perf_analyzer's CSVs go to bench/results/gpu_check/<time>/. The whole run is
held to --budget seconds (default 420): each step has a time limit, a step that no longer fits is
skipped with a note. Every process it starts runs in a process group of its own and is stopped on
exit, on SIGINT/SIGTERM/SIGHUP and when the budget runs out; the groups are also listed in
$MIMO_GPU_CHECK_PIDFILE so that gpu_check.sh can stop them if this process itself is killed.

Exit status: 0 every check ran and passed; 1 a check failed; 2 no GPU (without --allow-cpu);
3 cannot run as asked (bad arguments, repository incomplete without --export); 4 nothing failed
but a step was skipped (a missing piece, or the budget). --dry-run does the preflight and the
repository check, prints the plan (seconds per step) and exits with the status those give.

Internal subcommands (run by the check itself, in subprocesses): `_reference` (the CPU reference)
and `_floor` (in-process ONNX Runtime throughput).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
PYTHON = sys.executable
MIMO = [PYTHON, "-m", "mimo.cli"]

NOTEBOOK_MODELS = ["mlp", "qa", "posts", "similarity", "dual_camera", "clothing_price", "inception_residual"]
THROUGHPUT_MODELS = ["mlp", "qa", "posts", "dual_camera"]
BACKENDS = ["onnxruntime", "tensorflow"]
CUDA = "CUDAExecutionProvider"

EXIT_OK, EXIT_FAIL, EXIT_NO_GPU, EXIT_CANNOT_RUN, EXIT_INCOMPLETE = 0, 1, 2, 3, 4
CPU_BANNER = "CPU run, not a GPU check"

# step -> (typical seconds on a GPU machine, time limit in seconds, least time worth starting it with)
STEPS = {
    "preflight": (8, 40, 0),
    "export": (240, 360, 60),
    "servers": (60, 240, 30),
    "answers": (10, 90, 10),
    "sharing": (2, 20, 2),
    "throughput-server": (50, 160, 15),
    "throughput-in-process": (30, 120, 15),
}
CLEANUP_RESERVE = 15  # seconds kept for stopping everything at the end
SAMPLE_BATCH = 4  # rows per answers request (at most the model's max_batch_size)
SAMPLE_LENGTH = 16  # variable-length axes in the answers (or the input's min length when longer)
PA_SECONDS_PER_MODEL = 40  # perf_analyzer time limit per model (3 windows plus start-up)

_NUMPY = {"FP16": "float16", "FP32": "float32", "FP64": "float64", "INT8": "int8", "INT16": "int16",
          "INT32": "int32", "INT64": "int64", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
          "UINT64": "uint64", "BOOL": "bool"}


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    def __init__(self, code: int, why: str):
        super().__init__(why)
        self.code = code


# -- processes ---------------------------------------------------------------------------------------


class Processes:
    """Every child runs in a session (process group) of its own and is stopped by its group id;
    the live groups are written to $MIMO_GPU_CHECK_PIDFILE for the shell wrapper's trap."""

    def __init__(self) -> None:
        self.live: dict[int, subprocess.Popen] = {}
        self.pidfile = os.environ.get("MIMO_GPU_CHECK_PIDFILE")

    def _write(self) -> None:
        if self.pidfile:
            try:
                Path(self.pidfile).write_text("".join(f"{pid}\n" for pid in self.live))
            except OSError:
                pass

    def start(self, command: list[str], *, log_path: Path | None = None, env: dict | None = None,
              capture: bool = False) -> subprocess.Popen:
        if capture:
            out = subprocess.PIPE
        else:
            out = open(log_path, "w") if log_path else subprocess.DEVNULL
        try:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if not capture else subprocess.PIPE,
                                       stdin=subprocess.DEVNULL, cwd=PROJECT, env=env or os.environ.copy(),
                                       start_new_session=True, text=capture)
        finally:
            if not capture and log_path:
                out.close()
        self.live[process.pid] = process
        self._write()
        return process

    def stop(self, process: subprocess.Popen, grace: float = 10.0) -> None:
        """SIGTERM to the group, wait up to `grace`, then SIGKILL to the group."""
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(process.pid, signal.SIGKILL)  # the leader may be gone while children live
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.live.pop(process.pid, None)
        self._write()

    def run(self, command: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str, str]:
        """(exit status or None on timeout, stdout, stderr) of a short command."""
        process = self.start(command, env=env, capture=True)
        try:
            out, err = process.communicate(timeout=max(1.0, timeout))
            code = process.returncode
        except subprocess.TimeoutExpired:
            self.stop(process, grace=2)
            out, err = process.communicate()
            code = None
        self.live.pop(process.pid, None)
        self._write()
        return code, out or "", err or ""

    def stop_all(self) -> None:
        for process in list(self.live.values()):
            self.stop(process, grace=5)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_pids(pgid: int) -> list[int]:
    """PIDs of the processes in process group `pgid` (a server and anything it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:  # after ")": state, ppid, pgrp
                pids.append(int(entry.name))
    return pids


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- nvidia-smi ----------------------------------------------------------------------------------


def _number(text: str) -> float | None:
    try:
        return float(text.strip().split()[0])
    except (ValueError, IndexError):
        return None  # "[N/A]", "[Not Supported]"


def parse_gpus(text: str) -> list[dict]:
    """`nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,driver_version
    --format=csv,noheader,nounits` -> one dict per GPU."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 6 or not parts[0].isdigit():
            continue
        gpus.append({"index": int(parts[0]), "uuid": parts[1], "name": parts[2],
                     "memory_total_mib": _number(parts[3]), "memory_used_mib": _number(parts[4]),
                     "driver": parts[5]})
    return gpus


def parse_compute_apps(text: str) -> list[dict]:
    """`nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits`."""
    apps = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        apps.append({"pid": int(parts[0]), "gpu_uuid": parts[1], "used_mib": _number(parts[2])})
    return apps


GPU_QUERY = ["--query-gpu=index,uuid,name,memory.total,memory.used,driver_version", "--format=csv,noheader,nounits"]
APPS_QUERY = ["--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader,nounits"]


# -- the repository ------------------------------------------------------------------------------


def newest_version(model_dir: Path) -> Path | None:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0] \
        if model_dir.is_dir() else []
    return max(versions, key=lambda p: int(p.name)) if versions else None


def read_spec(model_dir: Path) -> dict:
    return json.loads((model_dir / "model.json").read_text())


def check_repository(repository: Path, models: list[str]) -> dict:
    """Which of `models` the repository holds in full (model.json and a version with a model file),
    what each version holds, and dual_camera's image size."""
    found: dict[str, dict] = {}
    missing: dict[str, str] = {}
    if not repository.is_dir():
        return {"exists": False, "models": {}, "missing": {m: "no repository" for m in models}, "image_size": None}
    for model in models:
        folder = repository / model
        if not folder.is_dir():
            missing[model] = "no folder"
            continue
        try:
            spec = read_spec(folder)
        except FileNotFoundError:
            missing[model] = "no model.json"
            continue
        except (OSError, ValueError) as exc:
            missing[model] = f"model.json unreadable ({exc})"
            continue
        version = newest_version(folder)
        if version is None:
            missing[model] = "no version folder"
            continue
        formats = [f for f, rel in (("onnx", "model.onnx"), ("savedmodel", "model.savedmodel/saved_model.pb"))
                   if (version / rel).is_file()]
        if not formats:
            missing[model] = f"version {version.name} holds neither model.onnx nor model.savedmodel/"
            continue
        found[model] = {"version": int(version.name), "formats": formats, "backend": spec.get("backend")}
    image_size = None
    if "dual_camera" in found:
        try:
            shape = read_spec(repository / "dual_camera")["inputs"][0]["shape"]
            image_size = int(shape[1])
        except (KeyError, IndexError, TypeError, ValueError):
            pass
    return {"exists": True, "models": found, "missing": missing, "image_size": image_size}


def sample_inputs(repository: Path, model: str, batch: int = SAMPLE_BATCH, seed: int = 0,
                  length: int = SAMPLE_LENGTH) -> dict:
    """Valid random inputs for `model` from its model.json, as tests/helpers.py `sample_inputs`
    builds them: variable axes at least the input's min length, token ids inside the id range
    (from 1: 0 is often padding). The batch is at most the model's max_batch_size."""
    import numpy as np

    spec = read_spec(repository / model)
    constraints = spec.get("constraints", {})
    limit = int(spec.get("max_batch_size") or 1)
    batch = max(1, min(batch, limit))
    rng = np.random.default_rng(seed)
    arrays = {}
    for tensor in spec["inputs"]:
        if tensor["datatype"] not in _NUMPY:
            raise ValueError(f"input {tensor['name']!r}: datatype {tensor['datatype']} is not generated here")
        c = constraints.get(tensor["name"], {})
        longest = max(c.get("min_length") or 1, length)
        shape = [batch] + [longest if d == -1 else d for d in tensor["shape"][1:]]
        dtype = np.dtype(_NUMPY[tensor["datatype"]])
        if c.get("id_range"):
            low, high = c["id_range"]
            arrays[tensor["name"]] = rng.integers(max(low, 1), high, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[tensor["name"]] = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            arrays[tensor["name"]] = rng.integers(0, 10, size=shape).astype(dtype)
        else:
            arrays[tensor["name"]] = rng.random(shape).astype(dtype)
    return arrays


def compare(served: dict, reference: dict, tolerance: float) -> dict:
    """max |served - reference| over every output of the reference; PASS when each is within
    `tolerance` (shapes must agree; non-float outputs must be equal)."""
    import numpy as np

    per_output, problems = {}, []
    for name, want in reference.items():
        got = served.get(name)
        if got is None:
            problems.append(f"no output {name!r}")
            continue
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            problems.append(f"{name}: shape {list(got.shape)}, CPU {list(want.shape)}")
            continue
        if got.dtype.kind in "fc" or want.dtype.kind in "fc":
            diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
            if not np.isfinite(diff):
                problems.append(f"{name}: not finite")
        else:
            diff = 0.0 if np.array_equal(got, want) else float("inf")
        scale = float(np.max(np.abs(want))) if want.size and want.dtype.kind in "fciub" else 0.0
        per_output[name] = {"max_abs_diff": diff, "max_abs_cpu": scale}
    worst = max((o["max_abs_diff"] for o in per_output.values()), default=None)
    ok = not problems and worst is not None and worst <= tolerance
    return {"status": "PASS" if ok else "FAIL", "max_abs_diff": worst, "outputs": per_output,
            "problems": problems}


READY_LINE = re.compile(r"model (\S+) version (\d+) ready on (\S+) \((.*)\) in ")


def served_on(log_text: str) -> dict[str, dict]:
    """From a server's INFO log: model -> {"backend", "devices"} as the registry logs them."""
    found = {}
    for match in READY_LINE.finditer(log_text):
        found[match.group(1)] = {"version": int(match.group(2)), "backend": match.group(3),
                                 "devices": match.group(4)}
    return found


def on_gpu(devices: str) -> bool:
    return CUDA in devices or "GPU" in devices.upper()


# -- the run -------------------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget
        self.procs = Processes()
        self.cpu = args.allow_cpu
        self.device = "cpu" if self.cpu else "gpu"
        self.result: dict = {
            "mode": "cpu" if self.cpu else "gpu",
            "note": CPU_BANNER if self.cpu else "GPU check",
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "repository": str(args.repository), "budget_s": args.budget, "tolerance": args.tolerance,
            "concurrency": args.concurrency, "batch": args.batch, "no_tf32": args.no_tf32,
            "preflight": {}, "steps": {}, "answers": {}, "sharing": {}, "throughput": {}, "skipped": [],
            "failures": [],
        }
        self.servers: dict[str, dict] = {}  # backend -> {"process", "port", "log"}
        self.gpu: dict | None = None
        self.run_dir: Path | None = None

    # time

    def left(self) -> float:
        return self.deadline - time.monotonic() - CLEANUP_RESERVE

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def fits(self, step: str) -> bool:
        """Whether `step` may start; if not, record it as skipped for the budget."""
        least = STEPS[step][2]
        if self.left() < max(least, 1):
            self.skip(step, f"budget: {max(0.0, self.left()):.0f} s left of {self.args.budget:.0f} s, "
                            f"the step needs at least {least} s")
            return False
        return True

    def limit(self, step: str) -> float:
        return max(1.0, min(STEPS[step][1], self.left()))

    def skip(self, step: str, why: str) -> None:
        log(f"skip {step}: {why}")
        self.result["skipped"].append({"step": step, "why": why})

    def fail(self, what: str) -> None:
        log(f"FAIL {what}")
        self.result["failures"].append(what)

    def timed(self, step: str, started: float) -> None:
        self.result["steps"][step] = round(time.monotonic() - started, 1)

    # environments

    def env(self, gpu: bool) -> dict:
        env = os.environ.copy()
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        env["PYTHONUNBUFFERED"] = "1"
        if gpu and not self.cpu:
            env["CUDA_VISIBLE_DEVICES"] = self.args.gpu
            if self.args.no_tf32:
                env["NVIDIA_TF32_OVERRIDE"] = "0"
        else:
            env["CUDA_VISIBLE_DEVICES"] = "-1"  # the CPU reference, and every step of a CPU run
        return env

    # preflight

    def preflight(self) -> dict:
        started = time.monotonic()
        pf: dict = {}
        probe_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": self.args.gpu}
        ort_probe = ("import json, onnxruntime as o; print(json.dumps({'version': o.__version__, "
                     "'providers': o.get_available_providers()}))")
        tf_probe = ("import json, tensorflow as tf; print(json.dumps({'version': tf.__version__, "
                    "'gpus': [d.name for d in tf.config.list_physical_devices('GPU')], "
                    "'cuda_build': tf.test.is_built_with_cuda()}))")
        probes = {name: self.procs.start([PYTHON, "-c", code], env=probe_env, capture=True)
                  for name, code in (("onnxruntime", ort_probe), ("tensorflow", tf_probe))}
        limit = STEPS["preflight"][1] - 5

        smi = shutil.which("nvidia-smi")
        if not smi:
            pf["nvidia-smi"] = {"ok": False, "detail": "nvidia-smi not found on PATH (no NVIDIA driver here?)"}
        else:
            code, out, err = self.procs.run([smi, *GPU_QUERY, "-i", self.args.gpu], timeout=20)
            gpus = parse_gpus(out) if code == 0 else []
            if code is None:
                pf["nvidia-smi"] = {"ok": False, "detail": "nvidia-smi did not answer within 20 s"}
            elif code != 0 or not gpus:
                why = (err.strip() or out.strip()).splitlines()[-1:] or [f"exit status {code}"]
                pf["nvidia-smi"] = {"ok": False, "detail": f"nvidia-smi shows no GPU {self.args.gpu}: {why[0]}"}
            else:
                self.gpu = gpus[0]
                pf["nvidia-smi"] = {"ok": True, "detail": f"GPU {self.gpu['index']}: {self.gpu['name']}, "
                                    f"{self.gpu['memory_total_mib']:.0f} MiB ({self.gpu['memory_used_mib']:.0f} "
                                    f"MiB in use), driver {self.gpu['driver']}", "gpu": self.gpu}

        for name, process in probes.items():
            try:
                out, err = process.communicate(timeout=max(1.0, limit - (time.monotonic() - started)))
                code = process.returncode
            except subprocess.TimeoutExpired:
                self.procs.stop(process, grace=2)
                out, err, code = "", "", None
            self.procs.live.pop(process.pid, None)
            self.procs._write()
            info = None
            if code == 0:
                try:
                    info = json.loads(out.strip().splitlines()[-1])
                except (IndexError, ValueError):
                    info = None
            if info is None:
                if code is None:
                    why = f"importing {name} took over {limit:.0f} s"
                else:
                    lines = [l for l in err.strip().splitlines() if l.strip()]
                    why = lines[-1] if lines else f"exit status {code}"
                key = "onnxruntime-cuda" if name == "onnxruntime" else "tensorflow-gpu"
                pf[key] = {"ok": False, "detail": f"{name} does not import: {why[:200]}"}
                continue
            if name == "onnxruntime":
                providers = info["providers"]
                ok = CUDA in providers
                pf["onnxruntime-cuda"] = {
                    "ok": ok, "version": info["version"], "providers": providers,
                    "detail": f"ONNX Runtime {info['version']}: " + (
                        f"{CUDA} available" if ok else
                        f"no {CUDA} (available: {', '.join(providers)}; the GPU build is the onnxruntime-gpu "
                        "package)")}
            else:
                ok = bool(info["gpus"])
                pf["tensorflow-gpu"] = {
                    "ok": ok, "version": info["version"], "gpus": info["gpus"],
                    "detail": f"TensorFlow {info['version']}: " + (
                        f"{', '.join(info['gpus'])}" if ok else
                        "no GPU (tf.config.list_physical_devices('GPU') is empty; " + (
                            "built with CUDA, so no driver or GPU is visible, or the CUDA libraries are "
                            "missing: pip install 'tensorflow[and-cuda]')" if info["cuda_build"] else
                            "this build has no CUDA: pip install 'tensorflow[and-cuda]')"))}

        pa = self.args.perf_analyzer
        pa_ok = pa.is_file() and os.access(pa, os.X_OK)
        pf["perf_analyzer"] = {"ok": pa_ok, "detail": str(pa) if pa_ok else f"{pa} not found (make perf-analyzer)"}
        try:
            import importlib.util
            client_ok = importlib.util.find_spec("mimo.client") is not None and \
                importlib.util.find_spec("grpc") is not None
        except (ImportError, ValueError):
            client_ok = False
        pf["mimo"] = {"ok": client_ok, "detail": f"mimo.client importable by {PYTHON}" if client_ok else
                      f"mimo.client or grpc not importable by {PYTHON} (make install; or set PYTHON)"}
        self.result["preflight"] = pf
        self.timed("preflight", started)
        return pf

    def has(self, piece: str) -> bool:
        return bool(self.result["preflight"].get(piece, {}).get("ok"))

    def backends(self) -> dict[str, str | None]:
        """backend -> None when it can run in this mode, else why not."""
        why = {}
        for backend in BACKENDS:
            if not self.has("mimo"):
                why[backend] = "mimo.client is not importable"
            elif self.cpu:
                why[backend] = None
            elif backend == "onnxruntime":
                why[backend] = None if self.has("onnxruntime-cuda") else self.result["preflight"]["onnxruntime-cuda"]["detail"]
            else:
                why[backend] = None if self.has("tensorflow-gpu") else self.result["preflight"]["tensorflow-gpu"]["detail"]
        return why

    def no_gpu(self) -> list[str] | None:
        """What is missing when there is no GPU to check at all (None: there is one)."""
        pf = self.result["preflight"]
        if self.has("nvidia-smi") and (self.has("onnxruntime-cuda") or self.has("tensorflow-gpu")):
            return None
        return [pf[k]["detail"] for k in ("nvidia-smi", "onnxruntime-cuda", "tensorflow-gpu") if not pf[k]["ok"]]

    # the plan

    def plan(self, repo: dict) -> list[dict]:
        why = self.backends()
        runnable = [b for b in BACKENDS if why[b] is None]
        models = [m for m in self.args.models if m in repo["models"]] or list(self.args.models)
        tput = [m for m in THROUGHPUT_MODELS if m in models]
        image = repo.get("image_size") or self.args.image_size
        rows = [{"step": "preflight", "estimate_s": STEPS["preflight"][0], "limit_s": STEPS["preflight"][1],
                 "what": "nvidia-smi, ONNX Runtime providers, TensorFlow GPUs, perf_analyzer"}]
        if repo["missing"] and self.args.export:
            rows.append({"step": "export", "estimate_s": STEPS["export"][0], "limit_s": STEPS["export"][1],
                         "what": f"mimo export --models {' '.join(repo['missing'])} --image-size "
                                 f"{self.args.image_size} --epochs 1 --samples 64 (counts against the budget)"})
        rows += [
            {"step": "servers", "estimate_s": STEPS["servers"][0], "limit_s": STEPS["servers"][1],
             "what": (f"mimo serve --device {self.device} --backend {' and '.join(runnable)}, at once; "
                      f"CPU reference in a subprocess" if runnable else "nothing to serve: "
                      + "; ".join(f"{b}: {w}" for b, w in why.items()))},
            {"step": "answers", "estimate_s": STEPS["answers"][0], "limit_s": STEPS["answers"][1],
             "what": f"{len(models)} models x {len(runnable)} backends, batch <= {SAMPLE_BATCH}, "
                     f"max abs diff <= {self.args.tolerance:g}"},
            {"step": "sharing", "estimate_s": STEPS["sharing"][0], "limit_s": STEPS["sharing"][1],
             "what": ("process RSS of each server (CPU run: no GPU memory to read)" if self.cpu else
                      f"nvidia-smi memory per server process; tensorflow below {self.args.tf_share_max:.0%} "
                      "of the GPU") + ("" if len(runnable) == 2 else " (needs both backends: will be skipped)")},
            {"step": "throughput-server", "estimate_s": STEPS["throughput-server"][0],
             "limit_s": min(STEPS["throughput-server"][1], PA_SECONDS_PER_MODEL * len(tput)),
             "what": (f"perf_analyzer -i grpc c={self.args.concurrency} -p {self.args.window_ms}: "
                      f"{', '.join(tput)} (dual_camera {image}x{image}) on the onnxruntime server")
             + ("" if self.has("perf_analyzer") and "onnxruntime" in runnable else " (will be skipped)")},
            {"step": "throughput-in-process", "estimate_s": STEPS["throughput-in-process"][0],
             "limit_s": STEPS["throughput-in-process"][1],
             "what": f"ONNX Runtime in-process on the {self.device.upper()}, batch {self.args.batch}, "
                     f"{self.args.floor_seconds:g} s per model" + ("" if "onnxruntime" in runnable else " (will be skipped)")},
        ]
        return rows

    # export

    def ensure_repository(self) -> dict | None:
        """The repository, exported first with --export when models are missing; None: cannot run."""
        repo = check_repository(self.args.repository, self.args.models)
        self.result["repository_check"] = repo
        if not repo["missing"]:
            return repo
        if not self.args.export:
            print(missing_message(self.args, repo), file=sys.stderr)
            return None
        if not self.fits("export"):
            return None
        started = time.monotonic()
        missing = list(repo["missing"])
        # Leave the servers and the answers their least time.
        limit = min(STEPS["export"][1], self.left() - STEPS["servers"][2] - STEPS["answers"][2])
        if limit < STEPS["export"][2]:
            self.skip("export", f"budget: {max(0, self.left()):.0f} s left, too little to export {', '.join(missing)}")
            return None
        log(f"exporting {', '.join(missing)} into {self.args.repository} (at most {limit:.0f} s)")
        self.args.repository.mkdir(parents=True, exist_ok=True)
        command = MIMO + ["export", "--out", str(self.args.repository), "--models", *missing, "--image-size",
                          str(self.args.image_size), "--epochs", "1", "--samples", "64", "--quiet"]
        process = self.procs.start(command, log_path=self.run_dir / "export.log", env=self.env(gpu=True))
        try:
            code = process.wait(limit)
        except subprocess.TimeoutExpired:
            self.procs.stop(process)
            code = None
        self.procs.stop(process)
        self.timed("export", started)
        if code != 0:
            tail = _tail(self.run_dir / "export.log")
            why = f"did not finish within {limit:.0f} s" if code is None else f"exit status {code}: {tail}"
            print(f"gpu_check: mimo export {why} (log: {self.run_dir / 'export.log'})", file=sys.stderr)
            return None
        repo = check_repository(self.args.repository, self.args.models)
        self.result["repository_check"] = repo
        if repo["missing"]:
            print(missing_message(self.args, repo), file=sys.stderr)
            return None
        return repo

    # servers

    def start_servers(self, runnable: list[str]) -> None:
        for backend in runnable:
            port = free_port()
            while port_taken(port):
                port = free_port()
            log_path = self.run_dir / f"server.{backend}.log"
            command = MIMO + ["serve", "--model-repository", str(self.args.repository), "--host", "127.0.0.1",
                              "--port", str(port), "--http-port", "0", "--metrics-port", "0", "--workers", "1",
                              "--backend", backend, "--device", self.device, "--log-level", "INFO"]
            log(f"starting mimo serve --backend {backend} --device {self.device} on port {port}")
            process = self.procs.start(command, log_path=log_path, env=self.env(gpu=True))
            self.servers[backend] = {"process": process, "port": port, "log": log_path, "states": {}}

    def wait_servers(self, models: list[str], timeout: float) -> None:
        """Until every server reports each model READY or failed (or exits, or `timeout` passes)."""
        from mimo.client import Client
        from mimo.client.errors import InferenceError, ServerUnavailableError

        end = time.monotonic() + timeout
        pending = dict(self.servers)
        clients = {b: Client(f"127.0.0.1:{s['port']}", timeout=5, local_checks=False) for b, s in pending.items()}
        try:
            while pending and time.monotonic() < end:
                for backend, server in list(pending.items()):
                    if server["process"].poll() is not None:
                        server["error"] = (f"exited with status {server['process'].returncode} before it was "
                                           f"ready: {_tail(server['log'])}")
                        del pending[backend]
                        continue
                    try:
                        statuses = {s.name: s for s in clients[backend].models()}
                    except (ServerUnavailableError, InferenceError, OSError):
                        continue  # not listening yet
                    states = {}
                    for model in models:
                        status = statuses.get(model)
                        if status is None:
                            states[model] = ("ABSENT", "not in the server's repository index")
                        elif status.ready:
                            states[model] = ("READY", "")
                        else:
                            values = set(status.states.values())
                            reason = "; ".join(r for r in status.reasons.values() if r)
                            states[model] = ("LOADING" if values & {"LOADING", "UNKNOWN", ""} and not reason
                                             else "UNAVAILABLE", reason)
                    server["states"] = states
                    if all(state != "LOADING" for state, _ in states.values()):
                        server["ready_s"] = round(self.elapsed(), 1)
                        del pending[backend]
                time.sleep(0.5)
        finally:
            for client in clients.values():
                client.close()
        for backend in pending:
            self.servers[backend]["error"] = f"not ready within {timeout:.0f} s ({_tail(self.servers[backend]['log'])})"

    def stop_server(self, backend: str) -> None:
        server = self.servers.get(backend)
        if server and server["process"].pid in self.procs.live:
            self.procs.stop(server["process"])

    # answers

    def answers(self, repo: dict, models: list[str], runnable: list[str], why: dict) -> None:
        import numpy as np

        started = time.monotonic()
        inputs = {}
        for model in models:
            try:
                inputs[model] = sample_inputs(self.args.repository, model, seed=0)
            except (ValueError, KeyError, OSError) as exc:
                self.result["answers"][model] = {b: {"status": "FAIL", "problems": [f"inputs: {exc}"]} for b in BACKENDS}
        flat = {f"{m}|{n}": a for m, arrays in inputs.items() for n, a in arrays.items()}
        inputs_path = self.run_dir / "inputs.npz"
        np.savez(inputs_path, **flat)

        # The CPU reference, in a subprocess that sees no GPU, while the servers load.
        runtimes = sorted({"onnxruntime" if "onnx" in repo["models"][m]["formats"] else "tensorflow" for m in inputs}
                          | ({"tensorflow"} if "tensorflow" in runnable else set())
                          | ({"onnxruntime"} if "onnxruntime" in runnable else set()))
        # One process per runtime: a slow TensorFlow does not hold up ONNX Runtime's answers.
        references = {runtime: self.procs.start(
            [PYTHON, str(Path(__file__).resolve()), "_reference", "--repository", str(self.args.repository),
             "--inputs", str(inputs_path), "--out", str(self.run_dir / f"reference.{runtime}.npz"),
             "--runtimes", runtime],
            log_path=self.run_dir / f"reference.{runtime}.log", env=self.env(gpu=False)) for runtime in runtimes}

        self.start_servers(runnable)
        self.wait_servers(list(inputs), self.limit("servers"))
        self.timed("servers", started)
        for backend, server in self.servers.items():
            if "error" in server:
                self.fail(f"{backend} server: {server['error']}")

        started = time.monotonic()
        end = time.monotonic() + max(1.0, min(STEPS["answers"][1], self.left()))
        refs: dict = {}
        ref_errors: dict = {}
        for runtime, reference in references.items():
            try:
                reference.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self.procs.stop(reference)
            reference_path = self.run_dir / f"reference.{runtime}.npz"
            if reference_path.is_file():
                with np.load(reference_path, allow_pickle=False) as saved:
                    for key in saved.files:
                        _, model, output = key.split("|", 2)
                        refs.setdefault((runtime, model), {})[output] = saved[key]
            errors_path = reference_path.with_suffix(".errors.json")
            if errors_path.is_file():
                ref_errors.update({tuple(k.split("|", 1)): v for k, v in json.loads(errors_path.read_text()).items()})
            else:
                for model in inputs:
                    ref_errors.setdefault((runtime, model), "the reference did not finish: "
                                          + _tail(self.run_dir / f"reference.{runtime}.log"))

        from mimo.client import Client
        from mimo.client.errors import InferenceError, ServerUnavailableError

        for backend in BACKENDS:
            server = self.servers.get(backend)
            logged = served_on(server["log"].read_text(errors="replace")) if server else {}
            client = Client(f"127.0.0.1:{server['port']}", timeout=60, local_checks=False) if server else None
            try:
                for model in models:
                    row = self.result["answers"].setdefault(model, {})
                    if backend in row:
                        continue
                    if why.get(backend):
                        row[backend] = {"status": "SKIP", "problems": [why[backend]]}
                        continue
                    if server is None or "error" in server and not server.get("states"):
                        row[backend] = {"status": "FAIL", "problems": [f"no server: {server and server.get('error')}"]}
                        continue
                    state, reason = server["states"].get(model, ("UNAVAILABLE", "no state"))
                    if state != "READY":
                        row[backend] = {"status": "FAIL", "problems": [f"not ready: {state} {reason}".strip()]}
                        continue
                    where = logged.get(model, {})
                    runtime = where.get("backend") or backend
                    devices = where.get("devices", "?")
                    want = refs.get((runtime, model))
                    if want is None:
                        row[backend] = {"status": "FAIL", "served_by": runtime, "devices": devices,
                                        "problems": [f"no CPU reference: {ref_errors.get((runtime, model), '?')}"]}
                        continue
                    if self.left() < 1:
                        row[backend] = {"status": "SKIP", "problems": ["budget"]}
                        self.skip(f"answers {model} on {backend}", "budget: no time left")
                        continue
                    try:
                        got = client.predict(model, inputs[model])
                    except (InferenceError, ServerUnavailableError) as exc:
                        row[backend] = {"status": "FAIL", "served_by": runtime, "devices": devices,
                                        "problems": [f"request failed: {exc}"]}
                        continue
                    verdict = compare(got, want, self.args.tolerance)
                    if not self.cpu and not on_gpu(devices):
                        verdict["status"] = "FAIL"
                        verdict["problems"].append(
                            f"served on {devices}, not the GPU" if where else
                            "the server's log does not say where the model runs (no 'ready on' line)")
                    verdict.update(served_by=runtime, devices=devices,
                                   batch=int(next(iter(inputs[model].values())).shape[0]))
                    row[backend] = verdict
            finally:
                if client is not None:
                    client.close()
        for model, row in self.result["answers"].items():
            for backend, verdict in row.items():
                if verdict["status"] == "FAIL":
                    self.fail(f"answers {model} on {backend}: "
                              + "; ".join(verdict.get("problems") or [f"max |diff| {verdict.get('max_abs_diff'):.3g}"]))
        self.timed("answers", started)

    # sharing

    def sharing(self, when: str) -> dict:
        started = time.monotonic()
        up = {b: s for b, s in self.servers.items() if s["process"].poll() is None and "error" not in s}
        reading: dict = {"when": when, "processes": {}}
        if self.cpu:
            for backend, server in up.items():
                pids = group_pids(server["process"].pid)
                reading["processes"][backend] = {"pids": pids, "rss_mib": round(rss_mib(pids), 1)}
            reading["check"] = "n/a (CPU run: process RSS shown, no GPU memory to read)"
            self.result["sharing"][when] = reading
            self.timed(f"sharing ({when})", started)
            return reading
        smi = shutil.which("nvidia-smi")
        code, out, _ = self.procs.run([smi, *APPS_QUERY], timeout=15)
        apps = parse_compute_apps(out) if code == 0 else []
        code2, out2, _ = self.procs.run([smi, *GPU_QUERY, "-i", self.args.gpu], timeout=15)
        gpu = (parse_gpus(out2) if code2 == 0 else []) or [self.gpu]
        gpu = gpu[0]
        total = gpu["memory_total_mib"] or 0
        reading["gpu"] = {"uuid": gpu["uuid"], "memory_total_mib": total, "memory_used_mib": gpu["memory_used_mib"],
                          "memory_used_before_mib": self.gpu["memory_used_mib"]}
        reading["compute_apps"] = apps
        for backend, server in up.items():
            pids = set(group_pids(server["process"].pid))
            mine = [a for a in apps if a["pid"] in pids]
            figures = [a["used_mib"] for a in mine if a["used_mib"] is not None]
            used = sum(figures) if figures else None  # [N/A] per process (MIG, some containers)
            reading["processes"][backend] = {
                "pids": sorted(pids), "gpu_uuids": sorted({a["gpu_uuid"] for a in mine}), "listed": bool(mine),
                "used_mib": used, "share": (used / total) if used is not None and total else None}
        problems = []
        if len(up) < 2:
            reading["check"] = "SKIP"
            problems.append("needs both servers up: " + ", ".join(f"{b} is not" for b in BACKENDS if b not in up))
        elif all(p["used_mib"] is None for p in reading["processes"].values()):
            # nvidia-smi lists no process of ours: inside a container its PIDs are the host's.
            delta = (gpu["memory_used_mib"] or 0) - (self.gpu["memory_used_mib"] or 0)
            reading["both_mib_from_total"] = delta
            reading["attribution"] = ("nvidia-smi lists none of the servers' PIDs (a container's PID namespace?): "
                                      "the GPU's memory in use minus the figure before the servers started")
            if total and delta / total >= self.args.tf_share_max:
                problems.append(f"both servers together use {delta:.0f} of {total:.0f} MiB "
                                f"({delta / total:.0%}), not below {self.args.tf_share_max:.0%}")
            reading["check"] = "FAIL" if problems else "PASS"
        else:
            for backend, p in reading["processes"].items():
                if not p["listed"]:
                    problems.append(f"the {backend} server has no memory on the GPU")
                elif gpu["uuid"] not in p["gpu_uuids"]:
                    problems.append(f"the {backend} server is on {', '.join(p['gpu_uuids'])}, not {gpu['uuid']}")
            tf = reading["processes"].get("tensorflow", {})
            if tf.get("share") is not None and tf["share"] >= self.args.tf_share_max:
                problems.append(f"tensorflow takes {tf['used_mib']:.0f} of {total:.0f} MiB ({tf['share']:.0%}): "
                                f"memory growth is not on?")
            reading["check"] = "FAIL" if problems else "PASS"
        reading["problems"] = problems
        if reading["check"] == "FAIL":
            self.fail(f"sharing ({when}): " + "; ".join(problems))
        elif reading["check"] == "SKIP":
            self.skip(f"sharing ({when})", "; ".join(problems))
        self.result["sharing"][when] = reading
        self.timed(f"sharing ({when})", started)
        return reading

    # throughput

    def throughput_server(self, models: list[str], image_size: int | None) -> None:
        started = time.monotonic()
        server = self.servers["onnxruntime"]
        sys.path.insert(0, str(HERE))
        import pa_data

        data = pa_data.write(self.run_dir / "data")
        rows = self.result["throughput"]
        for model in models:
            rows.setdefault(model, {})
            if server["states"].get(model, ("?",))[0] != "READY":
                rows[model]["server"] = {"error": "not ready on the onnxruntime server"}
                self.fail(f"throughput {model}: not ready on the onnxruntime server")
                continue
            limit = min(PA_SECONDS_PER_MODEL, self.left())
            if limit < STEPS["throughput-server"][2]:
                self.skip(f"throughput {model} (server)", f"budget: {max(0, self.left()):.0f} s left")
                continue
            csv_path = self.run_dir / f"pa.{model}.c{self.args.concurrency}.csv"
            command = [str(self.args.perf_analyzer), "-m", model, "-u", f"127.0.0.1:{server['port']}", "-i", "grpc",
                       "--concurrency-range", f"{self.args.concurrency}:{self.args.concurrency}",
                       "-p", str(self.args.window_ms), "--max-trials", "3", "--stability-percentage", "999",
                       "-f", str(csv_path)]
            if model in data:
                command += ["--input-data", str(data[model])]  # qa length 100, posts 300 (bench/pa_data.py)
            # dual_camera: fixed shapes, perf_analyzer's random data at the repository's image size
            before = _server_counts(server["port"], model)
            code, out, err = self.procs.run(command, timeout=limit)
            after = _server_counts(server["port"], model)
            (self.run_dir / f"pa.{model}.log").write_text(out + err)
            row = {"data": "pa_data" if model in data else f"random {image_size}x{image_size}x3" if
                   model == "dual_camera" else "random"}
            if code == 0 and csv_path.is_file():
                r = next(csv.DictReader(open(csv_path)))
                row.update(infer_s=float(r["Inferences/Second"]), p50_ms=int(r["p50 latency"]) / 1000,
                           p99_ms=int(r["p99 latency"]) / 1000)
                if before and after and after[1] > before[1]:
                    row["avg_batch"] = round((after[2] - before[2]) / (after[1] - before[1]), 2)
                log(f"throughput {model}: {row['infer_s']:.0f} infer/s (c={self.args.concurrency})")
            else:
                why = "timed out" if code is None else f"exit status {code}"
                lines = [l for l in (out + err).strip().splitlines() if l.strip()]
                row["error"] = f"perf_analyzer {why}: {lines[-1][:160] if lines else ''}"
                self.fail(f"throughput {model}: {row['error']}")
            rows[model]["server"] = row
        self.timed("throughput-server", started)

    def throughput_in_process(self, models: list[str]) -> None:
        started = time.monotonic()
        out = self.run_dir / "in_process.json"
        command = [PYTHON, str(Path(__file__).resolve()), "_floor", "--repository", str(self.args.repository),
                   "--out", str(out), "--device", self.device, "--batch", str(self.args.batch),
                   "--seconds", str(self.args.floor_seconds), "--models", *models]
        code, stdout, stderr = self.procs.run(command, timeout=self.limit("throughput-in-process"),
                                              env=self.env(gpu=True))
        (self.run_dir / "in_process.log").write_text(stdout + stderr)
        results = json.loads(out.read_text()) if out.is_file() else {}
        for model in models:
            row = results.get(model) or {"error": "timed out" if code is None else
                                         f"exit status {code}: {_last_line(stderr)}"}
            self.result["throughput"].setdefault(model, {})["in_process"] = row
            if "error" in row:
                self.fail(f"in-process {model}: {row['error']}")
            server = self.result["throughput"][model].get("server", {})
            if server.get("infer_s") and row.get("rows_per_s"):
                self.result["throughput"][model]["ratio"] = server["infer_s"] / row["rows_per_s"]
        self.timed("throughput-in-process", started)

    # the whole

    def execute(self) -> int:
        args = self.args
        log(f"preflight ({'CPU run' if self.cpu else 'GPU ' + args.gpu})")
        self.preflight()
        missing = self.no_gpu()
        if missing is not None and not self.cpu:
            print("gpu_check: no GPU to check:\n" + "".join(f"  - {m}\n" for m in missing)
                  + "Run with --allow-cpu to exercise every step on the CPU (that is not a GPU check).",
                  file=sys.stderr)
            self.result["verdict"] = "NO GPU"
            self.result["missing"] = missing
            print(preflight_table(self.result))
            if not args.dry_run:
                self.write()
            return EXIT_NO_GPU

        if args.dry_run:
            repo = check_repository(args.repository, args.models)
            print(dry_run_text(self, repo))
            if repo["missing"] and not args.export:
                print(missing_message(args, repo), file=sys.stderr)
                return EXIT_CANNOT_RUN
            return EXIT_OK

        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = args.work_dir / stamp
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.result["run_dir"] = str(self.run_dir)
        repo = self.ensure_repository()
        if repo is None:
            self.result["verdict"] = "CANNOT RUN"
            self.write()
            return EXIT_CANNOT_RUN

        why = self.backends()
        runnable = [b for b in BACKENDS if why[b] is None]
        for backend in BACKENDS:
            if why[backend]:
                self.skip(f"{backend} server", why[backend])
        models = [m for m in args.models if m in repo["models"]]
        self.result["image_size"] = repo["image_size"]
        if runnable and self.fits("servers"):
            self.answers(repo, models, runnable, why)
            if self.fits("sharing"):
                self.sharing("after answers")
            # Throughput on the onnxruntime server; the tensorflow server stays up (idle) so the
            # memory reading afterwards shows both under load.
            tput = [m for m in THROUGHPUT_MODELS if m in models]
            ort_up = "onnxruntime" in self.servers and "error" not in self.servers["onnxruntime"]
            if not tput:
                self.skip("throughput", "none of mlp, qa, posts, dual_camera is in the repository")
            elif not ort_up:
                self.skip("throughput-server", why.get("onnxruntime") or "the onnxruntime server is not up")
            elif not self.has("perf_analyzer"):
                self.skip("throughput-server", self.result["preflight"]["perf_analyzer"]["detail"])
            elif self.fits("throughput-server"):
                self.throughput_server(tput, repo["image_size"])
                if self.fits("sharing"):
                    self.sharing("after throughput")
            for backend in list(self.servers):
                self.stop_server(backend)
            if tput and why["onnxruntime"] is None and self.fits("throughput-in-process"):
                self.throughput_in_process(tput)
            elif tput and why["onnxruntime"]:
                self.skip("throughput-in-process", why["onnxruntime"])
        elif not runnable:
            self.skip("servers", "no backend can run: " + "; ".join(f"{b}: {w}" for b, w in why.items()))
        return self.finish()

    def finish(self) -> int:
        if self.result["failures"]:
            verdict, code = f"FAIL ({len(self.result['failures'])})", EXIT_FAIL
        elif self.result["skipped"]:
            verdict, code = "INCOMPLETE (steps skipped)", EXIT_INCOMPLETE
        else:
            verdict, code = "PASS", EXIT_OK
        if self.cpu:
            verdict += f": {CPU_BANNER}"
        self.result["verdict"] = verdict
        self.result["exit"] = code
        self.write()
        print(report(self.result))
        return code

    def write(self) -> None:
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        out = self.args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.result, indent=1, default=str))
        log(f"wrote {out}")


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = [l for l in path.read_text(errors="replace").strip().splitlines() if l.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])[:300]


def _last_line(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:200] if lines else ""


def _server_counts(port: int, model: str):
    """(successful requests, executions, items executed) from ModelStatistics, or None."""
    try:
        sys.path.insert(0, str(HERE))
        from run import server_counts  # bench/run.py's, over tritonclient

        return server_counts(port, model)
    except Exception:  # noqa: BLE001 - no tritonclient: no average batch
        return None


# -- text ----------------------------------------------------------------------------------------


def missing_message(args, repo: dict) -> str:
    where = args.repository
    if not repo["exists"]:
        head = f"gpu_check: the repository {where} does not exist."
    else:
        head = f"gpu_check: the repository {where} lacks " + ", ".join(
            f"{m} ({why})" for m, why in repo["missing"].items()) + "."
    models = " ".join(repo["missing"])
    return (f"{head}\nExport them first (minutes), e.g.:\n"
            f"  .venv/bin/mimo export --out {where} --models {models} --image-size {args.image_size} "
            f"--epochs 1 --samples 64\n"
            f"or give --export to export them as part of the check (the export counts against --budget).")


def _fmt(value, spec: str = ",.0f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def preflight_table(result: dict) -> str:
    rows = ["| piece | | detail |", "|---|---|---|"]
    for name, piece in result["preflight"].items():
        rows.append(f"| {name} | {'ok' if piece['ok'] else 'MISSING'} | {piece['detail']} |")
    return "\n".join(rows)


def dry_run_text(run: Run, repo: dict) -> str:
    args = run.args
    lines = [f"# GPU check: dry run{' (' + CPU_BANNER + ')' if run.cpu else ''}", "",
             f"preflight took {run.result['steps'].get('preflight', 0):.1f} s", "", preflight_table(run.result), ""]
    if not repo["exists"]:
        lines.append(f"repository {args.repository}: does not exist")
    elif repo["missing"]:
        lines.append(f"repository {args.repository}: lacks " + ", ".join(f"{m} ({w})" for m, w in repo["missing"].items()))
    else:
        lines.append(f"repository {args.repository}: {len(repo['models'])} models"
                     + (f", image size {repo['image_size']}" if repo["image_size"] else ""))
    if repo["missing"] and not args.export:
        lines.append("a real run stops here (exit 3): export the models or give --export")
    plan = run.plan(repo)
    lines += ["", f"plan, in seconds (budget {args.budget:.0f} s; each step is cut to what is left of it, "
                  f"{CLEANUP_RESERVE} s kept for stopping everything):", "",
              "| step | typical s | limit s | what |", "|---|---:|---:|---|"]
    for row in plan:
        lines.append(f"| {row['step']} | {row['estimate_s']} | {row['limit_s']} | {row['what']} |")
    estimate = sum(r["estimate_s"] for r in plan)
    lines += [f"| total | {estimate} | {args.budget:.0f} | |", ""]
    return "\n".join(lines)


def report(result: dict) -> str:
    cpu = result["mode"] == "cpu"
    pf = result["preflight"]
    gpu = pf.get("nvidia-smi", {}).get("gpu")
    title = f"# GPU check: {CPU_BANNER}" if cpu else f"# GPU check: {gpu['name'] if gpu else '?'}"
    lines = [title, "",
             f"verdict: **{result['verdict']}**; {result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget; "
             f"repository {result['repository']}" + (f" (image size {result.get('image_size')})"
                                                     if result.get("image_size") else "")
             + ("; NVIDIA_TF32_OVERRIDE=0" if result.get("no_tf32") else ""), "",
             "## Preflight", "", preflight_table(result), ""]
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result["steps"].items())
    lines += [f"steps: {steps}", ""]

    if result["answers"]:
        tol = result["tolerance"]
        lines += [f"## Answers: {'CPU server' if cpu else 'GPU'} against the CPU reference, max |diff| <= {tol:g}", "",
                  "| model | onnxruntime | tensorflow |", "|---|---|---|"]
        for model, row in result["answers"].items():
            cells = []
            for backend in BACKENDS:
                v = row.get(backend)
                if v is None:
                    cells.append("-")
                elif v.get("max_abs_diff") is not None and not v.get("problems"):
                    where = v.get("devices", "")
                    by = "" if v.get("served_by", backend) == backend else f" by {v['served_by']}"
                    cells.append(f"{v['status']} {v['max_abs_diff']:.2e} ({_short_device(where)}{by})")
                else:
                    cells.append(f"{v['status']}: {'; '.join(v.get('problems') or [])[:120]}")
            lines.append(f"| {model} | {cells[0]} | {cells[1]} |")
        lines.append("")
        if any(v.get("status") == "FAIL" and v.get("max_abs_diff") is not None and v.get("max_abs_diff") > tol
               for row in result["answers"].values() for v in row.values()) and not result.get("no_tf32") and not cpu:
            lines += ["Differences above the tolerance on an Ampere or newer GPU may be TF32 (TensorFlow, and "
                      "cuBLAS/cuDNN, use it for float32 by default): run again with --no-tf32 to tell.", ""]

    for when, reading in result["sharing"].items():
        lines += [f"## {'Memory of each server' if cpu else 'Sharing the GPU'} ({when})", ""]
        if cpu:
            lines += ["| server | pids | RSS MiB |", "|---|---|---:|"]
            for backend, p in reading["processes"].items():
                lines.append(f"| {backend} | {' '.join(map(str, p['pids']))} | {p['rss_mib']:,.0f} |")
        else:
            g = reading["gpu"]
            lines += [f"GPU {g['uuid']}: {_fmt(g['memory_used_mib'])} of {_fmt(g['memory_total_mib'])} MiB in use "
                      f"({_fmt(g['memory_used_before_mib'])} before the servers started)", "",
                      "| server | pids | GPU memory MiB | share of the GPU |", "|---|---|---:|---:|"]
            for backend, p in reading["processes"].items():
                share = _fmt(p["share"], ".1%") if p.get("share") is not None else "-"
                lines.append(f"| {backend} | {' '.join(map(str, p['pids']))} | {_fmt(p['used_mib'])} | {share} |")
            if reading.get("attribution"):
                lines += ["", f"{reading['attribution']}: {reading['both_mib_from_total']:,.0f} MiB for both"]
        lines += ["", f"check: {reading['check']}" + (f": {'; '.join(reading['problems'])}"
                                                     if reading.get("problems") else ""), ""]

    if result["throughput"]:
        dev = "CPU" if cpu else "GPU"
        lines += [f"## Throughput: the onnxruntime server at c={result['concurrency']} against in-process "
                  f"ONNX Runtime on the {dev}, batch {result['batch']}", "",
                  "| model | data | server infer/s | avg batch | p50 ms | p99 ms | in-process rows/s | server / in-process |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for model, row in result["throughput"].items():
            s, f = row.get("server", {}), row.get("in_process", {})
            server = s.get("error", _fmt(s.get("infer_s"))) if s else "-"
            floor = f.get("error", _fmt(f.get("rows_per_s"))) if f else "-"
            lines.append(f"| {model} | {s.get('data', '-')} | {server} | {_fmt(s.get('avg_batch'), '.1f')} | "
                         f"{_fmt(s.get('p50_ms'), '.2f')} | {_fmt(s.get('p99_ms'), '.2f')} | {floor} | "
                         f"{_fmt(row.get('ratio'), '.3g')} |")
        lines.append("")

    if result["skipped"]:
        lines += ["## Skipped", ""] + [f"- {s['step']}: {s['why']}" for s in result["skipped"]] + [""]
    if result["failures"]:
        lines += ["## Failures", ""] + [f"- {f}" for f in result["failures"]] + [""]
    if result.get("run_dir"):
        lines.append(f"logs, inputs and perf_analyzer CSVs: {result['run_dir']}")
    return "\n".join(lines)


def _short_device(devices: str) -> str:
    if CUDA in devices:
        return "CUDA"
    if "GPU" in devices.upper():
        return devices.split("device:")[-1] if "device:" in devices else devices
    return devices.replace("CPUExecutionProvider", "CPU") or "?"


# -- internal subcommands ------------------------------------------------------------------------


def reference_main(argv: list[str]) -> int:
    """The CPU reference: every model of --inputs on ONNX Runtime's CPU session and on TensorFlow
    (run with CUDA_VISIBLE_DEVICES=-1), into --out (npz, keys runtime|model|output)."""
    ap = argparse.ArgumentParser(prog="gpu_check.py _reference")
    ap.add_argument("--repository", type=Path, required=True)
    ap.add_argument("--inputs", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runtimes", nargs="+", default=BACKENDS)
    a = ap.parse_args(argv)
    import numpy as np

    feeds: dict[str, dict] = {}
    with np.load(a.inputs, allow_pickle=False) as saved:
        for key in saved.files:
            model, name = key.split("|", 1)
            feeds.setdefault(model, {})[name] = saved[key]
    results, errors = {}, {}
    if "onnxruntime" in a.runtimes:
        import onnxruntime as ort

        for model, inputs in feeds.items():
            path = newest_version(a.repository / model) / "model.onnx"
            if not path.is_file():
                errors[f"onnxruntime|{model}"] = "no model.onnx"
                continue
            try:
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                names = [o.name for o in session.get_outputs()]
                wanted = {i.name for i in session.get_inputs()}
                for name, value in zip(names, session.run(names, {k: v for k, v in inputs.items() if k in wanted})):
                    results[f"onnxruntime|{model}|{name}"] = value
            except Exception as exc:  # noqa: BLE001 - reported per model
                errors[f"onnxruntime|{model}"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"reference onnxruntime {model}", flush=True)
    if "tensorflow" in a.runtimes:
        import tensorflow as tf

        for model, inputs in feeds.items():
            path = newest_version(a.repository / model) / "model.savedmodel"
            if not (path / "saved_model.pb").is_file():
                errors[f"tensorflow|{model}"] = "no model.savedmodel"
                continue
            try:
                with tf.device("/CPU:0"):
                    function = tf.saved_model.load(str(path)).signatures["serving_default"]
                    answer = function(**{k: tf.constant(v) for k, v in inputs.items()})
                for name, value in answer.items():
                    results[f"tensorflow|{model}|{name}"] = value.numpy()
            except Exception as exc:  # noqa: BLE001 - reported per model
                errors[f"tensorflow|{model}"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"reference tensorflow {model}", flush=True)
    staging = a.out.with_name(a.out.stem + ".partial.npz")
    np.savez(staging, **results)
    os.replace(staging, a.out)
    a.out.with_suffix(".errors.json").write_text(json.dumps(errors, indent=1))
    return 0


def floor_main(argv: list[str]) -> int:
    """In-process ONNX Runtime (as bench/floor_ort.py, on --device): rows/s at --batch per model."""
    ap = argparse.ArgumentParser(prog="gpu_check.py _floor")
    ap.add_argument("--repository", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", choices=["cpu", "gpu"], default="gpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--models", nargs="+", default=THROUGHPUT_MODELS)
    a = ap.parse_args(argv)
    import numpy as np
    import onnxruntime as ort

    sys.path.insert(0, str(HERE))
    import pa_data

    data = pa_data.datasets()
    providers = [CUDA, "CPUExecutionProvider"] if a.device == "gpu" else ["CPUExecutionProvider"]
    results = {}
    for model in a.models:
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1  # as served (--intra-op-threads 1)
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(newest_version(a.repository / model) / "model.onnx"), options,
                                           providers=providers)
            used = session.get_providers()
            if a.device == "gpu" and used[0] != CUDA:
                raise RuntimeError(f"ONNX Runtime runs it on {used[0]}, not {CUDA}")
            if model in data:  # the same samples perf_analyzer sends
                samples = pa_data.as_arrays(data[model])
                feeds = {name: np.concatenate([samples[i % len(samples)][name] for i in range(a.batch)])
                         for name in samples[0]}
            else:
                spec = read_spec(a.repository / model)
                spec_batch = a.batch  # the ONNX graph's batch axis is free of model.json's max_batch_size
                feeds = _random_feeds(spec, spec_batch)
            names = [o.name for o in session.get_outputs()]
            warm_end = time.perf_counter() + a.seconds / 2
            for i in range(10):  # warm-up (cuDNN picks its algorithms on the first calls)
                session.run(names, feeds)
                if time.perf_counter() > warm_end and i >= 1:
                    break
            times = []
            end = time.perf_counter() + a.seconds
            while True:
                t0 = time.perf_counter()
                session.run(names, feeds)
                t1 = time.perf_counter()
                times.append(t1 - t0)
                if t1 > end:
                    break
            lat = np.array(times)
            calls = len(lat) / lat.sum()
            results[model] = {"rows_per_s": calls * a.batch, "calls_per_s": calls,
                              "p50_ms": float(np.percentile(lat, 50) * 1e3), "providers": used, "calls": len(lat)}
            print(f"in-process {model}: {calls * a.batch:,.0f} rows/s at batch {a.batch} on {used[0]}", flush=True)
        except Exception as exc:  # noqa: BLE001 - reported per model
            results[model] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        a.out.write_text(json.dumps(results, indent=1))
    return 0


def _random_feeds(spec: dict, batch: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    feeds = {}
    for tensor in spec["inputs"]:
        c = spec.get("constraints", {}).get(tensor["name"], {})
        shape = [batch] + [max(c.get("min_length") or 1, SAMPLE_LENGTH) if d == -1 else d for d in tensor["shape"][1:]]
        dtype = np.dtype(_NUMPY[tensor["datatype"]])
        if c.get("id_range"):
            feeds[tensor["name"]] = rng.integers(max(1, c["id_range"][0]), c["id_range"][1], size=shape).astype(dtype)
        else:
            feeds[tensor["name"]] = rng.random(shape).astype(dtype)
    return feeds


# -- the command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: exit 3 (2 means "no GPU" here)
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_CANNOT_RUN)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = _Parser(prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0],
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="exit status: 0 pass, 1 a check failed, 2 no GPU, 3 cannot run as asked, 4 steps skipped")
    ap.add_argument("--repository", type=Path, default=Path("models"),
                    help="the model repository (default ./models)")
    ap.add_argument("--export", action="store_true",
                    help="export the notebook models the repository lacks (small: --image-size, 1 epoch, 64 "
                         "samples; minutes, counted against --budget); without it a missing model stops the run")
    ap.add_argument("--image-size", type=int, default=71, help="image size of an --export (default 71)")
    ap.add_argument("--models", nargs="+", default=NOTEBOOK_MODELS, choices=NOTEBOOK_MODELS, metavar="MODEL",
                    help="models to check (default: the seven)")
    ap.add_argument("--budget", type=float, default=420.0, help="the whole run, in seconds (default 420)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.json",
                    help="the JSON result (default bench/results/gpu_check.json)")
    ap.add_argument("--work-dir", type=Path, default=HERE / "results" / "gpu_check",
                    help="logs, inputs and CSVs go to WORK_DIR/<time>/ (default bench/results/gpu_check)")
    ap.add_argument("--allow-cpu", action="store_true",
                    help=f"run every step with --device cpu ({CPU_BANNER}; to exercise the script)")
    ap.add_argument("--dry-run", action="store_true", help="preflight and repository check only; print the plan")
    ap.add_argument("--gpu", default=None,
                    help="the GPU to use, as nvidia-smi -i and CUDA_VISIBLE_DEVICES take it (default: the first "
                         "of CUDA_VISIBLE_DEVICES, else 0)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max |GPU - CPU| per output (default 1e-4)")
    ap.add_argument("--tf-share-max", type=float, default=0.5,
                    help="TensorFlow's GPU memory must stay below this share of the total (default 0.5)")
    ap.add_argument("--no-tf32", action="store_true",
                    help="NVIDIA_TF32_OVERRIDE=0 for the GPU processes (full float32 in cuBLAS/cuDNN)")
    ap.add_argument("--concurrency", type=int, default=32, help="perf_analyzer concurrency (default 32)")
    ap.add_argument("--window-ms", type=int, default=2000, help="perf_analyzer window, -p (default 2000)")
    ap.add_argument("--batch", type=int, default=32, help="in-process ONNX Runtime batch (default 32)")
    ap.add_argument("--floor-seconds", type=float, default=3.0, help="in-process seconds per model (default 3)")
    ap.add_argument("--perf-analyzer", type=Path, default=PROJECT / ".venv-pa" / "bin" / "perf_analyzer")
    args = ap.parse_args(argv)
    if args.budget < 30:
        ap.error("--budget must be at least 30 seconds")
    if not 0 < args.tf_share_max <= 1:
        ap.error("--tf-share-max is a share: between 0 and 1")
    if args.gpu is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        args.gpu = visible if visible and not visible.startswith("-") else "0"
    args.repository = args.repository.expanduser().resolve()
    args.models = list(dict.fromkeys(args.models))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_reference":
        return reference_main(argv[1:])
    if argv and argv[0] == "_floor":
        return floor_main(argv[1:])
    args = parse_args(argv)
    run = Run(args)

    stopping = []  # once stopping, later signals (the wrapper's TERM after a Ctrl-C) must not cut the cleanup

    def on_signal(number, _frame):
        if not stopping:
            stopping.append(number)
            raise Interrupted(128 + number, signal.Signals(number).name)

    def on_alarm(_number, _frame):
        if not stopping:
            stopping.append(_number)
            raise Interrupted(EXIT_INCOMPLETE, f"the budget of {args.budget:.0f} s (and its grace) ran out")

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.budget) + 30)  # the hard stop, should a step overrun its own limit
    try:
        return run.execute()
    except Interrupted as stop:
        log(f"stopping: {stop}")
        run.procs.stop_all()
        run.skip("the rest", str(stop))
        if not args.dry_run:
            try:
                run.finish()
            except Exception as exc:  # noqa: BLE001 - the report is a courtesy here
                log(f"no report: {exc}")
        return stop.code
    finally:
        signal.alarm(0)
        run.procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
