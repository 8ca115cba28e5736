"""`make soak`: a bounded soak of `mimo serve` (not part of `make test`).

c concurrent callers (default 64) cycle over mlp, qa and posts for N minutes against a `mimo serve`
subprocess, and the report gives requests, requests/s, errors by status code, and the server's
RSS after the first minute (allocators settled) against the end.

  python bench/soak.py --minutes 10 [--concurrency 64] [--repository models]

The repository must hold mlp, qa and posts; when it lacks one, they are exported small into a
temporary folder first.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("mlp", "qa", "posts")


def rss_mb(pid: int) -> float:
    """Resident memory of the server and its children (workers), in MB."""
    total = 0
    for p in [pid] + _children(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        found = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return found + [g for c in found for g in _children(c)]


def requests_for(repository: Path) -> dict[str, dict[str, np.ndarray]]:
    from mimo.protos.examples import example_inputs
    from mimo.protos.repository import read_model_json

    made = {}
    for model in MODELS:
        spec = read_model_json(repository / model)
        tensors = [(t.name, t.datatype, t.shape) for t in spec.inputs]
        made[model] = example_inputs(tensors, spec.raw.get("constraints", {}), np.random.default_rng(0), 1, 300)
    return made


async def caller(client, requests, stop_at: float, counts: collections.Counter, errors: collections.Counter,
                 offset: int) -> None:
    from mimo.client import InferenceError

    turn = offset
    while time.monotonic() < stop_at:
        model = MODELS[turn % len(MODELS)]
        turn += 1
        try:
            await client.predict(model, requests[model], timeout=30)
            counts[model] += 1
        except InferenceError as exc:
            errors[exc.code.name] += 1


async def soak(address: str, requests, minutes: float, concurrency: int, pid: int) -> dict:
    from mimo.client import AsyncClient

    counts, errors = collections.Counter(), collections.Counter()
    async with AsyncClient(address, local_checks=False) as client:
        await client.wait_until_ready(120)
        started = time.monotonic()
        stop_at = started + minutes * 60
        tasks = [asyncio.ensure_future(caller(client, requests, stop_at, counts, errors, i)) for i in range(concurrency)]
        samples = []
        while not all(t.done() for t in tasks):
            await asyncio.sleep(5)
            samples.append((time.monotonic() - started, rss_mb(pid)))
        await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    settled = next((mb for t, mb in samples if t >= 60), samples[0][1] if samples else 0.0)
    return {"seconds": elapsed, "counts": counts, "errors": errors, "rss_settled": settled,
            "rss_end": samples[-1][1] if samples else 0.0, "rss_peak": max((mb for _, mb in samples), default=0.0)}


def ensure_repository(path: Path | None) -> Path:
    if path and all((path / m / "model.json").is_file() for m in MODELS):
        return path
    out = Path(tempfile.mkdtemp(prefix="mimo-soak-"))
    print(f"exporting {', '.join(MODELS)} (small) into {out}", flush=True)
    subprocess.run([sys.executable, "-m", "mimo", "export", "--models", *MODELS, "--out", str(out),
                    "--epochs", "1", "--samples", "64", "--quiet"], check=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repository", type=Path, default=None)
    args = parser.parse_args()
    repository = ensure_repository(args.repository)
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="mimo-soak-server-", suffix=".log", delete=False)
    server = subprocess.Popen([sys.executable, "-m", "mimo", "serve", "--model-repository", str(repository),
                               "--port", str(port), "--metrics-port", "0", "--http-port", "0"],
                              stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        result = asyncio.run(soak(f"127.0.0.1:{port}", requests_for(repository), args.minutes,
                                  args.concurrency, server.pid))
    except Exception:
        print(f"the server's log ({log.name}):\n" + Path(log.name).read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    total = sum(result["counts"].values())
    growth = 100 * (result["rss_end"] - result["rss_settled"]) / max(result["rss_settled"], 1e-9)
    print(f"soak: {args.minutes:g} min, c={args.concurrency}, models {', '.join(MODELS)}")
    print(f"requests: {total:,} ({total / result['seconds']:,.0f}/s); "
          + ", ".join(f"{m} {n:,}" for m, n in sorted(result["counts"].items())))
    print("errors: " + (", ".join(f"{code} {n:,}" for code, n in sorted(result["errors"].items())) or "none"))
    print(f"server RSS: {result['rss_settled']:.0f} MB after the first minute, {result['rss_end']:.0f} MB at the end "
          f"({growth:+.1f}%), peak {result['rss_peak']:.0f} MB")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
