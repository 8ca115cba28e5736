"""Floor (i): ONNX Runtime called in-process, no serving stack (1 intra-op thread, as served).

Usage: python bench/floor_ort.py REPO --out FILE.json [--seconds S] [--models mlp qa posts]
For each model: batch 1 latency (p50/p99 us) and calls/s, and rows/s at batch 8 and 32, using the
bench's own input data shapes (qa length 100, posts length 300). Bounded by --seconds per case.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import pa_data


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(samples: list[dict], batch: int) -> dict:
    return {name: np.concatenate([samples[i % len(samples)][name] for i in range(batch)])
            for name in samples[0]}


def measure(sess, feeds, seconds: float) -> dict:
    names = [o.name for o in sess.get_outputs()]
    for _ in range(20):
        sess.run(names, feeds)
    times = []
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        sess.run(names, feeds)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 > end:
            break
    lat = np.array(times) * 1e6
    return {"calls_per_s": len(lat) / lat.sum() * 1e6, "p50_us": float(np.percentile(lat, 50)),
            "p99_us": float(np.percentile(lat, 99))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("repo", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--models", nargs="+", default=["mlp", "qa", "posts"])
    ap.add_argument("--data", default=None, help="dataset name override, e.g. qa=qa_mixed")
    a = ap.parse_args()
    data = pa_data.datasets()
    results = {}
    for model in a.models:
        sess = session(a.repo / model / "1" / "model.onnx")
        samples = pa_data.as_arrays(data[model])
        row = {}
        for batch in (1, 8, 32):
            m = measure(sess, feeds_for(samples, batch), a.seconds)
            row[batch] = {**m, "rows_per_s": m["calls_per_s"] * batch}
        results[model] = row
        print(f"{model:6s} batch 1: {row[1]['calls_per_s']:8.0f} calls/s p50 {row[1]['p50_us']:7.1f} us "
              f"p99 {row[1]['p99_us']:7.1f} us | batch 8: {row[8]['rows_per_s']:8.0f} rows/s | "
              f"batch 32: {row[32]['rows_per_s']:8.0f} rows/s", flush=True)
    a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
