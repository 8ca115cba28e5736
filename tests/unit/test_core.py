"""The protocol-free core and the HTTP front end's routing, on a fake backend: no export, no
TensorFlow, no socket. The core takes numpy arrays and plain values and raises the error family;
each protocol maps the family in one place (every status has a gRPC code and an HTTP status)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest

from mimo.protos.repository import ModelSpec
from mimo.serving.core.backends.base import Backend
from mimo.serving.core.core import Core
from mimo.serving.core.errors import (
    DeadlineExceeded, InvalidArgument, NotFound, PermissionDenied, Status, Unauthenticated, Unavailable,
)
from mimo.serving.core.registry import READY, UNAVAILABLE, ModelEntry, ModelVersion
from mimo.serving.core.scheduler import Scheduler, SchedulerOptions
from mimo.serving.core.statistics import ModelStats
from mimo.serving.frontends.grpc_status import GRPC_CODES, grpc_status
from mimo.serving.frontends.http_router import HttpFrontEnd
from mimo.serving.frontends.http_status import HTTP_STATUSES
from mimo.serving.settings import ServerSettings
from mimo.serving.transports.base import HttpRequest

SPEC = {
    "name": "twice",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
    "outputs": [{"name": "double", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "total", "datatype": "FP32", "shape": [-1, 1]}],
    "signatures": {"serving_default": {"inputs": ["x"], "outputs": ["double", "total"]},
                   "total": {"inputs": ["x"], "outputs": ["total"]}},
    "max_batch_size": 8,
}


class Twice(Backend):
    platform = "fake_platform"

    def __init__(self):
        self.calls = 0

    def load(self):
        pass

    def describe(self):
        return {}

    def predict(self, inputs, outputs, signature="serving_default"):
        self.calls += 1
        x = inputs["x"]
        every = {"double": x * 2, "total": x.sum(axis=1, keepdims=True)}
        return {name: every[name] for name in outputs}


def _core(**overrides) -> tuple[Core, Twice]:
    settings = ServerSettings(model_repository=Path("/nonexistent"), http_port=0, metrics_port=0, **overrides)
    core = Core(settings)
    backend = Twice()
    spec = ModelSpec.from_json(dict(SPEC))
    stats = ModelStats("twice", "3")
    version = ModelVersion("twice", 3, Path("/nonexistent/twice/3"), backend_kind="fake", state=READY, spec=spec,
                           backend=backend, stats=stats,
                           scheduler=Scheduler(backend, stats, SchedulerOptions(execution="inline"), "twice"))
    broken = ModelVersion("twice", 4, Path("/nonexistent/twice/4"), state=UNAVAILABLE, reason="bad file")
    core.registry.models["twice"] = ModelEntry("twice", Path("/nonexistent/twice"), {}, "", {3: version, 4: broken})
    core._loaded = True
    return core, backend


def run(coroutine):
    return asyncio.run(coroutine)


def test_infer_validates_then_runs_and_returns_the_heads_asked_for():
    core, backend = _core()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = run(core.infer("twice", "", {"x": x}))
    assert (result.model, result.version, sorted(result.outputs)) == ("twice", 3, ["double", "total"])
    np.testing.assert_array_equal(result.outputs["double"], x * 2)
    only = run(core.infer("twice", "3", {"x": x}, ["total"])).outputs
    assert list(only) == ["total"] and only["total"].tolist() == [[3.0], [12.0]]
    by_signature = run(core.infer("twice", "", {"x": x}, (), "total")).outputs
    assert list(by_signature) == ["total"]
    with pytest.raises(InvalidArgument, match="'x'"):
        run(core.infer("twice", "", {"x": np.ones((2, 4), np.float32)}))
    with pytest.raises(InvalidArgument, match="FP32"):
        run(core.infer("twice", "", {"x": np.ones((2, 3), np.int32)}))
    assert backend.calls == 3  # refused requests never reach the backend


def test_unknown_models_versions_and_a_passed_deadline_are_their_own_errors():
    core, backend = _core()
    x = {"x": np.ones((1, 3), np.float32)}
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        run(core.infer("nope", "", x))
    with pytest.raises(NotFound, match="no version '9'"):
        run(core.infer("twice", "9", x))
    with pytest.raises(Unavailable, match="bad file"):
        run(core.infer("twice", "4", x))
    with pytest.raises(DeadlineExceeded):
        run(core.infer("twice", "", x, timeout=0))
    assert backend.calls == 0
    stats = core.statistics("twice")[0]
    assert stats.fail.count == 1 and stats.success.count == 0  # the deadline counted on its version


class Collected:
    """A reply as a bulk front end passes one: what the core answered, in order."""

    def __init__(self):
        self.answers = []
        self.over = False

    def done(self):
        return self.over

    def set_result(self, result):
        self.answers.append(result)

    def set_exception(self, exc):
        self.answers.append(exc)


def test_submit_answers_a_reply_once_counts_once_and_a_cancelled_request_never_runs():
    core, backend = _core()
    version = core.registry.models["twice"].versions[3]
    # Worker threads: a request waits in the queue while another runs, so it can be cancelled there.
    version.scheduler = Scheduler(backend, version.stats, SchedulerOptions(execution="thread"), "twice")
    x = {"x": np.ones((1, 3), np.float32)}

    async def main():
        good, bad, gone, unknown = Collected(), Collected(), Collected(), Collected()
        core.submit("twice", "", x, (), "", None, good)
        core.submit("twice", "", {"x": np.ones((1, 4), np.float32)}, (), "", None, bad)
        answer = core.submit("twice", "", x, (), "", None, gone)
        answer.cancel()  # the client went away before its batch ran
        core.submit("nope", "", x, (), "", None, unknown)
        assert isinstance(bad.answers[0], InvalidArgument) and isinstance(unknown.answers[0], NotFound)
        for _ in range(200):
            if good.answers:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return good, bad, gone, unknown

    good, bad, gone, unknown = run(main())
    assert [len(r.answers) for r in (good, bad, gone, unknown)] == [1, 1, 0, 1]
    assert good.answers[0].outputs["total"].tolist() == [[3.0]] and good.answers[0].version == 3
    assert backend.calls == 1  # the cancelled request never ran
    stats = core.statistics("twice")[0]
    assert (stats.success.count, stats.fail.count, core.in_flight()) == (1, 2, 0)


def test_metadata_index_versions_and_statistics_are_plain_values():
    core, _ = _core()
    info = core.model("twice")
    assert (info.name, info.version, info.ready_versions, info.platform, info.backend) == \
        ("twice", 3, (3,), "fake_platform", "fake")
    assert [t.name for t in info.spec.outputs] == ["double", "total"]
    assert [(v.version, v.state, v.reason) for v in core.versions("twice")] == \
        [(3, "READY", ""), (4, "UNAVAILABLE", "bad file")]
    with pytest.raises(NotFound, match="no version 7"):
        core.versions("twice", 7)
    assert [(v.version, v.state) for v in core.index(ready_only=True)] == [(3, "READY")]
    run(core.infer("twice", "", {"x": np.ones((2, 3), np.float32)}))
    snapshot = core.statistics("twice", "3")[0]
    assert (snapshot.success.count, snapshot.inference_count, dict(snapshot.batches)[2].count) == (1, 2, 1)
    run(core.infer("twice", "", {"x": np.ones((1, 3), np.float32)}))
    assert snapshot.success.count == 1  # a copy: later requests do not change it
    with pytest.raises(NotFound):
        core.statistics("nope")


def test_readiness_follows_loading_draining_and_strict_readiness():
    core, _ = _core()
    assert core.live() and core.ready() and core.model_ready("twice") and not core.model_ready("twice", "4")
    strict, _ = _core(strict_readiness=True)
    assert not strict.ready()  # version 4 is not ready
    core.begin_drain()
    assert not core.ready() and core.live()


def test_model_control_is_off_by_default_and_takes_the_admin_token():
    core, _ = _core()
    with pytest.raises(PermissionDenied, match="--model-control-mode explicit"):
        run(core.unload("twice"))
    guarded, _ = _core(model_control_mode="explicit", admin_token="s3cret")
    with pytest.raises(Unauthenticated, match="admin token"):
        run(guarded.unload("twice", "Bearer wrong"))
    run(guarded.unload("twice", "Bearer s3cret"))
    assert guarded.index() == [guarded.index()[0]] and guarded.index()[0].version is None  # nothing loaded


def test_every_status_has_one_grpc_code_and_one_http_status():
    assert set(GRPC_CODES) == set(Status) == set(HTTP_STATUSES)
    assert all(GRPC_CODES[s].name == s.name for s in Status)
    assert grpc_status(NotFound("x")) == (grpc.StatusCode.NOT_FOUND, "x")
    assert grpc_status(RuntimeError("secret internals")) == (grpc.StatusCode.INTERNAL, "internal error (RuntimeError)")
    assert HTTP_STATUSES[Status.INVALID_ARGUMENT] == 400 and HTTP_STATUSES[Status.UNAVAILABLE] == 503
    assert HTTP_STATUSES[Status.RESOURCE_EXHAUSTED] == 429 and HTTP_STATUSES[Status.DEADLINE_EXCEEDED] == 504


def _http(front: HttpFrontEnd, method: str, path: str, body: bytes = b"", **headers):
    request = HttpRequest(method, path, tuple((k.replace("_", "-"), v) for k, v in headers.items()), body)
    response = run(front.handle(request))
    return response.status, (orjson.loads(response.body) if response.body else None), dict(response.headers)


def test_http_front_end_routes_both_dialects_and_never_answers_200_for_what_is_no_endpoint():
    core, _ = _core()
    front = HttpFrontEnd(core, core.settings)
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
    status, answer, _ = _http(front, "POST", "/v2/models/twice/infer", body)
    assert status == 200 and {o["name"]: o["data"] for o in answer["outputs"]} == {"double": [2, 4, 6], "total": [6]}
    status, answer, _ = _http(front, "POST", "/v1/models/twice/versions/3:predict",
                              orjson.dumps({"signature_name": "total", "instances": [[1, 2, 3]]}))
    assert (status, answer) == (200, {"predictions": [[6.0]]})
    assert _http(front, "GET", "/v2/models/twice/versions/4/ready")[:2] == (503, {"error": "model 'twice' version 4 "
                                                                                   "is unavailable: bad file"})
    assert _http(front, "GET", "/v2/models/n%C3%B6pe")[:2] == (404, {"error": "unknown model 'nöpe'"})
    status, answer, _ = _http(front, "GET", "/v3/anything")
    assert status == 404 and "no endpoint /v3/anything" in answer["error"]
    status, answer, headers = _http(front, "GET", "/v2/models/twice/infer")
    assert status == 405 and headers["allow"] == "POST"
    status, answer, _ = _http(front, "POST", "/v1/models/twice:classify", b"{}")
    assert status == 404 and "':classify' is not served" in answer["error"]


def test_http_front_end_takes_the_token_except_on_health():
    core, _ = _core(token="t0ken")
    front = HttpFrontEnd(core, core.settings)
    assert _http(front, "GET", "/v2/health/ready")[0] == 200
    status, answer, headers = _http(front, "GET", "/v2/models/twice")
    assert status == 401 and "bearer token" in answer["error"] and headers["www-authenticate"] == "Bearer"
    assert _http(front, "GET", "/v2/models/twice", authorization="Bearer wrong")[0] == 401
    assert _http(front, "GET", "/v2/models/twice", authorization="Bearer t0ken")[0] == 200
    # Load/unload: model control is off (403) even with the token; without it, 401 first.
    assert _http(front, "POST", "/v2/repository/models/twice/unload")[0] == 401
    assert _http(front, "POST", "/v2/repository/models/twice/unload", authorization="Bearer t0ken")[0] == 403
