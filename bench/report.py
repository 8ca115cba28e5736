"""Turn a bench run (bench.json) into bench/results/bench.md and bench/results/bench.png.

  python bench/report.py bench/results/runs/<time>/bench.json   (re-render an earlier run)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

MIMO_DEFAULT = "mimo"
PEER_NAMES = {
    "kserve-ort": "naive grpc.aio + ORT",
    "pytriton": "PyTriton",
    "triton-pyb": "Triton (python backend)",
    "mls-nobatch": "MLServer (no batching)",
    "mls-batch": "MLServer (adaptive batching)",
    "mls-default": "MLServer (default, 1 worker)",
}


def _fmt(value, digits=0, unit=""):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


class Rows:
    def __init__(self, rows):
        self.rows = rows

    def get(self, server, mode, data, conc):
        for r in self.rows:
            if (r["server"], r["mode"], r["data"], r["conc"]) == (server, mode, data, conc) and r["infer_s"]:
                return r
        return None

    def servers(self, data=None):
        seen = []
        for r in self.rows:
            key = (r["server"], r["mode"])
            if (data is None or r["data"] == data) and key not in seen:
                seen.append(key)
        return seen


def _ratio(a, b):
    if not a or not b or not a.get("infer_s") or not b.get("infer_s"):
        return "-"
    return f"{a['infer_s'] / b['infer_s']:.2f}x"


def markdown(document: dict) -> str:
    meta, rows = document["meta"], Rows(document["rows"])
    lines = [
        "# mimo bench",
        "",
        f"Run {meta['started']} to {meta.get('finished', '?')}, raw files in `{document.get('run_dir', '?')}`.",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, {meta['machine']['memory_gib']} GiB; "
        f"{meta['pinning']}. perf_analyzer: {' '.join(meta.get('perf_analyzer') or ['?'])}, gRPC, batch 1, "
        f"closed loop, {meta['window_ms']} ms windows.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        "",
        f"- load before: `{meta['uptime_before']}`",
        f"- load after: `{meta.get('uptime_after', '?')}`",
        "",
        "The machine is shared: read every figure with the load average of its row in mind. `server CPU` is",
        "the server process's CPU time per request over the run (user + system, from /proc), which other",
        "tenants disturb much less than throughput.",
        "",
    ]
    lines += _head_to_head(rows)
    lines += _goals(rows)
    lines += _floor_ort(document.get("floor_ort") or {})
    lines += _http(rows)
    lines += _main_table(rows)
    if document.get("padding"):
        lines += _padding(rows, document["padding"])
    return "\n".join(lines) + "\n"


def _goals(rows: Rows) -> list[str]:
    out = ["## Against the peers and the floor (c=32, infer/s ratios: mimo / other)", ""]
    mimo_modes = [("unary", "mimo unary"), ("streaming", "mimo streaming")]
    others = [("grpc.aio floor", "unary", "bare grpc.aio echo, unary (floor)"),
              ("grpc.aio floor", "streaming", "bare grpc.aio echo, streaming (floor)")]
    others += [(peer, "unary", name) for peer, name in PEER_NAMES.items()]
    header = "| other server | " + " | ".join(f"{m}: {label}" for m in ("mlp", "qa") for _, label in mimo_modes) + " |"
    out += [header, "|---|" + "---:|" * 4]
    have_any = False
    for server, mode, name in others:
        cells = []
        for model in ("mlp", "qa"):
            other = rows.get(server, mode, model, 32)
            for mimo_mode, _ in mimo_modes:
                cells.append(_ratio(rows.get(MIMO_DEFAULT, mimo_mode, model, 32), other))
            have_any = have_any or other is not None
        if rows.get(server, mode, "mlp", 32) or rows.get(server, mode, "qa", 32):
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    if not have_any:
        out.append("| (no peers in this run: `make bench PEERS=1`) | - | - | - | - |")
    configs = [(MIMO_DEFAULT, "default (native transport, uvloop)"), ("mimo baseline", "the baseline build (--baseline)"),
               ("mimo grpc.aio", "--frontend python (grpc.aio)"),
               ("mimo no-batching", "--no-batching"), ("mimo asyncio", "--event-loop asyncio"),
               ("mimo uvloop", "--event-loop uvloop"),
               ("mimo workers=2", "--workers 2"), ("mimo unpinned", "unpinned"),
               ("mimo workers=2 unpinned", "--workers 2, unpinned")]
    best = {}
    for model in ("mlp", "qa", "posts"):  # posts: Triton only (run_peers_http); the others, if a harness adds it
        mls = [rows.get(p, "unary", model, 32) for p in ("mls-nobatch", "mls-batch", "mls-default")]
        mls = [r for r in mls if r]
        best[model] = max(mls, key=lambda r: r["infer_s"]) if mls else None
    if best["mlp"] or best["qa"]:
        out += ["", "Goals (c=32): mimo against PyTriton and MLServer's best mode, and against Triton:", "",
                "| model | mimo unary | mimo streaming | PyTriton | MLServer best (mode) | Triton | "
                "best mimo / PyTriton | best mimo / MLServer best | best mimo / Triton |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for model in ("mlp", "qa", "posts"):
            unary, stream = rows.get(MIMO_DEFAULT, "unary", model, 32), rows.get(MIMO_DEFAULT, "streaming", model, 32)
            top = max([r for r in (unary, stream) if r], key=lambda r: r["infer_s"], default=None)
            pyt, tri, mls = rows.get("pytriton", "unary", model, 32), rows.get("triton-pyb", "unary", model, 32), best[model]
            out.append(f"| {model} | {_fmt(unary and unary['infer_s'])} | {_fmt(stream and stream['infer_s'])} | "
                       f"{_fmt(pyt and pyt['infer_s'])} | {_fmt(mls and mls['infer_s'])} ({mls['server'] if mls else '-'}) | "
                       f"{_fmt(tri and tri['infer_s'])} | {_ratio(top, pyt)} | {_ratio(top, mls)} | {_ratio(top, tri)} |")
    out += ["", "mimo's configurations at c=32 (infer/s; all on core 0 unless unpinned):", ""]
    out += ["| configuration | mlp unary | mlp streaming | qa unary | qa streaming | posts unary | posts streaming |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for server, label in configs:
        cells = [_fmt((rows.get(server, m, model, 32) or {}).get("infer_s"))
                 for model in ("mlp", "qa", "posts") for m in ("unary", "streaming")]
        if any(c != "-" for c in cells):
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    turns = bool(rows.get("c=1 in turns: mimo", "unary", "mlp", 1))
    prefix = "c=1 in turns: " if turns else ""
    out += ["", "Latency at c=1 (p50 ms): mimo against the floor, and what batching costs when idle"
            + (" (the servers side by side, measured in turns; median of 3):" if turns else ":"), "",
            "| model | floor (echo, no model) | mimo, batching on | ratio to floor | mimo, batching off | on / off "
            "| mimo on grpc.aio |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for model in ("mlp", "qa", "posts"):
        floor = rows.get(prefix + "floor" if turns else "grpc.aio floor", "unary", model, 1)
        on = rows.get(prefix + MIMO_DEFAULT, "unary", model, 1)
        off = rows.get(prefix + "mimo no-batching", "unary", model, 1)
        aio = rows.get(prefix + "mimo grpc.aio", "unary", model, 1)
        ratio_floor = f"{on['p50_ms'] / floor['p50_ms']:.2f}x" if on and floor else "-"
        on_off = f"{on['p50_ms'] / off['p50_ms']:.3f}" if on and off else "-"
        out.append(f"| {model} | {_fmt(floor and floor['p50_ms'], 3)} | {_fmt(on and on['p50_ms'], 3)} | {ratio_floor} | "
                   f"{_fmt(off and off['p50_ms'], 3)} | {on_off} | {_fmt(aio and aio['p50_ms'], 3)} |")
    return out + [""]


def _head_to_head(rows: Rows) -> list[str]:
    """run_head_to_head's rounds: mimo and Triton on core 0 at once, c=32 and c=1, measured in turns."""
    turns = [r for r in rows.rows if "round" in r]
    if not turns:
        return []

    def throughput(mine, theirs):
        ratio = mine["infer_s"] / theirs["infer_s"]
        cpu = (f" ({_fmt(mine['cpu_us'])} / {_fmt(theirs['cpu_us'])} us)"
               if mine.get("cpu_us") and theirs.get("cpu_us") else "")
        return ratio, f"{_fmt(mine['infer_s'])} / {_fmt(theirs['infer_s'])} ({ratio:.2f}x){cpu}"

    def latency(mine, theirs):
        ratio = mine["p50_ms"] / theirs["p50_ms"]
        return ratio, f"{mine['p50_ms']:.3f} / {theirs['p50_ms']:.3f} ({ratio:.2f})"

    out = ["## Head to head with Triton (both on core 0 at once, measured in turns)", "",
           "c=32 infer/s mimo / Triton (python backend + ONNX Runtime, dynamic batching) per round; streaming is",
           "mimo's ModelStreamInfer against Triton's unary ModelInfer. Server CPU per request in brackets.", ""]
    out += _turn_table(turns, 32, throughput, "x")
    c1 = _turn_table(turns, 1, latency, "")
    if c1:
        out += ["", "c=1 p50 ms, mimo / Triton, per round (lower is better; ratio mimo / Triton):", "", *c1]
    return out + [""]


