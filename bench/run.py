"""`make bench`: mimo against its floors, and with --peers against the peer servers, in one run.

Everything runs on loopback and is pinned as the peers' numbers were taken: every server process on
core 0, the load generator (Triton's perf_analyzer, gRPC, batch 1, closed loop) on core 1.

  floor (i)    ONNX Runtime in-process, batch 1 / 8 / 32 (bench/floor_ort.py)
  floor (ii)   the bare grpc.aio KServe-v2 echo server (../shared/peers/floor_kserve.py --mode echo):
               the Python unary (and streaming) floor, no model
  c=1 in turns the floor, mimo and mimo --no-batching side by side, c=1 unary measured alternately
               (3 turns, median p50): the latency comparisons, robust to a shared machine
  mimo         `mimo serve` defaults (native transport, batching on), --frontend python (grpc.aio),
               --no-batching, and --event-loop asyncio (the default is uvloop);
               unary ModelInfer, streaming ModelStreamInfer and KServe v2 REST (perf_analyzer -i http,
               binary tensors); mlp, qa, posts at concurrency 1, 8, 32
  workers      `mimo serve --workers 2` on core 0, and unpinned with and without workers (c=32)
  padding      qa under a mixed-length load (bench/mixed_load.py: a random shape per request): the
               standard export grouped by shape, against a masked export (bench/masked.py) with
               padding declared, and the masked export grouped
  head to head (--peers) mimo and Triton (python backend, bench/triton_peer.py) on core 0 at once, c=32
               and c=1 measured in turns, 3 rounds: the ratios to Triton, robust to a shared machine
  peers        (--peers) ../shared/peers/run_all.sh: Triton python backend, PyTriton, MLServer
               (three modes) and the naive grpc.aio+ORT server, serving the same exported ONNX files;
               then Triton's and MLServer's REST front ends under perf_analyzer -i http

Writes bench/results/bench.md (tables, ratios), bench/results/bench.png (throughput vs p99 latency)
and bench/results/bench.json; raw perf_analyzer CSVs and logs go to bench/results/runs/<time>/.
Every process it starts is stopped (by PID, with its descendants) when it ends or is interrupted.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(HERE))

import pa_data  # noqa: E402

PYTHON = sys.executable
MIMO = [PYTHON, "-m", "mimo.cli"]
SERVER_CORE, CLIENT_CORE = "0", "1"
MIMO_PORT, MIMO_HTTP_PORT, FLOOR_PORT = 8501, 8502, 8301
TRITON_PORT = 8411  # the head-to-head Triton (bench/triton_peer.py; its HTTP one below)
# The peers' REST ports: Triton and MLServer listen for HTTP one port below their gRPC port.
HTTP_PEERS = {"triton-pyb": ("triton_pybackend/serve_triton_pybackend.sh", [], 8401),
              "mls-batch": ("mlserver/serve_mlserver.sh", ["batch"], 8211),
              "mls-nobatch": ("mlserver/serve_mlserver.sh", ["nobatch"], 8201)}
PEER_LIST = ["kserve-ort", "pytriton", "triton-pyb", "mls-nobatch", "mls-batch", "mls-default"]

_started: list[subprocess.Popen] = []


# -- processes ------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except FileNotFoundError:
        return []
    out = []
    for child in map(int, children):
        out += [child] + _descendants(child)
    return out


def stop(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM, wait, SIGKILL; then any descendant still alive, each by its PID."""
    if process.poll() is None:
        kids = _descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if process in _started:
        _started.remove(process)


def stop_all(*_) -> None:
    for process in list(_started):
        stop(process, grace=10)


def start(command: list[str], log: Path, pin: bool = True, env: dict | None = None) -> subprocess.Popen:
    full = (["taskset", "-c", SERVER_CORE] if pin else []) + command
    handle = open(log, "w")
    # `python -m` puts the working directory first on sys.path: in the project, its own mimo/ would
    # shadow a --baseline build's (given as PYTHONPATH), so that build runs from its own folder.
    baseline = (env or {}).get("PYTHONPATH")
    process = subprocess.Popen(full, stdout=handle, stderr=subprocess.STDOUT, cwd=baseline or PROJECT,
                               env={**os.environ, **(env or {})})
    _started.append(process)
    return process


def mimo_serve(repo: Path, port: int, *flags: str, http_port: int = 0) -> list[str]:
    """`mimo serve` on `port` over `repo`, quiet, no metrics port (HTTP on `http_port`, 0: none)."""
    return MIMO + ["serve", "--model-repository", str(repo), "--port", str(port), "--metrics-port", "0",
                   "--http-port", str(http_port), "--log-level", "WARNING", *flags]


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_ready(port: int, models: list[str], process: subprocess.Popen, timeout: float = 300) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before it was ready")
        try:
            if all(client.is_model_ready(m) for m in models):
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server on port {port} not ready after {timeout:.0f} s")


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in [pid] + _descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total


