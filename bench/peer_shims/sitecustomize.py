"""make bench only: MLServer's REST API has no model-config or statistics endpoint, which
perf_analyzer -i http reads before (and during) a run ("failed to get model config"). With
MIMO_BENCH_MLSERVER_REST_SHIM=1 on PYTHONPATH, MLServer's REST app gets metadata-only answers for
the bench's two models, as ../shared/peers/mlserver/run_mlserver.py adds them over gRPC. Inference
stays MLServer's own."""

import os

if os.environ.get("MIMO_BENCH_MLSERVER_REST_SHIM") == "1":
    from mlserver.rest import server as _server

    _TENSORS = {
        "mlp": ([("x", "TYPE_FP32", [64])], [("probs", "TYPE_FP32", [10])]),
        "qa": ([("text", "TYPE_INT32", [-1]), ("question", "TYPE_INT32", [-1])], [("answer", "TYPE_FP32", [500])]),
    }
    _create_app = _server.create_app

    def _config(name: str, version: str = ""):
        inputs, outputs = _TENSORS[name]
        tensor = lambda n, t, d: {"name": n, "data_type": t, "dims": d}  # noqa: E731
        return {"name": name, "platform": "mlserver", "max_batch_size": 32,
                "input": [tensor(*i) for i in inputs], "output": [tensor(*o) for o in outputs]}

    def _stats(name: str, version: str = ""):
        zero = {"count": 0, "ns": 0}
        durations = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                     "cache_hit", "cache_miss")
        return {"model_stats": [{"name": name, "version": version or "1", "last_inference": 0,
                                 "inference_count": 0, "execution_count": 0,
                                 "inference_stats": {d: dict(zero) for d in durations}, "batch_stats": []}]}

    def create_app(*args, **kwargs):
        app = _create_app(*args, **kwargs)
        for suffix, endpoint in (("config", _config), ("stats", _stats)):
            for path in (f"/v2/models/{{name}}/{suffix}", f"/v2/models/{{name}}/versions/{{version}}/{suffix}"):
                app.add_api_route(path, endpoint, methods=["GET"])
        return app

    _server.create_app = create_app