def _turn_table(turns: list[dict], conc: int, cell, unit: str) -> list[str]:
    """One table of the head-to-head: a line per model and mimo mode, a cell per round (`cell`
    gives the ratio and the text), and the median ratio; [] when the run has no such rows."""
    rounds = sorted({r["round"] for r in turns})
    by = {(r["server"], r["mode"], r["data"], r["round"]): r for r in turns if r["infer_s"] and r["conc"] == conc}
    lines = []
    for model in dict.fromkeys(r["data"] for r in turns):
        for mode in ("unary", "streaming"):
            cells, ratios = [], []
            for n in rounds:
                mine, theirs = by.get(("h2h mimo", mode, model, n)), by.get(("h2h triton", "unary", model, n))
                if not (mine and theirs):
                    cells.append("-")
                    continue
                ratio, text = cell(mine, theirs)
                ratios.append(ratio)
                cells.append(text)
            if ratios:
                lines.append(f"| {model} | {mode} | " + " | ".join(cells) + f" | {statistics.median(ratios):.2f}{unit} |")
    if not lines:
        return []
    return ["| model | mimo | " + " | ".join(f"round {n + 1}" for n in rounds) + " | median ratio |",
            "|---|---|" + "---|" * len(rounds) + "---:|", *lines]


def _http(rows: Rows) -> list[str]:
    """KServe v2 REST under perf_analyzer -i http (binary tensors): mimo beside its own gRPC, and
    beside Triton's and MLServer's REST front ends when the peers ran."""
    if not rows.get(MIMO_DEFAULT, "http", "mlp", 32) and not rows.get(MIMO_DEFAULT, "http", "qa", 32):
        return []
    peers = [p for p in ("triton-pyb http", "mls-batch http", "mls-nobatch http") if any(
        rows.get(p, "http", m, c) for m in ("mlp", "qa") for c in (1, 8, 32))]
    out = ["## HTTP: KServe v2 REST (perf_analyzer -i http)", "",
           "| model | conc | mimo HTTP infer/s | p50 ms | mimo gRPC unary infer/s | HTTP / gRPC | "
           + " | ".join(f"{p} infer/s | mimo / {p}" for p in peers) + " |",
           "|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(peers)]
    for model in ("mlp", "qa", "posts"):
        for conc in (1, 8, 32):
            http, grpc = rows.get(MIMO_DEFAULT, "http", model, conc), rows.get(MIMO_DEFAULT, "unary", model, conc)
            if not http:
                continue
            cells = [f"{_fmt(rows.get(p, 'http', model, conc) and rows.get(p, 'http', model, conc)['infer_s'])} | "
                     f"{_ratio(http, rows.get(p, 'http', model, conc))}" for p in peers]
            out.append(f"| {model} | {conc} | {_fmt(http['infer_s'])} | {_fmt(http['p50_ms'], 3)} | "
                       f"{_fmt(grpc and grpc['infer_s'])} | {_ratio(http, grpc)} | " + " | ".join(cells)
                       + (" |" if cells else "|"))
    return out + [""]


def _floor_ort(floor: dict) -> list[str]:
    if not floor:
        return []
    out = ["## Floor (i): ONNX Runtime in-process (core 0, 1 thread)", "",
           "| model | batch 1 calls/s | p50 us | p99 us | batch 8 rows/s | batch 32 rows/s |",
           "|---|---:|---:|---:|---:|---:|"]
    for model, r in floor.items():
        one, eight, many = r.get("1") or r.get(1), r.get("8") or r.get(8), r.get("32") or r.get(32)
        out.append(f"| {model} | {_fmt(one['calls_per_s'])} | {_fmt(one['p50_us'], 1)} | {_fmt(one['p99_us'], 1)} | "
                   f"{_fmt(eight['rows_per_s'])} | {_fmt(many['rows_per_s'])} |")
    return out + [""]


def _main_table(rows: Rows) -> list[str]:
    out = ["## Every run", "",
           "| server | mode | model | conc | infer/s | p50 ms | p99 ms | server CPU us/req | avg batch | load1 | note |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows.rows:
        if r["data"] != r["model"]:
            continue
        out.append(f"| {PEER_NAMES.get(r['server'], r['server'])} | {r['mode']} | {r['model']} | {r['conc']} | "
                   f"{_fmt(r['infer_s'])} | {_fmt(r['p50_ms'], 3)} | {_fmt(r['p99_ms'], 3)} | {_fmt(r['cpu_us'])} | "
                   f"{_fmt(r.get('avg_batch'), 1)} | {_fmt(r['load1'], 2)} | {r['note']} |")
    return out + [""]


def _padding(rows: Rows, padding: dict) -> list[str]:
    out = ["## Padding vs grouping: qa under a mixed-length load", "",
           "16 request shapes (text 20..100 tokens, question 4..20), each request drawn at random",
           "(bench/mixed_load.py, a grpc.aio client on core 1; perf_analyzer's contexts walk the samples in",
           "step, so its concurrent requests share shapes). `standard` is the default export (fused LSTM;",
           "requests batch only with equal shapes); `masked` is bench/masked.py (`mask_zero=True`), once",
           "with model.json declaring `batching.padding` and once without.",
           "", "| server | " + " | ".join(f"{m} c={c}" for m in ("unary", "streaming") for c in (1, 8, 32)) + " |",
           "|---|" + "---:|" * 6]
    for server in dict.fromkeys(server for server, _ in rows.servers("qa_mixed")):
        cells = []
        for mode in ("unary", "streaming"):
            for conc in (1, 8, 32):
                r = rows.get(server, mode, "qa_mixed", conc)
                cells.append(f"{_fmt(r['infer_s'])}/s, p99 {_fmt(r['p99_ms'], 1)} ms, {_fmt(r['cpu_us'])} us CPU, "
                             f"batch {_fmt(r.get('avg_batch'), 1)}" if r else "-")
        out.append(f"| {server} | " + " | ".join(cells) + " |")
    exact = padding.get("exactness", {})
    if exact:
        out += ["", "max |one right-padded batch of the 16 samples - each sample alone|: "
                + ", ".join(f"{k} {v:.2g}" for k, v in exact.items())]
    return out + [""]


def plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = Rows(document["rows"])
    panels = [("mlp", "mlp"), ("qa", "qa (length 100)"), ("posts", "posts (length 300)"),
              ("qa_mixed", "qa, random lengths 20-100 (bench/mixed_load.py)")]
    panels = [p for p in panels if any(r["data"] == p[0] and r["infer_s"] for r in rows.rows)]
    columns = 2 if len(panels) > 1 else 1
    lines = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(8 * columns, 6 * lines), squeeze=False)
    fixed = {MIMO_DEFAULT: "tab:red", "mimo grpc.aio": "tab:cyan", "mimo uvloop": "tab:orange", "mimo asyncio": "tab:orange", "mimo no-batching": "tab:pink",
             "grpc.aio floor": "black", "triton-pyb": "tab:green", "pytriton": "tab:blue",
             "mls-nobatch": "tab:purple", "mls-batch": "tab:brown", "mls-default": "tab:gray",
             "kserve-ort": "tab:olive", "qa standard, grouped": "tab:red", "qa masked, padded": "tab:blue",
             "qa masked, grouped": "tab:cyan"}
    palette = plt.get_cmap("tab10").colors
    servers = list(dict.fromkeys(server for server, _ in rows.servers()))
    color = {server: fixed.get(server, palette[i % len(palette)]) for i, server in enumerate(servers)}
    for ax, (data, title) in zip(axes.flat, panels):
        for server, mode in rows.servers(data):
            points = [p for p in (rows.get(server, mode, data, c) for c in (1, 8, 32)) if p]
            if len(points) < 2:  # single-concurrency experiments are in the tables only
                continue
            mimo = server.startswith("mimo") or server.startswith("qa ")
            ax.plot([p["infer_s"] for p in points], [p["p99_ms"] for p in points],
                    "-" if mode == "unary" else "--", marker="o" if mode == "unary" else "s",
                    color=color[server], linewidth=2.4 if server == MIMO_DEFAULT else (1.6 if mimo else 1.0),
                    label=f"{PEER_NAMES.get(server, server)} ({mode})")
            for p in points:
                ax.annotate(f"c{p['conc']}", (p["infer_s"], p["p99_ms"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points", color=color[server])
        ax.set_title(title)
        ax.set_xlabel("throughput (infer/s, log)")
        ax.set_ylabel("p99 latency (ms, log)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    meta = document["meta"]
    fig.suptitle(f"mimo bench {meta['started']}: servers on core 0, perf_analyzer on core 1; solid = unary, "
                 f"dashed = streaming (load before: {meta['uptime_before'].split('load average:')[-1].strip()})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(document: dict, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "bench.md").write_text(markdown(document))
    (results / "bench.json").write_text(json.dumps(document, indent=1))
    try:
        plot(document, results / "bench.png")
    except ImportError:
        print("matplotlib is missing (pip install 'mimo-serve[bench]'): no plot", file=sys.stderr)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    write(json.loads(source.read_text()), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent / "results")
