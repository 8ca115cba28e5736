"""End-to-end test of the server image, run by scripts/container_test.sh (`make test-container`).

The script builds the image (Dockerfile target `demo`: models exported at build time) and sets
MIMO_CT_IMAGE; without it this module is skipped, so `make test` never needs a container engine.

  1. copy the baked-in model repository out of the image (the reference for the outputs);
  2. run the image (--network=host, read-only root filesystem, as its non-root user) on free ports
     (MIMO_PORT, MIMO_HTTP_PORT, MIMO_METRICS_PORT) and wait for grpc.health.v1 to say SERVING,
     timing it; HTTP's /v2/health/ready and the image's HEALTHCHECK (HTTP, and its gRPC fallback
     with HTTP off) must agree;
  3. call mlp and qa with tritonclient and with mimo.client, and compare every output with the
     same ONNX files run here in-process with ONNX Runtime; call mlp over REST too (KServe v2 JSON,
     tritonclient.http's binary tensors, TensorFlow Serving's :predict in both formats): the same
     numbers as the gRPC call;
  4. run the image a second time as a user would, on its default ports published with -p
     (8500, 8501): ready over HTTP, and REST and gRPC through the published ports agree;
  5. send SIGTERM (`podman stop`) while slow requests are in flight: they must all complete with
     correct outputs, and the server must exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

IMAGE = os.environ.get("MIMO_CT_IMAGE")
pytestmark = pytest.mark.skipif(not IMAGE, reason="container test: run `make test-container` (sets MIMO_CT_IMAGE)")

ENGINE = os.environ.get("MIMO_CT_ENGINE", "podman")
RUN_ID = os.environ.get("MIMO_CT_RUN_ID", str(os.getpid()))
LABEL = f"mimo.container-test={RUN_ID}"
REPORT = os.environ.get("MIMO_CT_REPORT")
READY_TIMEOUT_S = float(os.environ.get("MIMO_CT_READY_TIMEOUT", "300"))
MODELS = ("mlp", "qa")
UID = 10001  # the Dockerfile's USER

grpc = pytest.importorskip("grpc")
ort = pytest.importorskip("onnxruntime")
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402


def _engine(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    run = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and run.returncode != 0:
        raise AssertionError(f"{ENGINE} {' '.join(args)} -> {run.returncode}\n{run.stdout}\n{run.stderr}")
    return run


def _report(**facts) -> None:
    print(" ".join(f"{k}={v}" for k, v in facts.items()))
    if REPORT:
        path = Path(REPORT)
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(facts)
        path.write_text(json.dumps(data, indent=1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(target: str, service: str = "", timeout: float = 2.0) -> str:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """The model repository baked into the image, copied out (the outputs' reference)."""
    out = tmp_path_factory.mktemp("image-models")
    name = f"mimo-ct-copy-{RUN_ID}"
    _engine("create", "--name", name, "--label", LABEL, IMAGE)
    try:
        _engine("cp", f"{name}:/models/.", str(out))
    finally:
        _engine("rm", "-f", name, check=False)
    assert all((out / m / "model.json").is_file() for m in MODELS), sorted(p.name for p in out.iterdir())
    return out


@pytest.fixture(scope="module")
def container():
    port, http_port, metrics_port = _free_port(), _free_port(), _free_port()
    name = f"mimo-ct-{RUN_ID}"
    target = f"127.0.0.1:{port}"
    start = time.monotonic()
    _engine("run", "--detach", "--name", name, "--label", LABEL, "--network=host", "--read-only",
            "--env", f"MIMO_PORT={port}", "--env", f"MIMO_HTTP_PORT={http_port}",
            "--env", f"MIMO_METRICS_PORT={metrics_port}", IMAGE)
    try:
        status = "UNAVAILABLE"
        while time.monotonic() - start < READY_TIMEOUT_S:
            status = _health(target)
            if status == "SERVING":
                break
            state = _engine("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state not in ("running", "created", "configured"):
                raise AssertionError(f"container {state} before it was ready:\n{_logs(name)}")
            time.sleep(0.25)
        ready_s = time.monotonic() - start
        assert status == "SERVING", f"not ready after {ready_s:.0f}s ({status}):\n{_logs(name)}"
        _report(run_to_ready_s=round(ready_s, 2))
        yield {"name": name, "target": target, "port": port, "metrics_port": metrics_port,
               "http": f"127.0.0.1:{http_port}"}
    finally:
        logs = _logs(name)
        if logs:
            print(f"--- last lines of the server's log ---\n{logs}")
        _engine("rm", "-f", "--time", "5", name, check=False)


def _logs(name: str, lines: int = 25) -> str:
    run = _engine("logs", "--tail", str(lines), name, check=False)
    return (run.stdout + run.stderr).strip()


# ---------------------------------------------------------------------------------------------
# inputs and references


def _model_json(repository: Path, model: str) -> dict:
    return json.loads((repository / model / "model.json").read_text())


def _newest_onnx(repository: Path, model: str) -> Path:
    versions = [p for p in (repository / model).iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name)) / "model.onnx"


NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16}


