"""Single-request latency through `mimo serve` per backend, next to in-process ONNX Runtime.

    python bench/request_latency.py --repository models [--models mlp qa] [--requests 500]

Starts `mimo serve` as a subprocess for each backend (batching off: one request at a time), sends
sequential batch-1 requests with a plain gRPC stub and mimo's codec, and reports the median and
p99 next to `session.run` on the same inputs in this process (the floor) as a ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc


def inputs_for(model: str) -> dict:
    rng = np.random.default_rng(0)
    if model == "mlp":
        return {"x": rng.random((1, 64), dtype=np.float32)}
    if model == "qa":
        return {"text": rng.integers(1, 10000, (1, 100), dtype=np.int32),
                "question": rng.integers(1, 10000, (1, 20), dtype=np.int32)}
    if model == "posts":
        return {"posts": rng.integers(1, 50000, (1, 300), dtype=np.int32)}
    raise SystemExit(f"no inputs defined for {model}")


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q))


def time_calls(call, count: int) -> list[float]:
    for _ in range(min(50, count)):
        call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def in_process(repository: Path, model: str, count: int) -> list[float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    feeds = inputs_for(model)
    return time_calls(lambda: session.run(None, feeds), count)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def through_server(repository: Path, backend: str, models: list[str], count: int) -> dict[str, list[float]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mimo", "serve", "--model-repository", str(repository), "--port", str(port),
         "--metrics-port", "0", "--http-port", "0", "--backend", backend, "--no-batching", "--log-level", "WARNING"],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        deadline = time.monotonic() + 300
        while True:
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("server did not become ready")
            time.sleep(0.2)
        results = {}
        for model in models:
            request = codec.encode_infer_request(model, inputs_for(model))
            results[model] = time_calls(lambda: codec.decode_infer_response(stub.ModelInfer(request)), count)
        return results
    finally:
        process.terminate()
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--models", nargs="+", default=["mlp", "qa"])
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    floor = {m: in_process(args.repository, m, args.requests) for m in args.models}
    rows = []
    for backend in ("onnxruntime", "tensorflow"):
        served = through_server(args.repository, backend, args.models, args.requests)
        for model in args.models:
            p50, floor_p50 = statistics.median(served[model]), statistics.median(floor[model])
            rows.append((model, backend, p50 * 1e3, percentile(served[model], 99) * 1e3, floor_p50 * 1e3,
                         p50 / floor_p50))
    print("| model | backend | server p50 ms | server p99 ms | in-process ORT p50 ms | ratio p50 |")
    print("|---|---|---:|---:|---:|---:|")
    for model, backend, p50, p99, floor_p50, ratio in rows:
        print(f"| {model} | {backend} | {p50:.3f} | {p99:.3f} | {floor_p50:.4f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
