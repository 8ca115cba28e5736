"""`mimo predict` and `mimo models`: the client from a shell.

    mimo predict posts --random                      # valid random inputs from the model's metadata
    mimo predict mlp --input x=x.npy --json          # machine-readable, with the data
    mimo models --target host:8500

Tables use `rich` when it is installed (it is not a client dependency); plain text otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import numpy as np

from mimo.client.errors import InferenceError
from mimo.client.samples import random_inputs
from mimo.client.sync import Client
from mimo.protos.dtypes import from_numpy

DEFAULT_TARGET = "localhost:8500"


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=os.environ.get("MIMO_TARGET", DEFAULT_TARGET),
                   help=f"server HOST:PORT (MIMO_TARGET; default {DEFAULT_TARGET})")
    p.add_argument("--token", default=os.environ.get("MIMO_TOKEN"), help="bearer token (MIMO_TOKEN)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per call in seconds (default 30)")
    p.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    p.add_argument("--ca", metavar="FILE", help="TLS: verify the server with this CA certificate (PEM)")
    p.add_argument("--cert", metavar="FILE", help="mutual TLS: client certificate chain (PEM)")
    p.add_argument("--key", metavar="FILE", help="mutual TLS: client private key (PEM)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _client(args) -> Client:
    return Client(args.target, timeout=args.timeout, tls=args.tls, root_certificates=args.ca,
                  certificate_chain=args.cert, private_key=args.key, token=args.token)


def _fail(command: str, exc: InferenceError) -> int:
    print(f"mimo {command}: {exc}", file=sys.stderr)
    return 1


# -- mimo predict -------------------------------------------------------------------------------


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mimo predict", description="Run a model once and summarize each output head.")
    p.add_argument("model")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input from a .npy file (repeatable)")
    p.add_argument("--random", action="store_true",
                   help="valid random inputs from the model's metadata (batch 1) for inputs not given")
    p.add_argument("--seed", type=int, default=None, help="seed for --random")
    p.add_argument("--output", "-o", action="append", default=None, metavar="NAME",
                   help="ask for this head only (repeatable; default: all)")
    p.add_argument("--signature", help="SavedModel signature (TensorFlow backend), e.g. 'age' for posts")
    p.add_argument("--version", help="model version (default: the newest ready one)")
    _connection_args(p)
    return p


def predict_main(argv: list[str] | None = None) -> int:
    p = predict_parser()
    args = p.parse_args(argv)
    inputs: dict[str, np.ndarray] = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            p.error(f"--input takes NAME=FILE.npy, not {item!r}")
        try:
            inputs[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            p.error(f"--input {name}: cannot read {path}: {exc}")
    if not inputs and not args.random:
        p.error("give inputs with --input NAME=FILE.npy, or --random")
    try:
        with _client(args) as client:
            meta = client.metadata(args.model, args.version)
            if args.random:
                batch = next(iter(inputs.values())).shape[0] if inputs and next(iter(inputs.values())).ndim else 1
                generated = random_inputs(meta, batch=batch, seed=args.seed, signature=args.signature)
                inputs = {**{k: v for k, v in generated.items() if k not in inputs}, **inputs}
            heads = client.predict(args.model, inputs, outputs=args.output, version=args.version,
                                   signature=args.signature)
    except InferenceError as exc:
        return _fail("predict", exc)
    if args.json:
        document = {"model": args.model, "target": args.target,
                    "inputs": {n: {"shape": list(a.shape), "datatype": _datatype(a)} for n, a in inputs.items()},
                    "outputs": {n: {"shape": list(a.shape), "datatype": _datatype(a), "summary": summarize(a),
                                    "data": _jsonable(a)} for n, a in heads.items()}}
        print(json.dumps(document))
        return 0
    rows = [(name, str(list(a.shape)), _datatype(a), describe(summarize(a))) for name, a in heads.items()]
    _table(f"{args.model} @ {args.target}", ("head", "shape", "dtype", "summary"), rows)
    return 0


def summarize(arr: np.ndarray) -> dict[str, Any]:
    """A readable summary of one head: the top-3 classes of a softmax-looking head, the values
    of a head with one number per item, shape statistics otherwise."""
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        return {"kind": "other", "size": int(arr.size)}
    items = arr.shape[0] if arr.ndim else 1
    per_item = math.prod(arr.shape[1:]) if arr.ndim else 1
    if per_item == 1:
        return {"kind": "value", "values": [_num(v) for v in arr.reshape(items)[:8]]}
    if _softmax_like(arr):
        top = []
        for row in arr[:8]:
            order = np.argsort(row)[::-1][:3]
            top.append([{"class": int(i), "probability": _num(row[i])} for i in order])
        return {"kind": "classes", "top3": top}
    values = arr.astype(np.float64)
    return {"kind": "stats", "min": _num(values.min()), "max": _num(values.max()), "mean": _num(values.mean())}


def _softmax_like(arr: np.ndarray) -> bool:
    if arr.ndim != 2 or arr.shape[1] < 2 or arr.dtype.kind != "f":
        return False
    return bool(arr.min() >= 0 and arr.max() <= 1 and np.allclose(arr.sum(axis=1), 1, atol=1e-3))


def describe(summary: dict[str, Any]) -> str:
    kind = summary["kind"]
    if kind == "value":
        values = summary["values"]
        return ("value " if len(values) == 1 else "values ") + ", ".join(f"{v:.4g}" for v in values)
    if kind == "classes":
        rows = ["top-3: " + ", ".join(f"class {c['class']} ({c['probability']:.3f})" for c in row)
                for row in summary["top3"]]
        return "\n".join(rows)
    if kind == "stats":
        return f"min {summary['min']:.4g}  max {summary['max']:.4g}  mean {summary['mean']:.4g}"
    return f"{summary['size']} elements"


def _num(value) -> float | int:
    value = value.item() if hasattr(value, "item") else value
    return round(value, 6) if isinstance(value, float) else value


def _datatype(arr: np.ndarray) -> str:
    try:
        return from_numpy(arr.dtype).name
    except ValueError:
        return str(arr.dtype)


def _jsonable(arr: np.ndarray):
    if arr.dtype.kind in "OSU":
        return np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v),
                            otypes=[object])(arr).tolist()
    return arr.tolist()


# -- mimo models --------------------------------------------------------------------------------


def models_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mimo models", description="List the server's models, versions and readiness.")
    _connection_args(p)
    args = p.parse_args(argv)
    try:
        with _client(args) as client:
            statuses = client.models()
    except InferenceError as exc:
        return _fail("models", exc)
    if args.json:
        print(json.dumps([{"name": s.name, "versions": list(s.versions), "ready": s.ready, "states": s.states,
                           "reasons": s.reasons} for s in statuses]))
        return 0
    rows = []
    for s in statuses:
        states = ", ".join(f"{v}: {state}" for v, state in s.states.items()) or "no version"
        reasons = "; ".join(s.reasons.values())
        rows.append((s.name, ", ".join(s.versions) or "-", "yes" if s.ready else "no",
                     states + (f" ({reasons})" if reasons else "")))
    _table(f"models @ {args.target}", ("model", "versions", "ready", "state"), rows)
    return 0


# -- output ------------------------------------------------------------------------------------


def _table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    if Console is not None:
        table = Table(title=title)
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        Console(width=max(100, 20 * len(header))).print(table)
        return
    print(title)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *[
        tuple(cell.splitlines()[0] if cell else "" for cell in row) for row in rows])]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        first = [cell.splitlines() or [""] for cell in row]
        for line in range(max(len(lines) for lines in first)):
            cells = [lines[line] if line < len(lines) else "" for lines in first]
            print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())


if __name__ == "__main__":
    sys.exit(predict_main())
