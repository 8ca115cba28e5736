"""Who may load and unload models (RepositoryModelLoad/Unload), what a load may name, and the gauges."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from prometheus_client import REGISTRY, generate_latest

from helpers import sample_inputs, start_server
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc
from mimo.serving.metrics import RegistryCollector


def _repository(tmp_path, exported_repo, models):
    """A repository of symlinked version folders (the models stay where the session exported them)."""
    repo = tmp_path / "repo"
    for name in models:
        (repo / name).mkdir(parents=True)
        shutil.copy(exported_repo / name / "model.json", repo / name / "model.json")
        (repo / name / "1").symlink_to(exported_repo / name / "1")
    return repo


def _stub(srv):
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.address))


def _load(stub, name, token=None, **request):
    metadata = [("authorization", f"Bearer {token}")] if token else None
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name, **request), timeout=60, metadata=metadata)


def _unload(stub, name, token=None):
    metadata = [("authorization", f"Bearer {token}")] if token else None
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name), timeout=60, metadata=metadata)


def _refused(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(*args, **kwargs)
    return error.value


def test_model_control_is_off_by_default(exported_repo, tmp_path):
    with start_server(_repository(tmp_path, exported_repo, ["mlp"])) as srv:
        stub = _stub(srv)
        for call in (_unload, _load):
            error = _refused(call, stub, "mlp")
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "--model-control-mode explicit" in error.details()
        assert stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready
        assert [m.state for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models] == ["READY"]


def test_explicit_mode_with_an_admin_token(exported_repo, tmp_path):
    """Inference takes the token, load/unload the admin token (and only it)."""
    repo = _repository(tmp_path, exported_repo, ["mlp"])
    with start_server(repo, model_control_mode="explicit", token="infer-secret", admin_token="admin-secret") as srv:
        stub = _stub(srv)
        for wrong in (None, "wrong", "infer-secret"):
            error = _refused(_unload, stub, "mlp", wrong)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "admin token" in error.details()
        request = codec.encode_infer_request("mlp", sample_inputs(exported_repo, "mlp", 1))
        stub.ModelInfer(request, timeout=30, metadata=[("authorization", "Bearer infer-secret")])
        _unload(stub, "mlp", "admin-secret")
        assert not stub.ModelReady(pb.ModelReadyRequest(name="mlp"),
                                   metadata=[("authorization", "Bearer infer-secret")]).ready
        assert _refused(_load, stub, "mlp", "wrong").code() == grpc.StatusCode.UNAUTHENTICATED
        _load(stub, "mlp", "admin-secret")
        stub.ModelInfer(request, timeout=30, metadata=[("authorization", "Bearer infer-secret")])


def test_a_load_names_a_folder_of_the_repository_and_nothing_else(exported_repo, tmp_path):
    repo = _repository(tmp_path, exported_repo, ["mlp"])
    outside = tmp_path / "outside"
    shutil.copytree(repo / "mlp", outside, symlinks=True)
    (repo / "escape").symlink_to(outside)
    with start_server(repo, model_control_mode="explicit") as srv:
        stub = _stub(srv)
        for name in (str(outside), str(repo / "mlp"), "../outside", "./mlp/.", "mlp/../mlp", "mlp/", "."):
            error = _refused(_load, stub, name)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert f"model name {name!r} is not a folder name" in error.details()
        error = _refused(_load, stub, "escape")
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "model folder 'escape' links outside the repository" in error.details()
        assert _refused(_load, stub, "nope").code() == grpc.StatusCode.NOT_FOUND
        override = {"file:1/model.onnx": pb.ModelRepositoryParameter(bytes_param=b"\0")}
        error = _refused(_load, stub, "mlp", parameters=override)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "file:1/model.onnx" in error.details()
        loaded = {name: list(entry.versions) for name, entry in srv.server.registry.models.items()}
        assert loaded == {"mlp": [1], "escape": []}  # escape: listed at start (its model.json names mlp)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))


def test_one_loaded_copy_however_the_model_is_named_or_often_loaded(exported_repo, tmp_path):
    """Ten spellings of posts' folder once loaded ten copies (RSS 172 -> 719 MB); concurrent loads
    of an unloaded model load it once."""
    repo = _repository(tmp_path, exported_repo, ["posts"])
    with start_server(repo, model_control_mode="explicit") as srv:
        stub, registry = _stub(srv), srv.server.registry
        served, before = registry.get("posts"), _rss_mb()
        spellings = ["posts"] + [str(repo) + "/." * k + "/posts" for k in range(1, 10)]
        for name in spellings:
            try:
                _load(stub, name)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(registry.models) == ["posts"] and registry.get("posts") is served
        assert _rss_mb() - before < 30  # a copy of posts is ~55 MB
        _unload(stub, "posts")
        loads = []
        original = registry._load_version

        async def counted(*args):
            loads.append(args)
            return await original(*args)

        registry._load_version = counted
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda _: _load(stub, "posts"), range(6)))
        assert len(loads) == 1 and stub.ModelReady(pb.ModelReadyRequest(name="posts")).ready


def test_gauges_follow_queue_in_flight_and_state(exported_repo, tmp_path):
    repo = _repository(tmp_path, exported_repo, ["mlp"])
    with start_server(repo, execution="thread", instances=1, batching=False) as srv:
        version = srv.server.registry.get("mlp")
        release, predict = threading.Event(), version.backend.predict

        def held(*args):
            release.wait(30)
            return predict(*args)

        version.backend.predict = held  # one execution at a time, held: the others queue
        collector = RegistryCollector()
        collector.watch(srv.server.registry)

        def gauges() -> dict:
            return {(s.name, s.labels.get("state")): s.value for f in collector.collect() for s in f.samples
                    if s.labels["model"] == "mlp" and s.labels["version"] == "1"}

        request = codec.encode_infer_request("mlp", sample_inputs(exported_repo, "mlp", 1))
        stub = _stub(srv)
        with ThreadPoolExecutor(3) as pool:
            calls = [pool.submit(stub.ModelInfer, request, timeout=30) for _ in range(3)]
            deadline = time.monotonic() + 20
            while gauges()[("mimo_inflight_requests", None)] < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            seen = gauges()
            release.set()
            [call.result() for call in calls]
        assert seen[("mimo_inflight_requests", None)] == 3 and seen[("mimo_queue_depth", None)] == 2
        assert seen[("mimo_model_state", "READY")] == 1 and seen[("mimo_model_state", "UNAVAILABLE")] == 0
        after = gauges()
        assert after[("mimo_inflight_requests", None)] == 0 and after[("mimo_queue_depth", None)] == 0
        scraped = generate_latest(REGISTRY).decode()
        assert "mimo_queue_depth{" in scraped and 'mimo_model_state{model="mlp",state="READY",version="1"} 1.0' in scraped
        assert "_created" not in scraped