def server_counts(port: int, model: str) -> tuple[int, int, int] | None:
    """(successful requests, executions, items executed) from ModelStatistics, or None."""
    import tritonclient.grpc as grpcclient

    try:
        stats = grpcclient.InferenceServerClient(f"127.0.0.1:{port}").get_inference_statistics(model, as_json=True)
    except Exception:  # noqa: BLE001 - a server without statistics
        return None
    ok = executions = items = 0
    for m in stats["model_stats"]:
        ok += int(m["inference_stats"]["success"].get("count", 0))
        for b in m.get("batch_stats", []):
            executions += int(b["compute_infer"].get("count", 0))
            items += int(b["batch_size"]) * int(b["compute_infer"].get("count", 0))
    return ok, executions, items


def _per_request(before, after, cpu_before: float, cpu_after: float) -> tuple[float | None, float | None]:
    """(server CPU us per request, average batch) between two server_counts() readings."""
    if not before or not after or after[0] <= before[0]:
        return None, None
    cpu_us = 1e6 * (cpu_after - cpu_before) / (after[0] - before[0])
    executions = after[1] - before[1]
    return cpu_us, ((after[2] - before[2]) / executions if executions > 0 else None)


def load1() -> float:
    return os.getloadavg()[0]


# -- perf_analyzer ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, out: Path, data: dict[str, Path]):
        self.args = args
        self.out = out
        self.data = data
        self.rows: list[dict] = []

    def perf(self, server: str, mode: str, model: str, conc: int, port: int, pid: int | None,
             data: str | None = None, extra: list[str] | None = None, count_cpu: bool = True,
             keep: bool = True, tag_suffix: str = "", http_port: int | None = None) -> dict:
        """One perf_analyzer run; mode "http" sends KServe v2 REST to `http_port` (statistics still
        come over gRPC from `port`)."""
        data = data or model
        tag = f"{server}.{mode}.{data}.c{conc}{tag_suffix}"
        csv_path = self.out / f"{tag}.csv"
        http = mode == "http"
        target = f"127.0.0.1:{http_port if http else port}"
        base = [
            "taskset", "-c", CLIENT_CORE, "timeout", "150", str(self.args.perf_analyzer),
            "-m", model, "-u", target, "-i", "http" if http else "grpc", "--input-data", str(self.data[data]),
            "--concurrency-range", f"{conc}:{conc}", "-p", str(self.args.window_ms), "-f", str(csv_path),
        ] + (["--streaming"] if mode == "streaming" else []) + (extra or [])
        note = ""
        row = None
        for stability in (["--max-trials", "6", "--stability-percentage", "100"],
                          ["--max-trials", "4", "--stability-percentage", "999"]):
            csv_path.unlink(missing_ok=True)
            before = server_counts(port, model) if count_cpu and pid else None
            before_cpu = cpu_seconds(pid) if pid else 0.0
            loadavg = load1()
            with open(self.out / f"{tag}.log", "w") as log:
                rc = subprocess.run(base + stability, stdout=log, stderr=subprocess.STDOUT).returncode
            after_cpu = cpu_seconds(pid) if pid else 0.0
            after = server_counts(port, model) if before is not None else None
            if rc == 0 and csv_path.is_file():
                r = next(csv.DictReader(open(csv_path)))
                cpu_us, avg_batch = _per_request(before, after, before_cpu, after_cpu)
                row = {
                    "server": server, "mode": mode, "model": model, "data": data, "conc": conc,
                    "infer_s": float(r["Inferences/Second"]), "p50_ms": int(r["p50 latency"]) / 1000,
                    "p99_ms": int(r["p99 latency"]) / 1000, "cpu_us": cpu_us, "avg_batch": avg_batch,
                    "load1": round(loadavg, 2), "note": note,
                }
                break
            note = "unstable: 3 windows, no stability check"
        if row is None:
            tail = (self.out / f"{tag}.log").read_text().strip().splitlines()[-1:] or ["?"]
            row = {"server": server, "mode": mode, "model": model, "data": data, "conc": conc, "infer_s": None,
                   "p50_ms": None, "p99_ms": None, "cpu_us": None, "load1": round(load1(), 2),
                   "note": f"FAIL: {tail[0][:120]}"}
        if keep:
            self.rows.append(row)
            self.save()
        show = "FAIL" if row["infer_s"] is None else (
            f"{row['infer_s']:8.0f}/s p50 {row['p50_ms']:7.3f} p99 {row['p99_ms']:7.3f} ms"
            + (f" cpu {row['cpu_us']:5.0f} us/req" if row["cpu_us"] else "")
            + (f" batch {row['avg_batch']:4.1f}" if row.get("avg_batch") else ""))
        print(f"  {server:14s} {mode:9s} {data:8s} c={conc:<3d} {show} (load {row['load1']}) {row['note']}",
              flush=True)
        return row

    def mixed(self, server: str, mode: str, conc: int, port: int, pid: int, seconds: float) -> dict:
        """bench/mixed_load.py: qa with a random request shape each time (see its docstring)."""
        before, before_cpu, loadavg = server_counts(port, "qa"), cpu_seconds(pid), load1()
        command = ["taskset", "-c", CLIENT_CORE, "timeout", "120", PYTHON, str(HERE / "mixed_load.py"),
                   "--port", str(port), "--model", "qa", "--data", str(self.data["qa_mixed"]),
                   "--concurrency", str(conc), "--seconds", str(seconds)] + (["--streaming"] if mode == "streaming" else [])
        done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT)
        after, after_cpu = server_counts(port, "qa"), cpu_seconds(pid)
        row = {"server": server, "mode": mode, "model": "qa", "data": "qa_mixed", "conc": conc, "infer_s": None,
               "p50_ms": None, "p99_ms": None, "cpu_us": None, "load1": round(loadavg, 2), "note": ""}
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
            row.update(infer_s=result["infer_s"], p50_ms=result["p50_ms"], p99_ms=result["p99_ms"],
                       note=f"{result['errors']} errors" if result["errors"] else "")
            row["cpu_us"], row["avg_batch"] = _per_request(before, after, before_cpu, after_cpu)
        except (IndexError, ValueError, KeyError):
            row["note"] = f"FAIL: {(done.stderr.strip().splitlines() or ['?'])[-1][:120]}"
        self.rows.append(row)
        self.save()
        print(f"  {server:22s} {mode:9s} qa_mixed c={conc:<3d} "
              + ("FAIL" if row["infer_s"] is None else
                 f"{row['infer_s']:8.0f}/s p50 {row['p50_ms']:7.3f} p99 {row['p99_ms']:7.3f} ms"
                 + (f" cpu {row['cpu_us']:5.0f} us/req" if row["cpu_us"] else "")
                 + (f" batch {row['avg_batch']:4.1f}" if row.get("avg_batch") else ""))
              + f" (load {row['load1']}) {row['note']}", flush=True)
        return row

    def save(self) -> None:
        (self.out / "rows.json").write_text(json.dumps(self.rows, indent=1))


