"""A closed-loop load with request shapes drawn at random (the padding-vs-grouping measurement).

perf_analyzer cannot make this load: each of its concurrency contexts walks the --input-data
samples in the same order, in step with the others, so concurrent requests mostly have the SAME
shape and grouping by shape batches as well as padding does. Here every request picks a sample at
random, so concurrent requests have different lengths, as independent clients would send them.

  python bench/mixed_load.py --port 8501 --model qa --data pa_qa_mixed.json --concurrency 32
         [--streaming] [--seconds 4] [--warmup 1]   ->  one JSON line: infer_s, p50_ms, p99_ms

Requests are encoded once, up front; the client sends raw bytes (grpc.aio, no per-request
encoding), one stream per concurrency slot in --streaming mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pa_data  # noqa: E402

from mimo.protos import codec  # noqa: E402
from mimo.protos import grpc_service_pb2 as pb  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


async def run(args) -> dict:
    document = json.loads(Path(args.data).read_text())
    payloads = [codec.encode_infer_request(args.model, feeds).SerializeToString()
                for feeds in pa_data.as_arrays(document)]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{args.port}")
    await channel.channel_ready()
    latencies: list[float] = []
    errors = 0
    recording = False
    stop_at = time.perf_counter() + args.warmup + args.seconds
    rng = random.Random(args.seed)

    async def unary_slot():
        nonlocal errors
        call = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await call(rng.choice(payloads), timeout=30)
            except grpc.RpcError:
                errors += 1
                continue
            if recording:
                latencies.append(time.perf_counter() - started)

    async def stream_slot():
        nonlocal errors
        call = channel.stream_stream(STREAM, request_serializer=None, response_deserializer=None)()
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await call.write(rng.choice(payloads))
            reply = pb.ModelStreamInferResponse.FromString(await call.read())
            if reply.error_message:
                errors += 1
                continue
            if recording:
                latencies.append(time.perf_counter() - started)
        await call.done_writing()

    slot = stream_slot if args.streaming else unary_slot
    tasks = [asyncio.ensure_future(slot()) for _ in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    recording = True
    began = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    await channel.close()
    lat = np.array(latencies) * 1000
    return {"infer_s": len(lat) / elapsed, "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None, "count": len(lat), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8501)
    ap.add_argument("--model", default="qa")
    ap.add_argument("--data", required=True)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--streaming", action="store_true")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    print(json.dumps(asyncio.run(run(ap.parse_args()))))


if __name__ == "__main__":
    main()