def _inputs(spec: dict, batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Valid random inputs from model.json: variable dims get `length` (at least the min length),
    token ids stay inside the declared range and above 0 (the padding id)."""
    rng = np.random.default_rng(seed)
    constraints = spec.get("constraints", {})
    arrays = {}
    for t in spec["inputs"]:
        c = constraints.get(t["name"], {})
        size = max(length, c.get("min_length") or 1)
        shape = [batch if axis == 0 else (size if d == -1 else d) for axis, d in enumerate(t["shape"])]
        dtype = NUMPY[t["datatype"]]
        if "id_range" in c:
            low, high = c["id_range"]
            arrays[t["name"]] = rng.integers(max(low, 1), high, size=shape).astype(dtype)
        elif np.dtype(dtype).kind in "iu":
            arrays[t["name"]] = rng.integers(1, 10, size=shape).astype(dtype)
        else:
            arrays[t["name"]] = rng.standard_normal(shape).astype(dtype)
    return arrays


_SESSIONS: dict[str, object] = {}


def _reference(repository: Path, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same ONNX file, run here in-process."""
    if model not in _SESSIONS:
        _SESSIONS[model] = ort.InferenceSession(str(_newest_onnx(repository, model)), providers=["CPUExecutionProvider"])
    session = _SESSIONS[model]
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def _assert_close(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), f"{what}: outputs {sorted(got)} != {sorted(want)}"
    for name in want:
        assert got[name].shape == want[name].shape, f"{what}/{name}: shape {got[name].shape} != {want[name].shape}"
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=f"{what}/{name}")