# -- the steps ------------------------------------------------------------------------------------------


def ensure_repo(repo: Path) -> Path:
    missing = [m for m in ("mlp", "qa", "posts") if not (repo / m / "1" / "model.onnx").is_file()]
    if missing:
        print(f"== exporting {' '.join(missing)} into {repo} (small: 1 epoch, 64 samples)", flush=True)
        subprocess.run(MIMO + ["export", "--out", str(repo), "--models", *missing, "--image-size", "71",
                               "--epochs", "1", "--samples", "64", "--quiet"], check=True, cwd=PROJECT)
    return repo


def bench_repo(repo: Path, out: Path) -> Path:
    """A repository of only the bench's models (symlinks): servers start in seconds."""
    small = out / "repo"
    for model in ("mlp", "qa", "posts"):
        (small / model).mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / model / "model.json", small / model / "model.json")
        link = small / model / "1"
        if not link.exists():
            link.symlink_to((repo / model / "1").resolve())
    return small


def run_mimo(bench: Bench, name: str, repo: Path, flags: list[str], models, concs, modes,
             data_for: dict | None = None, count_cpu: bool = True, pin: bool = True, mixed: bool = False,
             env: dict | None = None) -> None:
    if port_taken(MIMO_PORT):
        raise RuntimeError(f"port {MIMO_PORT} is taken: stop whatever listens there (mimo uses SO_REUSEPORT "
                           "and would share it) and run again")
    # HTTP only where measured; as a variable, which a --baseline build without HTTP ignores.
    env = {**(env or {}), "MIMO_HTTP_PORT": str(MIMO_HTTP_PORT if "http" in modes else 0)}
    command = MIMO + ["serve", "--model-repository", str(repo), "--port", str(MIMO_PORT), "--metrics-port", "0",
                      "--log-level", "WARNING"] + flags
    print(f"== {name}: mimo serve {' '.join(flags)}", flush=True)
    server = start(command, bench.out / f"{name}.server.log", pin=pin, env=env)
    try:
        wait_ready(MIMO_PORT, sorted(set(models)), server)
        for model in models:
            for mode in modes:
                for conc in concs:
                    if mixed:
                        bench.mixed(name, mode, conc, MIMO_PORT, server.pid, seconds=bench.args.window_ms * 2 / 1000)
                    else:
                        bench.perf(name, mode, model, conc, MIMO_PORT, server.pid,
                                   data=(data_for or {}).get(model), count_cpu=count_cpu, http_port=MIMO_HTTP_PORT)
    finally:
        stop(server)


