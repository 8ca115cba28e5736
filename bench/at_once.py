"""Two mimo servers on core 0 at once, one perf_analyzer each on core 1: server CPU per request of A
against B, measured in the same seconds, so the machine's slow spells fall on both alike.

Throughput is no measure here (the two share the core as the kernel's scheduler decides, so they
serve about the same); CPU time per request (from /proc, and the servers' statistics) is. The same
build on both sides gives ratios of 0.995-1.007. A and B differ by flags, environment, or the
native transport's build (a .so, copied in place while that server starts; a running server keeps
the file it loaded):

  python bench/at_once.py --b-flags=--no-batching
  python bench/at_once.py --a-transport /tmp/old.so --b-transport /tmp/new.so --models qa mlp --modes unary streaming
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pa_data  # noqa: E402
import run  # noqa: E402

TRANSPORT = next((run.PROJECT / "serving").glob("_transport*.so"), None)


def serve(name: str, port: int, repo: Path, models: list[str], flags: str, env: str, transport: Path | None,
          out: Path):
    if transport is not None:
        if TRANSPORT is None:
            raise SystemExit("no built transport in serving/ to replace (make install)")
        shutil.copy(transport, TRANSPORT.with_suffix(".tmp"))
        os.replace(TRANSPORT.with_suffix(".tmp"), TRANSPORT)  # a new file: a running server keeps its own
    variables = dict(item.split("=", 1) for item in shlex.split(env))
    server = run.start(run.mimo_serve(repo, port, *shlex.split(flags)), out / f"{name}.server.log", env=variables)
    run.wait_ready(port, models, server)
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=HERE / ".cache" / "repo", help="mlp, qa and posts exported")
    for side in ("a", "b"):
        ap.add_argument(f"--{side}-flags", default="", help=f"mimo serve flags of {side.upper()}")
        ap.add_argument(f"--{side}-env", default="", help=f"VAR=value ... for {side.upper()}")
        ap.add_argument(f"--{side}-transport", type=Path, default=None, help=f"the native transport .so {side.upper()} runs")
    ap.add_argument("--models", nargs="+", default=["qa", "mlp", "posts"])
    ap.add_argument("--modes", nargs="+", default=["unary"], choices=["unary", "streaming"])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--window-ms", type=int, default=4000)
    ap.add_argument("--perf-analyzer", type=Path, default=run.PROJECT / ".venv-pa" / "bin" / "perf_analyzer")
    args = ap.parse_args()
    out = run.PROJECT / "bench" / "results" / "at_once"
    out.mkdir(parents=True, exist_ok=True)
    data = pa_data.write(out / "data")
    ports = {"A": 8611, "B": 8612}
    kept = TRANSPORT.read_bytes() if TRANSPORT is not None and (args.a_transport or args.b_transport) else None
    servers = {}
    try:
        for name, port in ports.items():
            side = name.lower()
            servers[name] = serve(name, port, args.repo, args.models, getattr(args, f"{side}_flags"),
                                  getattr(args, f"{side}_env"), getattr(args, f"{side}_transport"), out)
        ratios: dict[tuple, list[float]] = {}
        for turn in range(args.rounds):
            for model in args.models:
                for mode in args.modes:
                    before = {n: (run.cpu_seconds(s.pid), run.server_counts(ports[n], model)[0]) for n, s in servers.items()}
                    clients = {n: subprocess.Popen(
                        ["taskset", "-c", run.CLIENT_CORE, str(args.perf_analyzer), "-m", model, "-u", f"127.0.0.1:{ports[n]}",
                         "-i", "grpc", "--input-data", str(data[model]), "--concurrency-range", f"{args.concurrency}:{args.concurrency}",
                         "-p", str(args.window_ms), "--max-trials", "3", "--stability-percentage", "999",
                         "-f", str(out / f"{n}.csv")] + (["--streaming"] if mode == "streaming" else []),
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in servers}
                    for client in clients.values():
                        client.wait()
                    cpu_us = {}
                    for n, s in servers.items():
                        cpu, count = before[n]
                        cpu_us[n] = 1e6 * (run.cpu_seconds(s.pid) - cpu) / max(1, run.server_counts(ports[n], model)[0] - count)
                    served = {n: float(next(csv.DictReader(open(out / f"{n}.csv")))["Inferences/Second"]) for n in servers}
                    ratios.setdefault((model, mode), []).append(cpu_us["A"] / cpu_us["B"])
                    print(f"round {turn + 1} {model} {mode} c={args.concurrency}: CPU per request A {cpu_us['A']:.1f} us, "
                          f"B {cpu_us['B']:.1f} us, A/B {ratios[(model, mode)][-1]:.3f} (infer/s A {served['A']:,.0f}, "
                          f"B {served['B']:,.0f}; load {os.getloadavg()[0]:.1f})", flush=True)
        for (model, mode), values in ratios.items():
            print(f"{model} {mode}: CPU per request A / B = " + ", ".join(f"{v:.3f}" for v in values))
    finally:
        for server in servers.values():
            run.stop(server)
        if kept is not None:  # the build that was there before
            TRANSPORT.with_suffix(".tmp").write_bytes(kept)
            os.replace(TRANSPORT.with_suffix(".tmp"), TRANSPORT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