def _triton_infer(target: str, model: str, spec: dict, inputs: dict[str, np.ndarray],
                  client=None, timeout: float | None = None) -> dict[str, np.ndarray]:
    import tritonclient.grpc as tc

    own = client is None
    client = client or tc.InferenceServerClient(target)
    try:
        request = []
        for name, array in inputs.items():
            tensor = tc.InferInput(name, list(array.shape), tc.np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        outputs = [tc.InferRequestedOutput(o["name"]) for o in spec["outputs"]]
        result = client.infer(model, request, outputs=outputs, client_timeout=timeout)
        return {o["name"]: result.as_numpy(o["name"]) for o in spec["outputs"]}
    finally:
        if own:
            client.close()


def _http(address: str, method: str, path: str, body: dict | None = None,
          timeout: float = 30) -> tuple[int, dict | str]:
    """(status, JSON document or text) of one HTTP request; errors are answers too (no raise)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=method,
                                     headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, text = reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


V2_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16}


def _kserve_rest_infer(address: str, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """POST /v2/models/{model}/infer with JSON tensors (KServe v2 REST), as curl would send it."""
    body = {"inputs": [{"name": name, "shape": list(a.shape), "datatype": next(k for k, v in V2_DTYPES.items()
                                                                                 if np.dtype(v) == a.dtype),
                        "data": a.ravel().tolist()} for name, a in inputs.items()]}
    status, reply = _http(address, "POST", f"/v2/models/{model}/infer", body)
    assert status == 200, f"KServe v2 REST infer {model}: HTTP {status}: {reply}"
    assert reply["model_name"] == model, reply
    return {o["name"]: np.asarray(o["data"], dtype=V2_DTYPES[o["datatype"]]).reshape(o["shape"])
            for o in reply["outputs"]}


def _tf_serving_rest_predict(address: str, model: str, spec: dict, inputs: dict[str, np.ndarray],
                             rows: bool) -> dict[str, np.ndarray]:
    """POST /v1/models/{model}:predict (TensorFlow Serving REST), row ("instances") or columnar
    ("inputs") format; the answer as {output name: array}."""
    names = [o["name"] for o in spec["outputs"]]
    if rows:
        n = len(next(iter(inputs.values())))
        instances = ([a.tolist() for a in next(iter(inputs.values()))] if len(inputs) == 1 else
                     [{name: a[i].tolist() for name, a in inputs.items()} for i in range(n)])
        body = {"instances": instances}
    else:
        body = {"inputs": {name: a.tolist() for name, a in inputs.items()}}
    status, reply = _http(address, "POST", f"/v1/models/{model}:predict", body)
    assert status == 200, f"TF Serving REST predict {model}: HTTP {status}: {reply}"
    if rows:
        predictions = reply["predictions"]
        columns = {names[0]: predictions} if len(names) == 1 else {n: [row[n] for row in predictions] for n in names}
    else:
        columns = {names[0]: reply["outputs"]} if len(names) == 1 else reply["outputs"]
    return {name: np.asarray(columns[name], dtype=np.float32) for name in names}


def _rest_matches_grpc(http: str, grpc_target: str, repository: Path, model: str, seed: int) -> None:
    """One gRPC call (tritonclient), then the same inputs over every REST route: the same numbers."""
    import tritonclient.http as th

    spec = _model_json(repository, model)
    inputs = _inputs(spec, batch=3, length=12, seed=seed)
    want = _triton_infer(grpc_target, model, spec, inputs)
    _assert_close(want, _reference(repository, model, inputs), f"gRPC {model}")
    # JSON carries each float32 as its shortest repr, so it comes back bit for bit
    _assert_same(_kserve_rest_infer(http, model, inputs), want, f"KServe v2 REST {model}")
    for rows in (False, True):
        _assert_same(_tf_serving_rest_predict(http, model, spec, inputs, rows), want,
                     f"TF Serving REST {model} ({'instances' if rows else 'inputs'})")
    client = th.InferenceServerClient(http)  # binary tensor extension, as perf_analyzer -i http sends
    try:
        assert client.is_server_ready() and client.is_model_ready(model)
        request = []
        for name, array in inputs.items():
            tensor = th.InferInput(name, list(array.shape), th.np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=True)
            request.append(tensor)
        outputs = [th.InferRequestedOutput(o["name"], binary_data=True) for o in spec["outputs"]]
        result = client.infer(model, request, outputs=outputs)
        _assert_same({o["name"]: result.as_numpy(o["name"]) for o in spec["outputs"]}, want,
                     f"tritonclient.http {model}")
    finally:
        client.close()


def _assert_same(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), f"{what}: outputs {sorted(got)} != {sorted(want)}"
    for name in want:
        assert got[name].shape == want[name].shape, f"{what}/{name}: shape {got[name].shape} != {want[name].shape}"
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=0, err_msg=f"{what}/{name}")


def _wait_http_ready(address: str, name: str, timeout: float) -> float:
    """Seconds until GET /v2/health/ready answers 200 (the container must keep running)."""
    start = time.monotonic()
    status = None
    while time.monotonic() - start < timeout:
        try:
            status, _ = _http(address, "GET", "/v2/health/ready", timeout=2)
        except (urllib.error.URLError, OSError):  # not listening yet (connection refused/reset)
            status = None
        if status == 200:
            return time.monotonic() - start
        state = _engine("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state not in ("running", "created", "configured"):
            raise AssertionError(f"container {state} before it was ready:\n{_logs(name)}")
        time.sleep(0.25)
    raise AssertionError(f"/v2/health/ready not 200 after {timeout:.0f}s (last: {status}):\n{_logs(name)}")


# ---------------------------------------------------------------------------------------------
# tests (in file order; the SIGTERM test stops the container and comes last)


def test_ready_through_the_health_service_and_the_image_healthcheck(container):
    assert _health(container["target"]) == "SERVING"
    for model in MODELS:
        assert _health(container["target"], model) == "SERVING", model
    assert _health(container["target"], "no-such-model") in ("NOT_FOUND", "SERVICE_UNKNOWN")
    # HTTP agrees: KServe v2 REST health (open, no token)
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/mlp/ready"):
        status, body = _http(container["http"], "GET", path)
        assert status == 200, f"GET {path}: {status} {body}"
    # the Dockerfile's HEALTHCHECK (deploy/docker/healthcheck.py inside the container): over HTTP
    # (MIMO_HTTP_PORT is set), then with HTTP off (MIMO_HTTP_PORT=0) through its gRPC fallback
    run = _engine("healthcheck", "run", container["name"], check=False)
    assert run.returncode == 0, f"image HEALTHCHECK failed: {run.stdout}{run.stderr}"
    for http_port in ("0", str(_free_port())):  # off; on a port where nothing listens
        run = _engine("exec", "--env", f"MIMO_HTTP_PORT={http_port}", container["name"],
                      "python", "/usr/local/lib/mimo/healthcheck.py", check=False)
        assert run.returncode == 0 and "SERVING" in run.stdout, \
            f"HEALTHCHECK with MIMO_HTTP_PORT={http_port}: {run.stdout}{run.stderr}"


def test_runs_as_the_non_root_user_on_a_read_only_root(container):
    assert _engine("exec", container["name"], "id", "-u").stdout.strip() == str(UID)
    assert _engine("exec", container["name"], "touch", "/models/x", check=False).returncode != 0


def test_metrics_endpoint(container):
    url = f"http://127.0.0.1:{container['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert "# HELP" in reply.read().decode()
    # the metrics port is no REST port: a probe pointed at it by mistake fails
    status, _ = _http(f"127.0.0.1:{container['metrics_port']}", "GET", "/v2/health/ready")
    assert status == 404


@pytest.mark.parametrize("model", MODELS)
def test_tritonclient_matches_onnxruntime_in_process(container, repository, model):
    spec = _model_json(repository, model)
    for batch, seed in ((1, 1), (3, 2)):
        inputs = _inputs(spec, batch=batch, length=12, seed=seed)
        got = _triton_infer(container["target"], model, spec, inputs)
        _assert_close(got, _reference(repository, model, inputs), f"tritonclient {model} batch {batch}")


@pytest.mark.parametrize("model", MODELS)
def test_mimo_client_matches_onnxruntime_in_process(container, repository, model):
    try:
        from mimo.client import Client
    except ImportError as exc:  # the client library ships with the project; skip only if it is absent
        pytest.skip(f"mimo.client not importable: {exc}")
    spec = _model_json(repository, model)
    inputs = _inputs(spec, batch=2, length=9, seed=3)
    with Client(container["target"]) as client:
        got = client.predict(model, **inputs)
    _assert_close({k: np.asarray(v) for k, v in got.items()}, _reference(repository, model, inputs),
                  f"mimo.client {model}")


def test_rest_kserve_v2_and_tf_serving_give_the_grpc_numbers(container, repository):
    http = container["http"]
    status, meta = _http(http, "GET", "/v2/models/mlp")
    assert status == 200 and meta["name"] == "mlp", meta
    assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in _model_json(repository, "mlp")["inputs"]]
    status, state = _http(http, "GET", "/v1/models/mlp")
    assert status == 200 and state["model_version_status"][0]["state"] == "AVAILABLE", state
    _rest_matches_grpc(http, container["target"], repository, "mlp", seed=11)
    status, body = _http(http, "GET", "/v2/models/no-such-model")
    assert status == 404, body


def test_the_default_ports_published_with_p(container, repository):
    """The image as a user runs it: `run -p 8500:8500 -p 8501:8501`, no port settings."""
    grpc_port, http_port = _free_port(), _free_port()
    name = f"mimo-ct-published-{RUN_ID}"
    _engine("run", "--detach", "--name", name, "--label", LABEL, "--read-only",
            "-p", f"127.0.0.1:{grpc_port}:8500", "-p", f"127.0.0.1:{http_port}:8501", IMAGE)
    try:
        ready_s = _wait_http_ready(f"127.0.0.1:{http_port}", name, READY_TIMEOUT_S)
        _report(published_run_to_http_ready_s=round(ready_s, 2))
        assert _health(f"127.0.0.1:{grpc_port}") == "SERVING"
        _rest_matches_grpc(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", repository, "mlp", seed=12)
    finally:
        _engine("rm", "-f", "--time", "5", name, check=False)


def test_sigterm_drains_in_flight_requests_and_exits_0(container, repository):
    """Slow requests in flight when SIGTERM arrives all finish, correctly; exit status 0."""
    import tritonclient.grpc as tc

    # posts (conv/pool stack, three heads): its cost grows with the sequence length, so a request
    # can be made to take about a second in the container, long enough to be surely in flight
    model, spec = "posts", _model_json(repository, "posts")
    batch = max(1, min(32, spec.get("max_batch_size") or 32))
    length, took = 512, 0.0
    while True:
        inputs = _inputs(spec, batch=batch, length=length, seed=0)
        t = time.monotonic()
        _triton_infer(container["target"], model, spec, inputs, timeout=120)
        took = time.monotonic() - t
        if took >= 1.0 or length >= 32768:
            break
        length *= 2
    print(f"in-flight requests: {model} batch {batch} x length {length}, {took:.2f}s each")

    n = 4
    requests = [_inputs(spec, batch=batch, length=length, seed=100 + i) for i in range(n)]
    results: list[dict | Exception | None] = [None] * n
    finished_at: list[float] = [0.0] * n
    started = threading.Barrier(n + 1)

    def call(i: int) -> None:
        client = tc.InferenceServerClient(container["target"])
        try:
            started.wait()
            results[i] = _triton_infer(container["target"], model, spec, requests[i], client=client, timeout=120)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = exc
        finally:
            finished_at[i] = time.monotonic()
            client.close()

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    started.wait()
    time.sleep(min(0.5, took / 3))  # the requests have reached the server, none can have finished
    stop_at = time.monotonic()
    stop = _engine("stop", "--time", "60", container["name"], check=False, timeout=120)
    stopped_s = time.monotonic() - stop_at
    for th in threads:
        th.join(timeout=120)

    exit_code = _engine("inspect", "--format", "{{.State.ExitCode}}", container["name"]).stdout.strip()
    logs = _logs(container["name"], 40)
    _report(sigterm_to_exit_s=round(stopped_s, 2), in_flight_requests=n, exit_code=exit_code,
            in_flight_request_s=round(took, 2), in_flight_finished_after_stop_s=round(max(finished_at) - stop_at, 2))
    failures = [f"request {i}: {r!r}" for i, r in enumerate(results) if not isinstance(r, dict)]
    assert not failures, "in-flight requests failed on SIGTERM:\n" + "\n".join(failures) + f"\n{logs}"
    for i, result in enumerate(results):
        _assert_close(result, _reference(repository, model, requests[i]), f"in-flight request {i}")
    assert min(finished_at) > stop_at, "a request finished before SIGTERM was sent: not in flight"
    assert stop.returncode == 0, stop.stderr
    assert exit_code == "0", f"exit status {exit_code} after SIGTERM (137 = killed, it did not drain)\n{logs}"
    # once it has gone, the port is closed
    assert _health(container["target"], timeout=1) == "UNAVAILABLE"
