"""Python CPU per unary ModelInfer on the native server, task path against bulk path, no sockets.

The real server (in-process, the given repository) takes ModelInfer events as the Rust transport
hands them over, N per wake-up, from a stand-in for the transport's queue, and answers them into
it: what is left is the Python side of a call (task or bulk pass, parse, decode, validation,
scheduler, ONNX Runtime, encode, statistics). The two paths alternate, one wake-up each, so a
noisy machine slows both alike; the figure is process CPU time per request, median of the rounds.

  taskset -c 0 .venv/bin/python bench/python_path.py --repository bench/.cache/repo --model mlp --per-wake 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import sample_inputs, server_settings  # noqa: E402
from mimo.protos import codec  # noqa: E402
from mimo.serving.app import MimoServer  # noqa: E402
from mimo.serving.transports import native  # noqa: E402

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class EventQueue:
    """The transport's side of the calls: events in, answers counted."""

    def __init__(self):
        self.events, self.answered, self.failures, self.all_answered = [], 0, {}, None

    def drain(self):
        events, self.events = self.events, []
        return events

    def _answer(self):
        self.answered += 1
        if self.answered == self.expected:
            self.all_answered.set_result(None)

    def reply(self, call, payload):
        self._answer()
        return True

    def finish(self, call, code, details):
        self.failures[code] = details
        self._answer()
        return True


async def measure(args) -> dict[str, list[float]]:
    server = MimoServer(server_settings(args.repository, http_port=0))
    await server.start()
    frontend, loop = server._server, asyncio.get_running_loop()
    real = frontend._transport
    loop.remove_reader(real.fileno())  # this run feeds the events itself
    frontend._transport = queue = EventQueue()
    payload = codec.encode_infer_request(args.model, sample_inputs(args.repository, args.model, 1,
                                                                   length=args.length)).SerializeToString()
    bulk = dict(frontend._bulk_handlers)
    per_request = {"task": [], "bulk": []}
    call = 0
    try:
        for _ in range(args.rounds):
            for path in per_request:
                frontend._bulk_handlers = bulk if path == "bulk" else {}
                queue.answered, queue.expected = 0, args.per_wake
                queue.all_answered = loop.create_future()
                queue.events = [(native.native.UNARY, call + i, MODEL_INFER, payload, (), -1.0, "ipv4:127.0.0.1:1")
                                for i in range(args.per_wake)]
                call += args.per_wake
                started = time.process_time_ns()
                frontend._on_events()
                await queue.all_answered
                per_request[path].append((time.process_time_ns() - started) / args.per_wake / 1000)
    finally:
        frontend._transport, frontend._bulk_handlers = real, bulk
        await server.stop()
    if queue.failures:
        raise SystemExit(f"calls failed: {queue.failures}")
    return per_request


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, default=Path("bench/.cache/repo"))
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--per-wake", type=int, default=32, help="calls per transport wake-up")
    ap.add_argument("--length", type=int, default=100, help="sequence inputs' length")
    ap.add_argument("--rounds", type=int, default=400)
    args = ap.parse_args()
    import uvloop

    per_request = uvloop.run(measure(args))
    for path, values in per_request.items():
        values = values[len(values) // 5:]  # warm-up out
        print(f"{args.model} {args.per_wake}/wake-up {path}: {statistics.median(values):6.1f} us CPU per request")


if __name__ == "__main__":
    main()
