"""Loading one version folder: pick its backend, load the file, complete and check the contract.

model.json (possibly partial, possibly absent) is completed from what the loaded file says about
itself and checked against it, so a version is READY only when its contract is the file's truth:
a mismatch is reported at load, not as INTERNAL on every request. The version then answers
warm-up requests built from its contract before it is ready. Every failure here is an
Unavailable naming the reason; the registry records it on the version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mimo.protos.errors import error_line
from mimo.protos.dtypes import datatype_to_numpy
from mimo.protos.examples import example_inputs
from mimo.protos.model_files import complete, mismatches
from mimo.protos.repository import (
    CONTRACT_KEYS,
    MODEL_JSON,
    ModelSpec,
    RepositoryError,
    check_version_layout,
    present_formats,
)
from mimo.serving.core.backends import BACKEND_FORMATS, Backend, BackendOptions, create_backend
from mimo.serving.core.backends.base import DEFAULT_SIGNATURE
from mimo.serving.core.errors import Unavailable
from mimo.serving.core.memory import release_freed_memory


WARMUP_RUNS = 2  # the second run of ONNX Runtime is still slower than the steady state
WARMUP_LENGTHS = (8, 64, 512)  # tried in turn for dynamic axes with no declared minimum


@dataclass
class LoadedVersion:
    backend: Backend
    spec: ModelSpec
    derived: list[str]  # the contract keys taken from the file (absent from model.json)
    seconds: float  # load, describe and check


def listed_formats(document: Mapping[str, Any], number: int) -> list[str] | None:
    """versions[n].formats from model.json, when it says."""
    return document.get("versions", {}).get(str(number), {}).get("formats")


def choose_backend(document: Mapping[str, Any], number: int, version_dir: Path, default: str) -> str:
    """model.json's backend; else the one that loads the only format the version has; else `default`.

    A SavedModel-only version (string inputs, or a model tf2onnx cannot convert) is thus served by
    tensorflow without a "backend" key, and a bare model.onnx by onnxruntime.
    """
    if document.get("backend"):
        return document["backend"]
    formats = listed_formats(document, number) or present_formats(version_dir)
    usable = [kind for kind, fmt in BACKEND_FORMATS.items() if fmt in formats]
    if not usable:
        raise Unavailable(f"{version_dir}: holds neither a SavedModel (model.savedmodel/) nor model.onnx")
    return default if len(usable) > 1 else usable[0]


def load_version(kind: str, document: Mapping[str, Any], number: int, version_dir: Path,
                 options: BackendOptions) -> LoadedVersion:
    """Load `version_dir` on backend `kind` under `document` (model.json, or {"name": ...})."""
    try:
        return _load_version(kind, document, number, version_dir, options)
    finally:  # loading frees transient copies of the weights (or, failing, all of them)
        release_freed_memory()


def _load_version(kind: str, document: Mapping[str, Any], number: int, version_dir: Path,
                  options: BackendOptions) -> LoadedVersion:
    started = time.perf_counter()
    _check_files(kind, document, number, version_dir)
    backend = create_backend(kind, version_dir, options)
    try:
        backend.load()
        described = backend.describe()
    except RepositoryError as exc:
        raise Unavailable(f"{version_dir}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any load failure makes this version not ready
        raise Unavailable(f"{kind} could not load {version_dir}: {type(exc).__name__}: {exc}") from None
    problems = mismatches(document, described, backend.model_file, signatures=backend.calls_signatures)
    try:
        if problems:
            raise RepositoryError("; ".join(problems))
        spec = ModelSpec.from_json(complete(document, described), f"{document['name']}/{MODEL_JSON}")
    except RepositoryError as exc:
        backend.unload()
        raise Unavailable(str(exc)) from None
    backend.spec = spec
    try:
        warm_up(backend, spec)
    except Unavailable:
        backend.unload()
        raise
    return LoadedVersion(backend, spec, [k for k in CONTRACT_KEYS if k not in document],
                         time.perf_counter() - started)


def warm_up(backend: Backend, spec: ModelSpec, runs: int = WARMUP_RUNS) -> None:
    """Answer requests built from the contract before the version is ready: the first user request
    is then not the slow one (TF traces its graph, ONNX Runtime allocates on its first run), and a
    file that loads but cannot compute what model.json promises never takes over from a good one.

    Dynamic axes with no declared minimum get growing lengths until one runs (a convolution stack
    of a bare drop-in may need more than a few steps); Unavailable when none does.
    """
    heads = spec.signatures[DEFAULT_SIGNATURE]["outputs"]
    tensors = [(t.name, t.datatype, t.shape) for t in spec.inputs
               if t.name in spec.signatures[DEFAULT_SIGNATURE]["inputs"]]
    constraints = {name: {"min_length": c.min_length, "id_range": c.id_range} for name, c in spec.constraints.items()}
    lengths = WARMUP_LENGTHS if any(-1 in shape[1:] for _, _, shape in tensors) else WARMUP_LENGTHS[:1]
    failure = ""
    for length in lengths:
        inputs = example_inputs(tensors, constraints, np.random.default_rng(0), 1, length)
        try:
            for _ in range(runs):
                outputs = backend.predict(inputs, heads)
        except Exception as exc:  # noqa: BLE001 - any failure of the model's own work
            failure = f"{type(exc).__name__}: {error_line(exc)}"
            continue
        problems = _answer_problems(spec, heads, outputs)
        if problems:
            raise Unavailable(f"warm-up request: the answer does not match the contract: {'; '.join(problems)}")
        return
    raise Unavailable(f"warm-up request built from the contract failed: {failure}")




def _answer_problems(spec: ModelSpec, heads: list[str], outputs: Mapping[str, Any]) -> list[str]:
    problems = []
    for head in heads:
        declared, got = spec.output(head), outputs.get(head)
        if got is None:
            problems.append(f"no output '{head}'")
            continue
        got = np.asarray(got)
        want_dtype = datatype_to_numpy(declared.datatype)
        if got.dtype != want_dtype and not (want_dtype.kind == "O" and got.dtype.kind in "OSU"):
            problems.append(f"output '{head}' is {got.dtype}, model.json says {declared.datatype}")
        dims = list(declared.shape)
        if got.ndim != len(dims) or any(d != -1 and d != g for d, g in zip(dims, got.shape)):
            problems.append(f"output '{head}' has shape {list(got.shape)}, model.json says {dims}")
    return problems


def _check_files(kind: str, document: Mapping[str, Any], number: int, version_dir: Path) -> None:
    needed = BACKEND_FORMATS[kind]
    problems = check_version_layout(version_dir, [needed])
    formats = listed_formats(document, number)
    if formats is not None and needed not in formats:
        problems.append(f"{version_dir}: model.json lists formats {formats}, not what backend {kind} needs")
    if problems:
        raise Unavailable("; ".join(problems))


def describe_contract(spec: ModelSpec, keys: list[str]) -> str:
    """The derived part of a contract, for the log line of a drop-in's load."""
    tensors = lambda items: ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in items)
    parts = {"inputs": f"inputs {tensors(spec.inputs)}", "outputs": f"outputs {tensors(spec.outputs)}",
             "signatures": f"signatures {', '.join(spec.signatures)}",
             "max_batch_size": f"max_batch_size {spec.max_batch_size}"}
    return "; ".join(parts[k] for k in keys)
