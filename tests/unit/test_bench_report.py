"""bench/report.py's head-to-head tables (mimo and Triton measured in turns): each round's ratio,
the median, and nothing where a round or a run lacks its rows. No server: rows as run.py writes them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_META = {"started": "t0", "machine": {"cpu": "cpu", "cores": 2, "memory_gib": 1}, "pinning": "core 0 / 1",
         "window_ms": 2000, "versions": {}, "uptime_before": "-"}


def _row(server, mode, model, conc, turn, infer_s, p50_ms, cpu_us=None):
    return {"server": server, "mode": mode, "model": model, "data": model, "conc": conc, "infer_s": infer_s,
            "p50_ms": p50_ms, "p99_ms": p50_ms and 2 * p50_ms, "cpu_us": cpu_us, "load1": 1.0, "note": "", "round": turn}


def _rounds(report, rows):
    return report._head_to_head(report.Rows(rows))


def test_each_round_gets_its_own_ratio_and_the_line_ends_with_the_median():
    report = _report()
    rows = []
    for turn, (mine, theirs) in enumerate([(6000, 5000), (4400, 4000), (9000, 6000)]):
        rows += [_row("h2h mimo", "unary", "qa", 32, turn, mine, 5.0, cpu_us=150),
                 _row("h2h triton", "unary", "qa", 32, turn, theirs, 6.0, cpu_us=200)]
    lines = _rounds(report, rows)
    qa = next(line for line in lines if line.startswith("| qa | unary |"))
    assert "6,000 / 5,000 (1.20x) (150 / 200 us)" in qa
    assert "4,400 / 4,000 (1.10x)" in qa
    assert "9,000 / 6,000 (1.50x)" in qa
    assert qa.endswith("| 1.20x |")  # the median of 1.20, 1.10, 1.50
    assert not any("c=1 p50" in line for line in lines)  # no c=1 rows: no latency table


def test_mimo_streaming_is_set_against_tritons_unary_and_c1_compares_p50():
    report = _report()
    rows = [_row("h2h mimo", "unary", "mlp", 32, 0, 12000, 2.0), _row("h2h mimo", "streaming", "mlp", 32, 0, 15000, 1.5),
            _row("h2h triton", "unary", "mlp", 32, 0, 10000, 3.0),
            _row("h2h mimo", "unary", "mlp", 1, 0, 2500, 0.36), _row("h2h triton", "unary", "mlp", 1, 0, 2400, 0.40)]
    lines = _rounds(report, rows)
    assert next(line for line in lines if line.startswith("| mlp | streaming |")).endswith("(1.50x) | 1.50x |")
    c1 = lines[lines.index(next(line for line in lines if "c=1 p50" in line)):]
    unary = next(line for line in c1 if line.startswith("| mlp | unary |"))
    assert "0.360 / 0.400 (0.90)" in unary and unary.endswith("| 0.90 |")


def test_a_round_without_tritons_row_is_a_dash_and_not_in_the_median():
    report = _report()
    rows = [_row("h2h mimo", "unary", "posts", 32, 0, 1000, 30.0), _row("h2h triton", "unary", "posts", 32, 0, 900, 33.0),
            _row("h2h mimo", "unary", "posts", 32, 1, 1100, 29.0),
            _row("h2h triton", "unary", "posts", 32, 1, None, None)]  # Triton's run failed
    posts = next(line for line in _rounds(report, rows) if line.startswith("| posts | unary |"))
    assert posts.endswith("| - | 1.11x |")


def test_a_run_without_the_head_to_head_has_no_section():
    report = _report()
    plain = {key: value for key, value in _row("mimo", "unary", "qa", 32, 0, 5000, 5.0).items() if key != "round"}
    assert _rounds(report, [plain]) == []
    assert "Head to head" not in report.markdown({"meta": _META, "rows": [plain]})