def run_floor(bench: Bench, concs, modes) -> None:
    script = bench.args.peers_dir / "floor_kserve.py"
    if not script.is_file():
        print(f"== floor (ii) skipped: {script} not found", flush=True)
        return
    if port_taken(FLOOR_PORT):
        raise RuntimeError(f"port {FLOOR_PORT} is taken")
    print("== floor (ii): bare grpc.aio KServe v2 echo server (no model)", flush=True)
    server = start([PYTHON, str(script), str(bench.out), "--mode", "echo", "--port", str(FLOOR_PORT)],
                   bench.out / "floor-echo.server.log")
    try:
        wait_ready(FLOOR_PORT, ["mlp", "qa"], server)
        for model in ("mlp", "qa"):
            for mode in modes:
                for conc in concs:
                    bench.perf("grpc.aio floor", mode, model, conc, FLOOR_PORT, server.pid, extra=["-x", "1"],
                               count_cpu=False)
    finally:
        stop(server)


def run_idle_latency(bench: Bench, repo: Path, rounds: int = 3) -> None:
    """c=1 unary latency of the floor, mimo, mimo --no-batching and mimo on grpc.aio, measured in turns.

    The three servers run at once (idle ones cost nothing) and are measured alternately, `rounds`
    times each; the row keeps the median p50. Minutes apart on a shared machine, separate runs
    differ by more than what these comparisons look for (1.25x the floor; batching on vs off).
    """
    servers = []
    script = bench.args.peers_dir / "floor_kserve.py"
    plan = [("floor", [PYTHON, str(script), str(bench.out), "--mode", "echo", "--port", str(FLOOR_PORT)],
             FLOOR_PORT, ["-x", "1"])] if script.is_file() else []
    plan += [("mimo", mimo_serve(repo, MIMO_PORT), MIMO_PORT, []),
             ("mimo no-batching", mimo_serve(repo, MIMO_PORT + 1, "--no-batching"), MIMO_PORT + 1, []),
             ("mimo grpc.aio", mimo_serve(repo, MIMO_PORT + 2, "--frontend", "python"), MIMO_PORT + 2, [])]
    for _, _, port, _ in plan:
        if port_taken(port):
            raise RuntimeError(f"port {port} is taken")
    print(f"== c=1 latency in turns ({rounds} rounds): {', '.join(p[0] for p in plan)}", flush=True)
    try:
        for name, command, port, extra in plan:
            servers.append((name, start(command, bench.out / f"idle-{name}.server.log"), port, extra))
        for name, server, port, _ in servers:
            wait_ready(port, ["mlp", "qa"] if name == "floor" else ["mlp", "qa", "posts"], server)
        samples: dict[tuple, list[dict]] = {}
        for turn in range(rounds):
            for model in ("mlp", "qa", "posts"):
                for name, server, port, extra in servers:
                    if name == "floor" and model == "posts":
                        continue  # the echo floor serves mlp and qa only
                    row = bench.perf(f"c=1 in turns: {name}", "unary", model, 1, port, server.pid, extra=extra,
                                     count_cpu=name != "floor", keep=False, tag_suffix=f".turn{turn}")
                    if row["infer_s"]:
                        samples.setdefault((name, model), []).append(row)
        for (name, model), rows in samples.items():
            rows.sort(key=lambda r: r["p50_ms"])
            middle = dict(rows[len(rows) // 2])
            middle["note"] = f"median p50 of {len(rows)} turns: " + ", ".join(f"{r['p50_ms']:.3f}" for r in rows)
            bench.rows.append(middle)
        bench.save()
    finally:
        for _, server, _, _ in servers:
            stop(server)


def run_head_to_head(bench: Bench, repo: Path, models, rounds: int) -> None:
    """mimo (defaults) and Triton (python backend + ONNX Runtime, bench/triton_peer.py over the same
    exported files) on core 0 at once, c=32 and c=1 measured in turns: each round measures every
    model on both, in alternating order. The peers' own run comes minutes after mimo's, and on a shared
    machine the throughput of one server drifts between such runs by more than the ratios to be
    read (25% in a minute has been seen); in turns, a slow spell falls on both servers' figures.
    Rows are kept per round (`round`), server "h2h mimo" / "h2h triton"."""
    if not (bench.args.peers_root / "venv-triton" / "bin" / "python").exists():
        print(f"== head to head skipped: no Triton in {bench.args.peers_root} (bash {bench.args.peers_dir}/setup.sh)",
              flush=True)
        return
    for port in (MIMO_PORT, TRITON_PORT, TRITON_PORT - 1):
        if port_taken(port):
            raise RuntimeError(f"port {port} is taken")
    mimo_command = mimo_serve(repo, MIMO_PORT)
    triton_command = [PYTHON, str(HERE / "triton_peer.py"), "--repository", str(repo), "--models", *models,
                      "--port", str(TRITON_PORT), "--root", str(bench.args.peers_root), "--peers", str(bench.args.peers_dir)]
    print(f"== head to head with Triton, in turns ({rounds} rounds, c=32 and c=1): {' '.join(models)}", flush=True)
    servers = {}
    try:
        servers["mimo"] = (start(mimo_command, bench.out / "h2h-mimo.server.log"), MIMO_PORT, ("unary", "streaming"))
        servers["triton"] = (start(triton_command, bench.out / "h2h-triton.server.log"), TRITON_PORT, ("unary",))
        for server, port, _ in servers.values():
            wait_ready(port, list(models), server)
        for turn in range(rounds):
            order = ["mimo", "triton"] if turn % 2 == 0 else ["triton", "mimo"]
            for model in models:
                for conc in (32, 1):  # throughput, then the latency of one request at a time
                    for name in order:
                        server, port, modes = servers[name]
                        for mode in modes:
                            row = bench.perf(f"h2h {name}", mode, model, conc, port, server.pid, keep=False,
                                             tag_suffix=f".round{turn}")
                            bench.rows.append({**row, "round": turn})
        bench.save()
    finally:
        for server, _, _ in servers.values():
            stop(server)


def run_floor_ort(bench: Bench, repo: Path) -> dict:
    print("== floor (i): ONNX Runtime in-process (core 0)", flush=True)
    out = bench.out / "floor_ort.json"
    subprocess.run(["taskset", "-c", SERVER_CORE, PYTHON, str(HERE / "floor_ort.py"), str(repo), "--out", str(out),
                    "--seconds", "2"], check=True, cwd=HERE)
    return json.loads(out.read_text())


def run_padding(bench: Bench, repo: Path) -> dict:
    """qa under a mixed-length load: standard export grouped, masked + padding, masked grouped."""
    import masked

    cache = bench.args.cache
    masked_repo = cache / "repo-masked"
    print("== padding vs grouping: exporting the masked qa (bench/masked.py) if needed", flush=True)
    subprocess.run([PYTHON, str(HERE / "masked.py"), str(masked_repo)], check=True, cwd=PROJECT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    grouped_repo = bench.out / "repo-masked-grouped"
    masked.without_padding(masked_repo, grouped_repo)
    standard_repo = bench.out / "repo-qa"
    (standard_repo / "qa").mkdir(parents=True, exist_ok=True)
    shutil.copy(repo / "qa" / "model.json", standard_repo / "qa" / "model.json")
    if not (standard_repo / "qa" / "1").exists():
        (standard_repo / "qa" / "1").symlink_to((repo / "qa" / "1").resolve())
    configs = [("qa standard, grouped", standard_repo), ("qa masked, padded", masked_repo),
               ("qa masked, grouped", grouped_repo)]
    for name, path in configs:
        run_mimo(bench, name, path, [], ["qa"], [1, 8, 32], ["unary", "streaming"], mixed=True)
    return {"exactness": padding_exactness(repo, masked_repo)}


def padding_exactness(repo: Path, masked_repo: Path) -> dict:
    """max |one padded batch - each request alone| on the mixed-length samples, per export."""
    import numpy as np
    import onnxruntime as ort

    samples = pa_data.as_arrays(pa_data.datasets()["qa_mixed"])
    out = {}
    for name, path in (("standard", repo), ("masked", masked_repo)):
        session = ort.InferenceSession(str(path / "qa" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        alone = np.concatenate([session.run(None, s)[0] for s in samples])
        batch = {}
        for key in ("text", "question"):
            longest = max(s[key].shape[1] for s in samples)
            batch[key] = np.zeros((len(samples), longest), np.int32)
            for i, s in enumerate(samples):
                batch[key][i, : s[key].shape[1]] = s[key][0]
        out[name] = float(np.abs(session.run(None, batch)[0] - alone).max())
    return out


def run_peers(bench: Bench, repo: Path) -> list[dict]:
    """../shared/peers/run_all.sh over our exported mlp and qa and our input data (same files)."""
    source = bench.args.peers_root
    if not (source / "venv-pa").is_dir():
        print(f"== peers skipped: {source} has no venvs (bash {bench.args.peers_dir}/setup.sh first)", flush=True)
        return []
    root = bench.args.cache / "peers-root"
    (root / "models").mkdir(parents=True, exist_ok=True)
    for name in ("venv-tf", "venv-triton", "venv-mlserver", "venv-pa", "pa_shim_blobs"):
        link = root / name
        if not link.exists() and (source / name).exists():
            link.symlink_to(source / name)
    # posts too: run_all.sh measures mlp and qa, and the Triton script serves posts when its file is
    # there, so run_peers_http measures Triton's posts over gRPC (the posts goal).
    for model in ("mlp", "qa", "posts"):
        target = root / "models" / f"{model}.onnx"
        target.unlink(missing_ok=True)
        target.symlink_to((repo / model / "1" / "model.onnx").resolve())
        shutil.copy(bench.data[model], root / "models" / f"pa_{model}.json")
    before = set((root / "results").glob("pinned-*")) if (root / "results").is_dir() else set()
    print(f"== peers: ROOT={root} bash run_all.sh pinned {bench.args.window_ms} {' '.join(bench.args.peer_list)}",
          flush=True)
    runner = subprocess.Popen(["bash", str(bench.args.peers_dir / "run_all.sh"), "pinned", str(bench.args.window_ms),
                               *bench.args.peer_list], env={**os.environ, "ROOT": str(root)},
                              stdout=open(bench.out / "peers.log", "w"), stderr=subprocess.STDOUT)
    _started.append(runner)
    try:
        runner.wait(timeout=3600)
    finally:
        stop(runner)
    after = sorted(set((root / "results").glob("pinned-*")) - before)
    if not after:
        print("== peers: no results (see peers.log)", flush=True)
        return []
    results = after[-1]
    shutil.copytree(results, bench.out / "peers", dirs_exist_ok=True)
    rows = []
    for r in csv.DictReader(open(results / "results.tsv"), delimiter="\t"):
        ok = not r["infer_per_s"].startswith("FAIL")
        rows.append({
            "server": r["peer"], "mode": "unary", "model": r["model"], "data": r["model"],
            "conc": int(r["conc"]) if r["conc"].isdigit() else 0,
            "infer_s": float(r["infer_per_s"]) if ok else None,
            "p50_ms": int(r["p50_us"]) / 1000 if ok else None, "p99_ms": int(r["p99_us"]) / 1000 if ok else None,
            "cpu_us": None, "load1": float(r["loadavg1"]) if r["loadavg1"] not in ("-", "") else None,
            "note": "" if ok else r["infer_per_s"][:120],
        })
        print(f"  {rows[-1]['server']:14s} unary     {r['model']:8s} c={r['conc']:<3s} {r['infer_per_s']}/s "
              f"p50 {r['p50_us']} us p99 {r['p99_us']} us", flush=True)
    return rows


def run_peers_http(bench: Bench) -> list[dict]:
    # MLServer's REST API reads JSON tensors only, and perf_analyzer -i http sends binary ones: its
    # runs here fail ("failed to parse the request JSON buffer"); run_rest_json compares it.
    """perf_analyzer -i http against the REST front ends of Triton (python backend) and MLServer,
    started from ../shared/peers as run_all.sh starts them (same models, pinned the same way)."""
    root = bench.args.cache / "peers-root"
    if not (root / "models" / "mlp.onnx").exists():
        print("== peers over HTTP skipped: run the gRPC peers first (--peers)", flush=True)
        return []
    rows = []
    for peer, (script, arguments, grpc_port) in HTTP_PEERS.items():
        if peer not in bench.args.peer_list:
            continue
        name = f"{peer} http"
        print(f"== {name}: {script} (REST on {grpc_port - 1})", flush=True)
        server = start(["bash", str(bench.args.peers_dir / script), str(root / "models"), *arguments, str(grpc_port)],
                       bench.out / f"{peer}.http.server.log", env={"ROOT": str(root)})
        try:
            grpc_models = ["posts"] if peer == "triton-pyb" and "posts" in bench.args.models else []
            wait_ready(grpc_port, ["mlp", "qa", *grpc_models], server)
            for model in ("mlp", "qa"):
                for conc in bench.args.concurrency:
                    rows.append(bench.perf(name, "http", model, conc, grpc_port, server.pid, count_cpu=False,
                                           keep=False, http_port=grpc_port - 1))
            for model in grpc_models:  # the shared harness's gRPC runs cover mlp and qa only
                for conc in bench.args.concurrency:
                    rows.append(bench.perf(peer, "unary", model, conc, grpc_port, server.pid, count_cpu=False,
                                           keep=False))
        except RuntimeError as exc:
            print(f"  {name}: {exc}", flush=True)
        finally:
            stop(server)
    return rows


_WRK_SCRIPT = """local f = io.open(os.getenv("MIMO_WRK_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
wrk.headers["Content-Type"] = "application/json"
"""


def _json_body(data_file: Path) -> bytes:
    """A KServe v2 JSON request of the first perf_analyzer sample (batch 1)."""
    sample = json.loads(data_file.read_text())["data"][0]
    inputs = []
    for name, tensor in sample.items():
        content = tensor["content"] if isinstance(tensor, dict) else tensor
        shape = [1] + list(tensor.get("shape", [len(content)])) if isinstance(tensor, dict) else [1, len(content)]
        datatype = "FP32" if any(isinstance(v, float) for v in content) else "INT32"
        inputs.append({"name": name, "datatype": datatype, "shape": shape, "data": content})
    return json.dumps({"inputs": inputs}).encode()


def wrk_json(bench: Bench, server: str, model: str, conc: int, port: int) -> dict:
    """JSON tensors (what MLServer's REST API takes; perf_analyzer -i http sends Triton's binary
    form, which MLServer does not read): wrk on the client core, keep-alive, `conc` connections."""
    body, script = bench.out / f"body-{model}.json", bench.out / "post.lua"
    body.write_bytes(_json_body(bench.data[model]))
    script.write_text(_WRK_SCRIPT)
    command = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{conc}", f"-d{max(2, bench.args.window_ms * 3 // 1000)}s",
               "--latency", "-s", str(script), f"http://127.0.0.1:{port}/v2/models/{model}/infer"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "MIMO_WRK_BODY": str(body)})
    out = done.stdout
    row = {"server": server, "mode": "http json", "model": model, "data": model, "conc": conc, "infer_s": None,
           "p50_ms": None, "p99_ms": None, "cpu_us": None, "load1": round(load1(), 2), "note": ""}
    try:
        row["infer_s"] = float(out.split("Requests/sec:")[1].split()[0])
        latency = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip().startswith(("50%", "99%"))}
        row["p50_ms"], row["p99_ms"] = (_ms(latency["50%"]), _ms(latency["99%"]))
        errors = [line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line]
        row["note"] = "; ".join(errors)
    except (IndexError, KeyError, ValueError):
        row["note"] = f"FAIL: {(done.stderr or out).strip()[-120:]}"
    print(f"  {server:22s} http json {model:8s} c={conc:<3d} "
          + ("FAIL" if row["infer_s"] is None else f"{row['infer_s']:8.0f}/s p50 {row['p50_ms']:7.3f} p99 "
             f"{row['p99_ms']:7.3f} ms") + f" (load {row['load1']}) {row['note']}", flush=True)
    return row


def _ms(text: str) -> float:
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(text)


def run_rest_json(bench: Bench, repo: Path) -> list[dict]:
    """KServe v2 REST with JSON tensors, the same requests to mimo, Triton and MLServer (wrk)."""
    if not shutil.which("wrk"):
        print("== REST JSON skipped: wrk not installed (apt-get install wrk)", flush=True)
        return []
    root = bench.args.cache / "peers-root"
    plan = [("mimo", mimo_serve(repo, MIMO_PORT, http_port=MIMO_HTTP_PORT), MIMO_PORT, {})]
    shim = {"PYTHONPATH": str(HERE / "peer_shims"), "MIMO_BENCH_MLSERVER_REST_SHIM": "1", "ROOT": str(root)}
    if (root / "models" / "mlp.onnx").exists():
        plan += [(peer, ["bash", str(bench.args.peers_dir / script), str(root / "models"), *arguments, str(port)],
                  port, shim) for peer, (script, arguments, port) in HTTP_PEERS.items() if peer in bench.args.peer_list]
    rows = []
    for name, command, grpc_port, env in plan:
        http_port = MIMO_HTTP_PORT if name == "mimo" else grpc_port - 1
        print(f"== REST JSON: {name} (HTTP {http_port})", flush=True)
        server = start(command, bench.out / f"{name}.json.server.log", env=env)
        try:
            wait_ready(grpc_port, ["mlp", "qa"], server)
            rows += [wrk_json(bench, name, model, conc, http_port) for model in ("mlp", "qa")
                     for conc in bench.args.concurrency]
        except RuntimeError as exc:
            print(f"  {name}: {exc}", flush=True)
        finally:
            stop(server)
    return rows


def versions() -> dict:
    import grpc
    import numpy
    import onnxruntime

    info = {"python": platform.python_version(), "grpcio": grpc.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__}
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except ImportError:
        pass
    return info


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE")
                                                                      * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", action="store_true", help="also run the peers (../shared/peers/run_all.sh)")
    ap.add_argument("--repo", type=Path, default=None,
                    help="an exported repository holding mlp, qa and posts (default: export one into the cache)")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache", help="exports and the peers' root (ignored by git)")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--window-ms", type=int, default=2000, help="perf_analyzer measurement window (-p)")
    ap.add_argument("--models", nargs="+", default=["mlp", "qa", "posts"])
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["floor-ort", "floor", "idle", "grpc-aio", "nobatch", "asyncio", "workers", "padding",
                             "peers-http", "rest-json", "head-to-head"],
                    help="leave steps out")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the head-to-head with Triton (--peers)")
    ap.add_argument("--perf-analyzer", type=Path, default=PROJECT / ".venv-pa" / "bin" / "perf_analyzer")
    ap.add_argument("--peers-dir", type=Path, default=Path(os.environ.get("PEERS_DIR", PROJECT.parent / "shared" / "peers")))
    ap.add_argument("--peers-root", type=Path, default=Path(os.environ.get("PEERS_ROOT", "/tmp/mimo-peers")),
                    help="where ../shared/peers/setup.sh put the peers' venvs")
    ap.add_argument("--peer-list", nargs="+", default=PEER_LIST)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="also serve from this PYTHONPATH (a folder holding another build's `mimo` package) "
                         "as 'mimo baseline', to compare a change with what it replaces in the same run")
    args = ap.parse_args()
    if not args.perf_analyzer.exists():
        ap.error(f"{args.perf_analyzer} not found: run `make perf-analyzer` first")
    if len(os.sched_getaffinity(0)) < 2:
        ap.error("needs two cores (server on core 0, perf_analyzer on core 1)")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: (stop_all(), sys.exit(130)))

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.results / "runs" / stamp
    out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    meta = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "uptime_before": _uptime(),
            "window_ms": args.window_ms, "versions": versions(), "machine": machine(),
            "pinning": f"servers on core {SERVER_CORE}, perf_analyzer on core {CLIENT_CORE}",
            "perf_analyzer": subprocess.run([str(args.perf_analyzer), "--version"], stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True).stdout.strip().splitlines()[:1]}
    print(f"== bench run {stamp}: {meta['uptime_before']}", flush=True)
    data = pa_data.write(out / "data")
    try:
        repo = bench_repo(ensure_repo(args.repo or args.cache / "repo"), out)
        bench = Bench(args, out, data)
        floor_ort = {} if "floor-ort" in args.skip else run_floor_ort(bench, repo)
        modes = ["unary", "streaming"]
        if "floor" not in args.skip:
            run_floor(bench, args.concurrency, modes)
        if "idle" not in args.skip:
            run_idle_latency(bench, repo)
        if args.peers and "head-to-head" not in args.skip:
            run_head_to_head(bench, repo, args.models, args.rounds)
        run_mimo(bench, "mimo", repo, [], args.models, args.concurrency, modes + ["http"])
        if args.baseline:
            # Another checkout of mimo (PYTHONPATH to a `mimo` package folder), same flags: the
            # figure a change must not fall below, measured in the same run.
            run_mimo(bench, "mimo baseline", repo, [], args.models, args.concurrency, modes,
                     env={"PYTHONPATH": str(args.baseline)})
        if "grpc-aio" not in args.skip:
            run_mimo(bench, "mimo grpc.aio", repo, ["--frontend", "python"], args.models, args.concurrency, modes)
        if "nobatch" not in args.skip:
            run_mimo(bench, "mimo no-batching", repo, ["--no-batching"], args.models, args.concurrency, modes)
        if "asyncio" not in args.skip:
            run_mimo(bench, "mimo asyncio", repo, ["--event-loop", "asyncio"], args.models, args.concurrency, modes)
        if "workers" not in args.skip:
            # Worker processes on the one server core, then both configurations unpinned (the server
            # may use both cores, which it shares with perf_analyzer).
            run_mimo(bench, "mimo workers=2", repo, ["--workers", "2"], ["mlp", "qa"], [32], modes, count_cpu=False)
            run_mimo(bench, "mimo unpinned", repo, [], ["mlp", "qa"], [32], modes, pin=False)
            run_mimo(bench, "mimo workers=2 unpinned", repo, ["--workers", "2"], ["mlp", "qa"], [32], modes,
                     count_cpu=False, pin=False)
        padding = {} if "padding" in args.skip else run_padding(bench, repo)
        peers = run_peers(bench, repo) if args.peers else []
        peers += run_peers_http(bench) if args.peers and "peers-http" not in args.skip else []
        peers += run_rest_json(bench, repo) if "rest-json" not in args.skip else []
    finally:
        stop_all()
    meta["uptime_after"] = _uptime()
    meta["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    document = {"meta": meta, "floor_ort": floor_ort, "rows": bench.rows + peers, "padding": padding,
                "run_dir": str(out.relative_to(PROJECT)) if out.is_relative_to(PROJECT) else str(out)}
    (out / "bench.json").write_text(json.dumps(document, indent=1))
    import report

    report.write(document, args.results)
    print(f"== wrote {args.results / 'bench.md'} and {args.results / 'bench.png'} ({meta['uptime_after']})")
    return 0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return f"load average {os.getloadavg()}"


if __name__ == "__main__":
    sys.exit(main())
