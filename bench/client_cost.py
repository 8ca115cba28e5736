"""Client-side cost per call, no network: build the request and read the answer, for mimo.client's
core and for tritonclient.grpc doing the same.

Per call, both sides: arrays -> request message -> wire bytes (what gRPC sends), and wire bytes ->
response message -> {head: ndarray}. mimo.client runs with the model's metadata cached, so its
local checks (names, dtypes, shapes, id ranges) are included; tritonclient checks the shape it
was told against the array. Prints a table and writes bench/results/client_cost.json.

    python bench/client_cost.py [--seconds 0.1] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import timeit
from pathlib import Path

import numpy as np

from mimo.client.core import ClientCore
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import model_config_pb2 as mc

OUT = Path(__file__).resolve().parent / "results" / "client_cost.json"

# model -> (inputs {name: (datatype, shape, id_range)}, outputs {name: shape})
CASES = {
    "mlp": ({"x": ("FP32", [1, 64], None)}, {"probs": [1, 10]}),
    "qa": ({"text": ("INT32", [1, 100], (0, 10000)), "question": ("INT32", [1, 100], (0, 10000))},
           {"answer": [1, 500]}),
}


def make_case(model: str, seed: int = 0):
    specs, heads = CASES[model]
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, (datatype, shape, id_range) in specs.items():
        inputs[name] = (rng.integers(1, id_range[1], size=shape).astype(np.int32) if id_range
                        else rng.random(shape).astype(np.float32))
    outputs = {name: rng.random(shape).astype(np.float32) for name, shape in heads.items()}
    wire = codec.encode_infer_response(model, outputs, 1).SerializeToString()
    return inputs, outputs, wire


def metadata_messages(model: str):
    """What the server would answer to ModelMetadata and ModelConfig (so the checks run)."""
    specs, heads = CASES[model]
    t = pb.ModelMetadataResponse.TensorMetadata
    meta = pb.ModelMetadataResponse(
        name=model, versions=["1"], platform="onnxruntime_onnx",
        inputs=[t(name=n, datatype=d, shape=[-1] + s[1:]) for n, (d, s, _) in specs.items()],
        outputs=[t(name=n, datatype="FP32", shape=[-1] + s[1:]) for n, s in heads.items()])
    config = pb.ModelConfigResponse(config=mc.ModelConfig(name=model, max_batch_size=32))
    constraints = {n: {"id_range": list(r)} for n, (_, _, r) in specs.items() if r}
    config.config.parameters["constraints"].string_value = json.dumps(constraints)
    config.config.parameters["signatures"].string_value = json.dumps(
        {"serving_default": {"inputs": list(specs), "outputs": list(heads)}})
    return meta, config


def mimo_call(model: str, checks: bool):
    core = ClientCore("localhost:8500")
    if checks:
        core.store_metadata(*metadata_messages(model))
    inputs, _, wire = make_case(model)
    parse = pb.ModelInferResponse.FromString

    def call():
        core.infer_request(model, inputs, {}, None, None, None).SerializeToString()
        return core.infer_result(model, parse(wire), None, None)

    return call


def triton_call(model: str):
    from tritonclient.grpc import InferInput, InferResult, service_pb2
    from tritonclient.grpc._utils import _get_inference_request

    inputs, outputs, wire = make_case(model)
    specs = CASES[model][0]
    names = list(outputs)
    parse = service_pb2.ModelInferResponse.FromString

    def call():
        infer_inputs = []
        for name, array in inputs.items():
            infer_input = InferInput(name, list(array.shape), specs[name][0])
            infer_input.set_data_from_numpy(array)
            infer_inputs.append(infer_input)
        # What InferenceServerClient.infer() builds before handing the message to gRPC.
        _get_inference_request(model_name=model, inputs=infer_inputs, model_version="", request_id="",
                               outputs=None, sequence_id=0, sequence_start=False, sequence_end=False,
                               priority=0, timeout=None, parameters=None).SerializeToString()
        result = InferResult(parse(wire))
        return {name: result.as_numpy(name) for name in names}

    return call


def per_call_us(calls: dict, seconds: float, repeats: int) -> dict:
    """Best-of-repeats microseconds per call for each entry; the entries take turns, so a
    busy machine slows them alike."""
    timers = {k: timeit.Timer(f) for k, f in calls.items()}
    numbers = {k: max(1, int(t.autorange()[0] * seconds / 0.2)) for k, t in timers.items()}
    best = {k: float("inf") for k in calls}
    for _ in range(repeats):
        for k, t in timers.items():
            best[k] = min(best[k], t.timeit(numbers[k]) / numbers[k] * 1e6)
    return best


def check_equal(model: str) -> None:
    """Both paths must read the same heads from the same answer."""
    ours = mimo_call(model, True)()
    theirs = triton_call(model)()
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=0.1, help="timing per repeat (about)")
    p.add_argument("--repeats", type=int, default=15, help="repeats; the best one counts")
    args = p.parse_args(argv)
    rows = []
    for model in CASES:
        check_equal(model)
        us = per_call_us({"mimo": mimo_call(model, True), "mimo_no_checks": mimo_call(model, False),
                          "triton": triton_call(model)}, args.seconds, args.repeats)
        rows.append(dict(model=model, mimo_us=round(us["mimo"], 2), mimo_no_checks_us=round(us["mimo_no_checks"], 2),
                         tritonclient_us=round(us["triton"], 2), ratio=round(us["mimo"] / us["triton"], 3)))
    header = f"{'model':<6} {'mimo.client us':>15} {'(no checks)':>12} {'tritonclient us':>16} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<6} {r['mimo_us']:>15.2f} {r['mimo_no_checks_us']:>12.2f} "
              f"{r['tritonclient_us']:>16.2f} {r['ratio']:>7.3f}")
    from importlib.metadata import version

    import google.protobuf
    import grpc

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "what": "client-side cost per call (encode request + serialize, parse response + decode), no network",
        "unit": "microseconds per call, best of repeats",
        "ratio": "mimo_us / tritonclient_us (goal: <= 1)",
        "rows": rows,
        "environment": {"python": sys.version.split()[0], "numpy": np.__version__,
                        "protobuf": google.protobuf.__version__, "grpcio": grpc.__version__,
                        "tritonclient": version("tritonclient"),
                        "machine": platform.machine(), "processor": platform.processor()},
    }, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
